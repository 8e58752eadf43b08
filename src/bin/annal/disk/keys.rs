//! The key and id table of a segment (`.keys`, `docs/format.md` "Key table file").

use super::bytes::{check_header, u128_at, u32_at, u64_at};
use super::Damage;

pub const TABLE_HEADER_LEN: usize = 64;
const TABLE_MAGIC: &[u8; 8] = b"ANNALKEY";
const HASH_KIND_OFFSET: usize = 12;
pub const BASE_OFFSET_OFFSET: usize = 16;
pub const END_OFFSET_OFFSET: usize = 24;
const KEY_COUNT_OFFSET: usize = 32;
const ID_COUNT_OFFSET: usize = 36;
const KEY_FILTER_OFFSET: usize = 40;
const ID_FILTER_OFFSET: usize = 44;
pub const BODY_CRC_OFFSET: usize = 48;
pub const SEGMENT_CRC_OFFSET: usize = 52;
pub const END_POSITION_OFFSET: usize = 56;
const KEY_ENTRY_LEN: usize = 24;
const ID_ENTRY_LEN: usize = 24;
/// Hash kind 1 makes every key hash to 0: an engine test hook.
const HASH_KIND_COLLIDING: u32 = 1;

/// One frame of a key; `at` is the entry's byte position in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub at: u64,
    pub hash: u64,
    pub base_version: u64,
    pub position: u64,
    pub count: u32,
}

/// One event with an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdEntry {
    pub at: u64,
    pub id: u128,
    pub position: u64,
    pub index: u32,
}

/// A table whose header, length and body checksum hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTable {
    pub hash_kind: u32,
    pub base_offset: u64,
    pub end_offset: u64,
    pub segment_crc: u32,
    pub end_position: u64,
    pub key_filter_words: u32,
    pub id_filter_words: u32,
    pub keys: Vec<KeyEntry>,
    pub ids: Vec<IdEntry>,
}

impl KeyTable {
    /// Whether entries hash keys with `annal::key_hash` (else every key hashes to 0).
    pub fn standard_hash(&self) -> bool {
        self.hash_kind != HASH_KIND_COLLIDING
    }
}

/// Decodes a table and checks what can be checked without its segment.
pub fn decode(bytes: &[u8]) -> Result<KeyTable, Damage> {
    check_header(bytes, TABLE_HEADER_LEN, TABLE_MAGIC, "key table")?;
    let hash_kind = u32_at(bytes, HASH_KIND_OFFSET);
    if hash_kind > HASH_KIND_COLLIDING {
        return Err(Damage::at(
            HASH_KIND_OFFSET as u64,
            format!("unknown hash kind {hash_kind}"),
        ));
    }
    let key_count = u64::from(u32_at(bytes, KEY_COUNT_OFFSET));
    let id_count = u64::from(u32_at(bytes, ID_COUNT_OFFSET));
    let key_filter_words = u32_at(bytes, KEY_FILTER_OFFSET);
    let id_filter_words = u32_at(bytes, ID_FILTER_OFFSET);
    let expected_len = TABLE_HEADER_LEN as u64
        + 8 * (u64::from(key_filter_words) + u64::from(id_filter_words))
        + KEY_ENTRY_LEN as u64 * key_count
        + ID_ENTRY_LEN as u64 * id_count;
    if expected_len != bytes.len() as u64 {
        return Err(Damage::at(
            KEY_COUNT_OFFSET as u64,
            format!(
                "the header's counts make a file of {expected_len} bytes; it has {}",
                bytes.len()
            ),
        ));
    }
    if crc32fast::hash(&bytes[TABLE_HEADER_LEN..]) != u32_at(bytes, BODY_CRC_OFFSET) {
        return Err(Damage::at(
            BODY_CRC_OFFSET as u64,
            "key table body checksum mismatch",
        ));
    }
    let entries_start =
        TABLE_HEADER_LEN + 8 * (key_filter_words as usize + id_filter_words as usize);
    let keys = (0..key_count as usize)
        .map(|i| {
            let at = entries_start + i * KEY_ENTRY_LEN;
            KeyEntry {
                at: at as u64,
                hash: u64_at(bytes, at),
                base_version: u64_at(bytes, at + 8),
                position: u64::from(u32_at(bytes, at + 16)),
                count: u32_at(bytes, at + 20),
            }
        })
        .collect();
    let ids_start = entries_start + KEY_ENTRY_LEN * key_count as usize;
    let ids = (0..id_count as usize)
        .map(|i| {
            let at = ids_start + i * ID_ENTRY_LEN;
            IdEntry {
                at: at as u64,
                id: u128_at(bytes, at),
                position: u64::from(u32_at(bytes, at + 16)),
                index: u32_at(bytes, at + 20),
            }
        })
        .collect();
    Ok(KeyTable {
        hash_kind,
        base_offset: u64_at(bytes, BASE_OFFSET_OFFSET),
        end_offset: u64_at(bytes, END_OFFSET_OFFSET),
        segment_crc: u32_at(bytes, SEGMENT_CRC_OFFSET),
        end_position: u64::from(u32_at(bytes, END_POSITION_OFFSET)),
        key_filter_words,
        id_filter_words,
        keys,
        ids,
    })
}
