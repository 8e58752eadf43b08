//! Append throughput: event size x producer threads x durability, pipelined `Sync` appends from
//! one thread, and the raw `write + fdatasync` ceiling of the same disk, measured in the same run.
//!
//! After criterion's groups, a summary prints the targets as ratios measured
//! back to back: `cargo bench --bench append`. Set `ANNAL_BENCH_QUICK=1` to run only the
//! summary.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use annal::{Durability, Log, Options};
use common::RawFile;
use criterion::{BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [64, 256, 4096];
const THREADS: [usize; 3] = [1, 4, 16];

fn durabilities() -> [(&'static str, Durability); 3] {
    [
        ("sync", Durability::Sync),
        (
            "interval_10ms",
            Durability::Interval(Duration::from_millis(10)),
        ),
        ("buffered", Durability::Buffered),
    ]
}

/// `total` appends of `size` bytes from `threads` blocking producers; flushes at the end so
/// that every mode is measured to the same point (written and synced).
fn run_producers(log: &Log, threads: usize, total: u64, size: usize) -> Duration {
    let started = Instant::now();
    let per_thread = total.div_ceil(threads as u64);
    let keys = common::keys();
    std::thread::scope(|scope| {
        for t in 0..threads as u64 {
            let keys = &keys;
            scope.spawn(move || {
                let payload = common::payload(size, t);
                for i in 0..per_thread {
                    let n = (t * 1_009 + i) % common::AGGREGATES;
                    log.append(&keys[n as usize], &payload).expect("append");
                }
            });
        }
    });
    log.flush().expect("flush");
    started.elapsed()
}

/// `total` events (rounded up to whole batches) appended in batches of `batch` under one key
/// per batch, then flushed.
fn run_batches(log: &Log, total: u64, batch: usize, size: usize) -> Duration {
    let payload = common::payload(size, 0);
    let keys = common::keys();
    let events: Vec<annal::Event> = (0..batch).map(|_| annal::Event::new(&payload)).collect();
    let started = Instant::now();
    for n in 0..total.div_ceil(batch as u64) {
        let key = &keys[(n % common::AGGREGATES) as usize];
        log.append_batch(key, &events).expect("append");
    }
    log.flush().expect("flush");
    started.elapsed()
}

/// `total` pipelined appends from one thread with at most `depth` in flight.
fn run_pipelined(log: &Log, depth: usize, total: u64, size: usize) -> Duration {
    let payload = common::payload(size, 0);
    let keys = common::keys();
    let started = Instant::now();
    let mut tickets = VecDeque::with_capacity(depth);
    for n in 0..total {
        let key = &keys[(n % common::AGGREGATES) as usize];
        tickets.push_back(log.append_pipelined(key, &payload).expect("append"));
        if tickets.len() >= depth {
            tickets
                .pop_front()
                .expect("not empty")
                .wait()
                .expect("durable");
        }
    }
    for ticket in tickets {
        ticket.wait().expect("durable");
    }
    started.elapsed()
}

fn append_groups(c: &mut Criterion) {
    for (name, durability) in durabilities() {
        let mut group = c.benchmark_group(format!("append_{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Elements(1));
        for size in SIZES {
            for threads in THREADS {
                let dir = tempfile::tempdir().expect("tempdir");
                let log =
                    Log::open(dir.path(), Options::default().durability(durability)).expect("open");
                group.bench_with_input(
                    BenchmarkId::new(format!("{size}B"), format!("{threads}_producers")),
                    &(size, threads),
                    |b, &(size, threads)| {
                        b.iter_custom(|iters| run_producers(&log, threads, iters, size))
                    },
                );
                log.close().expect("close");
            }
        }
        group.finish();
    }
}

fn pipelined_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipelined_sync_256B");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for depth in [16usize, 256, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), Options::default()).expect("open");
        group.bench_with_input(BenchmarkId::new("depth", depth), &depth, |b, &depth| {
            b.iter_custom(|iters| run_pipelined(&log, depth, iters, 256))
        });
        log.close().expect("close");
    }
    group.finish();
}

fn raw_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_write_fdatasync");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in [RawFile::Growing, RawFile::Fallocated, RawFile::Zeroed] {
        for bytes in [305usize, 4096, 65536, 1 << 20] {
            let file = common::raw_file(dir.path(), kind, 512 << 20);
            let buf = vec![0x5au8; bytes];
            group.throughput(Throughput::Bytes(bytes as u64));
            let mut position = 0u64;
            group.bench_function(BenchmarkId::new(format!("{kind:?}"), bytes), |b| {
                b.iter(|| {
                    if position + bytes as u64 > 512 << 20 {
                        position = 0;
                    }
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(&buf, position).expect("write");
                    file.sync_data().expect("fdatasync");
                    position += bytes as u64;
                })
            });
        }
    }
    group.finish();
}

/// Measures `f` over one run sized to last about `duration` (after a short calibration run,
/// so that per-run costs such as the final flush do not dominate). Returns events per second,
/// the log's stats over the measured run, and its number of events.
fn rate(
    log: &Log,
    duration: Duration,
    mut f: impl FnMut(&Log, u64) -> Duration,
) -> (f64, annal::Stats, u64) {
    let calibration = 2_000u64;
    let calibration_rate = calibration as f64 / f(log, calibration).as_secs_f64();
    let events = ((calibration_rate * duration.as_secs_f64()) as u64).max(calibration);
    let before = log.stats();
    let elapsed = f(log, events);
    let delta = log.stats().since(&before);
    (events as f64 / elapsed.as_secs_f64(), delta, events)
}

