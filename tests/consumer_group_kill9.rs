//! At-least-once delivery across a consumer process killed with SIGKILL between handling a batch
//! and committing it. The parent fills a `Sync` log, then starts children one after another
//! until the group has committed everything, killing each (but the last) at a random moment.
//!
//! The test binary runs itself as the child: `child_consumes_until_killed` is ignored, so it
//! runs only when a parent starts it with `--exact --ignored` and the log directory in
//! `ANNAL_GROUP_KILL9_DIR`. The child, the group's only member, prints `batch <n>` for each
//! batch it polls, `handled <partition> <offset>` for each of its deliveries, works a little,
//! commits, and prints `committed`; `done` once the group has no lag. Between rounds the parent
//! opens the log and reads the group's committed cursors. It checks:
//!
//! 1. Per partition, each child handles offsets in order, gap-free, from the committed cursor
//!    the parent read before starting it.
//! 2. After a kill, the committed cursors are those of the child's last acknowledged commit, or
//!    of the batch after it when all of that batch was handled (its commit may have been made
//!    and not acknowledged): never anything else, and never past a partition's end.
//! 3. So an event is handled again only if it was handled after the last `committed` line of
//!    its round: an event of an acknowledged commit is never handled again.
//! 4. Every event is handled at least once, and the final cursors are the partitions' ends.
//!
//! `ANNAL_GROUP_KILL9_SEED=<s>` replays the batch sizes and kill delays of one run (the moment
//! a kill lands still varies); `ANNAL_GROUP_KILL9_EVENTS=<n>` sets the number of events of the
//! ignored long test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Durability, Event, Log, Options};
use common::child::spawn_ignored_test;
use common::rng::XorShift;

const DIR_ENV: &str = "ANNAL_GROUP_KILL9_DIR";
const CHILD_SEED_ENV: &str = "ANNAL_GROUP_KILL9_CHILD_SEED";
const SEED_ENV: &str = "ANNAL_GROUP_KILL9_SEED";
const EVENTS_ENV: &str = "ANNAL_GROUP_KILL9_EVENTS";
const CHILD_TEST: &str = "child_consumes_until_killed";
const GROUP: &str = "g";
const PARTITIONS: u32 = 4;
const KEYS: u64 = 24;
/// Events appended per call when the parent fills the log.
const FILL_BATCH_EVENTS: u64 = 50;
/// Largest batch a child polls.
const POLL_EVENTS_MAX: usize = 9;
/// Longest a child works on a batch between handling it and committing it.
const WORK_US_MAX: u64 = 1_500;
/// The child stops by itself after this long, in case its parent died without killing it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(120);
const FIRST_LINE_WAIT_MAX: Duration = Duration::from_secs(30);
const KILL_DELAY_MS_MAX: u64 = 25;

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
}

fn say(out: &mut impl Write, line: &str) {
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[test]
#[ignore = "the child process of the consumer kill -9 tests; only they start it"]
fn child_consumes_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let mut rng = XorShift(seed | 1);
    let log = Log::open(&dir, options()).unwrap();
    let group = log.group(GROUP).unwrap();
    let mut consumer = group.join().unwrap();
    let mut out = std::io::stdout().lock();
    // The test harness may have printed a partial line; start the protocol on a fresh one.
    say(&mut out, "\nready");
    let started = Instant::now();
    while started.elapsed() < CHILD_RUN_MAX {
        let max = 1 + rng.below(POLL_EVENTS_MAX);
        let batch = consumer.poll(max, Duration::from_millis(20)).unwrap();
        if batch.is_empty() {
            // The only member: no lag means everything is committed.
            if group.lag().iter().all(|&lag| lag == 0) {
                say(&mut out, "done");
                return;
            }
            continue;
        }
        say(&mut out, &format!("batch {}", batch.len()));
        for delivery in &batch {
            // Within one process and one member, nothing is delivered twice.
            assert_eq!(delivery.attempt, 1, "{:?}", delivery.record);
            let record = &delivery.record;
            say(
                &mut out,
                &format!("handled {} {}", record.partition, record.offset),
            );
        }
        // The work of the batch: a kill here loses the commit.
        std::thread::sleep(Duration::from_micros(rng.next() % (WORK_US_MAX + 1)));
        consumer.commit(&batch).unwrap();
        say(&mut out, "committed");
    }
    panic!("not done within {CHILD_RUN_MAX:?}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Batch(usize),
    Handled(u32, u64),
    Committed,
    Done,
}

fn parse_line(line: &str) -> Option<Line> {
    let mut words = line.split(' ');
    let parsed = match words.next()? {
        "batch" => Line::Batch(words.next()?.parse().ok()?),
        "handled" => Line::Handled(words.next()?.parse().ok()?, words.next()?.parse().ok()?),
        "committed" => Line::Committed,
        "done" => Line::Done,
        _ => return None,
    };
    words.next().is_none().then_some(parsed)
}

/// Fills a new log with `events` events spread over every partition; returns the ends.
fn fill(dir: &Path, events: u64) -> Vec<u64> {
    let log = Log::open(dir, options()).unwrap();
    let mut n = 0;
    while n < events {
        let count = FILL_BATCH_EVENTS.min(events - n);
        let payloads: Vec<String> = (n..n + count).map(|i| format!("event {i}")).collect();
        let key = format!("key-{}", (n / FILL_BATCH_EVENTS) % KEYS);
        log.append_batch(key.as_bytes(), payloads.iter().map(Event::new))
            .unwrap();
        n += count;
    }
    let ends: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.end_offset(p).unwrap())
        .collect();
    assert!(
        ends.iter().all(|&end| end > 0),
        "every partition has events"
    );
    log.close().unwrap();
    ends
}

