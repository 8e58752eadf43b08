//! What waiters watch: how far appends are done, flushes, failures; and the [`Ticket`] of one
//! queued append.
//!
//! Appends are numbered by journal index (their place in the journal's order of events); "done" means visible in
//! the sense of the durability mode: synced under `Sync` and `Interval`, written under
//! `Buffered`. A write failure ends a *generation* of appends: every append of it at or past
//! the failure's first lost position failed.

use std::sync::{Arc, OnceLock};

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

/// Progress of the writer, under one lock, with one condition variable for every waiter.
pub(crate) struct Progress {
    status: Mutex<Status>,
    changed: Condvar,
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
        }
    }

    /// Everything below `done_journal` is done; flush request `flush_done` (if any) completed.
    pub fn publish(&self, done_journal: u64, flush_done: Option<u64>) {
        let mut status = self.status.lock();
        status.done_journal = status.done_journal.max(done_journal);
        if let Some(seq) = flush_done {
            status.flush_done = status.flush_done.max(seq);
        }
        drop(status);
        self.changed.notify_all();
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
        self.changed.notify_all();
    }

    /// Marks writes as stalled (with the failure) or no longer stalled.
    pub fn set_stalled(&self, stalled: Option<Arc<Error>>) {
        self.status.lock().stalled = stalled;
        self.changed.notify_all();
    }

    pub fn writer_exited(&self) {
        self.status.lock().writer_exited = true;
        self.changed.notify_all();
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
        let mut status = self.progress.status.lock();
        loop {
            if let Some(result) = self.settled(&status) {
                return result;
            }
            self.progress.changed.wait(&mut status);
        }
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