fn open(durability: Durability) -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), Options::default().durability(durability)).expect("open");
    (dir, log)
}

/// The targets, each as a ratio measured back to back on this machine.
fn summary() {
    let quick = Duration::from_secs(3);
    println!("\n== annal append summary (256-byte events, 10,000 keys, 8 partitions)");

    let (_d, log) = open(Durability::Buffered);
    let (buffered, _, _) = rate(&log, quick, |log, n| run_producers(log, 1, n, 256));
    log.close().expect("close");
    println!("Buffered, 1 producer: {buffered:.0} events/s (target >= 2,000,000)");

    // The peers' "buffered batches of 1,000" workload: one producer, append_batch of 1,000.
    let (_d, log) = open(Durability::Buffered);
    let (batched, _, _) = rate(&log, quick, |log, n| run_batches(log, n, 1_000, 256));
    log.close().expect("close");
    println!("Buffered, batches of 1,000 from 1 producer: {batched:.0} events/s");

    let (_d, log) = open(Durability::Sync);
    let (one, one_stats, _) = rate(&log, quick, |log, n| {
        run_producers(log, 1, n.min(20_000), 256)
    });
    log.close().expect("close");
    let (_d, log) = open(Durability::Sync);
    let (sixteen, stats16, _) = rate(&log, quick, |log, n| {
        run_producers(log, 16, n.min(200_000), 256)
    });
    log.close().expect("close");
    let scratch = tempfile::tempdir().expect("tempdir");
    let (raw_one, _) = common::raw_sync_rate(scratch.path(), RawFile::Fallocated, 305, quick);
    let (raw_overwrite, _) = common::raw_sync_rate(scratch.path(), RawFile::Zeroed, 305, quick);
    println!(
        "Sync, 1 blocking producer: {one:.0} events/s ({:.2} journal records per fdatasync); raw \
         write+fdatasync of one 305-byte frame: {raw_one:.0}/s into fallocated blocks, \
         {raw_overwrite:.0}/s over written blocks; ratios {:.2} and {:.2}",
        one_stats.writes as f64 / one_stats.data_syncs.max(1) as f64,
        one / raw_one,
        one / raw_overwrite
    );
    println!(
        "Sync, 16 blocking producers: {sixteen:.0} events/s ({:.1} events per fdatasync); \
         ratio to 1 producer {:.1}x",
        stats16.written_bytes as f64 / 305.0 / stats16.data_syncs.max(1) as f64,
        sixteen / one
    );

    // The same 16 producers on one partition: every producer waits on the same file, so one
    // fdatasync can carry all of them. This isolates group commit from the spreading of
    // producers over 8 files (about 2 per partition above).
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), Options::default().partitions(1)).expect("open");
    let (single, stats1p, _) = rate(&log, quick, |log, n| run_producers(log, 16, n, 256));
    log.close().expect("close");
    println!(
        "Sync, 16 blocking producers, 1 partition: {single:.0} events/s ({:.1} events per \
         fdatasync); ratio to 1 producer {:.1}x",
        stats1p.written_bytes as f64 / 305.0 / stats1p.data_syncs.max(1) as f64,
        single / one
    );

    for depth in [256usize, 4096] {
        let (_d, log) = open(Durability::Sync);
        let (pipelined, stats, events) =
            rate(&log, quick, |log, n| run_pipelined(log, depth, n, 256));
        log.close().expect("close");
        let bytes_per_sync = (stats.written_bytes / stats.data_syncs.max(1)) as usize;
        let (_, raw_fallocated) =
            common::raw_sync_rate(scratch.path(), RawFile::Fallocated, bytes_per_sync, quick);
        let (_, raw_zeroed) =
            common::raw_sync_rate(scratch.path(), RawFile::Zeroed, bytes_per_sync, quick);
        // Bytes per second of frames written: what the raw loop writes too.
        let annal_bytes_per_s = pipelined * stats.written_bytes as f64 / events as f64;
        println!(
            "Sync, pipelined depth {depth} from 1 thread: {pipelined:.0} events/s, {bytes_per_sync} \
             bytes per fdatasync; raw ceiling at that size: {:.0} MB/s (fallocated), {:.0} MB/s \
             (zeroed); annal {:.0} MB/s = {:.0}% / {:.0}% of it (target >= 70%)",
            raw_fallocated / 1e6,
            raw_zeroed / 1e6,
            annal_bytes_per_s / 1e6,
            100.0 * annal_bytes_per_s / raw_fallocated,
            100.0 * annal_bytes_per_s / raw_zeroed
        );
    }
}

fn main() {
    if std::env::var_os("ANNAL_BENCH_QUICK").is_none() {
        let mut criterion = Criterion::default().configure_from_args();
        raw_group(&mut criterion);
        append_groups(&mut criterion);
        pipelined_group(&mut criterion);
        criterion.final_summary();
    }
    summary();
}
