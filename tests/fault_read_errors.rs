//! Injected read errors (`EIO`) on each file annal reads with `read` calls: `annal.meta`, the
//! partitions' `start` files, the header of the segment a checkpoint names, snapshots, and the
//! segment headers that age-based retention reads. Each is reported as `Error::Io` with op
//! "read" and the file's path, and nothing is lost or changed: once the disk reads again, the
//! log opens with every event, its starts, its snapshot and its group's cursors.
//!
//! Segments and the journal are read through mappings, where a failing disk sends `SIGBUS`
//! instead (`docs/durability.md`, "A read error on a mapped page ends the process"); index files
//! and key tables are derived data, rebuilt when they cannot be used.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use annal::io::FailPoints;
use annal::{Durability, Error, Log, Options};

const PARTITIONS: u32 = 2;
const GROUP: &str = "g";

fn options(fail_points: &Arc<FailPoints>) -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
        .retention_bytes_max(128 << 10)
        .fail_points(fail_points.clone())
}

fn key(k: u32) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// What the log holds: every record (partition, offset, key, payload), the starts, the
/// snapshot of key-1 (version, state), the group's cursors.
#[derive(Debug, PartialEq)]
struct Contents {
    records: Vec<(u32, u64, Vec<u8>, Vec<u8>)>,
    starts: Vec<u64>,
    snapshot: Option<(u64, Vec<u8>)>,
    committed: Vec<u64>,
}

fn contents(log: &Log) -> Contents {
    let starts: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.start_offset(p).unwrap())
        .collect();
    let mut records = Vec::new();
    for p in 0..PARTITIONS {
        for record in log.read(p, starts[p as usize]).unwrap() {
            let record = record.unwrap();
            records.push((
                p,
                record.offset,
                record.key.to_vec(),
                record.payload.to_vec(),
            ));
        }
    }
    let (snapshot, _) = log.load(&key(1)).unwrap();
    let snapshot = snapshot.map(|s| (s.version, s.state.to_vec()));
    let committed = log.group(GROUP).unwrap().committed();
    Contents {
        records,
        starts,
        snapshot,
        committed,
    }
}

/// A closed log with sealed segments, start files above 0, a snapshot and a group's commit.
fn build(dir: &Path) -> Contents {
    let log = Log::open(dir, options(&FailPoints::new())).unwrap();
    for i in 0..600u32 {
        let payload = format!("event {i} {}", "x".repeat(1_000));
        log.append(&key(i % 5), payload.as_bytes()).unwrap();
    }
    log.enforce_retention().unwrap();
    let last = log.last_version(&key(1)).unwrap().unwrap();
    log.save_snapshot(&key(1), last - 2, b"state of key-1")
        .unwrap();
    let group = log.group(GROUP).unwrap();
    let mut consumer = group.join().unwrap();
    let batch = loop {
        match consumer.poll(100, Duration::from_millis(10)) {
            Err(Error::EventsExpired { .. }) => continue,
            other => break other.unwrap(),
        }
    };
    consumer.commit(&batch).unwrap();
    drop(consumer);
    drop(group);
    let contents = contents(&log);
    assert!(
        contents.starts.iter().any(|&s| s > 0),
        "{:?}",
        contents.starts
    );
    assert!(contents.snapshot.is_some());
    log.close().unwrap();
    contents
}

/// `error` is the injected read error of a file whose path contains `pattern`.
fn is_read_error_of(error: &Error, pattern: &str) -> bool {
    match error {
        Error::Io { op, path, source } => {
            *op == "read"
                && path.to_string_lossy().contains(pattern)
                && source.raw_os_error() == Some(libc::EIO)
        }
        _ => false,
    }
}

#[test]
fn a_read_error_at_open_is_reported_with_its_file_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build(dir.path());
    // Each file open reads with `read` calls (the checkpoint's segments: their headers).
    for pattern in ["annal.meta", "start", ".seg"] {
        let fail_points = FailPoints::new();
        fail_points.fail_reads_of(Some(pattern));
        match Log::open(dir.path(), options(&fail_points)) {
            Err(e) => assert!(is_read_error_of(&e, pattern), "{pattern}: {e:?}"),
            Ok(_) => panic!("{pattern}: open read no such file"),
        }
        let log = Log::open(dir.path(), options(&FailPoints::new())).unwrap();
        assert_eq!(
            contents(&log),
            expected,
            "after a read error of {pattern} at open"
        );
        log.close().unwrap();
    }
}

#[test]
fn a_read_error_of_a_snapshot_is_an_error_of_the_load_and_the_next_load_works() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build(dir.path());
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), options(&fail_points)).unwrap();
    fail_points.fail_reads_of(Some(".snap"));
    // Never the events without the snapshot, as if there were none: an error.
    let error = log.load(&key(1)).unwrap_err();
    assert!(is_read_error_of(&error, ".snap"), "{error:?}");
    fail_points.clear_failures();
    assert_eq!(contents(&log), expected);
    log.close().unwrap();
}

#[test]
fn a_read_error_during_age_retention_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build(dir.path());
    let fail_points = FailPoints::new();
    // An age limit every segment is past: retention reads the next segment's header to date
    // each one.
    let aged = || {
        options(&fail_points)
            .retention_bytes_max(u64::MAX)
            .retention_age_max(Duration::from_millis(1))
    };
    let log = Log::open(dir.path(), aged()).unwrap();
    fail_points.fail_reads_of(Some(".seg"));
    let error = log.enforce_retention().unwrap_err();
    assert!(is_read_error_of(&error, ".seg"), "{error:?}");
    assert_eq!(contents(&log).starts, expected.starts, "nothing deleted");
    fail_points.clear_failures();
    let report = log.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0, "{report:?}");
    log.close().unwrap();
}
