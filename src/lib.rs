//! annal: an embeddable event log.
//!
//! Events are appended under a key; the key picks one of a fixed number of partitions, so one
//! key's events stay in order. Each partition is a directory of checksummed segment files with a
//! sparse offset index. Every write round of the whole log is one record of a shared journal,
//! made durable by one fsync (group commit across partitions); segments are synced at
//! checkpoints, and `open` replays the journal from the last checkpoint after a crash.
//!
//! Start with [`Log::open`]. The on-disk format is in `docs/format.md`, the durability promises
//! in `docs/durability.md`.

mod consumer;
mod error;
mod log;
mod options;
mod reader;
mod record;
mod retention;
mod storage;
mod stream;
mod write;

#[doc(hidden)]
pub use crate::storage::io;

pub use crate::consumer::{
    Batch, Consumer, DeadLetter, Delivery, Group, RetryPolicy, StartAt, SESSION_TIMEOUT_DEFAULT,
};
pub use crate::error::{Error, LostRange, Result};
pub use crate::log::{KeyAppend, Log};
pub use crate::options::{
    Durability, Options, RecoveryMode, BATCH_BYTES_MAX_DEFAULT, BATCH_EVENTS_MAX_DEFAULT,
    EVENT_BYTES_MAX_DEFAULT, INDEX_INTERVAL_BYTES_DEFAULT, INTERVAL_MAX, JOURNAL_BYTES_DEFAULT,
    JOURNAL_BYTES_MAX, JOURNAL_BYTES_MIN, KEY_BYTES_MAX_DEFAULT, PARTITIONS_DEFAULT,
    PARTITIONS_MAX, QUEUE_BYTES_MAX_DEFAULT, SEGMENT_AGE_MIN, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
pub use crate::reader::{Reader, RecordRef};
pub use crate::record::{Event, Header, Record};
pub use crate::retention::RetentionReport;
pub use crate::storage::hash::{key_hash, partition_for};
pub use crate::stream::read::GlobalReader;
pub use crate::stream::snapshot::{Snapshot, SNAPSHOT_BYTES_MAX};
pub use crate::stream::Expected;
pub use crate::write::recovery::{PartitionRecovery, RecoveryReport};
pub use crate::write::ticket::Ticket;
pub use crate::write::{Appended, Stats};

/// The on-disk format version this build writes and reads (`docs/format.md`).
pub const FORMAT_VERSION: u32 = 2;
