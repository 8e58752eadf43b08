//! `annal stats`: what a log holds, from its files: partitions, segments, bytes, end offsets,
//! distinct keys, time range, snapshots.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::disk::frame::Probe;
use crate::disk::layout::{self, LogDir, SEGMENT_SUFFIX, TABLE_SUFFIX};
use crate::disk::segment::{SegmentFile, DATA_START};
use crate::disk::{keys, snapshot};
use crate::failure::Failure;
use crate::output::{bytes_text, count_text, time_text, Out};

/// Show what a log holds: partitions, segments, bytes, events, keys, time range, snapshots.
///
/// Reads the files, so it works while another process has the log open.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal stats annal-data\n  \
    annal stats annal-data --json | jq .events\n\n\
    Distinct keys are counted by their 64-bit key hash, from the key tables of sealed segments \
    and a walk of the segment being written: exact unless two keys' hashes collide.")]
pub struct StatsArgs {
    /// Directory of the log.
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one partition holds.
#[derive(Debug, Default)]
struct PartitionStats {
    partition: u32,
    segments: u64,
    /// Bytes of its files: segments, indexes, key tables.
    bytes: u64,
    /// The first offset kept (0 until retention deleted segments).
    start_offset: u64,
    end_offset: u64,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    key_hashes: HashSet<u64>,
}

pub fn run(args: &StatsArgs) -> Result<(), Failure> {
    let log = LogDir::read(&args.dir)?;
    let partitions = (0..log.meta.partitions)
        .map(|p| partition_stats(&log, p))
        .collect::<Result<Vec<_>, _>>()?;
    let journal_bytes = file_len(&log.dir.join(layout::JOURNAL_FILE));
    let (snapshots, snapshot_bytes) = snapshot_files(&log.dir)?;
    let events: u64 = partitions
        .iter()
        .map(|p| p.end_offset.saturating_sub(p.start_offset))
        .sum();
    let keys: u64 = partitions.iter().map(|p| p.key_hashes.len() as u64).sum();
    let segments: u64 = partitions.iter().map(|p| p.segments).sum();
    let partition_bytes: u64 = partitions.iter().map(|p| p.bytes).sum();
    let first_ms = partitions.iter().filter_map(|p| p.first_ms).min();
    let last_ms = partitions.iter().filter_map(|p| p.last_ms).max();
    let mut out = Out::new();
    if args.json {
        let per_partition: Vec<_> = partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "segments": p.segments,
                    "bytes": p.bytes,
                    "start_offset": p.start_offset,
                    "end_offset": p.end_offset,
                    "distinct_keys": p.key_hashes.len(),
                    "first_timestamp_ms": p.first_ms,
                    "last_timestamp_ms": p.last_ms,
                })
            })
            .collect();
        let object = json!({
            "dir": log.dir.display().to_string(),
            "format_version": annal::FORMAT_VERSION,
            "created_ms": log.meta.created_ms,
            "partitions": log.meta.partitions,
            "segments": segments,
            "events": events,
            "distinct_keys": keys,
            "distinct_keys_counted_by": "64-bit key hash",
            "first_timestamp_ms": first_ms,
            "last_timestamp_ms": last_ms,
            "bytes": partition_bytes + journal_bytes + snapshot_bytes,
            "partition_bytes": partition_bytes,
            "journal_bytes": journal_bytes,
            "snapshots": snapshots,
            "snapshot_bytes": snapshot_bytes,
            "per_partition": per_partition,
        });
        out.line(&object.to_string())?;
        return out.flush();
    }
    out.line(&format!(
        "log {}: {} partitions, created {}",
        log.dir.display(),
        log.meta.partitions,
        time_text(log.meta.created_ms)
    ))?;
    out.line(&format!(
        "events: {} in {} segments; distinct keys: {} (by 64-bit key hash)",
        count_text(events),
        count_text(segments),
        count_text(keys)
    ))?;
    let range = match (first_ms, last_ms) {
        (Some(first), Some(last)) => format!("{} .. {}", time_text(first), time_text(last)),
        _ => "no events".to_owned(),
    };
    out.line(&format!("time range: {range}"))?;
    out.line(&format!(
        "bytes: {} (partitions {}, journal {}, snapshots {}); snapshots: {}",
        bytes_text(partition_bytes + journal_bytes + snapshot_bytes),
        bytes_text(partition_bytes),
        bytes_text(journal_bytes),
        bytes_text(snapshot_bytes),
        count_text(snapshots)
    ))?;
    out.line(&format!(
        "{:<9} {:>8} {:>11} {:>12} {:>12} {:>9}  {:<24} {:<24}",
        "partition",
        "segments",
        "bytes",
        "start",
        "end offset",
        "keys",
        "first event",
        "last event"
    ))?;
    for p in &partitions {
        out.line(&format!(
            "{:<9} {:>8} {:>11} {:>12} {:>12} {:>9}  {:<24} {:<24}",
            p.partition,
            p.segments,
            bytes_text(p.bytes),
            p.start_offset,
            p.end_offset,
            p.key_hashes.len(),
            p.first_ms.map_or("-".to_owned(), time_text),
            p.last_ms.map_or("-".to_owned(), time_text)
        ))?;
    }
    out.flush()
}

