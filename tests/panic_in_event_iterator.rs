//! Regression test for a fixed bug: a panic inside the caller's event iterator, while `Partition::enqueue` encodes under
//! the queue lock, leaves a partial frame in `Queue::bytes` (`frame::encode` rolls back only on
//! `Err`, not on unwind); the next append's frame is then written shifted behind those bytes:
//! an acknowledged `Sync` append reads back as `Corrupt` and is cut away by recovery.

use std::panic::{catch_unwind, AssertUnwindSafe};

use annal::{Durability, Event, Log, Options};

#[test]
fn a_panicking_batch_iterator_does_not_corrupt_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Sync);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    let payload = b"first".to_vec();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let events = (0..2).map(|i| {
            if i == 1 {
                panic!("caller bug while producing the batch");
            }
            Event::new(&payload)
        });
        let _ = log.append_batch(b"k", events);
    }));
    assert!(result.is_err());

    // The log is still usable by other threads; this append is acknowledged (fsynced).
    let at = log.append(b"k", b"acknowledged").unwrap();
    assert_eq!(at.offset, 0);
    let read: Vec<String> = log
        .read(0, 0)
        .unwrap()
        .map(|r| match r {
            Ok(r) => String::from_utf8_lossy(&r.payload).into_owned(),
            Err(e) => format!("{e}"),
        })
        .collect();
    log.close().unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    let end_after_reopen = log.end_offset(0).unwrap();

    // Observed: read == ["corrupt ... position 64: zeros where a frame should be"], end 0.
    assert_eq!(read, ["acknowledged"], "read back before reopen");
    assert_eq!(end_after_reopen, 1, "acknowledged append lost by recovery");
}
