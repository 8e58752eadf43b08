//! The sparse index of the active segment is derived data: whatever a crash or a stray write
//! leaves of it (nothing, garbage, a torn entry, entries pointing past the data or at no frame),
//! open rebuilds it from the segment, every offset reads back exactly, and the rebuilt file is
//! the one appending would have written. And because open trusts the index's valid entries, it
//! scans only the tail of the active segment, however much data it holds.

mod common;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annal::{Event, Log, Options};
use common::rng::XorShift;
use common::segment_files::{
    copy_dir, frame_ranges, INDEX_ENTRY_LEN, INDEX_FILE, INDEX_HEADER_LEN, SEGMENT_FILE,
};
use common::{padded, record_at};

const SEGMENT_BYTES: u64 = 1 << 20;
/// Small, so that a few hundred records make dozens of index entries.
const INDEX_INTERVAL_BYTES: u32 = 128;
const RECORDS: usize = 300;

fn options() -> Options {
    common::one_partition(SEGMENT_BYTES).index_interval_bytes(INDEX_INTERVAL_BYTES)
}

/// A log whose one segment holds `RECORDS` records of varied sizes, closed cleanly.
struct Pristine {
    _root: tempfile::TempDir,
    dir: PathBuf,
    payloads: Vec<Vec<u8>>,
    index: Vec<u8>,
    frames: Vec<Range<usize>>,
}