fn partition_stats(log: &LogDir, partition: u32) -> Result<PartitionStats, Failure> {
    let dir = log.partition_dir(partition);
    let mut stats = PartitionStats {
        partition,
        ..PartitionStats::default()
    };
    for name in layout::list_files(&dir)? {
        stats.bytes += file_len(&dir.join(name));
    }
    let bases = layout::list_segments(&dir)?;
    stats.segments = bases.len() as u64;
    // A damaged start file is reported, not read as 0: the events count would then include
    // offsets that retention deleted (the log itself refuses to open).
    stats.start_offset = crate::disk::partition::start_offset(&dir)
        .map_err(|reason| {
            Failure::message(format!(
                "{}: the start file {reason} (annal verify lists what else is damaged)",
                dir.join(crate::disk::partition::START_FILE).display()
            ))
        })?
        .unwrap_or(0);
    for (i, &base) in bases.iter().enumerate() {
        let path = layout::segment_file(&dir, base, SEGMENT_SUFFIX);
        let mut segment = SegmentFile::open(&path)?;
        segment.check_place(partition, base)?;
        if i == 0 {
            if let Probe::Frame(frame) = segment.probe_at(DATA_START)? {
                stats.first_ms = Some(frame.timestamp_ms);
            }
        }
        let next_base = bases.get(i + 1).copied();
        // A sealed segment's table, when valid, says which keys it holds without a walk.
        if let Some(next_base) = next_base {
            if let Some(table) = table_for(&dir, base, segment.header.crc, next_base) {
                stats.key_hashes.extend(table.keys.iter().map(|e| e.hash));
                continue;
            }
        }
        let mut last_ms = None;
        let hashes = &mut stats.key_hashes;
        let end_offset = segment.walk(DATA_START, base, |_, frame, bytes| {
            if !frame.is_padding() {
                hashes.insert(annal::key_hash(frame.key(bytes)));
                last_ms = Some(frame.timestamp_ms);
            }
            Ok(())
        })?;
        if next_base.is_none() {
            stats.end_offset = end_offset;
            stats.last_ms = last_ms;
        }
    }
    Ok(stats)
}

/// The key table of a sealed segment, if it is whole and describes exactly this segment file.
fn table_for(dir: &Path, base: u64, segment_crc: u32, end_offset: u64) -> Option<keys::KeyTable> {
    let bytes = std::fs::read(layout::segment_file(dir, base, TABLE_SUFFIX)).ok()?;
    let table = keys::decode(&bytes).ok()?;
    let fits = table.standard_hash()
        && table.base_offset == base
        && table.segment_crc == segment_crc
        && table.end_offset == end_offset;
    fits.then_some(table)
}

/// Valid-looking snapshot files (by name) and their bytes.
fn snapshot_files(log_dir: &Path) -> Result<(u64, u64), Failure> {
    let root = log_dir.join(snapshot::SNAPSHOTS_DIR);
    let (mut count, mut bytes) = (0, 0);
    for dir in layout::list_files(&root)? {
        let dir = root.join(dir);
        if !dir.is_dir() {
            continue;
        }
        for name in layout::list_files(&dir)? {
            if snapshot::parse_name(&name).is_some() {
                count += 1;
                bytes += file_len(&dir.join(name));
            }
        }
    }
    Ok((count, bytes))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
