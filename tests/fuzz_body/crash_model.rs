// The body of the `crash_model` fuzz target, shared by `fuzz/fuzz_targets/crash_model.rs`
// (cargo-fuzz) and `tests/fuzz_crash_model.rs` (seeded inputs under `cargo test`), which both
// `include!` this file.
//
// The input's first byte chooses the setup: without retention (half of the inputs), or with a
// small `retention_bytes_max` (64 to 160 KiB, against 64 KiB segments), alone or with
// `retention_until_consumed`; the group's retry policy (1 to 3 attempts, no backoff, so that
// retries fall due at once and keys park within a few polls). With retention, payloads are
// larger, so that the 1 MiB journal wraps (a checkpoint) and retention has segments to delete.
//
// The other bytes are a program: each byte picks an operation on a log of two partitions,
// small segments and the smallest journal, recorded by the simulated disk
// (`src/storage/simdisk.rs`): a `Sync` append, a `Sync` batch, a burst of pipelined `Sync`
// appends, an append with an expected version and an event id, a retry of an earlier id, a
// multi-key append over both partitions, a consumer group member polling, nacking some
// deliveries (chosen by the next byte) and committing (or queueing the commit with
// `commit_pipelined` and leaving it in flight), a re-drive or discard of a dead letter (or
// `redrive_all`), `enforce_retention`, a clean restart (close and open again), an injected
// failure (the next fsync fails with EIO, the next write fails, the next write is short and
// fails, or the disk is full) met by a burst of pipelined appends and a batch, or a power cut.
// An append that failed with `AppendFailed` must never appear; the running log must show
// exactly what was acknowledged, and the next append must work without a reopen. After a
// poisoning (`Poisoned`), the images of that instant are checked like a power cut's, then the
// running process reopens the log: each append whose ticket failed is whole or absent, the ones
// kept continue the versions, and the group's record is its last acknowledged one. A failed
// fsync settles the file's unsynced writes on the simulated disk at that instant (kept,
// dropped or torn, and never written again by a later sync), as Linux does since 4.13.
// At the power cut (and once more at the end of the program) the body builds the image that
// the cut could leave, chosen by the next bytes as a seed, and checks against a plain model of
// what was acknowledged:
//
// 1. The image opens (no crash image is refused).
// 2. Every append acknowledged before the cut is there (at or above the partition's start),
//    with its payload, at its offset, with the version and global position it was
//    acknowledged with.
// 3. Nothing is there that was never appended; every record reads without error.
// 4. Offsets are contiguous in each partition from its start, versions contiguous for each key
//    from its first event left (`read_key` agrees with the partitions), and the global order
//    (`read_all(0)`) holds exactly the surviving events, in increasing position (without
//    retention: every position from 0, without a gap). A key with no event left has no
//    history.
// 5. A batch, and a multi-key append across partitions, is all there or all absent.
// 6. After recovery, an append lands at the end of its partition, a retry of an acknowledged id
//    writes nothing and returns the original place, and the next version of a key follows its
//    last one (0 for a key retention made forget).
// 7. Retention: the start never goes back (it is at least every start seen before the cut: the
//    start file is written atomically before any deletion, and `start_offset` moves only after
//    that); a read below it is `OffsetBelowStart`. With `retention_until_consumed` the start is
//    never above what the group needs (its committed end and held heads), counting a commit
//    still in flight (the in-process state counts, as documented).
// 8. The consumer group's record is that of one whole write at or after the last acknowledged
//    one (a commit, re-drive or discard that returned, or a pipelined commit whose ticket
//    resolved), possibly a later one still in flight: its cursors, retrying keys (with their
//    attempts) and dead letters (head, attempts, reason, parked time, and the count of parked
//    events) are exactly those of one such write. The cursors are each at most the partition's
//    end and at least what the last acknowledged commit set.
// 9. A new member then delivers exactly the events that write left unsettled, each once, at or
//    above the start: for each key in increasing version order; the reader's deliveries in
//    offset order per partition, first deliveries (attempt 1); a key held for a retry from its
//    head, carrying its durable attempts; nothing parked behind a dead letter; nothing settled
//    (committed, delivered ahead by a retry, or discarded). A cursor below the start is told
//    once (`EventsExpired { from: cursor, to: start }`).
// 10. Injected failures: an append that failed (`AppendFailed`, or refused when called) never
//     appears, in the running log, after a reopen, or in any image; after a poisoning each
//     append in doubt is whole or absent, and the reopened log goes on from what it kept.
//
// Along the way (in the running process), each poll and commit is checked against the same
// model: no settled event is delivered again, retries come first and from the head, the reader
// passes by exactly the held keys' events, `is_held` tells apart the deliveries behind a nack,
// the committed end covers only settled or held events, and the group's retrying keys and dead
// letters are exactly those the nacks, retries, re-drives and discards made (parking after the
// policy's last attempt); a dead letter counts the events the group has reached behind it, and
// a discard settles exactly those.
//
// What settles an event (the model): its delivery in a committed batch, unless it is at or
// behind a nack of its key in that batch; a retry that delivered it and was committed without a
// nack at or before it; the discard of a dead letter it was parked behind, if the group had
// reached it (below the committed end, delivered, or the failed event itself).
//
// Operations run on one thread, so an input replays exactly, but for what the indexer's thread
// does in the background (key tables, and retention after each sealed segment and every
// second): the checks take a start read before an operation as a lower bound and one read
// after as an upper bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use annal::io::FailPoints;
use annal::{
    Consumer, Delivery, Durability, Error, Event, Expected, Group, KeyAppend, Log, Options,
    RetryPolicy, Ticket,
};

const PARTITIONS: u32 = 2;
/// Most operations one input runs: bounds the time of one execution.
const OPERATIONS_MAX: usize = 400;
const KEYS: u8 = 7;
const GROUP: &str = "fuzz";
/// A nack seen in a batch: (version, offset, failures, reason).
type NackSeen = (u64, u64, u32, String);

/// The log's options without retention: those of every crash image's open too (so that nothing
/// is deleted in the background while an image is checked; the start file is read whatever the
/// options).
fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retention {
    Off,
    Bytes(u64),
    BytesUntilConsumed(u64),
}

/// What the input's first byte chooses.
#[derive(Clone, Copy, Debug)]
struct Setup {
    retention: Retention,
    max_attempts: u32,
    /// Payload bytes per unit of an operation's argument.
    payload_step: usize,
}

impl Setup {
    fn new(byte: u8) -> Setup {
        let bytes_max = (64 + 32 * u64::from((byte >> 4) % 4)) << 10;
        let retention = match byte % 4 {
            2 => Retention::Bytes(bytes_max),
            3 => Retention::BytesUntilConsumed(bytes_max),
            _ => Retention::Off,
        };
        Setup {
            retention,
            max_attempts: 1 + u32::from((byte >> 2) % 3),
            payload_step: if retention == Retention::Off { 8 } else { 48 },
        }
    }

    fn retains(&self) -> bool {
        self.retention != Retention::Off
    }

    fn until_consumed(&self) -> bool {
        matches!(self.retention, Retention::BytesUntilConsumed(_))
    }

    fn options(&self) -> Options {
        match self.retention {
            Retention::Off => options(),
            Retention::Bytes(max) => options().retention_bytes_max(max),
            Retention::BytesUntilConsumed(max) => options()
                .retention_bytes_max(max)
                .retention_until_consumed(true),
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
        }
    }
}

