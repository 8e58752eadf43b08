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
//! A nacked event holds its key, not its partition: see `retry.rs`.

pub(crate) mod member;
pub(crate) mod retry;
pub(crate) mod state;

pub use member::{Batch, Consumer, Delivery};
pub use retry::{DeadLetter, RetryPolicy};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::record::Event;
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
    /// The groups with a record in the groups partition when the log was opened, and whether
    /// that record says deleted: read once, on first need (one process writes the log, and
    /// the groups it changes since are in `open`).
    on_disk: Mutex<Option<std::collections::BTreeMap<String, bool>>>,
}

impl Groups {
    /// The groups with a record in the groups partition when the log was opened.
    fn on_disk(&self, shared: &Shared) -> Result<std::collections::BTreeMap<String, bool>> {
        let mut on_disk = self.on_disk.lock();
        if let Some(names) = &*on_disk {
            return Ok(names.clone());
        }
        let groups = &shared.partitions[shared.config.groups_partition() as usize];
        // A group's last record decides: deleted groups are not listed.
        let mut names = std::collections::BTreeMap::new();
        for record in crate::reader::Reader::new(groups.clone(), groups.start()) {
            let record = record?;
            if let Some(name) = record.key.strip_prefix(b"g/") {
                let deleted = state::is_deleted(&record.payload);
                names.insert(String::from_utf8_lossy(name).into_owned(), deleted);
            }
        }
        *on_disk = Some(names.clone());
        Ok(names)
    }

    /// The names of the groups that have a record and were not deleted, in name order.
    pub(crate) fn names(&self, shared: &Shared) -> Result<Vec<String>> {
        let mut names = self.on_disk(shared)?;
        for (name, state) in self.open.lock().iter() {
            let inner = state.inner.lock();
            if inner.recorded {
                names.insert(name.clone(), inner.deleted);
            }
        }
        Ok(names
            .into_iter()
            .filter(|(_, deleted)| !deleted)
            .map(|(name, _)| name)
            .collect())
    }

    /// Per partition, the lowest offset a group (not deleted) still needs: its committed end,
    /// or the head of a key it holds below that. `None` while there is no group. Groups open
    /// in this process count with the lower of what they committed here and their visible
    /// record; the others with their record.
    pub(crate) fn watermarks(&self, shared: &Shared) -> Result<Option<Vec<u64>>> {
        let partitions = shared.config.user_partitions;
        let mut lowest: Option<Vec<u64>> = None;
        let mut count = |cursors: &Cursors| {
            let lowest = lowest.get_or_insert_with(|| vec![u64::MAX; partitions as usize]);
            for (p, low) in lowest.iter_mut().enumerate() {
                *low = (*low).min(cursors.watermark(p as u32));
            }
        };
        let on_disk = self.on_disk(shared)?;
        let open = self.open.lock().clone();
        let groups = &shared.partitions[shared.config.groups_partition() as usize];
        for state in open.values() {
            let (deleted, committed) = {
                let inner = state.inner.lock();
                (inner.deleted, inner.committed.clone())
            };
            if deleted {
                continue;
            }
            // What this process committed may not be durable yet (a commit returns to other
            // members' view before its fsync; pipelined commits, `Interval`, `Buffered`): the
            // lower of it and the group's visible record counts, so that a crash cannot take a
            // commit that a deletion relied on (under `Sync`, visible records are durable).
            count(&committed);
            match state::load_record(groups, &state.key, partitions)? {
                Some((record, false)) => count(&record),
                Some((_, true)) => {}
                // No visible record yet: a crash would bring the group back with nothing
                // committed, so it needs everything.
                None => count(&Cursors::new(partitions)),
            }
        }
        for (name, deleted) in on_disk {
            if deleted || open.contains_key(&name) {
                continue;
            }
            let key = format!("g/{name}").into_bytes();
            if let Some((cursors, false)) = state::load_record(groups, &key, partitions)? {
                count(&cursors);
            }
        }
        Ok(lowest)
    }
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
    retry: RetryPolicy,
    /// Whether the group has a record in the groups partition, and whether it says deleted.
    recorded: bool,
    deleted: bool,
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
        let record = state::load_record(groups_partition, &key, partitions)?;
        let recorded = record.is_some();
        let (committed, deleted) = record.unwrap_or_else(|| (Cursors::new(partitions), false));
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
                retry: RetryPolicy::default(),
                recorded,
                deleted,
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
                StartAt::Earliest => partition.start(),
                StartAt::Latest => partition.visible_end(),
                StartAt::Timestamp(t) => {
                    crate::stream::read::first_offset_where(partition, |r| r.timestamp_ms >= t)?
                }
            });
        }
        self.set_cursors(true, |cursors| {
            for (p, offset) in offsets.iter().enumerate() {
                cursors.set(p as u32, *offset);
                cursors.replay_from_here(p as u32);
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
        self.write_state(&mut inner, Cursors::new(partitions), &payload, true)?;
        inner.delivered.iter_mut().for_each(|d| *d = 0);
        Ok(())
    }

    /// Moves one partition's cursor to `offset` (back or forward), durably, and restarts every
    /// member at the committed cursors.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`], [`Error::OffsetOutOfRange`] past the partition's visible
    /// end, [`Error::OffsetBelowStart`] below its start, and the errors of appends.
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
        let start = p.start();
        if offset < start {
            return Err(Error::OffsetBelowStart {
                partition,
                offset,
                start,
            });
        }
        self.set_cursors(true, |cursors| {
            cursors.set(partition, offset);
            cursors.replay_from_here(partition);
            Ok(())
        })
    }

    /// Writes the group's cursors as `change` makes them, and waits until that is durable;
    /// with `restart`, every member then restarts at the committed cursors.
    fn set_cursors(
        &self,
        restart: bool,
        change: impl FnOnce(&mut Cursors) -> Result<()>,
    ) -> Result<()> {
        let mut inner = self.state.inner.lock();
        let mut next = inner.committed.clone();
        change(&mut next)?;
        let payload = next.encode();
        self.write_state(&mut inner, next, &payload, restart)
    }

    /// Appends the group record `payload`, waits until it is durable, and only then makes
    /// `next` the group's cursors and (with `restart`) restarts every member there. Waited for
    /// under the group's lock: resets, seeks, deletions and dead-letter changes are rare, and
    /// no commit may slip in between; if the write fails, nothing in memory changed.
    fn write_state(
        &self,
        inner: &mut Inner,
        next: Cursors,
        payload: &[u8],
        restart: bool,
    ) -> Result<()> {
        let events = [Event::new(payload)];
        let write = [self.state.record_write(&self.shared, &events)];
        let queued = self
            .shared
            .sequencer
            .enqueue(&self.shared.partitions, &write)?;
        queued.ticket(&self.shared.progress).wait()?;
        inner.recorded = true;
        inner.deleted = state::is_deleted(payload);
        inner.committed = next;
        if restart {
            inner.attempts.clear();
            inner.generation += 1;
        }
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
        Ok(Consumer::new(self.shared.clone(), self.state.clone(), id))
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
