//! Consumer groups, retries and dead letters, attacked from the public API: a nack holds its
//! key (not its partition), the key's later events wait behind it and come again in version
//! order after the backoff, with `attempt` counting; after the policy's last attempt the key
//! is parked (a dead letter) with its later events behind it, until re-driven or discarded.
//! Pipelined polls and out-of-order commits, several partitions and members with rebalances,
//! restarts (clean, dropped, and a process killed with SIGKILL), and model checks with random
//! nacks: for every key, the versions handled successfully must be 0, 1, 2, ... with no gap,
//! no duplicate and no reordering.
//!
//! The kill -9 test runs this binary again as its child: `child_parks_then_waits_to_be_killed`
//! is ignored, and runs only when a parent starts it with the log directory in
//! `ANNAL_DEAD_LETTER_KILL9_DIR`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{
    Batch, Consumer, Delivery, Durability, Error, Event, Group, Log, Options, RetryPolicy, StartAt,
};
use common::child::spawn_ignored_test;
use common::rng::SplitMix64;

fn opts(partitions: u32) -> Options {
    Options::default()
        .partitions(partitions)
        .durability(Durability::Sync)
}

/// Opens the log. This binary starts a child process (the kill -9 test) while other tests
/// close and reopen their logs: between its fork and its exec the child shares every open
/// descriptor, the directory lock's included, so an open may briefly meet `Error::Locked`.
fn open(dir: impl AsRef<std::path::Path>, options: Options) -> Log {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Log::open(dir.as_ref(), options.clone()) {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result.unwrap(),
        }
    }
}

fn policy(max_attempts: u32, initial_ms: u64, max_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_initial: Duration::from_millis(initial_ms),
        backoff_max: Duration::from_millis(max_ms),
    }
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.record.payload.to_vec()).unwrap()
}

/// Payloads with their attempts.
fn shown(batch: &Batch) -> Vec<(String, u32)> {
    batch.iter().map(|d| (text(d), d.attempt)).collect()
}

fn names(batch: &Batch) -> Vec<String> {
    batch.iter().map(text).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The first key `<prefix><i>` that routes to `partition`.
fn key_on(log: &Log, partition: u32, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| log.partition_for(k.as_bytes()) == partition)
        .unwrap()
}

fn find<'b>(batch: &'b Batch, payload: &str) -> &'b Delivery {
    batch
        .iter()
        .find(|d| text(d) == payload)
        .unwrap_or_else(|| panic!("{payload} not in {:?}", shown(batch)))
}

/// Polls and commits (handling everything) until a poll of `wait` returns nothing (committed
/// too: the readers may have passed events of held keys); returns the payloads delivered, in
/// order.
fn drain(consumer: &mut Consumer, wait: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let batch = consumer.poll(1000, wait).unwrap();
        seen.extend(names(&batch));
        consumer.commit(&batch).unwrap();
        if batch.is_empty() {
            return seen;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The policy.

#[test]
fn max_attempts_zero_is_refused_and_the_policy_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    let before = policy(3, 10, 50);
    group.set_retry_policy(before).unwrap();
    assert_eq!(group.retry_policy(), before);
    let refused = group.set_retry_policy(policy(0, 10, 50));
    assert!(
        matches!(refused, Err(Error::InvalidOptions(_))),
        "{refused:?}"
    );
    assert_eq!(
        group.retry_policy(),
        before,
        "a refused policy changes nothing"
    );
    // Another handle of the same group sees the same policy.
    assert_eq!(log.group("g").unwrap().retry_policy(), before);
}

#[test]
fn max_attempts_one_parks_at_the_first_nack_and_other_keys_flow() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"b", b"b0").unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&batch), ["b0", "a0", "a1"]);
    consumer.nack(find(&batch, "a0"), "poison").unwrap();
    assert!(consumer.is_held(find(&batch, "a1")));
    assert!(!consumer.is_held(find(&batch, "a0")));
    assert!(!consumer.is_held(find(&batch, "b0")));
    let before = now_ms();
    consumer.commit(&batch).unwrap();
    let after = now_ms();
    assert!(group.retrying().is_empty(), "{:?}", group.retrying());
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(
        (
            l.partition,
            l.key.as_slice(),
            l.offset,
            l.version,
            l.attempts
        ),
        (0, &b"a"[..], 1, 0, 1)
    );
    assert_eq!(l.reason, "poison");
    assert_eq!(l.events, 2, "a0 and a1 behind it");
    assert!(
        (before..=after).contains(&l.parked_at_ms),
        "parked at {} not within [{before}, {after}]",
        l.parked_at_ms
    );
    assert_eq!(group.committed(), [3]);

    // Parked: nothing of "a" comes, not even after a while; other keys flow.
    log.append(b"a", b"a2").unwrap();
    log.append(b"b", b"b1").unwrap();
    assert_eq!(drain(&mut consumer, Duration::from_millis(60)), ["b1"]);
    assert_eq!(group.dead_letters().unwrap()[0].events, 3, "a2 joined them");
}

#[test]
fn the_backoff_doubles_up_to_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    // Waits of 100, then 120 (not 200), 120 (not 400), 120 (not 800) ms.
    group.set_retry_policy(policy(10, 100, 120)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(shown(&batch), [("a0".to_string(), 1)]);
    consumer.nack(&batch.deliveries[0], "no").unwrap();
    // The wait runs from the commit (measured from before it: it is due at the commit's
    // time, in whole ms, plus the backoff).
    let mut nacked_at = Instant::now();
    consumer.commit(&batch).unwrap();
    let mut waits = Vec::new();
    for attempt in 2..=5u32 {
        let batch = consumer.poll(10, Duration::from_secs(5)).unwrap();
        waits.push(nacked_at.elapsed());
        assert_eq!(shown(&batch), [("a0".to_string(), attempt)]);
        assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), attempt - 1)]);
        consumer.nack(&batch.deliveries[0], "no").unwrap();
        nacked_at = Instant::now();
        consumer.commit(&batch).unwrap();
    }
    let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
    assert!(ms[0] >= 98, "first retry after {ms:?}");
    for &m in &ms[1..] {
        assert!(m >= 118, "retries after {ms:?}: the bound is 120 ms");
    }
    // The bound holds: the 4th wait would be 800 ms doubled without it.
    assert!(ms[3] < 600, "retries after {ms:?}: the bound is 120 ms");
}

// ---------------------------------------------------------------------------------------------
// Nacks within and across batches.

#[test]
fn nacking_one_delivery_twice_counts_one_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(2, 20, 20)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "first").unwrap();
    consumer.nack(&batch.deliveries[0], "second").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    assert!(group.dead_letters().unwrap().is_empty(), "one failure of 2");
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&batch), [("a0".to_string(), 2)]);
    consumer.nack(&batch.deliveries[0], "third").unwrap();
    consumer.nack(&batch.deliveries[0], "fourth").unwrap();
    consumer.commit(&batch).unwrap();
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert!(
        ["third", "fourth"].contains(&letters[0].reason.as_str()),
        "{:?}",
        letters[0].reason
    );
}

#[test]
fn nacks_of_the_head_and_of_a_later_event_in_one_batch_retry_from_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 20, 20)).unwrap();
    for (k, p) in [("a", "a0"), ("a", "a1"), ("b", "b0"), ("a", "a2")] {
        log.append(k.as_bytes(), p.as_bytes()).unwrap();
    }
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&batch), ["a0", "a1", "b0", "a2"]);
    // The later event first, then the head.
    consumer.nack(find(&batch, "a2"), "later").unwrap();
    consumer.nack(find(&batch, "a0"), "head").unwrap();
    assert!(consumer.is_held(find(&batch, "a1")));
    assert!(consumer.is_held(find(&batch, "a2")));
    consumer.commit(&batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(
        shown(&batch),
        [("a0".into(), 2), ("a1".into(), 1), ("a2".into(), 1)]
    );
    // This time a1 fails: the key is held from a1, a0 is done.
    consumer.nack(find(&batch, "a1"), "a1 now").unwrap();
    consumer.commit(&batch).unwrap();
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&batch), [("a1".into(), 2), ("a2".into(), 1)]);
    consumer.commit(&batch).unwrap();
    assert!(group.retrying().is_empty());
    assert!(drain(&mut consumer, Duration::from_millis(30)).is_empty());
}

