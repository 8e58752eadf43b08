//! Consumer groups, retries and dead letters: a nacked event holds its key (not its
//! partition) until a retry after a backoff; after the last attempt it is parked with every
//! later event of its key behind it; dead letters are listed, re-driven in order, discarded;
//! all of it survives a restart.

use std::time::{Duration, Instant};

use annal::{Consumer, Durability, Error, Log, Options, RetryPolicy};

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
}

fn policy(max_attempts: u32, backoff_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_initial: Duration::from_millis(backoff_ms),
        backoff_max: Duration::from_secs(5),
    }
}

/// Payloads delivered by one poll, as strings, with their attempts.
fn poll(consumer: &mut Consumer, wait_ms: u64) -> (annal::Batch, Vec<(String, u32)>) {
    let batch = consumer.poll(100, Duration::from_millis(wait_ms)).unwrap();
    let seen = batch
        .iter()
        .map(|d| {
            (
                String::from_utf8(d.record.payload.to_vec()).unwrap(),
                d.attempt,
            )
        })
        .collect();
    (batch, seen)
}

fn names(seen: &[(String, u32)]) -> Vec<&str> {
    seen.iter().map(|(s, _)| s.as_str()).collect()
}

#[test]
fn a_nacked_event_holds_its_key_and_not_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 200)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"b", b"b0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let (batch, seen) = poll(&mut consumer, 100);
    assert_eq!(names(&seen), ["a0", "b0", "a1"]);
    consumer.nack(&batch.deliveries[0], "db down").unwrap();
    assert!(consumer.is_held(&batch.deliveries[2]), "a1 is behind a0");
    assert!(!consumer.is_held(&batch.deliveries[1]));
    consumer.commit(&batch).unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);

    // Other keys flow while "a" waits; "a"'s new events wait behind it.
    log.append(b"b", b"b1").unwrap();
    log.append(b"a", b"a2").unwrap();
    let started = Instant::now();
    let (batch, seen) = poll(&mut consumer, 100);
    assert_eq!(names(&seen), ["b1"]);
    consumer.commit(&batch).unwrap();

    // The retry comes after the backoff: a0 (attempt 2), then a1 and a2, in order.
    let (batch, seen) = poll(&mut consumer, 2_000);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen, [("a0".into(), 2), ("a1".into(), 1), ("a2".into(), 1)]);
    consumer.commit(&batch).unwrap();
    assert!(group.retrying().is_empty());

    // The key is free again: its next event comes from the reader, once.
    log.append(b"a", b"a3").unwrap();
    let (batch, seen) = poll(&mut consumer, 1_000);
    assert_eq!(names(&seen), ["a3"]);
    consumer.commit(&batch).unwrap();
    let (_, seen) = poll(&mut consumer, 50);
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn the_last_attempt_parks_the_key_with_its_later_events_until_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(2, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    log.append(b"b", b"b0").unwrap();
    let mut consumer = group.join().unwrap();
    for attempt in 1..=2 {
        let (batch, seen) = poll(&mut consumer, 1_000);
        assert_eq!(seen[0], ("a0".into(), attempt));
        consumer.nack(&batch.deliveries[0], "poison").unwrap();
        consumer.commit(&batch).unwrap();
    }
    let letters = group.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (
            letter.key.as_slice(),
            letter.offset,
            letter.attempts,
            letter.reason.as_str()
        ),
        (&b"a"[..], 0, 2, "poison")
    );
    assert_eq!(letter.events, 2, "a0 and a1 behind it");
    log.append(b"a", b"a2").unwrap();
    log.append(b"b", b"b1").unwrap();
    let (batch, seen) = poll(&mut consumer, 200);
    assert_eq!(names(&seen), ["b1"], "parked: no retry of a, a2 parked too");
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap()[0].events, 3);
    let (_, seen) = poll(&mut consumer, 50);
    assert!(seen.is_empty());

    // Survives a restart.
    drop(consumer);
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    assert_eq!(group.dead_letters().unwrap().len(), 1);
    let mut consumer = group.join().unwrap();
    let (_, seen) = poll(&mut consumer, 50);
    assert!(seen.is_empty(), "{seen:?}");

    assert!(matches!(
        group.redrive(b"b"),
        Err(Error::NoDeadLetter { .. })
    ));
    group.redrive(b"a").unwrap();
    let (batch, seen) = poll(&mut consumer, 1_000);
    assert_eq!(seen, [("a0".into(), 1), ("a1".into(), 1), ("a2".into(), 1)]);
    consumer.commit(&batch).unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    assert!(group.retrying().is_empty());
}

#[test]
fn a_discarded_dead_letter_is_never_delivered_and_later_events_are() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(1, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    log.append(b"a", b"a1").unwrap();
    let mut consumer = group.join().unwrap();
    let (batch, _) = poll(&mut consumer, 100);
    consumer.nack(&batch.deliveries[0], "poison").unwrap();
    consumer.commit(&batch).unwrap();
    assert_eq!(group.dead_letters().unwrap().len(), 1);
    group.discard(b"a").unwrap();
    assert!(group.dead_letters().unwrap().is_empty());
    let (_, seen) = poll(&mut consumer, 50);
    assert!(seen.is_empty(), "{seen:?}");
    log.append(b"a", b"a2").unwrap();
    let (batch, seen) = poll(&mut consumer, 1_000);
    assert_eq!(names(&seen), ["a2"]);
    consumer.commit(&batch).unwrap();
}

