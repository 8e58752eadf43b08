//! The `annal` command: a demo, a load generator, and tools for operators of an annal log.
//!
//! One file per subcommand; `disk/` reads the log's files directly (see its module docs for
//! why), `output.rs` prints records, `failure.rs` turns every error into one line.

mod append;
mod bench;
mod demo;
mod demo_bank;
mod demo_crash;
mod disk;
mod dump;
mod failure;
mod groups;
mod output;
mod raw_disk;
mod relay;
mod stats;
mod tail;
mod verify;
mod verify_derived;
mod verify_partition;
mod verify_repair;
mod watch;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "annal",
    version,
    about = "annal, an embeddable event log: a demo, a load generator and operator tools",
    after_help = "Examples:\n  annal demo\n  annal bench --producers 4 --duration 5s\n  \
                  annal stats annal-data\n  annal groups annal-data\n  \
                  annal verify annal-data\n\n\
                  Reading commands (dump, stats, tail, verify, groups) work while another \
                  process has the log open, reading its files directly; append, demo, groups \
                  reset and seek, and verify --repair open it for writing."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Bench(bench::BenchArgs),
    Dump(dump::DumpArgs),
    Verify(verify::VerifyArgs),
    Tail(tail::TailArgs),
    Append(append::AppendArgs),
    Stats(stats::StatsArgs),
    Groups(groups::GroupsArgs),
    Relay(relay::RelayArgs),
    /// The demo's crashing child process (started by `annal demo`).
    #[command(hide = true, name = "demo-crash-child")]
    DemoCrashChild(demo_crash::ChildArgs),
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    std::panic::set_hook(Box::new(|info| {
        // One line, never a backtrace: a panic is a bug in annal, said as such.
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("annal: internal error{place}: {message}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let (name, result) = match cli.command {
        Command::Demo(args) => ("demo", demo::run(&args)),
        Command::Bench(args) => ("bench", bench::run(&args)),
        Command::Dump(args) => ("dump", dump::run(&args)),
        Command::Verify(args) => ("verify", verify::run(&args)),
        Command::Tail(args) => ("tail", tail::run(&args)),
        Command::Append(args) => ("append", append::run(&args)),
        Command::Stats(args) => ("stats", stats::run(&args)),
        Command::Groups(args) => ("groups", groups::run(&args)),
        Command::Relay(args) => ("relay", relay::run(&args)),
        Command::DemoCrashChild(args) => ("demo", demo_crash::run_child(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("annal {name}: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error is said in one line, like
/// every other error, with clap's exit code (2).
fn usage_error(error: clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            let text = error.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:"))
                .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("annal: {message} (see --help)");
            ExitCode::from(2)
        }
    }
}

/// Rust ignores SIGPIPE, which turns `annal dump DIR | head` into a failed write and an error
/// message. Like other Unix tools, the command should end quietly when its reader goes away.
fn restore_default_sigpipe() {
    // SAFETY: sets the disposition of one signal to its default before any thread is started;
    // no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses a duration such as `500ms`, `5s`, `2m` or `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 * 365.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