/// Two pipelined batches: the head of "a" in the first, its next event in the second; both
/// nacked, then the batches committed in order. The key must stay held from its head: the
/// nack of a1 (behind the held a0) must not replace a0 as the held event.
#[test]
fn a_nack_behind_a_held_head_committed_later_does_not_replace_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 30, 30)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(1, Duration::from_millis(100)).unwrap();
    let second = consumer.poll(1, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&first), ["a0"]);
    assert_eq!(names(&second), ["a1"]);
    consumer.nack(&first.deliveries[0], "a0 failed").unwrap();
    consumer.nack(&second.deliveries[0], "a1 failed").unwrap();
    consumer.commit(&first).unwrap();
    consumer.commit(&second).unwrap();
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(
        shown(&batch),
        [("a0".into(), 2), ("a1".into(), 1)],
        "the key is retried from its first failed event, a0"
    );
}

/// The pipelined case handled naturally: a0's nack is committed with its batch, then the
/// next batch (polled before the nack) is handled. a1 will be delivered again after a0, so
/// `is_held` must still tell it apart.
#[test]
fn is_held_still_tells_a_later_event_apart_after_the_nack_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 30, 30)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(1, Duration::from_millis(100)).unwrap();
    let second = consumer.poll(1, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&second), ["a1"]);
    consumer.nack(&first.deliveries[0], "a0 failed").unwrap();
    assert!(consumer.is_held(&second.deliveries[0]), "before the commit");
    consumer.commit(&first).unwrap();
    let held_after_commit = consumer.is_held(&second.deliveries[0]);
    consumer.commit(&second).unwrap();
    // a1 does come again, after a0: it was held.
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&batch), [("a0".into(), 2), ("a1".into(), 1)]);
    assert!(
        held_after_commit,
        "is_held(a1) was false once a0's batch was committed, yet a1 is delivered again after \
         a0: a handler trusting is_held handles a1 before a0, and twice"
    );
}

#[test]
fn committing_an_empty_batch_applies_an_earlier_nack() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 40, 40)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&first.deliveries[0], "no").unwrap();
    let empty = consumer.poll(10, Duration::from_millis(10)).unwrap();
    assert!(empty.is_empty());
    consumer.commit(&empty).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    // The first batch is settled by it: too late to nack.
    assert!(matches!(
        consumer.nack(&first.deliveries[0], "late"),
        Err(Error::NotPending { .. })
    ));
    // Committing the first batch again changes nothing.
    consumer.commit(&first).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&batch), [("a0".into(), 2)]);
    consumer.commit(&batch).unwrap();
    assert!(group.retrying().is_empty());
}

/// A nack committed by `append_and_commit` holds its key as a plain commit does; one whose
/// appends fail their expectation commits nothing, and stays pending for the next commit.
#[test]
fn nacks_committed_with_appends_in_one_step() {
    use annal::{Expected, KeyAppend};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 30, 30)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(find(&batch, "a0"), "no").unwrap();
    let follow_up = [Event::new(b"f0")];
    let stale = [KeyAppend::new(b"f", Expected::Exact(7), &follow_up)];
    assert!(matches!(
        consumer.append_and_commit(&stale, &batch),
        Err(Error::Conflict { .. })
    ));
    assert!(group.retrying().is_empty(), "nothing committed");
    assert_eq!(group.committed(), [0]);
    let fresh = [KeyAppend::new(b"f", Expected::NoStream, &follow_up)];
    consumer.append_and_commit(&fresh, &batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    assert_eq!(group.committed(), [2]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.len() < 2 && Instant::now() < deadline {
        let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
        seen.extend(shown(&batch));
        consumer.commit(&batch).unwrap();
    }
    assert_eq!(seen, [("f0".into(), 1), ("a0".into(), 2)]);
}

#[test]
fn a_nack_of_an_earlier_batch_after_a_later_commit_is_not_pending() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(1, Duration::from_millis(100)).unwrap();
    let second = consumer.poll(1, Duration::from_millis(100)).unwrap();
    consumer.commit(&second).unwrap();
    assert!(matches!(
        consumer.nack(&first.deliveries[0], "late"),
        Err(Error::NotPending { .. })
    ));
    assert!(matches!(
        consumer.nack(&second.deliveries[0], "late"),
        Err(Error::NotPending { .. })
    ));
    assert!(group.retrying().is_empty());
    assert_eq!(group.committed(), [2]);
}

/// "Commits the batch, and the member's earlier batches not committed yet": a commit of the
/// second of two pipelined batches that read different partitions covers the first too.
#[test]
fn a_later_commit_covers_an_earlier_batch_of_another_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(2));
    let k0 = key_on(&log, 0, "p0-");
    let k1 = key_on(&log, 1, "p1-");
    for i in 0..10 {
        log.append(k0.as_bytes(), format!("p0 {i}").as_bytes())
            .unwrap();
        log.append(k1.as_bytes(), format!("p1 {i}").as_bytes())
            .unwrap();
    }
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(5, Duration::from_millis(100)).unwrap();
    let second = consumer.poll(5, Duration::from_millis(100)).unwrap();
    let parts = |b: &Batch| {
        let mut p: Vec<u32> = b.iter().map(|d| d.record.partition).collect();
        p.dedup();
        p
    };
    // Each poll starts one partition further: one partition per batch.
    assert_eq!(parts(&first).len(), 1, "{:?}", shown(&first));
    assert_eq!(parts(&second).len(), 1, "{:?}", shown(&second));
    assert_ne!(parts(&first), parts(&second));
    consumer.commit(&second).unwrap();
    // Both batches are settled: the first may no longer be nacked...
    assert!(matches!(
        consumer.nack(&first.deliveries[0], "late"),
        Err(Error::NotPending { .. })
    ));
    // ... and its events are not delivered again after a restart.
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = open(dir.path(), opts(2));
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let again = drain(&mut consumer, Duration::from_millis(30));
    let first_names = names(&first);
    let redelivered: Vec<&String> = again.iter().filter(|n| first_names.contains(n)).collect();
    assert!(
        redelivered.is_empty(),
        "committed (cumulatively) and delivered again: {redelivered:?}; cursors were {:?}",
        group.committed()
    );
}

/// The same on one partition: a later batch that read nothing (an empty poll after a nack)
/// commits the earlier batch's events too.
#[test]
fn a_later_empty_batch_commits_the_earlier_batch_of_the_same_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let first = consumer.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&first), ["a0", "b0"]);
    consumer.nack(&first.deliveries[0], "a0 failed").unwrap();
    let empty = consumer.poll(10, Duration::from_millis(10)).unwrap();
    assert!(empty.is_empty());
    consumer.commit(&empty).unwrap();
    assert_eq!(
        group.retrying().len(),
        1,
        "the nack of the first batch is committed"
    );
    assert!(matches!(
        consumer.nack(&first.deliveries[1], "late"),
        Err(Error::NotPending { .. })
    ));
    assert_eq!(
        group.committed(),
        [2],
        "b0's batch is settled (its nack committed, it can no longer be nacked), yet the \
         cursor did not move past it: b0 is delivered again after a restart"
    );
}

// ---------------------------------------------------------------------------------------------
// Retries and the partition's reader.

/// A retry delivers the held key from its failed event up to its last visible event, also
/// events the partition's reader has not reached yet (a poll smaller than the backlog). Once
/// the retry is committed the key is free: the reader must not deliver those events again.
#[test]
fn events_a_retry_delivered_ahead_of_the_reader_are_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 30, 30)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "later").unwrap();
    consumer.commit(&batch).unwrap();
    for i in 0..10 {
        log.append(b"x", format!("x{i}").as_bytes()).unwrap();
    }
    log.append(b"a", b"a1").unwrap();
    log.append(b"x", b"x10").unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let batch = consumer.poll(3, Duration::from_secs(3)).unwrap();
    assert_eq!(
        shown(&batch),
        [("a0".into(), 2), ("a1".into(), 1), ("x0".into(), 1)]
    );
    consumer.commit(&batch).unwrap();
    let rest = drain(&mut consumer, Duration::from_millis(30));
    let expected: Vec<String> = (1..=10).map(|i| format!("x{i}")).collect();
    assert_eq!(rest, expected, "a1 was handled and committed already");
}

