//! `annal demo`: a small end-to-end run of the engine on a local directory.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use annal::{Durability, Event, Log, Options, Result};

const AGGREGATES: u64 = 100;

pub fn run(dir: &Path, events: u64) -> Result<()> {
    println!("annal demo: log in {}", dir.display());
    let options = Options::default().durability(Durability::Sync);
    let log = Log::open(dir, options.clone())?;
    let before: Vec<u64> = (0..log.partition_count())
        .map(|p| log.end_offset(p))
        .collect::<Result<_>>()?;
    println!(
        "opened: {} partitions, {} events already in the log",
        log.partition_count(),
        before.iter().sum::<u64>()
    );

    // One blocking append per event: each is durable when it returns.
    let blocking = events.min(200);
    let started = Instant::now();
    for i in 0..blocking {
        let key = format!("order-{}", i % AGGREGATES);
        let payload = format!("{{\"type\":\"OrderPlaced\",\"n\":{i}}}");
        log.append(
            key.as_bytes(),
            Event::new(&payload).header("type", "OrderPlaced"),
        )?;
    }
    report("blocking Sync appends", blocking, started);

    // Pipelined appends from one thread: many in flight, sharing fsyncs.
    let pipelined = events.saturating_sub(blocking);
    let started = Instant::now();
    let mut tickets = std::collections::VecDeque::new();
    for i in 0..pipelined {
        let key = format!("order-{}", i % AGGREGATES);
        let payload = format!("{{\"type\":\"ItemAdded\",\"n\":{i}}}");
        tickets.push_back(log.append_pipelined(key.as_bytes(), &payload)?);
        if tickets.len() >= 1024 {
            tickets.pop_front().expect("not empty").wait()?;
        }
    }
    for ticket in tickets {
        ticket.wait()?;
    }
    report("pipelined Sync appends", pipelined, started);

    // A batch for one aggregate: one frame, all or nothing.
    let batch = [
        Event::new(b"{\"type\":\"PaymentProcessed\"}").header("type", "PaymentProcessed"),
        Event::new(b"{\"type\":\"OrderShipped\"}").header("type", "OrderShipped"),
    ];
    let at = log.append_batch(b"order-7", &batch)?;
    println!(
        "batch of 2 for order-7: partition {}, offsets {}..={}",
        at.partition,
        at.offset,
        at.last_offset()
    );

    let counts = read_all(&log)?;
    log.close()?;

    let started = Instant::now();
    let log = Log::open(dir, options)?;
    println!(
        "reopened in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let again = read_all(&log)?;
    if again != counts {
        return Err(annal::Error::InvalidOptions(
            "records differ after reopening".into(),
        ));
    }
    let history: Vec<String> = hydrate(&log, b"order-7")?;
    println!(
        "order-7 has {} events; the last two: {:?}",
        history.len(),
        &history[history.len().saturating_sub(2)..]
    );
    log.close()?;
    println!("ok: every record read back intact after reopening");
    Ok(())
}

/// Reads every partition from offset 0 and counts records per partition.
fn read_all(log: &Log) -> Result<HashMap<u32, u64>> {
    let started = Instant::now();
    let mut counts = HashMap::new();
    let mut total = 0;
    for partition in 0..log.partition_count() {
        let mut expected = 0;
        for record in log.read(partition, 0)? {
            let record = record?;
            assert_eq!(record.offset, expected, "offsets are contiguous");
            expected += 1;
        }
        counts.insert(partition, expected);
        total += expected;
    }
    report("read back (checksums verified)", total, started);
    Ok(counts)
}

/// The event types of one aggregate, in order: what hydration replays.
fn hydrate(log: &Log, key: &[u8]) -> Result<Vec<String>> {
    let partition = log.partition_for(key);
    let mut types = Vec::new();
    for record in log.read(partition, 0)? {
        let record = record?;
        if record.key == key {
            let kind = record
                .header("type")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            types.push(kind.unwrap_or_default());
        }
    }
    Ok(types)
}

fn report(what: &str, events: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        events as f64 / seconds
    } else {
        0.0
    };
    println!(
        "{what}: {events} events in {:.1} ms ({rate:.0} events/s)",
        seconds * 1000.0
    );
}
