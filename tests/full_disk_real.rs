//! A real full file system (a small tmpfs), not a fail point: under `Sync` the appends that meet
//! it fail with a full-disk `AppendFailed` and the log resumes at the next offset once space is
//! freed; under `Buffered` the acknowledged appends are kept and written once space is back,
//! with no offset given twice. Nothing acknowledged is lost, before or after a reopen.
//!
//! These tests mount a file system, which needs root: they are `#[ignore]`d, and `.ci/run`
//! (which runs as root) runs them with `cargo test --release --test full_disk_real -- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use annal::{Durability, Error, Log, Options};

/// A tmpfs of `bytes` mounted on a temporary directory, unmounted however the test ends.
struct SmallFs {
    _root: tempfile::TempDir,
    path: PathBuf,
}

impl SmallFs {
    fn mount(bytes: u64) -> SmallFs {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs { _root: root, path }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the file system but for about `leave` bytes with a file that can be removed later.
fn fill(fs: &Path, leave: u64) -> PathBuf {
    let filler = fs.join("filler");
    let free = free_bytes(fs).saturating_sub(leave);
    std::fs::write(&filler, vec![0xffu8; free as usize]).unwrap();
    filler
}

fn free_bytes(path: &Path) -> u64 {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `statvfs` is plain old data, so all zeros is a valid value; `c` is a valid
    // NUL-terminated path and `stat` a valid out pointer for the call.
    let (rc, stat) = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut stat), stat)
    };
    assert_eq!(rc, 0);
    stat.f_bavail * stat.f_frsize
}

fn options(durability: Durability) -> Options {
    Options::default()
        .partitions(2)
        .durability(durability)
        .segment_bytes(256 << 10)
        .journal_bytes(1 << 20)
}

fn payload(i: u64) -> Vec<u8> {
    let mut payload = format!("event {i} ").into_bytes();
    payload.resize(1000, b'.');
    payload
}

fn check_reopened(dir: &Path, acked: &[(u32, u64, Vec<u8>)]) {
    let log = Log::open(dir, options(Durability::Sync)).unwrap();
    for (partition, offset, payload) in acked {
        let record = log
            .read(*partition, *offset)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(&record.payload[..], &payload[..], "{partition}/{offset}");
    }
    for p in 0..2 {
        let count = acked.iter().filter(|(q, _, _)| *q == p).count() as u64;
        assert_eq!(
            log.end_offset(p).unwrap(),
            count,
            "partition {p} holds exactly the acked"
        );
    }
    log.close().unwrap();
}

#[test]
#[ignore = "mounts a tmpfs: needs root; run by .ci/run"]
fn sync_appends_fail_cleanly_on_a_real_full_disk_and_resume_once_space_is_freed() {
    let fs = SmallFs::mount(8 << 20);
    let dir = fs.path.join("log");
    let log = Log::open(&dir, options(Durability::Sync)).unwrap();
    let filler = fill(&fs.path, 1536 << 10);
    let mut acked = Vec::new();
    let mut i = 0;
    let error = loop {
        let key = format!("key-{}", i % 7);
        match log.append(key.as_bytes(), &payload(i)) {
            Ok(at) => acked.push((at.partition, at.offset, payload(i))),
            Err(error) => break error,
        }
        i += 1;
        assert!(i < 100_000, "the disk never filled");
    };
    assert!(matches!(error, Error::AppendFailed { .. }), "{error:?}");
    assert!(error.is_disk_full(), "{error:?}");
    std::fs::remove_file(filler).unwrap();
    for j in 0..50 {
        let key = format!("key-{}", j % 7);
        let at = log.append(key.as_bytes(), &payload(i + j)).unwrap();
        let expected = acked.iter().filter(|(p, _, _)| *p == at.partition).count() as u64;
        assert_eq!(
            at.offset, expected,
            "offsets continue without a gap or a reuse"
        );
        acked.push((at.partition, at.offset, payload(i + j)));
    }
    log.close().unwrap();
    check_reopened(&dir, &acked);
}

#[test]
#[ignore = "mounts a tmpfs: needs root; run by .ci/run"]
fn buffered_appends_are_kept_on_a_real_full_disk_and_written_once_space_is_freed() {
    let fs = SmallFs::mount(8 << 20);
    let dir = fs.path.join("log");
    let log = Log::open(&dir, options(Durability::Buffered)).unwrap();
    let filler = fill(&fs.path, 1536 << 10);
    let mut acked = Vec::new();
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let key = format!("key-{}", i % 7);
        match log.append(key.as_bytes(), &payload(i)) {
            Ok(at) => acked.push((at.partition, at.offset, payload(i))),
            Err(error) => break error,
        }
        i += 1;
        if i % 64 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() < deadline, "the disk never filled");
    };
    assert!(matches!(error, Error::WritesStalled { .. }), "{error:?}");
    assert!(error.is_disk_full(), "{error:?}");
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match log.flush() {
            Ok(()) => break,
            Err(Error::WritesStalled { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    log.close().unwrap();
    check_reopened(&dir, &acked);
}
