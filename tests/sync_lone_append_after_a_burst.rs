//! Regression test for a fixed bug: under `Sync`, after a round of several frames the writer sleeps without a deadline
//! when the queue is empty, and `enqueue` only wakes it once `gather_target` frames are queued,
//! so a lone append after a burst hangs forever (commit.rs take_round / partition.rs enqueue).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use annal::{Durability, Log, Options};

#[test]
fn a_lone_sync_append_after_a_pipelined_burst_completes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            Options::default()
                .partitions(1)
                .durability(Durability::Sync),
        )
        .unwrap(),
    );
    for attempt in 0..20 {
        // A burst: many frames land in one round, so the next round gathers for that many.
        let tickets: Vec<_> = (0..64)
            .map(|i| {
                log.append_pipelined(b"k", format!("burst {attempt} {i}").as_bytes())
                    .unwrap()
            })
            .collect();
        for ticket in tickets {
            ticket.wait().unwrap();
        }
        // Then one lone append.
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let _ = tx.send(log2.append(b"k", b"lone").map(|_| ()));
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(result) => result.unwrap(),
            Err(_) => panic!("attempt {attempt}: a lone Sync append did not return within 5 s"),
        }
    }
}
