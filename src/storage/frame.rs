//! Encoding and decoding of one batch frame: the only place that knows the bytes of a record.
//!
//! A frame holds the events of one append call, so that one checksum covers the whole batch and a
//! crash leaves either all of it or none. The layout is the table in `docs/format.md`:
//!
//! ```text
//! frame header (48 bytes)
//!   0  u32 crc              CRC-32 (IEEE) of bytes [4, frame_len)
//!   4  u32 frame_len        the whole frame, header included
//!   8  u8  magic            FRAME_MAGIC
//!   9  u8  flags            0, FLAG_EVENT_IDS, or FLAG_PADDING alone: else "unknown frame flags"
//!  10  u16 reserved         0: anything else is refused too, with its own reason
//!  12  u32 record_count     at least 1
//!  16  u64 base_offset      offset of the first record in its partition
//!  24  u64 timestamp_ms     shared by all records of the frame
//!  32  u64 base_version     version of the first record in its key's stream
//!  40  u64 global_position  position of the first record in the log's one global order
//! key
//!  48  u16 key_len, key bytes
//! records, record_count times
//!      u8  attributes       0, or ATTRIBUTE_EVENT_ID: anything else is refused
//!      [u8; 16] event id    only with ATTRIBUTE_EVENT_ID, a little-endian u128
//!      u16 header_count, then per header: u16 name_len, name, u32 value_len, value
//!      u32 payload_len, payload
//! ```
//!
//! Decoding fails closed: a frame is returned only when its magic, length bounds and checksum
//! hold, and every length inside it is checked against the frame's end before it is used.
//! Damage inside the records is reported at the byte that is wrong, relative to the frame's
//! start ([`Damage`]).

use std::ops::Range;

use crate::error::{Damage, Error};
use crate::record::Event;
use crate::storage::codec::{read_u16, read_u32, read_u64};

pub const CRC_OFFSET: usize = 0;
pub const LEN_OFFSET: usize = CRC_OFFSET + 4;
pub const MAGIC_OFFSET: usize = LEN_OFFSET + 4;
pub const FLAGS_OFFSET: usize = MAGIC_OFFSET + 1;
pub const RESERVED_OFFSET: usize = FLAGS_OFFSET + 1;
pub const COUNT_OFFSET: usize = RESERVED_OFFSET + 2;
pub const BASE_OFFSET_OFFSET: usize = COUNT_OFFSET + 4;
pub const TIMESTAMP_OFFSET: usize = BASE_OFFSET_OFFSET + 8;
pub const BASE_VERSION_OFFSET: usize = TIMESTAMP_OFFSET + 8;
pub const GLOBAL_POSITION_OFFSET: usize = BASE_VERSION_OFFSET + 8;
/// Length of the fixed frame header.
pub const FRAME_HEADER_LEN: usize = GLOBAL_POSITION_OFFSET + 8;
/// Length of the key length prefix that follows the header.
pub const KEY_PREFIX_LEN: usize = 2;
/// Fixed bytes of one record: attributes, header count and payload length.
pub const RECORD_FIXED_LEN: usize = 1 + 2 + 4;
/// The record attribute bit saying that a 16-byte event id follows the attributes byte.
pub const ATTRIBUTE_EVENT_ID: u8 = 0x01;
/// Length of an event id on disk.
pub const EVENT_ID_LEN: usize = 16;
/// Smallest possible frame: header, empty key, one empty record.
pub const FRAME_LEN_MIN: usize = FRAME_HEADER_LEN + KEY_PREFIX_LEN + RECORD_FIXED_LEN;
/// The `flags` value of a padding frame: no key, no records, zeros up to `frame_len`. The write
/// path appends one at a checkpoint so that the next frame starts on a fresh 4 KiB page and no
/// later write ever rewrites a page that holds checkpointed data.
pub const FLAG_PADDING: u8 = 0x01;
/// The `flags` bit of a frame in which at least one record carries an event id. Records may
/// carry ids only in such frames, so that indexing a frame without ids never walks its records.
pub const FLAG_EVENT_IDS: u8 = 0x02;
/// Smallest padding frame: a header and an empty key.
pub const PADDING_LEN_MIN: usize = FRAME_HEADER_LEN + KEY_PREFIX_LEN;
/// The byte at `MAGIC_OFFSET` of every frame. Not zero, so that zeroed space never looks like a
/// frame header.
pub const FRAME_MAGIC: u8 = 0xA7;
/// Longest key the format can hold (its length is a `u16`).
pub const KEY_BYTES_LIMIT: u32 = u16::MAX as u32;
/// Longest header name the format can hold.
pub const HEADER_NAME_BYTES_LIMIT: usize = u16::MAX as usize;
/// Most headers per record the format can hold.
pub const HEADERS_PER_RECORD_LIMIT: usize = u16::MAX as usize;

