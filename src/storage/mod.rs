//! Storage: the bytes on disk and the one seam through which they are written.
//!
//! This subsystem owns every file format (`docs/format.md`): frames, segment and index files,
//! the journal and its checkpoint slots, the metadata file, the key hash, and `io.rs`, the narrow seam that every durable file
//! operation goes through. It knows nothing of threads, queues or durability modes: the write
//! path (`crate::write`) decides when to write and sync, readers decide what to read.

pub(crate) mod codec;
#[doc(hidden)]
pub(crate) mod faults;
pub(crate) mod frame;
pub(crate) mod hash;
pub(crate) mod index;
pub mod io;
pub(crate) mod journal;
pub(crate) mod meta;
pub(crate) mod segment;
pub(crate) mod simdisk;
