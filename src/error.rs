//! The one error type of the crate.
//!
//! Every variant names what went wrong in terms a caller can act on. I/O failures keep their
//! `io::Error` as `source()`, together with the operation and the path, so that nothing about the
//! cause is thrown away.
//!
//! A message says only its own part; the cause is reached through `source()`, never repeated in
//! the message (Rust API guidelines, C-GOOD-ERR). A reporter that walks the chain, as the CLI
//! does, then prints every cause exactly once.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::stream::Expected;

/// The result type of every fallible annal call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Offsets of one partition, `first_offset ..= last_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostRange {
    pub partition: u32,
    pub first_offset: u64,
    pub last_offset: u64,
}

impl LostRange {
    pub fn new(partition: u32, first_offset: u64, last_offset: u64) -> LostRange {
        LostRange {
            partition,
            first_offset,
            last_offset,
        }
    }
}

impl fmt::Display for LostRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} offsets {}..={}",
            self.partition, self.first_offset, self.last_offset
        )
    }
}

/// Everything that can go wrong in annal.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed. `op` names the operation (`"write"`, `"fdatasync"`, ...).
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The file system reported that it is full (`ENOSPC`). Nothing acknowledged was lost; appends
    /// can be retried once space is freed.
    DiskFull {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Another `Log` (in this process or another one) holds the directory's lock.
    Locked { path: PathBuf },
    /// The path exists and is not a directory.
    NotADirectory { path: PathBuf },
    /// A file was written by a format version this build does not read.
    IncompatibleFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The log was created with a different number of partitions than the options ask for.
    PartitionCountMismatch {
        path: PathBuf,
        on_disk: u32,
        requested: u32,
    },
    /// Bytes on disk fail their checksum or are structurally invalid. `position` is the byte
    /// position inside `path` where the bad data starts.
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    /// A payload (with its headers) is larger than `Options::event_bytes_max`.
    EventTooLarge { bytes: u64, limit: u64 },
    /// A key is longer than `Options::key_bytes_max`.
    KeyTooLarge { bytes: u64, limit: u64 },
    /// A key is empty; every event needs a key to be routed to a partition.
    EmptyKey,
    /// A batch has no events.
    EmptyBatch,
    /// A batch has more events than `Options::batch_events_max`.
    BatchTooManyEvents { events: u64, limit: u64 },
    /// A batch's encoded size is larger than `Options::batch_bytes_max`.
    BatchTooLarge { bytes: u64, limit: u64 },
    /// A header name or value is longer than the format allows.
    HeaderTooLarge { bytes: u64, limit: u64 },
    /// A partition number is not below the log's partition count.
    PartitionOutOfRange { partition: u32, partitions: u32 },
    /// The options are inconsistent; the message says which option and why.
    InvalidOptions(String),
    /// The write of an append failed before it became durable (`Sync`). The append is not in
    /// the log and was never acknowledged, so its offset goes to the next append; the log keeps
    /// accepting appends. `source` is
    /// the underlying failure.
    AppendFailed { partition: u32, source: Arc<Error> },
    /// Writes are failing (for example the disk is full) and being retried. Appends already
    /// acknowledged are kept and will be written once a retry succeeds; this append was not
    /// accepted. `source` is the last failure.
    WritesStalled { source: Arc<Error> },
    /// Appends that were acknowledged before their write (`Interval`, `Buffered`) are lost, or
    /// not known to be durable: the ranges name them. Reported once, by `flush` or `close`.
    AppendsLost {
        lost: Arc<[LostRange]>,
        source: Arc<Error>,
    },
    /// An fsync failed earlier, so the log no longer knows what is on disk. It refuses writes
    /// until it is reopened. `source` is the failure that poisoned it.
    Poisoned { source: Arc<Error> },
    /// The `Log` was opened by a parent process before a `fork`: in the child it has no writer
    /// thread. Open the log anew in the child (after the parent closed it), or use it only in
    /// the parent.
    UsedAfterFork,
    /// The log has been closed.
    Closed,
    /// An append's expected version does not hold: nothing of the call was written. `actual`
    /// is the key's last version, `None` when the key has no events.
    Conflict {
        key: Bytes,
        expected: Expected,
        actual: Option<u64>,
    },
    /// Some of the call's event ids are already in the log and some are not: a retry must
    /// repeat the original call exactly. Nothing was written; `present` names the ids found.
    IdsPartlyPresent { present: Arc<[u128]> },
    /// An event id is already in its key's partition under another key, or appears twice in one
    /// call. Nothing was written. (Ids identify events within a partition.)
    IdReused { id: u128 },
    /// One call names the same key twice (multi-key appends take each key once).
    RepeatedKey { key: Bytes },
    /// A consumer committed events of a partition it no longer owns (the group was rebalanced:
    /// the partition's new owner delivers from the committed cursor). Nothing was committed.
    NotAssigned { group: String, partition: u32 },
    /// A group cannot be deleted while members are in it.
    GroupInUse { group: String, members: usize },
    /// An offset below a partition's start was asked for: retention deleted the segments
    /// below `start`.
    OffsetBelowStart {
        partition: u32,
        offset: u64,
        start: u64,
    },
    /// Retention deleted events `from..to` of a partition before the group committed them:
    /// the group goes on from `to` (reported once, by the member that owns the partition).
    EventsExpired {
        group: String,
        partition: u32,
        from: u64,
        to: u64,
    },
    /// A nack of a delivery whose batch was committed already.
    NotPending {
        group: String,
        partition: u32,
        offset: u64,
    },
    /// A group's record (its cursors and held keys) would be larger than one event may be:
    /// re-drive or discard dead letters, or raise `Options::event_bytes_max`.
    GroupStateTooLarge {
        group: String,
        bytes: u64,
        limit: u64,
    },
    /// The key has no dead letter in the group.
    NoDeadLetter { group: String, key: Vec<u8> },
    /// An offset past a partition's visible end (`end`) was asked for.
    OffsetOutOfRange {
        partition: u32,
        offset: u64,
        end: u64,
    },
    /// A snapshot's state is larger than [`SNAPSHOT_BYTES_MAX`](crate::SNAPSHOT_BYTES_MAX).
    SnapshotTooLarge { bytes: u64, limit: u64 },
}

