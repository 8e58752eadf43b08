//! The one place that decides where an append goes: under one lock it checks the append,
//! assigns its offsets (per partition), its global positions (one order across the log) and its
//! timestamp, and encodes its frame straight into the pending journal record.
//!
//! Appenders never touch a file. The writer thread (`writer.rs`) takes everything pending at
//! once, as one journal record. Because assignment and queueing happen under the same lock, the
//! order of offsets, of global positions and of the journal are one and the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::options::Durability;
use crate::record::Event;
use crate::storage::frame::{self, FrameStamp};
use crate::storage::journal::{ENTRY_TAG_LEN, RECORD_HEADER_LEN};
use crate::stream::ids::{IdPlace, UnpublishedIds};
use crate::stream::lookup::FoundId;
use crate::stream::versions::KeyVersions;
use crate::stream::Expected;
use crate::write::partition::Partition;
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
    /// Where the frame's first event is in the journal's order of events: what the writer,
    /// tickets and recovery count with.
    pub journal_index: u64,
    /// The global position of its first event (in the frame header); 0, and not counted, for
    /// the groups partition's frames.
    pub global_position: u64,
    pub in_global_order: bool,
    pub base_version: u64,
    /// The frame belongs to one multi-key append with the next one: the writer puts both in
    /// the same journal record, so that a crash keeps both or neither.
    pub joined_to_next: bool,
}

impl QueuedFrame {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn journal_end(&self) -> u64 {
        self.journal_index + u64::from(self.record_count)
    }

    /// The frame's bytes inside the pending bytes it was taken with.
    pub fn bytes<'b>(&self, pending: &'b [u8]) -> &'b [u8] {
        let start = self.entry_start + ENTRY_TAG_LEN;
        &pending[start..start + self.frame_len as usize]
    }
}

/// Where the next frame of a call goes in the two orders.
#[derive(Clone, Copy)]
struct Place {
    journal_index: u64,
    global_position: u64,
}

/// How many times an appender looks the disk up outside the lock before it looks under it.
const LOOKUP_TRIES_UNLOCKED: u32 = 4;

/// One key's part of an append call.
#[derive(Clone, Copy)]
pub(crate) struct KeyWrite<'c, 'e> {
    pub partition: u32,
    pub key: &'c [u8],
    pub expected: Expected,
    pub events: &'c [Event<'e>],
}

/// A queued (or deduplicated) call: where each key's events are, and what its ticket waits for.
pub(crate) struct Queued {
    /// The first key's place; `more` holds the others' (empty for one key: no allocation).
    pub first: Appended,
    pub more: Vec<Appended>,
    pub generation: Arc<Generation>,
    /// One past the journal index of the call's last event (of the originals, for a
    /// duplicate still being written; 0 when they are already visible).
    pub journal_end: u64,
}

impl Queued {
    /// Every key's place, in the order of the call.
    pub fn all(&self) -> Vec<Appended> {
        let mut all = Vec::with_capacity(1 + self.more.len());
        all.push(self.first);
        all.extend_from_slice(&self.more);
        all
    }

    /// A ticket for the call; it reports the first key's place.
    pub fn ticket(self, progress: &Arc<Progress>) -> Ticket {
        Ticket {
            progress: progress.clone(),
            generation: self.generation,
            appended: self.first,
            journal_end: self.journal_end,
        }
    }
}

/// Checks what needs no lock: each key once, each id once.
fn check_call(writes: &[KeyWrite<'_, '_>]) -> Result<()> {
    if writes.len() > 1 {
        // A key per partition: the groups partition's keys are another namespace.
        let mut keys = std::collections::HashSet::with_capacity(writes.len());
        for write in writes {
            if !keys.insert((write.partition, write.key)) {
                return Err(Error::RepeatedKey {
                    key: Bytes::copy_from_slice(write.key),
                });
            }
        }
    }
    let ids = writes
        .iter()
        .flat_map(|w| w.events.iter().filter_map(Event::event_id));
    let count = ids.clone().count();
    if count > 1 {
        let mut seen = std::collections::HashSet::with_capacity(count);
        for id in ids {
            if !seen.insert(id) {
                return Err(Error::IdReused { id });
            }
        }
    }
    Ok(())
}

