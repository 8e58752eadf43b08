//! `append_multi` appends to several keys, in any partitions, as one unit: the keys' events
//! take consecutive global positions (also with other appenders racing), each key its own next
//! versions and its partition's next offsets; if one key's expectation fails, or the write
//! fails, nothing of any key is written; a key named twice is refused; a retry with the same
//! ids returns the original places.

mod common;

use annal::io::FailPoints;
use annal::{Appended, Durability, Error, Event, Expected, KeyAppend, Log, Options};
use common::streams::{
    global_order, keys_in_distinct_partitions, keys_in_partition, stream_payloads, visible_events,
};

fn options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
}

fn events<'a>(payloads: &[&'a str]) -> Vec<Event<'a>> {
    payloads.iter().map(|p| Event::new(*p)).collect()
}

fn with_ids<'a>(payloads: &[&'a str], first_id: u128) -> Vec<Event<'a>> {
    payloads
        .iter()
        .zip(first_id..)
        .map(|(p, id)| Event::new(*p).id(id))
        .collect()
}

/// Each partition's end and each key's last version.
fn standing(log: &Log, keys: &[Vec<u8>]) -> (Vec<u64>, Vec<Option<u64>>) {
    let ends = (0..log.partition_count())
        .map(|p| log.end_offset(p).unwrap())
        .collect();
    let lasts = keys.iter().map(|k| log.last_version(k).unwrap()).collect();
    (ends, lasts)
}

/// The results of one call take consecutive global positions, in the order given.
#[track_caller]
fn assert_consecutive(appended: &[Appended]) {
    for pair in appended.windows(2) {
        assert_eq!(
            pair[1].global_position,
            pair[0].last_global_position() + 1,
            "{appended:?}"
        );
    }
}

#[test]
fn a_multi_key_append_takes_consecutive_global_positions_and_each_key_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "aggregate", 4);
    log.append_batch(&keys[0], ["a0", "a1"]).unwrap();
    log.append(&keys[2], "c0").unwrap();
    log.append(b"elsewhere", "moves an offset").unwrap();
    let (ends, _) = standing(&log, &keys);
    let global = visible_events(&log);

    let (a, b, c, d) = (
        events(&["a2", "a3"]),
        events(&["b0"]),
        events(&["c1", "c2", "c3"]),
        events(&["d0"]),
    );
    let calls = [
        KeyAppend::new(&keys[0], Expected::Exact(1), &a),
        KeyAppend::new(&keys[1], Expected::NoStream, &b),
        KeyAppend::new(&keys[2], Expected::StreamExists, &c),
        KeyAppend::new(&keys[3], Expected::Any, &d),
    ];
    let appended = log.append_multi(&calls).unwrap();
    assert_eq!(appended.len(), calls.len());
    assert_consecutive(&appended);
    assert_eq!(appended[0].global_position, global);
    let versions: Vec<(u64, u32)> = appended.iter().map(|a| (a.version, a.count)).collect();
    assert_eq!(versions, [(2, 2), (0, 1), (1, 3), (0, 1)]);
    for (key, appended) in keys.iter().zip(&appended) {
        let partition = log.partition_for(key);
        assert_eq!(appended.partition, partition);
        assert_eq!(
            appended.offset, ends[partition as usize],
            "the partition's next offset"
        );
        assert!(!appended.duplicate);
    }

    let check = |log: &Log, context: &str| {
        let order = global_order(log, 0);
        assert_eq!(order.len() as u64, global + 7, "{context}");
        let call_payloads: Vec<(&[u8], &[u8])> = order[global as usize..]
            .iter()
            .map(|r| (r.key.as_ref(), r.payload.as_ref()))
            .collect();
        let expected: Vec<(&[u8], &[u8])> = keys
            .iter()
            .zip([&a, &b, &c, &d])
            .flat_map(|(key, events)| events.iter().map(move |e| (key.as_slice(), e.payload())))
            .collect();
        assert_eq!(
            call_payloads, expected,
            "{context}: the call in global order"
        );
        assert_eq!(
            stream_payloads(log, &keys[0], 0),
            [&b"a0"[..], b"a1", b"a2", b"a3"]
        );
        assert_eq!(
            stream_payloads(log, &keys[2], 1),
            [&b"c1"[..], b"c2", b"c3"]
        );
        assert_eq!(log.last_version(&keys[1]).unwrap(), Some(0), "{context}");
        for (key, appended) in keys.iter().zip(&appended) {
            let record = common::record_at(log, appended.partition, appended.offset);
            assert_eq!(record.key.as_ref(), key.as_slice(), "{context}");
            assert_eq!(
                record.global_position, appended.global_position,
                "{context}"
            );
        }
    };
    check(&log, "before reopening");
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    check(&log, "after reopening");
    log.close().unwrap();
}

