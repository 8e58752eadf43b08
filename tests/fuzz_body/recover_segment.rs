// The body of the `recover_segment` fuzz target, shared by `fuzz/fuzz_targets/recover_segment.rs`
// (cargo-fuzz) and `tests/fuzz_recover_segment.rs` (a deterministic run under `cargo test`),
// which both `include!` this file. It is not a test target of its own: cargo only builds
// `tests/*.rs` and `tests/*/main.rs`.
//
// One input is the data of an active segment after a valid 64-byte header (anything: frames,
// torn frames, garbage, zeros) and optionally an index file (missing, raw bytes, or a valid
// header followed by arbitrary entries). The body builds a one-partition log directory from it,
// opens the log and checks:
//
// 1. `Log::open` succeeds and does not panic, whatever the data and index are.
// 2. Recovery scans no more than the data it was given.
// 3. Reading from offset 0 returns records at offsets 0, 1, 2, ... below `end_offset`, each
//    from partition 0. Without an index it returns exactly `end_offset` records and no error:
//    recovery checked every frame it kept. With an index, whose entries may let recovery start
//    past a damaged frame, the reader may stop at that frame with `Error::Corrupt`, never with
//    another error and never after returning something else.
// 4. Reading from any offset below `end_offset` starts at exactly that offset, with the same
//    record that reading from 0 returned there.
// 5. An append gets offset `end_offset`, reads back, and survives close and reopen, after which
//    the log reads exactly as before plus the new record. (Each session reads the new record
//    before the old data.)
// 6. Without an index, the new record's timestamp is at least that of every recovered record.
// 7. Reads change nothing: after reading from every offset, the new record still reads back.

use std::fs;
use std::sync::OnceLock;

use annal::{Event, Log, Options};

/// Smallest segment size the engine allows: cheap files, and fuzz data may run past it.
pub const SEGMENT_BYTES: u64 = 64 << 10;
const BATCH_BYTES_MAX: u32 = 16 << 10;
pub const INDEX_INTERVAL_BYTES: u32 = 256;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const INDEX_HEADER_LEN: usize = 32;
const SEGMENT_FILE: &str = "p0000/00000000000000000000.seg";
const INDEX_FILE: &str = "p0000/00000000000000000000.idx";
const META_FILE: &str = "annal.meta";
/// Offsets read one by one from the start; past this many, a sample.
const OFFSETS_READ_ALL_MAX: u64 = 64;
const NEW_KEY: &[u8] = b"fuzz-new-key";
const NEW_PAYLOAD: &[u8] = b"appended after recovery";

pub fn options() -> Options {
    Options::default()
        .partitions(1)
        .segment_bytes(SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .event_bytes_max(BATCH_BYTES_MAX)
        .index_interval_bytes(INDEX_INTERVAL_BYTES)
}

/// What the index file of a case is.
#[derive(Clone, Copy, Debug)]
pub enum IndexInput<'a> {
    Missing,
    /// The whole file, header included.
    Raw(&'a [u8]),
    /// A valid header for segment 0, then these bytes as entries.
    Entries(&'a [u8]),
}

/// One record, copied out of the log for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub key: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl Copied {
    fn of(record: &annal::Record) -> Copied {
        Copied {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.to_vec(),
            headers: record
                .headers
                .iter()
                .map(|h| (h.name.to_vec(), h.value.to_vec()))
                .collect(),
            payload: record.payload.to_vec(),
        }
    }
}

/// What recovery made of a case.
#[derive(Debug)]
pub struct Outcome {
    pub end_offset: u64,
    /// The records read from offset 0, up to the end or the first error.
    pub records: Vec<Copied>,
    /// Whether reading from 0 stopped at a corrupt frame before `end_offset`.
    pub stopped_at_corruption: bool,
    pub index_rewritten: bool,
}

/// The metadata file and the segment and index headers of a fresh one-partition log, made once
/// by the engine itself so that this body never duplicates the header formats.
struct Template {
    meta: Vec<u8>,
    segment_header: Vec<u8>,
    index_header: Vec<u8>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        Log::open(root.path(), options()).unwrap().close().unwrap();
        let segment = fs::read(root.path().join(SEGMENT_FILE)).unwrap();
        let index = fs::read(root.path().join(INDEX_FILE)).unwrap();
        assert_eq!(
            index.len(),
            INDEX_HEADER_LEN,
            "a fresh index holds only its header"
        );
        Template {
            meta: fs::read(root.path().join(META_FILE)).unwrap(),
            segment_header: segment[..SEGMENT_HEADER_LEN].to_vec(),
            index_header: index,
        }
    })
}

/// Splits raw fuzzer bytes into a case: byte 0 picks the index kind, then a little-endian
/// `u16` gives the index length, and the rest is segment data.
pub fn check_fuzz_input(data: &[u8]) -> Outcome {
    let Some((&kind, rest)) = data.split_first() else {
        return check_recovery(&[], IndexInput::Missing);
    };
    if kind % 3 == 0 || rest.len() < 2 {
        return check_recovery(rest, IndexInput::Missing);
    }
    let index_len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
    let (index, segment_data) = rest[2..].split_at(index_len);
    let index = if kind % 3 == 1 {
        IndexInput::Raw(index)
    } else {
        IndexInput::Entries(index)
    };
    check_recovery(segment_data, index)
}

