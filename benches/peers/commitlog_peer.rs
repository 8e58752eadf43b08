//! commitlog: an append-only log of segments with a memory-mapped offset index, written with
//! plain `write` calls. It stores the 256-byte payload alone (no key), each message with its
//! own CRC-32C; appends take `&mut self`, so producers share it behind a mutex.
//!
//! Its `flush()` does not make data durable: it calls `File::flush` on the segment, which is a
//! no-op for a `std::fs::File`, and `msync`s the index pages, only when the index has crossed
//! into a new page since the last flush (one flush in 512 appends). For the durable rows the
//! bench therefore calls `flush()` and then `fdatasync` on the active segment by hand, through
//! a second descriptor of the same file; [`Flush::Alone`] measures `flush()` alone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use commitlog::message::{MessageBuf, MessageSet};
use commitlog::{CommitLog, LogOptions, ReadLimit};
use parking_lot::Mutex;

use crate::drive;
use crate::{common, BATCH_EVENTS, PAYLOAD_BYTES};

/// What a durable append does after `append_msg`.
#[derive(Clone, Copy, Debug)]
pub enum Flush {
    /// `flush()`, then `fdatasync` of the segment file: the data is on disk.
    ThenSyncSegment,
    /// `flush()` alone ("Forces a flush of the log", says its doc): the data is not synced.
    Alone,
}

/// The log and a second descriptor of its one segment file (opened once: segments roll at
/// 1 GB, which the durable rows never reach; checked at the end).
struct Durable {
    log: CommitLog,
    segment: File,
}

fn open(dir: &Path) -> CommitLog {
    CommitLog::new(LogOptions::new(dir)).expect("open commitlog")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("commitlog dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}

/// `threads` blocking producers, one `append_msg` each at a time, then flushed as `flush` says.
pub fn durable(threads: usize, duration: Duration, flush: Flush) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let [segment] = &segments(dir.path())[..] else {
        panic!("commitlog starts with one segment");
    };
    let segment = File::open(segment).expect("open segment");
    let shared = Mutex::new(Durable { log, segment });
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let rate = drive::producers_rate(
        threads,
        duration,
        |_, _| {
            let mut durable = shared.lock();
            durable.log.append_msg(&payload).expect("append");
            durable.log.flush().expect("flush");
            if let Flush::ThenSyncSegment = flush {
                durable.segment.sync_data().expect("fdatasync segment");
            }
            1
        },
        || {},
    );
    assert_eq!(segments(dir.path()).len(), 1, "commitlog rolled a segment");
    rate
}

/// `threads` producers, each appending message sets of `BATCH_EVENTS`, never synced. The set
/// is built for every batch, since building it computes the CRCs (as annal's append does).
pub fn batches(threads: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Mutex::new(open(dir.path()));
    let payload = common::payload(PAYLOAD_BYTES, 0);
    drive::producers_rate(
        threads,
        duration,
        |_, _| {
            let mut batch = message_set(&payload);
            log.lock().append(&mut batch).expect("append");
            BATCH_EVENTS as u64
        },
        || {},
    )
}

fn message_set(payload: &[u8]) -> MessageBuf {
    let mut batch = MessageBuf::default();
    for _ in 0..BATCH_EVENTS {
        batch.push(payload).expect("push");
    }
    batch
}

/// Maximum bytes of one `read`: a few message sets at a time.
const READ_BYTES_MAX: usize = 1 << 20;

/// Builds a log of `events` in message sets of `BATCH_EVENTS`, then reads it all from offset 0
/// with `read` (which checks every message's CRC).
pub fn replay(events: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path());
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for _ in 0..events / BATCH_EVENTS as u64 {
        log.append(&mut message_set(&payload)).expect("append");
    }
    drive::repeated_rate(duration, || {
        let mut next = 0u64;
        let mut bytes = 0usize;
        loop {
            let messages = log
                .read(next, ReadLimit::max_bytes(READ_BYTES_MAX))
                .expect("read");
            if messages.is_empty() {
                break;
            }
            for message in messages.iter() {
                bytes += message.payload().len();
                next = message.offset() + 1;
            }
        }
        std::hint::black_box(bytes);
        assert_eq!(next, events, "commitlog replayed every event");
        next
    })
}