fn payload(n: u64, size: u8, step: usize) -> Vec<u8> {
    let mut payload = format!("event {n} ").into_bytes();
    payload.resize(16 + usize::from(size) * step, b'.');
    payload
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{}", k % KEYS).into_bytes()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether a key whose events retention deleted may keep counting its versions in the process
/// that deleted them (the documented behaviour, `docs/durability.md`, "What retention
/// forgets": the sequencer keeps the next version of every key appended since open, so the
/// next append gets N + 1 while `last_version` says `None`; after a reopen it is 0). On by
/// default; `ANNAL_FUZZ_STRICT_VERSIONS=1` demands the forgetting at once, to find where the
/// in-process counting is relied on.
fn tolerate_kept_versions() -> bool {
    static TOLERATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TOLERATE.get_or_init(|| std::env::var_os("ANNAL_FUZZ_STRICT_VERSIONS").is_none())
}

/// Whether to let an operation that races retention's background deletion be tried again
/// (`ANNAL_FUZZ_TOLERATE_DELETION_RACES=1`; off by default, so that the check fails). Such a
/// race once failed with `Error::Io { op: "open", .. }` (`NotFound`: a lookup opened a segment
/// file retention removed after it listed the segments) or, for a reader, a false
/// `Error::Corrupt`; both now end the lookup at the deleted segment or say `OffsetBelowStart`
/// (`tests/retention_deletion_races.rs`).
fn tolerate_deletion_races() -> bool {
    static TOLERATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TOLERATE.get_or_init(|| std::env::var_os("ANNAL_FUZZ_TOLERATE_DELETION_RACES").is_some())
}

/// Whether `error` is one of those of `tolerate_deletion_races`.
fn deletion_race(error: &Error) -> bool {
    match error {
        Error::Io { op, source, .. } => {
            *op == "open" && source.kind() == std::io::ErrorKind::NotFound
        }
        Error::Corrupt { reason, .. } => reason.contains("first segment does not start"),
        _ => false,
    }
}

/// `op`, tried again while it fails with a known deletion race (when tolerated).
fn again<T>(mut op: impl FnMut() -> annal::Result<T>) -> annal::Result<T> {
    for _ in 0..100 {
        match op() {
            Err(e) if tolerate_deletion_races() && deletion_race(&e) => {
                RACES_TOLERATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            other => return other,
        }
    }
    op()
}

/// How many operations failed with a known deletion race and were tried again.
pub static RACES_TOLERATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether to print each operation (`ANNAL_FUZZ_TRACE=1`, to read a failing program).
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("ANNAL_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// What a run exercised (summed by the seeded test, to tell the checks had something to check).
#[derive(Clone, Copy, Debug, Default)]
pub struct Coverage {
    pub cuts: u64,
    pub cuts_with_commit_in_flight: u64,
    pub cuts_recovering_an_older_commit: u64,
    pub cuts_with_start_above_0: u64,
    pub cuts_with_held_keys: u64,
    pub cuts_with_dead_letters: u64,
    pub drain_deliveries: u64,
    pub drain_retries: u64,
    pub drain_expired: u64,
    pub nacks: u64,
    pub parked: u64,
    pub retries_delivered: u64,
    pub redrives: u64,
    pub discards: u64,
    pub restarts: u64,
    pub pipelined_commits: u64,
    pub expired_in_process: u64,
    pub retention_runs: u64,
    pub ids_forgotten: u64,
    pub versions_restarted: u64,
    pub retry_attempts_lost_to_a_moving_start: u64,
    pub faults_injected: u64,
    pub appends_failed: u64,
    pub appends_poisoned: u64,
    pub poisoned_kept: u64,
    pub reopens_after_poison: u64,
}

impl Coverage {
    pub fn add(&mut self, other: &Coverage) {
        self.cuts += other.cuts;
        self.cuts_with_commit_in_flight += other.cuts_with_commit_in_flight;
        self.cuts_recovering_an_older_commit += other.cuts_recovering_an_older_commit;
        self.cuts_with_start_above_0 += other.cuts_with_start_above_0;
        self.cuts_with_held_keys += other.cuts_with_held_keys;
        self.cuts_with_dead_letters += other.cuts_with_dead_letters;
        self.drain_deliveries += other.drain_deliveries;
        self.drain_retries += other.drain_retries;
        self.drain_expired += other.drain_expired;
        self.nacks += other.nacks;
        self.parked += other.parked;
        self.retries_delivered += other.retries_delivered;
        self.redrives += other.redrives;
        self.discards += other.discards;
        self.restarts += other.restarts;
        self.faults_injected += other.faults_injected;
        self.appends_failed += other.appends_failed;
        self.appends_poisoned += other.appends_poisoned;
        self.poisoned_kept += other.poisoned_kept;
        self.reopens_after_poison += other.reopens_after_poison;
        self.pipelined_commits += other.pipelined_commits;
        self.expired_in_process += other.expired_in_process;
        self.retention_runs += other.retention_runs;
        self.ids_forgotten += other.ids_forgotten;
        self.versions_restarted += other.versions_restarted;
        self.retry_attempts_lost_to_a_moving_start += other.retry_attempts_lost_to_a_moving_start;
    }
}

/// One acknowledged event.
#[derive(Clone, Debug)]
struct Acked {
    key: Vec<u8>,
    payload: Vec<u8>,
    version: u64,
    global: u64,
}

/// A key the group holds: its head (the first event not settled) waits for a retry, or is
/// parked (with the reason of its last nack and when it was parked); every later version of the
/// key waits behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    offset: u64,
    version: u64,
    attempts: u32,
    parked: Option<(String, u64)>,
}

/// The group's committed state as the model sees it.
#[derive(Clone, Debug, Default)]
struct GroupModel {
    ends: Vec<u64>,
    held: BTreeMap<(u32, Vec<u8>), Held>,
    /// Events settled: never to be delivered again.
    settled: BTreeSet<(u32, u64)>,
    /// Events delivered in a committed batch (what a dead letter counts as reached).
    reached: BTreeSet<(u32, u64)>,
}

type RetryingKey = (u32, Vec<u8>, u32);
/// A dead letter as compared: partition, key, offset, version, attempts, reason, parked at.
type DeadKey = (u32, Vec<u8>, u64, u64, u32, String, u64);

impl GroupModel {
    /// The key's hold, if `version` waits behind its head.
    fn behind(&self, p: u32, key: &[u8], version: u64) -> Option<&Held> {
        self.held
            .get(&(p, key.to_vec()))
            .filter(|h| version >= h.version)
    }

    /// The first offset of `p` the group still needs.
    fn watermark(&self, p: u32) -> u64 {
        self.held
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|(_, h)| h.offset)
            .fold(self.ends[p as usize], u64::min)
    }

    fn retrying(&self) -> Vec<RetryingKey> {
        self.held
            .iter()
            .filter(|(_, h)| h.parked.is_none())
            .map(|((p, key), h)| (*p, key.clone(), h.attempts))
            .collect()
    }

    fn dead(&self) -> Vec<DeadKey> {
        self.held
            .iter()
            .filter_map(|((p, key), h)| {
                let (reason, at) = h.parked.clone()?;
                Some((*p, key.clone(), h.offset, h.version, h.attempts, reason, at))
            })
            .collect()
    }

    /// Whether the group has reached `(p, offset)`, an event of a key parked at `h`.
    fn reached_behind(&self, p: u32, offset: u64, version: u64, h: &Held) -> bool {
        offset < self.ends[p as usize]
            || self.reached.contains(&(p, offset))
            || version == h.version
    }
}

/// The group's state as its public API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    committed: Vec<u64>,
    retrying: Vec<RetryingKey>,
    /// In (partition, key) order.
    dead: Vec<DeadKey>,
}

/// Where an append landed, as `annal::Appended` says (which the model cannot build).
struct Place {
    partition: u32,
    offset: u64,
    version: u64,
    global_position: u64,
}

/// A write of the group's record the model knows of: the last acknowledged one, or a later one
/// in flight (its ticket).
struct Candidate {
    observed: Observed,
    group: GroupModel,
    ticket: Option<Ticket>,
}

/// What the model knows was acknowledged: (partition, offset) -> event; each batch's (and
/// multi-key append's) records, which must all be there or all be absent; the events appended
/// with an id, by id; the group's state.
struct Model {
    setup: Setup,
    acked: BTreeMap<(u32, u64), Acked>,
    batches: Vec<Vec<(u32, u64)>>,
    ids: Vec<(u128, Vec<u8>, (u32, u64))>,
    /// Each key's next version, as the log said.
    next_version: BTreeMap<Vec<u8>, u64>,
    /// Each key's events in the order appended: (partition, offset, version).
    key_events: BTreeMap<Vec<u8>, Vec<(u32, u64, u64)>>,
    /// Keys whose versions started again at 0 (retention deleted all their events). The group
    /// keeps a held key's head by version, so what a hold of such a key becomes is not
    /// specified ("keys it holds below the start move to their first event left": the engine
    /// takes the first event left at or above the head's version, of the new history, and
    /// drops the hold when there is none): the group checks leave these keys out.
    restarted_keys: BTreeSet<Vec<u8>>,
    /// The group's cursors after its last acknowledged write.
    committed: Vec<u64>,
    /// Each partition's highest start seen.
    starts: Vec<u64>,
    /// Payloads of appends that failed (`AppendFailed`), or whose fate after a poisoning the
    /// reopen decided (absent): none of them may ever appear.
    never: BTreeSet<Vec<u8>>,
    /// The appends whose tickets failed with `Poisoned`, until the reopen decides them: each is
    /// whole or absent in every image.
    undecided: Vec<Vec<Vec<u8>>>,
    /// The group's state as the running process has it (the last write, queued or done).
    group: GroupModel,
    /// The last acknowledged write of the group's record, then those queued after it.
    candidates: Vec<Candidate>,
    coverage: Coverage,
}

impl Model {
    fn new(setup: Setup) -> Model {
        let group = GroupModel {
            ends: vec![0; PARTITIONS as usize],
            ..GroupModel::default()
        };
        let observed = Observed {
            committed: vec![0; PARTITIONS as usize],
            retrying: Vec::new(),
            dead: Vec::new(),
        };
        Model {
            setup,
            acked: BTreeMap::new(),
            batches: Vec::new(),
            ids: Vec::new(),
            next_version: BTreeMap::new(),
            key_events: BTreeMap::new(),
            restarted_keys: BTreeSet::new(),
            committed: vec![0; PARTITIONS as usize],
            starts: vec![0; PARTITIONS as usize],
            never: BTreeSet::new(),
            undecided: Vec::new(),
            candidates: vec![Candidate {
                observed,
                group: group.clone(),
                ticket: None,
            }],
            group,
            coverage: Coverage::default(),
        }
    }

    /// Whether every event of `key` lies below `start` (retention may have made it forget).
    fn all_below(&self, key: &[u8], start: u64) -> bool {
        self.key_events
            .get(key)
            .is_none_or(|events| events.iter().all(|&(_, o, _)| o < start))
    }

    /// The newest event of `key` with `version`.
    fn event_of(&self, key: &[u8], version: u64) -> Option<(u32, u64)> {
        let events = self.key_events.get(key)?;
        let found = events.iter().rev().find(|&&(_, _, v)| v == version);
        found.map(|&(p, o, _)| (p, o))
    }

    /// `at` acknowledged `payloads` under `key`; `start` is the partition's start read after.
    fn ack(&mut self, at: annal::Appended, key: &[u8], payloads: &[Vec<u8>], start: u64) {
        let place = (at.partition, at.offset, at.version, at.global_position);
        self.ack_at(place, key, payloads, start);
    }

