//! The one place that decides where an append goes: under one lock it checks the append,
//! assigns its offsets (per partition), its global positions (one order across the log) and its
//! timestamp, and encodes its frame straight into the pending journal record.
//!
//! Appenders never touch a file. The writer thread (`writer.rs`) takes everything pending at
//! once, as one journal record. Because assignment and queueing happen under the same lock, the
//! order of offsets, of global positions and of the journal are one and the same.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::options::Durability;
use crate::record::Event;
use crate::storage::frame::{self, FrameStamp};
use crate::storage::journal::{ENTRY_TAG_LEN, RECORD_HEADER_LEN};
use crate::write::ticket::{Generation, Progress, Ticket};
use crate::write::{now_ms, Appended, Config};

/// Offsets and global positions stay below this, so that adding a batch's event count can never
/// overflow. Reaching it takes 2^62 events; only a crafted file gets near it.
pub(crate) const POSITION_MAX: u64 = 1 << 62;

/// One frame waiting in the pending record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueuedFrame {
    pub partition: u32,
    /// Where the frame's journal entry (partition tag, then frame) starts in the pending bytes.
    pub entry_start: usize,
    pub frame_len: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub timestamp_ms: u64,
    pub global_position: u64,
}

impl QueuedFrame {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn global_end(&self) -> u64 {
        self.global_position + u64::from(self.record_count)
    }

    /// The frame's bytes inside the pending bytes it was taken with.
    pub fn bytes<'b>(&self, pending: &'b [u8]) -> &'b [u8] {
        let start = self.entry_start + ENTRY_TAG_LEN;
        &pending[start..start + self.frame_len as usize]
    }
}

/// Why appends are refused before they are queued.
#[derive(Clone)]
pub(crate) enum Refusal {
    /// An fsync failed: the log refuses writes until it is reopened.
    Poisoned(Arc<Error>),
    /// Writes fail (a full disk); the acknowledged appends already queued are retried, and new
    /// ones are refused until a retry succeeds.
    Stalled(Arc<Error>),
}

/// What the appenders and the writer exchange, under one lock.
pub(crate) struct Pending {
    /// The journal record being filled: `RECORD_HEADER_LEN` bytes of room, then entries.
    pub bytes: Vec<u8>,
    pub frames: Vec<QueuedFrame>,
    pub next_offsets: Vec<u64>,
    pub next_global: u64,
    pub last_timestamp_ms: u64,
    pub generation: Arc<Generation>,
    pub refusal: Option<Refusal>,
    /// Incremented by each flush request; the writer reports back the value it completed.
    pub flush_requested: u64,
    pub closing: bool,
    pub writer_waiting: bool,
    /// When the oldest frame now pending was queued (kept only outside `Sync`).
    pub first_queued_at: Option<Instant>,
    /// Under `Sync`, the number of pending frames at which the writer wants to be woken.
    pub gather_target: usize,
}

impl Pending {
    /// Bytes of frames pending (without the room for the record header).
    pub fn frame_bytes(&self) -> usize {
        self.bytes.len().saturating_sub(RECORD_HEADER_LEN)
    }
}

pub(crate) struct Sequencer {
    pub pending: Mutex<Pending>,
    /// The writer waits here for work.
    pub work: Condvar,
    /// Appenders wait here for room.
    pub space: Condvar,
    config: Arc<Config>,
}

/// Where a recovered log continues.
pub(crate) struct Start {
    pub next_offsets: Vec<u64>,
    pub next_global: u64,
    pub last_timestamp_ms: u64,
}

impl Sequencer {
    pub fn new(config: Arc<Config>, start: Start) -> Sequencer {
        Sequencer {
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                frames: Vec::new(),
                next_offsets: start.next_offsets,
                next_global: start.next_global,
                last_timestamp_ms: start.last_timestamp_ms,
                generation: Arc::new(Generation::default()),
                refusal: None,
                flush_requested: 0,
                closing: false,
                writer_waiting: false,
                first_queued_at: None,
                gather_target: 1,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            config,
        }
    }

