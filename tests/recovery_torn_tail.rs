//! A crash can leave the active segment ending in a torn, garbled or corrupt frame. For every byte
//! position inside the last two frames, recovery must keep exactly the whole frames before the
//! damage, return nothing else, continue offsets right after them, and never let bytes of the
//! damaged frame come back as data once new frames are written over them.
//!
//! Each case starts from a copy of one pristine log directory, damages the copy's segment file
//! the way a crash would, and opens it.

mod common;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annal::{Event, Log, Options};
use common::rng::XorShift;
use common::segment_files::{copy_dir, frame_ranges, INDEX_FILE, SEGMENT_FILE, SEGMENT_HEADER_LEN};

/// Small segments keep each copied case cheap; the limits must fit into one segment.
const SEGMENT_BYTES: u64 = common::SMALL_SEGMENT_BYTES;

fn options() -> Options {
    common::one_partition(SEGMENT_BYTES)
}

/// One record as the tests compare it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    offset: u64,
    key: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    payload: Vec<u8>,
}

/// What a pristine log holds: its records, and for each frame (one per append, in order) its
/// byte range in the segment file and how many records it holds.
struct Pristine {
    _root: tempfile::TempDir,
    dir: PathBuf,
    records: Vec<Stored>,
    frames: Vec<(Range<usize>, u64)>,
}

