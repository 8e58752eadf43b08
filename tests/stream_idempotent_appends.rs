//! Appends with event ids are idempotent: a retry whose ids are all in the log writes nothing
//! and returns the original place (`duplicate` set), whatever its expected version, while the
//! original is still queued, after a reopen, and when the original sits in a sealed segment
//! found through its key table; ids only partly present are named and nothing is written; an id
//! under another key, or twice in one call, is refused.

mod common;

use std::fs;

use annal::io::FailPoints;
use annal::{Appended, Durability, Error, Event, Expected, Log, Options};
use common::segment_files::segment_bases;
use common::streams::{
    assert_duplicate_of, global_order, keys_bases, keys_in_distinct_partitions, keys_in_partition,
    keys_path, stream_payloads, visible_events,
};
use common::{SyncsHeld, BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

fn options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
}

fn with_ids<'a>(payloads: &[&'a [u8]], first_id: u128) -> Vec<Event<'a>> {
    payloads
        .iter()
        .zip(first_id..)
        .map(|(payload, id)| Event::new(*payload).id(id))
        .collect()
}

#[test]
fn a_retried_event_or_batch_returns_the_original_place_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"payment-1";
    let partition = log.partition_for(key);
    log.append(key, b"no id").unwrap();
    log.append(b"other", b"moves the global position").unwrap();

    let single = with_ids(&[b"authorized"], 100);
    let original = log.append_to(key, Expected::Any, &single).unwrap();
    let batch = with_ids(&[b"captured", b"settled", b"closed"], 200);
    let original_batch = log.append_to(key, Expected::Any, &batch).unwrap();
    let end = log.end_offset(partition).unwrap();
    let events = visible_events(&log);

    for _ in 0..3 {
        let retry = log.append_to(key, Expected::Any, &single).unwrap();
        assert_duplicate_of(retry, original, 1);
        let retry = log.append_to(key, Expected::Any, &batch).unwrap();
        assert_duplicate_of(retry, original_batch, 3);
        // Plain appends are retried the same way.
        let retry = log.append_batch(key, &batch).unwrap();
        assert_duplicate_of(retry, original_batch, 3);
    }
    // The ids decide, not the payloads.
    let changed = [Event::new(b"another payload").id(100)];
    assert_duplicate_of(
        log.append_to(key, Expected::Any, &changed).unwrap(),
        original,
        1,
    );

    assert_eq!(log.end_offset(partition).unwrap(), end);
    assert_eq!(visible_events(&log), events);
    let payloads = stream_payloads(&log, key, 0);
    assert_eq!(
        payloads,
        [
            &b"no id"[..],
            b"authorized",
            b"captured",
            b"settled",
            b"closed"
        ]
    );
    let ids: Vec<Option<u128>> = log
        .read_key(key, 0)
        .unwrap()
        .iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(ids, [None, Some(100), Some(200), Some(201), Some(202)]);
    // The next new event continues right after the originals.
    let next = log.append(key, b"next").unwrap();
    assert_eq!((next.version, next.offset), (5, end));
    log.close().unwrap();
}

#[test]
fn a_retry_while_the_original_is_queued_returns_its_place_once_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
    let key = b"payment-2";
    let events = with_ids(&[b"a", b"b"], 300);
    // The original's sync waits: it is written but not visible when the retry comes.
    let held = SyncsHeld::new(&fail_points);
    let ticket = log
        .append_to_pipelined(key, Expected::NoStream, &events)
        .unwrap();
    let original = ticket.appended();
    std::thread::scope(|scope| {
        let retry = scope.spawn(|| log.append_to(key, Expected::NoStream, &events));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let waited = !retry.is_finished();
        held.release();
        assert!(waited, "the retry waits for the original");
        assert_duplicate_of(retry.join().unwrap().unwrap(), original, 2);
    });
    assert_eq!(ticket.wait().unwrap(), original);
    assert_eq!(stream_payloads(&log, key, 0), [&b"a"[..], b"b"]);
    assert_eq!(visible_events(&log), 2);
    log.close().unwrap();
}

