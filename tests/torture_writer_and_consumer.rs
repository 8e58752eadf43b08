//! A real process that writes and consumes one `Sync` log at once, killed with SIGKILL round
//! after round (issue 13, "real-process torture").
//!
//! The log is embedded and a log directory has one owner, so the writer and the consumer are
//! two threads of one child process. The test binary runs itself as the child:
//! `child_writes_and_consumes_until_killed` is ignored, so it runs only when a parent starts it
//! with `--exact --ignored` and the log directory in `ANNAL_TORTURE_DIR`. Its writer thread
//! keeps up to `PIPELINE_DEPTH` pipelined appends in flight and prints
//! `ack <partition> <offset> <payload-id>` once each one's ticket returns Ok; its consumer
//! thread, the only member of group `torture`, prints `handled <partition> <offset>` for each
//! delivery, commits the batch, and prints `committed <partition>:<end>,...` once the commit
//! returns. The parent starts a child, lets it run a random 5 to 60 ms, kills it, opens the log
//! itself and checks:
//!
//! 1. Every acknowledged (partition, offset) is in the log with the payload and id that were
//!    acknowledged there; offsets are contiguous per partition; every record is one a child
//!    wrote (its payload and id decode and agree), and none appears twice.
//! 2. The group's committed cursors are each at most their partition's end, and at least the
//!    last `committed` line the child printed for that partition (an acknowledged commit
//!    survives the kill), and never move back.
//! 3. After the killed rounds, one last child writes a few events and consumes until it has
//!    caught up, unkilled: every event in the log has then been handled at least once, and the
//!    cursors are the ends.
//! 4. Within one child, a partition's handled offsets start at the cursor the group had when
//!    the child started (read by the parent before starting it) and go up one by one, and each
//!    one is in the log after the kill (under `Sync` a reader sees only durable records).
//!
//! `ANNAL_TORTURE_ROUNDS=<n>` sets the number of killed rounds (20 by default);
//! `ANNAL_TORTURE_SEED=<s>` replays the kill delays of one run (the moment a kill lands within
//! the child's work still varies).

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Durability, Event, Log, Options, Record};
use common::child::spawn_ignored_test;
use common::rng::XorShift;
use common::{read_from, BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

const DIR_ENV: &str = "ANNAL_TORTURE_DIR";
/// The child's round number: it makes the payloads and ids of every child unique.
const ROUND_ENV: &str = "ANNAL_TORTURE_ROUND";
/// Set for the last child, which is not killed: it writes `LAST_ROUND_EVENTS` and stops once
/// it has consumed everything.
const LAST_ENV: &str = "ANNAL_TORTURE_LAST";
const SEED_ENV: &str = "ANNAL_TORTURE_SEED";
const ROUNDS_ENV: &str = "ANNAL_TORTURE_ROUNDS";
const ROUNDS_DEFAULT: u64 = 20;
const CHILD_TEST: &str = "child_writes_and_consumes_until_killed";
const GROUP: &str = "torture";
const PARTITIONS: u32 = 4;
const KEYS: u64 = 16;
/// Appends the writer keeps in flight.
const PIPELINE_DEPTH: usize = 64;
/// Largest batch the consumer polls.
const POLL_EVENTS_MAX: usize = 32;
const LAST_ROUND_EVENTS: u64 = 200;
/// The child stops by itself after this long, in case its parent died without killing it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(120);
const READY_WAIT_MAX: Duration = Duration::from_secs(30);
const KILL_DELAY_MS_MIN: u64 = 5;
const KILL_DELAY_MS_MAX: u64 = 60;

/// Small segments, so that the rounds roll segments and recovery meets sealed ones too.
fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .event_bytes_max(BATCH_BYTES_MAX)
}

/// Which child wrote an event, and its sequence number within that child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PayloadId {
    round: u64,
    seq: u64,
}

impl PayloadId {
    fn event_id(self) -> u128 {
        (u128::from(self.round) << 64) | u128::from(self.seq)
    }

