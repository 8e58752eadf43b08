//! Consumer groups: named groups of members that read the application's partitions in order,
//! from durable cursors, each partition owned by one live member at a time; at-least-once
//! delivery across crashes of the writer and of the consumer.
//!
//! This subsystem owns group state (committed cursors, members, assignment) and delivery. It
//! writes only through the sequencer: a commit is an append of the group's whole cursor state to
//! the groups partition (`write/partition.rs`), under the key `g/<name>`, so it is as durable as
//! an append, shares fsyncs with appends, and survives crashes whole or not at all. Loading a
//! group reads the last record of its key (no scan).
//!
//! Not built yet (issue 12): retries and dead letters, retention.

pub(crate) mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::log::KeyAppend;
use crate::reader::Reader;
use crate::record::{Event, Record};
use crate::stream::Expected;
use crate::write::sequencer::KeyWrite;
use crate::write::Shared;
use state::Cursors;

/// A member that stops polling for this long loses its partitions to the others.
pub const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The groups of one open log, by name: members of one group in this process share its state.
/// A group's state is kept for as long as the log is open, also when no handle to it is left:
/// under `Interval` and `Buffered` a commit returns before its record is visible, so the record
/// on disk may be behind what this process committed.
#[derive(Default)]
pub(crate) struct Groups {
    open: Mutex<HashMap<String, Arc<GroupState>>>,
}

/// One group's state, shared by its members.
pub(crate) struct GroupState {
    name: String,
    key: Vec<u8>,
    inner: Mutex<Inner>,
}

impl GroupState {
    /// The write of one of the group's records (`events`: its one event) to the groups
    /// partition: the one way this module writes.
    fn record_write<'c, 'e>(
        &'c self,
        shared: &Shared,
        events: &'c [Event<'e>],
    ) -> KeyWrite<'c, 'e> {
        KeyWrite {
            partition: shared.config.groups_partition(),
            key: &self.key,
            // No expectation: the group's lock orders this process's records of the group, and
            // the directory lock keeps other processes out. (An expectation would turn a
            // version rewound by a failed write into conflicts until the log is reopened.)
            expected: Expected::Any,
            events,
        }
    }
}

struct Inner {
    committed: Cursors,
    /// Live members, in the order they joined.
    members: Vec<MemberSeen>,
    next_member: u64,
    /// Per partition, one past the last offset delivered since the log was opened: an event
    /// below it is being delivered again.
    delivered: Vec<u64>,
    /// Delivery counts of events delivered more than once and not committed yet (first
    /// deliveries, the common case, cost no entry).
    attempts: HashMap<(u32, u64), u32>,
    /// Moves at every change of membership, so that members notice a new assignment.
    generation: u64,
}

#[derive(Clone, Copy)]
struct MemberSeen {
    id: u64,
    last_poll: Instant,
    /// How long the member may go without polling before the others take its partitions.
    session_timeout: Duration,
}

impl Inner {
    /// The partitions `member` owns: partition `p` goes to the `p % n`-th member of `n`.
    fn assignment(&self, member: u64, partitions: u32) -> Vec<u32> {
        let n = self.members.len() as u32;
        let Some(index) = self.members.iter().position(|m| m.id == member) else {
            return Vec::new();
        };
        (0..partitions).filter(|p| p % n == index as u32).collect()
    }

    /// Drops members that have not polled within their own session timeout.
    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.members.len();
        self.members
            .retain(|m| now.duration_since(m.last_poll) < m.session_timeout);
        if self.members.len() != before {
            self.generation += 1;
        }
    }

    /// Records that `member` polls now; a member that had expired joins again (as a new
    /// member: its earlier batches can no longer be committed).
    fn seen(&mut self, member: u64, session_timeout: Duration) {
        let now = Instant::now();
        match self.members.iter_mut().find(|m| m.id == member) {
            Some(me) => me.last_poll = now,
            None => {
                self.members.push(MemberSeen {
                    id: member,
                    last_poll: now,
                    session_timeout,
                });
                self.generation += 1;
            }
        }
    }
}

/// A consumer group of a log ([`Log::group`](crate::Log::group)).
pub struct Group {
    shared: Arc<Shared>,
    state: Arc<GroupState>,
}

