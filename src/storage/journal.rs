//! The journal file: the bytes of every append, in the one order in which appends become durable,
//! and two checkpoint slots that say from where recovery must replay it.
//!
//! Every write round of the log is one journal record holding the frames of the round, for any
//! partitions; one `fdatasync` of the journal makes the whole round durable, whatever the number
//! of partitions it touched. Frames are then written to their partitions' segment files, which
//! are synced only at checkpoints. A checkpoint records, per partition, how far its segment data
//! is synced; recovery trusts each partition up to its checkpoint and replays the journal from
//! there. The file is reused: once a checkpoint covers the records before some position, the
//! writer wraps around and overwrites them.
//!
//! ```text
//! slot A at 0, slot B at slot_len (slot_len = JOURNAL_ALIGN multiple)
//!   0  [u8; 8]  magic "ANNALCKP"
//!   8  u32      format version
//!  12  u32      partition count
//!  16  u64      checkpoint number (the valid slot with the higher number wins)
//!  24  u64      sequence of the first record to replay
//!  32  u64      byte position of that record in the journal
//!  40  u64      journal index of its first event (its place in the journal's order of events)
//!  48  u64      last timestamp_ms assigned before it
//!  56  u32      reserved, 0
//!  60  u32      CRC-32 of bytes [0, 60) followed by the partition entries
//!  64  partition entries, 24 bytes each:
//!        u64 base offset of the partition's active segment (u64::MAX: no segment yet)
//!        u64 byte position up to which that segment is synced
//!        u64 end offset of the partition at that position
//! records from 2 * slot_len, each starting at a multiple of JOURNAL_ALIGN
//!   0  u32      CRC-32 of bytes [4, 48), then of (partition, frame CRC) of every entry
//!   4  u32      record_len: header plus entries, without the padding
//!   8  u8       magic RECORD_MAGIC
//!   9  u8       flags, 0
//!  10  u16      reserved, 0
//!  12  u32      entry count, at least 1
//!  16  u64      sequence, one more than the previous record's
//!  24  u64      durable_before: every record with a lower sequence was synced before this one
//!               was written
//!  32  u64      journal index of the record's first event
//!  40  u64      epoch: the number of the checkpoint in force when it was written
//!  48  entries: u32 partition, u32 reserved 0, then one frame (`frame.rs`)
//!      zeros up to the next multiple of JOURNAL_ALIGN
//! ```
//!
//! Records start on their own 4 KiB page, so writing a record never rewrites a byte of an earlier
//! (acknowledged) one: a power loss during a write can tear only the record being written.

use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::codec::{self, read_u16, read_u32, read_u64};
use crate::storage::frame::{self, Probe};
use crate::FORMAT_VERSION;

pub const JOURNAL_FILE: &str = "annal.journal";
/// Records start at multiples of this, and the journal grows and wraps in multiples of it.
pub const JOURNAL_ALIGN: u64 = 4096;
pub const SLOT_MAGIC: [u8; 8] = *b"ANNALCKP";
pub const SLOT_CRC_OFFSET: usize = 60;
pub const SLOT_HEADER_LEN: usize = SLOT_CRC_OFFSET + 4;
pub const SLOT_ENTRY_LEN: usize = 24;
/// A partition without a segment yet, in a slot's base offset field.
pub const NO_SEGMENT: u64 = u64::MAX;

pub const RECORD_MAGIC: u8 = 0x4A;
pub const RECORD_CRC_OFFSET: usize = 0;
pub const RECORD_LEN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
pub const RECORD_MAGIC_OFFSET: usize = RECORD_LEN_OFFSET + 4;
pub const RECORD_FLAGS_OFFSET: usize = RECORD_MAGIC_OFFSET + 1;
pub const RECORD_RESERVED_OFFSET: usize = RECORD_FLAGS_OFFSET + 1;
pub const RECORD_COUNT_OFFSET: usize = RECORD_RESERVED_OFFSET + 2;
pub const RECORD_SEQUENCE_OFFSET: usize = RECORD_COUNT_OFFSET + 4;
pub const RECORD_DURABLE_OFFSET: usize = RECORD_SEQUENCE_OFFSET + 8;
pub const RECORD_GLOBAL_OFFSET: usize = RECORD_DURABLE_OFFSET + 8;
pub const RECORD_EPOCH_OFFSET: usize = RECORD_GLOBAL_OFFSET + 8;
pub const RECORD_HEADER_LEN: usize = RECORD_EPOCH_OFFSET + 8;
/// Partition tag before each frame of a record.
pub const ENTRY_TAG_LEN: usize = 8;

