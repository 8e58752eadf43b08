//! The key table of the segment being written, kept at a clean close: the next process
//! continues from it, and recovery never keeps one that covers more than the checkpoint mark.

mod common;

use std::fs;
use std::path::Path;

use annal::{Durability, Log, Options};
use common::streams::{keys_bases, keys_path, stream_payloads};

const KEYS: u64 = 20;

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
}

fn key(n: u64) -> Vec<u8> {
    format!("account-{n}").into_bytes()
}

/// Appends `rounds` events to each key (payload `"{round}"`), starting at round `from`.
fn append_rounds(log: &Log, from: u64, rounds: u64) {
    for round in from..from + rounds {
        for n in 0..KEYS {
            log.append(&key(n), round.to_string().as_bytes()).unwrap();
        }
    }
}

/// Every key's stream is rounds `0..rounds`, in order.
fn assert_streams(log: &Log, rounds: u64) {
    for n in 0..KEYS {
        let expected: Vec<Vec<u8>> = (0..rounds).map(|r| r.to_string().into_bytes()).collect();
        assert_eq!(stream_payloads(log, &key(n), 0), expected, "key {n}");
        let last = log.last_version(&key(n)).unwrap();
        assert_eq!(last, rounds.checked_sub(1), "key {n}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "annal.lock" {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_clean_close_keeps_the_table_and_the_next_process_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_rounds(&log, 0, 3);
    assert_streams(&log, 3); // builds the in-memory table
    log.close().unwrap();
    assert_eq!(
        keys_bases(dir.path(), 0),
        vec![0],
        "the table is kept at close"
    );
    let first = fs::read(keys_path(dir.path(), 0, 0)).unwrap();

    // The next process answers from the kept table plus the frames after it.
    let log = Log::open(dir.path(), options()).unwrap();
    append_rounds(&log, 3, 2);
    assert_streams(&log, 5);
    // Versions continue from the kept table for keys not appended since open.
    log.close().unwrap();
    let second = fs::read(keys_path(dir.path(), 0, 0)).unwrap();
    assert!(
        second.len() > first.len(),
        "the kept table grew with the segment"
    );

    let log = Log::open(dir.path(), options()).unwrap();
    assert_streams(&log, 5);
    let appended = log.append(&key(7), b"5").unwrap();
    assert_eq!(appended.version, 5);
    log.close().unwrap();
}

#[test]
fn a_damaged_kept_table_is_walked_around() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_rounds(&log, 0, 3);
    assert_streams(&log, 3);
    log.close().unwrap();
    let path = keys_path(dir.path(), 0, 0);
    let bytes = fs::read(&path).unwrap();
    for at in [0, 13, 52, 57, 64, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x20;
        fs::write(&path, &damaged).unwrap();
        let log = Log::open(dir.path(), options()).unwrap();
        assert_streams(&log, 3);
        drop(log);
        fs::write(&path, &bytes).unwrap();
    }
}

/// Two logs that share their first frames and then differ: the table kept at the close of one
/// is put into the other after a kill -9 (emulated by copying the open, idle directory, which is
/// what a killed process leaves). It covers frames past that log's checkpoint mark, which are
/// other frames there, so recovery deletes it, and the answers come from the segment.
#[test]
fn recovery_deletes_a_kept_table_that_covers_more_than_the_mark() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fork = root.path().join("fork");
    let log = Log::open(&dir, options()).unwrap();
    append_rounds(&log, 0, 2);
    log.close().unwrap();
    copy_dir(&dir, &fork);

    // The log goes on with rounds 2 and 3 of the same keys, and is closed: its kept table
    // covers 4 rounds.
    let log = Log::open(&dir, options()).unwrap();
    append_rounds(&log, 2, 2);
    assert_streams(&log, 4);
    log.close().unwrap();

    // The fork goes on with as many events under other keys, and is killed.
    let log = Log::open(&fork, options()).unwrap();
    for n in 0..2 * KEYS {
        log.append(format!("other-{n}").as_bytes(), b"x").unwrap();
    }
    let image = root.path().join("image");
    copy_dir(&fork, &image);
    drop(log);
    fs::copy(keys_path(&dir, 0, 0), keys_path(&image, 0, 0)).unwrap();

    let log = Log::open(&image, options()).unwrap();
    assert!(
        !keys_path(&image, 0, 0).exists(),
        "a table past the mark is deleted at open"
    );
    assert_streams(&log, 2);
    assert_eq!(log.append(&key(3), b"2").unwrap().version, 2);
    for n in 0..2 * KEYS {
        assert_eq!(
            log.last_version(format!("other-{n}").as_bytes()).unwrap(),
            Some(0)
        );
    }
}

/// After a kill -9 (emulated: the directory copied while the log is open and idle, which is what
/// a killed process leaves, the page cache included), the table kept at the earlier close is
/// still within the mark and is used; the frames after it are walked.
#[test]
fn a_kept_table_survives_a_later_kill() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = Log::open(&dir, options()).unwrap();
    append_rounds(&log, 0, 2);
    assert_streams(&log, 2);
    log.close().unwrap();
    let log = Log::open(&dir, options()).unwrap();
    append_rounds(&log, 2, 2);
    let image = root.path().join("image");
    copy_dir(&dir, &image);
    drop(log);
    let log = Log::open(&image, options()).unwrap();
    assert!(
        keys_path(&image, 0, 0).exists(),
        "the kept table is within the mark"
    );
    assert_streams(&log, 4);
    assert_eq!(log.append(&key(0), b"4").unwrap().version, 4);
}
