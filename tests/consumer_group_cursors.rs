//! Consumer groups, first part: durable committed cursors in the groups partition, members with
//! an even assignment that never gives one partition to two members, redelivery of what was
//! not committed (after a restart, a rebalance, a member leaving or timing out), and polls woken
//! by appends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use annal::{Durability, Error, Log, Options};

const PARTITIONS: u32 = 4;

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
}

fn append_many(log: &Log, count: u32) {
    for i in 0..count {
        log.append(
            format!("key-{}", i % 13).as_bytes(),
            format!("event {i}").as_bytes(),
        )
        .unwrap();
    }
}

/// Everything delivered to one member until it is caught up: (partition, offset) in order.
fn drain(consumer: &mut annal::Consumer) -> Vec<(u32, u64)> {
    let mut seen = Vec::new();
    loop {
        let batch = consumer.poll(50, Duration::from_millis(20)).unwrap();
        seen.extend(batch.iter().map(|d| (d.record.partition, d.record.offset)));
        consumer.commit(&batch).unwrap();
        if batch.is_empty() {
            return seen;
        }
    }
}

#[test]
fn committed_cursors_survive_a_restart_and_the_rest_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 100);
    let group = log.group("projections").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(30, Duration::from_millis(100)).unwrap();
    assert_eq!(first.len(), 30);
    assert!(!first.caught_up);
    consumer.commit(&first).unwrap();
    let second = consumer.poll(20, Duration::from_millis(100)).unwrap();
    assert_eq!(second.len(), 20);
    // Not committed: delivered again after the restart.
    let committed = group.committed();
    drop(consumer);
    drop(group);
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("projections").unwrap();
    assert_eq!(group.committed(), committed, "the cursors are durable");
    let total: u64 = group.lag().iter().sum();
    assert_eq!(total, 70, "lag: what is not committed");
    let mut consumer = group.join().unwrap();
    let mut delivered = BTreeSet::new();
    for d in &first {
        delivered.insert((d.record.partition, d.record.offset));
    }
    let rest = drain(&mut consumer);
    for place in &rest {
        assert!(
            delivered.insert(*place),
            "{place:?} committed before, delivered again"
        );
    }
    assert_eq!(delivered.len(), 100, "every event delivered at least once");
    assert_eq!(group.lag().iter().sum::<u64>(), 0);
    // Another group is independent.
    let mut other = log.group("audit").unwrap().join().unwrap();
    assert_eq!(drain(&mut other).len(), 100);
}

#[test]
fn members_split_the_partitions_and_take_over_those_of_a_member_that_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 200);
    let group = log.group("workers").unwrap();
    let mut members: Vec<_> = (0..4).map(|_| group.join().unwrap()).collect();
    // Assignments settle at each member's first poll.
    let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (i, member) in members.iter_mut().enumerate() {
        let batch = member.poll(10, Duration::from_millis(50)).unwrap();
        for p in member.assignment() {
            assert!(owners.insert(p, i).is_none(), "partition {p} owned twice");
        }
        for d in &batch {
            assert_eq!(
                owners.get(&d.record.partition),
                Some(&i),
                "delivered to its owner"
            );
            per_partition
                .entry(d.record.partition)
                .or_default()
                .push(d.record.offset);
        }
        member.commit(&batch).unwrap();
    }
    assert_eq!(
        owners.len(),
        PARTITIONS as usize,
        "every partition has an owner"
    );
    // Member 0 leaves without committing more: its partition goes to another member, which
    // resumes from the committed cursor.
    let left: Vec<u32> = owners
        .iter()
        .filter(|(_, &o)| o == 0)
        .map(|(&p, _)| p)
        .collect();
    let committed_before = group.committed();
    members.remove(0);
    let mut taken_over = Vec::new();
    for member in &mut members {
        let batch = member.poll(1_000, Duration::from_millis(50)).unwrap();
        for d in &batch {
            if left.contains(&d.record.partition) {
                taken_over.push(d.record.offset);
            }
            per_partition
                .entry(d.record.partition)
                .or_default()
                .push(d.record.offset);
        }
        member.commit(&batch).unwrap();
    }
    let p = left[0];
    assert_eq!(
        taken_over.first().copied(),
        Some(committed_before[p as usize]),
        "the new owner resumes at the committed cursor"
    );
    // In order within each partition, each offset once (all were committed along the way).
    for (p, offsets) in &per_partition {
        let expected: Vec<u64> = (0..log.end_offset(*p).unwrap()).collect();
        assert_eq!(offsets, &expected, "partition {p}");
    }
}

