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
//! is repaired when possible by cutting the file back to where the round began (and syncing
//! that cut); the appends of the round fail, earlier ones stay, later appends proceed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::options::Durability;
use crate::storage::index::IndexEntry;
use crate::storage::segment::{self, SegmentHeader};
use crate::write::active::{make_visible, persist_index, Active};
use crate::write::partition::{self, now_ms, Partition, QueuedFrame};

/// The longest a `Sync` round waits to gather the appenders of the previous round.
pub const GATHER_WINDOW_MAX: Duration = Duration::from_micros(500);
/// Gathering starts only after a round of at least this many frames: with fewer appenders per
/// partition, waiting for them costs more than the fsyncs it saves (measured: 8 partitions, 16
/// producers).
pub const GATHER_FRAMES_MIN: usize = 4;

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
    /// Frames in the last `Sync` round, and how long its fdatasync took: the next round waits
    /// a little for that many appenders to come back (see `take_round`).
    last_round_frames: usize,
    last_sync: Duration,
    /// Timestamp of the last frame written. A new segment's `created_ms` is at least this, so
    /// that recovery of an empty segment never restarts timestamps below an earlier frame's.
    last_timestamp_ms: u64,
}

impl Writer {
    pub fn new(partition: Arc<Partition>, active: Active, last_timestamp_ms: u64) -> Writer {
        let next_base = active.written_end_offset;
        Writer {
            partition,
            active: Some(active),
            next_base,
            bytes: Vec::new(),
            frames: Vec::new(),
            next_interval_sync: None,
            flush_done: 0,
            last_round_frames: 0,
            last_sync: Duration::ZERO,
            last_timestamp_ms,
        }
    }

