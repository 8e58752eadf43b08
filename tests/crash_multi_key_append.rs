//! Power cuts around multi-key appends (`Log::append_multi`), on the simulated disk
//! (`src/storage/simdisk.rs`). One thread runs a fixed program of ordinary `Sync` appends and
//! multi-key calls whose keys lie in different partitions, on the smallest segments and the
//! smallest journal, so that segments roll during multi-key calls and the journal wraps (with a
//! checkpoint) during one. Then, for every recorded instant and a few seeds, the image that a
//! power cut at that instant could leave is opened and checked:
//!
//! 1. The image opens.
//! 2. `read_all(0)` is gap-free: global positions 0, 1, 2, ... up to the number of records in
//!    all partitions, and each record is the one the run appended at that position (key,
//!    payload, version, event id). The program is sequential and each call waits for its fsync,
//!    so an image holds a prefix of the run.
//! 3. Each multi-key call is all there or not at all, across its partitions: all there if it
//!    returned before the instant, not at all if it started after it.
//! 4. Every ordinary append acknowledged before the instant is there.
//! 5. Per key, `read_key(key, 0)` returns exactly the key's events that are there, with versions
//!    0, 1, 2, ..., and `last_version` agrees.
//! 6. The newest multi-key call started before the instant, retried with the same ids, lands
//!    where it landed in the run: as a duplicate if the image holds it, written afresh if not.
//!
//! `ANNAL_CRASH_CASES=<n>` builds n images per instant (default 4). A failure prints its instant
//! and seed; `ANNAL_CRASH_INSTANT=<i> ANNAL_CRASH_SEED=<s>` replays that one image (the program
//! is deterministic, so it records the same operations in every run).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use annal::io::FailPoints;
use annal::{
    Appended, Durability, Event, Expected, KeyAppend, Log, Options, Stats, JOURNAL_BYTES_MIN,
    SEGMENT_BYTES_MIN,
};

const PARTITIONS: u32 = 4;
/// Account keys per partition: the multi-key calls' keys.
const ACCOUNTS_PER_PARTITION: usize = 2;
/// Keys of the ordinary appends.
const FILLER_KEYS: u64 = 6;
/// Multi-key calls in the program; before each, `PLAIN_PER_STEP` ordinary appends.
const STEPS: u64 = 24;
const PLAIN_PER_STEP: u64 = 2;
/// Payload bytes of a multi-key call made while the journal is about to wrap: large, so that
/// it is the record that does not fit.
const LARGE_CALL_BYTES: usize = 40_000;
/// Once the journal may be this close to full, the program makes only large multi-key calls,
/// so that the wrap happens during one. More than any step of the program writes.
const APPROACH_BYTES: u64 = 160 << 10;
/// Journal records start at multiples of this (`docs/format.md`); used only to estimate how
/// full the journal is, which decides nothing but where the program's wrap falls.
const JOURNAL_RECORD_ALIGN_BYTES: u64 = 4096;
const SEEDS_PER_INSTANT_DEFAULT: u64 = 4;

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

/// One event as the run appended it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    key: Vec<u8>,
    payload: Vec<u8>,
    version: u64,
    id: Option<u128>,
}

/// One key's part of a multi-key call, kept to retry the call exactly.
#[derive(Clone, Debug)]
struct Part {
    key: Vec<u8>,
    expected: Expected,
    /// Payload and id of each event.
    events: Vec<(Vec<u8>, u128)>,
}

/// One call of the program: where its events went and how many operations had been recorded
/// when it started and when it returned.
#[derive(Clone, Debug)]
struct Call {
    name: String,
    /// Empty for an ordinary append.
    parts: Vec<Part>,
    appended: Vec<Appended>,
    globals: Range<u64>,
    started_at: usize,
    returned_at: usize,
    /// What the writer did during the call: segments rolled, checkpoints (journal wraps).
    stats: Stats,
}

