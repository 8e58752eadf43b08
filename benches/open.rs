//! Open time after an unclean stop: a child process appends under `Sync` and is killed with
//! SIGKILL; the parent then opens the log, which recovers every partition. The log is filled with
//! `ANNAL_BENCH_OPEN_EVENTS` events (default 10,000,000, over 100,000 keys) first, and the same
//! is measured on an empty log in the same run, to show that open time does not grow with the
//! log (no key, id or version state is rebuilt at open). `ANNAL_BENCH_QUICK=1` skips criterion.

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

fn fill(dir: &std::path::Path, events: u64) {
    let log = Log::open(dir, Options::default().durability(Durability::Buffered)).expect("open");
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|n| format!("account-{n}").into_bytes())
        .collect();
    let payload = common::payload(256, 0);
    for n in 0..events {
        log.append(&keys[(n % KEYS) as usize], &payload)
            .expect("append");
    }
    log.close().expect("close");
}

/// Keys the log is filled with: 100,000 aggregates, as the aggregate-streams issue asks.
const KEYS: u64 = 100_000;

/// Open times after a kill -9 of the child appending to `dir`: `rounds` of them.
fn opens_after_kill(dir: &std::path::Path, rounds: usize) -> (Vec<Duration>, u64) {
    let mut times = Vec::new();
    let mut replayed_max = 0;
    for _ in 0..rounds {
        crash_child(dir);
        let started = Instant::now();
        let log = Log::open(dir, Options::default()).expect("open");
        times.push(started.elapsed());
        replayed_max = replayed_max.max(log.recovery_report().bytes_replayed);
        log.close().expect("close");
    }
    times.sort_unstable();
    (times, replayed_max)
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
    let events: u64 = std::env::var("ANNAL_BENCH_OPEN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    fill(dir.path(), events);
    println!(
        "filled {events} events of 256 bytes over {KEYS} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("ANNAL_BENCH_QUICK").is_none() {
        let mut c = Criterion::default().configure_from_args();
        let mut group = c.benchmark_group("open");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(5));
        group.bench_function(format!("after_kill9_{events}_events"), |b| {
            b.iter_custom(|iters| opens_after_kill(dir.path(), iters as usize).0.iter().sum())
        });
        group.finish();
        c.final_summary();
    }
    // The same, side by side with a log that holds nothing but what the child appends.
    let empty = tempfile::tempdir().expect("tempdir");
    let (full, replayed) = opens_after_kill(dir.path(), 15);
    let (small, _) = opens_after_kill(empty.path(), 15);
    let median = |times: &[Duration]| times[times.len() / 2].as_secs_f64() * 1e3;
    println!(
        "open after kill -9: {events}-event log median {:.1} ms (max {:.1}), empty log median \
         {:.1} ms (max {:.1}): ratio {:.2} (targets: under 100 ms, within 2x); largest journal \
         replay {replayed} bytes",
        median(&full),
        full.last().expect("rounds").as_secs_f64() * 1e3,
        median(&small),
        small.last().expect("rounds").as_secs_f64() * 1e3,
        median(&full) / median(&small)
    );
}
