//! Idempotent retries after a real SIGKILL: a child process appends `Sync` events that carry
//! ids, from several threads, and is killed at a random moment; the parent then reopens the log
//! and retries every call the child attempted, as an application would after a crash.
//!
//! The test binary runs itself as the child (`child_appends_with_ids_until_killed` is ignored, so
//! it runs only when a parent starts it). Each child thread prints `try <thread> <seq>` before a
//! call and `ack <thread> <seq> <partition> <offset> <version> <global>` once the call returned;
//! a call (its key, payloads and ids) is derived from the round's seed, the thread and the
//! sequence number, so the parent can repeat it exactly. One call in four is a batch of two
//! events. After the kill, the parent checks:
//!
//! 1. No id appears twice in the log (`read_all(0)`), the global order has no gap, every record
//!    belongs to an attempted call with its payload, and a batch is all there or not at all.
//! 2. A retry of an acknowledged call is a duplicate at the acknowledged place (partition,
//!    offset, version, global position), also with an expectation that no longer holds, and the
//!    record read back at that offset has the call's id and payload.
//! 3. A retry of an attempted but unacknowledged call is a duplicate if the call reached the log
//!    (at the place found there), or is written afresh; then a second retry is a duplicate of it.
//! 4. After closing and reopening, every attempted call retried once more is a duplicate at its
//!    final place: the ids are found on disk, not only in memory.
//!
//! The parent prints its seed; `ANNAL_RETRY_SEED=<seed>` replays the rounds' ids and kill
//! delays (the kill's moment in the child still varies), `ANNAL_RETRY_ROUNDS=<n>` runs more.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Appended, Durability, Event, Expected, Log, Options, SEGMENT_BYTES_MIN};
use common::child::spawn_ignored_test;
use common::rng::SplitMix64;

const DIR_ENV: &str = "ANNAL_RETRY_DIR";
const ROUND_SEED_ENV: &str = "ANNAL_RETRY_ROUND_SEED";
const CHILD_TEST: &str = "child_appends_with_ids_until_killed";
const ROUNDS_DEFAULT: u64 = 8;
const THREADS: u64 = 3;
const KEYS: u64 = 12;
/// The child stops by itself after this long, in case its parent died without killing it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(30);
const KILL_DELAY_MS_MIN: u64 = 20;
const KILL_DELAY_MS_MAX: u64 = 250;

/// Small segments: the child's events spread over sealed segments, so that finding an id after
/// the restart goes through their id tables.
fn options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
        .segment_bytes(SEGMENT_BYTES_MIN)
}

/// One call of the child, derived from the round's seed, the thread and the sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    key: Vec<u8>,
    /// Payload and id of each event.
    events: Vec<(Vec<u8>, u128)>,
}

impl Call {
    fn new(round_seed: u64, thread: u64, seq: u64) -> Call {
        let mut rng = SplitMix64(round_seed ^ thread.wrapping_mul(0x1000_0000_01b3) ^ seq << 20);
        let key = format!("account-{}", rng.below(KEYS)).into_bytes();
        let count = if seq % 4 == 3 { 2 } else { 1 };
        let events = (0..count)
            .map(|e| {
                let id = u128::from(rng.next()) << 64 | u128::from(rng.next());
                let mut payload = format!("t{thread} s{seq} e{e} ").into_bytes();
                payload.resize(64 + rng.below(1_500) as usize, b'.');
                (payload, id)
            })
            .collect();
        Call { key, events }
    }

    fn append(&self, log: &Log, expected: Expected) -> annal::Result<Appended> {
        let events: Vec<Event<'_>> = self
            .events
            .iter()
            .map(|(payload, id)| Event::new(payload).id(*id))
            .collect();
        log.append_to(&self.key, expected, &events)
    }
}

/// Where a call's events are: partition, first offset, first version, first global position.
type Place = (u32, u64, u64, u64);

fn place(appended: &Appended) -> Place {
    (
        appended.partition,
        appended.offset,
        appended.version,
        appended.global_position,
    )
}

