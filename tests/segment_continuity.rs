//! Bug: when a middle segment file is deleted, reading reports "zeros where a frame should be"
//! at the end of the previous file, where there are no zeros; and segments whose offsets
//! overlap are read without complaint. A sealed segment ends where the next one starts (its
//! name), so a gap or an overlap between neighbouring segments is reported as `Error::Corrupt`
//! naming the segment whose records end in the wrong place, at that byte position.

mod common;

use std::path::{Path, PathBuf};

use annal::{Durability, Error, Event, Log, Options};
use common::segment_files::{index_path, segment_bases, segment_path, SEGMENT_HEADER_LEN};

const PAYLOAD_BYTES: usize = 6_000;

fn options() -> Options {
    common::small_segments(Durability::Buffered)
}

/// A closed log of at least four segments of single 6 KB events; returns its directory and the
/// segments' base offsets.
fn closed_log() -> (tempfile::TempDir, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let payload = vec![5u8; PAYLOAD_BYTES];
    while segment_bases(dir.path(), 0).len() < 4 {
        log.append(b"k", &payload).unwrap();
        log.flush().unwrap();
    }
    log.close().unwrap();
    let bases = segment_bases(dir.path(), 0);
    (dir, bases)
}

fn remove_segment(dir: &Path, base: u64) {
    std::fs::remove_file(segment_path(dir, 0, base)).unwrap();
    std::fs::remove_file(index_path(dir, 0, base)).unwrap();
}

/// Reopens the log and reads from `from`: the offsets read before the first error, and the
/// error's path, position and reason.
fn read_until_error(dir: &Path, from: u64) -> (Vec<u64>, PathBuf, u64, &'static str) {
    let log = Log::open(dir, options()).unwrap();
    let mut offsets = Vec::new();
    for record in log.read(0, from).unwrap() {
        match record {
            Ok(record) => offsets.push(record.offset),
            Err(Error::Corrupt {
                path,
                position,
                reason,
            }) => return (offsets, path, position, reason),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    panic!(
        "no error after reading offsets {from}..{}",
        from + offsets.len() as u64
    );
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn a_missing_middle_segment_is_reported_where_the_previous_one_ends() {
    let (dir, bases) = closed_log();
    remove_segment(dir.path(), bases[1]);
    let (offsets, path, position, reason) = read_until_error(dir.path(), 0);
    assert_eq!(offsets, (0..bases[1]).collect::<Vec<_>>());
    let previous = segment_path(dir.path(), 0, bases[0]);
    assert_eq!(path, previous);
    // A sealed segment is cut at the end of its last frame: the error is at the file's end.
    assert_eq!(position, file_len(&previous));
    assert!(reason.contains("a segment is missing"), "{reason}");
}

#[test]
fn reading_from_inside_a_missing_segment_reports_the_gap() {
    let (dir, bases) = closed_log();
    remove_segment(dir.path(), bases[2]);
    let (offsets, path, position, reason) = read_until_error(dir.path(), bases[2] + 1);
    assert!(offsets.is_empty(), "{offsets:?}");
    let previous = segment_path(dir.path(), 0, bases[1]);
    assert_eq!(path, previous);
    assert_eq!(position, file_len(&previous));
    assert!(reason.contains("a segment is missing"), "{reason}");
}

#[test]
fn a_missing_first_segment_is_reported_at_the_start_of_the_next_one() {
    let (dir, bases) = closed_log();
    remove_segment(dir.path(), bases[0]);
    let (offsets, path, position, reason) = read_until_error(dir.path(), 0);
    assert!(offsets.is_empty(), "{offsets:?}");
    assert_eq!(path, segment_path(dir.path(), 0, bases[1]));
    assert_eq!(position, 0);
    assert!(reason.contains("a segment is missing"), "{reason}");
    // What is there still reads.
    let log = Log::open(dir.path(), options()).unwrap();
    let first = common::record_at(&log, 0, bases[1]);
    assert_eq!(first.offset, bases[1]);
}

/// Segment 0 also holds the frames of segment 1 (as if a copy of them had been left behind):
/// both claim the same offsets.
#[test]
fn frames_past_the_next_segment_base_are_reported_as_an_overlap() {
    let (dir, bases) = closed_log();
    let first = segment_path(dir.path(), 0, bases[0]);
    let first_len = file_len(&first);
    let mut bytes = std::fs::read(&first).unwrap();
    let second = std::fs::read(segment_path(dir.path(), 0, bases[1])).unwrap();
    bytes.extend_from_slice(&second[SEGMENT_HEADER_LEN..]);
    std::fs::write(&first, bytes).unwrap();

    let (offsets, path, position, reason) = read_until_error(dir.path(), 0);
    assert_eq!(offsets, (0..bases[1]).collect::<Vec<_>>());
    assert_eq!(path, first);
    assert_eq!(position, first_len);
    assert!(reason.contains("segments overlap"), "{reason}");
}

/// Segment 0's last frame is a batch whose records run past the base offset of segment 1.
#[test]
fn a_frame_across_the_next_segment_base_is_reported_as_an_overlap() {
    let (dir, bases) = closed_log();
    // The same events in another log, except that the last event of segment 0 and the first
    // of segment 1 are one small batch, which still fits into segment 0.
    let other = tempfile::tempdir().unwrap();
    let log = Log::open(other.path(), options()).unwrap();
    let payload = vec![5u8; PAYLOAD_BYTES];
    for _ in 0..bases[1] - 1 {
        log.append(b"k", &payload).unwrap();
    }
    let batch = log
        .append_batch(b"k", [Event::new(b"x"), Event::new(b"y")])
        .unwrap();
    assert_eq!(batch.offset, bases[1] - 1);
    log.close().unwrap();
    assert_eq!(
        segment_bases(other.path(), 0),
        [0],
        "the batch fits into segment 0"
    );
    let first = segment_path(dir.path(), 0, bases[0]);
    std::fs::copy(segment_path(other.path(), 0, 0), &first).unwrap();
    std::fs::copy(index_path(other.path(), 0, 0), index_path(dir.path(), 0, 0)).unwrap();
    // Single events make frames of one length; segment 1 holds nothing else.
    let second_len = file_len(&segment_path(dir.path(), 0, bases[1]));
    let frame_len = (second_len - SEGMENT_HEADER_LEN as u64) / (bases[2] - bases[1]);
    let batch_position = SEGMENT_HEADER_LEN as u64 + (bases[1] - 1) * frame_len;

    let (offsets, path, position, reason) = read_until_error(dir.path(), 0);
    assert_eq!(offsets, (0..bases[1] - 1).collect::<Vec<_>>());
    assert_eq!(path, first);
    assert_eq!(position, batch_position);
    assert!(reason.contains("segments overlap"), "{reason}");
}