#[test]
fn a_commit_after_a_rebalance_is_refused_and_the_events_are_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 40);
    let group = log.group("g").unwrap();
    let mut alone = group.join().unwrap();
    let batch = alone.poll(1_000, Duration::from_millis(50)).unwrap();
    assert_eq!(batch.len(), 40);
    assert!(batch.caught_up);
    let _newcomer = group.join().unwrap();
    let refused = alone.commit(&batch).unwrap_err();
    assert!(matches!(refused, Error::NotAssigned { .. }), "{refused}");
    assert_eq!(group.committed(), vec![0; PARTITIONS as usize]);
    // The events of its partitions come again, as second attempts.
    let again = alone.poll(1_000, Duration::from_millis(50)).unwrap();
    assert!(!again.is_empty());
    assert!(
        again.iter().all(|d| d.attempt == 2),
        "{:?}",
        again.iter().map(|d| d.attempt).collect::<Vec<_>>()
    );
}

#[test]
fn a_member_that_stops_polling_loses_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 40);
    let group = log.group("g").unwrap();
    let mut active = group.join().unwrap();
    let mut idle = group.join().unwrap();
    idle.set_session_timeout(Duration::from_millis(50));
    idle.poll(1, Duration::ZERO).unwrap();
    active.poll(1, Duration::ZERO).unwrap();
    assert_eq!(active.assignment().len(), 2);
    std::thread::sleep(Duration::from_millis(80));
    let all = drain(&mut active);
    assert_eq!(active.assignment().len(), PARTITIONS as usize);
    assert_eq!(all.len(), 40, "the active member takes every partition");
}

#[test]
fn a_waiting_poll_is_woken_by_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let mut consumer = log.group("g").unwrap().join().unwrap();
    let empty = consumer.poll(10, Duration::from_millis(20)).unwrap();
    assert!(empty.is_empty() && empty.caught_up);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let batch = consumer.poll(10, Duration::from_secs(20)).unwrap();
            (batch.len(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        log.append(b"k", b"wake up").unwrap();
        let (len, waited) = waiter.join().unwrap();
        assert_eq!(len, 1);
        assert!(
            waited < Duration::from_secs(10),
            "woken by the append, not by the timeout"
        );
    });
}

#[test]
fn bad_group_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert!(matches!(log.group(""), Err(Error::InvalidOptions(_))));
    assert!(matches!(
        log.group(&"x".repeat(256)),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn a_group_resets_to_the_latest_end_to_a_moment_or_seeks_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 40);
    std::thread::sleep(Duration::from_millis(5));
    let moment = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(5));
    append_many(&log, 10);
    let group = log.group("late").unwrap();
    let mut consumer = group.join().unwrap();
    group.reset(annal::StartAt::Latest).unwrap();
    assert!(consumer
        .poll(100, Duration::from_millis(20))
        .unwrap()
        .is_empty());
    log.append(b"k", b"new").unwrap();
    let batch = consumer.poll(100, Duration::from_millis(200)).unwrap();
    assert_eq!(batch.len(), 1, "only what came after the reset");
    group.reset(annal::StartAt::Timestamp(moment)).unwrap();
    assert_eq!(
        drain(&mut consumer).len(),
        11,
        "the last 10 and the new one"
    );
    group.seek(0, 0).unwrap();
    let again = drain(&mut consumer);
    assert_eq!(again.len() as u64, log.end_offset(0).unwrap());
    let end = log.end_offset(1).unwrap();
    assert!(matches!(
        group.seek(1, end + 1),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        group.seek(PARTITIONS, 0),
        Err(Error::PartitionOutOfRange { .. })
    ));
    // Reset durably: a restart keeps it.
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let committed = log.group("late").unwrap().committed();
    let ends: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.end_offset(p).unwrap())
        .collect();
    assert_eq!(committed, ends);
}

