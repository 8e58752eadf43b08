//! `annal stats`: partitions, segments, events, distinct keys, time range and snapshots of a
//! log, as text and as JSON, also while another process holds the log.

mod cli_support;

use annal::{Log, Options};
use cli_support::*;

#[test]
fn stats_count_what_the_log_holds_as_json_and_as_text() {
    let root = tempfile::tempdir().unwrap();
    sample_log(root.path());
    let dir = root.path().display().to_string();
    // While another process has the log open, too.
    let held = Log::open(root.path(), Options::default()).unwrap();
    let json = annal(&["stats", &dir, "--json"]).expect_ok();
    let stats: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(stats["partitions"], SAMPLE_PARTITIONS);
    assert_eq!(stats["events"], SAMPLE_EVENTS);
    assert_eq!(stats["distinct_keys"], SAMPLE_KEYS);
    assert_eq!(stats["snapshots"], 1);
    assert!(
        stats["segments"].as_u64().unwrap() >= 2 * u64::from(SAMPLE_PARTITIONS),
        "{stats}"
    );
    let first = stats["first_timestamp_ms"].as_u64().unwrap();
    let last = stats["last_timestamp_ms"].as_u64().unwrap();
    assert!(first <= last && last - first < 60_000, "{stats}");
    let per_partition = stats["per_partition"].as_array().unwrap();
    let ends: u64 = per_partition
        .iter()
        .map(|p| p["end_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, SAMPLE_EVENTS);
    for p in 0..SAMPLE_PARTITIONS {
        assert_eq!(
            per_partition[p as usize]["end_offset"],
            held.end_offset(p).unwrap()
        );
    }

    let text = annal(&["stats", &dir]).expect_ok();
    assert!(text.contains("4 partitions"), "{text}");
    assert!(text.contains("events: 6,000 in"), "{text}");
    assert!(text.contains("distinct keys: 40"), "{text}");
    assert!(text.contains("snapshots: 1"), "{text}");
}

#[test]
fn an_empty_log_has_no_events_and_no_time_range() {
    let root = tempfile::tempdir().unwrap();
    Log::open(root.path(), Options::default())
        .unwrap()
        .close()
        .unwrap();
    let text = annal(&["stats", &root.path().display().to_string()]).expect_ok();
    assert!(text.contains("events: 0 in 0 segments"), "{text}");
    assert!(text.contains("time range: no events"), "{text}");
}

#[test]
fn stats_of_a_missing_directory_fails_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    annal(&["stats".as_ref(), missing.as_os_str()]).expect_error("does not exist");
}

#[test]
fn stats_of_a_partition_whose_start_file_is_damaged_fails_and_names_it() {
    let root = tempfile::tempdir().unwrap();
    let (starts, ends) = retained_log(root.path(), 1, 3_000, 3);
    let dir = root.path().display().to_string();
    let json = annal(&["stats", &dir, "--json"]).expect_ok();
    let stats: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(stats["per_partition"][0]["start_offset"], starts[0]);
    assert_eq!(stats["events"], ends[0] - starts[0]);

    let path = root.path().join("p0000").join("start");
    flip_byte(&path, 3);
    annal(&["stats", &dir]).expect_error("the start file fails its checksum");
}