const _: () = assert!(FRAME_HEADER_LEN == 48);
const _: () = assert!(FRAME_LEN_MIN == 57);

/// The per-frame values the sequencer assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStamp {
    pub base_offset: u64,
    pub timestamp_ms: u64,
    pub base_version: u64,
    pub global_position: u64,
}

/// Limits checked while encoding.
#[derive(Clone, Copy, Debug)]
pub struct EncodeLimits {
    pub event_bytes_max: u64,
    pub batch_events_max: u64,
    pub batch_bytes_max: u64,
}

/// Appends one frame to `buf`. On error (and on any panic) `buf` is left as it was: the queue
/// it belongs to must never hold a partial frame.
/// Returns the number of records in the frame.
pub fn encode(
    buf: &mut Vec<u8>,
    stamp: FrameStamp,
    key: &[u8],
    events: &[Event<'_>],
    limits: &EncodeLimits,
) -> Result<u32, Error> {
    if events.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if events.len() as u64 > limits.batch_events_max {
        return Err(Error::BatchTooManyEvents {
            events: events.len() as u64,
            limit: limits.batch_events_max,
        });
    }
    let mut rollback = Rollback {
        start: buf.len(),
        buf,
        keep: false,
    };
    let result = encode_frame(rollback.buf, stamp, key, events, limits);
    rollback.keep = result.is_ok();
    result.map(|()| events.len() as u32)
}

/// Truncates the buffer back to `start` when dropped, unless told to keep what was added.
struct Rollback<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    keep: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.buf.truncate(self.start);
        }
    }
}

