//! The narrow storage seam: every file operation that durability depends on (write, sync,
//! set_len, preallocate, rename, directory sync) goes through this module, so that tests can
//! inject failures here and nowhere else.
//!
//! Segments and the journal are read through memory maps (`segment.rs`). The small files read
//! with `read` calls that open and recovery depend on (`annal.meta`, start files, segment
//! headers, snapshots) go through `read_prefix`, so that tests can make them fail; index files
//! and key tables (derived data) are read directly.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::simdisk;

/// Lowers (or raises) the process's bound on idle sealed segments kept mapped, for tests of
/// their release (`storage/segment/cache.rs`).
#[doc(hidden)]
pub use crate::storage::segment::set_sealed_segments_idle_max;

pub use crate::storage::faults::FailPoints;

/// What a preallocation achieved. Not an error either way: without reserved blocks the file grows
/// with its writes, and a full disk is reported by the write that meets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Preallocation {
    /// The blocks of the range are reserved and read as zeros; the file is at least as long as
    /// the range's end.
    Reserved,
    /// The file system cannot reserve blocks (`fallocate` fails with `EOPNOTSUPP` or `ENOSYS`).
    /// Nothing was done: the file keeps its length.
    Unsupported,
}

/// Most slices one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Most bytes one `pwritev` of [`File::write_all_vectored_at`] carries. The page cache sizes a
/// write's new folios by the write's length: a 2 MiB write into new blocks takes folios of up
/// to 2 MiB, which come from the allocator's large free blocks, and on the development VM the
/// copy into them ran at about 1.2 GB/s, against 2.5 GB/s in calls of at most 64 KiB. Calls of
/// 128 KiB to 512 KiB measured alike on buffered batches and pipelined appends; 64 KiB cost
/// pipelined appends about 5% (`docs/design.md`, "Writing segments in calls of at most 256 KiB").
const WRITE_CALL_BYTES_MAX: usize = 256 << 10;

/// Where failures are injected from: nothing in production.
pub(crate) type Faults = Option<Arc<FailPoints>>;

