//! `annal groups`: consumer groups' committed cursors and lag per partition, keys waiting for a
//! retry and dead letters; `reset` and `seek` move a group's cursors, `redrive` and `discard`
//! act on its dead letters.
//!
//! The list goes through `Log::open` when it can; when another process holds the log it reads
//! the groups partition's files instead (`disk/groups.rs`), as the other reading commands do.
//! `reset` and `seek` write a commit, so they need the log itself: a group's members live in
//! the process that has the log open, and a cursor moved under them would race their commits.

use std::path::{Path, PathBuf};

use annal::{Durability, Error, Group, Log, Options, StartAt};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::disk::groups as group_files;
use crate::disk::layout::LogDir;
use crate::disk::partition::{self, Stop};
use crate::dump::note_invalid_end;
use crate::failure::Failure;
use crate::output::{count_text, Out};

/// List consumer groups with their committed cursor and lag per partition; reset or seek one.
///
/// Lag is a partition's end offset minus the group's committed cursor: the events the group
/// has not committed yet.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal groups annal-data\n  \
    annal groups annal-data --json | jq '.groups[] | {name, total_lag}'\n  \
    annal groups annal-data reset projections --to latest\n  \
    annal groups annal-data reset projections --to 1767225600000\n  \
    annal groups annal-data seek projections --partition 3 --offset 1200\n\n\
    The list opens the log when no other process has it open, and otherwise reads the files \
    (the output says which): a log open elsewhere may show a commit still being made durable. \
    reset, seek, redrive and discard write the group's record, so they need the log closed \
    elsewhere.\n  \
    annal groups annal-data redrive projections --key order-17\n  \
    annal groups annal-data redrive projections --all\n  \
    annal groups annal-data discard projections --key order-17")]
pub struct GroupsArgs {
    /// Directory of the log.
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<GroupAction>,
}

#[derive(Subcommand)]
pub enum GroupAction {
    /// Move every partition's cursor of a group to the earliest offsets, the latest, or the
    /// first event at or after a time.
    Reset(ResetArgs),
    /// Move one partition's cursor of a group to an offset (back or forward, up to the
    /// partition's end).
    Seek(SeekArgs),
    /// Deliver a dead letter again (its failed event and the events parked behind it, in
    /// order, with fresh attempts).
    Redrive(RedriveArgs),
    /// Drop a dead letter: its failed event and the events parked behind it are never
    /// delivered to the group; the key's later events are.
    Discard(DiscardArgs),
}

#[derive(Args)]
pub struct RedriveArgs {
    /// The group.
    pub name: String,
    /// The parked key (as UTF-8 text).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub key: Option<String>,
    /// Every dead letter of the group.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct DiscardArgs {
    /// The group.
    pub name: String,
    /// The parked key (as UTF-8 text).
    #[arg(long)]
    pub key: String,
}

#[derive(Args)]
pub struct ResetArgs {
    /// The group.
    pub name: String,
    /// `earliest`, `latest`, or a time in milliseconds since the Unix epoch.
    #[arg(long, value_parser = parse_start_at)]
    pub to: StartAt,
}

#[derive(Args)]
pub struct SeekArgs {
    /// The group.
    pub name: String,
    /// The partition whose cursor moves.
    #[arg(long)]
    pub partition: u32,
    /// The group's new cursor in that partition: the next offset it is delivered.
    #[arg(long)]
    pub offset: u64,
}

/// How the list was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadBy {
    /// `Log::open`: the committed cursors and visible ends of the engine.
    Log,
    /// The files, because another process holds the log.
    Files,
}

/// One group's cursors.
struct GroupView {
    name: String,
    /// In partition order.
    partitions: Vec<PartitionView>,
    /// Keys waiting for a retry.
    retrying: usize,
    dead_letters: Vec<DeadLetterView>,
}

struct DeadLetterView {
    partition: u32,
    key: Vec<u8>,
    offset: u64,
    attempts: u32,
    reason: String,
}

struct PartitionView {
    committed: u64,
    end_offset: u64,
    lag: u64,
}

impl GroupView {
    fn total_lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }

    fn of_group(log: &Log, group: &Group) -> Result<GroupView, Failure> {
        let committed = group.committed();
        let lag = group.lag();
        let mut partitions = Vec::with_capacity(committed.len());
        for (p, (&committed, &lag)) in committed.iter().zip(&lag).enumerate() {
            let end_offset = log
                .end_offset(p as u32)
                .map_err(|e| Failure::annal("read a partition's end", e))?;
            partitions.push(PartitionView {
                committed,
                end_offset,
                lag,
            });
        }
        let dead_letters = group
            .dead_letters()
            .map_err(|e| Failure::annal("read the dead letters", e))?
            .into_iter()
            .map(|d| DeadLetterView {
                partition: d.partition,
                key: d.key,
                offset: d.offset,
                attempts: d.attempts,
                reason: d.reason,
            })
            .collect();
        Ok(GroupView {
            name: group.name().to_owned(),
            partitions,
            retrying: group.retrying().len(),
            dead_letters,
        })
    }
}

