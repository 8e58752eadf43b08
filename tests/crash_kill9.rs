//! A real process killed with SIGKILL in the middle of `Sync` appends: every append it
//! acknowledged must be in the log after reopening, with its payload, at the offset it was
//! acknowledged at; offsets stay contiguous, nothing reads as corrupt, and appends continue.
//!
//! The test binary runs itself as the child: `child_appends_until_killed` is ignored, so it runs
//! only when a parent starts it with `--exact --ignored` and the log directory in
//! `ANNAL_KILL9_DIR`. The child prints `acked <partition> <offset> <thread> <seq>` after each
//! acknowledged append; the parent reads those lines from the pipe, kills the child at a
//! random moment, and checks the log against them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Durability, Log, Options};
use common::child::spawn_ignored_test;
use common::record_at;
use common::rng::XorShift;

const DIR_ENV: &str = "ANNAL_KILL9_DIR";
const CHILD_TEST: &str = "child_appends_until_killed";
const THREADS: u64 = 4;
/// Keys per thread: each thread's events spread over several partitions.
const KEYS_PER_THREAD: u64 = 16;
/// The child stops by itself after this long, in case its parent died without killing it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(30);
const KILL_DELAY_MS_MIN: u64 = 50;
const KILL_DELAY_MS_MAX: u64 = 300;

fn key(thread: u64, seq: u64) -> String {
    format!("t{thread}-k{}", seq % KEYS_PER_THREAD)
}

/// A payload naming its writer, padded to a length that varies with `seq`.
fn payload(thread: u64, seq: u64) -> String {
    let head = format!("t{thread} s{seq} ");
    let pad = (seq * 37 % 300) as usize;
    format!("{head}{}", "#".repeat(pad))
}

fn parse_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    let thread = words.next()?.strip_prefix('t')?.parse().ok()?;
    let seq = words.next()?.strip_prefix('s')?.parse().ok()?;
    (payload == self::payload(thread, seq).as_bytes()).then_some((thread, seq))
}

#[test]
#[ignore = "the child process of the kill -9 tests; only they start it"]
fn child_appends_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let log = Log::open(&dir, Options::default().durability(Durability::Sync)).unwrap();
    let stdout = Mutex::new(std::io::stdout());
    let started = Instant::now();
    {
        // The test harness may have printed a partial line; start the protocol on a fresh one.
        let mut out = stdout.lock().unwrap();
        writeln!(out, "\nready").unwrap();
        out.flush().unwrap();
    }
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (log, stdout) = (&log, &stdout);
            scope.spawn(move || {
                let mut seq = 0;
                while started.elapsed() < CHILD_RUN_MAX {
                    let appended = log
                        .append(key(thread, seq).as_bytes(), payload(thread, seq).as_bytes())
                        .unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(
                        out,
                        "acked {} {} {thread} {seq}",
                        appended.partition, appended.offset
                    )
                    .unwrap();
                    out.flush().unwrap();
                    seq += 1;
                }
            });
        }
    });
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    partition: u32,
    offset: u64,
    thread: u64,
    seq: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("acked ")?.split(' ');
    let ack = Ack {
        partition: words.next()?.parse().ok()?,
        offset: words.next()?.parse().ok()?,
        thread: words.next()?.parse().ok()?,
        seq: words.next()?.parse().ok()?,
    };
    words.next().is_none().then_some(ack)
}

/// Runs one child on a fresh directory, kills it `delay` after its first acknowledgement,
/// and checks the log it leaves.
fn kill_during_appends_and_check(delay: Duration) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    // Killed and reaped however the test ends, so no process outlives it.
    let mut child = spawn_ignored_test(CHILD_TEST, &[(DIR_ENV, dir.as_os_str())], Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let (first_ack, first_ack_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut short by the kill has no newline: it was never fully acknowledged.
            let Some(complete) = line.strip_suffix('\n') else {
                break;
            };
            if let Some(ack) = parse_ack(complete) {
                if acks.is_empty() {
                    let _ = first_ack.send(());
                }
                acks.push(ack);
            }
        }
        acks
    });
    if first_ack_seen.recv_timeout(FIRST_ACK_WAIT_MAX).is_err() {
        let status = child.try_wait().unwrap();
        panic!("the child acknowledged nothing within {FIRST_ACK_WAIT_MAX:?} (exit: {status:?})");
    }
    std::thread::sleep(delay);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child exited before it was killed"
    );
    child.kill_and_wait();
    let acks = reader.join().unwrap();
    assert!(!acks.is_empty());
    check_log_after_kill(&dir, &acks, delay);
}