    /// Encodes and queues one frame for `partition`; returns the ticket that resolves when it is
    /// done.
    pub fn enqueue(
        &self,
        progress: &Arc<Progress>,
        partition: u32,
        key: &[u8],
        events: &[Event<'_>],
    ) -> Result<Ticket> {
        self.enqueue_then(
            partition,
            key,
            events,
            |generation, appended, global_end| Ticket {
                progress: progress.clone(),
                generation: generation.clone(),
                appended,
                global_end,
            },
        )
    }

    /// Encodes and queues one frame for `partition`; returns where it will be, without a
    /// ticket: for appends acknowledged when queued, which no one waits for.
    pub fn enqueue_unwatched(
        &self,
        partition: u32,
        key: &[u8],
        events: &[Event<'_>],
    ) -> Result<Appended> {
        self.enqueue_then(partition, key, events, |_, appended, _| appended)
    }

    /// Encodes and queues one frame, then calls `then` with its generation, its place and the
    /// end of its global positions, still under the lock.
    fn enqueue_then<R>(
        &self,
        partition: u32,
        key: &[u8],
        events: &[Event<'_>],
        then: impl FnOnce(&Arc<Generation>, Appended, u64) -> R,
    ) -> Result<R> {
        let mut pending = self.pending.lock();
        loop {
            match &pending.refusal {
                Some(Refusal::Poisoned(source)) => {
                    return Err(Error::Poisoned {
                        source: source.clone(),
                    })
                }
                Some(Refusal::Stalled(source)) => {
                    return Err(Error::WritesStalled {
                        source: source.clone(),
                    })
                }
                None => {}
            }
            if pending.closing {
                return Err(Error::Closed);
            }
            // Backpressure: the pending record may pass its bound by at most one batch.
            if (pending.frame_bytes() as u64) < self.config.queue_bytes_max {
                break;
            }
            // A full queue must be written now, whatever the writer is waiting for.
            if pending.writer_waiting {
                self.work.notify_one();
            }
            self.space.wait(&mut pending);
        }
        let base_offset = pending.next_offsets[partition as usize];
        let global_position = pending.next_global;
        if base_offset > POSITION_MAX || global_position > POSITION_MAX {
            return Err(Error::InvalidOptions(
                "the log's offsets are exhausted (2^62 events)".into(),
            ));
        }
        let timestamp_ms = now_ms().max(pending.last_timestamp_ms);
        let first = pending.bytes.is_empty();
        if first {
            pending.bytes.resize(RECORD_HEADER_LEN, 0);
        }
        let entry_start = pending.bytes.len();
        pending.bytes.extend_from_slice(&partition.to_le_bytes());
        pending.bytes.extend_from_slice(&0u32.to_le_bytes());
        let stamp = FrameStamp {
            base_offset,
            timestamp_ms,
        };
        let count = match frame::encode(&mut pending.bytes, stamp, key, events, &self.config.limits)
        {
            Ok(count) => count,
            Err(error) => {
                // The frame rolled itself back; take the tag (and the room) back too.
                let keep = if first { 0 } else { entry_start };
                pending.bytes.truncate(keep);
                return Err(error);
            }
        };
        let frame_len = (pending.bytes.len() - entry_start - ENTRY_TAG_LEN) as u32;
        let queued = QueuedFrame {
            partition,
            entry_start,
            frame_len,
            base_offset,
            record_count: count,
            timestamp_ms,
            global_position,
        };
        pending.frames.push(queued);
        pending.next_offsets[partition as usize] = queued.end_offset();
        pending.next_global = queued.global_end();
        pending.last_timestamp_ms = timestamp_ms;
        let result = then(
            &pending.generation,
            Appended {
                partition,
                offset: base_offset,
                count,
            },
            queued.global_end(),
        );
        // Wake the writer when it has something to do at once: under Sync every append (or
        // the gathered number of them), else the first frame of a round (so that it starts
        // its linger clock) and a full write batch.
        let sync_mode = self.config.durability == Durability::Sync;
        if !sync_mode && first {
            pending.first_queued_at = Some(Instant::now());
        }
        let wanted = if sync_mode {
            pending.frames.len() >= pending.gather_target
        } else {
            first || pending.frame_bytes() >= self.config.write_batch_bytes()
        };
        if pending.writer_waiting && wanted {
            self.work.notify_one();
        }
        drop(pending);
        Ok(result)
    }

    /// Asks the writer to write and sync everything pending; returns the request's number.
    pub fn request_flush(&self) -> u64 {
        let mut pending = self.pending.lock();
        pending.flush_requested += 1;
        if pending.writer_waiting {
            self.work.notify_one();
        }
        pending.flush_requested
    }

    /// Tells the writer to write what is pending and stop; refuses later appends.
    pub fn close(&self) {
        let mut pending = self.pending.lock();
        pending.closing = true;
        self.work.notify_one();
        drop(pending);
        self.space.notify_all();
    }
}