/// Reads at most `limit` bytes from the start of the file at `path` (`u64::MAX`: all of it),
/// through the fail points. A length on disk cannot make it allocate more than `limit`.
pub(crate) fn read_prefix(path: &Path, limit: u64, faults: &Faults) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    if let Some(faults) = faults {
        faults.check_read(path)?;
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Index files take no injected failures. The index is derived data whose write errors are
/// ignored by design; letting its writes consume a test's "fail the next write" would make the
/// failure land on an index write at a moment that depends on thread timing.
pub(crate) const INDEX_FAULTS: Faults = None;

/// An open file together with its path (for error messages) and the log's fail points.
///
/// Opened with `O_CLOEXEC` (`std::fs::OpenOptions` sets it on every file on Unix), so a child
/// process the application starts never inherits a segment or index descriptor.
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
        record(faults, || simdisk::Op::Create(path.to_owned()));
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
        rename(&self.path, to, &self.faults)?;
        self.path = to.to_owned();
        Ok(())
    }

    /// The underlying file, for mapping and reading.
    pub fn std(&self) -> &fs::File {
        &self.file
    }

    /// Writes all of `bytes` at `position`.
    pub fn write_all_at(&self, bytes: &[u8], position: u64) -> Result<()> {
        if self.injected_short_write(bytes.len(), position)? {
            return self.write_short(bytes, position);
        }
        self.write_recorded(bytes, position)
    }

    /// One `pwrite` of all of `bytes`, recorded on the simulated disk once done.
    fn write_recorded(&self, bytes: &[u8], position: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, position)
            .map_err(|e| Error::io("write", &self.path, e))?;
        record(&self.faults, || simdisk::Op::Write {
            path: self.path.clone(),
            position,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    /// Writes all of `slices`, back to back, at `position`: one `pwritev` for many frames
    /// that lie apart in memory, instead of copying them together first.
    pub fn write_all_vectored_at(&self, slices: &[&[u8]], position: u64) -> Result<()> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if self.injected_short_write(total, position)? {
            return self.write_short(&slices.concat(), position);
        }
        let io_error = |e: io::Error| Error::io("write", &self.path, e);
        // The next slice to write, and how much of it is written already.
        let (mut first, mut skip, mut done) = (0usize, 0usize, 0u64);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(slices.len().min(IOV_MAX));
        while first < slices.len() {
            iov.clear();
            let mut room = WRITE_CALL_BYTES_MAX;
            for (i, slice) in slices[first..].iter().take(IOV_MAX).enumerate() {
                let slice = if i == 0 { &slice[skip..] } else { slice };
                let len = slice.len().min(room);
                iov.push(libc::iovec {
                    iov_base: slice.as_ptr() as *mut libc::c_void,
                    iov_len: len,
                });
                room -= len;
                if room == 0 {
                    break;
                }
            }
            let at = libc::off_t::try_from(position + done)
                .map_err(|_| io_error(io::ErrorKind::InvalidInput.into()))?;
            // SAFETY: every iovec points into a slice borrowed for the whole call, with its
            // length; the descriptor is owned by `self.file`, which outlives the call.
            let written =
                unsafe { libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, at) };
            if written < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_error(error));
            }
            if written == 0 && total as u64 > done {
                return Err(io_error(io::ErrorKind::WriteZero.into()));
            }
            done += written as u64;
            let mut left = written as usize;
            while first < slices.len() && left >= slices[first].len() - skip {
                left -= slices[first].len() - skip;
                first += 1;
                skip = 0;
            }
            skip += left;
        }
        debug_assert_eq!(done, total as u64);
        record(&self.faults, || simdisk::Op::Write {
            path: self.path.clone(),
            position,
            bytes: slices.concat(),
        });
        Ok(())
    }

    /// Writes all of `bytes` at `position` and makes them durable before returning, without
    /// syncing the file's other unsynced writes: `pwritev2` with `RWF_DSYNC`, the `O_DSYNC`
    /// semantics for this write alone (Linux syncs the written range, the metadata needed to
    /// read it back, and flushes the device's cache). Where the kernel lacks the flag, a
    /// `pwrite` and an `fdatasync` of the whole file, which promises as much and more.
    ///
    /// A failure leaves the bytes' durability unknown, as a failed sync does.
    pub fn write_durable_at(&self, bytes: &[u8], position: u64) -> Result<()> {
        if self.injected_short_write(bytes.len(), position)? {
            return self.write_short(bytes, position);
        }
        if let Some(faults) = &self.faults {
            if let Err(e) = faults.check_sync() {
                // The bytes reached the page cache; making them durable failed.
                self.write_recorded(bytes, position)?;
                record(&self.faults, || simdisk::Op::SyncFailed(self.path.clone()));
                return Err(Error::io("write (RWF_DSYNC)", &self.path, e));
            }
        }
        match self.pwrite_dsync(bytes, position) {
            Ok(()) => {
                record(&self.faults, || simdisk::Op::WriteDurable {
                    path: self.path.clone(),
                    position,
                    bytes: bytes.to_vec(),
                });
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                self.write_recorded(bytes, position)?;
                self.sync_data()
            }
            Err(e) => Err(Error::io("write (RWF_DSYNC)", &self.path, e)),
        }
    }

    fn pwrite_dsync(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < bytes.len() {
            let rest = &bytes[done..];
            let iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            let at = libc::off_t::try_from(position + done as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: the iovec points into `bytes`, borrowed for the whole call, with its
            // length; the descriptor is owned by `self.file`, which outlives the call.
            let written =
                unsafe { libc::pwritev2(self.file.as_raw_fd(), &iov, 1, at, libc::RWF_DSYNC) };
            if written < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += written as usize;
        }
        Ok(())
    }

    /// Asks the fail points about a write of `len` bytes at `position`: an injected failure
    /// (a full disk only for a write that extends the file), or `true` for a short write.
    fn injected_short_write(&self, len: usize, position: u64) -> Result<bool> {
        let Some(faults) = &self.faults else {
            return Ok(false);
        };
        let extends = position + len as u64 > self.len_for_faults();
        faults
            .check_write(extends)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// An injected short write: the first half of `bytes` is written (and recorded), then the
    /// write fails with `EIO`.
    fn write_short(&self, bytes: &[u8], position: u64) -> Result<()> {
        self.write_recorded(&bytes[..bytes.len() / 2], position)?;
        let error = io::Error::from_raw_os_error(libc::EIO);
        Err(Error::io("write", &self.path, error))
    }

    /// Starts writing back `len` bytes at `position` without waiting (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`): a hint that makes a later sync of the same bytes shorter. It
    /// makes nothing durable, so its errors are left to that later sync.
    pub fn start_writeback(&self, position: u64, len: u64) {
        #[cfg(target_os = "linux")]
        // SAFETY: integer arguments only; the descriptor is owned by `self.file`.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                position as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// The file's length, as the fail points judge whether a write needs new blocks.
    fn len_for_faults(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }

    /// `fdatasync`: the data, and the metadata needed to read it back, are durable.
    pub fn sync_data(&self) -> Result<()> {
        self.sync("fdatasync", fs::File::sync_data)
    }

    /// `fsync`: data and all metadata (the length too) are durable.
    pub fn sync_all(&self) -> Result<()> {
        self.sync("fsync", fs::File::sync_all)
    }

    /// One sync, through the fail points, recorded on the simulated disk once it succeeded.
    fn sync(&self, op: &'static str, sync: fn(&fs::File) -> io::Result<()>) -> Result<()> {
        if let Some(faults) = &self.faults {
            if let Err(e) = faults.check_sync() {
                record(&self.faults, || simdisk::Op::SyncFailed(self.path.clone()));
                return Err(Error::io(op, &self.path, e));
            }
        }
        sync(&self.file).map_err(|e| Error::io(op, &self.path, e))?;
        record(&self.faults, || simdisk::Op::Sync(self.path.clone()));
        Ok(())
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("truncate", &self.path, e))?;
        record(&self.faults, || simdisk::Op::SetLen {
            path: self.path.clone(),
            len,
        });
        Ok(())
    }

    /// Reserves disk blocks for the first `len` bytes, so that a full disk is reported here and
    /// not in the middle of a later append. See [`preallocate_range`](Self::preallocate_range).
    pub fn preallocate(&self, len: u64) -> Result<Preallocation> {
        self.preallocate_range(0, len)
    }

    /// Reserves disk blocks for the bytes `[offset, offset + len)`: `fallocate(2)` with mode 0.
    /// The file's length becomes at least `offset + len`; reserved bytes read as zeros. Lets a
    /// file grow in steps, each step reserved before anything is written into it.
    ///
    /// On a file system that cannot reserve blocks this returns [`Preallocation::Unsupported`]
    /// and changes nothing. It never emulates the reservation by writing into each block, as
    /// glibc's `posix_fallocate` does there: on FUSE or NFS that turned creating one 32 MiB
    /// segment into tens of seconds of small writes.
    ///
    /// # Errors
    ///
    /// [`Error::DiskFull`] when the space is not available, [`Error::Io`] for other failures.
    pub fn preallocate_range(&self, offset: u64, len: u64) -> Result<Preallocation> {
        let result = match &self.faults {
            Some(faults) => faults.check_preallocate(offset + len > self.len_for_faults()),
            None => Ok(()),
        }
        .and_then(|()| fallocate(&self.file, offset, len));
        let result =
            unsupported_is_not_an_error(result).map_err(|e| Error::io("fallocate", &self.path, e));
        if let Ok(Preallocation::Reserved) = result {
            record(&self.faults, || simdisk::Op::Extend {
                path: self.path.clone(),
                len: offset + len,
            });
        }
        result
    }
}

/// Records `op` on the simulated disk, if these fail points record.
fn record(faults: &Faults, op: impl FnOnce() -> simdisk::Op) {
    if let Some(faults) = faults {
        faults.record(op);
    }
}

/// Turns the errors by which a file system says it cannot reserve blocks into
/// [`Preallocation::Unsupported`].
fn unsupported_is_not_an_error(result: io::Result<()>) -> io::Result<Preallocation> {
    match result {
        Ok(()) => Ok(Preallocation::Reserved),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
            Ok(Preallocation::Unsupported)
        }
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn fallocate(file: &fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        // fallocate(2) refuses an empty range with EINVAL; there is nothing to reserve.
        return Ok(());
    }
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let end = offset.checked_add(len).ok_or_else(too_large)?;
    libc::off_t::try_from(end).map_err(|_| too_large())?;
    // Both fit because their sum does.
    let (offset, len) = (offset as libc::off_t, len as libc::off_t);
    // A signal can interrupt the reservation of a large range; it is retried, a bounded number
    // of times.
    const INTERRUPTS_MAX: u32 = 16;
    let mut interrupts = 0;
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`,
        // which outlives the call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted || interrupts == INTERRUPTS_MAX {
            return Err(error);
        }
        interrupts += 1;
    }
}

/// Other systems have no `fallocate(2)`; their `posix_fallocate` may emulate it by writing.
#[cfg(not(target_os = "linux"))]
fn fallocate(_file: &fs::File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

/// Renames `from` to `to`, replacing `to`. Durable only after [`sync_dir`] of the parent.
pub(crate) fn rename(from: &Path, to: &Path, faults: &Faults) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename", to, e))?;
    record(faults, || simdisk::Op::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
    });
    Ok(())
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
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    record(faults, || simdisk::Op::SyncDir(dir.to_owned()));
    Ok(())
}

/// Creates a directory and any missing parents, and syncs the parent of each directory it
/// created, so that the new directories survive a power loss.
///
/// When a sync fails, the directories this call created are removed again (they are empty), so
/// that the next call creates them and syncs their parents again instead of finding them there
/// and relying on entries that a power cut may take. (A directory left by a process killed
/// between its creation and the sync is made durable by `Log::open`, which syncs the log
/// directory and the snapshots directory.)
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
    let mut created: Vec<&Path> = Vec::new();
    for path in missing.into_iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => continue,
            Err(e) => {
                remove_created(&created, faults);
                return Err(Error::io("create directory", path, e));
            }
        }
        record(faults, || simdisk::Op::MakeDir(path.to_owned()));
        created.push(path);
        if let Err(e) = sync_dir(parent_of(path), faults) {
            remove_created(&created, faults);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the empty directories `created` made, the deepest first (best effort: one that
/// cannot be removed stays, as after a crash).
fn remove_created(created: &[&Path], faults: &Faults) {
    for path in created.iter().rev() {
        if fs::remove_dir(path).is_ok() {
            record(faults, || simdisk::Op::Remove(path.to_path_buf()));
        }
    }
}

/// The directory holding `path`'s entry (`.` for a relative name without a parent).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Removes a file; a file that is already gone is not an error.
pub(crate) fn remove_file(path: &Path, faults: &Faults) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            record(faults, || simdisk::Op::Remove(path.to_owned()));
            Ok(())
        }
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
    rename(&tmp, path, faults)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir, faults)
}

/// The temporary name used while a file is being created: `<name>.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn new_file(dir: &tempfile::TempDir, faults: &Faults) -> File {
        File::create_truncate(&dir.path().join("f"), faults).unwrap()
    }

    fn len_of(file: &File) -> u64 {
        file.std().metadata().unwrap().len()
    }

    #[test]
    fn files_are_closed_on_exec() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let created = new_file(&dir, &None);
        let opened = File::open(&dir.path().join("f"), &None).unwrap();
        for file in [&created, &opened] {
            // SAFETY: F_GETFD only reads the flags of a descriptor that `file` owns.
            let flags = unsafe { libc::fcntl(file.std().as_raw_fd(), libc::F_GETFD) };
            assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags}");
        }
    }

    #[test]
    fn a_vectored_write_lands_whole_across_its_calls() {
        // Slices larger and smaller than one call's bound, and empty ones, at an odd position:
        // the calls must split them and continue exactly where the last one stopped.
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, &None);
        let sizes = [
            0usize,
            3,
            WRITE_CALL_BYTES_MAX + 7,
            1,
            0,
            2 * WRITE_CALL_BYTES_MAX,
            4093,
            5,
        ];
        let owned: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 31 + i * 7) as u8).collect())
            .collect();
        let slices: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
        file.write_all_vectored_at(&slices, 777).unwrap();
        let mut back = vec![0u8; 777 + sizes.iter().sum::<usize>()];
        use std::os::unix::fs::FileExt;
        file.std().read_exact_at(&mut back, 0).unwrap();
        assert!(back[..777].iter().all(|&b| b == 0));
        assert_eq!(&back[777..], owned.concat().as_slice());
    }

    #[test]
    fn preallocation_reserves_blocks_or_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, &None);
        let len = 1 << 20;
        match file.preallocate(len).unwrap() {
            Preallocation::Reserved => {
                let metadata = file.std().metadata().unwrap();
                assert_eq!(metadata.len(), len);
                // Reserved, not a sparse file: the blocks (of 512 bytes) are allocated.
                assert!(
                    metadata.blocks() * 512 >= len,
                    "{} blocks",
                    metadata.blocks()
                );
            }
            Preallocation::Unsupported => assert_eq!(len_of(&file), 0),
        }
    }

    #[test]
    fn preallocating_a_range_grows_the_file_to_its_end_and_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, &None);
        file.write_all_at(&[7u8; 64], 0).unwrap();
        if file.preallocate_range(64, 4096).unwrap() == Preallocation::Unsupported {
            assert_eq!(len_of(&file), 64);
            return;
        }
        assert_eq!(len_of(&file), 64 + 4096);
        assert_eq!(
            file.preallocate_range(8192, 4096).unwrap(),
            Preallocation::Reserved
        );
        assert_eq!(len_of(&file), 8192 + 4096);
        // A range inside the file neither shrinks it nor touches its bytes.
        assert_eq!(
            file.preallocate_range(0, 16).unwrap(),
            Preallocation::Reserved
        );
        assert_eq!(file.preallocate(0).unwrap(), Preallocation::Reserved);
        let bytes = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(bytes.len(), 8192 + 4096);
        assert!(bytes[..64].iter().all(|&b| b == 7));
        assert!(bytes[64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_range_past_the_largest_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, &None);
        assert!(file.preallocate_range(u64::MAX - 10, 100).is_err());
        assert!(file.preallocate_range(i64::MAX as u64, 1).is_err());
    }

    #[test]
    fn unsupported_preallocation_is_reported_and_not_emulated() {
        for errno in [libc::EOPNOTSUPP, libc::ENOSYS] {
            let result = unsupported_is_not_an_error(Err(io::Error::from_raw_os_error(errno)));
            assert_eq!(result.unwrap(), Preallocation::Unsupported, "errno {errno}");
        }
        // glibc's posix_fallocate never returns these, which is why annal calls fallocate(2);
        // other errors stay errors.
        for errno in [libc::EINVAL, libc::EIO, libc::ENOSPC] {
            let result = unsupported_is_not_an_error(Err(io::Error::from_raw_os_error(errno)));
            assert_eq!(result.unwrap_err().raw_os_error(), Some(errno));
        }

        let dir = tempfile::tempdir().unwrap();
        let faults = FailPoints::new();
        faults.set_preallocation_unsupported(true);
        let file = new_file(&dir, &Some(faults.clone()));
        file.write_all_at(&[1u8; 64], 0).unwrap();
        assert_eq!(
            file.preallocate(1 << 20).unwrap(),
            Preallocation::Unsupported
        );
        assert_eq!(
            len_of(&file),
            64,
            "the file is not extended in place of a reservation"
        );

        // A full disk is an error, supported or not.
        faults.set_disk_full(true);
        let error = file.preallocate(1 << 20).unwrap_err();
        assert!(error.is_disk_full(), "{error:?}");
    }
}
