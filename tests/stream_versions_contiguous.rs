//! Per-key versions are contiguous from 0 and never skip or repeat: across several keys and
//! partitions, across segment rolls, across close and reopen, across writes that fail under
//! `Sync` (a failed append's versions were never acknowledged, so the next append gets them)
//! and writes that stall under `Buffered` (acknowledged versions are final). `last_version`
//! agrees, and `read_key` returns exactly each key's events, in version order, with their
//! payloads, from every `from_version`, also while appends and rolls go on.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal::io::FailPoints;
use annal::{Durability, Error, Event, Expected, Log, Options};
use common::rng::SplitMix64;
use common::segment_files::segment_bases;
use common::streams::{stream, stream_payloads};
use common::{read_all, SyncsHeld, BATCH_BYTES_MAX, SMALL_SEGMENT_BYTES};

/// Each key's payloads, in version order: what the log must hold.
type Model = BTreeMap<Vec<u8>, Vec<Vec<u8>>>;

/// A payload naming its key and the version it must get, padded to a length from `rng`.
fn payload(key: &[u8], version: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut payload = format!("{} v{version} ", String::from_utf8_lossy(key)).into_bytes();
    payload.resize(payload.len() + rng.below(360) as usize, b'.');
    payload
}

/// Checks every key of `model` against the log: `last_version`, `read_key` from every version
/// (and past the end), and, independently of the key tables, the partitions read in offset
/// order.
#[track_caller]
fn check_streams(log: &Log, model: &Model, context: &str) {
    for (key, payloads) in model {
        let name = String::from_utf8_lossy(key);
        let count = payloads.len() as u64;
        assert_eq!(
            log.last_version(key).unwrap(),
            count.checked_sub(1),
            "{context}: last_version of {name}"
        );
        let all = stream(log, key, 0);
        assert_eq!(all.len() as u64, count, "{context}: events of {name}");
        for (version, record) in all.iter().enumerate() {
            assert_eq!(record.version, version as u64, "{context}: {name}");
            assert_eq!(&record.key[..], &key[..], "{context}: {name} v{version}");
            assert_eq!(
                record.payload.as_ref(),
                payloads[version].as_slice(),
                "{context}: payload of {name} v{version}"
            );
            assert_eq!(record.partition, log.partition_for(key), "{context}");
        }
        for from in 0..=count + 1 {
            let tail = stream(log, key, from);
            let start = (from as usize).min(all.len());
            assert_eq!(tail, all[start..], "{context}: {name} from version {from}");
        }
    }
    // The partitions themselves, without the key tables: each key's records appear in offset
    // order with versions 0, 1, 2, ... and the model's payloads.
    let mut seen: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for partition in 0..log.partition_count() {
        for record in read_all(log, partition) {
            let next = seen.entry(record.key.to_vec()).or_default();
            assert_eq!(record.version, *next, "{context}: partition {partition}");
            let payloads = &model[record.key.as_ref()];
            assert_eq!(record.payload.as_ref(), payloads[*next as usize].as_slice());
            *next += 1;
        }
    }
    let counts: BTreeMap<Vec<u8>, u64> = model
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(k, p)| (k.clone(), p.len() as u64))
        .collect();
    assert_eq!(seen, counts, "{context}: events per key in the partitions");
}

/// `appends` appends (single events and batches of up to 4) to keys chosen from `keys`; each
/// must get the version the model says.
fn append_some(
    log: &Log,
    model: &mut Model,
    keys: &[Vec<u8>],
    appends: usize,
    rng: &mut SplitMix64,
) {
    for _ in 0..appends {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let first = model.entry(key.clone()).or_default().len();
        let count = 1 + rng.below(4) as usize;
        let payloads: Vec<Vec<u8>> = (0..count).map(|i| payload(key, first + i, rng)).collect();
        let appended = if count == 1 && rng.below(2) == 0 {
            log.append(key, &payloads[0]).unwrap()
        } else {
            log.append_batch(key, &payloads).unwrap()
        };
        assert_eq!(
            appended.version, first as u64,
            "first version of the append"
        );
        assert_eq!(appended.count as usize, count);
        assert_eq!(appended.last_version(), (first + count - 1) as u64);
        assert_eq!(appended.partition, log.partition_for(key));
        assert!(!appended.duplicate);
        model.get_mut(key).unwrap().extend(payloads);
    }
}

