//! Retention deleting segments in the background while the same process reads: every outcome
//! must be a record, `OffsetBelowStart` (`Log::read`, a reader that falls below the start) or
//! `EventsExpired` (a group member), never an I/O error about a segment file retention removed
//! ("Deleted means gone, and said so", `docs/durability.md`). Appends must not fail either.
//!
//! Found by the `crash_model` fuzz target (a member's `poll` and an `append_to` with an event id
//! failed with `Error::Io { op: "open", .. }`, `NotFound`, on a segment file retention had just
//! removed; a reader said `Corrupt` where the segment was gone). Fixed: a lookup stops at a
//! segment retention deleted, and a reader that loses its segment says `OffsetBelowStart`.
//! `ANNAL_RACE_SECONDS=n` runs longer than 5 s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal::{Durability, Error, Event, Expected, Log, Options};

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Buffered)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
        .retention_bytes_max(64 << 10)
}

/// An error that retention's own deletions must not cause: kept once per kind (the call and the
/// error without its paths), with how often it came.
fn unexpected(errors: &Mutex<Vec<(String, u64)>>, what: &str, error: &Error) {
    let kind = match error {
        Error::Io { op, source, .. } => format!("{what}: Io {{ op: {op:?}, {:?} }}", source.kind()),
        Error::Corrupt { reason, .. } => format!("{what}: Corrupt {{ {reason:?} }}"),
        other => format!("{what}: {other}"),
    };
    let mut errors = errors.lock().unwrap();
    match errors.iter_mut().find(|(k, _)| *k == kind) {
        Some((_, count)) => *count += 1,
        None => errors.push((kind, 1)),
    }
}

#[test]
fn readers_and_appends_racing_background_deletions_see_no_io_errors() {
    let seconds: u64 = std::env::var("ANNAL_RACE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), options()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut threads = Vec::new();

    // Appends, every fourth with an event id (whose duplicate check walks the segments).
    {
        let (log, stop, errors) = (log.clone(), stop.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let payload = vec![b'.'; 4096];
            let mut n = 0u128;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", n % 8).into_bytes();
                let result = if n.is_multiple_of(4) {
                    let event = Event::new(&payload).id(n + 1);
                    log.append_to(&key, Expected::Any, &[event]).map(drop)
                } else {
                    log.append(&key, &payload[..]).map(drop)
                };
                if let Err(e) = result {
                    unexpected(&errors, "append", &e);
                }
                n += 1;
            }
        }));
    }
    // A reader of the partition from its start, again and again.
    {
        let (log, stop, errors) = (log.clone(), stop.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let start = log.start_offset(0).unwrap();
                let reader = match log.read(0, start) {
                    Ok(reader) => reader,
                    Err(Error::OffsetBelowStart { .. }) => continue,
                    Err(e) => {
                        unexpected(&errors, "read", &e);
                        continue;
                    }
                };
                for record in reader {
                    match record {
                        Ok(_) => {}
                        Err(Error::OffsetBelowStart { .. }) => break,
                        Err(e) => {
                            unexpected(&errors, "reader", &e);
                            break;
                        }
                    }
                }
            }
        }));
    }
    // Key lookups.
    {
        let (log, stop, errors) = (log.clone(), stop.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", n % 8).into_bytes();
                if let Err(e) = log.read_key(&key, 0) {
                    unexpected(&errors, "read_key", &e);
                }
                n += 1;
            }
        }));
    }
    // A group member, polling and committing.
    {
        let (log, stop, errors) = (log.clone(), stop.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let group = log.group("g").unwrap();
            let mut member = group.join().unwrap();
            while !stop.load(Ordering::Relaxed) {
                match member.poll(100, Duration::from_millis(1)) {
                    Ok(batch) => {
                        if let Err(e) = member.commit(&batch) {
                            unexpected(&errors, "commit", &e);
                        }
                    }
                    Err(Error::EventsExpired { .. }) => {}
                    Err(e) => unexpected(&errors, "poll", &e),
                }
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let start = log.start_offset(0).unwrap();
    let errors = errors.lock().unwrap();
    assert!(
        start > 0,
        "retention deleted nothing: the test did not race anything"
    );
    let shown: Vec<String> = errors.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    assert!(
        errors.is_empty(),
        "errors caused by retention's deletions (start {start}):\n{}",
        shown.join("\n")
    );
}