/// The group's committed cursors as a new process finds them, checked against the ends.
fn committed_cursors(dir: &Path, ends: &[u64]) -> Vec<u64> {
    let log = Log::open(dir, options()).unwrap();
    let committed = log.group(GROUP).unwrap().committed();
    for p in 0..PARTITIONS {
        assert_eq!(
            log.end_offset(p).unwrap(),
            ends[p as usize],
            "partition {p}"
        );
    }
    for (p, (&cursor, &end)) in committed.iter().zip(ends).enumerate() {
        assert!(
            cursor <= end,
            "partition {p}: cursor {cursor} past the end {end}"
        );
    }
    log.close().unwrap();
    committed
}

/// Runs one child; kills it `kill_delay` after its first `handled` line unless it is done
/// by then (`None`: lets it finish). Returns its complete lines.
fn run_child(dir: &Path, child_seed: u64, kill_delay: Option<Duration>) -> Vec<Line> {
    let seed = child_seed.to_string();
    let envs = [
        (DIR_ENV, dir.as_os_str()),
        (CHILD_SEED_ENV, std::ffi::OsStr::new(&seed)),
    ];
    // Killed and reaped however the test ends, so no process outlives it.
    let mut child = spawn_ignored_test(CHILD_TEST, &envs, Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let (first, first_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut input = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut short by the kill has no newline: it was never fully printed.
            let Some(complete) = line.strip_suffix('\n') else {
                break;
            };
            if let Some(parsed) = parse_line(complete) {
                if matches!(parsed, Line::Handled(..) | Line::Done) {
                    let _ = first.send(());
                }
                lines.push(parsed);
            }
        }
        lines
    });
    if first_seen.recv_timeout(FIRST_LINE_WAIT_MAX).is_err() {
        let status = child.try_wait().unwrap();
        panic!("the child handled nothing within {FIRST_LINE_WAIT_MAX:?} (exit: {status:?})");
    }
    match kill_delay {
        Some(delay) => {
            std::thread::sleep(delay);
            child.kill_and_wait();
        }
        None => {
            let status = child.wait().unwrap();
            assert!(status.success(), "the last child failed: {status:?}");
        }
    }
    reader.join().unwrap()
}

/// What one round did, as its lines tell and as the parent checks them.
#[derive(Default)]
struct Round {
    /// Everything the child handled.
    handled: Vec<(u32, u64)>,
    /// What it handled in batches whose commit it acknowledged.
    acknowledged: Vec<(u32, u64)>,
    /// Whether the child was in a batch (handled, commit not acknowledged) when it ended, and
    /// whether that batch's commit was made.
    ended_in_batch: bool,
    unacknowledged_commit: bool,
    done: bool,
}