    /// As `ack`, for an append at `(partition, offset, version, global position)`.
    fn ack_at(&mut self, place: (u32, u64, u64, u64), key: &[u8], payloads: &[Vec<u8>], start: u64) {
        let (partition, offset, version, global_position) = place;
        let at = Place {
            partition,
            offset,
            version,
            global_position,
        };
        let next = self.next_version.get(key).copied().unwrap_or(0);
        if at.version != next {
            // "A key whose events are all deleted has no history: its next append is version 0
            // again."
            let forgotten = self.setup.retains() && at.version == 0 && self.all_below(key, start);
            assert!(
                forgotten,
                "versions continue for {:?}: {} after {next} (start {start})",
                show(key),
                at.version
            );
            // The group's holds are kept by version: what becomes of a hold of a key whose
            // versions start again is not specified (see `restarted_keys`).
            self.restarted_keys.insert(key.to_vec());
            self.group.held.remove(&(at.partition, key.to_vec()));
            self.coverage.versions_restarted += 1;
        }
        for (i, payload) in payloads.iter().enumerate() {
            let i = i as u64;
            let acked = Acked {
                key: key.to_vec(),
                payload: payload.clone(),
                version: at.version + i,
                global: at.global_position + i,
            };
            let place = (at.partition, at.offset + i);
            if let Some(earlier) = self.acked.insert(place, acked) {
                panic!(
                    "{place:?} acknowledged twice: {:?}, then {:?}",
                    String::from_utf8_lossy(&earlier.payload[..20.min(earlier.payload.len())]),
                    String::from_utf8_lossy(&payloads[i as usize][..20.min(payloads[i as usize].len())])
                );
            }
            self.key_events.entry(key.to_vec()).or_default().push((
                at.partition,
                at.offset + i,
                at.version + i,
            ));
        }
        self.next_version
            .insert(key.to_vec(), at.version + payloads.len() as u64);
        if payloads.len() > 1 {
            let records = (0..payloads.len() as u64)
                .map(|i| (at.partition, at.offset + i))
                .collect();
            self.batches.push(records);
        }
    }

    /// Reads each partition's start: never back, 0 without retention, and (until consumed)
    /// never above what the group needs.
    fn see_starts(&mut self, log: &Log) -> Vec<u64> {
        let starts = starts(log);
        for p in 0..PARTITIONS {
            let (start, seen) = (starts[p as usize], self.starts[p as usize]);
            assert!(
                start >= seen,
                "partition {p}'s start went back: {start} < {seen}"
            );
            if !self.setup.retains() {
                assert_eq!(start, 0, "partition {p}: a start without retention");
            }
            if self.setup.until_consumed() {
                let watermark = self.group.watermark(p);
                assert!(
                    start <= watermark,
                    "partition {p}: retention until consumed deleted up to {start}, but the \
                     group needs {watermark} ({:?})",
                    self.group.held
                );
            }
            self.starts[p as usize] = start;
        }
        starts
    }

    /// A write of the group's record returned (durable): it is the last acknowledged one, and
    /// those queued before it no longer matter.
    fn acknowledge(&mut self, observed: Observed) {
        self.wait_pending();
        self.committed = self.group.ends.clone();
        self.candidates = vec![Candidate {
            observed,
            group: self.group.clone(),
            ticket: None,
        }];
    }

    /// Waits for the commits in flight: the last becomes the acknowledged one.
    fn wait_pending(&mut self) {
        let mut done = None;
        for (i, candidate) in self.candidates.iter_mut().enumerate().skip(1) {
            if let Some(ticket) = candidate.ticket.take() {
                ticket.wait().expect("a pipelined commit");
                done = Some(i);
            }
        }
        if let Some(i) = done {
            self.candidates.drain(..i);
            self.committed = self.candidates[0].group.ends.clone();
        }
    }

    /// Checks the group's state as the API shows it against the model.
    fn compare(&self, observed: &Observed, what: &str) {
        let kept = |key: &Vec<u8>| !self.restarted_keys.contains(key);
        let retrying: Vec<RetryingKey> = observed
            .retrying
            .iter()
            .filter(|r| kept(&r.1))
            .cloned()
            .collect();
        let dead: Vec<DeadKey> = observed
            .dead
            .iter()
            .filter(|l| kept(&l.1))
            .cloned()
            .collect();
        assert_eq!(observed.committed, self.group.ends, "{what}: committed");
        assert_eq!(retrying, self.group.retrying(), "{what}: retrying keys");
        assert_eq!(dead, self.group.dead(), "{what}: dead letters");
    }

    /// How many events a dead letter counts: the failed one and those behind it the group has
    /// reached, at or above `start` (at least 1).
    fn parked_events(&self, g: &GroupModel, p: u32, key: &[u8], start: u64) -> u64 {
        let h = &g.held[&(p, key.to_vec())];
        let events = self.key_events.get(key).map_or(&[][..], |e| &e[..]);
        let count = events
            .iter()
            .filter(|&&(q, o, v)| {
                q == p && o >= start && v >= h.version && g.reached_behind(p, o, v, h)
            })
            .count() as u64;
        count.max(1)
    }
}

fn starts(log: &Log) -> Vec<u64> {
    (0..PARTITIONS)
        .map(|p| log.start_offset(p).unwrap())
        .collect()
}

/// The group's state as its API shows it, and each dead letter's count of parked events (in
/// the order of `Observed::dead`).
fn observe(group: &Group) -> (Observed, Vec<u64>) {
    let retrying = group.retrying();
    let mut sorted = retrying.clone();
    sorted.sort();
    assert_eq!(retrying, sorted, "retrying keys in (partition, key) order");
    let letters = group.dead_letters().unwrap();
    // Documented "in (partition, offset) order"; the comparisons below sort them by
    // (partition, key).
    let offsets: Vec<(u32, u64)> = letters.iter().map(|l| (l.partition, l.offset)).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "dead letters in (partition, offset) order: {offsets:?}"
    );
    let mut dead: Vec<(DeadKey, u64)> = letters
        .iter()
        .map(|l| {
            let letter = (
                l.partition,
                l.key.clone(),
                l.offset,
                l.version,
                l.attempts,
                l.reason.clone(),
                l.parked_at_ms,
            );
            (letter, l.events)
        })
        .collect();
    dead.sort_by(|a, b| (a.0 .0, &a.0 .1).cmp(&(b.0 .0, &b.0 .1)));
    let observed = Observed {
        committed: group.committed(),
        retrying,
        dead: dead.iter().map(|(l, _)| l.clone()).collect(),
    };
    (observed, dead.iter().map(|(_, e)| *e).collect())
}

/// Runs the program in `data` and checks every power cut it makes.
pub fn check_program(data: &[u8]) {
    run_program(data);
}