#[test]
fn events_appended_while_a_key_is_retried_come_after_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 40, 40)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "no").unwrap();
    consumer.commit(&batch).unwrap();
    // While it waits.
    log.append(b"a", b"a1").unwrap();
    log.append(b"b", b"b0").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(10)).unwrap();
    assert_eq!(names(&batch), ["b0"]);
    consumer.commit(&batch).unwrap();
    // The retry: a0, a1.
    let retry = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&retry), [("a0".into(), 2), ("a1".into(), 1)]);
    // Appended between the retry's poll and its commit: a pipelined poll must not deliver a2
    // (it waits behind the retry); it comes after the retry is committed.
    log.append(b"a", b"a2").unwrap();
    log.append(b"b", b"b1").unwrap();
    let pipelined = consumer.poll(10, Duration::from_millis(10)).unwrap();
    assert_eq!(names(&pipelined), ["b1"]);
    consumer.commit(&retry).unwrap();
    consumer.commit(&pipelined).unwrap();
    // Appended after the commit.
    log.append(b"a", b"a3").unwrap();
    let rest = drain(&mut consumer, Duration::from_millis(50));
    assert_eq!(rest, ["a2", "a3"]);
    assert!(group.retrying().is_empty());
}

#[test]
fn a_retry_that_falls_due_wakes_a_blocked_poll() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 200, 200)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "no").unwrap();
    consumer.commit(&batch).unwrap();
    let started = Instant::now();
    let batch = consumer.poll(10, Duration::from_secs(10)).unwrap();
    let waited = started.elapsed();
    assert_eq!(shown(&batch), [("a0".into(), 2)]);
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "the poll waited {waited:?} for a retry due after 200 ms"
    );
}

#[test]
fn a_redrive_wakes_a_blocked_poll() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "no").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap().len(), 1);
    let poller = std::thread::spawn(move || {
        let started = Instant::now();
        let batch = consumer.poll(10, Duration::from_secs(10)).unwrap();
        (shown(&batch), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    group.redrive(b"a").unwrap();
    let (seen, waited) = poller.join().unwrap();
    assert_eq!(seen, [("a0".into(), 1), ("a1".into(), 1)]);
    assert!(
        waited < Duration::from_secs(3),
        "the poll waited {waited:?}, the redrive came after 100 ms"
    );
}

#[test]
fn caught_up_ignores_retries_not_due_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 60_000, 60_000)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(find(&batch, "a0"), "no").unwrap();
    consumer.commit(&batch).unwrap();
    log.append(b"a", b"a1").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(20)).unwrap();
    assert!(batch.is_empty() && batch.caught_up, "{:?}", shown(&batch));
    consumer.commit(&batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
}

// ---------------------------------------------------------------------------------------------
// Dead letters: listing, re-driving, discarding.

#[test]
fn reasons_are_cut_to_1_kib_at_a_character_boundary_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reasons = [
        ("k0", "é".repeat(700)),                   // 1,400 bytes of 2-byte characters
        ("k1", "✓".repeat(1000)),                  // 3,000 bytes of 3-byte characters
        ("k2", "x".repeat(1024)),                  // exactly the limit
        ("k3", format!("{}🦀", "y".repeat(1022))), // a 4-byte character across the limit
        ("k4", String::new()),
        ("k5", "line\nbreak\0nul \u{202e} bidi".to_string()),
    ];
    let expected: Vec<String> = vec![
        "é".repeat(512),
        "✓".repeat(341),
        "x".repeat(1024),
        "y".repeat(1022),
        String::new(),
        "line\nbreak\0nul \u{202e} bidi".to_string(),
    ];
    let check = |group: &Group| {
        let letters = group.dead_letters().unwrap();
        assert_eq!(letters.len(), reasons.len());
        let mut by_key: HashMap<Vec<u8>, String> = HashMap::new();
        for l in letters {
            assert!(l.reason.len() <= 1024, "{} bytes", l.reason.len());
            by_key.insert(l.key, l.reason);
        }
        for ((key, _), want) in reasons.iter().zip(&expected) {
            assert_eq!(&by_key[key.as_bytes()], want, "{key}");
        }
    };
    {
        let log = open(dir.path(), opts(2));
        let group = log.group("g").unwrap();
        group.set_retry_policy(policy(1, 10, 10)).unwrap();
        for (key, _) in &reasons {
            log.append(key.as_bytes(), b"e").unwrap();
        }
        let mut consumer = group.join().unwrap();
        let mut delivered = 0;
        while delivered < reasons.len() {
            let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
            assert!(!batch.is_empty());
            for d in &batch {
                let (_, reason) = reasons
                    .iter()
                    .find(|(k, _)| k.as_bytes() == d.record.key.as_ref())
                    .unwrap();
                consumer.nack(d, reason).unwrap();
                delivered += 1;
            }
            consumer.commit(&batch).unwrap();
        }
        check(&group);
        drop(consumer);
        drop(group);
        log.close().unwrap();
    }
    let log = open(dir.path(), opts(2));
    check(&log.group("g").unwrap());
}

#[test]
fn dead_letters_count_events_of_one_frame_and_discard_skips_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    // a0..a4 in one frame; a2 fails.
    let batch_payloads: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    log.append_batch(b"a", batch_payloads.iter().map(Event::new))
        .unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&batch), ["a0", "a1", "a2", "a3", "a4", "b0"]);
    consumer.nack(find(&batch, "a2"), "a2 is poison").unwrap();
    consumer.commit(&batch).unwrap();
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].offset, letters[0].version), (2, 2));
    assert_eq!(letters[0].events, 3, "a2, a3, a4");
    // a5 (reached by the group, parked), then a6 (not reached yet when discarded).
    log.append(b"a", b"a5").unwrap();
    log.append(b"b", b"b1").unwrap();
    assert_eq!(drain(&mut consumer, Duration::from_millis(20)), ["b1"]);
    assert_eq!(group.dead_letters().unwrap()[0].events, 4);
    log.append(b"a", b"a6").unwrap();
    assert!(matches!(
        group.discard(b"b"),
        Err(Error::NoDeadLetter { .. })
    ));
    group.discard(b"a").unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    assert!(matches!(
        group.discard(b"a"),
        Err(Error::NoDeadLetter { .. })
    ));
    log.append(b"a", b"a7").unwrap();
    let rest = drain(&mut consumer, Duration::from_millis(50));
    assert_eq!(rest, ["a6", "a7"], "a2..a5 discarded, the rest comes once");
    // After a restart still nothing of the discarded events.
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    log.append(b"a", b"a8").unwrap();
    assert_eq!(drain(&mut consumer, Duration::from_millis(30)), ["a8"]);
    assert!(group.dead_letters().unwrap().is_empty());
    assert!(group.retrying().is_empty());
}

/// A poll whose reader passes only events of a parked key returns an empty batch; its commit
/// must still settle them: they are parked behind the dead letter ("later events of the key
/// join them as the group reaches them"), so a discard drops them.
#[test]
fn a_poll_that_passes_only_parked_events_parks_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "poison").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap()[0].events, 1);
    log.append(b"a", b"a1").unwrap();
    // The member's reader passes a1 (its key is parked): nothing to deliver.
    let batch = consumer.poll(10, Duration::from_millis(30)).unwrap();
    assert!(batch.is_empty(), "{:?}", shown(&batch));
    consumer.commit(&batch).unwrap();
    let events = group.dead_letters().unwrap()[0].events;
    let committed = group.committed();
    group.discard(b"a").unwrap();
    let after_discard = drain(&mut consumer, Duration::from_millis(30));
    assert!(
        events == 2 && after_discard.is_empty(),
        "the member passed a1 behind the parked a0 and committed, yet the dead letter counts \
         {events} event(s), the cursor is {committed:?}, and the discard delivered \
         {after_discard:?}"
    );
}

