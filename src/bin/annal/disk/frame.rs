//! Frames and the records inside them (`docs/format.md`, "Frame" and "Record"), decoded fail
//! closed: a frame is accepted only when its magic, its length bounds and its checksum hold, and
//! every length inside it is checked against the frame before it is used.

use super::bytes::{u128_at, u16_at, u32_at, u64_at};

pub const FRAME_HEADER_LEN: usize = 48;
const LEN_OFFSET: usize = 4;
pub const MAGIC_OFFSET: usize = 8;
const FLAGS_OFFSET: usize = 9;
const RESERVED_OFFSET: usize = 10;
const COUNT_OFFSET: usize = 12;
const BASE_OFFSET_OFFSET: usize = 16;
const TIMESTAMP_OFFSET: usize = 24;
const BASE_VERSION_OFFSET: usize = 32;
const GLOBAL_POSITION_OFFSET: usize = 40;
const KEY_PREFIX_LEN: usize = 2;
/// Attributes, header count and payload length: the fixed bytes of a record.
const RECORD_FIXED_LEN: usize = 1 + 2 + 4;
const EVENT_ID_LEN: usize = 16;
pub const FRAME_MAGIC: u8 = 0xA7;
const FLAG_PADDING: u8 = 0x01;
const FLAG_EVENT_IDS: u8 = 0x02;
const ATTRIBUTE_EVENT_ID: u8 = 0x01;
const PADDING_LEN_MIN: usize = FRAME_HEADER_LEN + KEY_PREFIX_LEN;
const FRAME_LEN_MIN: usize = PADDING_LEN_MIN + RECORD_FIXED_LEN;

const _: () = assert!(GLOBAL_POSITION_OFFSET + 8 == FRAME_HEADER_LEN);
const _: () = assert!(FRAME_LEN_MIN == 57 && PADDING_LEN_MIN == 50);

/// The checked header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_len: u32,
    /// 0 for a padding frame.
    pub record_count: u32,
    pub base_offset: u64,
    pub timestamp_ms: u64,
    pub base_version: u64,
    pub global_position: u64,
    pub has_ids: bool,
    pub key_len: u16,
}

impl FrameHeader {
    pub fn is_padding(&self) -> bool {
        self.record_count == 0
    }

    /// One past the last offset of the frame.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// The key, from the frame's bytes.
    pub fn key<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        let start = FRAME_HEADER_LEN + KEY_PREFIX_LEN;
        &frame[start..start + usize::from(self.key_len)]
    }
}

/// What lies at a position where a frame may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Frame(FrameHeader),
    /// Zeros (or nothing): nothing was written here.
    Empty,
    /// Something that is not a whole valid frame: a write in progress or cut short, or damage.
    Invalid(&'static str),
}

/// Reads the frame at the start of `bytes`, which may extend past it. Never panics.
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
    let frame_len = u32_at(header, LEN_OFFSET) as usize;
    if frame_len < PADDING_LEN_MIN {
        return Probe::Invalid("frame length below minimum");
    }
    if frame_len > bytes.len() {
        return Probe::Invalid("frame extends past the end of the data");
    }
    let frame = &bytes[..frame_len];
    if crc32fast::hash(&frame[LEN_OFFSET..]) != u32_at(frame, 0) {
        return Probe::Invalid("frame checksum mismatch");
    }
    if u16_at(header, RESERVED_OFFSET) != 0 {
        return Probe::Invalid("non-zero reserved bytes in a frame header");
    }
    let record_count = u32_at(header, COUNT_OFFSET);
    let base_offset = u64_at(header, BASE_OFFSET_OFFSET);
    let timestamp_ms = u64_at(header, TIMESTAMP_OFFSET);
    let flags = header[FLAGS_OFFSET];
    if flags == FLAG_PADDING {
        if record_count != 0 || frame[FRAME_HEADER_LEN..].iter().any(|&b| b != 0) {
            return Probe::Invalid("padding frame with contents");
        }
        return Probe::Frame(FrameHeader {
            frame_len: frame_len as u32,
            record_count: 0,
            base_offset,
            timestamp_ms,
            base_version: 0,
            global_position: 0,
            has_ids: false,
            key_len: 0,
        });
    }
    if flags & !FLAG_EVENT_IDS != 0 {
        return Probe::Invalid("unknown frame flags");
    }
    if frame_len < FRAME_LEN_MIN {
        return Probe::Invalid("frame length below minimum");
    }
    if record_count == 0 {
        return Probe::Invalid("frame without records");
    }
    let key_len = u16_at(frame, FRAME_HEADER_LEN);
    let records_start = PADDING_LEN_MIN + usize::from(key_len);
    let records_min = u64::from(record_count) * RECORD_FIXED_LEN as u64;
    if records_start as u64 + records_min > frame_len as u64 {
        return Probe::Invalid("frame too short for its key and records");
    }
    let base_version = u64_at(header, BASE_VERSION_OFFSET);
    let global_position = u64_at(header, GLOBAL_POSITION_OFFSET);
    let overflows = |base: u64| base.checked_add(u64::from(record_count)).is_none();
    if overflows(base_offset) || overflows(base_version) || overflows(global_position) {
        return Probe::Invalid("frame offsets, versions or positions overflow");
    }
    Probe::Frame(FrameHeader {
        frame_len: frame_len as u32,
        record_count,
        base_offset,
        timestamp_ms,
        base_version,
        global_position,
        has_ids: flags & FLAG_EVENT_IDS != 0,
        key_len,
    })
}

