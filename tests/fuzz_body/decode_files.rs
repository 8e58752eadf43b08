// The body of the `decode_files` fuzz target, shared by `fuzz/fuzz_targets/decode_files.rs`
// (cargo-fuzz) and `tests/fuzz_decode_files.rs` (seeded inputs under `cargo test`), which both
// `include!` this file.
//
// A template log (two partitions, small segments, events with ids, retention that deleted the
// oldest segments, a snapshot, two consumer groups' commits with a key retrying and a dead
// letter) is built once and closed, so that it has every kind of file: sealed and active
// segments, their indexes, their key tables (`.keys`, the active one's kept at close),
// `annal.meta`, the journal, snapshot files, each partition's `start` file, and the groups
// partition's records (cursors, held keys). One input damages one of them: the first byte picks
// the file, the next four an offset, and the rest are bytes written there (the file is cut
// there instead if the first byte says so).
// Then the body opens a copy of the log and checks what every decoder makes of the damage:
//
// 1. Nothing panics, and nothing allocates without bound (the run finishes).
// 2. `open` succeeds or fails with a typed error.
// 3. Every record a reader returns is the record the template has at that partition and offset:
//    a damaged byte is reported (`Error::Corrupt`), never returned as data. Each partition
//    starts where the template's does: a damaged start file fails `open`, it never moves the
//    start.
// 4. `read_key` and `last_version` either fail or give exactly the template's answer for every
//    key: a damaged key table is rebuilt, never trusted, and a key's history is never returned
//    in part.
// 5. `load` gives the template's events after a snapshot that is the template's (or none): a
//    damaged snapshot is skipped, never returned.
// 6. Each consumer group loads the template's cursors, retrying keys and dead letters, or fails
//    with a typed error: a damaged record is never read as another state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use annal::{Durability, Event, Log, Options};

pub const PARTITIONS: u32 = 2;
const KEYS: u32 = 5;
const GROUP: &str = "projections";
/// A second group, whose policy parks a key at its first failure: its record holds a dead
/// letter.
const STRICT_GROUP: &str = "strict";

pub fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

fn key(k: u32) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// A record as the template holds it: key, version, global position, payload.
type Expected = (Vec<u8>, u64, u64, Vec<u8>);

/// A group's state as its API shows it: cursors, retrying keys, dead letters (partition, key,
/// offset, version, attempts, reason).
type GroupState = (
    Vec<u64>,
    Vec<(u32, Vec<u8>, u32)>,
    Vec<(u32, Vec<u8>, u64, u64, u32, String)>,
);

fn group_state(group: &annal::Group) -> Option<GroupState> {
    let letters = group.dead_letters().ok()?;
    let dead = letters
        .into_iter()
        .map(|l| (l.partition, l.key, l.offset, l.version, l.attempts, l.reason))
        .collect();
    Some((group.committed(), group.retrying(), dead))
}

/// What the template log holds.
pub struct Template {
    /// Relative path -> bytes, of every file of the closed log.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// (partition, offset) -> (key, version, global position, payload).
    records: BTreeMap<(u32, u64), Expected>,
    /// Each key's (partition, offset) in version order.
    streams: BTreeMap<Vec<u8>, Vec<(u32, u64)>>,
    snapshot: (Vec<u8>, u64, Vec<u8>),
    /// Each partition's start (retention deleted what is below).
    starts: Vec<u64>,
    /// The consumer groups' states, by name.
    groups: Vec<(&'static str, GroupState)>,
}

pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

fn build_template() -> Template {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = Log::open(&dir, options().retention_bytes_max(128 << 10)).unwrap();
    for i in 0..800u32 {
        // The second half larger, so that each partition fills a few segments and retention
        // deletes the oldest.
        let size = if i < 400 { (i as usize * 53) % 400 } else { 1_000 };
        let payload = format!("event {i} {}", "x".repeat(size));
        let k = key(i % KEYS);
        if i % 3 == 0 {
            let id = u128::from(i) << 20 | 7;
            log.append_to(&k, annal::Expected::Any, &[Event::new(&payload).id(id)])
                .unwrap();
        } else {
            log.append(&k, &payload).unwrap();
        }
    }
    let report = log.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0, "the template has start files");
    // Lookups now build the in-memory tables that close keeps, and the tables of sealed
    // segments (the indexer may not have got to them yet).
    for k in 0..KEYS {
        log.read_key(&key(k), 0).unwrap();
    }
    let snapshot_version = log.last_version(&key(1)).unwrap().unwrap() - 5;
    let snapshot_state = format!("state of key-1 at {snapshot_version}").into_bytes();
    log.save_snapshot(&key(1), snapshot_version, &snapshot_state)
        .unwrap();
    let mut groups = Vec::new();
    for (name, attempts) in [(GROUP, 5), (STRICT_GROUP, 1)] {
        let group = log.group(name).unwrap();
        group
            .set_retry_policy(annal::RetryPolicy {
                max_attempts: attempts,
                backoff_initial: std::time::Duration::from_secs(3600),
                backoff_max: std::time::Duration::from_secs(3600),
            })
            .unwrap();
        let mut consumer = group.join().unwrap();
        for max in [50, 70] {
            let batch = loop {
                match consumer.poll(max, std::time::Duration::from_millis(50)) {
                    Err(annal::Error::EventsExpired { .. }) => continue,
                    other => break other.unwrap(),
                }
            };
            if max == 70 {
                consumer.nack(&batch.deliveries[3], "the template's nack").unwrap();
            }
            consumer.commit(&batch).unwrap();
        }
        let state = group_state(&group).unwrap();
        assert_eq!(state.1.len() + state.2.len(), 1, "one key held");
        groups.push((name, state));
    }
    let mut records = BTreeMap::new();
    let mut streams: BTreeMap<Vec<u8>, Vec<(u32, u64)>> = BTreeMap::new();
    let starts: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.start_offset(p).unwrap())
        .collect();
    for partition in 0..PARTITIONS {
        for record in log.read(partition, starts[partition as usize]).unwrap() {
            let record = record.unwrap();
            let value = (
                record.key.to_vec(),
                record.version,
                record.global_position,
                record.payload.to_vec(),
            );
            records.insert((partition, record.offset), value);
            streams
                .entry(record.key.to_vec())
                .or_default()
                .push((partition, record.offset));
        }
    }
    log.close().unwrap();
    let mut files = BTreeMap::new();
    read_tree(&dir, &dir, &mut files);
    Template {
        files,
        records,
        streams,
        snapshot: (key(1), snapshot_version, snapshot_state),
        starts,
        groups,
    }
}

