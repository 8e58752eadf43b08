//! Open time after an unclean stop: a child process appends under `Sync` and is killed with
//! SIGKILL; the parent then opens the log, which recovers every partition. The log is filled to
//! `ANNAL_BENCH_OPEN_BYTES` (default 2 GiB) first, to show that open time does not grow with it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use annal::{Durability, Log, Options};
use criterion::Criterion;

const CHILD_ENV: &str = "ANNAL_OPEN_BENCH_CHILD";

/// Kills and reaps the child however the bench ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// In the child: open, say so, and append pipelined `Sync` events until killed.
fn child(dir: &str) {
    let log = Log::open(dir, Options::default()).expect("child open");
    println!("ready");
    let keys = common::keys();
    let payload = common::payload(256, 0);
    let mut tickets = std::collections::VecDeque::new();
    for n in 0u64.. {
        let key = &keys[(n % common::AGGREGATES) as usize];
        tickets.push_back(log.append_pipelined(key, &payload).expect("append"));
        if tickets.len() >= 1024 {
            let _ = tickets.pop_front().expect("not empty").wait();
        }
    }
}

fn fill(dir: &std::path::Path, bytes: u64) {
    let log = Log::open(dir, Options::default().durability(Durability::Buffered)).expect("open");
    let keys = common::keys();
    let payload = common::payload(256, 0);
    let mut n = 0u64;
    while log.stats().written_bytes < bytes {
        for _ in 0..10_000 {
            log.append(&keys[(n % common::AGGREGATES) as usize], &payload)
                .expect("append");
            n += 1;
        }
    }
    log.close().expect("close");
}

/// Runs a child that appends and kills it mid-flight.
fn crash_child(dir: &std::path::Path) {
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("child stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("child says ready");
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(30));
    // Dropping the guard sends SIGKILL and reaps the child.
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(dir.to_str().expect("utf-8 dir"));
        return;
    }
    let bytes: u64 = std::env::var("ANNAL_BENCH_OPEN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    fill(dir.path(), bytes);
    println!(
        "filled {:.2} GiB in {:.1} s",
        bytes as f64 / (1u64 << 30) as f64,
        started.elapsed().as_secs_f64()
    );
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let mut scanned_max = 0u64;
    group.bench_function(format!("after_kill9_{}MiB", bytes >> 20), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                crash_child(dir.path());
                let started = Instant::now();
                let log = Log::open(dir.path(), Options::default()).expect("open");
                total += started.elapsed();
                scanned_max = scanned_max.max(log.recovery_report().bytes_replayed);
                log.close().expect("close");
            }
            total
        })
    });
    group.finish();
    c.final_summary();
    println!("largest journal replay: {scanned_max} bytes");
}
