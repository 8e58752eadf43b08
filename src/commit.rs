//! The writer thread of one partition: group commit.
//!
//! Each round takes everything appenders queued since the last round, writes it with one
//! `pwrite` (two across a segment roll), syncs once if the durability mode asks for it, and
//! publishes the new visible end, which releases every waiting ticket at once. While a round
//! syncs, appenders fill the next one; so N concurrent appenders share one fsync instead of
//! doing N.
//!
//! Failures: a failed fsync poisons the partition (the kernel may have dropped the dirty pages,
//! so what is on disk is unknown until recovery reads it). A failed write or segment creation
//! is repaired when possible by cutting the file back to its visible end; the appends of the
//! round fail and later appends proceed.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::index::{self, IndexEntry};
use crate::io;
use crate::options::Durability;
use crate::partition::{now_ms, Partition, QueuedFrame};
use crate::segment::{self, Segment, SegmentHeader};

/// The index file is synced whenever this much segment data was synced since its last sync, so
/// that recovery after a power loss rescans at most this much of the active segment.
pub const INDEX_SYNC_BYTES: u64 = 4 << 20;

/// The segment being written, as only the writer thread sees it.
pub(crate) struct Active {
    pub segment: Arc<Segment>,
    pub data: io::File,
    pub index: io::File,
    pub created_ms: u64,
    /// End of the bytes written to the file.
    pub written_position: u64,
    pub written_end_offset: u64,
    /// End of the bytes readers may see: synced, or written under `Buffered`.
    pub visible_position: u64,
    pub visible_end_offset: u64,
    /// Entries for frames written but not yet visible.
    pub new_entries: Vec<IndexEntry>,
    pub last_entry_position: Option<u64>,
    pub last_visible_entry_position: Option<u64>,
    /// Length of the index file as written so far.
    pub index_file_len: u64,
    /// Data position that the last index sync covered.
    pub index_synced_position: u64,
}

impl Active {
    fn has_data(&self) -> bool {
        self.written_position > segment::SEGMENT_HEADER_LEN as u64
    }
}

/// How bad a failure is.
enum Fault {
    /// The files are as the visible end says, or can be cut back to it.
    Repairable(Error),
    /// An fsync failed: nothing about unsynced data can be trusted any more.
    Poison(Error),
}

/// What one round was asked to do.
struct Round {
    flush_seq: u64,
    closing: bool,
    interval_due: bool,
}

pub(crate) struct Writer {
    partition: Arc<Partition>,
    /// `None` after a failed segment creation; the next round creates it again.
    active: Option<Active>,
    /// The base offset of the next segment to create.
    next_base: u64,
    bytes: Vec<u8>,
    frames: Vec<QueuedFrame>,
    next_interval_sync: Option<Instant>,
    flush_done: u64,
}

impl Writer {
    pub fn new(partition: Arc<Partition>, active: Active) -> Writer {
        let next_base = active.written_end_offset;
        Writer {
            partition,
            active: Some(active),
            next_base,
            bytes: Vec::new(),
            frames: Vec::new(),
            next_interval_sync: None,
            flush_done: 0,
        }
    }

    /// Runs rounds until the log closes or the partition is poisoned.
    pub fn run(mut self) {
        loop {
            let round = self.take_round();
            let sync = self.wants_sync(&round);
            match self.commit_round(sync) {
                Ok(()) => {
                    if sync {
                        self.flush_done = round.flush_seq;
                    }
                    self.publish(sync, round.flush_seq);
                }
                Err(Fault::Repairable(error)) => {
                    let repaired = self.repair();
                    match repaired {
                        Ok(()) => self.partition.fail(error, false),
                        Err(_) => self.partition.fail(error, true),
                    }
                }
                Err(Fault::Poison(error)) => self.partition.fail(error, true),
            }
            let stop = round.closing || self.partition.queue.lock().poisoned.is_some();
            if stop {
                break;
            }
        }
        self.partition.writer_exited();
    }

