//! Fuzzes crash recovery with a model: the input is a program of operations on a log recorded
//! by the simulated disk (`src/storage/simdisk.rs`): `Sync` appends, batches, pipelined bursts,
//! and power cuts whose images are chosen by the input too.
//!
//! Invariants checked, in detail in the shared body `tests/fuzz_body/crash_model.rs` (which
//! `tests/fuzz_crash_model.rs` also runs under `cargo test`):
//!
//! 1. Every crash image opens.
//! 2. Every append acknowledged before the cut is there, with its payload, at its offset.
//! 3. Nothing appears that was never appended; every record reads without error.
//! 4. Offsets are contiguous; a batch is all there or all absent.
//! 5. An append after recovery lands at the end of its partition.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod body {
    include!("../../tests/fuzz_body/crash_model.rs");
}

fuzz_target!(|data: &[u8]| {
    body::check_program(data);
});
