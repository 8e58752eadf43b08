//! The README's example: open, append, append a batch, pipeline, read, close.
//! Run with `cargo run --release --example quickstart` (writes to a temporary directory).

use annal::{Durability, Event, Log, Options};

fn main() -> annal::Result<()> {
    let dir = std::env::temp_dir().join(format!("annal-quickstart-{}", std::process::id()));
    let log = Log::open(
        &dir,
        Options::default()
            .partitions(8)
            .durability(Durability::Sync),
    )?;

    // Durable when it returns (fdatasync before the ack; concurrent appends share fsyncs).
    let at = log.append(b"order-42", b"{\"type\":\"OrderPlaced\"}")?;

    // One frame, one checksum: after any crash all of the batch is there, or none of it.
    let batch = [
        Event::new(b"{\"sku\":\"A1\"}").header("type", "ItemAdded"),
        Event::new(b"{\"amount\":12}").header("type", "PaymentProcessed"),
    ];
    log.append_batch(b"order-42", &batch)?;

    // Many appends in flight from one thread; each ticket resolves when its append is durable.
    let ticket = log.append_pipelined(b"order-7", b"{\"type\":\"OrderPlaced\"}")?;
    ticket.wait()?;

    // Read a partition in order: offset, timestamp, key, headers, payload (zero-copy `Bytes`).
    for record in log.read(at.partition, 0)? {
        let record = record?;
        println!(
            "{} {} {:?}",
            record.offset,
            record.timestamp_ms,
            record.header("type")
        );
    }
    log.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
