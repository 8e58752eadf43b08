//! The sparse offset index of a segment (`.idx`, `docs/format.md` "Index file").

use super::bytes::{check_header, first_nonzero, u32_at, u64_at};
use super::Damage;

pub const INDEX_HEADER_LEN: usize = 32;
pub const INDEX_ENTRY_LEN: usize = 16;
const INDEX_MAGIC: &[u8; 8] = b"ANNALIDX";
const INTERVAL_OFFSET: usize = 12;
pub const BASE_OFFSET_OFFSET: usize = 16;
const RESERVED_OFFSET: usize = 24;
const CRC_OFFSET: usize = 28;

/// One entry, its offset made absolute; `at` is the entry's byte position in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub at: u64,
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: u64,
}

/// An index file's header and the whole entries after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub interval_bytes: u32,
    pub base_offset: u64,
    pub entries: Vec<IndexEntry>,
    /// The file ends inside an entry: the position where that entry starts.
    pub torn_tail: Option<u64>,
}

/// Decodes an index file; the header must be whole and valid for the entries to be read.
pub fn decode(bytes: &[u8]) -> Result<IndexFile, Damage> {
    check_header(bytes, INDEX_HEADER_LEN, INDEX_MAGIC, "index")?;
    if let Some(position) = first_nonzero(bytes, RESERVED_OFFSET..CRC_OFFSET) {
        return Err(Damage::at(
            position as u64,
            "non-zero reserved byte in the index header",
        ));
    }
    let base_offset = u64_at(bytes, BASE_OFFSET_OFFSET);
    let body = &bytes[INDEX_HEADER_LEN..];
    let whole = body.len() / INDEX_ENTRY_LEN;
    let entries = (0..whole)
        .map(|i| {
            let at = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
            IndexEntry {
                at: at as u64,
                offset: base_offset + u64::from(u32_at(bytes, at)),
                position: u64::from(u32_at(bytes, at + 4)),
                timestamp_ms: u64_at(bytes, at + 8),
            }
        })
        .collect();
    let torn_tail = (!body.len().is_multiple_of(INDEX_ENTRY_LEN))
        .then_some((INDEX_HEADER_LEN + whole * INDEX_ENTRY_LEN) as u64);
    Ok(IndexFile {
        interval_bytes: u32_at(bytes, INTERVAL_OFFSET),
        base_offset,
        entries,
        torn_tail,
    })
}
