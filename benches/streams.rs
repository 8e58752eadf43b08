//! Aggregate streams: hydrating one aggregate from a large log, and the cost of expected-version
//! and idempotent appends next to plain ones.
//!
//! The log holds `ANNAL_BENCH_STREAM_EVENTS` events (default 10,000,000) of 256 bytes over
//! `ANNAL_BENCH_STREAM_KEYS` keys (default 100,000), appended round-robin, so that each key's
//! events are spread over the whole log (every segment of its partition): the worst case for
//! a key lookup. `ANNAL_BENCH_QUICK=1` skips criterion and prints the summary only.

mod common;

use std::time::{Duration, Instant};

use annal::{Durability, Event, Expected, Log, Options};
use criterion::{Criterion, Throughput};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(n: u64) -> Vec<u8> {
    format!("account-{n:07}").into_bytes()
}

/// A small, fast, seeded generator for key choices (the benches time the log, not the RNG).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Fills a log with `events` events over `keys` keys, round-robin, in batches of one event per
/// key (one append per event, Buffered), and closes it.
fn build(dir: &std::path::Path, events: u64, keys: u64) -> Duration {
    let started = Instant::now();
    let log = Log::open(dir, Options::default().durability(Durability::Buffered)).expect("open");
    let payload = common::payload(256, 0);
    let names: Vec<Vec<u8>> = (0..keys).map(key).collect();
    for n in 0..events {
        log.append(&names[(n % keys) as usize], &payload)
            .expect("append");
    }
    log.close().expect("close");
    let built = started.elapsed();
    // The indexer builds sealed segments' key tables in the background, at the lowest priority:
    // while one producer keeps both cores busy it falls behind. A log in service has them; wait
    // for them here (an open starts the indexer on the segments still without a table).
    let log = Log::open(dir, Options::default()).expect("open");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_tables_built(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    log.close().expect("close");
    built
}

/// Whether every sealed segment (every segment but the last of each partition) has its table.
fn all_tables_built(dir: &std::path::Path) -> bool {
    let Ok(partitions) = std::fs::read_dir(dir) else {
        return false;
    };
    for partition in partitions.flatten().filter(|e| e.path().is_dir()) {
        let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(partition.path())
            .into_iter()
            .flatten()
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

/// Median and 99th percentile of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (p(0.5), p(0.99))
}

fn hydrate_group(c: &mut Criterion, log: &Log, keys: u64, per_key: u64) {
    let mut group = c.benchmark_group("hydrate");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(per_key));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    group.bench_function(format!("read_key_{per_key}_events"), |b| {
        b.iter(|| {
            let records = log.read_key(&key(rng.below(keys)), 0).expect("read_key");
            assert_eq!(records.len() as u64, per_key);
            records
        })
    });
    group.finish();
}

/// `threads` producers, each on its own keys (random among `keys`), `per_thread` appends each;
/// `kind` picks plain appends, `Exact(n)` appends, or appends with event ids.
fn producers(log: &Log, threads: u64, per_thread: u64, keys: u64, kind: Kind) -> f64 {
    let payload = common::payload(256, 0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let payload = &payload;
            scope.spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((t + 1) * 0x9e37_79b9));
                let mut versions = std::collections::HashMap::new();
                for i in 0..per_thread {
                    // Keys of thread t are those with n % threads == t.
                    let n = rng.below(keys / threads) * threads + t;
                    let name = key(n);
                    let event = Event::new(payload);
                    let appended = match kind {
                        Kind::Plain => log.append(&name, event),
                        Kind::Exact => {
                            let expected = match versions.get(&n) {
                                Some(&v) => Expected::Exact(v),
                                None => Expected::NoStream,
                            };
                            log.append_to(&name, expected, &[event])
                        }
                        Kind::Id => {
                            let id = u128::from(t) << 64 | u128::from(i);
                            log.append_to(&name, Expected::Any, &[event.id(id)])
                        }
                    }
                    .expect("append");
                    versions.insert(n, appended.last_version());
                }
            });
        }
    });
    (threads * per_thread) as f64 / started.elapsed().as_secs_f64()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    Exact,
    Id,
}

