//! Reading from every offset lands on exactly that record, whatever state the sparse index is
//! in: built while appending, loaded lazily from `.idx` files after a reopen, missing, or
//! overwritten with garbage. The segment is the truth; the index only says where to start.

mod common;

use std::path::Path;

use annal::{Durability, Event, Log, Options};
use common::record_at;
use common::rng::SplitMix64;
use common::segment_files::{index_path, segment_bases, INDEX_ENTRY_LEN, INDEX_HEADER_LEN};

const INDEX_INTERVAL_BYTES: u32 = 256;
const EVENTS: usize = 1_000;

/// A sealed segment's index entry as (relative offset, position, timestamp).
type Entry = (u32, u32, u64);

#[derive(Clone, Debug)]
struct Expected {
    key: Vec<u8>,
    payload: Vec<u8>,
    header: Option<Vec<u8>>,
}

fn options() -> Options {
    common::small_segments(Durability::Sync).index_interval_bytes(INDEX_INTERVAL_BYTES)
}

/// Appends `EVENTS` events of varied sizes, some in multi-record frames, so that offsets fall at
/// the start, in the middle and at the end of frames, index intervals and segments.
fn fill(log: &Log) -> Vec<Expected> {
    let mut rng = SplitMix64(0x1de);
    let mut expected = Vec::with_capacity(EVENTS);
    while expected.len() < EVENTS {
        let key = format!("key-{}", rng.below(5)).into_bytes();
        let count = (1 + rng.below(4) as usize).min(EVENTS - expected.len());
        let batch: Vec<Expected> = (0..count)
            .map(|i| {
                let n = expected.len() + i;
                let mut payload = format!("event {n} ").into_bytes();
                payload.resize(payload.len() + rng.below(600) as usize, (n % 251) as u8);
                Expected {
                    key: key.clone(),
                    payload,
                    header: (n % 3 == 0).then(|| format!("h{n}").into_bytes()),
                }
            })
            .collect();
        let events: Vec<Event<'_>> = batch
            .iter()
            .map(|e| match &e.header {
                Some(value) => Event::new(&e.payload).header("n", value),
                None => Event::new(&e.payload),
            })
            .collect();
        let at = log.append_batch(&key, &events).unwrap();
        assert_eq!(at.offset, expected.len() as u64);
        expected.extend(batch);
    }
    expected
}

/// For every offset below the end, a reader from it returns that record first and then every
/// later one in order; from the end and beyond it returns nothing.
fn assert_reads_from_every_offset(log: &Log, expected: &[Expected]) {
    let end = expected.len() as u64;
    assert_eq!(log.end_offset(0).unwrap(), end);
    for from in 0..end {
        let mut count = 0u64;
        for (i, record) in log.read(0, from).unwrap().enumerate() {
            let record = record.unwrap_or_else(|e| panic!("reading from {from}: {e}"));
            let offset = from + i as u64;
            let want = &expected[offset as usize];
            assert_eq!(record.offset, offset, "reading from {from}");
            assert_eq!(record.key.as_ref(), want.key.as_slice(), "offset {offset}");
            assert_eq!(
                record.payload.as_ref(),
                want.payload.as_slice(),
                "offset {offset}"
            );
            assert_eq!(
                record.header("n").map(|v| v.to_vec()),
                want.header,
                "offset {offset}"
            );
            count += 1;
        }
        assert_eq!(count, end - from, "reading from {from}");
    }
    for from in [end, end + 1, end + 1_000, u64::MAX] {
        let mut reader = log.read(0, from).unwrap();
        assert!(reader.next().is_none(), "reading from {from}");
        assert_eq!(reader.next_offset(), from);
    }
}