/// Found as a bug: keys of one call that shared a partition were all given the partition's
/// next offset; the later frames were written with offsets already taken, stayed invisible,
/// and after a reopen the partition read as corrupt ("frame offset does not continue the
/// partition").
#[test]
fn keys_sharing_a_partition_in_one_multi_key_append_take_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_partition(&log, "neighbour", 2, 3);
    log.append(&keys[0], "k0 v0").unwrap();
    let end = log.end_offset(2).unwrap();
    let (a, b, c) = (
        events(&["k0 v1", "k0 v2"]),
        events(&["k1 v0"]),
        events(&["k2 v0", "k2 v1"]),
    );
    let calls = [
        KeyAppend::new(&keys[0], Expected::Exact(0), &a),
        KeyAppend::new(&keys[1], Expected::NoStream, &b),
        KeyAppend::new(&keys[2], Expected::Any, &c),
    ];
    let appended = log.append_multi(&calls).unwrap();
    assert_consecutive(&appended);
    let offsets: Vec<u64> = appended.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, [end, end + 2, end + 3], "in the order given");
    let check = |log: &Log, context: &str| {
        assert_eq!(log.end_offset(2).unwrap(), end + 5, "{context}");
        let payloads: Vec<Vec<u8>> = common::read_from(log, 2, 0)
            .iter()
            .map(|r| r.payload.to_vec())
            .collect();
        let expected = ["k0 v0", "k0 v1", "k0 v2", "k1 v0", "k2 v0", "k2 v1"];
        assert_eq!(
            payloads,
            expected.map(|p| p.as_bytes().to_vec()),
            "{context}"
        );
        assert_eq!(
            stream_payloads(log, &keys[1], 0),
            [&b"k1 v0"[..]],
            "{context}"
        );
        assert_eq!(global_order(log, 0).len(), 6, "{context}");
    };
    check(&log, "before reopening");
    // The next append continues after the call.
    let next = log.append(&keys[1], "k1 v1").unwrap();
    assert_eq!(next.offset, end + 5);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(common::read_all(&log, 2).len(), 7);
    log.close().unwrap();
}

#[test]
fn a_failed_expectation_on_one_key_writes_nothing_for_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "all-or-nothing", 3);
    log.append(&keys[0], "x0").unwrap();
    log.append_batch(&keys[2], ["z0", "z1"]).unwrap();
    let before = standing(&log, &keys);
    let global = visible_events(&log);
    let (x, y, z) = (events(&["x"]), events(&["y", "y"]), events(&["z"]));

    // The failing key first, in the middle, last.
    let failing = [
        (0, Expected::NoStream, Some(0)),
        (1, Expected::StreamExists, None),
        (2, Expected::Exact(0), Some(1)),
    ];
    for (bad, expected, actual) in failing {
        let mut calls = vec![
            KeyAppend::new(&keys[0], Expected::Exact(0), &x),
            KeyAppend::new(&keys[1], Expected::NoStream, &y),
            KeyAppend::new(&keys[2], Expected::Exact(1), &z),
        ];
        let events = [&x, &y, &z][bad];
        calls[bad] = KeyAppend::new(&keys[bad], expected, events);
        match log.append_multi(&calls) {
            Err(Error::Conflict {
                key,
                expected: reported,
                actual: reported_actual,
            }) => {
                assert_eq!(&key[..], &keys[bad][..]);
                assert_eq!((reported, reported_actual), (expected, actual));
            }
            other => panic!("key {bad}: {other:?}"),
        }
        assert_eq!(standing(&log, &keys), before, "key {bad} failed");
        assert_eq!(visible_events(&log), global);
    }
    // The same call with every expectation holding takes the next global positions.
    let calls = [
        KeyAppend::new(&keys[0], Expected::Exact(0), &x),
        KeyAppend::new(&keys[1], Expected::NoStream, &y),
        KeyAppend::new(&keys[2], Expected::Exact(1), &z),
    ];
    let appended = log.append_multi(&calls).unwrap();
    assert_eq!(appended[0].global_position, global);
    assert_consecutive(&appended);
    assert_eq!(global_order(&log, 0).len() as u64, global + 4);
    log.close().unwrap();
}

