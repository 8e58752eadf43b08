//! The journal file as the writer keeps it: where the next record goes, what is durable, how
//! far the file is written with zeros (so that every later `fdatasync` is a cheap overwrite of
//! written blocks), and the checkpoint in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::io::{self, Faults};
use crate::storage::journal::{
    align_up, records_start, seal_record, Checkpoint, RecordStamp, JOURNAL_ALIGN, JOURNAL_FILE,
};
use crate::write::Counters;

/// The journal grows by writing zeros in steps: at least this much...
pub const ZERO_STEP_MIN: u64 = 1 << 20;
/// ... and at most this much at a time (it doubles in between).
pub const ZERO_STEP_MAX: u64 = 16 << 20;

pub(crate) struct JournalWriter {
    file: io::File,
    path: PathBuf,
    records_start: u64,
    /// Records never pass this; the writer checkpoints and wraps before they would.
    capacity_end: u64,
    /// `capacity_end` as configured; it is lowered while the disk is full.
    configured_end: u64,
    /// The file is written (with records or zeros) up to here.
    zeroed_end: u64,
    /// Where the next record goes.
    position: u64,
    next_sequence: u64,
    /// Every record with a lower sequence is durable: synced, or covered by a checkpoint.
    durable_before: u64,
    /// The number of the checkpoint in force: every record written now carries it.
    epoch: u64,
    zeros: Vec<u8>,
    counters: Arc<Counters>,
    /// Whether to start each record's writeback at once: when no sync follows it soon.
    writeback_ahead: bool,
}

/// Where a journal continues after recovery.
pub(crate) struct JournalState {
    pub position: u64,
    pub next_sequence: u64,
    pub epoch: u64,
    pub file_len: u64,
    pub writeback_ahead: bool,
}