#[test]
#[ignore = "the child process of the idempotent retry test; only it starts the child"]
fn child_appends_with_ids_until_killed() {
    let (Some(dir), Some(seed)) = (std::env::var_os(DIR_ENV), std::env::var_os(ROUND_SEED_ENV))
    else {
        return;
    };
    let round_seed: u64 = seed.to_str().unwrap().parse().unwrap();
    let log = Log::open(&dir, options()).unwrap();
    let stdout = Mutex::new(std::io::stdout());
    // The test harness may have printed a partial line; start the protocol on a fresh one.
    writeln!(stdout.lock().unwrap(), "\nready").unwrap();
    let say = |line: String| {
        let mut out = stdout.lock().unwrap();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (log, say) = (&log, &say);
            scope.spawn(move || {
                let mut seq = 0;
                while started.elapsed() < CHILD_RUN_MAX {
                    let call = Call::new(round_seed, thread, seq);
                    // Announced before the call: whatever the kill interrupts was attempted.
                    say(format!("try {thread} {seq}"));
                    let at = call.append(log, Expected::Any).unwrap();
                    let (p, offset, version, global) = place(&at);
                    say(format!(
                        "ack {thread} {seq} {p} {offset} {version} {global}"
                    ));
                    seq += 1;
                }
            });
        }
    });
}

/// What the parent heard from the child: the calls it attempted, and the acknowledged ones with
/// their places.
#[derive(Default)]
struct Heard {
    attempted: Vec<(u64, u64)>,
    acked: HashMap<(u64, u64), Place>,
}

fn parse_numbers(rest: &str) -> Option<Vec<u64>> {
    rest.split(' ').map(|word| word.parse().ok()).collect()
}

impl Heard {
    fn take(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("try ") {
            if let Some([thread, seq]) = parse_numbers(rest).as_deref() {
                self.attempted.push((*thread, *seq));
            }
        } else if let Some(rest) = line.strip_prefix("ack ") {
            if let Some([thread, seq, p, offset, version, global]) = parse_numbers(rest).as_deref()
            {
                let place = (*p as u32, *offset, *version, *global);
                self.acked.insert((*thread, *seq), place);
            }
        }
    }
}

