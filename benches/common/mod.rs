//! Shared by the benches: the raw ceiling of the disk the log is on, measured in the same run,
//! so that annal's figures can be read as ratios to it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How the raw baseline file is prepared.
#[derive(Clone, Copy, Debug)]
pub enum RawFile {
    /// Appending to a file that grows with every write.
    Growing,
    /// Overwriting space reserved with `posix_fallocate` (what annal's segments are).
    Fallocated,
    /// Overwriting blocks that were written with zeros and synced before (best case).
    Zeroed,
}

/// Opens a scratch file of the given kind, with room for `bytes`.
pub fn raw_file(dir: &Path, kind: RawFile, bytes: u64) -> File {
    let path = dir.join(format!("raw-{kind:?}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create raw file");
    match kind {
        RawFile::Growing => {}
        RawFile::Fallocated => {
            use std::os::fd::AsRawFd;
            // SAFETY: plain integer arguments; the descriptor is owned by `file`.
            let errno = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as i64) };
            assert_eq!(errno, 0, "posix_fallocate");
        }
        RawFile::Zeroed => {
            let chunk = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < bytes {
                file.write_all_at(&chunk, at).expect("zero fill");
                at += chunk.len() as u64;
            }
        }
    }
    file.sync_all().expect("sync raw file");
    file
}

/// Runs `write(bytes_per_sync) + fdatasync` in a loop for about `duration`; returns
/// (syncs per second, bytes per second).
pub fn raw_sync_rate(
    dir: &Path,
    kind: RawFile,
    bytes_per_sync: usize,
    duration: Duration,
) -> (f64, f64) {
    let room = 256u64 << 20;
    let file = raw_file(dir, kind, room);
    let buf = vec![0x5au8; bytes_per_sync.max(1)];
    let started = Instant::now();
    let mut position = 0u64;
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        if position + buf.len() as u64 > room {
            position = 0;
        }
        file.write_all_at(&buf, position).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        position += buf.len() as u64;
        syncs += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    (
        syncs as f64 / seconds,
        (syncs as f64 * buf.len() as f64) / seconds,
    )
}

/// A 256-byte-ish JSON-like payload of exactly `size` bytes.
pub fn payload(size: usize, n: u64) -> Vec<u8> {
    let mut payload = format!("{{\"type\":\"OrderPlaced\",\"n\":{n},\"pad\":\"").into_bytes();
    payload.resize(size.saturating_sub(2), b'x');
    payload.extend_from_slice(b"\"}");
    payload.truncate(size);
    payload
}

/// Number of aggregates the benches spread keys over, as in the peer measurements.
pub const AGGREGATES: u64 = 10_000;

/// The keys of all aggregates, made once so that the benches time the log, not `format!`.
pub fn keys() -> Vec<Vec<u8>> {
    (0..AGGREGATES)
        .map(|n| format!("order-{n}").into_bytes())
        .collect()
}
