//! annal and the embedded logs a Rust user would otherwise pick, measured side by side in one
//! run: the same workloads on annal, okaywal, commitlog and SQLite (rusqlite, bundled), each
//! on a fresh temporary directory, one system after another, plus the raw `write + fdatasync`
//! ceiling of the same disk. Prints one row per workload with every system's figure and
//! annal's ratio to the best peer; below the table, each system's durability setting.
//!
//! `cargo bench --bench peers`. Each system runs each workload for `ANNAL_PEERS_SECONDS`
//! (default 2) seconds. The append rows (1 to 4 and 7, and the raw ceiling within row 1) run
//! in `ANNAL_PEERS_ROUNDS` (default 2) rounds, the systems in turn within a round, and keep each
//! system's best round: on a shared machine other work only ever slows a run down, and taking
//! turns spreads it over the systems instead of letting it land on one. The whole run takes
//! about two minutes.
//!
//! Workloads: 256-byte payloads, keys from 10,000 aggregates, the strongest durability each
//! system offers:
//! 1. durable append, 1 blocking producer;
//! 2. durable append, 16 blocking producers (threads);
//! 3. buffered, batches of 1,000 under one key, 1 producer;
//! 4. the same, 4 producers;
//! 5. replay of a 2,000,000-event log (written in batches of 1,000) in order, checksums
//!    verified where the system keeps them, from the page cache;
//! 6. hydrating one aggregate of ~100 events from a 1,000,000-event log over 10,000 aggregates
//!    (appended round-robin), median over random aggregates;
//! 7. annal only: durable appends pipelined from one thread (4,096 in flight), as a share of
//!    the raw sequential write bandwidth at the same bytes per `fdatasync`;
//! 8. a consumer draining the log of row 5 from a durable cursor, committing every 1,000
//!    events (each commit synced before the next read): annal's consumer group, SQLite's
//!    cursor table; the two logs have no consumers. Below the table, annal's drain with
//!    `commit_pipelined`, one commit in flight and up to 4 (each still durable before its
//!    ticket returns; a commit settles the batches before it).

#[path = "peers/annal_side.rs"]
mod annal_side;
#[path = "peers/commitlog_peer.rs"]
mod commitlog_peer;
mod common;
#[path = "peers/drive.rs"]
mod drive;
#[path = "peers/okaywal_peer.rs"]
mod okaywal_peer;
#[path = "peers/sqlite_peer.rs"]
mod sqlite_peer;
#[path = "peers/table.rs"]
mod table;

use std::time::{Duration, Instant};

use common::RawFile;
use table::{Figure, Row};

/// Bytes of every event's payload.
pub const PAYLOAD_BYTES: usize = 256;
/// Events per batch in the buffered rows and in the replayed logs.
pub const BATCH_EVENTS: usize = 1_000;
/// Events of the log every system replays.
const REPLAY_EVENTS: u64 = 2_000_000;
/// Events of the log aggregates are hydrated from: ~100 per aggregate.
const HYDRATE_EVENTS: u64 = 1_000_000;
/// Appends in flight in the pipelined row.
const PIPELINE_DEPTH: usize = 4_096;
/// Bytes of the journal frame of one 256-byte event under one of these keys, as in
/// `benches/append.rs`: what one durable append writes, so the raw ceiling is measured at it.
const FRAME_BYTES: usize = 305;

/// How long each run lasts and how many rounds the disk-bound rows take.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// `ANNAL_PEERS_SECONDS`, default 2.
    duration: Duration,
    /// `ANNAL_PEERS_ROUNDS`, default 2.
    rounds: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let seconds = std::env::var("ANNAL_PEERS_SECONDS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(2.0);
        let rounds = std::env::var("ANNAL_PEERS_ROUNDS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|r| *r > 0)
            .unwrap_or(2);
        Plan {
            duration: Duration::from_secs_f64(seconds),
            rounds,
        }
    }

    /// Runs every measurement of `runs` once per round, in turn, and keeps each one's highest
    /// rate.
    fn best_of_rounds(&self, runs: &[&dyn Fn() -> f64]) -> Vec<f64> {
        let mut best = vec![0.0f64; runs.len()];
        for _ in 0..self.rounds {
            for (best, run) in best.iter_mut().zip(runs) {
                *best = best.max(run());
            }
        }
        best
    }
}

