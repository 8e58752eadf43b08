// The body of the `decode_files` fuzz target, shared by `fuzz/fuzz_targets/decode_files.rs`
// (cargo-fuzz) and `tests/fuzz_decode_files.rs` (seeded inputs under `cargo test`), which both
// `include!` this file.
//
// A template log (two partitions, small segments, events with ids, a snapshot, a consumer
// group's commits) is built once and closed, so that it has every kind of file: sealed and
// active segments, their indexes, their key tables (`.keys`, the active one's kept at close),
// `annal.meta`, the journal, snapshot files, and the groups partition's cursor records. One input damages one of them: the first byte picks the file, the next four an offset,
// and the rest are bytes written there (the file is cut there instead if the first byte says so).
// Then the body opens a copy of the log and checks what every decoder makes of the damage:
//
// 1. Nothing panics, and nothing allocates without bound (the run finishes).
// 2. `open` succeeds or fails with a typed error.
// 3. Every record a reader returns is the record the template has at that partition and offset:
//    a damaged byte is reported (`Error::Corrupt`), never returned as data.
// 4. `read_key` and `last_version` either fail or give exactly the template's answer for every
//    key: a damaged key table is rebuilt, never trusted, and a key's history is never returned
//    in part.
// 5. `load` gives the template's events after a snapshot that is the template's (or none): a
//    damaged snapshot is skipped, never returned.
// 6. The consumer group loads the template's cursors, or fails with a typed error: a damaged
//    cursor record is never read as other cursors.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use annal::{Durability, Event, Log, Options};

pub const PARTITIONS: u32 = 2;
const KEYS: u32 = 5;
const GROUP: &str = "projections";

pub fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
}

fn key(k: u32) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// A record as the template holds it: key, version, global position, payload.
type Expected = (Vec<u8>, u64, u64, Vec<u8>);

/// What the template log holds.
pub struct Template {
    /// Relative path -> bytes, of every file of the closed log.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// (partition, offset) -> (key, version, global position, payload).
    records: BTreeMap<(u32, u64), Expected>,
    /// Each key's (partition, offset) in version order.
    streams: BTreeMap<Vec<u8>, Vec<(u32, u64)>>,
    snapshot: (Vec<u8>, u64, Vec<u8>),
    /// The consumer group's committed cursors.
    cursors: Vec<u64>,
}

pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

fn build_template() -> Template {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = Log::open(&dir, options()).unwrap();
    for i in 0..400u32 {
        let payload = format!("event {i} {}", "x".repeat((i as usize * 53) % 400));
        let k = key(i % KEYS);
        if i % 3 == 0 {
            let id = u128::from(i) << 20 | 7;
            log.append_to(&k, annal::Expected::Any, &[Event::new(&payload).id(id)])
                .unwrap();
        } else {
            log.append(&k, &payload).unwrap();
        }
    }
    // Lookups now build the in-memory tables that close keeps, and the tables of sealed
    // segments (the indexer may not have got to them yet).
    for k in 0..KEYS {
        log.read_key(&key(k), 0).unwrap();
    }
    log.save_snapshot(&key(1), 20, b"state of key-1 at 20").unwrap();
    let group = log.group(GROUP).unwrap();
    let mut consumer = group.join().unwrap();
    for max in [50, 70] {
        let batch = consumer
            .poll(max, std::time::Duration::from_millis(50))
            .unwrap();
        consumer.commit(&batch).unwrap();
    }
    let cursors = group.committed();
    drop(consumer);
    drop(group);
    let mut records = BTreeMap::new();
    let mut streams: BTreeMap<Vec<u8>, Vec<(u32, u64)>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for record in log.read(partition, 0).unwrap() {
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
        snapshot: (key(1), 20, b"state of key-1 at 20".to_vec()),
        cursors,
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
const KINDS: [&str; 7] = [".seg", ".idx", ".keys", "annal.meta", ".snap", "annal.journal", ".seg"];

/// Writes the template with one file damaged by `data` into `dir`.
pub fn damaged_copy(data: &[u8], dir: &Path) {
    let template = template();
    let selector = data.first().copied().unwrap_or(0);
    let kind = KINDS[usize::from(selector % KINDS.len() as u8)];
    let candidates: Vec<&PathBuf> = template
        .files
        .keys()
        .filter(|p| p.to_string_lossy().ends_with(kind))
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
        for record in log.read(partition, 0).unwrap() {
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
        if let Ok(last) = log.last_version(key) {
            assert_eq!(last, Some(places.len() as u64 - 1), "last_version");
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
            assert_eq!(rest.len() as u64, places.len() as u64 - from, "load");
        }
    }
    if let Ok(group) = log.group(GROUP) {
        assert_eq!(group.committed(), template.cursors, "the group's cursors");
    }
    drop(log);
}
