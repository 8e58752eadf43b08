//! Reading a partition in offset order.
//!
//! A [`Reader`] never reads at or past the partition's visible end, so it never sees bytes that
//! a crash could take away (under `Sync` and `Interval`) or that are still being written. Every
//! frame it returns records from passed its checksum; every length inside it is checked against
//! the frame before use. Anything else is returned as `Error::Corrupt` with the file and the
//! byte position, and the reader stops.
//!
//! Neighbouring segments must meet: a sealed segment's records end exactly at the base offset of
//! the next one (its name), and the first segment starts at offset 0. A gap (a deleted or cut
//! segment) or an overlap is reported as `Error::Corrupt`, never skipped.
//!
//! A reader holds a pin on the segment it is in, which keeps that segment mapped and indexed;
//! it drops the pin when it moves on, so sealed segments behind it can be released
//! (`Segment`).

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::record::Record;
use crate::storage::frame::{self, FrameInfo, Probe, RecordCursor};
use crate::storage::segment::{ScanStart, SegmentPin, SEGMENT_HEADER_LEN};
use crate::write::partition::Partition;

/// A sealed segment's records end before the next segment's base offset.
const GAP: &str =
    "records end before the next segment's base offset (a segment is missing or cut short)";
/// A sealed segment holds records at or past the next segment's base offset.
const OVERLAP: &str = "records run past the next segment's base offset (segments overlap)";
/// The partition's first segment does not hold offset 0.
const FIRST_MISSING: &str = "the first segment does not start at offset 0 (a segment is missing)";

/// An iterator over the records of one partition from a given offset. It yields records up to
/// the partition's visible end, checking again for newly visible records when it gets there;
/// `None` means "nothing more for now", so it can be polled again later.
pub struct Reader {
    partition: Arc<Partition>,
    next_offset: u64,
    limit: u64,
    segment: Option<SegmentCursor>,
    frame: Option<FrameCursor>,
    failed: bool,
}

struct SegmentCursor {
    segment: SegmentPin,
    map: Bytes,
    position: u64,
    offset: u64,
    /// False until a frame was found where the index said; then the index is trusted.
    index_checked: bool,
    /// What the index said, and which index said it.
    start: ScanStart,
}

/// Where the reader's next record is (`Reader::advance`).
/// Where the next record is: its frame's start and its ranges in it, and its index in the
/// frame. The frame's header stays in `Reader::frame` (not copied per record).
struct At {
    start: usize,
    ranges: frame::RecordRanges,
    index: u64,
}

/// A record borrowed from a segment's mapping ([`Reader::next_ref`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct RecordRef<'m> {
    pub partition: u32,
    pub offset: u64,
    pub version: u64,
    pub global_position: u64,
    pub timestamp_ms: u64,
    pub event_id: Option<u128>,
    pub key: &'m [u8],
    pub payload: &'m [u8],
    frame: &'m [u8],
    headers: frame::HeaderRanges,
}

impl<'m> RecordRef<'m> {
    /// The headers, in the order they were given.
    pub fn headers(&self) -> impl Iterator<Item = (&'m [u8], &'m [u8])> + '_ {
        let frame = self.frame;
        self.headers
            .iter(frame)
            .map(move |(name, value)| (&frame[name], &frame[value]))
    }
}

/// The frame being returned record by record. It lives in the current segment cursor's
/// mapping, at `position`; records are sliced out of that mapping directly, so each record
/// costs one reference count for its key and one for its payload, and the frame none.
struct FrameCursor {
    info: FrameInfo,
    cursor: RecordCursor,
    offset: u64,
    position: usize,
}

impl Reader {
    pub(crate) fn new(partition: Arc<Partition>, from_offset: u64) -> Reader {
        let limit = partition.visible_end();
        Reader {
            partition,
            next_offset: from_offset,
            limit,
            segment: None,
            frame: None,
            failed: false,
        }
    }

    /// The offset of the next record this reader returns.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    #[inline]
    fn next_record(&mut self) -> Result<Option<Record>> {
        let Some(at) = self.advance()? else {
            return Ok(None);
        };
        let segment = self.segment.as_ref().expect("advance left the segment");
        let frame = self.frame.as_ref().expect("advance left the frame");
        Ok(Some(Record::from_frame(
            self.partition.id,
            &segment.map,
            at.start,
            &frame.info,
            at.ranges,
            at.index,
        )))
    }