/// Appends the frame; the caller checked the event count and rolls back on error.
fn encode_frame(
    buf: &mut Vec<u8>,
    stamp: FrameStamp,
    key: &[u8],
    events: &[Event<'_>],
    limits: &EncodeLimits,
) -> Result<(), Error> {
    debug_assert!(
        key.len() <= KEY_BYTES_LIMIT as usize,
        "key length checked by caller"
    );
    let start = buf.len();
    buf.resize(start + FRAME_HEADER_LEN, 0);
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(key);
    let records_start = buf.len();
    for event in events {
        let event_bytes = event.size_bytes();
        if event_bytes > limits.event_bytes_max {
            return Err(Error::EventTooLarge {
                bytes: event_bytes,
                limit: limits.event_bytes_max,
            });
        }
        encode_record(buf, event)?;
        let batch_bytes = (buf.len() - records_start) as u64;
        if batch_bytes > limits.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: batch_bytes,
                limit: limits.batch_bytes_max,
            });
        }
    }
    let frame_len = buf.len() - start;
    let header = &mut buf[start..start + FRAME_HEADER_LEN];
    header[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&(frame_len as u32).to_le_bytes());
    header[MAGIC_OFFSET] = FRAME_MAGIC;
    if events.iter().any(|event| event.event_id().is_some()) {
        header[FLAGS_OFFSET] = FLAG_EVENT_IDS;
    }
    header[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&(events.len() as u32).to_le_bytes());
    header[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8]
        .copy_from_slice(&stamp.base_offset.to_le_bytes());
    header[TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&stamp.timestamp_ms.to_le_bytes());
    header[BASE_VERSION_OFFSET..BASE_VERSION_OFFSET + 8]
        .copy_from_slice(&stamp.base_version.to_le_bytes());
    header[GLOBAL_POSITION_OFFSET..GLOBAL_POSITION_OFFSET + 8]
        .copy_from_slice(&stamp.global_position.to_le_bytes());
    let crc = crc32fast::hash(&buf[start + LEN_OFFSET..]);
    buf[start + CRC_OFFSET..start + CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn encode_record(buf: &mut Vec<u8>, event: &Event<'_>) -> Result<(), Error> {
    let headers = event.headers();
    if headers.len() > HEADERS_PER_RECORD_LIMIT {
        return Err(Error::HeaderTooLarge {
            bytes: headers.len() as u64,
            limit: HEADERS_PER_RECORD_LIMIT as u64,
        });
    }
    match event.event_id() {
        Some(id) => {
            buf.push(ATTRIBUTE_EVENT_ID);
            buf.extend_from_slice(&id.to_le_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    for (name, value) in headers {
        if name.len() > HEADER_NAME_BYTES_LIMIT {
            return Err(Error::HeaderTooLarge {
                bytes: name.len() as u64,
                limit: HEADER_NAME_BYTES_LIMIT as u64,
            });
        }
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name);
        // The value fits a u32: event_bytes_max (a u32) bounds it and was checked before.
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value);
    }
    buf.extend_from_slice(&(event.payload().len() as u32).to_le_bytes());
    buf.extend_from_slice(event.payload());
    Ok(())
}

/// Appends a padding frame of `len` bytes (at least `PADDING_LEN_MIN`) at offset `base_offset`.
pub fn encode_padding(buf: &mut Vec<u8>, len: usize, base_offset: u64, timestamp_ms: u64) {
    debug_assert!(len >= PADDING_LEN_MIN && len <= u32::MAX as usize);
    let start = buf.len();
    buf.resize(start + len, 0);
    let frame = &mut buf[start..];
    frame[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[MAGIC_OFFSET] = FRAME_MAGIC;
    frame[FLAGS_OFFSET] = FLAG_PADDING;
    frame[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
    frame[TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp_ms.to_le_bytes());
    let crc = crc32fast::hash(&frame[LEN_OFFSET..]);
    frame[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The validated header of a frame found at some position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub frame_len: u32,
    pub record_count: u32,
    pub base_offset: u64,
    pub timestamp_ms: u64,
    pub base_version: u64,
    pub global_position: u64,
    /// Some record of the frame may carry an event id (`FLAG_EVENT_IDS`).
    pub has_ids: bool,
    /// Range of the key bytes, relative to the frame start.
    pub key: (u32, u32),
    /// Where the first record starts, relative to the frame start.
    pub records_start: u32,
}

impl FrameInfo {
    /// One past the last offset of the frame.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn key_range(&self) -> Range<usize> {
        self.key.0 as usize..self.key.1 as usize
    }
}

/// What lies at a position where a frame may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A frame whose checksum holds.
    Frame(FrameInfo),
    /// Nothing was ever written here: the header bytes are all zero, or no header fits.
    Empty,
    /// Something is here, but it is not a whole valid frame (torn write or corruption).
    Invalid(&'static str),
}

/// Reads the frame starting at the beginning of `bytes` (which may extend past its end).
/// Never panics, whatever the bytes are.
pub fn probe(bytes: &[u8]) -> Probe {
    if bytes.len() < FRAME_HEADER_LEN {
        return if bytes.iter().all(|&b| b == 0) {
            Probe::Empty
        } else {
            Probe::Invalid("truncated frame header")
        };
    }
    let header = &bytes[..FRAME_HEADER_LEN];
    if header[MAGIC_OFFSET] != FRAME_MAGIC {
        if header.iter().all(|&b| b == 0) {
            return Probe::Empty;
        }
        return Probe::Invalid("bad frame magic");
    }
    let frame_len = read_u32(header, LEN_OFFSET) as usize;
    if frame_len < PADDING_LEN_MIN {
        return Probe::Invalid("frame length below minimum");
    }
    if frame_len > bytes.len() {
        return Probe::Invalid("frame extends past the end of the data");
    }
    let frame = &bytes[..frame_len];
    if crc32fast::hash(&frame[LEN_OFFSET..]) != read_u32(frame, CRC_OFFSET) {
        return Probe::Invalid("frame checksum mismatch");
    }
    if read_u16(header, RESERVED_OFFSET) != 0 {
        return Probe::Invalid("non-zero reserved bytes in a frame header");
    }
    let record_count = read_u32(header, COUNT_OFFSET);
    let base_offset = read_u64(header, BASE_OFFSET_OFFSET);
    if header[FLAGS_OFFSET] == FLAG_PADDING {
        let body = &frame[FRAME_HEADER_LEN..];
        if record_count != 0 || body.iter().any(|&b| b != 0) {
            return Probe::Invalid("padding frame with contents");
        }
        return Probe::Frame(FrameInfo {
            frame_len: frame_len as u32,
            record_count: 0,
            base_offset,
            timestamp_ms: read_u64(header, TIMESTAMP_OFFSET),
            base_version: 0,
            global_position: 0,
            has_ids: false,
            key: (PADDING_LEN_MIN as u32, PADDING_LEN_MIN as u32),
            records_start: frame_len as u32,
        });
    }
    let flags = header[FLAGS_OFFSET];
    if flags & !FLAG_EVENT_IDS != 0 {
        return Probe::Invalid("unknown frame flags");
    }
    if frame_len < FRAME_LEN_MIN {
        return Probe::Invalid("frame length below minimum");
    }
    if record_count == 0 {
        return Probe::Invalid("frame without records");
    }
    let key_len = read_u16(frame, FRAME_HEADER_LEN) as usize;
    let key_start = FRAME_HEADER_LEN + KEY_PREFIX_LEN;
    let records_start = key_start + key_len;
    // Every record needs at least RECORD_FIXED_LEN bytes; checking that here keeps a huge
    // record_count from promising more records than the frame can hold.
    let records_min = u64::from(record_count) * RECORD_FIXED_LEN as u64;
    if records_start as u64 + records_min > frame_len as u64 {
        return Probe::Invalid("frame too short for its key and records");
    }
    let base_version = read_u64(header, BASE_VERSION_OFFSET);
    let global_position = read_u64(header, GLOBAL_POSITION_OFFSET);
    let overflows = |base: u64| base.checked_add(u64::from(record_count)).is_none();
    if overflows(base_offset) || overflows(base_version) || overflows(global_position) {
        return Probe::Invalid("frame offsets, versions or positions overflow");
    }
    Probe::Frame(FrameInfo {
        frame_len: frame_len as u32,
        record_count,
        base_offset,
        timestamp_ms: read_u64(header, TIMESTAMP_OFFSET),
        base_version,
        global_position,
        has_ids: flags & FLAG_EVENT_IDS != 0,
        key: (key_start as u32, records_start as u32),
        records_start: records_start as u32,
    })
}

/// The chain of valid frames in `bytes` from `position`, where the first frame must hold
/// `offset` and each next one must continue the offsets of the one before. It ends at the first
/// position that holds no such frame. This is the one walk of frames that recovery, index
/// rebuilds and reports share; readers walk record by record (`reader.rs`), and the journal
/// walks the frames of a record (`journal.rs`).
pub struct Chain<'b> {
    bytes: &'b [u8],
    /// Where the next frame should start.
    pub position: u64,
    /// The offset the next frame should hold.
    pub offset: u64,
}

impl<'b> Chain<'b> {
    pub fn new(bytes: &'b [u8], position: u64, offset: u64) -> Chain<'b> {
        Chain {
            bytes,
            position,
            offset,
        }
    }
}

impl Iterator for Chain<'_> {
    /// A frame of the chain and where it starts.
    type Item = (u64, FrameInfo);

    fn next(&mut self) -> Option<(u64, FrameInfo)> {
        let rest = self.bytes.get(usize::try_from(self.position).ok()?..)?;
        match probe(rest) {
            Probe::Frame(info) if info.base_offset == self.offset => {
                let at = self.position;
                self.position += u64::from(info.frame_len);
                self.offset = info.end_offset();
                Some((at, info))
            }
            _ => None,
        }
    }
}

/// Byte ranges of one record, relative to the start of its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRanges {
    pub event_id: Option<u128>,
    pub headers: HeaderRanges,
    pub payload: Range<usize>,
}

/// Where a record's headers lie in its frame: `count` (name, value) pairs from `start`,
/// checked by [`RecordCursor::next_record`]. Kept as a place rather than a list, so that
/// walking records allocates nothing; [`iter`](Self::iter) reads the pairs when asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderRanges {
    start: usize,
    count: u16,
}

impl HeaderRanges {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each header's (name, value) ranges, relative to the frame's start; `frame` is the frame
    /// `next_record` checked them in (a frame changed since ends the iteration early).
    pub fn iter(self, frame: &[u8]) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
        let mut at = self.start;
        (0..self.count).map_while(move |_| {
            let name = length_prefixed(frame, &mut at, LengthPrefix::U16).ok()?;
            let value = length_prefixed(frame, &mut at, LengthPrefix::U32).ok()?;
            Some((name, value))
        })
    }
}