/// As `check_program`, and returns what the run exercised.
pub fn run_program(data: &[u8]) -> Coverage {
    let setup = Setup::new(data.first().copied().unwrap_or(0));
    let data = data.get(1..).unwrap_or(&[]);
    let step = setup.payload_step;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let open = || Log::open(&dir, setup.options().fail_points(fail_points.clone())).unwrap();
    let mut log = open();
    let mut model = Model::new(setup);
    let mut group = log.group(GROUP).unwrap();
    group.set_retry_policy(setup.policy()).unwrap();
    let mut consumer = group.join().unwrap();
    let mut n = 0u64;
    let mut bytes = data.iter().copied().take(OPERATIONS_MAX * 3);
    let mut cuts = 0u64;
    trace!("{setup:?}");
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let key = key(arg);
        trace!(
            "op {} arg {arg} (n {n}, starts {:?})",
            op % 16,
            model.starts
        );
        match op % 16 {
            0..=3 => {
                let payload = payload(n, arg, step);
                let at = again(|| log.append(&key, &payload)).unwrap();
                let start = log.start_offset(at.partition).unwrap();
                model.ack(at, &key, &[payload], start);
                n += 1;
            }
            4 => {
                let payloads = [payload(n, arg, step), payload(n + 1, arg / 2, step)];
                let at = again(|| log.append_batch(&key, &payloads)).unwrap();
                let start = log.start_offset(at.partition).unwrap();
                model.ack(at, &key, &payloads, start);
                n += 2;
            }
            5 | 6 => {
                let burst: Vec<(Vec<u8>, Vec<u8>)> = (0..u64::from(arg % 32) + 1)
                    .map(|i| {
                        let key = self::key(arg.wrapping_add(i as u8));
                        (key, payload(n + i, arg, step))
                    })
                    .collect();
                let tickets: Vec<_> = burst
                    .iter()
                    .map(|(key, p)| again(|| log.append_pipelined(key, p)).unwrap())
                    .collect();
                for (ticket, (key, payload)) in tickets.into_iter().zip(burst) {
                    let at = ticket.wait().unwrap();
                    let start = log.start_offset(at.partition).unwrap();
                    model.ack(at, &key, &[payload], start);
                    n += 1;
                }
            }
            7 => {
                // An expected-version append with an id; a stale expectation first, refused.
                let next = model.next_version.get(&key).copied().unwrap_or(0);
                let stale =
                    again(|| log.append_to(&key, Expected::Exact(next + 1), &[Event::new(b"x")]));
                assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
                let payload = payload(n, arg, step);
                let id = u128::from(n) << 8 | 0x1d;
                let p = log.partition_for(&key);
                let mut tries = 0;
                let mut kept = false;
                let at = loop {
                    // With retention, a key whose events were all deleted starts again: "its
                    // next append is version 0 again (`Expected::NoStream` succeeds)".
                    let start = log.start_offset(p).unwrap();
                    let forgotten = setup.retains() && next > 0 && model.all_below(&key, start);
                    let expected = match next.checked_sub(1) {
                        Some(last) if !forgotten || kept => Expected::Exact(last),
                        _ => Expected::NoStream,
                    };
                    match again(|| log.append_to(&key, expected, &[Event::new(&payload).id(id)])) {
                        Ok(at) => break at,
                        // Retention deleted the key's last event meanwhile (in the background).
                        Err(Error::Conflict { .. }) if setup.retains() && tries < 5 => tries += 1,
                        // Known (see `tolerate_kept_versions`): the versions of a key appended
                        // since open go on after retention deleted all its events.
                        Err(Error::Conflict { .. })
                            if forgotten && !kept && tolerate_kept_versions() =>
                        {
                            kept = true;
                        }
                        Err(e) => panic!(
                            "append_to {:?} {expected:?}: {e} (start {start}, its events {:?}, \
                             read_key {:?}, last_version {:?}): a key whose events are all \
                             deleted has no history, its next append is version 0 again",
                            show(&key),
                            model.key_events.get(&key),
                            log.read_key(&key, 0).map(|r| r
                                .iter()
                                .map(|r| (r.offset, r.version))
                                .collect::<Vec<_>>()),
                            log.last_version(&key)
                        ),
                    }
                };
                let start = log.start_offset(at.partition).unwrap();
                model.ids.push((id, key.clone(), (at.partition, at.offset)));
                model.ack(at, &key, &[payload], start);
                n += 1;
            }
            8 if !model.ids.is_empty() => {
                // A retry of an earlier call: nothing written, the original place returned. With
                // retention, an id whose event was deleted is forgotten: the retry appends.
                let index = usize::from(arg) % model.ids.len();
                let (id, key, place) = model.ids[index].clone();
                let start_before = log.start_offset(place.0).unwrap();
                let payload = payload(n, arg, step);
                let retry =
                    again(|| log.append_to(&key, Expected::Any, &[Event::new(&payload).id(id)]))
                        .unwrap();
                if retry.duplicate {
                    assert_eq!((retry.partition, retry.offset), place, "id {id:#x}");
                    assert!(
                        place.1 >= start_before,
                        "a retry of id {id:#x}, whose event {place:?} was deleted (start \
                         {start_before}), was recognised"
                    );
                } else {
                    let start = log.start_offset(place.0).unwrap();
                    assert!(
                        setup.retains() && place.1 < start,
                        "a retry of id {id:#x} at {place:?} is not a duplicate (start {start})"
                    );
                    model.coverage.ids_forgotten += 1;
                    model.ids[index].2 = (retry.partition, retry.offset);
                    model.ack(retry, &key, &[payload], start);
                    n += 1;
                }
            }
            9 => {
                // A multi-key append over keys of both partitions: all or nothing.
                let keys: Vec<Vec<u8>> = (0..3u8).map(|i| self::key(arg.wrapping_add(i))).collect();
                let mut keys = keys;
                keys.dedup();
                keys.sort();
                keys.dedup();
                let payloads: Vec<Vec<u8>> = (0..keys.len() as u64)
                    .map(|i| payload(n + i, arg, step))
                    .collect();
                let events: Vec<[Event<'_>; 1]> =
                    payloads.iter().map(|p| [Event::new(p)]).collect();
                let appends: Vec<KeyAppend<'_, '_>> = keys
                    .iter()
                    .zip(&events)
                    .map(|(key, events)| KeyAppend::new(key, Expected::Any, events))
                    .collect();
                let at = again(|| log.append_multi(&appends)).unwrap();
                let mut group = Vec::new();
                for ((at, key), payload) in at.iter().zip(&keys).zip(&payloads) {
                    let start = log.start_offset(at.partition).unwrap();
                    model.ack(*at, key, std::slice::from_ref(payload), start);
                    group.push((at.partition, at.offset));
                }
                model.batches.push(group);
                n += keys.len() as u64;
            }
            10 | 11 => {
                // A member polls what is visible, nacks some deliveries, and commits.
                let pattern = bytes.next().unwrap_or(0);
                consume(&log, &group, &mut consumer, &mut model, arg, pattern, n);
                n += 1;
            }
            12 => dead_letter_op(&log, &group, &mut model, arg),
            13 => {
                let before = model.see_starts(&log);
                let report = log.enforce_retention().unwrap();
                let after = starts(&log);
                model.coverage.retention_runs += 1;
                for p in 0..PARTITIONS as usize {
                    let start = report.starts[p];
                    assert!(
                        before[p] <= start && start <= after[p],
                        "partition {p}: enforce_retention reports start {start}, read {} \
                         before and {} after",
                        before[p],
                        after[p]
                    );
                }
                if !setup.retains() {
                    assert_eq!(report.segments_deleted, 0, "deleted without retention");
                }
            }
            14 if arg % 3 == 1 => {
                let count = bytes.next().unwrap_or(0);
                let fault = inject_fault(&log, &fail_points, &mut model, arg / 3, count, &mut n);
                if let Some(poisoning) = fault {
                    // Images of this instant hold every acknowledged append, and of the
                    // poisoned ones each whole or absent; then the running process reopens.
                    model.see_starts(&log);
                    check_cut(&fail_points, root.path(), &mut model, u64::from(count), cuts);
                    cuts += 1;
                    drop(consumer);
                    drop(group);
                    drop(log);
                    log = open();
                    model.coverage.reopens_after_poison += 1;
                    learn_after_poison(&log, &mut model, poisoning);
                    group = log.group(GROUP).unwrap();
                    group.set_retry_policy(setup.policy()).unwrap();
                    let (observed, _) = observe(&group);
                    assert_eq!(
                        observed, model.candidates[0].observed,
                        "the group's state after a reopen after a poisoning"
                    );
                    model.group = model.candidates[0].group.clone();
                    consumer = group.join().unwrap();
                }
            }
            14 if arg % 3 == 0 => {
                // A clean restart: everything queued is durable at close.
                model.wait_pending();
                drop(consumer);
                drop(group);
                log.close().unwrap();
                log = open();
                model.coverage.restarts += 1;
                group = log.group(GROUP).unwrap();
                group.set_retry_policy(setup.policy()).unwrap();
                // The group's state is its last record (the in-process state may have moved
                // heads below the start since, without a write).
                let (observed, _) = observe(&group);
                let last = &model.candidates[0];
                assert_eq!(
                    observed, last.observed,
                    "the group's state after a clean restart"
                );
                model.group = last.group.clone();
                consumer = group.join().unwrap();
            }
            _ => {
                model.see_starts(&log);
                let seed = u64::from(arg) << 8 | u64::from(bytes.next().unwrap_or(0));
                check_cut(&fail_points, root.path(), &mut model, seed, cuts);
                cuts += 1;
            }
        }
        model.see_starts(&log);
    }
    drop(consumer);
    drop(group);
    model.see_starts(&log);
    check_cut(&fail_points, root.path(), &mut model, n, cuts);
    model.wait_pending();
    log.close().unwrap();
    model.coverage
}

/// What a poisoning left undecided: each partition's end before the failure, and the appends
/// (key, payloads) that failed with `Poisoned`, each to be whole or absent after the reopen.
struct Poisoning {
    ends: Vec<u64>,
    undecided: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
}

/// The fault operation: `kind` picks an injected failure (the next fsync, the next write, a
/// short write, or a full disk), which a burst of pipelined `Sync` appends and then a batch
/// meet; a probe append follows once the failure is cleared. Appends acknowledged go to the
/// model; those that failed with `AppendFailed`, or were refused when called, must never
/// appear; those whose tickets failed with `Poisoned` are undecided until the reopen (returned).
/// Without a poisoning, the running log shows exactly what was acknowledged, and the probe
/// works: a failed round needs no reopen.
fn inject_fault(
    log: &Log,
    fail_points: &FailPoints,
    model: &mut Model,
    kind: u8,
    count: u8,
    n: &mut u64,
) -> Option<Poisoning> {
    // No commit in flight meets the failure.
    model.wait_pending();
    let step = model.setup.payload_step;
    let ends: Vec<u64> = (0..PARTITIONS).map(|p| log.end_offset(p).unwrap()).collect();
    model.coverage.faults_injected += 1;
    trace!("fault {} count {count}", kind % 4);
    match kind % 4 {
        0 => fail_points.fail_syncs(1),
        1 => fail_points.fail_writes(1),
        2 => fail_points.fail_writes_short(1),
        _ => fail_points.set_disk_full(true),
    }
    let mut undecided = Vec::new();
    let burst: Vec<(Vec<u8>, Vec<u8>)> = (0..u64::from(count % 4) + 1)
        .map(|i| (key(count.wrapping_add(i as u8)), payload(*n + i, count, step)))
        .collect();
    *n += burst.len() as u64;
    let tickets: Vec<_> = burst
        .iter()
        .map(|(key, payload)| log.append_pipelined(key, payload))
        .collect();
    for (ticket, (key, payload)) in tickets.into_iter().zip(burst) {
        let result = match ticket {
            Ok(ticket) => ticket.wait(),
            Err(e) => {
                // Refused when called: never written.
                assert!(matches!(e, Error::Poisoned { .. }), "append_pipelined: {e}");
                model.never.insert(payload);
                continue;
            }
        };
        settle(log, model, result, &key, vec![payload], &mut undecided);
    }
    let key = self::key(count.wrapping_add(3));
    let batch = vec![payload(*n, count / 2, step), payload(*n + 1, 1, step)];
    *n += 2;
    let result = log.append_batch(&key, &batch);
    settle(log, model, result, &key, batch, &mut undecided);
    fail_points.clear_failures();
    let probe = payload(*n, count / 4, step);
    *n += 1;
    let result = log.append(&key, &probe);
    if undecided.is_empty() {
        // A failed round needs no reopen: the next append works.
        assert!(result.is_ok(), "an append after the failure was cleared: {result:?}");
    }
    settle(log, model, result, &key, vec![probe], &mut undecided);
    if !undecided.is_empty() {
        model.undecided = undecided.iter().map(|(_, payloads)| payloads.clone()).collect();
        return Some(Poisoning { ends, undecided });
    }
    // Not poisoned: the running log holds exactly what was acknowledged past the old ends.
    for p in 0..PARTITIONS {
        let from = ends[p as usize].max(log.start_offset(p).unwrap());
        let end = log.end_offset(p).unwrap();
        let acked_past = model.acked.range((p, from)..(p, u64::MAX)).count() as u64;
        assert_eq!(
            acked_past,
            end - from,
            "partition {p}: {acked_past} appends acknowledged from {from}, the log ends at {end}"
        );
        for record in log.read(p, from).unwrap() {
            let record = record.unwrap();
            let acked = model.acked.get(&(p, record.offset));
            assert!(
                acked.is_some_and(|a| a.payload[..] == record.payload[..]),
                "after a failed append, {p}/{} holds {:?}, not what was acknowledged there",
                record.offset,
                String::from_utf8_lossy(&record.payload[..20.min(record.payload.len())])
            );
        }
    }
    None
}

