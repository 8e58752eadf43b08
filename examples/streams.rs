//! The README's aggregate-streams example: expected versions, idempotent retries, a multi-key
//! append, reads by key, snapshots, time travel and the global order.
//! Run with `cargo run --release --example streams` (writes to a temporary directory).

use annal::{Event, Expected, KeyAppend, Log, Options};

fn main() -> annal::Result<()> {
    let dir = std::env::temp_dir().join(format!("annal-streams-{}", std::process::id()));
    let log = Log::open(&dir, Options::default())?;

    let opened = log.append_to(
        b"account-7",
        Expected::NoStream,
        &[Event::new(b"opened").id(1)],
    )?;
    // Of several writers racing with the same expectation, exactly one wins; the others get
    // Error::Conflict and write nothing.
    let deposit = [Event::new(b"deposited 100").id(2)];
    log.append_to(
        b"account-7",
        Expected::Exact(opened.last_version()),
        &deposit,
    )?;
    // A retry with the same ids writes nothing and returns the original place.
    assert!(
        log.append_to(b"account-7", Expected::Any, &deposit)?
            .duplicate
    );
    // Several keys, in any partitions: all or nothing after any crash.
    let (debit, credit) = ([Event::new(b"-30").id(3)], [Event::new(b"+30").id(4)]);
    log.append_multi(&[
        KeyAppend::new(b"account-7", Expected::Exact(1), &debit),
        KeyAppend::new(b"account-9", Expected::Any, &credit),
    ])?;
    let history = log.read_key(b"account-7", 0)?; // versions 0, 1, 2, found without a scan
    log.save_snapshot(b"account-7", 1, b"balance=100")?;
    let (snapshot, rest) = log.load(b"account-7")?; // the snapshot, then version 2 only
    let then = log.read_key_until(b"account-7", history[1].timestamp_ms)?; // as of a moment
    let all = log.read_all(0)?.count(); // every partition, in one gap-free order
    println!(
        "{} events for account-7, snapshot at version {}, {} after it, {} as of then, {all} in all",
        history.len(),
        snapshot.map_or(0, |s| s.version),
        rest.len(),
        then.len()
    );
    log.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
