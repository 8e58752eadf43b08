//! A full disk (or a failed write) never poisons the log and never costs an acknowledged append.
//! Under `Sync` it fails the appends it hits with `AppendFailed` (their offsets were never handed
//! out); under `Buffered` and `Interval`, where appends are acknowledged when queued, it keeps
//! them and retries, refusing new appends with `WritesStalled` meanwhile, so that an offset
//! handed out is never given to another event. Once space is back, appends resume without a
//! reopen at the next offset, and no failed event ever shows up, before or after a reopen.
//! Writes into space the log reserved keep working on a full disk, and a log opens on one.

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
const FRAME_BYTES: u64 = 48 + 2 + 1 + (1 + 2 + 4) + PAYLOAD_BYTES as u64;
/// Room a segment keeps for the padding frame of a checkpoint (`src/write/active.rs`).
const PADDING_ROOM: u64 = 4096 + 50;
/// How many such frames fit into a segment after its 64-byte header.
const FRAMES_PER_SEGMENT: u64 = (SEGMENT_BYTES - PADDING_ROOM - 64) / FRAME_BYTES;

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
fn a_full_disk_does_not_fail_appends_into_space_the_log_reserved() {
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
    // The segment and the journal were reserved ahead (preallocated and written with zeros):
    // appends that fit overwrite blocks the log owns, which a full file system allows.
    fail_points.set_disk_full(true);
    for i in 0..3 {
        let payload = payload("on a full disk", i);
        assert_eq!(log.append(b"k", &payload).unwrap().offset, 3 + i);
        acked.push(payload);
    }
    let pipelined: Vec<Vec<u8>> = (3..6).map(|i| payload("on a full disk", i)).collect();
    let tickets: Vec<_> = pipelined
        .iter()
        .map(|p| log.append_pipelined(b"k", p).unwrap())
        .collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        assert_eq!(ticket.wait().unwrap().offset, 6 + i as u64);
        acked.push(payload("on a full disk", 3 + i as u64));
    }
    assert_eq!(payloads(&log), acked);
    fail_points.set_disk_full(false);
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

/// Outside `Sync`, `append` returns before the write, so a write that fails cannot fail the
/// append: the writer keeps the round and retries it, new appends are refused meanwhile (with an
/// error that says so and names the cause), a flush reports the stall, and once a retry succeeds
/// every acknowledged append is in the log at the offset it was given.
#[test]
fn a_failed_write_under_buffered_is_retried_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(
        dir.path(),
        options(&fail_points).durability(annal::Durability::Buffered),
    )
    .unwrap();
    log.append(b"k", b"kept").unwrap();
    log.flush().unwrap();
    fail_points.set_disk_full(true);
    // The journal has room reserved; a roll to a new segment is what needs new blocks.
    let mut acked = vec![b"kept".to_vec()];
    let mut offset = 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stalled = loop {
        let payload = payload("acked", offset);
        match log.append(b"k", &payload) {
            Ok(appended) => {
                assert_eq!(appended.offset, offset);
                acked.push(payload);
                offset += 1;
            }
            Err(error) => break error,
        }
        // The writer meets the full disk at the roll, some time after the appends queued.
        assert!(
            std::time::Instant::now() < deadline,
            "the disk never filled"
        );
        if offset > FRAMES_PER_SEGMENT {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    assert!(
        matches!(stalled, Error::WritesStalled { .. }),
        "{stalled:?}"
    );
    assert!(stalled.is_disk_full(), "{stalled:?}");
    let flushed = log.flush().unwrap_err();
    assert!(
        matches!(flushed, Error::WritesStalled { .. }),
        "{flushed:?}"
    );

    fail_points.set_disk_full(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resumed = loop {
        match log.append(b"k", b"resumed") {
            Ok(appended) => break appended,
            Err(Error::WritesStalled { .. }) => {
                assert!(std::time::Instant::now() < deadline, "never retried");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(resumed.offset, offset, "no offset was given twice");
    acked.push(b"resumed".to_vec());
    log.flush().unwrap();
    assert_eq!(payloads(&log), acked);
    log.close().unwrap();
    check_after_reopen(dir.path(), &acked);
}

/// A log closed while its writes still fail reports exactly which acknowledged appends it lost.
#[test]
fn a_close_that_cannot_write_names_the_lost_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(
        dir.path(),
        options(&fail_points).durability(annal::Durability::Buffered),
    )
    .unwrap();
    log.append(b"k", b"kept").unwrap();
    log.flush().unwrap();
    fail_points.fail_writes(u32::MAX);
    // One call: two separate appends race the writer's linger (200 us), and on a loaded
    // machine the second may meet the stall the first caused, and be refused.
    let lost = log.append_batch(b"k", [&b"lost 1"[..], b"lost 2"]).unwrap();
    let (lost_from, lost_to) = (lost.offset, lost.last_offset());
    let error = log.close().unwrap_err();
    match &error {
        Error::AppendsLost { lost, .. } => {
            assert_eq!(lost.len(), 1, "{error}");
            assert_eq!(
                (lost[0].partition, lost[0].first_offset, lost[0].last_offset),
                (0, lost_from, lost_to)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        error.to_string().contains("partition 0 offsets 1..=2"),
        "{error}"
    );
    fail_points.fail_writes(0);
    check_after_reopen(dir.path(), &[b"kept".to_vec()]);
}

/// A log whose creation met a full disk is not left half made: the open fails with a full-disk
/// error, and once space is back the next open creates it and takes appends.
#[test]
fn a_log_whose_creation_met_a_full_disk_opens_once_space_is_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    fail_points.set_disk_full(true);
    let error = Log::open(&dir, options(&fail_points)).unwrap_err();
    assert!(error.is_disk_full(), "{error:?}");
    fail_points.set_disk_full(false);
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    assert_eq!(log.append(b"k", b"first").unwrap().offset, 0);
    log.close().unwrap();
    check_after_reopen(&dir, &[b"first".to_vec()]);
}