pub fn run(args: &GroupsArgs) -> Result<(), Failure> {
    let log_dir = LogDir::read(&args.dir)?;
    match &args.action {
        None => list(&log_dir, args.json),
        Some(GroupAction::Reset(reset)) => {
            let done = format!("reset to {}", start_at_text(reset.to));
            change(&log_dir, &reset.name, "reset", &done, args.json, |g| {
                g.reset(reset.to)
            })
        }
        Some(GroupAction::Seek(seek)) => {
            let done = format!(
                "partition {} moved to offset {}",
                seek.partition, seek.offset
            );
            change(&log_dir, &seek.name, "seek", &done, args.json, |g| {
                g.seek(seek.partition, seek.offset)
            })
        }
        Some(GroupAction::Redrive(redrive)) => match &redrive.key {
            Some(key) => {
                let done = format!("dead letter of key {key:?} re-driven");
                change(&log_dir, &redrive.name, "redrive", &done, args.json, |g| {
                    g.redrive(key.as_bytes())
                })
            }
            None => change(
                &log_dir,
                &redrive.name,
                "redrive",
                "every dead letter re-driven",
                args.json,
                |g| g.redrive_all().map(drop),
            ),
        },
        Some(GroupAction::Discard(discard)) => {
            let done = format!("dead letter of key {:?} discarded", discard.key);
            change(&log_dir, &discard.name, "discard", &done, args.json, |g| {
                g.discard(discard.key.as_bytes())
            })
        }
    }
}

fn list(log_dir: &LogDir, json: bool) -> Result<(), Failure> {
    let (groups, read_by) = match Log::open(&log_dir.dir, Options::default()) {
        Ok(log) => {
            let groups = groups_of(&log)?;
            close(log, &log_dir.dir)?;
            (groups, ReadBy::Log)
        }
        Err(Error::Locked { .. }) => (groups_from_files(log_dir)?, ReadBy::Files),
        Err(error) => {
            return Err(Failure::annal(
                format!("open {}", log_dir.dir.display()),
                error,
            ))
        }
    };
    print(log_dir, &groups, read_by, json)
}

/// Every group that committed, through the engine.
fn groups_of(log: &Log) -> Result<Vec<GroupView>, Failure> {
    let names = log
        .group_names()
        .map_err(|e| Failure::annal("read the groups", e))?;
    names
        .iter()
        .map(|name| {
            let group = log
                .group(name)
                .map_err(|e| Failure::annal(format!("read group {name:?}"), e))?;
            GroupView::of_group(log, &group)
        })
        .collect()
}

