//! Options for opening a [`Log`](crate::Log), with every limit and its default in one place.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::storage::frame;
use crate::storage::segment;

/// When an append counts as done, and what a crash can take away.
///
/// See `docs/durability.md` for the precise promise of each mode after a process kill and after a
/// power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `append` returns only after the event's bytes are written and `fdatasync`ed (and the
    /// directory too, when a file was created). Concurrent and pipelined appends share fsyncs
    /// (group commit). Readers see only synced events.
    Sync,
    /// `append` returns once the event is queued. A background thread writes queued events to the
    /// file at once and `fdatasync`s at this interval. Readers see only synced events.
    Interval(Duration),
    /// `append` returns once the event is queued. A background thread writes queued events to the
    /// file (the OS page cache) at once and never syncs, except when a segment is sealed, on
    /// [`Log::flush`](crate::Log::flush) and on close. Readers see events once they are written.
    Buffered,
}

/// Longest allowed `Durability::Interval`: one hour.
pub const INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Default number of partitions of a new log.
pub const PARTITIONS_DEFAULT: u32 = 8;
/// Largest partition count a log may have.
pub const PARTITIONS_MAX: u32 = 4096;
/// Default size at which a segment is sealed and a new one started: 32 MiB.
pub const SEGMENT_BYTES_DEFAULT: u64 = 32 << 20;
/// Smallest allowed segment size: 64 KiB.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest allowed segment size. Byte positions inside a segment are `u32` on disk.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Shortest allowed `segment_age_max`: 10 ms. The age is checked once per write round, so an
/// age of zero (or below the millisecond the age is kept in) sealed a segment on every round and
/// turned each append into a new pair of files. Ten milliseconds bounds that to 100 segments a
/// second per partition while leaving room for tests that roll by age quickly; ages meant for
/// retention are minutes or hours.
pub const SEGMENT_AGE_MIN: Duration = Duration::from_millis(10);
/// Default distance in bytes between two entries of the sparse offset index.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Default limit on one event: payload plus headers, 1 MiB.
pub const EVENT_BYTES_MAX_DEFAULT: u32 = 1 << 20;
/// Default limit on a key: 1 KiB.
pub const KEY_BYTES_MAX_DEFAULT: u32 = 1024;
/// Default limit on the number of events in one batch.
pub const BATCH_EVENTS_MAX_DEFAULT: u32 = 10_000;
/// Default limit on the encoded size of one batch: 4 MiB.
pub const BATCH_BYTES_MAX_DEFAULT: u32 = 4 << 20;
/// Default bound on the bytes queued per partition and not yet written: 16 MiB.
/// An append that would exceed it waits for the writer thread (backpressure).
pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// How to open a [`Log`](crate::Log). Built with chained setters:
///
/// ```
/// use annal::{Durability, Options};
/// let options = Options::default().partitions(4).durability(Durability::Sync);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) partitions: Option<u32>,
    pub(crate) durability: Durability,
    pub(crate) segment_bytes: u64,
    pub(crate) segment_age_max: Option<Duration>,
    pub(crate) index_interval_bytes: u32,
    pub(crate) event_bytes_max: u32,
    pub(crate) key_bytes_max: u32,
    pub(crate) batch_events_max: u32,
    pub(crate) batch_bytes_max: u32,
    pub(crate) queue_bytes_max: u64,
    pub(crate) fail_points: Option<std::sync::Arc<crate::storage::io::FailPoints>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partitions: None,
            durability: Durability::Sync,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_age_max: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            event_bytes_max: EVENT_BYTES_MAX_DEFAULT,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            queue_bytes_max: QUEUE_BYTES_MAX_DEFAULT,
            fail_points: None,
        }
    }
}

impl Options {
    /// Number of partitions of a new log (default [`PARTITIONS_DEFAULT`]). The count is recorded
    /// at creation; reopening with a different explicit count fails with
    /// [`Error::PartitionCountMismatch`]. Left unset, an existing log opens with its own count.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// When appends are acknowledged (default [`Durability::Sync`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Size at which a segment is sealed (default [`SEGMENT_BYTES_DEFAULT`]). Segments are
    /// preallocated to this size.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Also seal a non-empty segment once it is this old (default: never by age). At least
    /// [`SEGMENT_AGE_MIN`].
    pub fn segment_age_max(mut self, age: Duration) -> Self {
        self.segment_age_max = Some(age);
        self
    }

