//! The `recover_segment` fuzz target's body (`tests/fuzz_body/recover_segment.rs`, whose
//! header lists the invariants it checks) run over a fixed set of inputs, so that `cargo test`
//! checks them without cargo-fuzz: 300 mutations of a real segment from a seeded xorshift
//! generator (truncations, bit flips, garbage, zeros, misplaced and stale frames), each with
//! no index, the real index, a damaged index or garbage for an index.
//!
//! Beyond the body's own invariants, knowing the unmutated log lets this test check more: every
//! record returned is the original record at that offset, and when recovery cannot lean on an
//! index it keeps exactly the whole frames before the first changed byte.

mod body {
    include!("fuzz_body/recover_segment.rs");
}
mod common;

use std::fs;
use std::ops::Range;

use annal::{Event, Log};
use body::{Copied, IndexInput, INDEX_HEADER_LEN, SEGMENT_HEADER_LEN};
use common::rng::XorShift;
use common::segment_files::{frame_ranges, frame_record_count, INDEX_FILE, SEGMENT_FILE};

const CASES: usize = 300;
const SEED: u64 = 0x5EED_0FA1_10F1_D00D;
/// Every this many cases, the input also goes through the raw-bytes entry point of the fuzzer.
const RAW_ENTRY_EVERY: usize = 10;

/// The unmutated log: segment data after the header (with its preallocated zeros), index
/// entries after the index header, and each frame's range in the data and record count.
struct Original {
    data: Vec<u8>,
    entries: Vec<u8>,
    frames: Vec<(Range<usize>, u64)>,
}

impl Original {
    fn build() -> Original {
        let root = tempfile::tempdir().unwrap();
        let log = Log::open(root.path(), body::options()).unwrap();
        for i in 0..40usize {
            let key = format!("key-{}", i % 3);
            let payload = format!("payload {i} {}", "z".repeat(i * 13 % 90));
            if i % 5 == 4 {
                let batch: Vec<Event<'_>> = (0..=i % 4)
                    .map(|_| Event::new(&payload).header("batch", "yes"))
                    .collect();
                log.append_batch(key.as_bytes(), batch).unwrap();
            } else if i % 2 == 0 {
                log.append(key.as_bytes(), Event::new(&payload).header("type", "Even"))
                    .unwrap();
            } else {
                log.append(key.as_bytes(), payload.as_bytes()).unwrap();
            }
        }
        log.close().unwrap();
        let segment = fs::read(root.path().join(SEGMENT_FILE)).unwrap();
        let index = fs::read(root.path().join(INDEX_FILE)).unwrap();
        let data = segment[SEGMENT_HEADER_LEN..].to_vec();
        let frames = frames(&segment);
        assert!(frames.len() == 40);
        Original {
            data,
            entries: index[INDEX_HEADER_LEN..].to_vec(),
            frames,
        }
    }

    fn data_end(&self) -> usize {
        self.frames.last().unwrap().0.end
    }

    /// Records in the frames that end at or before `position` of the data.
    fn whole_records_before(&self, position: usize) -> u64 {
        self.frames
            .iter()
            .filter(|(range, _)| range.end <= position)
            .map(|(_, count)| count)
            .sum()
    }

    fn records(&self) -> u64 {
        self.whole_records_before(usize::MAX)
    }
}

/// The frames of a segment file, with positions relative to the end of the segment header
/// (in the segment data), and the record count of each.
fn frames(segment: &[u8]) -> Vec<(Range<usize>, u64)> {
    frame_ranges(segment)
        .into_iter()
        .map(|range| {
            let count = frame_record_count(segment, &range);
            (
                range.start - SEGMENT_HEADER_LEN..range.end - SEGMENT_HEADER_LEN,
                count,
            )
        })
        .collect()
}

/// Mutates segment data the way crashes, stray writes and bad sectors do.
fn mutate(original: &Original, rng: &mut XorShift) -> (Vec<u8>, &'static str) {
    let mut data = original.data.clone();
    let end = original.data_end();
    let range = |rng: &mut XorShift| {
        let start = rng.below(end);
        start..(start + 1 + rng.below(64)).min(data.len())
    };
    let kind = match rng.below(8) {
        0 => {
            data.truncate(rng.below(end + 64));
            "truncated"
        }
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(end);
                data[at] ^= 1 << rng.below(8);
            }
            "bit flips"
        }
        2 => {
            let r = range(rng);
            let garbage = rng.bytes(r.len());
            data[r].copy_from_slice(&garbage);
            "random bytes"
        }
        3 => {
            let r = range(rng);
            data[r].fill(0);
            "zeros"
        }
        4 => {
            let r = range(rng);
            data[r].fill(0xFF);
            "0xFF bytes"
        }
        5 => {
            // A valid frame where another one should start: its offset is wrong there.
            let (from, _) = original.frames[rng.below(original.frames.len())].clone();
            let (to, _) = original.frames[rng.below(original.frames.len())].clone();
            let bytes = original.data[from.clone()].to_vec();
            let stop = (to.start + bytes.len()).min(data.len());
            data[to.start..stop].copy_from_slice(&bytes[..stop - to.start]);
            "misplaced frame"
        }
        6 => {
            // A stale copy of an earlier frame behind a cut, as if left over from before.
            let k = rng.below(original.frames.len());
            let (cut, _) = original.frames[k].clone();
            let (stale, _) = original.frames[rng.below(k + 1)].clone();
            data[cut.start..].fill(0);
            let bytes = original.data[stale].to_vec();
            data[cut.start..cut.start + bytes.len()].copy_from_slice(&bytes);
            "stale frame behind a cut"
        }
        _ => "unchanged",
    };
    (data, kind)
}