    /// Runs rounds until the log closes or the partition is poisoned.
    pub fn run(mut self) {
        let _exit = ExitGuard(self.partition.clone());
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
                Err(Fault::Repairable(error)) => match self.repair() {
                    Ok(()) => {
                        self.partition.fail(error, false);
                        // The repair synced what survives and the rest is reported lost, so a
                        // flush that asked for this round is done; waiting for a later round
                        // could wait forever while writes keep failing.
                        self.flush_done = self.flush_done.max(round.flush_seq);
                        self.partition.flush_completed(round.flush_seq);
                    }
                    Err(_) => self.partition.fail(error, true),
                },
                Err(Fault::Poison(error)) => self.partition.fail(error, true),
            }
            let stop = round.closing || self.partition.queue.lock().poisoned.is_some();
            if stop {
                break;
            }
        }
    }

    /// Waits for work and takes the whole queue.
    fn take_round(&mut self) -> Round {
        let partition = self.partition.clone();
        let mut queue = partition.queue.lock();
        let sync_mode = partition.config.durability == Durability::Sync;
        // Group commit under Sync: the appenders released by the last round come back within
        // microseconds, but on few cores not all before the next round starts, and rounds would
        // settle into alternating halves. So when the last round carried several appends, wait
        // for as many more (bounded by half the last fsync's duration) before writing. A lone
        // appender, or a few per partition, never wait (GATHER_FRAMES_MIN).
        let mut gather = (sync_mode && self.last_round_frames >= GATHER_FRAMES_MIN).then(|| {
            let window = (self.last_sync / 2).min(GATHER_WINDOW_MAX);
            (
                queue.frames.len() + self.last_round_frames,
                Instant::now() + window,
            )
        });
        queue.gather_target = gather.map_or(1, |(target, _)| target);
        let mut interval_due = false;
        loop {
            if queue.flush_requested > self.flush_done || queue.closing {
                break;
            }
            let now = Instant::now();
            if gather.is_some_and(|(_, until)| now >= until) {
                gather = None;
                queue.gather_target = 1;
            }
            // Under Sync every appender is waiting: write at once. Otherwise nobody waits, so
            // let small rounds linger until they are worth a write call.
            // While gathering, the writer must wake at the window's end even with an empty
            // queue: appenders do not wake it before the target is reached.
            let mut deadline = gather.map(|(_, until)| until);
            if !queue.frames.is_empty() {
                if sync_mode {
                    match gather {
                        Some((target, until)) if queue.frames.len() < target => {
                            deadline = Some(until);
                        }
                        _ => break,
                    }
                } else if queue.bytes.len() >= partition.write_batch_bytes() {
                    break;
                } else {
                    let linger_end = queue.first_queued_at.unwrap_or(now) + partition::LINGER;
                    if now >= linger_end {
                        break;
                    }
                    deadline = Some(linger_end);
                }
            }
            if let Some(sync_at) = self.next_interval_sync {
                if now >= sync_at {
                    interval_due = true;
                    break;
                }
                deadline = Some(deadline.map_or(sync_at, |d: Instant| d.min(sync_at)));
            }
            queue.writer_waiting = true;
            match deadline {
                Some(deadline) => {
                    partition.work.wait_until(&mut queue, deadline);
                }
                None => partition.work.wait(&mut queue),
            }
            queue.writer_waiting = false;
        }
        queue.first_queued_at = None;
        queue.gather_target = 1;
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
                    // Options bound the interval; checked all the same, as an overflow here
                    // would stop the writer.
                    self.next_interval_sync = Instant::now().checked_add(interval);
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
        self.last_round_frames = frames.len();
        if let Some(active) = &mut self.active {
            active.mark_round_start();
        }
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
                    let started = Instant::now();
                    active.data.sync_data().map_err(Fault::Poison)?;
                    self.last_sync = started.elapsed();
                    self.partition.counters.data_syncs.fetch_add(1, Relaxed);
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
            self.last_timestamp_ms = frame.timestamp_ms;
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
        if active.written_position > active.segment.mapped_len() as u64 {
            // Only when the segment could not be preallocated: readers must be able to reach
            // what becomes visible.
            active
                .segment
                .remap(active.data.std())
                .map_err(Fault::Repairable)?;
        }
        let counters = &self.partition.counters;
        counters
            .written_bytes
            .fetch_add(chunk.len() as u64, Relaxed);
        counters.writes.fetch_add(1, Relaxed);
        active.written_end_offset = end_offset;
        Ok(())
    }

    /// Creates the segment to write into, if the last one was sealed.
    fn ensure_active(&mut self) -> Result<&mut Active> {
        if self.active.is_none() {
            let partition = &self.partition;
            let created_ms = now_ms().max(self.last_timestamp_ms);
            let created = segment::create(
                &partition.dir,
                SegmentHeader {
                    partition: partition.id,
                    base_offset: self.next_base,
                    created_ms,
                },
                partition.config.segment_bytes,
                partition.config.index_policy,
                &partition.config.faults,
            )?;
            partition.segments.write().push(created.segment.clone());
            self.active = Some(Active::new(
                created.segment,
                created.data,
                created.index,
                created_ms,
                segment::SEGMENT_HEADER_LEN as u64,
                self.next_base,
                0,
                None,
            ));
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
        let counters = &self.partition.counters;
        counters.data_syncs.fetch_add(1, Relaxed);
        counters.segments_rolled.fetch_add(1, Relaxed);
        self.next_base = active.written_end_offset;
        active.synced_position = active.written_position;
        make_visible(&self.partition, &mut active, None);
        active
            .segment
            .seal(active.written_end_offset, active.written_position);
        persist_index(&mut active);
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
        let mut published = false;
        if let Some(active) = &mut self.active {
            if synced {
                active.synced_position = active.written_position;
            }
            if visible {
                make_visible(&self.partition, active, flush_done);
                published = true;
            }
            if synced {
                persist_index(active);
            }
        }
        if let (false, Some(seq)) = (published, flush_done) {
            let end = self.partition.status.lock().visible_end;
            self.partition.publish(end, Some(seq));
        }
    }

    /// After a failed write: cut the file back to where the round began (so that no torn bytes
    /// stay behind the last good frame), sync the cut, and publish the earlier rounds it kept.
    fn repair(&mut self) -> Result<()> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        let start = active.round_start;
        active.data.set_len(start.position)?;
        // Best effort: without preallocation, appends still work, as a growing file.
        let _ = active.data.preallocate(self.partition.config.segment_bytes);
        // The cut must be durable before new frames are written over the old positions:
        // otherwise a power loss could bring back dropped frames behind them. The same sync
        // makes the earlier rounds durable, so they are published: they are not lost, and
        // their offsets are never given to other events.
        active.data.sync_all()?;
        active.written_position = start.position;
        active.written_end_offset = start.end_offset;
        active.new_entries.truncate(start.new_entries);
        active.last_entry_position = start.last_entry_position;
        active.synced_position = start.position;
        make_visible(&self.partition, active, None);
        persist_index(active);
        Ok(())
    }
}

/// Tells waiters that the writer stopped, however it stopped. If it panicked (a bug), the
/// partition is poisoned first, so that no ticket waits forever and no append is reported
/// durable.
struct ExitGuard(Arc<Partition>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let error = Error::Io {
                op: "writer thread",
                path: self.0.dir.clone(),
                source: std::io::Error::other("the partition's writer thread panicked"),
            };
            self.0.fail(error, true);
        }
        self.0.writer_exited();
    }
}

/// After a roll, the next frame needs a fresh segment; creating it can fail like a write.
fn continue_after_roll(writer: &mut Writer) -> Result<(), Fault> {
    writer
        .ensure_active()
        .map(|_| ())
        .map_err(Fault::Repairable)
}
