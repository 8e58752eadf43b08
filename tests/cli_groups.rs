//! `annal groups`: committed cursors and lag per partition of every consumer group, through
//! `Log::open` and from the files while another process holds the log; `reset` and `seek`, and
//! their refusal while the log is held; dead letters listed, re-driven and discarded.

mod cli_support;

use std::path::Path;
use std::time::Duration;

use annal::{Durability, Log, Options};
use cli_support::*;
use serde_json::Value;

const PARTITIONS: u32 = 3;
const EVENTS: u32 = 60;

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Buffered)
}

/// A closed log of `EVENTS` events with two groups: `g` committed a first batch of 25 events
/// (some partitions partly), `h` committed everything. Returns what the library says of each:
/// (committed, lag) per group.
fn group_log(dir: &Path) -> [(Vec<u64>, Vec<u64>); 2] {
    let log = Log::open(dir, options()).unwrap();
    for i in 0..EVENTS {
        log.append(
            format!("key-{}", i % 7).as_bytes(),
            format!("event {i}").as_bytes(),
        )
        .unwrap();
    }
    log.flush().unwrap();
    let mut g = log.group("g").unwrap().join().unwrap();
    let batch = g.poll(25, Duration::from_millis(100)).unwrap();
    assert_eq!(batch.len(), 25);
    g.commit(&batch).unwrap();
    let mut h = log.group("h").unwrap().join().unwrap();
    let batch = h.poll(EVENTS as usize, Duration::from_millis(100)).unwrap();
    assert_eq!(batch.len(), EVENTS as usize);
    h.commit(&batch).unwrap();
    drop((g, h));
    log.flush().unwrap();
    let said = ["g", "h"].map(|name| {
        let group = log.group(name).unwrap();
        (group.committed(), group.lag())
    });
    log.close().unwrap();
    said
}

fn list_json(dir: &Path) -> Value {
    let out = annal(&["groups".as_ref(), dir.as_os_str(), "--json".as_ref()]).expect_ok();
    serde_json::from_str(out.trim()).unwrap()
}

/// (committed, lag) per partition of one group of the list's JSON.
fn cursors_of(list: &Value, name: &str) -> (Vec<u64>, Vec<u64>) {
    let group = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {list}"));
    cursors(group)
}

fn cursors(group: &Value) -> (Vec<u64>, Vec<u64>) {
    let partitions = group["partitions"].as_array().unwrap();
    let field = |f: &str| partitions.iter().map(|p| p[f].as_u64().unwrap()).collect();
    let (committed, lag): (Vec<u64>, Vec<u64>) = (field("committed"), field("lag"));
    assert_eq!(group["total_lag"], lag.iter().sum::<u64>(), "{group}");
    (committed, lag)
}