    fn key(self) -> String {
        format!("k{}", (self.round * 7 + self.seq) % KEYS)
    }

    /// A payload naming the event, padded to a length that varies with it.
    fn payload(self) -> String {
        let pad = ((self.round * 131 + self.seq * 37) % 400) as usize;
        format!("r{} s{} {}", self.round, self.seq, "#".repeat(pad))
    }

    /// The id of a record a child wrote, or `None` if its payload, id or key is not one.
    fn of_record(record: &Record) -> Option<PayloadId> {
        let text = std::str::from_utf8(&record.payload).ok()?;
        let mut words = text.split(' ');
        let round = words.next()?.strip_prefix('r')?.parse().ok()?;
        let seq = words.next()?.strip_prefix('s')?.parse().ok()?;
        let id = PayloadId { round, seq };
        let genuine = record.payload == id.payload().as_bytes()
            && record.event_id == Some(id.event_id())
            && record.key == id.key().as_bytes();
        genuine.then_some(id)
    }
}

impl std::fmt::Display for PayloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.round, self.seq)
    }
}

fn parse_payload_id(word: &str) -> Option<PayloadId> {
    let (round, seq) = word.split_once('/')?;
    Some(PayloadId {
        round: round.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// Prints one line and flushes it, so that the parent sees it before anything later happens.
fn say(out: &Mutex<std::io::Stdout>, line: &str) {
    let mut out = out.lock().unwrap();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[test]
#[ignore = "the child process of the torture tests; only they start it"]
fn child_writes_and_consumes_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let last = std::env::var_os(LAST_ENV).is_some();
    let log = Log::open(&dir, options()).unwrap();
    let out = Mutex::new(std::io::stdout());
    // The test harness may have printed a partial line; start the protocol on a fresh one.
    say(&out, "\nready");
    let started = Instant::now();
    let writer_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (log, out, writer_done) = (&log, &out, &writer_done);
        scope.spawn(move || {
            let seq_end = if last { LAST_ROUND_EVENTS } else { u64::MAX };
            write_pipelined(log, out, round, seq_end, started);
            writer_done.store(true, Ordering::SeqCst);
        });
        scope.spawn(move || consume(log, out, last, writer_done, started));
    });
    if last {
        say(&out, "done");
    }
}

/// Appends events `round/0 .. round/seq_end` with up to `PIPELINE_DEPTH` in flight, printing
/// each acknowledgement in order.
fn write_pipelined(
    log: &Log,
    out: &Mutex<std::io::Stdout>,
    round: u64,
    seq_end: u64,
    started: Instant,
) {
    let mut in_flight = VecDeque::with_capacity(PIPELINE_DEPTH);
    let mut seq = 0;
    while started.elapsed() < CHILD_RUN_MAX {
        if seq < seq_end && in_flight.len() < PIPELINE_DEPTH {
            let id = PayloadId { round, seq };
            let payload = id.payload();
            let event = Event::new(&payload).id(id.event_id());
            let ticket = log.append_pipelined(id.key().as_bytes(), event).unwrap();
            in_flight.push_back((ticket, id));
            seq += 1;
            continue;
        }
        let Some((ticket, id)) = in_flight.pop_front() else {
            return;
        };
        let appended = ticket.wait().unwrap();
        say(
            out,
            &format!("ack {} {} {id}", appended.partition, appended.offset),
        );
    }
}

/// Polls, prints each delivery, commits, prints the commit; in the last round, stops once the
/// writer is done and the group has no lag.
fn consume(
    log: &Log,
    out: &Mutex<std::io::Stdout>,
    last: bool,
    writer_done: &AtomicBool,
    started: Instant,
) {
    let group = log.group(GROUP).unwrap();
    let mut consumer = group.join().unwrap();
    while started.elapsed() < CHILD_RUN_MAX {
        // Read before the poll: an empty poll after the writer finished means no lag is left
        // to wait for, except what the lag check below finds.
        let writer_finished = writer_done.load(Ordering::SeqCst);
        let batch = consumer
            .poll(POLL_EVENTS_MAX, Duration::from_millis(20))
            .unwrap();
        if batch.is_empty() {
            if last && writer_finished && group.lag().iter().all(|&lag| lag == 0) {
                return;
            }
            continue;
        }
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        for delivery in &batch {
            let record = &delivery.record;
            say(
                out,
                &format!("handled {} {}", record.partition, record.offset),
            );
            let end = ends.entry(record.partition).or_default();
            *end = (*end).max(record.offset + 1);
        }
        consumer.commit(&batch).unwrap();
        let ends: Vec<String> = ends.iter().map(|(p, end)| format!("{p}:{end}")).collect();
        say(out, &format!("committed {}", ends.join(",")));
    }
    panic!("the consumer did not finish within {CHILD_RUN_MAX:?}");
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    Ready,
    Ack(u32, u64, PayloadId),
    Handled(u32, u64),
    Committed(Vec<(u32, u64)>),
    Done,
}

fn parse_line(line: &str) -> Option<Line> {
    let mut words = line.split(' ');
    let parsed = match words.next()? {
        "ready" => Line::Ready,
        "ack" => Line::Ack(
            words.next()?.parse().ok()?,
            words.next()?.parse().ok()?,
            parse_payload_id(words.next()?)?,
        ),
        "handled" => Line::Handled(words.next()?.parse().ok()?, words.next()?.parse().ok()?),
        "committed" => {
            let mut ends = Vec::new();
            for pair in words.next()?.split(',') {
                let (p, end) = pair.split_once(':')?;
                ends.push((p.parse().ok()?, end.parse().ok()?));
            }
            Line::Committed(ends)
        }
        "done" => Line::Done,
        _ => return None,
    };
    words.next().is_none().then_some(parsed)
}

/// Runs child `round`; kills it `kill_delay` after it is ready (`None`: lets it finish).
/// Returns its complete lines.
fn run_child(dir: &Path, round: u64, kill_delay: Option<Duration>) -> Vec<Line> {
    let round_text = round.to_string();
    let mut envs = vec![
        (DIR_ENV, dir.as_os_str()),
        (ROUND_ENV, std::ffi::OsStr::new(&round_text)),
    ];
    if kill_delay.is_none() {
        envs.push((LAST_ENV, std::ffi::OsStr::new("1")));
    }
    // Killed and reaped however the test ends, so no process outlives it.
    let mut child = spawn_ignored_test(CHILD_TEST, &envs, Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let (ready, ready_seen) = mpsc::channel();
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
                if parsed == Line::Ready {
                    let _ = ready.send(());
                }
                lines.push(parsed);
            }
        }
        lines
    });
    if ready_seen.recv_timeout(READY_WAIT_MAX).is_err() {
        let status = child.try_wait().unwrap();
        panic!("round {round}: the child was not ready within {READY_WAIT_MAX:?} ({status:?})");
    }
    match kill_delay {
        Some(delay) => {
            std::thread::sleep(delay);
            let status = child.try_wait().unwrap();
            assert!(
                status.is_none(),
                "round {round}: the child ended: {status:?}"
            );
            child.kill_and_wait();
        }
        None => {
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "round {round}: the last child failed: {status:?}"
            );
        }
    }
    reader.join().unwrap()
}