impl JournalWriter {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(JOURNAL_FILE)
    }

    /// Creates the journal of a new log with its initial checkpoint, durably: a temporary
    /// file, synced, renamed into place; the caller syncs the directory.
    pub fn create(dir: &Path, partitions: u32, faults: &Faults) -> Result<()> {
        let path = Self::path(dir);
        let tmp = io::tmp_path(&path);
        let file = io::File::create_truncate(&tmp, faults)?;
        let mut bytes = Checkpoint::initial(partitions).encode();
        bytes.resize(records_start(partitions) as usize, 0);
        file.write_all_at(&bytes, 0)?;
        file.sync_all()?;
        drop(file);
        io::rename(&tmp, &path, faults)
    }

    pub fn open(
        dir: &Path,
        partitions: u32,
        capacity: u64,
        state: JournalState,
        faults: &Faults,
        counters: Arc<Counters>,
    ) -> Result<JournalWriter> {
        let path = Self::path(dir);
        let file = io::File::open(&path, faults)?;
        let records_start = records_start(partitions);
        Ok(JournalWriter {
            file,
            path,
            records_start,
            capacity_end: records_start + capacity,
            configured_end: records_start + capacity,
            zeroed_end: state.file_len.max(records_start),
            position: state.position,
            next_sequence: state.next_sequence,
            durable_before: state.next_sequence,
            epoch: state.epoch,
            zeros: Vec::new(),
            counters,
            writeback_ahead: state.writeback_ahead,
        })
    }

    /// True if a record of `len` bytes fits before the end of the journal.
    pub fn fits(&self, len: usize) -> bool {
        self.position + align_up(len as u64) <= self.capacity_end
    }

    /// True if the journal holds records that a wrap would overwrite.
    pub fn can_wrap(&self) -> bool {
        self.position > self.records_start
    }

    /// The largest record the journal can ever take.
    pub fn record_bytes_max(&self) -> u64 {
        self.capacity_end - self.records_start
    }

    /// Makes sure the file is written with zeros far enough for a record of `len` bytes at the
    /// current position. A full disk fails here, before the record is written.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        let needed = self.position + align_up(len as u64);
        if needed <= self.zeroed_end {
            return Ok(());
        }
        let grown = self.zeroed_end - self.records_start;
        let step = grown.clamp(ZERO_STEP_MIN, ZERO_STEP_MAX);
        let target = needed.max(self.zeroed_end + step).min(self.capacity_end);
        let mut at = self.zeroed_end;
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; ZERO_STEP_MIN as usize];
        }
        while at < target {
            let len = (target - at).min(self.zeros.len() as u64) as usize;
            self.file.write_all_at(&self.zeros[..len], at)?;
            at += len as u64;
        }
        // The zeros are written once (and reach the disk with the next sync); from then on
        // records overwrite written blocks, which costs the disk no metadata update per sync.
        self.zeroed_end = target;
        Ok(())
    }

    /// Seals `record` (header room, entries) with the next sequence and writes it at the
    /// current position; the next record starts on the next page. The rest of this page is not
    /// written: recovery never reads it. On error nothing changes: the next write goes to the
    /// same position with the same sequence, and recovery treats what a failed write left as a
    /// torn tail.
    pub fn write(&mut self, record: &mut [u8], count: u32, journal_index: u64) -> Result<()> {
        debug_assert!(self.fits(record.len()));
        seal_record(
            record,
            &RecordStamp {
                count,
                sequence: self.next_sequence,
                durable_before: self.durable_before,
                journal_index,
                epoch: self.epoch,
            },
        );
        self.file.write_all_at(record, self.position)?;
        // Outside `Sync` nothing syncs this record soon; starting its writeback now keeps the
        // sync at the next flush or checkpoint short.
        if self.writeback_ahead {
            self.file
                .start_writeback(self.position, record.len() as u64);
        }
        self.position += align_up(record.len() as u64);
        Counters::add(&self.counters.writes, 1);
        Counters::add(&self.counters.written_bytes, record.len() as u64);
        self.next_sequence += 1;
        Ok(())
    }

    /// `fdatasync`: every record written so far is durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.durable_before == self.next_sequence {
            return Ok(());
        }
        self.file.sync_data()?;
        self.durable_before = self.next_sequence;
        Counters::add(&self.counters.data_syncs, 1);
        Ok(())
    }

    /// Writes `checkpoint` (numbered after the one in force) to its slot and syncs it. Every
    /// partition's data up to its mark must be synced before. With `wrap`, the next record goes
    /// to the start of the records area.
    pub fn checkpoint(&mut self, mut checkpoint: Checkpoint, wrap: bool) -> Result<()> {
        checkpoint.number = self.epoch + 1;
        checkpoint.journal_sequence = self.next_sequence;
        checkpoint.journal_position = if wrap {
            self.records_start
        } else {
            self.position
        };
        let bytes = checkpoint.encode();
        // Only the slot needs syncing: the records before it are covered by the checkpoint
        // (their frames are synced in the segments), and the records after it are synced by
        // the rounds that need them. So a `Buffered` log's journal pages reach the disk only
        // when a flush or the kernel writes them back (docs/design.md).
        self.file
            .write_durable_at(&bytes, checkpoint.slot_position())?;
        self.epoch = checkpoint.number;
        if wrap {
            // A new lap may grow the journal again, if the disk has room by now.
            self.capacity_end = self.configured_end;
        }
        Counters::add(&self.counters.checkpoints, 1);
        self.durable_before = self.next_sequence;
        self.position = checkpoint.journal_position;
        Ok(())
    }

    /// After the disk filled up while the journal was growing: records stop at what is written
    /// already, so that the next checkpoint wraps into space the journal owns. The next wrap
    /// lets it grow again.
    pub fn stop_growing(&mut self) {
        self.capacity_end = self.zeroed_end.max(self.position);
    }

    /// The error for a record that does not fit the journal: the disk's, while the journal
    /// cannot grow; else the options'.
    pub fn too_large(&self, len: usize) -> Error {
        if self.capacity_end < self.configured_end {
            return Error::io(
                "grow journal",
                &self.path,
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            );
        }
        record_too_large(len, self.record_bytes_max())
    }
}

/// The error of a record that can never fit the journal.
fn record_too_large(len: usize, max: u64) -> Error {
    Error::InvalidOptions(format!(
        "a write round of {len} bytes does not fit the journal of {max} bytes; \
         raise journal_bytes or lower queue_bytes_max"
    ))
}

const _: () = assert!(ZERO_STEP_MIN.is_multiple_of(JOURNAL_ALIGN));
