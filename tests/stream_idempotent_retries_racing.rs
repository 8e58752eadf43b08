//! Retries of appends with event ids racing with each other, with new appends, with the
//! publication of their originals and with segment rolls: a call is written once, and every
//! retry gets the original's place back (`duplicate` set), never a second copy.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use annal::{Appended, Durability, Event, Expected, Log, Options};
use common::rng::SplitMix64;
use common::segment_files::segment_bases;
use common::streams::{assert_duplicate_of, visible_events};
use common::{BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

fn options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
}

#[test]
fn racing_retries_of_one_call_write_it_once() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let key = b"raced";
    let start = Barrier::new(THREADS);
    let results: Vec<Vec<Appended>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (log, start) = (&log, &start);
                scope.spawn(move || {
                    (0..ROUNDS)
                        .map(|round| {
                            let payload = format!("event {round}");
                            let events = [
                                Event::new(payload.as_bytes()).id(u128::from(round) * 2),
                                Event::new(payload.as_bytes()).id(u128::from(round) * 2 + 1),
                            ];
                            start.wait();
                            log.append_to(key, Expected::Any, &events).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for round in 0..ROUNDS as usize {
        let written: Vec<&Appended> = results
            .iter()
            .map(|r| &r[round])
            .filter(|a| !a.duplicate)
            .collect();
        assert_eq!(written.len(), 1, "round {round}: written once");
        let original = *written[0];
        assert_eq!(original.version, 2 * round as u64);
        for per_thread in &results {
            let appended = per_thread[round];
            if appended.duplicate {
                assert_duplicate_of(appended, original, 2);
            }
        }
    }
    let records = log.read_key(key, 0).unwrap();
    assert_eq!(records.len() as u64, 2 * ROUNDS);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.event_id, Some(i as u128));
    }
    log.close().unwrap();
}

#[test]
fn retries_during_appends_and_segment_rolls_always_find_their_original() {
    const WRITERS: u64 = 2;
    const RETRIERS: u64 = 2;
    const APPENDS_PER_WRITER: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .partitions(2)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX);
    let log = Log::open(dir.path(), options).unwrap();
    let key = |writer: u64, n: u64| format!("w{writer}-k{}", n % 3);
    let id = |writer: u64, n: u64| (u128::from(writer) << 96) | u128::from(n);
    let payload = |n: u64| vec![b'a' + (n % 26) as u8; 200 + (n as usize * 37) % 400];
    // What each writer had acknowledged, for the retriers to pick from.
    let acked: Vec<Mutex<Vec<Appended>>> = (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect();
    let writers_done = AtomicBool::new(false);
    let retries = std::thread::scope(|scope| {
        let retriers: Vec<_> = (0..RETRIERS)
            .map(|retrier| {
                let (log, acked, writers_done) = (&log, &acked, &writers_done);
                scope.spawn(move || {
                    let mut rng = SplitMix64(0xfeed + retrier);
                    let mut retries = 0u64;
                    while !writers_done.load(Ordering::SeqCst) {
                        let writer = rng.below(WRITERS);
                        let (n, original) = {
                            let acked = acked[writer as usize].lock().unwrap();
                            if acked.is_empty() {
                                continue;
                            }
                            let n = rng.below(acked.len() as u64);
                            (n, acked[n as usize])
                        };
                        let payload = payload(n);
                        let events = [Event::new(&payload).id(id(writer, n))];
                        let retry = log
                            .append_to(key(writer, n).as_bytes(), Expected::Any, &events)
                            .unwrap();
                        assert_duplicate_of(retry, original, 1);
                        retries += 1;
                        // Leave the writers the cores most of the time.
                        std::thread::sleep(Duration::from_micros(20));
                    }
                    retries
                })
            })
            .collect();
        std::thread::scope(|writers| {
            for writer in 0..WRITERS {
                let (log, acked) = (&log, &acked);
                writers.spawn(move || {
                    for n in 0..APPENDS_PER_WRITER {
                        let payload = payload(n);
                        let events = [Event::new(&payload).id(id(writer, n))];
                        let appended = log
                            .append_to(key(writer, n).as_bytes(), Expected::Any, &events)
                            .unwrap();
                        assert!(!appended.duplicate);
                        acked[writer as usize].lock().unwrap().push(appended);
                    }
                });
            }
        });
        writers_done.store(true, Ordering::SeqCst);
        retriers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    println!("{retries} retries during the appends");
    assert!(retries > 0);
    assert!(segment_bases(dir.path(), 0).len() >= 3, "segments rolled");
    assert_eq!(
        visible_events(&log),
        WRITERS * APPENDS_PER_WRITER,
        "nothing written twice"
    );
    log.close().unwrap();
}
