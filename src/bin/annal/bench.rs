//! `annal bench`: a load generator. Producer threads append for a number of events or a
//! duration; it reports events/s, MB/s and the latency of each append (or of each ticket, when
//! pipelined), and compares the log with the raw ceiling of the same disk (`raw_disk.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use annal::{Durability, Event, Log, Options, Stats};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::failure::{open_log, Failure};
use crate::output::{bytes_text, count_text};
use crate::raw_disk::{self, RawCeiling};

/// Run length when neither --events nor --duration is given.
const DURATION_DEFAULT: Duration = Duration::from_secs(5);
/// Longest the raw ceiling is measured for.
const RAW_TIME_MAX: Duration = Duration::from_secs(3);
/// Latencies above this (one minute) are recorded as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Generate load and measure events/s, MB/s and latency against the disk's raw ceiling.
///
/// Producer threads append for a number of events or a duration; the report gives events/s,
/// MB/s, latency percentiles of each append (or ticket), and how close the log comes to one
/// thread doing write + fdatasync of the same bytes per sync on the same disk.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal bench                                          # 4 producers, Sync, 5 seconds\n  \
    annal bench --producers 1 --pipeline 64 --events 200000\n  \
    annal bench --durability interval:10 --batch 100 --event-bytes 1024 --duration 10s\n  \
    annal bench --events 50000 --json | jq .events_per_second\n  \
    annal bench --durability buffered --producers 4 --consumers 2 --events 1000000\n\n\
    The raw ceiling is one thread writing the same bytes per sync as the log's journal did \
    (from the log's stats), each followed by fdatasync, into a fallocated file on the same file \
    system, right after the run.")]
pub struct BenchArgs {
    /// Directory of the log (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Events to append in all.
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub events: Option<u64>,
    /// How long to append, such as 10s or 500ms (default 5s).
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Payload bytes of each event.
    #[arg(long, default_value_t = 100)]
    pub event_bytes: u32,
    /// Threads appending at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub producers: u32,
    /// Appends in flight per producer (Ticket per append); 1 waits for each append.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub pipeline: u32,
    /// Partitions of a new log (default 8).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// `sync`, `interval:<ms>` or `buffered`.
    #[arg(long, default_value = "sync", value_parser = parse_durability)]
    pub durability: Durability,
    /// Events per append: one frame, all or nothing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Distinct keys the appends go to, in turn.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Members of a consumer group draining the log while it is appended to (each polls up to
    /// 1,000 events and commits); 0 runs no consumer.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub consumers: u32,
    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// What the consumers did.
struct Consumed {
    /// Deliveries (with the redeliveries of the first rebalances).
    delivered: u64,
    /// Events not yet committed by the group when the producers stopped.
    lag_at_end: u64,
    /// From the producers' end (after their flush) until the group had committed everything.
    catch_up: Duration,
    /// From the start until the group had committed everything.
    seconds: f64,
}

/// What the producers share.
struct Load<'a> {
    log: &'a Log,
    args: &'a BenchArgs,
    keys: Vec<Vec<u8>>,
    payload: Vec<u8>,
    /// Events handed out to producers (with --events).
    claimed: AtomicU64,
    /// Events acknowledged.
    done: AtomicU64,
    stop: AtomicBool,
}

/// The figures of one run.
struct Measured {
    events: u64,
    seconds: f64,
    latency: Histogram<u64>,
    journal: Stats,
    consumed: Option<Consumed>,
}

pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let temporary;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("annal-bench-")
                .tempdir()
                .map_err(|e| Failure::io("create", std::env::temp_dir(), e))?;
            temporary.path().to_owned()
        }
    };
    let mut options = Options::default().durability(args.durability);
    if let Some(partitions) = args.partitions {
        options = options.partitions(partitions);
    }
    let log = open_log(&dir, options, "bench")?;
    if !args.json {
        println!(
            "annal bench: {} producer{}, pipeline {}, batch {}, {}-byte events, {} keys, {} partitions, durability {}",
            args.producers,
            if args.producers == 1 { "" } else { "s" },
            args.pipeline,
            args.batch,
            args.event_bytes,
            args.keys,
            log.partition_count(),
            durability_text(args.durability)
        );
        let removed = if args.dir.is_none() {
            " (removed afterwards)"
        } else {
            ""
        };
        println!("log in {}{removed}", dir.display());
    }
    stop_on_interrupt();
    let measured = drive(&log, args)?;
    log.close()
        .map_err(|e| Failure::annal(format!("close {}", dir.display()), e))?;
    if INTERRUPTED.load(Relaxed) {
        // `temporary`, if any, is removed as this returns.
        return Err(Failure::message("interrupted before the end of the run"));
    }
    let syncs = measured.journal.data_syncs.max(1);
    let bytes_per_sync = measured.journal.written_bytes / syncs;
    let time_max =
        Duration::from_secs_f64(measured.seconds).clamp(Duration::from_millis(200), RAW_TIME_MAX);
    let spinner = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner().with_message("measuring the raw write + fdatasync ceiling")
    };
    spinner.enable_steady_tick(Duration::from_millis(100));
    let raw = raw_disk::measure(&dir, bytes_per_sync, syncs, time_max, &INTERRUPTED);
    spinner.finish_and_clear();
    if INTERRUPTED.load(Relaxed) {
        return Err(Failure::message(
            "interrupted while measuring the raw ceiling",
        ));
    }
    report(args, &measured, &raw?)
}