    /// Waits for work and takes the whole queue.
    fn take_round(&mut self) -> Round {
        let partition = self.partition.clone();
        let mut queue = partition.queue.lock();
        let mut interval_due = false;
        loop {
            if !queue.frames.is_empty() || queue.flush_requested > self.flush_done || queue.closing
            {
                break;
            }
            match self.next_interval_sync {
                Some(deadline) if Instant::now() >= deadline => {
                    interval_due = true;
                    break;
                }
                Some(deadline) => {
                    queue.writer_waiting = true;
                    partition.work.wait_until(&mut queue, deadline);
                }
                None => {
                    queue.writer_waiting = true;
                    partition.work.wait(&mut queue);
                }
            }
            queue.writer_waiting = false;
        }
        queue.writer_waiting = false;
        debug_assert!(self.bytes.is_empty() && self.frames.is_empty());
        std::mem::swap(&mut queue.bytes, &mut self.bytes);
        std::mem::swap(&mut queue.frames, &mut self.frames);
        let round = Round {
            flush_seq: queue.flush_requested,
            closing: queue.closing,
            interval_due,
        };
        drop(queue);
        partition.space.notify_all();
        round
    }

    fn wants_sync(&mut self, round: &Round) -> bool {
        let flush = round.flush_seq > self.flush_done || round.closing;
        match self.partition.config.durability {
            Durability::Sync => flush || !self.frames.is_empty(),
            Durability::Interval(interval) => {
                if !self.frames.is_empty() && self.next_interval_sync.is_none() {
                    self.next_interval_sync = Some(Instant::now() + interval);
                }
                let due = round.interval_due
                    || self
                        .next_interval_sync
                        .is_some_and(|deadline| Instant::now() >= deadline);
                if flush || due {
                    self.next_interval_sync = None;
                    true
                } else {
                    false
                }
            }
            Durability::Buffered => flush,
        }
    }

    /// Writes the taken frames and syncs if asked. On success the frames are written (and
    /// synced if `sync`), not yet published.
    fn commit_round(&mut self, sync: bool) -> Result<(), Fault> {
        let bytes = std::mem::take(&mut self.bytes);
        let mut frames = std::mem::take(&mut self.frames);
        let result = self.write_frames(&bytes, &frames);
        self.bytes = bytes;
        self.bytes.clear();
        frames.clear();
        self.frames = frames;
        result?;
        if sync {
            if let Some(active) = &self.active {
                if active.written_position > active.visible_position
                    || self.partition.config.durability != Durability::Sync
                {
                    active.data.sync_data().map_err(Fault::Poison)?;
                }
            }
        }
        Ok(())
    }

    fn write_frames(&mut self, bytes: &[u8], frames: &[QueuedFrame]) -> Result<(), Fault> {
        let config = self.partition.config.clone();
        let mut chunk_start = 0usize;
        let mut cursor = 0usize;
        for frame in frames {
            let len = u64::from(frame.len);
            let active = self.ensure_active().map_err(Fault::Repairable)?;
            let position = active.written_position + (cursor - chunk_start) as u64;
            let full = position + len > config.segment_bytes;
            let old = config
                .segment_age_max_ms
                .is_some_and(|age_ms| now_ms().saturating_sub(active.created_ms) >= age_ms);
            if (full || old) && (active.has_data() || cursor > chunk_start) {
                // The frames before this one end where it begins.
                self.write_chunk(&bytes[chunk_start..cursor], frame.base_offset)?;
                chunk_start = cursor;
                self.roll()?;
                continue_after_roll(self)?;
            }
            let active = self.active.as_mut().expect("ensured above");
            let position = active.written_position + (cursor - chunk_start) as u64;
            if config
                .index_policy
                .wants_entry(active.last_entry_position, position)
            {
                active.new_entries.push(IndexEntry {
                    offset: frame.base_offset,
                    position,
                    timestamp_ms: frame.timestamp_ms,
                });
                active.last_entry_position = Some(position);
            }
            cursor += frame.len as usize;
        }
        let end_offset = frames.last().map(QueuedFrame::end_offset);
        if let Some(end_offset) = end_offset {
            self.write_chunk(&bytes[chunk_start..cursor], end_offset)?;
        }
        Ok(())
    }

    /// Writes contiguous frames at the active segment's written end.
    fn write_chunk(&mut self, chunk: &[u8], end_offset: u64) -> Result<(), Fault> {
        if chunk.is_empty() {
            return Ok(());
        }
        let active = self.active.as_mut().expect("a chunk always has a segment");
        active
            .data
            .write_all_at(chunk, active.written_position)
            .map_err(Fault::Repairable)?;
        active.written_position += chunk.len() as u64;
        active.written_end_offset = end_offset;
        Ok(())
    }