#[test]
fn a_repeated_key_or_an_empty_call_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "repeat", 2);
    let (one, two) = (events(&["1"]), events(&["2"]));
    let calls = [
        KeyAppend::new(&keys[0], Expected::Any, &one),
        KeyAppend::new(&keys[1], Expected::Any, &two),
        KeyAppend::new(&keys[0], Expected::Any, &two),
    ];
    match log.append_multi(&calls) {
        Err(Error::RepeatedKey { key }) => assert_eq!(&key[..], &keys[0][..]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(log.append_multi(&[]), Err(Error::EmptyBatch)));
    let empty: Vec<Event> = Vec::new();
    let with_empty = [
        KeyAppend::new(&keys[0], Expected::Any, &one),
        KeyAppend::new(&keys[1], Expected::Any, &empty),
    ];
    assert!(matches!(
        log.append_multi(&with_empty),
        Err(Error::EmptyBatch)
    ));
    assert_eq!(visible_events(&log), 0);
    assert_eq!(standing(&log, &keys).1, [None, None]);
    log.close().unwrap();
}

#[test]
fn a_multi_key_append_over_the_batch_limit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().batch_bytes_max(16 << 10)).unwrap();
    let keys = keys_in_distinct_partitions(&log, "large", 3);
    let payload = vec![b'l'; 6 << 10];
    let each = [Event::new(&payload)];
    // Each key's part fits the limit; together they do not.
    let calls: Vec<KeyAppend> = keys
        .iter()
        .map(|k| KeyAppend::new(k, Expected::Any, &each))
        .collect();
    let result = log.append_multi(&calls);
    assert!(
        matches!(result, Err(Error::BatchTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(visible_events(&log), 0);
    let fits = log.append_multi(&calls[..2]).unwrap();
    assert_eq!(fits[1].global_position, 1);
    log.close().unwrap();
}

#[test]
fn a_retried_multi_key_append_returns_the_original_places() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "retried", 3);
    log.append(&keys[1], "before").unwrap();
    let (a, b, c) = (
        with_ids(&["a0", "a1"], 10),
        with_ids(&["b1"], 20),
        with_ids(&["c0", "c1", "c2"], 30),
    );
    let calls = [
        KeyAppend::new(&keys[0], Expected::NoStream, &a),
        KeyAppend::new(&keys[1], Expected::Exact(0), &b),
        KeyAppend::new(&keys[2], Expected::NoStream, &c),
    ];
    let original = log.append_multi(&calls).unwrap();
    let events_after = visible_events(&log);

    let check_retry = |log: &Log, context: &str| {
        // The expectations no longer hold; a retry is answered all the same.
        let retry = log.append_multi(&calls).unwrap();
        assert_eq!(retry.len(), 3, "{context}");
        for (retry, original) in retry.iter().zip(&original) {
            assert!(retry.duplicate, "{context}");
            assert_eq!(
                (
                    retry.partition,
                    retry.offset,
                    retry.version,
                    retry.global_position
                ),
                (
                    original.partition,
                    original.offset,
                    original.version,
                    original.global_position
                ),
                "{context}"
            );
            assert_eq!(retry.count, original.count, "{context}");
        }
        assert_eq!(visible_events(log), events_after, "{context}");
    };
    check_retry(&log, "at once");

    // One key's part new, the others retried: partly present, nothing written.
    let fresh = with_ids(&["c-new"], 99);
    let mixed = [
        KeyAppend::new(&keys[0], Expected::Any, &a),
        KeyAppend::new(&keys[2], Expected::Any, &fresh),
    ];
    match log.append_multi(&mixed) {
        Err(Error::IdsPartlyPresent { present }) => {
            let mut present = present.to_vec();
            present.sort_unstable();
            assert_eq!(present, [10, 11]);
        }
        other => panic!("{other:?}"),
    }
    // One id under two keys of one call.
    let again = with_ids(&["twice"], 99);
    let twice = [
        KeyAppend::new(&keys[0], Expected::Any, &fresh),
        KeyAppend::new(&keys[1], Expected::Any, &again),
    ];
    assert!(matches!(
        log.append_multi(&twice),
        Err(Error::IdReused { id: 99 })
    ));
    assert_eq!(visible_events(&log), events_after);
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    check_retry(&log, "after reopening");
    log.close().unwrap();
}

