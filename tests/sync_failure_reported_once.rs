//! Regression test for a fixed bug (API contract): under `Sync` a failed write is returned to its appender as
//! `AppendFailed`, but `Partition::fail` also stores it in `Status::unreported`
//! (partition.rs fail), so a later `flush()` or `close()` fails with that old, already
//! reported error although everything appended since succeeded. `close()` promises "the first
//! write or sync failure not reported before"; `flush()` in a healthy state returns Err.

use annal::io::FailPoints;
use annal::{Durability, Error, Log, Options};

#[test]
fn a_failure_already_returned_to_its_appender_is_not_reported_again() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options).unwrap();
    fail_points.fail_writes(1);
    let error = log.append(b"k", b"fails").unwrap_err();
    assert!(matches!(error, Error::AppendFailed { .. }), "{error:?}");
    // Reported. Everything after succeeds.
    log.append(b"k", b"succeeds").unwrap();
    log.flush()
        .expect("flush after the failure was already reported");
    log.close()
        .expect("close after the failure was already reported");
}