const _: () = assert!(SLOT_HEADER_LEN == 64);
const _: () = assert!(RECORD_HEADER_LEN == 48);
const _: () = assert!(JOURNAL_ALIGN.is_power_of_two());

/// Rounds `position` up to the next record boundary.
pub fn align_up(position: u64) -> u64 {
    position.div_ceil(JOURNAL_ALIGN) * JOURNAL_ALIGN
}

/// Length of one checkpoint slot for `partitions` partitions.
pub fn slot_len(partitions: u32) -> u64 {
    align_up((SLOT_HEADER_LEN + SLOT_ENTRY_LEN * partitions as usize) as u64)
}

/// Where records may start: after both slots.
pub fn records_start(partitions: u32) -> u64 {
    2 * slot_len(partitions)
}

/// One partition's state in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMark {
    /// Base offset of the segment being written, or `NO_SEGMENT`.
    pub segment_base: u64,
    /// Byte position up to which that segment's data is synced (and trusted).
    pub synced_position: u64,
    /// The partition's end offset at that position.
    pub end_offset: u64,
}

impl PartitionMark {
    pub const EMPTY: PartitionMark = PartitionMark {
        segment_base: NO_SEGMENT,
        synced_position: 0,
        end_offset: 0,
    };
}

/// A checkpoint: everything before `journal_sequence` is in the segments and synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub number: u64,
    pub journal_sequence: u64,
    pub journal_position: u64,
    pub journal_index: u64,
    pub last_timestamp_ms: u64,
    pub partitions: Vec<PartitionMark>,
}

impl Checkpoint {
    /// The checkpoint of a new log: nothing written, records start after the slots.
    pub fn initial(partitions: u32) -> Checkpoint {
        Checkpoint {
            number: 0,
            journal_sequence: 0,
            journal_position: records_start(partitions),
            journal_index: 0,
            last_timestamp_ms: 0,
            partitions: vec![PartitionMark::EMPTY; partitions as usize],
        }
    }

    /// The slot this checkpoint goes to: A for even numbers, B for odd ones, so that writing a
    /// checkpoint never touches the previous one.
    pub fn slot_position(&self) -> u64 {
        (self.number % 2) * slot_len(self.partitions.len() as u32)
    }

