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
//!  12  u32     reserved, 0
//!  16  u64     base offset of the segment
//!  24  u32     reserved, 0
//!  28  u32     CRC-32 of bytes [0, 28)
//! entries (16 bytes each)
//!   0  u32     offset - base offset
//!   4  u32     byte position of the frame in the segment file
//!   8  u64     timestamp_ms of the frame
//! ```

use crate::storage::codec::{self, read_u32, read_u64, HeaderCheck};

pub const INDEX_MAGIC: [u8; 8] = *b"ANNALIDX";
pub const INDEX_HEADER_CRC_OFFSET: usize = 28;
pub const INDEX_HEADER_LEN: usize = INDEX_HEADER_CRC_OFFSET + 4;
pub const INDEX_ENTRY_LEN: usize = 16;

const _: () = assert!(INDEX_HEADER_LEN == 32);

/// One index entry, with the offset made absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: u64,
}

pub fn encode_header(base_offset: u64) -> [u8; INDEX_HEADER_LEN] {
    let mut header = codec::new_header::<INDEX_HEADER_LEN>(&INDEX_MAGIC);
    header[16..24].copy_from_slice(&base_offset.to_le_bytes());
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
    /// The header is missing, torn or for another segment: nothing in the file is usable.
    BadHeader,
    /// The file's format version is not ours.
    Version(u32),
    /// Entries after the first `usize` are out of order or out of bounds.
    BadEntries(usize),
    /// The file ends inside an entry (a torn append).
    TornTail,
}

/// Parses an index file. Returns the longest prefix of entries that are in strictly increasing
/// offset and position order, inside `[header_len, data_len)`, and what was wrong, if anything.
pub fn decode(
    bytes: &[u8],
    base_offset: u64,
    first_position: u64,
    data_len: u64,
) -> (Vec<IndexEntry>, Option<IndexDamage>) {
    match codec::check_header(bytes, INDEX_HEADER_LEN, &INDEX_MAGIC) {
        HeaderCheck::Valid => {}
        HeaderCheck::Version(found) => return (Vec::new(), Some(IndexDamage::Version(found))),
        HeaderCheck::Short | HeaderCheck::BadMagic | HeaderCheck::BadChecksum => {
            return (Vec::new(), Some(IndexDamage::BadHeader));
        }
    }
    if read_u64(bytes, 16) != base_offset {
        return (Vec::new(), Some(IndexDamage::BadHeader));
    }
    let body = &bytes[INDEX_HEADER_LEN..];
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(body.len() / INDEX_ENTRY_LEN);
    for (i, raw) in body.chunks(INDEX_ENTRY_LEN).enumerate() {
        if raw.len() < INDEX_ENTRY_LEN {
            return (entries, Some(IndexDamage::TornTail));
        }
        // The base offset comes from a file name; a crafted one must not overflow here.
        let Some(offset) = base_offset.checked_add(u64::from(read_u32(raw, 0))) else {
            return (entries, Some(IndexDamage::BadEntries(i)));
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
            return (entries, Some(IndexDamage::BadEntries(i)));
        }
        entries.push(entry);
    }
    (entries, None)
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
    pub interval_bytes: u64,
}

impl IndexPolicy {
    pub fn wants_entry(&self, last_entry_position: Option<u64>, frame_position: u64) -> bool {
        match last_entry_position {
            None => true,
            Some(last) => frame_position >= last + self.interval_bytes,
        }
    }
}

/// Serialises a whole index file.
pub fn encode_file(base_offset: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
    bytes.extend_from_slice(&encode_header(base_offset));
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

    #[test]
    fn round_trip() {
        let bytes = encode_file(100, &entries());
        let (decoded, damage) = decode(&bytes, 100, 64, 1 << 20);
        assert_eq!(damage, None);
        assert_eq!(decoded, entries());
    }

    #[test]
    fn torn_and_disordered_tails_keep_the_valid_prefix() {
        let bytes = encode_file(100, &entries());
        let (decoded, damage) = decode(&bytes[..bytes.len() - 3], 100, 64, 1 << 20);
        assert_eq!(damage, Some(IndexDamage::TornTail));
        assert_eq!(decoded.len(), 4);

        let mut disordered = entries();
        disordered[3].position = 1;
        let bytes = encode_file(100, &disordered);
        let (decoded, damage) = decode(&bytes, 100, 64, 1 << 20);
        assert_eq!(damage, Some(IndexDamage::BadEntries(3)));
        assert_eq!(decoded.len(), 3);

        // An entry past the end of the data is out of bounds.
        let (decoded, damage) = decode(&encode_file(100, &entries()), 100, 64, 8192);
        assert_eq!(damage, Some(IndexDamage::BadEntries(2)));
        assert_eq!(decoded.len(), 2);
    }

    #[test]
    fn garbage_header_yields_nothing() {
        let mut bytes = encode_file(100, &entries());
        bytes[3] ^= 0xff;
        assert_eq!(
            decode(&bytes, 100, 64, 1 << 20).1,
            Some(IndexDamage::BadHeader)
        );
        let bytes = encode_file(99, &entries());
        assert_eq!(
            decode(&bytes, 100, 64, 1 << 20).1,
            Some(IndexDamage::BadHeader)
        );
        assert_eq!(
            decode(&[], 100, 64, 1 << 20).1,
            Some(IndexDamage::BadHeader)
        );
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
