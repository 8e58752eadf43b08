//! `annal tail`: what is visible, in global order (or one key's, or one partition's), from a
//! global position; `--follow` prints events appended by another process as they arrive.

mod cli_support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use annal::{Durability, Log, Options};
use cli_support::*;

fn globals(out: &str) -> Vec<u64> {
    json_u64s(out, "global_position")
}

#[test]
fn tail_prints_what_is_visible_in_global_order_and_exits() {
    let root = tempfile::tempdir().unwrap();
    sample_log(root.path());
    let dir = root.path().display().to_string();
    let all = annal(&["tail", &dir, "--json"]).expect_ok();
    assert_eq!(globals(&all), (0..SAMPLE_EVENTS).collect::<Vec<_>>());

    let from = annal(&["tail", &dir, "--json", "--from-global", "5990"]).expect_ok();
    assert_eq!(globals(&from), (5990..SAMPLE_EVENTS).collect::<Vec<_>>());

    let key = sample_key(5);
    let by_key = annal(&[
        "tail",
        &dir,
        "--json",
        "--key",
        &key,
        "--from-global",
        "4000",
    ])
    .expect_ok();
    let rows: Vec<serde_json::Value> = by_key
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, (SAMPLE_EVENTS - 4000) / SAMPLE_KEYS);
    assert!(rows
        .iter()
        .all(|r| r["key"] == key.as_str() && r["global_position"].as_u64().unwrap() >= 4000));
    assert!(rows
        .windows(2)
        .all(|w| w[0]["version"].as_u64() < w[1]["version"].as_u64()));

    let partition = annal(&["tail", &dir, "--json", "--partition", "3"]).expect_ok();
    let offsets: Vec<u64> = json_u64s(&partition, "offset");
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    assert!(!offsets.is_empty());
}

#[test]
fn follow_prints_events_appended_by_another_writer_as_they_arrive() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(
        root.path(),
        Options::default()
            .partitions(3)
            .durability(Durability::Sync),
    )
    .unwrap();
    for i in 0..3 {
        log.append(format!("k{i}").as_bytes(), b"before").unwrap();
    }
    let mut child = annal_command()
        .args([
            "tail",
            &root.path().display().to_string(),
            "--follow",
            "--json",
            "--count",
            "8",
            "--poll",
            "10ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        log.append(format!("k{i}").as_bytes(), b"after").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tail --follow --count 8 did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(globals(&out), (0..8).collect::<Vec<_>>());
    assert_eq!(out.matches("\"after\"").count(), 5);
    log.close().unwrap();
}

#[test]
fn tail_errors_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    annal(&["tail".as_ref(), missing.as_os_str()]).expect_error("does not exist");
    let run = annal(&[
        "tail".as_ref(),
        root.path().as_os_str(),
        "--key".as_ref(),
        "a".as_ref(),
        "--partition".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(run.code, Some(2), "a usage error: {}", run.stderr);
}

/// `--poll 60s` bounds the wait: an event arriving well before that is printed because the
/// write woke the follower (inotify), not because it looked again.
#[test]
fn follow_is_woken_by_the_write_not_by_its_poll_interval() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(
        root.path(),
        Options::default()
            .partitions(2)
            .durability(Durability::Sync),
    )
    .unwrap();
    log.append(b"k", b"before").unwrap();
    let mut child = annal_command()
        .args([
            "tail",
            &root.path().display().to_string(),
            "--follow",
            "--json",
            "--count",
            "2",
            "--poll",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it print the first event and start waiting.
    std::thread::sleep(Duration::from_millis(300));
    let appended = Instant::now();
    log.append(b"k", b"after").unwrap();
    let deadline = appended + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("tail --follow was not woken by the append; it printed {out:?}, {err:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let waited = appended.elapsed();
    assert!(child.wait().unwrap().success());
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.matches("\"after\"").count(), 1, "{out}");
    log.close().unwrap();
}

#[test]
fn a_log_shortened_by_retention_is_read_from_its_start() {
    let root = tempfile::tempdir().unwrap();
    let (starts, ends) = retained_log(root.path(), 2, 4_000, 5);
    assert!(starts.iter().all(|&s| s > 0));
    let dir = root.path().display().to_string();
    for p in 0..2u32 {
        let out = annal(&["tail", &dir, "--partition", &p.to_string(), "--json"]).expect_ok();
        let offsets: Vec<u64> = json_u64s(&out, "offset");
        let expected: Vec<u64> = (starts[p as usize]..ends[p as usize]).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
    let all = annal(&["tail", &dir, "--json"]).expect_ok();
    let total: u64 = starts.iter().zip(&ends).map(|(s, e)| e - s).sum();
    assert_eq!(
        all.lines().count() as u64,
        total,
        "the global order skips what was deleted"
    );
    let stats = annal(&["stats", &dir, "--json"]).expect_ok();
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["events"], total);
    assert_eq!(stats["per_partition"][0]["start_offset"], starts[0]);
}

#[test]
fn a_log_shortened_by_retention_with_an_empty_partition_is_read_whole_in_global_order() {
    let root = tempfile::tempdir().unwrap();
    // Two keys in four partitions: at least two partitions never get an event.
    let (starts, ends) = retained_log(root.path(), 4, 4_000, 2);
    let dir = root.path().display().to_string();
    let all = annal(&["tail", &dir, "--json"]).expect_ok();
    let positions: Vec<u64> = json_u64s(&all, "global_position");
    let total: u64 = starts.iter().zip(&ends).map(|(s, e)| e - s).sum();
    assert_eq!(positions.len() as u64, total, "{starts:?} {ends:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in global order");
}