impl Pristine {
    /// Appends `singles` single events, then the `last` appends, each synced, and closes.
    fn build(singles: usize, last: &[Vec<Event<'_>>]) -> Pristine {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pristine");
        let log = Log::open(&dir, options()).unwrap();
        let mut counts = Vec::new();
        for i in 0..singles {
            let payload = format!("record {i} {}", "p".repeat(i % 23));
            let appended = log
                .append(b"key", Event::new(&payload).header("i", "v"))
                .unwrap();
            counts.push(u64::from(appended.count));
        }
        for batch in last {
            let appended = log.append_batch(b"key", batch).unwrap();
            counts.push(u64::from(appended.count));
        }
        let records = read_all(&log);
        log.close().unwrap();
        let segment = fs::read(dir.join(SEGMENT_FILE)).unwrap();
        let ranges = frame_ranges(&segment);
        assert_eq!(ranges.len(), counts.len(), "one frame per append");
        assert_eq!(records.len() as u64, counts.iter().sum::<u64>());
        Pristine {
            _root: root,
            dir,
            records,
            frames: ranges.into_iter().zip(counts).collect(),
        }
    }

    /// Start of the second-to-last frame and end of the last one.
    fn last_two(&self) -> Range<usize> {
        let n = self.frames.len();
        assert!(n >= 2);
        self.frames[n - 2].0.start..self.frames[n - 1].0.end
    }

    /// The records of the frames that end at or before `position`.
    fn records_before(&self, position: usize) -> Vec<Stored> {
        let whole: u64 = self
            .frames
            .iter()
            .filter(|(range, _)| range.end <= position)
            .map(|(_, count)| count)
            .sum();
        self.records[..whole as usize].to_vec()
    }

    /// A fresh copy of the pristine directory.
    fn copy(&self, root: &Path, name: &str) -> PathBuf {
        copy_dir(&self.dir, &root.join(name))
    }
}

/// Every record of partition 0, failing the test on any read error.
fn read_all(log: &Log) -> Vec<Stored> {
    log.read(0, 0)
        .unwrap()
        .map(|record| {
            let record = record.expect("reading a recovered partition must not fail");
            Stored {
                offset: record.offset,
                key: record.key.to_vec(),
                headers: common::headers_of(&record),
                payload: record.payload.to_vec(),
            }
        })
        .collect()
}

/// Opens `dir` and checks that exactly `expected` is there; appends one record (payload chosen
/// by the case) and checks it lands right after them, also after a reopen.
fn check_recovers_to(dir: &Path, expected: &[Stored], new_payload: &[u8], case: &str) {
    let log = Log::open(dir, options()).unwrap_or_else(|e| panic!("{case}: open failed: {e}"));
    let end = expected.len() as u64;
    assert_eq!(log.end_offset(0).unwrap(), end, "{case}: end offset");
    assert_eq!(read_all(&log), expected, "{case}: records after recovery");
    let appended = log.append(b"new", new_payload).unwrap();
    assert_eq!(
        appended.offset, end,
        "{case}: offset of the first new append"
    );
    log.close().unwrap();

    let log = Log::open(dir, options()).unwrap();
    assert_eq!(
        log.end_offset(0).unwrap(),
        end + 1,
        "{case}: end after reopen"
    );
    let records = read_all(&log);
    assert_eq!(&records[..expected.len()], expected, "{case}: old records");
    let last = &records[expected.len()];
    assert_eq!(
        (last.offset, last.key.as_slice(), last.payload.as_slice()),
        (end, &b"new"[..], new_payload),
        "{case}: new record after reopen"
    );
    log.close().unwrap();
}

/// For every cut position in the last two frames: copy, damage with `damage(segment, cut,
/// end_of_last_frame)`, recover, check.
fn sweep(pristine: &Pristine, damage: impl Fn(&Path, usize, usize)) {
    let cases = tempfile::tempdir().unwrap();
    let span = pristine.last_two();
    for cut in span.start..=span.end {
        let dir = pristine.copy(cases.path(), &format!("cut-{cut}"));
        damage(&dir.join(SEGMENT_FILE), cut, span.end);
        let case = format!("cut at byte {cut} (last two frames span {span:?})");
        let payload = format!("after {cut}");
        check_recovers_to(
            &dir,
            &pristine.records_before(cut),
            payload.as_bytes(),
            &case,
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

fn truncate_at(segment: &Path, cut: usize, _end: usize) {
    fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
}

/// Overwrites `[from, to)` of the file with `fill(i)` for each byte, keeping its length.
fn overwrite(segment: &Path, from: usize, to: usize, fill: impl Fn(usize) -> u8) {
    let mut bytes = fs::read(segment).unwrap();
    let len = bytes.len();
    for (i, byte) in bytes[from..to].iter_mut().enumerate() {
        *byte = fill(from + i);
    }
    fs::write(segment, &bytes).unwrap();
    assert_eq!(fs::metadata(segment).unwrap().len() as usize, len);
}

/// A deterministic byte for position `i`: xorshift-scrambled, never the same run twice.
fn noise(i: usize) -> u8 {
    let mut x = XorShift((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (x.next() >> 24) as u8
}

fn single_events_pristine() -> Pristine {
    Pristine::build(20, &[])
}

fn batch_last_pristine() -> Pristine {
    let payloads: Vec<String> = (0..5).map(|i| format!("batch event {i}")).collect();
    let batch: Vec<Event<'_>> = payloads
        .iter()
        .map(|p| Event::new(p).header("type", "Batched"))
        .collect();
    // The batch payloads are borrowed only while building.
    Pristine::build(20, &[batch])
}

#[test]
fn truncation_anywhere_in_the_last_two_frames_keeps_exactly_the_whole_frames_before() {
    sweep(&single_events_pristine(), truncate_at);
}

#[test]
fn garbage_of_ff_bytes_over_the_tail_keeps_exactly_the_whole_frames_before() {
    sweep(&single_events_pristine(), |segment, cut, end| {
        overwrite(segment, cut, end, |_| 0xFF)
    });
}

#[test]
fn pseudo_random_garbage_over_the_tail_keeps_exactly_the_whole_frames_before() {
    sweep(&single_events_pristine(), |segment, cut, end| {
        overwrite(segment, cut, end, noise)
    });
}

#[test]
fn zeros_over_the_tail_as_after_a_torn_write_keep_exactly_the_whole_frames_before() {
    sweep(&single_events_pristine(), |segment, cut, end| {
        overwrite(segment, cut, end, |_| 0)
    });
}

#[test]
fn a_flipped_byte_anywhere_in_the_last_frame_drops_that_frame_and_keeps_the_rest() {
    let pristine = single_events_pristine();
    let (last, _) = pristine.frames.last().unwrap().clone();
    let expected = pristine.records_before(last.start);
    assert_eq!(expected.len() + 1, pristine.records.len());
    let cases = tempfile::tempdir().unwrap();
    for position in last.clone() {
        let dir = pristine.copy(cases.path(), &format!("flip-{position}"));
        let segment = dir.join(SEGMENT_FILE);
        let mut bytes = fs::read(&segment).unwrap();
        bytes[position] ^= 0x20;
        fs::write(&segment, &bytes).unwrap();
        let case = format!("byte {position} of the last frame {last:?} flipped");
        check_recovers_to(&dir, &expected, b"replacement", &case);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_batch_cut_anywhere_is_entirely_absent_and_never_partly_present() {
    let pristine = batch_last_pristine();
    let (batch, count) = pristine.frames.last().unwrap().clone();
    assert_eq!(count, 5);
    // `records_before` counts whole frames only; spell the atomicity out for cuts inside it.
    for cut in batch.start..batch.end {
        assert_eq!(pristine.records_before(cut).len(), 20);
    }
    sweep(&pristine, truncate_at);
    sweep(&pristine, |segment, cut, end| {
        overwrite(segment, cut, end, noise)
    });
}

#[test]
fn a_shorter_record_written_over_a_torn_tail_leaves_no_trace_of_it() {
    let pristine = single_events_pristine();
    let (last, _) = pristine.frames.last().unwrap().clone();
    let cases = tempfile::tempdir().unwrap();
    let dir = pristine.copy(cases.path(), "torn");
    let segment = dir.join(SEGMENT_FILE);
    // A torn write: most of the frame reached the file, its last quarter is still zeros.
    let torn_end = last.start + last.len() * 3 / 4;
    overwrite(&segment, torn_end, last.end, |_| 0);
    let expected = pristine.records_before(last.start);

    // Much shorter than the torn frame, with a shorter key.
    check_recovers_to(&dir, &expected, b"s", "short record over a torn frame");

    let bytes = fs::read(&segment).unwrap();
    let frames = frame_ranges(&bytes);
    assert_eq!(
        frames.len(),
        pristine.frames.len(),
        "old frames plus the new one"
    );
    let new_frame = frames.last().unwrap();
    assert_eq!(new_frame.start, last.start);
    assert!(
        new_frame.end < torn_end,
        "the new frame is shorter than the torn part"
    );
    assert!(
        bytes[new_frame.end..last.end].iter().all(|&b| b == 0),
        "bytes of the torn frame are still in the file behind the new frame"
    );
}

#[test]
fn an_intact_frame_behind_a_corrupt_one_never_resurfaces_behind_a_new_frame() {
    // Two frames of equal length at the end: A, then B. A is corrupted, B stays intact. After
    // recovery a new frame of A's length is written where A was, ending exactly where B
    // starts, and B carries the very offset that follows. Only cutting the file at A during
    // recovery keeps B from being read back as if it had been appended after the new frame.
    let a = "equal-length-A".to_string();
    let b = "equal-length-B".to_string();
    let pristine = Pristine::build(10, &[vec![Event::new(&a)], vec![Event::new(&b)]]);
    let n = pristine.frames.len();
    let (frame_a, _) = pristine.frames[n - 2].clone();
    let (frame_b, _) = pristine.frames[n - 1].clone();
    assert_eq!(frame_a.len(), frame_b.len());
    let cases = tempfile::tempdir().unwrap();
    let dir = pristine.copy(cases.path(), "stale");
    let segment = dir.join(SEGMENT_FILE);
    let payload_byte = frame_a.end - 1;
    overwrite(&segment, payload_byte, payload_byte + 1, |_| b'#');

    let expected = pristine.records_before(frame_a.start);
    assert_eq!(expected.len(), 10);
    // The same length as A: key "key" vs "new" and payloads of equal length.
    check_recovers_to(
        &dir,
        &expected,
        b"equal-length-X",
        "equal-length frame over A",
    );
    let frames = frame_ranges(&fs::read(&segment).unwrap());
    assert_eq!(
        frames.last(),
        Some(&frame_a),
        "the new frame took A's place and ends where B started"
    );
}

#[test]
fn a_segment_with_only_its_header_opens_empty_and_takes_appends() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    Log::open(&dir, options()).unwrap().close().unwrap();
    truncate_at(&dir.join(SEGMENT_FILE), SEGMENT_HEADER_LEN, 0);
    check_recovers_to(&dir, &[], b"first", "segment holding only a header");
}

#[test]
fn a_freshly_created_segment_with_its_index_removed_opens_empty_and_takes_appends() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    Log::open(&dir, options()).unwrap().close().unwrap();
    fs::remove_file(dir.join(INDEX_FILE)).unwrap();
    check_recovers_to(&dir, &[], b"first", "header, preallocated zeros, no index");
}

#[test]
fn a_segment_of_all_zeros_is_recreated_and_takes_appends() {
    for len in [0, SEGMENT_HEADER_LEN as u64, 100, SEGMENT_BYTES] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        Log::open(&dir, options()).unwrap().close().unwrap();
        let segment = dir.join(SEGMENT_FILE);
        fs::write(&segment, vec![0u8; len as usize]).unwrap();
        let log = Log::open(&dir, options()).unwrap();
        assert!(
            log.recovery_report(0).unwrap().segment_recreated,
            "zeroed segment of {len} bytes"
        );
        log.close().unwrap();
        check_recovers_to(&dir, &[], b"first", &format!("{len} zero bytes"));
    }
}

#[test]
fn leftovers_of_an_interrupted_creation_are_ignored() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    Log::open(&dir, options()).unwrap().close().unwrap();
    // The crash came before the segment's rename: only its temporary file exists. The
    // metadata file's own temporary is left over from a rewrite that never finished.
    let segment = dir.join(SEGMENT_FILE);
    let tmp = PathBuf::from(format!("{}.tmp", segment.display()));
    fs::rename(&segment, &tmp).unwrap();
    fs::remove_file(dir.join(INDEX_FILE)).unwrap();
    fs::write(dir.join("annal.meta.tmp"), b"half a metadata file").unwrap();
    check_recovers_to(&dir, &[], b"first", "only a .tmp segment");
    assert!(!tmp.exists(), "the temporary segment file was deleted");
}
