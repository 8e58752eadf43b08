//! Key tables (`<base>.keys`, one per sealed segment) are derived data: whatever happened to
//! them, `read_key`, `last_version`, expected versions and id lookups give the answers the
//! segments hold. Checked with every table deleted, with flipped bytes (every byte of a small
//! table), truncated, replaced by another segment's table, and with tables whose checksums were
//! made to match lies (entries pointing at the wrong frame or version); and with every key
//! hashing to 0 (`FailPoints::set_key_hash_collisions`), across reopens with and without it.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use annal::io::FailPoints;
use annal::{Durability, Error, Event, Expected, Log, Options, Record};
use common::rng::SplitMix64;
use common::segment_files::{copy_dir, segment_bases};
use common::streams::{keys_bases, keys_in_partition, keys_path};
use common::{BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

/// Key table layout (`src/stream/table.rs`, `docs/format.md`): a 64-byte header, then the key
/// filter and id filter words, then 24-byte key entries and 24-byte id entries.
const KEY_COUNT_OFFSET: usize = 32;
const ID_COUNT_OFFSET: usize = 36;
const KEY_FILTER_WORDS_OFFSET: usize = 40;
const ID_FILTER_WORDS_OFFSET: usize = 44;
const BODY_CRC_OFFSET: usize = 48;
const HEADER_CRC_OFFSET: usize = 60;
const TABLE_HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 24;

fn options(partitions: u32) -> Options {
    Options::default()
        .partitions(partitions)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
}

/// What the log answers about one key: its last version, its whole stream, its stream from
/// the middle, and a retry of its first event with an id (`None` if it has none).
#[derive(Debug, PartialEq)]
struct KeyAnswers {
    last_version: Option<u64>,
    all: Vec<Record>,
    from_middle: Vec<Record>,
    retry: Option<(u64, u64, bool)>,
}

#[track_caller]
fn answers(log: &Log, keys: &[Vec<u8>]) -> Vec<KeyAnswers> {
    keys.iter()
        .map(|key| {
            let all = log.read_key(key, 0).unwrap();
            let middle = all.len() as u64 / 2;
            let retry = all.iter().find_map(|r| r.event_id).map(|id| {
                let appended = log
                    .append_to(key, Expected::Any, &[Event::new(b"retry").id(id)])
                    .unwrap();
                (appended.offset, appended.version, appended.duplicate)
            });
            KeyAnswers {
                last_version: log.last_version(key).unwrap(),
                from_middle: log.read_key(key, middle).unwrap(),
                all,
                retry,
            }
        })
        .collect()
}

struct FixtureAppender {
    payloads: Vec<Vec<Vec<u8>>>,
    rng: SplitMix64,
    next_id: u128,
    payload_min: usize,
}

impl FixtureAppender {
    /// Appends the next event of key number `k`.
    fn append(&mut self, log: &Log, k: usize, key: &[u8]) {
        let version = self.payloads[k].len();
        let mut payload = format!("{} v{version} ", String::from_utf8_lossy(key)).into_bytes();
        payload.resize(self.payload_min + self.rng.below(256) as usize, b'.');
        let mut event = Event::new(&payload);
        if self.rng.below(3) == 0 {
            event = event.id(self.next_id);
            self.next_id += 1;
        }
        log.append_to(key, Expected::Any, &[event]).unwrap();
        self.payloads[k].push(payload);
    }
}

/// A closed log with `partitions` partitions and several sealed segments in each; every
/// sealed segment has its table file. Returns the directory, the keys, and the answers
/// before any damage (checked against what was appended).
struct Fixture {
    dir: tempfile::TempDir,
    partitions: u32,
    keys: Vec<Vec<u8>>,
    expected: Vec<KeyAnswers>,
}

/// Keys whose events spread over every segment, plus one key per partition appended to only
/// at the start (so segment 0's table alone knows it). Payloads of `payload_min` bytes and
/// up to 255 more; every third event has an id.
fn build_fixture(partitions: u32, keys_per_partition: usize, payload_min: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(partitions)).unwrap();
    let mut keys = Vec::new();
    let mut early = Vec::new();
    for p in 0..partitions {
        keys.extend(keys_in_partition(
            &log,
            &format!("key-p{p}"),
            p,
            keys_per_partition,
        ));
        early.extend(keys_in_partition(&log, &format!("early-p{p}"), p, 1));
    }
    let mut appender = FixtureAppender {
        payloads: vec![Vec::new(); keys.len() + early.len()],
        rng: SplitMix64(0xdead_beef),
        next_id: 1,
        payload_min,
    };
    for (e, key) in early.iter().enumerate() {
        for _ in 0..3 {
            appender.append(&log, keys.len() + e, key);
        }
    }
    while (0..partitions).any(|p| segment_bases(dir.path(), p).len() < 4) {
        let k = appender.rng.below(keys.len() as u64) as usize;
        appender.append(&log, k, &keys[k]);
    }
    let payloads = appender.payloads;
    keys.extend(early);
    let expected = answers(&log, &keys);
    for (answer, payloads) in expected.iter().zip(&payloads) {
        let stored: Vec<&[u8]> = answer.all.iter().map(|r| r.payload.as_ref()).collect();
        let appended: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(stored, appended, "the answers before any damage are right");
        assert!(answer.retry.is_none_or(|(_, _, duplicate)| duplicate));
    }
    log.close().unwrap();
    for p in 0..partitions {
        assert_sealed_segments_have_tables(dir.path(), p);
    }
    Fixture {
        dir,
        partitions,
        keys,
        expected,
    }
}

