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
    /// file (the OS page cache) at once and syncs only on [`Log::flush`](crate::Log::flush), on
    /// close and at checkpoints (when the journal is full). Readers see events once they are
    /// written.
    Buffered,
}

/// What `open` does when it finds damage in the journal with valid, durable records after it
/// (data that had been synced was destroyed, not merely a write cut short by a crash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Cut a torn tail (expected after a crash); refuse to open with [`Error::Corrupt`] naming
    /// the file and byte when damage has durable records after it. Nothing is cut then.
    #[default]
    TolerateTornTail,
    /// Keep every valid record after the damage that still continues its partition, and report
    /// what was lost in [`RecoveryReport::salvage_lost`](crate::RecoveryReport::salvage_lost).
    SalvageAfterCorruption,
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
/// Shortest allowed `segment_age_max`: 10 ms. The age is checked as each frame is placed, so an
/// age of zero (or below the millisecond the age is kept in) sealed a segment on every round and
/// turned each append into a new pair of files. Ten milliseconds bounds that to 100 segments a
/// second per partition while leaving room for tests that roll by age quickly; ages meant for
/// retention are minutes or hours.
pub const SEGMENT_AGE_MIN: Duration = Duration::from_millis(10);
/// Default distance in bytes between two entries of the sparse offset index.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Default limit on one event: payload plus headers, 1 MiB, or less when the segment is too
/// small for it (see [`Options::event_bytes_max`]).
pub const EVENT_BYTES_MAX_DEFAULT: u32 = 1 << 20;
/// Default limit on a key: 1 KiB.
pub const KEY_BYTES_MAX_DEFAULT: u32 = 1024;
/// Default limit on the number of events in one batch.
pub const BATCH_EVENTS_MAX_DEFAULT: u32 = 10_000;
/// Default limit on the encoded size of one batch: 4 MiB, or less when the segment is too small
/// for it (see [`Options::batch_bytes_max`]).
pub const BATCH_BYTES_MAX_DEFAULT: u32 = 4 << 20;
/// Default bound on the bytes queued (for the whole log) and not yet written: 16 MiB, or one largest
/// batch when that is more. An append that would exceed it waits for the writer thread
/// (backpressure).
pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// Default size of the journal's records area: 32 MiB. It is written with zeros as it grows
/// (so that syncs overwrite written blocks), and reused once a checkpoint covers it. It bounds
/// what `open` replays after a crash: measured on the development VM, replay costs about
/// 1.7 ms per MiB, so at most about 55 ms.
pub const JOURNAL_BYTES_DEFAULT: u64 = 32 << 20;
/// Smallest journal: 1 MiB.
pub const JOURNAL_BYTES_MIN: u64 = 1 << 20;
/// Largest journal: 1 GiB (record lengths are `u32` on disk, and what `open` replays is bounded
/// by it).
pub const JOURNAL_BYTES_MAX: u64 = 1 << 30;
const _: () = assert!(EVENT_BYTES_MAX_DEFAULT <= BATCH_BYTES_MAX_DEFAULT);
const _: () = assert!(BATCH_BYTES_MAX_DEFAULT as u64 <= QUEUE_BYTES_MAX_DEFAULT);

/// How to open a [`Log`](crate::Log). Built with chained setters:
///
/// ```
/// use annal::{Durability, Options};
/// let options = Options::default().partitions(4).durability(Durability::Sync);
/// ```
///
/// The batch, event and queue limits depend on the segment size: the largest batch must fit
/// into one segment. Left unset, they follow [`segment_bytes`](Self::segment_bytes) (their
/// defaults, lowered to what fits), so `Options::default().segment_bytes(64 << 10)` is valid;
/// set explicitly, a value that does not fit is refused with an error that names the option and
/// the largest (or smallest) value that would fit.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) partitions: Option<u32>,
    pub(crate) durability: Durability,
    pub(crate) segment_bytes: u64,
    pub(crate) segment_age_max: Option<Duration>,
    pub(crate) index_interval_bytes: u32,
    /// `None` until set: then derived from the segment size by [`Options::byte_limits`], like
    /// the next two.
    event_bytes_max: Option<u32>,
    pub(crate) key_bytes_max: u32,
    pub(crate) batch_events_max: u32,
    batch_bytes_max: Option<u32>,
    queue_bytes_max: Option<u64>,
    /// `None` until set: then at least [`JOURNAL_BYTES_DEFAULT`], more if two largest batches
    /// need more.
    journal_bytes: Option<u64>,
    pub(crate) recovery: RecoveryMode,
    pub(crate) fail_points: Option<std::sync::Arc<crate::storage::io::FailPoints>>,
    pub(crate) retention: Retention,
    pub(crate) spin_wait: bool,
}

