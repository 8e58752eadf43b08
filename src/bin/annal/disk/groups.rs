//! Consumer groups' committed cursors, from the groups partition's files (`docs/format.md`,
//! "Group records (in `groups/`)"): each commit appends one event under the key `g/<name>`,
//! and a group's state is the payload of its key's last record.
//!
//! The engine finds that record through its key tables; this walk reads every frame of the
//! groups partition instead (one record per commit), which is simple and fine for a tool.

use std::collections::BTreeMap;

use super::bytes::{u16_at, u32_at, u64_at};
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
/// A held key's fixed fields, before its key and reason.
const HELD_FIXED_LEN: usize = 48;
const STATUS_RETRY: u8 = 1;
const STATUS_PARKED: u8 = 2;
/// Nothing of the key held; only events delivered ahead of the end are passed by.
const STATUS_AHEAD: u8 = 3;
const REASON_LEN_MAX: usize = 1024;

/// A key a group holds: waiting for a retry, or parked (a dead letter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldKey {
    pub partition: u32,
    /// 1 waiting for a retry, 2 parked, 3 only delivered ahead.
    pub status: u8,
    pub parked: bool,
    pub key: Vec<u8>,
    pub attempts: u32,
    pub offset: u64,
    pub version: u64,
    /// When the retry is due, or when it was parked (ms since the Unix epoch).
    pub time_ms: u64,
    /// The key's events below this offset were delivered ahead of the end.
    pub ahead: u64,
    pub reason: String,
}

/// One group record: committed ends per partition and held keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub committed: Vec<u64>,
    pub held: Vec<HeldKey>,
}

/// What the groups partition's files hold now.
pub struct GroupFiles {
    /// Each group's record (committed ends, one per application partition; held keys), by
    /// name.
    pub committed: BTreeMap<String, GroupRecord>,
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
            |(name, row)| match decode_record(&row.payload, partitions) {
                Ok(record) => Ok((name, record)),
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

/// A group record of a log of `partitions` partitions.
pub fn decode_record(bytes: &[u8], partitions: u32) -> Result<GroupRecord, String> {
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
    let held_count_at = OFFSETS_OFFSET + 8 * partitions as usize;
    if bytes.len() < held_count_at + 4 {
        return Err(format!(
            "a group record of {} bytes for {partitions} partitions",
            bytes.len()
        ));
    }
    let committed = (0..partitions as usize)
        .map(|p| u64_at(bytes, OFFSETS_OFFSET + 8 * p))
        .collect();
    let mut held: Vec<HeldKey> = Vec::new();
    let mut at = held_count_at + 4;
    for i in 0..u32_at(bytes, held_count_at) {
        let cut = || format!("held key {i} of a group record is cut short");
        let fixed = bytes.get(at..at + HELD_FIXED_LEN).ok_or_else(cut)?;
        let partition = u32_at(fixed, 0);
        let status = fixed[4];
        let key_len = usize::from(u16_at(fixed, 6));
        let reason_len = u32_at(fixed, 12) as usize;
        if partition >= partitions {
            return Err(format!("held key {i} names partition {partition}"));
        }
        if fixed[5] != 0 || key_len == 0 || reason_len > REASON_LEN_MAX {
            return Err(format!("held key {i} has a bad reserved byte or length"));
        }
        let parked = match (status, reason_len) {
            (STATUS_RETRY, 0) => false,
            (STATUS_PARKED, _) => true,
            (STATUS_AHEAD, 0)
                if u32_at(fixed, 8) == 0
                    && u64_at(fixed, 32) == 0
                    && u64_at(fixed, 40) == u64_at(fixed, 16) =>
            {
                false
            }
            _ => return Err(format!("held key {i} has status {status}")),
        };
        let body = at + HELD_FIXED_LEN;
        let key = bytes.get(body..body + key_len).ok_or_else(cut)?;
        let reason = bytes
            .get(body + key_len..body + key_len + reason_len)
            .ok_or_else(cut)?;
        let reason = std::str::from_utf8(reason)
            .map_err(|_| format!("held key {i} has a reason that is not UTF-8"))?;
        let key = HeldKey {
            partition,
            status,
            parked,
            key: key.to_vec(),
            attempts: u32_at(fixed, 8),
            offset: u64_at(fixed, 16),
            version: u64_at(fixed, 24),
            time_ms: u64_at(fixed, 32),
            ahead: u64_at(fixed, 40),
            reason: reason.to_owned(),
        };
        if let Some(previous) = held.last() {
            if (previous.partition, &previous.key) >= (key.partition, &key.key) {
                return Err(format!("held key {i} is out of (partition, key) order"));
            }
        }
        held.push(key);
        at = body + key_len + reason_len;
    }
    if at != bytes.len() {
        return Err(format!(
            "a group record with {} bytes after its held keys",
            bytes.len() - at
        ));
    }
    Ok(GroupRecord { committed, held })
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
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    #[test]
    fn a_group_record_decodes_only_when_every_field_holds() {
        let bytes = record(2, &[3, 9]);
        assert_eq!(decode_record(&bytes, 2).unwrap().committed, [3, 9]);
        assert!(decode_record(&bytes, 3).is_err());
        for len in 0..bytes.len() {
            assert!(decode_record(&bytes[..len], 2).is_err());
        }
        let mut kind = bytes.clone();
        kind[KIND_OFFSET] = 3;
        assert!(decode_record(&kind, 2).is_err());
        let mut reserved = bytes.clone();
        reserved[RESERVED_OFFSET + 1] = 1;
        assert!(decode_record(&reserved, 2).is_err());
        assert!(decode_record(&record(2, &[3, 9, 1]), 2).is_err());
    }
}
