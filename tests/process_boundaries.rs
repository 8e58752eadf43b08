//! A `Log` is bound to what it was opened with: its directory is resolved once at open, so a
//! later change of the working directory (as a daemon does) moves nothing; and after a `fork`
//! the child's copy, which has no writer thread, refuses every call with a clear error instead of
//! blocking forever.
//!
//! Regression tests for two fixed bugs: `Log::open("data")` resolved the relative path again at
//! every file operation, so after `chdir` the next segment roll failed with `ENOENT` or `Sync`
//! appends were acknowledged into another tree; and a child using an inherited `Log` had no
//! writer, so its `Sync` appends waited forever. Each scenario runs in a child process of its
//! own (the working directory and `fork` affect the whole process), started from this binary.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use annal::{Durability, Error, Log, Options};
use common::child::spawn_ignored_test;

const DIR_ENV: &str = "ANNAL_TEST_DIR";

fn options() -> Options {
    common::one_partition(common::SMALL_SEGMENT_BYTES).durability(Durability::Sync)
}

fn run_child(test: &str, dir: &Path) -> String {
    let mut child = spawn_ignored_test(test, &[(DIR_ENV, dir.as_os_str())], Stdio::null());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child {test} failed: {out}");
    out
}

#[test]
#[ignore = "run by a_changed_working_directory_moves_nothing in a child process"]
fn child_changes_directory_while_appending() {
    let root = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    std::env::set_current_dir(&root).unwrap();
    std::fs::create_dir_all("elsewhere").unwrap();
    let log = Log::open("data", options()).unwrap();
    assert_eq!(log.dir(), root.join("data"));
    // A tree that a second resolution of "data" would find after the chdir.
    std::env::set_current_dir("elsewhere").unwrap();
    std::fs::create_dir_all("data/p0000").unwrap();
    let payload = vec![7u8; 1000];
    // Enough to roll segments: every roll creates files through the log's own path.
    for _ in 0..300 {
        log.append(b"k", &payload).unwrap();
    }
    log.close().unwrap();
    println!("CHILD: appended 300");
}

#[test]
fn a_changed_working_directory_moves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let out = run_child("child_changes_directory_while_appending", root.path());
    assert!(out.contains("CHILD: appended 300"), "{out}");
    let log = Log::open(root.path().join("data"), options()).unwrap();
    assert_eq!(
        log.end_offset(0).unwrap(),
        300,
        "every append is in the real log"
    );
    assert!(
        std::fs::read_dir(root.path().join("elsewhere/data/p0000"))
            .unwrap()
            .next()
            .is_none(),
        "nothing was written to the other tree"
    );
}

#[test]
#[ignore = "run by a_log_used_after_fork_refuses_every_call in a child process"]
fn child_forks_with_an_open_log() {
    let root = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let log = Log::open(&root, options()).unwrap();
    log.append(b"k", b"before fork").unwrap();
    // SAFETY: the forked child only calls into the log (which checks a flag set by the fork
    // handler before it takes any lock) and then `_exit`s without running destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let append = log.append(b"k", b"in the child");
        let flush = log.flush();
        let read = log.read(0, 0).map(|_| ());
        let code = match (append, flush, read) {
            (Err(Error::UsedAfterFork), Err(Error::UsedAfterFork), Err(Error::UsedAfterFork)) => 0,
            _ => 1,
        };
        // SAFETY: ends the child at once, as a forked child of a multi-threaded process must.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child saw {status}"
    );
    // The parent's log is unaffected.
    log.append(b"k", b"after fork").unwrap();
    log.close().unwrap();
    println!("CHILD: fork checked");
}

#[test]
fn a_log_used_after_fork_refuses_every_call() {
    let root = tempfile::tempdir().unwrap();
    let out = run_child("child_forks_with_an_open_log", root.path());
    assert!(out.contains("CHILD: fork checked"), "{out}");
    let log = Log::open(root.path(), options()).unwrap();
    let payloads: Vec<Vec<u8>> = log
        .read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect();
    assert_eq!(payloads, [b"before fork".to_vec(), b"after fork".to_vec()]);
}
