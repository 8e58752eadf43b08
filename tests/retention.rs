//! Retention: age and bytes limits delete whole sealed segments from the oldest end, never the
//! one being written, never what a checkpoint still needs; interest-based retention keeps what a
//! group has not settled; reads below the start are typed errors; a group that fell behind is
//! moved up and told; the global order skips what was deleted; all of it survives a reopen.

use std::time::{Duration, Instant};

use annal::{Durability, Error, Log, Options};

const EVENT: [u8; 1000] = [7; 1000];

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Buffered)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

/// Appends `count` events of 1,000 bytes under a few keys; returns the end offset.
fn append(log: &Log, count: u32) -> u64 {
    for i in 0..count {
        log.append(format!("key-{}", i % 5).as_bytes(), &EVENT[..])
            .unwrap();
    }
    log.flush().unwrap();
    log.end_offset(0).unwrap()
}

fn segment_files(dir: &std::path::Path, partition: &str) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir.join(partition)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        // The background retention may remove a file between the listing and its stat.
        if let (true, Ok(meta)) = (name.ends_with(".seg"), entry.metadata()) {
            count += 1;
            bytes += meta.len();
        }
    }
    (count, bytes)
}

/// Every record from the partition's start, checked contiguous; returns its offsets.
fn read_from_start(log: &Log) -> Vec<u64> {
    let start = log.start_offset(0).unwrap();
    let offsets: Vec<u64> = log
        .read(0, start)
        .unwrap()
        .map(|r| r.unwrap().offset)
        .collect();
    let expected: Vec<u64> = (start..log.end_offset(0).unwrap()).collect();
    assert_eq!(offsets, expected);
    offsets
}

#[test]
fn a_bytes_limit_deletes_the_oldest_segments_and_reads_below_the_start_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().retention_bytes_max(256 << 10)).unwrap();
    let end = append(&log, 3_000);
    let (files_before, _) = segment_files(dir.path(), "p0000");
    let report = log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    // The background runs (after rolls) may have deleted every segment the limit lets go
    // before this call: then it deletes none, and the start says what went.
    assert_eq!(report.starts, [start], "{report:?}");
    assert!(start > 0 && start < end);
    let (files_after, bytes_after) = segment_files(dir.path(), "p0000");
    // The background runs may have deleted some first.
    assert!(files_before - files_after >= report.segments_deleted as usize);
    // Only segments the last checkpoint is past may go: a few may be left over the limit.
    assert!(files_after >= 2, "never the segment being written");
    assert!(bytes_after < 3_000 * 1_000 / 2, "{bytes_after}");

    assert!(matches!(
        log.read(0, start - 1),
        Err(Error::OffsetBelowStart { offset, start: s, .. }) if offset == start - 1 && s == start
    ));
    read_from_start(&log);
    // A key's history starts at its first event left.
    let history = log.read_key(b"key-0", 0).unwrap();
    assert!(history[0].version > 0 && history[0].offset >= start);
    let versions: Vec<u64> = history.iter().map(|r| r.version).collect();
    let first = versions[0];
    assert_eq!(
        versions,
        (first..first + versions.len() as u64).collect::<Vec<_>>()
    );
    // Appends go on at the end; the start survives a reopen.
    log.append(b"key-0", b"after").unwrap();
    log.close().unwrap();
    let log = Log::open(dir.path(), options().retention_bytes_max(256 << 10)).unwrap();
    assert_eq!(log.start_offset(0).unwrap(), start);
    assert_eq!(log.end_offset(0).unwrap(), end + 1);
    assert_eq!(read_from_start(&log).last(), Some(&end));
}

#[test]
fn an_age_limit_deletes_segments_whose_events_are_older() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        options().retention_age_max(Duration::from_secs(1)),
    )
    .unwrap();
    append(&log, 1_500);
    log.enforce_retention().unwrap();
    assert_eq!(log.start_offset(0).unwrap(), 0, "nothing is old yet");
    std::thread::sleep(Duration::from_millis(1_200));
    let old_end = log.end_offset(0).unwrap();
    append(&log, 1_500);
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(
        start > 0 && start <= old_end,
        "only the old events: {start} {old_end}"
    );
    read_from_start(&log);
}

#[test]
fn retention_runs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().retention_bytes_max(128 << 10)).unwrap();
    append(&log, 3_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.start_offset(0).unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "no segment deleted in the background"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    read_from_start(&log);
}

