//! What waiters watch: how far appends are done, flushes, failures; and the [`Ticket`] of one
//! queued append.
//!
//! Appends are numbered by journal index (their place in the journal's order of events); "done" means visible in
//! the sense of the durability mode: synced under `Sync` and `Interval`, written under
//! `Buffered`. A write failure ends a *generation* of appends: every append of it at or past
//! the failure's first lost position failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::write::Appended;

/// The appends between two failures that cost appends.
#[derive(Default)]
pub(crate) struct Generation {
    failure: OnceLock<Failure>,
}

struct Failure {
    /// The first journal index that was lost.
    lost_from: u64,
    source: Arc<Error>,
    poisoned: bool,
}

impl Failure {
    fn error(&self, partition: u32) -> Error {
        if self.poisoned {
            Error::Poisoned {
                source: self.source.clone(),
            }
        } else {
            Error::AppendFailed {
                partition,
                source: self.source.clone(),
            }
        }
    }
}

/// Pause instructions between two looks of a spinning waiter at what it waits for.
pub const SPIN_PAUSES: u32 = 64;

/// The longest a ticket spins before it sleeps (see [`Progress::set_spin`]).
pub const TICKET_SPIN_MAX: Duration = Duration::from_micros(500);

/// Progress of the writer, under one lock, with one condition variable for every waiter.
pub(crate) struct Progress {
    status: Mutex<Status>,
    changed: Condvar,
    /// Counts the changes of `status`, bumped after each: what a spinning ticket watches.
    changes: AtomicU64,
    /// How long a ticket may spin, in nanoseconds; 0: it sleeps at once.
    spin_ns: AtomicU64,
    /// Set while a ticket spins: one at a time.
    spinning: AtomicBool,
    /// Tickets that spun, for [`Stats::ticket_spins`](crate::Stats::ticket_spins).
    spins: AtomicU64,
}

pub(crate) struct Status {
    /// Every append below this journal index is done.
    pub done_journal: u64,
    /// The last flush request the writer completed.
    pub flush_done: u64,
    /// A failure that lost acknowledged appends and that no flush or close has reported yet.
    pub unreported: Option<Error>,
    /// Set once the log refuses writes for good (a failed fsync); reported to every flush.
    pub poisoned: Option<Arc<Error>>,
    /// Set while writes fail and are retried: every flush fails at once with it, since none
    /// can complete until a retry succeeds.
    pub stalled: Option<Arc<Error>>,
    pub writer_exited: bool,
}

impl Progress {
    pub fn new(done_journal: u64) -> Progress {
        Progress {
            status: Mutex::new(Status {
                done_journal,
                flush_done: 0,
                unreported: None,
                poisoned: None,
                stalled: None,
                writer_exited: false,
            }),
            changed: Condvar::new(),
            changes: AtomicU64::new(0),
            spin_ns: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            spins: AtomicU64::new(0),
        }
    }