fn rolling_options() -> Options {
    Options::default()
        .partitions(4)
        .durability(Durability::Sync)
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
}

#[test]
fn versions_stay_contiguous_per_key_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = (0..16).map(|k| format!("order-{k}").into_bytes()).collect();
    let mut model = Model::new();
    let mut rng = SplitMix64(0x5eed_0001);
    // Phase 2 appends to half of the keys only: the other half are found on disk alone (in
    // sealed segments) when phase 3 appends to them again after a reopen.
    let phases: [&[Vec<u8>]; 3] = [&keys, &keys[..8], &keys];
    for (phase, phase_keys) in phases.iter().enumerate() {
        let log = Log::open(dir.path(), rolling_options()).unwrap();
        check_streams(&log, &model, &format!("after opening for phase {phase}"));
        append_some(&log, &mut model, phase_keys, 500, &mut rng);
        check_streams(&log, &model, &format!("after phase {phase}"));
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), rolling_options()).unwrap();
    check_streams(&log, &model, "after the last reopen");
    for partition in 0..log.partition_count() {
        let segments = segment_bases(dir.path(), partition).len();
        assert!(segments >= 3, "partition {partition} rolled: {segments}");
    }
    log.close().unwrap();
}

fn failing_options(fail_points: &Arc<FailPoints>) -> Options {
    Options::default()
        .partitions(2)
        .durability(Durability::Sync)
        .fail_points(fail_points.clone())
}

/// One key in each of the two partitions.
fn two_keys(log: &Log) -> (Vec<u8>, Vec<u8>) {
    let keys = common::streams::keys_in_distinct_partitions(log, "account", 2);
    (keys[0].clone(), keys[1].clone())
}

#[track_caller]
fn assert_append_failed(result: annal::Result<annal::Appended>) {
    let error = result.unwrap_err();
    assert!(matches!(error, Error::AppendFailed { .. }), "{error:?}");
}

#[test]
fn a_failed_write_under_sync_gives_its_versions_to_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), failing_options(&fail_points)).unwrap();
    let (a, b) = two_keys(&log);

    assert_eq!(log.append(&a, b"a0").unwrap().version, 0);
    assert_eq!(log.append(&b, b"b0").unwrap().version, 0);

    fail_points.fail_writes(1);
    assert_append_failed(log.append(&a, b"lost single"));
    assert_eq!(log.last_version(&a).unwrap(), Some(0));
    assert_eq!(log.append(&a, b"a1").unwrap().version, 1, "reused");

    fail_points.fail_writes(1);
    assert_append_failed(log.append_batch(&a, [&b"lost 1"[..], b"lost 2", b"lost 3"]));
    let batch = log.append_batch(&a, [&b"a2"[..], b"a3"]).unwrap();
    assert_eq!((batch.version, batch.count), (2, 2), "reused");

    // An expected version is checked against the versions the disk holds after the failure.
    fail_points.fail_writes(1);
    assert_append_failed(log.append_to(&a, Expected::Exact(3), &[Event::new(b"lost exact")]));
    let stale = log.append_to(&a, Expected::Exact(4), &[Event::new(b"refused")]);
    assert!(
        matches!(
            stale,
            Err(Error::Conflict {
                actual: Some(3),
                ..
            })
        ),
        "{stale:?}"
    );
    let exact = log.append_to(&a, Expected::Exact(3), &[Event::new(b"a4")]);
    assert_eq!(exact.unwrap().version, 4);

    // The other partition's key was not touched by any of it.
    fail_points.fail_writes(1);
    assert_append_failed(log.append(&b, b"lost b"));
    assert_eq!(log.append(&b, b"b1").unwrap().version, 1);

    let expected: Model = [
        (a.clone(), vec![&b"a0"[..], b"a1", b"a2", b"a3", b"a4"]),
        (b.clone(), vec![&b"b0"[..], b"b1"]),
    ]
    .into_iter()
    .map(|(k, p)| (k, p.into_iter().map(<[u8]>::to_vec).collect()))
    .collect();
    check_streams(&log, &expected, "after the failures");
    log.close().unwrap();

    let log = Log::open(dir.path(), failing_options(&FailPoints::new())).unwrap();
    check_streams(&log, &expected, "after reopening");
    assert_eq!(log.append(&a, b"a5").unwrap().version, 5);
    assert_eq!(stream_payloads(&log, &a, 5), [b"a5".to_vec()]);
    log.close().unwrap();
}

