//! Simulated power cuts, from the simulated disk behind the io seam (`src/storage/simdisk.rs`):
//! while threads append, the test takes a crash instant and builds the image of the log
//! directory that a power cut then could leave (unsynced bytes kept, dropped or torn per
//! sector; directory changes since the last directory sync kept as an in-order prefix; length
//! changes kept or lost). Every image must open, hold every append acknowledged as durable
//! before the instant with its payload at its offset, hold nothing that was never appended, keep
//! offsets contiguous, and take new appends.
//!
//! Small segments and a small journal make rolls, checkpoints and wraps happen within a case.
//! A failing case prints its seed; `ANNAL_CRASH_SEED=<seed>` replays one. `ANNAL_CRASH_CASES`
//! runs more (the default keeps the suite fast).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal::io::FailPoints;
use annal::{Durability, Log, Options};

const PARTITIONS: u32 = 3;

fn options(durability: Durability) -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(durability)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

fn payload(thread: u64, n: u64) -> Vec<u8> {
    let mut payload = format!("t{thread} n{n} ").into_bytes();
    payload.resize(100 + (n as usize * 37) % 700, b'.');
    payload
}

/// (partition, offset) -> payload of every append acknowledged as durable.
type Acked = HashMap<(u32, u64), Vec<u8>>;