/// Walks the records of a frame whose header [`probe`] accepted.
pub struct RecordCursor {
    position: usize,
    remaining: u32,
    ids_allowed: bool,
}

impl RecordCursor {
    pub fn new(info: &FrameInfo) -> Self {
        RecordCursor {
            position: info.records_start as usize,
            remaining: info.record_count,
            ids_allowed: info.has_ids,
        }
    }

    /// The next record's ranges, or `Ok(None)` after the last one. `frame` is the whole frame.
    /// An `Err` names the wrong byte relative to the frame's start; the caller adds the file and
    /// the frame's position ([`Error::corrupt`]).
    #[inline]
    pub fn next_record(&mut self, frame: &[u8]) -> Result<Option<RecordRanges>, Damage> {
        if self.remaining == 0 {
            if self.position != frame.len() {
                return Err(Damage::at(
                    self.position,
                    "bytes after the last record of a frame",
                ));
            }
            return Ok(None);
        }
        self.remaining -= 1;
        let mut at = self.position;
        let attributes = take(frame, &mut at, 1)?[0];
        let event_id = match attributes {
            0 => None,
            ATTRIBUTE_EVENT_ID if self.ids_allowed => {
                let mut id = [0u8; EVENT_ID_LEN];
                id.copy_from_slice(take(frame, &mut at, EVENT_ID_LEN)?);
                Some(u128::from_le_bytes(id))
            }
            _ => return Err(Damage::at(self.position, "unknown record attributes")),
        };
        let count = read_u16(take(frame, &mut at, 2)?, 0);
        let headers = HeaderRanges { start: at, count };
        for _ in 0..count {
            length_prefixed(frame, &mut at, LengthPrefix::U16)?;
            length_prefixed(frame, &mut at, LengthPrefix::U32)?;
        }
        let payload = length_prefixed(frame, &mut at, LengthPrefix::U32)?;
        self.position = at;
        Ok(Some(RecordRanges {
            event_id,
            headers,
            payload,
        }))
    }
}

