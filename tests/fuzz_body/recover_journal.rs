// The body of the `recover_journal` fuzz target, shared by `fuzz/fuzz_targets/recover_journal.rs`
// (cargo-fuzz) and `tests/fuzz_recover_journal.rs` (a deterministic run under `cargo test`),
// which both `include!` this file. It is not a test target of its own.
//
// One input is the records area of the journal (everything after its two checkpoint slots) of
// a real crash image: a two-partition log killed after `Sync` appends of single events and
// batches, whose last checkpoint precedes them all. So every acknowledged event of the image
// lives only in the journal, and the input decides what recovery finds there. The body opens
// the log in both recovery modes and checks:
//
// 1. `Log::open` never panics. It succeeds, or, only in `TolerateTornTail` mode, fails with
//    `Error::Corrupt` naming the journal file and a byte inside the records area; then it
//    changed nothing on disk (the journal and every segment are byte for byte as before).
// 2. After a successful open, every partition reads from offset 0 without error, at contiguous
//    offsets, and every record equals the one the image's run appended at that partition and
//    offset: nothing appears that was never appended, nothing is altered.
// 3. Each partition ends at an append boundary of the original run: a batch is all there or
//    all absent.
// 4. In `TolerateTornTail` mode, the log holds a prefix of the journal's records: if an append
//    is there, so is every append that became durable before it, in any partition.
// 5. An append after recovery lands at its partition's end, reads back, and survives close and
//    reopen with everything recovered before it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use annal::{Durability, Error, Event, Log, Options, RecoveryMode};

pub const PARTITIONS: u32 = 2;
/// Where the records area of the journal starts: two checkpoint slots of one 4 KiB page each
/// (`docs/format.md`).
pub const RECORDS_START: usize = 2 * 4096;
pub const JOURNAL_FILE: &str = "annal.journal";
const NEW_PAYLOAD: &[u8] = b"appended after recovery";

pub fn options(mode: RecoveryMode) -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .recovery_mode(mode)
}

/// One record, copied out of the log for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Copied {
    fn of(record: &annal::Record) -> Copied {
        Copied {
            key: record.key.to_vec(),
            payload: record.payload.to_vec(),
            headers: record
                .headers
                .iter()
                .map(|h| (h.name.to_vec(), h.value.to_vec()))
                .collect(),
        }
    }
}

/// The crash image and what its run appended.
pub struct Template {
    /// Every file of the image, by path relative to the log directory.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// The records area of the image's journal.
    pub records_area: Vec<u8>,
    /// (partition, offset) -> record, for every acknowledged append.
    pub records: BTreeMap<(u32, u64), Copied>,
    /// Per partition, the offsets where appends started, plus the end.
    pub boundaries: Vec<Vec<u64>>,
    /// Appends in the order they became durable: (partition, first offset).
    pub order: Vec<(u32, u64)>,
}

pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

fn build_template() -> Template {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = Log::open(&dir, options(RecoveryMode::TolerateTornTail)).unwrap();
    let mut boundaries = vec![vec![0u64]; PARTITIONS as usize];
    let mut order = Vec::new();
    for i in 0..24u32 {
        let key = format!("key-{}", i % 5);
        let payload = format!("event {i} {}", "x".repeat((i as usize * 37) % 300));
        let at = if i % 4 == 3 {
            let a = format!("{payload} a");
            let b = format!("{payload} b");
            let events = [
                Event::new(&a).header("type", "first"),
                Event::new(&b),
                Event::new(&payload).header("n", "3"),
            ];
            log.append_batch(key.as_bytes(), &events).unwrap()
        } else if i % 4 == 1 {
            // Several appends in flight: one journal record holds frames of both partitions.
            let tickets: Vec<_> = (0..4)
                .map(|j| {
                    let key = format!("key-{}", (i + j) % 5);
                    log.append_pipelined(key.as_bytes(), &payload).unwrap()
                })
                .collect();
            let mut last = None;
            for ticket in tickets {
                let at = ticket.wait().unwrap();
                boundaries[at.partition as usize].push(at.end_offset());
                order.push((at.partition, at.offset));
                last = Some(at);
            }
            let _ = last;
            continue;
        } else {
            log.append(key.as_bytes(), Event::new(&payload).header("i", "v"))
                .unwrap()
        };
        boundaries[at.partition as usize].push(at.end_offset());
        order.push((at.partition, at.offset));
    }
    let mut records = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for record in log.read(partition, 0).unwrap() {
            let record = record.unwrap();
            records.insert((partition, record.offset), Copied::of(&record));
        }
    }
    // The crash image: the files as a kill -9 leaves them (everything written is in them).
    let files = read_tree(&dir);
    drop(log);
    let journal = files
        .iter()
        .find(|(path, _)| path == Path::new(JOURNAL_FILE))
        .map(|(_, bytes)| bytes.clone())
        .unwrap();
    let used = journal
        .iter()
        .rposition(|&b| b != 0)
        .map_or(RECORDS_START, |i| (i + 1).max(RECORDS_START));
    Template {
        records_area: journal[RECORDS_START..used.next_multiple_of(4096)].to_vec(),
        files,
        records,
        boundaries,
        order,
    }
}

fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for entry in fs::read_dir(dir.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let path = relative.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), fs::read(dir.join(&path)).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Recovers the image with `records_area` as its journal's records, in both modes.
pub fn check_records_area(records_area: &[u8]) {
    let tolerated = check_mode(records_area, RecoveryMode::TolerateTornTail);
    let salvaged = check_mode(records_area, RecoveryMode::SalvageAfterCorruption);
    if let (Some(tolerated), Some(salvaged)) = (tolerated, salvaged) {
        // Without damage before a durable record, both modes find the same log.
        assert_eq!(tolerated, salvaged, "the modes disagree on an undamaged chain");
    }
}

/// Checks one mode; returns the recovered ends of the partitions, or `None` if open refused.
fn check_mode(records_area: &[u8], mode: RecoveryMode) -> Option<Vec<u64>> {
    let template = template();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    for (path, bytes) in &template.files {
        fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        if path == Path::new(JOURNAL_FILE) {
            let mut journal = bytes[..RECORDS_START].to_vec();
            journal.extend_from_slice(records_area);
            fs::write(dir.join(path), journal).unwrap();
        } else {
            fs::write(dir.join(path), bytes).unwrap();
        }
    }
    let before = read_tree(dir);
    let log = match Log::open(dir, options(mode)) {
        Ok(log) => log,
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(mode, RecoveryMode::TolerateTornTail, "salvage refused to open");
            assert_eq!(path, dir.join(JOURNAL_FILE));
            let end = (RECORDS_START + records_area.len()) as u64;
            assert!((RECORDS_START as u64..end).contains(&position), "{position}");
            assert_eq!(read_tree(dir), before, "a refused open changed the directory");
            return None;
        }
        Err(other) => panic!("open failed with {other:?}"),
    };

    let mut ends = Vec::new();
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).unwrap();
        let mut expected_offset = 0;
        for record in log.read(partition, 0).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("partition {partition}: {e}"));
            assert_eq!(record.offset, expected_offset);
            assert_eq!(
                template.records.get(&(partition, record.offset)),
                Some(&Copied::of(&record)),
                "partition {partition} offset {} was never appended",
                record.offset
            );
            expected_offset += 1;
        }
        assert_eq!(expected_offset, end, "partition {partition} reads short");
        assert!(
            template.boundaries[partition as usize].contains(&end),
            "partition {partition} ends inside a batch, at {end}"
        );
        ends.push(end);
    }
    if mode == RecoveryMode::TolerateTornTail {
        // A prefix of the durable order: once an append is missing, every later one is too.
        let mut missing = false;
        for &(partition, offset) in &template.order {
            let present = offset < ends[partition as usize];
            assert!(!(missing && present), "append at {partition}/{offset} after a gap");
            missing |= !present;
        }
    }

    let key = b"key-new";
    let partition = log.partition_for(key);
    let appended = log.append(key, NEW_PAYLOAD).unwrap();
    assert_eq!(appended.offset, ends[partition as usize]);
    log.close().unwrap();

    let log = Log::open(dir, options(mode)).unwrap_or_else(|e| panic!("reopen: {e}"));
    for p in 0..PARTITIONS {
        let expected = ends[p as usize] + u64::from(p == partition);
        assert_eq!(log.end_offset(p).unwrap(), expected, "partition {p} after reopen");
        let count = log.read(p, 0).unwrap().inspect(|r| assert!(r.is_ok())).count() as u64;
        assert_eq!(count, expected);
    }
    let last = log
        .read(partition, ends[partition as usize])
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(&last.payload[..], NEW_PAYLOAD);
    log.close().unwrap();
    Some(ends)
}