fn main() {
    let started = Instant::now();
    let plan = Plan::from_env();
    println!(
        "\n== annal and its peers, side by side ({PAYLOAD_BYTES}-byte payloads, {} aggregates, \
         {:.1} s per run; rows 1-4 and 7 best of {} rounds, systems taking turns)\n",
        common::AGGREGATES,
        plan.duration.as_secs_f64(),
        plan.rounds
    );

    let scratch = tempfile::tempdir().expect("tempdir");
    let duration = plan.duration;
    table::print_header();
    // The raw ceiling takes its turns in the rounds of the first row, so that it and annal's
    // durable figure meet the same moments of the shared disk.
    let raw = |kind| common::raw_sync_rate(scratch.path(), kind, FRAME_BYTES, duration).0;
    let first = durable_row(
        &plan,
        "durable append, 1 producer",
        1,
        &[&|| raw(RawFile::Fallocated), &|| raw(RawFile::Zeroed)],
    );
    let (durable_one, raw_fallocated, raw_overwrite) = (first[0], first[4], first[5]);
    durable_row(&plan, "durable append, 16 producers", 16, &[]);
    batches_row(&plan, "buffered, batches of 1,000, 1 producer", 1);
    batches_row(&plan, "buffered, batches of 1,000, 4 producers", 4);
    replay_row(duration);
    hydrate_row(duration);
    drain_row(duration);
    let drain_pipelined = annal_side::drain(REPLAY_EVENTS, duration, 1);
    let drain_pipelined_4 = annal_side::drain(REPLAY_EVENTS, duration, 4);
    let pipelined = pipelined_row(&plan, scratch.path());
    let flush_only_one = commitlog_peer::durable(1, duration, commitlog_peer::Flush::Alone);
    let flush_only_sixteen = commitlog_peer::durable(16, duration, commitlog_peer::Flush::Alone);

    println!();
    println!(
        "raw write+fdatasync of one {FRAME_BYTES}-byte record, same disk, same run: \
         {raw_fallocated:.0}/s into fallocated blocks, {raw_overwrite:.0}/s over written blocks; \
         annal's durable 1-producer figure is {:.2}x and {:.2}x of them",
        durable_one / raw_fallocated,
        durable_one / raw_overwrite
    );
    println!(
        "annal pipelined: {:.0} MB/s of journal at {} bytes per fdatasync = {:.0}% of the raw \
         sequential write+fdatasync bandwidth at that size ({:.0} MB/s, a 256 MiB fallocated \
         file rewritten in a loop)",
        pipelined.annal.bytes_per_s / 1e6,
        pipelined.annal.bytes_per_sync,
        100.0 * pipelined.annal.bytes_per_s / pipelined.raw_bytes_per_s,
        pipelined.raw_bytes_per_s / 1e6
    );
    println!(
        "annal consumer drain with commit_pipelined (the next batch read while one commit's \
         fdatasync is in flight): {}; with up to 4 commits in flight: {}",
        table::rate(drain_pipelined),
        table::rate(drain_pipelined_4)
    );
    println!(
        "commitlog with flush() alone after each append (no fdatasync of its data): \
         {} with 1 producer, {} with 16",
        table::rate(flush_only_one),
        table::rate(flush_only_sixteen)
    );
    table::print_legend();
    println!("\nwhole run: {:.0} s", started.elapsed().as_secs_f64());
}

