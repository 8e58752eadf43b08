//! `annal verify`, one partition: its segments frame by frame and the continuity of offsets
//! from segment to segment; each segment's index and key table are then checked against the
//! frames found (`verify_derived.rs`).
//!
//! How far a segment must be whole depends on the checkpoint in force (`docs/format.md`,
//! "Where the data of a segment ends"): segments before the checkpoint's segment were synced
//! when sealed, and the checkpoint's segment up to its mark. Past the mark, and in segments
//! created after the checkpoint, the journal holds the truth: bytes that are not a frame there
//! are a write in progress or one cut by a crash, which the next open replays over.

use std::collections::HashSet;
use std::path::Path;

use crate::disk::frame::{self, FrameHeader, Probe};
use crate::disk::headers::{self, PartitionMark, SegmentHeader, NO_SEGMENT};
use crate::disk::layout::{self, INDEX_SUFFIX, SEGMENT_SUFFIX, TABLE_SUFFIX};
use crate::disk::segment::DATA_START;
use crate::failure::Failure;
use crate::verify::Findings;
use crate::verify_derived;

/// A sealed segment's records end before the next segment's base offset.
const GAP: &str =
    "records end before the next segment's base offset (a segment is missing or cut short)";

/// Up to where a segment's data must be whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// All of it (a segment sealed before the checkpoint's segment).
    Whole,
    /// Up to this byte (the checkpoint's segment, up to its mark).
    UpTo(u64),
    /// Nothing is known to be synced (created after the checkpoint, or no checkpoint).
    Unknown,
}

impl Synced {
    pub fn covers(self, position: u64) -> bool {
        match self {
            Synced::Whole => true,
            Synced::UpTo(mark) => position < mark,
            Synced::Unknown => false,
        }
    }
}

/// A frame found in a segment, with what the index and the table are checked against.
pub struct FoundFrame {
    pub position: u64,
    pub header: FrameHeader,
    pub key_hash: u64,
    /// Each record's event id, for frames that carry ids.
    pub ids: Vec<Option<u128>>,
}

/// What the walk of one segment found.
pub struct Walked {
    pub header: SegmentHeader,
    /// In position order.
    pub frames: Vec<FoundFrame>,
    /// Where the valid frames end, and the offset there.
    pub end_position: u64,
    pub end_offset: u64,
    pub data_len: u64,
    /// Byte ranges of damage (reported with the segment): what an index or table entry points
    /// into there is not the derived file's fault.
    pub damaged: Vec<std::ops::Range<u64>>,
}

impl Walked {
    pub fn in_damage(&self, position: u64) -> bool {
        self.damaged.iter().any(|range| range.contains(&position))
    }

    /// The frame found at `position`, if one starts there.
    pub fn frame_at(&self, position: u64) -> Option<&FoundFrame> {
        let i = self
            .frames
            .binary_search_by_key(&position, |f| f.position)
            .ok()?;
        Some(&self.frames[i])
    }
}

pub fn check(
    log_dir: &Path,
    partition: u32,
    mark: Option<PartitionMark>,
    findings: &mut Findings,
) -> Result<(), Failure> {
    check_dir(
        &layout::partition_dir(log_dir, partition),
        partition,
        mark,
        findings,
    )
}

