//! Event ids of appends that are queued or written but not yet visible to readers, kept by the
//! sequencer under its lock.
//!
//! An id is findable in exactly one of two places: here until its frame is published, then in
//! the partition's key tables (`lookup.rs`). The writer removes ids here only after their frames
//! are visible, and moves the epoch when it does; an appender that looked ids up on disk outside
//! the lock trusts that answer only if the epoch has not moved since (else an id could have left
//! here after the disk was searched), and otherwise looks again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::write::Appended;

/// Where an unpublished event with an id is.
#[derive(Clone, Debug)]
pub(crate) struct IdPlace {
    pub key: Arc<[u8]>,
    /// The event itself (count 1).
    pub appended: Appended,
    /// One past the global position of the last event of its frame: the ticket of a retry
    /// waits for it.
    pub frame_journal_end: u64,
}

#[derive(Default)]
pub(crate) struct UnpublishedIds {
    /// By partition and id: an id identifies an event within its key's partition.
    places: HashMap<(u32, u128), IdPlace>,
    /// Ids in the order of their frames' global positions, for removal once published.
    order: VecDeque<(u64, u32, u128)>,
    epoch: u64,
}

impl UnpublishedIds {
    pub fn get(&self, partition: u32, id: u128) -> Option<&IdPlace> {
        self.places.get(&(partition, id))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn insert(&mut self, id: u128, place: IdPlace) {
        let partition = place.appended.partition;
        self.order
            .push_back((place.frame_journal_end, partition, id));
        self.places.insert((partition, id), place);
    }

    /// Forgets the ids of frames wholly below `visible_global`: readers find them on disk now.
    pub fn remove_visible(&mut self, visible_global: u64) {
        let mut removed = false;
        while let Some(&(end, partition, id)) = self.order.front() {
            if end > visible_global {
                break;
            }
            self.order.pop_front();
            self.places.remove(&(partition, id));
            removed = true;
        }
        if removed {
            self.epoch += 1;
        }
    }

    /// Forgets every id: their appends failed before being written (`Sync`).
    pub fn clear(&mut self) {
        self.places.clear();
        self.order.clear();
        self.epoch += 1;
    }
}
