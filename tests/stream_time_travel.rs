//! Reading by time: `read_key_until(key, t)` returns exactly the key's events appended at or
//! before `t`, and `offset_for_timestamp(partition, t)` the first offset appended at or after
//! `t` (the partition's end if none), at every boundary: each event's timestamp, one before
//! and one after it, before the first event and after the last, across sealed segments and a
//! reopen.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annal::{Durability, Error, Log, Options, Record};
use common::read_all;
use common::segment_files::segment_bases;
use common::streams::keys_in_partition;
use common::{BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

/// Long enough for the next append to get a later millisecond timestamp.
const TICK: Duration = Duration::from_millis(2);

fn options() -> Options {
    Options::default()
        .partitions(2)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The moments worth asking about: each timestamp, one before and one after it, and the
/// extremes.
fn boundaries(timestamps: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut moments = vec![0, 1, u64::MAX - 1, u64::MAX];
    for t in timestamps {
        moments.extend([t - 1, t, t + 1]);
    }
    moments.sort_unstable();
    moments.dedup();
    moments
}

#[track_caller]
fn check_read_key_until(log: &Log, key: &[u8], records: &[Record], context: &str) {
    let moments = boundaries(records.iter().map(|r| r.timestamp_ms));
    for t in moments {
        let until = log.read_key_until(key, t).unwrap();
        let expected: Vec<&Record> = records.iter().filter(|r| r.timestamp_ms <= t).collect();
        let got: Vec<&Record> = until.iter().collect();
        assert_eq!(got, expected, "{context}: until {t}");
    }
}

#[test]
fn read_key_until_returns_the_key_as_it_was_at_each_moment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_partition(&log, "account", 0, 2);
    let (key, filler_key) = (&keys[0], &keys[1]);
    let filler = vec![b'f'; 3000];
    // Each append with the wall clock around it: its timestamp must fall in between.
    let mut windows = Vec::new();
    for step in 0..36u64 {
        let payloads: Vec<String> = (0..1 + step % 3).map(|i| format!("{step}.{i}")).collect();
        let before = now_ms();
        let appended = log
            .append_batch(key, payloads.iter().map(String::as_bytes))
            .unwrap();
        let after = now_ms();
        windows.extend((0..appended.count).map(|_| (before, after)));
        // Another key of the partition fills its segments: the key's events span several.
        if step % 4 == 3 {
            log.append_batch(filler_key, [&filler, &filler, &filler, &filler])
                .unwrap();
        }
        std::thread::sleep(TICK);
    }
    assert!(segment_bases(dir.path(), 0).len() >= 3, "segments rolled");
    let records = log.read_key(key, 0).unwrap();
    assert_eq!(records.len(), windows.len());
    for (record, (before, after)) in records.iter().zip(&windows) {
        assert!(
            (*before..=*after).contains(&record.timestamp_ms),
            "version {}: {} outside {before}..={after}",
            record.version,
            record.timestamp_ms
        );
    }
    let mut distinct: Vec<u64> = records.iter().map(|r| r.timestamp_ms).collect();
    distinct.dedup();
    assert!(
        distinct.len() >= 20,
        "distinct timestamps: {}",
        distinct.len()
    );
    // A batch shares one timestamp: a moment holds all of it or none.
    assert!(records
        .windows(2)
        .any(|w| w[0].timestamp_ms == w[1].timestamp_ms));

    check_read_key_until(&log, key, &records, "before reopening");
    assert!(log
        .read_key_until(b"no such key", u64::MAX)
        .unwrap()
        .is_empty());
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    check_read_key_until(&log, key, &records, "after reopening");
    log.close().unwrap();
}

#[track_caller]
fn check_offset_for_timestamp(log: &Log, partition: u32, context: &str) {
    let records = read_all(log, partition);
    let end = log.end_offset(partition).unwrap();
    for t in boundaries(records.iter().map(|r| r.timestamp_ms)) {
        let expected = records
            .iter()
            .find(|r| r.timestamp_ms >= t)
            .map_or(end, |r| r.offset);
        let got = log.offset_for_timestamp(partition, t).unwrap();
        assert_eq!(got, expected, "{context}: partition {partition} at {t}");
    }
}

#[test]
fn offset_for_timestamp_finds_the_first_offset_at_or_after_each_moment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = &keys_in_partition(&log, "clock", 0, 1)[0];
    let payload = vec![b'p'; 2500];
    // Batches of a varied size: runs of equal timestamps of varied length.
    for step in 0..40usize {
        let batch: Vec<&[u8]> = (0..1 + step % 4).map(|_| payload.as_slice()).collect();
        log.append_batch(key, batch).unwrap();
        std::thread::sleep(TICK);
    }
    let sealed = segment_bases(dir.path(), 0).len() - 1;
    assert!(sealed >= 3, "sealed segments: {sealed}");
    let records = read_all(&log, 0);
    assert!(records
        .windows(2)
        .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));

    check_offset_for_timestamp(&log, 0, "before reopening");
    // A partition without events answers its end, 0, whatever the moment.
    for t in [0, now_ms(), u64::MAX] {
        assert_eq!(log.offset_for_timestamp(1, t).unwrap(), 0);
    }
    let beyond = log.offset_for_timestamp(2, 0);
    assert!(
        matches!(beyond, Err(Error::PartitionOutOfRange { partition: 2, .. })),
        "{beyond:?}"
    );
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    check_offset_for_timestamp(&log, 0, "after reopening");
    // New events after the reopen are found too.
    std::thread::sleep(TICK);
    let later = now_ms();
    let appended = log.append(key, b"later").unwrap();
    assert_eq!(log.offset_for_timestamp(0, later).unwrap(), appended.offset);
    check_offset_for_timestamp(&log, 0, "after a later append");
    log.close().unwrap();
}
