//! The key and id table of one segment: for every frame, its key's hash, first version and
//! byte position; for every event with an id, the id and where the event is. Sorted, with a
//! Bloom filter each, so that one key's frames or one id are found with a few bit tests and a
//! binary search instead of a scan.
//!
//! A table is derived data. It is written once for a sealed segment (when first needed) and
//! never edited; it is trusted only after its checksums, its bounds and its order are checked,
//! and every frame it points at is checked again (checksum, version, key) before it is used. A
//! missing, damaged or lying table is rebuilt from its segment.
//!
//! File layout (`<base offset>.keys`, `docs/format.md`):
//!
//! ```text
//! header (64 bytes)
//!   0  [u8; 8] magic "ANNALKEY"
//!   8  u32     format version
//!  12  u32     hash kind: 0 = key_hash; 1 = every key hashes to 0 (a test hook)
//!  16  u64     base offset of the segment
//!  24  u64     end offset: one past the last record the table covers (for a sealed segment,
//!              its end; for the segment being written, where the table was written)
//!  32  u32     key entry count
//!  36  u32     id entry count
//!  40  u32     key filter words
//!  44  u32     id filter words
//!  48  u32     CRC-32 of the body
//!  52  u32     CRC-32 field of the segment's header (bytes 60..64 of the segment file): ties
//!              the table to one segment file (partition, base offset, creation time)
//!  56  u32     end position: where the frames the table covers end in the segment file
//!  60  u32     CRC-32 of bytes [0, 60)
//! body
//!      key filter: u64 words      Bloom filter of the key hashes
//!      id filter: u64 words       Bloom filter of the folded ids
//!      key entries (24 bytes)     u64 key hash, u64 base version, u32 position, u32 count;
//!                                 sorted by (hash, base version)
//!      id entries (24 bytes)      u128 id, u32 position, u32 record index; sorted by id
//! ```

use crate::storage::codec::{self, read_u32, read_u64};
use crate::stream::bloom;

pub const TABLE_MAGIC: [u8; 8] = *b"ANNALKEY";
pub const HASH_KIND_OFFSET: usize = codec::HEADER_PREFIX_LEN;
pub const BASE_OFFSET_OFFSET: usize = HASH_KIND_OFFSET + 4;
pub const END_OFFSET_OFFSET: usize = BASE_OFFSET_OFFSET + 8;
pub const KEY_COUNT_OFFSET: usize = END_OFFSET_OFFSET + 8;
pub const ID_COUNT_OFFSET: usize = KEY_COUNT_OFFSET + 4;
pub const KEY_FILTER_OFFSET: usize = ID_COUNT_OFFSET + 4;
pub const ID_FILTER_OFFSET: usize = KEY_FILTER_OFFSET + 4;
pub const BODY_CRC_OFFSET: usize = ID_FILTER_OFFSET + 4;
pub const SEGMENT_CRC_OFFSET: usize = BODY_CRC_OFFSET + 4;
pub const END_POSITION_OFFSET: usize = SEGMENT_CRC_OFFSET + 4;
pub const HEADER_CRC_OFFSET: usize = END_POSITION_OFFSET + 4;
pub const TABLE_HEADER_LEN: usize = HEADER_CRC_OFFSET + codec::CRC_LEN;
pub const KEY_ENTRY_LEN: usize = 24;
pub const ID_ENTRY_LEN: usize = 24;

const _: () = assert!(HASH_KIND_OFFSET == 12 && END_OFFSET_OFFSET == 24);
const _: () =
    assert!(BODY_CRC_OFFSET == 48 && SEGMENT_CRC_OFFSET == 52 && END_POSITION_OFFSET == 56);
const _: () = assert!(HEADER_CRC_OFFSET == 60);
const _: () = assert!(TABLE_HEADER_LEN == 64);

/// Which hash a table's key entries use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    Standard,
    /// Every key hashes to 0: the forced-collision test hook.
    Colliding,
}

impl HashKind {
    pub fn hash(self, key: &[u8]) -> u64 {
        match self {
            HashKind::Standard => crate::storage::hash::key_hash(key),
            HashKind::Colliding => 0,
        }
    }

    fn code(self) -> u32 {
        match self {
            HashKind::Standard => 0,
            HashKind::Colliding => 1,
        }
    }
}

