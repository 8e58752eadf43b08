//! What a segment keeps in memory for its readers: its mapping and its index, who uses them,
//! and the bound on sealed segments kept without a reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{rebuild_index, scan_index, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::storage::index::{self, IndexEntry, IndexPolicy};

/// Sealed segments that stay mapped, with their index in memory, after their last reader left
/// them: the ones left most recently, in the whole process. A reader that comes back to one
/// of them (a consumer a little behind the writer, lookups that hop between neighbouring
/// segments) finds it ready; any other sealed segment is unmapped and its index dropped once no
/// reader uses it. The bound is per process because the limit it protects, `vm.max_map_count`
/// (65,530 mappings by default), is per process. It is large because key lookups hop between
/// all the segments of a partition: remapping a segment for each lookup costs milliseconds
/// (measured: hydrating one aggregate from a 10M-event log took 24 ms with 16). 1,024 segments
/// of the default 32 MiB are 32 GiB of address space (about 64 MiB of page tables once
/// populated) and 1,024 of the 65,530 mappings.
pub const SEALED_SEGMENTS_IDLE_MAX: usize = 1024;

/// The bound in force: `SEALED_SEGMENTS_IDLE_MAX` unless a test lowered it.
static IDLE_MAX: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(SEALED_SEGMENTS_IDLE_MAX);

/// Sets the process's bound on idle sealed segments (tests of the release logic use a small
/// one, so that a few small segments exceed it).
pub fn set_sealed_segments_idle_max(max: usize) {
    IDLE_MAX.store(max, Ordering::Relaxed);
}

/// The sealed segments that keep their mapping or index without a reader, oldest first, each
/// with the tick at which it became idle. An entry whose tick is no longer its segment's
/// `idle_since` is stale (the segment was used again since) and is skipped when it leaves.
static IDLE: Mutex<VecDeque<(Weak<Segment>, u64)>> = Mutex::new(VecDeque::new());
/// Ticks for `IDLE`; 0 means "not idle".
static IDLE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A segment's index as readers share it.
pub(super) struct LoadedIndex {
    pub(super) entries: Vec<IndexEntry>,
    /// Built from the segment's own frames, each checked: it points only at frames that are there.
    verified: bool,
}

/// What a segment keeps in memory for its readers, and who uses it. One lock, so that a
/// segment becomes idle, is used again or is released in one step.
pub(super) struct Cache {
    pub(super) map: Option<Bytes>,
    pub(super) index: Option<LoadedIndex>,
    /// Changes whenever `index` is stored, replaced or dropped (not when the writer adds entries
    /// to it). A reader stores an index only if this is still what it was when the reader judged
    /// the index (none loaded, or a lying one), so a slow reader never puts back an index that
    /// another reader replaced meanwhile.
    index_generation: u64,
    /// The index file was found pointing at a frame that is not there: it is never read again,
    /// the index is rebuilt from the segment instead (also after a release).
    index_file_lied: bool,
    /// Readers holding a `SegmentPin`.
    readers: usize,
    /// The `IDLE_CLOCK` tick at which the segment became idle (sealed, something cached, no
    /// reader); 0 while it is not idle.
    idle_since: u64,
}

impl Cache {
    /// A sealed segment's: nothing loaded yet.
    pub(super) fn sealed() -> Cache {
        Cache::new(None, None)
    }

    /// The active segment's: mapped, with the index entries recovery or creation made. The
    /// writer adds to them as frames become visible.
    pub(super) fn active(map: Bytes, entries: Vec<IndexEntry>) -> Cache {
        let index = LoadedIndex {
            entries,
            verified: false,
        };
        Cache::new(Some(map), Some(index))
    }

    fn new(map: Option<Bytes>, index: Option<LoadedIndex>) -> Cache {
        Cache {
            map,
            index,
            index_generation: 0,
            index_file_lied: false,
            readers: 0,
            idle_since: 0,
        }
    }

    fn store_index(&mut self, index: LoadedIndex) {
        self.index = Some(index);
        self.index_generation += 1;
    }
}

/// What a reader finds when it looks up an offset in a segment's index.
enum Look {
    Start(ScanStart),
    /// No index is loaded; `generation` is the one a loaded index may be stored over.
    Unloaded {
        generation: u64,
        file_lied: bool,
    },
}