fn check_log_after_kill(dir: &Path, acks: &[Ack], delay: Duration) {
    let context = format!("killed {delay:?} after the first of {} acks", acks.len());
    let log = Log::open(dir, Options::default()).unwrap();
    let mut found: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
    let mut seen = HashSet::new();
    // Per key, the sequence numbers in log order must increase.
    let mut last_seq_of_key: HashMap<String, u64> = HashMap::new();
    let mut seqs_of_thread: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for partition in 0..log.partition_count() {
        let end = log.end_offset(partition).unwrap();
        let mut next = 0;
        for record in log.read(partition, 0).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(record.offset, next, "{context}: offsets are contiguous");
            next += 1;
            let (thread, seq) = parse_payload(&record.payload)
                .unwrap_or_else(|| panic!("{context}: foreign payload {:?}", record.payload));
            assert_eq!(&record.key[..], key(thread, seq).as_bytes(), "{context}");
            assert!(
                seen.insert((thread, seq)),
                "{context}: duplicate t{thread} s{seq}"
            );
            let last = last_seq_of_key.insert(key(thread, seq), seq);
            assert!(last.is_none_or(|last| last < seq), "{context}: key order");
            seqs_of_thread.entry(thread).or_default().push(seq);
            found.insert((partition, record.offset), (thread, seq));
        }
        assert_eq!(
            next, end,
            "{context}: partition {partition} reads to its end"
        );
    }

    let mut acked_max: HashMap<u64, u64> = HashMap::new();
    for ack in acks {
        assert_eq!(
            found.get(&(ack.partition, ack.offset)),
            Some(&(ack.thread, ack.seq)),
            "{context}: acknowledged {ack:?} is missing or different"
        );
        let max = acked_max.entry(ack.thread).or_default();
        *max = (*max).max(ack.seq);
    }
    // Each thread has one append in flight at a time: besides what it acknowledged, at most
    // the one append after its last acknowledged one can have reached the log.
    for (thread, seqs) in &seqs_of_thread {
        let limit = acked_max.get(thread).map_or(0, |max| max + 1);
        assert!(
            seqs.iter().all(|&seq| seq <= limit),
            "{context}: thread {thread} has records beyond its last acknowledged one"
        );
    }

    println!(
        "{context}: {} records in the log, {} acknowledged",
        found.len(),
        acks.len()
    );

    // The recovered log takes appends, at the next offset of each partition.
    let ends: Vec<u64> = (0..log.partition_count())
        .map(|p| log.end_offset(p).unwrap())
        .collect();
    let appended = log.append(b"after-kill", b"still working").unwrap();
    assert_eq!(appended.offset, ends[appended.partition as usize]);
    log.close().unwrap();
    let log = Log::open(dir, Options::default()).unwrap();
    let record = record_at(&log, appended.partition, appended.offset);
    assert_eq!(&record.payload[..], b"still working");
    log.close().unwrap();
}

/// Kill delays from a time-seeded xorshift, printed so that a failure can be retried.
fn kill_delays(iterations: usize) -> Vec<Duration> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill delay seed {seed}");
    let mut rng = XorShift(seed);
    (0..iterations)
        .map(|_| {
            let span = KILL_DELAY_MS_MAX - KILL_DELAY_MS_MIN;
            Duration::from_millis(KILL_DELAY_MS_MIN + rng.next() % (span + 1))
        })
        .collect()
}

#[test]
fn acknowledged_sync_appends_survive_kill_9() {
    for delay in kill_delays(5) {
        kill_during_appends_and_check(delay);
    }
}

#[test]
#[ignore = "long: 100 kills; run with --ignored"]
fn acknowledged_sync_appends_survive_kill_9_a_hundred_times() {
    for delay in kill_delays(100) {
        kill_during_appends_and_check(delay);
    }
}