/// Keeps the ids of a queued frame's events findable until the frame is visible.
fn record_ids(
    ids: &mut UnpublishedIds,
    write: &KeyWrite<'_, '_>,
    frame: &QueuedFrame,
    done: &Appended,
) {
    if write.events.iter().all(|e| e.event_id().is_none()) {
        return;
    }
    let key: Arc<[u8]> = write.key.into();
    for (i, event) in write.events.iter().enumerate() {
        if let Some(id) = event.event_id() {
            let i = i as u64;
            let place = IdPlace {
                key: key.clone(),
                appended: Appended {
                    offset: done.offset + i,
                    count: 1,
                    version: done.version + i,
                    global_position: done.global_position + i,
                    ..*done
                },
                frame_journal_end: frame.journal_end(),
            };
            ids.insert(id, place);
        }
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
    pub next_journal: u64,
    /// The next global position: events of the groups partition take none.
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
    /// The next version of every key appended since open, in the application's partitions...
    pub versions: KeyVersions,
    /// ... and in the groups partition (its keys are another namespace).
    pub group_versions: KeyVersions,
    /// Ids of events queued or written but not yet visible.
    pub ids: UnpublishedIds,
}

impl Pending {
    /// The versions of the keys of `partition`: the groups partition's are kept apart, since
    /// the same bytes may be a key there and in the application's partitions.
    pub fn versions_of(&mut self, partition: u32, groups_partition: u32) -> &mut KeyVersions {
        if partition == groups_partition {
            &mut self.group_versions
        } else {
            &mut self.versions
        }
    }

    /// Forgets every key's version (both maps, so that their epochs move together).
    pub fn forget_versions(&mut self) {
        self.versions.clear();
        self.group_versions.clear();
    }

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
    /// Counts the appends that wanted the writer (`work` is notified only while it waits
    /// there): a writer spinning for work, with the lock released, watches it.
    pub wanted: AtomicU64,
    config: Arc<Config>,
}

/// Where a recovered log continues.
pub(crate) struct Start {
    pub next_offsets: Vec<u64>,
    pub next_journal: u64,
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
                next_journal: start.next_journal,
                next_global: start.next_global,
                last_timestamp_ms: start.last_timestamp_ms,
                generation: Arc::new(Generation::default()),
                refusal: None,
                flush_requested: 0,
                closing: false,
                writer_waiting: false,
                first_queued_at: None,
                gather_target: 1,
                versions: KeyVersions::default(),
                group_versions: KeyVersions::default(),
                ids: UnpublishedIds::default(),
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            wanted: AtomicU64::new(0),
            config,
        }
    }

    /// Checks and queues one append call (one key, or several for an atomic multi-key append);
    /// returns where each key's events go and what a ticket for the call waits for.
    ///
    /// Everything is decided under one lock, in this order: idempotency (a call whose ids are
    /// all in the log is a duplicate and writes nothing), expected versions, then offsets,
    /// versions and global positions. What needs the disk (the last version of a key not
    /// appended since open, ids already published) is looked up outside the lock first and
    /// taken only if nothing it depends on moved meanwhile (`versions.rs`, `ids.rs`).
    pub fn enqueue(
        &self,
        partitions: &[Arc<Partition>],
        writes: &[KeyWrite<'_, '_>],
    ) -> Result<Queued> {
        check_call(writes)?;
        let wants_ids = writes
            .iter()
            .any(|w| w.events.iter().any(|e| e.event_id().is_some()));
        // Allocated only when a key is missing from the versions map.
        let mut cold: Vec<Option<(u64, u64)>> = Vec::new();
        let mut on_disk: Option<(u64, Vec<Option<FoundId>>)> = None;
        let mut attempts = 0;
        let mut pending = self.pending.lock();
        loop {
            self.wait_for_room(&mut pending)?;
            let epoch = pending.versions.epoch();
            let mut missing = Vec::new();
            for (i, write) in writes.iter().enumerate() {
                let groups = self.config.groups_partition();
                let versions = pending.versions_of(write.partition, groups);
                let known = match cold.get(i).copied().flatten() {
                    Some((next, looked_up_in)) => versions.offer(write.key, next, looked_up_in),
                    None => versions.next(write.key).is_some(),
                };
                if !known {
                    missing.push(i);
                }
            }
            let ids_epoch = pending.ids.epoch();
            let ids_known = !wants_ids || on_disk.as_ref().is_some_and(|(e, _)| *e == ids_epoch);
            if missing.is_empty() && ids_known {
                break;
            }
            attempts += 1;
            // After a few tries that the writer raced, look up under the lock: slower for
            // everyone for a moment, but bounded.
            cold.resize(writes.len(), None);
            let mut look_up = || -> Result<()> {
                for &i in &missing {
                    let write = &writes[i];
                    let partition = &partitions[write.partition as usize];
                    let last = partition.streams.last_version(partition, write.key)?;
                    cold[i] = Some((last.map_or(0, |v| v + 1), epoch));
                }
                if !ids_known {
                    let mut found = Vec::new();
                    for write in writes {
                        let partition = &partitions[write.partition as usize];
                        for id in write.events.iter().filter_map(Event::event_id) {
                            found.push(partition.streams.find_id(partition, id)?);
                        }
                    }
                    on_disk = Some((ids_epoch, found));
                }
                Ok(())
            };
            if attempts <= LOOKUP_TRIES_UNLOCKED {
                MutexGuard::unlocked(&mut pending, look_up)?;
            } else {
                look_up()?;
            }
        }
        let found = on_disk.map(|(_, found)| found).unwrap_or_default();
        if let Some(duplicate) = self.duplicate_of(&pending, writes, &found)? {
            // The application's events are all in the log already. A consumer group's record
            // in the same call (a commit made with them) is still written: the commit must
            // happen, and the originals' places come back with it.
            let groups = self.config.groups_partition();
            let group_writes: Vec<KeyWrite<'_, '_>> = writes
                .iter()
                .copied()
                .filter(|w| w.partition == groups)
                .collect();
            if group_writes.is_empty() {
                return Ok(duplicate);
            }
            let queued = self.queue(&mut pending, &group_writes)?;
            let mut more = duplicate.more;
            more.extend(queued.all());
            return Ok(Queued {
                first: duplicate.first,
                more,
                generation: queued.generation,
                journal_end: queued.journal_end.max(duplicate.journal_end),
            });
        }
        self.queue(&mut pending, writes)
    }

    /// Waits while the queue is full; fails if the log refuses appends.
    fn wait_for_room(&self, pending: &mut MutexGuard<'_, Pending>) -> Result<()> {
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
            // Backpressure: the pending record may pass its bound by at most one call.
            if (pending.frame_bytes() as u64) < self.config.queue_bytes_max {
                return Ok(());
            }
            // A full queue must be written now, whatever the writer is waiting for.
            if pending.writer_waiting {
                self.work.notify_one();
            }
            self.space.wait(pending);
        }
    }

    /// If every event of the call has an id that is already in the log (queued, or found on
    /// disk: `found`, in call order), the original positions: nothing is written. Ids found
    /// for only part of the call, or under another key, are an error.
    fn duplicate_of(
        &self,
        pending: &Pending,
        writes: &[KeyWrite<'_, '_>],
        found: &[Option<FoundId>],
    ) -> Result<Option<Queued>> {
        let mut found = found.iter();
        let mut present = Vec::new();
        let mut absent = false;
        let mut appended = Vec::new();
        let mut journal_end = 0;
        let groups = self.config.groups_partition();
        for write in writes.iter().filter(|w| w.partition != groups) {
            let mut first: Option<Appended> = None;
            for event in write.events {
                let Some(id) = event.event_id() else {
                    absent = true;
                    continue;
                };
                // `found` has one answer per id of the call, in order: always step it.
                let disk = found.next().cloned().flatten();
                // Ids are looked for in the key's partition (on disk, and so here too).
                let queued = pending.ids.get(write.partition, id);
                let place = match queued {
                    Some(place) => {
                        journal_end = journal_end.max(place.frame_journal_end);
                        Some((Bytes::copy_from_slice(&place.key), place.appended))
                    }
                    None => disk.map(|f| (f.key, f.appended)),
                };
                match place {
                    Some((key, original)) => {
                        if key != write.key {
                            return Err(Error::IdReused { id });
                        }
                        present.push(id);
                        first.get_or_insert(original);
                    }
                    None => absent = true,
                }
            }
            if let Some(mut original) = first {
                original.count = write.events.len() as u32;
                original.duplicate = true;
                appended.push(original);
            }
        }
        if present.is_empty() {
            return Ok(None);
        }
        if absent {
            return Err(Error::IdsPartlyPresent {
                present: present.into(),
            });
        }
        let first = appended.remove(0);
        Ok(Some(Queued {
            first,
            more: appended,
            generation: pending.generation.clone(),
            journal_end,
        }))
    }

    /// Checks expected versions, assigns positions and encodes the call's frames into the
    /// pending record: all of them, or (on any error) none.
    fn queue(
        &self,
        pending: &mut MutexGuard<'_, Pending>,
        writes: &[KeyWrite<'_, '_>],
    ) -> Result<Queued> {
        let groups = self.config.groups_partition();
        for write in writes {
            let versions = pending.versions_of(write.partition, groups);
            let next = versions.next(write.key).expect("looked up before");
            let last = next.checked_sub(1);
            if !write.expected.holds(last) {
                return Err(Error::Conflict {
                    key: Bytes::copy_from_slice(write.key),
                    expected: write.expected,
                    actual: last,
                });
            }
        }
        if pending.next_journal > POSITION_MAX {
            return Err(Error::InvalidOptions(
                "the log's offsets are exhausted (2^62 events)".into(),
            ));
        }
        let timestamp_ms = now_ms().max(pending.last_timestamp_ms);
        let first = pending.bytes.is_empty();
        if first {
            pending.bytes.resize(RECORD_HEADER_LEN, 0);
        }
        let call_start = pending.bytes.len();
        let frames_start = pending.frames.len();
        let mut at = Place {
            journal_index: pending.next_journal,
            global_position: pending.next_global,
        };
        let mut failure = None;
        for (i, write) in writes.iter().enumerate() {
            let joined = i + 1 < writes.len();
            match self.encode_one(pending, write, at, timestamp_ms, joined) {
                Ok(frame) => {
                    at.journal_index = frame.journal_end();
                    if frame.in_global_order {
                        at.global_position += u64::from(frame.record_count);
                    }
                    // At once: the call's next frame may go to the same partition.
                    pending.next_offsets[frame.partition as usize] = frame.end_offset();
                    pending.frames.push(frame);
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let call_bytes = (pending.bytes.len() - call_start) as u64;
        if failure.is_none() && writes.len() > 1 && call_bytes > self.config.limits.batch_bytes_max
        {
            failure = Some(Error::BatchTooLarge {
                bytes: call_bytes,
                limit: self.config.limits.batch_bytes_max,
            });
        }
        if let Some(error) = failure {
            // Take back the call's frames (and the record header room, if they were the first),
            // and the offsets they took: each partition continues at its first frame's base.
            for frame in pending.frames.split_off(frames_start).iter().rev() {
                pending.next_offsets[frame.partition as usize] = frame.base_offset;
            }
            pending.bytes.truncate(if first { 0 } else { call_start });
            return Err(error);
        }
        let mut first_place = None;
        let mut more = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let frame = pending.frames[frames_start + i];
            pending.versions_of(frame.partition, groups).set(
                write.key,
                frame.base_version + u64::from(frame.record_count),
            );
            let done = Appended {
                partition: frame.partition,
                offset: frame.base_offset,
                count: frame.record_count,
                version: frame.base_version,
                global_position: frame.global_position,
                duplicate: false,
            };
            record_ids(&mut pending.ids, write, &frame, &done);
            match first_place {
                None => first_place = Some(done),
                Some(_) => more.push(done),
            }
        }
        pending.next_journal = at.journal_index;
        pending.next_global = at.global_position;
        pending.last_timestamp_ms = timestamp_ms;
        let queued = Queued {
            first: first_place.expect("a call has at least one key"),
            more,
            generation: pending.generation.clone(),
            journal_end: at.journal_index,
        };
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
        if wanted {
            self.wanted.fetch_add(1, Ordering::Release);
            if pending.writer_waiting {
                self.work.notify_one();
            }
        }
        Ok(queued)
    }

    /// Encodes one key's frame at the end of the pending record.
    fn encode_one(
        &self,
        pending: &mut Pending,
        write: &KeyWrite<'_, '_>,
        at: Place,
        timestamp_ms: u64,
        joined_to_next: bool,
    ) -> Result<QueuedFrame> {
        // The groups partition's events are outside the global order: they take a journal
        // index (so that tickets and recovery count them) but no global position (0 on disk).
        let in_global_order = write.partition != self.config.groups_partition();
        let global_position = if in_global_order {
            at.global_position
        } else {
            0
        };
        let base_offset = pending.next_offsets[write.partition as usize];
        let groups = self.config.groups_partition();
        let base_version = pending
            .versions_of(write.partition, groups)
            .next(write.key)
            .expect("looked up before");
        if base_offset > POSITION_MAX || base_version > POSITION_MAX {
            return Err(Error::InvalidOptions(
                "the log's offsets are exhausted (2^62 events)".into(),
            ));
        }
        let entry_start = pending.bytes.len();
        pending
            .bytes
            .extend_from_slice(&write.partition.to_le_bytes());
        pending.bytes.extend_from_slice(&0u32.to_le_bytes());
        let stamp = FrameStamp {
            base_offset,
            timestamp_ms,
            base_version,
            global_position,
        };
        let limits = &self.config.limits;
        let journal_index = at.journal_index;
        let count = match frame::encode(&mut pending.bytes, stamp, write.key, write.events, limits)
        {
            Ok(count) => count,
            Err(error) => {
                pending.bytes.truncate(entry_start);
                return Err(error);
            }
        };
        Ok(QueuedFrame {
            partition: write.partition,
            entry_start,
            frame_len: (pending.bytes.len() - entry_start - ENTRY_TAG_LEN) as u32,
            base_offset,
            record_count: count,
            timestamp_ms,
            journal_index,
            global_position,
            in_global_order,
            base_version,
            joined_to_next,
        })
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