/// Which sealed segments of the application's partitions may be deleted (see
/// [`Options::retention_age_max`], [`Options::retention_bytes_max`],
/// [`Options::retention_until_consumed`]). The groups partition is never subject to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Retention {
    pub age_max: Option<Duration>,
    pub bytes_max: Option<u64>,
    pub until_consumed: bool,
}

impl Retention {
    /// Whether any segment may ever be deleted.
    pub fn any(&self) -> bool {
        self.age_max.is_some() || self.bytes_max.is_some() || self.until_consumed
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partitions: None,
            durability: Durability::Sync,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_age_max: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            event_bytes_max: None,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            batch_bytes_max: None,
            queue_bytes_max: None,
            journal_bytes: None,
            recovery: RecoveryMode::TolerateTornTail,
            fail_points: None,
            retention: Retention::default(),
            spin_wait: true,
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
    /// reserved on disk in steps as they fill, never past this size. The batch, event and queue limits that are not set follow it.
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

    /// Largest payload plus headers of one event. At most the largest batch. Default
    /// [`EVENT_BYTES_MAX_DEFAULT`], lowered when needed so that one such event without headers
    /// fits into the largest batch.
    pub fn event_bytes_max(mut self, bytes: u32) -> Self {
        self.event_bytes_max = Some(bytes);
        self
    }

    /// Longest key (default [`KEY_BYTES_MAX_DEFAULT`], at most 65,535). A segment must hold the
    /// longest key with a batch, so a longer key leaves less room for the derived batch limit.
    pub fn key_bytes_max(mut self, bytes: u32) -> Self {
        self.key_bytes_max = bytes;
        self
    }

    /// Most events in one batch (default [`BATCH_EVENTS_MAX_DEFAULT`]).
    pub fn batch_events_max(mut self, events: u32) -> Self {
        self.batch_events_max = events;
        self
    }

    /// Largest encoded batch: its records, without the frame header and key. A frame of this
    /// size, with the longest key, must fit into one segment after the segment header. Default
    /// [`BATCH_BYTES_MAX_DEFAULT`], lowered when needed to the largest batch that fits.
    pub fn batch_bytes_max(mut self, bytes: u32) -> Self {
        self.batch_bytes_max = Some(bytes);
        self
    }

    /// Most bytes queued (for the whole log) before appends wait. At least one largest frame.
    /// Default [`QUEUE_BYTES_MAX_DEFAULT`], raised when needed to one largest frame.
    pub fn queue_bytes_max(mut self, bytes: u64) -> Self {
        self.queue_bytes_max = Some(bytes);
        self
    }

    /// Size of the journal's records area (default [`JOURNAL_BYTES_DEFAULT`]), a multiple of
    /// 4 KiB. When it is full, a checkpoint syncs the segments and the journal starts over, so
    /// this bounds what `open` replays after a crash.
    pub fn journal_bytes(mut self, bytes: u64) -> Self {
        self.journal_bytes = Some(bytes);
        self
    }

    /// What `open` does with damage in durable data (default [`RecoveryMode::TolerateTornTail`]).
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// Deletes a partition's oldest sealed segments once their newest event is older than
    /// `age` (default: kept whatever their age). Whole segments only, never the one being
    /// written, so a partition keeps at least its last segment's events; a segment is deleted
    /// only once a checkpoint is past it (checkpoints come every
    /// [`journal_bytes`](Self::journal_bytes) of appends, and at close). Checked in the
    /// background at least every second, and by [`Log::enforce_retention`](crate::Log::enforce_retention).
    pub fn retention_age_max(mut self, age: Duration) -> Self {
        self.retention.age_max = Some(age);
        self
    }

    /// Deletes a partition's oldest sealed segments while its segment files take more than
    /// `bytes` on disk (default: no limit). As [`retention_age_max`](Self::retention_age_max):
    /// whole sealed segments, past a checkpoint.
    pub fn retention_bytes_max(mut self, bytes: u64) -> Self {
        self.retention.bytes_max = Some(bytes);
        self
    }

    /// Interest-based retention: a segment is deleted only once every consumer group (not
    /// deleted) has settled all its events (committed them, and no key of it is held for a
    /// retry or parked), and, if an age or bytes limit is set, once that limit says so; with
    /// no limit, as soon as every group is past it. While there is no group nothing is
    /// consumed, so nothing is deleted. Default: off (age and bytes limits delete whether or
    /// not groups have read the events; a group that falls behind is told, see
    /// [`Error::EventsExpired`]).
    pub fn retention_until_consumed(mut self, until_consumed: bool) -> Self {
        self.retention.until_consumed = until_consumed;
        self
    }

    /// Under [`Durability::Sync`], whether a lone appender and the writer spin for a short while
    /// instead of sleeping at once (default: on). After a round of fewer than 4 appends, the
    /// writer spins up to 50 µs for the next append, and one waiting appender spins through
    /// the fsync, up to twice the last one and at most 500 µs. Waking a sleeping thread costs
    /// tens of microseconds on a virtual machine: on the development VM the spin took a single
    /// blocking producer from 9.2k–10.1k to 10.4k–11.4k appends/s (`docs/design.md`, "Group
    /// commit"). The cost is CPU: about one core while a lone appender waits. Turn it off where
    /// that core matters more than the latency. [`Stats::spins`](crate::Stats::spins) and
    /// [`Stats::ticket_spins`](crate::Stats::ticket_spins) count the spins.
    pub fn spin_wait(mut self, spin: bool) -> Self {
        self.spin_wait = spin;
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
        self.validate_byte_limits()
    }

    /// The byte limits in effect: those set explicitly, and for the others their defaults,
    /// lowered (batch, event) or raised (queue) to fit the segment size and each other. Meaningful
    /// once [`validate`](Self::validate) passed.
    pub(crate) fn byte_limits(&self) -> ByteLimits {
        let batch_bytes_max = self.batch_bytes_max.unwrap_or_else(|| {
            let fits = self.batch_room_bytes();
            BATCH_BYTES_MAX_DEFAULT.min(u32::try_from(fits).unwrap_or(u32::MAX))
        });
        // One event of the largest size, without headers, must make a batch that fits.
        let event_bytes_max = self.event_bytes_max.unwrap_or_else(|| {
            let fits = batch_bytes_max.saturating_sub(frame::RECORD_FIXED_LEN as u32);
            EVENT_BYTES_MAX_DEFAULT.min(fits)
        });
        let frame_bytes_max = self.frame_overhead_bytes() + u64::from(batch_bytes_max);
        let queue_bytes_max = self
            .queue_bytes_max
            .unwrap_or(QUEUE_BYTES_MAX_DEFAULT.max(frame_bytes_max));
        ByteLimits {
            event_bytes_max,
            batch_bytes_max,
            queue_bytes_max,
            frame_bytes_max,
        }
    }

    /// The journal size in force: as set, or the default raised to hold two largest batches.
    pub(crate) fn journal_bytes_resolved(&self) -> u64 {
        self.journal_bytes.unwrap_or_else(|| {
            let needed = Self::journal_bytes_for(self.byte_limits().frame_bytes_max);
            JOURNAL_BYTES_DEFAULT.max(needed)
        })
    }

    /// The smallest journal that holds two frames of `frame_bytes_max`, with their records.
    fn journal_bytes_for(frame_bytes_max: u64) -> u64 {
        (2 * (frame_bytes_max + 4096)).next_multiple_of(4096)
    }

    /// A frame's bytes besides its batch, with the longest key.
    fn frame_overhead_bytes(&self) -> u64 {
        frame::FRAME_HEADER_LEN as u64
            + frame::KEY_PREFIX_LEN as u64
            + u64::from(self.key_bytes_max)
    }

    /// The largest batch that fits, with the longest key, into an empty segment (which keeps
    /// room for the padding frame of a checkpoint).
    fn batch_room_bytes(&self) -> u64 {
        self.segment_bytes
            .saturating_sub(segment::SEGMENT_HEADER_LEN as u64)
            .saturating_sub(crate::write::active::PADDING_ROOM)
            .saturating_sub(self.frame_overhead_bytes())
    }

    /// Checks the limits that depend on the segment size and on each other. The error names
    /// the option that was set and cannot be kept, with the value that would fit.
    fn validate_byte_limits(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidOptions(message));
        let room = self.batch_room_bytes();
        // The longest key with one empty record must fit, or no frame could ever be written.
        if room < frame::RECORD_FIXED_LEN as u64 {
            let key_fits = self.segment_bytes.saturating_sub(
                (segment::SEGMENT_HEADER_LEN + frame::FRAME_HEADER_LEN + frame::KEY_PREFIX_LEN)
                    as u64
                    + crate::write::active::PADDING_ROOM
                    + frame::RECORD_FIXED_LEN as u64,
            );
            return invalid(format!(
                "key_bytes_max ({}) leaves no room for a record in a segment of segment_bytes \
                 ({}): set key_bytes_max to at most {key_fits} or raise segment_bytes",
                self.key_bytes_max, self.segment_bytes
            ));
        }
        let limits = self.byte_limits();
        if limits.batch_bytes_max < frame::RECORD_FIXED_LEN as u32 {
            return invalid(format!(
                "batch_bytes_max ({}) must hold one empty record: set batch_bytes_max to at \
                 least {}",
                limits.batch_bytes_max,
                frame::RECORD_FIXED_LEN
            ));
        }
        if u64::from(limits.batch_bytes_max) > room {
            return invalid(format!(
                "batch_bytes_max ({}) plus the largest key and the frame header must fit into \
                 one segment of segment_bytes ({}): set batch_bytes_max to at most {room} \
                 (or leave it unset), or raise segment_bytes",
                limits.batch_bytes_max, self.segment_bytes
            ));
        }
        if limits.event_bytes_max > limits.batch_bytes_max {
            return invalid(format!(
                "event_bytes_max ({}) must not exceed batch_bytes_max ({}): set event_bytes_max \
                 to at most {}",
                limits.event_bytes_max, limits.batch_bytes_max, limits.batch_bytes_max
            ));
        }
        let journal_bytes = self.journal_bytes_resolved();
        if !(JOURNAL_BYTES_MIN..=JOURNAL_BYTES_MAX).contains(&journal_bytes)
            || !journal_bytes.is_multiple_of(4096)
        {
            return invalid(format!(
                "journal_bytes must be a multiple of 4096 between {JOURNAL_BYTES_MIN} and \
                 {JOURNAL_BYTES_MAX}, got {journal_bytes}"
            ));
        }
        // A round larger than the journal is written as several records, but one frame cannot
        // be split: the largest must fit, twice, so that wrapping stays rare.
        let journal_needed = Self::journal_bytes_for(limits.frame_bytes_max);
        if journal_needed > journal_bytes {
            return invalid(format!(
                "journal_bytes ({journal_bytes}) must hold two largest batches: set it to at \
                 least {journal_needed}, or lower batch_bytes_max"
            ));
        }
        if limits.queue_bytes_max < limits.frame_bytes_max {
            return invalid(format!(
                "queue_bytes_max ({}) must hold at least one largest batch with its key and \
                 frame header: set queue_bytes_max to at least {} (or leave it unset)",
                limits.queue_bytes_max, limits.frame_bytes_max
            ));
        }
        Ok(())
    }
}

