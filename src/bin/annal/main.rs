//! The `annal` command: tools for operators of an annal log.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "annal",
    version,
    about = "An embeddable event log: operator tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append events for a few aggregates, read them back, reopen the log and check it.
    Demo {
        /// Directory of the log (created if missing).
        #[arg(long, default_value = "annal-data")]
        dir: PathBuf,
        /// Events to append.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { dir, events } => demo::run(&dir, events),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("annal: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