/// Checks the partition whose files are in `dir` (an application's partition, or the groups
/// partition, whose number is the partition count).
pub fn check_dir(
    dir: &Path,
    partition: u32,
    mark: Option<PartitionMark>,
    findings: &mut Findings,
) -> Result<(), Failure> {
    let dir = dir.to_path_buf();
    let names = layout::list_files(&dir)?;
    let bases = layout::list_segments(&dir)?;
    let present: HashSet<u64> = bases.iter().copied().collect();
    for name in &names {
        let path = dir.join(name);
        match layout::parse_segment_name(name) {
            Some((base, INDEX_SUFFIX | TABLE_SUFFIX)) if !present.contains(&base) => {
                findings.note(
                    &path,
                    "a derived file without its segment: deleted at the next open",
                );
            }
            _ if name.ends_with(".tmp") => {
                findings.note(
                    &path,
                    "an interrupted segment creation: deleted at the next open",
                );
            }
            _ => {}
        }
    }
    if let Some(mark) = mark.filter(|m| m.segment_base != NO_SEGMENT) {
        if !present.contains(&mark.segment_base) {
            let path = layout::segment_file(&dir, mark.segment_base, SEGMENT_SUFFIX);
            findings.problem(
                &path,
                0,
                "the segment named by the checkpoint in force is missing",
            );
        }
    }
    // Retention records a partition's start (a 16-byte `start` file) before it deletes the
    // segments below it.
    let start_path = dir.join(crate::disk::partition::START_FILE);
    let start = match crate::disk::partition::start_offset(&dir) {
        Ok(start) => start.unwrap_or(0),
        Err(reason) => {
            findings.problem(&start_path, 0, format!("the start file {reason}"));
            0
        }
    };
    let kept: Vec<u64> = bases
        .iter()
        .enumerate()
        .filter(|(i, _)| bases.get(i + 1).is_none_or(|&next| next > start))
        .map(|(_, &base)| base)
        .collect();
    for &base in bases.iter().filter(|b| !kept.contains(b)) {
        let path = layout::segment_file(&dir, base, SEGMENT_SUFFIX);
        findings.note(
            &path,
            "a segment below the partition's start: deleted by retention at the next open",
        );
    }
    if let Some(&first) = kept.first() {
        if first > start {
            let path = layout::segment_file(&dir, first, SEGMENT_SUFFIX);
            findings.problem(
                &path,
                0,
                format!(
                    "the first segment starts at offset {first}: offsets {start}..{first} are \
                     missing"
                ),
            );
        }
    }
    let bases = kept;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let synced = match mark {
            None if next_base.is_some() => Synced::Whole,
            None => Synced::Unknown,
            Some(m) if m.segment_base == NO_SEGMENT || base > m.segment_base => Synced::Unknown,
            Some(m) if base < m.segment_base => Synced::Whole,
            Some(m) => Synced::UpTo(m.synced_position),
        };
        let segment_mark = mark.filter(|m| m.segment_base == base);
        let path = layout::segment_file(&dir, base, SEGMENT_SUFFIX);
        findings.counts.segments += 1;
        let Some(walked) = check_segment(
            &path,
            partition,
            base,
            next_base,
            synced,
            segment_mark,
            findings,
        )?
        else {
            continue;
        };
        verify_derived::check_index(&dir, base, &walked, synced, findings)?;
        verify_derived::check_table(&dir, base, next_base, &walked, synced, findings)?;
    }
    Ok(())
}