#[test]
fn pipelined_appends_behind_a_failed_write_fail_and_give_back_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(dir.path(), failing_options(&fail_points)).unwrap();
    let (a, _) = two_keys(&log);
    log.append(&a, b"a0").unwrap();

    // The first pipelined append is written and waits in its sync; the next two queue
    // behind it, chaining their expectations on it, and their write fails.
    let held = SyncsHeld::new(&fail_points);
    let writes = log.stats().writes;
    let first = log
        .append_to_pipelined(&a, Expected::Exact(0), &[Event::new(b"a1")])
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.stats().writes == writes {
        assert!(
            std::time::Instant::now() < deadline,
            "the first append is written"
        );
        std::thread::yield_now();
    }
    let second = log
        .append_to_pipelined(&a, Expected::Exact(1), &[Event::new(b"lost 2")])
        .unwrap();
    let third = log
        .append_to_pipelined(&a, Expected::Exact(2), &[Event::new(b"lost 3")])
        .unwrap();
    assert_eq!(
        (second.appended().version, third.appended().version),
        (2, 3)
    );
    fail_points.fail_writes(1);
    held.release();
    assert_eq!(first.wait().unwrap().version, 1);
    let failed = [second.wait(), third.wait()];
    for result in failed {
        assert!(
            matches!(result, Err(Error::AppendFailed { .. })),
            "{result:?}"
        );
    }

    // The stream ends at version 1 again: an expectation built on the failed appends is
    // refused, and the next append takes version 2.
    let stale = log.append_to(&a, Expected::Exact(3), &[Event::new(b"refused")]);
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
    let next = log.append_to(&a, Expected::Exact(1), &[Event::new(b"a2")]);
    assert_eq!(next.unwrap().version, 2);
    let expected: Model = [(
        a.clone(),
        vec![b"a0".to_vec(), b"a1".to_vec(), b"a2".to_vec()],
    )]
    .into_iter()
    .collect();
    check_streams(&log, &expected, "after the failed pipeline");
    log.close().unwrap();
}