/// What the parent knows across rounds.
struct Torture {
    seed: u64,
    /// Per partition, the end checked after the previous round: the records before it were
    /// checked once already, and must still be there.
    ends: Vec<u64>,
    /// The group's committed cursors after the previous round.
    cursors: Vec<u64>,
    /// Every acknowledged append, by place.
    acked: BTreeMap<(u32, u64), PayloadId>,
    /// Every record seen in the log, by payload id, and its place.
    seen: BTreeMap<PayloadId, (u32, u64)>,
    /// Every place a child handled.
    handled: BTreeSet<(u32, u64)>,
}

impl Torture {
    fn new(seed: u64) -> Torture {
        Torture {
            seed,
            ends: vec![0; PARTITIONS as usize],
            cursors: vec![0; PARTITIONS as usize],
            acked: BTreeMap::new(),
            seen: BTreeMap::new(),
            handled: BTreeSet::new(),
        }
    }

    /// Opens the log after child `round` ended and checks it against the child's lines.
    fn check_round(&mut self, dir: &Path, round: u64, lines: &[Line]) {
        let context = format!("seed {} round {round}", self.seed);
        let log = Log::open(dir, options()).unwrap();
        let ends = self.check_records(&log, round, &context);
        self.check_acks(&log, lines, &context);
        let handled_next = self.check_handled(lines, &ends, &context);
        let cursors = log.group(GROUP).unwrap().committed();
        self.check_cursors(&cursors, &ends, lines, &context);
        // The cursors a child printed are those it had handled up to.
        for (p, (&cursor, &next)) in cursors.iter().zip(&handled_next).enumerate() {
            assert!(
                cursor <= next,
                "{context}: partition {p}: cursor {cursor} past what was handled ({next})"
            );
        }
        log.close().unwrap();
        self.ends = ends;
        self.cursors = cursors;
    }

