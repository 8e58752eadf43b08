//! A crash in the middle of a segment roll. The roll syncs the old segment, cuts its
//! preallocated tail, then creates the new one as `<base>.seg.tmp` (header, preallocation,
//! sync), renames it, creates its index and syncs the directory. A crash between those steps
//! can leave: the old segment uncut (zeros after its last frame), the new segment only as a
//! `.tmp` file, and the new segment's index without its segment (when the index's directory
//! entry reached the disk but the rename did not). Every such state must open with every
//! record of the old segment, and take appends at the right offset.

mod common;

use std::fs;
use std::path::Path;

use annal::Log;
use common::segment_files::{index_path, segment_bases, segment_path};

const SEGMENT_BYTES: u64 = 64 << 10;

fn options() -> annal::Options {
    common::one_partition(SEGMENT_BYTES)
}

/// A closed log with exactly two segments; returns the second one's base offset.
fn two_segments(dir: &Path) -> u64 {
    let log = Log::open(dir, options()).unwrap();
    let payload = vec![b'p'; 1000];
    let mut n = 0u64;
    while segment_bases(dir, 0).len() < 2 {
        log.append(
            b"k",
            common::padded(format!("{n}:"), payload.len(), b'p').as_slice(),
        )
        .unwrap();
        n += 1;
    }
    log.close().unwrap();
    segment_bases(dir, 0)[1]
}

fn check_opens_with(dir: &Path, records: u64) {
    let log = Log::open(dir, options()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), records);
    let read = common::read_all(&log, 0);
    assert_eq!(
        read.len() as u64,
        records,
        "every record of the old segment"
    );
    for (i, record) in read.iter().enumerate() {
        assert!(record.payload.starts_with(format!("{i}:").as_bytes()));
    }
    let appended = log.append(b"k", b"after the crash").unwrap();
    assert_eq!(appended.offset, records);
    log.close().unwrap();
    let log = Log::open(dir, options()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), records + 1);
    assert_eq!(
        &common::record_at(&log, 0, records).payload[..],
        b"after the crash"
    );
    log.close().unwrap();
    let leftovers: Vec<_> = fs::read_dir(dir.join("p0000"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Turns the closed two-segment log into what a crash during the roll to `new_base` leaves:
/// the new segment's rename lost (only its `.tmp` remains, with the index's entry), and the
/// old segment's tail cut never reached the disk.
fn crash_before_the_rename(dir: &Path, new_base: u64) {
    fs::rename(
        segment_path(dir, 0, new_base),
        dir.join(format!("p0000/{new_base:020}.seg.tmp")),
    )
    .unwrap();
    assert!(
        index_path(dir, 0, new_base).exists(),
        "an orphan index stays"
    );
    let old = fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir, 0, 0))
        .unwrap();
    old.set_len(SEGMENT_BYTES).unwrap();
}

#[test]
fn a_roll_interrupted_before_the_rename_opens_with_the_old_segment_whole() {
    let dir = tempfile::tempdir().unwrap();
    let new_base = two_segments(dir.path());
    // The new segment as it was right after its creation: its header and no frames (a roll
    // completes before any frame goes into the new segment), and an empty index.
    let new_path = segment_path(dir.path(), 0, new_base);
    let mut header = fs::read(&new_path).unwrap();
    header.truncate(64);
    fs::write(&new_path, &header).unwrap();
    fs::write(index_path(dir.path(), 0, new_base), b"").unwrap();
    crash_before_the_rename(dir.path(), new_base);
    check_opens_with(dir.path(), new_base);
    // No write reached the new base since, so nothing recreated its segment: the index that
    // lost its segment must be gone, not kept to mislead a later roll or reader.
    assert!(!segment_path(dir.path(), 0, new_base).exists());
    assert!(
        !index_path(dir.path(), 0, new_base).exists(),
        "the orphan index was removed"
    );
}

#[test]
fn a_roll_interrupted_after_the_rename_opens_with_an_empty_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let new_base = two_segments(dir.path());
    // The new segment exists, empty, with no index; the old segment's cut was lost.
    let new_path = segment_path(dir.path(), 0, new_base);
    let mut header = fs::read(&new_path).unwrap();
    header.truncate(64);
    fs::write(&new_path, &header).unwrap();
    fs::remove_file(index_path(dir.path(), 0, new_base)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0, 0))
        .unwrap()
        .set_len(SEGMENT_BYTES)
        .unwrap();
    check_opens_with(dir.path(), new_base);
}
