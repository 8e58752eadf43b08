//! `annal-relay DIR --to nats://HOST:PORT --stream S --subject PREFIX [--group NAME]`: relays a
//! log's events to NATS JetStream until interrupted (SIGINT, SIGTERM: the batch in flight is
//! published, acknowledged and committed, then the log is closed), or with `--until-caught-up`
//! until it has relayed everything there is. `annal relay ...` runs this program.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use annal::{Log, Options};
use annal_relay::{Relay, RelayConfig};
use clap::Parser;

/// Relay a log's events to NATS JetStream, at least once, in order per key.
#[derive(Parser)]
#[command(
    name = "annal relay",
    after_help = "Examples:\n  \
    annal relay annal-data --to nats://127.0.0.1:4222 --stream EVENTS --subject events\n  \
    annal relay annal-data --to nats://127.0.0.1:4222 --stream EVENTS --subject events --until-caught-up\n\n\
    Events go to <subject>.<partition>, with the key and position as headers and a \
    deduplication id (Nats-Msg-Id). The stream must exist and take <subject>.>. The group's \
    cursors advance only after the broker acknowledged; restarting resumes there."
)]
struct Args {
    /// Directory of the log (the relay opens it: the application appends through the same
    /// process, or stops while the relay catches up).
    dir: PathBuf,
    /// The broker.
    #[arg(long)]
    to: String,
    /// The JetStream stream.
    #[arg(long)]
    stream: String,
    /// Subject prefix: events go to <subject>.<partition>.
    #[arg(long)]
    subject: String,
    /// The consumer group that keeps the relay's cursors.
    #[arg(long, default_value = "relay")]
    group: String,
    /// Events per batch (one commit each).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Publishes awaiting acknowledgement at once.
    #[arg(long, default_value_t = 5000)]
    in_flight: usize,
    /// Stop once every event there is has been relayed.
    #[arg(long)]
    until_caught_up: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("annal relay: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    if !args.dir.join("annal.meta").exists() {
        return Err(format!("{} is not an annal log", args.dir.display()));
    }
    let log = Log::open(&args.dir, Options::default())
        .map_err(|e| format!("open {}: {e}", args.dir.display()))?;
    let mut config = RelayConfig::new(&args.to, &args.stream, &args.subject);
    config.group = args.group.clone();
    config.batch = args.batch.max(1);
    config.max_in_flight = args.in_flight.max(1);
    let relay = Relay::connect(&log, config).map_err(|e| e.to_string())?;
    let group = log.group(&args.group).map_err(|e| e.to_string())?;
    let mut last_report = Instant::now();
    let stats = relay
        .run(&STOP, |stats| {
            let lag: u64 = group.lag().iter().sum();
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "relayed {} events ({:.0}/s), lag {lag}",
                    stats.relayed,
                    stats.relayed as f64 / stats.elapsed.as_secs_f64().max(1e-9)
                );
            }
            args.until_caught_up && lag == 0
        })
        .map_err(|e| e.to_string())?;
    drop(group);
    log.close().map_err(|e| format!("close: {e}"))?;
    println!(
        "relayed {} events in {:.2} s ({:.0}/s); {} duplicates dropped by the broker, {} retries",
        stats.relayed,
        stats.elapsed.as_secs_f64(),
        stats.relayed as f64 / stats.elapsed.as_secs_f64().max(1e-9),
        stats.duplicates,
        stats.retries
    );
    Ok(())
}
