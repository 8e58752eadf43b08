//! The fixed headers: `annal.meta`, the segment header, and the journal's checkpoint slots
//! (`docs/format.md`). Each decoder reports damage at the byte the engine names for it.

use super::bytes::{check_header, first_nonzero, u32_at, u64_at, CRC_LEN};
use super::Damage;

pub const META_LEN: usize = 36;
const META_MAGIC: &[u8; 8] = b"ANNALLOG";
const META_PARTITIONS_OFFSET: usize = 12;
const META_HASH_OFFSET: usize = 16;
const META_RESERVED_OFFSET: usize = 20;
const META_CREATED_OFFSET: usize = 24;
const HASH_FNV1A64_FMIX64: u32 = 1;
const PARTITIONS_MAX: u32 = annal::PARTITIONS_MAX;

/// What `annal.meta` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub partitions: u32,
    pub created_ms: u64,
}

/// Decodes `annal.meta`.
pub fn decode_meta(bytes: &[u8]) -> Result<Meta, Damage> {
    check_header(bytes, META_LEN, META_MAGIC, "metadata")?;
    if bytes.len() > META_LEN {
        return Err(Damage::at(
            META_LEN as u64,
            "bytes after the end of the metadata",
        ));
    }
    let partitions = u32_at(bytes, META_PARTITIONS_OFFSET);
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(Damage::at(
            META_PARTITIONS_OFFSET as u64,
            format!("partition count {partitions} out of range 1..={PARTITIONS_MAX}"),
        ));
    }
    let hash = u32_at(bytes, META_HASH_OFFSET);
    if hash != HASH_FNV1A64_FMIX64 {
        return Err(Damage::at(
            META_HASH_OFFSET as u64,
            format!("unknown key hash algorithm {hash}"),
        ));
    }
    if let Some(position) = first_nonzero(bytes, META_RESERVED_OFFSET..META_CREATED_OFFSET) {
        return Err(Damage::at(
            position as u64,
            "non-zero reserved byte in the metadata",
        ));
    }
    Ok(Meta {
        partitions,
        created_ms: u64_at(bytes, META_CREATED_OFFSET),
    })
}

pub const SEGMENT_HEADER_LEN: usize = 64;
const SEGMENT_MAGIC: &[u8; 8] = b"ANNALSEG";
pub const SEGMENT_PARTITION_OFFSET: usize = 12;
pub const SEGMENT_BASE_OFFSET_OFFSET: usize = 16;
const SEGMENT_CREATED_OFFSET: usize = 24;
const SEGMENT_RESERVED_OFFSET: usize = 32;
pub const SEGMENT_CRC_OFFSET: usize = 60;

const _: () = assert!(SEGMENT_CRC_OFFSET + CRC_LEN == SEGMENT_HEADER_LEN);

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub partition: u32,
    pub base_offset: u64,
    pub created_ms: u64,
    /// The header's CRC field: `.keys` tables name their segment file by it.
    pub crc: u32,
}

pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, Damage> {
    check_header(bytes, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, "segment")?;
    if let Some(position) = first_nonzero(bytes, SEGMENT_RESERVED_OFFSET..SEGMENT_CRC_OFFSET) {
        return Err(Damage::at(
            position as u64,
            "non-zero reserved byte in the segment header",
        ));
    }
    Ok(SegmentHeader {
        partition: u32_at(bytes, SEGMENT_PARTITION_OFFSET),
        base_offset: u64_at(bytes, SEGMENT_BASE_OFFSET_OFFSET),
        created_ms: u64_at(bytes, SEGMENT_CREATED_OFFSET),
        crc: u32_at(bytes, SEGMENT_CRC_OFFSET),
    })
}

