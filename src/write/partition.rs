//! One partition as appenders, readers and its writer thread share it.
//!
//! Appenders encode their frame straight into the partition's queue under one short lock, which
//! also assigns offsets and timestamps; they never touch a file. The partition's writer thread
//! (`commit.rs`) takes the whole queue at once, writes it with one `write`, syncs once, and then
//! publishes the new visible end. Readers read only below the visible end. Appenders waiting for
//! durability wait on tickets that resolve when the visible end passes them, or fail if their
//! write failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::options::{Durability, Options};
use crate::record::Event;
use crate::storage::frame::{self, EncodeLimits, FrameStamp};
use crate::storage::index::IndexPolicy;
use crate::storage::io::Faults;
use crate::storage::segment::Segment;

/// The settings a partition and its writer need, derived once from [`Options`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub durability: Durability,
    pub segment_bytes: u64,
    pub segment_age_max_ms: Option<u64>,
    pub index_policy: IndexPolicy,
    pub limits: EncodeLimits,
    pub queue_bytes_max: u64,
    pub faults: Faults,
}

impl Config {
    pub fn new(options: &Options) -> Config {
        let byte_limits = options.byte_limits();
        Config {
            durability: options.durability,
            segment_bytes: options.segment_bytes,
            segment_age_max_ms: options
                .segment_age_max
                .map(|age| age.as_millis().min(u128::from(u64::MAX)) as u64),
            index_policy: IndexPolicy {
                interval_bytes: options.index_interval_bytes,
            },
            limits: EncodeLimits {
                event_bytes_max: u64::from(byte_limits.event_bytes_max),
                batch_events_max: u64::from(options.batch_events_max),
                batch_bytes_max: u64::from(byte_limits.batch_bytes_max),
            },
            queue_bytes_max: byte_limits.queue_bytes_max,
            faults: options.fail_points.clone(),
        }
    }
}

/// Where an append landed: its partition, the offset of its first event and how many events it
/// holds (1 for a single append).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
    pub count: u32,
}

impl Appended {
    /// Offset of the last event of the append.
    pub fn last_offset(&self) -> u64 {
        self.offset + u64::from(self.count) - 1
    }

    /// One past the last offset: where the next append to the partition starts at the earliest.
    pub fn end_offset(&self) -> u64 {
        self.offset + u64::from(self.count)
    }
}

/// One frame waiting in the queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueuedFrame {
    pub len: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub timestamp_ms: u64,
}

impl QueuedFrame {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// The appends between two write failures. A failure ends the generation: every append of it
/// at or past `lost_from` failed.
#[derive(Default)]
pub(crate) struct Generation {
    failure: OnceLock<Failure>,
}

struct Failure {
    lost_from: u64,
    error: Arc<Error>,
    poisoned: bool,
}

/// What the appenders and the writer thread exchange, under one lock.
pub(crate) struct Queue {
    /// Encoded frames, back to back, in offset order.
    pub bytes: Vec<u8>,
    pub frames: Vec<QueuedFrame>,
    pub next_offset: u64,
    pub last_timestamp_ms: u64,
    pub generation: Arc<Generation>,
    pub poisoned: Option<Arc<Error>>,
    /// Incremented by each flush request; the writer syncs and reports back the value it saw.
    pub flush_requested: u64,
    pub closing: bool,
    pub writer_waiting: bool,
    /// When the oldest frame now queued was queued (kept only outside `Sync` mode).
    pub first_queued_at: Option<Instant>,
    /// Under `Sync`, the number of queued frames at which the writer wants to be woken.
    pub gather_target: usize,
}

/// Offsets stay below this, so that adding a batch's event count can never overflow. Reaching it
/// takes 2^62 events; only a crafted file name gets near it.
const OFFSET_MAX: u64 = 1 << 62;

/// Outside `Sync` mode, the writer writes once this many bytes are queued...
pub(crate) const WRITE_BATCH_BYTES: usize = 256 << 10;
/// ... or once the oldest queued frame has waited this long. This bounds what a process kill
/// can take from `Interval` and `Buffered` appends that were acknowledged but not yet written.
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// What waiters (tickets, flushes) watch, under one lock.
pub(crate) struct Status {
    pub visible_end: u64,
    pub flush_done: u64,
    /// A failure that no flush or close has reported yet.
    pub unreported: Option<Arc<Error>>,
    pub poisoned: Option<Arc<Error>>,
    pub writer_exited: bool,
}

pub(crate) struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    pub config: Arc<Config>,
    pub queue: Mutex<Queue>,
    /// The writer waits here for work.
    pub work: Condvar,
    /// Appenders wait here for room in the queue.
    pub space: Condvar,
    pub status: Mutex<Status>,
    pub status_changed: Condvar,
    /// Copy of `Status::visible_end` for readers, who must not take locks per record.
    visible_end: AtomicU64,
    /// Segments in base offset order; the last one is the one being written.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    pub counters: Counters,
}