#[test]
fn a_retry_after_reopen_returns_the_original_place() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "order", 3);
    let mut originals = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        log.append(key, b"before").unwrap();
        let events = with_ids(&[b"placed", b"paid"], 1000 * k as u128);
        originals.push((
            events.clone(),
            log.append_to(key, Expected::Any, &events).unwrap(),
        ));
    }
    let events_before = visible_events(&log);
    log.close().unwrap();

    for reopen in 0..2 {
        let log = Log::open(dir.path(), options()).unwrap();
        for (key, (events, original)) in keys.iter().zip(&originals) {
            let retry = log.append_to(key, Expected::Any, events).unwrap();
            assert_duplicate_of(retry, *original, 2);
            // One of the ids alone is a whole retry too.
            let retry = log.append_to(key, Expected::Any, &events[1..]).unwrap();
            assert!(retry.duplicate);
            assert_eq!(
                (retry.offset, retry.version),
                (original.offset + 1, original.version + 1),
                "reopen {reopen}"
            );
        }
        assert_eq!(visible_events(&log), events_before, "reopen {reopen}");
        log.close().unwrap();
    }
}

#[test]
fn a_retry_finds_an_original_in_a_sealed_segment_through_its_key_table() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    let key = b"ledger";
    let single = with_ids(&[b"opened"], 7);
    let batch = with_ids(&[b"credited", b"debited"], 8);
    let original = log.append_to(key, Expected::NoStream, &single).unwrap();
    let original_batch = log.append_to(key, Expected::Exact(0), &batch).unwrap();
    // Filler under other keys, with ids of their own, until segment 0 is sealed twice over.
    let filler = vec![b'f'; 2000];
    let mut id = 1u128 << 64;
    while segment_bases(dir.path(), 0).len() < 4 {
        let events: Vec<Event> = (0..4)
            .map(|_| {
                id += 1;
                Event::new(&filler).id(id)
            })
            .collect();
        log.append_to(
            format!("filler-{}", id % 5).as_bytes(),
            Expected::Any,
            &events,
        )
        .unwrap();
    }
    let end = log.end_offset(0).unwrap();

    let check = |log: &Log, context: &str| {
        let retry = log.append_to(key, Expected::Any, &single).unwrap();
        assert_duplicate_of(retry, original, 1);
        let retry = log.append_to(key, Expected::Any, &batch).unwrap();
        assert_duplicate_of(retry, original_batch, 2);
        // The newest filler id, in the segment being written, under its own key, comes back too.
        let last_filler = [Event::new(&filler).id(id)];
        let key = format!("filler-{}", id % 5);
        let retry = log
            .append_to(key.as_bytes(), Expected::Any, &last_filler)
            .unwrap();
        assert!(retry.duplicate, "{context}");
        assert_eq!(
            log.end_offset(0).unwrap(),
            end,
            "{context}: nothing written"
        );
        assert!(
            keys_path(dir.path(), 0, 0).exists(),
            "{context}: segment 0's table"
        );
    };
    check(&log, "first lookup");
    log.close().unwrap();

    let log = Log::open(dir.path(), options.clone()).unwrap();
    check(&log, "after reopening, with the table files");
    log.close().unwrap();

    let tables = keys_bases(dir.path(), 0);
    assert!(!tables.is_empty());
    for base in tables {
        fs::remove_file(keys_path(dir.path(), 0, base)).unwrap();
    }
    let log = Log::open(dir.path(), options).unwrap();
    check(&log, "after reopening without the table files");
    log.close().unwrap();
}

#[test]
fn ids_at_the_edges_of_their_range_are_ids_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    let key = b"edges";
    // Zero, the largest, and ids whose halves are equal or mirror each other (a filter that
    // folds the halves together sees these alike).
    let ids = [
        0,
        u128::MAX,
        1,
        1 << 64,
        (1 << 64) | 1,
        u128::from(u64::MAX),
        u128::MAX << 64,
    ];
    let originals: Vec<Appended> = ids
        .iter()
        .map(|&id| {
            let payload = format!("id {id:#x}");
            let events = [Event::new(payload.as_bytes()).id(id)];
            log.append_to(key, Expected::Any, &events).unwrap()
        })
        .collect();
    let filler = vec![b'f'; 4000];
    while segment_bases(dir.path(), 0).len() < 3 {
        log.append_batch(b"filler", [&filler, &filler, &filler])
            .unwrap();
    }
    let check = |log: &Log, context: &str| {
        let records = log.read_key(key, 0).unwrap();
        let stored: Vec<Option<u128>> = records.iter().map(|r| r.event_id).collect();
        let expected: Vec<Option<u128>> = ids.iter().map(|&id| Some(id)).collect();
        assert_eq!(stored, expected, "{context}");
        for (&id, original) in ids.iter().zip(&originals) {
            let retry = log
                .append_to(key, Expected::Any, &[Event::new(b"retry").id(id)])
                .unwrap();
            assert_duplicate_of(retry, *original, 1);
        }
        assert_eq!(log.read_key(key, 0).unwrap().len(), ids.len(), "{context}");
    };
    check(&log, "before reopening");
    log.close().unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    check(&log, "after reopening");
    // Ids near them are new.
    for id in [2, (2 << 64) | 2, u128::MAX - 1] {
        let new = log
            .append_to(key, Expected::Any, &[Event::new(b"new").id(id)])
            .unwrap();
        assert!(!new.duplicate, "{id:#x}");
    }
    log.close().unwrap();
}

