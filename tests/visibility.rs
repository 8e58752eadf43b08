//! What readers see between a write and its fsync. Under `Sync` and `Interval` a reader sees a
//! record only once its fsync has completed, so it never sees what a power loss could take
//! away; under `Buffered` it sees records once they are written to the OS. The fail points hold
//! every fsync, so the test can look at the log in that window.

mod common;

use std::time::{Duration, Instant};

use annal::io::FailPoints;
use annal::{Durability, Log, Options};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    // The bound only decides how long a failure takes to be reported.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn payloads_from(log: &Log, offset: u64) -> Vec<Vec<u8>> {
    common::read_from(log, 0, offset)
        .into_iter()
        .map(|record| record.payload.to_vec())
        .collect()
}

fn open(durability: Durability) -> (tempfile::TempDir, std::sync::Arc<FailPoints>, Log) {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = Options::default()
        .partitions(1)
        .durability(durability)
        .fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options).unwrap();
    (dir, fail_points, log)
}

#[test]
fn under_sync_a_written_record_is_invisible_until_its_fsync_completes() {
    let (_dir, fail_points, log) = open(Durability::Sync);
    log.append(b"k", b"durable").unwrap();
    let live_reader = log.read(0, 0).unwrap();
    fail_points.hold_syncs();
    let writes_before = log.stats().writes;
    std::thread::scope(|scope| {
        let appender = scope.spawn(|| log.append(b"k", b"in flight").unwrap());
        wait_until("the write of the second record", || {
            log.stats().writes > writes_before
        });
        assert_eq!(log.end_offset(0).unwrap(), 1, "visible before its fsync");
        assert_eq!(payloads_from(&log, 0), [b"durable".to_vec()]);
        assert!(payloads_from(&log, 1).is_empty());
        assert!(!appender.is_finished(), "append returned before its fsync");
        fail_points.release_syncs();
        assert_eq!(appender.join().unwrap().offset, 1);
    });
    assert_eq!(log.end_offset(0).unwrap(), 2);
    let seen: Vec<Vec<u8>> = live_reader.map(|r| r.unwrap().payload.to_vec()).collect();
    assert_eq!(seen, [b"durable".to_vec(), b"in flight".to_vec()]);
    log.close().unwrap();
}

#[test]
fn under_interval_a_written_record_is_invisible_until_the_interval_sync() {
    let (_dir, fail_points, log) = open(Durability::Interval(Duration::from_millis(5)));
    log.append(b"k", b"first").unwrap();
    log.flush().unwrap();
    fail_points.hold_syncs();
    let writes_before = log.stats().writes;
    let ticket = log.append_pipelined(b"k", b"second").unwrap();
    wait_until("the write of the second record", || {
        log.stats().writes > writes_before
    });
    // Written to the OS, and the interval has passed more than once: still not synced.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(log.end_offset(0).unwrap(), 1);
    assert_eq!(payloads_from(&log, 0), [b"first".to_vec()]);
    assert!(!ticket.is_done(), "a ticket resolved before its fsync");
    fail_points.release_syncs();
    assert_eq!(ticket.wait().unwrap().offset, 1);
    assert_eq!(
        payloads_from(&log, 0),
        [b"first".to_vec(), b"second".to_vec()]
    );
    log.close().unwrap();
}

#[test]
fn under_buffered_a_record_is_visible_once_written_before_any_fsync() {
    let (_dir, fail_points, log) = open(Durability::Buffered);
    // The partition's first segment is created (and synced, as every new file is) by its first
    // append; from then on nothing waits for the disk.
    log.append(b"k", b"first").unwrap();
    log.flush().unwrap();
    fail_points.hold_syncs();
    log.append(b"k", b"unsynced").unwrap();
    wait_until("the record to become visible", || {
        log.end_offset(0).unwrap() == 2
    });
    assert_eq!(
        payloads_from(&log, 0),
        [b"first".to_vec(), b"unsynced".to_vec()]
    );
    fail_points.release_syncs();
    log.close().unwrap();
}
