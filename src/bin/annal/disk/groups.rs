//! Consumer groups' committed cursors, from the groups partition's files (`docs/format.md`,
//! "Group records (in `groups/`)"): each commit appends one event under the key `g/<name>`,
//! and a group's state is the payload of its key's last record.
//!
//! The engine finds that record through its key tables; this walk reads every frame of the
//! groups partition instead (one record per commit), which is simple and fine for a tool.

use std::collections::BTreeMap;

use super::bytes::{u32_at, u64_at};
use super::layout::{self, LogDir};
use super::partition::{PartitionCursor, Stop};
use crate::failure::Failure;

/// The key prefix of a group's records.
pub const GROUP_KEY_PREFIX: &[u8] = b"g/";

const KIND_OFFSET: usize = 0;
const RESERVED_OFFSET: usize = 1;
const RESERVED_LEN: usize = 3;
const COUNT_OFFSET: usize = RESERVED_OFFSET + RESERVED_LEN;
const OFFSETS_OFFSET: usize = COUNT_OFFSET + 4;
const KIND_CURSORS: u8 = 1;
/// A deleted group's record: not listed.
const KIND_DELETED: u8 = 2;

const _: () = assert!(OFFSETS_OFFSET == 8);

/// What the groups partition's files hold now.
pub struct GroupFiles {
    /// Each group's committed offsets (one per application partition), by name.
    pub committed: BTreeMap<String, Vec<u64>>,
    /// Where the walk stopped, when that was not at unwritten bytes: a commit being written, a
    /// write cut by a crash, or damage.
    pub invalid_end: Option<Stop>,
}

/// Each group's committed offsets from the last record of its key found in the files now.
///
/// # Errors
///
/// I/O errors, damaged segments, and a group record that does not decode.
pub fn read(log: &LogDir) -> Result<GroupFiles, Failure> {
    let partitions = log.meta.partitions;
    let mut cursor = PartitionCursor::in_dir(layout::groups_dir(&log.dir), partitions, 0);
    let mut last = BTreeMap::new();
    while let Some(row) = cursor.next_row()? {
        if let Some(name) = row.key.strip_prefix(GROUP_KEY_PREFIX) {
            last.insert(String::from_utf8_lossy(name).into_owned(), row);
        }
    }
    last.retain(|_, row| row.payload.first() != Some(&KIND_DELETED));
    let invalid_end = cursor
        .stop()
        .filter(|stop| matches!(stop, Stop::Invalid { .. }))
        .cloned();
    let committed = last
        .into_iter()
        .map(
            |(name, row)| match decode_cursors(&row.payload, partitions) {
                Ok(offsets) => Ok((name, offsets)),
                Err(reason) => Err(Failure::message(format!(
                    "the record of group {name:?} at offset {} of {}: {reason}",
                    row.offset,
                    layout::groups_dir(&log.dir).display()
                ))),
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(GroupFiles {
        committed,
        invalid_end,
    })
}

/// The committed offsets in a group record of a log of `partitions` partitions.
pub fn decode_cursors(bytes: &[u8], partitions: u32) -> Result<Vec<u64>, String> {
    if bytes.len() < OFFSETS_OFFSET {
        return Err(format!("a group record of {} bytes", bytes.len()));
    }
    if bytes[KIND_OFFSET] != KIND_CURSORS {
        return Err(format!(
            "a group record of unknown kind {}",
            bytes[KIND_OFFSET]
        ));
    }
    if bytes[RESERVED_OFFSET..COUNT_OFFSET] != [0; RESERVED_LEN] {
        return Err("a group record whose reserved bytes are not 0".to_owned());
    }
    let count = u32_at(bytes, COUNT_OFFSET);
    if count != partitions {
        return Err(format!(
            "a group record of {count} partitions in a log of {partitions}"
        ));
    }
    if bytes.len() != OFFSETS_OFFSET + 8 * partitions as usize {
        return Err(format!(
            "a group record of {} bytes for {partitions} partitions",
            bytes.len()
        ));
    }
    Ok((0..partitions as usize)
        .map(|p| u64_at(bytes, OFFSETS_OFFSET + 8 * p))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(count: u32, offsets: &[u64]) -> Vec<u8> {
        let mut bytes = vec![KIND_CURSORS, 0, 0, 0];
        bytes.extend_from_slice(&count.to_le_bytes());
        for offset in offsets {
            bytes.extend_from_slice(&offset.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn a_group_record_decodes_only_when_every_field_holds() {
        let bytes = record(2, &[3, 9]);
        assert_eq!(decode_cursors(&bytes, 2).unwrap(), [3, 9]);
        assert!(decode_cursors(&bytes, 3).is_err());
        for len in 0..bytes.len() {
            assert!(decode_cursors(&bytes[..len], 2).is_err());
        }
        let mut kind = bytes.clone();
        kind[KIND_OFFSET] = 3;
        assert!(decode_cursors(&kind, 2).is_err());
        let mut reserved = bytes.clone();
        reserved[RESERVED_OFFSET + 1] = 1;
        assert!(decode_cursors(&reserved, 2).is_err());
        assert!(decode_cursors(&record(2, &[3, 9, 1]), 2).is_err());
    }
}