/// Every sealed segment of partition `p` (all but the newest) has its table file.
#[track_caller]
fn assert_sealed_segments_have_tables(dir: &Path, p: u32) {
    let segments = segment_bases(dir, p);
    let tables = keys_bases(dir, p);
    for base in &segments[..segments.len() - 1] {
        assert!(
            tables.contains(base),
            "partition {p}: no table for segment {base}"
        );
    }
}

impl Fixture {
    /// A copy of the log directory, damaged by `damage`, opened; its answers must be the
    /// undamaged ones, and each key's next append must get the next version.
    #[track_caller]
    fn check_damaged(&self, context: &str, damage: impl FnOnce(&Path)) {
        let copy = tempfile::tempdir().unwrap();
        let dir = copy_dir(self.dir.path(), &copy.path().join("log"));
        damage(&dir);
        self.check_open(&dir, options(self.partitions), context);
    }

    #[track_caller]
    fn check_open(&self, dir: &Path, options: Options, context: &str) {
        let log = Log::open(dir, options).unwrap();
        let got = answers(&log, &self.keys);
        for ((key, got), expected) in self.keys.iter().zip(&got).zip(&self.expected) {
            assert!(
                got == expected,
                "{context}: answers for {} differ:\n got {:?}\n expected {:?}",
                String::from_utf8_lossy(key),
                (got.last_version, got.all.len(), got.retry),
                (expected.last_version, expected.all.len(), expected.retry),
            );
        }
        for (key, expected) in self.keys.iter().zip(&self.expected) {
            let last = expected.last_version.unwrap();
            let next = log.append_to(key, Expected::Exact(last), &[Event::new(b"next")]);
            assert_eq!(next.unwrap().version, last + 1, "{context}");
        }
        log.close().unwrap();
    }

    /// The table files of partition `p`, by base offset.
    fn tables(&self, p: u32) -> Vec<u64> {
        keys_bases(self.dir.path(), p)
    }
}

#[test]
fn answers_are_unchanged_without_any_key_table() {
    let fixture = build_fixture(2, 12, 200);
    fixture.check_damaged("all tables deleted", |dir| {
        for p in 0..2 {
            for base in keys_bases(dir, p) {
                fs::remove_file(keys_path(dir, p, base)).unwrap();
            }
            assert!(keys_bases(dir, p).is_empty());
        }
    });
    // Rebuilt for the next process: a reopen reads them again.
    let copy = tempfile::tempdir().unwrap();
    let dir = copy_dir(fixture.dir.path(), &copy.path().join("log"));
    for p in 0..2 {
        for base in keys_bases(&dir, p) {
            fs::remove_file(keys_path(&dir, p, base)).unwrap();
        }
    }
    let log = Log::open(&dir, options(2)).unwrap();
    let _ = answers(&log, &fixture.keys);
    log.close().unwrap();
    for p in 0..2 {
        assert_sealed_segments_have_tables(&dir, p);
    }
}

