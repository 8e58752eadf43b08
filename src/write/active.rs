//! The segment being written, as only its partition's writer thread sees it: how far it is
//! written, synced and visible, and the index entries on their way from memory to the file.
//!
//! The order of these steps is what the durability promises rest on: frames become visible to
//! readers and tickets only after they are synced (or written, under `Buffered`), and index
//! entries reach the index file only after the data they point at is synced.

use std::sync::Arc;

use crate::storage::index::{self, IndexEntry};
use crate::storage::io;
use crate::storage::segment::{self, Segment};
use crate::write::partition::Partition;

/// The index file is synced whenever this much segment data was synced since its last sync, so
/// that recovery after a power loss rescans at most this much of the active segment.
pub const INDEX_SYNC_BYTES: u64 = 4 << 20;

/// The segment being written, as only the writer thread sees it.
pub(crate) struct Active {
    pub segment: Arc<Segment>,
    pub data: io::File,
    pub index: io::File,
    pub created_ms: u64,
    /// End of the bytes written to the file.
    pub written_position: u64,
    pub written_end_offset: u64,
    /// End of the bytes readers may see: synced, or written under `Buffered`.
    pub visible_position: u64,
    pub visible_end_offset: u64,
    /// End of the bytes known to be synced.
    pub synced_position: u64,
    /// Entries for frames written but not yet visible.
    pub new_entries: Vec<IndexEntry>,
    /// Entries for visible frames whose data is not synced yet. They go to the index file only
    /// after the data they point at is synced, so that after a power loss every entry in the
    /// file points at synced data and recovery, scanning from the last entry, finds a prefix of
    /// the log and never a hole.
    pub unpersisted_entries: Vec<IndexEntry>,
    pub last_entry_position: Option<u64>,
    /// Length of the index file as written so far.
    pub index_file_len: u64,
    /// Data position that the last index sync covered.
    pub index_synced_position: u64,
    /// The write state when the current round started: a failed round is cut back to it, and
    /// only to it, so that earlier rounds (written, maybe not yet synced) survive.
    pub round_start: RoundStart,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RoundStart {
    pub position: u64,
    pub end_offset: u64,
    pub new_entries: usize,
    pub last_entry_position: Option<u64>,
}

impl Active {
    /// The state of a segment whose data up to `position` (offsets up to `end_offset`) is
    /// synced, and whose index file holds `index_entries` entries, the last at
    /// `last_entry_position`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        segment: Arc<Segment>,
        data: io::File,
        index: io::File,
        created_ms: u64,
        position: u64,
        end_offset: u64,
        index_entries: usize,
        last_entry_position: Option<u64>,
    ) -> Active {
        Active {
            segment,
            data,
            index,
            created_ms,
            written_position: position,
            written_end_offset: end_offset,
            visible_position: position,
            visible_end_offset: end_offset,
            synced_position: position,
            new_entries: Vec::new(),
            unpersisted_entries: Vec::new(),
            last_entry_position,
            index_file_len: (index::INDEX_HEADER_LEN + index_entries * index::INDEX_ENTRY_LEN)
                as u64,
            index_synced_position: position,
            round_start: RoundStart {
                position,
                end_offset,
                new_entries: 0,
                last_entry_position,
            },
        }
    }

    pub fn mark_round_start(&mut self) {
        self.round_start = RoundStart {
            position: self.written_position,
            end_offset: self.written_end_offset,
            new_entries: self.new_entries.len(),
            last_entry_position: self.last_entry_position,
        };
    }

    pub fn has_data(&self) -> bool {
        self.written_position > segment::SEGMENT_HEADER_LEN as u64
    }
}

/// Makes everything written to `active` visible: to readers (index entries first, then the
/// visible end) and to tickets.
pub(crate) fn make_visible(partition: &Partition, active: &mut Active, flush_done: Option<u64>) {
    if !active.new_entries.is_empty() {
        active.segment.push_index_entries(&active.new_entries);
        active
            .unpersisted_entries
            .extend_from_slice(&active.new_entries);
        active.new_entries.clear();
    }
    active.visible_position = active.written_position;
    active.visible_end_offset = active.written_end_offset;
    active.segment.publish_position(active.visible_position);
    partition.publish(active.visible_end_offset, flush_done);
}

/// Writes the entries of synced frames to the index file, and syncs the index file every
/// `INDEX_SYNC_BYTES` of data so that recovery after a power loss rescans little.
pub(crate) fn persist_index(active: &mut Active) {
    debug_assert!(active
        .unpersisted_entries
        .iter()
        .all(|entry| entry.position < active.synced_position));
    if !active.unpersisted_entries.is_empty() {
        let mut encoded =
            Vec::with_capacity(active.unpersisted_entries.len() * index::INDEX_ENTRY_LEN);
        for entry in &active.unpersisted_entries {
            index::encode_entry(&mut encoded, active.segment.base_offset, entry);
        }
        // Derived data: entries that fail to reach the file only make lookups after a reopen
        // scan further; the file stays ordered, so nothing is wrong, only sparser.
        if active
            .index
            .write_all_at(&encoded, active.index_file_len)
            .is_ok()
        {
            active.index_file_len += encoded.len() as u64;
        }
        active.unpersisted_entries.clear();
    }
    if active.synced_position >= active.index_synced_position + INDEX_SYNC_BYTES
        && active.index.sync_data().is_ok()
    {
        active.index_synced_position = active.synced_position;
    }
}
