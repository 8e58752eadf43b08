//! A pollable walk over one partition's records, from its files: the direct-reading
//! counterpart of `annal::Reader`. It returns `None` where the partition's valid frames end for
//! now, and can be polled again: a writer in another process may append, or roll to a new
//! segment, meanwhile.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::bytes::{u32_at, u64_at};
use super::frame::{self, Probe};
use super::index;
use super::layout::{self, INDEX_SUFFIX, SEGMENT_SUFFIX};
use super::segment::{SegmentFile, DATA_START};
use super::Damage;
use crate::failure::Failure;
use crate::output::Row;

/// Why a walk stopped where it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Zeros or the end of the file: nothing written past here yet.
    Unwritten,
    /// Bytes that are not a whole valid frame continuing the partition: a write in progress,
    /// a write cut by a crash (recovery replays the journal over it), or damage.
    Invalid { path: PathBuf, damage: Damage },
}

struct Current {
    segment: SegmentFile,
    position: u64,
}

pub struct PartitionCursor {
    dir: PathBuf,
    partition: u32,
    current: Option<Current>,
    /// The offset the next frame must hold.
    frame_offset: u64,
    /// Records below this offset are passed over.
    from_offset: u64,
    /// Only frames of this key, when set.
    key: Option<Vec<u8>>,
    pending: VecDeque<Row>,
    stop: Option<Stop>,
}

impl PartitionCursor {
    pub fn new(log_dir: &Path, partition: u32, from_offset: u64) -> PartitionCursor {
        PartitionCursor::in_dir(
            layout::partition_dir(log_dir, partition),
            partition,
            from_offset,
        )
    }

    /// A cursor over the partition whose segments are in `dir` and whose headers name
    /// `partition`: the groups partition (`layout::groups_dir`) is read this way.
    pub fn in_dir(dir: PathBuf, partition: u32, from_offset: u64) -> PartitionCursor {
        PartitionCursor {
            dir,
            partition,
            current: None,
            frame_offset: from_offset,
            from_offset,
            key: None,
            pending: VecDeque::new(),
            stop: None,
        }
    }

    /// Returns only the records of `key`.
    pub fn only_key(mut self, key: &[u8]) -> PartitionCursor {
        self.key = Some(key.to_vec());
        self
    }

    /// A cursor that starts at the segment holding global position `global`: the records before
    /// it in that segment are returned too (the caller passes over them).
    pub fn near_global(log_dir: &Path, partition: u32, global: u64) -> Result<Self, Failure> {
        let dir = layout::partition_dir(log_dir, partition);
        let mut start = 0;
        for base in layout::list_segments(&dir)? {
            let path = layout::segment_file(&dir, base, SEGMENT_SUFFIX);
            let mut segment = SegmentFile::open(&path)?;
            match segment.probe_at(DATA_START)? {
                Probe::Frame(header) if header.global_position <= global => start = base,
                _ => break,
            }
        }
        Ok(PartitionCursor::new(log_dir, partition, start))
    }

    /// Why the last `next` returned `None`.
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// The next record, or `None` where the valid frames end for now.
    ///
    /// # Errors
    ///
    /// I/O errors, a damaged segment header, a frame whose records do not decode.
    pub fn next_row(&mut self) -> Result<Option<Row>, Failure> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Ok(Some(row));
            }
            if self.current.is_none() && !self.open_segment()? {
                self.stop = Some(Stop::Unwritten);
                return Ok(None);
            }
            let current = self.current.as_mut().expect("opened above");
            let position = current.position;
            let probe = current.segment.probe_at(position)?;
            let reason = match probe {
                Probe::Frame(header) if header.base_offset == self.frame_offset => {
                    current.position += u64::from(header.frame_len);
                    self.frame_offset = header.end_offset();
                    if !header.is_padding() {
                        let bytes = current.segment.frame_bytes(position, &header);
                        let wanted = self.key.as_deref().is_none_or(|k| header.key(bytes) == k);
                        if wanted && header.end_offset() > self.from_offset {
                            let rows = decode_rows(self.partition, bytes, &header).map_err(
                                |(at, reason)| {
                                    Failure::corrupt(
                                        &current.segment.path,
                                        Damage::at(position + at, reason),
                                    )
                                },
                            )?;
                            let from = self.from_offset;
                            self.pending
                                .extend(rows.into_iter().filter(|r| r.offset >= from));
                        }
                    }
                    continue;
                }
                Probe::Frame(_) => Some("frame offset does not continue the partition"),
                Probe::Empty => None,
                Probe::Invalid(reason) => Some(reason),
            };
            // The frames of this segment end here for now. If the partition has rolled, the
            // next segment is named after the offset this one ends at.
            let next = layout::segment_file(&self.dir, self.frame_offset, SEGMENT_SUFFIX);
            if self.frame_offset > current.segment.header.base_offset && next.exists() {
                self.current = None;
                continue;
            }
            self.stop = Some(match reason {
                None => Stop::Unwritten,
                Some(reason) => Stop::Invalid {
                    path: current.segment.path.clone(),
                    damage: Damage::at(position, reason),
                },
            });
            return Ok(None);
        }
    }

    /// Opens the segment holding `frame_offset`, at the index entry nearest before it. Returns
    /// false if the partition has no segment yet. Below the partition's start (retention
    /// deleted the segments there) the walk begins at the start.
    fn open_segment(&mut self) -> Result<bool, Failure> {
        if let Ok(Some(start)) = start_offset(&self.dir) {
            self.frame_offset = self.frame_offset.max(start);
        }
        let bases = layout::list_segments(&self.dir)?;
        let Some(&base) = bases.iter().rev().find(|&&b| b <= self.frame_offset) else {
            return Ok(false);
        };
        let path = layout::segment_file(&self.dir, base, SEGMENT_SUFFIX);
        let mut segment = SegmentFile::open(&path)?;
        segment.check_place(self.partition, base)?;
        let (mut position, mut offset) = (DATA_START, base);
        if self.frame_offset > base {
            if let Some(entry) = nearest_entry(&self.dir, base, self.frame_offset) {
                // The index is derived data: used only if a frame with its offset is there.
                if matches!(segment.probe_at(entry.position)?,
                    Probe::Frame(h) if h.base_offset == entry.offset)
                {
                    (position, offset) = (entry.position, entry.offset);
                }
            }
        }
        self.frame_offset = offset;
        self.current = Some(Current { segment, position });
        Ok(true)
    }
}