#[test]
fn interest_based_retention_keeps_what_a_group_has_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        options()
            .retention_until_consumed(true)
            .retention_bytes_max(64 << 10),
    )
    .unwrap();
    let end = append(&log, 3_000);
    // No group: nothing is consumed, nothing goes.
    assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);

    let group = log.group("slow").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(500, Duration::from_millis(100)).unwrap();
    consumer.commit(&batch).unwrap();
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(start <= 500, "the group still needs offset 500: {start}");

    // A parked key pins its events too.
    group
        .set_retry_policy(annal::RetryPolicy {
            max_attempts: 1,
            ..annal::RetryPolicy::default()
        })
        .unwrap();
    let batch = consumer.poll(500, Duration::from_millis(100)).unwrap();
    let parked = batch.deliveries[0].record.offset;
    consumer.nack(&batch.deliveries[0], "poison").unwrap();
    consumer.commit(&batch).unwrap();
    drain(&mut consumer);
    assert_eq!(group.committed(), [end]);
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(
        start <= parked,
        "the dead letter at {parked} is kept: {start}"
    );
    assert!(start > 0);

    group
        .discard(&group.dead_letters().unwrap()[0].key)
        .unwrap();
    drain(&mut consumer);
    log.enforce_retention().unwrap();
    assert!(log.start_offset(0).unwrap() > parked);
    read_from_start(&log);
}

fn drain(consumer: &mut annal::Consumer) {
    loop {
        let batch = consumer.poll(1_000, Duration::from_millis(10)).unwrap();
        consumer.commit(&batch).unwrap();
        if batch.is_empty() {
            return;
        }
    }
}

#[test]
fn a_group_behind_the_start_is_moved_up_and_told_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().retention_bytes_max(128 << 10)).unwrap();
    let group = log.group("late").unwrap();
    let end = append(&log, 3_000);
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(start > 0);
    let mut consumer = group.join().unwrap();
    match consumer.poll(100, Duration::from_millis(10)) {
        Err(Error::EventsExpired {
            group,
            partition: 0,
            from: 0,
            to,
        }) => assert_eq!((group.as_str(), to), ("late", start)),
        other => panic!("expected EventsExpired, got {other:?}"),
    }
    let batch = consumer.poll(100, Duration::from_millis(10)).unwrap();
    assert_eq!(batch.deliveries[0].record.offset, start);
    consumer.commit(&batch).unwrap();
    drain(&mut consumer);
    assert_eq!(group.committed(), [end]);
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let mut consumer = log.group("late").unwrap().join().unwrap();
    assert!(consumer
        .poll(10, Duration::from_millis(10))
        .unwrap()
        .is_empty());
}

#[test]
fn the_global_order_skips_what_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = options().partitions(2).retention_bytes_max(128 << 10);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    // Partition of "a" gets many events, the other few: only the first loses segments.
    let (a, b) = (b"a".as_slice(), b"b".as_slice());
    let pa = log.partition_for(a);
    let other = [b"b".as_slice(), b"c", b"d", b"e", b"f"]
        .into_iter()
        .find(|k| log.partition_for(k) != pa)
        .unwrap();
    let _ = b;
    for i in 0..3_000 {
        let key = if i % 100 == 0 { other } else { a };
        log.append(key, &EVENT[..]).unwrap();
    }
    log.flush().unwrap();
    log.enforce_retention().unwrap();
    assert!(log.start_offset(pa).unwrap() > 0);
    let mut left = Vec::new();
    for p in 0..2 {
        let start = log.start_offset(p).unwrap();
        left.extend(
            log.read(p, start)
                .unwrap()
                .map(|r| r.unwrap().global_position),
        );
    }
    left.sort_unstable();
    let all: Vec<u64> = log
        .read_all(0)
        .unwrap()
        .map(|r| r.unwrap().global_position)
        .collect();
    assert_eq!(all, left);
}

/// The bytes of a partition's start file (`docs/format.md`).
fn start_file(start: u64) -> Vec<u8> {
    let mut bytes = start.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes
}

