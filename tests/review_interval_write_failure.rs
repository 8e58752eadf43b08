//! Bug (contract): under `Interval`/`Buffered` an append is acknowledged when queued, yet a
//! later failed write makes `Writer::repair` cut the file back to the *visible* (synced) end and
//! `Partition::fail` reset `next_offset` to it (commit.rs repair, partition.rs fail): events that
//! were acknowledged and already written to the OS, in earlier successful rounds, are dropped
//! without a crash, and their offsets are handed to different events
//! (docs/durability.md: offsets "never reused for a different event once acknowledged";
//! Interval: "everything written to the OS survives" a kill).

use std::time::{Duration, Instant};

use annal::io::FailPoints;
use annal::{Durability, Log, Options};

#[test]
fn a_failed_write_never_takes_back_acknowledged_interval_appends() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Interval(Duration::from_secs(3600)))
        .fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options).unwrap();

    // Acknowledged, and written to the OS by the writer within a round.
    let a = log.append(b"k", b"A acknowledged").unwrap();
    assert_eq!(a.offset, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.stats().writes == 0 {
        assert!(Instant::now() < deadline, "A was never written");
        std::thread::sleep(Duration::from_millis(1));
    }

    // A later round's write fails.
    fail_points.fail_writes(1);
    let b = log.append(b"k", b"B").unwrap();
    assert_eq!(b.offset, 1);
    let _ = log.flush(); // reports B's failure

    let c = log.append(b"k", b"C").unwrap();
    log.flush().unwrap();
    assert_ne!(
        c.offset, a.offset,
        "offset {} of acknowledged A reused for C",
        a.offset
    );
    let payloads: Vec<Vec<u8>> = log
        .read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect();
    assert_eq!(
        payloads.first().map(Vec::as_slice),
        Some(&b"A acknowledged"[..])
    );
}
