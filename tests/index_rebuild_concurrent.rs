//! Bug: readers that found a sealed segment's index unloaded all loaded the index file; when it
//! lied, the one that found the lie stored the index rebuilt from the segment, and another could
//! store the lying index over it afterwards, so the first, looking again, trusted the lie and
//! reported `Error::Corrupt` for a healthy segment.
//!
//! Here readers on several threads share sealed segments whose index files lie, while the
//! segments are also released and mapped again behind them; every read must return its record.
//! The window is narrow (before the fix this test failed in 3 of 15 runs); the exact
//! interleaving is played step by step in the unit tests of `src/storage/segment/cache.rs`.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};

use annal::{Durability, Event, Log, Options};
use common::rng::SplitMix64;
use common::segment_files::{index_path, segment_bases, INDEX_ENTRY_LEN, INDEX_HEADER_LEN};

/// More sealed segments than the process keeps idle (lowered to 16 for this test, from 1,024), so
/// that readers also race with releases.
const SEALED_SEGMENTS_MIN: usize = 24;
const PAYLOAD_BYTES: usize = 200;
const READERS: usize = 4;
const ROUNDS: usize = 50;
const READS_PER_ROUND: usize = 100;

fn options() -> Options {
    annal::io::set_sealed_segments_idle_max(16);
    common::small_segments(Durability::Buffered).index_interval_bytes(1)
}

/// Rewrites an index file so that each entry keeps its offset but points at the next entry's
/// frame: ordered and inside the file, so it loads without complaint, and every entry lies.
fn make_index_lie(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let entries: Vec<&[u8]> = bytes[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .collect();
    let mut lying = bytes[..INDEX_HEADER_LEN].to_vec();
    for pair in entries.windows(2) {
        lying.extend_from_slice(&pair[0][0..4]);
        lying.extend_from_slice(&pair[1][4..8]);
        lying.extend_from_slice(&pair[0][8..16]);
    }
    std::fs::write(path, lying).unwrap();
}

#[test]
fn readers_rebuilding_lying_indexes_at_once_all_read_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let payload = vec![1u8; PAYLOAD_BYTES];
    let batch: Vec<Event<'_>> = (0..10).map(|_| Event::new(&payload)).collect();
    while segment_bases(dir.path(), 0).len() <= SEALED_SEGMENTS_MIN {
        log.append_batch(b"k", &batch).unwrap();
        log.flush().unwrap();
    }
    log.close().unwrap();
    let bases = segment_bases(dir.path(), 0);
    let sealed_end = *bases.last().unwrap();
    for &base in &bases[..bases.len() - 1] {
        make_index_lie(&index_path(dir.path(), 0, base));
    }

    for round in 0..ROUNDS {
        // Reopened, so that every index starts unloaded.
        let log = Arc::new(Log::open(dir.path(), options()).unwrap());
        let barrier = Arc::new(Barrier::new(READERS));
        let threads: Vec<_> = (0..READERS)
            .map(|reader| {
                let log = log.clone();
                let barrier = barrier.clone();
                let mut rng = SplitMix64((round * READERS + reader) as u64);
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..READS_PER_ROUND {
                        let offset = rng.below(sealed_end);
                        let record = log.read(0, offset).unwrap().next().unwrap();
                        let record =
                            record.unwrap_or_else(|e| panic!("round {round}, {offset}: {e}"));
                        assert_eq!(record.offset, offset);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
