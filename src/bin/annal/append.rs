//! `annal append`: appends events to one key's stream, with an expected version and event ids.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use annal::{Appended, Durability, Event, Expected, Options};
use clap::Args;
use serde_json::json;

use crate::disk::layout;
use crate::failure::{open_log, Failure};

/// Append events to a key's stream, with an expected version and event ids.
///
/// Appends the PAYLOAD given, or one event per line of stdin, each durable (Sync) when its line
/// is printed.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal append annal-data --key account-7 --expect none opened\n  \
    printf 'deposit:10\\ndeposit:20\\n' | annal append annal-data --key account-7 --expect 0\n  \
    annal append annal-data --key order-1 --id 1f --header type=OrderPlaced '{\"sku\":\"A1\"}'\n\n\
    Each append prints where it went: partition, offset, version (in the key's stream), global \
    position, and duplicate=true when its id was already there (nothing was written).")]
pub struct AppendArgs {
    /// Directory of the log.
    pub dir: PathBuf,
    /// The key (aggregate id) whose stream the events go to.
    #[arg(long)]
    pub key: String,
    /// What the stream must be before the first event: the version of its last event (a
    /// number), `none` (no events yet), `exists`, or `any`. Each next line expects the version
    /// the previous one got.
    #[arg(long, default_value = "any", value_parser = parse_expected)]
    pub expect: Expected,
    /// Event id in hex, up to 32 digits: appending an id that is already in the key's stream
    /// writes nothing. With events from stdin, line i (from 0) gets id + i.
    #[arg(long, value_parser = parse_id)]
    pub id: Option<u128>,
    /// A header NAME=VALUE for every event; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Create the log if DIR holds none.
    #[arg(long)]
    pub create: bool,
    /// Partition count of a log made by --create (default 8).
    #[arg(long, requires = "create")]
    pub partitions: Option<u32>,
    /// Print each result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The event's payload. Without it, events are read from stdin, one per line.
    pub payload: Option<String>,
}

pub fn run(args: &AppendArgs) -> Result<(), Failure> {
    if !args.create {
        layout::require_log_dir(&args.dir)?;
    }
    if args.payload.is_none() && std::io::stdin().is_terminal() {
        return Err(Failure::message(
            "give a PAYLOAD, or pipe events into stdin, one per line",
        ));
    }
    let mut options = Options::default().durability(Durability::Sync);
    if let Some(partitions) = args.partitions {
        options = options.partitions(partitions);
    }
    let log = open_log(&args.dir, options, "append")?;
    let mut expected = args.expect;
    let mut append = |index: u64, payload: &[u8]| -> Result<(), Failure> {
        let mut event = Event::new(payload);
        for (name, value) in &args.headers {
            event = event.header(name.as_str(), value.as_str());
        }
        if let Some(id) = args.id {
            event = event.id(id.wrapping_add(u128::from(index)));
        }
        let appended = log
            .append_to(args.key.as_bytes(), expected, &[event])
            .map_err(|error| {
                let place = match &args.payload {
                    Some(_) => format!("append to {}", args.key),
                    None => format!("append line {} to {}", index + 1, args.key),
                };
                Failure::annal(place, error)
            })?;
        print_appended(&appended, args.json)?;
        if expected != Expected::Any {
            expected = Expected::Exact(appended.last_version());
        }
        Ok(())
    };
    match &args.payload {
        Some(payload) => append(0, payload.as_bytes())?,
        None => {
            let stdin = std::io::stdin().lock();
            for (index, line) in stdin.split(b'\n').enumerate() {
                let mut line = line.map_err(|e| Failure::io("read", "stdin", e))?;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                append(index as u64, &line)?;
            }
        }
    }
    log.close()
        .map_err(|e| Failure::annal(format!("close {}", args.dir.display()), e))
}

fn print_appended(appended: &Appended, json: bool) -> Result<(), Failure> {
    let line = if json {
        json!({
            "partition": appended.partition,
            "offset": appended.offset,
            "version": appended.version,
            "global_position": appended.global_position,
            "duplicate": appended.duplicate,
        })
        .to_string()
    } else {
        format!(
            "partition={} offset={} version={} global={} duplicate={}",
            appended.partition,
            appended.offset,
            appended.version,
            appended.global_position,
            appended.duplicate
        )
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io("write", "stdout", e))
}

fn parse_expected(text: &str) -> Result<Expected, String> {
    match text {
        "any" => Ok(Expected::Any),
        "none" => Ok(Expected::NoStream),
        "exists" => Ok(Expected::StreamExists),
        number => number
            .parse()
            .map(Expected::Exact)
            .map_err(|_| format!("{number:?} is not a version number, `none`, `exists` or `any`")),
    }
}

fn parse_id(text: &str) -> Result<u128, String> {
    let digits = text.trim_start_matches("0x");
    if digits.is_empty() || digits.len() > 32 {
        return Err(format!("{text:?} is not an id of 1 to 32 hex digits"));
    }
    u128::from_str_radix(digits, 16).map_err(|_| format!("{text:?} is not a hex id"))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}
