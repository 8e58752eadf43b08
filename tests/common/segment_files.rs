//! The on-disk layout of a log directory as the tests look at it: where the files of a
//! partition are, the byte layout of segment and index files, walking the frames of a segment,
//! and copying a whole log directory.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bytes before the first frame of a segment file (`src/segment.rs`).
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Where `frame_len` (u32, little-endian) sits in a frame header (`src/frame.rs`); the frame's
/// CRC-32 comes first, at 0.
pub const FRAME_LEN_OFFSET: usize = 4;
/// Where the frame magic byte sits, and its value.
pub const FRAME_MAGIC_OFFSET: usize = 8;
pub const FRAME_MAGIC: u8 = 0xA7;
/// Where the frame's record count (u32, little-endian) sits.
pub const FRAME_COUNT_OFFSET: usize = 12;
/// Index file layout (`src/index.rs`): a 32-byte header, then 16-byte entries of
/// `u32 offset - base, u32 position, u64 timestamp_ms`.
pub const INDEX_HEADER_LEN: usize = 32;
pub const INDEX_ENTRY_LEN: usize = 16;

/// The metadata file, relative to the log directory.
pub const META_FILE: &str = "annal.meta";
/// The first segment of partition 0 and its index, relative to the log directory.
pub const SEGMENT_FILE: &str = "p0000/00000000000000000000.seg";
pub const INDEX_FILE: &str = "p0000/00000000000000000000.idx";

/// The directory of `partition` in the log directory `dir`.
pub fn partition_dir(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("p{partition:04}"))
}

/// The segment file of `partition` that starts at offset `base`.
pub fn segment_path(dir: &Path, partition: u32, base: u64) -> PathBuf {
    partition_dir(dir, partition).join(format!("{base:020}.seg"))
}

/// The index file of the segment of `partition` that starts at offset `base`.
pub fn index_path(dir: &Path, partition: u32, base: u64) -> PathBuf {
    partition_dir(dir, partition).join(format!("{base:020}.idx"))
}

/// The base offsets of the segments of `partition`, in order, from their file names.
/// A partition's directory appears with its first segment: until then it has none.
pub fn segment_bases(dir: &Path, partition: u32) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(partition_dir(dir, partition)) else {
        return Vec::new();
    };
    let mut bases: Vec<u64> = entries
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg").map(|stem| stem.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// The byte ranges of the frames of a segment file, from the end of its header up to the first
/// position that does not hold a frame header (zeros after the last frame).
pub fn frame_ranges(segment: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut position = SEGMENT_HEADER_LEN;
    while position + FRAME_MAGIC_OFFSET < segment.len()
        && segment[position + FRAME_MAGIC_OFFSET] == FRAME_MAGIC
    {
        let len_bytes = &segment[position + FRAME_LEN_OFFSET..position + FRAME_LEN_OFFSET + 4];
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert!(len > 0 && position + len <= segment.len());
        ranges.push(position..position + len);
        position += len;
    }
    ranges
}

/// How many records the frame at `frame` of a segment file holds.
pub fn frame_record_count(segment: &[u8], frame: &Range<usize>) -> u64 {
    let at = frame.start + FRAME_COUNT_OFFSET;
    u64::from(u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()))
}

/// Copies the directory tree `from` to `to` (created if missing) and returns `to`.
pub fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
    to.to_path_buf()
}

/// The journal file, relative to the log directory (`docs/format.md`).
pub const JOURNAL_FILE: &str = "annal.journal";
/// Records start on 4 KiB pages.
pub const JOURNAL_PAGE: usize = 4096;
/// Where the journal's magic byte of a record sits, and its value.
pub const RECORD_MAGIC_OFFSET: usize = 8;
pub const RECORD_MAGIC: u8 = 0x4A;

/// Where the records of a journal start: after two checkpoint slots of
/// `64 + 24 * partitions` bytes, each rounded up to a page.
pub fn journal_records_start(partitions: u32) -> usize {
    2 * (64 + 24 * partitions as usize).next_multiple_of(JOURNAL_PAGE)
}

/// The byte ranges of the records of a journal, from the start of its records area up to the
/// first page that does not start with a record header (the records of the latest lap only).
pub fn journal_records(journal: &[u8], partitions: u32) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut position = journal_records_start(partitions);
    while position + RECORD_MAGIC_OFFSET < journal.len()
        && journal[position + RECORD_MAGIC_OFFSET] == RECORD_MAGIC
    {
        let len_bytes = &journal[position + 4..position + 8];
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert!(len > 0 && position + len <= journal.len());
        ranges.push(position..position + len);
        position = (position + len).next_multiple_of(JOURNAL_PAGE);
    }
    ranges
}