/// Set by the first SIGINT, SIGTERM or SIGHUP: the run stops, the log is closed and a temporary
/// directory removed (a benchmark's log can be large). A second signal ends the process at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    if INTERRUPTED.swap(true, Relaxed) {
        // SAFETY: _exit is async-signal-safe; nothing else runs in the handler.
        unsafe { libc::_exit(130) }
    }
}

fn stop_on_interrupt() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    // SAFETY: installs a handler that only swaps an atomic and may call _exit, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
    }
}

/// Runs the producers and the progress bar; returns what they did.
fn drive(log: &Log, args: &BenchArgs) -> Result<Measured, Failure> {
    let load = Load {
        log,
        args,
        keys: (0..args.keys)
            .map(|k| format!("bench-{k:08}").into_bytes())
            .collect(),
        payload: (0..args.event_bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let duration = match args.events {
        Some(_) => None,
        None => Some(args.duration.unwrap_or(DURATION_DEFAULT)),
    };
    let bar = progress_bar(args, duration);
    let before = log.stats();
    let group = if args.consumers > 0 {
        let name = format!("annal-bench-{}", std::process::id());
        let group = log
            .group(&name)
            .map_err(|e| Failure::annal("open the consumer group", e))?;
        // A group starts at the earliest offsets: a log given with --dir may hold events.
        group
            .reset(annal::StartAt::Latest)
            .map_err(|e| Failure::annal("position the consumer group", e))?;
        Some(group)
    } else {
        None
    };
    let delivered = AtomicU64::new(0);
    let producers_done = AtomicBool::new(false);
    let started = Instant::now();
    let (histograms, flushed, seconds, consumed) = std::thread::scope(|scope| {
        let consumers: Vec<_> = (0..args.consumers)
            .map(|_| {
                let (group, delivered, done) = (group.as_ref(), &delivered, &producers_done);
                scope.spawn(move || {
                    consume(group.expect("consumers need the group"), delivered, done)
                })
            })
            .collect();
        let producers: Vec<_> = (0..args.producers)
            .map(|p| {
                let load = &load;
                scope.spawn(move || produce(load, p))
            })
            .collect();
        while !producers.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if INTERRUPTED.load(Relaxed) {
                load.stop.store(true, Relaxed);
            }
            let done = load.done.load(Relaxed);
            match duration {
                Some(duration) => {
                    bar.set_position(
                        (started.elapsed().as_millis() as u64).min(duration.as_millis() as u64),
                    );
                    bar.set_message(format!("{} events", count_text(done)));
                    if started.elapsed() >= duration {
                        load.stop.store(true, Relaxed);
                    }
                }
                None => {
                    bar.set_position(done);
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("{} events/s", count_text(rate as u64)));
                }
            }
        }
        let histograms = producers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Failure::message("a producer thread panicked")))
            })
            .collect::<Vec<_>>();
        // Every event counted must be durable (or written, under Buffered) when the time stops.
        let flushed = log.flush();
        let seconds = started.elapsed().as_secs_f64();
        let producers_end = Instant::now();
        let lag_at_end: u64 = group.as_ref().map_or(0, |g| g.lag().iter().sum());
        producers_done.store(true, Relaxed);
        let consumed = group.as_ref().map(|_| {
            let results: Vec<Result<(), Failure>> = consumers
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Failure::message("a consumer thread panicked")))
                })
                .collect();
            results
                .into_iter()
                .collect::<Result<(), Failure>>()
                .map(|()| Consumed {
                    delivered: delivered.load(Relaxed),
                    lag_at_end,
                    catch_up: producers_end.elapsed(),
                    seconds: started.elapsed().as_secs_f64(),
                })
        });
        (histograms, flushed, seconds, consumed)
    });
    bar.finish_and_clear();
    // Before the group's deletion, which writes a record of its own.
    let journal = log.stats().since(&before);
    // The group was the bench's own: a log given with --dir keeps no trace of it (a group left
    // behind would list, and hold with retention by interest, whatever is appended later).
    let deleted = group.map(|group| {
        let name = group.name().to_owned();
        drop(group);
        log.delete_group(&name)
            .map_err(|e| Failure::annal("delete the bench's consumer group", e))
    });
    flushed.map_err(|e| Failure::annal("flush", e))?;
    let consumed = consumed.transpose()?;
    deleted.transpose()?;
    let mut latency = new_histogram();
    for histogram in histograms {
        latency
            .add(histogram?)
            .map_err(|e| Failure::message(format!("merge latencies: {e}")))?;
    }
    Ok(Measured {
        events: load.done.load(Relaxed),
        seconds,
        latency,
        journal,
        consumed,
    })
}