/// The outcome of one append that may have met an injected failure.
fn settle(
    log: &Log,
    model: &mut Model,
    result: annal::Result<annal::Appended>,
    key: &[u8],
    payloads: Vec<Vec<u8>>,
    undecided: &mut Vec<(Vec<u8>, Vec<Vec<u8>>)>,
) {
    match result {
        Ok(at) => {
            let start = log.start_offset(at.partition).unwrap();
            model.ack(at, key, &payloads, start);
        }
        Err(Error::AppendFailed { .. }) => {
            model.coverage.appends_failed += 1;
            model.never.extend(payloads);
        }
        Err(Error::Poisoned { .. }) => {
            model.coverage.appends_poisoned += 1;
            undecided.push((key.to_vec(), payloads));
        }
        Err(e) => panic!("an append meeting an injected failure: {e}"),
    }
}

/// After the reopen that follows a poisoning: each undecided append is whole or absent; the
/// ones kept join the model (their versions must follow), the others must never appear.
fn learn_after_poison(log: &Log, model: &mut Model, poisoning: Poisoning) {
    let Poisoning {
        ends,
        mut undecided,
    } = poisoning;
    for p in 0..PARTITIONS {
        let start = log.start_offset(p).unwrap();
        let from = ends[p as usize].max(start);
        for record in log.read(p, from).unwrap() {
            let record = record.unwrap();
            if let Some(acked) = model.acked.get(&(p, record.offset)) {
                assert_eq!(
                    &acked.payload[..],
                    &record.payload[..],
                    "after the reopen, {p}/{}",
                    record.offset
                );
                continue;
            }
            let Some(i) = undecided
                .iter()
                .position(|(key, payloads)| key[..] == record.key[..] && payloads[0][..] == record.payload[..])
            else {
                panic!(
                    "after the reopen, {p}/{} holds {:?}: neither acknowledged nor an undecided \
                     append's first event",
                    record.offset,
                    String::from_utf8_lossy(&record.payload[..20.min(record.payload.len())])
                );
            };
            let (key, payloads) = undecided.remove(i);
            let place = (p, record.offset, record.version, record.global_position);
            model.ack_at(place, &key, &payloads, start);
            model.coverage.poisoned_kept += 1;
        }
    }
    for (_, payloads) in undecided {
        model.never.extend(payloads);
    }
    model.undecided.clear();
}