/// Where a reader starts scanning for an offset, and which index said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanStart {
    /// Byte position of a frame at or before the offset, as the index says.
    pub position: u64,
    /// The offset of that frame.
    pub offset: u64,
    /// The index generation it came from; `SegmentPin::index_lied` replaces only that index.
    pub index_generation: u64,
    /// The index was rebuilt from the segment's frames: the frame is there.
    pub index_verified: bool,
}

impl Segment {
    /// Registers a reader: the segment's mapping and index are kept until the pin is dropped.
    pub fn pin(self: &Arc<Self>) -> SegmentPin {
        let mut cache = self.cache.lock();
        cache.readers += 1;
        cache.idle_since = 0;
        drop(cache);
        SegmentPin(self.clone())
    }

    /// Makes the segment idle if it is sealed, holds something and has no reader; returns the
    /// tick it became idle at.
    pub(super) fn mark_idle(&self, cache: &mut Cache) -> Option<u64> {
        let cached = cache.map.is_some() || cache.index.is_some();
        if cache.readers > 0 || !cached || !self.is_sealed() {
            return None;
        }
        cache.idle_since = IDLE_CLOCK.fetch_add(1, Ordering::Relaxed);
        Some(cache.idle_since)
    }

    /// Queues the segment as the most recently idle one, and releases the segments that fall
    /// out of the bound.
    pub(super) fn enqueue_idle(self: &Arc<Self>, tick: u64) {
        let mut leaving = Vec::new();
        {
            let mut idle = IDLE.lock();
            idle.push_back((Arc::downgrade(self), tick));
            while idle.len() > IDLE_MAX.load(Ordering::Relaxed) {
                leaving.extend(idle.pop_front());
            }
        }
        // Outside the queue's lock: unmapping takes a system call.
        for (segment, tick) in leaving {
            if let Some(segment) = segment.upgrade() {
                segment.release_if_idle_since(tick);
            }
        }
    }

    /// Drops the mapping and index if the segment has been idle since `tick`.
    fn release_if_idle_since(&self, tick: u64) {
        let mut cache = self.cache.lock();
        if cache.idle_since != tick || cache.readers > 0 {
            return;
        }
        let released = (cache.map.take(), cache.index.take());
        cache.index_generation += 1;
        cache.idle_since = 0;
        drop(cache);
        // Unmapped here, outside the lock, unless records still hold the mapping.
        drop(released);
    }

    fn unpin(self: &Arc<Self>) {
        let mut cache = self.cache.lock();
        debug_assert!(cache.readers > 0);
        cache.readers -= 1;
        let idle = self.mark_idle(&mut cache);
        drop(cache);
        if let Some(tick) = idle {
            self.enqueue_idle(tick);
        }
    }

    /// Maps the file and checks its header against its name and partition.
    fn load_map(&self) -> Result<Bytes> {
        let file = std::fs::File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        let map = super::map_file_with(&file, &self.path, super::Populate::Now)?;
        let header = SegmentHeader::decode(&map, &self.path)?;
        if header.partition != self.partition {
            return Err(Error::corrupt(
                &self.path,
                super::SEGMENT_PARTITION_OFFSET as u64,
                "segment header names another partition than its directory",
            ));
        }
        if header.base_offset != self.base_offset {
            return Err(Error::corrupt(
                &self.path,
                super::SEGMENT_BASE_OFFSET_OFFSET as u64,
                "segment header names another base offset than its file name",
            ));
        }
        Ok(map)
    }

    /// The index from the index file, or rebuilt from `map` if the file is damaged or is known
    /// to lie.
    fn load_index(
        &self,
        map: &[u8],
        end_offset: u64,
        policy: IndexPolicy,
        file_lied: bool,
    ) -> Result<LoadedIndex> {
        let data = self.data(map);
        let rebuild = || LoadedIndex {
            entries: rebuild_index(data, self.base_offset, end_offset, policy),
            verified: true,
        };
        if file_lied {
            return Ok(rebuild());
        }
        let bytes = match std::fs::read(&self.index_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("read", &self.index_path, e)),
        };
        let header_len = SEGMENT_HEADER_LEN as u64;
        let decoded = index::decode(&bytes, self.base_offset, header_len, data.len() as u64);
        match decoded.damage {
            None => Ok(LoadedIndex {
                entries: decoded.entries,
                verified: false,
            }),
            // Another version's index beside a segment of ours was not written by this format:
            // refuse it as the segment header's version is refused, never guess.
            Some(index::IndexDamage::Version(found)) => Err(Error::IncompatibleFormat {
                path: self.index_path.clone(),
                found,
                supported: crate::FORMAT_VERSION,
            }),
            // A sealed segment's index was synced when it was sealed; damage means the file was
            // replaced or hurt afterwards. The segment is the truth: rebuild from it.
            Some(_) => Ok(rebuild()),
        }
    }
}