    /// Wakes every waiter after a change of the status (made and unlocked by the caller).
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
        self.changed.notify_all();
    }

    /// Lets the next tickets spin for up to `spin` before they sleep (`Duration::ZERO`: not at
    /// all). The writer allows it while appends come one at a time under `Sync`: waking a
    /// sleeping thread costs tens of microseconds on a virtual machine, a tenth of a round, and
    /// a spinning one sees the round end at once. Only one ticket spins at a time, so that
    /// spinning never takes the cores of many appenders.
    pub fn set_spin(&self, spin: Duration) {
        let ns = u64::try_from(spin.min(TICKET_SPIN_MAX).as_nanos()).unwrap_or(0);
        self.spin_ns.store(ns, Ordering::Relaxed);
    }

    /// Everything below `done_journal` is done; flush request `flush_done` (if any) completed.
    pub fn publish(&self, done_journal: u64, flush_done: Option<u64>) {
        let mut status = self.status.lock();
        status.done_journal = status.done_journal.max(done_journal);
        if let Some(seq) = flush_done {
            status.flush_done = status.flush_done.max(seq);
        }
        drop(status);
        self.changed();
    }

    /// Waits until something is done past `seen` (an append made visible), `deadline` passes,
    /// or the writer stops: how a waiting consumer is woken, without spinning.
    pub fn wait_past(&self, seen: u64, deadline: std::time::Instant) {
        let mut status = self.status.lock();
        while status.done_journal <= seen && !status.writer_exited {
            if self.changed.wait_until(&mut status, deadline).timed_out() {
                return;
            }
        }
    }

    /// Ends `generation` with a failure: appends at or past `lost_from` failed with `error`.
    /// `unreported` keeps an error for the next flush or close (appends that were acknowledged
    /// before their write); `poisoned` marks the log as refusing writes.
    pub fn fail(
        &self,
        generation: &Generation,
        lost_from: u64,
        source: Arc<Error>,
        unreported: Option<Error>,
        poisoned: bool,
    ) {
        let mut status = self.status.lock();
        // Set under the status lock, so that a waiting ticket sees the failure before any
        // progress that a later generation publishes.
        let _ = generation.failure.set(Failure {
            lost_from,
            source: source.clone(),
            poisoned,
        });
        if poisoned {
            status.poisoned = Some(source);
        }
        if let Some(unreported) = unreported {
            status.unreported = Some(unreported);
        }
        drop(status);
        self.changed();
    }

    /// Marks writes as stalled (with the failure) or no longer stalled.
    pub fn set_stalled(&self, stalled: Option<Arc<Error>>) {
        self.status.lock().stalled = stalled;
        self.changed();
    }

    pub fn writer_exited(&self) {
        self.status.lock().writer_exited = true;
        self.changed();
    }

    /// Waits until the writer completed flush request `seq`, then returns the failure not
    /// reported yet, if any.
    pub fn wait_flush(&self, seq: u64) -> Result<()> {
        let mut status = self.status.lock();
        loop {
            // A loss is reported before the poisoning that came with it: it names the offsets.
            if let Some(error) = status.unreported.take() {
                return Err(error);
            }
            if let Some(source) = &status.poisoned {
                return Err(Error::Poisoned {
                    source: source.clone(),
                });
            }
            if let Some(source) = &status.stalled {
                return Err(Error::WritesStalled {
                    source: source.clone(),
                });
            }
            if status.flush_done >= seq {
                break;
            }
            if status.writer_exited {
                return Err(Error::Closed);
            }
            self.changed.wait(&mut status);
        }
        status.unreported.take().map_or(Ok(()), Err)
    }

    /// After the writer exited: the failure to report to `close`, if any.
    pub fn final_report(&self) -> Result<()> {
        let mut status = self.status.lock();
        if let Some(error) = status.unreported.take() {
            return Err(error);
        }
        if let Some(source) = &status.poisoned {
            return Err(Error::Poisoned {
                source: source.clone(),
            });
        }
        Ok(())
    }

    /// How many tickets spun so far.
    pub fn ticket_spins(&self) -> u64 {
        self.spins.load(Ordering::Relaxed)
    }

    pub fn done_journal(&self) -> u64 {
        self.status.lock().done_journal
    }
}

/// A queued append. It already knows where it will be; [`Ticket::wait`] returns when the append
/// is done in the sense of the log's [`Durability`](crate::Durability): synced for `Sync` and
/// `Interval`, written to the OS for `Buffered`.
#[must_use = "an append is only known to be durable once its ticket's wait() returns Ok"]
pub struct Ticket {
    pub(crate) progress: Arc<Progress>,
    pub(crate) generation: Arc<Generation>,
    pub(crate) appended: Appended,
    /// One past the journal index of the append's last event.
    pub(crate) journal_end: u64,
}

impl Ticket {
    /// Where the append will be, if it succeeds.
    pub fn appended(&self) -> Appended {
        self.appended
    }

    /// Waits until the append is done (see [`Durability`](crate::Durability)).
    ///
    /// # Errors
    ///
    /// [`Error::AppendFailed`] if writing it failed (it is not in the log), [`Error::Poisoned`]
    /// if an fsync failed before it was durable, [`Error::Closed`] if the log closed first.
    pub fn wait(self) -> Result<Appended> {
        self.spin();
        let mut status = self.progress.status.lock();
        loop {
            if let Some(result) = self.settled(&status) {
                return result;
            }
            self.progress.changed.wait(&mut status);
        }
    }

