// The body of the `crash_model` fuzz target, shared by `fuzz/fuzz_targets/crash_model.rs`
// (cargo-fuzz) and `tests/fuzz_crash_model.rs` (seeded inputs under `cargo test`), which both
// `include!` this file.
//
// The input bytes are a program: each byte picks an operation on a log of two partitions, small
// segments and the smallest journal, recorded by the simulated disk (`src/storage/simdisk.rs`):
// a `Sync` append, a `Sync` batch, a burst of pipelined `Sync` appends, an append with an
// expected version and an event id, a retry of an earlier id, a multi-key append over both
// partitions, a consumer group member polling and committing, or a power cut. At the power cut (and once more at the end of the program) the
// body builds the image that the cut could leave, chosen by the next bytes as a seed, and checks
// against a plain model of what was acknowledged:
//
// 1. The image opens (no crash image is refused).
// 2. Every append acknowledged before the cut is there, with its payload, at its offset, with
//    the version it was acknowledged with.
// 3. Nothing is there that was never appended; every record reads without error.
// 4. Offsets are contiguous in each partition, versions contiguous for each key (`read_key`
//    agrees with the partitions), and the global order (`read_all`) holds every event once,
//    without a gap.
// 5. A batch, and a multi-key append across partitions, is all there or all absent.
// 6. After recovery, an append lands at the end of its partition, a retry of an acknowledged id
//    writes nothing and returns the original place, and the next version of a key follows its
//    last one.
// 7. The consumer group's cursors are each at most its partition's end and at least what the
//    last acknowledged commit set; a new member is delivered each partition from the cursor to
//    the end, in order, without a gap.
//
// Operations run on one thread, so an input replays exactly.

use std::collections::BTreeMap;

use annal::io::FailPoints;
use annal::{Durability, Event, Expected, KeyAppend, Log, Options};

const PARTITIONS: u32 = 2;
/// Most operations one input runs: bounds the time of one execution.
const OPERATIONS_MAX: usize = 400;
const KEYS: u8 = 7;
const GROUP: &str = "fuzz";

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

fn payload(n: u64, size: u8) -> Vec<u8> {
    let mut payload = format!("event {n} ").into_bytes();
    payload.resize(16 + usize::from(size) * 8, b'.');
    payload
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{}", k % KEYS).into_bytes()
}

/// One acknowledged event.
#[derive(Clone, Debug)]
struct Acked {
    key: Vec<u8>,
    payload: Vec<u8>,
    version: u64,
}

/// What the model knows was acknowledged: (partition, offset) -> event; each batch's (and
/// multi-key append's) records, which must all be there or all be absent; the events appended
/// with an id, by id.
#[derive(Default)]
struct Model {
    acked: BTreeMap<(u32, u64), Acked>,
    batches: Vec<Vec<(u32, u64)>>,
    ids: Vec<(u128, Vec<u8>, (u32, u64))>,
    /// Each key's next version, as the log said.
    next_version: BTreeMap<Vec<u8>, u64>,
    /// The group's cursors after its last acknowledged commit.
    committed: Vec<u64>,
}

