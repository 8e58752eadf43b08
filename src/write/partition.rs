//! One partition as readers see it: its segments and how far they may read.
//!
//! The writer thread is the only one that adds segments and moves the visible end; readers take
//! the segment list under a read lock and the visible end without any lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::storage::index::IndexPolicy;
use crate::storage::segment::Segment;
use crate::stream::lookup::StreamIndex;
use crate::stream::table::HashKind;

pub(crate) struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    pub index_policy: IndexPolicy,
    /// One past the last offset readers may see.
    visible_end: AtomicU64,
    /// The first offset kept: 0, until retention moves it up (its start file records it).
    start: AtomicU64,
    /// The base of the segment named by the last durable checkpoint: only segments below it
    /// may be deleted (recovery needs that one, and replays into those after it).
    checkpoint_base: AtomicU64,
    /// Segments in base offset order; the last one is the one being written (if any).
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Finds one key's frames and event ids without a scan.
    pub streams: StreamIndex,
}

impl Partition {
    pub fn new(
        id: u32,
        dir: PathBuf,
        index_policy: IndexPolicy,
        segments: Vec<Arc<Segment>>,
        visible_end: u64,
        start: u64,
        hash_kind: HashKind,
    ) -> Partition {
        let start = start.min(visible_end);
        Partition {
            id,
            dir,
            index_policy,
            visible_end: AtomicU64::new(visible_end),
            start: AtomicU64::new(start),
            checkpoint_base: AtomicU64::new(0),
            segments: RwLock::new(segments),
            streams: StreamIndex::new(hash_kind),
        }
    }

    /// One past the last offset readers may see.
    pub fn visible_end(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
    }

    /// The first offset still stored: below it, retention deleted the segments.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Moves the start up, before a segment below it is deleted (`retention.rs`).
    pub fn set_start(&self, start: u64) {
        self.start.fetch_max(start, Ordering::AcqRel);
    }

    /// The base of the segment named by the last durable checkpoint.
    pub fn checkpoint_base(&self) -> u64 {
        self.checkpoint_base.load(Ordering::Acquire)
    }

    /// Called once a checkpoint naming segment `base` (or none: `NO_SEGMENT`) is durable.
    pub fn set_checkpoint_base(&self, base: u64) {
        let base = if base == crate::storage::journal::NO_SEGMENT {
            0
        } else {
            base
        };
        self.checkpoint_base.store(base, Ordering::Release);
    }

    /// Called by the writer once everything below `end` is visible (and the segment's readable
    /// end is moved past it).
    pub fn set_visible_end(&self, end: u64) {
        debug_assert!(end >= self.visible_end());
        self.visible_end.store(end, Ordering::Release);
    }
}

/// The directory of partition `id` inside the log directory: `p{id:04}` for the application's
/// partitions, `groups` for the groups partition (the one after them).
pub(crate) fn partition_dir(dir: &std::path::Path, id: u32, user_partitions: u32) -> PathBuf {
    if id == user_partitions {
        dir.join(GROUPS_DIR)
    } else {
        dir.join(format!("p{id:04}"))
    }
}

/// The directory of the groups partition.
pub(crate) const GROUPS_DIR: &str = "groups";