#[test]
fn ids_partly_present_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"cart-9";
    let partition = log.partition_for(key);
    log.append_to(key, Expected::Any, &with_ids(&[b"10", b"11"], 10))
        .unwrap();
    let end = log.end_offset(partition).unwrap();

    let cases: [(Vec<Event>, &[u128]); 4] = [
        (with_ids(&[b"11", b"12", b"13"], 11), &[11]),
        (with_ids(&[b"9", b"10", b"11"], 9), &[10, 11]),
        (vec![Event::new(b"10").id(10), Event::new(b"no id")], &[10]),
        (vec![Event::new(b"no id"), Event::new(b"11").id(11)], &[11]),
    ];
    for (events, present) in &cases {
        match log.append_to(key, Expected::Any, events) {
            Err(Error::IdsPartlyPresent { present: named }) => {
                let mut named = named.to_vec();
                named.sort_unstable();
                assert_eq!(named, *present);
            }
            other => panic!("{present:?}: {other:?}"),
        }
        assert_eq!(log.end_offset(partition).unwrap(), end, "{present:?}");
    }
    log.close().unwrap();

    // Nothing of the refused calls reached the log: ids 9, 12 and 13 are new.
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(stream_payloads(&log, key, 0), [&b"10"[..], b"11"]);
    let new = log
        .append_to(key, Expected::Exact(1), &with_ids(&[b"12", b"13"], 12))
        .unwrap();
    assert!(!new.duplicate);
    assert_eq!(new.version, 2);
    let nine = log.append_to(key, Expected::Any, &with_ids(&[b"9"], 9));
    assert_eq!(nine.unwrap().version, 4);
    log.close().unwrap();
}

#[track_caller]
fn assert_id_reused(result: annal::Result<Appended>, id: u128) {
    match result {
        Err(Error::IdReused { id: reused }) => assert_eq!(reused, id),
        other => panic!("id {id}: {other:?}"),
    }
}

#[test]
fn an_id_under_another_key_of_the_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_partition(&log, "shared", 1, 2);
    let (first, second) = (&keys[0], &keys[1]);
    let original = log
        .append_to(first, Expected::Any, &with_ids(&[b"x"], 42))
        .unwrap();
    let end = log.end_offset(1).unwrap();

    assert_id_reused(
        log.append_to(second, Expected::Any, &with_ids(&[b"x"], 42)),
        42,
    );
    let mixed = [Event::new(b"new").id(43), Event::new(b"x").id(42)];
    assert_id_reused(log.append_to(second, Expected::Any, &mixed), 42);
    assert_eq!(log.end_offset(1).unwrap(), end);
    assert_eq!(log.last_version(second).unwrap(), None);
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    assert_id_reused(
        log.append_to(second, Expected::Any, &with_ids(&[b"x"], 42)),
        42,
    );
    // Its own key still takes the retry.
    let retry = log.append_to(first, Expected::Any, &with_ids(&[b"x"], 42));
    assert_duplicate_of(retry.unwrap(), original, 1);
    assert_eq!(log.end_offset(1).unwrap(), end);
    log.close().unwrap();
}

