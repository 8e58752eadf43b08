//! One segment file: its header, its durable creation, its memory map and its index as readers
//! see them.
//!
//! A segment is named after the offset of its first record (`{base_offset:020}.seg`, index
//! `{base_offset:020}.idx`). It is created under a temporary name, preallocated, synced and only
//! then renamed into place, so a `.seg` file always has a complete header. Its data starts at
//! `SEGMENT_HEADER_LEN`; frames follow back to back; the preallocated rest reads as zeros.
//!
//! ```text
//! header (64 bytes)
//!   0  [u8; 8] magic "ANNALSEG"
//!   8  u32     format version
//!  12  u32     partition
//!  16  u64     base offset
//!  24  u64     created, ms since the Unix epoch
//!  32  [u8;28] reserved, 0; anything else is refused
//!  60  u32     CRC-32 of bytes [0, 60)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::storage::codec::{self, read_u32, read_u64, HeaderDamage};
use crate::storage::frame;
use crate::storage::index::{self, IndexEntry, IndexPolicy};
use crate::storage::io::{self, Faults};
use crate::FORMAT_VERSION;

mod cache;

use cache::Cache;
pub use cache::{set_sealed_segments_idle_max, ScanStart, SegmentPin};

pub const SEGMENT_MAGIC: [u8; 8] = *b"ANNALSEG";
pub const SEGMENT_PARTITION_OFFSET: usize = codec::HEADER_PREFIX_LEN;
pub const SEGMENT_BASE_OFFSET_OFFSET: usize = SEGMENT_PARTITION_OFFSET + 4;
pub const SEGMENT_CREATED_OFFSET: usize = SEGMENT_BASE_OFFSET_OFFSET + 8;
pub const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_CREATED_OFFSET + 8;
pub const SEGMENT_RESERVED_LEN: usize = 28;
pub const SEGMENT_HEADER_CRC_OFFSET: usize = SEGMENT_RESERVED_OFFSET + SEGMENT_RESERVED_LEN;
pub const SEGMENT_HEADER_LEN: usize = SEGMENT_HEADER_CRC_OFFSET + codec::CRC_LEN;
pub const SEGMENT_SUFFIX: &str = "seg";
pub const INDEX_SUFFIX: &str = "idx";
/// The key and id table of a sealed segment (`stream/table.rs`).
pub const TABLE_SUFFIX: &str = "keys";

const _: () = assert!(SEGMENT_RESERVED_OFFSET == 32 && SEGMENT_HEADER_CRC_OFFSET == 60);
const _: () = assert!(SEGMENT_HEADER_LEN == 64);

/// The decoded fixed header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub partition: u32,
    pub base_offset: u64,
    pub created_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut bytes = codec::new_header::<SEGMENT_HEADER_LEN>(&SEGMENT_MAGIC);
        bytes[SEGMENT_PARTITION_OFFSET..SEGMENT_BASE_OFFSET_OFFSET]
            .copy_from_slice(&self.partition.to_le_bytes());
        bytes[SEGMENT_BASE_OFFSET_OFFSET..SEGMENT_CREATED_OFFSET]
            .copy_from_slice(&self.base_offset.to_le_bytes());
        bytes[SEGMENT_CREATED_OFFSET..SEGMENT_RESERVED_OFFSET]
            .copy_from_slice(&self.created_ms.to_le_bytes());
        codec::seal_header(&mut bytes);
        bytes
    }

    /// Decodes and checks a header; damage is reported at the byte that is wrong. The caller
    /// compares partition and base offset with what the file's place and name say.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<SegmentHeader> {
        if let Err(damage) = codec::check_header(bytes, SEGMENT_HEADER_LEN, &SEGMENT_MAGIC) {
            let reason = match damage {
                HeaderDamage::Short { .. } => "segment shorter than its header",
                HeaderDamage::BadMagic => "bad segment magic",
                HeaderDamage::BadChecksum { .. } => "segment header checksum mismatch",
                HeaderDamage::Version(found) => {
                    return Err(Error::IncompatibleFormat {
                        path: path.to_owned(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            };
            return Err(Error::corrupt(path, damage.position(), reason));
        }
        let reserved = SEGMENT_RESERVED_OFFSET..SEGMENT_HEADER_CRC_OFFSET;
        if let Some(position) = codec::first_nonzero(bytes, reserved) {
            return Err(Error::corrupt(
                path,
                position as u64,
                "non-zero reserved byte in the segment header",
            ));
        }
        Ok(SegmentHeader {
            partition: read_u32(bytes, SEGMENT_PARTITION_OFFSET),
            base_offset: read_u64(bytes, SEGMENT_BASE_OFFSET_OFFSET),
            created_ms: read_u64(bytes, SEGMENT_CREATED_OFFSET),
        })
    }
}

pub fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.{SEGMENT_SUFFIX}"))
}

pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.{INDEX_SUFFIX}"))
}

