//! Sequential read of one partition from the page cache, checksums verified, against the cost
//! floor of the same bytes: computing their CRC-32 and copying them. Over the batch size, and
//! over the segment size: with small segments a replay crosses hundreds of them, and each sealed
//! segment beyond the few kept idle is mapped again on every replay.

mod common;

use std::time::Duration;

use annal::{Durability, Event, Log, Options, SEGMENT_BYTES_DEFAULT};
use criterion::{black_box, Criterion, Throughput};

const EVENTS: u64 = 1_000_000;

/// Small segments: about 300 for `EVENTS`, as many as the partition in the issue that found
/// mappings were never released.
const SMALL_SEGMENT_BYTES: u64 = 1 << 20;
/// Largest batch and event with small segments: the largest frame must fit into one.
const SMALL_SEGMENT_BATCH_BYTES_MAX: u32 = 64 << 10;

/// A one-partition log of `EVENTS` 256-byte events, appended in batches of `batch`, in segments
/// of `segment_bytes`.
fn build(batch: usize, segment_bytes: u64) -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = Options::default()
        .partitions(1)
        .durability(Durability::Buffered)
        .segment_bytes(segment_bytes);
    if segment_bytes == SMALL_SEGMENT_BYTES {
        options = options
            .batch_bytes_max(SMALL_SEGMENT_BATCH_BYTES_MAX)
            .event_bytes_max(SMALL_SEGMENT_BATCH_BYTES_MAX);
    }
    let log = Log::open(dir.path(), options).expect("open");
    let keys = common::keys();
    let payload = common::payload(256, 0);
    let events: Vec<Event> = (0..batch).map(|_| Event::new(&payload)).collect();
    let mut n = 0u64;
    while n < EVENTS {
        let key = &keys[(n % common::AGGREGATES) as usize];
        log.append_batch(key, &events).expect("append");
        n += batch as u64;
    }
    log.flush().expect("flush");
    (dir, log)
}

fn read_all(log: &Log) -> u64 {
    let mut count = 0u64;
    let mut bytes = 0usize;
    for record in log.read(0, 0).expect("read") {
        let record = record.expect("valid record");
        bytes += record.payload.len();
        count += 1;
    }
    black_box(bytes);
    count
}

/// The same, with records borrowed from the mapping (`Reader::next_ref`).
fn read_all_borrowed(log: &Log) -> u64 {
    let mut count = 0u64;
    let mut bytes = 0usize;
    let mut reader = log.read(0, 0).expect("read");
    while let Some(record) = reader.next_ref() {
        let record = record.expect("valid record");
        bytes += record.payload.len();
        count += 1;
    }
    black_box(bytes);
    count
}

fn segment_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("p0000"))
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    for path in paths {
        all.extend_from_slice(&std::fs::read(path).expect("read segment"));
    }
    all
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let cases = [
        (1usize, SEGMENT_BYTES_DEFAULT, ""),
        (100, SEGMENT_BYTES_DEFAULT, ""),
        (1, SMALL_SEGMENT_BYTES, "_segments1MiB"),
    ];
    for (batch, segment_size, suffix) in cases {
        let (dir, log) = build(batch, segment_size);
        assert_eq!(read_all(&log), EVENTS);
        let bytes = log.stats().written_bytes as usize;
        let raw = segment_bytes(dir.path());
        // The same number of bytes as the frames hold (segment headers aside).
        let data = &raw[..raw.len().min(bytes)];
        let name = format!("read_sequential_256B_batch{batch}{suffix}");
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(EVENTS));
        group.bench_function("annal_read", |b| b.iter(|| read_all(&log)));
        assert_eq!(read_all_borrowed(&log), EVENTS);
        group.bench_function("annal_read_borrowed", |b| {
            b.iter(|| read_all_borrowed(&log))
        });
        group.bench_function("baseline_crc32_same_bytes", |b| {
            b.iter(|| crc32fast::hash(black_box(data)))
        });
        let mut copy = vec![0u8; data.len()];
        group.bench_function("baseline_memcpy_same_bytes", |b| {
            b.iter(|| copy.copy_from_slice(black_box(data)))
        });
        group.finish();
        log.close().expect("close");
    }
    c.final_summary();
}