fn check_segment(
    path: &Path,
    partition: u32,
    base: u64,
    next_base: Option<u64>,
    synced: Synced,
    mark: Option<PartitionMark>,
    findings: &mut Findings,
) -> Result<Option<Walked>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::io("read", path, e))?;
    let header = match headers::decode_segment_header(&bytes) {
        Ok(header) => header,
        Err(damage) => {
            findings.problem(path, damage.position, damage.reason);
            return Ok(None);
        }
    };
    if header.partition != partition {
        let at = headers::SEGMENT_PARTITION_OFFSET as u64;
        findings.problem(
            path,
            at,
            format!("the header names partition {}", header.partition),
        );
    }
    if header.base_offset != base {
        let at = headers::SEGMENT_BASE_OFFSET_OFFSET as u64;
        findings.problem(
            path,
            at,
            format!("the header names base offset {}", header.base_offset),
        );
    }
    if let Some(mark) = mark {
        if (bytes.len() as u64) < mark.synced_position {
            findings.problem(
                path,
                bytes.len() as u64,
                format!(
                    "the segment is shorter than its checkpoint mark at byte {}: synced data is missing",
                    mark.synced_position
                ),
            );
        }
    }
    let mut walked = Walked {
        header,
        frames: Vec::new(),
        end_position: DATA_START,
        end_offset: base,
        data_len: bytes.len() as u64,
        damaged: Vec::new(),
    };
    let (mut position, mut offset) = (DATA_START, base);
    loop {
        if let Some(mark) = mark.filter(|m| m.synced_position == position && m.end_offset != offset)
        {
            findings.problem(
                path,
                position,
                format!(
                    "at the checkpoint mark the partition is at offset {offset}; the checkpoint says {}",
                    mark.end_offset
                ),
            );
        }
        if next_base.is_some_and(|next| offset >= next) {
            check_after_end(&bytes, path, position, offset, findings);
            break;
        }
        let rest = bytes.get(position as usize..).unwrap_or(&[]);
        let reason = match frame::probe(rest) {
            Probe::Frame(header) if header.base_offset == offset => {
                if next_base.is_some_and(|next| header.end_offset() > next) {
                    findings.problem(
                        path,
                        position,
                        "records run past the next segment's base offset (segments overlap)",
                    );
                    break;
                }
                let frame_bytes = &rest[..header.frame_len as usize];
                walked
                    .frames
                    .push(found_frame(path, position, header, frame_bytes, findings));
                position += u64::from(header.frame_len);
                offset = header.end_offset();
                walked.end_position = position;
                walked.end_offset = offset;
                continue;
            }
            Probe::Frame(header) => format!(
                "a frame of offset {} where offset {offset} should follow",
                header.base_offset
            ),
            Probe::Empty if next_base.is_some() => GAP.to_owned(),
            Probe::Empty if synced.covers(position) => {
                "zeros where the checkpoint says frames were synced".to_owned()
            }
            Probe::Empty => break,
            Probe::Invalid(reason) => reason.to_owned(),
        };
        let must_be_whole =
            synced.covers(position) || (next_base.is_some() && synced == Synced::Whole);
        if !must_be_whole {
            findings.note(
                path,
                format!(
                    "byte {position} (offset {offset}), past what the checkpoint covers: {reason}; \
                     a write in progress or cut by a crash, which the next open replays over"
                ),
            );
            break;
        }
        // Damage: report it, and go on from the next valid frame so later damage is found too.
        match frame::next_valid_frame(&bytes, position as usize + 1, offset) {
            Some((resume, header)) => {
                let lost = match header.base_offset {
                    resumed if resumed > offset => {
                        format!("offsets {offset}..={} are unreadable", resumed - 1)
                    }
                    _ => "no offset is lost".to_owned(),
                };
                findings.problem(
                    path,
                    position,
                    format!("{reason}; {lost}, frames resume at byte {resume}"),
                );
                walked.damaged.push(position..resume as u64);
                position = resume as u64;
                offset = header.base_offset;
            }
            None => {
                findings.problem(path, position, format!("{reason}; no valid frame follows"));
                walked.damaged.push(position..u64::MAX);
                break;
            }
        }
    }
    Ok(Some(walked))
}

/// A sealed segment may hold padding frames after its last record, then anything (the cut to
/// its end is not synced); a frame with records there overlaps the next segment.
fn check_after_end(
    bytes: &[u8],
    path: &Path,
    mut position: u64,
    offset: u64,
    findings: &mut Findings,
) {
    loop {
        match frame::probe(bytes.get(position as usize..).unwrap_or(&[])) {
            Probe::Frame(header) if header.is_padding() => position += u64::from(header.frame_len),
            Probe::Frame(header) if header.base_offset == offset => {
                findings.problem(
                    path,
                    position,
                    "records run past the next segment's base offset (segments overlap)",
                );
                return;
            }
            _ => return,
        }
    }
}

fn found_frame(
    path: &Path,
    position: u64,
    header: FrameHeader,
    bytes: &[u8],
    findings: &mut Findings,
) -> FoundFrame {
    findings.counts.frames += 1;
    findings.counts.events += u64::from(header.record_count);
    let mut ids = Vec::new();
    if !header.is_padding() {
        match frame::records(bytes, &header) {
            Ok(records) if header.has_ids => ids = records.iter().map(|r| r.event_id).collect(),
            Ok(_) => {}
            Err((at, reason)) => findings.problem(path, position + at, reason),
        }
    }
    FoundFrame {
        position,
        header,
        key_hash: annal::key_hash(header.key(bytes)),
        ids,
    }
}
