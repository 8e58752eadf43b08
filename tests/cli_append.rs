//! `annal append`: a payload or stdin lines to one key, with expected versions and ids; it
//! prints where each event went; conflicts, missing and locked directories fail in one line.

mod cli_support;

use annal::{Log, Options};
use cli_support::*;

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn appends_print_where_each_event_went_and_land_in_the_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log").display().to_string();
    let first = annal(&[
        "append",
        &dir,
        "--create",
        "--partitions",
        "2",
        "--key",
        "account-7",
        "--expect",
        "none",
        "--header",
        "type=Opened",
        "opened",
    ])
    .expect_ok();
    assert!(first.starts_with("partition="), "{first}");
    assert!(
        first.contains(" offset=0 version=0 global=0 duplicate=false"),
        "{first}"
    );

    let lines = "deposit:10\ndeposit:20\nwithdraw:5\n";
    let out = annal_with_stdin(
        &[
            "append",
            &dir,
            "--key",
            "account-7",
            "--expect",
            "0",
            "--id",
            "a0",
            "--json",
        ],
        lines,
    )
    .expect_ok();
    let appended = json_lines(&out);
    assert_eq!(appended.len(), 3);
    for (i, a) in appended.iter().enumerate() {
        assert_eq!(a["version"], 1 + i as u64);
        assert_eq!(a["duplicate"], false);
    }

    // A retry of the second line's id writes nothing and returns the original place.
    let retry = annal(&[
        "append",
        &dir,
        "--key",
        "account-7",
        "--id",
        "a1",
        "--json",
        "deposit:20",
    ])
    .expect_ok();
    let retry = &json_lines(&retry)[0];
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["version"], 2);

    let log = Log::open(&dir, Options::default()).unwrap();
    let events = log.read_key(b"account-7", 0).unwrap();
    let payloads: Vec<&[u8]> = events.iter().map(|r| r.payload.as_ref()).collect();
    assert_eq!(
        payloads,
        [&b"opened"[..], b"deposit:10", b"deposit:20", b"withdraw:5"]
    );
    assert_eq!(events[0].header("type").unwrap().as_ref(), b"Opened");
    assert_eq!(events[2].event_id, Some(0xa1));
}

#[test]
fn a_wrong_expected_version_fails_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display().to_string();
    annal(&["append", &dir, "--create", "--key", "k", "one"]).expect_ok();
    let run = annal(&["append", &dir, "--key", "k", "--expect", "5", "two"]);
    run.expect_error(
        "expected version conflict on key k: expected last version 5, the last version is 0",
    );
    let run = annal(&["append", &dir, "--key", "k", "--expect", "none", "two"]);
    run.expect_error("the last version is 0");
    let log = Log::open(&dir, Options::default()).unwrap();
    assert_eq!(log.last_version(b"k").unwrap(), Some(0));
}

#[test]
fn a_missing_directory_is_not_created_without_create() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let run = annal(&[
        "append".as_ref(),
        missing.as_os_str(),
        "--key".as_ref(),
        "k".as_ref(),
        "x".as_ref(),
    ]);
    run.expect_error("does not exist");
    assert!(!missing.exists());
}

#[test]
fn a_locked_directory_fails_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let _held = Log::open(root.path(), Options::default()).unwrap();
    let run = annal(&[
        "append".as_ref(),
        root.path().as_os_str(),
        "--key".as_ref(),
        "k".as_ref(),
        "x".as_ref(),
    ]);
    run.expect_error("is open by another process");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display().to_string();
    let run = annal(&["append", &dir, "--key", "k", "--expect", "soon", "x"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("is not a version number"),
        "{}",
        run.stderr
    );
    let run = annal(&["append", &dir, "--key", "k", "--id", "xyz", "x"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}