#[test]
fn answers_are_unchanged_with_any_byte_of_a_key_table_flipped() {
    // Large events: segment 0's table is small enough to flip each of its bytes in turn.
    let small = build_fixture(1, 3, 6000);
    let path = keys_path(small.dir.path(), 0, 0);
    let table = fs::read(&path).unwrap();
    assert!(table.len() < 2048, "a small table: {} bytes", table.len());
    let copy = tempfile::tempdir().unwrap();
    let dir = copy_dir(small.dir.path(), &copy.path().join("log"));
    let damaged_path = keys_path(&dir, 0, 0);
    for position in 0..table.len() {
        let mut damaged = table.clone();
        damaged[position] ^= 0x40;
        fs::write(&damaged_path, &damaged).unwrap();
        // Answers only: the next-version appends of `check_open` would change the copy.
        let log = Log::open(&dir, options(1)).unwrap();
        let got = answers(&log, &small.keys);
        assert!(got == small.expected, "byte {position} flipped");
        log.close().unwrap();
    }
    // The same in every table of a larger log, at sampled positions.
    let large = build_fixture(2, 12, 200);
    for sample in 0..8usize {
        large.check_damaged(&format!("sample {sample} of every table"), |dir| {
            for p in 0..2 {
                for base in keys_bases(dir, p) {
                    let path = keys_path(dir, p, base);
                    let mut bytes = fs::read(&path).unwrap();
                    let position = (sample * 7919 + base as usize) % bytes.len();
                    bytes[position] ^= 1 << (sample % 8);
                    fs::write(&path, bytes).unwrap();
                }
            }
        });
    }
}

#[test]
fn answers_are_unchanged_with_a_key_table_cut_short() {
    let fixture = build_fixture(2, 12, 200);
    let len = fs::read(keys_path(fixture.dir.path(), 0, 0)).unwrap().len();
    let cuts = [0, 1, 12, 63, 64, 65, len / 2, len - ENTRY_LEN, len - 1];
    for cut in cuts {
        fixture.check_damaged(&format!("segment 0's table cut to {cut} bytes"), |dir| {
            let path = keys_path(dir, 0, 0);
            let bytes = fs::read(&path).unwrap();
            fs::write(&path, &bytes[..cut]).unwrap();
        });
    }
    fixture.check_damaged("every table cut in half", |dir| {
        for p in 0..2 {
            for base in keys_bases(dir, p) {
                let path = keys_path(dir, p, base);
                let bytes = fs::read(&path).unwrap();
                fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }
        }
    });
}

#[test]
fn answers_are_unchanged_with_a_key_table_of_another_segment() {
    let fixture = build_fixture(2, 12, 200);
    fixture.check_damaged("each table replaced by the next segment's", |dir| {
        for p in 0..2 {
            let bases = keys_bases(dir, p);
            let originals: Vec<Vec<u8>> = bases
                .iter()
                .map(|&b| fs::read(keys_path(dir, p, b)).unwrap())
                .collect();
            for (i, &base) in bases.iter().enumerate() {
                let other = &originals[(i + 1) % originals.len()];
                fs::write(keys_path(dir, p, base), other).unwrap();
            }
        }
    });
    fixture.check_damaged("partition 0's tables replaced by partition 1's", |dir| {
        for base in keys_bases(dir, 0) {
            let other = keys_bases(dir, 1)[0];
            fs::copy(keys_path(dir, 1, other), keys_path(dir, 0, base)).unwrap();
        }
    });
}

/// Two partitions loaded alike: keys of equal length, events of equal size, appended in turn,
/// so that both partitions' segments start and end at the same offsets.
fn twin_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(2)).unwrap();
    let mut keys = Vec::new();
    for p in 0..2 {
        let of_partition = (0u32..)
            .map(|n| format!("twin-{n:04}").into_bytes())
            .filter(|key| log.partition_for(key) == p)
            .take(3);
        keys.extend(of_partition);
    }
    // The same lengths in both partitions.
    let lens: Vec<usize> = keys.iter().map(Vec::len).collect();
    assert_eq!(lens[..3], lens[3..], "{keys:?}");
    let mut seq = 0u64;
    while (0..2).any(|p| segment_bases(dir.path(), p).len() < 3) {
        for k in 0..3 {
            for p in 0..2 {
                let payload = format!("{seq:08} {}", ".".repeat(900));
                log.append(&keys[p * 3 + k], payload.as_bytes()).unwrap();
            }
            seq += 1;
        }
    }
    let expected = answers(&log, &keys);
    log.close().unwrap();
    assert_eq!(segment_bases(dir.path(), 0), segment_bases(dir.path(), 1));
    Fixture {
        dir,
        partitions: 2,
        keys,
        expected,
    }
}

