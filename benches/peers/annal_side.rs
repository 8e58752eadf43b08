//! annal's side of every row, with the options its own benches use.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use annal::{Durability, Event, Log, Options};

use crate::drive::{self, aggregate};
use crate::{common, BATCH_EVENTS, PAYLOAD_BYTES};

fn open(dir: &Path, durability: Durability) -> Log {
    Log::open(dir, Options::default().durability(durability)).expect("open annal")
}

/// `threads` blocking producers, one `append` each at a time, `Durability::Sync`.
pub fn durable(threads: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Sync);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let rate = drive::producers_rate(
        threads,
        duration,
        |thread, i| {
            log.append(&keys[aggregate(thread, i)], &payload)
                .expect("append");
            1
        },
        || {},
    );
    log.close().expect("close");
    rate
}

/// `threads` producers, each appending batches of `BATCH_EVENTS` under one key,
/// `Durability::Buffered`; one flush at the end, timed.
pub fn batches(threads: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Buffered);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let events: Vec<Event> = (0..BATCH_EVENTS).map(|_| Event::new(&payload)).collect();
    let rate = drive::producers_rate(
        threads,
        duration,
        |thread, i| {
            log.append_batch(&keys[aggregate(thread, i)], &events)
                .expect("append");
            BATCH_EVENTS as u64
        },
        || log.flush().expect("flush"),
    );
    log.close().expect("close");
    rate
}

/// Builds a log of `events` in batches of `BATCH_EVENTS` (one key per batch), then replays every
/// partition from offset 0, checksums verified.
pub fn replay(events: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Buffered);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let batch: Vec<Event> = (0..BATCH_EVENTS).map(|_| Event::new(&payload)).collect();
    for n in 0..events / BATCH_EVENTS as u64 {
        let key = &keys[(n % common::AGGREGATES) as usize];
        log.append_batch(key, &batch).expect("append");
    }
    log.flush().expect("flush");
    let rate = drive::repeated_rate(duration, || {
        let (count, bytes) = read_everything(&log);
        assert_eq!(count, events, "annal replayed every event");
        std::hint::black_box(bytes);
        count
    });
    log.close().expect("close");
    rate
}

/// Workload 8: a log of `events` (written in batches), drained by one member of a new
/// consumer group per repetition, committing every `BATCH_EVENTS` events, each commit durable
/// (`Durability::Sync`) before the next poll.
/// `in_flight` commits are queued with `commit_pipelined` before the oldest is waited for (0:
/// each commit blocks).
pub fn drain(events: u64, duration: Duration, in_flight_max: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Buffered);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let batch: Vec<Event> = (0..BATCH_EVENTS).map(|_| Event::new(&payload)).collect();
    for n in 0..events / BATCH_EVENTS as u64 {
        let key = &keys[(n % common::AGGREGATES) as usize];
        log.append_batch(key, &batch).expect("append");
    }
    log.close().expect("close");
    let log = open(dir.path(), Durability::Sync);
    let mut run = 0;
    let rate = drive::repeated_rate(duration, || {
        run += 1;
        let group = log.group(&format!("drain-{run}")).expect("group");
        let mut consumer = group.join().expect("join");
        let mut count = 0u64;
        let mut bytes = 0usize;
        let mut in_flight: std::collections::VecDeque<annal::Ticket> = Default::default();
        while count < events {
            let batch = consumer
                .poll(BATCH_EVENTS, Duration::from_millis(100))
                .expect("poll");
            for delivery in &batch {
                bytes += delivery.record.payload.len();
            }
            count += batch.len() as u64;
            if in_flight_max > 0 {
                // The next batches are read while commits' syncs are in flight; the oldest
                // is waited for once `in_flight_max` are.
                if in_flight.len() == in_flight_max {
                    let oldest = in_flight.pop_front().expect("one in flight");
                    oldest.wait().expect("commit");
                }
                in_flight.extend(consumer.commit_pipelined(&batch).expect("commit"));
            } else {
                consumer.commit(&batch).expect("commit");
            }
        }
        for ticket in in_flight {
            ticket.wait().expect("commit");
        }
        std::hint::black_box(bytes);
        count
    });
    log.close().expect("close");
    rate
}