#[test]
fn appends_and_a_commit_in_one_step_are_both_there_or_neither() {
    use annal::{Event, Expected, KeyAppend};
    let dir = tempfile::tempdir().unwrap();
    let fail_points = annal::io::FailPoints::new();
    let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
    append_many(&log, 10);
    let group = log.group("process-manager").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(100, Duration::from_millis(50)).unwrap();
    assert_eq!(batch.len(), 10);
    // A failed write: neither the follow-up event nor the commit.
    fail_points.fail_writes(1);
    let follow_up = [Event::new(b"shipment requested")];
    let appends = [KeyAppend::new(b"shipments", Expected::NoStream, &follow_up)];
    assert!(consumer.append_and_commit(&appends, &batch).is_err());
    assert_eq!(log.last_version(b"shipments").unwrap(), None);
    assert_eq!(group.committed(), vec![0; PARTITIONS as usize]);
    // Both, once it works (the events come again first: the commit was not made).
    let batch = consumer.poll(100, Duration::from_millis(50)).unwrap();
    assert_eq!(batch.len(), 10);
    let placed = consumer.append_and_commit(&appends, &batch).unwrap();
    assert_eq!(placed.len(), 1);
    assert_eq!(log.last_version(b"shipments").unwrap(), Some(0));
    // The ten are committed; the follow-up event is new to the group.
    assert_eq!(group.lag().iter().sum::<u64>(), 1);
    // A failed expectation writes nothing and commits nothing.
    log.append(b"key-1", b"one more").unwrap();
    let batch = consumer.poll(100, Duration::from_millis(50)).unwrap();
    assert_eq!(batch.len(), 2);
    let stale = consumer.append_and_commit(&appends, &batch);
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    assert_eq!(group.lag().iter().sum::<u64>(), 2);
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(
        log.group("process-manager")
            .unwrap()
            .lag()
            .iter()
            .sum::<u64>(),
        2
    );
    assert_eq!(log.read_key(b"shipments", 0).unwrap().len(), 1);
}

#[test]
fn groups_that_committed_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 5);
    assert!(log.group_names().unwrap().is_empty());
    for name in ["billing", "audit"] {
        let mut consumer = log.group(name).unwrap().join().unwrap();
        drain(&mut consumer);
    }
    log.group("never-committed").unwrap();
    assert_eq!(log.group_names().unwrap(), ["audit", "billing"]);
}

/// Regression test for a bug found by the command's tests: under `Buffered` a commit returns
/// once queued, and a group opened again right after (every handle dropped) was loaded from the
/// groups partition before that commit's record was visible: its cursors went back.
#[test]
fn a_group_opened_again_right_after_a_buffered_commit_keeps_its_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let options = options().durability(Durability::Buffered);
    let log = Log::open(dir.path(), options).unwrap();
    append_many(&log, 30);
    log.flush().unwrap();
    for round in 0..20 {
        let group = log.group("g").unwrap();
        let mut consumer = group.join().unwrap();
        let batch = consumer.poll(1, Duration::from_millis(50)).unwrap();
        if batch.is_empty() {
            break;
        }
        consumer.commit(&batch).unwrap();
        let committed = group.committed();
        drop(consumer);
        drop(group);
        assert_eq!(
            log.group("g").unwrap().committed(),
            committed,
            "round {round}"
        );
    }
}

