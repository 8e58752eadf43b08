//! Bug: every sealed segment that was ever read (or written) stays memory-mapped, with its index
//! in memory, for the life of the `Log`: one replay of a 323-segment partition left 323 mappings,
//! and `vm.max_map_count` is 65,530 per process. Sealed segments that no reader uses must be
//! released, keeping only a small number of recently used ones.
//!
//! Mappings are counted in `/proc/self/maps`, restricted to the test's own log directory (the
//! tests of this file run in parallel in one process).

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use annal::{Durability, Event, Log, Record};
use common::segment_files::segment_bases;

/// Sealed segments kept mapped per process after their last reader left: lowered from the
/// default (`SEALED_SEGMENTS_IDLE_MAX`, 1,024) so that a hundred small segments exceed it. Every
/// test of this file sets it first (they run in one process).
const SEALED_SEGMENTS_IDLE_MAX: usize = 16;
/// Enough events of `PAYLOAD_BYTES` for about 120 small segments: one mapping per segment is
/// then unmistakable.
const EVENTS: u64 = 7_500;
const PAYLOAD_BYTES: usize = 1_000;
/// Fewer segments than this would make the test meaningless.
const SEGMENTS_MIN: usize = 100;

/// The bound on idle segments is per process, so one test's reader can evict another test's
/// segments: the evicting thread unmaps them just after it takes them from the queue, and a
/// count taken in between sees more mappings than the bound. The tests of this file take turns.
static TURN: Mutex<()> = Mutex::new(());

fn my_turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Live mappings of `.seg` files under `dir`.
fn segment_mappings(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines()
        .filter(|line| line.contains(dir) && line.ends_with(".seg"))
        .count()
}

/// A log of `EVENTS` events in many small segments, appended in batches without waiting for
/// fsyncs.
fn many_segments(dir: &Path) -> Log {
    annal::io::set_sealed_segments_idle_max(SEALED_SEGMENTS_IDLE_MAX);
    let log = Log::open(dir, common::small_segments(Durability::Buffered)).unwrap();
    let payload = vec![3u8; PAYLOAD_BYTES];
    let batch: Vec<Event<'_>> = (0..10).map(|_| Event::new(&payload)).collect();
    while log.append_batch(b"k", &batch).unwrap().end_offset() < EVENTS {}
    log.flush().unwrap();
    assert!(segment_bases(dir, 0).len() >= SEGMENTS_MIN);
    log
}

#[test]
fn writing_many_segments_keeps_few_mapped() {
    let _turn = my_turn();
    let dir = tempfile::tempdir().unwrap();
    let log = many_segments(dir.path());
    let mapped = segment_mappings(dir.path());
    // The active segment, and the sealed ones kept for readers.
    assert!(
        mapped <= 1 + SEALED_SEGMENTS_IDLE_MAX,
        "{mapped} segments mapped after writing {SEGMENTS_MIN} or more"
    );
    log.close().unwrap();
}

#[test]
fn replaying_many_segments_keeps_few_mapped() {
    let _turn = my_turn();
    let dir = tempfile::tempdir().unwrap();
    let log = many_segments(dir.path());
    drop(log);
    // Reopened, so that no segment is mapped because the writer wrote it.
    let log = Log::open(dir.path(), common::small_segments(Durability::Buffered)).unwrap();
    let mut reader = log.read(0, 0).unwrap();
    let mut count = 0u64;
    let mut most_mapped = 0;
    for record in reader.by_ref() {
        let record = record.unwrap();
        assert_eq!(record.offset, count);
        count += 1;
        if count.is_multiple_of(500) {
            most_mapped = most_mapped.max(segment_mappings(dir.path()));
        }
    }
    assert_eq!(count, EVENTS);
    // While reading: the active segment, the one being read and the idle ones kept.
    assert!(
        most_mapped <= 2 + SEALED_SEGMENTS_IDLE_MAX,
        "{most_mapped} segments mapped during a replay of {SEGMENTS_MIN} or more"
    );
    drop(reader);
    let mapped = segment_mappings(dir.path());
    assert!(
        mapped <= 1 + SEALED_SEGMENTS_IDLE_MAX,
        "{mapped} segments mapped after a replay of {SEGMENTS_MIN} or more"
    );
    // A second replay works the same, with the released segments mapped again.
    assert_eq!(log.read(0, 0).unwrap().count() as u64, EVENTS);
    log.close().unwrap();
}

/// Records are slices of the mapping: a record kept by the caller keeps its segment's bytes,
/// however long ago the segment was released.
#[test]
fn a_record_outlives_the_release_of_its_segment() {
    let _turn = my_turn();
    let dir = tempfile::tempdir().unwrap();
    let log = many_segments(dir.path());
    drop(log);
    let log = Log::open(dir.path(), common::small_segments(Durability::Buffered)).unwrap();
    let first: Record = common::record_at(&log, 0, 0);
    // Reading every other segment pushes the first one out of the idle ones kept.
    assert_eq!(log.read(0, 1).unwrap().count() as u64, EVENTS - 1);
    assert!(segment_mappings(dir.path()) <= 2 + SEALED_SEGMENTS_IDLE_MAX);
    assert_eq!(first.offset, 0);
    assert_eq!(first.payload.as_ref(), &[3u8; PAYLOAD_BYTES][..]);
    drop(first);
    assert!(segment_mappings(dir.path()) <= 1 + SEALED_SEGMENTS_IDLE_MAX);
    log.close().unwrap();
}
