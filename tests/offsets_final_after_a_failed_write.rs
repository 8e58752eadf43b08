//! Regression test for a fixed bug (contract): under `Interval` and `Buffered` an append is
//! acknowledged with its offset when queued, yet a later failed write dropped the queue and
//! rewound the partition's next offset, so the next event was given the same offset
//! (`A -> Ok(0)`, `B -> Ok(1)`, B's write fails, `C -> Ok(1)`; the log held `[A, C]`).
//!
//! Now a failed write keeps the acknowledged appends and retries them; new appends are refused
//! with `WritesStalled` while it fails; once a retry succeeds, every acknowledged append is in
//! the log at the offset it was given and no offset was handed out twice.

use std::time::{Duration, Instant};

use annal::io::FailPoints;
use annal::{Durability, Error, Log, Options};

fn check(durability: Durability, fail: impl Fn(&FailPoints), heal: impl Fn(&FailPoints)) {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = Options::default()
        .partitions(1)
        .durability(durability)
        .fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options.clone()).unwrap();
    assert_eq!(log.append(b"k", b"A").unwrap().offset, 0);
    log.flush().unwrap();

    fail(&fail_points);
    assert_eq!(log.append(b"k", b"B").unwrap().offset, 1);
    // The flush makes the writer write B at once; the write fails, and the flush says so.
    let stalled = log.flush().unwrap_err();
    assert!(
        matches!(stalled, Error::WritesStalled { .. }),
        "{stalled:?}"
    );
    // While the write fails, appends are refused rather than given an offset.
    let refused = log.append(b"k", b"refused").unwrap_err();
    assert!(
        matches!(refused, Error::WritesStalled { .. }),
        "{refused:?}"
    );

    heal(&fail_points);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match log.append(b"k", b"C") {
            Ok(c) => break c,
            Err(Error::WritesStalled { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(c.offset, 2, "B kept offset 1; C comes after it");
    log.flush().unwrap();
    let payloads: Vec<Vec<u8>> = log
        .read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect();
    assert_eq!(payloads, [b"A".to_vec(), b"B".to_vec(), b"C".to_vec()]);
    log.close().unwrap();

    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 3);
    log.close().unwrap();
}

#[test]
fn a_failed_write_keeps_acknowledged_interval_appends_and_their_offsets() {
    check(
        Durability::Interval(Duration::from_secs(3600)),
        |f| f.fail_writes(u32::MAX),
        |f| f.fail_writes(0),
    );
}

#[test]
fn a_failed_write_keeps_acknowledged_buffered_appends_and_their_offsets() {
    check(
        Durability::Buffered,
        |f| f.fail_writes(u32::MAX),
        |f| f.fail_writes(0),
    );
}