impl Model {
    fn ack(&mut self, at: annal::Appended, key: &[u8], payloads: &[Vec<u8>]) {
        assert_eq!(
            at.version,
            self.next_version.get(key).copied().unwrap_or(0),
            "versions continue for {:?}",
            String::from_utf8_lossy(key)
        );
        for (i, payload) in payloads.iter().enumerate() {
            let acked = Acked {
                key: key.to_vec(),
                payload: payload.clone(),
                version: at.version + i as u64,
            };
            self.acked.insert((at.partition, at.offset + i as u64), acked);
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
}

/// Runs the program in `data` and checks every power cut it makes.
pub fn check_program(data: &[u8]) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log = Log::open(&dir, options().fail_points(fail_points.clone())).unwrap();
    let mut model = Model {
        committed: vec![0; PARTITIONS as usize],
        ..Model::default()
    };
    let group = log.group(GROUP).unwrap();
    let mut consumer = group.join().unwrap();
    let mut n = 0u64;
    let mut bytes = data.iter().copied().take(OPERATIONS_MAX * 3);
    let mut cuts = 0u64;
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let key = key(arg);
        match op % 13 {
            0..=3 => {
                let payload = payload(n, arg);
                let at = log.append(&key, &payload).unwrap();
                model.ack(at, &key, &[payload]);
                n += 1;
            }
            4 => {
                let payloads = [payload(n, arg), payload(n + 1, arg / 2)];
                let at = log.append_batch(&key, &payloads).unwrap();
                model.ack(at, &key, &payloads);
                n += 2;
            }
            5 | 6 => {
                let burst: Vec<(Vec<u8>, Vec<u8>)> = (0..u64::from(arg % 32) + 1)
                    .map(|i| (self::key(arg.wrapping_add(i as u8)), payload(n + i, arg)))
                    .collect();
                let tickets: Vec<_> = burst
                    .iter()
                    .map(|(key, p)| log.append_pipelined(key, p).unwrap())
                    .collect();
                for (ticket, (key, payload)) in tickets.into_iter().zip(burst) {
                    let at = ticket.wait().unwrap();
                    model.ack(at, &key, &[payload]);
                    n += 1;
                }
            }
            7 => {
                // An expected-version append with an id; a stale expectation first, refused.
                let next = model.next_version.get(&key).copied().unwrap_or(0);
                let stale = log.append_to(&key, Expected::Exact(next + 1), &[Event::new(b"x")]);
                assert!(matches!(stale, Err(annal::Error::Conflict { .. })), "{stale:?}");
                let expected = next.checked_sub(1).map_or(Expected::NoStream, Expected::Exact);
                let payload = payload(n, arg);
                let id = u128::from(n) << 8 | 0x1d;
                let at = log
                    .append_to(&key, expected, &[Event::new(&payload).id(id)])
                    .unwrap();
                model.ids.push((id, key.clone(), (at.partition, at.offset)));
                model.ack(at, &key, &[payload]);
                n += 1;
            }
            8 if !model.ids.is_empty() => {
                // A retry of an earlier call: nothing written, the original place returned.
                let (id, key, place) = model.ids[usize::from(arg) % model.ids.len()].clone();
                let retry = log
                    .append_to(&key, Expected::Any, &[Event::new(b"retry").id(id)])
                    .unwrap();
                assert!(retry.duplicate, "a retry of id {id:#x} is a duplicate");
                assert_eq!((retry.partition, retry.offset), place);
            }
            9 => {
                // A multi-key append over keys of both partitions: all or nothing.
                let keys: Vec<Vec<u8>> = (0..3u8).map(|i| self::key(arg.wrapping_add(i))).collect();
                let mut keys = keys;
                keys.dedup();
                keys.sort();
                keys.dedup();
                let payloads: Vec<Vec<u8>> =
                    (0..keys.len() as u64).map(|i| payload(n + i, arg)).collect();
                let events: Vec<[Event<'_>; 1]> =
                    payloads.iter().map(|p| [Event::new(p)]).collect();
                let appends: Vec<KeyAppend<'_, '_>> = keys
                    .iter()
                    .zip(&events)
                    .map(|(key, events)| KeyAppend::new(key, Expected::Any, events))
                    .collect();
                let at = log.append_multi(&appends).unwrap();
                let mut group = Vec::new();
                for ((at, key), payload) in at.iter().zip(&keys).zip(&payloads) {
                    model.ack(*at, key, std::slice::from_ref(payload));
                    group.push((at.partition, at.offset));
                }
                model.batches.push(group);
                n += keys.len() as u64;
            }
            10 => {
                // A member polls what is visible and commits it (durable when it returns).
                let batch = consumer
                    .poll(usize::from(arg % 40) + 1, std::time::Duration::ZERO)
                    .unwrap();
                consumer.commit(&batch).unwrap();
                model.committed = group.committed();
            }
            _ => {
                let seed = u64::from(arg) << 8 | u64::from(bytes.next().unwrap_or(0));
                check_cut(&fail_points, root.path(), &model, seed, cuts);
                cuts += 1;
            }
        }
    }
    drop(consumer);
    drop(group);
    check_cut(&fail_points, root.path(), &model, n, cuts);
    log.close().unwrap();
}

/// Builds the image of a power cut now and checks it against the model.
fn check_cut(fail_points: &FailPoints, root: &std::path::Path, model: &Model, seed: u64, cut: u64) {
    let instant = fail_points.recorded_ops();
    let image = root.join(format!("image-{cut}"));
    fail_points.crash_image(instant, &image, seed).unwrap();
    let log = Log::open(&image, options())
        .unwrap_or_else(|e| panic!("cut {cut} (seed {seed}): the image does not open: {e}"));
    let mut ends = Vec::new();
    let mut by_key: BTreeMap<Vec<u8>, Vec<(u32, u64)>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = log.end_offset(p).unwrap();
        let mut expected = 0;
        for record in log.read(p, 0).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("cut {cut}: partition {p}: {e}"));
            assert_eq!(record.offset, expected, "cut {cut}: offsets contiguous in {p}");
            assert!(record.payload.starts_with(b"event "), "cut {cut}: {p}/{expected} invented");
            if let Some(acked) = model.acked.get(&(p, record.offset)) {
                assert_eq!(&record.payload[..], &acked.payload[..], "cut {cut}: {p}/{expected}");
                assert_eq!(record.version, acked.version, "cut {cut}: {p}/{expected} version");
            }
            by_key
                .entry(record.key.to_vec())
                .or_default()
                .push((p, record.offset));
            expected += 1;
        }
        assert_eq!(expected, end, "cut {cut}: partition {p} reads short");
        ends.push(end);
    }
    for &(p, offset) in model.acked.keys() {
        assert!(offset < ends[p as usize], "cut {cut}: acknowledged {p}/{offset} lost");
    }
    for batch in &model.batches {
        let present = batch.iter().filter(|(p, o)| *o < ends[*p as usize]).count();
        assert!(present == 0 || present == batch.len(), "cut {cut}: a batch is torn");
    }
    // Each key's stream: the partition's records of the key, in order, versions 0, 1, 2, ...
    for (key, places) in &by_key {
        let stream = log.read_key(key, 0).unwrap();
        let found: Vec<(u32, u64)> = stream.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(&found, places, "cut {cut}: read_key agrees with the partition");
        for (version, record) in stream.iter().enumerate() {
            assert_eq!(record.version, version as u64, "cut {cut}: versions contiguous");
        }
    }
    // The global order: every event once, no gap.
    let total: u64 = ends.iter().sum();
    let mut next_global = 0;
    for record in log.read_all(0).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("cut {cut}: read_all: {e}"));
        assert_eq!(record.global_position, next_global, "cut {cut}: global order gap-free");
        next_global += 1;
    }
    assert_eq!(next_global, total, "cut {cut}: the global order holds every event");
    // After recovery: appends continue, retries are recognised, versions follow.
    if let Some((id, key, place)) = model
        .ids
        .iter()
        .find(|(_, _, (p, o))| *o < ends[*p as usize])
    {
        let retry = log
            .append_to(key, Expected::Any, &[Event::new(b"retry").id(*id)])
            .unwrap();
        assert!(retry.duplicate, "cut {cut}: the retry of a surviving id is a duplicate");
        assert_eq!((retry.partition, retry.offset), *place, "cut {cut}: the original place");
    }
    // The group's cursors: within the ends, not behind the last acknowledged commit, and a new
    // member is delivered each partition from there to the end, in order.
    let group = log.group(GROUP).unwrap();
    let cursors = group.committed();
    for p in 0..PARTITIONS as usize {
        assert!(cursors[p] <= ends[p], "cut {cut}: cursor {p} past the end");
        assert!(
            cursors[p] >= model.committed[p],
            "cut {cut}: an acknowledged commit of partition {p} was lost"
        );
    }
    let mut next: Vec<u64> = cursors.clone();
    let mut member = group.join().unwrap();
    loop {
        let batch = member.poll(1_000, std::time::Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in &batch {
            let p = delivery.record.partition as usize;
            assert_eq!(delivery.record.offset, next[p], "cut {cut}: delivery in order");
            next[p] += 1;
        }
    }
    assert_eq!(next, ends, "cut {cut}: everything after the cursors is delivered");
    drop(member);
    drop(group);
    let at = log.append(b"after the cut", b"event after").unwrap();
    assert_eq!(at.offset, ends[at.partition as usize], "cut {cut}: appends continue at the end");
    let last = log.last_version(b"after the cut").unwrap();
    assert_eq!(last, Some(at.version), "cut {cut}: last_version follows");
    log.close().unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}