/// The byte limits in effect for a log (see [`Options::byte_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteLimits {
    pub event_bytes_max: u32,
    pub batch_bytes_max: u32,
    pub queue_bytes_max: u64,
    /// The largest frame: the largest batch with the longest key and the frame header.
    pub frame_bytes_max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch bytes that fit into a segment of `SEGMENT_BYTES_MIN` with the default key limit.
    const ROOM_IN_SMALLEST_SEGMENT: u32 = SEGMENT_BYTES_MIN as u32
        - segment::SEGMENT_HEADER_LEN as u32
        - crate::write::active::PADDING_ROOM as u32
        - frame::FRAME_HEADER_LEN as u32
        - frame::KEY_PREFIX_LEN as u32
        - KEY_BYTES_MAX_DEFAULT;

    #[test]
    fn defaults_are_kept_where_they_fit() {
        let options = Options::default();
        options.validate().unwrap();
        let limits = options.byte_limits();
        assert_eq!(limits.event_bytes_max, EVENT_BYTES_MAX_DEFAULT);
        assert_eq!(limits.batch_bytes_max, BATCH_BYTES_MAX_DEFAULT);
        assert_eq!(limits.queue_bytes_max, QUEUE_BYTES_MAX_DEFAULT);
    }

    #[test]
    fn unset_limits_follow_the_segment_size_in_any_order() {
        let options = Options::default().segment_bytes(SEGMENT_BYTES_MIN);
        options.validate().unwrap();
        let limits = options.byte_limits();
        assert_eq!(limits.batch_bytes_max, ROOM_IN_SMALLEST_SEGMENT);
        assert_eq!(
            limits.event_bytes_max,
            ROOM_IN_SMALLEST_SEGMENT - frame::RECORD_FIXED_LEN as u32
        );
        assert_eq!(limits.queue_bytes_max, QUEUE_BYTES_MAX_DEFAULT);
        assert_eq!(
            limits.frame_bytes_max,
            SEGMENT_BYTES_MIN
                - segment::SEGMENT_HEADER_LEN as u64
                - crate::write::active::PADDING_ROOM
        );

        // An explicit batch limit is kept, and the event limit follows it, whatever the order.
        let a = Options::default()
            .batch_bytes_max(4096)
            .segment_bytes(SEGMENT_BYTES_MIN);
        let b = Options::default()
            .segment_bytes(SEGMENT_BYTES_MIN)
            .batch_bytes_max(4096);
        assert_eq!(a.byte_limits(), b.byte_limits());
        assert_eq!(a.byte_limits().event_bytes_max, 4096 - 7);

        // A longer key leaves less room for the batch.
        let options = Options::default()
            .segment_bytes(SEGMENT_BYTES_MIN)
            .key_bytes_max(KEY_BYTES_MAX_DEFAULT + 100);
        assert_eq!(
            options.byte_limits().batch_bytes_max,
            ROOM_IN_SMALLEST_SEGMENT - 100
        );
    }

    #[test]
    fn an_explicit_batch_above_the_queue_default_raises_the_unset_queue_limit() {
        let options = Options::default()
            .segment_bytes(64 << 20)
            .batch_bytes_max(20 << 20);
        options.validate().unwrap();
        let limits = options.byte_limits();
        assert_eq!(limits.queue_bytes_max, limits.frame_bytes_max);
        assert!(limits.queue_bytes_max > QUEUE_BYTES_MAX_DEFAULT);
    }

    #[track_caller]
    fn assert_refused(options: Options, needles: &[&str]) {
        let message = match options.validate() {
            Err(Error::InvalidOptions(message)) => message,
            other => panic!("{other:?}"),
        };
        for needle in needles {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn explicit_limits_that_do_not_fit_name_the_option_and_the_value_that_fits() {
        let small = || Options::default().segment_bytes(SEGMENT_BYTES_MIN);
        let room = ROOM_IN_SMALLEST_SEGMENT.to_string();
        assert_refused(
            small().batch_bytes_max(ROOM_IN_SMALLEST_SEGMENT + 1),
            &["batch_bytes_max", &room],
        );
        small()
            .batch_bytes_max(ROOM_IN_SMALLEST_SEGMENT)
            .validate()
            .unwrap();
        assert_refused(
            small().event_bytes_max(ROOM_IN_SMALLEST_SEGMENT + 1),
            &["event_bytes_max", &room],
        );
        let frame_bytes_max = SEGMENT_BYTES_MIN
            - segment::SEGMENT_HEADER_LEN as u64
            - crate::write::active::PADDING_ROOM;
        assert_refused(
            small().queue_bytes_max(frame_bytes_max - 1),
            &["queue_bytes_max", &frame_bytes_max.to_string()],
        );
        small().queue_bytes_max(frame_bytes_max).validate().unwrap();
        assert_refused(small().batch_bytes_max(6), &["batch_bytes_max", "7"]);
        let key_fits =
            SEGMENT_BYTES_MIN as u32 - 64 - crate::write::active::PADDING_ROOM as u32 - 48 - 2 - 7;
        assert_refused(
            small().key_bytes_max(key_fits + 1),
            &["key_bytes_max", &key_fits.to_string()],
        );
        small()
            .key_bytes_max(key_fits)
            .batch_bytes_max(7)
            .validate()
            .unwrap();
    }
}