/// The consumer operation: a poll (its `EventsExpired` errors told and polled past), nacks of
/// the deliveries `pattern` picks (bit 7 on: bit `i % 5` for the `i`-th delivery), and a commit
/// (bit 6: pipelined, left in flight; bit 5: commits in flight are left so at the start too).
fn consume(
    log: &Log,
    group: &Group,
    consumer: &mut Consumer,
    model: &mut Model,
    arg: u8,
    pattern: u8,
    op: u64,
) {
    if pattern & 0x20 == 0 {
        model.wait_pending();
    }
    let max = usize::from(arg % 40) + 1;
    let before = model.see_starts(log);
    let mut told = 0;
    // Where each reader is: the committed end, or where an `EventsExpired` moved it (the start
    // may move again before the next poll: told again from there).
    let mut reader_at = model.group.ends.clone();
    let batch = loop {
        match consumer.poll(max, Duration::ZERO) {
            Ok(batch) => break batch,
            Err(Error::EventsExpired {
                partition,
                from,
                to,
                ..
            }) => {
                let p = partition as usize;
                let start = log.start_offset(partition).unwrap();
                assert!(
                    setup_allows_expiry(&model.setup),
                    "EventsExpired {from}..{to} of {p} with retention until consumed"
                );
                assert!(
                    from < to && to <= start,
                    "EventsExpired {from}..{to}, start {start}"
                );
                trace!(
                    "  EventsExpired {p}: {from}..{to} (start {start}, ends {:?})",
                    model.group.ends
                );
                assert_eq!(
                    from, reader_at[p],
                    "EventsExpired {from}..{to} of partition {p}: from where its reader was ({:?})",
                    model.group.ends
                );
                reader_at[p] = to;
                model.coverage.expired_in_process += 1;
                told += 1;
                assert!(told <= 16, "EventsExpired again and again");
            }
            Err(e) if tolerate_deletion_races() && deletion_race(&e) => {
                RACES_TOLERATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => panic!("poll: {e}"),
        }
    };
    let now = starts(log);
    let old = model.group.clone();
    trace!(
        "  poll {max} (starts {before:?} before, {now:?} after): {:?}; ends {:?}, held {:?}",
        batch
            .iter()
            .map(|d| {
                let r = &d.record;
                (r.partition, r.offset, show(&r.key), r.version, d.attempt)
            })
            .collect::<Vec<_>>(),
        old.ends,
        old.held
    );

    // Each delivery against the model: never a settled one; retries first, from the head;
    // the reader's in offset order from the committed end.
    let mut delivered = BTreeSet::new();
    let mut key_last: BTreeMap<(u32, Vec<u8>), u64> = BTreeMap::new();
    // Per key delivered by a retry: (first version, last version, last offset).
    let mut runs: BTreeMap<(u32, Vec<u8>), (u64, u64, u64)> = BTreeMap::new();
    let mut reader_last: Vec<Option<u64>> = vec![None; PARTITIONS as usize];
    let mut reader_seen = false;
    // Per key nacked: (version, offset, failures, reason).
    let mut nacked: BTreeMap<(u32, Vec<u8>), NackSeen> = BTreeMap::new();
    for (i, d) in batch.iter().enumerate() {
        let r = &d.record;
        let (p, o) = (r.partition, r.offset);
        let k = r.key.to_vec();
        let pk = (p, k.clone());
        let acked = model
            .acked
            .get(&(p, o))
            .unwrap_or_else(|| panic!("delivered {p}/{o}, never acknowledged"));
        assert_eq!(acked.key, k, "delivered {p}/{o}: key");
        assert_eq!(acked.version, r.version, "delivered {p}/{o}: version");
        assert_eq!(
            &acked.payload[..],
            &r.payload[..],
            "delivered {p}/{o}: payload"
        );
        assert!(
            !old.settled.contains(&(p, o)),
            "delivered {p}/{o} ({:?} v{}) again, settled already (attempt {})",
            show(&k),
            r.version,
            d.attempt
        );
        assert!(
            delivered.insert((p, o)),
            "{p}/{o} delivered twice in one batch"
        );
        if let Some(last) = key_last.insert(pk.clone(), r.version) {
            assert!(
                last < r.version,
                "{:?}: v{} after v{last}",
                show(&k),
                r.version
            );
        }
        if model.restarted_keys.contains(&k) {
            // Neither held nor nacked as far as the model goes (see `restarted_keys`).
            continue;
        }
        let held = old.behind(p, &k, r.version);
        if let Some(h) = held {
            assert!(
                h.parked.is_none(),
                "{p}/{o} ({:?} v{}) delivered, parked behind a dead letter at v{}",
                show(&k),
                r.version,
                h.version
            );
            assert!(!reader_seen, "a retry's delivery after the reader's");
            match runs.get_mut(&pk) {
                None => {
                    if r.version != h.version {
                        // Retention deleted the head: the key goes on from its first event left.
                        assert!(
                            model.setup.retains() && h.offset < now[p as usize],
                            "the retry of {:?} starts at v{}, not at its head v{} ({p}/{})",
                            show(&k),
                            r.version,
                            h.version,
                            h.offset
                        );
                        assert!(o >= before[p as usize], "a retry from below the start");
                        let skipped = model.key_events[&k]
                            .iter()
                            .any(|&(_, e, v)| v >= h.version && e >= now[p as usize] && e < o);
                        assert!(!skipped, "the retry of {:?} skips events", show(&k));
                    }
                    // A head that retention deleted between the poll's move of held keys up
                    // to the start and its read of the key's events (the start moved during
                    // the poll) comes with attempt 1: its failures so far are lost.
                    let raced = r.version != h.version
                        && before[p as usize] != now[p as usize]
                        && d.attempt == 1;
                    assert!(
                        d.attempt == h.attempts + 1 || raced,
                        "the retry of {:?}'s head carries its failures: attempt {}, {} before",
                        show(&k),
                        d.attempt,
                        h.attempts
                    );
                    if raced && h.attempts > 0 {
                        model.coverage.retry_attempts_lost_to_a_moving_start += 1;
                    }
                    runs.insert(pk.clone(), (r.version, r.version, o));
                    model.coverage.retries_delivered += 1;
                }
                Some(run) => {
                    assert_eq!(r.version, run.1 + 1, "a retry of {:?} in order", show(&k));
                    run.1 = r.version;
                    run.2 = o;
                }
            }
        } else {
            reader_seen = true;
            assert!(
                o >= old.ends[p as usize],
                "the reader delivered {p}/{o}, below the committed end {}",
                old.ends[p as usize]
            );
            let last = &mut reader_last[p as usize];
            assert!(last.is_none_or(|l| l < o), "the reader of {p} out of order");
            *last = Some(o);
        }
        // Deliveries behind a nack of this batch are passed by, as `Consumer::handle` does.
        let behind = nacked.get(&pk).is_some_and(|n| n.0 < r.version);
        assert_eq!(consumer.is_held(d), behind, "is_held of {p}/{o}");
        if behind {
            continue;
        }
        if pattern & 0x80 != 0 && (pattern >> (i % 5)) & 1 == 1 {
            let head = runs.get(&pk).is_some_and(|run| run.0 == r.version);
            let failures = if head { d.attempt } else { 1 };
            let reason = format!("nack {op}.{i} of {p}/{o}");
            consumer.nack(d, &reason).unwrap();
            model.coverage.nacks += 1;
            nacked.insert(pk, (r.version, o, failures, reason));
        }
    }

    let pipelined = pattern & 0x40 != 0;
    trace!("  nacked {nacked:?}, pipelined {pipelined}");
    let (observed_before, _) = observe(group);
    let t0 = now_ms();
    let ticket = if pipelined {
        consumer.commit_pipelined(&batch).unwrap()
    } else {
        consumer.commit(&batch).unwrap();
        None
    };
    let t1 = now_ms();
    let (observed, _) = observe(group);
    let wrote = match (pipelined, &ticket) {
        (true, ticket) => ticket.is_some(),
        (false, _) => !batch.is_empty() || observed != observed_before,
    };
    if pipelined {
        assert_eq!(
            ticket.is_some(),
            !batch.is_empty() || observed != observed_before
        );
    }

    // The commit's effect on the model.
    let mut next = old.clone();
    for d in &batch {
        let r = &d.record;
        let place = (r.partition, r.offset);
        next.reached.insert(place);
        let pk = (r.partition, r.key.to_vec());
        if nacked.get(&pk).is_none_or(|n| n.0 > r.version) {
            next.settled.insert(place);
        }
    }
    for (pk, run) in &runs {
        if nacked.contains_key(pk) {
            continue;
        }
        // Retried without a nack: held at the next version if there is one, else free.
        match model.event_of(&pk.1, run.1 + 1) {
            Some((_, offset)) => {
                let held = Held {
                    offset,
                    version: run.1 + 1,
                    attempts: 0,
                    parked: None,
                };
                next.held.insert(pk.clone(), held);
            }
            None => {
                next.held.remove(pk);
            }
        }
    }
    for (pk, (version, offset, failures, reason)) in &nacked {
        let parked = (*failures >= model.setup.max_attempts).then(|| {
            // (A key the engine did not park shows in the comparison below.)
            let letter = observed.dead.iter().find(|l| (l.0, &l.1) == (pk.0, &pk.1));
            let at = letter.map_or(0, |l| l.6);
            assert!(
                letter.is_none() || (t0 <= at && at <= t1),
                "{:?} parked at {at}, not within the commit ({t0}..={t1})",
                show(&pk.1)
            );
            (reason.clone(), at)
        });
        model.coverage.parked += u64::from(parked.is_some());
        let held = Held {
            offset: *offset,
            version: *version,
            attempts: *failures,
            parked,
        };
        next.held.insert(pk.clone(), held);
    }
    next.ends = observed.committed.clone();
    #[allow(clippy::needless_range_loop)] // `p` indexes three vectors and names the partition
    for p in 0..PARTITIONS as usize {
        let end = log.end_offset(p as u32).unwrap();
        assert!(
            next.ends[p] >= old.ends[p],
            "the committed end of {p} went back"
        );
        assert!(next.ends[p] <= end, "the committed end of {p} past its end");
        if let Some(last) = reader_last[p] {
            assert!(
                next.ends[p] > last,
                "the commit of {p} does not cover {last}"
            );
        }
    }
    // Retention moved (or dropped) heads below the start, where the poll met them.
    if model.setup.retains() {
        reconcile(model, &mut next, &observed, &before, &now);
    }

    // The reader passed by exactly the events held (or settled ahead of it).
    for p in 0..PARTITIONS {
        let from = old.ends[p as usize].max(now[p as usize]);
        let to = next.ends[p as usize].max(from);
        for (&(_, o), acked) in model.acked.range((p, from)..(p, to)) {
            if model.restarted_keys.contains(&acked.key) {
                continue;
            }
            let ok = delivered.contains(&(p, o))
                || old.settled.contains(&(p, o))
                || old.behind(p, &acked.key, acked.version).is_some();
            assert!(
                ok,
                "{p}/{o} ({:?} v{}) below the new end {} was neither delivered nor held",
                show(&acked.key),
                acked.version,
                next.ends[p as usize]
            );
        }
    }
    // With room left, every key held for a retry was delivered to its last event.
    if batch.len() < max {
        for ((p, k), h) in old.held.iter().filter(|(_, h)| h.parked.is_none()) {
            if model.restarted_keys.contains(k) {
                continue;
            }
            let left = model.key_events[k]
                .iter()
                .any(|&(_, o, v)| v >= h.version && o >= now[*p as usize]);
            if !left {
                continue;
            }
            let last = model.next_version[k] - 1;
            let run = runs.get(&(*p, k.clone()));
            assert!(
                run.is_some_and(|run| run.1 == last),
                "{:?} was due for a retry from v{}: delivered {run:?}, its last is v{last}",
                show(k),
                h.version
            );
        }
    }
    // Below the committed end, everything is settled or held.
    for p in 0..PARTITIONS {
        let from = now[p as usize];
        let to = next.ends[p as usize].max(from);
        for (&(_, o), acked) in model.acked.range((p, from)..(p, to)) {
            if model.restarted_keys.contains(&acked.key) {
                continue;
            }
            assert!(
                next.settled.contains(&(p, o))
                    || next.behind(p, &acked.key, acked.version).is_some(),
                "{p}/{o} ({:?} v{}) below the committed end, neither settled nor held",
                show(&acked.key),
                acked.version
            );
        }
    }
    model.group = next;
    // The parked times are the engine's (checked above to fall within the commit).
    model.compare(&observed, "the group's state after a commit");
    if wrote {
        match ticket {
            Some(ticket) => {
                model.coverage.pipelined_commits += 1;
                model.candidates.push(Candidate {
                    observed,
                    group: model.group.clone(),
                    ticket: Some(ticket),
                });
            }
            None => model.acknowledge(observed),
        }
    }
}

fn setup_allows_expiry(setup: &Setup) -> bool {
    setup.retains() && !setup.until_consumed()
}

/// Held keys whose head is below the start: a poll moves them to their first event left, or
/// drops them when none is left. `before` and `now` bound the start the poll used.
fn reconcile(
    model: &Model,
    next: &mut GroupModel,
    observed: &Observed,
    before: &[u64],
    now: &[u64],
) {
    let keys: Vec<(u32, Vec<u8>)> = next.held.keys().cloned().collect();
    for pk in keys {
        let (p, k) = (pk.0, &pk.1);
        let h = next.held[&pk].clone();
        if h.offset >= now[p as usize] {
            continue;
        }
        let retrying = observed.retrying.iter().any(|r| (r.0, &r.1) == (p, k));
        let letter = observed.dead.iter().find(|l| (l.0, &l.1) == (p, k));
        let events = &model.key_events[k];
        match letter {
            None if !retrying => {
                let left = events
                    .iter()
                    .any(|&(_, o, v)| v >= h.version && o >= now[p as usize]);
                assert!(
                    !left,
                    "{:?} held at {p}/{} v{} was dropped with events left: {events:?} (starts \
                     {before:?}..={now:?}; {observed:?})",
                    show(k),
                    h.offset,
                    h.version
                );
                next.held.remove(&pk);
            }
            Some(letter) if (letter.2, letter.3) != (h.offset, h.version) => {
                let (o, v) = (letter.2, letter.3);
                assert!(
                    v >= h.version && o >= before[p as usize],
                    "{:?}'s dead letter moved from v{} at {} to v{v} at {o}",
                    show(k),
                    h.version,
                    h.offset
                );
                assert!(
                    events.contains(&(p, o, v)),
                    "{:?}'s dead letter moved to no event",
                    show(k)
                );
                let skipped = events
                    .iter()
                    .any(|&(_, e, w)| w >= h.version && e >= now[p as usize] && e < o);
                assert!(
                    !skipped,
                    "{:?}'s dead letter moved past events left",
                    show(k)
                );
                let held = next.held.get_mut(&pk).expect("listed");
                held.offset = o;
                held.version = v;
            }
            _ => {}
        }
    }
}

/// Re-drives or discards a dead letter (`arg % 4`: 0, 1 re-drive, 2 discard, 3 `redrive_all`),
/// or checks that a key without one is refused.
fn dead_letter_op(log: &Log, group: &Group, model: &mut Model, arg: u8) {
    let parked: Vec<(u32, Vec<u8>)> = model
        .group
        .held
        .iter()
        .filter(|(_, h)| h.parked.is_some())
        .map(|(pk, _)| pk.clone())
        .collect();
    if arg % 4 == 3 {
        let (before, _) = observe(group);
        let engine_parked = before.dead.len();
        let count = group.redrive_all().unwrap();
        assert_eq!(
            count, engine_parked,
            "redrive_all re-drives every dead letter"
        );
        assert!(
            count >= parked.len(),
            "redrive_all: {count} re-driven, {} parked",
            parked.len()
        );
        if count == 0 {
            return;
        }
        for pk in &parked {
            let held = model.group.held.get_mut(pk).expect("parked");
            held.attempts = 0;
            held.parked = None;
        }
        model.coverage.redrives += count as u64;
    } else if parked.is_empty() {
        let key = key(arg >> 2);
        let refused = |result: annal::Result<()>| matches!(result, Err(Error::NoDeadLetter { .. }));
        assert!(
            refused(group.redrive(&key)),
            "a re-drive of {:?}, not parked",
            show(&key)
        );
        assert!(
            refused(group.discard(&key)),
            "a discard of {:?}, not parked",
            show(&key)
        );
        return;
    } else {
        let pk = parked[usize::from(arg >> 2) % parked.len()].clone();
        let (p, key) = (pk.0, pk.1.clone());
        if arg % 4 < 2 {
            group.redrive(&key).unwrap();
            let held = model.group.held.get_mut(&pk).expect("parked");
            held.attempts = 0;
            held.parked = None;
            model.coverage.redrives += 1;
        } else {
            // The dead letter counts the events the group reached behind it; a discard
            // settles exactly those.
            let start = log.start_offset(p).unwrap();
            let (observed, events) = observe(group);
            let at = observed
                .dead
                .iter()
                .position(|l| (l.0, &l.1) == (p, &key))
                .expect("parked");
            let expected = model.parked_events(&model.group, p, &key, start);
            if log.start_offset(p).unwrap() == start && !model.restarted_keys.contains(&key) {
                assert_eq!(
                    events[at],
                    expected,
                    "{:?}'s dead letter counts its events",
                    show(&key)
                );
            }
            group.discard(&key).unwrap();
            let h = model.group.held.remove(&pk).expect("parked");
            let settle: Vec<(u32, u64)> = model.key_events[&key]
                .iter()
                .filter(|&&(q, o, v)| {
                    q == p && v >= h.version && model.group.reached_behind(p, o, v, &h)
                })
                .map(|&(q, o, _)| (q, o))
                .collect();
            model.group.settled.extend(settle);
            model.coverage.discards += 1;
        }
    }
    let (observed, _) = observe(group);
    model.compare(&observed, "the group's state after a re-drive or discard");
    model.acknowledge(observed);
}

/// Builds the image of a power cut now and checks it against the model.
fn check_cut(
    fail_points: &FailPoints,
    root: &std::path::Path,
    model: &mut Model,
    seed: u64,
    cut: u64,
) {
    let instant = fail_points.recorded_ops();
    let image = root.join(format!("image-{cut}"));
    fail_points.crash_image(instant, &image, seed).unwrap();
    let log = Log::open(&image, options())
        .unwrap_or_else(|e| panic!("cut {cut} (seed {seed}): the image does not open: {e}"));
    model.coverage.cuts += 1;
    let mut ends = Vec::new();
    let mut starts = Vec::new();
    // What the image holds: (partition, offset) -> (key, version).
    let mut present: BTreeMap<(u32, u64), (Vec<u8>, u64)> = BTreeMap::new();
    let mut by_key: BTreeMap<Vec<u8>, Vec<(u32, u64)>> = BTreeMap::new();
    let mut payloads_present: BTreeSet<Vec<u8>> = BTreeSet::new();
    for p in 0..PARTITIONS {
        let end = log.end_offset(p).unwrap();
        let start = log.start_offset(p).unwrap();
        let seen = model.starts[p as usize];
        assert!(
            start <= end,
            "cut {cut}: partition {p} starts at {start}, past its end {end}"
        );
        assert!(
            start >= seen,
            "cut {cut}: partition {p}'s start went back from {seen} to {start}"
        );
        if !model.setup.retains() {
            assert_eq!(
                start, 0,
                "cut {cut}: partition {p} has a start without retention"
            );
        }
        if start > 0 {
            model.coverage.cuts_with_start_above_0 += 1;
            for below in [0, start - 1] {
                match log.read(p, below) {
                    Err(Error::OffsetBelowStart {
                        partition,
                        offset,
                        start: s,
                    }) if (partition, offset, s) == (p, below, start) => {}
                    other => panic!(
                        "cut {cut}: a read of {p}/{below}, below {start}: {:?}",
                        other.map(drop)
                    ),
                }
            }
        }
        let mut expected = start;
        for record in log.read(p, start).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("cut {cut}: partition {p}: {e}"));
            assert_eq!(
                record.offset, expected,
                "cut {cut}: offsets contiguous in {p}"
            );
            assert!(
                record.payload.starts_with(b"event "),
                "cut {cut}: {p}/{expected} invented"
            );
            assert!(
                !model.never.contains(&record.payload[..]),
                "cut {cut}: {p}/{expected} is an append that failed, or that the reopen after \
                 a poisoning left out: {:?}",
                String::from_utf8_lossy(&record.payload[..20.min(record.payload.len())])
            );
            if let Some(acked) = model.acked.get(&(p, record.offset)) {
                assert_eq!(
                    &record.payload[..],
                    &acked.payload[..],
                    "cut {cut}: {p}/{expected}"
                );
                assert_eq!(
                    record.version, acked.version,
                    "cut {cut}: {p}/{expected} version"
                );
                assert_eq!(
                    record.global_position, acked.global,
                    "cut {cut}: {p}/{expected} global"
                );
            }
            if !model.undecided.is_empty() {
                payloads_present.insert(record.payload.to_vec());
            }
            by_key
                .entry(record.key.to_vec())
                .or_default()
                .push((p, record.offset));
            present.insert((p, record.offset), (record.key.to_vec(), record.version));
            expected += 1;
        }
        assert_eq!(expected, end, "cut {cut}: partition {p} reads short");
        ends.push(end);
        starts.push(start);
    }
    for &(p, offset) in model.acked.keys() {
        assert!(
            offset < ends[p as usize],
            "cut {cut}: acknowledged {p}/{offset} lost"
        );
    }
    for batch in &model.batches {
        let present = batch.iter().filter(|(p, o)| *o < ends[*p as usize]).count();
        assert!(
            present == 0 || present == batch.len(),
            "cut {cut}: a batch is torn"
        );
    }
    for payloads in &model.undecided {
        let present = payloads
            .iter()
            .filter(|p| payloads_present.contains(*p))
            .count();
        assert!(
            present == 0 || present == payloads.len(),
            "cut {cut}: an append in doubt after a poisoning is torn ({present} of {})",
            payloads.len()
        );
    }
    // Each key's stream: the partition's records of the key, in order, versions contiguous
    // from its first event left (0 without retention).
    for (key, places) in &by_key {
        let stream = log.read_key(key, 0).unwrap();
        let found: Vec<(u32, u64)> = stream.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(
            &found, places,
            "cut {cut}: read_key agrees with the partition"
        );
        let first = if model.setup.retains() {
            stream[0].version
        } else {
            0
        };
        for (i, record) in stream.iter().enumerate() {
            assert_eq!(
                record.version,
                first + i as u64,
                "cut {cut}: versions contiguous"
            );
        }
    }
    // Keys with nothing left have no history.
    let forgotten: Vec<Vec<u8>> = model
        .key_events
        .keys()
        .filter(|key| !by_key.contains_key(*key))
        .cloned()
        .collect();
    for key in &forgotten {
        assert!(
            model.setup.retains(),
            "cut {cut}: {:?} lost every event",
            show(key)
        );
        assert!(
            log.read_key(key, 0).unwrap().is_empty(),
            "cut {cut}: {:?}",
            show(key)
        );
        assert_eq!(
            log.last_version(key).unwrap(),
            None,
            "cut {cut}: {:?} has no history",
            show(key)
        );
    }
    // The global order: exactly the events left, in increasing positions (without retention
    // every position from 0, without a gap).
    let mut globals = BTreeSet::new();
    let mut last_global = None;
    for record in log.read_all(0).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("cut {cut}: read_all: {e}"));
        let place = (record.partition, record.offset);
        assert!(
            present.contains_key(&place),
            "cut {cut}: read_all returns {place:?}, not left"
        );
        assert!(
            globals.insert(place),
            "cut {cut}: read_all returns {place:?} twice"
        );
        if let Some(acked) = model.acked.get(&place) {
            assert_eq!(
                record.global_position, acked.global,
                "cut {cut}: {place:?} global"
            );
        }
        assert!(
            last_global.is_none_or(|g| g < record.global_position),
            "cut {cut}: read_all out of order"
        );
        if starts.iter().all(|&s| s == 0) {
            let expected = last_global.map_or(0, |g| g + 1);
            assert_eq!(
                record.global_position, expected,
                "cut {cut}: global order gap-free"
            );
        }
        last_global = Some(record.global_position);
    }
    assert_eq!(
        globals.len(),
        present.len(),
        "cut {cut}: the global order holds every event left"
    );
    // After recovery: appends continue, retries are recognised, versions follow.
    if let Some((id, key, place)) = model
        .ids
        .iter()
        .rev()
        .find(|(_, _, (p, o))| *o >= starts[*p as usize] && *o < ends[*p as usize])
    {
        let retry = log
            .append_to(key, Expected::Any, &[Event::new(b"retry").id(*id)])
            .unwrap();
        assert!(
            retry.duplicate,
            "cut {cut}: the retry of a surviving id is a duplicate"
        );
        assert_eq!(
            (retry.partition, retry.offset),
            *place,
            "cut {cut}: the original place"
        );
    }
    check_group_after_cut(&log, model, cut, &starts, &ends, &present);
    let at = log.append(b"after the cut", b"event after").unwrap();
    assert_eq!(
        at.offset, ends[at.partition as usize],
        "cut {cut}: appends continue at the end"
    );
    let last = log.last_version(b"after the cut").unwrap();
    assert_eq!(last, Some(at.version), "cut {cut}: last_version follows");
    if let Some(key) = forgotten.first() {
        let at = log.append(key, b"event again").unwrap();
        assert_eq!(
            at.version,
            0,
            "cut {cut}: {:?} starts again at version 0",
            show(key)
        );
    }
    log.close().unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}