/// What the run did: every event by global position, the multi-key calls, the ordinary appends.
#[derive(Default)]
struct Run {
    events: BTreeMap<u64, Written>,
    multi: Vec<Call>,
    plain: Vec<Call>,
}

/// Whether a multi-key call may name two keys of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SharedPartition {
    /// Every key of a call is in its own partition.
    Never,
    /// Every fourth call adds a key in the partition of its first key.
    EveryFourthCall,
}

/// The size of a multi-key call's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallSize {
    /// A few bytes each: the call's journal record and segment writes take a sector or two, so
    /// that a power cut before its fsync often keeps all of a write, or one partition's write
    /// and not another's.
    Small,
    /// 1.2 to 5.7 KB each.
    Varied,
    /// `LARGE_CALL_BYTES` in all.
    Large,
}

/// The program's keys for multi-key calls: `ACCOUNTS_PER_PARTITION` per partition, found by
/// name so that every call can span partitions on purpose.
fn account_keys(log: &Log) -> Vec<Vec<Vec<u8>>> {
    let mut by_partition = vec![Vec::new(); PARTITIONS as usize];
    for i in 0.. {
        let key = format!("account-{i}").into_bytes();
        let keys = &mut by_partition[log.partition_for(&key) as usize];
        if keys.len() < ACCOUNTS_PER_PARTITION {
            keys.push(key);
        }
        if by_partition
            .iter()
            .all(|keys| keys.len() == ACCOUNTS_PER_PARTITION)
        {
            break;
        }
    }
    by_partition
}

/// An expectation for a key whose last version is `last`, varied by `n` over the kinds that
/// hold.
fn expectation(last: Option<u64>, n: u64) -> Expected {
    match (n % 3, last) {
        (0, Some(last)) => Expected::Exact(last),
        (1, _) => Expected::Any,
        (_, Some(_)) => Expected::StreamExists,
        (_, None) => Expected::NoStream,
    }
}

/// The program, run on a recorded log.
struct Program<'a> {
    log: &'a Log,
    fail_points: &'a FailPoints,
    accounts: Vec<Vec<Vec<u8>>>,
    shared: SharedPartition,
    /// Each key's last version.
    last: HashMap<Vec<u8>, u64>,
    run: Run,
    /// An upper estimate of the journal's bytes in use since the log was opened.
    journal_bytes_used: u64,
    plain_count: u64,
}

