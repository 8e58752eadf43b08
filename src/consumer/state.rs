//! A group's committed state and its bytes in the groups partition: per partition the end of
//! what was delivered and settled, and the keys held above that (waiting for a retry, or
//! parked as dead letters, with every later event of the key held behind them).
//!
//! A group record (the payload of an event under key `g/<name>` in the groups partition):
//!
//! ```text
//!   0  u8      record kind: 1 = cursors; 2 = the group was deleted (cursors all 0)
//!   1  u8      reserved, 0
//!   2  u16     reserved, 0
//!   4  u32     partition count P
//!   8  u64 ×P  committed end of each partition, in partition order
//!   .  u32     held key count H
//!   .  H held keys, in (partition, key bytes) order, each:
//!        0  u32  partition
//!        4  u8   status: 1 = waiting for a retry; 2 = parked (a dead letter); 3 = none of
//!                its events is held, but some were delivered ahead of the end (see `ahead`)
//!        5  u8   reserved, 0
//!        6  u16  key length K (at least 1)
//!        8  u32  failed deliveries of the head event
//!       12  u32  reason length R (UTF-8; 0 unless parked)
//!       16  u64  head offset: the key's first event not settled (status 3: = ahead)
//!       24  u64  head version: that event's version in its key (status 3: the next version)
//!       32  u64  ms since the Unix epoch: when the retry is due, or when it was parked
//!       40  u64  ahead: the key's events below this offset were delivered by a retry ahead
//!                of the end, and are not taken from the reader (0: none)
//!       48  K bytes of key, then R bytes of reason
//! ```
//!
//! The record's frame checksum covers it, so a group's state is a whole record or none.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::record::Record;
use crate::storage::codec::{read_u16, read_u32, read_u64};
use crate::storage::frame::RecordCursor;
use crate::storage::segment;
use crate::stream::lookup::FoundFrame;
use crate::write::partition::Partition;

const KIND_CURSORS: u8 = 1;
const KIND_DELETED: u8 = 2;
const HEADER_LEN: usize = 8;
const HELD_HEADER_LEN: usize = 48;
const STATUS_RETRY: u8 = 1;
const STATUS_PARKED: u8 = 2;
const STATUS_AHEAD: u8 = 3;
/// Longest reason kept with a dead letter; a longer one is cut at a character boundary.
pub const REASON_BYTES_MAX: usize = 1024;

/// A key held by a group in one partition: its head event and every later event of the key
/// wait until the head is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub offset: u64,
    pub version: u64,
    /// Failed deliveries of the head event so far.
    pub attempts: u32,
    /// The key's events below this offset were delivered by a retry ahead of the group's end:
    /// the reader passes them by (0: none).
    pub ahead: u64,
    pub status: HeldStatus,
}

impl Held {
    /// Whether the partition's reader passes by this event of the key (`version` at `offset`):
    /// it is held behind the head, or a retry delivered it already.
    pub fn passes(&self, version: u64, offset: u64) -> bool {
        offset < self.ahead || (self.status != HeldStatus::Ahead && version >= self.version)
    }

    /// Whether the key has a head event (waiting for a retry, or parked).
    pub fn has_head(&self) -> bool {
        self.status != HeldStatus::Ahead
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeldStatus {
    /// Delivered again from the head once the time (ms since the Unix epoch) has come.
    Retry { due_ms: u64 },
    /// A dead letter: delivered again only when re-driven.
    Parked { at_ms: u64, reason: String },
    /// No event of the key is held; only `ahead` matters (until the end passes it).
    Ahead,
}

/// The held keys of one partition, by key (shared copy-on-write with the members that poll).
pub(crate) type HeldKeys = Arc<HashMap<Vec<u8>, Held>>;

/// Where each partition's delivery resumes, and what is held above that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursors {
    offsets: Vec<u64>,
    held: Vec<HeldKeys>,
}

impl Cursors {
    pub fn new(partitions: u32) -> Cursors {
        Cursors {
            offsets: vec![0; partitions as usize],
            held: vec![HeldKeys::default(); partitions as usize],
        }
    }

    pub fn get(&self, partition: u32) -> u64 {
        self.offsets[partition as usize]
    }

    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// The held keys of a partition.
    pub fn held(&self, partition: u32) -> &HeldKeys {
        &self.held[partition as usize]
    }

    /// The held keys of a partition, to change.
    pub fn held_mut(&mut self, partition: u32) -> &mut HashMap<Vec<u8>, Held> {
        Arc::make_mut(&mut self.held[partition as usize])
    }

