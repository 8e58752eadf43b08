//! Regression test for a fixed bug: an index entry at the first frame of a segment (position 64) is trusted without checking
//! its offset, so a damaged offset in it makes healthy records unreadable (`Error::Corrupt`
//! "frame offset does not continue the partition") instead of the index being rebuilt.
//!
//! `Reader::locate` sets `index_checked` when the entry's position is the segment's first frame
//! position, assuming that entry's offset is the base offset; `index::decode` does not check it
//! either. Every other wrong entry is caught and the index rebuilt (`tests/index_boundaries.rs`).

mod common;

use annal::{Durability, Log, Options};
use common::segment_files::index_path;

fn options() -> Options {
    common::small_segments(Durability::Sync).index_interval_bytes(256)
}

#[test]

fn read_survives_a_first_index_entry_that_claims_the_wrong_offset() {
    // Frames of 142 bytes: with a 256-byte index interval every second frame gets an entry,
    // so the entries are at offsets 0, 2, 4, ... About 460 frames fit into one segment.
    let dir = common::sealed_log(options(), 1_000, &[1u8; 100]);

    // Segment 0 is sealed. Change its first index entry from offset 0 to offset 1 (relative
    // offset field, bytes 32..36); the entries stay ordered, so the file passes its checks.
    let idx = index_path(dir.path(), 0, 0);
    let mut bytes = std::fs::read(&idx).unwrap();
    assert!(
        bytes.len() >= 32 + 2 * 16,
        "segment 0 has at least two entries"
    );
    assert_eq!(
        &bytes[32..40],
        &[0, 0, 0, 0, 64, 0, 0, 0],
        "entry (0, position 64)"
    );
    assert!(u32::from_le_bytes(bytes[48..52].try_into().unwrap()) > 1);
    bytes[32..36].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&idx, bytes).unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    let records = common::read_from(&log, 0, 1);
    assert_eq!(records.len(), 999);
    assert_eq!(records[0].offset, 1);
}