fn segment_names(partition: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(partition)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_deletion_cut_short_by_a_crash_is_finished_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let log = Log::open(dir.path(), options()).unwrap();
        let end = append(&log, 1_000);
        log.close().unwrap();
        end
    };
    // As a crash after retention recorded the new start (the third segment's base), with the
    // first segment's file removed and the second's not yet.
    let partition = dir.path().join("p0000");
    let names = segment_names(&partition);
    let base = |name: &str| name.trim_end_matches(".seg").parse::<u64>().unwrap();
    let start = base(&names[2]);
    std::fs::write(partition.join("start"), start_file(start)).unwrap();
    std::fs::remove_file(partition.join(&names[0])).unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.start_offset(0).unwrap(), start);
    assert_eq!(log.end_offset(0).unwrap(), end);
    read_from_start(&log);
    for gone in &names[..2] {
        let stem = gone.trim_end_matches(".seg");
        for entry in std::fs::read_dir(&partition).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with(stem), "{name} left behind");
        }
    }
    drop(log);

    // A damaged start file is refused, not guessed.
    let mut bytes = start_file(start);
    bytes[0] ^= 1;
    std::fs::write(partition.join("start"), bytes).unwrap();
    assert!(matches!(
        Log::open(dir.path(), options()),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn a_first_segment_lost_without_retention_is_damage_not_a_new_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), options()).unwrap();
        append(&log, 1_000);
        log.close().unwrap();
    }
    let partition = dir.path().join("p0000");
    std::fs::remove_file(partition.join(&segment_names(&partition)[0])).unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.start_offset(0).unwrap(), 0);
    let first = log.read(0, 0).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::Corrupt { .. })), "{first:?}");
}

#[test]
fn the_groups_partition_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().retention_bytes_max(1)).unwrap();
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    for _ in 0..200 {
        append(&log, 10);
        let batch = consumer.poll(100, Duration::from_millis(10)).unwrap();
        consumer.commit(&batch).unwrap();
    }
    log.enforce_retention().unwrap();
    let groups_before = segment_files(dir.path(), "groups");
    log.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "groups"), groups_before);
    assert!(log.start_offset(0).unwrap() > 0);
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.group("g").unwrap().committed(), [2_000]);
}

/// A `Sync` log with interest-based retention and fail points, holding 80 batches of 50 events.
fn interest_log(dir: &std::path::Path) -> (Log, std::sync::Arc<annal::io::FailPoints>) {
    let fail_points = annal::io::FailPoints::new();
    let options = options()
        .durability(Durability::Sync)
        .retention_until_consumed(true)
        .fail_points(fail_points.clone());
    let log = Log::open(dir, options).unwrap();
    let batch: Vec<annal::Event<'_>> = (0..50).map(|_| annal::Event::new(&EVENT[..])).collect();
    for i in 0..80 {
        log.append_batch(format!("key-{}", i % 5).as_bytes(), &batch)
            .unwrap();
    }
    (log, fail_points)
}

/// A commit not yet durable does not count: its fsync fails here (the log is poisoned), so the
/// group's durable cursor stays where it was, and nothing it still needs may go.
#[test]
fn interest_based_retention_waits_for_commits_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, fail_points) = interest_log(dir.path());
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(1_000, Duration::from_millis(100)).unwrap();
    consumer.commit(&first).unwrap();
    let durable = group.committed()[0];
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(start <= durable);
    // The rest is committed in memory, but its record's fsync fails.
    let rest = consumer.poll(10_000, Duration::from_millis(100)).unwrap();
    assert!(!rest.is_empty());
    fail_points.fail_syncs(1);
    let ticket = consumer.commit_pipelined(&rest).unwrap().expect("a commit");
    assert!(ticket.wait().is_err());
    assert!(group.committed()[0] > durable, "committed in memory");
    log.enforce_retention().unwrap();
    assert!(
        log.start_offset(0).unwrap() <= durable,
        "deleted what only a lost commit had settled: start {}, durable cursor {durable}",
        log.start_offset(0).unwrap()
    );
}

/// Bug (found by review): a group's first commit, whose fsync failed, counted for interest-based
/// retention: with no visible record of the group, only its in-memory commit was taken, and the
/// segments it settled were deleted although a crash would bring the group back at 0.
#[test]
fn interest_based_retention_waits_for_a_new_groups_first_commit_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, fail_points) = interest_log(dir.path());
    let group = log.group("new").unwrap();
    let mut consumer = group.join().unwrap();
    let all = consumer.poll(10_000, Duration::from_millis(100)).unwrap();
    assert!(!all.is_empty());
    fail_points.fail_syncs(1);
    let ticket = consumer.commit_pipelined(&all).unwrap().expect("a commit");
    assert!(ticket.wait().is_err());
    assert!(group.committed()[0] > 0, "committed in memory");
    log.enforce_retention().unwrap();
    assert_eq!(
        log.start_offset(0).unwrap(),
        0,
        "deleted what only the group's lost first commit had settled"
    );
}

/// Options for the retry tests: `Sync`, at most 128 KiB kept.
fn retry_options() -> Options {
    options()
        .retention_bytes_max(128 << 10)
        .durability(Durability::Sync)
}