/// Workloads 1 and 2, with the measurements of `more` taking their turns in the same rounds;
/// returns the four systems' figures, then those of `more`.
fn durable_row(
    plan: &Plan,
    workload: &'static str,
    threads: usize,
    more: &[&dyn Fn() -> f64],
) -> Vec<f64> {
    let duration = plan.duration;
    let systems: [&dyn Fn() -> f64; 4] = [
        &|| annal_side::durable(threads, duration),
        &|| okaywal_peer::durable(threads, duration),
        &|| commitlog_peer::durable(threads, duration, commitlog_peer::Flush::ThenSyncSegment),
        &|| sqlite_peer::durable(threads, duration),
    ];
    let runs: Vec<&dyn Fn() -> f64> = systems.iter().chain(more).copied().collect();
    let figures = plan.best_of_rounds(&runs);
    Row::rates(workload, &figures).print();
    figures
}

/// Workloads 3 and 4.
fn batches_row(plan: &Plan, workload: &'static str, threads: usize) {
    let duration = plan.duration;
    let figures = plan.best_of_rounds(&[
        &|| annal_side::batches(threads, duration),
        &|| okaywal_peer::batches(threads, duration),
        &|| commitlog_peer::batches(threads, duration),
        &|| sqlite_peer::batches(threads, duration),
    ]);
    Row::rates(workload, &figures).print();
}

/// Workload 5: one log per system (building it is the slow part), replayed repeatedly.
fn replay_row(duration: Duration) {
    Row {
        workload: "replay 2M events in order",
        figures: [
            Figure::Rate(annal_side::replay(REPLAY_EVENTS, duration)),
            Figure::Rate(okaywal_peer::replay(REPLAY_EVENTS, duration)),
            Figure::Rate(commitlog_peer::replay(REPLAY_EVENTS, duration)),
            Figure::Rate(sqlite_peer::replay(REPLAY_EVENTS, duration)),
        ],
    }
    .print();
}

/// Workload 8: annal and SQLite only.
fn drain_row(duration: Duration) {
    Row {
        workload: "consumer drain 2M, durable commit per 1,000",
        figures: [
            Figure::Rate(annal_side::drain(REPLAY_EVENTS, duration, 0)),
            Figure::Absent("no consumers"),
            Figure::Absent("no consumers"),
            Figure::Rate(sqlite_peer::drain(REPLAY_EVENTS, duration)),
        ],
    }
    .print();
}

/// Workload 6: the median of thousands of reads of one log per system.
fn hydrate_row(duration: Duration) {
    Row {
        workload: "hydrate one ~100-event aggregate, p50 time",
        figures: [
            Figure::Latency(annal_side::hydrate(HYDRATE_EVENTS, duration)),
            Figure::Absent("no key index"),
            Figure::Absent("no key index"),
            Figure::Latency(sqlite_peer::hydrate(HYDRATE_EVENTS, duration)),
        ],
    }
    .print();
}

/// annal's best pipelined round, and the raw write+fdatasync bandwidth at its bytes per
/// fdatasync, measured right after each round.
struct PipelinedRow {
    annal: annal_side::Pipelined,
    raw_bytes_per_s: f64,
}

/// Workload 7, annal only.
fn pipelined_row(plan: &Plan, scratch: &std::path::Path) -> PipelinedRow {
    let mut best: Option<PipelinedRow> = None;
    for _ in 0..plan.rounds {
        let annal = annal_side::pipelined(PIPELINE_DEPTH, plan.duration);
        let (_, raw_bytes_per_s) = common::raw_sync_rate(
            scratch,
            RawFile::Fallocated,
            annal.bytes_per_sync,
            plan.duration,
        );
        if best
            .as_ref()
            .is_none_or(|b| annal.events_per_s > b.annal.events_per_s)
        {
            best = Some(PipelinedRow {
                annal,
                raw_bytes_per_s,
            });
        }
    }
    let best = best.expect("at least one round");
    Row {
        workload: "durable pipelined, 1 thread (depth 4,096)",
        figures: [
            Figure::Rate(best.annal.events_per_s),
            Figure::Absent("-"),
            Figure::Absent("-"),
            Figure::Absent("-"),
        ],
    }
    .print();
    best
}
