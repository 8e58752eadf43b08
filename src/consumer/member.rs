//! One member of a group: polling (its partitions' readers, and the keys held for a retry),
//! nacks, and commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::retry;
use super::state::HeldStatus;
use super::GroupState;
use crate::error::{Error, Result};
use crate::log::KeyAppend;
use crate::reader::Reader;
use crate::record::{Event, Record};
use crate::write::sequencer::KeyWrite;
use crate::write::{now_ms, Shared};

/// The most deliveries a poll reserves room for before it reads anything.
const DELIVERIES_RESERVED_MAX: usize = 16_384;

/// One member of a consumer group ([`Group::join`](super::Group::join)). Leaves the group when
/// dropped.
pub struct Consumer {
    pub(super) shared: Arc<Shared>,
    pub(super) group: Arc<GroupState>,
    pub(super) member: u64,
    /// The assignment generation `owned` was built for.
    pub(super) generation: u64,
    /// The partitions this member owns, each with its reader (at the next offset to deliver).
    pub(super) owned: HashMap<u32, Reader>,
    pub(super) session_timeout: Duration,
    /// Where the next poll starts among the member's partitions.
    pub(super) rotation: usize,
    /// The number the next batch takes.
    pub(super) next_batch: u64,
    /// Batches numbered below this are of an earlier assignment (or committed already).
    pub(super) first_open_batch: u64,
    /// Nacks not committed yet, in the order they were made.
    pub(super) nacks: Vec<Nack>,
    /// Held keys delivered again (from their head) and not committed yet.
    pub(super) retried: Vec<Retried>,
    /// Keys with a nack not committed yet, with the lowest version nacked: the readers pass
    /// their events from that version on by, as they do for the keys the group holds.
    pub(super) nacked_keys: HashMap<u32, HashMap<Vec<u8>, u64>>,
    /// Where each partition's reader stopped in each batch not committed yet: (batch,
    /// partition, end). A commit moves the cursors to the furthest of its batch and earlier.
    pub(super) read_ends: Vec<(u64, u32, u64)>,
    /// The first batch of the member's current assignment.
    pub(super) assigned_batch: u64,
    /// Partitions whose reader retention moved up to the partition's start: the next batch
    /// commits the move.
    pub(super) moved_up: Vec<(u32, u64)>,
    /// Errors to report by the next polls (events deleted before the group committed them).
    pub(super) to_tell: std::collections::VecDeque<Error>,
}

/// A nack of one delivery, applied at the commit of its batch.
pub(super) struct Nack {
    batch: u64,
    partition: u32,
    key: Vec<u8>,
    offset: u64,
    version: u64,
    /// Failed deliveries of the event with this one.
    failures: u32,
    reason: String,
}

/// A held key delivered again from its head in batch `batch`, through version `through`, at
/// offset `through_offset`.
pub(super) struct Retried {
    batch: u64,
    partition: u32,
    key: Vec<u8>,
    through: u64,
    through_offset: u64,
}

/// One event delivered to a member.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    pub record: Record,
    /// 1 for a first delivery; more when the event is delivered again: after a nack (a retry),
    /// or after a restart or a rebalance before it was committed (counted within this process
    /// only).
    pub attempt: u32,
    batch: u64,
    /// Delivered by a retry of its held key (not by the partition's reader).
    retry: bool,
}

/// What one [`Consumer::poll`] returned.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Batch {
    pub deliveries: Vec<Delivery>,
    /// True when, after this batch, the member's partitions hold nothing more that is visible
    /// (retries that are not due yet aside): the member has caught up with the live end.
    pub caught_up: bool,
    pub(super) generation: u64,
    pub(super) number: u64,
    /// The member that polled it (a batch commits that member's reads).
    pub(super) member: u64,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Delivery> {
        self.deliveries.iter()
    }
}

impl<'b> IntoIterator for &'b Batch {
    type Item = &'b Delivery;
    type IntoIter = std::slice::Iter<'b, Delivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.deliveries.iter()
    }
}

