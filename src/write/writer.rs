//! The writer thread: one for the whole log, whatever the partition count.
//!
//! Each round takes everything the sequencer queued since the last round and writes it as one
//! journal record (more when a round is very large or rolls a partition twice), syncs the
//! journal once if the durability mode asks for it, writes the frames to their partitions'
//! segments, and then publishes: readers see the new records, tickets resolve. While a round
//! syncs, appenders fill the next one, so N concurrent appenders on any partitions share one
//! fsync.
//!
//! Failures (the table is in `docs/design.md`):
//! - before the journal record is written (a segment or the journal cannot grow, the journal
//!   write fails): nothing of the round is on disk. Under `Sync` the round's appends and
//!   everything queued fail and offsets continue where the written data ends: none of those
//!   offsets was acknowledged. Otherwise the appends were acknowledged already, so the round is
//!   kept and retried with backoff while new appends are refused: offsets handed out are final.
//! - a failed fsync, or a failed write after the journal record: the log is poisoned.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use crate::error::{Error, LostRange};
use crate::options::Durability;
use crate::storage::journal::{Checkpoint, ENTRY_TAG_LEN, RECORD_HEADER_LEN};
use crate::write::active::{Demand, Fault, Lane};
use crate::write::journal::JournalWriter;
use crate::write::sequencer::{QueuedFrame, Refusal};
use crate::write::ticket::SPIN_PAUSES;
use crate::write::{Counters, Shared};

/// The longest a `Sync` round waits to gather the appenders of the previous round.
pub const GATHER_WINDOW_MAX: Duration = Duration::from_micros(500);
/// Gathering starts only after a round of at least this many frames: with fewer appenders,
/// waiting for them costs more than the fsyncs it saves.
pub const GATHER_FRAMES_MIN: usize = 4;
/// How long the writer spins for the next append before it sleeps, after a round of fewer than
/// `GATHER_FRAMES_MIN` frames under `Sync`: a lone appender comes back within microseconds, and
/// waking a sleeping writer costs tens of them on a virtual machine.
pub const WRITER_SPIN: Duration = Duration::from_micros(50);
/// A stalled round is retried after this long at first...
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ... doubling up to this.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What one round was asked to do.
struct Round {
    flush_seq: u64,
    closing: bool,
    interval_due: bool,
    /// Whether the round holds everything queued before it was taken: only then can it
    /// complete a flush (a stalled round is retried without taking what queued meanwhile).
    took_all: bool,
}

/// A round whose write failed cleanly and is retried (outside `Sync`).
struct Stall {
    source: Arc<Error>,
    retry_at: Instant,
    backoff: Duration,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    lanes: Vec<Lane>,
    journal: JournalWriter,
    /// The round being written: room for a record header, then its entries.
    bytes: Vec<u8>,
    frames: Vec<QueuedFrame>,
    /// Frames of the round already written; a stalled round resumes after them.
    written_frames: usize,
    /// A record copied out of `bytes`, for rounds written as several records.
    record: Vec<u8>,
    demands: Vec<Demand>,
    touched: Vec<u32>,
    /// Lanes written since they last published.
    unpublished: Vec<u32>,
    written_journal: u64,
    durable_journal: u64,
    /// Everything below this journal index is visible to readers.
    visible_journal: u64,
    last_timestamp_ms: u64,
    flush_done: u64,
    next_interval_sync: Option<Instant>,
    last_round_frames: usize,
    last_sync: Duration,
    stall: Option<Stall>,
}

