//! Bug: readers bounded their frame checks by the mapping of the segment being written, not by
//! its visible bytes. After a failed write cut the file back and the disk was too full to
//! preallocate it again, the mapping reached past the end of the file, and a visible frame whose
//! length field had been damaged made the checksum read pages past the end: SIGBUS, a crash of
//! the whole process, instead of `Error::Corrupt`.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use annal::io::FailPoints;
use annal::Log;
use common::segment_files::{frame_ranges, segment_path, FRAME_LEN_OFFSET};

#[test]
fn a_damaged_length_in_a_visible_frame_past_the_file_end_is_corruption_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = common::one_partition(1 << 20).fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options).unwrap();
    log.append(b"k", b"first").unwrap();
    log.append(b"k", b"second").unwrap();

    // A failed write on a full disk: the writer cuts the file back to its last frame, and
    // cannot preallocate it again. The segment's mapping still spans the old 1 MiB.
    fail_points.set_disk_full(true);
    assert!(log.append(b"k", b"lost").unwrap_err().is_disk_full());
    let path = segment_path(dir.path(), 0, 0);
    let file_len = std::fs::metadata(&path).unwrap().len();
    let bytes = std::fs::read(&path).unwrap();
    let frames = frame_ranges(&bytes);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        file_len, frames[1].end as u64,
        "the file was cut to its last frame"
    );

    // Damage the second frame's length so that it claims to reach half a MiB: inside the
    // mapping, far past the end of the file.
    let damaged_len = 512u32 << 10;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let at = frames[1].start + FRAME_LEN_OFFSET;
    file.write_all_at(&damaged_len.to_le_bytes(), at as u64)
        .unwrap();

    let mut reader = log.read(0, 0).unwrap();
    assert_eq!(&reader.next().unwrap().unwrap().payload[..], b"first");
    let error = reader.next().unwrap().unwrap_err();
    assert!(error.is_corruption(), "{error:?}");
    fail_points.set_disk_full(false);
}
