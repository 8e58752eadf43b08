//! Regression tests for two fixed bugs found by review: under `Buffered` and `Interval`, appends
//! acknowledged while a failing round was being written were queued behind the stalled round,
//! and the writer, which retries the stalled round without taking the queue, then let `close`
//! return Ok without ever writing them (their offsets were reused after reopen), and let
//! `flush` return Ok while they were neither written nor synced.

use std::time::Duration;

use annal::io::FailPoints;
use annal::{Durability, Log, Options};

fn options(durability: Durability) -> Options {
    Options::default().partitions(1).durability(durability)
}

/// Appends A, then F while A's round is held in a sync; then makes A's round fail cleanly.
fn stall_with_a_queued_append(log: &Log, fail_points: &FailPoints) {
    fail_points.hold_syncs(); // the writer blocks in the new segment's creation
    assert_eq!(log.append(b"k", b"A").unwrap().offset, 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(log.append(b"k", b"F").unwrap().offset, 1); // queued behind round A
    fail_points.set_disk_full(true);
    fail_points.release_syncs();
    std::thread::sleep(Duration::from_millis(100)); // round A fails cleanly: a stall
    fail_points.set_disk_full(false);
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    log.read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect()
}

#[test]
fn appends_queued_during_a_failing_round_survive_close() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(
        &dir,
        options(Durability::Buffered).fail_points(fail_points.clone()),
    )
    .unwrap();
    stall_with_a_queued_append(&log, &fail_points);
    log.close().unwrap();
    let log = Log::open(&dir, options(Durability::Buffered)).unwrap();
    assert_eq!(payloads(&log), [b"A".to_vec(), b"F".to_vec()]);
}

#[test]
fn a_flush_after_a_stall_covers_the_appends_queued_during_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let interval = Durability::Interval(Duration::from_secs(3600));
    let log = Log::open(&dir, options(interval).fail_points(fail_points.clone())).unwrap();
    stall_with_a_queued_append(&log, &fail_points);
    // A flush during the stall fails at once; one after it succeeds only with F written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match log.flush() {
            Ok(()) => break,
            Err(annal::Error::WritesStalled { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(log.end_offset(0).unwrap(), 2, "the flush covered F");
    assert_eq!(payloads(&log), [b"A".to_vec(), b"F".to_vec()]);
    log.close().unwrap();
}