/// One frame of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub hash: u64,
    pub base_version: u64,
    /// Byte position of the frame in the segment file.
    pub position: u32,
    pub count: u32,
}

/// One event with an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdEntry {
    pub id: u128,
    /// Byte position of the event's frame in the segment file.
    pub position: u32,
    /// Which record of the frame it is.
    pub index: u32,
}

/// What a table is for: the segment it describes, how far, and the hash it must use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFor {
    pub base_offset: u64,
    /// The checksum field of the segment's header: which segment file, exactly.
    pub segment_crc: u32,
    /// One past the last record covered.
    pub end_offset: u64,
    /// Where the covered frames end in the segment file: no entry points at or past it.
    pub end_position: u64,
    pub hash_kind: HashKind,
}

/// Encodes a table of `keys` and `ids` (sorted here) for the segment `of`.
pub fn encode(of: &TableFor, keys: &mut [KeyEntry], ids: &mut [IdEntry]) -> Vec<u8> {
    keys.sort_unstable_by_key(|e| (e.hash, e.base_version));
    ids.sort_unstable_by_key(|e| e.id);
    let key_words = bloom::words_for(keys.len() as u64);
    let id_words = if ids.is_empty() {
        0
    } else {
        bloom::words_for(ids.len() as u64)
    };
    let mut key_filter = vec![0u64; key_words as usize];
    for entry in keys.iter() {
        bloom::insert(&mut key_filter, entry.hash);
    }
    let mut id_filter = vec![0u64; id_words as usize];
    for entry in ids.iter() {
        bloom::insert(&mut id_filter, bloom::id_hash(entry.id));
    }
    let body_len =
        (key_words + id_words) as usize * 8 + keys.len() * KEY_ENTRY_LEN + ids.len() * ID_ENTRY_LEN;
    let mut bytes = Vec::with_capacity(TABLE_HEADER_LEN + body_len);
    bytes.resize(TABLE_HEADER_LEN, 0);
    for word in key_filter.iter().chain(&id_filter) {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    for entry in keys.iter() {
        bytes.extend_from_slice(&entry.hash.to_le_bytes());
        bytes.extend_from_slice(&entry.base_version.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
        bytes.extend_from_slice(&entry.count.to_le_bytes());
    }
    for entry in ids.iter() {
        bytes.extend_from_slice(&entry.id.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
        bytes.extend_from_slice(&entry.index.to_le_bytes());
    }
    let body_crc = crc32fast::hash(&bytes[TABLE_HEADER_LEN..]);
    let mut header = codec::new_header::<TABLE_HEADER_LEN>(&TABLE_MAGIC);
    put_u32(&mut header, HASH_KIND_OFFSET, of.hash_kind.code());
    header[BASE_OFFSET_OFFSET..END_OFFSET_OFFSET].copy_from_slice(&of.base_offset.to_le_bytes());
    header[END_OFFSET_OFFSET..KEY_COUNT_OFFSET].copy_from_slice(&of.end_offset.to_le_bytes());
    put_u32(&mut header, KEY_COUNT_OFFSET, keys.len() as u32);
    put_u32(&mut header, ID_COUNT_OFFSET, ids.len() as u32);
    put_u32(&mut header, KEY_FILTER_OFFSET, key_words as u32);
    put_u32(&mut header, ID_FILTER_OFFSET, id_words as u32);
    put_u32(&mut header, BODY_CRC_OFFSET, body_crc);
    put_u32(&mut header, SEGMENT_CRC_OFFSET, of.segment_crc);
    // Positions inside a segment fit in u32: segments are at most SEGMENT_BYTES_MAX long.
    put_u32(&mut header, END_POSITION_OFFSET, of.end_position as u32);
    codec::seal_header(&mut header);
    bytes[..TABLE_HEADER_LEN].copy_from_slice(&header);
    bytes
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A checked table: every later read stays inside the ranges checked here.
#[derive(Clone, Debug)]
pub struct Table {
    bytes: bytes::Bytes,
    key_filter: std::ops::Range<usize>,
    id_filter: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    ids: std::ops::Range<usize>,
    of: TableFor,
}

/// The header's description of a table, if the header checks out (magic, checksum, version,
/// known hash kind). Recovery reads it to decide whether a table may stay.
pub fn read_header(bytes: &[u8]) -> Option<TableFor> {
    codec::check_header(bytes, TABLE_HEADER_LEN, &TABLE_MAGIC).ok()?;
    let h = &bytes[..TABLE_HEADER_LEN];
    let hash_kind = match read_u32(h, HASH_KIND_OFFSET) {
        0 => HashKind::Standard,
        1 => HashKind::Colliding,
        _ => return None,
    };
    Some(TableFor {
        base_offset: read_u64(h, BASE_OFFSET_OFFSET),
        segment_crc: read_u32(h, SEGMENT_CRC_OFFSET),
        end_offset: read_u64(h, END_OFFSET_OFFSET),
        end_position: u64::from(read_u32(h, END_POSITION_OFFSET)),
        hash_kind,
    })
}

/// Which segment file a table must describe, and with which hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentId {
    pub base_offset: u64,
    pub segment_crc: u32,
    pub hash_kind: HashKind,
}

impl Table {
    /// Checks `bytes` as a table of the segment at `base_offset`, with `hash_kind`, covering
    /// at most `end_offset` and `data_end` (the segment's readable data): header, checksums,
    /// sizes, order and bounds. `Err` says what is wrong; the caller rebuilds the table from
    /// the segment. What the table covers is [`Table::covers`].
    pub fn parse(
        bytes: bytes::Bytes,
        segment: &SegmentId,
        end_offset: u64,
        data_end: u64,
    ) -> Result<Table, &'static str> {
        let of = read_header(&bytes).ok_or("table header damaged or of another version")?;
        if of.hash_kind != segment.hash_kind {
            return Err("table built with another key hash");
        }
        if of.base_offset != segment.base_offset || of.segment_crc != segment.segment_crc {
            return Err("table of another segment");
        }
        if of.end_offset > end_offset
            || of.end_position > data_end
            || of.end_offset < segment.base_offset
        {
            return Err("table covers more than the segment holds");
        }
        let h = &bytes[..TABLE_HEADER_LEN];
        let key_count = read_u32(h, KEY_COUNT_OFFSET) as usize;
        let id_count = read_u32(h, ID_COUNT_OFFSET) as usize;
        let key_words = read_u32(h, KEY_FILTER_OFFSET) as usize;
        let id_words = read_u32(h, ID_FILTER_OFFSET) as usize;
        // Computed in u64: the counts come from the file, and no product may overflow.
        let body_len = (key_words as u64 + id_words as u64) * 8
            + key_count as u64 * KEY_ENTRY_LEN as u64
            + id_count as u64 * ID_ENTRY_LEN as u64;
        if TABLE_HEADER_LEN as u64 + body_len != bytes.len() as u64 {
            return Err("table length does not match its header");
        }
        if crc32fast::hash(&bytes[TABLE_HEADER_LEN..]) != read_u32(h, BODY_CRC_OFFSET) {
            return Err("table body checksum mismatch");
        }
        let key_filter = TABLE_HEADER_LEN..TABLE_HEADER_LEN + key_words * 8;
        let id_filter = key_filter.end..key_filter.end + id_words * 8;
        let keys = id_filter.end..id_filter.end + key_count * KEY_ENTRY_LEN;
        let ids = keys.end..keys.end + id_count * ID_ENTRY_LEN;
        let table = Table {
            bytes,
            key_filter,
            id_filter,
            keys,
            ids,
            of,
        };
        table.check_entries()?;
        Ok(table)
    }

    /// The segment, records and bytes the table covers.
    pub fn covers(&self) -> &TableFor {
        &self.of
    }

    /// Every key entry, in table order.
    pub fn all_key_entries(&self) -> impl Iterator<Item = KeyEntry> + '_ {
        (0..self.key_count()).map(|i| self.key_entry(i))
    }

    /// Every id entry, in table order.
    pub fn all_id_entries(&self) -> impl Iterator<Item = IdEntry> + '_ {
        (0..self.id_count()).map(|i| self.id_entry(i))
    }

    fn check_entries(&self) -> Result<(), &'static str> {
        let in_bounds = |position: u32| u64::from(position) < self.of.end_position;
        let mut last = None;
        for i in 0..self.key_count() {
            let entry = self.key_entry(i);
            let order = (entry.hash, entry.base_version);
            if last.is_some_and(|last| last > order) || !in_bounds(entry.position) {
                return Err("key entries out of order or out of bounds");
            }
            last = Some(order);
        }
        let mut last = None;
        for i in 0..self.id_count() {
            let entry = self.id_entry(i);
            if last.is_some_and(|last| last >= entry.id) || !in_bounds(entry.position) {
                return Err("id entries out of order or out of bounds");
            }
            last = Some(entry.id);
        }
        Ok(())
    }

    fn key_count(&self) -> usize {
        self.keys.len() / KEY_ENTRY_LEN
    }

    fn id_count(&self) -> usize {
        self.ids.len() / ID_ENTRY_LEN
    }

    fn key_entry(&self, i: usize) -> KeyEntry {
        let at = self.keys.start + i * KEY_ENTRY_LEN;
        KeyEntry {
            hash: read_u64(&self.bytes, at),
            base_version: read_u64(&self.bytes, at + 8),
            position: read_u32(&self.bytes, at + 16),
            count: read_u32(&self.bytes, at + 20),
        }
    }

    fn id_entry(&self, i: usize) -> IdEntry {
        let at = self.ids.start + i * ID_ENTRY_LEN;
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.bytes[at..at + 16]);
        IdEntry {
            id: u128::from_le_bytes(id),
            position: read_u32(&self.bytes, at + 16),
            index: read_u32(&self.bytes, at + 20),
        }
    }

    /// The frames whose key hashes to `hash`, in version order (other keys with the same hash
    /// included: the caller checks the key of each frame).
    pub fn key_entries(&self, hash: u64) -> Vec<KeyEntry> {
        if !bloom::may_contain(&self.bytes[self.key_filter.clone()], hash) {
            return Vec::new();
        }
        let n = self.key_count();
        let (mut low, mut high) = self.bracket(hash, n);
        while low < high {
            let mid = (low + high) / 2;
            if self.key_hash_at(mid) < hash {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        (low..n)
            .map(|i| self.key_entry(i))
            .take_while(|entry| entry.hash == hash)
            .collect()
    }

    /// A range `[low, high)` of entries holding the first entry whose hash is at least `hash`.
    ///
    /// Key hashes are spread evenly over `u64`, so an entry's place is about `hash / 2^64` of
    /// the way through the table: start there and widen the window by doubling until it
    /// brackets the hash. Typically a few probes near each other (one or two page touches)
    /// instead of the 17 scattered ones of a binary search over 100,000 entries. Any order of
    /// hashes (colliding ones included) still gives the right range, only more probes.
    fn bracket(&self, hash: u64, n: usize) -> (usize, usize) {
        if n == 0 {
            return (0, 0);
        }
        let guess = ((u128::from(hash) * n as u128) >> 64) as usize;
        let guess = guess.min(n - 1);
        let mut step = 16;
        if self.key_hash_at(guess) < hash {
            // The entry is after `guess`.
            let mut low = guess + 1;
            loop {
                let probe = low.saturating_add(step).min(n);
                if probe == n || self.key_hash_at(probe) >= hash {
                    return (low, probe);
                }
                low = probe + 1;
                step *= 2;
            }
        }
        // The entry is at or before `guess`.
        let mut high = guess;
        loop {
            let probe = high.saturating_sub(step);
            if probe == 0 || self.key_hash_at(probe - 1) < hash {
                return (probe, high);
            }
            high = probe - 1;
            step *= 2;
        }
    }

    fn key_hash_at(&self, i: usize) -> u64 {
        read_u64(&self.bytes, self.keys.start + i * KEY_ENTRY_LEN)
    }

    /// The event with this id, if the table has it.
    pub fn id_entry_of(&self, id: u128) -> Option<IdEntry> {
        if !bloom::may_contain(&self.bytes[self.id_filter.clone()], bloom::id_hash(id)) {
            return None;
        }
        let (mut low, mut high) = (0, self.id_count());
        while low < high {
            let mid = (low + high) / 2;
            let entry = self.id_entry(mid);
            match entry.id.cmp(&id) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(entry),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OF: TableFor = TableFor {
        base_offset: 100,
        segment_crc: 0xfeed,
        end_offset: 200,
        end_position: 10_000,
        hash_kind: HashKind::Standard,
    };

    fn parse(bytes: bytes::Bytes, of: &TableFor) -> Result<Table, &'static str> {
        let segment = SegmentId {
            base_offset: of.base_offset,
            segment_crc: of.segment_crc,
            hash_kind: of.hash_kind,
        };
        Table::parse(bytes, &segment, of.end_offset, of.end_position)
    }

    fn sample() -> Vec<u8> {
        let mut keys: Vec<KeyEntry> = (0..50u32)
            .map(|i| KeyEntry {
                hash: u64::from(i % 7),
                base_version: u64::from(i / 7),
                position: 64 + i * 100,
                count: 1,
            })
            .collect();
        let mut ids: Vec<IdEntry> = (0..20u32)
            .map(|i| IdEntry {
                id: u128::from(i) << 70 | 5,
                position: 64 + i * 100,
                index: 0,
            })
            .collect();
        encode(&OF, &mut keys, &mut ids)
    }

    #[test]
    fn entries_come_back_by_key_hash_in_version_order_and_by_id() {
        let table = parse(sample().into(), &OF).unwrap();
        let entries = table.key_entries(3);
        assert_eq!(entries.len(), 7);
        assert!(entries
            .windows(2)
            .all(|w| w[0].base_version < w[1].base_version));
        assert!(table.key_entries(1 << 40).is_empty());
        assert_eq!(table.id_entry_of(7u128 << 70 | 5).unwrap().position, 764);
        assert_eq!(table.id_entry_of(7u128 << 70 | 6), None);
    }

    #[test]
    fn the_interpolated_search_finds_what_a_scan_finds() {
        // Spread hashes, clustered hashes and runs of equal hashes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut hashes: Vec<u64> = (0..3_000).map(|_| next()).collect();
        hashes.extend((0..500).map(|i| 1_000 + i / 50));
        hashes.extend([0, 0, 0, u64::MAX, u64::MAX]);
        let mut keys: Vec<KeyEntry> = hashes
            .iter()
            .enumerate()
            .map(|(i, &hash)| KeyEntry {
                hash,
                base_version: i as u64,
                position: 64,
                count: 1,
            })
            .collect();
        let bytes = encode(&OF, &mut keys, &mut []);
        let table = parse(bytes.into(), &OF).unwrap();
        let mut probes = hashes.clone();
        probes.extend((0..2_000).map(|_| next()));
        probes.extend([1, 999, 1_005, u64::MAX - 1]);
        for hash in probes {
            let expected: Vec<u64> = keys
                .iter()
                .filter(|e| e.hash == hash)
                .map(|e| e.base_version)
                .collect();
            let mut found: Vec<u64> = table
                .key_entries(hash)
                .iter()
                .map(|e| e.base_version)
                .collect();
            found.sort_unstable();
            let mut expected = expected;
            expected.sort_unstable();
            assert_eq!(found, expected, "hash {hash:#x}");
        }
    }

    #[test]
    fn every_damaged_or_torn_byte_is_refused() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(parse(bytes[..len].to_vec().into(), &OF).is_err());
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(parse(damaged.into(), &OF).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_table_of_another_segment_or_hash_or_covering_too_much_is_refused() {
        let bytes: bytes::Bytes = sample().into();
        let shorter = TableFor {
            end_offset: 199,
            ..OF
        };
        assert!(parse(bytes.clone(), &shorter).is_err());
        let other = TableFor {
            base_offset: 101,
            ..OF
        };
        assert!(parse(bytes.clone(), &other).is_err());
        let another_file = TableFor {
            segment_crc: 0xbeef,
            ..OF
        };
        assert!(parse(bytes.clone(), &another_file).is_err());
        let colliding = TableFor {
            hash_kind: HashKind::Colliding,
            ..OF
        };
        assert!(parse(bytes.clone(), &colliding).is_err());
        let longer = TableFor {
            end_offset: 300,
            ..OF
        };
        let table = parse(bytes, &longer).unwrap();
        assert_eq!(*table.covers(), OF);
    }
}
