//! Fuzzes crash recovery with a model: the input is a program of operations on a log recorded
//! by the simulated disk (`src/storage/simdisk.rs`): `Sync` appends, batches, pipelined bursts,
//! expected-version appends with ids, retries, multi-key appends, a consumer group member's
//! polls and commits, and power cuts whose images are chosen by the input too.
//!
//! Invariants checked, in detail in the shared body `tests/fuzz_body/crash_model.rs` (which
//! `tests/fuzz_crash_model.rs` also runs under `cargo test`):
//!
//! 1. Every crash image opens.
//! 2. Every append acknowledged before the cut is there, with its payload, offset and version.
//! 3. Nothing appears that was never appended; every record reads without error.
//! 4. Offsets are contiguous, versions contiguous per key, the global order gap-free; a batch or
//!    a multi-key append is all there or all absent.
//! 5. After recovery: appends land at their partition's end, retries of surviving ids return
//!    the original place, versions follow.
//! 6. The group's cursors are within the ends and not behind the last acknowledged commit; a new
//!    member is delivered everything after them, in order.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod body {
    include!("../../tests/fuzz_body/crash_model.rs");
}

fuzz_target!(|data: &[u8]| {
    body::check_program(data);
});