fn groups(dir: &Path, args: &[&str]) -> Run {
    let mut all: Vec<&std::ffi::OsStr> = vec!["groups".as_ref(), dir.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    annal(&all)
}

#[test]
fn the_list_shows_what_the_library_says_as_json_and_as_text() {
    let root = tempfile::tempdir().unwrap();
    let [g, h] = group_log(root.path());
    assert!(g.1.iter().sum::<u64>() > 0 && h.1.iter().all(|&lag| lag == 0));

    let list = list_json(root.path());
    assert_eq!(list["read_from"], "log", "{list}");
    assert_eq!(list["partitions"], PARTITIONS);
    assert_eq!(list["groups"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(cursors_of(&list, "g"), g);
    assert_eq!(cursors_of(&list, "h"), h);
    assert_eq!(
        list["groups"][0]["dead_letters"],
        serde_json::json!([]),
        "{list}"
    );
    assert_eq!(list["groups"][0]["retrying"], 0, "{list}");

    let text = groups(root.path(), &[]).expect_ok();
    assert!(text.contains("2 groups, 3 partitions"), "{text}");
    assert!(text.contains("read through Log::open"), "{text}");
    let total: u64 = g.1.iter().sum();
    assert!(
        text.contains(&format!("group g: total lag {total}")),
        "{text}"
    );
    assert!(text.contains("group h: total lag 0"), "{text}");

    let help = annal(&["groups", "--help"]).expect_ok();
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("redrive projections --key"), "{help}");
}

/// A log whose group `d` parked key `poison` (its two events) and has key `slow` waiting for
/// a retry.
fn dead_letter_log(dir: &Path) {
    let log = Log::open(dir, options()).unwrap();
    log.append(b"poison", "p0").unwrap();
    log.append(b"poison", "p1").unwrap();
    log.append(b"slow", "s0").unwrap();
    log.flush().unwrap();
    let group = log.group("d").unwrap();
    group
        .set_retry_policy(annal::RetryPolicy {
            max_attempts: 1,
            backoff_initial: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
        })
        .unwrap();
    let mut member = group.join().unwrap();
    let batch = member.poll(100, Duration::from_millis(100)).unwrap();
    let first = |key: &[u8]| batch.iter().find(|d| d.record.key == key).unwrap();
    member.nack(first(b"poison"), "cannot parse").unwrap();
    member.commit(&batch).unwrap();
    group
        .set_retry_policy(annal::RetryPolicy {
            max_attempts: 5,
            backoff_initial: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
        })
        .unwrap();
    drop(member);
    log.close().unwrap();
    // `slow` waits an hour for its retry: nack it in a second process life.
    let log = Log::open(dir, options()).unwrap();
    log.append(b"slow", "s1").unwrap();
    let group = log.group("d").unwrap();
    group
        .set_retry_policy(annal::RetryPolicy {
            max_attempts: 5,
            backoff_initial: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
        })
        .unwrap();
    let mut member = group.join().unwrap();
    let batch = member.poll(100, Duration::from_millis(100)).unwrap();
    let slow = batch
        .iter()
        .find(|d| d.record.key == b"slow".as_slice())
        .unwrap();
    member.nack(slow, "later").unwrap();
    member.commit(&batch).unwrap();
    drop(member);
    log.close().unwrap();
}

#[test]
fn dead_letters_are_listed_redriven_and_discarded() {
    let root = tempfile::tempdir().unwrap();
    dead_letter_log(root.path());
    let list = list_json(root.path());
    let d = &list["groups"][0];
    assert_eq!(d["retrying"], 1, "{list}");
    let dead = d["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{list}");
    assert_eq!(
        (&dead[0]["key"], &dead[0]["attempts"], &dead[0]["reason"]),
        (&"poison".into(), &1.into(), &"cannot parse".into()),
        "{list}"
    );
    let text = groups(root.path(), &[]).expect_ok();
    assert!(
        text.contains("1 waiting for a retry, 1 dead letter"),
        "{text}"
    );
    assert!(
        text.contains("key \"poison\", 1 attempts: cannot parse"),
        "{text}"
    );

    // While another process holds the log, the files say the same.
    let held = Log::open(root.path(), options()).unwrap();
    let from_files = list_json(root.path());
    assert_eq!(from_files["read_from"], "files");
    assert_eq!(from_files["groups"][0]["dead_letters"], d["dead_letters"]);
    assert_eq!(from_files["groups"][0]["retrying"], 1);
    drop(held);

    groups(root.path(), &["discard", "d", "--key", "slow"]).expect_error("no dead letter");
    groups(root.path(), &["redrive", "d", "--all"]).expect_ok();
    let log = Log::open(root.path(), options()).unwrap();
    let group = log.group("d").unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    let mut member = group.join().unwrap();
    let batch = member.poll(100, Duration::from_millis(100)).unwrap();
    let poison: Vec<&[u8]> = batch
        .iter()
        .filter(|d| d.record.key == b"poison".as_slice())
        .map(|d| d.record.payload.as_ref())
        .collect();
    assert_eq!(poison, [b"p0".as_slice(), b"p1"], "re-driven in order");
    drop(member);
    drop(group);
    log.close().unwrap();

    let root = tempfile::tempdir().unwrap();
    dead_letter_log(root.path());
    let out = groups(root.path(), &["discard", "d", "--key", "poison"]).expect_ok();
    assert!(out.contains("discarded"), "{out}");
    assert_eq!(
        list_json(root.path())["groups"][0]["dead_letters"],
        serde_json::json!([])
    );
}

#[test]
fn a_log_held_by_another_process_is_listed_from_its_files_and_not_reset() {
    let root = tempfile::tempdir().unwrap();
    let [g, h] = group_log(root.path());
    let held = Log::open(root.path(), options()).unwrap();
    // One more commit while held, flushed: the files show it as the library does.
    held.append(b"key-late", "late").unwrap();
    let group = held.group("h").unwrap();
    let mut member = group.join().unwrap();
    let batch = member.poll(100, Duration::from_millis(100)).unwrap();
    assert_eq!(batch.len(), 1);
    member.commit(&batch).unwrap();
    held.flush().unwrap();
    let h_now = (group.committed(), group.lag());
    assert_ne!(h_now.0, h.0);

    let list = list_json(root.path());
    assert_eq!(list["read_from"], "files", "{list}");
    assert!(list["note"].as_str().unwrap().contains("commit"), "{list}");
    let late = held.partition_for(b"key-late") as usize;
    let mut g_now = g.clone();
    g_now.1[late] += 1;
    assert_eq!(cursors_of(&list, "g"), g_now);
    assert_eq!(cursors_of(&list, "h"), h_now);
    let text = groups(root.path(), &[]).expect_ok();
    assert!(text.contains("read from the files"), "{text}");

    for args in [
        &["reset", "g", "--to", "latest"][..],
        &["seek", "g", "--partition", "0", "--offset", "0"],
    ] {
        groups(root.path(), args).expect_error("is open by another process");
        let run = groups(root.path(), args);
        assert!(
            run.stderr.contains("needs the log closed"),
            "{}",
            run.stderr
        );
    }
    drop((member, group));
    held.close().unwrap();
    // Nothing was moved.
    assert_eq!(cursors_of(&list_json(root.path()), "g"), g_now);
}

#[test]
fn reset_and_seek_move_the_cursors_and_print_them() {
    let root = tempfile::tempdir().unwrap();
    let [g, _] = group_log(root.path());

    let text = groups(root.path(), &["reset", "g", "--to", "latest"]).expect_ok();
    assert!(text.contains("group g: reset to latest"), "{text}");
    let (committed, lag) = cursors_of(&list_json(root.path()), "g");
    assert_eq!(lag, [0; PARTITIONS as usize]);
    let ends: Vec<u64> = committed.clone();
    assert_eq!(ends.iter().sum::<u64>(), u64::from(EVENTS));

    let out = groups(
        root.path(),
        &["seek", "g", "--partition", "1", "--offset", "2", "--json"],
    )
    .expect_ok();
    let after: Value = serde_json::from_str(out.trim()).unwrap();
    let (committed, lag) = cursors(&after["group"]);
    assert_eq!(committed[1], 2, "{after}");
    assert_eq!(lag[1], ends[1] - 2, "{after}");
    assert_eq!((committed[0], lag[0]), (ends[0], 0));
    assert_eq!(cursors_of(&list_json(root.path()), "g"), (committed, lag));

    // A time before every event is the earliest offsets.
    groups(root.path(), &["reset", "g", "--to", "0"]).expect_ok();
    let (committed, lag) = cursors_of(&list_json(root.path()), "g");
    assert_eq!(committed, [0; PARTITIONS as usize]);
    assert_eq!(lag, ends);
    assert_ne!(committed, g.0);

    // Past the end, or a partition that does not exist: one line, nothing moved.
    let past = (ends[0] + 1).to_string();
    groups(
        root.path(),
        &["seek", "g", "--partition", "0", "--offset", &past],
    )
    .expect_error("past the end of partition 0");
    groups(
        root.path(),
        &["seek", "g", "--partition", "9", "--offset", "0"],
    )
    .expect_error("partition 9 does not exist");
    assert_eq!(
        cursors_of(&list_json(root.path()), "g").0,
        [0; PARTITIONS as usize]
    );
}

#[test]
fn errors_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    groups(&missing, &[]).expect_error("does not exist");
    groups(&missing, &["reset", "g", "--to", "latest"]).expect_error("does not exist");

    let dir = root.path().join("log");
    group_log(&dir);
    groups(&dir, &["reset", "nobody", "--to", "latest"]).expect_error("no group \"nobody\"");
    groups(
        &dir,
        &["seek", "nobody", "--partition", "0", "--offset", "0"],
    )
    .expect_error("it has g, h");
    let run = groups(&dir, &["reset", "g", "--to", "yesterday"]);
    run.expect_error("not earliest, latest or a time");
    assert_eq!(run.code, Some(2));
    // The unknown group was not created by the attempt.
    assert_eq!(list_json(&dir)["groups"].as_array().unwrap().len(), 2);

    // A log without groups lists none.
    let empty = root.path().join("empty");
    Log::open(&empty, options()).unwrap().close().unwrap();
    let text = groups(&empty, &[]).expect_ok();
    assert!(text.contains("0 groups"), "{text}");
}
