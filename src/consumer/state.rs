//! A group's committed cursors and their bytes in the groups partition.
//!
//! A group record (the payload of an event under key `g/<name>` in the groups partition):
//!
//! ```text
//!   0  u8      record kind: 1 = cursors; 2 = the group was deleted (cursors all 0)
//!   1  u8      reserved, 0
//!   2  u16     reserved, 0
//!   4  u32     partition count
//!   8  u64 ×   committed offset of each partition, in partition order
//! ```
//!
//! The record's frame checksum covers it, so a group's state is a whole record or none.

use crate::error::{Error, Result};
use crate::record::Record;
use crate::storage::codec::{read_u32, read_u64};
use crate::storage::frame::RecordCursor;
use crate::storage::segment;
use crate::stream::lookup::FoundFrame;
use crate::write::partition::Partition;

const KIND_CURSORS: u8 = 1;
const KIND_DELETED: u8 = 2;
const HEADER_LEN: usize = 8;

/// Where each partition's delivery resumes: everything below is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursors {
    offsets: Vec<u64>,
}

impl Cursors {
    pub fn new(partitions: u32) -> Cursors {
        Cursors {
            offsets: vec![0; partitions as usize],
        }
    }

    pub fn get(&self, partition: u32) -> u64 {
        self.offsets[partition as usize]
    }

    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Puts a cursor anywhere (a reset or a seek).
    pub fn set(&mut self, partition: u32, offset: u64) {
        self.offsets[partition as usize] = offset;
    }

    /// Moves a cursor forward (never back: a commit of older events changes nothing).
    pub fn advance(&mut self, partition: u32, end: u64) {
        let offset = &mut self.offsets[partition as usize];
        *offset = (*offset).max(end);
    }

    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(KIND_CURSORS)
    }

    /// The record of a deleted group: its cursors back at 0.
    pub fn encode_deleted(partitions: u32) -> Vec<u8> {
        Cursors::new(partitions).encode_as(KIND_DELETED)
    }

    fn encode_as(&self, kind: u8) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + 8 * self.offsets.len());
        bytes.push(kind);
        bytes.extend_from_slice(&[0, 0, 0]);
        bytes.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        for offset in &self.offsets {
            bytes.extend_from_slice(&offset.to_le_bytes());
        }
        bytes
    }

    /// Decodes a record of a log of `partitions` partitions; anything else is damage.
    pub fn decode(bytes: &[u8], partitions: u32) -> Result<Cursors> {
        let damaged = |reason: &'static str| Error::Corrupt {
            path: std::path::PathBuf::from(crate::write::partition::GROUPS_DIR),
            position: 0,
            reason,
        };
        let known = [KIND_CURSORS, KIND_DELETED];
        if bytes.len() < HEADER_LEN || !known.contains(&bytes[0]) || bytes[1..4] != [0, 0, 0] {
            return Err(damaged("a group record of an unknown kind"));
        }
        if read_u32(bytes, 4) != partitions || bytes.len() != HEADER_LEN + 8 * partitions as usize {
            return Err(damaged("a group record of another partition count"));
        }
        let offsets = (0..partitions as usize)
            .map(|p| read_u64(bytes, HEADER_LEN + 8 * p))
            .collect();
        Ok(Cursors { offsets })
    }
}

/// Whether a group record says the group was deleted.
pub(crate) fn is_deleted(bytes: &[u8]) -> bool {
    bytes.first() == Some(&KIND_DELETED)
}

/// The frame of `key`'s last record in the groups partition, if any: found from the key's last
/// version, so that loading a group reads one frame, not one per commit it ever made.
pub(crate) fn last_frame(partition: &Partition, key: &[u8]) -> Result<Option<FoundFrame>> {
    let Some(last) = partition.streams.last_version(partition, key)? else {
        return Ok(None);
    };
    Ok(partition.streams.key_frames(partition, key, last)?.pop())
}

/// A group's cursors as its key's last record in the groups partition says (all 0 for a group
/// never saved).
pub(crate) fn load(partition: &Partition, key: &[u8], partitions: u32) -> Result<Cursors> {
    match last_frame(partition, key)? {
        Some(found) => Cursors::decode(&last_record(partition, &found)?.payload, partitions),
        None => Ok(Cursors::new(partitions)),
    }
}

/// The last record of a frame found for a group's key.
pub(crate) fn last_record(partition: &Partition, found: &FoundFrame) -> Result<Record> {
    let frame = &found.map[found.position..found.position + found.info.frame_len as usize];
    let mut cursor = RecordCursor::new(&found.info);
    let mut last = None;
    let mut index = 0u64;
    loop {
        match cursor.next_record(frame) {
            Ok(Some(ranges)) => {
                last = Some(Record::from_frame(
                    partition.id,
                    &found.map,
                    found.position,
                    &found.info,
                    ranges,
                    index,
                ));
                index += 1;
            }
            Ok(None) => break,
            Err(damage) => {
                let path = segment::segment_path(&partition.dir, found.segment_base);
                return Err(Error::corrupt(path, found.position as u64, damage));
            }
        }
    }
    last.ok_or_else(|| Error::corrupt(&partition.dir, found.position as u64, "an empty frame"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_other_bytes_are_refused() {
        let mut cursors = Cursors::new(3);
        cursors.advance(1, 7);
        cursors.advance(1, 5);
        assert_eq!(cursors.offsets(), [0, 7, 0]);
        let bytes = cursors.encode();
        assert_eq!(Cursors::decode(&bytes, 3).unwrap(), cursors);
        assert!(Cursors::decode(&bytes, 4).is_err());
        for len in 0..bytes.len() {
            assert!(Cursors::decode(&bytes[..len], 3).is_err());
        }
        let mut kind = bytes.clone();
        kind[0] = 3;
        assert!(Cursors::decode(&kind, 3).is_err());
        let deleted = Cursors::encode_deleted(3);
        assert!(is_deleted(&deleted) && !is_deleted(&bytes));
        assert_eq!(Cursors::decode(&deleted, 3).unwrap(), Cursors::new(3));
    }
}