    /// Distance in bytes between sparse index entries (default [`INDEX_INTERVAL_BYTES_DEFAULT`]).
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    /// Largest payload plus headers of one event (default [`EVENT_BYTES_MAX_DEFAULT`]).
    pub fn event_bytes_max(mut self, bytes: u32) -> Self {
        self.event_bytes_max = bytes;
        self
    }

    /// Longest key (default [`KEY_BYTES_MAX_DEFAULT`], at most 65,535).
    pub fn key_bytes_max(mut self, bytes: u32) -> Self {
        self.key_bytes_max = bytes;
        self
    }

    /// Most events in one batch (default [`BATCH_EVENTS_MAX_DEFAULT`]).
    pub fn batch_events_max(mut self, events: u32) -> Self {
        self.batch_events_max = events;
        self
    }

    /// Largest encoded batch (default [`BATCH_BYTES_MAX_DEFAULT`]).
    pub fn batch_bytes_max(mut self, bytes: u32) -> Self {
        self.batch_bytes_max = bytes;
        self
    }

    /// Most bytes queued per partition before appends wait (default [`QUEUE_BYTES_MAX_DEFAULT`]).
    pub fn queue_bytes_max(mut self, bytes: u64) -> Self {
        self.queue_bytes_max = bytes;
        self
    }

    /// Injects failures into file operations. For tests of error handling only.
    #[doc(hidden)]
    pub fn fail_points(
        mut self,
        fail_points: std::sync::Arc<crate::storage::io::FailPoints>,
    ) -> Self {
        self.fail_points = Some(fail_points);
        self
    }

    /// The configured durability.
    pub fn durability_mode(&self) -> Durability {
        self.durability
    }

    /// Checks the options against each other and against the format's hard limits.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidOptions(message));
        if let Some(partitions) = self.partitions {
            if partitions == 0 || partitions > PARTITIONS_MAX {
                return invalid(format!(
                    "partitions must be between 1 and {PARTITIONS_MAX}, got {partitions}"
                ));
            }
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid(format!(
                "segment_bytes must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}, got {}",
                self.segment_bytes
            ));
        }
        if self.key_bytes_max == 0 || self.key_bytes_max > frame::KEY_BYTES_LIMIT {
            return invalid(format!(
                "key_bytes_max must be between 1 and {}, got {}",
                frame::KEY_BYTES_LIMIT,
                self.key_bytes_max
            ));
        }
        if let Some(age) = self.segment_age_max {
            if age < SEGMENT_AGE_MIN {
                return invalid(format!(
                    "segment_age_max must be at least {SEGMENT_AGE_MIN:?}, got {age:?}"
                ));
            }
        }
        if self.batch_events_max == 0 {
            return invalid("batch_events_max must be at least 1".into());
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes must be at least 1".into());
        }
        if let Durability::Interval(interval) = self.durability {
            if interval.is_zero() || interval > INTERVAL_MAX {
                return invalid(format!(
                    "Durability::Interval needs an interval above zero and at most {} s, got {:?}",
                    INTERVAL_MAX.as_secs(),
                    interval
                ));
            }
        }
        // The largest frame must fit into an empty segment, or it could never be written.
        let frame_bytes_max = frame::FRAME_HEADER_LEN as u64
            + frame::KEY_PREFIX_LEN as u64
            + u64::from(self.key_bytes_max)
            + u64::from(self.batch_bytes_max);
        if frame_bytes_max > self.segment_bytes - segment::SEGMENT_HEADER_LEN as u64 {
            return invalid(format!(
                "batch_bytes_max ({}) plus the largest key and the frame header must fit into \
                 one segment of segment_bytes ({})",
                self.batch_bytes_max, self.segment_bytes
            ));
        }
        if u64::from(self.event_bytes_max) > u64::from(self.batch_bytes_max) {
            return invalid(format!(
                "event_bytes_max ({}) must not exceed batch_bytes_max ({})",
                self.event_bytes_max, self.batch_bytes_max
            ));
        }
        if self.queue_bytes_max < frame_bytes_max {
            return invalid(format!(
                "queue_bytes_max ({}) must hold at least one largest batch ({frame_bytes_max})",
                self.queue_bytes_max
            ));
        }
        Ok(())
    }
}
