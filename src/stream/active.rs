//! The key and id entries of one segment, gathered by walking its frames: the in-memory table
//! of the segment being written (caught up with what is visible whenever it is consulted), and
//! the source a sealed segment's table file is built from.

use std::collections::HashMap;
use std::sync::Arc;

use crate::storage::frame::{self, Chain, RecordCursor};
use crate::stream::table::{self, HashKind, IdEntry, KeyEntry, SegmentId, Table, TableFor};

/// No previous entry.
const NONE: u32 = u32::MAX;

/// Entries of the frames of one segment from its start up to `position`.
pub(crate) struct MemTable {
    /// Where the next frame to index starts, and the offset it holds.
    pub position: u64,
    pub offset: u64,
    /// Every frame's entry, in walk order, each with the index of the previous entry of the
    /// same hash (`NONE` for the first): one allocation for all entries, not one per key.
    entries: Vec<(KeyEntry, u32)>,
    /// The newest entry of each hash.
    heads: HashMap<u64, u32>,
    ids: HashMap<u128, (u32, u32)>,
    /// A table file written for the first frames of the segment (when a log is closed), which
    /// this table continues: its entries come first.
    prefix: Option<Arc<Table>>,
}

/// The walk stopped before the bound it was given: the bytes there are not the next frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken {
    pub position: u64,
    pub reason: &'static str,
}

impl MemTable {
    pub fn new(base_offset: u64) -> MemTable {
        MemTable {
            position: crate::storage::segment::SEGMENT_HEADER_LEN as u64,
            offset: base_offset,
            entries: Vec::new(),
            heads: HashMap::new(),
            ids: HashMap::new(),
            prefix: None,
        }
    }

    /// A table that continues `prefix` (a table of the segment's first frames).
    pub fn after(prefix: Arc<Table>) -> MemTable {
        let covers = *prefix.covers();
        let mut table = MemTable::new(covers.base_offset);
        table.position = covers.end_position;
        table.offset = covers.end_offset;
        table.prefix = Some(prefix);
        table
    }

    /// What the table covers now, of `segment`.
    pub fn covers(&self, segment: &SegmentId) -> TableFor {
        TableFor {
            base_offset: segment.base_offset,
            segment_crc: segment.segment_crc,
            end_offset: self.offset,
            end_position: self.position,
            hash_kind: segment.hash_kind,
        }
    }

    /// Indexes the frames of `data` (the segment's readable bytes) from where the table ends up
    /// to `end_offset`. Checkpoint padding frames are stepped over. A frame that does not
    /// continue the chain before `end_offset` is damage: readers must not be told that a key
    /// has no more events when its frames could be behind it.
    pub fn catch_up(
        &mut self,
        data: &[u8],
        end_offset: u64,
        hash_kind: HashKind,
    ) -> Result<(), Broken> {
        let mut chain = Chain::new(data, self.position, self.offset);
        let mut ids = Vec::new();
        while chain.offset < end_offset || padding_next(data, chain.position, chain.offset) {
            let Some((at, info)) = chain.next() else {
                return Err(Broken {
                    position: chain.position,
                    reason: "the chain of frames ends before the visible end",
                });
            };
            if info.record_count > 0 {
                let frame_bytes = &data[at as usize..at as usize + info.frame_len as usize];
                // The frame's ids first: a frame is indexed whole or not at all.
                ids.clear();
                if info.has_ids {
                    frame_ids(frame_bytes, &info, at, &mut ids)?;
                }
                let entry = KeyEntry {
                    hash: hash_kind.hash(&frame_bytes[info.key_range()]),
                    base_version: info.base_version,
                    position: at as u32,
                    count: info.record_count,
                };
                let index = self.entries.len() as u32;
                let previous = self.heads.insert(entry.hash, index).unwrap_or(NONE);
                self.entries.push((entry, previous));
                for &(id, record) in &ids {
                    self.ids.insert(id, (at as u32, record));
                }
            }
            // After every frame: a walk that stops later resumes after it, and never indexes
            // a frame twice.
            self.position = chain.position;
            self.offset = chain.offset;
        }
        Ok(())
    }