/// Checks the lines of one round against the cursors before it (`before`) and after it
/// (`after`); checks 1 and 2 of the header.
fn check_round(lines: &[Line], before: &[u64], after: &[u64], context: &str) -> Round {
    let mut round = Round::default();
    let mut next = before.to_vec();
    let mut cursors_acknowledged = before.to_vec();
    // The batch being handled: its size and what of it was printed.
    let mut batch: Option<(usize, Vec<(u32, u64)>)> = None;
    for (i, line) in lines.iter().enumerate() {
        match *line {
            Line::Batch(size) => {
                assert!(batch.is_none(), "{context}: line {i}: a batch in a batch");
                batch = Some((size, Vec::new()));
            }
            Line::Handled(p, offset) => {
                let (size, handled) = batch.as_mut().expect("handled outside a batch");
                assert!(handled.len() < *size, "{context}: line {i}: batch too long");
                assert_eq!(
                    offset, next[p as usize],
                    "{context}: line {i}: partition {p} handled out of order"
                );
                next[p as usize] += 1;
                handled.push((p, offset));
                round.handled.push((p, offset));
            }
            Line::Committed => {
                let (size, handled) = batch.take().expect("committed outside a batch");
                assert_eq!(handled.len(), size, "{context}: line {i}: batch incomplete");
                for (p, offset) in handled {
                    cursors_acknowledged[p as usize] = offset + 1;
                    round.acknowledged.push((p, offset));
                }
            }
            Line::Done => {
                assert!(batch.is_none(), "{context}: done in a batch");
                assert_eq!(
                    i + 1,
                    lines.len(),
                    "{context}: lines after done: {:?}",
                    &lines[i..]
                );
                round.done = true;
            }
        }
    }
    // A batch whose every delivery was handled may have been committed, unacknowledged.
    let mut cursors_unacknowledged = cursors_acknowledged.clone();
    if let Some((size, handled)) = &batch {
        if handled.len() == *size {
            for &(p, offset) in handled {
                cursors_unacknowledged[p as usize] = offset + 1;
            }
        }
    }
    round.ended_in_batch = batch.is_some();
    round.unacknowledged_commit = after != cursors_acknowledged;
    assert!(
        after == cursors_acknowledged || after == cursors_unacknowledged,
        "{context}: cursors after the kill {after:?}, expected those of the last acknowledged \
         commit {cursors_acknowledged:?} or of the batch after it {cursors_unacknowledged:?}"
    );
    round
}

fn seed() -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(seed) => seed.parse().expect("a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("{SEED_ENV}={seed}");
    seed
}

/// Consumes `events` events through `killed_rounds` children killed at random moments, and a
/// last one that finishes (if any is left to do).
fn consume_through_kills(events: u64, killed_rounds: usize, seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let ends = fill(&dir, events);
    let started = Instant::now();
    let mut rng = XorShift(seed | 1);
    let mut cursors = vec![0; PARTITIONS as usize];
    // Per event, how many times it was handled; events of acknowledged commits.
    let mut handled: BTreeMap<(u32, u64), u32> = BTreeMap::new();
    let mut acknowledged: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut duplicates = 0;
    let (mut kills, mut kills_in_batch, mut kills_after_commit) = (0, 0, 0);
    for round_index in 0.. {
        let kill_delay = (round_index < killed_rounds)
            .then(|| Duration::from_millis(rng.next() % (KILL_DELAY_MS_MAX + 1)));
        let context = format!("seed {seed} round {round_index} (kill after {kill_delay:?})");
        let lines = run_child(&dir, rng.next(), kill_delay);
        let after = committed_cursors(&dir, &ends);
        let round = check_round(&lines, &cursors, &after, &context);
        // 3. Handled again only if not acknowledged.
        for place in &round.handled {
            assert!(
                !acknowledged.contains(place),
                "{context}: {place:?} was committed (acknowledged) and handled again"
            );
            let count = handled.entry(*place).or_default();
            *count += 1;
            if *count > 1 {
                duplicates += 1;
            }
        }
        acknowledged.extend(&round.acknowledged);
        cursors = after;
        if round.done {
            break;
        }
        kills += 1;
        kills_in_batch += usize::from(round.ended_in_batch);
        kills_after_commit += usize::from(round.unacknowledged_commit);
    }
    // 4. Everything handled, everything committed.
    for (p, &end) in ends.iter().enumerate() {
        for offset in 0..end {
            assert!(
                handled.contains_key(&(p as u32, offset)),
                "seed {seed}: partition {p} offset {offset} never handled"
            );
        }
    }
    assert_eq!(cursors, ends, "seed {seed}: final cursors");
    println!(
        "{events} events consumed through {kills} kills ({kills_in_batch} between handling and \
         acknowledged commit, {kills_after_commit} of them after the commit was made) in {:?}: \
         {duplicates} handled again",
        started.elapsed()
    );
}

#[test]
fn every_event_is_handled_at_least_once_across_kill_9() {
    let seed = seed();
    consume_through_kills(8_000, 100, seed);
}

#[test]
#[ignore = "long: 300 kills; run with --ignored"]
fn every_event_is_handled_at_least_once_across_many_kill_9() {
    let events = std::env::var(EVENTS_ENV).map_or(20_000, |n| n.parse().expect("a number"));
    let seed = seed();
    consume_through_kills(events, 300, seed);
}