#[test]
fn a_stalled_write_under_buffered_keeps_the_versions_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    let options = failing_options(&fail_points).durability(Durability::Buffered);
    let log = Log::open(dir.path(), options).unwrap();
    let (a, b) = two_keys(&log);
    assert_eq!(log.append(&a, b"a0").unwrap().version, 0);
    log.flush().unwrap();

    fail_points.fail_writes(u32::MAX);
    // Acknowledged when queued, with its version: that version is final. The second append
    // meets the stall if the writer already tried the first (its linger is 200 us): it is then
    // refused, and `b` stays empty.
    assert_eq!(log.append(&a, b"a1").unwrap().version, 1);
    let b_queued = match log.append(&b, b"b0") {
        Ok(appended) => {
            assert_eq!(appended.version, 0);
            true
        }
        Err(Error::WritesStalled { .. }) => false,
        Err(other) => panic!("{other:?}"),
    };
    let stalled = log.flush().unwrap_err();
    assert!(
        matches!(stalled, Error::WritesStalled { .. }),
        "{stalled:?}"
    );
    let refused = log.append_to(&a, Expected::Exact(1), &[Event::new(b"refused")]);
    assert!(
        matches!(refused, Err(Error::WritesStalled { .. })),
        "{refused:?}"
    );

    fail_points.fail_writes(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        match log.append_to(&a, Expected::Exact(1), &[Event::new(b"a2")]) {
            Ok(next) => break next,
            Err(Error::WritesStalled { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(next.version, 2);
    log.flush().unwrap();
    let expected: Model = [
        (
            a.clone(),
            vec![b"a0".to_vec(), b"a1".to_vec(), b"a2".to_vec()],
        ),
        (
            b.clone(),
            if b_queued {
                vec![b"b0".to_vec()]
            } else {
                Vec::new()
            },
        ),
    ]
    .into_iter()
    .collect();
    check_streams(&log, &expected, "after the stall");
    log.close().unwrap();
    let log = Log::open(dir.path(), Options::default()).unwrap();
    check_streams(&log, &expected, "after reopening");
    log.close().unwrap();
}

const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 2;
const APPENDS_PER_THREAD: usize = 250;

/// Appends until `APPENDS_PER_THREAD` succeeded, retrying each failed append with the same
/// payloads (they name the version they must get); returns the thread's keys' streams and
/// how many appends failed.
fn append_through_failures(log: &Log, thread: usize) -> (Model, usize) {
    let keys: Vec<Vec<u8>> = (0..KEYS_PER_THREAD)
        .map(|k| format!("t{thread}-k{k}").into_bytes())
        .collect();
    let mut rng = SplitMix64(0x7000 + thread as u64);
    let mut model: Model = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    let mut failures = 0;
    for _ in 0..APPENDS_PER_THREAD {
        let key = &keys[rng.below(KEYS_PER_THREAD as u64) as usize];
        let first = model[key].len();
        let count = 1 + rng.below(3) as usize;
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|i| payload(key, first + i, &mut rng))
            .collect();
        let appended = loop {
            match log.append_batch(key, &payloads) {
                Ok(appended) => break appended,
                Err(Error::AppendFailed { .. }) => failures += 1,
                Err(other) => panic!("thread {thread}: {other:?}"),
            }
        };
        assert_eq!(
            appended.version, first as u64,
            "thread {thread}: the next version after {failures} failures"
        );
        model.get_mut(key).unwrap().extend(payloads);
    }
    (model, failures)
}

#[test]
fn versions_stay_contiguous_when_writes_fail_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let fail_points = FailPoints::new();
    // Default (large) segments: no roll, so the only syncs inside a round are its journal
    // sync, and a write failure set while the writer waits there hits the next round's
    // journal write (a clean failure), never a segment write (which would poison the log).
    let options = Options::default()
        .partitions(4)
        .durability(Durability::Sync)
        .fail_points(fail_points.clone());
    let log = Log::open(dir.path(), options).unwrap();
    let done = AtomicBool::new(false);
    let (model, failures) = std::thread::scope(|scope| {
        let injector = scope.spawn(|| {
            let mut injected = 0;
            while !done.load(Ordering::SeqCst) {
                fail_points.hold_syncs();
                // Only once the writer waits in a sync (its round's writes done) is the next
                // write a journal write; on a loaded machine it may take a while to get there.
                let deadline = std::time::Instant::now() + Duration::from_millis(50);
                while fail_points.syncs_waiting() == 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(100));
                }
                if fail_points.syncs_waiting() > 0 {
                    fail_points.fail_writes(1);
                }
                fail_points.release_syncs();
                injected += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            injected
        });
        let appenders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let log = &log;
                scope.spawn(move || append_through_failures(log, thread))
            })
            .collect();
        // Joined before unwrapping: the injector must stop whatever the appenders did.
        let results: Vec<_> = appenders.into_iter().map(|a| a.join()).collect();
        done.store(true, Ordering::SeqCst);
        let injected = injector.join().unwrap();
        let mut model = Model::new();
        let mut failures = 0;
        for result in results {
            let (keys, failed) = result.unwrap();
            model.extend(keys);
            failures += failed;
        }
        fail_points.fail_writes(0);
        println!("{failures} failed appends from {injected} injected write failures");
        (model, failures)
    });
    assert!(failures > 0, "some appends failed");
    check_streams(&log, &model, "after the failures");
    log.close().unwrap();

    let log = Log::open(dir.path(), Options::default()).unwrap();
    check_streams(&log, &model, "after reopening");
    log.close().unwrap();
}