    /// 1. The records after the previous ends: contiguous, each written by a child up to
    ///    `round`, none twice. Returns the new ends.
    fn check_records(&mut self, log: &Log, round: u64, context: &str) -> Vec<u64> {
        let mut ends = Vec::with_capacity(PARTITIONS as usize);
        for p in 0..PARTITIONS {
            let end = log.end_offset(p).unwrap();
            let previous_end = self.ends[p as usize];
            assert!(
                end >= previous_end,
                "{context}: partition {p} ends at {end}, it ended at {previous_end}"
            );
            let records = read_from(log, p, previous_end);
            assert_eq!(
                records.len() as u64,
                end - previous_end,
                "{context}: partition {p} reads short of its end {end}"
            );
            for (i, record) in records.iter().enumerate() {
                let offset = previous_end + i as u64;
                assert_eq!(
                    record.offset, offset,
                    "{context}: partition {p}: offset gap"
                );
                assert_eq!(record.partition, p, "{context}: partition of {offset}");
                let id = PayloadId::of_record(record).unwrap_or_else(|| {
                    panic!("{context}: partition {p} offset {offset}: unknown {record:?}")
                });
                assert!(id.round <= round, "{context}: {id} from a later round");
                if let Some(first) = self.seen.insert(id, (p, offset)) {
                    panic!("{context}: {id} at {first:?} and again at {p} {offset}");
                }
            }
            ends.push(end);
        }
        ends
    }

    /// 1. Every append the child acknowledged is where it was acknowledged.
    fn check_acks(&mut self, log: &Log, lines: &[Line], context: &str) {
        for line in lines {
            let Line::Ack(p, offset, id) = *line else {
                continue;
            };
            assert!(p < PARTITIONS, "{context}: ack on partition {p}");
            let found = self.seen.get(&id);
            assert_eq!(
                found,
                Some(&(p, offset)),
                "{context}: {id} acknowledged at {p} {offset}, found at {found:?}"
            );
            let record = common::record_at(log, p, offset);
            assert_eq!(
                PayloadId::of_record(&record),
                Some(id),
                "{context}: {record:?}"
            );
            assert!(
                self.acked.insert((p, offset), id).is_none(),
                "{context}: acked twice"
            );
        }
    }

    /// 4. Handled offsets start at the cursors the child started with, go up one by one, and
    ///    are in the log. Returns, per partition, the offset after the last one handled.
    fn check_handled(&mut self, lines: &[Line], ends: &[u64], context: &str) -> Vec<u64> {
        let mut next = self.cursors.clone();
        for (i, line) in lines.iter().enumerate() {
            let Line::Handled(p, offset) = *line else {
                continue;
            };
            assert!(
                p < PARTITIONS,
                "{context}: line {i}: handled on partition {p}"
            );
            let expected = next[p as usize];
            assert_eq!(
                offset, expected,
                "{context}: line {i}: partition {p} handled {offset}, expected {expected}"
            );
            assert!(
                offset < ends[p as usize],
                "{context}: line {i}: partition {p} handled {offset}, past its end after the kill"
            );
            next[p as usize] += 1;
            self.handled.insert((p, offset));
        }
        next
    }