#[test]
fn a_redrive_gives_fresh_attempts_and_parks_again_after_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(2, 20, 20)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    for attempt in 1..=2 {
        let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
        assert_eq!(
            shown(&batch),
            [("a0".into(), attempt), ("a1".into(), 1)],
            "attempt {attempt}"
        );
        consumer.nack(&batch.deliveries[0], "no").unwrap();
        consumer.commit(&batch).unwrap();
    }
    assert_eq!(group.dead_letters().unwrap()[0].attempts, 2);
    group.redrive(b"a").unwrap();
    assert!(matches!(
        group.redrive(b"a"),
        Err(Error::NoDeadLetter { .. })
    ));
    assert!(group.dead_letters().unwrap().is_empty());
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 0)]);
    // Fresh attempts: 1, 2, then parked again.
    for attempt in 1..=2 {
        let batch = consumer.poll(10, Duration::from_secs(3)).unwrap();
        assert_eq!(
            shown(&batch),
            [("a0".into(), attempt), ("a1".into(), 1)],
            "after the redrive, attempt {attempt}"
        );
        consumer.nack(&batch.deliveries[1], "a1 now").unwrap();
        consumer.nack(&batch.deliveries[0], "a0 again").unwrap();
        consumer.commit(&batch).unwrap();
    }
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].version, letters[0].attempts, letters[0].events),
        (0, 2, 2)
    );
    assert_eq!(letters[0].reason, "a0 again");
}

#[test]
fn redrive_all_redrives_every_key_across_partitions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(3));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    let keys: Vec<String> = (0..6).map(|i| format!("key{i}")).collect();
    for v in 0..3 {
        for k in &keys {
            log.append(k.as_bytes(), format!("{k}:{v}").as_bytes())
                .unwrap();
        }
    }
    let mut consumer = group.join().unwrap();
    // Each key's version 1 fails: versions 1 and 2 are parked.
    let mut handled: HashMap<String, Vec<String>> = HashMap::new();
    loop {
        let batch = consumer.poll(4, Duration::from_millis(20)).unwrap();
        if batch.is_empty() {
            break;
        }
        for d in &batch {
            if consumer.is_held(d) {
                continue;
            }
            if d.record.version == 1 {
                consumer.nack(d, "v1").unwrap();
            } else {
                let key = String::from_utf8(d.record.key.to_vec()).unwrap();
                handled.entry(key).or_default().push(text(d));
            }
        }
        consumer.commit(&batch).unwrap();
    }
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), keys.len());
    let order: Vec<(u32, u64)> = letters.iter().map(|l| (l.partition, l.offset)).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "listed in (partition, offset) order");
    for l in &letters {
        assert_eq!((l.version, l.attempts, l.events), (1, 1, 2), "{l:?}");
    }
    assert_eq!(group.redrive_all().unwrap(), keys.len());
    assert_eq!(group.redrive_all().unwrap(), 0);
    for d in drain(&mut consumer, Duration::from_millis(50)) {
        let key = d.split(':').next().unwrap().to_string();
        handled.entry(key).or_default().push(d);
    }
    for k in &keys {
        let want: Vec<String> = (0..3).map(|v| format!("{k}:{v}")).collect();
        assert_eq!(handled[k], want, "{k}");
    }
    assert!(group.dead_letters().unwrap().is_empty());
}

#[test]
fn a_redrive_while_a_retry_is_in_flight_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "park b").unwrap();
    consumer.commit(&batch).unwrap();
    group.set_retry_policy(policy(5, 20, 20)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&batch), ["a0"]);
    consumer.nack(&batch.deliveries[0], "retry a").unwrap();
    consumer.commit(&batch).unwrap();
    // a's retry in flight; meanwhile "a" cannot be re-driven (not parked), "b" can.
    let in_flight = consumer.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(shown(&in_flight), [("a0".into(), 2)]);
    assert!(matches!(
        group.redrive(b"a"),
        Err(Error::NoDeadLetter { .. })
    ));
    group.redrive(b"b").unwrap();
    let mut handled = vec!["a0".to_string()];
    match consumer.commit(&in_flight) {
        Ok(()) => {}
        // The redrive restarted the member: a0 comes again.
        Err(Error::NotAssigned { .. }) => handled.clear(),
        Err(e) => panic!("{e}"),
    }
    handled.extend(drain(&mut consumer, Duration::from_millis(50)));
    handled.sort();
    assert_eq!(handled, ["a0", "b0"]);
    assert!(group.retrying().is_empty());
    assert!(group.dead_letters().unwrap().is_empty());
}

/// `redrive_all` with nothing parked re-drives nothing; the member still owns its partition,
/// so its batch in flight must still commit (`NotAssigned` is for a partition "it no longer
/// owns"), and nothing is delivered again.
#[test]
fn a_redrive_all_with_nothing_parked_leaves_a_batch_in_flight_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(names(&batch), ["a0"]);
    assert_eq!(group.redrive_all().unwrap(), 0);
    let committed = consumer.commit(&batch);
    assert_eq!(consumer.assignment(), [0]);
    let again = drain(&mut consumer, Duration::from_millis(20));
    assert!(
        committed.is_ok() && again.is_empty(),
        "a redrive_all that re-drove nothing refused the commit ({committed:?}) of a member \
         that still owns its partition, and {again:?} came again"
    );
}

#[test]
fn the_documented_remedy_for_a_group_state_too_large() {
    let dir = tempfile::tempdir().unwrap();
    // Record: 20 bytes + per parked key 40 + 5 (key) + 1 (reason): three fit into 200.
    let log = open(
        dir.path(),
        opts(1).segment_bytes(64 << 10).event_bytes_max(200),
    );
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    let mut consumer = group.join().unwrap();
    for i in 0..3 {
        log.append(format!("key-{i}").as_bytes(), b"x").unwrap();
        let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
        consumer.nack(&batch.deliveries[0], "r").unwrap();
        consumer.commit(&batch).unwrap();
    }
    assert_eq!(group.dead_letters().unwrap().len(), 3);
    log.append(b"key-3", b"x").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "r").unwrap();
    assert!(matches!(
        consumer.commit(&batch),
        Err(Error::GroupStateTooLarge { limit: 200, .. })
    ));
    assert_eq!(group.committed(), [3], "nothing committed");
    assert_eq!(group.dead_letters().unwrap().len(), 3);
    // Discard a dead letter; the member goes on (key-3 is delivered again, nacked, parked).
    group.discard(b"key-0").unwrap();
    let mut parked = false;
    for _ in 0..5 {
        let batch = consumer.poll(10, Duration::from_millis(50)).unwrap();
        for d in &batch {
            consumer.nack(d, "r").unwrap();
        }
        match consumer.commit(&batch) {
            Ok(()) => {}
            Err(Error::NotAssigned { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
        if group.dead_letters().unwrap().len() == 3 && group.committed() == [4] {
            parked = true;
            break;
        }
    }
    assert!(parked, "{:?}", group.dead_letters().unwrap());
    let keys: Vec<Vec<u8>> = group
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        keys,
        [b"key-1".to_vec(), b"key-2".to_vec(), b"key-3".to_vec()]
    );
}

/// "Events" before a parked key's head were handled; a reset to the earliest offsets
/// ("everything is delivered") must deliver them again, in order.
#[test]
fn a_reset_to_earliest_delivers_again_the_events_before_a_held_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    assert_eq!(
        drain(&mut consumer, Duration::from_millis(20)),
        ["a0", "a1", "b0"]
    );
    log.append(b"a", b"a2").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "a2 poison").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap()[0].version, 2);
    group.reset(StartAt::Earliest).unwrap();
    let replay = drain(&mut consumer, Duration::from_millis(30));
    let of_a: Vec<&String> = replay.iter().filter(|n| n.starts_with('a')).collect();
    assert!(replay.contains(&"b0".to_string()), "{replay:?}");
    assert!(
        of_a.len() >= 2 && of_a[..2] == ["a0", "a1"],
        "a reset to the earliest offsets replayed {replay:?}: a0 and a1 (handled before the \
         dead letter a2) are missing"
    );
}

