//! Appends from many threads at once: every acknowledged event is in the log exactly once, in
//! its key's partition, at the offset its append reported; each partition's offsets are
//! contiguous from 0; and one key's events keep the order in which they were appended.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use annal::{Durability, Event, Log, Options, Record};

/// Where an event landed: partition and offset.
type Landed = (u32, u64);
use common::{read_all, record_at};

const PARTITIONS: u32 = 4;
const THREADS: u32 = 8;
const EVENTS_PER_THREAD: u32 = 2_000;
const KEYS_PER_THREAD: u32 = 3;

/// Identifies one event: which thread appended it, under which of its keys, as the how-manieth
/// event of that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EventId {
    thread: u32,
    key: u32,
    seq: u32,
}

impl EventId {
    fn key_bytes(&self) -> Vec<u8> {
        format!("thread-{}-key-{}", self.thread, self.key).into_bytes()
    }

    /// The id, then padding of varied length so frames differ in size.
    fn payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(12 + 64);
        payload.extend_from_slice(&self.thread.to_le_bytes());
        payload.extend_from_slice(&self.key.to_le_bytes());
        payload.extend_from_slice(&self.seq.to_le_bytes());
        payload.resize(
            12 + (self.seq as usize * 7 + self.thread as usize) % 64,
            0xee,
        );
        payload
    }

    fn parse(record: &Record) -> EventId {
        let p = &record.payload;
        assert!(p.len() >= 12, "payload too short at {}", record.offset);
        let id = EventId {
            thread: u32::from_le_bytes(p[0..4].try_into().unwrap()),
            key: u32::from_le_bytes(p[4..8].try_into().unwrap()),
            seq: u32::from_le_bytes(p[8..12].try_into().unwrap()),
        };
        assert_eq!(record.payload.as_ref(), id.payload().as_slice());
        assert_eq!(record.key.as_ref(), id.key_bytes().as_slice());
        id
    }
}

fn options(durability: Durability) -> Options {
    // Small segments, so the writers also roll segments while appenders race.
    common::small_segments(durability).partitions(PARTITIONS)
}

/// One thread's appends: its keys in turn, sometimes two or three events of a key as a batch.
/// Returns where each event was reported to land.
fn append_from_thread(log: &Log, thread: u32) -> Vec<(EventId, Landed)> {
    let mut next_seq = vec![0u32; KEYS_PER_THREAD as usize];
    let mut landed = Vec::with_capacity(EVENTS_PER_THREAD as usize);
    let mut appended = 0;
    let mut round = 0u32;
    while appended < EVENTS_PER_THREAD {
        let key = round % KEYS_PER_THREAD;
        let batch_len = if round % 10 == 9 { 3 } else { 1 };
        let batch_len = batch_len.min(EVENTS_PER_THREAD - appended);
        round += 1;
        let ids: Vec<EventId> = (0..batch_len)
            .map(|i| EventId {
                thread,
                key,
                seq: next_seq[key as usize] + i,
            })
            .collect();
        next_seq[key as usize] += batch_len;
        let payloads: Vec<Vec<u8>> = ids.iter().map(EventId::payload).collect();
        let key_bytes = ids[0].key_bytes();
        let at = if batch_len == 1 {
            log.append(&key_bytes, &payloads[0]).unwrap()
        } else {
            log.append_batch(&key_bytes, payloads.iter().map(Event::new))
                .unwrap()
        };
        assert_eq!(at.count, batch_len);
        for (i, id) in ids.into_iter().enumerate() {
            landed.push((id, (at.partition, at.offset + i as u64)));
        }
        appended += batch_len;
    }
    landed
}

/// Reads every partition and checks it against what the appenders were told.
fn assert_log_holds_exactly(log: &Log, landed: &[(EventId, Landed)]) {
    let mut found: HashMap<EventId, (u32, u64)> = HashMap::with_capacity(landed.len());
    let mut total = 0u64;
    for partition in 0..PARTITIONS {
        let records: Vec<Record> = read_all(log, partition);
        assert_eq!(log.end_offset(partition).unwrap(), records.len() as u64);
        let mut last_seq: HashMap<(u32, u32), u32> = HashMap::new();
        let mut last_timestamp_ms = 0;
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, i as u64, "offsets contiguous in {partition}");
            assert!(record.timestamp_ms >= last_timestamp_ms);
            last_timestamp_ms = record.timestamp_ms;
            let id = EventId::parse(record);
            assert_eq!(
                log.partition_for(&record.key),
                partition,
                "{id:?} is outside its key's partition"
            );
            if let Some(previous) = last_seq.insert((id.thread, id.key), id.seq) {
                assert!(
                    id.seq > previous,
                    "{id:?} at offset {i} after seq {previous}: per-key order broken"
                );
            }
            let duplicate = found.insert(id, (partition, record.offset));
            assert!(duplicate.is_none(), "{id:?} is in the log twice");
        }
        total += records.len() as u64;
    }
    assert_eq!(total, landed.len() as u64, "events lost or invented");
    for (id, at) in landed {
        assert_eq!(
            found.get(id),
            Some(at),
            "{id:?} is not where its append said"
        );
    }
}

