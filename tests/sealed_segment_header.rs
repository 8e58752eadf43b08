//! Bug: the header of a sealed segment is never checked, so a sealed segment written by another
//! format version, or with a damaged header, is read as if it were ours.
//!
//! Recovery reads only the sealed segments' names (`recovery.rs`), and the reader maps a sealed
//! segment and probes frames from byte 64 without decoding the header (`Segment::map`,
//! `Reader::locate`). The recovery table promises `Error::IncompatibleFormat` for "a segment
//! header of another format version" and `Error::Corrupt` for "a segment header with bad magic
//! or checksum"; both hold only for the active (last) segment (`tests/bad_input.rs`).

mod common;

use std::path::{Path, PathBuf};

use annal::{Durability, Error, Log, Options, FORMAT_VERSION};
use common::segment_files::segment_path;

fn options() -> Options {
    common::small_segments(Durability::Sync)
}

/// A closed log whose segment 0 is sealed; returns the directory and the path of segment 0.
fn log_with_a_sealed_segment() -> (tempfile::TempDir, PathBuf) {
    let dir = common::sealed_log(options(), 40, &[4u8; 4_000]);
    let sealed = segment_path(dir.path(), 0, 0);
    (dir, sealed)
}

/// The error of opening the log and reading it from offset 0, if any.
fn open_and_read(dir: &Path) -> Option<Error> {
    let log = match Log::open(dir, options()) {
        Ok(log) => log,
        Err(error) => return Some(error),
    };
    log.read(0, 0).unwrap().find_map(Result::err)
}

#[test]

fn sealed_segment_of_another_format_version_is_refused_with_incompatible_format() {
    let (dir, sealed) = log_with_a_sealed_segment();
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&sealed, bytes).unwrap();

    let error = open_and_read(dir.path());
    assert!(
        matches!(
            &error,
            Some(Error::IncompatibleFormat { path, found, .. })
                if path == &sealed && *found == FORMAT_VERSION + 1
        ),
        "{error:?}"
    );
}

#[test]

fn sealed_segment_with_a_damaged_header_is_refused_with_corrupt() {
    let (dir, sealed) = log_with_a_sealed_segment();
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[0] ^= 0xff; // magic
    std::fs::write(&sealed, bytes).unwrap();

    let error = open_and_read(dir.path());
    assert!(
        matches!(&error, Some(Error::Corrupt { path, .. }) if path == &sealed),
        "{error:?}"
    );
}
