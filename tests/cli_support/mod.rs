//! What the `cli_*` tests share: running the `annal` binary, and a log with several segments per
//! partition, event ids, headers, key tables and a snapshot to run it on.

#![allow(dead_code)] // each test file uses its own part of this module

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use annal::{Durability, Event, Log, Options};

/// What one run of the command did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn expect_ok(self) -> String {
        assert!(
            self.ok(),
            "annal failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Asserts a failure said in one line on stderr that contains `words`, without a panic or
    /// a backtrace.
    #[track_caller]
    pub fn expect_error(&self, words: &str) {
        assert!(
            !self.ok() && self.code.is_some(),
            "expected a failure, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("annal: note:"))
            .collect();
        assert_eq!(errors.len(), 1, "one line on stderr, got:\n{}", self.stderr);
        assert!(
            errors[0].contains(words),
            "stderr {:?} does not say {words:?}",
            errors[0]
        );
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"));
    }
}

pub fn annal_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_annal"))
}

/// Runs `annal` with `args` and no stdin.
pub fn annal<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let output = annal_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run annal");
    run_of(output)
}

/// Runs `annal` with `args` and `input` on stdin.
pub fn annal_with_stdin<S: AsRef<std::ffi::OsStr>>(args: &[S], input: &str) -> Run {
    let mut child = annal_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run annal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    run_of(child.wait_with_output().unwrap())
}

pub fn run_of(output: Output) -> Run {
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The sample log's shape.
pub const SAMPLE_PARTITIONS: u32 = 4;
pub const SAMPLE_EVENTS: u64 = 6_000;
pub const SAMPLE_KEYS: u64 = 40;

pub fn sample_key(k: u64) -> String {
    format!("order-{k:02}")
}

/// A closed log with `SAMPLE_EVENTS` events over `SAMPLE_KEYS` keys (event i goes to key
/// i % SAMPLE_KEYS, with id i + 1, header type Placed or Paid, payload `{"n":i}`), in 64 KiB
/// segments (two or three per partition), with the key tables of every segment and one
/// snapshot of `order-00` at version 5.
pub fn sample_log(dir: &Path) {
    let options = Options::default()
        .partitions(SAMPLE_PARTITIONS)
        .segment_bytes(64 << 10)
        .durability(Durability::Buffered);
    let log = Log::open(dir, options).unwrap();
    for i in 0..SAMPLE_EVENTS {
        let key = sample_key(i % SAMPLE_KEYS);
        let payload = format!("{{\"n\":{i}}}");
        let kind = if i % 2 == 0 { "Placed" } else { "Paid" };
        let event = Event::new(&payload)
            .header("type", kind)
            .id(u128::from(i) + 1);
        log.append(key.as_bytes(), event).unwrap();
    }
    log.flush().unwrap();
    // Every key has frames in every segment of its partition: reading one builds the tables
    // of all of them now rather than in the background.
    for k in 0..SAMPLE_KEYS {
        log.read_key(sample_key(k).as_bytes(), 0).unwrap();
    }
    log.save_snapshot(sample_key(0).as_bytes(), 5, b"state at 5")
        .unwrap();
    log.close().unwrap();
}

/// A closed log of `partitions` partitions whose retention (128 KiB per partition, 64 KiB
/// segments) deleted the first segments of its partitions with events: 1,000-byte events, event i under key `k{i % keys}`.
/// Returns each partition's start and end, read after the close (background retention may
/// delete more until then).
pub fn retained_log(dir: &Path, partitions: u32, events: u32, keys: u32) -> (Vec<u64>, Vec<u64>) {
    let options = Options::default()
        .partitions(partitions)
        .durability(Durability::Buffered)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
        .retention_bytes_max(128 << 10);
    let log = Log::open(dir, options).unwrap();
    for i in 0..events {
        log.append(format!("k{}", i % keys).as_bytes(), &[1u8; 1000][..])
            .unwrap();
    }
    log.flush().unwrap();
    log.enforce_retention().unwrap();
    log.close().unwrap();
    let log = Log::open(dir, Options::default()).unwrap();
    let starts: Vec<u64> = (0..partitions)
        .map(|p| log.start_offset(p).unwrap())
        .collect();
    let ends: Vec<u64> = (0..partitions)
        .map(|p| log.end_offset(p).unwrap())
        .collect();
    assert!(starts.iter().any(|&s| s > 0), "retention deleted nothing");
    log.close().unwrap();
    (starts, ends)
}

/// The `field` of every line of a command's `--json` output, as numbers.
pub fn json_u64s(out: &str, field: &str) -> Vec<u64> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[field]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The files of a partition with this suffix, in name order.
pub fn files(dir: &Path, partition: u32, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("p{partition:04}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    files
}

/// Flips one bit of the byte at `position`.
pub fn flip_byte(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