/// Every group that committed, from the files. The groups are read before the partitions'
/// ends, so that a commit is never seen past an end that was read before it.
fn groups_from_files(log_dir: &LogDir) -> Result<Vec<GroupView>, Failure> {
    let files = group_files::read(log_dir)?;
    if let Some(Stop::Invalid { path, damage }) = &files.invalid_end {
        note_invalid_end(log_dir.meta.partitions, path, damage);
    }
    let ends = (0..log_dir.meta.partitions)
        .map(|p| partition::end_offset(&log_dir.dir, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(files
        .committed
        .into_iter()
        .map(|(name, record)| GroupView {
            name,
            partitions: record
                .committed
                .iter()
                .zip(&ends)
                .map(|(&committed, &end_offset)| PartitionView {
                    committed,
                    end_offset,
                    lag: end_offset.saturating_sub(committed),
                })
                .collect(),
            retrying: record.held.iter().filter(|h| h.status == 1).count(),
            dead_letters: record
                .held
                .into_iter()
                .filter(|h| h.parked)
                .map(|h| DeadLetterView {
                    partition: h.partition,
                    key: h.key,
                    offset: h.offset,
                    attempts: h.attempts,
                    reason: h.reason,
                })
                .collect(),
        })
        .collect())
}

/// Opens the log, applies `apply` to an existing group, and prints its cursors after.
fn change(
    log_dir: &LogDir,
    name: &str,
    verb: &str,
    done: &str,
    json: bool,
    apply: impl FnOnce(&Group) -> annal::Result<()>,
) -> Result<(), Failure> {
    let dir = &log_dir.dir;
    let options = Options::default().durability(Durability::Sync);
    let log = Log::open(dir, options).map_err(|error| match error {
        Error::Locked { .. } => Failure::message(format!(
            "{} is open by another process: `annal groups {verb}` writes the group's cursors and \
             needs the log closed (stop the process that has it open; `annal groups {}` lists \
             while it is open)",
            dir.display(),
            dir.display()
        )),
        error => Failure::annal(format!("open {}", dir.display()), error),
    })?;
    let names = log
        .group_names()
        .map_err(|e| Failure::annal("read the groups", e))?;
    if !names.iter().any(|n| n == name) {
        let known = if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has {}", names.join(", "))
        };
        return Err(Failure::message(format!(
            "no group {name:?} in {} ({known}; a group appears at its first commit)",
            dir.display()
        )));
    }
    let group = log
        .group(name)
        .map_err(|e| Failure::annal(format!("read group {name:?}"), e))?;
    apply(&group).map_err(|e| Failure::annal(format!("{verb} group {name:?}"), e))?;
    let view = GroupView::of_group(&log, &group)?;
    drop(group);
    close(log, dir)?;
    if json {
        let object = json!({
            "dir": dir.display().to_string(),
            "done": done,
            "group": group_json(&view),
        });
        let mut out = Out::new();
        out.line(&object.to_string())?;
        return out.flush();
    }
    let mut out = Out::new();
    out.line(&format!("group {name}: {done}"))?;
    group_lines(&mut out, &view)?;
    out.flush()
}

fn close(log: Log, dir: &Path) -> Result<(), Failure> {
    log.close()
        .map_err(|e| Failure::annal(format!("close {}", dir.display()), e))
}

fn print(
    log_dir: &LogDir,
    groups: &[GroupView],
    read_by: ReadBy,
    json: bool,
) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        let object = json!({
            "dir": log_dir.dir.display().to_string(),
            "partitions": log_dir.meta.partitions,
            "read_from": match read_by {
                ReadBy::Log => "log",
                ReadBy::Files => "files",
            },
            "note": read_by_text(read_by),
            "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
        });
        out.line(&object.to_string())?;
        return out.flush();
    }
    out.line(&format!(
        "log {}: {} group{}, {} partitions; {}",
        log_dir.dir.display(),
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
        log_dir.meta.partitions,
        read_by_text(read_by)
    ))?;
    for group in groups {
        out.line("")?;
        out.line(&format!(
            "group {}: total lag {}, {} waiting for a retry, {} dead letter{}",
            group.name,
            count_text(group.total_lag()),
            group.retrying,
            group.dead_letters.len(),
            if group.dead_letters.len() == 1 {
                ""
            } else {
                "s"
            },
        ))?;
        group_lines(&mut out, group)?;
    }
    out.flush()
}

fn read_by_text(read_by: ReadBy) -> &'static str {
    match read_by {
        ReadBy::Log => "read through Log::open (no other process had the log open)",
        ReadBy::Files => {
            "read from the files (another process has the log open: a commit still being made \
             durable may show, and ends may run ahead of what its readers see)"
        }
    }
}

fn group_lines(out: &mut Out, group: &GroupView) -> Result<(), Failure> {
    out.line(&format!(
        "  {:<9} {:>14} {:>14} {:>14}",
        "partition", "committed", "end offset", "lag"
    ))?;
    for (p, view) in group.partitions.iter().enumerate() {
        out.line(&format!(
            "  {p:<9} {:>14} {:>14} {:>14}",
            view.committed, view.end_offset, view.lag
        ))?;
    }
    for dead in &group.dead_letters {
        out.line(&format!(
            "  dead letter: partition {} offset {} key {:?}, {} attempts: {}",
            dead.partition,
            dead.offset,
            String::from_utf8_lossy(&dead.key),
            dead.attempts,
            dead.reason
        ))?;
    }
    Ok(())
}

fn group_json(group: &GroupView) -> serde_json::Value {
    let partitions: Vec<_> = group
        .partitions
        .iter()
        .enumerate()
        .map(|(p, view)| {
            json!({
                "partition": p,
                "committed": view.committed,
                "end_offset": view.end_offset,
                "lag": view.lag,
            })
        })
        .collect();
    let dead_letters: Vec<_> = group
        .dead_letters
        .iter()
        .map(|d| {
            json!({
                "partition": d.partition,
                "offset": d.offset,
                "key": String::from_utf8_lossy(&d.key),
                "attempts": d.attempts,
                "reason": d.reason,
            })
        })
        .collect();
    json!({
        "name": group.name,
        "total_lag": group.total_lag(),
        "partitions": partitions,
        "retrying": group.retrying,
        "dead_letters": dead_letters,
    })
}

fn parse_start_at(text: &str) -> Result<StartAt, String> {
    match text {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => text.parse().map(StartAt::Timestamp).map_err(|_| {
            format!("{text:?} is not earliest, latest or a time in ms since the Unix epoch")
        }),
    }
}

fn start_at_text(at: StartAt) -> String {
    match at {
        StartAt::Earliest => "earliest".to_owned(),
        StartAt::Latest => "latest".to_owned(),
        StartAt::Timestamp(ms) => format!("the first events at or after {ms} ms"),
        _ => format!("{at:?}"),
    }
}
