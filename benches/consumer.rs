//! Consumer groups: one member draining every partition, committing every 1,000 events; the
//! wake-up latency from an append to the poll that returns it; and the CPU a waiting poll uses.
//! Figures are printed as a summary (the machines are shared: read them within one run).
//! `ANNAL_BENCH_CONSUMER_EVENTS` sets the drained log's size (default 2,000,000).

mod common;

use std::time::{Duration, Instant};

use annal::{Durability, Event, Log, Options};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A log of `events` 256-byte events over 10,000 keys in 8 partitions, written in batches.
fn filled(dir: &std::path::Path, events: u64, durability: Durability) -> Log {
    let log = Log::open(dir, Options::default().durability(Durability::Buffered)).expect("open");
    let keys = common::keys();
    let payload = common::payload(256, 0);
    let batch: Vec<Event<'_>> = (0..100).map(|_| Event::new(&payload)).collect();
    for n in 0..events / 100 {
        log.append_batch(&keys[(n % common::AGGREGATES) as usize], &batch)
            .expect("append");
    }
    log.close().expect("close");
    Log::open(dir, Options::default().durability(durability)).expect("open")
}

/// Drains the log with one member of a new group `name`, committing every `commit_every`
/// events (with `pipelined`, the next batch is polled while the last commit's sync is in
/// flight: one ticket is waited for before the next commit); events per second.
fn drain(log: &Log, name: &str, total: u64, commit_every: usize, pipelined: bool) -> f64 {
    let mut consumer = log.group(name).expect("group").join().expect("join");
    let started = Instant::now();
    let mut seen = 0u64;
    let mut in_flight: Option<annal::Ticket> = None;
    while seen < total {
        let batch = consumer
            .poll(commit_every, Duration::from_millis(100))
            .expect("poll");
        seen += batch.len() as u64;
        if pipelined {
            if let Some(ticket) = in_flight.take() {
                ticket.wait().expect("commit");
            }
            in_flight = consumer.commit_pipelined(&batch).expect("commit");
        } else {
            consumer.commit(&batch).expect("commit");
        }
    }
    if let Some(ticket) = in_flight {
        ticket.wait().expect("commit");
    }
    seen as f64 / started.elapsed().as_secs_f64()
}

/// Median and 99th percentile of the time from an append's return to the poll that returns it.
/// Wake-up latency of a waiting poll: from the append's return, or (`from_visible`) from the
/// moment the event is visible (the appender watches the partition's end: under `Buffered` an
/// append returns before the writer has written it).
fn wake_ups(durability: Durability, rounds: usize, from_visible: bool) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), Options::default().durability(durability)).expect("open");
    let mut consumer = log.group("wake").expect("group").join().expect("join");
    consumer.poll(1, Duration::ZERO).expect("poll");
    let mut samples = Vec::with_capacity(rounds);
    std::thread::scope(|scope| {
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<Instant>();
        let log = &log;
        let appender = scope.spawn(move || {
            for i in 0..rounds {
                std::thread::sleep(Duration::from_micros(300));
                let appended = log.append(b"k", format!("{i}").as_bytes()).expect("append");
                if from_visible {
                    let partition = log.partition_for(b"k");
                    while log.end_offset(partition).expect("end") <= appended.offset {
                        std::hint::spin_loop();
                    }
                }
                sent_tx.send(Instant::now()).expect("send");
            }
        });
        let mut got = 0;
        while got < rounds {
            let batch = consumer.poll(10, Duration::from_secs(5)).expect("poll");
            let now = Instant::now();
            for _ in &batch {
                let sent = sent_rx.recv().expect("recv");
                samples.push(now.saturating_duration_since(sent));
                got += 1;
            }
            consumer.commit(&batch).expect("commit");
        }
        appender.join().expect("appender");
    });
    samples.sort_unstable();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc_rusage::rusage>::uninit();
    // SAFETY: getrusage writes a rusage into the pointer it is given, which points at enough
    // properly aligned memory for one.
    let usage = unsafe {
        libc_rusage::getrusage(0, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |t: libc_rusage::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The few declarations of getrusage(2) this bench needs (the crate's libc is not a
/// dependency of benches).
mod libc_rusage {
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct timeval {
        pub tv_sec: i64,
        pub tv_usec: i64,
    }

    #[repr(C)]
    pub struct rusage {
        pub ru_utime: timeval,
        pub ru_stime: timeval,
        pub rest: [i64; 14],
    }

    extern "C" {
        pub fn getrusage(who: i32, usage: *mut rusage) -> i32;
    }
}

fn main() {
    let events = env_u64("ANNAL_BENCH_CONSUMER_EVENTS", 2_000_000);
    println!("\n== annal consumer groups ({events} events of 256 bytes, 8 partitions)");
    for durability in [Durability::Buffered, Durability::Sync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = filled(dir.path(), events, durability);
        let rate = drain(&log, "drain", events, 1_000, false);
        println!(
            "one member draining 8 partitions, committing every 1,000 events, {durability:?} \
             commits: {rate:.0} events/s (target >= 5,000,000)"
        );
        if durability == Durability::Sync {
            let rate = drain(&log, "drain-pipelined", events, 1_000, true);
            println!(
                "the same, Sync commits pipelined (commit_pipelined, one in flight): {rate:.0} \
                 events/s"
            );
        }
        log.close().expect("close");
    }
    for (durability, from_visible) in [
        (Durability::Buffered, false),
        (Durability::Buffered, true),
        (Durability::Sync, false),
    ] {
        let (median, p99) = wake_ups(durability, 2_000, from_visible);
        let from = if from_visible {
            "the event becoming visible"
        } else {
            "an append's return (under Sync: after its fsync)"
        };
        println!(
            "wake-up, from {from} to the poll returning it, {durability:?}: median {:.0} us, \
             p99 {:.0} us",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), Options::default()).expect("open");
    let mut consumer = log.group("idle").expect("group").join().expect("join");
    let before = cpu_time();
    let started = Instant::now();
    let batch = consumer.poll(10, Duration::from_secs(1)).expect("poll");
    assert!(batch.is_empty());
    println!(
        "a poll waiting {:.2} s on an idle log: the process used {:.1} ms of CPU",
        started.elapsed().as_secs_f64(),
        (cpu_time() - before).as_secs_f64() * 1e3
    );
}