fn read_tree(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else if !path.ends_with("annal.lock") {
            let relative = path.strip_prefix(root).unwrap().to_owned();
            files.insert(relative, fs::read(&path).unwrap());
        }
    }
}

/// The file kinds an input can pick, by their names' ends.
const KINDS: [&str; 8] = [
    ".seg",
    ".idx",
    ".keys",
    "annal.meta",
    ".snap",
    "annal.journal",
    "start",
    // The groups partition's segments: the groups' records.
    "groups/",
];

/// Writes the template with one file damaged by `data` into `dir`.
pub fn damaged_copy(data: &[u8], dir: &Path) {
    let template = template();
    let selector = data.first().copied().unwrap_or(0);
    let kind = KINDS[usize::from(selector % KINDS.len() as u8)];
    let candidates: Vec<&PathBuf> = template
        .files
        .keys()
        .filter(|p| {
            let p = p.to_string_lossy();
            match kind.strip_suffix('/') {
                Some(dir) => p.starts_with(&format!("{dir}/")) && p.ends_with(".seg"),
                None => p.ends_with(kind),
            }
        })
        .collect();
    let victim = candidates[usize::from(selector / 16) % candidates.len().max(1)].clone();
    let at = data
        .get(1..5)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let patch = data.get(5..).unwrap_or(&[]);
    for (path, bytes) in &template.files {
        let target = dir.join(path);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let mut bytes = bytes.clone();
        if *path == victim && !bytes.is_empty() {
            let at = at % bytes.len();
            if selector & 0x08 != 0 && patch.is_empty() {
                bytes.truncate(at);
            } else {
                let end = (at + patch.len()).min(bytes.len() + 64);
                bytes.resize(bytes.len().max(end), 0);
                bytes[at..end].copy_from_slice(&patch[..end - at]);
            }
        }
        fs::write(target, bytes).unwrap();
    }
}

/// Damages one file of the template as `data` says and checks every decoder's answer.
pub fn check_damage(data: &[u8]) {
    let template = template();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    damaged_copy(data, &dir);
    let Ok(log) = Log::open(&dir, options()) else {
        return; // a typed error: fine
    };
    for partition in 0..PARTITIONS {
        let start = log.start_offset(partition).unwrap();
        assert_eq!(start, template.starts[partition as usize], "partition {partition}'s start");
        for record in log.read(partition, start).unwrap() {
            let Ok(record) = record else { break };
            let expected = &template.records[&(partition, record.offset)];
            assert_eq!(record.key.as_ref(), &expected.0[..], "{partition}/{}", record.offset);
            assert_eq!(record.version, expected.1, "{partition}/{}", record.offset);
            assert_eq!(record.global_position, expected.2, "{partition}/{}", record.offset);
            assert_eq!(record.payload.as_ref(), &expected.3[..], "{partition}/{}", record.offset);
        }
    }
    for (key, places) in &template.streams {
        if let Ok(stream) = log.read_key(key, 0) {
            let found: Vec<(u32, u64)> = stream.iter().map(|r| (r.partition, r.offset)).collect();
            assert_eq!(&found, places, "read_key {}", String::from_utf8_lossy(key));
            for record in &stream {
                let expected = &template.records[&(record.partition, record.offset)];
                assert_eq!(record.payload.as_ref(), &expected.3[..]);
            }
        }
        let versions = |places: &[(u32, u64)]| -> Vec<u64> {
            places.iter().map(|place| template.records[place].1).collect()
        };
        if let Ok(last) = log.last_version(key) {
            assert_eq!(last, versions(places).last().copied(), "last_version");
        }
        if let Ok((snapshot, rest)) = log.load(key) {
            let from = match snapshot {
                Some(snapshot) => {
                    let (k, version, state) = &template.snapshot;
                    assert_eq!(snapshot.key.as_ref(), &k[..]);
                    assert_eq!((snapshot.version, snapshot.state.as_ref()), (*version, &state[..]));
                    version + 1
                }
                None => 0,
            };
            let after = versions(places).into_iter().filter(|&v| v >= from).count();
            assert_eq!(rest.len(), after, "load");
        }
    }
    for (name, state) in &template.groups {
        if let Ok(group) = log.group(name) {
            if let Some(found) = group_state(&group) {
                assert_eq!(&found, state, "the group {name}'s state");
            }
        }
    }
    drop(log);
}
