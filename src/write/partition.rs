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
        hash_kind: HashKind,
    ) -> Partition {
        Partition {
            id,
            dir,
            index_policy,
            visible_end: AtomicU64::new(visible_end),
            segments: RwLock::new(segments),
            streams: StreamIndex::new(hash_kind),
        }
    }

    /// One past the last offset readers may see.
    pub fn visible_end(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
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