fn run_case(seed: u64, durability: Durability) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log =
        Arc::new(Log::open(&dir, options(durability).fail_points(fail_points.clone())).unwrap());
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (log, acked, stop) = (log.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("key-{}-{}", t, n % 5);
                    if t == 0 && durability == Durability::Sync {
                        // Pipelined: many appends in flight fill rounds, the journal and the
                        // segments quickly, so that checkpoints, wraps and rolls happen.
                        let mut tickets = std::collections::VecDeque::new();
                        for i in 0..64u64 {
                            let payload = payload(t, n + i);
                            if let Ok(ticket) = log.append_pipelined(key.as_bytes(), &payload) {
                                tickets.push_back((ticket, payload));
                            }
                        }
                        for (ticket, payload) in tickets {
                            if let Ok(at) = ticket.wait() {
                                acked
                                    .lock()
                                    .unwrap()
                                    .insert((at.partition, at.offset), payload);
                            }
                        }
                        n += 64;
                        continue;
                    }
                    let payload = payload(t, n);
                    if t == 2 && n.is_multiple_of(3) {
                        // A batch: all of it or none of it.
                        let second = [payload.clone(), b"second".to_vec()].concat();
                        let events = [annal::Event::new(&payload), annal::Event::new(&second)];
                        if let Ok(at) = log.append_batch(key.as_bytes(), &events) {
                            if durability == Durability::Sync {
                                let mut acked = acked.lock().unwrap();
                                acked.insert((at.partition, at.offset), payload.clone());
                                acked.insert((at.partition, at.offset + 1), second);
                            }
                        }
                    } else if let Ok(at) = log.append(key.as_bytes(), &payload) {
                        if durability == Durability::Sync {
                            acked
                                .lock()
                                .unwrap()
                                .insert((at.partition, at.offset), payload);
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Let the appenders run for a seeded while, then take the crash instant: everything
    // acknowledged before it had its sync recorded before it.
    std::thread::sleep(Duration::from_millis(20 + seed % 80));
    if durability != Durability::Sync {
        // Outside Sync, a successful flush is what makes earlier appends durable.
        let before: Vec<_> = (0..PARTITIONS)
            .map(|p| log.end_offset(p).unwrap())
            .collect();
        log.flush().unwrap();
        let mut acked = acked.lock().unwrap();
        for (p, &end) in before.iter().enumerate() {
            for record in log.read(p as u32, 0).unwrap().take(end as usize) {
                let record = record.unwrap();
                acked.insert((p as u32, record.offset), record.payload.to_vec());
            }
        }
    }
    let durable: Acked = acked.lock().unwrap().clone();
    let instant = fail_points.recorded_ops();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let image = root.path().join("image");
    fail_points.crash_image(instant, &image, seed).unwrap();
    drop(log);

    let log = Log::open(&image, options(durability))
        .unwrap_or_else(|e| panic!("seed {seed}: the crash image does not open: {e}"));
    for p in 0..PARTITIONS {
        let end = log.end_offset(p).unwrap();
        let mut expected = 0;
        for record in log.read(p, 0).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("seed {seed}: partition {p}: {e}"));
            assert_eq!(
                record.offset, expected,
                "seed {seed}: offsets contiguous in {p}"
            );
            let text = String::from_utf8_lossy(&record.payload);
            assert!(
                text.starts_with('t'),
                "seed {seed}: {p}/{expected} was never appended"
            );
            if let Some(payload) = durable.get(&(p, record.offset)) {
                assert_eq!(
                    &record.payload[..],
                    &payload[..],
                    "seed {seed}: {p}/{expected}"
                );
            }
            expected += 1;
        }
        assert_eq!(expected, end, "seed {seed}: partition {p} reads short");
        for &(q, offset) in durable.keys() {
            assert!(
                q != p || offset < end,
                "seed {seed}: durable {q}/{offset} lost (end {end})"
            );
        }
    }
    let end = log.end_offset(log.partition_for(b"after")).unwrap();
    let at = log.append(b"after", b"t9 after the crash").unwrap();
    log.flush().unwrap();
    assert_eq!(at.offset, end, "seed {seed}: appends continue at the end");
    log.close().unwrap();
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("ANNAL_CRASH_SEED") {
        return vec![seed.parse().expect("a u64 seed")];
    }
    let cases = std::env::var("ANNAL_CRASH_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (1..=cases).collect()
}

#[test]
fn every_power_cut_during_sync_appends_keeps_every_acknowledged_append() {
    for seed in seeds(12) {
        run_case(seed, Durability::Sync);
    }
}

#[test]
fn every_power_cut_after_a_buffered_flush_keeps_what_it_flushed() {
    for seed in seeds(6) {
        run_case(seed, Durability::Buffered);
    }
}

/// Under `Buffered` a checkpoint is the only sync between flushes: it syncs the segments and
/// writes its slot with `RWF_DSYNC`, without syncing the journal, whose next lap then overwrites
/// the records the checkpoint covers. A power cut after the checkpoint, with no flush, must keep
/// every append written before it. (With the slot modelled as a plain, unsynced write, the
/// image falls back to the previous checkpoint, whose records were never synced: this fails.)
#[test]
fn every_power_cut_after_a_buffered_checkpoint_keeps_what_it_covered() {
    for seed in seeds(6) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        std::fs::create_dir(&dir).unwrap();
        let fail_points = FailPoints::new();
        fail_points.record_crashes(&dir);
        let log = Log::open(
            &dir,
            options(Durability::Buffered).fail_points(fail_points.clone()),
        )
        .unwrap();
        let appended = std::cell::Cell::new(0u64);
        let append = |log: &Log| {
            let n = appended.get();
            let key = format!("key-{}", n % 7);
            log.append(key.as_bytes(), &payload(0, n)).unwrap();
            appended.set(n + 1);
        };
        // Some appends, then one lap of the journal at least, so that a checkpoint follows.
        for _ in 0..(200 + seed * 50) {
            append(&log);
        }
        let ends = wait_written(&log, appended.get());
        let mut covered: Acked = HashMap::new();
        for (p, &end) in ends.iter().enumerate() {
            for record in log.read(p as u32, 0).unwrap().take(end as usize) {
                let record = record.unwrap();
                covered.insert((p as u32, record.offset), record.payload.to_vec());
            }
        }
        let checkpoints = log.stats().checkpoints;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while log.stats().checkpoints == checkpoints {
            assert!(std::time::Instant::now() < deadline, "no checkpoint came");
            append(&log);
        }
        // The next lap overwrites the first records the checkpoint covers (less than a lap,
        // so no further checkpoint).
        for _ in 0..300 {
            append(&log);
        }
        wait_written(&log, appended.get());
        let instant = fail_points.recorded_ops();
        let image = root.path().join("image");
        fail_points.crash_image(instant, &image, seed).unwrap();
        drop(log);
        let log = Log::open(&image, options(Durability::Buffered))
            .unwrap_or_else(|e| panic!("seed {seed}: the crash image does not open: {e}"));
        assert!(!covered.is_empty());
        for (&(p, offset), payload) in &covered {
            let record = log
                .read(p, offset)
                .unwrap()
                .next()
                .unwrap_or_else(|| panic!("seed {seed}: {p}/{offset} lost"))
                .unwrap();
            assert_eq!(
                &record.payload[..],
                &payload[..],
                "seed {seed}: {p}/{offset}"
            );
        }
    }
}

/// Waits until the `count` events appended are written (visible under `Buffered`); returns
/// the partitions' ends.
fn wait_written(log: &Log, count: u64) -> Vec<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ends: Vec<u64> = (0..PARTITIONS)
            .map(|p| log.end_offset(p).unwrap())
            .collect();
        if ends.iter().sum::<u64>() == count {
            return ends;
        }
        assert!(std::time::Instant::now() < deadline, "appends not written");
        std::thread::sleep(Duration::from_millis(1));
    }
}