#[test]
fn a_failing_handler_is_retried_then_parked() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(3, 5)).unwrap();
    log.append(b"a", b"bad").unwrap();
    log.append(b"b", b"good").unwrap();
    let mut consumer = group.join().unwrap();
    let mut calls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while group.dead_letters().unwrap().is_empty() && Instant::now() < deadline {
        consumer
            .handle(100, Duration::from_millis(50), |d| {
                calls.push((d.record.payload.to_vec(), d.attempt));
                if d.record.payload.as_ref() == b"bad" {
                    Err("cannot handle")
                } else {
                    Ok(())
                }
            })
            .unwrap();
    }
    let bad: Vec<u32> = calls
        .iter()
        .filter(|(p, _)| p == b"bad")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(bad, [1, 2, 3]);
    assert_eq!(calls.iter().filter(|(p, _)| p == b"good").count(), 1);
    assert_eq!(group.dead_letters().unwrap()[0].reason, "cannot handle");
}

#[test]
fn a_nack_after_its_commit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(b"a", b"a0").unwrap();
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let (batch, _) = poll(&mut consumer, 100);
    consumer.commit(&batch).unwrap();
    assert!(matches!(
        consumer.nack(&batch.deliveries[0], "late"),
        Err(Error::NotPending { .. })
    ));
    assert!(group.retrying().is_empty());
}

#[test]
fn retries_wait_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), options()).unwrap();
        let group = log.group("g").unwrap();
        group.set_retry_policy(policy(5, 400)).unwrap();
        log.append(b"a", b"a0").unwrap();
        let mut consumer = group.join().unwrap();
        let (batch, _) = poll(&mut consumer, 100);
        consumer.nack(&batch.deliveries[0], "later").unwrap();
        consumer.commit(&batch).unwrap();
        drop(consumer);
        drop(group);
        log.close().unwrap();
    }
    let started = Instant::now();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    assert_eq!(group.retrying(), vec![(0, b"a".to_vec(), 1)]);
    let mut consumer = group.join().unwrap();
    let (batch, seen) = poll(&mut consumer, 3_000);
    assert_eq!(seen, [("a0".into(), 2)]);
    assert!(started.elapsed() >= Duration::from_millis(200));
    consumer.commit(&batch).unwrap();
}

#[test]
fn too_many_held_keys_for_one_record_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        options().segment_bytes(64 << 10).event_bytes_max(200),
    )
    .unwrap();
    for i in 0..10 {
        log.append(format!("key-{i}").as_bytes(), b"x").unwrap();
    }
    let group = log.group("g").unwrap();
    let mut consumer = group.join().unwrap();
    let (batch, _) = poll(&mut consumer, 100);
    for delivery in &batch {
        consumer.nack(delivery, "no").unwrap();
    }
    assert!(matches!(
        consumer.commit(&batch),
        Err(Error::GroupStateTooLarge { limit: 200, .. })
    ));
    assert_eq!(group.committed(), [0]);
}

#[test]
fn events_a_retry_delivered_ahead_of_the_reader_are_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let group = log.group("g").unwrap();
    group.set_retry_policy(policy(5, 10)).unwrap();
    log.append(b"a", b"a0").unwrap();
    for i in 0..10 {
        log.append(b"b", format!("b{i}").as_bytes()).unwrap();
    }
    log.append(b"a", b"a1").unwrap();
    log.append(b"a", b"a2").unwrap();
    let mut consumer = group.join().unwrap();
    let batch = consumer.poll(1, Duration::from_millis(100)).unwrap();
    consumer.nack(&batch.deliveries[0], "later").unwrap();
    consumer.commit(&batch).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    // The retry fills the poll: a0, a1, a2, from far ahead of the reader.
    let batch = consumer.poll(3, Duration::from_millis(100)).unwrap();
    let seen: Vec<&[u8]> = batch.iter().map(|d| d.record.payload.as_ref()).collect();
    assert_eq!(seen, [b"a0".as_slice(), b"a1", b"a2"]);
    consumer.commit(&batch).unwrap();
    let mut rest = Vec::new();
    loop {
        let (batch, seen) = poll(&mut consumer, 50);
        consumer.commit(&batch).unwrap();
        if seen.is_empty() {
            break;
        }
        rest.extend(names(&seen).into_iter().map(str::to_owned));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    assert_eq!(rest, expected, "a1 and a2 are not delivered twice");
    assert!(group.retrying().is_empty(), "{:?}", group.retrying());
    log.append(b"a", b"a3").unwrap();
    let (_, seen) = poll(&mut consumer, 1_000);
    assert_eq!(names(&seen), ["a3"]);
}