#[test]
fn deleting_a_group_drops_its_held_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "parked").unwrap();
    consumer.nack(&batch.deliveries[1], "parked").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap().len(), 2);
    assert!(matches!(
        log.delete_group("g"),
        Err(Error::GroupInUse { .. })
    ));
    drop(consumer);
    log.delete_group("g").unwrap();
    let group = log.group("g").unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    let mut consumer = group.join().unwrap();
    assert_eq!(
        drain(&mut consumer, Duration::from_millis(20)),
        ["a0", "b0"]
    );
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    assert!(group.retrying().is_empty());
    assert_eq!(group.committed(), [2]);
}

#[test]
fn a_commit_whose_write_fails_applies_none_of_its_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = annal::io::FailPoints::new();
    let log = open(dir.path(), opts(1).fail_points(fail_points.clone()));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "would park").unwrap();
    fail_points.fail_writes(1);
    assert!(consumer.commit(&batch).is_err());
    assert!(group.dead_letters().unwrap().is_empty());
    assert_eq!(group.committed(), [0]);
    // Both events come again (the commit was not made); this time it works.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.len() < 2 && Instant::now() < deadline {
        let batch = consumer.poll(10, Duration::from_millis(50)).unwrap();
        for d in &batch {
            seen.push(text(d));
            if text(d) == "a0" {
                consumer.nack(d, "parked now").unwrap();
            }
        }
        match consumer.commit(&batch) {
            Ok(()) => {}
            Err(Error::NotAssigned { .. }) => seen.clear(),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seen, ["a0", "b0"]);
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "parked now");
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    assert_eq!(group.dead_letters().unwrap()[0].reason, "parked now");
    assert_eq!(group.committed(), [2]);
}

/// Every key hashing to 0 in the key tables: the retries, counts, discards and re-drives
/// that find a key's events through them must still see only that key's events.
#[test]
fn retries_and_dead_letters_with_every_key_hash_colliding() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = annal::io::FailPoints::new();
    fail_points.set_key_hash_collisions(true);
    let options = || opts(1).fail_points(fail_points.clone());
    let log = open(dir.path(), options());
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(2, 20, 20)).unwrap();
    for v in 0..3 {
        for k in ["a", "b", "c"] {
            log.append(k.as_bytes(), format!("{k}{v}").as_bytes())
                .unwrap();
        }
    }
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
    assert_eq!(batch.len(), 9);
    consumer.nack(find(&batch, "a1"), "a1").unwrap();
    consumer.nack(find(&batch, "b0"), "b0").unwrap();
    consumer.commit(&batch).unwrap();
    let retry = consumer.poll(100, Duration::from_secs(3)).unwrap();
    assert_eq!(
        shown(&retry),
        [
            ("b0".into(), 2),
            ("b1".into(), 1),
            ("b2".into(), 1),
            ("a1".into(), 2),
            ("a2".into(), 1)
        ]
    );
    consumer.nack(find(&retry, "b0"), "b0 again").unwrap();
    consumer.commit(&retry).unwrap();
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].key.as_slice(),
            letters[0].version,
            letters[0].events
        ),
        (&b"b"[..], 0, 3)
    );
    log.append(b"c", b"c3").unwrap();
    log.append(b"b", b"b3").unwrap();
    log.append(b"a", b"a3").unwrap();
    assert_eq!(
        drain(&mut consumer, Duration::from_millis(20)),
        ["c3", "a3"]
    );
    assert_eq!(group.dead_letters().unwrap()[0].events, 4);
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = open(dir.path(), options());
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    log.append(b"b", b"b4").unwrap();
    log.append(b"c", b"c4").unwrap();
    group.discard(b"b").unwrap();
    assert_eq!(
        drain(&mut consumer, Duration::from_millis(20)),
        ["b4", "c4"]
    );
    assert!(group.dead_letters().unwrap().is_empty());
    assert!(group.retrying().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rebalances.

#[test]
fn after_a_rebalance_old_nacks_are_refused_and_the_new_owner_retries_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(2));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 300, 300)).unwrap();
    let a = key_on(&log, 0, "a");
    let b = key_on(&log, 1, "b");
    log.append(a.as_bytes(), b"a0").unwrap();
    log.append(a.as_bytes(), b"a1").unwrap();
    log.append(b.as_bytes(), b"b0").unwrap();
    let mut first = group.join().unwrap();
    let batch = first.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(batch.len(), 3);
    first.nack(find(&batch, "a0"), "a0 failed").unwrap();
    first.commit(&batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, a.as_bytes().to_vec(), 1)]);

    // A second member joins: the first keeps partition 0, the second takes partition 1.
    log.append(b.as_bytes(), b"b1").unwrap();
    let stale = first.poll(10, Duration::from_millis(5)).unwrap();
    assert_eq!(names(&stale), ["b1"]);
    let second = group.join().unwrap();
    assert!(matches!(
        first.commit(&stale),
        Err(Error::NotAssigned { .. })
    ));
    let fresh = first.poll(10, Duration::ZERO).unwrap();
    assert!(fresh.is_empty(), "{:?}", shown(&fresh));
    assert!(matches!(
        first.nack(&stale.deliveries[0], "stale"),
        Err(Error::NotAssigned { .. })
    ));
    assert_eq!(first.assignment(), [0]);
    assert_eq!(second.assignment(), [1]);
    let mut second = second;

    // The first member leaves with a's retry in flight: the second retries it.
    let in_flight = first.poll(10, Duration::from_secs(3)).unwrap();
    assert_eq!(
        shown(&in_flight),
        [("a0".into(), 2), ("a1".into(), 1)],
        "{:?}",
        shown(&in_flight)
    );
    drop(first);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && got.iter().filter(|(n, _)| n == "a1").count() == 0 {
        let batch = second.poll(10, Duration::from_millis(50)).unwrap();
        got.extend(shown(&batch));
        second.commit(&batch).unwrap();
    }
    let of_a: Vec<&(String, u32)> = got.iter().filter(|(n, _)| n.starts_with('a')).collect();
    assert_eq!(of_a.len(), 2, "{got:?}");
    assert_eq!(of_a[0].0, "a0");
    assert!(of_a[0].1 >= 2, "a0 is on its 2nd attempt at least: {got:?}");
    assert_eq!(of_a[1].0, "a1");
    assert!(group.retrying().is_empty());
}

/// The docs say a dead letter's `attempts` is "how many deliveries of it failed", and the
/// policy's last attempt parks. A delivery repeated by a rebalance did not fail.
#[test]
fn a_redelivery_after_a_rebalance_is_not_counted_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(2, 20, 20)).unwrap();
    log.append(b"a", b"a0").unwrap();
    let mut first = group.join().unwrap();
    let batch = first.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(shown(&batch), [("a0".into(), 1)]);
    // Not committed; a member joins and leaves: the partition starts again.
    drop(group.join().unwrap());
    let batch = first.poll(10, Duration::from_millis(100)).unwrap();
    assert_eq!(shown(&batch), [("a0".into(), 2)], "delivered again");
    first
        .nack(&batch.deliveries[0], "the first failure")
        .unwrap();
    first.commit(&batch).unwrap();
    let letters = group.dead_letters().unwrap();
    assert!(
        letters.is_empty(),
        "parked after one failed delivery of max_attempts 2: {letters:?}"
    );
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
}

// ---------------------------------------------------------------------------------------------
// Restarts and crashes.

#[test]
fn a_restart_between_nack_and_commit_loses_the_nack() {
    let dir = tempfile::tempdir().unwrap();
    for clean in [true, false] {
        let log = open(dir.path(), opts(1));
        let group = log.group(if clean { "clean" } else { "dropped" }).unwrap();
        log.append(b"a", b"x").unwrap();
        let mut consumer = group.join().unwrap();
        let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
        assert!(!batch.is_empty());
        for d in &batch {
            consumer.nack(d, "lost").unwrap();
        }
        drop(consumer);
        drop(group);
        if clean {
            log.close().unwrap();
        } else {
            drop(log);
        }
        let log = open(dir.path(), opts(1));
        let group = log.group(if clean { "clean" } else { "dropped" }).unwrap();
        assert!(group.retrying().is_empty());
        assert!(group.dead_letters().unwrap().is_empty());
        let mut consumer = group.join().unwrap();
        let again = consumer.poll(100, Duration::from_millis(100)).unwrap();
        assert_eq!(again.len(), batch.len());
        assert!(again.iter().all(|d| d.attempt == 1), "{:?}", shown(&again));
        consumer.commit(&again).unwrap();
        drop(consumer);
        drop(group);
        log.close().unwrap();
    }
}

