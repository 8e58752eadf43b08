//! Power cuts around `Consumer::append_and_commit`, on the simulated disk
//! (`src/storage/simdisk.rs`). One thread runs a fixed program under `Sync`: a member of group
//! `pm` polls a batch and calls `append_and_commit` with one or two keys of follow-up events
//! (in other partitions than each other, sometimes with `Expected::Exact`), while source events
//! are appended between calls; segments and the journal are the smallest, so that segments roll
//! during calls and the journal wraps (with a checkpoint) during one. Then, for every recorded
//! instant and a few seeds, the image that a power cut at that instant could leave is opened
//! and checked:
//!
//! 1. The image opens, and so does the group; no committed cursor points past its partition's
//!    end.
//! 2. Each call is both or neither: its follow-up events are there (all of them, at the places
//!    the call returned) if and only if the group's committed cursors include its batch.
//! 3. A call that returned before the instant is there; one that started after it is not. Every
//!    source append acknowledged before the instant is there too. The calls that are there are
//!    a prefix of the program, and the group's cursors are exactly those of the last of them.
//! 4. A member joining the recovered group is delivered each partition from its committed
//!    cursor on, gap-free to the partition's end.
//!
//! `ANNAL_CRASH_CASES=<n>` builds n images per instant (default 3). A failure prints its instant
//! and seed; `ANNAL_CRASH_INSTANT=<i> ANNAL_CRASH_SEED=<s>` replays that one image (the program
//! is deterministic, so it records the same operations in every run).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use annal::io::FailPoints;
use annal::{
    Durability, Event, Expected, KeyAppend, Log, Options, Stats, JOURNAL_BYTES_MIN,
    SEGMENT_BYTES_MIN,
};

const PARTITIONS: u32 = 4;
const GROUP: &str = "pm";
/// Source events appended before the first call.
const SOURCE_EVENTS_FIRST: u64 = 12;
/// `append_and_commit` calls in the program.
const CALLS: u64 = 48;
/// Largest batch a call commits.
const BATCH_EVENTS_MAX: u64 = 5;
const SEEDS_PER_INSTANT_DEFAULT: u64 = 3;

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(SEGMENT_BYTES_MIN)
        .journal_bytes(JOURNAL_BYTES_MIN)
}

/// A payload that names its writer, padded to `len` bytes.
fn padded(head: &str, len: usize) -> Vec<u8> {
    let mut payload = format!("{head} ").into_bytes();
    payload.resize(len.max(payload.len()), b'.');
    payload
}

/// One event as the program appended it.
#[derive(Clone, Debug)]
struct Placed {
    partition: u32,
    offset: u64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// One `append_and_commit` call: what it committed, what it appended, the group's cursors after
/// it, and how many operations had been recorded when it started and when it returned.
#[derive(Debug)]
struct Call {
    name: String,
    /// Per partition of the batch, one past its last offset.
    batch_ends: BTreeMap<u32, u64>,
    effects: Vec<Placed>,
    cursors_after: Vec<u64>,
    started_at: usize,
    returned_at: usize,
    /// What the writer did during the call: segments rolled, checkpoints (journal wraps).
    stats: Stats,
}

/// An ordinary `Sync` append of a source event.
#[derive(Debug)]
struct Source {
    placed: Placed,
    returned_at: usize,
}

#[derive(Default)]
struct Run {
    calls: Vec<Call>,
    sources: Vec<Source>,
}

struct Program<'a> {
    log: &'a Log,
    fail_points: &'a FailPoints,
    /// Each follow-up key's last version.
    last: BTreeMap<Vec<u8>, u64>,
    sources_appended: u64,
    run: Run,
}