#[test]
fn a_busy_partition_does_not_starve_the_others_of_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let busy = (0..)
        .map(|n| format!("busy-{n}"))
        .find(|k| log.partition_for(k.as_bytes()) == 0)
        .unwrap();
    let quiet = (0..)
        .map(|n| format!("quiet-{n}"))
        .find(|k| log.partition_for(k.as_bytes()) == 3)
        .unwrap();
    for i in 0..500 {
        log.append(busy.as_bytes(), format!("{i}").as_bytes())
            .unwrap();
    }
    log.append(quiet.as_bytes(), b"here").unwrap();
    let mut consumer = log.group("g").unwrap().join().unwrap();
    let mut polls = 0;
    loop {
        polls += 1;
        let batch = consumer.poll(10, Duration::from_millis(50)).unwrap();
        if batch.iter().any(|d| d.record.partition == 3) {
            break;
        }
        consumer.commit(&batch).unwrap();
        assert!(
            polls < 8,
            "partition 3 waited {polls} polls behind partition 0"
        );
    }
}

#[test]
fn a_deleted_group_is_not_listed_and_starts_again_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 12);
    {
        let mut consumer = log.group("old").unwrap().join().unwrap();
        drain(&mut consumer);
        assert!(matches!(
            log.delete_group("old"),
            Err(Error::GroupInUse { members: 1, .. })
        ));
    }
    assert_eq!(log.group_names().unwrap(), ["old"]);
    log.delete_group("old").unwrap();
    assert!(log.group_names().unwrap().is_empty());
    assert_eq!(
        log.group("old").unwrap().committed(),
        vec![0; PARTITIONS as usize]
    );
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert!(log.group_names().unwrap().is_empty());
    let mut consumer = log.group("old").unwrap().join().unwrap();
    assert_eq!(
        drain(&mut consumer).len(),
        12,
        "delivered again from the start"
    );
    assert_eq!(log.group_names().unwrap(), ["old"]);
}

/// Regression tests for a review's findings.
mod review {
    use super::*;
    use annal::{Event, Expected, KeyAppend};

    /// A retried `append_and_commit` whose events are all in the log already still commits.
    #[test]
    fn append_and_commit_with_events_already_in_the_log_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), options()).unwrap();
        append_many(&log, 4);
        let group = log.group("pm").unwrap();
        let mut consumer = group.join().unwrap();
        let batch = consumer.poll(100, Duration::from_millis(50)).unwrap();
        let follow_up = [Event::new(b"shipment requested").id(77)];
        // The follow-up is already there (appended by another path, or before a crash).
        log.append_to(b"shipments", Expected::Any, &follow_up)
            .unwrap();
        let appends = [KeyAppend::new(b"shipments", Expected::Any, &follow_up)];
        let placed = consumer.append_and_commit(&appends, &batch).unwrap();
        assert!(placed[0].duplicate);
        assert_eq!(log.read_key(b"shipments", 0).unwrap().len(), 1);
        let committed: u64 = group.committed().iter().sum();
        assert_eq!(committed, 4, "the commit happened");
    }

    /// A handle kept across `delete_group` sees the deletion and can commit again.
    #[test]
    fn a_group_handle_kept_across_its_deletion_works_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), options()).unwrap();
        append_many(&log, 8);
        let kept = log.group("g").unwrap();
        drain(&mut kept.join().unwrap());
        log.delete_group("g").unwrap();
        assert_eq!(kept.committed(), vec![0; PARTITIONS as usize]);
        let mut again = kept.join().unwrap();
        assert_eq!(drain(&mut again).len(), 8, "delivered and committed again");
        assert_eq!(log.group_names().unwrap(), ["g"]);
    }

    /// A commit moves cursors to what was delivered, whatever the caller did to the batch.
    #[test]
    fn a_commit_ignores_offsets_edited_in_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), options()).unwrap();
        append_many(&log, 8);
        let group = log.group("g").unwrap();
        let mut consumer = group.join().unwrap();
        let mut batch = consumer.poll(100, Duration::from_millis(50)).unwrap();
        for delivery in &mut batch.deliveries {
            delivery.record.offset = u64::MAX;
        }
        consumer.commit(&batch).unwrap();
        let ends: Vec<u64> = (0..PARTITIONS)
            .map(|p| log.end_offset(p).unwrap())
            .collect();
        assert_eq!(group.committed(), ends);
    }

    /// A deletion whose write fails changes nothing: the group keeps its cursors, in memory as
    /// on disk (it used to zero them in memory before the write was known to succeed).
    #[test]
    fn a_deletion_that_fails_to_write_keeps_the_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let fail_points = annal::io::FailPoints::new();
        let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
        append_many(&log, 8);
        let group = log.group("g").unwrap();
        drain(&mut group.join().unwrap());
        let committed = group.committed();
        fail_points.fail_writes(1);
        assert!(log.delete_group("g").is_err());
        assert_eq!(group.committed(), committed);
        assert_eq!(log.group_names().unwrap(), ["g"]);
    }
}

