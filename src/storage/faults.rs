//! Failures that tests inject into the file operations of a log, and the recording of those
//! operations for the simulated disk (`simdisk.rs`). The io seam (`io.rs`) asks these fail
//! points before each operation; nothing here runs in production (a log without fail points
//! has `None`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::storage::simdisk;

/// Failures to inject into the file operations of one log. For tests of error handling.
///
/// Each counter makes the next `n` calls of that operation fail; `disk_full` makes every write
/// and preallocation that needs new blocks (past the end of the file) fail with `ENOSPC` until
/// it is cleared, as a full file system would (overwriting blocks a file owns still works);
/// `preallocation_unsupported` makes preallocations fail with `EOPNOTSUPP`, as on file systems
/// without `fallocate` (FUSE, NFS before 4.2).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FailPoints {
    sync_failures: AtomicU32,
    write_failures: AtomicU32,
    short_writes: AtomicU32,
    /// While set, reads (through [`read_prefix`]) of files whose path contains it fail.
    failing_reads: parking_lot::Mutex<Option<String>>,
    disk_full: AtomicBool,
    preallocation_unsupported: AtomicBool,
    /// While true, every key hashes to 0 in key tables (`stream/table.rs`): forced collisions.
    key_hash_collisions: AtomicBool,
    /// While true, syncs wait: lets a test look at the log between a write and its sync.
    syncs_held: parking_lot::Mutex<bool>,
    syncs_released: parking_lot::Condvar,
    /// Syncs waiting because syncs are held.
    syncs_waiting: AtomicU32,
    /// The simulated disk's record, while recording (`simdisk.rs`).
    recording: parking_lot::Mutex<Option<Recording>>,
}

#[derive(Debug)]
struct Recording {
    base: PathBuf,
    ops: Vec<simdisk::Op>,
}

#[doc(hidden)]
impl FailPoints {
    pub fn new() -> Arc<Self> {
        Arc::new(FailPoints::default())
    }

    /// Starts recording every file operation under `base` (an existing, empty directory that
    /// the log will live in or under), for [`crash_image`](Self::crash_image).
    pub fn record_crashes(&self, base: &Path) {
        *self.recording.lock() = Some(Recording {
            base: base.to_owned(),
            ops: Vec::new(),
        });
    }

    /// How many operations were recorded so far: a crash instant.
    pub fn recorded_ops(&self) -> usize {
        self.recording.lock().as_ref().map_or(0, |r| r.ops.len())
    }

    /// Writes into `image` what a power cut right after the first `ops` recorded operations
    /// could leave of the recorded directory, as chosen by `seed` (`simdisk.rs`).
    pub fn crash_image(&self, ops: usize, image: &Path, seed: u64) -> io::Result<()> {
        let recording = self.recording.lock();
        let recording = recording
            .as_ref()
            .ok_or_else(|| io::Error::other("not recording"))?;
        let ops = &recording.ops[..ops.min(recording.ops.len())];
        simdisk::crash_image(ops, &recording.base, image, seed)
    }

    pub(super) fn record(&self, op: impl FnOnce() -> simdisk::Op) {
        if let Some(recording) = self.recording.lock().as_mut() {
            recording.ops.push(op());
        }
    }

    /// The next `count` fsyncs fail with `EIO`.
    pub fn fail_syncs(&self, count: u32) {
        self.sync_failures.store(count, Ordering::SeqCst);
    }

    /// The next `count` writes fail with `EIO`.
    pub fn fail_writes(&self, count: u32) {
        self.write_failures.store(count, Ordering::SeqCst);
    }

    /// The next `count` writes write the first half of their bytes (rounded down), then fail
    /// with `EIO`: a short write followed by an error.
    pub fn fail_writes_short(&self, count: u32) {
        self.short_writes.store(count, Ordering::SeqCst);
    }

    /// While `pattern` is `Some`, every read of a file whose path contains it fails with `EIO`
    /// (after the file was opened: a missing file is still `NotFound`). Only the reads made
    /// with `read` calls go through the fail points; segments and the journal are read
    /// through mappings, where a failing disk sends `SIGBUS` (see `docs/durability.md`).
    pub fn fail_reads_of(&self, pattern: Option<&str>) {
        *self.failing_reads.lock() = pattern.map(str::to_owned);
    }

    /// Clears every injected failure (counters and a full disk), whether or not it happened.
    pub fn clear_failures(&self) {
        self.fail_reads_of(None);
        self.fail_syncs(0);
        self.fail_writes(0);
        self.fail_writes_short(0);
        self.set_disk_full(false);
    }

    /// Makes every sync wait until [`release_syncs`](Self::release_syncs).
    pub fn hold_syncs(&self) {
        *self.syncs_held.lock() = true;
    }

    /// How many syncs are waiting for `release_syncs`: lets a test act only once the writer is
    /// inside a sync (its round's writes done).
    pub fn syncs_waiting(&self) -> u32 {
        self.syncs_waiting.load(Ordering::SeqCst)
    }

    pub fn release_syncs(&self) {
        *self.syncs_held.lock() = false;
        self.syncs_released.notify_all();
    }

    /// While set, writes and preallocations fail with `ENOSPC`.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    /// While set, preallocations fail with `EOPNOTSUPP` (a full disk still takes precedence).
    pub fn set_preallocation_unsupported(&self, unsupported: bool) {
        self.preallocation_unsupported
            .store(unsupported, Ordering::SeqCst);
    }

    /// Makes every key hash to 0 in the key tables, so that every lookup meets collisions.
    /// Set it before the log opens and keep it: tables record the hash they were built with.
    pub fn set_key_hash_collisions(&self, collide: bool) {
        self.key_hash_collisions.store(collide, Ordering::SeqCst);
    }

    pub(crate) fn key_hash_collisions(&self) -> bool {
        self.key_hash_collisions.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(super) fn check_sync(&self) -> io::Result<()> {
        let mut held = self.syncs_held.lock();
        if *held {
            self.syncs_waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                self.syncs_released.wait(&mut held);
            }
            self.syncs_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(held);
        if Self::take(&self.sync_failures) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// `Err` when the write must fail without writing; `Ok(true)` when it must write the first
    /// half of its bytes and then fail.
    pub(super) fn check_write(&self, extends: bool) -> io::Result<bool> {
        if extends && self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if Self::take(&self.write_failures) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(Self::take(&self.short_writes))
    }

    pub(super) fn check_read(&self, path: &Path) -> io::Result<()> {
        let failing = self.failing_reads.lock();
        match failing.as_deref() {
            Some(pattern) if path.to_string_lossy().contains(pattern) => {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn check_preallocate(&self, extends: bool) -> io::Result<()> {
        if extends && self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if self.preallocation_unsupported.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        Ok(())
    }
}