/// Group "g" of `log`, retrying at once, up to 5 attempts.
fn retrying_group(log: &Log) -> annal::Group {
    let group = log.group("g").unwrap();
    group
        .set_retry_policy(annal::RetryPolicy {
            max_attempts: 5,
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
        })
        .unwrap();
    group
}

/// Appends `events` events under the key "held", polls them all, fails the one at `failing`
/// and commits: the key is held at that version. Returns the member that did it.
fn hold_key(log: &Log, group: &annal::Group, events: usize, failing: usize) -> annal::Consumer {
    for _ in 0..events {
        log.append(b"held", &EVENT[..]).unwrap();
    }
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(10)).unwrap();
    assert_eq!(batch.deliveries.len(), events);
    consumer.nack(&batch.deliveries[failing], "fails").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.retrying().len(), 1);
    consumer
}

/// Polls and commits until `count` events of the key "held" came; returns their versions.
fn held_versions(consumer: &mut annal::Consumer, count: usize, only_new: bool) -> Vec<u64> {
    let mut versions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while versions.len() < count && Instant::now() < deadline {
        let batch = match consumer.poll(2_000, Duration::from_millis(10)) {
            Err(Error::EventsExpired { .. }) => continue,
            other => other.unwrap(),
        };
        for d in &batch.deliveries {
            if &d.record.key[..] == b"held" && !(only_new && consumer.is_held(d)) {
                versions.push(d.record.version);
            }
        }
        consumer.commit(&batch).unwrap();
    }
    versions
}

/// Bug (found by the crash model, seed 358 of `ANNAL_FUZZ_CASES=400`): a key held for a retry
/// whose events retention all deleted, and whose versions then started again at 0, was delivered
/// out of order: its hold moved to the first event at or above the old head's version (v2 of
/// the new history), so the retry delivered v2 before the reader delivered v0 and v1.
#[test]
fn a_held_key_whose_history_expired_and_started_again_is_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), retry_options()).unwrap();
    let group = retrying_group(&log);
    // Versions 0 and 1 handled; 2 fails: the key is held at v2.
    drop(hold_key(&log, &group, 4, 2));
    // Every event of the key expires.
    append(&log, 1_000);
    log.enforce_retention().unwrap();
    assert!(log.start_offset(0).unwrap() > 3);
    drop(group);
    log.close().unwrap();
    // Reopened, the key has no history: its versions start again at 0.
    let log = Log::open(dir.path(), retry_options()).unwrap();
    assert_eq!(log.last_version(b"held").unwrap(), None);
    for v in 0..4 {
        assert_eq!(log.append(b"held", &EVENT[..]).unwrap().version, v);
    }
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let versions = held_versions(&mut consumer, 4, true);
    assert_eq!(versions, [0, 1, 2, 3], "the new history, in order, once");
}

/// Bug (found by the crash model once the write path got faster): a retry delivered a held
/// key's head, and retention deleted the key's next version before the commit. The commit looked
/// for that version, found nothing, and let the key go as if it had no events left, although it
/// had later ones. It now holds the key at its first event left, as a poll does for a head below
/// the start.
#[test]
fn a_retried_key_whose_next_version_expired_before_the_commit_stays_held_at_its_first_event_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), retry_options()).unwrap();
    let group = retrying_group(&log);
    // v0 fails: the key is held at v0, with v1 and v2 behind it.
    let mut consumer = hold_key(&log, &group, 3, 0);
    // The retry delivers v0 alone (a poll of one event) and it succeeds...
    let retry = consumer.poll(1, Duration::from_millis(10)).unwrap();
    assert_eq!(retry.deliveries.len(), 1);
    assert_eq!(&retry.deliveries[0].record.key[..], b"held");
    assert_eq!(retry.deliveries[0].record.version, 0);
    // ... but before its commit, v1 and v2 expire; the key gets later events.
    append(&log, 300);
    for _ in 0..2 {
        log.append(b"held", &EVENT[..]).unwrap();
    }
    log.enforce_retention().unwrap();
    let start = log.start_offset(0).unwrap();
    assert!(start > 2, "v1 and v2 deleted (start {start})");
    consumer.commit(&retry).unwrap();
    let retrying = group.retrying();
    assert_eq!(
        retrying,
        [(0, b"held".to_vec(), 0)],
        "held at its first event left"
    );
    // v3 and v4 come once each, in order, after whatever the reader meets first.
    assert_eq!(held_versions(&mut consumer, 2, false), [3, 4]);
}