/// Where the writer starts: what recovery left.
pub(crate) struct WriterStart {
    pub lanes: Vec<Lane>,
    pub journal: JournalWriter,
    pub journal_end: u64,
    pub last_timestamp_ms: u64,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, start: WriterStart) -> Writer {
        let partitions = start.lanes.len();
        Writer {
            shared,
            lanes: start.lanes,
            journal: start.journal,
            bytes: Vec::new(),
            frames: Vec::new(),
            written_frames: 0,
            record: Vec::new(),
            demands: vec![Demand::default(); partitions],
            touched: Vec::new(),
            unpublished: Vec::new(),
            written_journal: start.journal_end,
            durable_journal: start.journal_end,
            visible_journal: start.journal_end,
            last_timestamp_ms: start.last_timestamp_ms,
            flush_done: 0,
            next_interval_sync: None,
            last_round_frames: 0,
            last_sync: Duration::ZERO,
            stall: None,
        }
    }

    /// Runs rounds until the log closes or is poisoned.
    pub fn run(mut self) {
        let _exit = ExitGuard(self.shared.clone());
        loop {
            let round = self.take_round();
            let poisoned = self.commit_round(&round).is_err();
            if poisoned {
                break;
            }
            if round.closing {
                if let Some(stall) = self.stall.take() {
                    // The last try failed: what is still held or queued is lost, and the
                    // poisoning names it.
                    let error = Error::WritesStalled {
                        source: stall.source,
                    };
                    self.poison(error);
                    break;
                }
                if !self.shared.sequencer.pending.lock().frames.is_empty() {
                    // Appends queued while a stalled round was retried: the next round (which
                    // does not wait, the log is closing) writes them.
                    continue;
                }
                self.close();
                break;
            }
        }
    }

    /// Waits for work and takes everything pending (unless a stalled round is held).
    fn take_round(&mut self) -> Round {
        let shared = self.shared.clone();
        let mut pending = shared.sequencer.pending.lock();
        let sync_mode = shared.config.durability == Durability::Sync;
        // Group commit under Sync: the appenders released by the last round come back within
        // microseconds, but on few cores not all before the next round starts, and rounds would
        // settle into alternating halves. So when the last round carried several appends, wait
        // for as many more (bounded by half the last fsync's duration) before writing.
        let mut gather = (sync_mode && self.last_round_frames >= GATHER_FRAMES_MIN).then(|| {
            let window = (self.last_sync / 2).min(GATHER_WINDOW_MAX);
            (
                pending.frames.len() + self.last_round_frames,
                Instant::now() + window,
            )
        });
        pending.gather_target = gather.map_or(1, |(target, _)| target);
        let mut interval_due = false;
        let mut spun = false;
        loop {
            if pending.flush_requested > self.flush_done || pending.closing {
                break;
            }
            let now = Instant::now();
            let mut deadline;
            if let Some(stall) = &self.stall {
                if now >= stall.retry_at {
                    break;
                }
                deadline = Some(stall.retry_at);
            } else {
                if gather.is_some_and(|(_, until)| now >= until) {
                    gather = None;
                    pending.gather_target = 1;
                }
                // While gathering, the writer must wake at the window's end even with an empty
                // queue: appenders do not wake it before the target is reached.
                deadline = gather.map(|(_, until)| until);
                if !pending.frames.is_empty() {
                    if sync_mode {
                        match gather {
                            Some((target, until)) if pending.frames.len() < target => {
                                deadline = Some(until);
                            }
                            _ => break,
                        }
                    } else if pending.frame_bytes() >= shared.config.write_batch_bytes() {
                        break;
                    } else {
                        let linger_end =
                            pending.first_queued_at.unwrap_or(now) + crate::write::LINGER;
                        if now >= linger_end {
                            break;
                        }
                        deadline = Some(linger_end);
                    }
                }
            }
            if let Some(sync_at) = self.next_interval_sync {
                if now >= sync_at {
                    interval_due = true;
                    break;
                }
                deadline = Some(deadline.map_or(sync_at, |d: Instant| d.min(sync_at)));
            }
            if !spun
                && sync_mode
                && shared.config.spin_wait
                && self.last_round_frames < GATHER_FRAMES_MIN
                && self.stall.is_none()
            {
                // Spin once, with the lock released, then look again under it (an append, a
                // flush or a close may have come meanwhile without waking anyone).
                spun = true;
                Counters::add(&shared.counters.spins, 1);
                let seen = shared.sequencer.wanted.load(Ordering::Acquire);
                let until = now + WRITER_SPIN;
                MutexGuard::unlocked(&mut pending, || {
                    while shared.sequencer.wanted.load(Ordering::Acquire) == seen
                        && Instant::now() < until
                    {
                        for _ in 0..SPIN_PAUSES {
                            std::hint::spin_loop();
                        }
                    }
                });
                continue;
            }
            pending.writer_waiting = true;
            match deadline {
                Some(deadline) => {
                    shared.sequencer.work.wait_until(&mut pending, deadline);
                }
                None => shared.sequencer.work.wait(&mut pending),
            }
            pending.writer_waiting = false;
        }
        pending.gather_target = 1;
        pending.writer_waiting = false;
        // Ids of visible frames are found on disk from now on.
        pending.ids.remove_visible(self.visible_journal);
        let took_all = self.stall.is_none() || pending.frames.is_empty();
        if self.stall.is_none() {
            debug_assert!(self.frames.is_empty());
            pending.first_queued_at = None;
            self.bytes.clear();
            std::mem::swap(&mut pending.bytes, &mut self.bytes);
            std::mem::swap(&mut pending.frames, &mut self.frames);
            self.written_frames = 0;
        }
        let round = Round {
            flush_seq: pending.flush_requested,
            closing: pending.closing,
            interval_due,
            took_all,
        };
        drop(pending);
        shared.sequencer.space.notify_all();
        round
    }

    fn wants_sync(&mut self, round: &Round) -> bool {
        let flush = round.flush_seq > self.flush_done || round.closing;
        match self.shared.config.durability {
            Durability::Sync => true,
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

    /// Writes the round, syncs if asked, publishes. `Err` means the log is poisoned.
    fn commit_round(&mut self, round: &Round) -> Result<(), ()> {
        let sync = self.wants_sync(round);
        let sync_mode = self.shared.config.durability == Durability::Sync;
        self.last_round_frames = self.frames.len() - self.written_frames;
        let mut failed_sync_round = None;
        match self.write_frames() {
            Ok(()) => {
                if self.stall.take().is_some() {
                    self.shared.sequencer.pending.lock().refusal = None;
                    self.shared.progress.set_stalled(None);
                }
            }
            // Under Sync the records written before the failure are synced and published
            // first: failing the rest resolves every earlier ticket, which must not happen
            // before their data is durable.
            Err(Fault::Clean(error)) if self.shared.config.durability == Durability::Sync => {
                failed_sync_round = Some(error);
            }
            Err(Fault::Clean(error)) => self.clean_failure(error),
            Err(Fault::Poison(error)) => {
                self.poison(error);
                return Err(());
            }
        }
        if self.stall.is_none() && failed_sync_round.is_none() {
            self.frames.clear();
            self.written_frames = 0;
        }
        if sync {
            let started = Instant::now();
            if let Err(error) = self.journal.sync() {
                self.poison(error);
                return Err(());
            }
            self.last_sync = started.elapsed();
            // A lone appender's ticket may spin through the next round's fsync.
            let lone = sync_mode
                && self.shared.config.spin_wait
                && self.last_round_frames < GATHER_FRAMES_MIN;
            self.shared.progress.set_spin(if lone {
                self.last_sync * 2
            } else {
                Duration::ZERO
            });
            self.durable_journal = self.written_journal;
            for lane in &mut self.lanes {
                lane.durable_end = lane.written_end();
            }
        }
        self.publish(sync, round);
        if let Some(error) = failed_sync_round {
            self.clean_failure(error);
        }
        Ok(())
    }

    /// Writes the round's frames that are not written yet, as journal records and then to
    /// their segments.
    fn write_frames(&mut self) -> Result<(), Fault> {
        while self.written_frames < self.frames.len() {
            let start = self.written_frames;
            let end = self.prepare_chunk(start)?;
            let result = self.write_chunk(start, end);
            self.clear_demands();
            result?;
            self.written_frames = end;
            let last = &self.frames[end - 1];
            self.written_journal = last.journal_end();
            self.last_timestamp_ms = self.last_timestamp_ms.max(last.timestamp_ms);
        }
        Ok(())
    }

    /// Plans the next record from `start` and makes room for it: in the journal first (a
    /// checkpoint and a wrap, when it is full or cannot grow, pad the segments and so move
    /// where frames go), then in the segments. Nothing is written yet, so a failure is clean.
    /// Returns the end of the chunk.
    fn prepare_chunk(&mut self, start: usize) -> Result<usize, Fault> {
        let mut wrapped = false;
        loop {
            let end = self.plan(start);
            let record_len = self.record_len(start, end);
            let room = if self.journal.fits(record_len) {
                self.journal.reserve(record_len)
            } else {
                Err(self.journal.too_large(record_len))
            };
            match room {
                Ok(()) => break self.reserve_segments(end),
                Err(error) => {
                    self.clear_demands();
                    let full = error.is_disk_full() || !self.journal.fits(record_len);
                    if wrapped || !full || !self.journal.can_wrap() {
                        return Err(Fault::Clean(error));
                    }
                    if error.is_disk_full() && self.journal.fits(record_len) {
                        // The journal cannot grow: wrap within what it has.
                        self.journal.stop_growing();
                    }
                    self.checkpoint(true)?;
                    wrapped = true;
                }
            }
        }
    }

    fn record_len(&self, start: usize, end: usize) -> usize {
        let first = &self.frames[start];
        let last = &self.frames[end - 1];
        RECORD_HEADER_LEN + last.entry_start + ENTRY_TAG_LEN + last.frame_len as usize
            - first.entry_start
    }

    fn reserve_segments(&mut self, end: usize) -> Result<usize, Fault> {
        if let Err(error) = self.reserve() {
            self.clear_demands();
            return Err(Fault::Clean(error));
        }
        Ok(end)
    }

    /// Chooses the frames of the next record, from `start`: as many as fit one record, and
    /// none that would roll a partition a second time. Returns the end of the chunk.
    fn plan(&mut self, start: usize) -> usize {
        let record_max = self.journal.record_bytes_max();
        let mut record_len = RECORD_HEADER_LEN as u64;
        let mut end = start;
        // Where the multi-key append the planned frames end in started: a record never ends
        // inside one (unless it started the record, which limits make fit).
        let mut call_start = start;
        for frame in &self.frames[start..] {
            let entry_len = (ENTRY_TAG_LEN as u64) + u64::from(frame.frame_len);
            if end > start && record_len + entry_len > record_max {
                break;
            }
            let p = frame.partition as usize;
            let demand = &mut self.demands[p];
            if demand.is_empty() {
                self.touched.push(frame.partition);
            }
            if !self.lanes[p].admit(demand, frame) {
                break;
            }
            record_len += entry_len;
            end += 1;
            if !frame.joined_to_next {
                call_start = end;
            }
        }
        if call_start > start && call_start < end {
            // The chunk would cut a multi-key append: end it before that append instead. The
            // demands were counted with its frames, so count them again without.
            self.clear_demands();
            for frame in &self.frames[start..call_start] {
                let p = frame.partition as usize;
                if self.demands[p].is_empty() {
                    self.touched.push(frame.partition);
                }
                let admitted = self.lanes[p].admit(&mut self.demands[p], frame);
                debug_assert!(admitted, "a prefix of an admitted chunk is admitted");
            }
            return call_start;
        }
        debug_assert!(
            end == self.frames.len() || !self.frames[end - 1].joined_to_next,
            "a multi-key append that fits no record: limits should make this impossible"
        );
        end
    }

    fn reserve(&mut self) -> crate::error::Result<()> {
        for &p in &self.touched {
            self.lanes[p as usize].reserve(&self.demands[p as usize], self.last_timestamp_ms)?;
        }
        Ok(())
    }

    fn clear_demands(&mut self) {
        for &p in &self.touched {
            self.demands[p as usize] = Demand::default();
        }
        self.touched.clear();
    }

    /// Writes frames `start..end` as one journal record, then to their segments.
    fn write_chunk(&mut self, start: usize, end: usize) -> Result<(), Fault> {
        let first = self.frames[start];
        let last = self.frames[end - 1];
        let entries = first.entry_start..last.entry_start + ENTRY_TAG_LEN + last.frame_len as usize;
        let in_place = start == 0 && end == self.frames.len();
        let count = (end - start) as u32;
        let written = if in_place {
            self.journal
                .write(&mut self.bytes, count, first.journal_index)
        } else {
            self.record.clear();
            self.record.resize(RECORD_HEADER_LEN, 0);
            self.record.extend_from_slice(&self.bytes[entries]);
            self.journal
                .write(&mut self.record, count, first.journal_index)
        };
        written.map_err(Fault::Clean)?;
        for &p in &self.touched {
            let lane = &mut self.lanes[p as usize];
            let frames = self.frames[start..end]
                .iter()
                .filter(|frame| frame.partition == p);
            lane.write(frames, &self.bytes, &self.demands[p as usize])?;
            if !self.unpublished.contains(&p) {
                self.unpublished.push(p);
            }
        }
        Ok(())
    }

    /// Publishes what the round made visible: everything written, if synced (or under
    /// `Buffered`, where written is visible).
    fn publish(&mut self, synced: bool, round: &Round) {
        let flush_seq = round.flush_seq;
        let visible = synced || self.shared.config.durability == Durability::Buffered;
        if visible {
            for p in self.unpublished.drain(..) {
                self.lanes[p as usize].publish();
            }
            self.visible_journal = self.written_journal;
        }
        // A flush is done when everything queued before it is written and synced: not while a
        // stalled round holds appends, nor when appends queued during a stall are still
        // pending (the next round takes them at once). Flushes during a stall are failed by
        // `Progress` instead of waiting for the disk.
        let flush_done = (synced && self.stall.is_none() && round.took_all).then_some(flush_seq);
        if let Some(seq) = flush_done {
            self.flush_done = seq;
        }
        if visible || flush_done.is_some() {
            self.shared
                .progress
                .publish(self.written_journal, flush_done);
        }
    }

    /// A write failed before anything of the chunk reached the disk.
    fn clean_failure(&mut self, error: Error) {
        let source = Arc::new(error);
        if self.shared.config.durability == Durability::Sync {
            // Nothing of the failed appends was acknowledged: fail them and everything queued
            // behind them, and continue at the written end.
            let shared = self.shared.clone();
            let mut pending = shared.sequencer.pending.lock();
            pending.bytes.clear();
            pending.frames.clear();
            for lane in &mut self.lanes {
                pending.next_offsets[lane.partition.id as usize] = lane.written_end();
                lane.rewind();
            }
            pending.next_journal = self.written_journal;
            let groups = self.shared.config.groups_partition() as usize;
            pending.next_global = self.written_journal - self.lanes[groups].written_end();
            // The failed appends' versions and ids were never written: what the disk holds
            // (all of it visible now) is the truth again.
            pending.forget_versions();
            pending.ids.clear();
            let ended = std::mem::take(&mut pending.generation);
            shared
                .progress
                .fail(&ended, self.written_journal, source, None, false);
            drop(pending);
            shared.sequencer.space.notify_all();
            self.frames.clear();
            self.written_frames = 0;
            return;
        }
        // The appends were acknowledged when queued: keep them and retry.
        let backoff = match &self.stall {
            Some(stall) => (stall.backoff * 2).min(RETRY_BACKOFF_MAX),
            None => RETRY_BACKOFF_MIN,
        };
        self.shared.sequencer.pending.lock().refusal = Some(Refusal::Stalled(source.clone()));
        self.shared.progress.set_stalled(Some(source.clone()));
        self.stall = Some(Stall {
            source,
            retry_at: Instant::now() + backoff,
            backoff,
        });
    }

    /// A failed fsync, or a failed write after a journal record: nothing unsynced can be
    /// trusted. Every later append is refused until the log is reopened.
    fn poison(&mut self, error: Error) {
        let source = Arc::new(error);
        let shared = self.shared.clone();
        let mut pending = shared.sequencer.pending.lock();
        let lost = self.lost_ranges(&pending.next_offsets);
        pending.bytes.clear();
        pending.frames.clear();
        pending.refusal = Some(Refusal::Poisoned(source.clone()));
        let ended = std::mem::take(&mut pending.generation);
        let unreported =
            (shared.config.durability != Durability::Sync && !lost.is_empty()).then(|| {
                Error::AppendsLost {
                    lost: lost.into(),
                    source: source.clone(),
                }
            });
        // Tickets already told "done" stay done; every other one fails.
        let done = shared.progress.done_journal();
        shared.progress.fail(&ended, done, source, unreported, true);
        drop(pending);
        shared.sequencer.space.notify_all();
    }

    /// The offsets handed out but not known durable, per partition.
    fn lost_ranges(&self, next_offsets: &[u64]) -> Vec<LostRange> {
        self.lanes
            .iter()
            .filter(|lane| next_offsets[lane.partition.id as usize] > lane.durable_end)
            .map(|lane| LostRange {
                partition: lane.partition.id,
                first_offset: lane.durable_end,
                last_offset: next_offsets[lane.partition.id as usize] - 1,
            })
            .collect()
    }

    /// Syncs every partition's segment and records a checkpoint; with `wrap`, the journal
    /// continues at its start. Everything written is durable and visible afterwards.
    fn checkpoint(&mut self, wrap: bool) -> Result<(), Fault> {
        let mut marks = Vec::with_capacity(self.lanes.len());
        for lane in &mut self.lanes {
            marks.push(lane.checkpoint(self.last_timestamp_ms)?);
        }
        let checkpoint = Checkpoint {
            number: 0,
            journal_sequence: 0,
            journal_position: 0,
            journal_index: self.written_journal,
            last_timestamp_ms: self.last_timestamp_ms,
            partitions: marks,
        };
        let bases: Vec<u64> = checkpoint
            .partitions
            .iter()
            .map(|m| m.segment_base)
            .collect();
        self.journal
            .checkpoint(checkpoint, wrap)
            .map_err(Fault::Poison)?;
        for (lane, base) in self.lanes.iter_mut().zip(bases) {
            lane.partition.set_checkpoint_base(base);
        }
        for lane in &mut self.lanes {
            lane.publish();
            lane.durable_end = lane.written_end();
        }
        self.unpublished.clear();
        self.durable_journal = self.written_journal;
        self.visible_journal = self.written_journal;
        self.shared.progress.publish(self.written_journal, None);
        Ok(())
    }

    /// The last round of a closing log, with everything written: checkpoint, so that the next
    /// open replays nothing.
    fn close(&mut self) {
        if let Err(Fault::Poison(error) | Fault::Clean(error)) = self.checkpoint(false) {
            self.poison(error);
        }
    }
}

/// Tells waiters that the writer stopped, however it stopped. If it panicked (a bug), the log
/// is poisoned first, so that no ticket waits forever and no append is reported durable.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let source = Arc::new(Error::Io {
                op: "writer thread",
                path: self.0.dir.clone(),
                source: std::io::Error::other("the log's writer thread panicked"),
            });
            let mut pending = self.0.sequencer.pending.lock();
            pending.refusal = Some(Refusal::Poisoned(source.clone()));
            let ended = std::mem::take(&mut pending.generation);
            drop(pending);
            let done = self.0.progress.done_journal();
            self.0.progress.fail(&ended, done, source, None, true);
            self.0.sequencer.space.notify_all();
        }
        self.0.progress.writer_exited();
    }
}