impl Consumer {
    pub(super) fn new(shared: Arc<Shared>, group: Arc<GroupState>, member: u64) -> Consumer {
        Consumer {
            shared,
            group,
            member,
            generation: u64::MAX,
            owned: HashMap::new(),
            session_timeout: super::SESSION_TIMEOUT_DEFAULT,
            rotation: 0,
            next_batch: 0,
            first_open_batch: 0,
            nacks: Vec::new(),
            retried: Vec::new(),
            nacked_keys: HashMap::new(),
            read_ends: Vec::new(),
            assigned_batch: 0,
            moved_up: Vec::new(),
            to_tell: std::collections::VecDeque::new(),
        }
    }

    /// Sets how long this member may go without polling before the others take its
    /// partitions (default [`SESSION_TIMEOUT_DEFAULT`](super::SESSION_TIMEOUT_DEFAULT)). A
    /// member that polls again after that joins the group again.
    pub fn set_session_timeout(&mut self, timeout: Duration) {
        self.session_timeout = timeout;
        let mut inner = self.group.inner.lock();
        if let Some(me) = inner.members.iter_mut().find(|m| m.id == self.member) {
            me.session_timeout = timeout;
        }
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> Vec<u32> {
        let inner = self.group.inner.lock();
        inner.assignment(self.member, self.shared.config.user_partitions)
    }

    /// Up to `max` events of the member's partitions, in offset order per partition, from
    /// where the member is (the committed cursor after a join or a rebalance), with the keys
    /// held for a retry whose time has come delivered again first, from their failed event on.
    /// Events of a key that is held (waiting for a retry, parked, or nacked in a batch not
    /// committed yet) are not delivered in their place: they come in order after the held
    /// event. Waits up to `timeout` for events if none is ready, woken by the append that makes
    /// one visible or by the next retry falling due.
    ///
    /// # Errors
    ///
    /// [`Error::EventsExpired`] once for each partition whose events retention deleted before
    /// the group committed them (the member goes on from the partition's new start: poll
    /// again), errors reading the partitions (`Error::Corrupt`, I/O).
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.progress.done_journal();
            self.refresh_assignment();
            self.follow_start()?;
            if let Some(error) = self.to_tell.pop_front() {
                return Err(error);
            }
            let (batch, next_due) = self.take(max)?;
            let now = Instant::now();
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            if self.below_start() {
                // Retention overtook a reader during `take`: say so now, not at the deadline.
                continue;
            }
            let wake = match next_due {
                Some(due_ms) => {
                    let wait = Duration::from_millis(due_ms.saturating_sub(now_ms()));
                    deadline.min(now + wait)
                }
                None => deadline,
            };
            self.shared.progress.wait_past(seen, wake);
        }
    }

    /// Polls, calls `handle` on each delivery in order, and commits the batch: a delivery whose
    /// handler fails is nacked with the error as its reason (retried later, parked after the
    /// group's last attempt), and deliveries of a key nacked earlier in the batch are passed by
    /// (they come again after it). Returns how many deliveries the handler accepted.
    ///
    /// # Errors
    ///
    /// Those of [`poll`](Self::poll) and [`commit`](Self::commit).
    pub fn handle<E: std::fmt::Display>(
        &mut self,
        max: usize,
        timeout: Duration,
        mut handle: impl FnMut(&Delivery) -> std::result::Result<(), E>,
    ) -> Result<usize> {
        let batch = self.poll(max, timeout)?;
        let mut accepted = 0;
        for delivery in &batch {
            if self.is_held(delivery) {
                continue;
            }
            match handle(delivery) {
                Ok(()) => accepted += 1,
                Err(error) => self.nack(delivery, &error.to_string())?,
            }
        }
        self.commit(&batch)?;
        Ok(accepted)
    }

    /// Says that `delivery` failed: at the commit of its batch the event is held, with the
    /// later events of its key, and delivered again after the group's backoff, or parked as a
    /// dead letter (with `reason`) once it has failed the group's maximum number of attempts
    /// ([`Group::set_retry_policy`](super::Group::set_retry_policy)). Other keys move on.
    /// Later deliveries of the same key already in this member's batches will be delivered
    /// again after it ([`is_held`](Self::is_held) tells them apart, to pass them by).
    ///
    /// # Errors
    ///
    /// [`Error::NotAssigned`] if the delivery is of an earlier assignment of this member (its
    /// partition was reassigned since), [`Error::NotPending`] if its batch was committed
    /// already.
    pub fn nack(&mut self, delivery: &Delivery, reason: &str) -> Result<()> {
        let record = &delivery.record;
        self.check_open(delivery.batch, record.partition, record.offset)?;
        let key = record.key.to_vec();
        let lowest = self.nacked_keys.entry(record.partition).or_default();
        let version = lowest.entry(key.clone()).or_insert(record.version);
        *version = (*version).min(record.version);
        // A retry's delivery of the held event carries its failures so far plus this one; any
        // other delivery is a first failure (deliveries again after a restart or a rebalance
        // are not failures).
        let failures = if delivery.retry { delivery.attempt } else { 1 };
        self.nacks.push(Nack {
            batch: delivery.batch,
            partition: record.partition,
            key,
            offset: record.offset,
            version: record.version,
            failures,
            reason: super::state::cut_reason(reason),
        });
        Ok(())
    }

    /// Whether an earlier event of `delivery`'s key was nacked (in a batch committed or not):
    /// the delivery comes again after that event, so a handler may pass it by now.
    pub fn is_held(&self, delivery: &Delivery) -> bool {
        let record = &delivery.record;
        let nacked = self.nacks.iter().any(|n| {
            n.partition == record.partition && n.key == record.key && n.version < record.version
        });
        if nacked || delivery.retry {
            return nacked;
        }
        let inner = self.group.inner.lock();
        let held = inner
            .committed
            .held(record.partition)
            .get(record.key.as_ref());
        held.is_some_and(|h| h.has_head() && h.version < record.version)
    }

    fn check_open(&self, batch: u64, partition: u32, offset: u64) -> Result<()> {
        if batch < self.assigned_batch {
            return Err(Error::NotAssigned {
                group: self.group.name.clone(),
                partition,
            });
        }
        if batch < self.first_open_batch {
            return Err(Error::NotPending {
                group: self.group.name.clone(),
                partition,
                offset,
            });
        }
        Ok(())
    }

    /// Makes `owned` match the group's current assignment. At every change of membership each
    /// member starts its partitions again at their committed cursors, kept or gained alike:
    /// what was delivered and not committed is delivered again (at least once), and no member
    /// goes on from a position another member may have committed past. Nacks not committed
    /// are dropped with the batches they were made in.
    fn refresh_assignment(&mut self) {
        let mut inner = self.group.inner.lock();
        inner.expire();
        inner.seen(self.member, self.session_timeout);
        if inner.generation == self.generation {
            return;
        }
        self.generation = inner.generation;
        self.first_open_batch = self.next_batch;
        self.assigned_batch = self.next_batch;
        self.read_ends.clear();
        self.nacks.clear();
        self.retried.clear();
        self.nacked_keys.clear();
        let assigned = inner.assignment(self.member, self.shared.config.user_partitions);
        self.owned = assigned
            .into_iter()
            .map(|p| {
                let partition = self.shared.partitions[p as usize].clone();
                (p, Reader::new(partition, inner.committed.get(p)))
            })
            .collect();
    }

    /// Whether a reader of the member is below its partition's start.
    fn below_start(&self) -> bool {
        self.owned
            .iter()
            .any(|(&p, reader)| reader.next_offset() < self.shared.partitions[p as usize].start())
    }

    /// Moves readers below their partition's start (retention deleted what they were to read)
    /// up to it, and keys held below it to their first event left; queues the errors that
    /// tell so.
    fn follow_start(&mut self) -> Result<()> {
        let mut owned: Vec<u32> = self.owned.keys().copied().collect();
        owned.sort_unstable();
        for p in owned {
            let partition = &self.shared.partitions[p as usize];
            let start = partition.start();
            let reader = self.owned.get_mut(&p).expect("listed above");
            let from = reader.next_offset();
            if from < start {
                *reader = Reader::new(partition.clone(), start);
                self.moved_up.push((p, start));
                self.to_tell.push_back(Error::EventsExpired {
                    group: self.group.name.clone(),
                    partition: p,
                    from,
                    to: start,
                });
            }
            let mut inner = self.group.inner.lock();
            let below: Vec<Vec<u8>> = inner
                .committed
                .held(p)
                .iter()
                .filter(|(_, h)| h.has_head() && h.offset < start)
                .map(|(key, _)| key.clone())
                .collect();
            for key in below {
                let first = retry::first_left(partition, &key, start)?;
                let held = inner.committed.held_mut(p);
                match first {
                    Some((offset, version)) => {
                        let h = held.get_mut(&key).expect("listed above");
                        h.offset = offset;
                        h.version = version;
                    }
                    None => {
                        held.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    /// One poll's batch, and when the next retry of the member's held keys falls due (ms since
    /// the Unix epoch), if one is waiting.
    fn take(&mut self, max: usize) -> Result<(Batch, Option<u64>)> {
        let number = self.next_batch;
        self.next_batch += 1;
        let mut partitions: Vec<u32> = self.owned.keys().copied().collect();
        partitions.sort_unstable();
        // Each poll starts one partition further, so that a busy partition never starves the
        // others of a member that polls fewer events than it has.
        if !partitions.is_empty() {
            let first = self.rotation % partitions.len();
            partitions.rotate_left(first);
            self.rotation = self.rotation.wrapping_add(1);
        }
        // The keys the group holds in the member's partitions, and those due for a retry.
        let now = now_ms();
        let mut held = HashMap::new();
        let mut due = Vec::new();
        let mut next_due: Option<u64> = None;
        {
            let inner = self.group.inner.lock();
            for &p in &partitions {
                let keys = inner.committed.held(p).clone();
                for (key, h) in keys.iter() {
                    let HeldStatus::Retry { due_ms } = h.status else {
                        continue;
                    };
                    if self
                        .retried
                        .iter()
                        .any(|r| r.partition == p && r.key == *key)
                    {
                        continue;
                    }
                    if due_ms <= now {
                        due.push((p, key.clone(), h.clone()));
                    } else {
                        next_due = Some(next_due.map_or(due_ms, |d| d.min(due_ms)));
                    }
                }
                held.insert(p, keys);
            }
        }
        due.sort_by_key(|(p, _, h)| (*p, h.offset));

        // Sized up front: growing a vector of ~160-byte deliveries copied each of them twice.
        let mut deliveries = Vec::with_capacity(max.min(DELIVERIES_RESERVED_MAX));
        let mut caught_up = true;
        // Held keys first: from the failed event on, in version order.
        for (p, key, h) in due {
            let room = max - deliveries.len();
            if room == 0 {
                caught_up = false;
                break;
            }
            let partition = &self.shared.partitions[p as usize];
            let mut taken = 0;
            let records = crate::stream::read::key_records(partition, &key, h.version, |_| {
                taken += 1;
                taken <= room
            })?;
            let Some(last) = records.last() else {
                continue;
            };
            self.retried.push(Retried {
                batch: number,
                partition: p,
                key,
                through: last.version,
                through_offset: last.offset,
            });
            if taken > room {
                caught_up = false;
            }
            for record in records {
                let attempt = if record.version == h.version {
                    h.attempts + 1
                } else {
                    1
                };
                deliveries.push(Delivery {
                    record,
                    attempt,
                    batch: number,
                    retry: true,
                });
            }
        }

        // Then each partition from its reader, passing by the events of held keys.
        let first_new = deliveries.len();
        let mut ends: Vec<(u32, u64)> = std::mem::take(&mut self.moved_up);
        let mut failure = None;
        'partitions: for p in partitions {
            let held = &held[&p];
            let nacked = self.nacked_keys.get(&p).filter(|keys| !keys.is_empty());
            let skip_any = !held.is_empty() || nacked.is_some();
            let reader = self.owned.get_mut(&p).expect("listed above");
            let start = reader.next_offset();
            while deliveries.len() < max {
                match reader.next() {
                    Some(Ok(record)) => {
                        let key = record.key.as_ref();
                        let skip = skip_any
                            && (held
                                .get(key)
                                .is_some_and(|h| h.passes(record.version, record.offset))
                                || nacked
                                    .and_then(|keys| keys.get(key))
                                    .is_some_and(|&v| record.version >= v));
                        if !skip {
                            deliveries.push(Delivery {
                                record,
                                attempt: 0,
                                batch: number,
                                retry: false,
                            });
                        }
                    }
                    Some(Err(error)) => {
                        // A reader stops at an error: put a new one at the record that failed,
                        // so that the next poll meets the error again instead of a partition
                        // that looks caught up. What was read before it is delivered now.
                        let at = reader.next_offset();
                        let partition = self.shared.partitions[p as usize].clone();
                        *reader = Reader::new(partition, at);
                        caught_up = false;
                        if matches!(error, Error::OffsetBelowStart { .. }) {
                            // Retention moved the start past the reader since the poll began
                            // (found by the crash model): the next look at the start moves it
                            // up and tells `EventsExpired`, as for a start moved between polls.
                            // What was read is delivered, and its end recorded, below.
                            break;
                        }
                        if at > start {
                            ends.push((p, at));
                        }
                        failure = Some(error);
                        break 'partitions;
                    }
                    None => break,
                }
            }
            let end = reader.next_offset();
            if end > start {
                ends.push((p, end));
            }
            if deliveries.len() >= max {
                caught_up = false;
                break;
            }
        }
        if let Some(error) = failure {
            if deliveries.is_empty() {
                return Err(error);
            }
        }
        let mut inner = self.group.inner.lock();
        for delivery in &mut deliveries[first_new..] {
            let (p, offset) = (delivery.record.partition, delivery.record.offset);
            let delivered = &mut inner.delivered[p as usize];
            if offset >= *delivered {
                *delivered = offset + 1;
                delivery.attempt = 1;
            } else {
                let attempts = inner.attempts.entry((p, offset)).or_insert(1);
                *attempts += 1;
                delivery.attempt = *attempts;
            }
        }
        self.read_ends
            .extend(ends.into_iter().map(|(p, end)| (number, p, end)));
        let batch = Batch {
            deliveries,
            caught_up,
            generation: self.generation,
            number,
            member: self.member,
        };
        Ok((batch, next_due))
    }

    /// Commits the batch, and the member's earlier batches not committed yet: for each
    /// partition in it, the cursor moves past what its reader read; held keys delivered again
    /// move on past what was delivered; nacked events become held (waiting for a retry, or
    /// parked). One append to the groups partition, durable as appends are: under `Sync` it
    /// returns once synced, and concurrent commits, of any members and appenders, share an
    /// fsync; under `Interval` and `Buffered` it returns once queued (a crash may then take it,
    /// and the events are delivered again).
    ///
    /// # Errors
    ///
    /// [`Error::NotAssigned`] if the member no longer owns a partition of the batch (it was
    /// reassigned: the new owner delivers from the committed cursor again),
    /// [`Error::GroupStateTooLarge`] if the group's record would no longer fit into one event
    /// (too many held keys: re-drive or discard dead letters), and the errors of appends.
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        self.commit_with(batch, &[]).map(drop)
    }

    /// Appends events and commits the batch in one step: after any crash, both happened or
    /// neither (they are one journal record). A consumer whose effects all go back into the log
    /// (a process manager's follow-up events, a projection's derived events) is so
    /// exactly-once: a redelivered event's effects were appended only if its commit was too.
    /// Returns where each key's events went, in order.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit), and those of [`Log::append_multi`](crate::Log::append_multi)
    /// (a failed expectation writes nothing and commits nothing).
    pub fn append_and_commit(
        &mut self,
        appends: &[KeyAppend<'_, '_>],
        batch: &Batch,
    ) -> Result<Vec<crate::Appended>> {
        self.commit_with(batch, appends)
    }

    /// Queues the commit of the batch (and of the member's earlier batches) and returns at
    /// once, under every durability mode, with a ticket whose `wait` returns once the commit
    /// is durable (as [`Log::append_pipelined`](crate::Log::append_pipelined)'s do); `None`
    /// when there was nothing to commit. A member can so handle its next batch while the
    /// commit's fsync is in flight: a crash before the ticket resolves may take the commit,
    /// and its events are then delivered again. If the ticket fails, the log reports the loss
    /// (see [`Log::flush`](crate::Log::flush)); the member's next commit writes its whole
    /// state again.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit), but for the wait.
    pub fn commit_pipelined(&mut self, batch: &Batch) -> Result<Option<crate::Ticket>> {
        Ok(self
            .queue_commit(batch, &[])?
            .map(|(_, queued)| queued.ticket(&self.shared.progress)))
    }

    fn commit_with(
        &mut self,
        batch: &Batch,
        appends: &[KeyAppend<'_, '_>],
    ) -> Result<Vec<crate::Appended>> {
        let Some((places, queued)) = self.queue_commit(batch, appends)? else {
            return Ok(Vec::new());
        };
        // As appends do: under `Sync` the commit returns once durable (waited for outside the
        // group's lock, so that other members' commits queue meanwhile and share the fsync);
        // under `Interval` and `Buffered` once queued.
        if self.shared.config.durability == crate::Durability::Sync {
            if let Err(error) = queued.ticket(&self.shared.progress).wait() {
                self.reload()?;
                return Err(error);
            }
        }
        Ok(places)
    }

    /// Queues the group's record for the commit of batch `batch` (with `appends`, in one
    /// journal record) and updates the group's state; `None` if there is nothing to write.
    fn queue_commit(
        &mut self,
        batch: &Batch,
        appends: &[KeyAppend<'_, '_>],
    ) -> Result<Option<(Vec<crate::Appended>, crate::write::sequencer::Queued)>> {
        let number = batch.number;
        if batch.member != self.member {
            return Err(Error::NotAssigned {
                group: self.group.name.clone(),
                partition: batch.deliveries.first().map_or(0, |d| d.record.partition),
            });
        }
        let ends: Vec<(u32, u64)> = self
            .read_ends
            .iter()
            .filter(|(b, _, _)| *b <= number)
            .map(|&(_, p, end)| (p, end))
            .collect();
        let nacks = self.nacks.iter().filter(|n| n.batch <= number);
        let retried = self.retried.iter().filter(|r| r.batch <= number);
        let settles = nacks.clone().count() + retried.clone().count();
        if ends.is_empty() && appends.is_empty() && settles == 0 {
            return Ok(None);
        }
        let partitions = self.shared.config.user_partitions;
        let mut writes = Vec::with_capacity(appends.len() + 1);
        for append in appends {
            writes.push(KeyWrite {
                partition: self.shared.route(append.key())?,
                key: append.key(),
                expected: append.expected(),
                events: append.events(),
            });
        }
        let mut inner = self.group.inner.lock();
        let assigned = inner.assignment(self.member, partitions);
        let mut touched: Vec<u32> = ends
            .iter()
            .map(|(p, _)| *p)
            .chain(nacks.clone().map(|n| n.partition))
            .chain(retried.clone().map(|r| r.partition))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for &p in &touched {
            if !assigned.contains(&p) || batch.generation != inner.generation {
                return Err(Error::NotAssigned {
                    group: self.group.name.clone(),
                    partition: p,
                });
            }
        }
        let mut next = inner.committed.clone();
        for &(p, end) in &ends {
            next.advance(p, end);
        }
        // Held keys delivered again: they move on past what was delivered (a nack below puts
        // the head back where it failed).
        for r in retried {
            let partition = &self.shared.partitions[r.partition as usize];
            let held = next.held_mut(r.partition);
            retry::move_on(partition, held, &r.key, (r.through, r.through_offset))?;
        }
        // Nacked events: the first of each key becomes its head, unless the key is held at an
        // earlier event already (the nacked one waits behind it). Of two nacks of one event,
        // the later one's reason stays.
        let mut first_nacks: Vec<&Nack> = Vec::new();
        for n in nacks {
            match first_nacks
                .iter_mut()
                .find(|f| f.partition == n.partition && f.key == n.key)
            {
                Some(f) if f.version >= n.version => *f = n,
                Some(_) => {}
                None => first_nacks.push(n),
            }
        }
        let (policy, now) = (inner.retry, now_ms());
        for n in first_nacks {
            let held = next.held_mut(n.partition);
            let existing = held.get(&n.key);
            if existing.is_some_and(|h| h.has_head() && h.version < n.version) {
                continue;
            }
            let ahead = existing.map_or(0, |h| h.ahead);
            let at = (n.offset, n.version);
            let failed = retry::failed(&policy, at, n.failures, &n.reason, now, ahead);
            held.insert(n.key.clone(), failed);
        }
        for &p in &touched {
            let end = next.get(p);
            next.sweep(p, end);
        }
        let bytes = next.encoded_len() as u64;
        let limit = self.shared.config.limits.event_bytes_max;
        if bytes > limit {
            drop(inner);
            // The member starts again at the committed cursors: its nacks cannot be kept, and
            // are not to be lost either (the events are delivered again).
            self.generation = u64::MAX;
            return Err(Error::GroupStateTooLarge {
                group: self.group.name.clone(),
                bytes,
                limit,
            });
        }
        let payload = next.encode();
        let events = [Event::new(&payload)];
        writes.push(self.group.record_write(&self.shared, &events));
        let queued = self
            .shared
            .sequencer
            .enqueue(&self.shared.partitions, &writes)?;
        let mut places = queued.all();
        places.pop().expect("the group's record is the last write");
        inner
            .attempts
            .retain(|&(p, offset), _| offset >= next.get(p));
        inner.committed = next;
        inner.recorded = true;
        inner.deleted = false;
        drop(inner);
        self.settled(number);
        Ok(Some((places, queued)))
    }

    /// After a commit of batch `number`: its nacks and retries, and those of earlier batches,
    /// are in the group's state.
    fn settled(&mut self, number: u64) {
        self.nacks.retain(|n| n.batch > number);
        self.retried.retain(|r| r.batch > number);
        self.read_ends.retain(|(b, _, _)| *b > number);
        self.nacked_keys.clear();
        for n in &self.nacks {
            let keys = self.nacked_keys.entry(n.partition).or_default();
            let version = keys.entry(n.key.clone()).or_insert(n.version);
            *version = (*version).min(n.version);
        }
        self.first_open_batch = self.first_open_batch.max(number + 1);
    }

    /// After a failed commit: the group's state is what its last record on disk says.
    fn reload(&self) -> Result<()> {
        let groups_partition =
            &self.shared.partitions[self.shared.config.groups_partition() as usize];
        let partitions = self.shared.config.user_partitions;
        let committed = super::state::load(groups_partition, &self.group.key, partitions)?;
        let mut inner = self.group.inner.lock();
        inner.committed = committed;
        inner.generation += 1;
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut inner = self.group.inner.lock();
        inner.members.retain(|m| m.id != self.member);
        inner.generation += 1;
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group.name)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}