/// The groups partition's records damaged at every byte: a group then loads its last
/// committed cursors, or fails with a clear `Error::Corrupt`; never other cursors.
#[test]
fn a_damaged_cursor_record_is_an_error_never_other_cursors() {
    // In memory where the machine has it: the loop opens and closes the log a few hundred
    // times, each with its syncs.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    // The smallest journal: each open below reads it whole.
    let options = || {
        options()
            .journal_bytes(annal::JOURNAL_BYTES_MIN)
            .batch_bytes_max(64 << 10)
    };
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 20);
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    for max in [5, 7] {
        let batch = consumer.poll(max, Duration::from_millis(50)).unwrap();
        consumer.commit(&batch).unwrap();
    }
    let expected = group.committed();
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let groups = dir.path().join("groups");
    let segment = groups.join(format!("{:020}.seg", 0));
    let pristine = std::fs::read(&segment).unwrap();
    // The two commits' frames (a checkpoint's padding may follow them).
    let frame_len = |at: usize| u32::from_le_bytes(pristine[at + 4..at + 8].try_into().unwrap());
    let second = 64 + frame_len(64) as usize;
    let records_end = second + frame_len(second) as usize;
    let mut errors = 0;
    for at in 64..records_end {
        // Damage one byte in place; derived files of the groups partition go, as they would
        // be rebuilt from the damaged segment.
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&segment, bytes).unwrap();
        for entry in std::fs::read_dir(&groups).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "keys") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let loaded =
            Log::open(dir.path(), options()).and_then(|log| log.group("g").map(|g| g.committed()));
        match loaded {
            Ok(committed) => assert_eq!(committed, expected, "byte {at}"),
            Err(error) => {
                assert!(error.is_corruption(), "byte {at}: {error}");
                errors += 1;
            }
        }
        std::fs::write(&segment, &pristine).unwrap();
    }
    assert!(errors > 0, "some damage was reported");
}

#[test]
fn a_pipelined_commit_lets_the_member_poll_on_and_is_kept_once_its_ticket_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    append_many(&log, 100);
    let group = log.group("pipelined").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(40, Duration::from_millis(100)).unwrap();
    let ticket = consumer
        .commit_pipelined(&first)
        .unwrap()
        .expect("a commit");
    // The member goes on while the commit's fsync is in flight.
    let second = consumer.poll(60, Duration::from_millis(100)).unwrap();
    assert_eq!(first.len() + second.len(), 100);
    let offsets = |b: &annal::Batch| -> BTreeSet<(u32, u64)> {
        b.iter()
            .map(|d| (d.record.partition, d.record.offset))
            .collect()
    };
    assert!(offsets(&first).is_disjoint(&offsets(&second)));
    ticket.wait().unwrap();
    let committed = group.committed();
    assert_eq!(committed.iter().sum::<u64>(), 40);
    let last = consumer
        .commit_pipelined(&second)
        .unwrap()
        .expect("a commit");
    last.wait().unwrap();
    assert!(
        consumer.commit_pipelined(&second).unwrap().is_none(),
        "nothing left"
    );
    drop(consumer);
    drop(group);
    // Reopened: the commits whose tickets resolved are there. (A clean close syncs anyway; what
    // a crash keeps is the commit's journal record, checked by tests/crash_append_and_commit.rs.)
    drop(log);
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(
        log.group("pipelined").unwrap().lag(),
        vec![0; PARTITIONS as usize]
    );
}
