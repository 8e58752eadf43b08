//! An application that starts a child process while a log is open must not hand it the log's
//! files: an inherited `annal.lock` descriptor shares the `flock`, so the child would keep the
//! log locked after the parent closed it or died. annal's files are opened with `O_CLOEXEC`.
//!
//! Linux only: the open files of both processes are read from `/proc`.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use annal::{Durability, Log};

/// A child process that is killed and reaped however the test ends.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sleeper(child)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        // An error means it already exited; `wait` reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The files under `dir` that process `pid` holds open, from `/proc/<pid>/fd`.
fn open_files_under(pid: u32, dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

#[test]
fn a_child_process_inherits_no_file_of_an_open_log_and_does_not_keep_it_locked() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let options = || common::small_segments(Durability::Sync);
    let log = Log::open(&dir_path, options()).unwrap();
    log.append(b"k", b"v").unwrap();
    // The parent holds the lock, segment and index files open.
    assert!(!open_files_under(std::process::id(), &dir_path).is_empty());

    let child = Sleeper::start();
    assert_eq!(
        open_files_under(child.0.id(), &dir_path),
        Vec::<std::path::PathBuf>::new()
    );

    log.close().unwrap();
    // With an inherited lock descriptor, the child would still hold the flock here.
    let log = Log::open(&dir_path, options()).unwrap();
    assert_eq!(common::payloads(&log), [b"v".to_vec()]);
    log.close().unwrap();
    drop(child);
}