/// Every record of every partition in offset order; (records, payload bytes).
fn read_everything(log: &Log) -> (u64, usize) {
    let mut count = 0u64;
    let mut bytes = 0usize;
    // Borrowed records (`next_ref`): checked as owned ones are, without a reference count per
    // record, as the peers hand out slices of their read buffers.
    for partition in 0..log.partition_count() {
        let mut reader = log.read(partition, 0).expect("read");
        while let Some(record) = reader.next_ref() {
            bytes += record.expect("valid record").payload.len();
            count += 1;
        }
    }
    (count, bytes)
}

/// Builds a log of `events` appended one at a time round-robin over all aggregates, so that
/// each aggregate's events are spread over the whole log (the worst case for a key lookup), and
/// waits for the background key tables; then the median time of `read_key` of a random
/// aggregate, in a freshly opened `Log`.
pub fn hydrate(events: u64, duration: Duration) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Buffered);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for n in 0..events {
        log.append(&keys[(n % common::AGGREGATES) as usize], &payload)
            .expect("append");
    }
    log.close().expect("close");
    let log = open(dir.path(), Durability::Sync);
    wait_for_key_tables(dir.path());
    let per_aggregate = events / common::AGGREGATES;
    let median = drive::median_latency(duration, |aggregate| {
        let records = log.read_key(&keys[aggregate], 0).expect("read_key");
        assert_eq!(
            records.len() as u64,
            per_aggregate,
            "annal hydrated one aggregate"
        );
    });
    log.close().expect("close");
    median
}

/// The indexer builds sealed segments' key tables in the background, at the lowest priority;
/// a log in service has them, so the lookups are timed once every sealed segment (every
/// segment but the last of each partition) has its `.keys` file, as in `benches/streams.rs`.
fn wait_for_key_tables(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_key_tables_built(dir) {
        assert!(Instant::now() < deadline, "key tables not built in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_key_tables_built(dir: &Path) -> bool {
    let partitions = std::fs::read_dir(dir).expect("log dir");
    for partition in partitions.flatten().filter(|e| e.path().is_dir()) {
        let mut segments: Vec<_> = std::fs::read_dir(partition.path())
            .expect("partition dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        segments.pop();
        if segments.iter().any(|s| !s.with_extension("keys").exists()) {
            return false;
        }
    }
    true
}

/// What one pipelining thread achieves with `depth` appends in flight, `Durability::Sync`.
pub struct Pipelined {
    pub events_per_s: f64,
    /// Journal bytes written per second.
    pub bytes_per_s: f64,
    /// Journal bytes per `fdatasync`: the size the raw ceiling is measured at.
    pub bytes_per_sync: usize,
}

pub fn pipelined(depth: usize, duration: Duration) -> Pipelined {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), Durability::Sync);
    let keys = common::keys();
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let before = log.stats();
    let started = Instant::now();
    let mut tickets = VecDeque::with_capacity(depth);
    let mut events = 0u64;
    while started.elapsed() < duration {
        let key = &keys[(events % common::AGGREGATES) as usize];
        tickets.push_back(log.append_pipelined(key, &payload).expect("append"));
        events += 1;
        if tickets.len() >= depth {
            let oldest = tickets.pop_front().expect("not empty");
            oldest.wait().expect("durable");
        }
    }
    for ticket in tickets {
        ticket.wait().expect("durable");
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = log.stats().since(&before);
    log.close().expect("close");
    Pipelined {
        events_per_s: events as f64 / seconds,
        bytes_per_s: stats.written_bytes as f64 / seconds,
        bytes_per_sync: (stats.written_bytes / stats.data_syncs.max(1)) as usize,
    }
}
