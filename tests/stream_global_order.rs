//! `read_all` reads the log in its one global order: every event once, at global positions
//! 0, 1, 2, ... without a gap, each record the same as its partition holds at its offset, each
//! partition's offsets and each key's versions in order along it; `read_all(k)` starts at `k`.
//! It holds after appends from many threads, after a reopen, and after a writer process is
//! killed with SIGKILL (the test binary runs itself as the child, as in `crash_kill9.rs`); a
//! reader tailing appends under any durability sees every position in turn, never skipping one.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Durability, Log, Options, Record};
use common::child::spawn_ignored_test;
use common::rng::XorShift;
use common::segment_files::segment_bases;
use common::streams::{global_order, visible_events};
use common::{record_at, SMALL_SEGMENT_BYTES};

const PARTITIONS: u32 = 8;
const THREADS: u64 = 4;
const KEYS: u64 = 24;

/// Small segments: the global order runs across segment rolls in every partition.
fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
}

/// The key of a thread's `seq`-th append: the threads share the keys.
fn key(thread: u64, seq: u64) -> String {
    format!("key-{}", (thread * 7 + seq * 5) % KEYS)
}

/// The payload of event `index` of a thread's `seq`-th append, padded to a varied length.
fn payload(thread: u64, seq: u64, index: u64) -> String {
    let pad = ((seq * 31 + index * 7) % 200) as usize;
    format!("t{thread} s{seq} i{index} {}", "#".repeat(pad))
}

/// How many events a thread's `seq`-th append holds.
fn batch_len(thread: u64, seq: u64) -> u64 {
    1 + (thread + seq) % 3
}

fn append(log: &Log, thread: u64, seq: u64) -> annal::Appended {
    let payloads: Vec<String> = (0..batch_len(thread, seq))
        .map(|i| payload(thread, seq, i))
        .collect();
    log.append_batch(
        key(thread, seq).as_bytes(),
        payloads.iter().map(String::as_bytes),
    )
    .unwrap()
}

/// Checks the log's global order against its partitions and returns it. Every visible event
/// is in it once: its length is the sum of the partitions' ends.
#[track_caller]
fn check_global_order(log: &Log, context: &str) -> Vec<Record> {
    let all = global_order(log, 0);
    assert_eq!(
        all.len() as u64,
        visible_events(log),
        "{context}: every event once"
    );
    let mut next_offset = vec![0u64; log.partition_count() as usize];
    let mut next_version: HashMap<Vec<u8>, u64> = HashMap::new();
    for (position, record) in all.iter().enumerate() {
        assert_eq!(record.global_position, position as u64, "{context}: no gap");
        let in_partition = record_at(log, record.partition, record.offset);
        assert_eq!(&in_partition, record, "{context}: global {position}");
        assert_eq!(
            record.partition,
            log.partition_for(&record.key),
            "{context}"
        );
        let offset = &mut next_offset[record.partition as usize];
        assert_eq!(record.offset, *offset, "{context}: partition order");
        *offset += 1;
        let version = next_version.entry(record.key.to_vec()).or_default();
        assert_eq!(record.version, *version, "{context}: key order");
        *version += 1;
    }
    for key in next_version.keys() {
        assert_eq!(
            log.last_version(key).unwrap(),
            Some(next_version[key] - 1),
            "{context}"
        );
    }
    for from in [
        1,
        2,
        all.len() / 3,
        all.len() / 2,
        all.len().saturating_sub(1),
    ] {
        let tail = global_order(log, from as u64);
        assert_eq!(tail, all[from.min(all.len())..], "{context}: from {from}");
    }
    for past in [all.len(), all.len() + 1, all.len() + 1000] {
        let mut reader = log.read_all(past as u64).unwrap();
        assert!(reader.next().is_none(), "{context}: from {past}");
    }
    all
}

