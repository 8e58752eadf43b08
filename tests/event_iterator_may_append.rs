//! Regression test for a fixed bug: `Partition::enqueue` runs the caller's lazy event iterator while holding the
//! partition's queue lock (a non-reentrant parking_lot mutex), so an iterator that touches the
//! same partition (here: `Log::append_pipelined` for the same key) deadlocks the thread, and
//! with it every other appender of that partition.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use annal::{Durability, Event, Log, Options};

#[test]
fn a_batch_iterator_may_use_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            Options::default()
                .partitions(1)
                .durability(Durability::Buffered),
        )
        .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let events = (0..2).map(|i| {
            if i == 1 {
                // e.g. an audit event produced while the batch is built
                let _ = log2.append_pipelined(b"k", b"audit");
            }
            Event::new(b"batch event")
        });
        let _ = tx.send(log2.append_batch(b"k", events).map(|_| ()));
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("append_batch deadlocked on its own partition's queue lock")
        .unwrap();
}