pub fn table_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.{TABLE_SUFFIX}"))
}

/// Parses `{base_offset:020}.{suffix}`.
/// The file holding a partition's start once retention has moved it (`docs/format.md`).
pub fn start_path(dir: &Path) -> PathBuf {
    dir.join(START_FILE)
}

/// The name of a partition's start file.
pub const START_FILE: &str = "start";
const START_FILE_LEN: usize = 16;

/// The bytes of a start file: the start offset, the CRC32 of those 8 bytes, 4 zero bytes.
pub fn encode_start(start: u64) -> [u8; START_FILE_LEN] {
    let mut bytes = [0u8; START_FILE_LEN];
    bytes[..8].copy_from_slice(&start.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..8]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// A partition's recorded start: 0 without a start file.
///
/// # Errors
///
/// [`Error::Corrupt`] for a start file that fails its checks, I/O errors.
pub fn read_start(dir: &Path, faults: &Faults) -> Result<u64> {
    let path = start_path(dir);
    // One byte past a valid file tells a longer one apart.
    let bytes = match io::read_prefix(&path, START_FILE_LEN as u64 + 1, faults) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    if bytes.len() != START_FILE_LEN {
        return Err(Error::corrupt(&path, 0, "a start file of another length"));
    }
    if read_u32(&bytes, 8) != crc32fast::hash(&bytes[..8]) || bytes[12..] != [0; 4] {
        return Err(Error::corrupt(&path, 8, "a start file fails its checksum"));
    }
    Ok(read_u64(&bytes, 0))
}

pub fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A segment as readers share it: where it is, where it ends, and, while it is read, its
/// mapping and index.
///
/// The active segment is always mapped and indexed (the writer maintains both). A sealed
/// segment is mapped and indexed when a reader first needs it, kept while any reader holds a
/// [`SegmentPin`] on it, and then kept only while it is among the `SEALED_SEGMENTS_IDLE_MAX`
/// most recently left idle segments of the process. Records stay valid after that: each holds
/// its own reference to the mapping, which is unmapped with the last of them.
pub struct Segment {
    pub partition: u32,
    pub base_offset: u64,
    pub path: PathBuf,
    pub index_path: PathBuf,
    /// One past the last offset, once sealed; `u64::MAX` while it is being written.
    end_offset: AtomicU64,
    /// One past the last byte readers may touch: while the segment is written, the end of its
    /// visible frames (moved forward by the writer before it publishes them); once sealed, the
    /// end of its data; `u64::MAX` for a segment sealed before this open, which nothing cuts.
    /// Readers never probe past it, so neither a frame being written nor a file cut after a
    /// failed write is ever read.
    end_position: AtomicU64,
    cache: Mutex<Cache>,
}

impl Segment {
    /// A sealed segment found on disk, ending where the next one starts; its header is checked,
    /// and it is mapped and indexed, on first read.
    pub fn sealed(dir: &Path, partition: u32, base_offset: u64, end_offset: u64) -> Segment {
        Segment {
            partition,
            base_offset,
            path: segment_path(dir, base_offset),
            index_path: index_path(dir, base_offset),
            end_offset: AtomicU64::new(end_offset),
            end_position: AtomicU64::new(u64::MAX),
            cache: Mutex::new(Cache::sealed()),
        }
    }

    /// The active segment, with its mapping and the index entries recovery or creation made.
    pub fn active(
        dir: &Path,
        partition: u32,
        base_offset: u64,
        visible_position: u64,
        map: Bytes,
        entries: Vec<IndexEntry>,
    ) -> Segment {
        Segment {
            partition,
            base_offset,
            path: segment_path(dir, base_offset),
            index_path: index_path(dir, base_offset),
            end_offset: AtomicU64::new(u64::MAX),
            end_position: AtomicU64::new(visible_position),
            cache: Mutex::new(Cache::active(map, entries)),
        }
    }

    /// One past the last offset of a sealed segment; `u64::MAX` for the active one.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    fn is_sealed(&self) -> bool {
        self.end_offset() != u64::MAX
    }

    /// Length of the current mapping; 0 while a sealed segment is not mapped.
    pub fn mapped_len(&self) -> usize {
        self.cache.lock().map.as_ref().map_or(0, Bytes::len)
    }

    /// Maps the file anew after it grew past the old mapping (a segment that could not be
    /// preallocated grows with each write). Readers holding the old mapping keep it; they fetch
    /// the new one when they reach its end.
    pub fn remap(&self, file: &std::fs::File) -> Result<()> {
        let map = map_file(file, &self.path)?;
        self.cache.lock().map = Some(map);
        Ok(())
    }

    /// Byte bound for reading: nothing at or past it is visible data.
    pub fn end_position(&self) -> u64 {
        self.end_position.load(Ordering::Acquire)
    }

    /// Moves the readable end of the segment being written forward. Called by the writer before
    /// it publishes the frames up to `position`, so a reader that sees them sees this bound.
    pub fn publish_position(&self, position: u64) {
        debug_assert!(position >= self.end_position());
        self.end_position.store(position, Ordering::Release);
    }

    /// Marks the segment sealed. Called by the writer after the data is synced and before the
    /// file is cut to `end_position` and before the next segment exists, so a reader that sees
    /// the next segment's records also sees this end and never reads past it (the cut would
    /// make such a read fault). Without readers, the segment becomes idle at once: the writer's
    /// mapping and index are then kept only as long as the idle bound allows.
    pub fn seal(self: &Arc<Self>, end_offset: u64, end_position: u64) {
        let mut cache = self.cache.lock();
        // Under the cache lock, so that exactly one of `seal` and the last reader's unpin sees
        // the segment both sealed and without readers, and makes it idle.
        self.end_position.store(end_position, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
        let idle = self.mark_idle(&mut cache);
        drop(cache);
        if let Some(tick) = idle {
            self.enqueue_idle(tick);
        }
    }

    /// Adds entries for frames that just became visible (active segment only).
    pub fn push_index_entries(&self, entries: &[IndexEntry]) {
        if let Some(index) = &mut self.cache.lock().index {
            index.entries.extend_from_slice(entries);
        }
    }

    /// The part of the mapping readers may touch: bounded by the readable end.
    pub fn data<'m>(&self, map: &'m [u8]) -> &'m [u8] {
        let end = usize::try_from(self.end_position()).unwrap_or(usize::MAX);
        &map[..map.len().min(end)]
    }
}