    /// 2. Cursors within the ends, never back, and at least the last acknowledged commit.
    fn check_cursors(&self, cursors: &[u64], ends: &[u64], lines: &[Line], context: &str) {
        assert_eq!(cursors.len(), PARTITIONS as usize, "{context}: cursors");
        let mut acknowledged = self.cursors.clone();
        for line in lines {
            if let Line::Committed(committed) = line {
                for &(p, end) in committed {
                    acknowledged[p as usize] = end;
                }
            }
        }
        for p in 0..PARTITIONS as usize {
            let (cursor, end) = (cursors[p], ends[p]);
            assert!(
                cursor <= end,
                "{context}: partition {p}: cursor {cursor} > end {end}"
            );
            assert!(
                cursor >= acknowledged[p],
                "{context}: partition {p}: cursor {cursor} behind the acknowledged commit {}",
                acknowledged[p]
            );
            assert!(
                cursor >= self.cursors[p],
                "{context}: partition {p}: cursor {cursor} went back from {}",
                self.cursors[p]
            );
        }
    }

    /// After the last, unkilled round: 3. everything was handled and committed, and every
    /// acknowledged append is still in place (re-read from offset 0).
    fn check_end(&self, dir: &Path, lines: &[Line]) {
        let context = format!("seed {} at the end", self.seed);
        assert_eq!(
            lines.last(),
            Some(&Line::Done),
            "{context}: the last child's lines"
        );
        let log = Log::open(dir, options()).unwrap();
        for p in 0..PARTITIONS {
            let records = read_from(&log, p, 0);
            assert_eq!(
                records.len() as u64,
                self.ends[p as usize],
                "{context}: {p}"
            );
            for (offset, record) in records.iter().enumerate() {
                let place = (p, offset as u64);
                let id = PayloadId::of_record(record);
                assert_eq!(
                    id.map(|id| self.seen[&id]),
                    Some(place),
                    "{context}: {record:?}"
                );
                if let Some(acked) = self.acked.get(&place) {
                    assert_eq!(id, Some(*acked), "{context}: {place:?}");
                }
                assert!(
                    self.handled.contains(&place),
                    "{context}: partition {p} offset {offset} never handled"
                );
            }
        }
        assert_eq!(self.cursors, self.ends, "{context}: the final cursors");
        log.close().unwrap();
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|value| value.parse().expect("a number"))
}

fn seed() -> u64 {
    let seed = env_number(SEED_ENV).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("{SEED_ENV}={seed}");
    seed
}

#[test]
fn acked_appends_and_commits_survive_kill_9_of_a_writing_consumer() {
    let seed = seed();
    let rounds = env_number(ROUNDS_ENV).unwrap_or(ROUNDS_DEFAULT);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let started = Instant::now();
    let mut rng = XorShift(seed | 1);
    let mut torture = Torture::new(seed);
    let (mut acks, mut handled, mut commits) = (0, 0, 0);
    for round in 0..rounds {
        let delay_ms = KILL_DELAY_MS_MIN + rng.next() % (KILL_DELAY_MS_MAX - KILL_DELAY_MS_MIN + 1);
        let lines = run_child(&dir, round, Some(Duration::from_millis(delay_ms)));
        torture.check_round(&dir, round, &lines);
        for line in &lines {
            match line {
                Line::Ack(..) => acks += 1,
                Line::Handled(..) => handled += 1,
                Line::Committed(..) => commits += 1,
                _ => {}
            }
        }
    }
    let lines = run_child(&dir, rounds, None);
    torture.check_round(&dir, rounds, &lines);
    torture.check_end(&dir, &lines);
    let events: u64 = torture.ends.iter().sum();
    println!(
        "{rounds} kills in {:?}: {events} events, {acks} acknowledged appends, {handled} \
         deliveries and {commits} acknowledged commits before the kills",
        started.elapsed()
    );
}