/// Running totals of what the writer did, for [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub data_syncs: AtomicU64,
    pub segments_rolled: AtomicU64,
}

/// What a log's writers have done since it was opened, summed over partitions or for one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `pwrite` calls for segment data (one per round, two across a roll).
    pub writes: u64,
    /// Bytes of frames written to segments.
    pub written_bytes: u64,
    /// `fdatasync` calls on segment data. With group commit this is far below the number of
    /// appends.
    pub data_syncs: u64,
    /// Segments sealed.
    pub segments_rolled: u64,
}

impl Stats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            writes: self.writes - earlier.writes,
            written_bytes: self.written_bytes - earlier.written_bytes,
            data_syncs: self.data_syncs - earlier.data_syncs,
            segments_rolled: self.segments_rolled - earlier.segments_rolled,
        }
    }

    pub(crate) fn add(&mut self, counters: &Counters) {
        self.writes += counters.writes.load(Ordering::Relaxed);
        self.written_bytes += counters.written_bytes.load(Ordering::Relaxed);
        self.data_syncs += counters.data_syncs.load(Ordering::Relaxed);
        self.segments_rolled += counters.segments_rolled.load(Ordering::Relaxed);
    }
}

impl Partition {
    pub fn new(
        id: u32,
        dir: PathBuf,
        config: Arc<Config>,
        segments: Vec<Arc<Segment>>,
        end_offset: u64,
        last_timestamp_ms: u64,
    ) -> Partition {
        Partition {
            id,
            dir,
            config,
            queue: Mutex::new(Queue {
                bytes: Vec::new(),
                frames: Vec::new(),
                next_offset: end_offset,
                last_timestamp_ms,
                generation: Arc::new(Generation::default()),
                poisoned: None,
                flush_requested: 0,
                closing: false,
                writer_waiting: false,
                first_queued_at: None,
                gather_target: 1,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            status: Mutex::new(Status {
                visible_end: end_offset,
                flush_done: 0,
                unreported: None,
                poisoned: None,
                writer_exited: false,
            }),
            status_changed: Condvar::new(),
            visible_end: AtomicU64::new(end_offset),
            segments: RwLock::new(segments),
            counters: Counters::default(),
        }
    }

    /// Outside `Sync`, the queued bytes at which the writer writes at once: a batch, or the
    /// whole queue bound if that is smaller.
    pub fn write_batch_bytes(&self) -> usize {
        let bound = usize::try_from(self.config.queue_bytes_max).unwrap_or(usize::MAX);
        WRITE_BATCH_BYTES.min(bound)
    }

    /// Called by the writer when a round that failed had a flush request: the flush is done,
    /// because everything before it is now durable or reported lost.
    pub fn flush_completed(&self, seq: u64) {
        let mut status = self.status.lock();
        status.flush_done = status.flush_done.max(seq);
        drop(status);
        self.status_changed.notify_all();
    }

    /// One past the last offset readers may see.
    pub fn visible_end(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
    }

    /// Encodes and queues one frame; returns where it will be.
    pub fn enqueue(&self, key: &[u8], events: &[Event<'_>]) -> Result<Appended> {
        self.enqueue_then(key, events, |_, appended| appended)
    }

    /// Encodes and queues one frame; returns the ticket that resolves when it is visible.
    pub fn enqueue_with_ticket(
        self: &Arc<Self>,
        key: &[u8],
        events: &[Event<'_>],
    ) -> Result<Ticket> {
        self.enqueue_then(key, events, |generation, appended| Ticket {
            partition: self.clone(),
            generation: generation.clone(),
            appended,
        })
    }

    /// Encodes and queues one frame, then calls `then` with the frame's generation and
    /// position while still holding the queue lock.
    fn enqueue_then<R>(
        &self,
        key: &[u8],
        events: &[Event<'_>],
        then: impl FnOnce(&Arc<Generation>, Appended) -> R,
    ) -> Result<R> {
        let mut queue = self.queue.lock();
        loop {
            if let Some(error) = &queue.poisoned {
                return Err(Error::Poisoned {
                    partition: self.id,
                    source: error.clone(),
                });
            }
            if queue.closing {
                return Err(Error::Closed);
            }
            // Backpressure: the queue may pass its bound by at most one batch.
            if (queue.bytes.len() as u64) < self.config.queue_bytes_max {
                break;
            }
            // A full queue must be written now, whatever the writer is waiting for.
            if queue.writer_waiting {
                self.work.notify_one();
            }
            self.space.wait(&mut queue);
        }
        if queue.next_offset > OFFSET_MAX {
            return Err(Error::corrupt(
                &self.dir,
                0,
                "the partition's offsets are exhausted",
            ));
        }
        let timestamp_ms = now_ms().max(queue.last_timestamp_ms);
        let stamp = FrameStamp {
            base_offset: queue.next_offset,
            timestamp_ms,
        };
        let start = queue.bytes.len();
        let count = frame::encode(&mut queue.bytes, stamp, key, events, &self.config.limits)?;
        let len = (queue.bytes.len() - start) as u32;
        queue.frames.push(QueuedFrame {
            len,
            base_offset: stamp.base_offset,
            record_count: count,
            timestamp_ms,
        });
        queue.next_offset += u64::from(count);
        queue.last_timestamp_ms = timestamp_ms;
        let result = then(
            &queue.generation,
            Appended {
                partition: self.id,
                offset: stamp.base_offset,
                count,
            },
        );
        // Wake the writer when it has something to do at once: under Sync every append, else
        // the first frame of a round (so it starts the linger clock) and a full batch.
        let sync_mode = self.config.durability == Durability::Sync;
        if !sync_mode && start == 0 {
            queue.first_queued_at = Some(Instant::now());
        }
        let wanted = if sync_mode {
            queue.frames.len() >= queue.gather_target
        } else {
            start == 0 || queue.bytes.len() >= self.write_batch_bytes()
        };
        if queue.writer_waiting && wanted {
            self.work.notify_one();
        }
        drop(queue);
        Ok(result)
    }

    /// Asks the writer to write and sync everything queued so far, and waits for it.
    /// Reports any write failure since the last report.
    pub fn flush(&self) -> Result<()> {
        let seq = {
            let mut queue = self.queue.lock();
            queue.flush_requested += 1;
            if queue.writer_waiting {
                self.work.notify_one();
            }
            queue.flush_requested
        };
        let mut status = self.status.lock();
        loop {
            if let Some(error) = &status.poisoned {
                let error = error.clone();
                status.unreported = None;
                return Err(Error::Poisoned {
                    partition: self.id,
                    source: error,
                });
            }
            if status.flush_done >= seq {
                break;
            }
            if status.writer_exited {
                return Err(Error::Closed);
            }
            self.status_changed.wait(&mut status);
        }
        match status.unreported.take() {
            Some(error) => Err(self.failure_error(error, false)),
            None => Ok(()),
        }
    }

    fn failure_error(&self, error: Arc<Error>, poisoned: bool) -> Error {
        if poisoned {
            Error::Poisoned {
                partition: self.id,
                source: error,
            }
        } else {
            Error::AppendFailed {
                partition: self.id,
                source: error,
            }
        }
    }

    /// Called by the writer: `end` is now visible to readers and done for tickets.
    pub fn publish(&self, end: u64, flush_done: Option<u64>) {
        let mut status = self.status.lock();
        debug_assert!(end >= status.visible_end);
        status.visible_end = end;
        self.visible_end.store(end, Ordering::Release);
        if let Some(seq) = flush_done {
            status.flush_done = status.flush_done.max(seq);
        }
        drop(status);
        self.status_changed.notify_all();
    }

    /// Called by the writer after a failure: every queued append and every written but not yet
    /// visible one is dropped, and their tickets fail. Offsets continue from the visible end.
    pub fn fail(&self, error: Error, poisoned: bool) {
        let error = Arc::new(error);
        let mut queue = self.queue.lock();
        let mut status = self.status.lock();
        let lost_from = status.visible_end;
        queue.bytes.clear();
        queue.frames.clear();
        queue.next_offset = lost_from;
        let ended = std::mem::take(&mut queue.generation);
        if poisoned {
            queue.poisoned = Some(error.clone());
            status.poisoned = Some(error.clone());
        }
        // Set under the status lock, so a waiting ticket sees the failure before any visible
        // end that a later generation publishes.
        let _ = ended.failure.set(Failure {
            lost_from,
            error: error.clone(),
            poisoned,
        });
        // Under Sync every lost append is reported to its appender (or its ticket). Otherwise
        // `append` returned before the write, so the failure is kept for the next flush/close.
        if self.config.durability != Durability::Sync {
            status.unreported = Some(error);
        }
        drop(status);
        drop(queue);
        self.space.notify_all();
        self.status_changed.notify_all();
    }

    /// Called by the writer when it stops.
    pub fn writer_exited(&self) {
        self.status.lock().writer_exited = true;
        self.status_changed.notify_all();
    }
}

/// A queued append. It already knows its offsets; [`Ticket::wait`] returns when the append is
/// done in the sense of the log's [`Durability`]: synced for `Sync` and `Interval`, written to
/// the OS for `Buffered`.
#[must_use = "an append is only known to be durable once its ticket's wait() returns Ok"]
pub struct Ticket {
    partition: Arc<Partition>,
    generation: Arc<Generation>,
    appended: Appended,
}

impl Ticket {
    /// Where the append will be, if it succeeds.
    pub fn appended(&self) -> Appended {
        self.appended
    }

    /// Waits until the append is durable (see [`Durability`]).
    ///
    /// # Errors
    ///
    /// [`Error::AppendFailed`] if writing it failed (it is not in the log), [`Error::Poisoned`]
    /// if an fsync failed before it was durable, [`Error::Closed`] if the log closed first.
    pub fn wait(self) -> Result<Appended> {
        let partition = &self.partition;
        let end = self.appended.end_offset();
        let mut status = partition.status.lock();
        loop {
            if let Some(failure) = self.generation.failure.get() {
                if end > failure.lost_from {
                    return Err(partition.failure_error(failure.error.clone(), failure.poisoned));
                }
                return Ok(self.appended);
            }
            if status.visible_end >= end {
                return Ok(self.appended);
            }
            if status.writer_exited {
                return Err(Error::Closed);
            }
            partition.status_changed.wait(&mut status);
        }
    }

    /// True once [`wait`](Self::wait) would return without blocking.
    pub fn is_done(&self) -> bool {
        let status = self.partition.status.lock();
        self.generation.failure.get().is_some()
            || status.visible_end >= self.appended.end_offset()
            || status.writer_exited
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: outside `Sync`, an appender that found the queue full waited for room
    /// without waking the writer, which then slept out its whole linger with a full queue.
    #[test]
    fn an_appender_blocked_on_a_full_queue_wakes_the_writer() {
        let options = Options::default()
            .durability(Durability::Buffered)
            .batch_bytes_max(1024)
            .event_bytes_max(1024)
            .queue_bytes_max(4096);
        let config = Arc::new(Config::new(&options));
        let partition = Arc::new(Partition::new(0, PathBuf::new(), config, Vec::new(), 0, 0));
        let payload = [0u8; 900];
        // Fill the queue to its bound, as appends do while the writer lingers.
        while (partition.queue.lock().bytes.len() as u64) < 4096 {
            partition.enqueue(b"k", &[Event::new(&payload)]).unwrap();
        }
        // Play the writer: wait for work, as take_round does while it lingers.
        let mut queue = partition.queue.lock();
        queue.writer_waiting = true;
        let appender = {
            let partition = partition.clone();
            std::thread::spawn(move || partition.enqueue(b"k", &[Event::new(&[0u8; 900])]))
        };
        // The bound only decides how long a failure takes; a working wake returns at once.
        let woken = !partition
            .work
            .wait_for(&mut queue, Duration::from_secs(10))
            .timed_out();
        queue.writer_waiting = false;
        // Take the queue as the writer would, so that the appender can finish.
        queue.bytes.clear();
        queue.frames.clear();
        drop(queue);
        partition.space.notify_all();
        appender.join().unwrap().unwrap();
        assert!(
            woken,
            "an appender blocked on a full queue did not wake the writer"
        );
    }
}
