//! The sparse offset index of one segment: one entry per `index_interval_bytes` of segment data,
//! mapping an offset to the byte position of the frame that starts with it.
//!
//! The index is derived data. It is never trusted blindly: entries are checked for order and
//! bounds when loaded, and every lookup lands on a frame whose checksum and base offset are
//! checked again by the reader. A missing or damaged index is rebuilt from the segment.
//!
//! File layout (`docs/format.md`):
//!
//! ```text
//! header (32 bytes)
//!   0  [u8; 8] magic "ANNALIDX"
//!   8  u32     format version
//!  12  u32     index_interval_bytes the entries were placed with; 0 = not recorded
//!  16  u64     base offset of the segment
//!  24  u32     reserved, 0; anything else makes the header unusable
//!  28  u32     CRC-32 of bytes [0, 28)
//! entries (16 bytes each)
//!   0  u32     offset - base offset
//!   4  u32     byte position of the frame in the segment file
//!   8  u64     timestamp_ms of the frame
//! ```

use crate::storage::codec::{self, read_u32, read_u64, HeaderDamage};

pub const INDEX_MAGIC: [u8; 8] = *b"ANNALIDX";
pub const INDEX_INTERVAL_OFFSET: usize = codec::HEADER_PREFIX_LEN;
pub const INDEX_BASE_OFFSET_OFFSET: usize = INDEX_INTERVAL_OFFSET + 4;
pub const INDEX_RESERVED_OFFSET: usize = INDEX_BASE_OFFSET_OFFSET + 8;
pub const INDEX_RESERVED_LEN: usize = 4;
pub const INDEX_HEADER_CRC_OFFSET: usize = INDEX_RESERVED_OFFSET + INDEX_RESERVED_LEN;
pub const INDEX_HEADER_LEN: usize = INDEX_HEADER_CRC_OFFSET + codec::CRC_LEN;
pub const INDEX_ENTRY_LEN: usize = 16;

const _: () = assert!(INDEX_INTERVAL_OFFSET == 12 && INDEX_RESERVED_OFFSET == 24);
const _: () = assert!(INDEX_HEADER_CRC_OFFSET == 28 && INDEX_HEADER_LEN == 32);

/// One index entry, with the offset made absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: u64,
}

/// The header of the index of the segment at `base_offset`, whose entries are placed every
/// `interval_bytes` ([`IndexPolicy`]).
pub fn encode_header(base_offset: u64, interval_bytes: u32) -> [u8; INDEX_HEADER_LEN] {
    let mut header = codec::new_header::<INDEX_HEADER_LEN>(&INDEX_MAGIC);
    header[INDEX_INTERVAL_OFFSET..INDEX_BASE_OFFSET_OFFSET]
        .copy_from_slice(&interval_bytes.to_le_bytes());
    header[INDEX_BASE_OFFSET_OFFSET..INDEX_RESERVED_OFFSET]
        .copy_from_slice(&base_offset.to_le_bytes());
    codec::seal_header(&mut header);
    header
}

/// Appends the on-disk form of `entry` to `buf`. Offsets and positions inside one segment fit
/// in `u32`: positions are bounded by `SEGMENT_BYTES_MAX` and every record takes at least one
/// byte of it.
pub fn encode_entry(buf: &mut Vec<u8>, base_offset: u64, entry: &IndexEntry) {
    debug_assert!(entry.offset >= base_offset && entry.offset - base_offset <= u32::MAX as u64);
    debug_assert!(entry.position <= u32::MAX as u64);
    buf.extend_from_slice(&((entry.offset - base_offset) as u32).to_le_bytes());
    buf.extend_from_slice(&(entry.position as u32).to_le_bytes());
    buf.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
}

/// Why an index file was not (fully) used.
#[derive(Debug, PartialEq, Eq)]
pub enum IndexDamage {
    /// The header is missing, torn, for another segment or has a non-zero reserved byte:
    /// nothing in the file is usable. `position` is the byte that is wrong.
    BadHeader { position: u64, reason: &'static str },
    /// The file's format version is not ours.
    Version(u32),
    /// Entries after the first `usize` are out of order or out of bounds.
    BadEntries(usize),
    /// The file ends inside an entry (a torn append).
    TornTail,
}

/// What [`decode`] found in an index file.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedIndex {
    /// The longest usable prefix of the entries.
    pub entries: Vec<IndexEntry>,
    /// What was wrong, if anything.
    pub damage: Option<IndexDamage>,
    /// The `index_interval_bytes` the entries were placed with, from a usable header that
    /// records it; `None` for a header written before the field existed (0 there).
    pub interval_bytes: Option<u32>,
}

impl DecodedIndex {
    fn unusable(damage: IndexDamage) -> DecodedIndex {
        DecodedIndex {
            entries: Vec::new(),
            damage: Some(damage),
            interval_bytes: None,
        }
    }
}