/// What to give for an index: none, the real one, a damaged real one, or garbage.
enum IndexChoice {
    Missing,
    Original,
    Damaged(Vec<u8>),
    Garbage(Vec<u8>),
}

fn choose_index(original: &Original, rng: &mut XorShift) -> IndexChoice {
    match rng.below(5) {
        0 => IndexChoice::Missing,
        1 => IndexChoice::Original,
        2 => {
            let mut entries = original.entries.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(entries.len());
                entries[at] ^= 1 << rng.below(8);
            }
            IndexChoice::Damaged(entries)
        }
        3 => {
            let len = rng.below(original.entries.len());
            IndexChoice::Damaged(original.entries[..len].to_vec())
        }
        _ => {
            let len = rng.below(INDEX_HEADER_LEN + original.entries.len());
            IndexChoice::Garbage(rng.bytes(len))
        }
    }
}

/// The case as the fuzzer's raw input encodes it (see `check_fuzz_input`).
fn raw_input(data: &[u8], index: IndexInput<'_>) -> Vec<u8> {
    let (kind, index) = match index {
        IndexInput::Missing => return [&[0u8][..], data].concat(),
        IndexInput::Raw(bytes) => (1u8, bytes),
        IndexInput::Entries(bytes) => (2u8, bytes),
    };
    let len = u16::try_from(index.len()).unwrap().to_le_bytes();
    [&[kind][..], &len, index, data].concat()
}

/// The first byte where `mutated` differs from `original` (a missing byte differs).
fn first_difference(original: &[u8], mutated: &[u8]) -> usize {
    (0..original.len().max(mutated.len()))
        .find(|&i| original.get(i) != mutated.get(i))
        .unwrap_or(usize::MAX)
}

#[test]
fn recovery_of_mutated_segments_keeps_the_invariants_of_the_fuzz_target() {
    let original = Original::build();
    let unmutated = body::check_recovery(&original.data, IndexInput::Missing);
    assert!(!unmutated.stopped_at_corruption);
    assert_eq!(unmutated.end_offset, original.records());
    let originals: Vec<Copied> = unmutated.records;

    let mut rng = XorShift(SEED);
    let (mut whole, mut partial, mut stopped, mut rewritten) = (0, 0, 0, 0);
    for case in 0..CASES {
        let (data, kind) = mutate(&original, &mut rng);
        let choice = choose_index(&original, &mut rng);
        let index = match &choice {
            IndexChoice::Missing => IndexInput::Missing,
            IndexChoice::Original => IndexInput::Entries(&original.entries),
            IndexChoice::Damaged(entries) => IndexInput::Entries(entries),
            IndexChoice::Garbage(bytes) => IndexInput::Raw(bytes),
        };
        let context = format!("case {case}: {kind}, index {index:?}");
        let outcome = if case % RAW_ENTRY_EVERY == 0 {
            body::check_fuzz_input(&raw_input(&data, index))
        } else {
            body::check_recovery(&data, index)
        };

        for record in &outcome.records {
            let expected = &originals[record.offset as usize];
            assert_eq!(
                (&record.key, &record.headers, &record.payload),
                (&expected.key, &expected.headers, &expected.payload),
                "{context}: a record that was never appended there"
            );
        }
        let intact = original.whole_records_before(first_difference(&original.data, &data));
        match choice {
            // Nothing to lean on: the scan from the segment start decides alone.
            IndexChoice::Missing | IndexChoice::Garbage(_) => {
                assert_eq!(outcome.end_offset, intact, "{context}");
                assert!(outcome.index_rewritten, "{context}");
            }
            // Valid entries can only carry the end past damage, to frames that check out.
            IndexChoice::Original | IndexChoice::Damaged(_) => {
                assert!(outcome.end_offset >= intact, "{context}");
                assert!(outcome.end_offset <= original.records(), "{context}");
            }
        }
        if kind == "unchanged" {
            assert_eq!(outcome.end_offset, original.records(), "{context}");
            assert!(!outcome.stopped_at_corruption, "{context}");
            if matches!(choice, IndexChoice::Original) {
                assert!(
                    !outcome.index_rewritten,
                    "{context}: a sound index rewritten"
                );
            }
        }
        if outcome.end_offset == original.records() {
            whole += 1;
        } else {
            partial += 1;
        }
        stopped += usize::from(outcome.stopped_at_corruption);
        rewritten += usize::from(outcome.index_rewritten);
    }
    // The mutations must actually reach every kind of outcome, or this test checks little.
    for (what, count) in [
        ("whole", whole),
        ("partial", partial),
        ("stopped", stopped),
        ("rewritten", rewritten),
    ] {
        assert!(
            count >= 5,
            "only {count} cases ended {what}: whole {whole}, partial {partial}, \
             stopped at corruption {stopped}, index rewritten {rewritten}"
        );
    }
}