impl Group {
    pub(crate) fn open(shared: &Arc<Shared>, groups: &Groups, name: &str) -> Result<Group> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::InvalidOptions(format!(
                "a group name is 1 to 255 bytes long, not {}",
                name.len()
            )));
        }
        let mut open = groups.open.lock();
        if let Some(state) = open.get(name) {
            return Ok(Group {
                shared: shared.clone(),
                state: state.clone(),
            });
        }
        let key = format!("g/{name}").into_bytes();
        let partitions = shared.config.user_partitions;
        let groups_partition = &shared.partitions[shared.config.groups_partition() as usize];
        let committed = state::load(groups_partition, &key, partitions)?;
        let state = Arc::new(GroupState {
            name: name.to_owned(),
            key,
            inner: Mutex::new(Inner {
                committed,
                members: Vec::new(),
                next_member: 0,
                delivered: vec![0; partitions as usize],
                attempts: HashMap::new(),
                generation: 0,
            }),
        });
        open.insert(name.to_owned(), state.clone());
        Ok(Group {
            shared: shared.clone(),
            state,
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The committed offset of each partition: where delivery resumes after a restart.
    pub fn committed(&self) -> Vec<u64> {
        self.state.inner.lock().committed.offsets().to_vec()
    }

    /// Per partition, how many visible events the group has not committed.
    pub fn lag(&self) -> Vec<u64> {
        let committed = self.committed();
        committed
            .iter()
            .enumerate()
            .map(|(p, &c)| self.shared.partitions[p].visible_end().saturating_sub(c))
            .collect()
    }

    /// Moves every partition's cursor to `at` (durably, as a commit is), and restarts every
    /// member there. A new group starts at the earliest offsets; call this to start it
    /// elsewhere.
    ///
    /// # Errors
    ///
    /// The errors of appends, and of reading the partitions for `StartAt::Timestamp`.
    pub fn reset(&self, at: StartAt) -> Result<()> {
        let partitions = self.shared.config.user_partitions;
        let mut offsets = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let partition = &self.shared.partitions[p as usize];
            offsets.push(match at {
                StartAt::Earliest => 0,
                StartAt::Latest => partition.visible_end(),
                StartAt::Timestamp(t) => {
                    crate::stream::read::first_offset_where(partition, |r| r.timestamp_ms >= t)?
                }
            });
        }
        self.set_cursors(|cursors| {
            for (p, offset) in offsets.iter().enumerate() {
                cursors.set(p as u32, *offset);
            }
            Ok(())
        })
    }

    /// Deletes the group ([`Log::delete_group`](crate::Log::delete_group)).
    pub(crate) fn delete(self) -> Result<()> {
        // The state stays registered (handles may still point at it): it is marked deleted in
        // place, with its cursors back at 0, as the next open would load it.
        let mut inner = self.state.inner.lock();
        if !inner.members.is_empty() {
            return Err(Error::GroupInUse {
                group: self.state.name.clone(),
                members: inner.members.len(),
            });
        }
        let partitions = self.shared.config.user_partitions;
        let payload = Cursors::encode_deleted(partitions);
        self.write_state(&mut inner, Cursors::new(partitions), &payload)?;
        inner.delivered.iter_mut().for_each(|d| *d = 0);
        Ok(())
    }

    /// Moves one partition's cursor to `offset` (back or forward), durably, and restarts every
    /// member at the committed cursors.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`], [`Error::OffsetOutOfRange`] past the partition's visible
    /// end, and the errors of appends.
    pub fn seek(&self, partition: u32, offset: u64) -> Result<()> {
        let partitions = self.shared.config.user_partitions;
        let Some(p) = self
            .shared
            .partitions
            .get(partition as usize)
            .filter(|_| partition < partitions)
        else {
            return Err(Error::PartitionOutOfRange {
                partition,
                partitions,
            });
        };
        let end = p.visible_end();
        if offset > end {
            return Err(Error::OffsetOutOfRange {
                partition,
                offset,
                end,
            });
        }
        self.set_cursors(|cursors| {
            cursors.set(partition, offset);
            Ok(())
        })
    }

    /// Writes the group's cursors as `change` makes them, and waits until that is durable.
    fn set_cursors(&self, change: impl FnOnce(&mut Cursors) -> Result<()>) -> Result<()> {
        let mut inner = self.state.inner.lock();
        let mut next = inner.committed.clone();
        change(&mut next)?;
        let payload = next.encode();
        self.write_state(&mut inner, next, &payload)
    }

    /// Appends the group record `payload`, waits until it is durable, and only then makes
    /// `next` the group's cursors and restarts every member there. Waited for under the
    /// group's lock: resets, seeks and deletions are rare, and no commit may slip in between;
    /// if the write fails, nothing in memory changed.
    fn write_state(&self, inner: &mut Inner, next: Cursors, payload: &[u8]) -> Result<()> {
        let events = [Event::new(payload)];
        let write = [self.state.record_write(&self.shared, &events)];
        let queued = self
            .shared
            .sequencer
            .enqueue(&self.shared.partitions, &write)?;
        queued.ticket(&self.shared.progress).wait()?;
        inner.attempts.clear();
        inner.committed = next;
        inner.generation += 1;
        Ok(())
    }

    /// Joins the group as a new member: partitions are spread evenly over the live members,
    /// and each member resumes its partitions from the committed cursors.
    pub fn join(&self) -> Result<Consumer> {
        let mut inner = self.state.inner.lock();
        let id = inner.next_member;
        inner.next_member += 1;
        inner.members.push(MemberSeen {
            id,
            last_poll: Instant::now(),
            session_timeout: SESSION_TIMEOUT_DEFAULT,
        });
        inner.generation += 1;
        drop(inner);
        Ok(Consumer {
            shared: self.shared.clone(),
            group: self.state.clone(),
            member: id,
            generation: u64::MAX,
            owned: HashMap::new(),
            session_timeout: SESSION_TIMEOUT_DEFAULT,
            rotation: 0,
        })
    }
}