fn concurrent_round_trip(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(durability)).unwrap();
    let landed: Vec<(EventId, Landed)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let log = &log;
                scope.spawn(move || append_from_thread(log, thread))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(landed.len(), (THREADS * EVENTS_PER_THREAD) as usize);
    log.flush().unwrap();
    assert_log_holds_exactly(&log, &landed);
    log.close().unwrap();

    let log = Log::open(dir.path(), options(durability)).unwrap();
    assert_log_holds_exactly(&log, &landed);
}

#[test]
fn sync_appends_from_eight_threads_are_all_present_once_in_key_order() {
    concurrent_round_trip(Durability::Sync);
}

#[test]
fn buffered_appends_from_eight_threads_are_all_present_once_in_key_order() {
    concurrent_round_trip(Durability::Buffered);
}

#[test]
fn interval_appends_from_eight_threads_are_all_present_once_in_key_order() {
    concurrent_round_trip(Durability::Interval(Duration::from_millis(2)));
}

/// Pipelined appends from several threads, each keeping up to `WINDOW` tickets in flight: every
/// ticket resolves to the place it announced, and once `wait` returns the event is readable.
#[test]
fn pipelined_appends_resolve_their_tickets_where_announced() {
    const WINDOW: usize = 64;
    const PIPELINE_THREADS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(Durability::Sync)).unwrap();
    let landed: Vec<(EventId, Landed)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PIPELINE_THREADS)
            .map(|thread| {
                let log = &log;
                scope.spawn(move || {
                    let mut in_flight = VecDeque::with_capacity(WINDOW);
                    let mut landed = Vec::new();
                    let mut resolve = |(id, ticket): (EventId, annal::Ticket)| {
                        let announced = ticket.appended();
                        let done = ticket.wait().unwrap();
                        assert_eq!(done, announced);
                        assert!(log.end_offset(done.partition).unwrap() > done.offset);
                        if id.seq % 97 == 0 {
                            // Synced means visible: read it right away.
                            let record = record_at(log, done.partition, done.offset);
                            assert_eq!(EventId::parse(&record), id);
                        }
                        landed.push((id, (done.partition, done.offset)));
                    };
                    for i in 0..EVENTS_PER_THREAD {
                        let id = EventId {
                            thread,
                            key: i % KEYS_PER_THREAD,
                            seq: i / KEYS_PER_THREAD,
                        };
                        let ticket = log
                            .append_pipelined(&id.key_bytes(), &id.payload())
                            .unwrap();
                        assert_eq!(ticket.appended().count, 1);
                        if in_flight.len() == WINDOW {
                            resolve(in_flight.pop_front().unwrap());
                        }
                        in_flight.push_back((id, ticket));
                    }
                    in_flight.into_iter().for_each(&mut resolve);
                    landed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(
        landed.len(),
        (PIPELINE_THREADS * EVENTS_PER_THREAD) as usize
    );
    // Every ticket was waited for, so nothing needs a flush to be visible.
    let end: u64 = (0..PARTITIONS).map(|p| log.end_offset(p).unwrap()).sum();
    assert_eq!(end, landed.len() as u64);
    assert_log_holds_exactly(&log, &landed);
}

/// Tickets of one thread's pipelined appends to one key get consecutive offsets in call order,
/// even with other threads appending to the same partition.
#[test]
fn pipelined_appends_to_one_key_keep_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(Durability::Sync).partitions(1)).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let log = &log;
            scope.spawn(move || {
                let key = format!("k{thread}");
                let tickets: Vec<_> = (0..500u32)
                    .map(|i| log.append_pipelined(key.as_bytes(), &i.to_le_bytes()))
                    .collect::<annal::Result<_>>()
                    .unwrap();
                let offsets: Vec<u64> = tickets
                    .into_iter()
                    .map(|t| t.wait().unwrap().offset)
                    .collect();
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{key} reordered");
                for (i, offset) in offsets.iter().enumerate().step_by(50) {
                    let record = record_at(log, 0, *offset);
                    assert_eq!(record.key.as_ref(), key.as_bytes());
                    assert_eq!(record.payload.as_ref(), &(i as u32).to_le_bytes());
                }
            });
        }
    });
    assert_eq!(log.end_offset(0).unwrap(), 2_000);
}
