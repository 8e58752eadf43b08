//! `annal verify`: a sound log passes; a byte flipped in a segment, an index, a key table,
//! `annal.meta` or a snapshot is found and reported with its file and byte, and the exit code
//! is non-zero; it reads a log that another process holds; `--repair` rebuilds damaged derived
//! files and refuses a locked log.

mod cli_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use annal::{Log, Options};
use cli_support::*;
use tempfile::TempDir;

/// One pristine sample log for the file; each test damages its own copy.
fn pristine() -> &'static Path {
    static SAMPLE: OnceLock<TempDir> = OnceLock::new();
    SAMPLE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            sample_log(dir.path());
            dir
        })
        .path()
}

fn copy() -> (TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    copy_dir(pristine(), &dir);
    (root, dir)
}

/// Runs verify, which must fail and report a problem at `path` byte `position`.
#[track_caller]
fn expect_problem(dir: &Path, path: &Path, position: u64) -> String {
    let run = annal(&["verify".as_ref(), dir.as_os_str()]);
    run.expect_error("problem");
    let wanted = format!("problem: {} byte {position}:", path.display());
    assert!(
        run.stdout.contains(&wanted),
        "verify did not report {wanted:?}:\n{}",
        run.stdout
    );
    run.stdout
}

#[test]
fn a_sound_log_verifies_with_exit_code_zero() {
    let out = annal(&["verify".as_ref(), pristine().as_os_str()]).expect_ok();
    assert!(out.contains("result: sound"), "{out}");
    assert!(
        out.contains("(6,000 events)") || out.contains(" 6,000 events"),
        "{out}"
    );
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_reported_at_its_frame() {
    let (_root, dir) = copy();
    let segment = files(&dir, 1, "seg")[0].clone();
    // Inside the first frame (at byte 64): its checksum fails, so the frame is reported.
    flip_byte(&segment, 64 + 55);
    let out = expect_problem(&dir, &segment, 64);
    assert!(out.contains("frame checksum mismatch"), "{out}");
    assert!(
        out.contains("frames resume at byte"),
        "later frames are still checked: {out}"
    );
}

#[test]
fn a_flipped_byte_in_the_segment_being_written_below_its_checkpoint_is_reported() {
    let (_root, dir) = copy();
    let segment = files(&dir, 2, "seg").last().unwrap().clone();
    flip_byte(&segment, 64 + 20);
    let out = expect_problem(&dir, &segment, 64);
    assert!(out.contains("frame checksum mismatch"), "{out}");
}

#[test]
fn a_flipped_byte_in_an_index_entry_is_reported_at_the_entry() {
    let (_root, dir) = copy();
    let index = files(&dir, 0, "idx")[0].clone();
    // The second entry's position field (entries start at byte 32, 16 bytes each).
    flip_byte(&index, 32 + 16 + 4);
    let out = expect_problem(&dir, &index, 48);
    assert!(
        out.contains("where no frame starts") || out.contains("holds offset"),
        "{out}"
    );
}

#[test]
fn a_flipped_byte_in_an_index_header_is_reported_at_its_checksum() {
    let (_root, dir) = copy();
    let index = files(&dir, 3, "idx")[0].clone();
    flip_byte(&index, 17);
    expect_problem(&dir, &index, 28);
}

#[test]
fn a_flipped_byte_in_a_key_table_is_reported_at_its_body_checksum() {
    let (_root, dir) = copy();
    let table = files(&dir, 1, "keys")[0].clone();
    flip_byte(&table, 200);
    let out = expect_problem(&dir, &table, 48);
    assert!(out.contains("body checksum mismatch"), "{out}");
}

#[test]
fn a_flipped_byte_in_annal_meta_is_reported_at_its_checksum() {
    let (_root, dir) = copy();
    let meta = dir.join("annal.meta");
    flip_byte(&meta, 13);
    let out = expect_problem(&dir, &meta, 32);
    assert!(out.contains("metadata header checksum mismatch"), "{out}");
    // The rest is still checked, with the partition count from the journal's checkpoint.
    assert!(out.contains("4 partitions"), "{out}");
}

#[test]
fn a_flipped_byte_in_a_snapshot_is_reported_at_its_checksum() {
    let (_root, dir) = copy();
    let snapshot = walk_files(&dir.join("snapshots"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .expect("the sample has a snapshot");
    let len = std::fs::metadata(&snapshot).unwrap().len();
    flip_byte(&snapshot, len - 6);
    expect_problem(&dir, &snapshot, len - 4);
}

#[test]
fn a_segment_cut_short_before_the_next_one_is_a_gap() {
    let (_root, dir) = copy();
    let segment = files(&dir, 0, "seg")[0].clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(64 + 1000).unwrap();
    let run = annal(&["verify".as_ref(), dir.as_os_str()]);
    run.expect_error("problem");
    assert!(
        run.stdout
            .contains(&format!("problem: {} byte", segment.display())),
        "{}",
        run.stdout
    );
}

#[test]
fn verify_reads_a_log_that_another_process_holds() {
    let (_root, dir) = copy();
    let _held = Log::open(&dir, Options::default()).unwrap();
    let out = annal(&["verify".as_ref(), dir.as_os_str()]).expect_ok();
    assert!(out.contains("result: sound"), "{out}");
}

#[test]
fn repair_deletes_damaged_derived_files_and_has_them_rebuilt() {
    let (_root, dir) = copy();
    let index = files(&dir, 0, "idx").last().unwrap().clone();
    let table = files(&dir, 1, "keys")[0].clone();
    flip_byte(&index, 32 + 4);
    flip_byte(&table, 100);
    let run = annal(&["verify".as_ref(), "--repair".as_ref(), dir.as_os_str()]);
    let out = run.expect_ok();
    assert!(
        out.contains(&format!("deleted {}", index.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("deleted {}", table.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("rebuilt {}", table.display())),
        "{out}"
    );
    assert!(out.contains("recovery: replayed"), "{out}");
    assert!(out.trim_end().ends_with("result: sound"), "{out}");
    annal(&["verify".as_ref(), dir.as_os_str()]).expect_ok();
}

#[test]
fn repair_refuses_a_log_that_another_process_holds() {
    let (_root, dir) = copy();
    let _held = Log::open(&dir, Options::default()).unwrap();
    let run = annal(&["verify".as_ref(), "--repair".as_ref(), dir.as_os_str()]);
    run.expect_error("is open by another process");
}

#[test]
fn verify_of_a_missing_directory_fails_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nothing-here");
    annal(&["verify".as_ref(), missing.as_os_str()]).expect_error("does not exist");
    annal(&["verify".as_ref(), root.path().as_os_str()]).expect_error("has no annal.meta");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk_files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_flipped_byte_in_the_groups_partition_is_reported() {
    let (_root, dir) = copy();
    {
        // A consumer group's commits: records in the groups partition.
        let log = Log::open(&dir, Options::default()).unwrap();
        let mut consumer = log.group("g").unwrap().join().unwrap();
        let batch = consumer
            .poll(100, std::time::Duration::from_millis(50))
            .unwrap();
        consumer.commit(&batch).unwrap();
        drop(consumer);
        log.close().unwrap();
    }
    let out = annal(&["verify".as_ref(), dir.as_os_str()]).expect_ok();
    assert!(out.contains("result: sound"), "{out}");
    let segment = dir.join("groups").join(format!("{:020}.seg", 0));
    flip_byte(&segment, 64 + 20);
    let out = expect_problem(&dir, &segment, 64);
    assert!(out.contains("frame checksum mismatch"), "{out}");
}

#[test]
fn a_log_that_retention_shortened_verifies_and_a_bad_start_file_is_reported() {
    let root = tempfile::tempdir().unwrap();
    retained_log(root.path(), 1, 3_000, 3);
    let out = annal(&["verify".as_ref(), root.path().as_os_str()]).expect_ok();
    assert!(!out.contains("missing"), "{out}");
    let start = root.path().join("p0000").join("start");
    let mut bytes = std::fs::read(&start).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&start, bytes).unwrap();
    expect_problem(root.path(), &start, 0);
}
