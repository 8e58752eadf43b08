//! Fuzzes recovery of a crash image whose journal records area is the input: every
//! acknowledged append of the image lives only there, so the input decides what recovery finds.
//!
//! Invariants checked, in detail in the shared body `tests/fuzz_body/recover_journal.rs` (which
//! `tests/fuzz_recover_journal.rs` also runs under `cargo test`):
//!
//! 1. Open never panics: it succeeds, or (tolerant mode only) refuses with `Error::Corrupt` at a
//!    byte of the journal, having changed nothing on disk.
//! 2. Every record read equals the one appended at that partition and offset; reads never fail.
//! 3. Batches are all or nothing.
//! 4. In tolerant mode, the log is a prefix of the durable order across partitions.
//! 5. An append after recovery lands at the end and survives close and reopen.
//!
//! Seed the corpus with the pristine records area (the body's `template().records_area`), e.g.
//! by running once with an empty corpus: libFuzzer's mutations of zeros reach it slowly.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod body {
    include!("../../tests/fuzz_body/recover_journal.rs");
}

fuzz_target!(|data: &[u8]| {
    body::check_records_area(data);
});