/// Found as a bug: a table of another partition's segment with the same base and end offsets
/// (and byte length) passed every check; keys of this partition were missing from it, so
/// `read_key` returned nothing for them, `last_version` said `None`, and the next append took
/// version 0 again.
#[test]
fn answers_are_unchanged_with_the_key_table_of_another_partitions_twin_segment() {
    let fixture = twin_fixture();
    let tables = fixture.tables(0);
    assert_eq!(tables, fixture.tables(1));
    assert_eq!(
        fs::metadata(keys_path(fixture.dir.path(), 0, 0))
            .unwrap()
            .len(),
        fs::metadata(keys_path(fixture.dir.path(), 1, 0))
            .unwrap()
            .len(),
        "twin tables"
    );
    fixture.check_damaged(
        "partition 0's tables replaced by partition 1's twins",
        |dir| {
            for base in keys_bases(dir, 0) {
                fs::copy(keys_path(dir, 1, base), keys_path(dir, 0, base)).unwrap();
            }
        },
    );
}

/// The layout of a table file, read from its header.
struct TableLayout {
    keys_start: usize,
    key_count: usize,
    ids_start: usize,
    id_count: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn layout(bytes: &[u8]) -> TableLayout {
    let key_words = u32_at(bytes, KEY_FILTER_WORDS_OFFSET) as usize;
    let id_words = u32_at(bytes, ID_FILTER_WORDS_OFFSET) as usize;
    let keys_start = TABLE_HEADER_LEN + (key_words + id_words) * 8;
    let key_count = u32_at(bytes, KEY_COUNT_OFFSET) as usize;
    TableLayout {
        keys_start,
        key_count,
        ids_start: keys_start + key_count * ENTRY_LEN,
        id_count: u32_at(bytes, ID_COUNT_OFFSET) as usize,
    }
}

/// Makes both checksums of a table match its (edited) bytes again: a lie that only checking
/// the frames it points at can find.
fn reseal(bytes: &mut [u8]) {
    let body = crc32fast::hash(&bytes[TABLE_HEADER_LEN..]);
    bytes[BODY_CRC_OFFSET..BODY_CRC_OFFSET + 4].copy_from_slice(&body.to_le_bytes());
    let header = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&header.to_le_bytes());
}