    pub fn encode(&self) -> Vec<u8> {
        let partitions = self.partitions.len() as u32;
        let mut bytes = vec![0u8; slot_len(partitions) as usize];
        bytes[..8].copy_from_slice(&SLOT_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&partitions.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.number.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.journal_sequence.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.journal_position.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.journal_index.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.last_timestamp_ms.to_le_bytes());
        let mut at = SLOT_HEADER_LEN;
        for mark in &self.partitions {
            bytes[at..at + 8].copy_from_slice(&mark.segment_base.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&mark.synced_position.to_le_bytes());
            bytes[at + 16..at + 24].copy_from_slice(&mark.end_offset.to_le_bytes());
            at += SLOT_ENTRY_LEN;
        }
        let crc = slot_crc(&bytes, at);
        bytes[SLOT_CRC_OFFSET..SLOT_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes one slot. `Ok(None)` for a slot never written (all zeros) or torn; an error for
    /// a whole slot of another version or another partition count.
    pub fn decode(
        bytes: &[u8],
        partitions: u32,
        path: &Path,
        slot_at: u64,
    ) -> Result<Option<Self>> {
        let entries_end = SLOT_HEADER_LEN + SLOT_ENTRY_LEN * partitions as usize;
        if bytes.len() < entries_end || bytes[..8] != SLOT_MAGIC {
            return Ok(None);
        }
        if slot_crc(bytes, entries_end) != read_u32(bytes, SLOT_CRC_OFFSET) {
            return Ok(None);
        }
        let version = read_u32(bytes, codec::VERSION_OFFSET);
        if version != FORMAT_VERSION {
            return Err(Error::IncompatibleFormat {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if read_u32(bytes, 12) != partitions {
            return Err(Error::corrupt(
                path,
                slot_at + 12,
                "checkpoint names another partition count than annal.meta",
            ));
        }
        if read_u32(bytes, 56) != 0 {
            return Err(Error::corrupt(
                path,
                slot_at + 56,
                "non-zero reserved bytes",
            ));
        }
        let marks = (0..partitions as usize)
            .map(|i| {
                let at = SLOT_HEADER_LEN + i * SLOT_ENTRY_LEN;
                PartitionMark {
                    segment_base: read_u64(bytes, at),
                    synced_position: read_u64(bytes, at + 8),
                    end_offset: read_u64(bytes, at + 16),
                }
            })
            .collect();
        Ok(Some(Checkpoint {
            number: read_u64(bytes, 16),
            journal_sequence: read_u64(bytes, 24),
            journal_position: read_u64(bytes, 32),
            journal_index: read_u64(bytes, 40),
            last_timestamp_ms: read_u64(bytes, 48),
            partitions: marks,
        }))
    }
}

fn slot_crc(bytes: &[u8], entries_end: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..SLOT_CRC_OFFSET]);
    hasher.update(&bytes[SLOT_HEADER_LEN..entries_end]);
    hasher.finalize()
}

/// The latest valid checkpoint of the two slots at the start of `journal`.
pub fn latest_checkpoint(journal: &[u8], partitions: u32, path: &Path) -> Result<Checkpoint> {
    let len = slot_len(partitions);
    let a = Checkpoint::decode(journal, partitions, path, 0)?;
    let b = match journal.get(len as usize..) {
        Some(rest) => Checkpoint::decode(rest, partitions, path, len)?,
        None => None,
    };
    match (a, b) {
        (Some(a), Some(b)) => Ok(if b.number > a.number { b } else { a }),
        (Some(one), None) | (None, Some(one)) => Ok(one),
        (None, None) => Err(Error::corrupt(
            path,
            0,
            "neither checkpoint slot of the journal is valid",
        )),
    }
}

/// Writes the header of a record in place: `record` holds `RECORD_HEADER_LEN` bytes of room,
/// then its entries, and nothing else (the padding is added by the caller).
pub fn seal_record(record: &mut [u8], stamp: &RecordStamp) {
    let RecordStamp {
        count,
        sequence,
        durable_before,
        journal_index: global,
        epoch,
    } = *stamp;
    let len = record.len() as u32;
    let header = &mut record[..RECORD_HEADER_LEN];
    header.fill(0);
    header[RECORD_LEN_OFFSET..RECORD_LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
    header[RECORD_MAGIC_OFFSET] = RECORD_MAGIC;
    header[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&count.to_le_bytes());
    header[RECORD_SEQUENCE_OFFSET..RECORD_SEQUENCE_OFFSET + 8]
        .copy_from_slice(&sequence.to_le_bytes());
    header[RECORD_DURABLE_OFFSET..RECORD_DURABLE_OFFSET + 8]
        .copy_from_slice(&durable_before.to_le_bytes());
    header[RECORD_GLOBAL_OFFSET..RECORD_GLOBAL_OFFSET + 8].copy_from_slice(&global.to_le_bytes());
    header[RECORD_EPOCH_OFFSET..RECORD_EPOCH_OFFSET + 8].copy_from_slice(&epoch.to_le_bytes());
    // The checksummed bytes are gathered first: one pass over a contiguous buffer is several
    // times faster than many 4-byte updates.
    let mut covered = Vec::with_capacity(RECORD_HEADER_LEN + count as usize * 8);
    covered.extend_from_slice(&record[RECORD_LEN_OFFSET..RECORD_HEADER_LEN]);
    let mut at = RECORD_HEADER_LEN;
    while at < record.len() {
        let frame_at = at + ENTRY_TAG_LEN;
        covered.extend_from_slice(&record[at..at + 4]);
        covered.extend_from_slice(&record[frame_at..frame_at + 4]);
        at = frame_at + read_u32(record, frame_at + frame::LEN_OFFSET) as usize;
    }
    debug_assert_eq!(at, record.len());
    let crc = crc32fast::hash(&covered);
    record[..4].copy_from_slice(&crc.to_le_bytes());
}

/// The header fields of a record that the writer chooses.
#[derive(Clone, Copy, Debug)]
pub struct RecordStamp {
    pub count: u32,
    pub sequence: u64,
    pub durable_before: u64,
    pub journal_index: u64,
    pub epoch: u64,
}

/// One frame of a record, as found by [`probe_record`]: its partition and its byte range in
/// the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub partition: u32,
    pub info: frame::FrameInfo,
    /// Where the frame starts, relative to the record.
    pub frame_start: usize,
}

/// A record whose header, entries and every frame check out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub len: u32,
    pub sequence: u64,
    pub durable_before: u64,
    pub journal_index: u64,
    pub epoch: u64,
    pub entries: Vec<Entry>,
}

impl RecordInfo {
    /// One past the journal index of the record's last event.
    pub fn journal_end(&self) -> u64 {
        self.journal_index
            + self
                .entries
                .iter()
                .map(|entry| u64::from(entry.info.record_count))
                .sum::<u64>()
    }

    /// Where the next record starts, relative to this one.
    pub fn padded_len(&self) -> u64 {
        align_up(u64::from(self.len))
    }
}

/// What lies at a record boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordProbe {
    Record(RecordInfo),
    /// All zeros: nothing was ever written here.
    Empty,
    /// Something that is not a whole valid record, with the byte (relative to the record start)
    /// where it goes wrong.
    Invalid(usize, &'static str),
}

/// Reads the record at the start of `bytes`. Never panics; every length is checked before use.
/// `partitions` bounds the partition tags.
pub fn probe_record(bytes: &[u8], partitions: u32) -> RecordProbe {
    if bytes.len() < RECORD_HEADER_LEN {
        return if bytes.iter().all(|&b| b == 0) {
            RecordProbe::Empty
        } else {
            RecordProbe::Invalid(0, "truncated journal record header")
        };
    }
    let header = &bytes[..RECORD_HEADER_LEN];
    if header[RECORD_MAGIC_OFFSET] != RECORD_MAGIC {
        if header.iter().all(|&b| b == 0) {
            return RecordProbe::Empty;
        }
        return RecordProbe::Invalid(RECORD_MAGIC_OFFSET, "bad journal record magic");
    }
    let len = read_u32(header, RECORD_LEN_OFFSET) as usize;
    if len < RECORD_HEADER_LEN || len > bytes.len() {
        return RecordProbe::Invalid(RECORD_LEN_OFFSET, "journal record length out of bounds");
    }
    let count = read_u32(header, RECORD_COUNT_OFFSET);
    if count == 0 {
        return RecordProbe::Invalid(RECORD_COUNT_OFFSET, "journal record without entries");
    }
    let record = &bytes[..len];
    let mut covered = Vec::with_capacity(RECORD_HEADER_LEN + (count as usize).min(4096) * 8);
    covered.extend_from_slice(&record[RECORD_LEN_OFFSET..RECORD_HEADER_LEN]);
    let mut entries = Vec::with_capacity((count as usize).min(4096));
    let mut at = RECORD_HEADER_LEN;
    for _ in 0..count {
        let frame_start = at + ENTRY_TAG_LEN;
        if frame_start > len {
            return RecordProbe::Invalid(at, "journal entry extends past its record");
        }
        let partition = read_u32(record, at);
        let Probe::Frame(info) = frame::probe(&record[frame_start..]) else {
            return RecordProbe::Invalid(frame_start, "journal entry holds no valid frame");
        };
        // Padding frames belong to segments only; a journal entry always holds records.
        if info.record_count == 0 {
            return RecordProbe::Invalid(frame_start, "journal entry holds a padding frame");
        }
        if partition >= partitions || read_u32(record, at + 4) != 0 {
            return RecordProbe::Invalid(at, "journal entry names no partition of the log");
        }
        if frame::validate_records(
            &record[frame_start..frame_start + info.frame_len as usize],
            &info,
        )
        .is_err()
        {
            return RecordProbe::Invalid(frame_start, "journal entry's frame has invalid records");
        }
        covered.extend_from_slice(&record[at..at + 4]);
        covered.extend_from_slice(&record[frame_start..frame_start + 4]);
        entries.push(Entry {
            partition,
            info,
            frame_start,
        });
        at = frame_start + info.frame_len as usize;
    }
    if at != len {
        return RecordProbe::Invalid(at, "bytes after the last entry of a journal record");
    }
    if crc32fast::hash(&covered) != read_u32(record, RECORD_CRC_OFFSET) {
        return RecordProbe::Invalid(RECORD_CRC_OFFSET, "journal record checksum mismatch");
    }
    if header[RECORD_FLAGS_OFFSET] != 0 || read_u16(header, RECORD_RESERVED_OFFSET) != 0 {
        return RecordProbe::Invalid(RECORD_FLAGS_OFFSET, "non-zero reserved journal bytes");
    }
    RecordProbe::Record(RecordInfo {
        len: len as u32,
        sequence: read_u64(header, RECORD_SEQUENCE_OFFSET),
        durable_before: read_u64(header, RECORD_DURABLE_OFFSET),
        journal_index: read_u64(header, RECORD_GLOBAL_OFFSET),
        epoch: read_u64(header, RECORD_EPOCH_OFFSET),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Event;
    use crate::storage::frame::{EncodeLimits, FrameStamp};

    const LIMITS: EncodeLimits = EncodeLimits {
        event_bytes_max: 1 << 20,
        batch_events_max: 1000,
        batch_bytes_max: 4 << 20,
    };

    fn record(frames: &[(u32, u64, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD_HEADER_LEN];
        for &(partition, offset, payload) in frames {
            bytes.extend_from_slice(&partition.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            let stamp = FrameStamp {
                base_offset: offset,
                timestamp_ms: 5,
                base_version: offset,
                global_position: offset,
            };
            frame::encode(&mut bytes, stamp, b"key", &[Event::new(payload)], &LIMITS).unwrap();
        }
        let stamp = RecordStamp {
            count: frames.len() as u32,
            sequence: 7,
            durable_before: 6,
            journal_index: 100,
            epoch: 2,
        };
        seal_record(&mut bytes, &stamp);
        bytes
    }

    #[test]
    fn a_record_round_trips_and_any_flip_is_found() {
        let bytes = record(&[(0, 10, b"a"), (3, 0, b"bc")]);
        let RecordProbe::Record(info) = probe_record(&bytes, 4) else {
            panic!("record not accepted")
        };
        assert_eq!(info.sequence, 7);
        assert_eq!(info.durable_before, 6);
        assert_eq!(info.journal_index, 100);
        assert_eq!(info.epoch, 2);
        assert_eq!(info.entries.len(), 2);
        assert_eq!(info.entries[1].partition, 3);
        assert_eq!(info.entries[0].info.base_offset, 10);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(probe_record(&damaged, 4), RecordProbe::Record(_)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(!matches!(
                probe_record(&bytes[..len], 4),
                RecordProbe::Record(_)
            ));
        }
        assert!(matches!(probe_record(&bytes, 3), RecordProbe::Invalid(..)));
        assert_eq!(probe_record(&[0u8; 100], 4), RecordProbe::Empty);
    }

    #[test]
    fn checkpoints_round_trip_and_the_newer_slot_wins() {
        let path = Path::new("j");
        let mut first = Checkpoint::initial(3);
        first.partitions[1] = PartitionMark {
            segment_base: 0,
            synced_position: 4096,
            end_offset: 12,
        };
        let mut journal = vec![0u8; records_start(3) as usize];
        let encoded = first.encode();
        journal[..encoded.len()].copy_from_slice(&encoded);
        assert_eq!(latest_checkpoint(&journal, 3, path).unwrap(), first);
        let mut second = first.clone();
        second.number = 1;
        second.journal_sequence = 9;
        let at = second.slot_position() as usize;
        let encoded = second.encode();
        journal[at..at + encoded.len()].copy_from_slice(&encoded);
        assert_eq!(latest_checkpoint(&journal, 3, path).unwrap(), second);
        // A torn newer slot leaves the older one in force.
        journal[at + 30] ^= 1;
        assert_eq!(latest_checkpoint(&journal, 3, path).unwrap(), first);
        journal[0] ^= 1;
        assert!(latest_checkpoint(&journal, 3, path)
            .unwrap_err()
            .is_corruption());
    }
}
