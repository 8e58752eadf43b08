//! okaywal: a write-ahead log with group commit. Every `EntryWriter::commit` writes the entry
//! and fdatasyncs it (concurrent committers share one sync); there is no unsynced mode, no key
//! and no index. It stores the 256-byte payload alone, one chunk per event.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use okaywal::{
    Configuration, Entry, EntryId, LogManager, LogVoid, ReadChunkResult, SegmentReader,
    WriteAheadLog,
};

use crate::drive;
use crate::{common, BATCH_EVENTS, PAYLOAD_BYTES};

/// `threads` blocking producers, one entry of one chunk each, committed (fdatasync). The
/// default configuration: 1 MiB segments zero-filled when created, checkpointed after 768 KiB
/// and then recycled (the `LogVoid` manager keeps nothing, as a WAL in front of no store).
pub fn durable(threads: usize, duration: Duration) -> f64 {
    entries(threads, duration, 1)
}

/// `threads` producers, each committing entries of `BATCH_EVENTS` chunks (okaywal has no
/// buffered mode: every entry is synced).
pub fn batches(threads: usize, duration: Duration) -> f64 {
    entries(threads, duration, BATCH_EVENTS)
}

fn entries(threads: usize, duration: Duration, chunks: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = WriteAheadLog::recover(dir.path(), LogVoid).expect("open okaywal");
    let payload = common::payload(PAYLOAD_BYTES, 0);
    let rate = drive::producers_rate(
        threads,
        duration,
        |_, _| {
            write_entry(&wal, &payload, chunks);
            chunks as u64
        },
        || {},
    );
    wal.shutdown().expect("shutdown okaywal");
    rate
}

fn write_entry(wal: &WriteAheadLog, payload: &[u8], chunks: usize) {
    let mut entry = wal.begin_entry().expect("begin_entry");
    for _ in 0..chunks {
        entry.write_chunk(payload).expect("write_chunk");
    }
    entry.commit().expect("commit");
}

/// A configuration that never checkpoints: every entry stays in the log, so that recovery,
/// okaywal's only way to read everything, reads them all.
fn keep_everything(dir: &Path) -> Configuration {
    Configuration::default_for(dir).checkpoint_after_bytes(u64::MAX)
}

/// Builds a log of `events` in entries of `BATCH_EVENTS` chunks, then times reopening it:
/// recovery hands every entry to the manager, which reads each chunk and checks its CRC.
pub fn replay(events: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = keep_everything(dir.path())
        .open(LogVoid)
        .expect("open okaywal");
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for _ in 0..events / BATCH_EVENTS as u64 {
        write_entry(&wal, &payload, BATCH_EVENTS);
    }
    wal.shutdown().expect("shutdown okaywal");
    // Timed: the open that recovers every entry, and the shutdown after it (one thread join).
    drive::repeated_rate(duration, || {
        let replayer = Replayer::default();
        let chunks = Arc::clone(&replayer.chunks);
        let wal = keep_everything(dir.path())
            .open(replayer)
            .expect("recover okaywal");
        wal.shutdown().expect("shutdown okaywal");
        let chunks = chunks.load(Ordering::Relaxed);
        assert_eq!(chunks, events, "okaywal replayed every event");
        chunks
    })
}

/// Reads every chunk of every recovered entry, CRC checked.
#[derive(Debug, Default)]
struct Replayer {
    chunks: Arc<AtomicU64>,
    buffer: Vec<u8>,
}

impl LogManager for Replayer {
    fn recover(&mut self, entry: &mut Entry<'_>) -> io::Result<()> {
        loop {
            match entry.read_chunk()? {
                ReadChunkResult::Chunk(mut chunk) => {
                    self.buffer.clear();
                    chunk.read_to_end(&mut self.buffer)?;
                    assert!(chunk.check_crc()?, "okaywal chunk CRC");
                    self.chunks.fetch_add(1, Ordering::Relaxed);
                }
                ReadChunkResult::EndOfEntry => return Ok(()),
                ReadChunkResult::AbortedEntry => panic!("okaywal entry aborted"),
            }
        }
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: EntryId,
        _checkpointed_entries: &mut SegmentReader,
        _wal: &WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}