/// One past the last offset of the partition's valid frames now (0 before its first segment):
/// the end `stats` reports. Walks the last segment from its index's last entry (checked
/// against the frame there, as the index is derived data), or from its start.
pub fn end_offset(log_dir: &Path, partition: u32) -> Result<u64, Failure> {
    let dir = layout::partition_dir(log_dir, partition);
    let Some(&base) = layout::list_segments(&dir)?.last() else {
        return Ok(0);
    };
    let mut segment = SegmentFile::open(&layout::segment_file(&dir, base, SEGMENT_SUFFIX))?;
    segment.check_place(partition, base)?;
    let (mut position, mut offset) = (DATA_START, base);
    if let Some(entry) = nearest_entry(&dir, base, u64::MAX) {
        if matches!(segment.probe_at(entry.position)?,
            Probe::Frame(h) if h.base_offset == entry.offset)
        {
            (position, offset) = (entry.position, entry.offset);
        }
    }
    segment.walk(position, offset, |_, _, _| Ok(()))
}

/// The last entry of the segment's index at or before `offset`, if the index reads.
fn nearest_entry(dir: &Path, base: u64, offset: u64) -> Option<index::IndexEntry> {
    let bytes = std::fs::read(layout::segment_file(dir, base, INDEX_SUFFIX)).ok()?;
    let file = index::decode(&bytes).ok()?;
    if file.base_offset != base {
        return None;
    }
    file.entries
        .iter()
        .take_while(|e| e.offset <= offset)
        .last()
        .copied()
}

/// The records of one frame as rows.
pub fn decode_rows(
    partition: u32,
    bytes: &[u8],
    header: &frame::FrameHeader,
) -> Result<Vec<Row>, (u64, &'static str)> {
    let key = header.key(bytes);
    let records = frame::records(bytes, header)?;
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, record)| Row {
            partition,
            offset: header.base_offset + i as u64,
            version: header.base_version + i as u64,
            global_position: header.global_position + i as u64,
            timestamp_ms: header.timestamp_ms,
            key: key.to_vec(),
            event_id: record.event_id,
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            payload: record.payload.to_vec(),
        })
        .collect())
}

/// The partition's start as its `start` file records it (`docs/format.md`, "The start file"):
/// `None` without the file (the start is 0).
///
/// # Errors
///
/// A description of what is wrong with a start file that fails its checks.
pub fn start_offset(dir: &Path) -> Result<Option<u64>, String> {
    let bytes = match std::fs::read(dir.join(START_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    if bytes.len() != START_FILE_LEN {
        return Err(format!(
            "is {} bytes long, not {START_FILE_LEN}",
            bytes.len()
        ));
    }
    if crc32fast::hash(&bytes[..8]) != u32_at(&bytes, 8) || bytes[12..] != [0; 4] {
        return Err("fails its checksum or reserved bytes".to_owned());
    }
    Ok(Some(u64_at(&bytes, 0)))
}

/// The name of a partition's start file, and its length.
pub const START_FILE: &str = "start";
const START_FILE_LEN: usize = 16;