/// The first and last offset of each segment read as they should, and the segment count shows
/// the test crosses several boundaries.
fn assert_segment_boundaries(log: &Log, dir: &Path, expected: &[Expected]) {
    let bases = segment_bases(dir, 0);
    assert!(bases.len() >= 4, "only {} segments", bases.len());
    for &base in &bases[1..] {
        let mut reader = log.read(0, base - 1).unwrap();
        let last_of_previous = reader.next().unwrap().unwrap();
        let first_of_next = reader.next().unwrap().unwrap();
        assert_eq!(last_of_previous.offset, base - 1);
        assert_eq!(first_of_next.offset, base);
        assert_eq!(
            first_of_next.payload.as_ref(),
            expected[base as usize].payload.as_slice()
        );
    }
}

/// Opens a log, fills it and closes it; returns the directory and what was appended.
fn filled_log() -> (tempfile::TempDir, Vec<Expected>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let expected = fill(&log);
    assert_reads_from_every_offset(&log, &expected);
    assert_segment_boundaries(&log, dir.path(), &expected);
    log.close().unwrap();
    (dir, expected)
}

/// The valid entries of an index file.
fn index_entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    bytes[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|e| {
            (
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
                u64::from_le_bytes(e[8..16].try_into().unwrap()),
            )
        })
        .collect()
}

