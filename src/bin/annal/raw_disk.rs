//! The raw ceiling `annal bench` compares with: one thread writing the same bytes per sync as
//! the log's journal did, each write followed by `fdatasync`, on the same file system, in the
//! same run.
//!
//! The file is reserved with `fallocate` and then filled with zeros before the timing starts,
//! as annal's journal is: writes then go to blocks the file owns and has written, so an
//! `fdatasync` carries no allocation and no extent conversion. On the development VM, 300-byte
//! writes each followed by `fdatasync` ran at 4,700 to 5,300 syncs/s into blocks that were only
//! reserved (unwritten extents) and at 6,500 to 8,000 into blocks written before: a ceiling
//! measured the first way made annal look faster than its own disk. Like the journal, the file
//! is reused in a circle once written through.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::failure::Failure;

/// Writes start on page boundaries, as journal records do, so that no sync rewrites a page an
/// earlier sync made durable.
const PAGE_BYTES: u64 = 4096;
/// The scratch file never grows past this; writes wrap around to its start, as the journal's do.
const FILE_BYTES_MAX: u64 = 64 << 20;
/// Largest single write: a sync of more bytes (a `Buffered` run syncs once) is written in parts.
const WRITE_BYTES_MAX: u64 = 8 << 20;

/// What the raw loop did.
#[derive(Clone, Copy, Debug)]
pub struct RawCeiling {
    pub syncs: u64,
    pub bytes_per_sync: u64,
    pub seconds: f64,
}

impl RawCeiling {
    pub fn syncs_per_second(&self) -> f64 {
        self.syncs as f64 / self.seconds.max(1e-9)
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.syncs_per_second() * self.bytes_per_sync as f64
    }
}

/// Writes `bytes_per_sync` bytes and syncs them, `syncs_max` times or for `time_max`, whichever
/// ends first (or `stop` is set), into a scratch file in `dir` that is removed afterwards.
pub fn measure(
    dir: &Path,
    bytes_per_sync: u64,
    syncs_max: u64,
    time_max: Duration,
    stop: &AtomicBool,
) -> Result<RawCeiling, Failure> {
    let bytes_per_sync = bytes_per_sync.clamp(1, FILE_BYTES_MAX);
    let stride = bytes_per_sync.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    let syncs_max = syncs_max.max(1);
    let slots = syncs_max.min((FILE_BYTES_MAX / stride).max(1));
    let scratch = Scratch::create(dir.join("annal-bench-raw-ceiling.tmp"))?;
    let file = &scratch.file;
    reserve(file, stride * slots, &scratch.path)?;
    fill_with_zeros(file, stride * slots, &scratch.path)?;
    let buffer = vec![0xA5u8; bytes_per_sync.min(WRITE_BYTES_MAX) as usize];
    let started = Instant::now();
    let mut syncs = 0;
    while syncs < syncs_max && (syncs == 0 || started.elapsed() < time_max) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let start = (syncs % slots) * stride;
        let mut written = 0;
        while written < bytes_per_sync {
            let part = &buffer[..(bytes_per_sync - written).min(WRITE_BYTES_MAX) as usize];
            file.write_all_at(part, start + written)
                .map_err(|e| Failure::io("write", &scratch.path, e))?;
            written += part.len() as u64;
        }
        file.sync_data()
            .map_err(|e| Failure::io("fdatasync", &scratch.path, e))?;
        syncs += 1;
    }
    Ok(RawCeiling {
        syncs,
        bytes_per_sync,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reserves the file's blocks, as annal reserves segment space. A file system that cannot
/// (`EOPNOTSUPP`) is measured without the reservation.
fn reserve(file: &File, len: u64, path: &Path) -> Result<(), Failure> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    // SAFETY: fallocate on a descriptor owned by `file`, which outlives the call.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if result == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(Failure::io("fallocate", path, error)),
    }
}

/// Writes zeros over the first `len` bytes and syncs them, untimed: see the module docs.
fn fill_with_zeros(file: &File, len: u64, path: &Path) -> Result<(), Failure> {
    let zeros = vec![0u8; WRITE_BYTES_MAX.min(len) as usize];
    let mut written = 0;
    while written < len {
        let part = &zeros[..(len - written).min(WRITE_BYTES_MAX) as usize];
        file.write_all_at(part, written)
            .map_err(|e| Failure::io("write", path, e))?;
        written += part.len() as u64;
    }
    file.sync_data()
        .map_err(|e| Failure::io("fdatasync", path, e))
}

/// The scratch file, removed when dropped.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(path: PathBuf) -> Result<Scratch, Failure> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Failure::io("create", &path, e))?;
        Ok(Scratch { path, file })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