    /// The next record, borrowed from the segment's mapping: no reference count and no
    /// allocation per record (unless it has headers), for scans that look at each record and
    /// move on. Checked as [`Iterator::next`]'s records are; `None` at the visible end (poll
    /// again later). After an error the reader returns nothing more.
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use annal::{Log, Options};
    /// let log = Log::open(dir.path(), Options::default().partitions(1))?;
    /// log.append(b"k", b"12")?;
    /// log.append(b"k", b"30")?;
    /// let mut reader = log.read(0, 0)?;
    /// let mut sum = 0;
    /// while let Some(record) = reader.next_ref() {
    ///     sum += std::str::from_utf8(record?.payload).unwrap().parse::<u32>().unwrap();
    /// }
    /// assert_eq!(sum, 42);
    /// # Ok(()) }
    /// ```
    pub fn next_ref(&mut self) -> Option<Result<RecordRef<'_>>> {
        if self.failed {
            return None;
        }
        let at = match self.advance() {
            Ok(Some(at)) => at,
            Ok(None) => return None,
            Err(error) => {
                self.failed = true;
                return Some(Err(error));
            }
        };
        let segment = self.segment.as_ref().expect("advance left the segment");
        let info = &self.frame.as_ref().expect("advance left the frame").info;
        let frame = &segment.map[at.start..at.start + info.frame_len as usize];
        Some(Ok(RecordRef {
            partition: self.partition.id,
            offset: info.base_offset + at.index,
            version: info.base_version + at.index,
            global_position: info.global_position + at.index,
            timestamp_ms: info.timestamp_ms,
            event_id: at.ranges.event_id,
            key: &frame[info.key_range()],
            payload: &frame[at.ranges.payload.clone()],
            frame,
            headers: at.ranges.headers,
        }))
    }

    /// Moves to the next record: where its frame starts, the frame's header, the record's
    /// ranges in it and its index in the frame.
    fn advance(&mut self) -> Result<Option<At>> {
        loop {
            if let (Some(frame), Some(segment)) = (&mut self.frame, &self.segment) {
                let start = frame.position;
                let bytes = &segment.map[start..start + frame.info.frame_len as usize];
                match frame.cursor.next_record(bytes) {
                    Ok(Some(ranges)) => {
                        let offset = frame.offset;
                        frame.offset += 1;
                        if offset < self.next_offset {
                            continue;
                        }
                        self.next_offset = offset + 1;
                        return Ok(Some(At {
                            start,
                            ranges,
                            index: offset - frame.info.base_offset,
                        }));
                    }
                    Ok(None) => self.frame = None,
                    Err(reason) => {
                        return Err(Error::corrupt(&segment.segment.path, start as u64, reason));
                    }
                }
                continue;
            }
            if self.next_offset >= self.limit {
                self.limit = self.partition.visible_end();
                if self.next_offset >= self.limit {
                    return Ok(None);
                }
            }
            let below_start = |reader: &Self| {
                let start = reader.partition.start();
                (reader.next_offset < start).then_some(Error::OffsetBelowStart {
                    partition: reader.partition.id,
                    offset: reader.next_offset,
                    start,
                })
            };
            if let Some(error) = below_start(self) {
                // Retention deleted the segment holding it: never a silent jump.
                return Err(error);
            }
            if let Err(error) = self.load_frame() {
                // Retention may have deleted the segment while it was being located: that is
                // not damage.
                return Err(below_start(self).unwrap_or(error));
            }
        }
    }

    /// Positions `self.frame` on the frame holding `next_offset`, which is below the limit.
    fn load_frame(&mut self) -> Result<()> {
        let target = self.next_offset;
        let needs_locate = match &self.segment {
            None => true,
            Some(cursor) => target >= cursor.segment.end_offset() || target < cursor.offset,
        };
        if needs_locate {
            self.move_to(target)?;
        }
        loop {
            let cursor = self.segment.as_mut().expect("located above");
            // The segment may have been sealed since this cursor was made: its end is read
            // anew, and nothing at or past it is ever touched (the file may be cut there).
            let end_offset = cursor.segment.end_offset();
            if cursor.offset >= end_offset {
                self.move_to(target)?;
                continue;
            }
            let rest = cursor
                .segment
                .data(&cursor.map)
                .get(cursor.position as usize..);
            let probe = rest.map_or(
                Probe::Invalid("position past the end of the segment"),
                frame::probe,
            );
            if !matches!(probe, Probe::Frame(_)) && cursor.segment.mapped_len() > cursor.map.len() {
                // The file grew past this cursor's mapping (a segment without preallocation).
                cursor.map = cursor.segment.map()?;
                continue;
            }
            let reason = match probe {
                Probe::Frame(info) if info.base_offset == cursor.offset => {
                    if info.end_offset() > end_offset {
                        return Err(Error::corrupt(
                            &cursor.segment.path,
                            cursor.position,
                            OVERLAP,
                        ));
                    }
                    cursor.index_checked = true;
                    let start = cursor.position as usize;
                    cursor.position += u64::from(info.frame_len);
                    cursor.offset = info.end_offset();
                    if info.end_offset() <= target {
                        continue;
                    }
                    self.frame = Some(FrameCursor {
                        cursor: RecordCursor::new(&info),
                        offset: info.base_offset,
                        position: start,
                        info,
                    });
                    return Ok(());
                }
                Probe::Frame(_) => "frame offset does not continue the partition",
                // Only zeros (or nothing) from here to the end of a sealed segment: its records
                // end here, before the next segment starts.
                Probe::Empty if end_offset != u64::MAX && rest.is_some_and(all_zero) => GAP,
                Probe::Empty => "zeros where a frame should be",
                Probe::Invalid(reason) => reason,
            };
            let policy = self.partition.index_policy;
            let end = self.partition.visible_end();
            if !cursor.index_checked
                && cursor
                    .segment
                    .index_lied(cursor.position, &cursor.start, end, policy)?
            {
                // The index sent us somewhere that is not the frame it promised; it has been
                // rebuilt from the segment, which is the truth. Look again.
                let relocated = self.locate(target)?;
                self.segment = Some(relocated);
                continue;
            }
            // The data is damaged here. A read that starts past the damage must still reach
            // its records: find the next valid frame after it (checksums make a false find as
            // unlikely as a checksum collision), and go on from there if the target lies at or
            // after that frame. Records inside the damage stay unreadable, and are reported.
            if let Some((position, info)) = next_valid_frame(
                cursor.segment.data(&cursor.map),
                cursor.position + 1,
                cursor.offset,
            ) {
                if info.base_offset <= target && info.end_offset() <= end_offset {
                    cursor.position = position;
                    cursor.offset = info.base_offset;
                    cursor.index_checked = true;
                    continue;
                }
            }
            return Err(Error::corrupt(
                &cursor.segment.path,
                cursor.position,
                reason,
            ));
        }
    }

    /// Leaves the current segment (dropping its pin) for the one holding `target`. A segment
    /// left because its records are all read must not hold more frames: the next segment
    /// starts there.
    fn move_to(&mut self, target: u64) -> Result<()> {
        if let Some(cursor) = self.segment.take() {
            if cursor.offset >= cursor.segment.end_offset() {
                let data = cursor.segment.data(&cursor.map);
                let mut position = cursor.position;
                loop {
                    let rest = data.get(position as usize..).unwrap_or(&[]);
                    match frame::probe(rest) {
                        // A checkpoint's padding frame may end a segment: it holds no records.
                        Probe::Frame(info) if info.record_count == 0 => {
                            position += u64::from(info.frame_len);
                        }
                        Probe::Frame(_) => {
                            return Err(Error::corrupt(&cursor.segment.path, position, OVERLAP));
                        }
                        _ => break,
                    }
                }
            }
        }
        self.segment = Some(self.locate(target)?);
        Ok(())
    }

    /// Finds the segment holding `offset` and the scan start the index gives for it.
    fn locate(&self, offset: u64) -> Result<SegmentCursor> {
        let segment = {
            let segments = self.partition.segments.read();
            let Some(first) = segments.first() else {
                return Err(Error::corrupt(
                    &self.partition.dir,
                    0,
                    "partition has no segments",
                ));
            };
            if offset < first.base_offset {
                return Err(Error::corrupt(&first.path, 0, FIRST_MISSING));
            }
            let after = segments.partition_point(|s| s.base_offset <= offset);
            segments[after - 1].pin()
        };
        let map = segment.map()?;
        let end_offset = segment.end_offset().min(self.partition.visible_end());
        let start = segment.scan_start(offset, end_offset, self.partition.index_policy)?;
        // The segment's own start needs no check: the first frame is there by construction, at
        // the base offset. An index rebuilt from the segment points only at frames that are
        // there; trusting it means that a real corruption after it is reported instead of
        // rebuilding forever.
        let at_start =
            start.position == SEGMENT_HEADER_LEN as u64 && start.offset == segment.base_offset;
        Ok(SegmentCursor {
            segment,
            map,
            position: start.position,
            offset: start.offset,
            index_checked: at_start || start.index_verified,
            start,
        })
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

impl Iterator for Reader {
    type Item = Result<Record>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// The first position at or after `from` where a whole valid frame starts whose offsets lie past
/// `after`: where the chain of frames resumes after damage.
fn next_valid_frame(data: &[u8], from: u64, after: u64) -> Option<(u64, frame::FrameInfo)> {
    let start = usize::try_from(from).ok()?;
    let magic_at = frame::MAGIC_OFFSET;
    (start..data.len().saturating_sub(frame::FRAME_HEADER_LEN)).find_map(|position| {
        // Cheap rejection first: the magic byte, before the checksum over the frame.
        if data[position + magic_at] != frame::FRAME_MAGIC {
            return None;
        }
        match frame::probe(&data[position..]) {
            Probe::Frame(info) if info.base_offset > after => Some((position as u64, info)),
            _ => None,
        }
    })
}
