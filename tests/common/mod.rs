//! Helpers shared by the integration tests, each of which includes them with `mod common;`:
//! options for small logs, reading records back, a log with a sealed segment, payloads, and in
//! the submodules the on-disk layout (`segment_files`), deterministic generators (`rng`), aggregate
//! streams (`streams`) and child processes (`child`).
#![allow(dead_code)]

pub mod child;
pub mod corpus;
pub mod rng;
pub mod segment_files;
pub mod streams;

use std::sync::Arc;

use annal::io::FailPoints;
use annal::{Durability, Log, Options, Record};

use segment_files::segment_bases;

/// The smallest segment size the engine allows: tests fill and roll segments cheaply.
pub const SMALL_SEGMENT_BYTES: u64 = 64 << 10;
/// Largest batch of the test options; it fits into a small segment.
pub const BATCH_BYTES_MAX: u32 = 16 << 10;

/// One partition, segments of `segment_bytes`, and batches and events of up to
/// `BATCH_BYTES_MAX` each; default durability (`Sync`).
pub fn one_partition(segment_bytes: u64) -> Options {
    Options::default()
        .partitions(1)
        .segment_bytes(segment_bytes)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .event_bytes_max(BATCH_BYTES_MAX)
}

/// One partition, small segments, batches of up to `BATCH_BYTES_MAX` and events of up to 8 KiB,
/// with the given durability.
pub fn small_segments(durability: Durability) -> Options {
    Options::default()
        .partitions(1)
        .durability(durability)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .event_bytes_max(8 << 10)
}

/// Every record of `partition` from offset `from` on, failing the test on any read error.
#[track_caller]
pub fn read_from(log: &Log, partition: u32, from: u64) -> Vec<Record> {
    log.read(partition, from)
        .unwrap()
        .collect::<annal::Result<_>>()
        .unwrap()
}

/// Every record of `partition`, failing the test on any read error.
#[track_caller]
pub fn read_all(log: &Log, partition: u32) -> Vec<Record> {
    read_from(log, partition, 0)
}

/// The record at `offset` of `partition`, failing the test if there is none or it does not read.
#[track_caller]
pub fn record_at(log: &Log, partition: u32, offset: u64) -> Record {
    log.read(partition, offset)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// The payloads of partition 0 in offset order, failing the test on any read error.
#[track_caller]
pub fn payloads(log: &Log) -> Vec<Vec<u8>> {
    log.read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect()
}

/// A record's headers as owned (name, value) pairs, in order.
pub fn headers_of(record: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    record
        .headers
        .iter()
        .map(|h| (h.name.to_vec(), h.value.to_vec()))
        .collect()
}

/// `head`, padded with `fill` (or cut) to `len` bytes.
pub fn padded(head: impl Into<Vec<u8>>, len: usize, fill: u8) -> Vec<u8> {
    let mut payload = head.into();
    payload.resize(len, fill);
    payload
}

/// A closed log in a new temporary directory: `count` copies of `payload` appended one by one
/// under key `k`, enough to fill segment 0 of partition 0 and seal it (checked).
#[track_caller]
pub fn sealed_log(options: Options, count: usize, payload: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    for _ in 0..count {
        log.append(b"k", payload).unwrap();
    }
    log.close().unwrap();
    let segments = segment_bases(dir.path(), 0).len();
    assert!(segments >= 2, "segment 0 is sealed");
    dir
}

/// Holds the syncs of a log's fail points from `new` until dropped. Declared after the `Log`
/// (locals drop in reverse order), it releases them before the log's drop waits for its
/// writer: a test that fails while syncs are held fails instead of hanging.
pub struct SyncsHeld(Arc<FailPoints>);

impl SyncsHeld {
    pub fn new(fail_points: &Arc<FailPoints>) -> SyncsHeld {
        fail_points.hold_syncs();
        SyncsHeld(fail_points.clone())
    }

    /// Lets the held syncs (and every later one) go.
    pub fn release(self) {}
}

impl Drop for SyncsHeld {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}
