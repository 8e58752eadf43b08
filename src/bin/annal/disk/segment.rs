//! One segment file read in chunks with `pread`, so that a walk never holds more than a chunk
//! and the frame it is at, and so that a position where nothing valid was found is read again
//! from the file (a writer may have appended there since).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bytes::u32_at;
use super::frame::{self, FrameHeader, Probe, FRAME_HEADER_LEN, FRAME_MAGIC, MAGIC_OFFSET};
use super::headers::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use super::Damage;
use crate::failure::Failure;

/// Bytes read at once while frames are found: enough for many small frames.
const CHUNK_BYTES: usize = 256 << 10;
/// Bytes read at a position where nothing was found the last time (a poll at the end of the
/// data, which is usually still zeros), and when a segment is opened (its header and first
/// frames): a page.
const PEEK_BYTES: usize = 4096;

pub struct SegmentFile {
    pub path: PathBuf,
    pub header: SegmentHeader,
    file: File,
    /// Bytes of the file from `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Where the last probe found no frame.
    missed_at: Option<u64>,
}

impl SegmentFile {
    /// Opens a segment and checks its header.
    ///
    /// # Errors
    ///
    /// I/O errors, and [`Failure::Corrupt`] for a damaged header.
    pub fn open(path: &Path) -> Result<SegmentFile, Failure> {
        let file = File::open(path).map_err(|e| Failure::io("open", path, e))?;
        let mut segment = SegmentFile {
            path: path.to_owned(),
            header: SegmentHeader {
                partition: 0,
                base_offset: 0,
                created_ms: 0,
                crc: 0,
            },
            file,
            buf: Vec::new(),
            buf_start: 0,
            missed_at: None,
        };
        segment.fill(0, PEEK_BYTES)?;
        segment.header = headers::decode_segment_header(&segment.buf)
            .map_err(|damage| Failure::corrupt(path, damage))?;
        Ok(segment)
    }

    /// Checks the header against the partition and base offset the file's place names.
    pub fn check_place(&self, partition: u32, base_offset: u64) -> Result<(), Failure> {
        if self.header.partition != partition {
            return Err(Failure::corrupt(
                &self.path,
                Damage::at(
                    headers::SEGMENT_PARTITION_OFFSET as u64,
                    format!("segment header names partition {}", self.header.partition),
                ),
            ));
        }
        if self.header.base_offset != base_offset {
            return Err(Failure::corrupt(
                &self.path,
                Damage::at(
                    headers::SEGMENT_BASE_OFFSET_OFFSET as u64,
                    "segment header names another base offset than its file name",
                ),
            ));
        }
        Ok(())
    }

    /// What is at `position` now. A frame found in bytes read earlier is returned from them;
    /// anything else is read again from the file first.
    pub fn probe_at(&mut self, position: u64) -> Result<Probe, Failure> {
        let cached = position >= self.buf_start
            && position + FRAME_HEADER_LEN as u64 <= self.buf_start + self.buf.len() as u64;
        if cached {
            if let Probe::Frame(header) = frame::probe(self.rest(position)) {
                return Ok(Probe::Frame(header));
            }
        }
        let len = if self.missed_at == Some(position) {
            PEEK_BYTES
        } else {
            CHUNK_BYTES
        };
        self.fill(position, len)?;
        let rest = self.rest(position);
        if rest.len() >= FRAME_HEADER_LEN && rest[MAGIC_OFFSET] == FRAME_MAGIC {
            // A frame longer than the chunk: read all of it (the file's length bounds the read).
            let frame_len = u32_at(rest, 4) as usize;
            if frame_len > rest.len() {
                self.fill(position, frame_len)?;
            }
        }
        let probe = frame::probe(self.rest(position));
        self.missed_at = match probe {
            Probe::Frame(_) => None,
            _ => Some(position),
        };
        Ok(probe)
    }

    /// The bytes of the frame `header` that [`probe_at`](Self::probe_at) found at `position`.
    pub fn frame_bytes(&self, position: u64, header: &FrameHeader) -> &[u8] {
        &self.rest(position)[..header.frame_len as usize]
    }

    /// Walks the chain of frames from `position`, where a frame of `offset` must start, calling
    /// `each` with every frame (padding frames included) and its position. Returns the offset
    /// where the chain ends.
    pub fn walk(
        &mut self,
        mut position: u64,
        mut offset: u64,
        mut each: impl FnMut(u64, &FrameHeader, &[u8]) -> Result<(), Failure>,
    ) -> Result<u64, Failure> {
        loop {
            match self.probe_at(position)? {
                Probe::Frame(header) if header.base_offset == offset => {
                    each(position, &header, self.frame_bytes(position, &header))?;
                    position += u64::from(header.frame_len);
                    offset = header.end_offset();
                }
                _ => return Ok(offset),
            }
        }
    }

    fn rest(&self, position: u64) -> &[u8] {
        let start = (position - self.buf_start) as usize;
        self.buf.get(start..).unwrap_or(&[])
    }

    /// Reads up to `len` bytes at `position` (fewer at the end of the file).
    fn fill(&mut self, position: u64, len: usize) -> Result<(), Failure> {
        let file_len = self
            .file
            .metadata()
            .map_err(|e| Failure::io("stat", &self.path, e))?
            .len();
        let len = len.min(file_len.saturating_sub(position) as usize);
        self.buf.clear();
        self.buf.resize(len, 0);
        let mut done = 0;
        while done < len {
            match self
                .file
                .read_at(&mut self.buf[done..], position + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::io("read", &self.path, e)),
            }
        }
        self.buf.truncate(done);
        self.buf_start = position;
        Ok(())
    }
}

/// Where the frames of a segment start.
pub const DATA_START: u64 = SEGMENT_HEADER_LEN as u64;