impl Pristine {
    fn build() -> Pristine {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pristine");
        let log = Log::open(&dir, options()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..RECORDS)
            .map(|i| format!("record {i:04} {}", "x".repeat(i * 37 % 200)).into_bytes())
            .collect();
        let tickets: Vec<_> = payloads
            .iter()
            .map(|p| log.append_pipelined(b"key", Event::new(p)).unwrap())
            .collect();
        for ticket in tickets {
            ticket.wait().unwrap();
        }
        log.close().unwrap();
        let index = fs::read(dir.join(INDEX_FILE)).unwrap();
        let entries = (index.len() - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN;
        assert!(entries > 50, "only {entries} index entries");
        let frames = frame_ranges(&fs::read(dir.join(SEGMENT_FILE)).unwrap());
        Pristine {
            _root: root,
            dir,
            payloads,
            index,
            frames,
        }
    }

    fn copy(&self, root: &Path, name: &str) -> PathBuf {
        copy_dir(&self.dir, &root.join(name))
    }

    fn entries(&self) -> Vec<&[u8]> {
        self.index[INDEX_HEADER_LEN..]
            .chunks(INDEX_ENTRY_LEN)
            .collect()
    }
}

/// The offset an index entry names.
fn entry_offset(entry: &[u8]) -> u32 {
    u32::from_le_bytes(entry[..4].try_into().unwrap())
}

/// The position in the segment an index entry names.
fn entry_position(entry: &[u8]) -> usize {
    u32::from_le_bytes(entry[4..8].try_into().unwrap()) as usize
}

/// Opens `dir`, expects the index to be rewritten, and checks that reading from every offset
/// returns exactly `payloads[offset..]`'s first record, reading from 0 returns all of them, and
/// the rewritten index file equals `expected_index`. Then appends, reopens and checks that the
/// index is not rewritten a second time and the new record reads back.
fn check_index_rebuilt(dir: &Path, payloads: &[Vec<u8>], expected_index: &[u8], case: &str) {
    let log = Log::open(dir, options()).unwrap_or_else(|e| panic!("{case}: open failed: {e}"));
    let report = log.recovery_report(0).unwrap();
    assert!(report.index_rewritten, "{case}: index not rewritten");
    let end = payloads.len() as u64;
    assert_eq!(log.end_offset(0).unwrap(), end, "{case}");
    check_reads(&log, payloads, case);
    assert_eq!(
        fs::read(dir.join(INDEX_FILE)).unwrap(),
        expected_index,
        "{case}: rebuilt index differs from the one appending wrote"
    );

    let appended = log.append(b"key", b"after rebuild").unwrap();
    assert_eq!(appended.offset, end, "{case}");
    log.close().unwrap();
    let log = Log::open(dir, options()).unwrap();
    assert!(
        !log.recovery_report(0).unwrap().index_rewritten,
        "{case}: the rebuilt index did not hold up across a reopen"
    );
    let mut all = payloads.to_vec();
    all.push(b"after rebuild".to_vec());
    check_reads(&log, &all, case);
    log.close().unwrap();
}

fn check_reads(log: &Log, payloads: &[Vec<u8>], case: &str) {
    let all: Vec<Vec<u8>> = common::payloads(log);
    assert_eq!(all, payloads, "{case}: reading from 0");
    for (offset, payload) in payloads.iter().enumerate() {
        let record = log
            .read(0, offset as u64)
            .unwrap()
            .next()
            .unwrap_or_else(|| panic!("{case}: nothing at offset {offset}"))
            .unwrap_or_else(|e| panic!("{case}: reading from offset {offset}: {e}"));
        assert_eq!(record.offset, offset as u64, "{case}");
        assert_eq!(&record.payload[..], &payload[..], "{case}: offset {offset}");
    }
}

/// Damages only the index file of a fresh copy and checks the rebuild.
fn check_index_damage(name: &str, damage: impl FnOnce(&Pristine, &Path)) {
    let pristine = Pristine::build();
    let cases = tempfile::tempdir().unwrap();
    let dir = pristine.copy(cases.path(), name);
    damage(&pristine, &dir.join(INDEX_FILE));
    check_index_rebuilt(&dir, &pristine.payloads, &pristine.index, name);
}

#[test]
fn a_deleted_index_is_rebuilt_and_every_offset_reads_back() {
    check_index_damage("deleted", |_, index| fs::remove_file(index).unwrap());
}

#[test]
fn an_empty_index_file_is_rebuilt() {
    check_index_damage("empty", |_, index| fs::write(index, b"").unwrap());
}

#[test]
fn an_index_of_garbage_bytes_is_rebuilt() {
    check_index_damage("garbage", |pristine, index| {
        let garbage = XorShift(0x2545_F491_4F6C_DD1D).bytes(pristine.index.len());
        fs::write(index, garbage).unwrap();
    });
}

#[test]
fn an_index_with_a_valid_header_and_garbage_entries_is_rebuilt() {
    check_index_damage("garbage-entries", |pristine, index| {
        let mut bytes = pristine.index.clone();
        for (i, byte) in bytes[INDEX_HEADER_LEN..].iter_mut().enumerate() {
            *byte = (i * 151 % 251) as u8;
        }
        fs::write(index, bytes).unwrap();
    });
}

#[test]
fn an_index_truncated_mid_entry_is_rebuilt() {
    for cut in [1, 7, INDEX_ENTRY_LEN - 1] {
        check_index_damage(&format!("torn-{cut}"), |pristine, index| {
            let keep = pristine.index.len() - INDEX_ENTRY_LEN * 3 - cut;
            fs::write(index, &pristine.index[..keep]).unwrap();
        });
    }
}

#[test]
fn index_entries_with_huge_positions_are_dropped_and_rebuilt() {
    check_index_damage("huge-positions", |pristine, index| {
        let mut bytes = pristine.index.clone();
        let entries = pristine.entries().len();
        // Overwrite the last three entries: increasing offsets, positions far past the file.
        for k in 0..3u32 {
            let at = INDEX_HEADER_LEN + (entries - 3 + k as usize) * INDEX_ENTRY_LEN;
            bytes[at..at + 4].copy_from_slice(&(RECORDS as u32 + 10 + k).to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&(0xFFFF_0000 + k).to_le_bytes());
        }
        fs::write(index, bytes).unwrap();
    });
}

#[test]
fn index_entries_appended_past_the_data_are_dropped_and_rebuilt() {
    // Well-ordered entries beyond the last frame, inside the preallocated zeros: they pass
    // the bounds check and must be caught by looking at what they point at.
    check_index_damage("entries-into-zeros", |pristine, index| {
        let mut bytes = pristine.index.clone();
        let last_frame_end = pristine.frames.last().unwrap().end as u32;
        for k in 1..=4u32 {
            bytes.extend_from_slice(&(RECORDS as u32 + k).to_le_bytes());
            bytes.extend_from_slice(&(last_frame_end + k * 1000).to_le_bytes());
            bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        }
        fs::write(index, bytes).unwrap();
    });
}

#[test]
fn an_index_entry_pointing_inside_a_frame_is_dropped_and_rebuilt() {
    check_index_damage("inside-a-frame", |pristine, index| {
        let mut bytes = pristine.index.clone();
        let last = bytes.len() - INDEX_ENTRY_LEN;
        let position = entry_position(&bytes[last..]) as u32 + 3;
        bytes[last + 4..last + 8].copy_from_slice(&position.to_le_bytes());
        fs::write(index, bytes).unwrap();
    });
}

#[test]
fn an_index_entry_with_the_wrong_offset_for_its_frame_is_dropped_and_rebuilt() {
    check_index_damage("wrong-offset", |pristine, index| {
        let mut bytes = pristine.index.clone();
        let last = bytes.len() - INDEX_ENTRY_LEN;
        let offset = entry_offset(&bytes[last..]);
        bytes[last..last + 4].copy_from_slice(&(offset + 1).to_le_bytes());
        fs::write(index, bytes).unwrap();
    });
}

#[test]
fn index_entries_past_a_truncated_segment_tail_are_dropped() {
    let pristine = Pristine::build();
    let cases = tempfile::tempdir().unwrap();
    // Cut the segment inside a frame two thirds in: the index's later entries now point past
    // the end of the file, and some in-bounds ones at the torn frame.
    let torn = &pristine.frames[pristine.frames.len() * 2 / 3];
    for cut in [torn.start, torn.start + 1, torn.end - 1] {
        let dir = pristine.copy(cases.path(), &format!("cut-{cut}"));
        let segment = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(SEGMENT_FILE))
            .unwrap();
        segment.set_len(cut as u64).unwrap();
        drop(segment);
        // One frame per append, one record per frame.
        let whole = pristine.frames.iter().filter(|f| f.end <= cut).count();
        let mut expected_index = pristine.index[..INDEX_HEADER_LEN].to_vec();
        for entry in pristine.entries() {
            if entry_position(entry) < torn.start {
                expected_index.extend_from_slice(entry);
            }
        }
        assert!(expected_index.len() < pristine.index.len());
        check_index_rebuilt(
            &dir,
            &pristine.payloads[..whole],
            &expected_index,
            &format!("segment cut at {cut}"),
        );
    }
}