    /// The frames of keys hashing to `hash`, in walk order (for one key: version order).
    pub fn key_entries(&self, hash: u64) -> Vec<KeyEntry> {
        let mut found = Vec::new();
        let prefix = self.prefix.as_ref().map(|p| p.key_entries(hash));
        let mut at = self.heads.get(&hash).copied().unwrap_or(NONE);
        while at != NONE {
            let (entry, previous) = self.entries[at as usize];
            found.push(entry);
            at = previous;
        }
        found.reverse();
        match prefix {
            Some(mut prefix) if !prefix.is_empty() => {
                prefix.extend_from_slice(&found);
                prefix
            }
            _ => found,
        }
    }

    pub fn id_entry_of(&self, id: u128) -> Option<IdEntry> {
        match self.ids.get(&id) {
            Some(&(position, index)) => Some(IdEntry {
                id,
                position,
                index,
            }),
            None => self.prefix.as_ref()?.id_entry_of(id),
        }
    }

    /// The table file of the segment, once the walk reached its end.
    pub fn encode(&self, of: &TableFor) -> Vec<u8> {
        let mut keys: Vec<KeyEntry> = self.entries.iter().map(|&(entry, _)| entry).collect();
        let mut ids: Vec<IdEntry> = self
            .ids
            .iter()
            .map(|(&id, &(position, index))| IdEntry {
                id,
                position,
                index,
            })
            .collect();
        if let Some(prefix) = &self.prefix {
            keys.extend(prefix.all_key_entries());
            ids.extend(prefix.all_id_entries());
        }
        table::encode(of, &mut keys, &mut ids)
    }
}

/// The ids of the records of the frame at `at` (whose header `info` checked out), with each
/// record's index.
fn frame_ids(
    frame: &[u8],
    info: &frame::FrameInfo,
    at: u64,
    ids: &mut Vec<(u128, u32)>,
) -> Result<(), Broken> {
    let mut cursor = RecordCursor::new(info);
    let mut index = 0u32;
    loop {
        match cursor.next_record(frame) {
            Ok(Some(ranges)) => {
                if let Some(id) = ranges.event_id {
                    ids.push((id, index));
                }
                index += 1;
            }
            Ok(None) => return Ok(()),
            Err(damage) => {
                return Err(Broken {
                    position: at + damage.relative_position,
                    reason: damage.reason,
                })
            }
        }
    }
}

/// Whether a padding frame (which holds no offsets) starts at `position`: the walk steps over
/// it even at the end bound, so that a sealed segment's walk ends at its data's end.
fn padding_next(data: &[u8], position: u64, offset: u64) -> bool {
    let Some(rest) = data.get(position as usize..) else {
        return false;
    };
    matches!(
        frame::probe(rest),
        frame::Probe::Frame(info) if info.record_count == 0 && info.base_offset == offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Event;
    use crate::storage::frame::{EncodeLimits, FrameStamp};
    use crate::storage::segment::SEGMENT_HEADER_LEN;

    /// Regression test for a review finding: a walk that stopped at damage had indexed the
    /// frames before it without moving on, so each later walk indexed them again, and lookups
    /// returned a key's frames twice.
    #[test]
    fn a_walk_stopped_by_damage_indexes_each_frame_before_it_once() {
        let limits = EncodeLimits {
            event_bytes_max: 1024,
            batch_events_max: 10,
            batch_bytes_max: 4096,
        };
        let mut data = vec![0u8; SEGMENT_HEADER_LEN];
        for offset in 0..4u64 {
            let stamp = FrameStamp {
                base_offset: offset,
                timestamp_ms: 1,
                base_version: offset,
                global_position: offset,
            };
            let event = Event::new(b"payload").id(u128::from(offset) + 1);
            frame::encode(&mut data, stamp, b"key", &[event], &limits).unwrap();
        }
        // Damage the last frame: the walk stops there.
        let last = data.len() - 3;
        data[last] ^= 0xff;
        let mut table = MemTable::new(0);
        for _ in 0..3 {
            assert!(table.catch_up(&data, 4, HashKind::Standard).is_err());
        }
        let entries = table.key_entries(HashKind::Standard.hash(b"key"));
        let versions: Vec<u64> = entries.iter().map(|e| e.base_version).collect();
        assert_eq!(versions, [0, 1, 2]);
        assert_eq!(table.offset, 3, "the walk resumes at the damaged frame");
        assert!(table.id_entry_of(3).is_some() && table.id_entry_of(4).is_none());
    }
}