#[test]
fn retries_and_dead_letters_survive_a_log_dropped_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let log = open(dir.path(), opts(2));
        let a = key_on(&log, 0, "a");
        let b = key_on(&log, 1, "b");
        let group = log.group("g").unwrap();
        group.set_retry_policy(policy(1, 10, 10)).unwrap();
        log.append(a.as_bytes(), b"a0").unwrap();
        log.append(a.as_bytes(), b"a1").unwrap();
        log.append(b.as_bytes(), b"b0").unwrap();
        let mut consumer = group.join().unwrap();
        let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
        consumer.nack(find(&batch, "a0"), "parked ✓").unwrap();
        consumer.commit(&batch).unwrap();
        group.set_retry_policy(policy(5, 300, 300)).unwrap();
        log.append(b.as_bytes(), b"b1").unwrap();
        let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
        assert_eq!(names(&batch), ["b1"]);
        consumer.nack(&batch.deliveries[0], "retry").unwrap();
        consumer.commit(&batch).unwrap();
        drop(consumer);
        drop(group);
        drop(log);
        (a, b)
    };
    let log = open(dir.path(), opts(2));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 300, 300)).unwrap();
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].key.as_slice(),
            letters[0].version,
            letters[0].events,
            letters[0].reason.as_str()
        ),
        (a.as_bytes(), 0, 2, "parked ✓")
    );
    assert_eq!(group.retrying(), vec![(1, b.as_bytes().to_vec(), 1)]);
    // Appended after the restart: a2 joins the parked events, b2 waits behind b1.
    log.append(a.as_bytes(), b"a2").unwrap();
    log.append(b.as_bytes(), b"b2").unwrap();
    let mut consumer = group.join().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.len() < 2 && Instant::now() < deadline {
        let batch = consumer.poll(100, Duration::from_millis(100)).unwrap();
        seen.extend(shown(&batch));
        consumer.commit(&batch).unwrap();
    }
    assert_eq!(seen, [("b1".into(), 2), ("b2".into(), 1)]);
    group.redrive(a.as_bytes()).unwrap();
    let after_redrive = drain(&mut consumer, Duration::from_millis(30));
    assert_eq!(
        after_redrive,
        ["a0", "a1", "a2"],
        "b2 was delivered by b's retry and committed: it must not come again"
    );
}

const KILL9_DIR_ENV: &str = "ANNAL_DEAD_LETTER_KILL9_DIR";

#[test]
#[ignore = "the child process of the dead letter kill -9 test; only it starts it"]
fn child_parks_then_waits_to_be_killed() {
    let Some(dir) = std::env::var_os(KILL9_DIR_ENV) else {
        return;
    };
    let log = open(&dir, opts(1));
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10, 10)).unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(100, Duration::from_secs(1)).unwrap();
    assert_eq!(names(&batch), ["a0", "a1", "b0"]);
    consumer.nack(&batch.deliveries[0], "poison ✓").unwrap();
    consumer.commit(&batch).unwrap();
    // Not committed: must be delivered again in the next process.
    log.append(b"c", b"c0").unwrap();
    let uncommitted = consumer.poll(100, Duration::from_secs(1)).unwrap();
    assert_eq!(names(&uncommitted), ["c0"]);
    consumer
        .nack(&uncommitted.deliveries[0], "never committed")
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\ncommitted").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(30));
    panic!("not killed within 30 s");
}

#[test]
fn a_dead_letter_survives_kill_9_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), opts(1));
        log.append(b"a", b"a0").unwrap();
        log.append(b"a", b"a1").unwrap();
        log.append(b"b", b"b0").unwrap();
        log.close().unwrap();
    }
    let envs = [(KILL9_DIR_ENV, dir.path().as_os_str())];
    let mut child = spawn_ignored_test("child_parks_then_waits_to_be_killed", &envs, Stdio::null());
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let committed = lines.any(|l| l.map(|l| l == "committed").unwrap_or(false));
    assert!(committed, "the child never committed");
    child.kill_and_wait();

    let log = open(dir.path(), opts(1));
    let group = log.group("g").unwrap();
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (
            letters[0].key.as_slice(),
            letters[0].offset,
            letters[0].attempts,
            letters[0].events,
            letters[0].reason.as_str()
        ),
        (&b"a"[..], 0, 1, 2, "poison ✓")
    );
    assert!(group.retrying().is_empty(), "c0's nack was never committed");
    assert_eq!(group.committed(), [3]);
    let mut consumer = group.join().unwrap();
    log.append(b"a", b"a2").unwrap();
    assert_eq!(drain(&mut consumer, Duration::from_millis(30)), ["c0"]);
    group.redrive(b"a").unwrap();
    let batch = consumer.poll(100, Duration::from_secs(1)).unwrap();
    assert_eq!(
        shown(&batch),
        [("a0".into(), 1), ("a1".into(), 1), ("a2".into(), 1)]
    );
    consumer.commit(&batch).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Model checks with random nacks.

const MODEL_KEYS: usize = 12;

/// The log's events per key, and the versions handled successfully.
struct Model {
    rng: SplitMix64,
    keys: Vec<String>,
    appended: HashMap<Vec<u8>, u64>,
    /// Per key, the next version a success must have: successes are 0, 1, 2, ... exactly.
    next: HashMap<Vec<u8>, u64>,
    successes: u64,
    nacks: u64,
    /// Per key, its last deliveries (for the failure messages).
    history: HashMap<Vec<u8>, Vec<String>>,
}

impl Model {
    fn new(seed: u64) -> Model {
        Model {
            rng: SplitMix64(seed),
            keys: (0..MODEL_KEYS).map(|i| format!("k{i:02}")).collect(),
            appended: HashMap::new(),
            next: HashMap::new(),
            successes: 0,
            nacks: 0,
            history: HashMap::new(),
        }
    }

    /// Appends 0 to 3 events (some as one frame) to random keys.
    fn append_some(&mut self, log: &Log) {
        for _ in 0..self.rng.below(4) {
            let key = self.keys[self.rng.below(MODEL_KEYS as u64) as usize].clone();
            let count = if self.rng.below(4) == 0 { 3 } else { 1 };
            let first = *self.appended.get(key.as_bytes()).unwrap_or(&0);
            let payloads: Vec<String> = (first..first + count)
                .map(|v| format!("{key}:{v}"))
                .collect();
            let at = log
                .append_batch(key.as_bytes(), payloads.iter().map(Event::new))
                .unwrap();
            assert_eq!(at.version, first);
            self.appended.insert(key.into_bytes(), first + count);
        }
    }

    /// Appends one event to `key`.
    fn append_to(&mut self, log: &Log, key: &[u8]) {
        let version = *self.appended.get(key).unwrap_or(&0);
        let payload = format!("{}:{version}", String::from_utf8_lossy(key));
        let at = log.append(key, payload.as_bytes()).unwrap();
        assert_eq!(at.version, version);
        self.appended.insert(key.to_vec(), version + 1);
    }

    /// Appends the next event of up to 3 keys of `batch` (a pipelined poll then delivers it,
    /// or passes it by): few enough that every poll reaches the end of its partitions.
    fn append_behind(&mut self, log: &Log, batch: &Batch) {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for d in batch {
            if keys.len() < 3 && !keys.iter().any(|k| k == &d.record.key) {
                keys.push(d.record.key.to_vec());
            }
        }
        for key in keys {
            if self.rng.below(2) == 0 {
                self.append_to(log, &key);
            }
        }
    }

    /// Whether this delivery fails: always for key k00 (parked each time), often for others.
    fn fails(&mut self, d: &Delivery, rate_percent: u64) -> bool {
        if rate_percent == 0 {
            return false;
        }
        d.record.key.as_ref() == b"k00" || self.rng.below(100) < rate_percent
    }