/// The payload of `key`'s event at `version`: a function of both alone, so that a reader can
/// check any event it sees.
fn payload_of(key: &[u8], version: u64) -> Vec<u8> {
    let mut payload = format!("{} v{version} ", String::from_utf8_lossy(key)).into_bytes();
    payload.resize(payload.len() + (version as usize * 53) % 300, b'~');
    payload
}

#[test]
fn read_key_during_appends_and_segment_rolls_sees_a_contiguous_prefix() {
    const WRITERS: usize = 3;
    const READERS: usize = 2;
    const APPENDS_PER_WRITER: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), rolling_options().partitions(2)).unwrap();
    let keys: Vec<Vec<u8>> = (0..WRITERS * 2)
        .map(|k| format!("live-{k}").into_bytes())
        .collect();
    // Per key, how many of its events were acknowledged: a reader that starts later must see
    // at least those.
    let acked: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let writers_done = AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS)
            .map(|reader| {
                let (log, keys, acked, writers_done) = (&log, &keys, &acked, &writers_done);
                scope.spawn(move || {
                    let mut rng = SplitMix64(0x4ead + reader as u64);
                    let mut reads = 0u64;
                    while !writers_done.load(Ordering::SeqCst) {
                        let k = rng.below(keys.len() as u64) as usize;
                        let key = &keys[k];
                        let at_least = acked[k].load(Ordering::SeqCst);
                        let last = log.last_version(key).unwrap();
                        assert!(last.map_or(0, |v| v + 1) >= at_least, "last_version lags");
                        let from = rng.below(at_least + 1);
                        let records = log.read_key(key, from).unwrap();
                        let seen = from + records.len() as u64;
                        assert!(seen >= at_least, "{key:?} from {from}: {seen} < {at_least}");
                        for (record, version) in records.iter().zip(from..) {
                            assert_eq!(record.version, version);
                            assert_eq!(record.payload.as_ref(), payload_of(key, version));
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        std::thread::scope(|writers| {
            for writer in 0..WRITERS {
                let (log, keys, acked) = (&log, &keys, &acked);
                writers.spawn(move || {
                    let mut rng = SplitMix64(0x3417 + writer as u64);
                    for _ in 0..APPENDS_PER_WRITER {
                        let k = writer * 2 + rng.below(2) as usize;
                        let first = acked[k].load(Ordering::SeqCst);
                        let count = 1 + rng.below(3);
                        let payloads: Vec<Vec<u8>> = (first..first + count)
                            .map(|v| payload_of(&keys[k], v))
                            .collect();
                        let appended = log.append_batch(&keys[k], &payloads).unwrap();
                        assert_eq!(appended.version, first);
                        acked[k].store(first + count, Ordering::SeqCst);
                    }
                });
            }
        });
        writers_done.store(true, Ordering::SeqCst);
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    println!("{reads} reads during the appends");
    assert!(reads > 0);
    for partition in 0..2 {
        assert!(segment_bases(dir.path(), partition).len() >= 3, "rolled");
    }
    let model: Model = keys
        .iter()
        .zip(&acked)
        .map(|(key, count)| {
            let count = count.load(Ordering::SeqCst);
            (
                key.clone(),
                (0..count).map(|v| payload_of(key, v)).collect(),
            )
        })
        .collect();
    check_streams(&log, &model, "after the appends");
    log.close().unwrap();
}