    /// Every held key, in (partition, key) order.
    pub fn all_held(&self) -> Vec<(u32, &[u8], &Held)> {
        let mut all: Vec<(u32, &[u8], &Held)> = Vec::new();
        for (p, keys) in self.held.iter().enumerate() {
            all.extend(keys.iter().map(|(k, h)| (p as u32, k.as_slice(), h)));
        }
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }

    /// The first offset of a partition the group still needs: its end, or a held key's head
    /// below it.
    pub fn watermark(&self, partition: u32) -> u64 {
        let keys = self.held[partition as usize].values();
        let heads = keys.filter(|h| h.has_head()).map(|h| h.offset);
        heads.fold(self.get(partition), u64::min)
    }

    /// Puts a cursor anywhere (a reset or a seek).
    pub fn set(&mut self, partition: u32, offset: u64) {
        self.offsets[partition as usize] = offset;
    }

    /// After a reset or a seek of `partition`: everything from the cursor on is delivered
    /// again, so nothing is passed by for having been delivered ahead (held heads stay).
    pub fn replay_from_here(&mut self, partition: u32) {
        let held = self.held_mut(partition);
        held.retain(|_, h| h.has_head());
        held.values_mut().for_each(|h| h.ahead = 0);
    }

    /// Ends the `ahead` of keys whose events the end `end` has passed: keys with nothing else
    /// held are free.
    pub fn sweep(&mut self, partition: u32, end: u64) {
        if self
            .held(partition)
            .values()
            .all(|h| h.ahead == 0 || h.ahead > end)
        {
            return;
        }
        let held = self.held_mut(partition);
        held.retain(|_, h| h.has_head() || h.ahead > end);
        for h in held.values_mut() {
            if h.ahead <= end {
                h.ahead = 0;
            }
        }
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

    /// The size of the encoded record, without encoding it.
    pub fn encoded_len(&self) -> usize {
        let held: usize = self
            .all_held()
            .iter()
            .map(|(_, key, h)| HELD_HEADER_LEN + key.len() + reason_of(h).len())
            .sum();
        HEADER_LEN + 8 * self.offsets.len() + 4 + held
    }

    fn encode_as(&self, kind: u8) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.push(kind);
        bytes.extend_from_slice(&[0, 0, 0]);
        bytes.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        for offset in &self.offsets {
            bytes.extend_from_slice(&offset.to_le_bytes());
        }
        let held = self.all_held();
        bytes.extend_from_slice(&(held.len() as u32).to_le_bytes());
        for (partition, key, h) in held {
            let (status, ms) = match &h.status {
                HeldStatus::Retry { due_ms } => (STATUS_RETRY, *due_ms),
                HeldStatus::Parked { at_ms, .. } => (STATUS_PARKED, *at_ms),
                HeldStatus::Ahead => (STATUS_AHEAD, 0),
            };
            let reason = reason_of(h);
            bytes.extend_from_slice(&partition.to_le_bytes());
            bytes.extend_from_slice(&[status, 0]);
            bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&h.attempts.to_le_bytes());
            bytes.extend_from_slice(&(reason.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&h.offset.to_le_bytes());
            bytes.extend_from_slice(&h.version.to_le_bytes());
            bytes.extend_from_slice(&ms.to_le_bytes());
            bytes.extend_from_slice(&h.ahead.to_le_bytes());
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(reason.as_bytes());
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
        let held_at = HEADER_LEN + 8 * partitions as usize;
        if read_u32(bytes, 4) != partitions || bytes.len() < held_at + 4 {
            return Err(damaged("a group record of another partition count"));
        }
        let mut cursors = Cursors::new(partitions);
        for p in 0..partitions as usize {
            cursors.offsets[p] = read_u64(bytes, HEADER_LEN + 8 * p);
        }
        let count = read_u32(bytes, held_at);
        let mut at = held_at + 4;
        let mut previous: Option<(u32, &[u8])> = None;
        for _ in 0..count {
            if bytes.len() - at < HELD_HEADER_LEN {
                return Err(damaged("a group record's held key is cut short"));
            }
            let partition = read_u32(bytes, at);
            let status = bytes[at + 4];
            let key_len = read_u16(bytes, at + 6) as usize;
            let attempts = read_u32(bytes, at + 8);
            let reason_len = read_u32(bytes, at + 12) as usize;
            let offset = read_u64(bytes, at + 16);
            let version = read_u64(bytes, at + 24);
            let ms = read_u64(bytes, at + 32);
            let ahead = read_u64(bytes, at + 40);
            let body = at + HELD_HEADER_LEN;
            if partition >= partitions
                || bytes[at + 5] != 0
                || key_len == 0
                || reason_len > REASON_BYTES_MAX
                || bytes.len() - body < key_len + reason_len
            {
                return Err(damaged("a group record's held key is malformed"));
            }
            let key = &bytes[body..body + key_len];
            if previous.is_some_and(|p| p >= (partition, key)) {
                return Err(damaged("a group record's held keys are out of order"));
            }
            previous = Some((partition, key));
            let key = key.to_vec();
            let reason = std::str::from_utf8(&bytes[body + key_len..body + key_len + reason_len])
                .map_err(|_| damaged("a group record's reason is not UTF-8"))?;
            let status = match (status, reason_len) {
                (STATUS_RETRY, 0) => HeldStatus::Retry { due_ms: ms },
                (STATUS_PARKED, _) => HeldStatus::Parked {
                    at_ms: ms,
                    reason: reason.to_owned(),
                },
                (STATUS_AHEAD, 0) if ms == 0 && attempts == 0 && ahead == offset => {
                    HeldStatus::Ahead
                }
                _ => return Err(damaged("a group record's held key has an unknown status")),
            };
            let held = Held {
                offset,
                version,
                attempts,
                ahead,
                status,
            };
            if cursors.held_mut(partition).insert(key, held).is_some() {
                return Err(damaged("a group record holds one key twice"));
            }
            at = body + key_len + reason_len;
        }
        if at != bytes.len() {
            return Err(damaged("a group record has bytes after its held keys"));
        }
        Ok(cursors)
    }
}

fn reason_of(held: &Held) -> &str {
    match &held.status {
        HeldStatus::Parked { reason, .. } => reason,
        HeldStatus::Retry { .. } | HeldStatus::Ahead => "",
    }
}

/// `reason` cut to at most [`REASON_BYTES_MAX`] bytes, at a character boundary.
pub(crate) fn cut_reason(reason: &str) -> String {
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
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
    Ok(load_record(partition, key, partitions)?.map_or_else(|| Cursors::new(partitions), |r| r.0))
}

/// A group's last record, if it has one: its cursors, and whether it says the group was
/// deleted.
pub(crate) fn load_record(
    partition: &Partition,
    key: &[u8],
    partitions: u32,
) -> Result<Option<(Cursors, bool)>> {
    match last_frame(partition, key)? {
        Some(found) => {
            let payload = last_record(partition, &found)?.payload;
            let cursors = Cursors::decode(&payload, partitions)?;
            Ok(Some((cursors, is_deleted(&payload))))
        }
        None => Ok(None),
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
        cursors.held_mut(1).insert(
            b"k1".to_vec(),
            Held {
                offset: 3,
                version: 2,
                attempts: 1,
                ahead: 9,
                status: HeldStatus::Retry { due_ms: 99 },
            },
        );
        cursors.held_mut(1).insert(
            b"k2".to_vec(),
            Held {
                offset: 4,
                version: 0,
                attempts: 5,
                ahead: 0,
                status: HeldStatus::Parked {
                    at_ms: 100,
                    reason: "bad ✓".into(),
                },
            },
        );
        cursors.held_mut(1).insert(
            b"k0".to_vec(),
            Held {
                offset: 2,
                version: 7,
                attempts: 0,
                ahead: 2,
                status: HeldStatus::Ahead,
            },
        );
        assert_eq!(
            cursors.watermark(1),
            3,
            "a key only delivered ahead needs nothing"
        );
        let bytes = cursors.encode();
        assert_eq!(bytes.len(), cursors.encoded_len());
        assert_eq!(Cursors::decode(&bytes, 3).unwrap(), cursors);
        assert!(Cursors::decode(&bytes, 4).is_err());
        for len in 0..bytes.len() {
            assert!(Cursors::decode(&bytes[..len], 3).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Cursors::decode(&longer, 3).is_err());
        let mut kind = bytes.clone();
        kind[0] = 3;
        assert!(Cursors::decode(&kind, 3).is_err());
        let deleted = Cursors::encode_deleted(3);
        assert!(is_deleted(&deleted) && !is_deleted(&bytes));
        assert_eq!(Cursors::decode(&deleted, 3).unwrap(), Cursors::new(3));
        assert_eq!(cut_reason(&"✓".repeat(1000)).len(), 1023);
    }
}