/// Checks every record of a frame, as recovery does before it accepts a frame as the log's end.
pub fn validate_records(frame: &[u8], info: &FrameInfo) -> Result<(), Damage> {
    let mut cursor = RecordCursor::new(info);
    while cursor.next_record(frame)?.is_some() {}
    Ok(())
}

/// The `len` bytes at `at`, which moves past them. Damage is reported at `at`: the field cut
/// by the end of the frame.
#[inline]
fn take<'b>(bytes: &'b [u8], at: &mut usize, len: usize) -> Result<&'b [u8], Damage> {
    let start = *at;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .ok_or(Damage::at(
            start,
            "record field extends past the end of its frame",
        ))?;
    *at = end;
    Ok(&bytes[start..end])
}

/// The width of the little-endian length before a variable-length record field.
#[derive(Clone, Copy)]
enum LengthPrefix {
    U16,
    U32,
}

/// A field stored as its length and then that many bytes: returns their range, and moves `at`
/// past them. Damage is reported at the length: the bytes that promise more than the frame
/// holds.
#[inline]
fn length_prefixed(
    bytes: &[u8],
    at: &mut usize,
    prefix: LengthPrefix,
) -> Result<Range<usize>, Damage> {
    let length_position = *at;
    let len = match prefix {
        LengthPrefix::U16 => usize::from(read_u16(take(bytes, at, 2)?, 0)),
        LengthPrefix::U32 => read_u32(take(bytes, at, 4)?, 0) as usize,
    };
    let start = *at;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .ok_or(Damage::at(
            length_position,
            "record field length runs past the end of its frame",
        ))?;
    *at = end;
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EncodeLimits = EncodeLimits {
        event_bytes_max: 1 << 20,
        batch_events_max: 1000,
        batch_bytes_max: 4 << 20,
    };

    fn stamp() -> FrameStamp {
        FrameStamp {
            base_offset: 7,
            timestamp_ms: 1_700_000_000_000,
            base_version: 3,
            global_position: 11,
        }
    }

    #[test]
    fn round_trip_with_headers() {
        let mut buf = Vec::new();
        let events = [
            Event::new(b"first").header("type", "A"),
            Event::new(b"").header("n", "").header("m", "v"),
            Event::new(b"third"),
        ];
        let count = encode(&mut buf, stamp(), b"key-1", &events, &LIMITS).unwrap();
        assert_eq!(count, 3);
        let Probe::Frame(info) = probe(&buf) else {
            panic!("frame not accepted")
        };
        assert_eq!(info.frame_len as usize, buf.len());
        assert_eq!(info.base_offset, 7);
        assert_eq!(info.end_offset(), 10);
        assert_eq!(&buf[info.key_range()], b"key-1");
        let mut cursor = RecordCursor::new(&info);
        let first = cursor.next_record(&buf).unwrap().unwrap();
        assert_eq!(&buf[first.payload.clone()], b"first");
        let headers: Vec<_> = first.headers.iter(&buf).collect();
        assert_eq!(&buf[headers[0].0.clone()], b"type");
        assert_eq!(&buf[headers[0].1.clone()], b"A");
        let second = cursor.next_record(&buf).unwrap().unwrap();
        assert_eq!(second.headers.iter(&buf).count(), 2);
        assert!(second.payload.is_empty());
        let third = cursor.next_record(&buf).unwrap().unwrap();
        assert_eq!(&buf[third.payload], b"third");
        assert_eq!(cursor.next_record(&buf).unwrap(), None);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, stamp(), b"k", &[Event::new(b"payload")], &LIMITS).unwrap();
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(probe(&damaged), Probe::Frame(_)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            stamp(),
            b"k",
            &[Event::new(b"payload"), Event::new(b"more")],
            &LIMITS,
        )
        .unwrap();
        for len in 0..buf.len() {
            assert!(!matches!(probe(&buf[..len]), Probe::Frame(_)), "len {len}");
        }
    }

    #[test]
    fn checksum_is_crc32_iso_hdlc_as_documented() {
        // docs/format.md names this check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn padding_frames_check_out_and_hold_no_records() {
        for len in [PADDING_LEN_MIN, 100, 4096] {
            let mut buf = Vec::new();
            encode_padding(&mut buf, len, 9, 3);
            let Probe::Frame(info) = probe(&buf) else {
                panic!("padding of {len} bytes not accepted")
            };
            assert_eq!(info.record_count, 0);
            assert_eq!((info.frame_len as usize, info.end_offset()), (len, 9));
            assert_eq!(RecordCursor::new(&info).next_record(&buf), Ok(None));
            for byte in 0..buf.len() {
                let mut damaged = buf.clone();
                damaged[byte] ^= 0x40;
                assert!(!matches!(probe(&damaged), Probe::Frame(_)), "byte {byte}");
            }
        }
    }

    #[test]
    fn smallest_frame_annal_writes_is_58_bytes_and_the_format_accepts_57() {
        // docs/format.md gives both: keys are never empty when written, but may be when read.
        let mut buf = Vec::new();
        encode(&mut buf, stamp(), b"k", &[Event::new(b"")], &LIMITS).unwrap();
        assert_eq!(buf.len(), 58);
        assert_eq!(buf.len(), FRAME_LEN_MIN + 1);
        let mut empty_key = Vec::new();
        encode(&mut empty_key, stamp(), b"", &[Event::new(b"")], &LIMITS).unwrap();
        assert_eq!(empty_key.len(), FRAME_LEN_MIN);
        assert!(matches!(probe(&empty_key), Probe::Frame(_)));
    }

    #[test]
    fn event_ids_round_trip_and_a_torn_id_is_damage() {
        let mut buf = Vec::new();
        let events = [Event::new(b"a").id(u128::MAX - 7), Event::new(b"b")];
        encode(&mut buf, stamp(), b"k", &events, &LIMITS).unwrap();
        let Probe::Frame(info) = probe(&buf) else {
            panic!("frame refused")
        };
        assert_eq!((info.base_version, info.global_position), (3, 11));
        let mut cursor = RecordCursor::new(&info);
        let first = cursor.next_record(&buf).unwrap().unwrap();
        assert_eq!(first.event_id, Some(u128::MAX - 7));
        assert_eq!(&buf[first.payload], b"a");
        let second = cursor.next_record(&buf).unwrap().unwrap();
        assert_eq!(second.event_id, None);
        // An id attribute on the last record, with its id cut off by the frame's end.
        let torn = edited(|buf| {
            buf.truncate(RECORD_START + RECORD_FIXED_LEN);
            buf[RECORD_START] = ATTRIBUTE_EVENT_ID;
            buf[FLAGS_OFFSET] = FLAG_EVENT_IDS;
            let len = buf.len() as u32;
            buf[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
        });
        assert_eq!(
            record_damage(&torn),
            Damage::at(
                RECORD_START + 1,
                "record field extends past the end of its frame"
            )
        );
    }

    #[test]
    fn an_event_id_in_a_frame_not_flagged_for_ids_is_damage() {
        let unflagged = edited(|buf| {
            buf[RECORD_START] = ATTRIBUTE_EVENT_ID;
        });
        assert_eq!(
            record_damage(&unflagged),
            Damage::at(RECORD_START, "unknown record attributes")
        );
    }

    #[test]
    fn zeros_are_empty_not_invalid() {
        assert_eq!(probe(&[0u8; 100]), Probe::Empty);
        assert_eq!(probe(&[0u8; 3]), Probe::Empty);
        assert_eq!(probe(&[]), Probe::Empty);
    }

    /// A frame of one record (`b"payload"` under key `b"k"`) with `edit` applied and its
    /// checksum made valid again, so that only the edited rule can refuse it.
    fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, stamp(), b"k", &[Event::new(b"payload")], &LIMITS).unwrap();
        edit(&mut buf);
        let crc = crc32fast::hash(&buf[LEN_OFFSET..]);
        buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Where the first record of a frame under a 1-byte key starts.
    const RECORD_START: usize = FRAME_HEADER_LEN + KEY_PREFIX_LEN + 1;

    #[test]
    fn flags_and_reserved_bytes_are_refused_with_their_own_reasons() {
        let flags = edited(|buf| buf[FLAGS_OFFSET] = 0x80);
        assert_eq!(probe(&flags), Probe::Invalid("unknown frame flags"));
        for at in RESERVED_OFFSET..COUNT_OFFSET {
            let reserved = edited(|buf| buf[at] = 1);
            assert_eq!(
                probe(&reserved),
                Probe::Invalid("non-zero reserved bytes in a frame header"),
                "byte {at}"
            );
        }
    }

    /// The damage `validate_records` finds in `frame`, whose header must check out.
    #[track_caller]
    fn record_damage(frame: &[u8]) -> Damage {
        let Probe::Frame(info) = probe(frame) else {
            panic!("frame header refused: {:?}", probe(frame))
        };
        validate_records(frame, &info).unwrap_err()
    }

    #[test]
    fn record_damage_is_reported_at_the_byte_that_is_wrong() {
        let attributes = edited(|buf| buf[RECORD_START] = 0x02);
        assert_eq!(
            record_damage(&attributes),
            Damage::at(RECORD_START, "unknown record attributes")
        );

        // A payload length one past the frame's end: reported at the length.
        let payload_len_at = RECORD_START + 1 + 2;
        let too_long = edited(|buf| {
            let len = (b"payload".len() + 1) as u32;
            buf[payload_len_at..payload_len_at + 4].copy_from_slice(&len.to_le_bytes());
        });
        assert_eq!(
            record_damage(&too_long),
            Damage::at(
                payload_len_at,
                "record field length runs past the end of its frame"
            )
        );

        // A header count that promises a header the frame does not hold: the name length is
        // read from the payload length (7), the name from the payload, and the value length
        // after it is cut by the frame's end: reported where that field starts.
        let header_count_at = RECORD_START + 1;
        let headers = edited(|buf| buf[header_count_at] = 1);
        assert_eq!(
            record_damage(&headers),
            Damage::at(
                payload_len_at + 2 + b"payload".len(),
                "record field extends past the end of its frame"
            )
        );

        // A shorter payload leaves bytes after the last record.
        let short = edited(|buf| {
            let len = (b"payload".len() - 2) as u32;
            buf[payload_len_at..payload_len_at + 4].copy_from_slice(&len.to_le_bytes());
        });
        assert_eq!(
            record_damage(&short),
            Damage::at(short.len() - 2, "bytes after the last record of a frame")
        );
    }

    #[test]
    fn limits_are_enforced_and_buffer_restored() {
        let mut buf = vec![1, 2, 3];
        let big = vec![0u8; 2000];
        let limits = EncodeLimits {
            event_bytes_max: 1000,
            ..LIMITS
        };
        let err = encode(&mut buf, stamp(), b"k", &[Event::new(&big)], &limits).unwrap_err();
        assert!(matches!(err, Error::EventTooLarge { bytes: 2000, .. }));
        assert_eq!(buf, [1, 2, 3]);
        assert!(matches!(
            encode(&mut buf, stamp(), b"k", &[], &LIMITS),
            Err(Error::EmptyBatch)
        ));
        assert_eq!(buf, [1, 2, 3]);
    }
}