fn add_u32(bytes: &mut [u8], at: usize, delta: u32) {
    let value = u32_at(bytes, at).wrapping_add(delta);
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Entry edits of a table, each a lie under valid checksums once resealed.
type Lie = (&'static str, fn(&mut [u8], usize));

/// Checks `fixture` with segment 0's table lying as each of `lies` makes entries 0, middle
/// and last of the section starting at `start` (with `count` entries) lie.
fn check_lies(fixture: &Fixture, original: &[u8], start: usize, count: usize, lies: &[Lie]) {
    assert!(count >= 2);
    for (name, lie) in lies {
        for entry in [0, count / 2, count - 1] {
            let mut bytes = original.to_vec();
            lie(&mut bytes, start + entry * ENTRY_LEN);
            reseal(&mut bytes);
            if bytes == original {
                continue;
            }
            fixture.check_damaged(&format!("entry {entry}: {name}"), |dir| {
                fs::write(keys_path(dir, 0, 0), &bytes).unwrap();
            });
        }
    }
}

#[test]
fn answers_are_unchanged_with_key_entries_that_lie_under_valid_checksums() {
    let fixture = build_fixture(1, 6, 400);
    let original = fs::read(keys_path(fixture.dir.path(), 0, 0)).unwrap();
    let table = layout(&original);
    // Key entry: u64 hash, u64 base version, u32 position, u32 count.
    let lies: [Lie; 4] = [
        ("position one byte on", |b, at| add_u32(b, at + 16, 1)),
        ("base version one higher", |b, at| {
            b[at + 8] = b[at + 8].wrapping_add(1)
        }),
        ("count one higher", |b, at| add_u32(b, at + 20, 1)),
        ("position of the first frame", |b, at| {
            b[at + 16..at + 20].copy_from_slice(&64u32.to_le_bytes());
        }),
    ];
    check_lies(
        &fixture,
        &original,
        table.keys_start,
        table.key_count,
        &lies,
    );
}

/// Found as a bug: an id entry pointing at the wrong frame or record failed the append with
/// `Error::Corrupt` naming the intact segment, instead of rebuilding the table.
#[test]
fn answers_are_unchanged_with_id_entries_that_lie_under_valid_checksums() {
    let fixture = build_fixture(1, 6, 400);
    let original = fs::read(keys_path(fixture.dir.path(), 0, 0)).unwrap();
    let table = layout(&original);
    // Id entry: u128 id, u32 position, u32 record index.
    let lies: [Lie; 2] = [
        ("id entry position one byte on", |b, at| {
            add_u32(b, at + 16, 1)
        }),
        ("id entry record index one higher", |b, at| {
            add_u32(b, at + 20, 1)
        }),
    ];
    check_lies(&fixture, &original, table.ids_start, table.id_count, &lies);
}

fn colliding(fail_points: &Arc<FailPoints>) -> Options {
    options(2).fail_points(fail_points.clone())
}

/// Each key's payloads in version order.
type Model = Vec<(Vec<u8>, Vec<Vec<u8>>)>;

#[track_caller]
fn check_model(log: &Log, model: &Model, context: &str) {
    for (key, payloads) in model {
        let name = String::from_utf8_lossy(key);
        let last = payloads.len() as u64 - 1;
        assert_eq!(
            log.last_version(key).unwrap(),
            Some(last),
            "{context}: {name}"
        );
        let records = log.read_key(key, 0).unwrap();
        let stored: Vec<&[u8]> = records.iter().map(|r| r.payload.as_ref()).collect();
        let expected: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(stored, expected, "{context}: {name}");
        assert!(records.iter().all(|r| r.key.as_ref() == key.as_slice()));
        let tail = log.read_key(key, last).unwrap();
        assert_eq!(tail.len(), 1, "{context}: {name} from its last version");
    }
}

/// Appends one event to every key with `Exact` (and checks a stale expectation is refused).
fn append_exact_to_each(log: &Log, model: &mut Model, round: usize) {
    for (key, payloads) in model.iter_mut() {
        let last = payloads.len() as u64 - 1;
        let stale = log.append_to(
            key,
            Expected::Exact(last.wrapping_sub(1)),
            &[Event::new(b"x")],
        );
        assert!(
            matches!(stale, Err(Error::Conflict { actual: Some(a), .. }) if a == last),
            "{stale:?}"
        );
        let payload = format!("{} round {round}", String::from_utf8_lossy(key)).into_bytes();
        let appended = log
            .append_to(key, Expected::Exact(last), &[Event::new(&payload)])
            .unwrap();
        assert_eq!(appended.version, last + 1);
        payloads.push(payload);
    }
}

#[test]
fn every_key_is_found_when_all_keys_hash_alike() {
    const KEYS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    fail_points.set_key_hash_collisions(true);
    let log = Log::open(dir.path(), colliding(&fail_points)).unwrap();
    let mut model: Model = (0..KEYS)
        .map(|k| (format!("collide-{k}").into_bytes(), Vec::new()))
        .collect();
    let mut rng = SplitMix64(0x0c01_11de);
    let filler = vec![b'.'; 300];
    while (0..2).any(|p| segment_bases(dir.path(), p).len() < 4) {
        let k = rng.below(KEYS as u64) as usize;
        let (key, payloads) = &mut model[k];
        let mut payload =
            format!("{} v{}", String::from_utf8_lossy(key), payloads.len()).into_bytes();
        payload.extend_from_slice(&filler[..rng.below(300) as usize]);
        log.append(key, &payload).unwrap();
        payloads.push(payload);
    }
    model.retain(|(_, payloads)| !payloads.is_empty());
    check_model(&log, &model, "colliding, first open");
    append_exact_to_each(&log, &mut model, 0);
    check_model(&log, &model, "colliding, after exact appends");
    log.close().unwrap();

    let log = Log::open(dir.path(), colliding(&fail_points)).unwrap();
    check_model(&log, &model, "colliding, reopened");
    append_exact_to_each(&log, &mut model, 1);
    log.close().unwrap();

    // Tables built with the colliding hash are not used with the real one, and back.
    let log = Log::open(dir.path(), options(2)).unwrap();
    check_model(&log, &model, "reopened with the real hash");
    append_exact_to_each(&log, &mut model, 2);
    log.close().unwrap();
    let log = Log::open(dir.path(), colliding(&fail_points)).unwrap();
    check_model(&log, &model, "colliding again");
    log.close().unwrap();
}