/// Replaces the entries of an index file, keeping its (valid) header.
fn rewrite_entries(path: &Path, entries: &[Entry]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(INDEX_HEADER_LEN);
    for (offset, position, timestamp_ms) in entries {
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&position.to_le_bytes());
        bytes.extend_from_slice(&timestamp_ms.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

fn sealed_bases(dir: &Path) -> Vec<u64> {
    let bases = segment_bases(dir, 0);
    bases[..bases.len() - 1].to_vec()
}

/// Fills a log, replaces the entries of every sealed segment's index with what `rewrite` makes
/// of them, reopens, and checks that every offset still reads exactly its record.
fn check_reads_survive_rewritten_sealed_entries(rewrite: impl Fn(Vec<Entry>) -> Vec<Entry>) {
    let (dir, expected) = filled_log();
    for base in sealed_bases(dir.path()) {
        let path = index_path(dir.path(), 0, base);
        rewrite_entries(&path, &rewrite(index_entries(&path)));
    }
    let log = Log::open(dir.path(), options()).unwrap();
    assert_reads_from_every_offset(&log, &expected);
}

#[test]
fn every_offset_reads_exactly_its_record_while_appending() {
    let (dir, _) = filled_log();
    // The small interval gave every sealed segment a dense index.
    for base in sealed_bases(dir.path()) {
        let entries = index_entries(&index_path(dir.path(), 0, base));
        assert!(
            entries.len() >= 20,
            "segment {base}: {} entries",
            entries.len()
        );
        assert_eq!(entries[0].0, 0, "the first frame of a segment is indexed");
        assert_eq!(entries[0].1, 64, "right after the segment header");
    }
}

#[test]
fn every_offset_reads_exactly_its_record_after_reopen() {
    let (dir, expected) = filled_log();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_reads_from_every_offset(&log, &expected);
    assert_segment_boundaries(&log, dir.path(), &expected);
}

#[test]
fn reads_rebuild_missing_index_files() {
    let (dir, expected) = filled_log();
    for base in segment_bases(dir.path(), 0) {
        std::fs::remove_file(index_path(dir.path(), 0, base)).unwrap();
    }
    let log = Log::open(dir.path(), options()).unwrap();
    // Recovery rebuilt the active segment's index; the sealed ones are rebuilt by readers.
    assert!(log.recovery_report().partition(0).unwrap().index_rebuilt);
    assert_reads_from_every_offset(&log, &expected);
    assert_segment_boundaries(&log, dir.path(), &expected);
}

#[test]
fn reads_ignore_random_garbage_after_a_valid_index_header() {
    let (dir, expected) = filled_log();
    let mut rng = SplitMix64(7);
    for base in sealed_bases(dir.path()) {
        let path = index_path(dir.path(), 0, base);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for byte in &mut bytes[INDEX_HEADER_LEN..len] {
            *byte = rng.next() as u8;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let log = Log::open(dir.path(), options()).unwrap();
    assert_reads_from_every_offset(&log, &expected);
}

/// Entries that pass every structural check (ordered, inside the file) but point one frame off.
#[test]
fn reads_survive_plausible_entries_that_point_at_the_wrong_frame() {
    check_reads_survive_rewritten_sealed_entries(|entries| {
        // Each offset is paired with the position of the next entry's frame.
        entries
            .windows(2)
            .map(|w| (w[0].0, w[1].1, w[0].2))
            .collect()
    });
}

/// Entries that claim a later offset than the frame they point at holds. The first entry stays
/// right: a wrong one there is a known bug (`tests/index_first_entry_offset.rs`).
#[test]
fn reads_survive_entries_that_claim_the_wrong_offset() {
    check_reads_survive_rewritten_sealed_entries(|entries| {
        let mut claimed = vec![entries[0]];
        claimed.extend(entries[1..].windows(2).map(|w| (w[1].0, w[0].1, w[1].2)));
        claimed
    });
}

/// Entries pointing into the middle of their frame (one byte past its start).
#[test]
fn reads_survive_entries_pointing_inside_a_frame() {
    check_reads_survive_rewritten_sealed_entries(|entries| {
        entries
            .into_iter()
            .map(|(offset, position, ts)| (offset, position + 1, ts))
            .collect()
    });
}

/// Index files swapped between segments (headers name the wrong base offset) and a torn last
/// entry: both are detected and the index rebuilt.
#[test]
fn reads_survive_swapped_and_torn_index_files() {
    let (dir, expected) = filled_log();
    let sealed = sealed_bases(dir.path());
    let first = std::fs::read(index_path(dir.path(), 0, sealed[0])).unwrap();
    let second = std::fs::read(index_path(dir.path(), 0, sealed[1])).unwrap();
    std::fs::write(index_path(dir.path(), 0, sealed[0]), &second).unwrap();
    std::fs::write(index_path(dir.path(), 0, sealed[1]), &first).unwrap();
    let third = index_path(dir.path(), 0, sealed[2]);
    let mut torn = std::fs::read(&third).unwrap();
    torn.truncate(torn.len() - 5);
    std::fs::write(&third, torn).unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_reads_from_every_offset(&log, &expected);
}

/// The active segment's index is checked by recovery only at its last entry; wrong entries
/// before it are found by readers.
#[test]
fn reads_survive_wrong_entries_in_the_active_segment_index() {
    let (dir, expected) = filled_log();
    let active = *segment_bases(dir.path(), 0).last().unwrap();
    let path = index_path(dir.path(), 0, active);
    let mut entries = index_entries(&path);
    assert!(entries.len() >= 3, "active segment index too short");
    let last = entries.len() - 1;
    for entry in &mut entries[1..last] {
        entry.1 += 1;
    }
    rewrite_entries(&path, &entries);
    let log = Log::open(dir.path(), options()).unwrap();
    assert_reads_from_every_offset(&log, &expected);

    // The log still appends and reads after the in-memory index was rebuilt.
    let more = log.append(b"key-0", b"after").unwrap();
    assert_eq!(more.offset, expected.len() as u64);
    let record = record_at(&log, 0, more.offset);
    assert_eq!(record.payload.as_ref(), b"after");
}

/// A reader that reached the end returns `None`, and more records once more are appended.
#[test]
fn reader_at_the_end_sees_later_appends_in_the_same_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(b"k", b"0").unwrap();
    let mut reader = log.read(0, 0).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 0);
    assert!(reader.next().is_none());
    assert_eq!(reader.next_offset(), 1);
    log.append(b"k", b"1").unwrap();
    log.append_batch(b"k", [b"2", b"3"]).unwrap();
    let payloads: Vec<Vec<u8>> = reader.map(|r| r.unwrap().payload.to_vec()).collect();
    assert_eq!(payloads, [b"1", b"2", b"3"]);
}
