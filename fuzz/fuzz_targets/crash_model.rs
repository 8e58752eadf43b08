//! Fuzzes crash recovery with a model: the input is a setup byte (with or without retention,
//! the group's retry policy) and a program of operations on a log recorded by the simulated
//! disk (`src/storage/simdisk.rs`): `Sync` appends, batches, pipelined bursts, expected-version
//! appends with ids, retries, multi-key appends, a consumer group member's polls, nacks and
//! commits (some pipelined and left in flight), re-drives and discards of dead letters,
//! `enforce_retention`, clean restarts, injected failures (a failed fsync, write or short
//! write, a full disk) with a reopen after a poisoning, and power cuts whose images are chosen
//! by the input too.
//!
//! Invariants checked, in detail in the shared body `tests/fuzz_body/crash_model.rs` (which
//! `tests/fuzz_crash_model.rs` also runs under `cargo test`):
//!
//! 1. Every crash image opens.
//! 2. Every append acknowledged before the cut is there (at or above the start), with its
//!    payload, offset, version and global position.
//! 3. Nothing appears that was never appended; every record reads without error.
//! 4. Offsets are contiguous from the start, versions contiguous per key, the global order holds
//!    exactly the events left; a batch or a multi-key append is all there or all absent.
//! 5. After recovery: appends land at their partition's end, retries of surviving ids return
//!    the original place, versions follow.
//! 6. Retention: the start never goes back; reads below it are `OffsetBelowStart`; with
//!    `retention_until_consumed` nothing the group needs is deleted.
//! 7. The group's record is one whole write at or after the last acknowledged one (cursors,
//!    retrying keys, dead letters); a new member is delivered exactly the events it left
//!    unsettled, in version order per key, nothing parked, nothing settled.
//! 8. An append that failed (`AppendFailed`) never appears; after a poisoning, each append in
//!    doubt is whole or absent after the reopen, and the log goes on from what it kept.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod body {
    include!("../../tests/fuzz_body/crash_model.rs");
}

fuzz_target!(|data: &[u8]| {
    body::check_program(data);
});