/// Checks an index header against the segment it belongs to; returns the interval it records.
fn decode_header(bytes: &[u8], base_offset: u64) -> Result<Option<u32>, IndexDamage> {
    if let Err(damage) = codec::check_header(bytes, INDEX_HEADER_LEN, &INDEX_MAGIC) {
        let reason = match damage {
            HeaderDamage::Short { .. } => "index shorter than its header",
            HeaderDamage::BadMagic => "bad index magic",
            HeaderDamage::BadChecksum { .. } => "index header checksum mismatch",
            HeaderDamage::Version(found) => return Err(IndexDamage::Version(found)),
        };
        let position = damage.position();
        return Err(IndexDamage::BadHeader { position, reason });
    }
    if read_u64(bytes, INDEX_BASE_OFFSET_OFFSET) != base_offset {
        return Err(IndexDamage::BadHeader {
            position: INDEX_BASE_OFFSET_OFFSET as u64,
            reason: "index header is for another segment",
        });
    }
    let reserved = INDEX_RESERVED_OFFSET..INDEX_HEADER_CRC_OFFSET;
    if let Some(position) = codec::first_nonzero(bytes, reserved) {
        return Err(IndexDamage::BadHeader {
            position: position as u64,
            reason: "non-zero reserved byte in the index header",
        });
    }
    let interval_bytes = read_u32(bytes, INDEX_INTERVAL_OFFSET);
    Ok((interval_bytes != 0).then_some(interval_bytes))
}

/// Parses an index file. Returns the longest prefix of entries that are in strictly increasing
/// offset and position order, inside `[header_len, data_len)`, what was wrong, if anything, and
/// the interval the header records.
pub fn decode(bytes: &[u8], base_offset: u64, first_position: u64, data_len: u64) -> DecodedIndex {
    let interval_bytes = match decode_header(bytes, base_offset) {
        Ok(interval_bytes) => interval_bytes,
        Err(damage) => return DecodedIndex::unusable(damage),
    };
    let body = &bytes[INDEX_HEADER_LEN..];
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(body.len() / INDEX_ENTRY_LEN);
    let mut damage = None;
    for (i, raw) in body.chunks(INDEX_ENTRY_LEN).enumerate() {
        if raw.len() < INDEX_ENTRY_LEN {
            damage = Some(IndexDamage::TornTail);
            break;
        }
        // The base offset comes from a file name; a crafted one must not overflow here.
        let Some(offset) = base_offset.checked_add(u64::from(read_u32(raw, 0))) else {
            damage = Some(IndexDamage::BadEntries(i));
            break;
        };
        let entry = IndexEntry {
            offset,
            position: u64::from(read_u32(raw, 4)),
            timestamp_ms: read_u64(raw, 8),
        };
        let ordered = match entries.last() {
            Some(previous) => {
                entry.offset > previous.offset
                    && entry.position > previous.position
                    && entry.timestamp_ms >= previous.timestamp_ms
            }
            None => true,
        };
        // Only the segment's first frame can be at its first position, and it holds the base
        // offset: a reader trusts an entry there without checking it further.
        let first_ok = entry.position != first_position || entry.offset == base_offset;
        if !ordered || !first_ok || entry.position < first_position || entry.position >= data_len {
            damage = Some(IndexDamage::BadEntries(i));
            break;
        }
        entries.push(entry);
    }
    DecodedIndex {
        entries,
        damage,
        interval_bytes,
    }
}

/// The entry to start a scan for `offset` from: the last one at or before it.
pub fn lookup(entries: &[IndexEntry], offset: u64) -> Option<&IndexEntry> {
    let after = entries.partition_point(|entry| entry.offset <= offset);
    after.checked_sub(1).map(|i| &entries[i])
}

/// Decides where index entries go while frames are appended or scanned: an entry for the first
/// frame of a segment, then for every frame that starts at least `interval` bytes after the
/// previous entry. Reading any offset then scans at most one interval (plus the frame holding
/// the offset) from its entry.
#[derive(Clone, Copy, Debug)]
pub struct IndexPolicy {
    /// `Options::index_interval_bytes`, recorded in each index header.
    pub interval_bytes: u32,
}

impl IndexPolicy {
    pub fn wants_entry(&self, last_entry_position: Option<u64>, frame_position: u64) -> bool {
        match last_entry_position {
            None => true,
            Some(last) => frame_position >= last + u64::from(self.interval_bytes),
        }
    }
}

/// Adds to `entries` an entry for each frame of `chain` that `policy` wants, until the chain
/// ends or reaches `end_offset`. Padding frames get none: they hold no records, and an entry
/// there would share its offset with the next frame's.
pub fn extend_from_chain(
    entries: &mut Vec<IndexEntry>,
    chain: &mut crate::storage::frame::Chain<'_>,
    end_offset: u64,
    policy: IndexPolicy,
) {
    while chain.offset < end_offset {
        let Some((position, info)) = chain.next() else {
            break;
        };
        let last = entries.last().map(|e| e.position);
        if info.record_count > 0 && policy.wants_entry(last, position) {
            entries.push(IndexEntry {
                offset: info.base_offset,
                position,
                timestamp_ms: info.timestamp_ms,
            });
        }
    }
}

