//! A full disk (or a failed write) fails the appends it hits with `AppendFailed`, never poisons
//! the partition, and never costs an acknowledged append; once space is back, appends resume
//! without a reopen at the next offset, and no failed event ever shows up, before or after a
//! reopen. A log also opens on a full disk.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use annal::io::FailPoints;
use annal::{Error, Log, Options};
use common::segment_files::INDEX_FILE;
use common::{padded, payloads, record_at};

const SEGMENT_BYTES: u64 = common::SMALL_SEGMENT_BYTES;
const PAYLOAD_BYTES: usize = 1000;
/// Encoded size of one frame holding one event under key `k` with a `PAYLOAD_BYTES` payload
/// and no headers (`src/frame.rs`): header, key length and key, record fields, payload.
const FRAME_BYTES: u64 = 32 + 2 + 1 + (1 + 2 + 4) + PAYLOAD_BYTES as u64;
/// How many such frames fit into a segment after its 64-byte header.
const FRAMES_PER_SEGMENT: u64 = (SEGMENT_BYTES - 64) / FRAME_BYTES;

fn options(fail_points: &Arc<FailPoints>) -> Options {
    common::one_partition(SEGMENT_BYTES).fail_points(fail_points.clone())
}

fn payload(name: &str, i: u64) -> Vec<u8> {
    padded(format!("{name} {i} "), PAYLOAD_BYTES, b'.')
}

fn files_with_suffix(dir: &Path, suffix: &str) -> usize {
    fs::read_dir(dir.join("p0000"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

/// A failed append: `AppendFailed`, not a poisoning, caused by a full disk.
fn assert_failed_on_full_disk(error: &Error) {
    assert!(
        matches!(error, Error::AppendFailed { partition: 0, .. }),
        "{error:?}"
    );
    assert!(error.is_disk_full(), "{error:?}");
}

/// Reopens without fail points and checks the log holds exactly `expected`; appends once more.
fn check_after_reopen(dir: &Path, expected: &[Vec<u8>]) {
    let log = Log::open(dir, Options::default()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), expected.len() as u64);
    assert_eq!(payloads(&log), expected);
    let appended = log.append(b"k", b"after reopen").unwrap();
    assert_eq!(appended.offset, expected.len() as u64);
    log.close().unwrap();
}

#[test]
fn a_full_disk_at_a_segment_roll_fails_the_append_and_appends_resume_once_space_is_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    let mut acked = Vec::new();
    for i in 0..FRAMES_PER_SEGMENT {
        let payload = payload("acked", i);
        assert_eq!(log.append(b"k", &payload).unwrap().offset, i);
        acked.push(payload);
    }
    assert_eq!(
        files_with_suffix(&dir, ".seg"),
        1,
        "the first segment is full"
    );

    fail_points.set_disk_full(true);
    for i in 0..3 {
        let error = log.append(b"k", &payload("failed", i)).unwrap_err();
        assert_failed_on_full_disk(&error);
    }
    assert_eq!(files_with_suffix(&dir, ".seg"), 1, "no segment was created");
    assert_eq!(
        files_with_suffix(&dir, ".tmp"),
        0,
        "no half-created segment left"
    );
    assert_eq!(log.end_offset(0).unwrap(), FRAMES_PER_SEGMENT);
    assert_eq!(payloads(&log), acked, "acknowledged appends are intact");

    fail_points.set_disk_full(false);
    for i in 0..3 {
        let payload = payload("resumed", i);
        let appended = log.append(b"k", &payload).unwrap();
        assert_eq!(
            appended.offset,
            FRAMES_PER_SEGMENT + i,
            "offsets stay contiguous"
        );
        acked.push(payload);
    }
    assert_eq!(files_with_suffix(&dir, ".seg"), 2, "the roll happened");
    assert_eq!(payloads(&log), acked, "no failed append is readable");
    // Under Sync each failure went to its appender; flush and close do not report it again.
    log.flush().unwrap();
    log.close().unwrap();

    check_after_reopen(&dir, &acked);
}

#[test]
fn a_full_disk_inside_a_preallocated_segment_fails_the_append_and_appends_resume() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    let mut acked = Vec::new();
    for i in 0..3 {
        let payload = payload("acked", i);
        log.append(b"k", &payload).unwrap();
        acked.push(payload);
    }

    fail_points.set_disk_full(true);
    let error = log.append(b"k", &payload("failed", 0)).unwrap_err();
    assert_failed_on_full_disk(&error);
    // Pipelined appends queued while the disk is full fail too, when their write does.
    let failed: Vec<Vec<u8>> = (1..6).map(|i| payload("failed", i)).collect();
    let tickets: Vec<_> = failed
        .iter()
        .map(|p| log.append_pipelined(b"k", p).unwrap())
        .collect();
    for ticket in tickets {
        assert_failed_on_full_disk(&ticket.wait().unwrap_err());
    }
    assert_eq!(log.end_offset(0).unwrap(), 3);
    assert_eq!(payloads(&log), acked);

    fail_points.set_disk_full(false);
    for i in 0..3 {
        let payload = payload("resumed", i);
        assert_eq!(log.append(b"k", &payload).unwrap().offset, 3 + i);
        acked.push(payload);
    }
    assert_eq!(payloads(&log), acked);
    // The failure went to its appender (Sync): close does not report it again.
    log.close().unwrap();

    check_after_reopen(&dir, &acked);
}