#[test]
fn recovery_after_an_unclean_stop_scans_only_the_tail_of_a_large_segment() {
    const PAYLOAD_BYTES: usize = 1000;
    const DATA_BYTES_MIN: usize = 6 << 20;
    const SCANNED_BYTES_MAX: u64 = 64 << 10;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("live");
    // Default segment size and index interval; one partition holds everything.
    let log = Log::open(&dir, Options::default().partitions(1)).unwrap();
    let records = DATA_BYTES_MIN / PAYLOAD_BYTES + 1;
    let payload_of = |i: usize| padded(format!("{i:08}"), PAYLOAD_BYTES, b'a' + (i % 26) as u8);
    let mut tickets = std::collections::VecDeque::new();
    for i in 0..records {
        tickets.push_back(log.append_pipelined(b"key", &payload_of(i)).unwrap());
        if tickets.len() > 1000 {
            tickets.pop_front().unwrap().wait().unwrap();
        }
    }
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    log.flush().unwrap();
    // The state a kill -9 leaves: everything written is in the page cache, nothing closed.
    let copy = root.path().join("after-crash");
    copy_dir(&dir, &copy);
    log.close().unwrap();

    let data_bytes = frame_ranges(&fs::read(copy.join(SEGMENT_FILE)).unwrap())
        .last()
        .unwrap()
        .end;
    assert!(data_bytes >= DATA_BYTES_MIN, "only {data_bytes} bytes");
    let log = Log::open(&copy, Options::default()).unwrap();
    let report = log.recovery_report(0).unwrap();
    assert!(
        report.scanned_bytes < SCANNED_BYTES_MAX,
        "recovery scanned {} of {data_bytes} bytes",
        report.scanned_bytes
    );
    assert!(report.scanned_bytes > 0, "the last frame is always checked");
    assert!(!report.index_rewritten, "{report:?}");
    assert_eq!(log.end_offset(0).unwrap(), records as u64);
    for offset in [0, 1, records / 2, records - 2, records - 1] {
        let record = record_at(&log, 0, offset as u64);
        assert_eq!(record.payload, payload_of(offset));
    }
    assert_eq!(log.read(0, 0).unwrap().count(), records);
    log.close().unwrap();
}