/// Runs one child on a fresh directory, kills it `delay` after its first acknowledgement, and
/// returns what it said.
fn run_child_until_killed(dir: &Path, round_seed: u64, delay: Duration) -> Heard {
    let seed = round_seed.to_string();
    let envs = [
        (DIR_ENV, dir.as_os_str()),
        (ROUND_SEED_ENV, OsStr::new(&seed)),
    ];
    // Killed and reaped however the test ends, so that no process outlives it.
    let mut child = spawn_ignored_test(CHILD_TEST, &envs, Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let (first_ack, first_ack_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut heard = Heard::default();
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut short by the kill has no newline: it was never fully said.
            let Some(complete) = line.strip_suffix('\n') else {
                break;
            };
            heard.take(complete);
            if heard.acked.len() == 1 {
                let _ = first_ack.send(());
            }
        }
        heard
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
    reader.join().unwrap()
}

/// Every id in the log with the place of its record, checking that the global order has no
/// gap and that no id appears twice.
fn ids_in_log(log: &Log) -> HashMap<u128, Place> {
    let mut ids = HashMap::new();
    let mut next_global = 0;
    for record in log.read_all(0).unwrap() {
        let record = record.unwrap();
        assert_eq!(
            record.global_position, next_global,
            "the global order has a gap"
        );
        next_global += 1;
        let id = record.event_id.expect("every event of the child has an id");
        let at = (
            record.partition,
            record.offset,
            record.version,
            record.global_position,
        );
        assert!(
            ids.insert(id, at).is_none(),
            "id {id:#x} appears twice in the log"
        );
    }
    let records: u64 = (0..log.partition_count())
        .map(|p| log.end_offset(p).unwrap())
        .sum();
    assert_eq!(
        next_global, records,
        "read_all(0) stops before the partitions' ends"
    );
    ids
}

/// Checks the log against what the child attempted, retries every attempted call, and returns
/// each call's final place.
fn retry_every_attempt(
    log: &Log,
    round_seed: u64,
    heard: &Heard,
) -> BTreeMap<(u64, u64), (Call, Place)> {
    let before = ids_in_log(log);
    let mut calls = BTreeMap::new();
    let mut attempted_ids = HashSet::new();
    for &(thread, seq) in &heard.attempted {
        let call = Call::new(round_seed, thread, seq);
        attempted_ids.extend(call.events.iter().map(|(_, id)| *id));
        calls.insert((thread, seq), call);
    }
    for id in before.keys() {
        assert!(attempted_ids.contains(id), "id {id:#x} was never attempted");
    }
    // Each thread has one call in flight: all its attempts but the last were acknowledged.
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    for &(thread, seq) in calls.keys() {
        last_seq.insert(thread, seq);
    }
    let mut unacked_fresh = 0;
    let mut unacked_found = 0;
    let mut places = BTreeMap::new();
    for ((thread, seq), call) in calls {
        let name = format!("t{thread} s{seq}");
        let found: Vec<Option<&Place>> = call.events.iter().map(|(_, id)| before.get(id)).collect();
        assert!(
            found.iter().all(Option::is_some) || found.iter().all(Option::is_none),
            "{name}: a batch is partly in the log: {found:?}"
        );
        let retry = call.append(log, Expected::Any).unwrap();
        let final_place = match heard.acked.get(&(thread, seq)) {
            Some(acked) => {
                assert!(
                    retry.duplicate,
                    "{name}: the retry of an acknowledged call wrote"
                );
                assert_eq!(place(&retry), *acked, "{name}: the retry's place");
                assert_eq!(found[0], Some(acked), "{name}: the record's place");
                // The id decides, whatever the expectation says.
                let stale = call.append(log, Expected::NoStream).unwrap();
                assert!(
                    stale.duplicate && place(&stale) == *acked,
                    "{name}: stale retry"
                );
                let record = log.read(acked.0, acked.1).unwrap().next().unwrap().unwrap();
                assert_eq!(
                    record.event_id,
                    Some(call.events[0].1),
                    "{name}: id at offset"
                );
                assert_eq!(
                    &record.payload[..],
                    &call.events[0].0[..],
                    "{name}: payload"
                );
                assert_eq!(&record.key[..], &call.key[..], "{name}: key");
                *acked
            }
            None => {
                assert_eq!(
                    last_seq[&thread], seq,
                    "{name}: unacknowledged but not the last"
                );
                if let Some(at) = found[0] {
                    assert!(retry.duplicate, "{name}: in the log, yet the retry wrote");
                    assert_eq!(place(&retry), *at, "{name}: the retry's place");
                    unacked_found += 1;
                } else {
                    assert!(!retry.duplicate, "{name}: not in the log, yet a duplicate");
                    unacked_fresh += 1;
                }
                let again = call.append(log, Expected::Any).unwrap();
                assert!(again.duplicate, "{name}: the second retry wrote");
                assert_eq!(
                    place(&again),
                    place(&retry),
                    "{name}: the second retry's place"
                );
                place(&retry)
            }
        };
        places.insert((thread, seq), (call, final_place));
    }
    println!(
        "{} calls attempted, {} acknowledged; of the others {unacked_found} had reached the log \
         and {unacked_fresh} were written by the retry",
        places.len(),
        heard.acked.len()
    );
    places
}

/// One round: a child killed after `delay`, then retries, then retries after a reopen.
fn kill_and_retry(round_seed: u64, delay: Duration) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let heard = run_child_until_killed(&dir, round_seed, delay);
    assert!(!heard.acked.is_empty());
    let log = Log::open(&dir, options()).unwrap();
    let places = retry_every_attempt(&log, round_seed, &heard);
    let ids = ids_in_log(&log);
    let attempted_ids: usize = places.values().map(|(call, _)| call.events.len()).sum();
    assert_eq!(
        ids.len(),
        attempted_ids,
        "every attempted id is in the log once"
    );
    log.close().unwrap();

    let log = Log::open(&dir, options()).unwrap();
    for ((thread, seq), (call, at)) in &places {
        let retry = call.append(&log, Expected::Any).unwrap();
        assert!(
            retry.duplicate,
            "t{thread} s{seq}: after reopening, the retry wrote"
        );
        assert_eq!(
            place(&retry),
            *at,
            "t{thread} s{seq}: place after reopening"
        );
    }
    assert_eq!(
        ids_in_log(&log),
        ids,
        "the retries after reopening wrote nothing"
    );
    log.close().unwrap();
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number")),
    )
}

#[test]
fn retries_after_kill_9_write_every_attempted_event_exactly_once() {
    let seed = env_u64("ANNAL_RETRY_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("ANNAL_RETRY_SEED={seed}");
    let mut rng = SplitMix64(seed);
    for round in 0..env_u64("ANNAL_RETRY_ROUNDS").unwrap_or(ROUNDS_DEFAULT) {
        let round_seed = rng.next();
        let span = KILL_DELAY_MS_MAX - KILL_DELAY_MS_MIN;
        let delay = Duration::from_millis(KILL_DELAY_MS_MIN + rng.below(span + 1));
        println!("round {round}: killed {delay:?} after the first acknowledgement");
        kill_and_retry(round_seed, delay);
    }
}