/// Builds the log directory for one case, recovers it and checks the invariants above.
pub fn check_recovery(segment_data: &[u8], index: IndexInput<'_>) -> Outcome {
    let template = template();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    fs::create_dir(dir.join("p0000")).unwrap();
    fs::write(dir.join(META_FILE), &template.meta).unwrap();
    let mut segment = template.segment_header.clone();
    segment.extend_from_slice(segment_data);
    fs::write(dir.join(SEGMENT_FILE), &segment).unwrap();
    let has_index = match index {
        IndexInput::Missing => false,
        IndexInput::Raw(bytes) => {
            fs::write(dir.join(INDEX_FILE), bytes).unwrap();
            true
        }
        IndexInput::Entries(entries) => {
            let mut bytes = template.index_header.clone();
            bytes.extend_from_slice(entries);
            fs::write(dir.join(INDEX_FILE), bytes).unwrap();
            true
        }
    };

    let log = Log::open(dir, options()).unwrap_or_else(|e| panic!("open failed: {e}"));
    let report = log.recovery_report(0).unwrap();
    assert!(
        report.scanned_bytes <= segment_data.len() as u64,
        "scanned {} of {} bytes",
        report.scanned_bytes,
        segment_data.len()
    );
    let end_offset = log.end_offset(0).unwrap();

    // The new record is read first in each session: nothing has read the old data yet.
    let appended = log
        .append(NEW_KEY, Event::new(NEW_PAYLOAD).header("h", "v"))
        .unwrap_or_else(|e| panic!("append after recovery failed: {e}"));
    assert_eq!(appended.offset, end_offset);
    assert_eq!(log.end_offset(0).unwrap(), end_offset + 1);
    let new_record = first_record_at(&log, end_offset).expect("the new record reads back");
    assert_eq!(
        (&new_record.key[..], &new_record.payload[..]),
        (NEW_KEY, NEW_PAYLOAD)
    );
    assert_eq!(new_record.headers, [(b"h".to_vec(), b"v".to_vec())]);
    let (mut records, stopped_at_corruption) = read_from_zero(&log, end_offset + 1);
    assert!(
        has_index || !stopped_at_corruption,
        "without an index, recovery checked every frame it kept, yet reading failed"
    );
    if !stopped_at_corruption {
        assert_eq!(records.pop().as_ref(), Some(&new_record));
    }
    if !has_index {
        let newest = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
        assert!(new_record.timestamp_ms >= newest, "timestamp went back");
    }
    log.close().unwrap();

    let log = Log::open(dir, options()).unwrap_or_else(|e| panic!("reopen failed: {e}"));
    assert_eq!(
        log.end_offset(0).unwrap(),
        end_offset + 1,
        "end after reopen"
    );
    assert_eq!(
        first_record_at(&log, end_offset).as_ref(),
        Some(&new_record)
    );
    let (mut again, stopped_again) = read_from_zero(&log, end_offset + 1);
    assert_eq!(
        stopped_again, stopped_at_corruption,
        "reopen changed what reads"
    );
    if !stopped_again {
        assert_eq!(again.pop().as_ref(), Some(&new_record));
    }
    assert_eq!(again, records, "reopen changed the records");
    check_reads_from_offsets(&log, end_offset + 1, &records, has_index);
    assert_eq!(
        first_record_at(&log, end_offset).as_ref(),
        Some(&new_record),
        "reading other offsets made the new record unreadable"
    );
    log.close().unwrap();

    Outcome {
        end_offset,
        records,
        stopped_at_corruption,
        index_rewritten: report.index_rewritten,
    }
}

/// Reads from 0 to the end; returns the records and whether a corrupt frame stopped it.
fn read_from_zero(log: &Log, end_offset: u64) -> (Vec<Copied>, bool) {
    let mut records = Vec::new();
    for record in log.read(0, 0).unwrap() {
        match record {
            Ok(record) => {
                assert_eq!(record.partition, 0);
                assert_eq!(
                    record.offset,
                    records.len() as u64,
                    "offsets are contiguous"
                );
                assert!(record.offset < end_offset, "a record past the end");
                records.push(Copied::of(&record));
            }
            Err(error) => {
                assert!(error.is_corruption(), "unexpected read error: {error}");
                return (records, true);
            }
        }
    }
    assert_eq!(records.len() as u64, end_offset, "reading stopped early");
    (records, false)
}

fn first_record_at(log: &Log, offset: u64) -> Option<Copied> {
    let record = log.read(0, offset).unwrap().next()?;
    Some(Copied::of(
        &record.unwrap_or_else(|e| panic!("offset {offset}: {e}")),
    ))
}

fn check_reads_from_offsets(log: &Log, end_offset: u64, records: &[Copied], has_index: bool) {
    let offsets: Vec<u64> = if end_offset <= OFFSETS_READ_ALL_MAX {
        (0..end_offset).collect()
    } else {
        let mut sample: Vec<u64> = (0..8).map(|i| end_offset * i / 8).collect();
        sample.extend([1, end_offset - 2, end_offset - 1]);
        sample
    };
    for offset in offsets {
        match log.read(0, offset).unwrap().next() {
            Some(Ok(record)) => {
                assert_eq!(record.offset, offset, "reading from {offset}");
                if let Some(from_zero) = records.get(offset as usize) {
                    assert_eq!(&Copied::of(&record), from_zero, "offset {offset}");
                }
            }
            Some(Err(error)) => {
                assert!(
                    has_index && error.is_corruption(),
                    "offset {offset}: {error}"
                );
            }
            None => panic!("nothing at offset {offset} below the end {end_offset}"),
        }
    }
}
