//! `annal verify --repair`: deletes damaged derived files, opens the log (recovery), has what
//! was deleted rebuilt, and checks again.
//!
//! Derived files (indexes, key tables, snapshots) are rebuilt from segments or skipped by the
//! engine, so deleting a damaged one loses nothing. The deletion happens under the directory's
//! lock (the same `flock` that `Log::open` takes), so no writer can have the log open meanwhile.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use annal::{Log, Options, RecoveryReport};

use crate::disk::frame::Probe;
use crate::disk::layout::{self, INDEX_SUFFIX, SEGMENT_SUFFIX, TABLE_SUFFIX};
use crate::disk::segment::{SegmentFile, DATA_START};
use crate::failure::{open_log, Failure};
use crate::verify;

pub fn run(dir: &Path, quiet: bool) -> Result<(), Failure> {
    layout::require_log_dir(dir)?;
    println!("repairing {}", dir.display());
    let deleted = {
        let _lock = DirLock::acquire(dir)?;
        let findings = verify::check(dir, quiet)?;
        let mut deleted = Vec::new();
        for (path, reason) in &findings.damaged_derived {
            std::fs::remove_file(path).map_err(|e| Failure::io("delete", path, e))?;
            println!("deleted {} ({reason})", path.display());
            deleted.push(path.clone());
        }
        deleted
    };
    let log = open_log(dir, Options::default(), "verify --repair")?;
    print_recovery(log.recovery_report());
    if let Err(failure) = rebuild(&log, dir, &deleted) {
        println!("could not rebuild everything: {failure}");
    }
    log.close()
        .map_err(|e| Failure::annal(format!("close {}", dir.display()), e))?;
    for path in &deleted {
        if path.exists() {
            println!("rebuilt {}", path.display());
        } else if place_of(dir, path).is_some_and(|(_, _, suffix)| suffix == INDEX_SUFFIX) {
            println!(
                "{}: rebuilt in memory whenever its segment is read (the engine does not write a \
                 sealed segment's index back)",
                path.display()
            );
        } else {
            println!(
                "{}: not rebuilt yet (rebuilt when first needed)",
                path.display()
            );
        }
    }
    println!("checking again");
    let findings = verify::check(dir, quiet)?;
    findings.summary();
    match findings.problems {
        0 => Ok(()),
        problems => Err(Failure::message(format!(
            "{problems} problem{} remain after the repair: damaged segment data or metadata \
             cannot be rebuilt (the events in it are lost unless a copy exists)",
            if problems == 1 { "" } else { "s" }
        ))),
    }
}

/// Says what recovery found and did.
fn print_recovery(report: &RecoveryReport) {
    println!(
        "recovery: replayed {} journal records ({} bytes){}",
        report.records_replayed,
        report.bytes_replayed,
        if report.journal_tail_torn {
            "; cut the journal's torn tail (a write a crash interrupted, never acknowledged)"
        } else {
            ""
        }
    );
    for partition in &report.partitions {
        if let Some(cut) = partition.cut {
            println!(
                "recovery: partition {}: cut offsets {}..={} ({} segment bytes past the \
                 checkpoint that were not in the journal: never acknowledged as durable)",
                partition.partition, cut.first_offset, cut.last_offset, partition.cut_bytes
            );
        } else if partition.cut_bytes > 0 {
            println!(
                "recovery: partition {}: rewrote {} segment bytes past the checkpoint from the journal",
                partition.partition, partition.cut_bytes
            );
        }
        if partition.index_rebuilt {
            println!(
                "recovery: partition {}: rebuilt the index of the segment being written",
                partition.partition
            );
        }
    }
    for lost in &report.salvage_lost {
        println!("recovery: lost {lost}");
    }
}

/// Has the engine rebuild what was deleted: a sealed segment's key table is written again by
/// the first lookup that needs it, so one lookup of a key of its segment rebuilds it (the table
/// of the segment being written is written at close); the index of the segment being written is
/// rebuilt by recovery, and a sealed segment's index in memory whenever the segment is read, so
/// its partition is read through, which also checks every frame again.
fn rebuild(log: &Log, dir: &Path, deleted: &[PathBuf]) -> Result<(), Failure> {
    let mut partitions_read = BTreeSet::new();
    for path in deleted {
        let Some((partition, base, suffix)) = place_of(dir, path) else {
            continue; // a snapshot: the next save of its key writes a new one
        };
        if suffix == TABLE_SUFFIX {
            if let Some(key) = first_key(dir, partition, base)? {
                log.read_key(&key, 0)
                    .map_err(|e| Failure::annal("rebuild a key table", e))?;
            }
        } else if partitions_read.insert(partition) {
            for record in log.read(partition, 0)? {
                record.map_err(|e| Failure::annal(format!("read partition {partition}"), e))?;
            }
        }
    }
    Ok(())
}

/// The partition, base offset and suffix of a file inside a partition directory.
fn place_of(dir: &Path, path: &Path) -> Option<(u32, u64, String)> {
    let relative = path.strip_prefix(dir).ok()?;
    let mut parts = relative.iter();
    let partition = layout::parse_partition_dir(parts.next()?.to_str()?)?;
    let (base, suffix) = layout::parse_segment_name(parts.next()?.to_str()?)?;
    Some((partition, base, suffix.to_owned()))
}

/// The key of a segment's first frame.
fn first_key(dir: &Path, partition: u32, base: u64) -> Result<Option<Vec<u8>>, Failure> {
    let path = layout::segment_file(&layout::partition_dir(dir, partition), base, SEGMENT_SUFFIX);
    let mut segment = SegmentFile::open(&path)?;
    Ok(match segment.probe_at(DATA_START)? {
        Probe::Frame(header) if !header.is_padding() => Some(
            header
                .key(segment.frame_bytes(DATA_START, &header))
                .to_vec(),
        ),
        _ => None,
    })
}

/// The directory's lock, held while files are deleted: the `flock` that `Log::open` takes on
/// `annal.lock`, released when dropped.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, Failure> {
        let path = dir.join(layout::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Failure::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Failure::message(format!(
                "{} is open by another process, and `annal verify --repair` needs the log's \
                 write lock (`annal verify` without --repair reads a log that is open elsewhere)",
                dir.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Failure::io("lock", &path, e)),
        }
    }
}