/// Index entries for the valid frames of `map` from its first frame, up to `end_offset` or the
/// first frame that does not check out.
pub fn rebuild_index(
    map: &[u8],
    base_offset: u64,
    end_offset: u64,
    policy: IndexPolicy,
) -> Vec<IndexEntry> {
    scan_index(map, base_offset, end_offset, policy).entries
}

/// What a scan of a segment's chain of valid frames found.
struct Scan {
    entries: Vec<IndexEntry>,
    /// Where the chain stopped.
    stop: u64,
    /// Whether it stopped because it reached `end_offset`, not at an invalid frame.
    reached_end: bool,
}

fn scan_index(map: &[u8], base_offset: u64, end_offset: u64, policy: IndexPolicy) -> Scan {
    let mut entries = Vec::new();
    let mut chain = frame::Chain::new(map, SEGMENT_HEADER_LEN as u64, base_offset);
    index::extend_from_chain(&mut entries, &mut chain, end_offset, policy);
    Scan {
        entries,
        stop: chain.position,
        reached_end: chain.offset >= end_offset,
    }
}

/// Maps a whole file read-only into a `Bytes`.
pub fn map_file(file: &std::fs::File, path: &Path) -> Result<Bytes> {
    map_file_with(file, path, Populate::Lazily)
}

/// Whether a mapping's page table is filled when it is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Populate {
    /// Pages are mapped on first touch (one fault per touched 64 KiB, with fault-around).
    Lazily,
    /// Every page is mapped at once (`MAP_POPULATE`): costs about a millisecond per 32 MiB
    /// from the page cache, and spares a fault to every later first touch. Right for sealed
    /// segments, which key lookups touch at scattered places.
    Now,
}

/// Maps a file as [`map_file`] does, populating the page table when `populate` says so.
pub fn map_file_with(file: &std::fs::File, path: &Path, populate: Populate) -> Result<Bytes> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and this process holds the directory lock, so no other
    // annal process writes the file. Our own writer only writes bytes past the visible end and
    // only truncates below it after the mapping's readers are bounded by the visible end, so no
    // reader ever reads bytes that change or vanish under it. Modification by a foreign process
    // is outside the contract documented in docs/durability.md.
    let mut options = memmap2::MmapOptions::new();
    if populate == Populate::Now {
        options.populate();
    }
    let map = unsafe { options.map(file) }.map_err(|e| Error::io("mmap", path, e))?;
    Ok(Bytes::from_owner(map))
}