/// One member of the bench's group: polls and commits until the producers are done and the
/// group has committed everything.
fn consume(
    group: &annal::Group,
    delivered: &AtomicU64,
    producers_done: &AtomicBool,
) -> Result<(), Failure> {
    let mut consumer = group
        .join()
        .map_err(|e| Failure::annal("join the consumer group", e))?;
    loop {
        let batch = consumer
            .poll(1_000, Duration::from_millis(50))
            .map_err(|e| Failure::annal("poll", e))?;
        delivered.fetch_add(batch.len() as u64, Relaxed);
        consumer
            .commit(&batch)
            .map_err(|e| Failure::annal("commit", e))?;
        let done = producers_done.load(Relaxed);
        if INTERRUPTED.load(Relaxed) || (done && group.lag().iter().all(|&lag| lag == 0)) {
            return Ok(());
        }
    }
}

fn progress_bar(args: &BenchArgs, duration: Option<Duration>) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let (len, template) = match (args.events, duration) {
        (Some(events), _) => (
            events,
            "{bar:40} {human_pos}/{human_len} events, {msg}, eta {eta}",
        ),
        (None, Some(duration)) => (
            duration.as_millis() as u64,
            "{bar:40} {elapsed}/{duration_total} {msg}",
        ),
        (None, None) => (0, "{msg}"),
    };
    let template = template.replace(
        "{duration_total}",
        &format!("{}s", (len as f64 / 1000.0).round()),
    );
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// One producer: appends until the events are handed out or the time is up.
fn produce(load: &Load<'_>, producer: u32) -> Result<Histogram<u64>, Failure> {
    let args = load.args;
    let batch = u64::from(args.batch);
    let events: Vec<Event<'_>> = (0..args.batch).map(|_| Event::new(&load.payload)).collect();
    let mut latency = new_histogram();
    let mut in_flight = VecDeque::with_capacity(args.pipeline as usize);
    let mut key_index = u64::from(producer);
    let append_failed = |e| Failure::annal("append", e);
    loop {
        if load.stop.load(Relaxed) {
            break;
        }
        if let Some(total) = args.events {
            if load.claimed.fetch_add(batch, Relaxed) >= total {
                break;
            }
        }
        let key = &load.keys[(key_index % args.keys) as usize];
        key_index += u64::from(args.producers);
        let started = Instant::now();
        if args.pipeline == 1 {
            if args.batch == 1 {
                load.log
                    .append(key, events[0].clone())
                    .map_err(append_failed)?;
            } else {
                load.log
                    .append_batch(key, events.iter().cloned())
                    .map_err(append_failed)?;
            }
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            load.done.fetch_add(batch, Relaxed);
            continue;
        }
        let ticket = load
            .log
            .append_batch_pipelined(key, events.iter().cloned())
            .map_err(append_failed)?;
        in_flight.push_back((started, ticket));
        if in_flight.len() >= args.pipeline as usize {
            let (started, ticket) = in_flight.pop_front().expect("not empty");
            ticket.wait().map_err(append_failed)?;
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            load.done.fetch_add(batch, Relaxed);
        }
    }
    for (started, ticket) in in_flight {
        ticket.wait().map_err(append_failed)?;
        latency.saturating_record(started.elapsed().as_nanos() as u64);
        load.done.fetch_add(batch, Relaxed);
    }
    Ok(latency)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant bounds are valid")
}

