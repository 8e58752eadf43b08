//! Retries and dead letters, in order per key.
//!
//! A nacked event does not stop its partition: its key is *held* in the group's state (head
//! offset and version, failed attempts, and when to retry or why it was parked), the readers
//! pass by the key's later events, and other keys move on. When the retry falls due, the key is
//! delivered again from its head, in version order, up to its last visible event; once that is
//! committed without a nack the key is free again. After the policy's last attempt the key is
//! parked: a dead letter, with every later event of the key parked behind it, until it is
//! re-driven (delivered again from its head) or discarded (its parked events are passed by).
//! The committed state is so a contiguous end per partition plus the held keys above their
//! heads, written whole with every commit (`state.rs`).

use std::time::Duration;

use super::state::{Held, HeldStatus};
use super::Group;
use crate::error::{Error, Result};
use crate::write::partition::Partition;

/// How a group retries nacked events ([`Group::set_retry_policy`]). Kept by the open log, not
/// on disk: set it again after each open (the default otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed deliveries (nacks) an event gets before it is parked (at least 1: 1 parks at the
    /// first nack). Deliveries again after a restart or a rebalance do not count.
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry waits twice as long as the one before.
    pub backoff_initial: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts; waits of 100 ms, 200 ms, 400 ms, 800 ms; at most 1 minute.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed delivery of an event.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let initial_ms = self.backoff_initial.as_millis().min(u128::from(u64::MAX)) as u64;
        let wait = Duration::from_millis(initial_ms.saturating_mul(factor));
        wait.min(self.backoff_max)
    }
}

/// A key parked in a group's dead letters ([`Group::dead_letters`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    pub partition: u32,
    pub key: Vec<u8>,
    /// The event that failed: its offset and its version in the key.
    pub offset: u64,
    pub version: u64,
    /// How many deliveries of it failed.
    pub attempts: u32,
    /// The reason given with its last nack (at most 1 KiB).
    pub reason: String,
    /// When it was parked (ms since the Unix epoch).
    pub parked_at_ms: u64,
    /// Events of the key parked: the failed one and those behind it that the group has
    /// reached; later events of the key join them as the group reaches them.
    pub events: u64,
}

/// The held state of an event whose `failures`-th delivery failed now (`now_ms`); the key's
/// events below `ahead` were delivered ahead of the end.
pub(super) fn failed(
    policy: &RetryPolicy,
    at: (u64, u64),
    failures: u32,
    reason: &str,
    now_ms: u64,
    ahead: u64,
) -> Held {
    let (offset, version) = at;
    let attempts = failures.max(1);
    let status = if attempts >= policy.max_attempts {
        HeldStatus::Parked {
            at_ms: now_ms,
            reason: reason.to_owned(),
        }
    } else {
        let wait = policy
            .backoff(attempts)
            .as_millis()
            .min(u128::from(u64::MAX)) as u64;
        HeldStatus::Retry {
            due_ms: now_ms.saturating_add(wait),
        }
    };
    Held {
        offset,
        version,
        attempts,
        ahead,
        status,
    }
}

/// The key's first event at or above `start` (offset, version), whatever its version: the
/// head of a key whose held events retention deleted. Its events below the start are gone, so
/// this is the first one after them, or, when retention deleted every event of the key and its
/// versions started again at 0, the first of its new history (taking the first at or above the
/// head's version would deliver that history out of order).
pub(super) fn first_left(
    partition: &Partition,
    key: &[u8],
    start: u64,
) -> Result<Option<(u64, u64)>> {
    let mut reached = false;
    let records = crate::stream::read::key_records(partition, key, 0, |r| {
        let more = !reached;
        reached |= r.offset >= start;
        more
    })?;
    Ok(records
        .iter()
        .find(|r| r.offset >= start)
        .map(|r| (r.offset, r.version)))
}

/// Moves a held key on once a retry delivered its events through `through` (a version, at
/// offset `through_offset`) and none failed: held at the next version, due now, if that event
/// is visible; held at its first event left if retention deleted the next version meanwhile;
/// otherwise only the events delivered ahead of the group's end stay passed by (the reader has
/// yet to reach them), until the end passes them (`Cursors::sweep`).
pub(super) fn move_on(
    partition: &Partition,
    held: &mut std::collections::HashMap<Vec<u8>, Held>,
    key: &[u8],
    through: (u64, u64),
) -> Result<()> {
    let (through, through_offset) = through;
    let version = through + 1;
    let ahead = held.get(key).map_or(0, |h| h.ahead).max(through_offset + 1);
    let mut next_event = crate::stream::read::version_offset(partition, key, version)?
        .map(|offset| (offset, version));
    let start = partition.start();
    if next_event.is_none() && through_offset + 1 < start {
        // Retention may have deleted the next version since the retry delivered the ones
        // before it (found by the crash model: the key was dropped with events left).
        next_event = first_left(partition, key, start)?;
    }
    let next = match next_event {
        Some((offset, version)) => Held {
            offset,
            version,
            attempts: 0,
            ahead,
            status: HeldStatus::Retry { due_ms: 0 },
        },
        None => Held {
            offset: ahead,
            version,
            attempts: 0,
            ahead,
            status: HeldStatus::Ahead,
        },
    };
    held.insert(key.to_vec(), next);
    Ok(())
}

impl Group {
    /// Sets how this group retries nacked events (default [`RetryPolicy::default`]); applies
    /// to nacks committed from now on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] if `max_attempts` is 0.
    pub fn set_retry_policy(&self, policy: RetryPolicy) -> Result<()> {
        if policy.max_attempts == 0 {
            return Err(Error::InvalidOptions(
                "a retry policy's max_attempts is at least 1".into(),
            ));
        }
        self.state.inner.lock().retry = policy;
        Ok(())
    }