#[test]
fn a_failed_write_fails_every_key_of_a_multi_key_append() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), options().fail_points(fail_points.clone())).unwrap();
    let keys = keys_in_distinct_partitions(&log, "failing", 3);
    log.append(&keys[0], "k0 v0").unwrap();
    let before = standing(&log, &keys);
    let (a, b, c) = (
        with_ids(&["k0 v1"], 1),
        with_ids(&["k1 v0", "k1 v1"], 2),
        with_ids(&["k2 v0"], 4),
    );
    let calls = [
        KeyAppend::new(&keys[0], Expected::Exact(0), &a),
        KeyAppend::new(&keys[1], Expected::NoStream, &b),
        KeyAppend::new(&keys[2], Expected::NoStream, &c),
    ];
    fail_points.fail_writes(1);
    let failed = log.append_multi(&calls);
    assert!(
        matches!(failed, Err(Error::AppendFailed { .. })),
        "{failed:?}"
    );
    assert_eq!(standing(&log, &keys), before);
    // The same call again is not a duplicate: nothing of it was written. It gets the places
    // the failed call had been given.
    let appended = log.append_multi(&calls).unwrap();
    assert!(appended.iter().all(|a| !a.duplicate));
    assert_eq!(appended[0].global_position, 1);
    assert_consecutive(&appended);
    let versions: Vec<u64> = appended.iter().map(|a| a.version).collect();
    assert_eq!(versions, [1, 0, 0]);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(global_order(&log, 0).len(), 5);
    assert_eq!(
        stream_payloads(&log, &keys[1], 0),
        [&b"k1 v0"[..], b"k1 v1"]
    );
    log.close().unwrap();
}

#[test]
fn racing_multi_key_appends_each_hold_one_run_of_the_global_order() {
    const THREADS: usize = 6;
    const CALLS_PER_THREAD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    // Eight keys over four partitions: a call's keys sometimes share one.
    let log = Log::open(dir.path(), options()).unwrap();
    let shared_keys: Vec<Vec<u8>> = (0..8).map(|k| format!("shared-{k}").into_bytes()).collect();
    let results: Vec<Vec<Vec<Appended>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (log, shared_keys) = (&log, &shared_keys);
                scope.spawn(move || {
                    (0..CALLS_PER_THREAD)
                        .map(|call| {
                            let payload = format!("t{thread} c{call}");
                            let one = [Event::new(payload.as_bytes())];
                            let two = [Event::new(payload.as_bytes()), Event::new(b"second")];
                            // Three of the shared keys, chosen by thread and call; odd
                            // threads append to one key at a time in between.
                            let first = (thread + call) % shared_keys.len();
                            let picks = [first, (first + 3) % 8, (first + 5) % 8];
                            let calls: Vec<KeyAppend> = picks
                                .iter()
                                .enumerate()
                                .map(|(i, &k)| {
                                    let events: &[Event] = if i == 1 { &two } else { &one };
                                    KeyAppend::new(&shared_keys[k], Expected::Any, events)
                                })
                                .collect();
                            if thread % 2 == 1 {
                                log.append(&shared_keys[first], payload.as_bytes()).unwrap();
                            }
                            log.append_multi(&calls).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let order = global_order(&log, 0);
    assert_eq!(order.len() as u64, visible_events(&log));
    for (thread, calls) in results.iter().enumerate() {
        for (call, appended) in calls.iter().enumerate() {
            assert_consecutive(appended);
            let start = appended[0].global_position as usize;
            let end = appended[2].last_global_position() as usize + 1;
            assert_eq!(end - start, 4);
            let payload = format!("t{thread} c{call}");
            let run: Vec<&[u8]> = order[start..end]
                .iter()
                .map(|r| r.payload.as_ref())
                .collect();
            let second: &[u8] = b"second";
            assert_eq!(
                run,
                [
                    payload.as_bytes(),
                    payload.as_bytes(),
                    second,
                    payload.as_bytes()
                ]
            );
            for (appended, record) in appended.iter().zip([start, start + 1, start + 3]) {
                let record = &order[record];
                assert_eq!(
                    (record.partition, record.offset, record.version),
                    (appended.partition, appended.offset, appended.version)
                );
            }
        }
    }
    // Each key's versions run 0, 1, 2, ... along the global order.
    for key in &shared_keys {
        let versions: Vec<u64> = order
            .iter()
            .filter(|r| r.key.as_ref() == key.as_slice())
            .map(|r| r.version)
            .collect();
        assert!(versions.iter().enumerate().all(|(i, &v)| v == i as u64));
        assert_eq!(
            log.last_version(key).unwrap(),
            Some(versions.len() as u64 - 1)
        );
    }
    log.close().unwrap();
}
