//! The indexer thread: builds the key table of each segment the writer seals, in the
//! background, so that a log's key lookups never wait for a walk of a whole sealed segment
//! (the lazy path in `lookup.rs` still covers a table the indexer has not written yet).
//!
//! It runs at the lowest scheduling priority (`nice 19`): building a table costs a walk of the
//! segment (about 20 ms per 32 MiB), which must not take CPU from appenders and the writer
//! when they are busy; on an idle machine the table follows its segment within milliseconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::storage::segment::Segment;
use crate::write::partition::Partition;

/// Work the indexer's thread does besides tables, after each sealed segment and at least every
/// [`CHORE_INTERVAL`] (retention).
pub(crate) type Chore = Box<dyn Fn() + Send>;

/// How often the chore runs when no segment is sealed.
pub(crate) const CHORE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A sealed segment whose table is due.
pub(crate) struct Job {
    pub partition: u32,
    pub segment: Arc<Segment>,
}

/// The indexer of one log: its queue and its thread.
pub(crate) struct Indexer {
    jobs: Sender<Job>,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Indexer {
    /// Starts the thread for `partitions`, and tells each partition where to send its sealed
    /// segments.
    pub fn start(partitions: &[Arc<Partition>], chore: Option<Chore>) -> Result<Indexer> {
        let (jobs, queue) = crossbeam_channel::unbounded();
        for partition in partitions {
            partition.streams.send_sealed_to(jobs.clone());
        }
        let partitions = partitions.to_vec();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("annal-indexer".into())
            .spawn(move || run(&partitions, &queue, &stop, chore))
            .map_err(|e| Error::io("spawn indexer thread", "annal-indexer", e))?;
        Ok(Indexer {
            jobs,
            stopping,
            thread,
        })
    }

    /// Stops the thread: the table being built is finished, the jobs still queued are left
    /// (their tables are built by the lookups that need them, or by the next open's indexer),
    /// so that a close never waits for a backlog.
    pub fn stop(self, partitions: &[Arc<Partition>]) {
        self.stopping.store(true, Ordering::Relaxed);
        for partition in partitions {
            partition.streams.stop_sending_sealed();
        }
        drop(self.jobs);
        // A panic in the indexer (a bug) loses only tables, which lookups build lazily.
        let _ = self.thread.join();
    }
}

fn run(
    partitions: &[Arc<Partition>],
    queue: &Receiver<Job>,
    stopping: &AtomicBool,
    chore: Option<Chore>,
) {
    lower_priority();
    // Sealed segments found at open without a table (a log written by a process that stopped
    // before its indexer got to them) are indexed first.
    for partition in partitions {
        let sealed: Vec<Arc<Segment>> = partition
            .segments
            .read()
            .iter()
            .filter(|segment| segment.end_offset() != u64::MAX)
            .cloned()
            .collect();
        for segment in sealed {
            if stopping.load(Ordering::Relaxed) {
                return;
            }
            let table = crate::storage::segment::table_path(&partition.dir, segment.base_offset);
            if !table.exists() {
                let _ = partition.streams.index_sealed(partition, &segment);
            }
        }
    }
    loop {
        let job = match &chore {
            Some(_) => match queue.recv_timeout(CHORE_INTERVAL) {
                Ok(job) => Some(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            },
            None => match queue.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            },
        };
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Some(job) = job {
            if let Some(partition) = partitions.get(job.partition as usize) {
                // Best effort: a table that cannot be built now (damage, I/O) is built, or its
                // error reported, by the lookup that needs it.
                let _ = partition.streams.index_sealed(partition, &job.segment);
            }
        }
        if let Some(chore) = &chore {
            chore();
        }
    }
}

/// Gives the calling thread the lowest scheduling priority.
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; on Linux, `who == 0` with
    // PRIO_PROCESS names the calling thread. A failure leaves the priority as it was.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}