/// The group after a cut: its record is one of the model's candidates, and a new member is
/// delivered exactly what that write left unsettled.
fn check_group_after_cut(
    log: &Log,
    model: &mut Model,
    cut: u64,
    starts: &[u64],
    ends: &[u64],
    present: &BTreeMap<(u32, u64), (Vec<u8>, u64)>,
) {
    let group = log.group(GROUP).unwrap();
    group.set_retry_policy(model.setup.policy()).unwrap();
    let (observed, events) = observe(&group);
    let cursors = &observed.committed;
    for p in 0..PARTITIONS as usize {
        assert!(cursors[p] <= ends[p], "cut {cut}: cursor {p} past the end");
        assert!(
            cursors[p] >= model.committed[p],
            "cut {cut}: an acknowledged commit of partition {p} was lost"
        );
    }
    let latest = model.candidates.len() - 1;
    if latest > 0 {
        model.coverage.cuts_with_commit_in_flight += 1;
    }
    let matching: Vec<usize> = (0..model.candidates.len())
        .filter(|&i| model.candidates[i].observed == observed)
        .collect();
    assert!(
        !matching.is_empty(),
        "cut {cut}: the group's state is no write at or after the last acknowledged one:\n\
         {observed:?}\nwrites:\n{:#?}",
        model
            .candidates
            .iter()
            .map(|c| &c.observed)
            .collect::<Vec<_>>()
    );
    if !matching.contains(&latest) {
        model.coverage.cuts_recovering_an_older_commit += 1;
    }
    if !observed.retrying.is_empty() || !observed.dead.is_empty() {
        model.coverage.cuts_with_held_keys += 1;
    }
    if !observed.dead.is_empty() {
        model.coverage.cuts_with_dead_letters += 1;
    }
    if model.setup.until_consumed() {
        let g = &model.candidates[latest].group;
        for p in 0..PARTITIONS {
            let watermark = g.watermark(p);
            assert!(
                starts[p as usize] <= watermark,
                "cut {cut}: retention until consumed deleted {p} up to {}, the group needs {watermark}",
                starts[p as usize]
            );
        }
    }
    // The new member's deliveries, and what it was told.
    let mut member = group.join().unwrap();
    let mut batches: Vec<Vec<Delivery>> = Vec::new();
    let mut expired: Vec<(u32, u64, u64)> = Vec::new();
    for round in 0.. {
        assert!(round < 10_000, "cut {cut}: the new member never catches up");
        match member.poll(1_000, Duration::ZERO) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => batches.push(batch.deliveries),
            Err(Error::EventsExpired {
                partition,
                from,
                to,
                ..
            }) => expired.push((partition, from, to)),
            Err(e) => panic!("cut {cut}: the new member's poll: {e}"),
        }
    }
    drop(member);
    model.coverage.drain_expired += expired.len() as u64;
    model.coverage.drain_deliveries += batches.iter().map(|b| b.len() as u64).sum::<u64>();
    let mut failures = Vec::new();
    for &i in &matching {
        let candidate = &model.candidates[i];
        let checked = check_drain(
            model,
            &candidate.group,
            i == latest,
            starts,
            present,
            &batches,
            &expired,
        )
        .and_then(|retries| {
            check_dead_letter_counts(model, &candidate.group, &observed, &events, starts, present)
                .map(|()| retries)
        });
        match checked {
            Ok(retries) => {
                model.coverage.drain_retries += retries;
                failures.clear();
                break;
            }
            Err(failure) => failures.push(format!("write {i} of {}: {failure}", latest + 1)),
        }
    }
    assert!(failures.is_empty(), "cut {cut}: {}", failures.join("\n"));
}