impl Program<'_> {
    fn run(mut self) -> Run {
        for step in 0..STEPS {
            let mut calls = self.run.multi.iter().chain(&self.run.plain);
            let wrapped = calls.any(|c| c.stats.checkpoints > 0);
            let approaching =
                !wrapped && self.journal_bytes_used + APPROACH_BYTES > JOURNAL_BYTES_MIN;
            if approaching {
                self.multi(step, CallSize::Large);
            } else {
                for i in 0..PLAIN_PER_STEP {
                    self.plain(&format!("plain {step}.{i}"));
                }
                let size = if step % 3 == 1 {
                    CallSize::Small
                } else {
                    CallSize::Varied
                };
                self.multi(step, size);
            }
        }
        self.run
    }

    /// Calls `call` and returns its result, with the operations recorded before and after it
    /// and what the writer did meanwhile.
    fn recorded<T>(&mut self, call: impl FnOnce(&Log) -> T) -> (T, usize, usize, Stats) {
        let before = self.log.stats();
        let started_at = self.fail_points.recorded_ops();
        let result = call(self.log);
        let returned_at = self.fail_points.recorded_ops();
        let stats = self.log.stats().since(&before);
        // Each record starts aligned: count the rest of its last block as used, and a whole
        // block more for each further record of the call.
        self.journal_bytes_used += stats
            .written_bytes
            .next_multiple_of(JOURNAL_RECORD_ALIGN_BYTES)
            + stats.writes.saturating_sub(1) * JOURNAL_RECORD_ALIGN_BYTES;
        (result, started_at, returned_at, stats)
    }

    fn plain(&mut self, name: &str) {
        let n = self.plain_count;
        self.plain_count += 1;
        let key = format!("filler-{}", n % FILLER_KEYS).into_bytes();
        // Sizes vary so that segments fill unevenly and roll during different calls.
        let len = if n % 3 == 2 {
            40_000
        } else {
            2_000 + (n * 1_931 % 7) as usize * 1_000
        };
        let payload = padded(name, len);
        let (at, started_at, returned_at, stats) = self.recorded(|log| log.append(&key, &payload));
        let at = at.unwrap();
        self.last.insert(key.clone(), at.version);
        self.run.events.insert(
            at.global_position,
            Written {
                key,
                payload,
                version: at.version,
                id: None,
            },
        );
        self.run.plain.push(Call {
            name: name.to_owned(),
            parts: Vec::new(),
            appended: vec![at],
            globals: at.global_position..at.global_position + 1,
            started_at,
            returned_at,
            stats,
        });
    }

    /// The keys of multi-key call `step`: two to four keys in different partitions, and with
    /// `SharedPartition::EveryFourthCall`, sometimes one more in the first key's partition.
    fn call_keys(&self, step: u64) -> Vec<Vec<u8>> {
        let p = step as usize;
        let pick = |partition: usize, which: usize| {
            self.accounts[partition % PARTITIONS as usize][which % ACCOUNTS_PER_PARTITION].clone()
        };
        let mut keys = vec![pick(p, p / 4), pick(p + 1, p / 4)];
        if !step.is_multiple_of(3) {
            keys.push(pick(p + 2, p / 4 + 1));
        }
        if step % 5 == 2 {
            keys.push(pick(p + 3, p / 4));
        }
        if self.shared == SharedPartition::EveryFourthCall && step % 4 == 1 {
            keys.push(pick(p, p / 4 + 1));
        }
        keys
    }

    fn multi(&mut self, step: u64, size: CallSize) {
        let keys = self.call_keys(step);
        let counts: Vec<usize> = (0..keys.len())
            .map(|j| 1 + (step as usize + j) % 3)
            .collect();
        let total: usize = counts.iter().sum();
        let parts: Vec<Part> = keys
            .into_iter()
            .enumerate()
            .map(|(j, key)| {
                let expected = expectation(self.last.get(&key).copied(), step + j as u64);
                let events = (0..counts[j])
                    .map(|e| {
                        let len = match size {
                            CallSize::Small => 30 + e * 10,
                            CallSize::Varied => {
                                1_200 + (step as usize * 7 + j * 13 + e * 5) % 10 * 500
                            }
                            CallSize::Large => LARGE_CALL_BYTES / total,
                        };
                        let payload = padded(&format!("multi {step} key {j} event {e}"), len);
                        let id = u128::from(step) << 64 | (j as u128) << 32 | e as u128;
                        (payload, id)
                    })
                    .collect();
                Part {
                    key,
                    expected,
                    events,
                }
            })
            .collect();
        let (appended, started_at, returned_at, stats) =
            self.recorded(|log| append_call(log, &parts));
        let appended = appended.unwrap_or_else(|e| panic!("multi {step}: {e}"));
        let first = appended[0].global_position;
        let mut next = first;
        for (part, at) in parts.iter().zip(&appended) {
            // The call's events take consecutive global positions, key after key, and each
            // key's versions continue its stream.
            assert!(
                !at.duplicate,
                "multi {step}: a first append is no duplicate"
            );
            assert_eq!(at.global_position, next, "multi {step}: global positions");
            assert_eq!(at.count as usize, part.events.len(), "multi {step}: count");
            let version = self.last.get(&part.key).map_or(0, |v| v + 1);
            assert_eq!(at.version, version, "multi {step}: version");
            for (e, (payload, id)) in part.events.iter().enumerate() {
                let e = e as u64;
                let written = Written {
                    key: part.key.clone(),
                    payload: payload.clone(),
                    version: at.version + e,
                    id: Some(*id),
                };
                self.run.events.insert(at.global_position + e, written);
            }
            self.last.insert(part.key.clone(), at.last_version());
            next = at.last_global_position() + 1;
        }
        self.run.multi.push(Call {
            name: format!("multi {step}"),
            parts,
            appended,
            globals: first..next,
            started_at,
            returned_at,
            stats,
        });
    }
}

