//! The files of a log as the command reads them: directly, without `Log::open`.
//!
//! `Log::open` takes the directory's exclusive lock and runs recovery, which writes. The reading
//! commands (`dump`, `stats`, `tail`, `verify`) must work on a log that another process has open,
//! and must not change it, so they read the files themselves. That is safe while a writer
//! appends: segment files only grow, every frame carries a checksum, and a walk stops at the
//! first position that does not hold a whole valid frame (a write in progress reads as zeros or
//! as a frame whose checksum fails, and is read again at the next poll). What it shows can run
//! one fsync ahead of what the writer has acknowledged (`tail.rs` says why).
//!
//! The decoders here follow `docs/format.md` (format version 2). The engine keeps its own
//! decoders private; these are a second, minimal reading of the same tables, checked against
//! files the engine writes by the `tests/cli_*.rs` tests.

pub mod bytes;
pub mod frame;
pub mod groups;
pub mod headers;
pub mod index;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod partition;
pub mod segment;
pub mod snapshot;

/// The format version these decoders read.
pub const FORMAT_VERSION: u32 = annal::FORMAT_VERSION;

/// Something wrong at a byte of a file: `position` counts from the file's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub position: u64,
    pub reason: String,
}

impl Damage {
    pub fn at(position: u64, reason: impl Into<String>) -> Damage {
        Damage {
            position,
            reason: reason.into(),
        }
    }
}