/// Serialises a whole index file whose entries were placed every `interval_bytes`.
pub fn encode_file(base_offset: u64, interval_bytes: u32, entries: &[IndexEntry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
    bytes.extend_from_slice(&encode_header(base_offset, interval_bytes));
    for entry in entries {
        encode_entry(&mut bytes, base_offset, entry);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<IndexEntry> {
        (0..5)
            .map(|i| IndexEntry {
                offset: 100 + i * 10,
                position: 64 + i * 4096,
                timestamp_ms: 1000 + i,
            })
            .collect()
    }

    const INTERVAL: u32 = 4096;

    fn file(base_offset: u64, entries: &[IndexEntry]) -> Vec<u8> {
        encode_file(base_offset, INTERVAL, entries)
    }

    /// Decodes an index of the segment at 100 with 1 MiB of data.
    fn decoded(bytes: &[u8]) -> DecodedIndex {
        decode(bytes, 100, 64, 1 << 20)
    }

    #[test]
    fn round_trip_with_the_interval() {
        let decoded = decoded(&file(100, &entries()));
        assert_eq!(decoded.damage, None);
        assert_eq!(decoded.entries, entries());
        assert_eq!(decoded.interval_bytes, Some(INTERVAL));
    }

    #[test]
    fn an_interval_of_zero_is_an_index_that_does_not_record_it() {
        let decoded = decoded(&encode_file(100, 0, &entries()));
        assert_eq!(decoded.damage, None);
        assert_eq!(decoded.entries, entries());
        assert_eq!(decoded.interval_bytes, None);
    }

    #[test]
    fn torn_and_disordered_tails_keep_the_valid_prefix() {
        let bytes = file(100, &entries());
        let torn = decoded(&bytes[..bytes.len() - 3]);
        assert_eq!(torn.damage, Some(IndexDamage::TornTail));
        assert_eq!(torn.entries.len(), 4);
        assert_eq!(torn.interval_bytes, Some(INTERVAL));

        let mut disordered = entries();
        disordered[3].position = 1;
        let disordered = decoded(&file(100, &disordered));
        assert_eq!(disordered.damage, Some(IndexDamage::BadEntries(3)));
        assert_eq!(disordered.entries.len(), 3);

        // An entry past the end of the data is out of bounds.
        let bounded = decode(&file(100, &entries()), 100, 64, 8192);
        assert_eq!(bounded.damage, Some(IndexDamage::BadEntries(2)));
        assert_eq!(bounded.entries.len(), 2);
    }

    /// The position of the header damage decoding `bytes` finds.
    #[track_caller]
    fn bad_header_at(bytes: &[u8]) -> u64 {
        let decoded = decoded(bytes);
        assert!(decoded.entries.is_empty());
        assert_eq!(decoded.interval_bytes, None);
        match decoded.damage {
            Some(IndexDamage::BadHeader { position, .. }) => position,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_header_yields_nothing_and_names_the_byte() {
        let mut bytes = file(100, &entries());
        bytes[3] ^= 0xff;
        assert_eq!(bad_header_at(&bytes), 0);
        let mut bytes = file(100, &entries());
        bytes[13] ^= 0x01;
        assert_eq!(bad_header_at(&bytes), INDEX_HEADER_CRC_OFFSET as u64);
        assert_eq!(bad_header_at(&file(99, &entries())), 16);
        assert_eq!(bad_header_at(&[]), 0);
        assert_eq!(bad_header_at(&file(100, &[])[..20]), 20);
    }

    #[test]
    fn a_non_zero_reserved_byte_with_a_valid_checksum_makes_the_header_unusable() {
        for at in INDEX_RESERVED_OFFSET..INDEX_HEADER_CRC_OFFSET {
            let mut bytes = file(100, &entries());
            bytes[at] = 0x01;
            codec::seal_header(&mut bytes[..INDEX_HEADER_LEN]);
            assert_eq!(bad_header_at(&bytes), at as u64, "byte {at}");
        }
    }

    #[test]
    fn another_version_is_reported_as_such() {
        let mut bytes = file(100, &entries());
        bytes[codec::VERSION_OFFSET] = 9;
        codec::seal_header(&mut bytes[..INDEX_HEADER_LEN]);
        let decoded = decoded(&bytes);
        assert_eq!(decoded.damage, Some(IndexDamage::Version(9)));
        assert!(decoded.entries.is_empty());
    }

    #[test]
    fn lookup_finds_the_last_entry_at_or_before() {
        let entries = entries();
        assert_eq!(lookup(&entries, 99), None);
        assert_eq!(lookup(&entries, 100).unwrap().offset, 100);
        assert_eq!(lookup(&entries, 109).unwrap().offset, 100);
        assert_eq!(lookup(&entries, 110).unwrap().offset, 110);
        assert_eq!(lookup(&entries, 10_000).unwrap().offset, 140);
    }
}
