//! Expected versions are checked atomically with the assignment of versions: of threads racing
//! with `Exact(n)` (or `NoStream`) on one key exactly one wins each version, and every loser gets
//! `Conflict` with the key's actual last version; a call whose expectation fails writes nothing;
//! pipelined appends chain expectations on appends that are queued but not yet written.

mod common;

use std::sync::Barrier;

use annal::{Durability, Error, Event, Expected, Log, Options};
use common::streams::{global_order, keys_in_distinct_partitions, stream, visible_events};

const THREADS: usize = 8;

fn options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
}

/// What one racer got in one round: the version it won, or the conflict it lost with.
#[derive(Debug)]
enum Outcome {
    Won(u64),
    Lost {
        expected: Expected,
        actual: Option<u64>,
    },
}

fn race_once(log: &Log, key: &[u8], expected: Expected, payload: &[u8]) -> Outcome {
    match log.append_to(key, expected, &[Event::new(payload)]) {
        Ok(appended) => {
            assert!(!appended.duplicate);
            Outcome::Won(appended.version)
        }
        Err(Error::Conflict {
            key: conflict_key,
            expected,
            actual,
        }) => {
            assert_eq!(&conflict_key[..], key);
            Outcome::Lost { expected, actual }
        }
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn exactly_one_of_racing_exact_appenders_wins_each_version() {
    const ROUNDS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"contended";
    let start = Barrier::new(THREADS);
    let end = Barrier::new(THREADS);
    // Per round, per thread: the outcome.
    let outcomes: Vec<Vec<Outcome>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (log, start, end) = (&log, &start, &end);
                scope.spawn(move || {
                    (0..ROUNDS)
                        .map(|round| {
                            let expected = match round {
                                0 => Expected::NoStream,
                                _ => Expected::Exact(round - 1),
                            };
                            let payload = format!("round {round} thread {thread}");
                            start.wait();
                            let outcome = race_once(log, key, expected, payload.as_bytes());
                            end.wait();
                            outcome
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });

    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = match round {
            0 => Expected::NoStream,
            _ => Expected::Exact(round - 1),
        };
        let mut winner = None;
        for (thread, per_round) in outcomes.iter().enumerate() {
            match per_round[round as usize] {
                Outcome::Won(version) => {
                    assert_eq!(version, round, "round {round}");
                    assert!(winner.is_none(), "round {round}: two winners");
                    winner = Some(thread);
                }
                Outcome::Lost {
                    expected: reported,
                    actual,
                } => {
                    assert_eq!(reported, expected, "round {round} thread {thread}");
                    assert_eq!(actual, Some(round), "round {round}: the winner's version");
                }
            }
        }
        winners.push(winner.unwrap_or_else(|| panic!("round {round}: no winner")));
    }

    let records = stream(&log, key, 0);
    assert_eq!(records.len() as u64, ROUNDS);
    for (round, (record, winner)) in records.iter().zip(&winners).enumerate() {
        assert_eq!(record.version, round as u64);
        let payload = format!("round {round} thread {winner}");
        assert_eq!(record.payload.as_ref(), payload.as_bytes());
    }
    assert_eq!(log.end_offset(log.partition_for(key)).unwrap(), ROUNDS);
    assert_eq!(log.last_version(key).unwrap(), Some(ROUNDS - 1));
    log.close().unwrap();
}

#[test]
fn racing_optimistic_appenders_build_one_contiguous_stream() {
    const EVENTS_PER_THREAD: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"optimistic";
    // Each thread appends its events one by one, each expecting the version it last heard of;
    // a conflict tells it the actual one, and it tries again from there.
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let log = &log;
            scope.spawn(move || {
                let mut last = log.last_version(key).unwrap();
                for seq in 0..EVENTS_PER_THREAD {
                    let payload = format!("thread {thread} seq {seq}");
                    let event = [Event::new(payload.as_bytes())];
                    loop {
                        let expected = last.map_or(Expected::NoStream, Expected::Exact);
                        match log.append_to(key, expected, &event) {
                            Ok(appended) => {
                                assert_eq!(
                                    Some(appended.version),
                                    last.map_or(Some(0), |v| v.checked_add(1))
                                );
                                last = Some(appended.version);
                                break;
                            }
                            Err(Error::Conflict { actual, .. }) => {
                                assert_ne!(actual, last, "a conflict names another version");
                                assert!(actual.is_some(), "another thread appended");
                                last = actual;
                            }
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                }
            });
        }
    });
    let total = THREADS as u64 * EVENTS_PER_THREAD;
    let records = stream(&log, key, 0);
    assert_eq!(records.len() as u64, total);
    let mut next_seq = [0u64; THREADS];
    for (version, record) in records.iter().enumerate() {
        assert_eq!(record.version, version as u64);
        let text = std::str::from_utf8(&record.payload).unwrap();
        let mut words = text.split(' ').skip(1).step_by(2);
        let thread: usize = words.next().unwrap().parse().unwrap();
        let seq: u64 = words.next().unwrap().parse().unwrap();
        assert_eq!(seq, next_seq[thread], "each thread's events in its order");
        next_seq[thread] += 1;
    }
    assert_eq!(log.last_version(key).unwrap(), Some(total - 1));
    log.close().unwrap();
}

#[test]
fn exactly_one_of_racing_no_stream_appenders_creates_each_stream() {
    const KEYS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let start = Barrier::new(THREADS);
    let outcomes: Vec<Vec<Outcome>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (log, start) = (&log, &start);
                scope.spawn(move || {
                    (0..KEYS)
                        .map(|k| {
                            let key = format!("new-{k}");
                            let payload = format!("created by {thread}");
                            start.wait();
                            race_once(log, key.as_bytes(), Expected::NoStream, payload.as_bytes())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for k in 0..KEYS {
        let key = format!("new-{k}");
        let mut winners = Vec::new();
        for (thread, per_key) in outcomes.iter().enumerate() {
            match per_key[k] {
                Outcome::Won(version) => {
                    assert_eq!(version, 0);
                    winners.push(thread);
                }
                Outcome::Lost { expected, actual } => {
                    assert_eq!(expected, Expected::NoStream);
                    assert_eq!(actual, Some(0), "{key}: the stream exists now");
                }
            }
        }
        assert_eq!(winners.len(), 1, "{key}: one creator");
        let records = stream(&log, key.as_bytes(), 0);
        assert_eq!(records.len(), 1, "{key}");
        let payload = format!("created by {}", winners[0]);
        assert_eq!(records[0].payload.as_ref(), payload.as_bytes());
    }
    assert_eq!(visible_events(&log), KEYS as u64);
    log.close().unwrap();
}

#[test]
fn exactly_one_of_racing_appenders_wins_on_keys_known_only_on_disk() {
    const KEYS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let key = |k: usize| format!("cold-{k}");
    let log = Log::open(dir.path(), options()).unwrap();
    for k in 0..KEYS {
        log.append_batch(key(k).as_bytes(), [&b"0"[..], b"1", b"2"])
            .unwrap();
    }
    log.close().unwrap();
    // After a reopen no key's version is in memory: every racer looks it up on disk, and the
    // answers must still make exactly one of them win.
    let log = Log::open(dir.path(), options()).unwrap();
    let start = Barrier::new(THREADS);
    let outcomes: Vec<Vec<Outcome>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (log, start) = (&log, &start);
                scope.spawn(move || {
                    (0..KEYS)
                        .map(|k| {
                            let payload = format!("3 by {thread}");
                            start.wait();
                            race_once(
                                log,
                                key(k).as_bytes(),
                                Expected::Exact(2),
                                payload.as_bytes(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for k in 0..KEYS {
        let mut winners = Vec::new();
        for (thread, per_key) in outcomes.iter().enumerate() {
            match per_key[k] {
                Outcome::Won(version) => {
                    assert_eq!(version, 3, "{}", key(k));
                    winners.push(thread);
                }
                Outcome::Lost { actual, .. } => assert_eq!(actual, Some(3), "{}", key(k)),
            }
        }
        assert_eq!(winners.len(), 1, "{}: one winner", key(k));
        let records = stream(&log, key(k).as_bytes(), 0);
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_ref()).collect();
        let won = format!("3 by {}", winners[0]);
        assert_eq!(
            payloads,
            [&b"0"[..], b"1", b"2", won.as_bytes()],
            "{}",
            key(k)
        );
    }
    log.close().unwrap();
}

/// Where the log stands: each partition's end, each key's last version, the number of events
/// in the global order.
#[derive(Debug, PartialEq)]
struct Standing {
    ends: Vec<u64>,
    last_versions: Vec<Option<u64>>,
    global_events: usize,
}

fn standing(log: &Log, keys: &[Vec<u8>]) -> Standing {
    Standing {
        ends: (0..log.partition_count())
            .map(|p| log.end_offset(p).unwrap())
            .collect(),
        last_versions: keys.iter().map(|k| log.last_version(k).unwrap()).collect(),
        global_events: global_order(log, 0).len(),
    }
}

#[test]
fn a_batch_under_a_failed_expectation_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "stream", 2);
    let (existing, fresh) = (&keys[0], &keys[1]);
    log.append_batch(existing, [&b"e0"[..], b"e1", b"e2"])
        .unwrap();
    let before = standing(&log, &keys);
    let batch: Vec<Event> = (0..5).map(|_| Event::new(b"must not be written")).collect();

    let refusals = [
        (existing, Expected::Exact(0), Some(2)),
        (existing, Expected::Exact(3), Some(2)),
        (existing, Expected::NoStream, Some(2)),
        (fresh, Expected::StreamExists, None),
        (fresh, Expected::Exact(0), None),
    ];
    for (key, expected, actual) in refusals {
        let result = log.append_to(key, expected, &batch);
        match result {
            Err(Error::Conflict {
                key: conflict_key,
                expected: reported,
                actual: reported_actual,
            }) => {
                assert_eq!(&conflict_key[..], &key[..]);
                assert_eq!(reported, expected);
                assert_eq!(reported_actual, actual, "{expected:?}");
            }
            other => panic!("{expected:?}: {other:?}"),
        }
        assert_eq!(standing(&log, &keys), before, "after refusing {expected:?}");
    }

    // The expectations that hold write at the next offsets and global positions: the
    // refused calls took none.
    let next = log
        .append_to(existing, Expected::Exact(2), &batch[..2])
        .unwrap();
    assert_eq!((next.version, next.offset, next.global_position), (3, 3, 3));
    let created = log
        .append_to(fresh, Expected::NoStream, &batch[..1])
        .unwrap();
    assert_eq!(
        (created.version, created.offset, created.global_position),
        (0, 0, 5)
    );
    let exists = log
        .append_to(existing, Expected::StreamExists, &batch[..1])
        .unwrap();
    assert_eq!(exists.version, 5);
    log.close().unwrap();

    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(stream(&log, existing, 0).len(), 6);
    assert_eq!(global_order(&log, 0).len(), 7);
    log.close().unwrap();
}

#[test]
fn pipelined_appends_chain_expectations_on_queued_appends() {
    const CHAIN: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let keys = keys_in_distinct_partitions(&log, "pipelined", 2);
    // Two keys, interleaved: each append expects the version its key's previous (still
    // queued) append was given.
    let mut tickets = Vec::new();
    for version in 0..CHAIN {
        for key in &keys {
            let expected = match version {
                0 => Expected::NoStream,
                _ => Expected::Exact(version - 1),
            };
            let payload = format!("v{version}");
            let ticket = log
                .append_to_pipelined(key, expected, &[Event::new(payload.as_bytes())])
                .unwrap();
            assert_eq!(ticket.appended().version, version);
            // A stale expectation is refused at once, while the chain is in flight, and
            // takes nothing from it.
            if version % 50 == 49 {
                let stale = log.append_to_pipelined(
                    key,
                    Expected::Exact(version - 1),
                    &[Event::new(b"stale")],
                );
                assert!(
                    matches!(stale, Err(Error::Conflict { actual: Some(v), .. }) if v == version),
                    "{stale:?}"
                );
            }
            tickets.push((key.clone(), version, ticket));
        }
    }
    for (key, version, ticket) in tickets {
        let appended = ticket.wait().unwrap();
        assert_eq!(appended.version, version);
        assert_eq!(appended.partition, log.partition_for(&key));
    }
    for key in &keys {
        let records = stream(&log, key, 0);
        assert_eq!(records.len() as u64, CHAIN);
        for (version, record) in records.iter().enumerate() {
            assert_eq!(record.version, version as u64);
            assert_eq!(record.payload.as_ref(), format!("v{version}").as_bytes());
        }
    }
    assert_eq!(visible_events(&log), 2 * CHAIN);
    log.close().unwrap();
}
