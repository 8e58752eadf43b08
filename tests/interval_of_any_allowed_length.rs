//! Regression test for a fixed bug: `Durability::Interval(d)` with a huge `d` passes `Options::validate` but the writer
//! computes `Instant::now() + d` (commit.rs wants_sync), which panics and kills the writer
//! thread: `flush()` then waits forever, `writer_exited` is never set, and appended events are
//! silently dropped while `close()` returns Ok.

use std::sync::mpsc;
use std::time::Duration;

use annal::{Durability, Log, Options};

#[test]
fn a_huge_interval_is_refused_or_works() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Interval(Duration::MAX));
    let log = match Log::open(dir.path(), options) {
        Ok(log) => log,
        Err(annal::Error::InvalidOptions(_)) => return, // refusing it would be fine
        Err(e) => panic!("{e:?}"),
    };
    log.append(b"k", b"event").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let flushed = log.flush();
        let closed = log.close();
        let _ = tx.send((flushed.is_ok(), closed.is_ok()));
    });
    let (flushed, closed) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("flush() did not return within 5 s");
    assert!(flushed && closed);
    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 1);
}
