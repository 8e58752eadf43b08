//! Aggregate streams as the tests look at them: keys that land in chosen partitions, one key's
//! stream and the global order read back whole, the per-segment key table files, and a retry's
//! answer checked against its original.

use std::fs;
use std::path::{Path, PathBuf};

use annal::{Appended, Log, Record};

use super::segment_files::partition_dir;

/// The key table file of the segment of `partition` that starts at offset `base`.
pub fn keys_path(dir: &Path, partition: u32, base: u64) -> PathBuf {
    partition_dir(dir, partition).join(format!("{base:020}.keys"))
}

/// The base offsets of the key table files of `partition` that exist, in order.
pub fn keys_bases(dir: &Path, partition: u32) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(partition_dir(dir, partition)) else {
        return Vec::new();
    };
    let mut bases: Vec<u64> = entries
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".keys").map(|stem| stem.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// `count` keys `{prefix}-{n}`, each in a different partition of `log` (so `count` must not be
/// above the partition count), in the order found.
pub fn keys_in_distinct_partitions(log: &Log, prefix: &str, count: usize) -> Vec<Vec<u8>> {
    assert!(count <= log.partition_count() as usize);
    let mut taken = Vec::new();
    let mut keys = Vec::new();
    let mut n = 0u32;
    while keys.len() < count {
        let key = format!("{prefix}-{n}").into_bytes();
        let partition = log.partition_for(&key);
        if !taken.contains(&partition) {
            taken.push(partition);
            keys.push(key);
        }
        n += 1;
    }
    keys
}

/// `count` keys `{prefix}-{n}` that all land in `partition` of `log`.
pub fn keys_in_partition(log: &Log, prefix: &str, partition: u32, count: usize) -> Vec<Vec<u8>> {
    (0u32..)
        .map(|n| format!("{prefix}-{n}").into_bytes())
        .filter(|key| log.partition_for(key) == partition)
        .take(count)
        .collect()
}

/// `key`'s events from `from_version`, failing the test on any error.
#[track_caller]
pub fn stream(log: &Log, key: &[u8], from_version: u64) -> Vec<Record> {
    log.read_key(key, from_version).unwrap()
}

/// The payloads of `key`'s events from `from_version`, failing the test on any error.
#[track_caller]
pub fn stream_payloads(log: &Log, key: &[u8], from_version: u64) -> Vec<Vec<u8>> {
    stream(log, key, from_version)
        .iter()
        .map(|r| r.payload.to_vec())
        .collect()
}

/// Everything visible in the global order from `from_global`, failing the test on any error.
#[track_caller]
pub fn global_order(log: &Log, from_global: u64) -> Vec<Record> {
    log.read_all(from_global)
        .unwrap()
        .collect::<annal::Result<_>>()
        .unwrap()
}

/// Events visible in all partitions together.
#[track_caller]
pub fn visible_events(log: &Log) -> u64 {
    (0..log.partition_count())
        .map(|p| log.end_offset(p).unwrap())
        .sum()
}

/// `retry` is the original append `original` of a call with `count` events, returned again.
#[track_caller]
pub fn assert_duplicate_of(retry: Appended, original: Appended, count: u32) {
    assert!(retry.duplicate, "{retry:?}");
    assert!(!original.duplicate, "{original:?}");
    assert_eq!(
        (
            retry.partition,
            retry.offset,
            retry.version,
            retry.global_position,
            retry.count
        ),
        (
            original.partition,
            original.offset,
            original.version,
            original.global_position,
            count
        )
    );
}
