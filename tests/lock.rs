//! One `Log` per directory: a second open fails with `Error::Locked`, in this process and in
//! another one, until the first is closed, dropped, or its process dies.
//!
//! The other process is this test binary itself, running the ignored `child_process` test
//! (selected with `--exact --ignored`) with the directory and what to do in environment
//! variables. It reports on stdout with lines containing `CHILD: `.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use annal::{Durability, Error, Log, Options};
use common::child::{spawn_ignored_test, ChildGuard};

const DIR_VAR: &str = "ANNAL_LOCK_TEST_DIR";
const MODE_VAR: &str = "ANNAL_LOCK_TEST_MODE";
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

fn options() -> Options {
    Options::default()
        .partitions(2)
        .durability(Durability::Sync)
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    (0..log.partition_count())
        .flat_map(|p| log.read(p, 0).unwrap())
        .map(|r| r.unwrap().payload.to_vec())
        .collect()
}

#[test]
fn second_open_in_the_same_process_fails_with_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = Log::open(dir.path(), options()).unwrap();
    first.append(b"k", b"before").unwrap();

    let error = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(&error, Error::Locked { path } if path == dir.path()),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("already open"), "{message}");
    // Other options make no difference: the lock is taken before anything else is looked at.
    let error = Log::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error:?}");

    // The failed open did not disturb the open log.
    first.append(b"k", b"after").unwrap();
    assert_eq!(payloads(&first), [b"before".to_vec(), b"after".to_vec()]);
}

#[test]
fn directory_opens_again_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let first = Log::open(dir.path(), options()).unwrap();
    first.append(b"k", b"one").unwrap();
    first.close().unwrap();

    let second = Log::open(dir.path(), options()).unwrap();
    assert_eq!(payloads(&second), [b"one".to_vec()]);
    assert!(matches!(
        Log::open(dir.path(), options()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn directory_opens_again_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let first = Log::open(dir.path(), options()).unwrap();
    first.append(b"k", b"one").unwrap();
    drop(first);

    let second = Log::open(dir.path(), options()).unwrap();
    assert_eq!(payloads(&second), [b"one".to_vec()]);
}

#[test]
fn two_directories_open_side_by_side() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let log_a = Log::open(a.path(), options()).unwrap();
    let log_b = Log::open(b.path(), options()).unwrap();
    log_a.append(b"k", b"a").unwrap();
    log_b.append(b"k", b"b").unwrap();
    assert_eq!(payloads(&log_a), [b"a".to_vec()]);
    assert_eq!(payloads(&log_b), [b"b".to_vec()]);
}

/// The child process: a test that does nothing unless the parent set `DIR_VAR`.
///
/// Modes: `probe` opens the log, appends one event if it could and reports the outcome;
/// `hold` opens it, reports, and keeps it open until a line arrives on stdin.
#[test]
#[ignore = "helper: run as a child process by the tests in this file"]
fn child_process() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let mode = std::env::var(MODE_VAR).unwrap_or_default();
    let report = |line: &str| {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "CHILD: {line}").unwrap();
        stdout.flush().unwrap();
    };
    match Log::open(&dir, options()) {
        Err(Error::Locked { .. }) => report("locked"),
        Err(other) => report(&format!("error {other}")),
        Ok(log) => {
            log.append(b"child", b"from the child").unwrap();
            report("opened");
            if mode == "hold" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
            }
            log.close().unwrap();
            report("closed");
        }
    }
}

/// A child process running `child_process`; it is killed and reaped when this goes out of
/// scope, whatever happened in the test.
struct ChildProcess {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ChildProcess {
    fn spawn(dir: &std::path::Path, mode: &str) -> ChildProcess {
        let envs = [(DIR_VAR, dir.as_os_str()), (MODE_VAR, OsStr::new(mode))];
        let mut child = spawn_ignored_test("child_process", &envs, Stdio::piped());
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (sender, lines) = mpsc::channel();
        // Reads the child's report lines, so the parent can wait for one with a timeout.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child_process ... " on the same line first.
                if let Some((_, report)) = line.split_once("CHILD: ") {
                    if sender.send(report.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProcess {
            child,
            stdin,
            lines,
        }
    }

    /// The child's next report, or a panic if it sends none in time.
    fn next_report(&self) -> String {
        self.lines
            .recv_timeout(CHILD_TIMEOUT)
            .expect("no report from the child process")
    }

    /// Lets a `hold` child close its log and exit.
    fn release(&mut self) {
        let mut stdin = self.stdin.take().expect("released once");
        writeln!(stdin, "go").unwrap();
    }

    /// Waits for the child to exit and checks that its test passed.
    fn wait_success(&mut self) {
        let deadline = std::time::Instant::now() + CHILD_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "child failed: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (by its PID, through its handle) and reaps it.
    fn kill(&mut self) {
        self.child.kill_and_wait();
    }
}

#[test]
fn open_in_another_process_fails_while_this_one_holds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(b"k", b"parent").unwrap();

    let mut child = ChildProcess::spawn(dir.path(), "probe");
    assert_eq!(child.next_report(), "locked");
    child.wait_success();

    // Once the parent closes, the child gets in and appends.
    log.close().unwrap();
    let mut child = ChildProcess::spawn(dir.path(), "probe");
    assert_eq!(child.next_report(), "opened");
    assert_eq!(child.next_report(), "closed");
    child.wait_success();

    let log = Log::open(dir.path(), options()).unwrap();
    let mut found = payloads(&log);
    found.sort();
    assert_eq!(found, [b"from the child".to_vec(), b"parent".to_vec()]);
}

#[test]
fn open_in_this_process_fails_while_another_process_holds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), options()).unwrap());

    let mut child = ChildProcess::spawn(dir.path(), "hold");
    assert_eq!(child.next_report(), "opened");
    let error = Log::open(dir.path(), options()).unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error:?}");

    child.release();
    assert_eq!(child.next_report(), "closed");
    child.wait_success();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(payloads(&log), [b"from the child".to_vec()]);
}

/// The lock is an `flock`: the kernel drops it when the holder dies, so a crash never leaves
/// the directory locked.
#[test]
fn lock_of_a_killed_process_is_released() {
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), options()).unwrap());

    let mut child = ChildProcess::spawn(dir.path(), "hold");
    assert_eq!(child.next_report(), "opened");
    assert!(matches!(
        Log::open(dir.path(), options()),
        Err(Error::Locked { .. })
    ));
    child.kill();

    let log = Log::open(dir.path(), options()).unwrap();
    // The child's append was synced (Sync durability) before it reported "opened".
    assert_eq!(payloads(&log), [b"from the child".to_vec()]);
}
