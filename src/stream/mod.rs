//! Aggregate streams: one key's events as a stream with contiguous versions, found without a
//! scan, guarded by expected versions and deduplicated by event id; snapshots; time lookups.
//!
//! This subsystem owns the per-key state the sequencer consults (`versions.rs`, `ids.rs`), the
//! derived per-segment key and id tables (`table.rs`, `active.rs`, `lookup.rs`) and snapshots.
//! It decides nothing about offsets or durability: the sequencer assigns versions under its lock,
//! using what this subsystem finds. It never writes a segment; its own files are derived from
//! segments (rebuilt when missing or damaged) or, for snapshots, small and written atomically.

pub(crate) mod active;
pub(crate) mod bloom;
pub(crate) mod ids;
pub(crate) mod indexer;
pub(crate) mod lookup;
pub(crate) mod read;
pub(crate) mod snapshot;
pub(crate) mod table;
pub(crate) mod versions;

use std::fmt;

/// What an append expects of its key's stream, checked atomically with the assignment of its
/// versions: of several appenders racing with `Exact(n)` on one key, exactly one wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Expected {
    /// No expectation.
    Any,
    /// The key has no events yet.
    NoStream,
    /// The key has at least one event.
    StreamExists,
    /// The key's last event has this version (versions count from 0).
    Exact(u64),
}

impl Expected {
    /// Whether a stream whose last version is `last` (`None`: no events) meets the expectation.
    pub fn holds(self, last: Option<u64>) -> bool {
        match self {
            Expected::Any => true,
            Expected::NoStream => last.is_none(),
            Expected::StreamExists => last.is_some(),
            Expected::Exact(version) => last == Some(version),
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => write!(f, "any version"),
            Expected::NoStream => write!(f, "no stream"),
            Expected::StreamExists => write!(f, "an existing stream"),
            Expected::Exact(version) => write!(f, "last version {version}"),
        }
    }
}
