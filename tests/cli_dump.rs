//! `annal dump`: records of a log directory (by partition, offset, count, key), and each kind
//! of file decoded on its own; it reads a log that another process holds; errors are one line.

mod cli_support;

use std::path::Path;
use std::sync::OnceLock;

use annal::{Log, Options};
use cli_support::*;
use tempfile::TempDir;

fn sample() -> &'static Path {
    static SAMPLE: OnceLock<TempDir> = OnceLock::new();
    SAMPLE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            sample_log(dir.path());
            dir
        })
        .path()
}

fn dump(args: &[&str]) -> String {
    let mut all = vec!["dump".to_owned(), sample().display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    annal(&all).expect_ok()
}

#[test]
fn a_directory_dumps_every_record_once() {
    let out = dump(&["--preview", "0"]);
    assert_eq!(out.lines().count() as u64, SAMPLE_EVENTS);
    let line = out.lines().next().unwrap();
    for field in [
        "partition=0",
        "offset=0",
        "version=",
        "global=",
        "time=",
        "key=\"order-",
        "id=",
        "header.type=",
        "payload=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[test]
fn partition_from_and_count_select_records() {
    let out = dump(&[
        "--partition",
        "2",
        "--from",
        "100",
        "--count",
        "5",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["partition"], 2);
        assert_eq!(row["offset"], 100 + i as u64);
        assert!(row["payload"].as_str().unwrap().starts_with("{\"n\":"));
    }
}

#[test]
fn a_key_dumps_its_events_in_version_order_through_the_key_tables() {
    // Through `Log::open`, which recovers (and so writes): on a copy.
    let root = tempfile::tempdir().unwrap();
    copy_dir(sample(), root.path());
    let key = sample_key(7);
    let dir = root.path().display().to_string();
    let run = annal(&["dump", &dir, "--key", &key, "--from", "10", "--json"]);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let out = run.expect_ok();
    let versions: Vec<u64> = json_u64s(&out, "version");
    let expected: Vec<u64> = (10..SAMPLE_EVENTS / SAMPLE_KEYS).collect();
    assert_eq!(versions, expected);
}

#[test]
fn a_key_is_dumped_from_the_files_while_another_process_holds_the_log() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(sample(), root.path());
    let _held = Log::open(root.path(), Options::default()).unwrap();
    let key = sample_key(3);
    let run = annal(&[
        "dump",
        &root.path().display().to_string(),
        "--key",
        &key,
        "--count",
        "4",
    ]);
    assert!(
        run.stderr.contains("is open by another process"),
        "{}",
        run.stderr
    );
    let out = run.expect_ok();
    assert_eq!(out.lines().count(), 4);
    for (version, line) in out.lines().enumerate() {
        assert!(line.contains(&format!("version={version} ")), "{line}");
        assert!(line.contains(&format!("key=\"{key}\"")), "{line}");
    }
    // A whole directory too.
    let all = annal(&["dump", &root.path().display().to_string(), "--preview", "0"]).expect_ok();
    assert_eq!(all.lines().count() as u64, SAMPLE_EVENTS);
}

#[test]
fn each_kind_of_file_is_decoded() {
    let seg = &files(sample(), 1, "seg")[0];
    let out = annal(&[
        "dump".as_ref(),
        seg.as_os_str(),
        "--count".as_ref(),
        "3".as_ref(),
    ])
    .expect_ok();
    assert!(
        out.starts_with(&format!(
            "segment {}: partition 1, base offset 0",
            seg.display()
        )),
        "{out}"
    );
    assert!(out.contains("frame at byte 64:"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("partition=1 "))
            .count(),
        3,
        "{out}"
    );

    let idx = &files(sample(), 1, "idx")[0];
    let out = annal(&["dump".as_ref(), idx.as_os_str()]).expect_ok();
    assert!(out.contains("base offset 0, interval 4096 bytes"), "{out}");
    assert!(
        out.contains("entry at byte 32: offset 0 at segment byte 64"),
        "{out}"
    );

    let keys = &files(sample(), 1, "keys")[0];
    let out = annal(&["dump".as_ref(), keys.as_os_str()]).expect_ok();
    assert!(out.contains("header and body checksums hold"), "{out}");
    assert!(out.contains("key entries (frames): "), "{out}");

    let meta = sample().join("annal.meta");
    let out = annal(&["dump".as_ref(), meta.as_os_str()]).expect_ok();
    assert!(out.contains("format version 2, 4 partitions"), "{out}");

    let journal = sample().join("annal.journal");
    let out = annal(&["dump".as_ref(), journal.as_os_str()]).expect_ok();
    assert!(out.contains(": checkpoint "), "{out}");
    assert!(out.contains("partition 3: segment"), "{out}");
}

#[test]
fn a_damaged_file_fails_with_its_byte() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(sample(), root.path());
    let idx = files(root.path(), 0, "idx")[0].clone();
    flip_byte(&idx, 3);
    let run = annal(&["dump".as_ref(), idx.as_os_str()]);
    run.expect_error(&format!("corrupt data in {} at byte 0", idx.display()));
}

#[test]
fn errors_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    annal(&["dump".as_ref(), missing.as_os_str()]).expect_error("does not exist");
    annal(&["dump".as_ref(), root.path().as_os_str()]).expect_error("has no annal.meta");
    let stray = root.path().join("notes.txt");
    std::fs::write(&stray, "hello").unwrap();
    annal(&["dump".as_ref(), stray.as_os_str()]).expect_error("is not a file dump reads");
    let out_of_range = annal(&["dump", &sample().display().to_string(), "--partition", "9"]);
    out_of_range.expect_error("partition 9 does not exist");
}