#[test]
fn a_failed_write_fails_only_its_own_append() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    log.append(b"k", b"before").unwrap();
    // The append returns once its data is synced; the writer then still writes index entries,
    // which would take the injected failure. A flush waits for that round to finish.
    log.flush().unwrap();

    fail_points.fail_writes(1);
    let error = log.append(b"k", b"failed write").unwrap_err();
    assert!(
        matches!(error, Error::AppendFailed { partition: 0, .. }),
        "{error:?}"
    );
    assert!(!error.is_disk_full(), "{error:?}");
    match &error {
        Error::AppendFailed { source, .. } => assert!(
            matches!(source.as_ref(), Error::Io { op: "write", .. }),
            "{source:?}"
        ),
        _ => unreachable!(),
    }

    let appended = log.append(b"k", b"after").unwrap();
    assert_eq!(appended.offset, 1, "the failed append's offset is reused");
    assert_eq!(payloads(&log), [b"before".to_vec(), b"after".to_vec()]);
    // Under Sync the appender got the error; flush does not report it again.
    log.flush().unwrap();
    log.close().unwrap();

    check_after_reopen(&dir, &[b"before".to_vec(), b"after".to_vec()]);
}

/// A log with `records` acknowledged appends, closed cleanly.
fn existing_log(dir: &Path, records: u64) -> Vec<Vec<u8>> {
    let log = Log::open(dir, options(&FailPoints::new())).unwrap();
    let acked: Vec<Vec<u8>> = (0..records).map(|i| payload("acked", i)).collect();
    for payload in &acked {
        log.append(b"k", payload).unwrap();
    }
    log.close().unwrap();
    acked
}

#[test]
fn a_log_opens_on_a_full_disk_and_reads_work() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let acked = existing_log(&dir, 10);

    let fail_points = FailPoints::new();
    fail_points.set_disk_full(true);
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 10);
    assert_eq!(payloads(&log), acked);
    let record = record_at(&log, 0, 7);
    assert_eq!(record.payload, acked[7]);
    assert_failed_on_full_disk(&log.append(b"k", &payload("failed", 0)).unwrap_err());
    assert_eq!(payloads(&log), acked);
    log.close().unwrap();

    check_after_reopen(&dir, &acked);
}

/// Regression test for a bug: when open cannot preallocate the active segment (full disk),
/// the segment's memory map covers only the data found at open, and appends made after space
/// returns are written past its end: reading them fails with `Error::Corrupt` ("zeros where a
/// frame should be") until the log is reopened, although they are durable.
#[test]
fn appends_after_opening_on_a_full_disk_are_readable_once_space_is_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let mut acked = existing_log(&dir, 10);

    let fail_points = FailPoints::new();
    fail_points.set_disk_full(true);
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    fail_points.set_disk_full(false);
    let resumed = payload("resumed", 0);
    assert_eq!(log.append(b"k", &resumed).unwrap().offset, 10);
    acked.push(resumed);
    let read_back: Vec<_> = log.read(0, 0).unwrap().collect();
    let read_back: Result<Vec<_>, _> = read_back.into_iter().collect();
    let read_back = read_back.unwrap_or_else(|e| panic!("reading after the append: {e}"));
    let read_back: Vec<Vec<u8>> = read_back.iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(read_back, acked);
    log.close().unwrap();

    check_after_reopen(&dir, &acked);
}

/// Opens on a full disk a log whose index open wants to rewrite, and checks it opens.
fn check_opens_on_a_full_disk_with_index(damage: impl FnOnce(&Path)) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let acked = existing_log(&dir, 10);
    let index = dir.join(INDEX_FILE);
    damage(&index);

    let fail_points = FailPoints::new();
    fail_points.set_disk_full(true);
    let log = Log::open(&dir, options(&fail_points))
        .unwrap_or_else(|e| panic!("open on a full disk: {e}"));
    assert_eq!(payloads(&log), acked);
    drop(log);

    check_after_reopen(&dir, &acked);
}

/// Regression test for a bug: the index is derived data and `docs/durability.md` promises
/// that a log opens on a full disk, but open fails with `DiskFull` when it has to rewrite the
/// index, having already truncated the old index file to nothing.
#[test]
fn a_log_whose_index_is_behind_opens_on_a_full_disk() {
    // As after a kill between a data sync and the index write that follows it: the index
    // lacks its last entries (the default interval gives one entry per four frames here).
    check_opens_on_a_full_disk_with_index(|index| {
        let bytes = fs::read(index).unwrap();
        assert!(bytes.len() >= 32 + 3 * 16, "{} index bytes", bytes.len());
        fs::write(index, &bytes[..32 + 16]).unwrap();
    });
}

/// Regression test for the same bug, with the index file lost altogether.
#[test]
fn a_log_whose_index_was_lost_opens_on_a_full_disk() {
    check_opens_on_a_full_disk_with_index(|index| fs::remove_file(index).unwrap());
}

/// Outside `Sync`, `append` returns before the write, so a lost append is reported by the next
/// flush, once.
#[test]
fn a_failed_write_under_buffered_is_reported_by_the_next_flush_once() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(
        dir.path(),
        options(&fail_points).durability(annal::Durability::Buffered),
    )
    .unwrap();
    log.append(b"k", b"kept").unwrap();
    log.flush().unwrap();
    fail_points.fail_writes(1);
    assert_eq!(log.append(b"k", b"lost").unwrap().offset, 1, "queued");
    let error = log.flush().unwrap_err();
    assert!(matches!(error, Error::AppendFailed { .. }), "{error:?}");
    log.flush().unwrap();
    let appended = log.append(b"k", b"after").unwrap();
    assert_eq!(appended.offset, 1, "the lost append's offset is reused");
    log.flush().unwrap();
    assert_eq!(payloads(&log), [b"kept".to_vec(), b"after".to_vec()]);
    log.close().unwrap();
}