    /// Creates the segment to write into, if the last one was sealed.
    fn ensure_active(&mut self) -> Result<&mut Active> {
        if self.active.is_none() {
            let partition = &self.partition;
            let created_ms = now_ms();
            let created = segment::create(
                &partition.dir,
                SegmentHeader {
                    partition: partition.id,
                    base_offset: self.next_base,
                    created_ms,
                },
                partition.config.segment_bytes,
                &partition.config.faults,
            )?;
            partition.segments.write().push(created.segment.clone());
            let start = segment::SEGMENT_HEADER_LEN as u64;
            self.active = Some(Active {
                segment: created.segment,
                data: created.data,
                index: created.index,
                created_ms,
                written_position: start,
                written_end_offset: self.next_base,
                visible_position: start,
                visible_end_offset: self.next_base,
                new_entries: Vec::new(),
                last_entry_position: None,
                last_visible_entry_position: None,
                index_file_len: index::INDEX_HEADER_LEN as u64,
                index_synced_position: start,
            });
        }
        Ok(self.active.as_mut().expect("just created"))
    }

    /// Seals the active segment: syncs its data (in every durability mode, so that a later
    /// segment never exists on disk while an earlier one misses data), publishes it, completes
    /// and syncs its index, and cuts its preallocated tail.
    fn roll(&mut self) -> Result<(), Fault> {
        let mut active = self.active.take().expect("roll needs a segment");
        if let Err(error) = active.data.sync_data() {
            self.active = Some(active);
            return Err(Fault::Poison(error));
        }
        self.next_base = active.written_end_offset;
        make_visible(&self.partition, &mut active, None);
        // The index is derived data: failing to complete it costs a rebuild on the first read
        // of this segment, not correctness. So its errors do not fail the appends.
        let _ = active.index.sync_data();
        let _ = active.data.set_len(active.written_position);
        Ok(())
    }

    /// Publishes what the round made visible.
    fn publish(&mut self, synced: bool, flush_seq: u64) {
        let visible = synced || self.partition.config.durability == Durability::Buffered;
        let flush_done = synced.then_some(flush_seq);
        match (&mut self.active, visible) {
            (Some(active), true) => {
                make_visible(&self.partition, active, flush_done);
                if synced
                    && active.visible_position >= active.index_synced_position + INDEX_SYNC_BYTES
                    && active.index.sync_data().is_ok()
                {
                    active.index_synced_position = active.visible_position;
                }
            }
            _ => {
                if let Some(seq) = flush_done {
                    let end = self.partition.status.lock().visible_end;
                    self.partition.publish(end, Some(seq));
                }
            }
        }
    }

    /// After a failed write: cut the file back to the visible end, so that no torn bytes stay
    /// behind it, and forget the written but invisible frames.
    fn repair(&mut self) -> Result<()> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        active.data.set_len(active.visible_position)?;
        // Best effort: without preallocation, appends still work, as a growing file.
        let _ = active.data.preallocate(self.partition.config.segment_bytes);
        active.written_position = active.visible_position;
        active.written_end_offset = active.visible_end_offset;
        active.new_entries.clear();
        active.last_entry_position = active.last_visible_entry_position;
        Ok(())
    }
}

/// After a roll, the next frame needs a fresh segment; creating it can fail like a write.
fn continue_after_roll(writer: &mut Writer) -> Result<(), Fault> {
    writer
        .ensure_active()
        .map(|_| ())
        .map_err(Fault::Repairable)
}

/// Makes everything written to `active` visible: to readers (index entries first, then the
/// visible end) and to tickets.
fn make_visible(partition: &Partition, active: &mut Active, flush_done: Option<u64>) {
    if !active.new_entries.is_empty() {
        active.segment.push_index_entries(&active.new_entries);
        let mut encoded = Vec::with_capacity(active.new_entries.len() * index::INDEX_ENTRY_LEN);
        for entry in &active.new_entries {
            index::encode_entry(&mut encoded, active.segment.base_offset, entry);
        }
        // Derived data: on failure the index is rebuilt by recovery or by the first reader.
        if active
            .index
            .write_all_at(&encoded, active.index_file_len)
            .is_ok()
        {
            active.index_file_len += encoded.len() as u64;
        }
        active.new_entries.clear();
        active.last_visible_entry_position = active.last_entry_position;
    }
    active.visible_position = active.written_position;
    active.visible_end_offset = active.written_end_offset;
    partition.publish(active.visible_end_offset, flush_done);
}