fn summary(dir: &std::path::Path, events: u64, keys: u64, build_time: Duration) {
    let per_key = events / keys;
    println!(
        "\n== annal streams summary ({events} events of 256 bytes, {keys} keys, {per_key} events \
         per key spread over the whole log; built in {:.1} s)",
        build_time.as_secs_f64()
    );
    // A fresh Log: nothing of the log in memory but what the OS page cache holds. Its open and
    // first hydration are what a newly started process pays.
    let started = Instant::now();
    let log = Log::open(dir, Options::default()).expect("open");
    let opened = started.elapsed();
    let started = Instant::now();
    let first = log.read_key(&key(keys / 2), 0).expect("read_key");
    let first_read = started.elapsed();
    assert_eq!(first.len() as u64, per_key);
    let mut rng = Rng(7);
    let mut warm = Vec::new();
    let mut cold_keys = Vec::new();
    for _ in 0..2_000 {
        let name = key(rng.below(keys));
        let started = Instant::now();
        let records = log.read_key(&name, 0).expect("read_key");
        cold_keys.push(started.elapsed());
        assert_eq!(records.len() as u64, per_key);
        let started = Instant::now();
        let again = log.read_key(&name, 0).expect("read_key");
        warm.push(started.elapsed());
        assert_eq!(again.len(), records.len());
    }
    let (cold_median, cold_p99) = percentiles(&mut cold_keys);
    let (warm_median, warm_p99) = percentiles(&mut warm);
    println!(
        "fresh Log: open {:.1} ms, first hydration {:.2} ms (loads the key tables of the \
         partition's segments)",
        opened.as_secs_f64() * 1e3,
        first_read.as_secs_f64() * 1e3
    );
    println!(
        "hydrate {per_key} events, a key not read before: median {:.0} us, p99 {:.0} us; the \
         same key again: median {:.0} us, p99 {:.0} us (target: median under 100 us)",
        cold_median.as_secs_f64() * 1e6,
        cold_p99.as_secs_f64() * 1e6,
        warm_median.as_secs_f64() * 1e6,
        warm_p99.as_secs_f64() * 1e6
    );
    log.close().expect("close");

    // Expected-version and idempotent appends against plain ones, Sync, 16 producers on random
    // keys, each on a fresh log, back to back.
    let mut rates = Vec::new();
    for kind in [Kind::Plain, Kind::Exact, Kind::Id, Kind::Plain] {
        let scratch = tempfile::tempdir().expect("tempdir");
        let log = Log::open(scratch.path(), Options::default()).expect("open");
        let rate = producers(&log, 16, 1_500, 100_000, kind);
        log.close().expect("close");
        rates.push((kind, rate));
    }
    let plain = (rates[0].1 + rates[3].1) / 2.0;
    for (kind, rate) in &rates[1..3] {
        println!(
            "Sync, 16 producers, random keys: {kind:?} {rate:.0} appends/s = {:.2} x plain \
             ({plain:.0}/s, mean of the runs before and after) (target >= 0.90)",
            rate / plain
        );
    }
}

/// Counts the bytes allocated on the heap and not yet freed, to measure what keys cost.
struct CountingAllocator;

static HEAP_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes
// the sizes.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn heap_bytes() -> i64 {
    HEAP_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a million keys cost in memory: one event appended to each of 1,000,000 new keys. The
/// heap is measured before and after (mappings, which are page cache, are not counted).
fn memory_per_key() {
    let keys = 1_000_000u64;
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = Log::open(
        scratch.path(),
        Options::default().durability(Durability::Buffered),
    )
    .expect("open");
    let payload = common::payload(64, 0);
    let before = heap_bytes();
    for n in 0..keys {
        log.append(&key(n), &payload).expect("append");
    }
    log.flush().expect("flush");
    let after = heap_bytes();
    let grown = (after - before).max(0) as f64;
    println!(
        "memory: 1,000,000 keys appended since open (one 64-byte event each, keys of 15 bytes): \
         the heap grew by {:.0} MB, {:.0} bytes per key (the versions map, and the in-memory \
         tables of the segments being written, one frame per key)",
        grown / 1e6,
        grown / keys as f64
    );
    log.close().expect("close");
}

fn main() {
    let events = env_u64("ANNAL_BENCH_STREAM_EVENTS", 10_000_000);
    let keys = env_u64("ANNAL_BENCH_STREAM_KEYS", 100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let build_time = build(dir.path(), events, keys);
    if std::env::var_os("ANNAL_BENCH_QUICK").is_none() {
        let log = Log::open(dir.path(), Options::default()).expect("open");
        let mut criterion = Criterion::default().configure_from_args();
        hydrate_group(&mut criterion, &log, keys, events / keys);
        log.close().expect("close");
        criterion.final_summary();
    }
    summary(dir.path(), events, keys, build_time);
    memory_per_key();
}