/// A reader's claim on a segment: while it lives, the segment keeps its mapping and index.
/// Everything a reader loads into a segment goes through a pin, so that it is released when
/// the last reader leaves.
pub struct SegmentPin(Arc<Segment>);

impl std::ops::Deref for SegmentPin {
    type Target = Segment;

    fn deref(&self) -> &Segment {
        &self.0
    }
}

impl Drop for SegmentPin {
    fn drop(&mut self) {
        self.0.unpin();
    }
}

impl SegmentPin {
    /// The whole file, mapped. Readers slice records out of it without copying. A sealed
    /// segment's header is checked when it is mapped.
    pub fn map(&self) -> Result<Bytes> {
        let mut cache = self.cache.lock();
        if let Some(map) = &cache.map {
            return Ok(map.clone());
        }
        // Mapped under the lock: the other readers of this segment need the mapping too, and
        // the writer never waits for it (the active segment is always mapped).
        let map = self.load_map()?;
        cache.map = Some(map.clone());
        Ok(map)
    }

    /// Where to start scanning for `offset`: a frame at or before it, as the index says.
    /// `end_offset` bounds a sealed segment (the next segment's base offset).
    pub fn scan_start(
        &self,
        offset: u64,
        end_offset: u64,
        policy: IndexPolicy,
    ) -> Result<ScanStart> {
        let end_offset = end_offset.min(self.end_offset());
        loop {
            let (judged, file_lied) = match self.look(offset) {
                Look::Start(start) => return Ok(start),
                // A reader that enters a segment at its first offset, as every reader going
                // through the partition does, needs no index: the first frame is right after
                // the header. Not loading it saves a file read per segment on a replay.
                Look::Unloaded { generation, .. } if offset <= self.base_offset => {
                    return Ok(ScanStart {
                        position: SEGMENT_HEADER_LEN as u64,
                        offset: self.base_offset,
                        index_generation: generation,
                        index_verified: false,
                    });
                }
                Look::Unloaded {
                    generation,
                    file_lied,
                } => (generation, file_lied),
            };
            // Loaded outside the lock: reading or rebuilding an index takes long.
            let map = self.map()?;
            let loaded = self.load_index(&map, end_offset, policy, file_lied)?;
            // If another reader stored an index meanwhile, ours is dropped and theirs used.
            // The loop ends on the next turn, because an index is only dropped when no reader
            // holds a pin.
            self.store_index_if(judged, loaded);
        }
    }

    /// What the index says about `offset`, if one is loaded.
    fn look(&self, offset: u64) -> Look {
        let cache = self.cache.lock();
        match &cache.index {
            Some(index) => Look::Start(scan_start_in(
                index,
                cache.index_generation,
                offset,
                self.base_offset,
            )),
            None => Look::Unloaded {
                generation: cache.index_generation,
                file_lied: cache.index_file_lied,
            },
        }
    }

    /// Stores `index` if the index generation is still `judged`, the one its maker saw;
    /// returns whether it did.
    fn store_index_if(&self, judged: u64, index: LoadedIndex) -> bool {
        let mut cache = self.cache.lock();
        let unchanged = cache.index_generation == judged;
        if unchanged {
            cache.store_index(index);
        }
        unchanged
    }