/// Regression test for a bug: when a reader meets a corrupt frame at a position the index gave
/// it, `Segment::distrust_index` rebuilds the whole in-memory index by scanning from the
/// segment start, and that scan stops at the corrupt frame. Every index entry past the
/// corruption is thrown away, so the valid records after it, which were readable a moment
/// before, and every record appended later, can no longer be read from any offset: each
/// lookup now starts before the corrupt frame and stops there with `Error::Corrupt`.
#[test]
fn a_read_meeting_a_corrupt_frame_does_not_hide_the_records_after_it() {
    let pristine = Pristine::build();
    let cases = tempfile::tempdir().unwrap();
    let dir = pristine.copy(cases.path(), "corrupt-middle");
    // Damage the payload of a frame in the middle that an index entry points at. A bad sector
    // in synced data: recovery starts from the last index entry and keeps everything.
    let entries = pristine.entries();
    let damaged_position = entry_position(entries[entries.len() / 2]);
    let damaged_offset = u64::from(entry_offset(entries[entries.len() / 2]));
    let frame = pristine
        .frames
        .iter()
        .find(|f| f.start == damaged_position)
        .unwrap();
    let segment_path = dir.join(SEGMENT_FILE);
    let mut segment = fs::read(&segment_path).unwrap();
    segment[frame.end - 1] ^= 0xFF;
    fs::write(&segment_path, segment).unwrap();

    check_records_after_corruption_stay_readable(
        &dir,
        &pristine,
        damaged_offset,
        "readable before anyone meets the corrupt frame",
    );
}

/// Regression test for a bug that remains after the fix above: to tell a lying index from
/// damaged data, `Segment::index_lied` scans from the segment start and calls the index a liar
/// unless the chain of valid frames stops exactly at the position the index gave. With two
/// damaged frames, the chain stops at the first one, before the position of the second, which
/// a correct index entry points at: the index is declared lying and replaced by the rebuild,
/// which ends at the first damage. From then on every record after it, including new appends,
/// reads as `Error::Corrupt` until the log is reopened.
#[test]
fn a_read_meeting_the_second_of_two_corrupt_frames_does_not_hide_the_records_after_it() {
    let pristine = Pristine::build();
    let cases = tempfile::tempdir().unwrap();
    let dir = pristine.copy(cases.path(), "two-corrupt-frames");
    let entries = pristine.entries();
    let middle = entries[entries.len() / 2];
    let second_offset = u64::from(entry_offset(middle));
    let second = pristine
        .frames
        .iter()
        .position(|f| f.start == entry_position(middle))
        .unwrap();
    // The frame right before the second one: no index entry leads past it to the second.
    let first = second - 1;
    let segment_path = dir.join(SEGMENT_FILE);
    let mut segment = fs::read(&segment_path).unwrap();
    segment[pristine.frames[first].end - 1] ^= 0xFF;
    segment[pristine.frames[second].end - 1] ^= 0xFF;
    fs::write(&segment_path, segment).unwrap();

    check_records_after_corruption_stay_readable(
        &dir,
        &pristine,
        second_offset,
        "readable before anyone meets a corrupt frame",
    );
}

/// Opens `dir`, a copy of `pristine` with a corrupt frame at `corrupt_offset`, and checks that
/// the record five offsets later reads (`readable_message` says why that is expected), a read
/// of `corrupt_offset` fails as corruption, the later record still reads after that, and a new
/// append reads back.
fn check_records_after_corruption_stay_readable(
    dir: &Path,
    pristine: &Pristine,
    corrupt_offset: u64,
    readable_message: &str,
) {
    let log = Log::open(dir, options()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), RECORDS as u64);
    let after = corrupt_offset + 5;
    let read_at = |offset: u64| log.read(0, offset).unwrap().next().unwrap();
    assert_eq!(
        read_at(after).unwrap().payload,
        pristine.payloads[after as usize],
        "{readable_message}"
    );
    assert!(read_at(corrupt_offset).unwrap_err().is_corruption());
    // Nothing changed on disk; the same read must still work.
    match read_at(after) {
        Ok(record) => assert_eq!(record.payload, pristine.payloads[after as usize]),
        Err(error) => {
            panic!("offset {after} became unreadable after a read of {corrupt_offset}: {error}")
        }
    }
    let appended = log.append(b"key", b"new").unwrap();
    let new = read_at(appended.offset).unwrap_or_else(|e| panic!("new append unreadable: {e}"));
    assert_eq!(&new.payload[..], b"new");
    log.close().unwrap();
}
