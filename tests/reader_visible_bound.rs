//! Regression test for a fixed bug: readers bounded their frame checks by the mapping of the
//! segment being written, not by its visible bytes. When the file was cut back below its mapping
//! (then by the writer after a failed write; here by hand), a visible frame whose length field
//! had been damaged made the checksum read pages past the end of the file: SIGBUS, a crash of
//! the whole process, instead of `Error::Corrupt`.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use annal::Log;
use common::segment_files::{frame_ranges, segment_path, FRAME_LEN_OFFSET};

#[test]
fn a_damaged_length_in_a_visible_frame_past_the_file_end_is_corruption_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), common::one_partition(1 << 20)).unwrap();
    log.append(b"k", b"first").unwrap();
    log.append(b"k", b"second").unwrap();

    // Cut the file to its last frame: the segment's mapping still spans its reservation.
    let path = segment_path(dir.path(), 0, 0);
    let bytes = std::fs::read(&path).unwrap();
    let frames = frame_ranges(&bytes);
    assert_eq!(frames.len(), 2);
    let cut = OpenOptions::new().write(true).open(&path).unwrap();
    cut.set_len(frames[1].end as u64).unwrap();
    assert!(
        frames[1].end as u64 + 4096 < bytes.len() as u64,
        "the mapping reaches pages past the new end of the file"
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
}