/// Ids identify events within their key's partition (`docs/durability.md`). Found as a bug:
/// the same call under a key of another partition was refused with `IdReused` while the
/// original was still unpublished, and written once it was visible.
#[test]
fn an_id_under_a_key_of_another_partition_is_a_new_event_whether_or_not_the_original_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
    let keys = keys_in_distinct_partitions(&log, "elsewhere", 3);
    let events = with_ids(&[b"x"], 77);

    // The original is queued (its sync is held) when the second key takes the id.
    let held = SyncsHeld::new(&fail_points);
    let first = log
        .append_to_pipelined(&keys[0], Expected::Any, &events)
        .unwrap();
    let second = log.append_to_pipelined(&keys[1], Expected::Any, &events);
    held.release();
    let first = first.wait().unwrap();
    let second = second.unwrap().wait().unwrap();
    assert!(!first.duplicate && !second.duplicate);

    // The originals are visible, and (after one more round of the writer) found on disk only,
    // when the third key takes the id.
    log.append(b"one more round", b"r").unwrap();
    let third = log.append_to(&keys[2], Expected::Any, &events).unwrap();
    assert!(!third.duplicate);
    assert_eq!(visible_events(&log), 4);

    // Each key's retry finds its own event.
    for (key, original) in keys.iter().zip([first, second, third]) {
        let retry = log.append_to(key, Expected::Any, &events).unwrap();
        assert_duplicate_of(retry, original, 1);
    }
    assert_eq!(visible_events(&log), 4);
    log.close().unwrap();
}

#[test]
fn an_id_twice_in_one_call_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"twice";
    let events = [
        Event::new(b"a").id(5),
        Event::new(b"b").id(6),
        Event::new(b"c").id(5),
    ];
    assert_id_reused(log.append_to(key, Expected::Any, &events), 5);
    assert_id_reused(log.append_batch(key, &events), 5);
    assert_eq!(visible_events(&log), 0);
    assert_eq!(log.last_version(key).unwrap(), None);
    // Each id once is fine; repeating the call then is a retry.
    let original = log.append_to(key, Expected::Any, &events[..2]).unwrap();
    let retry = log.append_to(key, Expected::Any, &events[..2]).unwrap();
    assert_duplicate_of(retry, original, 2);
    // A call naming an id twice is refused even when that id is in the log already.
    let doubled = [Event::new(b"a").id(5), Event::new(b"a").id(5)];
    assert_id_reused(log.append_to(key, Expected::Any, &doubled), 5);
    assert_eq!(visible_events(&log), 2);
    log.close().unwrap();
}

#[test]
fn a_retry_ignores_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"expectations";
    let events = with_ids(&[b"created"], 900);
    let original = log.append_to(key, Expected::NoStream, &events).unwrap();
    log.append(key, b"later").unwrap();
    // None of these expectations holds now; the retry is still answered with the original.
    for expected in [
        Expected::NoStream,
        Expected::Exact(0),
        Expected::Exact(99),
        Expected::StreamExists,
        Expected::Any,
    ] {
        let retry = log.append_to(key, expected, &events).unwrap();
        assert_duplicate_of(retry, original, 1);
    }
    // A new event under a stale expectation is still refused.
    let stale = log.append_to(key, Expected::Exact(0), &with_ids(&[b"new"], 901));
    assert!(
        matches!(
            stale,
            Err(Error::Conflict {
                actual: Some(1),
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(stream_payloads(&log, key, 0), [&b"created"[..], b"later"]);
    log.close().unwrap();
}

#[test]
fn an_id_whose_append_failed_can_be_appended_again() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
    let key = b"failed-once";
    log.append(key, b"first").unwrap();
    let events = with_ids(&[b"retried", b"too"], 50);
    fail_points.fail_writes(1);
    let failed = log.append_to(key, Expected::Exact(0), &events);
    assert!(
        matches!(failed, Err(Error::AppendFailed { .. })),
        "{failed:?}"
    );
    // The failed append was never written, so its ids are new: the retry writes them, at the
    // versions the failed append had been given.
    let retry = log.append_to(key, Expected::Exact(0), &events).unwrap();
    assert!(!retry.duplicate);
    assert_eq!(
        (retry.version, retry.offset, retry.global_position),
        (1, 1, 1)
    );
    let again = log.append_to(key, Expected::Exact(0), &events).unwrap();
    assert_duplicate_of(again, retry, 2);
    let all = global_order(&log, 0);
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].event_id, Some(50));
    log.close().unwrap();
}