impl Program<'_> {
    fn source(&mut self) {
        let n = self.sources_appended;
        self.sources_appended += 1;
        let key = format!("source-{}", n % 7).into_bytes();
        let payload = padded(&format!("source {n}"), 200 + (n as usize * 997) % 20_000);
        let at = self.log.append(&key, &payload[..]).unwrap();
        self.run.sources.push(Source {
            placed: Placed {
                partition: at.partition,
                offset: at.offset,
                key,
                payload,
            },
            returned_at: self.fail_points.recorded_ops(),
        });
    }

    /// The follow-up keys of call `step`: one, or every third call two in different partitions.
    fn effect_keys(&self, step: u64) -> Vec<Vec<u8>> {
        let first = format!("effect-{}", step % 5).into_bytes();
        if !step.is_multiple_of(3) {
            return vec![first];
        }
        let first_partition = self.log.partition_for(&first);
        let second = (0..)
            .map(|i| format!("audit-{}", step % 2 + 2 * i).into_bytes())
            .find(|key| self.log.partition_for(key) != first_partition)
            .expect("some key is in another partition");
        vec![first, second]
    }

    fn call(&mut self, consumer: &mut annal::Consumer, group: &annal::Group, step: u64) {
        let max = 1 + (step % BATCH_EVENTS_MAX) as usize;
        let batch = consumer.poll(max, Duration::ZERO).unwrap();
        assert!(!batch.is_empty(), "call {step}: nothing to consume");
        let mut batch_ends = BTreeMap::new();
        for delivery in &batch {
            let end = batch_ends.entry(delivery.record.partition).or_insert(0);
            *end = delivery.record.offset + 1;
        }
        let keys = self.effect_keys(step);
        let payloads: Vec<Vec<Vec<u8>>> = keys
            .iter()
            .enumerate()
            .map(|(j, _)| {
                let count = 1 + (step as usize + j) % 2;
                (0..count)
                    .map(|e| {
                        let len = 6_000 + (step as usize * 1_733 + j * 311 + e * 97) % 12_000;
                        padded(&format!("call {step} key {j} event {e}"), len)
                    })
                    .collect()
            })
            .collect();
        let events: Vec<Vec<Event<'_>>> = payloads
            .iter()
            .map(|p| p.iter().map(Event::new).collect())
            .collect();
        // Half of the calls state the key's version: the expectation is checked with the commit.
        let appends: Vec<KeyAppend<'_, '_>> = keys
            .iter()
            .zip(&events)
            .map(|(key, events)| {
                let expected = match self.last.get(key) {
                    Some(&last) if step.is_multiple_of(2) => Expected::Exact(last),
                    Some(_) => Expected::Any,
                    None => Expected::NoStream,
                };
                KeyAppend::new(key, expected, events)
            })
            .collect();
        let before = self.log.stats();
        let started_at = self.fail_points.recorded_ops();
        let appended = consumer
            .append_and_commit(&appends, &batch)
            .unwrap_or_else(|e| panic!("call {step}: {e}"));
        let returned_at = self.fail_points.recorded_ops();
        let stats = self.log.stats().since(&before);
        assert_eq!(appended.len(), keys.len(), "call {step}: one place per key");
        let mut effects = Vec::new();
        for ((key, payloads), at) in keys.iter().zip(&payloads).zip(&appended) {
            assert_eq!(at.count as usize, payloads.len(), "call {step}: count");
            self.last.insert(key.clone(), at.last_version());
            for (e, payload) in payloads.iter().enumerate() {
                effects.push(Placed {
                    partition: at.partition,
                    offset: at.offset + e as u64,
                    key: key.clone(),
                    payload: payload.clone(),
                });
            }
        }
        let cursors_after = group.committed();
        for (&p, &end) in &batch_ends {
            assert_eq!(cursors_after[p as usize], end, "call {step}: the commit");
        }
        self.run.calls.push(Call {
            name: format!("call {step}"),
            batch_ends,
            effects,
            cursors_after,
            started_at,
            returned_at,
            stats,
        });
    }

    fn run(mut self) -> Run {
        for _ in 0..SOURCE_EVENTS_FIRST {
            self.source();
        }
        let group = self.log.group(GROUP).unwrap();
        let mut consumer = group.join().unwrap();
        for step in 0..CALLS {
            self.call(&mut consumer, &group, step);
            // No sources in the second half: the journal wraps there, during a call.
            if step % 2 == 1 && step < CALLS / 2 {
                self.source();
            }
        }
        self.run
    }
}

/// Whether `placed` is in the image: its partition reaches its offset. A record there must be
/// the one the program appended.
fn is_there(log: &Log, ends: &[u64], placed: &Placed) -> bool {
    if placed.offset >= ends[placed.partition as usize] {
        return false;
    }
    let record = log
        .read(placed.partition, placed.offset)
        .unwrap()
        .next()
        .expect("below the end")
        .unwrap();
    assert_eq!(
        (&record.key[..], &record.payload[..]),
        (&placed.key[..], &placed.payload[..]),
        "partition {} offset {} holds another event",
        placed.partition,
        placed.offset
    );
    true
}