    /// Called when a reader found no valid frame at `position`, where the index (of
    /// `start.index_generation`) said one starts. Scans the segment's chain of valid frames
    /// from its start to tell the causes apart. The index lied only if the chain passes over
    /// `position` without a frame starting there, or ends cleanly before it: then the index is
    /// replaced by the rebuilt one, the index file is not trusted again, and this returns true.
    /// Otherwise (the chain stops at `position`, or at damage before it) the data is what is
    /// damaged; the index is kept, so records after the damage stay reachable, and this
    /// returns false. If another reader replaced the judged index meanwhile, this returns true
    /// at once: look again.
    pub fn index_lied(
        &self,
        position: u64,
        start: &ScanStart,
        end_offset: u64,
        policy: IndexPolicy,
    ) -> Result<bool> {
        if self.cache.lock().index_generation != start.index_generation {
            return Ok(true);
        }
        let map = self.map()?;
        let end_offset = end_offset.min(self.end_offset());
        let scan = scan_index(self.data(&map), self.base_offset, end_offset, policy);
        let lied = scan.stop > position || (scan.stop < position && scan.reached_end);
        if lied {
            self.cache.lock().index_file_lied = true;
            let rebuilt = LoadedIndex {
                entries: scan.entries,
                verified: true,
            };
            self.store_index_if(start.index_generation, rebuilt);
        }
        Ok(lied)
    }
}

/// Where the index says to start scanning for `offset`.
fn scan_start_in(index: &LoadedIndex, generation: u64, offset: u64, base_offset: u64) -> ScanStart {
    let (position, start_offset) = match index::lookup(&index.entries, offset) {
        Some(entry) => (entry.position, entry.offset),
        None => (SEGMENT_HEADER_LEN as u64, base_offset),
    };
    ScanStart {
        position,
        offset: start_offset,
        index_generation: generation,
        index_verified: index.verified,
    }
}

#[cfg(test)]
mod tests {
    //! When a segment keeps or releases its mapping and index, and interleavings of readers
    //! sharing one sealed segment whose index file lies, played one step at a time. Regression:
    //! two readers that found the index unloaded both loaded the lying file; the one that then
    //! found the lie stored the rebuilt index, and the other stored the lying one over it
    //! afterwards, so the first, looking again, trusted the lie and reported a healthy segment
    //! as corrupt.

    use std::path::Path;

    use super::*;
    use crate::record::Event;
    use crate::storage::frame::{self, EncodeLimits, FrameStamp};
    use crate::storage::segment::{index_path, segment_path};

    const FRAMES: u64 = 20;
    const POLICY: IndexPolicy = IndexPolicy { interval_bytes: 1 };
    /// The offset the readers look up; its frame is `TARGET`, one per offset.
    const TARGET: u64 = 5;

    /// Writes segment 0 of partition 0, sealed, with `FRAMES` one-record frames; returns the
    /// position of each frame.
    fn write_sealed_segment(dir: &Path) -> Vec<u64> {
        let header = SegmentHeader {
            partition: 0,
            base_offset: 0,
            created_ms: 1,
        };
        let mut bytes = header.encode().to_vec();
        let mut positions = Vec::new();
        let limits = EncodeLimits {
            event_bytes_max: 1024,
            batch_events_max: 1,
            batch_bytes_max: 1024,
        };
        for offset in 0..FRAMES {
            positions.push(bytes.len() as u64);
            let stamp = FrameStamp {
                base_offset: offset,
                timestamp_ms: 1,
                base_version: offset,
                global_position: offset,
            };
            let payload = [offset as u8; 100];
            frame::encode(&mut bytes, stamp, b"k", &[Event::new(&payload)], &limits).unwrap();
        }
        std::fs::write(segment_path(dir, 0), &bytes).unwrap();
        positions
    }

    /// Writes the segment of `write_sealed_segment`, and an index file whose entries each point
    /// at the next entry's frame. Returns the true position of each frame.
    fn sealed_segment_with_a_lying_index(dir: &Path) -> Vec<u64> {
        let positions = write_sealed_segment(dir);
        let lying: Vec<IndexEntry> = positions
            .windows(2)
            .enumerate()
            .map(|(offset, pair)| IndexEntry {
                offset: offset as u64,
                position: pair[1],
                timestamp_ms: 1,
            })
            .collect();
        std::fs::write(index_path(dir, 0), index::encode_file(0, 4096, &lying)).unwrap();
        positions
    }

    fn sealed(dir: &Path) -> Arc<Segment> {
        Arc::new(Segment::sealed(dir, 0, 0, FRAMES))
    }

    #[test]
    fn a_load_that_started_before_a_rebuild_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let positions = sealed_segment_with_a_lying_index(dir.path());
        let segment = sealed(dir.path());
        let (a, b) = (segment.pin(), segment.pin());