/// The records of an acknowledged append are where it said, with its payloads.
#[track_caller]
fn check_acked(all: &[Record], global: u64, thread: u64, seq: u64, context: &str) {
    for index in 0..batch_len(thread, seq) {
        let record = all
            .get((global + index) as usize)
            .unwrap_or_else(|| panic!("{context}: t{thread} s{seq} missing"));
        assert_eq!(
            record.payload.as_ref(),
            payload(thread, seq, index).as_bytes(),
            "{context}: global {}",
            global + index
        );
        assert_eq!(
            record.key.as_ref(),
            key(thread, seq).as_bytes(),
            "{context}"
        );
    }
}

#[test]
fn read_all_returns_every_event_once_in_a_gap_free_global_order() {
    const APPENDS_PER_THREAD: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let acked: Vec<Vec<annal::Appended>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let log = &log;
                scope.spawn(move || {
                    (0..APPENDS_PER_THREAD)
                        .map(|seq| append(log, thread, seq))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let all = check_global_order(&log, "after the appends");
    let rolled = (0..PARTITIONS)
        .filter(|&p| segment_bases(dir.path(), p).len() > 1)
        .count();
    assert!(rolled > 0, "some partition rolled its segment");
    let total: u64 = (0..THREADS)
        .flat_map(|t| (0..APPENDS_PER_THREAD).map(move |s| batch_len(t, s)))
        .sum();
    assert_eq!(all.len() as u64, total);
    for (thread, appends) in acked.iter().enumerate() {
        for (seq, appended) in appends.iter().enumerate() {
            let (thread, seq) = (thread as u64, seq as u64);
            check_acked(&all, appended.global_position, thread, seq, "acked");
            assert_eq!(
                (appended.partition, appended.offset, appended.version),
                (
                    all[appended.global_position as usize].partition,
                    all[appended.global_position as usize].offset,
                    all[appended.global_position as usize].version
                )
            );
        }
    }
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    let reopened = check_global_order(&log, "after reopening");
    assert_eq!(reopened, all);
    let next = log.append(b"after reopen", b"next").unwrap();
    assert_eq!(next.global_position, total, "the global order continues");
    log.close().unwrap();
}

#[test]
fn a_global_reader_at_the_end_sees_later_appends_when_polled_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(b"a", b"0").unwrap();
    let mut reader = log.read_all(0).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().global_position, 0);
    assert!(reader.next().is_none());
    assert_eq!(reader.next_global_position(), 1);
    // Appends to other partitions, one a batch: the reader continues across them in order.
    log.append_batch(b"b", [&b"1"[..], b"2"]).unwrap();
    log.append(b"c", b"3").unwrap();
    let more: Vec<(u64, Vec<u8>)> = reader
        .by_ref()
        .map(|r| r.unwrap())
        .map(|r| (r.global_position, r.payload.to_vec()))
        .collect();
    assert_eq!(
        more,
        [(1, b"1".to_vec()), (2, b"2".to_vec()), (3, b"3".to_vec())]
    );
    assert!(reader.next().is_none());
    assert_eq!(reader.next_global_position(), 4);
    log.close().unwrap();
}

/// A reader tails the global order while threads append under `durability`: it sees
/// positions 0, 1, 2, ... without a skip, and in the end all of them.
fn tail_during_appends(durability: Durability) {
    const APPENDS_PER_THREAD: u64 = 250;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().durability(durability)).unwrap();
    let writers_done = AtomicBool::new(false);
    let tailed: Vec<Record> = std::thread::scope(|scope| {
        let tail = scope.spawn(|| {
            let mut reader = log.read_all(0).unwrap();
            let mut tailed = Vec::new();
            loop {
                // Stop after a poll that started once the writers were done and flushed.
                let done = writers_done.load(Ordering::SeqCst);
                for record in reader.by_ref() {
                    let record = record.unwrap();
                    assert_eq!(record.global_position, tailed.len() as u64, "no skip");
                    tailed.push(record);
                }
                assert_eq!(reader.next_global_position(), tailed.len() as u64);
                if done {
                    break tailed;
                }
                std::thread::yield_now();
            }
        });
        std::thread::scope(|writers| {
            for thread in 0..THREADS {
                let log = &log;
                writers.spawn(move || {
                    for seq in 0..APPENDS_PER_THREAD {
                        append(log, thread, seq);
                    }
                });
            }
        });
        log.flush().unwrap();
        writers_done.store(true, Ordering::SeqCst);
        tail.join().unwrap()
    });
    let context = format!("{durability:?}");
    let all = check_global_order(&log, &context);
    assert_eq!(
        tailed, all,
        "{context}: the tailing reader saw the whole order"
    );
    log.close().unwrap();
}

