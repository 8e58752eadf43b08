//! SQLite (bundled, through rusqlite) as an event store: WAL mode, `synchronous=FULL`, one
//! table with a unique index on (aggregate, version). Producers share one connection behind a
//! mutex: SQLite admits one writer at a time anyway, and separate connections would wait for
//! the write lock in its busy handler, which sleeps in steps of milliseconds.

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection};

use crate::drive::{self, aggregate};
use crate::{common, BATCH_EVENTS, PAYLOAD_BYTES};

const SCHEMA: &str = "CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    aggregate TEXT NOT NULL,
    version INTEGER NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (aggregate, version)
)";
const INSERT: &str = "INSERT INTO events (aggregate, version, payload) VALUES (?1, ?2, ?3)";

/// The connection and the next version of every aggregate (what an event store keeps to
/// append without reading first).
struct Store {
    connection: Connection,
    versions: Vec<i64>,
    aggregates: Vec<String>,
}

impl Store {
    fn open(dir: &Path) -> Store {
        let connection = Connection::open(dir.join("events.db")).expect("open sqlite");
        let mode: String = connection
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        connection
            .pragma_update(None, "synchronous", "FULL")
            .expect("synchronous");
        let synchronous: i64 = connection
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("synchronous");
        assert_eq!(synchronous, 2, "synchronous=FULL");
        connection.execute(SCHEMA, []).expect("schema");
        let aggregates = common::keys()
            .into_iter()
            .map(|key| String::from_utf8(key).expect("keys are text"))
            .collect();
        Store {
            connection,
            versions: vec![0; common::AGGREGATES as usize],
            aggregates,
        }
    }

    /// Inserts `events` payloads under `aggregate`, in one transaction.
    fn append(&mut self, aggregate: usize, payload: &[u8], events: usize) {
        let transaction = self.connection.transaction().expect("begin");
        {
            let mut insert = transaction.prepare_cached(INSERT).expect("prepare");
            for _ in 0..events {
                let version = self.versions[aggregate];
                insert
                    .execute(params![self.aggregates[aggregate], version, payload])
                    .expect("insert");
                self.versions[aggregate] = version + 1;
            }
        }
        transaction.commit().expect("commit");
    }
}

/// `threads` blocking producers, one insert each at a time, each its own transaction.
pub fn durable(threads: usize, duration: Duration) -> f64 {
    appends(threads, duration, 1)
}

/// `threads` producers, each inserting `BATCH_EVENTS` rows under one aggregate per transaction
/// (still `synchronous=FULL`: SQLite offers no durability between that and none).
pub fn batches(threads: usize, duration: Duration) -> f64 {
    appends(threads, duration, BATCH_EVENTS)
}

fn appends(threads: usize, duration: Duration, events: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Mutex::new(Store::open(dir.path()));
    let payload = common::payload(PAYLOAD_BYTES, 0);
    drive::producers_rate(
        threads,
        duration,
        |thread, i| {
            store.lock().append(aggregate(thread, i), &payload, events);
            events as u64
        },
        || {},
    )
}

/// Builds a table of `events` rows in transactions of `BATCH_EVENTS` under one aggregate each,
/// then reads every payload in insertion order (SQLite keeps no checksums of its pages).
pub fn replay(events: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path());
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for n in 0..events / BATCH_EVENTS as u64 {
        store.append((n % common::AGGREGATES) as usize, &payload, BATCH_EVENTS);
    }
    drive::repeated_rate(duration, || {
        let mut select = store
            .connection
            .prepare_cached("SELECT payload FROM events ORDER BY id")
            .expect("prepare");
        let mut rows = select.query([]).expect("query");
        let mut count = 0u64;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().expect("row") {
            bytes += row
                .get_ref(0)
                .expect("payload")
                .as_blob()
                .expect("blob")
                .len();
            count += 1;
        }
        std::hint::black_box(bytes);
        assert_eq!(count, events, "sqlite replayed every event");
        count
    })
}

/// Workload 8: the table of `replay`, drained in id order by a consumer that keeps its cursor
/// in a `cursors` table: each step reads the next `BATCH_EVENTS` rows after the cursor and
/// commits the new cursor in its own transaction (durable: `synchronous=FULL`).
pub fn drain(events: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path());
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for n in 0..events / BATCH_EVENTS as u64 {
        store.append((n % common::AGGREGATES) as usize, &payload, BATCH_EVENTS);
    }
    store
        .connection
        .execute(
            "CREATE TABLE cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
            [],
        )
        .expect("cursors");
    let mut run = 0;
    drive::repeated_rate(duration, || {
        run += 1;
        let name = format!("drain-{run}");
        store
            .connection
            .execute(
                "INSERT INTO cursors (name, position) VALUES (?1, 0)",
                params![name],
            )
            .expect("cursor");
        let mut count = 0u64;
        let mut bytes = 0usize;
        let mut position: i64 = 0;
        while count < events {
            let mut select = store
                .connection
                .prepare_cached("SELECT id, payload FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
                .expect("prepare");
            let mut rows = select
                .query(params![position, BATCH_EVENTS as i64])
                .expect("query");
            while let Some(row) = rows.next().expect("row") {
                position = row.get(0).expect("id");
                bytes += row
                    .get_ref(1)
                    .expect("payload")
                    .as_blob()
                    .expect("blob")
                    .len();
                count += 1;
            }
            drop(rows);
            store
                .connection
                .prepare_cached("UPDATE cursors SET position = ?1 WHERE name = ?2")
                .expect("prepare")
                .execute(params![position, name])
                .expect("commit cursor");
        }
        std::hint::black_box(bytes);
        count
    })
}

/// Builds a table of `events` rows inserted round-robin over all aggregates (one row per
/// aggregate per transaction), then the median time of reading one random aggregate's rows in
/// version order through the unique index.
pub fn hydrate(events: u64, duration: Duration) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path());
    let payload = common::payload(PAYLOAD_BYTES, 0);
    for _ in 0..events / common::AGGREGATES {
        let transaction = store.connection.transaction().expect("begin");
        {
            let mut insert = transaction.prepare_cached(INSERT).expect("prepare");
            for (aggregate, version) in store.versions.iter_mut().enumerate() {
                insert
                    .execute(params![store.aggregates[aggregate], *version, payload])
                    .expect("insert");
                *version += 1;
            }
        }
        transaction.commit().expect("commit");
    }
    let per_aggregate = events / common::AGGREGATES;
    drive::median_latency(duration, |aggregate| {
        let mut select = store
            .connection
            .prepare_cached(
                "SELECT version, payload FROM events WHERE aggregate = ?1 ORDER BY version",
            )
            .expect("prepare");
        let rows: Vec<(i64, Vec<u8>)> = select
            .query_map([&store.aggregates[aggregate]], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows.len() as u64,
            per_aggregate,
            "sqlite hydrated one aggregate"
        );
    })
}