    /// Spins while the writer allows it (see [`Progress::set_spin`]) and the ticket is not
    /// settled, looking at the status only when it changed.
    fn spin(&self) {
        let progress = &self.progress;
        let bound = progress.spin_ns.load(Ordering::Relaxed);
        if bound == 0 || progress.spinning.swap(true, Ordering::Acquire) {
            return;
        }
        progress.spins.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_nanos(bound);
        let mut seen = None;
        loop {
            let changes = progress.changes.load(Ordering::Acquire);
            if seen != Some(changes) {
                seen = Some(changes);
                if self.settled(&progress.status.lock()).is_some() {
                    break;
                }
            }
            if Instant::now() >= until {
                break;
            }
            for _ in 0..SPIN_PAUSES {
                std::hint::spin_loop();
            }
        }
        progress.spinning.store(false, Ordering::Release);
    }

    /// True once [`wait`](Self::wait) would return without blocking.
    pub fn is_done(&self) -> bool {
        let status = self.progress.status.lock();
        self.settled(&status).is_some()
    }

    fn settled(&self, status: &Status) -> Option<Result<Appended>> {
        if let Some(failure) = self.generation.failure.get() {
            if self.journal_end > failure.lost_from {
                return Some(Err(failure.error(self.appended.partition)));
            }
            return Some(Ok(self.appended));
        }
        if status.done_journal >= self.journal_end {
            return Some(Ok(self.appended));
        }
        if let Some(source) = &status.poisoned {
            return Some(Err(Error::Poisoned {
                source: source.clone(),
            }));
        }
        if status.writer_exited {
            return Some(Err(Error::Closed));
        }
        None
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(progress: &Arc<Progress>, generation: &Arc<Generation>, journal_end: u64) -> Ticket {
        Ticket {
            progress: progress.clone(),
            generation: generation.clone(),
            appended: Appended {
                partition: 3,
                offset: journal_end - 1,
                count: 1,
                version: 0,
                global_position: journal_end - 1,
                duplicate: false,
            },
            journal_end,
        }
    }

    /// A spinning ticket returns what a sleeping one returns: done once published past it,
    /// failed once its generation fails, whichever thread does it and whenever.
    #[test]
    fn a_spinning_ticket_settles_as_a_sleeping_one() {
        for spin in [Duration::ZERO, TICKET_SPIN_MAX] {
            for delay_us in [0u64, 100, 2_000] {
                let progress = Arc::new(Progress::new(0));
                progress.set_spin(spin);
                let generation = Arc::new(Generation::default());
                let done = ticket(&progress, &generation, 5);
                let failed = ticket(&progress, &generation, 9);
                let writer = {
                    let (progress, generation) = (progress.clone(), generation.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_micros(delay_us));
                        progress.publish(5, None);
                        std::thread::sleep(Duration::from_micros(delay_us));
                        let source = Arc::new(Error::Closed);
                        progress.fail(&generation, 7, source, None, false);
                    })
                };
                assert_eq!(
                    done.wait().unwrap().offset,
                    4,
                    "spin {spin:?}, delay {delay_us}"
                );
                assert!(
                    matches!(failed.wait(), Err(Error::AppendFailed { partition: 3, .. })),
                    "spin {spin:?}, delay {delay_us}"
                );
                writer.join().unwrap();
                assert!(
                    !progress.spinning.load(Ordering::Relaxed),
                    "the spinner let go"
                );
            }
        }
    }

    #[test]
    fn the_spin_is_capped_and_a_long_wait_still_settles() {
        let progress = Arc::new(Progress::new(0));
        progress.set_spin(Duration::from_secs(60));
        assert_eq!(
            progress.spin_ns.load(Ordering::Relaxed),
            TICKET_SPIN_MAX.as_nanos() as u64
        );
        // A ticket that nothing settles spins at most that long, then sleeps until settled.
        let generation = Arc::new(Generation::default());
        let waiting = ticket(&progress, &generation, 1);
        let started = Instant::now();
        let publisher = {
            let progress = progress.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                progress.publish(1, None);
            })
        };
        assert!(waiting.wait().is_ok());
        assert!(started.elapsed() >= Duration::from_millis(20));
        publisher.join().unwrap();
    }
}