/// Builds the image of a power cut after `instant` operations with `seed`, and checks it.
fn check_image(run: &Run, fail_points: &FailPoints, root: &Path, instant: usize, seed: u64) {
    let image = root.join(format!("image-{instant}-{seed}"));
    fail_points
        .crash_image(instant, &image, (instant as u64) << 16 | seed)
        .unwrap();
    let log =
        Log::open(&image, options()).unwrap_or_else(|e| panic!("the image does not open: {e}"));
    let ends: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.end_offset(p).unwrap())
        .collect();

    // 1. The group opens; its cursors stay within the partitions.
    let group = log
        .group(GROUP)
        .unwrap_or_else(|e| panic!("the group does not open: {e}"));
    let committed = group.committed();
    for p in 0..PARTITIONS as usize {
        assert!(
            committed[p] <= ends[p],
            "partition {p}: committed {} past the end {}",
            committed[p],
            ends[p]
        );
    }

    // 2. and 3. Both or neither; acknowledged calls are there, later ones are not.
    let mut there_count = 0;
    for (k, call) in run.calls.iter().enumerate() {
        let there = call
            .effects
            .iter()
            .filter(|e| is_there(&log, &ends, e))
            .count();
        assert!(
            there == 0 || there == call.effects.len(),
            "{} is torn: {there} of its {} follow-up events are there",
            call.name,
            call.effects.len()
        );
        let there = there > 0;
        let committed_batch = call
            .batch_ends
            .iter()
            .all(|(&p, &end)| committed[p as usize] >= end);
        assert_eq!(
            there, committed_batch,
            "{}: follow-up events there: {there}, batch {:?} committed: {committed_batch} \
             (cursors {committed:?})",
            call.name, call.batch_ends
        );
        if call.returned_at <= instant {
            assert!(there, "{} was acknowledged and is lost", call.name);
        }
        if call.started_at > instant {
            assert!(
                !there,
                "{} started after the instant and is there",
                call.name
            );
        }
        if there {
            assert_eq!(
                there_count, k,
                "{} is there, an earlier call is not",
                call.name
            );
            there_count += 1;
        }
    }
    let expected_cursors = match there_count {
        0 => vec![0; PARTITIONS as usize],
        n => run.calls[n - 1].cursors_after.clone(),
    };
    assert_eq!(
        committed, expected_cursors,
        "the cursors are those of the last call there"
    );
    for source in &run.sources {
        let there = is_there(&log, &ends, &source.placed);
        if source.returned_at <= instant {
            assert!(there, "acknowledged source {source:?} is lost");
        }
    }

    // 4. A new member resumes at the cursors.
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(usize::MAX, Duration::ZERO).unwrap();
    let mut next = committed.clone();
    for delivery in &batch {
        let p = delivery.record.partition as usize;
        assert_eq!(delivery.record.offset, next[p], "partition {p}: delivery");
        next[p] += 1;
    }
    assert_eq!(next, ends, "delivered to the partitions' ends");
    drop(consumer);
    drop(group);
    log.close().unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number")),
    )
}

/// A temporary directory, in memory where the system has one: the images are simulated, so a
/// real disk adds nothing but the cost of the fsyncs that opening each image makes.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

#[test]
fn every_power_cut_keeps_appends_and_their_commit_together() {
    let root = scratch_dir();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log = Log::open(&dir, options().fail_points(fail_points.clone())).unwrap();
    let run = Program {
        log: &log,
        fail_points: &fail_points,
        last: BTreeMap::new(),
        sources_appended: 0,
        run: Run::default(),
    }
    .run();
    log.close().unwrap();
    let ops = fail_points.recorded_ops();
    // The program must reach the situations it is about.
    let rolled = run.calls.iter().filter(|c| c.stats.segments_rolled > 0);
    assert!(
        rolled.count() >= 2,
        "segments rolled during fewer than two calls"
    );
    assert!(
        run.calls.iter().any(|c| c.stats.checkpoints > 0),
        "the journal did not wrap during a call"
    );

    let (instants, seeds): (Vec<usize>, Vec<u64>) = match env_u64("ANNAL_CRASH_INSTANT") {
        Some(instant) => {
            let seed = env_u64("ANNAL_CRASH_SEED").expect("ANNAL_CRASH_SEED");
            (vec![instant as usize], vec![seed])
        }
        None => {
            let cases = env_u64("ANNAL_CRASH_CASES").unwrap_or(SEEDS_PER_INSTANT_DEFAULT);
            ((0..=ops).collect(), (1..=cases).collect())
        }
    };
    let started = Instant::now();
    for &instant in &instants {
        for &seed in &seeds {
            let result = catch_unwind(AssertUnwindSafe(|| {
                check_image(&run, &fail_points, root.path(), instant, seed)
            }));
            if let Err(panic) = result {
                eprintln!(
                    "failing image: ANNAL_CRASH_INSTANT={instant} ANNAL_CRASH_SEED={seed} \
                     (of {ops} recorded operations)"
                );
                resume_unwind(panic);
            }
        }
    }
    println!(
        "{} images ({} instants x {} seeds) around {} append_and_commit calls checked in {:?}",
        instants.len() * seeds.len(),
        instants.len(),
        seeds.len(),
        run.calls.len(),
        started.elapsed()
    );
}