fn report(args: &BenchArgs, measured: &Measured, raw: &RawCeiling) -> Result<(), Failure> {
    let seconds = measured.seconds.max(1e-9);
    let events_per_second = measured.events as f64 / seconds;
    let payload_mb_per_second = events_per_second * f64::from(args.event_bytes) / 1e6;
    let journal = &measured.journal;
    let syncs = journal.data_syncs.max(1);
    let events_per_sync = measured.events as f64 / syncs as f64;
    let raw_events_per_second = raw.syncs_per_second() * events_per_sync;
    let percent = 100.0 * events_per_second / raw_events_per_second.max(1e-9);
    let latency_of = if args.pipeline == 1 {
        "append"
    } else {
        "ticket"
    };
    let us = |quantile: f64| measured.latency.value_at_quantile(quantile) as f64 / 1000.0;
    if args.json {
        let object = json!({
            "config": {
                "producers": args.producers,
                "pipeline": args.pipeline,
                "batch": args.batch,
                "event_bytes": args.event_bytes,
                "keys": args.keys,
                "durability": durability_text(args.durability),
            },
            "events": measured.events,
            "seconds": measured.seconds,
            "events_per_second": events_per_second,
            "payload_mb_per_second": payload_mb_per_second,
            "latency_us": {
                "of": latency_of,
                "p50": us(0.5),
                "p99": us(0.99),
                "p999": us(0.999),
                "max": measured.latency.max() as f64 / 1000.0,
            },
            "journal": {
                "syncs": journal.data_syncs,
                "bytes": journal.written_bytes,
                "bytes_per_sync": raw.bytes_per_sync,
                "events_per_sync": events_per_sync,
                "mb_per_second": journal.written_bytes as f64 / seconds / 1e6,
            },
            "raw": {
                "syncs": raw.syncs,
                "seconds": raw.seconds,
                "bytes_per_sync": raw.bytes_per_sync,
                "syncs_per_second": raw.syncs_per_second(),
                "mb_per_second": raw.bytes_per_second() / 1e6,
                "events_per_second": raw_events_per_second,
            },
            "percent_of_raw": percent,
            "consumers": measured.consumed.as_ref().map(|c| json!({
                "members": args.consumers,
                "delivered": c.delivered,
                "events_per_second": measured.events as f64 / c.seconds.max(1e-9),
                "lag_when_producers_stopped": c.lag_at_end,
                "caught_up_ms_after_producers": c.catch_up.as_secs_f64() * 1e3,
            })),
        });
        println!("{object}");
        return Ok(());
    }
    println!(
        "appended {} events in {:.2} s: {} events/s, {:.1} MB/s of payload",
        count_text(measured.events),
        measured.seconds,
        count_text(events_per_second as u64),
        payload_mb_per_second
    );
    println!(
        "latency of each {latency_of}: p50 {}, p99 {}, p99.9 {}, max {}",
        latency_text(us(0.5)),
        latency_text(us(0.99)),
        latency_text(us(0.999)),
        latency_text(measured.latency.max() as f64 / 1000.0)
    );
    println!(
        "journal: {} fsyncs, {:.1} events and {} per fsync, {:.1} MB/s",
        count_text(journal.data_syncs),
        events_per_sync,
        bytes_text(raw.bytes_per_sync),
        journal.written_bytes as f64 / seconds / 1e6
    );
    println!(
        "raw ceiling on the same disk: write + fdatasync of {} from one thread: {} syncs/s, \
         {:.1} MB/s = {} events/s at {:.1} events per sync",
        bytes_text(raw.bytes_per_sync),
        count_text(raw.syncs_per_second() as u64),
        raw.bytes_per_second() / 1e6,
        count_text(raw_events_per_second as u64),
        events_per_sync
    );
    println!("annal reaches {percent:.1}% of the raw ceiling");
    if let Some(c) = &measured.consumed {
        println!(
            "{} consumer{} (one group, polls of 1,000, a commit each): {} deliveries, {} \
             events/s end to end; lag when the producers stopped {}, all committed {} after",
            args.consumers,
            if args.consumers == 1 { "" } else { "s" },
            count_text(c.delivered),
            count_text((measured.events as f64 / c.seconds.max(1e-9)) as u64),
            count_text(c.lag_at_end),
            latency_text(c.catch_up.as_secs_f64() * 1e6)
        );
    }
    Ok(())
}

fn latency_text(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn durability_text(durability: Durability) -> String {
    match durability {
        Durability::Sync => "sync".to_owned(),
        Durability::Interval(interval) => format!("interval:{}", interval.as_millis()),
        Durability::Buffered => "buffered".to_owned(),
        _ => format!("{durability:?}"),
    }
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
            _ => Err(format!(
                "{text:?}: use sync, interval:<ms> (such as interval:10) or buffered"
            )),
        },
    }
}