        // B finds no index and starts loading the file.
        let Look::Unloaded {
            generation,
            file_lied,
        } = b.look(TARGET)
        else {
            panic!("the index starts unloaded");
        };
        let late = b
            .load_index(&b.map().unwrap(), FRAMES, POLICY, file_lied)
            .unwrap();
        // Meanwhile A loads it too, is sent to the wrong frame, and rebuilds the index.
        let start = a.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert_eq!(start.position, positions[TARGET as usize + 1], "the lie");
        assert!(a
            .index_lied(start.position, &start, FRAMES, POLICY)
            .unwrap());
        // B's load finishes: it must not replace the rebuilt index.
        assert!(!b.store_index_if(generation, late));

        let again = a.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert!(again.index_verified);
        assert_eq!(
            (again.position, again.offset),
            (positions[TARGET as usize], TARGET)
        );
    }

    #[test]
    fn a_late_verdict_on_a_replaced_index_does_not_replace_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let positions = sealed_segment_with_a_lying_index(dir.path());
        let segment = sealed(dir.path());
        let (a, b) = (segment.pin(), segment.pin());
        let a_start = a.scan_start(TARGET, FRAMES, POLICY).unwrap();
        let b_start = b.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert_eq!(a_start, b_start);

        assert!(a
            .index_lied(a_start.position, &a_start, FRAMES, POLICY)
            .unwrap());
        let rebuilt = a.scan_start(TARGET, FRAMES, POLICY).unwrap();
        // B judged the old index: it is told to look again, and the rebuilt index stays.
        assert!(b
            .index_lied(b_start.position, &b_start, FRAMES, POLICY)
            .unwrap());
        let again = b.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert_eq!(again, rebuilt);
        assert!(again.index_verified);
        assert_eq!(again.position, positions[TARGET as usize]);
    }

    #[test]
    fn an_index_file_found_lying_is_not_read_again_after_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let positions = sealed_segment_with_a_lying_index(dir.path());
        let segment = sealed(dir.path());
        let reader = segment.pin();
        let start = reader.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert!(reader
            .index_lied(start.position, &start, FRAMES, POLICY)
            .unwrap());
        drop(reader);

        // The last reader left: the segment is idle, and is released when the bound says so.
        let tick = segment.cache.lock().idle_since;
        assert_ne!(tick, 0, "a sealed segment without readers is idle");
        segment.release_if_idle_since(tick);
        {
            let cache = segment.cache.lock();
            assert!(cache.map.is_none() && cache.index.is_none());
        }

        let reader = segment.pin();
        let start = reader.scan_start(TARGET, FRAMES, POLICY).unwrap();
        assert!(
            start.index_verified,
            "rebuilt, not read from the lying file"
        );
        assert_eq!(start.position, positions[TARGET as usize]);
    }

    #[test]
    fn a_pinned_segment_is_never_released() {
        let dir = tempfile::tempdir().unwrap();
        write_sealed_segment(dir.path());
        let segment = sealed(dir.path());
        let first = segment.pin();
        first.map().unwrap();
        let second = segment.pin();
        drop(first);
        assert_eq!(segment.cache.lock().idle_since, 0, "still read");
        drop(second);
        let tick = segment.cache.lock().idle_since;
        assert_ne!(tick, 0);
        let third = segment.pin();
        // A release decided before the third reader came is void.
        segment.release_if_idle_since(tick);
        assert!(segment.cache.lock().map.is_some());
        drop(third);
        let tick = segment.cache.lock().idle_since;
        segment.release_if_idle_since(tick);
        assert!(segment.cache.lock().map.is_none());
    }

    #[test]
    fn the_active_segment_becomes_idle_only_once_sealed() {
        let dir = tempfile::tempdir().unwrap();
        write_sealed_segment(dir.path());
        let path = segment_path(dir.path(), 0);
        let map = super::super::map_file(&std::fs::File::open(&path).unwrap(), &path).unwrap();
        let len = map.len() as u64;
        let segment = Arc::new(Segment::active(dir.path(), 0, 0, len, map, Vec::new()));
        drop(segment.pin());
        assert_eq!(segment.cache.lock().idle_since, 0, "the writer keeps it");
        segment.seal(FRAMES, len);
        assert_ne!(segment.cache.lock().idle_since, 0, "sealed without readers");
    }
}