    /// A delivery that is not held, handled successfully (`ok`) or nacked: in one member
    /// without rebalances, it must be its key's next version either way (a lower one is a
    /// duplicate, a higher one a gap or a reordering).
    fn observe(&mut self, d: &Delivery, ok: bool, context: &str) {
        let key = d.record.key.to_vec();
        let history = self.history.entry(key.clone()).or_default();
        history.push(format!(
            "{context}: v{} @{} attempt {} {}",
            d.record.version,
            d.record.offset,
            d.attempt,
            if ok { "ok" } else { "nacked" }
        ));
        if history.len() > 12 {
            history.remove(0);
        }
        let next = self.next.entry(key).or_insert(0);
        assert_eq!(
            d.record.version,
            *next,
            "{context}: key {} delivered version {} (attempt {}) where {} was next: a \
             duplicate, a gap or a reordering; the key's last deliveries: {:#?}",
            String::from_utf8_lossy(&d.record.key),
            d.record.version,
            d.attempt,
            *next,
            history
        );
        assert_eq!(
            text(d),
            format!(
                "{}:{}",
                String::from_utf8_lossy(&d.record.key),
                d.record.version
            )
        );
        if ok {
            *next += 1;
            self.successes += 1;
        } else {
            self.nacks += 1;
        }
    }

    /// A success confirmed by a commit (several members): its key's next version.
    fn confirmed(&mut self, d: &Delivery, context: &str) {
        let key = d.record.key.to_vec();
        let next = self.next.entry(key).or_insert(0);
        assert_eq!(
            d.record.version,
            *next,
            "{context}: key {} committed a success of version {} (attempt {}) where {} was \
             next: a duplicate, a gap or a reordering",
            String::from_utf8_lossy(&d.record.key),
            d.record.version,
            d.attempt,
            *next
        );
        *next += 1;
        self.successes += 1;
    }

    /// Handles one batch: passes held deliveries by, nacks failures, records successes.
    fn handle(&mut self, consumer: &mut Consumer, batch: &Batch, rate: u64, context: &str) {
        for d in batch {
            if consumer.is_held(d) {
                continue;
            }
            let fail = self.fails(d, rate);
            self.observe(d, !fail, context);
            if fail {
                consumer.nack(d, "random failure").unwrap();
            }
        }
    }

    /// Every event of every key handled exactly once.
    fn check_complete(&self) {
        for (key, &count) in &self.appended {
            assert_eq!(
                self.next.get(key).copied().unwrap_or(0),
                count,
                "key {}: handled versions 0..{} of {count}",
                String::from_utf8_lossy(key),
                self.next.get(key).copied().unwrap_or(0)
            );
        }
    }
}

/// With nacks off: re-drives the dead letters and handles everything until the group holds
/// nothing and has no lag.
fn finish(model: &mut Model, group: &Group, consumer: &mut Consumer, max: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "not finished within 10 s");
        if !group.dead_letters().unwrap().is_empty() {
            group.redrive_all().unwrap();
        }
        let batch = consumer.poll(max, Duration::ZERO).unwrap();
        model.handle(consumer, &batch, 0, "finishing");
        consumer.commit(&batch).unwrap();
        if batch.is_empty() {
            if group.retrying().is_empty()
                && group.dead_letters().unwrap().is_empty()
                && group.lag().iter().all(|&l| l == 0)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    model.check_complete();
}

fn model_policy() -> RetryPolicy {
    policy(3, 1, 4)
}

/// One member, polls big enough to reach the end, a poll-handle-commit loop (`handle`).
#[test]
fn model_one_member_with_random_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(3));
    let group = log.group("g").unwrap();
    group.set_retry_policy(model_policy()).unwrap();
    let mut consumer = group.join().unwrap();
    let mut model = Model::new(0x5eed_0001);
    let mut rng = SplitMix64(77);
    for step in 0..250 {
        model.append_some(&log);
        let mut handled = Vec::new();
        let rate = 25;
        consumer
            .handle(1000, Duration::ZERO, |d| {
                let fail = d.record.key.as_ref() == b"k00" || rng.below(100) < rate;
                handled.push((d.clone(), !fail));
                if fail {
                    Err(format!("failure at step {step}"))
                } else {
                    Ok(())
                }
            })
            .unwrap();
        for (d, ok) in &handled {
            model.observe(d, *ok, &format!("step {step}"));
        }
        if step % 5 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    assert!(model.nacks > 50 && model.successes > 100);
    assert!(
        !group.dead_letters().unwrap().is_empty(),
        "k00 always fails: it is parked"
    );
    finish(&mut model, &group, &mut consumer, 1000);
}

/// As above, with polls smaller than the backlog (retries read ahead of the reader).
#[test]
fn model_one_member_with_small_polls() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(3));
    let group = log.group("g").unwrap();
    group.set_retry_policy(model_policy()).unwrap();
    let mut consumer = group.join().unwrap();
    let mut model = Model::new(0x5eed_0002);
    for step in 0..250 {
        model.append_some(&log);
        let max = 1 + model.rng.below(5) as usize;
        let batch = consumer.poll(max, Duration::ZERO).unwrap();
        model.handle(&mut consumer, &batch, 25, &format!("step {step}"));
        consumer.commit(&batch).unwrap();
        if step % 5 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    finish(&mut model, &group, &mut consumer, 3);
}

/// One member, two batches in flight: polled back to back, then handled and committed in
/// random ways (each handled then committed; both handled then the second committed; the
/// second committed before the first).
#[test]
fn model_one_member_with_pipelined_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(3));
    let group = log.group("g").unwrap();
    group.set_retry_policy(model_policy()).unwrap();
    let mut consumer = group.join().unwrap();
    let mut model = Model::new(0x5eed_0003);
    for step in 0..200 {
        let context = format!("step {step}");
        model.append_some(&log);
        let first = consumer.poll(1000, Duration::ZERO).unwrap();
        // The next event of some keys of the first batch: in the second batch.
        model.append_behind(&log, &first);
        let second = consumer.poll(1000, Duration::ZERO).unwrap();
        match model.rng.below(4) {
            0 | 3 => {
                model.handle(
                    &mut consumer,
                    &first,
                    25,
                    &format!("{context}, first batch"),
                );
                consumer.commit(&first).unwrap();
                model.handle(
                    &mut consumer,
                    &second,
                    25,
                    &format!("{context}, second batch"),
                );
                consumer.commit(&second).unwrap();
            }
            1 => {
                model.handle(
                    &mut consumer,
                    &first,
                    25,
                    &format!("{context}, first batch"),
                );
                model.handle(
                    &mut consumer,
                    &second,
                    25,
                    &format!("{context}, second batch"),
                );
                consumer.commit(&second).unwrap();
            }
            _ => {
                model.handle(
                    &mut consumer,
                    &first,
                    25,
                    &format!("{context}, first batch"),
                );
                model.handle(
                    &mut consumer,
                    &second,
                    25,
                    &format!("{context}, second batch"),
                );
                consumer.commit(&second).unwrap();
                consumer.commit(&first).unwrap();
            }
        }
        if step % 5 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    finish(&mut model, &group, &mut consumer, 1000);
}

/// Everything at once, over several seeds: polls of 1 to 6 events (retries read ahead of the
/// reader), 1 to 3 batches in flight, each handled as it comes, then only some committed (the
/// last, or each in turn, or the latest only: commits are cumulative), polls that wait a
/// little, events appended behind the batches, and dead letters re-driven now and then.
#[test]
fn model_one_member_with_everything_at_once() {
    let seeds: u64 = std::env::var("ANNAL_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), opts(2));
        let group = log.group("g").unwrap();
        group.set_retry_policy(model_policy()).unwrap();
        let mut consumer = group.join().unwrap();
        let mut model = Model::new(0x5eed_0100 + seed);
        for step in 0..150 {
            let context = format!("seed {seed} step {step}");
            model.append_some(&log);
            let in_flight = 1 + model.rng.below(3) as usize;
            let mut batches = Vec::new();
            for b in 0..in_flight {
                let max = 1 + model.rng.below(6) as usize;
                let wait = Duration::from_millis(model.rng.below(3));
                let batch = consumer.poll(max, wait).unwrap();
                model.handle(&mut consumer, &batch, 20, &format!("{context} batch {b}"));
                model.append_behind(&log, &batch);
                batches.push(batch);
            }
            match model.rng.below(3) {
                0 => {
                    for batch in &batches {
                        consumer.commit(batch).unwrap();
                    }
                }
                _ => consumer.commit(batches.last().unwrap()).unwrap(),
            }
            if model.rng.below(20) == 0 {
                group.redrive_all().unwrap();
            }
        }
        assert!(model.nacks > 20 && model.successes > 100, "seed {seed}");
        finish(&mut model, &group, &mut consumer, 4);
    }
}