/// Where [`Group::reset`] puts a group's cursors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartAt {
    /// Every partition's first offset: everything is delivered.
    Earliest,
    /// Every partition's visible end: only what is appended from now on is delivered.
    Latest,
    /// In each partition, the first event appended at or after this time (ms since the Unix
    /// epoch).
    Timestamp(u64),
}

/// One member of a consumer group ([`Group::join`]). Leaves the group when dropped.
pub struct Consumer {
    shared: Arc<Shared>,
    group: Arc<GroupState>,
    member: u64,
    /// The assignment generation `owned` was built for.
    generation: u64,
    /// The partitions this member owns, each with its reader (at the next offset to deliver).
    owned: HashMap<u32, Reader>,
    session_timeout: Duration,
    /// Where the next poll starts among the member's partitions.
    rotation: usize,
}

/// One event delivered to a member.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    pub record: Record,
    /// 1 for a first delivery; more when the event is delivered again (after a restart or a
    /// rebalance before it was committed).
    pub attempt: u32,
}

/// What one [`Consumer::poll`] returned.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Batch {
    pub deliveries: Vec<Delivery>,
    /// True when, after this batch, the member's partitions hold nothing more that is visible:
    /// the member has caught up with the live end.
    pub caught_up: bool,
    generation: u64,
    /// Per partition, one past the last offset delivered in the batch: what a commit of the
    /// batch moves the cursor to (kept apart from the deliveries, which the caller may edit).
    ends: Vec<(u32, u64)>,
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
    /// Sets how long this member may go without polling before the others take its
    /// partitions (default [`SESSION_TIMEOUT_DEFAULT`]). A member that polls again after that
    /// joins the group again.
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
    /// where the member is (the committed cursor after a join or a rebalance). Waits up to
    /// `timeout` for events if none is visible, woken by the append that makes one visible.
    ///
    /// # Errors
    ///
    /// Errors reading the partitions (`Error::Corrupt`, I/O).
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.progress.done_journal();
            self.refresh_assignment();
            let batch = self.take(max)?;
            if !batch.is_empty() || Instant::now() >= deadline {
                return Ok(batch);
            }
            self.shared.progress.wait_past(seen, deadline);
        }
    }

    /// Makes `owned` match the group's current assignment. At every change of membership each
    /// member starts its partitions again at their committed cursors, kept or gained alike:
    /// what was delivered and not committed is delivered again (at least once), and no member
    /// goes on from a position another member may have committed past.
    fn refresh_assignment(&mut self) {
        let mut inner = self.group.inner.lock();
        inner.expire();
        inner.seen(self.member, self.session_timeout);
        if inner.generation == self.generation {
            return;
        }
        self.generation = inner.generation;
        let assigned = inner.assignment(self.member, self.shared.config.user_partitions);
        self.owned = assigned
            .into_iter()
            .map(|p| {
                let partition = self.shared.partitions[p as usize].clone();
                (p, Reader::new(partition, inner.committed.get(p)))
            })
            .collect();
    }

    fn take(&mut self, max: usize) -> Result<Batch> {
        let mut deliveries = Vec::new();
        let mut partitions: Vec<u32> = self.owned.keys().copied().collect();
        partitions.sort_unstable();
        // Each poll starts one partition further, so that a busy partition never starves the
        // others of a member that polls fewer events than it has.
        if !partitions.is_empty() {
            let first = self.rotation % partitions.len();
            partitions.rotate_left(first);
            self.rotation = self.rotation.wrapping_add(1);
        }
        let mut caught_up = true;
        let mut failure = None;
        'partitions: for p in partitions {
            let reader = self.owned.get_mut(&p).expect("listed above");
            while deliveries.len() < max {
                match reader.next() {
                    Some(Ok(record)) => deliveries.push(Delivery { record, attempt: 0 }),
                    Some(Err(error)) => {
                        // A reader stops at an error: put a new one at the record that failed,
                        // so that the next poll meets the error again instead of a partition
                        // that looks caught up. What was read before it is delivered now.
                        let at = reader.next_offset();
                        let partition = self.shared.partitions[p as usize].clone();
                        *reader = Reader::new(partition, at);
                        failure = Some(error);
                        caught_up = false;
                        break 'partitions;
                    }
                    None => break,
                }
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
        for delivery in &mut deliveries {
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
        let mut ends: Vec<(u32, u64)> = Vec::new();
        for delivery in &deliveries {
            let (p, end) = (delivery.record.partition, delivery.record.offset + 1);
            match ends.iter_mut().find(|(q, _)| *q == p) {
                Some((_, e)) => *e = (*e).max(end),
                None => ends.push((p, end)),
            }
        }
        Ok(Batch {
            deliveries,
            caught_up,
            generation: self.generation,
            ends,
        })
    }

    /// Commits the batch: for each partition in it, the cursor moves past its last event. One
    /// append to the groups partition, durable as appends are: under `Sync` it returns once
    /// synced, and concurrent commits, of any members and appenders, share an fsync; under
    /// `Interval` and `Buffered` it returns once queued (a crash may then take it, and the
    /// events are delivered again).
    ///
    /// # Errors
    ///
    /// [`Error::NotAssigned`] if the member no longer owns a partition of the batch (it was
    /// reassigned: the new owner delivers from the committed cursor again), and the errors of
    /// appends.
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

    fn commit_with(
        &mut self,
        batch: &Batch,
        appends: &[KeyAppend<'_, '_>],
    ) -> Result<Vec<crate::Appended>> {
        let ends: HashMap<u32, u64> = batch.ends.iter().copied().collect();
        if ends.is_empty() && appends.is_empty() {
            return Ok(Vec::new());
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
        for &p in ends.keys() {
            if !assigned.contains(&p) || batch.generation != inner.generation {
                return Err(Error::NotAssigned {
                    group: self.group.name.clone(),
                    partition: p,
                });
            }
        }
        let mut next = inner.committed.clone();
        for (&p, &end) in &ends {
            next.advance(p, end);
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
        drop(inner);
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

    /// After a failed commit: the group's state is what its last record on disk says.
    fn reload(&self) -> Result<()> {
        let groups_partition =
            &self.shared.partitions[self.shared.config.groups_partition() as usize];
        let partitions = self.shared.config.user_partitions;
        let committed = state::load(groups_partition, &self.group.key, partitions)?;
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