impl Error {
    /// Wraps an `io::Error`, classifying a full disk as [`Error::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            Error::DiskFull { op, path, source }
        } else {
            Error::Io { op, path, source }
        }
    }

    /// Data at `position` of `path` failed validation. `damage` is a reason, or a [`Damage`]
    /// that says where inside the structure starting at `position` the wrong byte is.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        damage: impl Into<Damage>,
    ) -> Self {
        let damage = damage.into();
        Error::Corrupt {
            path: path.into(),
            position: position.saturating_add(damage.relative_position),
            reason: damage.reason,
        }
    }

    /// True when the cause is a full disk, directly or behind an append failure.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull { .. } => true,
            Error::AppendFailed { source, .. }
            | Error::Poisoned { source }
            | Error::WritesStalled { source }
            | Error::AppendsLost { source, .. } => source.is_disk_full(),
            _ => false,
        }
    }

    /// True when the error reports data on disk that failed validation.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// What is wrong inside a structure (a frame, a record) and where: `relative_position` counts
/// from the structure's start, which only its caller knows in the file. So a decoder that sees
/// the structure alone still names the exact byte, and [`Error::corrupt`] adds the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    pub relative_position: u64,
    pub reason: &'static str,
}

impl Damage {
    pub(crate) fn at(relative_position: usize, reason: &'static str) -> Self {
        Damage {
            relative_position: relative_position as u64,
            reason,
        }
    }
}

