//! The write path: one way from an append call to a durable, visible record.
//!
//! This subsystem owns offsets and timestamps (assigned in one place, under one lock), the
//! writer thread, the segment being written, and recovery of what a crash left behind. It
//! writes files only through `crate::storage::io`, and never reads records for callers
//! (`crate::reader` does).

pub(crate) mod active;
pub(crate) mod partition;
pub(crate) mod recovery;
pub(crate) mod writer;
