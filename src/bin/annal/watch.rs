//! Wake-ups for `tail --follow` from the writes of another process: inotify on the log's
//! directory (the journal) and its partitions' directories (segments), so that a follower
//! waits without polling and wakes within microseconds of a write.
//!
//! A write that inotify reports is not yet acknowledged by the writer (see `tail.rs`); the
//! follower reads what the files hold then. Without inotify (another OS, or a limit reached),
//! `Watch::new` returns `None` and the caller falls back to sleeping.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An inotify instance watching a log's directories.
pub struct Watch {
    fd: OwnedFd,
    dirs: Vec<PathBuf>,
}

const MASK: u32 = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;

impl Watch {
    /// Watches `log_dir` and the partition directories `dirs` (those that do not exist yet
    /// are watched once they do).
    pub fn new(log_dir: &Path, dirs: Vec<PathBuf>) -> Option<Watch> {
        // SAFETY: inotify_init1 takes only flags and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a descriptor just returned to us and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut all = vec![log_dir.to_path_buf()];
        all.extend(dirs);
        let watch = Watch { fd, dirs: all };
        if !watch.add(&watch.dirs[0]) {
            return None;
        }
        watch.add_partitions();
        Some(watch)
    }

    fn add(&self, dir: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: the descriptor is open (owned by self) and `path` is a NUL-terminated string
        // that outlives the call. Watching a directory again only updates its mask.
        unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) >= 0 }
    }

    fn add_partitions(&self) {
        for dir in &self.dirs[1..] {
            if dir.is_dir() {
                self.add(dir);
            }
        }
    }

    /// Waits until something in the watched directories is written, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `poll` points at one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, ms) };
        // Drain the events: which file changed does not matter, the reader looks again.
        let mut buffer = [0u8; 4096];
        loop {
            // SAFETY: the buffer is valid for writes of its length; the descriptor is
            // non-blocking, so this returns -1 (EAGAIN) once nothing is left.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read <= 0 {
                break;
            }
        }
        // A partition's directory appears at its first append.
        self.add_partitions();
    }
}