/// A newly created segment's files.
pub struct CreatedSegment {
    pub segment: Arc<Segment>,
    pub data: io::File,
}

/// Creates a segment durably: write the header into `<name>.tmp`, preallocate `capacity` bytes,
/// sync, rename into place, create the index file (its header records `index_policy`), sync the
/// directory. After a crash at any point either no `.seg` file exists for `base_offset` or it
/// has a complete header.
pub fn create(
    dir: &Path,
    header: SegmentHeader,
    capacity: u64,
    index_policy: IndexPolicy,
    faults: &Faults,
) -> Result<CreatedSegment> {
    let path = segment_path(dir, header.base_offset);
    let tmp = io::tmp_path(&path);
    // A key table left by an earlier segment of the same base (cut by recovery) describes
    // other bytes: it must not outlive that segment.
    io::remove_file(&table_path(dir, header.base_offset), &io::INDEX_FAULTS)?;
    let result = (|| {
        let mut data = io::File::create_truncate(&tmp, faults)?;
        data.write_all_at(&header.encode(), 0)?;
        // Without reserved blocks (a file system lacking fallocate) the segment grows with its
        // writes; a full disk is then reported by the append that meets it.
        let _: io::Preallocation = data.preallocate(capacity)?;
        data.sync_all()?;
        data.rename_to(&path)?;
        Ok(data)
    })();
    let data = match result {
        Ok(data) => data,
        Err(error) => {
            // Best effort: a leftover .tmp is also removed by the next open.
            let _ = io::remove_file(&tmp, faults);
            return Err(error);
        }
    };
    let index_path = index_path(dir, header.base_offset);
    let index = io::File::create_truncate(&index_path, &io::INDEX_FAULTS)?;
    let index_header = index::encode_header(header.base_offset, index_policy.interval_bytes);
    index.write_all_at(&index_header, 0)?;
    drop(index);
    io::sync_dir(dir, faults)?;
    let map = map_file(data.std(), &path)?;
    let segment = Segment::active(
        dir,
        header.partition,
        header.base_offset,
        SEGMENT_HEADER_LEN as u64,
        map,
        Vec::new(),
    );
    Ok(CreatedSegment {
        segment: Arc::new(segment),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/x");
        let path = segment_path(dir, 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_name(name, SEGMENT_SUFFIX), Some(42));
        assert_eq!(parse_name("42.seg", SEGMENT_SUFFIX), None);
        assert_eq!(
            parse_name("00000000000000000042.seg.tmp", SEGMENT_SUFFIX),
            None
        );
        assert_eq!(parse_name("0000000000000000004x.seg", SEGMENT_SUFFIX), None);
    }

    fn header() -> SegmentHeader {
        SegmentHeader {
            partition: 3,
            base_offset: 77,
            created_ms: 123,
        }
    }

    /// The position of the `Error::Corrupt` that decoding `bytes` fails with.
    #[track_caller]
    fn corrupt_at(bytes: &[u8]) -> u64 {
        match SegmentHeader::decode(bytes, Path::new("s")) {
            Err(Error::Corrupt { position, .. }) => position,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let bytes = header().encode();
        let path = Path::new("s");
        assert_eq!(SegmentHeader::decode(&bytes, path).unwrap(), header());
        for i in 0..SEGMENT_HEADER_LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged, path).is_err(), "byte {i}");
        }
        assert!(SegmentHeader::decode(&bytes[..10], path).is_err());
    }

    #[test]
    fn header_damage_is_reported_at_the_byte_that_is_wrong() {
        let bytes = header().encode();
        let mut magic = bytes;
        magic[5] ^= 1;
        assert_eq!(corrupt_at(&magic), 0);
        let mut field = bytes;
        field[20] ^= 1;
        assert_eq!(corrupt_at(&field), SEGMENT_HEADER_CRC_OFFSET as u64);
        assert_eq!(corrupt_at(&bytes[..10]), 10);
    }

    #[test]
    fn a_non_zero_reserved_byte_with_a_valid_checksum_is_refused_at_its_position() {
        for at in SEGMENT_RESERVED_OFFSET..SEGMENT_HEADER_CRC_OFFSET {
            let mut bytes = header().encode();
            bytes[at] = 0x01;
            codec::seal_header(&mut bytes);
            assert_eq!(corrupt_at(&bytes), at as u64, "byte {at}");
        }
    }
}
