//! The narrow storage seam: every file operation that durability depends on (write, sync,
//! set_len, preallocate, rename, directory sync) goes through this module, so that tests can
//! inject failures here and nowhere else.
//!
//! Reads go through memory maps (`segment.rs`) and plain `read_at`; they cannot make data less
//! durable, so they are not part of the seam.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Failures to inject into the file operations of one log. For tests of error handling.
///
/// Each counter makes the next `n` calls of that operation fail; `disk_full` makes every write
/// and preallocation fail with `ENOSPC` until it is cleared, as a full file system would.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FailPoints {
    sync_failures: AtomicU32,
    write_failures: AtomicU32,
    disk_full: AtomicBool,
    /// While true, syncs wait: lets a test look at the log between a write and its sync.
    syncs_held: parking_lot::Mutex<bool>,
    syncs_released: parking_lot::Condvar,
}

#[doc(hidden)]
impl FailPoints {
    pub fn new() -> Arc<Self> {
        Arc::new(FailPoints::default())
    }

    /// The next `count` fsyncs fail with `EIO`.
    pub fn fail_syncs(&self, count: u32) {
        self.sync_failures.store(count, Ordering::SeqCst);
    }

    /// The next `count` writes fail with `EIO`.
    pub fn fail_writes(&self, count: u32) {
        self.write_failures.store(count, Ordering::SeqCst);
    }

    /// Makes every sync wait until [`release_syncs`](Self::release_syncs).
    pub fn hold_syncs(&self) {
        *self.syncs_held.lock() = true;
    }

    pub fn release_syncs(&self) {
        *self.syncs_held.lock() = false;
        self.syncs_released.notify_all();
    }

    /// While set, writes and preallocations fail with `ENOSPC`.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn check_sync(&self) -> io::Result<()> {
        let mut held = self.syncs_held.lock();
        while *held {
            self.syncs_released.wait(&mut held);
        }
        drop(held);
        if Self::take(&self.sync_failures) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn check_write(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if Self::take(&self.write_failures) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn check_preallocate(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Where failures are injected from: nothing in production.
pub(crate) type Faults = Option<Arc<FailPoints>>;

/// Index files take no injected failures. The index is derived data whose write errors are
/// ignored by design; letting its writes consume a test's "fail the next write" would make the
/// failure land on an index write at a moment that depends on thread timing.
pub(crate) const INDEX_FAULTS: Faults = None;

/// An open file together with its path (for error messages) and the log's fail points.
#[derive(Debug)]
pub(crate) struct File {
    file: fs::File,
    path: PathBuf,
    faults: Faults,
}

impl File {
    /// Creates the file, or truncates it to zero length if it exists.
    pub fn create_truncate(path: &Path, faults: &Faults) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(File {
            file,
            path: path.to_owned(),
            faults: faults.clone(),
        })
    }

    /// Opens an existing file for reading and writing.
    pub fn open(path: &Path, faults: &Faults) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        Ok(File {
            file,
            path: path.to_owned(),
            faults: faults.clone(),
        })
    }

    /// Renames the file to `to` (see [`rename`]) and keeps the handle.
    pub fn rename_to(&mut self, to: &Path) -> Result<()> {
        rename(&self.path, to)?;
        self.path = to.to_owned();
        Ok(())
    }

    /// The underlying file, for mapping and reading.
    pub fn std(&self) -> &fs::File {
        &self.file
    }

    /// Writes all of `bytes` at `position`.
    pub fn write_all_at(&self, bytes: &[u8], position: u64) -> Result<()> {
        if let Some(faults) = &self.faults {
            faults
                .check_write()
                .map_err(|e| Error::io("write", &self.path, e))?;
        }
        self.file
            .write_all_at(bytes, position)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// `fdatasync`: the data, and the metadata needed to read it back, are durable.
    pub fn sync_data(&self) -> Result<()> {
        if let Some(faults) = &self.faults {
            faults
                .check_sync()
                .map_err(|e| Error::io("fdatasync", &self.path, e))?;
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    /// `fsync`: data and all metadata (the length too) are durable.
    pub fn sync_all(&self) -> Result<()> {
        if let Some(faults) = &self.faults {
            faults
                .check_sync()
                .map_err(|e| Error::io("fsync", &self.path, e))?;
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("truncate", &self.path, e))
    }

    /// Reserves disk blocks for the first `len` bytes, so that a full disk is reported here and
    /// not in the middle of a later append. The file's length becomes at least `len`; the
    /// reserved space reads as zeros.
    pub fn preallocate(&self, len: u64) -> Result<()> {
        if let Some(faults) = &self.faults {
            faults
                .check_preallocate()
                .map_err(|e| Error::io("fallocate", &self.path, e))?;
        }
        preallocate(&self.file, len).map_err(|e| Error::io("fallocate", &self.path, e))
    }
}

#[cfg(target_os = "linux")]
fn preallocate(file: &fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len_signed = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is owned by
    // `file`, which outlives the call.
    let errno = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_signed) };
    match errno {
        0 => Ok(()),
        // File systems without fallocate support: extend the file instead; space is then
        // claimed at write time.
        libc::EOPNOTSUPP | libc::EINVAL => extend(file, len),
        _ => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(file: &fs::File, len: u64) -> io::Result<()> {
    extend(file, len)
}

fn extend(file: &fs::File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Renames `from` to `to`, replacing `to`. Durable only after [`sync_dir`] of the parent.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename", to, e))
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path, faults: &Faults) -> Result<()> {
    if let Some(faults) = faults {
        faults
            .check_sync()
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    let handle = fs::File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Creates a directory and any missing parents, and syncs the parent of each directory it
/// created, so that the new directories survive a power loss.
pub(crate) fn create_dir_all_durable(dir: &Path, faults: &Faults) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => continue,
            Err(e) => return Err(Error::io("create directory", path, e)),
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent, faults)?;
    }
    Ok(())
}

/// Removes a file; a file that is already gone is not an error.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Writes a small file atomically: a temporary file is written and synced, renamed over `path`,
/// and the directory synced. After a crash `path` holds either its old bytes or `bytes`.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8], faults: &Faults) -> Result<()> {
    let tmp = tmp_path(path);
    let file = File::create_truncate(&tmp, faults)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir, faults)
}

/// The temporary name used while a file is being created: `<name>.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}