#[test]
fn a_global_reader_tailing_sync_appends_never_skips_a_position() {
    tail_during_appends(Durability::Sync);
}

#[test]
fn a_global_reader_tailing_buffered_appends_never_skips_a_position() {
    tail_during_appends(Durability::Buffered);
}

#[test]
fn a_global_reader_tailing_interval_appends_never_skips_a_position() {
    tail_during_appends(Durability::Interval(Duration::from_millis(5)));
}

const DIR_ENV: &str = "ANNAL_GLOBAL_ORDER_KILL9_DIR";
const CHILD_TEST: &str = "child_appends_to_many_keys_until_killed";
/// The child stops by itself after this long, in case its parent died without killing it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(30);
const KILL_DELAY_MS_MIN: u64 = 30;
const KILL_DELAY_MS_MAX: u64 = 250;
const KILLS: usize = 3;

#[test]
#[ignore = "the child process of the kill -9 test; only it starts it"]
fn child_appends_to_many_keys_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let log = Log::open(&dir, options()).unwrap();
    let stdout = Mutex::new(std::io::stdout());
    let started = Instant::now();
    {
        // The test harness may have printed a partial line; start on a fresh one.
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
                    let appended = append(log, thread, seq);
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "acked {} {thread} {seq}", appended.global_position).unwrap();
                    out.flush().unwrap();
                    seq += 1;
                }
            });
        }
    });
}

/// One acknowledged append of the child: its global position, thread and sequence number.
fn parse_ack(line: &str) -> Option<(u64, u64, u64)> {
    let mut words = line.strip_prefix("acked ")?.split(' ');
    let ack = (
        words.next()?.parse().ok()?,
        words.next()?.parse().ok()?,
        words.next()?.parse().ok()?,
    );
    words.next().is_none().then_some(ack)
}

/// Runs the child on a fresh directory, kills it `delay` after its first acknowledgement, and
/// returns the log directory's parent (to keep it) and what the child acknowledged.
fn run_child_and_kill(delay: Duration) -> (tempfile::TempDir, Vec<(u64, u64, u64)>) {
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
    (root, acks)
}

fn check_after_kill(dir: &Path, acks: &[(u64, u64, u64)], context: &str) {
    let log = Log::open(dir, options()).unwrap();
    let all = check_global_order(&log, context);
    for &(global, thread, seq) in acks {
        check_acked(&all, global, thread, seq, context);
    }
    println!(
        "{context}: {} events, {} acked appends",
        all.len(),
        acks.len()
    );
    let next = log.append(b"after the kill", b"next").unwrap();
    assert_eq!(next.global_position, all.len() as u64, "{context}");
    log.close().unwrap();
    let log = Log::open(dir, options()).unwrap();
    let reopened = check_global_order(&log, context);
    assert_eq!(reopened.len(), all.len() + 1, "{context}");
    assert_eq!(reopened[..all.len()], all[..], "{context}");
    log.close().unwrap();
}

#[test]
fn the_global_order_stays_gap_free_after_kill_9() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill delay seed {seed}");
    let mut rng = XorShift(seed);
    for kill in 0..KILLS {
        let span = KILL_DELAY_MS_MAX - KILL_DELAY_MS_MIN;
        let delay = Duration::from_millis(KILL_DELAY_MS_MIN + rng.next() % (span + 1));
        let (root, acks) = run_child_and_kill(delay);
        assert!(!acks.is_empty());
        let context = format!("kill {kill}, {delay:?} after the first ack (seed {seed})");
        check_after_kill(&root.path().join("log"), &acks, &context);
    }
}
