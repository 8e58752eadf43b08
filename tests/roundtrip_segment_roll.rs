//! Round trip through many segment rolls: everything appended is read back byte for byte, in
//! offset order, before and after reopening, in every durability mode; segments roll by size and
//! by age.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annal::{Durability, Event, Log, Options};
use common::rng::SplitMix64;
use common::segment_files::{index_path, segment_bases, segment_path};
use common::{read_all, SMALL_SEGMENT_BYTES};

const PARTITIONS: u32 = 3;

/// What a record must look like when read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    key: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Expected {
    fn event(&self) -> Event<'_> {
        self.headers
            .iter()
            .fold(Event::new(&self.payload), |event, (name, value)| {
                event.header(name, value)
            })
    }
}

/// The expected contents of every partition, in offset order.
struct Model {
    partitions: Vec<Vec<Expected>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn options(durability: Durability) -> Options {
    common::small_segments(durability).partitions(PARTITIONS)
}

fn random_event(rng: &mut SplitMix64, serial: u64) -> Expected {
    let key = format!("key-{}", rng.below(11)).into_bytes();
    // Mostly small events, some close to the event limit, some empty.
    let payload_len = match rng.below(10) {
        0 => 0,
        1 => 4_000 + rng.below(3_000) as usize,
        _ => 1 + rng.below(1_500) as usize,
    };
    let mut payload = rng.bytes(payload_len);
    if payload.len() >= 8 {
        payload[..8].copy_from_slice(&serial.to_le_bytes());
    }
    let trace_len = 1 + rng.below(64) as usize;
    let headers = match rng.below(4) {
        0 => vec![(b"type".to_vec(), b"OrderPlaced".to_vec())],
        1 => vec![
            (b"type".to_vec(), b"ItemAdded".to_vec()),
            (b"v".to_vec(), Vec::new()),
            (b"trace".to_vec(), rng.bytes(trace_len)),
        ],
        _ => Vec::new(),
    };
    Expected {
        key,
        headers,
        payload,
    }
}

/// Appends `count` events, single or in batches of one key, and checks each returned offset
/// against the model (this test appends from one thread, so offsets are predictable).
fn append_random(log: &Log, model: &mut Model, rng: &mut SplitMix64, count: usize) {
    let mut appended = 0;
    while appended < count {
        let batch_len = if rng.below(5) == 0 {
            2 + rng.below(4) as usize
        } else {
            1
        };
        let first = random_event(rng, (appended + 1) as u64);
        let mut batch = vec![first.clone()];
        for i in 1..batch_len {
            let mut event = random_event(rng, (appended + 1 + i) as u64);
            event.key = first.key.clone();
            // Keep batches under BATCH_BYTES_MAX: the big events stay single.
            event.payload.truncate(1_000);
            batch.push(event);
        }
        let partition = log.partition_for(&first.key);
        let at = if batch.len() == 1 {
            log.append(&first.key, first.event()).unwrap()
        } else {
            let events: Vec<Event<'_>> = batch.iter().map(Expected::event).collect();
            log.append_batch(&first.key, &events).unwrap()
        };
        let expected_offset = model.partitions[partition as usize].len() as u64;
        assert_eq!(at.partition, partition);
        assert_eq!(at.offset, expected_offset, "offsets continue the partition");
        assert_eq!(at.count as usize, batch.len());
        appended += batch.len();
        model.partitions[partition as usize].extend(batch);
    }
}

/// Reads every partition and compares it with the model: same records, offsets contiguous
/// from 0, timestamps never decreasing and inside `[earliest_ms, now]`.
fn assert_log_matches(log: &Log, model: &Model, earliest_ms: u64) {
    let latest_ms = now_ms();
    for (partition, expected) in model.partitions.iter().enumerate() {
        let partition = partition as u32;
        assert_eq!(log.end_offset(partition).unwrap(), expected.len() as u64);
        let records = read_all(log, partition);
        assert_eq!(records.len(), expected.len(), "partition {partition}");
        let mut previous_ms = 0;
        for (i, (record, expected)) in records.iter().zip(expected).enumerate() {
            assert_eq!(record.partition, partition);
            assert_eq!(record.offset, i as u64, "partition {partition}");
            assert_eq!(record.key.as_ref(), expected.key.as_slice(), "offset {i}");
            assert_eq!(
                record.payload.as_ref(),
                expected.payload.as_slice(),
                "offset {i}"
            );
            assert_eq!(common::headers_of(record), expected.headers, "offset {i}");
            assert!(
                record.timestamp_ms >= previous_ms,
                "timestamps decrease at {i}"
            );
            assert!(
                (earliest_ms..=latest_ms).contains(&record.timestamp_ms),
                "timestamp {} of offset {i} outside the test's run",
                record.timestamp_ms
            );
            previous_ms = record.timestamp_ms;
        }
    }
}

/// Every partition rolled over several segments; the first starts at offset 0, each later one
/// at an offset inside the partition, and every sealed one is at most `SMALL_SEGMENT_BYTES`
/// long.
fn assert_rolled(dir: &Path, model: &Model) {
    for (partition, expected) in model.partitions.iter().enumerate() {
        let partition = partition as u32;
        let bases = segment_bases(dir, partition);
        assert!(
            bases.len() >= 4,
            "partition {partition} has only {} segments",
            bases.len()
        );
        assert_eq!(bases[0], 0);
        assert!(bases.windows(2).all(|w| w[0] < w[1]));
        assert!(*bases.last().unwrap() < expected.len() as u64);
        for base in &bases {
            let idx = index_path(dir, partition, *base);
            assert!(idx.is_file(), "{} missing", idx.display());
            let seg = segment_path(dir, partition, *base);
            let len = std::fs::metadata(&seg).unwrap().len();
            assert!(
                len <= SMALL_SEGMENT_BYTES,
                "{} is {len} bytes",
                seg.display()
            );
        }
    }
}

fn round_trip(durability: Durability, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let start_ms = now_ms();
    let mut rng = SplitMix64(seed);
    let mut model = Model {
        partitions: vec![Vec::new(); PARTITIONS as usize],
    };

    let log = Log::open(dir.path(), options(durability)).unwrap();
    append_random(&log, &mut model, &mut rng, 1_500);
    // Interval and Buffered appends are visible only once synced or written; flush makes sure.
    log.flush().unwrap();
    assert_log_matches(&log, &model, start_ms);
    log.close().unwrap();
    assert_rolled(dir.path(), &model);

    // Reopen: sealed segments are read from disk, the active one is recovered.
    let log = Log::open(dir.path(), options(durability)).unwrap();
    assert_log_matches(&log, &model, start_ms);
    for partition in 0..PARTITIONS {
        let report = log.recovery_report().partition(partition).unwrap();
        assert!(!report.index_rebuilt, "partition {partition}: {report:?}");
        assert_eq!(report.events_replayed, 0, "a closed log replays nothing");
    }

    // Appends after the reopen continue each partition's offsets (checked in append_random).
    append_random(&log, &mut model, &mut rng, 400);
    log.flush().unwrap();
    assert_log_matches(&log, &model, start_ms);
    drop(log);

    // Buffered data written before a clean drop is also there after the next open.
    let log = Log::open(dir.path(), options(durability)).unwrap();
    assert_log_matches(&log, &model, start_ms);
    log.close().unwrap();
    assert_rolled(dir.path(), &model);
}

#[test]
fn sync_appends_round_trip_across_segment_rolls_and_reopens() {
    round_trip(Durability::Sync, 1);
}

#[test]
fn interval_appends_round_trip_across_segment_rolls_and_reopens() {
    round_trip(Durability::Interval(Duration::from_millis(10)), 2);
}

#[test]
fn buffered_appends_round_trip_across_segment_rolls_and_reopens() {
    round_trip(Durability::Buffered, 3);
}

/// Without a flush, Interval appends become readable on their own within a few intervals, and
/// Buffered ones after close and reopen.
#[test]
fn unflushed_appends_become_readable_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Durability::Interval(Duration::from_millis(10));
    let log = Log::open(dir.path(), options(interval).partitions(1)).unwrap();
    let at = log.append(b"k", b"interval").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.end_offset(0).unwrap() <= at.offset {
        assert!(
            std::time::Instant::now() < deadline,
            "not synced within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload.as_ref(), b"interval");
    log.close().unwrap();

    let log = Log::open(dir.path(), options(Durability::Buffered).partitions(1)).unwrap();
    for i in 0..100u32 {
        log.append(b"k", &i.to_le_bytes()).unwrap();
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), options(Durability::Sync).partitions(1)).unwrap();
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 101);
    for (i, record) in records[1..].iter().enumerate() {
        assert_eq!(record.offset, i as u64 + 1);
        assert_eq!(record.payload.as_ref(), &(i as u32).to_le_bytes());
    }
}