    /// The group's retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.state.inner.lock().retry
    }

    /// Keys waiting for a retry now: (partition, key, failed attempts so far), in (partition,
    /// key) order.
    pub fn retrying(&self) -> Vec<(u32, Vec<u8>, u32)> {
        let inner = self.state.inner.lock();
        let all = inner.committed.all_held();
        all.into_iter()
            .filter(|(_, _, h)| matches!(h.status, HeldStatus::Retry { .. }))
            .map(|(p, key, h)| (p, key.to_vec(), h.attempts))
            .collect()
    }

    /// The group's dead letters, one per parked key, in (partition, offset) order.
    ///
    /// # Errors
    ///
    /// Errors reading the key tables to count parked events.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let committed = self.state.inner.lock().committed.clone();
        let mut letters = Vec::new();
        for (p, key, h) in committed.all_held() {
            let HeldStatus::Parked { at_ms, reason } = &h.status else {
                continue;
            };
            let partition = &self.shared.partitions[p as usize];
            let end = committed.get(p);
            let mut events = 0u64;
            for found in partition.streams.key_frames(partition, key, h.version)? {
                let info = &found.info;
                for i in 0..u64::from(info.record_count) {
                    let (offset, version) = (info.base_offset + i, info.base_version + i);
                    let reached = offset < end || offset < h.ahead || version == h.version;
                    if version >= h.version && reached {
                        events += 1;
                    }
                }
            }
            letters.push(DeadLetter {
                partition: p,
                key: key.to_vec(),
                offset: h.offset,
                version: h.version,
                attempts: h.attempts,
                reason: reason.clone(),
                parked_at_ms: *at_ms,
                events: events.max(1),
            });
        }
        letters.sort_by_key(|l| (l.partition, l.offset));
        Ok(letters)
    }

    /// Re-drives the dead letter of `key`: its failed event and those parked behind it are
    /// delivered again, in order, with a fresh count of attempts. Durable once it returns;
    /// members go on where they are.
    ///
    /// # Errors
    ///
    /// [`Error::NoDeadLetter`] if the key is not parked, and the errors of appends.
    pub fn redrive(&self, key: &[u8]) -> Result<()> {
        let p = self.shared.route(key)?;
        let group = self.state.name.clone();
        self.set_cursors(false, |cursors| {
            let held = cursors.held_mut(p);
            match held.get_mut(key) {
                Some(h) if matches!(h.status, HeldStatus::Parked { .. }) => {
                    h.attempts = 0;
                    h.status = HeldStatus::Retry { due_ms: 0 };
                    Ok(())
                }
                _ => Err(Error::NoDeadLetter {
                    group,
                    key: key.to_vec(),
                }),
            }
        })
    }

    /// Re-drives every dead letter of the group ([`redrive`](Self::redrive)), in one durable
    /// write. Returns how many keys were parked.
    ///
    /// # Errors
    ///
    /// The errors of appends.
    pub fn redrive_all(&self) -> Result<usize> {
        let parked = {
            let inner = self.state.inner.lock();
            let all = inner.committed.all_held();
            all.iter()
                .filter(|(_, _, h)| matches!(h.status, HeldStatus::Parked { .. }))
                .count()
        };
        if parked == 0 {
            return Ok(0);
        }
        let mut count = 0;
        self.set_cursors(false, |cursors| {
            for p in 0..cursors.offsets().len() as u32 {
                for h in cursors.held_mut(p).values_mut() {
                    if matches!(h.status, HeldStatus::Parked { .. }) {
                        h.attempts = 0;
                        h.status = HeldStatus::Retry { due_ms: 0 };
                        count += 1;
                    }
                }
            }
            Ok(())
        })?;
        Ok(count)
    }

    /// Discards the dead letter of `key`: its failed event and the events parked behind it are
    /// never delivered to this group; the key's later events are delivered as they come.
    /// Durable once it returns; every member then restarts at the committed cursors (as after
    /// a reset), so that events it passed by as parked and has not committed are delivered.
    ///
    /// # Errors
    ///
    /// [`Error::NoDeadLetter`] if the key is not parked, errors reading the key tables, and
    /// the errors of appends.
    pub fn discard(&self, key: &[u8]) -> Result<()> {
        let p = self.shared.route(key)?;
        let group = self.state.name.clone();
        self.set_cursors(true, |cursors| {
            let end = cursors.get(p);
            let h = match cursors.held(p).get(key) {
                Some(h) if matches!(h.status, HeldStatus::Parked { .. }) => h.clone(),
                _ => {
                    return Err(Error::NoDeadLetter {
                        group,
                        key: key.to_vec(),
                    })
                }
            };
            // The parked events are the failed one, the key's events below the end, and those
            // delivered ahead: the reader passes them by; the key's later events come.
            let ahead = end.max(h.ahead).max(h.offset + 1);
            cursors.held_mut(p).insert(
                key.to_vec(),
                Held {
                    offset: ahead,
                    version: h.version,
                    attempts: 0,
                    ahead,
                    status: HeldStatus::Ahead,
                },
            );
            cursors.sweep(p, end);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        };
        let waits: Vec<u64> = (1..=6)
            .map(|f| policy.backoff(f).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(1000));
        let held = failed(&policy, (5, 2), 3, "r", 1_000, 0);
        assert_eq!(held.status, HeldStatus::Retry { due_ms: 1_400 });
        let parked = failed(&policy, (5, 2), 10, "r", 1_000, 0);
        assert!(matches!(
            parked.status,
            HeldStatus::Parked { at_ms: 1_000, .. }
        ));
    }
}
