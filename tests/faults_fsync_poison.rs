//! A failed fsync poisons the partition: the append it was for fails, every later write is
//! refused with `Error::Poisoned` until the log is reopened, and no append waiting on that fsync
//! is ever acknowledged. Reads of what was durable before keep working, close reports the
//! failure, and reopening recovers every acknowledged append and takes new ones.

mod common;

use std::sync::Arc;

use annal::io::FailPoints;
use annal::{Durability, Error, Log, Options, Ticket};
use common::{payloads, record_at};

fn options(fail_points: &Arc<FailPoints>) -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .fail_points(fail_points.clone())
}

fn is_poisoned(error: &Error) -> bool {
    matches!(error, Error::Poisoned { .. })
}

/// `EIO`, the error the fail points inject (the same number on Linux and the BSDs).
const EIO: i32 = 5;

/// The poisoning cause is the injected fsync failure, kept as the error's source.
fn caused_by_failed_sync(error: &Error) -> bool {
    match error {
        Error::Poisoned { source, .. } | Error::AppendsLost { source, .. } => matches!(
            source.as_ref(),
            Error::Io { op, source, .. }
                if op.contains("sync") && source.raw_os_error() == Some(EIO)
        ),
        _ => false,
    }
}

/// After the failed fsync nothing is known about the unsynced appends: after reopening each is
/// entirely there or entirely absent. Checks that the log is `acked` followed by a prefix of
/// `maybe`, and returns how many of `maybe` are there.
fn check_acked_then_maybe(records: &[Vec<u8>], acked: &[Vec<u8>], maybe: &[Vec<u8>]) -> usize {
    assert!(records.len() >= acked.len(), "acknowledged appends lost");
    assert_eq!(&records[..acked.len()], acked);
    let extra = &records[acked.len()..];
    assert!(extra.len() <= maybe.len(), "records nobody appended");
    assert_eq!(extra, &maybe[..extra.len()]);
    extra.len()
}

#[test]
fn a_failed_fsync_fails_the_append_and_poisons_the_partition_until_reopen() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    let acked: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("durable {i}").into_bytes())
        .collect();
    for (i, payload) in acked.iter().enumerate() {
        assert_eq!(log.append(b"k", payload).unwrap().offset, i as u64);
    }

    fail_points.fail_syncs(1);
    let error = log.append(b"k", b"doomed").unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");
    assert!(caused_by_failed_sync(&error), "{error:?}");

    // Only one fsync was made to fail: everything after it is refused by the poisoned
    // partition itself, not by another injected failure.
    for _ in 0..3 {
        let error = log.append(b"k", b"refused").unwrap_err();
        assert!(is_poisoned(&error), "{error:?}");
    }
    let error = log.append_pipelined(b"k", b"refused").unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");
    let error = log.append_batch(b"k", [b"a", b"b"]).unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");
    let error = log.flush().unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");

    assert_eq!(log.end_offset(0).unwrap(), 5);
    assert_eq!(payloads(&log), acked, "reads of durable records still work");
    let from_middle = record_at(&log, 0, 3);
    assert_eq!(from_middle.payload, acked[3]);

    let error = log.close().unwrap_err();
    assert!(
        is_poisoned(&error),
        "close reports the poisoning: {error:?}"
    );

    let log = Log::open(&dir, Options::default()).unwrap();
    let records = payloads(&log);
    let extra = check_acked_then_maybe(&records, &acked, &[b"doomed".to_vec()]);
    let end = log.end_offset(0).unwrap();
    assert_eq!(end, 5 + extra as u64);
    assert_eq!(log.append(b"k", b"after reopen").unwrap().offset, end);
    log.close().unwrap();

    let log = Log::open(&dir, Options::default()).unwrap();
    let records = payloads(&log);
    assert_eq!(records.len() as u64, end + 1);
    assert_eq!(records.last().unwrap(), b"after reopen");
    log.close().unwrap();
}

#[test]
fn no_append_in_flight_during_a_failed_fsync_is_acknowledged() {
    const THREADS: usize = 4;
    const APPENDS_PER_THREAD: usize = 100;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    log.append(b"k", b"durable").unwrap();

    fail_points.fail_syncs(1);
    // Pipelined appends from several threads: many in flight, sharing the failing fsync and
    // possibly queued behind it.
    let (tickets, refused): (Vec<Vec<Ticket>>, Vec<usize>) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = &log;
                scope.spawn(move || {
                    let mut tickets = Vec::new();
                    let mut refused = 0;
                    for i in 0..APPENDS_PER_THREAD {
                        let payload = format!("in flight {t} {i}");
                        match log.append_pipelined(b"k", &payload) {
                            Ok(ticket) => tickets.push(ticket),
                            Err(error) => {
                                assert!(is_poisoned(&error), "{error:?}");
                                refused += 1;
                            }
                        }
                    }
                    (tickets, refused)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).unzip()
    });
    let tickets: Vec<Ticket> = tickets.into_iter().flatten().collect();
    let refused: usize = refused.iter().sum();
    assert_eq!(tickets.len() + refused, THREADS * APPENDS_PER_THREAD);
    assert!(
        !tickets.is_empty(),
        "the first append is queued before any fsync"
    );
    for ticket in tickets {
        let appended = ticket.appended();
        let error = ticket
            .wait()
            .expect_err("an append acknowledged after a failed fsync");
        assert!(is_poisoned(&error), "{appended:?}: {error:?}");
    }

    assert_eq!(log.end_offset(0).unwrap(), 1);
    assert_eq!(payloads(&log), [b"durable".to_vec()]);
    assert!(log.close().is_err());

    // Reopened: the durable record, then possibly some of the failed ones, each whole, none
    // twice, then new appends at the next offset.
    let log = Log::open(&dir, Options::default()).unwrap();
    let records = payloads(&log);
    assert_eq!(records[0], b"durable");
    let mut seen = std::collections::HashSet::new();
    for record in &records[1..] {
        let text = std::str::from_utf8(record).unwrap();
        assert!(text.starts_with("in flight "), "{text}");
        assert!(seen.insert(text.to_owned()), "{text} twice");
    }
    let end = log.end_offset(0).unwrap();
    assert_eq!(end, records.len() as u64);
    assert_eq!(log.append(b"k", b"after reopen").unwrap().offset, end);
    log.close().unwrap();
}

#[test]
fn a_failed_fsync_on_flush_in_buffered_mode_poisons_the_partition() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let fail_points = FailPoints::new();
    let options = options(&fail_points).durability(Durability::Buffered);
    let log = Log::open(&dir, options).unwrap();
    log.append(b"k", b"synced").unwrap();
    log.flush().unwrap();
    log.append(b"k", b"written, not synced").unwrap();

    fail_points.fail_syncs(1);
    // The flush names the acknowledged append whose durability is now unknown...
    let error = log.flush().unwrap_err();
    match &error {
        Error::AppendsLost { lost, .. } => {
            assert_eq!(lost.len(), 1, "{error}");
            assert_eq!(
                (lost[0].partition, lost[0].first_offset, lost[0].last_offset),
                (0, 1, 1)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(caused_by_failed_sync(&error), "{error:?}");
    // ... and from then on the log refuses writes and says why.
    let error = log.flush().unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");
    let error = log.append(b"k", b"refused").unwrap_err();
    assert!(is_poisoned(&error), "{error:?}");
    assert!(log.close().is_err());

    let log = Log::open(&dir, Options::default()).unwrap();
    let records = payloads(&log);
    check_acked_then_maybe(
        &records,
        &[b"synced".to_vec()],
        &[b"written, not synced".to_vec()],
    );
    log.close().unwrap();
}
