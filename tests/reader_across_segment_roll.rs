//! Regression test for a fixed bug: a `Reader` that was positioned in the active segment before the writer sealed it keeps
//! that segment's old mapping and `end_offset = u64::MAX`, so after the roll it probes past the
//! sealed segment's data: it returns `Error::Corrupt` ("zeros where a frame should be") for a
//! healthy log, or dies of `SIGBUS` when the sealed data ends on a page boundary (the file was
//! truncated under the preallocated-size mapping).
//!
//! `Reader` documents that `None` means "nothing more for now, so it can be polled again later";
//! these tests poll it again after a roll.

mod common;

use annal::{Durability, Log, Options};
use common::segment_files::{segment_bases, segment_path};

fn options() -> Options {
    common::small_segments(Durability::Sync)
}

/// A reader that reached the end of the active segment is polled again after the writer sealed
/// that segment and went on in the next one: it must continue there.
#[test]

fn reader_at_the_end_continues_into_the_next_segment_after_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let payload = vec![7u8; 6_000];
    log.append(b"k", &payload).unwrap();
    let mut reader = log.read(0, 0).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 0);
    assert!(reader.next().is_none(), "nothing more for now");

    // Fill the first segment and roll over into a second one.
    let mut expected = 1u64;
    while segment_bases(dir.path(), 0).len() < 2 {
        log.append(b"k", &payload).unwrap();
        expected += 1;
    }
    let mut seen = 1u64;
    for record in reader.by_ref() {
        let record = record.unwrap();
        assert_eq!(record.offset, seen);
        assert_eq!(record.payload.as_ref(), payload.as_slice());
        seen += 1;
    }
    assert_eq!(seen, expected);
}

/// The same, for a reader that stopped in the middle of the active segment: it reads the rest of
/// the sealed segment and goes on into the next.
#[test]

fn reader_created_before_a_roll_reads_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let payload = vec![9u8; 5_000];
    for _ in 0..3 {
        log.append(b"k", &payload).unwrap();
    }
    let mut reader = log.read(0, 0).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 0);
    let mut expected = 3u64;
    while segment_bases(dir.path(), 0).len() < 3 {
        log.append(b"k", &payload).unwrap();
        expected += 1;
    }
    let offsets: Vec<u64> = reader.map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (1..expected).collect::<Vec<_>>());
}

/// As above, with the sealed segment's data ending exactly on a page boundary: the reader's
/// stale mapping then reaches past the end of the truncated file, and touching it is `SIGBUS`
/// (with 4 KiB pages). While the bug lasts, running this test kills the whole test binary.
#[test]

fn reader_at_a_page_aligned_segment_end_continues_after_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    // A frame is 48 header + 2 key length + 1 key + 7 record bytes + payload = 58 + payload.
    // Eight frames of 7,160 bytes after the 64-byte segment header end at 57,344 = 14 pages; a
    // ninth does not fit into 64 KiB less the room kept for a checkpoint's padding frame
    // (4,146 bytes), so it rolls.
    let payload = vec![5u8; 7_102];
    for _ in 0..8 {
        log.append(b"k", &payload).unwrap();
    }
    let mut reader = log.read(0, 0).unwrap();
    assert_eq!(reader.by_ref().count(), 8);
    log.append(b"k", &payload).unwrap();
    assert_eq!(segment_bases(dir.path(), 0), vec![0, 8]);
    let sealed = segment_path(dir.path(), 0, 0);
    assert_eq!(std::fs::metadata(sealed).unwrap().len(), 57_344);
    let record = reader.next().expect("the ninth record").unwrap();
    assert_eq!(record.offset, 8);
}

/// Regression test for a bug found while porting to the journal: a segment sealed right after
/// a checkpoint ends in a padding frame, and readers leaving it took that frame for a record
/// past the next segment's base offset ("segments overlap").
#[test]
fn a_segment_that_ends_in_a_checkpoint_padding_frame_reads_through() {
    let dir = tempfile::tempdir().unwrap();
    let payload = vec![3u8; 3000];
    let log = Log::open(dir.path(), options()).unwrap();
    // Frames of 3,042 bytes: 20 fill a 64 KiB segment but for its padding room.
    for _ in 0..20 {
        log.append(b"k", &payload).unwrap();
    }
    assert_eq!(segment_bases(dir.path(), 0), vec![0]);
    // Close checkpoints: the segment is padded to a fresh page, after its last frame.
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    // The next frame does not fit: the segment is sealed with the padding frame last.
    log.append(b"k", &payload).unwrap();
    assert_eq!(segment_bases(dir.path(), 0), vec![0, 20]);
    let appended = 21;
    let offsets: Vec<u64> = log.read(0, 0).unwrap().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (0..appended).collect::<Vec<_>>());
}
