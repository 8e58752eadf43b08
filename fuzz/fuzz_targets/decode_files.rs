//! Fuzzes every decoder with damaged files: the input damages one file of a template log (a
//! sealed or active segment, an index, a key table, `annal.meta`, a snapshot, the journal, a
//! partition's start file, the groups partition's records) at a place and with bytes of its
//! choosing, or cuts it; the log is then opened and read.
//!
//! Invariants checked, in detail in the shared body `tests/fuzz_body/decode_files.rs` (which
//! `tests/fuzz_decode_files.rs` also runs under `cargo test`):
//!
//! 1. Nothing panics or allocates without bound; `open` succeeds or fails with a typed error.
//! 2. Every record returned is the template's record at that place: damage is reported, never
//!    returned as data; each partition starts where the template's does.
//! 3. `read_key` and `last_version` fail or give exactly the template's answer (a damaged key
//!    table is rebuilt, never trusted); a damaged snapshot is skipped, never returned; each
//!    consumer group loads the template's cursors, retrying keys and dead letters, or fails.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod body {
    include!("../../tests/fuzz_body/decode_files.rs");
}

fuzz_target!(|data: &[u8]| {
    body::check_damage(data);
});
