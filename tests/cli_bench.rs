//! `annal bench`: a run by event count prints one JSON object with throughput, latency
//! percentiles and the raw ceiling; a run in a given directory leaves a sound log and no
//! scratch file; consumers drain what producers append; bad arguments and a locked directory
//! fail clearly.

mod cli_support;

use annal::{Log, Options};
use cli_support::*;

#[test]
fn a_json_run_reports_throughput_latency_and_the_raw_ceiling() {
    let out = annal(&["bench", "--events", "3000", "--producers", "2", "--json"]).expect_ok();
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["events"], 3000);
    assert!(result["events_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(result["latency_us"]["of"], "append");
    let p50 = result["latency_us"]["p50"].as_f64().unwrap();
    let p99 = result["latency_us"]["p99"].as_f64().unwrap();
    let max = result["latency_us"]["max"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{result}");
    assert!(result["journal"]["syncs"].as_u64().unwrap() > 0);
    assert!(result["raw"]["syncs"].as_u64().unwrap() > 0);
    assert!(result["raw"]["bytes_per_sync"].as_u64().unwrap() > 0);
    assert!(result["percent_of_raw"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_run_in_a_directory_leaves_a_sound_log_and_no_scratch_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("bench");
    let dir_text = dir.display().to_string();
    let out = annal(&[
        "bench",
        "--dir",
        &dir_text,
        "--events",
        "1000",
        "--pipeline",
        "8",
        "--batch",
        "5",
        "--event-bytes",
        "200",
        "--durability",
        "interval:5",
        "--partitions",
        "3",
    ])
    .expect_ok();
    assert!(out.contains("latency of each ticket: p50"), "{out}");
    assert!(out.contains("% of the raw ceiling"), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let log = Log::open(&dir, Options::default()).unwrap();
    assert_eq!(log.partition_count(), 3);
    let events: u64 = (0..3).map(|p| log.end_offset(p).unwrap()).sum();
    assert_eq!(events, 1000);
    drop(log);
    annal(&["verify", &dir_text]).expect_ok();
}

#[test]
fn bad_arguments_and_a_locked_directory_fail_clearly() {
    let run = annal(&["bench", "--durability", "sometimes"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("interval:<ms>"), "{}", run.stderr);
    let run = annal(&["bench", "--producers", "0"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);

    let root = tempfile::tempdir().unwrap();
    let _held = Log::open(root.path(), Options::default()).unwrap();
    let run = annal(&[
        "bench".as_ref(),
        "--dir".as_ref(),
        root.path().as_os_str(),
        "--events".as_ref(),
        "10".as_ref(),
    ]);
    run.expect_error("is open by another process");
}

#[test]
fn consumers_drain_what_the_producers_append_and_commit_it_all() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("bench");
    let dir_text = dir.display().to_string();
    let out = annal(&[
        "bench",
        "--dir",
        &dir_text,
        "--events",
        "5000",
        "--producers",
        "2",
        "--durability",
        "buffered",
        "--consumers",
        "2",
        "--json",
    ])
    .expect_ok();
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let consumers = &result["consumers"];
    assert_eq!(consumers["members"], 2, "{result}");
    assert!(consumers["delivered"].as_u64().unwrap() >= 5000, "{result}");
    assert!(consumers["events_per_second"].as_f64().unwrap() > 0.0);
    // The bench deleted its group: the log left behind lists none.
    let log = Log::open(&dir, Options::default()).unwrap();
    let names = log.group_names().unwrap();
    assert!(names.is_empty(), "{names:?}");
    // Without --consumers, no group and no consumers field.
    let out = annal(&["bench", "--events", "100", "--json"]).expect_ok();
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(result["consumers"].is_null(), "{result}");
}
