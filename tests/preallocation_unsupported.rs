//! Bug: on file systems without `fallocate` (FUSE, NFS) glibc's `posix_fallocate` emulated the
//! reservation by writing a byte per block, and annal's fallback never ran: creating a default
//! log took 52 s. Preallocation is now `fallocate(2)`, reported as unsupported there, and the
//! segment grows with its writes instead.
//!
//! The file system is simulated with the fail point that makes `fallocate` fail with
//! `EOPNOTSUPP`, which goes through the same classification as the real error.

mod common;

use std::path::Path;

use annal::io::FailPoints;
use annal::{Durability, Log, Options};
use common::segment_files::{frame_ranges, segment_bases, segment_path, SEGMENT_HEADER_LEN};

fn options(faults: &std::sync::Arc<FailPoints>) -> Options {
    common::small_segments(Durability::Sync).fail_points(faults.clone())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// The byte just past the last frame of a segment file.
fn data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    frame_ranges(&bytes)
        .last()
        .map_or(SEGMENT_HEADER_LEN, |frame| frame.end) as u64
}

#[test]
fn segment_without_preallocation_grows_with_its_writes() {
    let faults = FailPoints::new();
    faults.set_preallocation_unsupported(true);
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(&faults)).unwrap();
    let segment = segment_path(dir.path(), 0, 0);
    // Segments are created by the first append that needs them.
    assert!(!segment.exists());

    log.append(b"k", b"first").unwrap();
    assert_eq!(file_len(&segment), data_end(&segment));
    assert!(file_len(&segment) > SEGMENT_HEADER_LEN as u64);
    log.close().unwrap();
}

#[test]
fn log_without_preallocation_rolls_recovers_and_reads_back_everything() {
    let faults = FailPoints::new();
    faults.set_preallocation_unsupported(true);
    let dir = tempfile::tempdir().unwrap();
    let payload = |i: u32| common::padded(i.to_le_bytes(), 3_000, b'x');
    let log = Log::open(dir.path(), options(&faults)).unwrap();
    for i in 0..60 {
        log.append(b"k", &payload(i)).unwrap();
    }
    let bases = segment_bases(dir.path(), 0);
    assert!(bases.len() >= 2, "segments rolled: {bases:?}");
    assert_eq!(
        common::payloads(&log),
        (0..60).map(payload).collect::<Vec<_>>()
    );
    log.close().unwrap();
    for base in segment_bases(dir.path(), 0) {
        let path = segment_path(dir.path(), 0, base);
        assert_eq!(file_len(&path), data_end(&path), "segment {base}");
    }

    let log = Log::open(dir.path(), options(&faults)).unwrap();
    for i in 60..80 {
        log.append(b"k", &payload(i)).unwrap();
    }
    assert_eq!(
        common::payloads(&log),
        (0..80).map(payload).collect::<Vec<_>>()
    );
    log.close().unwrap();
}