/// The dead letters' counts of parked events, against the image.
fn check_dead_letter_counts(
    model: &Model,
    g: &GroupModel,
    observed: &Observed,
    events: &[u64],
    starts: &[u64],
    present: &BTreeMap<(u32, u64), (Vec<u8>, u64)>,
) -> Result<(), String> {
    for (letter, &count) in observed.dead.iter().zip(events) {
        let (p, key) = (letter.0, &letter.1);
        if model.restarted_keys.contains(key) {
            continue;
        }
        let Some(h) = g.held.get(&(p, key.clone())) else {
            return Err(format!(
                "{:?} is parked, the model holds nothing",
                show(key)
            ));
        };
        let expected = present
            .range((p, starts[p as usize])..(p, u64::MAX))
            .filter(|(&(_, o), (k, v))| {
                k == key && *v >= h.version && g.reached_behind(p, o, *v, h)
            })
            .count() as u64;
        if count != expected.max(1) {
            return Err(format!(
                "{:?}'s dead letter counts {count} events, the model {}",
                show(key),
                expected.max(1)
            ));
        }
    }
    Ok(())
}

/// Checks a new member's deliveries after a cut against the write `g` the group's record is
/// (`latest`: the last one made). Returns how many keys were retried.
fn check_drain(
    model: &Model,
    g: &GroupModel,
    latest: bool,
    starts: &[u64],
    present: &BTreeMap<(u32, u64), (Vec<u8>, u64)>,
    batches: &[Vec<Delivery>],
    expired: &[(u32, u64, u64)],
) -> Result<u64, String> {
    // Told once for each partition whose cursor is below the start.
    let mut told: Vec<(u32, u64, u64)> = expired.to_vec();
    told.sort_unstable();
    let expected_told: Vec<(u32, u64, u64)> = (0..PARTITIONS)
        .filter(|&p| g.ends[p as usize] < starts[p as usize])
        .map(|p| (p, g.ends[p as usize], starts[p as usize]))
        .collect();
    if told != expected_told {
        return Err(format!("told {told:?}, expected {expected_told:?}"));
    }
    if !told.is_empty() && model.setup.until_consumed() && latest {
        return Err(format!(
            "retention until consumed deleted what the last write needs: {told:?}"
        ));
    }
    // Exactly the events left unsettled, each once, nothing parked.
    let mut expected: BTreeSet<(u32, u64)> = BTreeSet::new();
    for (&(p, o), (key, version)) in present {
        if o < starts[p as usize] || g.settled.contains(&(p, o)) {
            continue;
        }
        if model.restarted_keys.contains(key) {
            continue;
        }
        if g.behind(p, key, *version)
            .is_some_and(|h| h.parked.is_some())
        {
            continue;
        }
        expected.insert((p, o));
    }
    let mut delivered: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut key_last: BTreeMap<(u32, Vec<u8>), u64> = BTreeMap::new();
    let mut reader_last: Vec<Option<u64>> = vec![None; PARTITIONS as usize];
    let mut retried: BTreeSet<(u32, Vec<u8>)> = BTreeSet::new();
    for batch in batches {
        let mut reader_seen = false;
        for d in batch {
            let r = &d.record;
            let (p, o) = (r.partition, r.offset);
            let k = r.key.to_vec();
            let what = format!(
                "{p}/{o} ({:?} v{}, attempt {})",
                show(&k),
                r.version,
                d.attempt
            );
            if !delivered.insert((p, o)) {
                return Err(format!("{what} delivered twice"));
            }
            if model.restarted_keys.contains(&k) {
                if let Some(last) = key_last.insert((p, k.clone()), r.version) {
                    if last >= r.version {
                        return Err(format!("{what} delivered after v{last}"));
                    }
                }
                continue;
            }
            if !expected.contains(&(p, o)) {
                let why = if g.settled.contains(&(p, o)) {
                    "settled"
                } else if o < starts[p as usize] {
                    "below the start"
                } else if present.contains_key(&(p, o)) {
                    "parked"
                } else {
                    "not in the image"
                };
                return Err(format!("{what} delivered, {why}"));
            }
            if let Some(last) = key_last.insert((p, k.clone()), r.version) {
                if last >= r.version {
                    return Err(format!("{what} delivered after v{last}"));
                }
            }
            match g.behind(p, &k, r.version) {
                Some(h) => {
                    if reader_seen {
                        return Err(format!("{what}: a retry after the reader's deliveries"));
                    }
                    if retried.insert((p, k.clone())) {
                        let moved = h.offset < starts[p as usize];
                        if (!moved && r.version != h.version) || d.attempt != h.attempts + 1 {
                            return Err(format!(
                                "{what}: the retry of a key held at v{} with {} attempts",
                                h.version, h.attempts
                            ));
                        }
                    }
                }
                None => {
                    reader_seen = true;
                    if d.attempt != 1 {
                        return Err(format!("{what}: a first delivery"));
                    }
                    if reader_last[p as usize].is_some_and(|l| l >= o) {
                        return Err(format!("{what}: the reader out of order"));
                    }
                    reader_last[p as usize] = Some(o);
                }
            }
        }
    }
    delivered.retain(|(p, o)| {
        !present
            .get(&(*p, *o))
            .is_some_and(|(k, _)| model.restarted_keys.contains(k))
    });
    if delivered != expected {
        let missing: Vec<_> = expected.difference(&delivered).take(10).collect();
        return Err(format!(
            "{} events left unsettled were not delivered, e.g. {missing:?} (ends {:?}, held {:?})",
            expected.len() - delivered.len(),
            g.ends,
            g.held
        ));
    }
    Ok(retried.len() as u64)
}