#[test]
fn segment_rolls_when_older_than_segment_age_max() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(Durability::Sync)
        .partitions(1)
        .segment_age_max(Duration::from_millis(200));
    let log = Log::open(dir.path(), options).unwrap();

    log.append(b"k", b"first").unwrap();
    assert_eq!(segment_bases(dir.path(), 0), vec![0]);
    std::thread::sleep(Duration::from_millis(250));
    let second = log.append(b"k", b"second").unwrap();
    assert_eq!(second.offset, 1);
    // The second append found the segment too old: it starts a new one at its own offset.
    assert_eq!(segment_bases(dir.path(), 0), vec![0, 1]);
    // An append right after stays in the young segment (the margin of 200 ms keeps this
    // deterministic on a loaded machine).
    log.append(b"k", b"third").unwrap();
    assert_eq!(segment_bases(dir.path(), 0), vec![0, 1]);

    let payloads: Vec<Vec<u8>> = read_all(&log, 0)
        .iter()
        .map(|r| r.payload.to_vec())
        .collect();
    assert_eq!(payloads, [&b"first"[..], b"second", b"third"]);
    log.close().unwrap();

    let log = Log::open(dir.path(), Options::default()).unwrap();
    let offsets: Vec<u64> = read_all(&log, 0).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);
}

#[test]
fn empty_segment_is_not_rolled_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(Durability::Sync)
        .partitions(1)
        .segment_age_max(Duration::from_millis(20));
    let log = Log::open(dir.path(), options).unwrap();
    // The segment made at open is old by now, but empty: the append goes into it.
    std::thread::sleep(Duration::from_millis(40));
    log.append(b"k", b"first").unwrap();
    assert_eq!(segment_bases(dir.path(), 0), vec![0]);
}