fn append_call(log: &Log, parts: &[Part]) -> annal::Result<Vec<Appended>> {
    let events: Vec<Vec<Event<'_>>> = parts
        .iter()
        .map(|part| {
            part.events
                .iter()
                .map(|(payload, id)| Event::new(payload).id(*id))
                .collect()
        })
        .collect();
    let appends: Vec<KeyAppend<'_, '_>> = parts
        .iter()
        .zip(&events)
        .map(|(part, events)| KeyAppend::new(&part.key, part.expected, events))
        .collect();
    log.append_multi(&appends)
}

/// Builds the image of a power cut after `instant` operations with `seed`, and checks it.
fn check_image(run: &Run, fail_points: &FailPoints, root: &Path, instant: usize, seed: u64) {
    let image = root.join(format!("image-{instant}-{seed}"));
    fail_points
        .crash_image(instant, &image, image_seed(instant, seed))
        .unwrap();
    let log =
        Log::open(&image, options()).unwrap_or_else(|e| panic!("the image does not open: {e}"));

    // 2. The global order is gap-free, and each record is the one appended at its position.
    let mut count = 0u64;
    for record in log.read_all(0).unwrap() {
        let record = record.unwrap();
        assert_eq!(record.global_position, count, "read_all has a gap");
        let expected = run
            .events
            .get(&count)
            .unwrap_or_else(|| panic!("global position {count} was never appended"));
        let found = Written {
            key: record.key.to_vec(),
            payload: record.payload.to_vec(),
            version: record.version,
            id: record.event_id,
        };
        assert_eq!(&found, expected, "global position {count}");
        count += 1;
    }
    let records: u64 = (0..PARTITIONS).map(|p| log.end_offset(p).unwrap()).sum();
    assert_eq!(
        count, records,
        "read_all(0) stops before the partitions' ends"
    );

    // 3. and 4. Calls are whole; acknowledged ones are there, later ones are not.
    let present = |call: &Call| {
        let there = call.globals.clone().filter(|g| *g < count).count();
        let all = call.globals.clone().count();
        assert!(
            there == 0 || there == all,
            "{} is torn: {there} of its {all} events are there",
            call.name
        );
        there > 0
    };
    for call in run.multi.iter().chain(&run.plain) {
        let there = present(call);
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
    }

    // 5. Each key's stream holds exactly its events that are there, with versions from 0.
    let mut streams: BTreeMap<&[u8], Vec<&Written>> = BTreeMap::new();
    for (&global, event) in &run.events {
        let stream = streams.entry(&event.key).or_default();
        if global < count {
            stream.push(event);
        }
    }
    for (key, expected) in streams {
        let name = String::from_utf8_lossy(key);
        let found = log.read_key(key, 0).unwrap();
        assert_eq!(found.len(), expected.len(), "read_key({name}): events");
        for (version, (record, event)) in found.iter().zip(&expected).enumerate() {
            assert_eq!(record.version, version as u64, "{name}: versions");
            assert_eq!(&record.payload[..], &event.payload[..], "{name} v{version}");
            assert_eq!(record.event_id, event.id, "{name} v{version}: id");
        }
        let last = (expected.len() as u64).checked_sub(1);
        assert_eq!(log.last_version(key).unwrap(), last, "last_version({name})");
    }

    // 6. The newest multi-key call started before the instant, retried, lands where it did.
    if let Some(call) = run.multi.iter().rev().find(|c| c.started_at <= instant) {
        let there = present(call);
        let retried = append_call(&log, &call.parts)
            .unwrap_or_else(|e| panic!("the retry of {} failed: {e}", call.name));
        for (again, original) in retried.iter().zip(&call.appended) {
            assert_eq!(
                again.duplicate, there,
                "{}: retry is a duplicate",
                call.name
            );
            let place = |a: &Appended| (a.partition, a.offset, a.version, a.global_position);
            assert_eq!(
                place(again),
                place(original),
                "{}: the retry's place",
                call.name
            );
        }
    }
    log.close().unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}

