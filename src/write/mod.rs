//! The write path: one way from an append call to a durable, visible record.
//!
//! ```text
//! Log::append -> Sequencer::enqueue -> (writer thread) journal record -> fsync -> segments
//!             -> publish: readers' visible ends, tickets
//! ```
//!
//! This subsystem owns offsets, global positions and timestamps (assigned in one place, the
//! sequencer, under one lock), the one writer thread, the journal, the segments being written,
//! and recovery of what a crash left behind. It writes files only through
//! `crate::storage::io`, and never reads records for callers (`crate::reader` does).

pub(crate) mod active;
pub(crate) mod journal;
pub(crate) mod partition;
pub(crate) mod recovery;
pub(crate) mod sequencer;
pub(crate) mod ticket;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::options::{Durability, Options, RecoveryMode};
use crate::storage::frame::EncodeLimits;
use crate::storage::index::IndexPolicy;
use crate::storage::io::Faults;

/// Outside `Sync`, the writer writes once this many bytes are pending...
pub(crate) const WRITE_BATCH_BYTES: usize = 256 << 10;
/// ... or once the oldest pending frame has waited this long. It bounds what a process kill
/// can take from `Interval` and `Buffered` appends that were acknowledged but not yet written,
/// and it lets a thread appending one event at a time share a write call with its next events.
pub(crate) const LINGER: Duration = Duration::from_micros(200);

/// The settings the write path needs, derived once from [`Options`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub durability: Durability,
    pub segment_bytes: u64,
    pub segment_age_max_ms: Option<u64>,
    pub index_policy: IndexPolicy,
    pub limits: EncodeLimits,
    pub queue_bytes_max: u64,
    pub journal_bytes: u64,
    pub recovery: RecoveryMode,
    pub faults: Faults,
    /// Partitions the application's keys go to. One more partition follows them, the groups
    /// partition (`groups/`), where consumer groups keep their records: it takes offsets and
    /// journal indexes like any partition, but its events have no global position.
    pub user_partitions: u32,
    pub key_bytes_max: u32,
    pub retention: crate::options::Retention,
    /// Under `Sync`: spin briefly for a lone appender (`Options::spin_wait`).
    pub spin_wait: bool,
}

impl Config {
    pub fn new(options: &Options, user_partitions: u32) -> Config {
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
            journal_bytes: options.journal_bytes_resolved(),
            recovery: options.recovery,
            faults: options.fail_points.clone(),
            user_partitions,
            key_bytes_max: options.key_bytes_max,
            retention: options.retention,
            spin_wait: options.spin_wait,
        }
    }

    /// The id of the groups partition: the one after the application's.
    pub fn groups_partition(&self) -> u32 {
        self.user_partitions
    }

    /// Every partition the writer keeps: the application's and the groups partition.
    pub fn lanes(&self) -> u32 {
        self.user_partitions + 1
    }

    /// Outside `Sync`, the pending bytes at which the writer writes at once: a batch, or the
    /// whole queue bound if that is smaller.
    pub fn write_batch_bytes(&self) -> usize {
        let bound = usize::try_from(self.queue_bytes_max).unwrap_or(usize::MAX);
        WRITE_BATCH_BYTES.min(bound)
    }
}

/// What appenders, tickets and the writer thread share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: Arc<Config>,
    pub sequencer: sequencer::Sequencer,
    pub progress: Arc<ticket::Progress>,
    pub partitions: Vec<Arc<partition::Partition>>,
    pub counters: Arc<Counters>,
    /// Held while retention deletes segments (`retention.rs`): one enforcement at a time.
    pub retention_lock: parking_lot::Mutex<()>,
}

impl Shared {
    /// Checks a key and returns the partition it belongs to (`docs/format.md`, routing).
    pub fn route(&self, key: &[u8]) -> crate::error::Result<u32> {
        if key.is_empty() {
            return Err(crate::error::Error::EmptyKey);
        }
        let key_limit = u64::from(self.config.key_bytes_max);
        if key.len() as u64 > key_limit {
            return Err(crate::error::Error::KeyTooLarge {
                bytes: key.len() as u64,
                limit: key_limit,
            });
        }
        let partitions = u64::from(self.config.user_partitions);
        Ok((crate::storage::hash::key_hash(key) % partitions) as u32)
    }
}

/// Running totals of what the writer did, for [`Stats`].
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub data_syncs: AtomicU64,
    pub segments_rolled: AtomicU64,
    pub checkpoints: AtomicU64,
    pub spins: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            writes: self.writes.load(Relaxed),
            written_bytes: self.written_bytes.load(Relaxed),
            data_syncs: self.data_syncs.load(Relaxed),
            segments_rolled: self.segments_rolled.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            spins: self.spins.load(Relaxed),
            ticket_spins: 0,
        }
    }
}

/// What a log's writer has done since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Journal records written (one per write round, more for very large rounds).
    pub writes: u64,
    /// Bytes of those records.
    pub written_bytes: u64,
    /// `fdatasync` calls on the journal. With group commit this is far below the number of
    /// appends, and one covers every partition.
    pub data_syncs: u64,
    /// Segments sealed.
    pub segments_rolled: u64,
    /// Checkpoints recorded (each syncs the segments written since the previous one).
    pub checkpoints: u64,
    /// Times the writer spun for a lone `Sync` appender's next append instead of sleeping at
    /// once (see [`Options::spin_wait`](crate::Options::spin_wait)).
    pub spins: u64,
    /// Appends whose wait spun through their round's fsync before sleeping (same option).
    pub ticket_spins: u64,
}

impl Stats {
    /// What happened between `earlier` and `self`. Each figure saturates at zero if `earlier`
    /// is in fact the later snapshot.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            writes: self.writes.saturating_sub(earlier.writes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
            data_syncs: self.data_syncs.saturating_sub(earlier.data_syncs),
            segments_rolled: self.segments_rolled.saturating_sub(earlier.segments_rolled),
            checkpoints: self.checkpoints.saturating_sub(earlier.checkpoints),
            spins: self.spins.saturating_sub(earlier.spins),
            ticket_spins: self.ticket_spins.saturating_sub(earlier.ticket_spins),
        }
    }
}

/// Where an append landed: its partition, the offset of its first event and how many events it
/// holds (1 for a single append), the first event's version in its key's stream and its place
/// in the log's global order. The events of one append have consecutive offsets, versions and
/// global positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
    pub count: u32,
    /// Version of the first event in its key's stream (versions count from 0 per key).
    pub version: u64,
    /// Position of the first event in the log's one global order.
    pub global_position: u64,
    /// True when nothing was written because every event's id was already in the log: the
    /// positions are the original events' (an idempotent retry).
    pub duplicate: bool,
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

    /// Version of the last event of the append: what the key's next append expects with
    /// [`Expected::Exact`](crate::Expected::Exact).
    pub fn last_version(&self) -> u64 {
        self.version + u64::from(self.count) - 1
    }

    /// Global position of the last event of the append.
    pub fn last_global_position(&self) -> u64 {
        self.global_position + u64::from(self.count) - 1
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