/// A bare reason is damage at the position the caller gives.
impl From<&'static str> for Damage {
    fn from(reason: &'static str) -> Self {
        Damage::at(0, reason)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, .. } => write!(f, "{op} failed on {}", path.display()),
            Error::DiskFull { op, path, .. } => {
                write!(f, "disk full: {op} failed on {}", path.display())
            }
            Error::Locked { path } => write!(
                f,
                "{} is already open by another Log (in this or another process)",
                path.display()
            ),
            Error::NotADirectory { path } => {
                write!(f, "{} exists and is not a directory", path.display())
            }
            Error::IncompatibleFormat {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has format version {found}; this build reads version {supported}",
                path.display()
            ),
            Error::PartitionCountMismatch {
                path,
                on_disk,
                requested,
            } => write!(
                f,
                "{} was created with {on_disk} partitions but {requested} were requested; \
                 the partition count is fixed at creation",
                path.display()
            ),
            Error::Corrupt {
                path,
                position,
                reason,
            } => write!(
                f,
                "corrupt data in {} at byte {position}: {reason}",
                path.display()
            ),
            Error::EventTooLarge { bytes, limit } => {
                write!(
                    f,
                    "event of {bytes} bytes exceeds the limit of {limit} bytes"
                )
            }
            Error::KeyTooLarge { bytes, limit } => {
                write!(f, "key of {bytes} bytes exceeds the limit of {limit} bytes")
            }
            Error::EmptyKey => write!(f, "the key is empty; every event needs a key"),
            Error::EmptyBatch => write!(f, "the batch has no events"),
            Error::BatchTooManyEvents { events, limit } => {
                write!(f, "batch of {events} events exceeds the limit of {limit}")
            }
            Error::BatchTooLarge { bytes, limit } => {
                write!(
                    f,
                    "batch of {bytes} bytes exceeds the limit of {limit} bytes"
                )
            }
            Error::HeaderTooLarge { bytes, limit } => {
                write!(
                    f,
                    "header of {bytes} bytes exceeds the limit of {limit} bytes"
                )
            }
            Error::PartitionOutOfRange {
                partition,
                partitions,
            } => write!(
                f,
                "partition {partition} does not exist; the log has {partitions} partitions"
            ),
            Error::InvalidOptions(message) => write!(f, "invalid options: {message}"),
            Error::AppendFailed { partition, .. } => {
                write!(
                    f,
                    "append to partition {partition} failed and was not written"
                )
            }
            Error::WritesStalled { .. } => write!(
                f,
                "writes are failing and being retried; acknowledged appends are kept, \
                 new appends are refused until a retry succeeds"
            ),
            Error::AppendsLost { lost, .. } => {
                write!(
                    f,
                    "acknowledged appends were lost or are not known durable:"
                )?;
                for (i, range) in lost.iter().enumerate() {
                    write!(f, "{} {range}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
            Error::Poisoned { .. } => write!(
                f,
                "the log refuses writes after a failed fsync or write; reopen it"
            ),
            Error::UsedAfterFork => write!(
                f,
                "this Log was opened before a fork and cannot be used in the child process"
            ),
            Error::Closed => write!(f, "the log is closed"),
            Error::Conflict {
                key,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "expected version conflict on key {}: expected {expected}, ",
                    String::from_utf8_lossy(key)
                )?;
                match actual {
                    Some(version) => write!(f, "the last version is {version}"),
                    None => write!(f, "the key has no events"),
                }
            }
            Error::IdsPartlyPresent { present } => write!(
                f,
                "{} of the call's event ids are already in the log and the others are not;                  nothing was written (first present: {:032x})",
                present.len(),
                present.first().copied().unwrap_or(0)
            ),
            Error::IdReused { id } => write!(
                f,
                "event id {id:032x} is already used by another key or twice in this call"
            ),
            Error::OffsetOutOfRange {
                partition,
                offset,
                end,
            } => write!(
                f,
                "offset {offset} is past the end of partition {partition} ({end})"
            ),
            Error::GroupInUse { group, members } => write!(
                f,
                "group {group} has {members} members: they must leave before it is deleted"
            ),
            Error::OffsetBelowStart {
                partition,
                offset,
                start,
            } => write!(
                f,
                "offset {offset} of partition {partition} is below its start ({start}): \
                 retention deleted the events before it"
            ),
            Error::EventsExpired {
                group,
                partition,
                from,
                to,
            } => write!(
                f,
                "retention deleted offsets {from}..{to} of partition {partition} before group \
                 {group} committed them; the group goes on from {to}"
            ),
            Error::NotPending {
                group,
                partition,
                offset,
            } => write!(
                f,
                "the batch of offset {offset} of partition {partition} was committed by this \
                 member of group {group} already: it can no longer be nacked"
            ),
            Error::GroupStateTooLarge {
                group,
                bytes,
                limit,
            } => write!(
                f,
                "group {group}'s record would be {bytes} bytes, more than an event may be \
                 ({limit}): re-drive or discard its dead letters; nothing was committed"
            ),
            Error::NoDeadLetter { group, key } => write!(
                f,
                "key {} has no dead letter in group {group}",
                String::from_utf8_lossy(key)
            ),
            Error::NotAssigned { group, partition } => write!(
                f,
                "partition {partition} is no longer assigned to this member of group {group}; \
                 nothing was committed"
            ),
            Error::SnapshotTooLarge { bytes, limit } => write!(
                f,
                "snapshot of {bytes} bytes exceeds the limit of {limit} bytes"
            ),
            Error::RepeatedKey { key } => write!(
                f,
                "key {} appears twice in one multi-key append",
                String::from_utf8_lossy(key)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::DiskFull { source, .. } => Some(source),
            Error::AppendFailed { source, .. }
            | Error::Poisoned { source }
            | Error::WritesStalled { source }
            | Error::AppendsLost { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
