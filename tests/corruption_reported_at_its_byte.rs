//! Bug: `Error::Corrupt` positions were loose and reserved bytes were not checked: header damage
//! was reported "at byte 0" whatever field was wrong, a bad record attribute at the frame's
//! start, a non-zero frame reserved byte as "unknown frame flags", and non-zero reserved header
//! bytes under a valid checksum were read as if they were zero. An index of another format
//! version beside a sealed segment was silently rebuilt.

mod common;

use std::path::{Path, PathBuf};

use annal::{Durability, Error, Log, Options, FORMAT_VERSION};
use common::segment_files::{frame_ranges, index_path, segment_path, META_FILE};

fn options() -> Options {
    common::small_segments(Durability::Sync)
}

/// A closed log with one event in its only segment (the active one).
fn log_with_one_event() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(b"k", b"v").unwrap();
    log.close().unwrap();
    dir
}

/// A closed log whose segment 0 is sealed, every frame holding one event under key `k`.
fn log_with_a_sealed_segment() -> tempfile::TempDir {
    common::sealed_log(options(), 40, &[4u8; 4_000])
}

/// Applies `edit` to the file and then rewrites the CRC-32 of `[0, crc_at)` at `crc_at`, as a
/// foreign writer that knows the checksum would.
fn edit_header(path: &Path, crc_at: usize, edit: impl FnOnce(&mut [u8])) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Applies `edit` to the first frame of a segment file, then makes its checksum valid again.
fn edit_first_frame(path: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut bytes = std::fs::read(path).unwrap();
    let frame = frame_ranges(&bytes)[0].clone();
    let frame_bytes = &mut bytes[frame];
    edit(frame_bytes);
    let crc = crc32fast::hash(&frame_bytes[4..]);
    frame_bytes[..4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// The error of opening the log and reading partition 0 from offset 0, if any.
fn open_and_read(dir: &Path) -> Option<Error> {
    let log = match Log::open(dir, options()) {
        Ok(log) => log,
        Err(error) => return Some(error),
    };
    log.read(0, 0).unwrap().find_map(Result::err)
}

/// Asserts that `error` is `Error::Corrupt` in `path` at `position`; returns its reason.
#[track_caller]
fn assert_corrupt_at(error: Option<Error>, path: &Path, position: u64) -> &'static str {
    match error {
        Some(Error::Corrupt {
            path: found,
            position: at,
            reason,
        }) if found == path && at == position => reason,
        other => panic!(
            "expected corruption of {} at {position}: {other:?}",
            path.display()
        ),
    }
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

#[test]
fn metadata_damage_is_reported_at_the_field_that_is_wrong() {
    let dir = log_with_one_event();
    let meta = meta_path(dir.path());
    let original = std::fs::read(&meta).unwrap();
    // Magic at 0; a flipped creation time fails the CRC at 32.
    for (flip, position) in [(3, 0), (25, 32)] {
        let mut damaged = original.clone();
        damaged[flip] ^= 0x01;
        std::fs::write(&meta, damaged).unwrap();
        assert_corrupt_at(open_and_read(dir.path()), &meta, position);
    }
    // The key hash algorithm, at 16, with a valid CRC.
    std::fs::write(&meta, &original).unwrap();
    edit_header(&meta, 32, |bytes| bytes[16] = 2);
    assert_corrupt_at(open_and_read(dir.path()), &meta, 16);
}

#[test]
fn non_zero_reserved_metadata_bytes_are_refused_at_their_position() {
    let dir = log_with_one_event();
    let meta = meta_path(dir.path());
    let original = std::fs::read(&meta).unwrap();
    for at in 20..24 {
        std::fs::write(&meta, &original).unwrap();
        edit_header(&meta, 32, |bytes| bytes[at] = 0x01);
        let reason = assert_corrupt_at(open_and_read(dir.path()), &meta, at as u64);
        assert!(reason.contains("reserved"), "{reason}");
    }
    std::fs::write(&meta, &original).unwrap();
    assert_eq!(open_and_read(dir.path()).map(|e| e.to_string()), None);
}

#[test]
fn segment_header_damage_is_reported_at_the_field_that_is_wrong() {
    let dir = log_with_one_event();
    let segment = segment_path(dir.path(), 0, 0);
    let original = std::fs::read(&segment).unwrap();
    for (flip, position) in [(0, 0), (20, 60)] {
        let mut damaged = original.clone();
        damaged[flip] ^= 0x01;
        std::fs::write(&segment, damaged).unwrap();
        assert_corrupt_at(open_and_read(dir.path()), &segment, position);
    }
}

#[test]
fn non_zero_reserved_segment_header_bytes_are_refused_at_their_position() {
    let dir = log_with_one_event();
    let active = segment_path(dir.path(), 0, 0);
    edit_header(&active, 60, |bytes| bytes[33] = 0x01);
    assert_corrupt_at(open_and_read(dir.path()), &active, 33);

    let dir = log_with_a_sealed_segment();
    let sealed = segment_path(dir.path(), 0, 0);
    edit_header(&sealed, 60, |bytes| bytes[59] = 0x80);
    assert_corrupt_at(open_and_read(dir.path()), &sealed, 59);
}

#[test]
fn a_bad_record_attribute_is_reported_at_the_attribute_byte() {
    let dir = log_with_a_sealed_segment();
    let sealed = segment_path(dir.path(), 0, 0);
    // Frame header (48), key length (2), key "k" (1): the first record's attributes. 0x01
    // (an event id follows) is defined; 0x02 is not.
    let attributes_at = 48 + 2 + 1;
    edit_first_frame(&sealed, |frame| frame[attributes_at] = 0x02);
    let reason = assert_corrupt_at(
        open_and_read(dir.path()),
        &sealed,
        64 + attributes_at as u64,
    );
    assert_eq!(reason, "unknown record attributes");
}

#[test]
fn frame_flags_and_frame_reserved_bytes_are_told_apart() {
    let dir = log_with_a_sealed_segment();
    let sealed = segment_path(dir.path(), 0, 0);
    let original = std::fs::read(&sealed).unwrap();
    edit_first_frame(&sealed, |frame| frame[9] = 0x80);
    let reason = assert_corrupt_at(open_and_read(dir.path()), &sealed, 64);
    assert_eq!(reason, "unknown frame flags");

    std::fs::write(&sealed, &original).unwrap();
    edit_first_frame(&sealed, |frame| frame[11] = 0x01);
    let reason = assert_corrupt_at(open_and_read(dir.path()), &sealed, 64);
    assert_eq!(reason, "non-zero reserved bytes in a frame header");
}

#[test]
fn sealed_segment_index_of_another_format_version_is_refused_with_incompatible_format() {
    let dir = log_with_a_sealed_segment();
    let index = index_path(dir.path(), 0, 0);
    edit_header(&index, 28, |bytes| {
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes())
    });
    // A read from the segment's first offset needs no index; one from inside it does.
    let log = Log::open(dir.path(), options()).unwrap();
    let error = log.read(0, 1).unwrap().find_map(Result::err);
    assert!(
        matches!(
            &error,
            Some(Error::IncompatibleFormat { path, found, .. })
                if path == &index && *found == FORMAT_VERSION + 1
        ),
        "{error:?}"
    );
}

#[test]
fn sealed_segment_index_with_a_non_zero_reserved_byte_is_rebuilt_and_reads_back() {
    let dir = log_with_a_sealed_segment();
    let index = index_path(dir.path(), 0, 0);
    edit_header(&index, 28, |bytes| bytes[25] = 0x01);
    let log = Log::open(dir.path(), options()).unwrap();
    let records = common::read_all(&log, 0);
    assert_eq!(records.len(), 40);
    let from_middle = common::read_from(&log, 0, 17);
    assert_eq!(from_middle[0].offset, 17);
}

#[test]
fn index_header_records_the_index_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().index_interval_bytes(256)).unwrap();
    log.append(b"k", b"v").unwrap();
    log.close().unwrap();
    let bytes = std::fs::read(index_path(dir.path(), 0, 0)).unwrap();
    assert_eq!(bytes[12..16], 256u32.to_le_bytes());
}