/// One record of a frame, borrowed from the frame's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'f> {
    pub event_id: Option<u128>,
    pub headers: Vec<(&'f [u8], &'f [u8])>,
    pub payload: &'f [u8],
}

/// Decodes every record of a frame that [`probe`] accepted. An error names the wrong byte,
/// relative to the frame's start.
pub fn records<'f>(
    frame: &'f [u8],
    header: &FrameHeader,
) -> Result<Vec<RecordView<'f>>, (u64, &'static str)> {
    let mut at = PADDING_LEN_MIN + usize::from(header.key_len);
    let mut records = Vec::with_capacity(header.record_count.min(4096) as usize);
    for _ in 0..header.record_count {
        let record_start = at;
        let attributes = take(frame, &mut at, 1)?[0];
        let event_id = match attributes {
            0 => None,
            ATTRIBUTE_EVENT_ID if header.has_ids => {
                Some(u128_at(take(frame, &mut at, EVENT_ID_LEN)?, 0))
            }
            _ => return Err((record_start as u64, "unknown record attributes")),
        };
        let header_count = u16_at(take(frame, &mut at, 2)?, 0);
        let mut headers = Vec::with_capacity(usize::from(header_count).min(64));
        for _ in 0..header_count {
            let name = length_prefixed(frame, &mut at, 2)?;
            let value = length_prefixed(frame, &mut at, 4)?;
            headers.push((name, value));
        }
        let payload = length_prefixed(frame, &mut at, 4)?;
        records.push(RecordView {
            event_id,
            headers,
            payload,
        });
    }
    if at != frame.len() {
        return Err((at as u64, "bytes after the last record of a frame"));
    }
    Ok(records)
}

fn take<'f>(bytes: &'f [u8], at: &mut usize, len: usize) -> Result<&'f [u8], (u64, &'static str)> {
    let start = *at;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .ok_or((
            start as u64,
            "record field extends past the end of its frame",
        ))?;
    *at = end;
    Ok(&bytes[start..end])
}

/// A field stored as its little-endian length (`prefix_len` bytes) and then that many bytes.
fn length_prefixed<'f>(
    bytes: &'f [u8],
    at: &mut usize,
    prefix_len: usize,
) -> Result<&'f [u8], (u64, &'static str)> {
    let length_position = *at;
    let prefix = take(bytes, at, prefix_len)?;
    let len = if prefix_len == 2 {
        usize::from(u16_at(prefix, 0))
    } else {
        u32_at(prefix, 0) as usize
    };
    let start = *at;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .ok_or((
            length_position as u64,
            "record field length runs past the end of its frame",
        ))?;
    *at = end;
    Ok(&bytes[start..end])
}

/// The first position at or after `from` where a whole valid frame starts whose base offset is
/// at least `offset_min`: where frames resume after damage. A false find is as unlikely as a
/// CRC-32 collision.
pub fn next_valid_frame(data: &[u8], from: usize, offset_min: u64) -> Option<(usize, FrameHeader)> {
    let last = data.len().checked_sub(FRAME_HEADER_LEN)?;
    (from..=last).find_map(|position| {
        if data[position + MAGIC_OFFSET] != FRAME_MAGIC {
            return None;
        }
        match probe(&data[position..]) {
            Probe::Frame(header) if header.base_offset >= offset_min => Some((position, header)),
            _ => None,
        }
    })
}