const JOURNAL_ALIGN: u64 = 4096;
const SLOT_MAGIC: &[u8; 8] = b"ANNALCKP";
const SLOT_PARTITIONS_OFFSET: usize = 12;
const SLOT_NUMBER_OFFSET: usize = 16;
const SLOT_JOURNAL_INDEX_OFFSET: usize = 40;
const SLOT_RESERVED_OFFSET: usize = 56;
const SLOT_CRC_OFFSET: usize = 60;
const SLOT_HEADER_LEN: usize = 64;
const SLOT_ENTRY_LEN: usize = 24;
/// A partition without a segment, in a checkpoint's segment base field.
pub const NO_SEGMENT: u64 = u64::MAX;

/// Length of one checkpoint slot for `partitions` partitions.
pub fn slot_len(partitions: u32) -> u64 {
    let len = (SLOT_HEADER_LEN + SLOT_ENTRY_LEN * partitions as usize) as u64;
    len.div_ceil(JOURNAL_ALIGN) * JOURNAL_ALIGN
}

/// One partition's mark in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMark {
    /// Base offset of the segment being written at the checkpoint, or [`NO_SEGMENT`].
    pub segment_base: u64,
    /// Byte position up to which that segment's data is synced.
    pub synced_position: u64,
    pub end_offset: u64,
}

/// A valid checkpoint slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub number: u64,
    /// Journal index of the first event after the checkpoint.
    pub journal_index: u64,
    pub marks: Vec<PartitionMark>,
}

/// What one slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Valid(Checkpoint),
    /// Bad magic or checksum: never written, or torn while written. Not damage by itself.
    Unwritten,
    /// A slot whose checksum holds but whose contents are wrong: damage.
    Damaged(Damage),
}

/// The partition count the slot at the start of `bytes` names, if it has a slot's magic.
pub fn slot_partitions(bytes: &[u8]) -> Option<u32> {
    let header = bytes.get(..SLOT_HEADER_LEN)?;
    let partitions = u32_at(header, SLOT_PARTITIONS_OFFSET);
    (&header[..8] == SLOT_MAGIC && (1..=PARTITIONS_MAX).contains(&partitions)).then_some(partitions)
}

/// Decodes the slot at the start of `bytes` (a slot of a journal of `partitions` partitions);
/// damage positions are relative to the slot's start.
pub fn decode_slot(bytes: &[u8], partitions: u32) -> Slot {
    let entries_len = SLOT_ENTRY_LEN * partitions as usize;
    let Some(slot) = bytes.get(..SLOT_HEADER_LEN + entries_len) else {
        return Slot::Unwritten;
    };
    if &slot[..8] != SLOT_MAGIC {
        return Slot::Unwritten;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&slot[..SLOT_CRC_OFFSET]);
    crc.update(&slot[SLOT_HEADER_LEN..]);
    if crc.finalize() != u32_at(slot, SLOT_CRC_OFFSET) {
        return Slot::Unwritten;
    }
    let version = u32_at(slot, 8);
    if version != super::FORMAT_VERSION {
        return Slot::Damaged(Damage::at(
            8,
            format!("checkpoint of format version {version}"),
        ));
    }
    let on_disk = u32_at(slot, SLOT_PARTITIONS_OFFSET);
    if on_disk != partitions {
        return Slot::Damaged(Damage::at(
            SLOT_PARTITIONS_OFFSET as u64,
            format!("checkpoint names {on_disk} partitions, annal.meta {partitions}"),
        ));
    }
    if first_nonzero(slot, SLOT_RESERVED_OFFSET..SLOT_CRC_OFFSET).is_some() {
        return Slot::Damaged(Damage::at(
            SLOT_RESERVED_OFFSET as u64,
            "non-zero reserved field in a checkpoint",
        ));
    }
    let marks = (0..partitions as usize)
        .map(|p| {
            let at = SLOT_HEADER_LEN + p * SLOT_ENTRY_LEN;
            PartitionMark {
                segment_base: u64_at(slot, at),
                synced_position: u64_at(slot, at + 8),
                end_offset: u64_at(slot, at + 16),
            }
        })
        .collect();
    Slot::Valid(Checkpoint {
        number: u64_at(slot, SLOT_NUMBER_OFFSET),
        journal_index: u64_at(slot, SLOT_JOURNAL_INDEX_OFFSET),
        marks,
    })
}