/// The control for the pipelined model: two batches in flight, both handled before either is
/// committed (so `is_held` sees every nack), then both committed, in order or not.
#[test]
fn model_one_member_with_two_batches_handled_before_their_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), opts(3));
    let group = log.group("g").unwrap();
    group.set_retry_policy(model_policy()).unwrap();
    let mut consumer = group.join().unwrap();
    let mut model = Model::new(0x5eed_0005);
    for step in 0..200 {
        let context = format!("step {step}");
        model.append_some(&log);
        let first = consumer.poll(1000, Duration::ZERO).unwrap();
        model.append_behind(&log, &first);
        let second = consumer.poll(1000, Duration::ZERO).unwrap();
        assert!(
            first.caught_up && second.caught_up,
            "{context}: polls reach the end"
        );
        model.handle(
            &mut consumer,
            &first,
            25,
            &format!("{context}, first batch"),
        );
        model.handle(
            &mut consumer,
            &second,
            25,
            &format!("{context}, second batch"),
        );
        // Both committed (a commit of the second alone does not cover the first's partitions:
        // see a_later_commit_covers_an_earlier_batch_of_another_partition), in either order.
        if model.rng.below(2) == 0 {
            consumer.commit(&first).unwrap();
            consumer.commit(&second).unwrap();
        } else {
            consumer.commit(&second).unwrap();
            consumer.commit(&first).unwrap();
        }
        if step % 5 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    finish(&mut model, &group, &mut consumer, 1000);
}

/// Several members joining and leaving (rebalances while keys are held and batches are in
/// flight), and restarts (clean and dropped). A member's successes count once its commit
/// succeeds; a commit refused after a rebalance drops them (the events come again).
#[test]
fn model_members_rebalances_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new(0x5eed_0004);
    let mut log = Some(open(dir.path(), opts(4)));
    let mut group = Some(log.as_ref().unwrap().group("g").unwrap());
    group
        .as_ref()
        .unwrap()
        .set_retry_policy(model_policy())
        .unwrap();
    struct Member {
        consumer: Consumer,
        in_flight: Option<(Batch, Vec<Delivery>)>,
    }
    let join = |group: &Group| Member {
        consumer: group.join().unwrap(),
        in_flight: None,
    };
    let mut members = vec![join(group.as_ref().unwrap())];
    let mut refused = 0;
    let mut restarts = 0;
    for step in 0..300 {
        let context = format!("step {step}");
        model.append_some(log.as_ref().unwrap());
        let restart = step == 100 || step == 200;
        match if restart { 2 } else { model.rng.below(20) } {
            0 if members.len() < 3 => members.push(join(group.as_ref().unwrap())),
            1 if members.len() > 1 => {
                let i = model.rng.below(members.len() as u64) as usize;
                members.remove(i);
            }
            2 if restart => {
                // Restart: every member's batch in flight is lost.
                let n = members.len();
                members.clear();
                drop(group.take());
                let old = log.take().unwrap();
                if restarts % 2 == 0 {
                    old.close().unwrap();
                } else {
                    drop(old);
                }
                restarts += 1;
                log = Some(open(dir.path(), opts(4)));
                group = Some(log.as_ref().unwrap().group("g").unwrap());
                group
                    .as_ref()
                    .unwrap()
                    .set_retry_policy(model_policy())
                    .unwrap();
                for _ in 0..n {
                    members.push(join(group.as_ref().unwrap()));
                }
            }
            _ => {
                let i = model.rng.below(members.len() as u64) as usize;
                let member = &mut members[i];
                match member.in_flight.take() {
                    None => {
                        let batch = member.consumer.poll(1000, Duration::ZERO).unwrap();
                        let mut accepted = Vec::new();
                        for d in &batch {
                            if member.consumer.is_held(d) {
                                continue;
                            }
                            if model.fails(d, 25) {
                                match member.consumer.nack(d, "random failure") {
                                    Ok(()) => model.nacks += 1,
                                    Err(e) => panic!("{context}: {e}"),
                                }
                            } else {
                                accepted.push(d.clone());
                            }
                        }
                        member.in_flight = Some((batch, accepted));
                    }
                    Some((batch, accepted)) => match member.consumer.commit(&batch) {
                        Ok(()) => {
                            for d in &accepted {
                                model.confirmed(d, &context);
                            }
                        }
                        Err(Error::NotAssigned { .. }) => refused += 1,
                        Err(e) => panic!("{context}: {e}"),
                    },
                }
            }
        }
        if step % 7 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(restarts >= 2, "{restarts} restarts");
    assert!(
        refused > 0,
        "no commit was refused: no rebalance hit a batch in flight"
    );
    // Finish with one member.
    members.clear();
    let group = group.unwrap();
    let mut consumer = group.join().unwrap();
    finish(&mut model, &group, &mut consumer, 1000);
}

/// Two members polling in their own threads (each partition has one owner: the membership
/// does not change while they run) while a third thread appends: every delivery a member does
/// not pass by as held must be its key's next version.
#[test]
fn model_two_member_threads_with_a_concurrent_appender() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), opts(4)));
    let group = log.group("g").unwrap();
    group.set_retry_policy(model_policy()).unwrap();
    let members = [group.join().unwrap(), group.join().unwrap()];
    let next: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Arc::default();
    let appending = Arc::new(AtomicBool::new(true));
    let appender = {
        let log = log.clone();
        let appending = appending.clone();
        std::thread::spawn(move || {
            let mut model = Model::new(0x5eed_0006);
            for _ in 0..300 {
                model.append_some(&log);
                if model.rng.below(10) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            appending.store(false, Ordering::SeqCst);
            model.appended
        })
    };
    let threads: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut consumer)| {
            let next = next.clone();
            let appending = appending.clone();
            std::thread::spawn(move || {
                let mut rng = SplitMix64(1000 + i as u64);
                let mut handled = 0u64;
                let mut polls = 0u64;
                let mut history: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
                while appending.load(Ordering::SeqCst) {
                    let mut seen = Vec::new();
                    // Polls that do not wait: each batch, even an empty one whose reader
                    // passed events of held keys, is committed (see
                    // a_poll_that_passes_only_parked_events_parks_them).
                    consumer
                        .handle(1000, Duration::ZERO, |d| {
                            let fail = d.record.key.as_ref() == b"k00" || rng.below(100) < 20;
                            seen.push((d.clone(), !fail));
                            if fail {
                                Err("random failure")
                            } else {
                                Ok(())
                            }
                        })
                        .unwrap();
                    if seen.is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let mut next = next.lock().unwrap();
                    polls += 1;
                    for (d, ok) in seen {
                        let h = history.entry(d.record.key.to_vec()).or_default();
                        h.push(format!(
                            "poll {polls}: v{} @{} attempt {} {}",
                            d.record.version,
                            d.record.offset,
                            d.attempt,
                            if ok { "ok" } else { "nack" }
                        ));
                        let v = next.entry(d.record.key.to_vec()).or_insert(0);
                        assert_eq!(
                            d.record.version,
                            *v,
                            "member {i}: key {} delivered version {} (attempt {}) where {} \
                             was next; the key's deliveries to this member: {:#?}",
                            String::from_utf8_lossy(&d.record.key),
                            d.record.version,
                            d.attempt,
                            *v,
                            h
                        );
                        if ok {
                            *v += 1;
                            handled += 1;
                        }
                    }
                }
                handled
            })
        })
        .collect();
    let appended = appender.join().unwrap();
    let handled: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(handled.iter().all(|&h| h > 0), "{handled:?}");
    let mut model = Model::new(0);
    model.appended = appended;
    model.next = Arc::try_unwrap(next).unwrap().into_inner().unwrap();
    let mut consumer = group.join().unwrap();
    finish(&mut model, &group, &mut consumer, 1000);
}