/// Different instants get unrelated images from the same seed numbers.
fn image_seed(instant: usize, seed: u64) -> u64 {
    (instant as u64) << 16 | seed
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number")),
    )
}

/// A temporary directory, in memory where the system has one: the images are simulated, so
/// a real disk adds nothing but the cost of the fsyncs that opening each image makes.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Records the program, then builds and checks the images of every instant.
fn check_every_power_cut(shared: SharedPartition) {
    let root = scratch_dir();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log = Log::open(&dir, options().fail_points(fail_points.clone())).unwrap();
    let program = Program {
        log: &log,
        fail_points: &fail_points,
        accounts: account_keys(&log),
        shared,
        last: HashMap::new(),
        run: Run::default(),
        journal_bytes_used: 0,
        plain_count: 0,
    };
    let run = program.run();
    log.close().unwrap();
    let ops = fail_points.recorded_ops();

    // The program must reach the situations it is about.
    let rolled = run.multi.iter().filter(|c| c.stats.segments_rolled > 0);
    assert!(
        rolled.count() >= 2,
        "segments rolled during fewer than two multi-key calls"
    );
    assert!(
        run.multi.iter().any(|c| c.stats.checkpoints > 0),
        "the journal did not wrap during a multi-key call"
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
        "{} images ({} instants x {} seeds) around {} multi-key calls checked in {:?}",
        instants.len() * seeds.len(),
        instants.len(),
        seeds.len(),
        run.multi.len(),
        started.elapsed()
    );
}

#[test]
fn every_power_cut_keeps_multi_key_appends_across_partitions_whole() {
    check_every_power_cut(SharedPartition::Never);
}

#[test]
fn every_power_cut_keeps_multi_key_appends_with_keys_sharing_a_partition_whole() {
    check_every_power_cut(SharedPartition::EveryFourthCall);
}

/// Regression test for a bug found by the power-cut test above: `append_multi` with two keys in
/// one partition encoded every frame of the call at the partition's next offset as it was
/// before the call (`Sequencer::queue` advances
/// `next_offsets` only after encoding all of the call's frames). Here both events are
/// acknowledged at offset 0 (expected 0 and 1); a later `append(b"c")` is acknowledged at
/// offset 1. Reading partition 0 returns the first record, then `Error::Corrupt` ("frame offset
/// does not continue the partition"); `read_key` of any key of the partition and the id lookup
/// of a later append with ids fail with `Error::Corrupt` ("the chain of frames ends before the
/// visible end"). After close and reopen the partition's end is 2 though three events were
/// acknowledged, and reading it still fails.
#[test]
fn two_keys_of_one_partition_in_one_multi_key_append_get_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().partitions(1);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    let (a, b) = ([Event::new(b"a0")], [Event::new(b"b0")]);
    let appended = log
        .append_multi(&[
            KeyAppend::new(b"a", Expected::Any, &a),
            KeyAppend::new(b"b", Expected::Any, &b),
        ])
        .unwrap();
    assert_eq!(appended[0].offset, 0);
    assert_eq!(
        appended[1].offset, 1,
        "the second key's event follows the first's"
    );
    let records: Vec<_> = log
        .read(0, 0)
        .unwrap()
        .collect::<annal::Result<_>>()
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(log.read_key(b"b", 0).unwrap().len(), 1);
    log.close().unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 2);
    assert_eq!(log.read(0, 0).unwrap().count(), 2);
}
