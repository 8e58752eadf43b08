//! `annal verify`: checks every byte of a log that can be checked, without opening it, and
//! prints each problem with its file and byte position.
//!
//! This file checks the log-level files (`annal.meta`, the journal's checkpoint slots,
//! snapshots) and drives the partitions (`verify_partition.rs`); `verify_repair.rs` is
//! `--repair`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::disk::headers::{self, Checkpoint, Meta, Slot};
use crate::disk::layout::{self, META_FILE};
use crate::disk::snapshot;
use crate::failure::Failure;
use crate::output::count_text;
use crate::verify_partition;

/// Check every file of a log; print each problem with its file and byte.
///
/// Checks every frame of every segment (checksum, lengths, offsets), every index entry, every
/// key table, annal.meta, the journal's checkpoints and the snapshots. Exits 0 only when all is
/// sound. Read-only: it works while another process has the log open.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal verify annal-data\n  \
    annal verify annal-data --repair\n\n\
    Segment data that a checkpoint covers must be whole. Past a partition's checkpoint mark, \
    bytes that are not a frame are a write in progress or cut by a crash (the next open replays \
    the journal over them): they are noted, not counted as problems. Journal records are not \
    checked here; opening the log checks them.\n\n\
    --repair takes the log's write lock, deletes damaged derived files (indexes, key tables, \
    snapshots), opens the log (recovery), has the deleted files rebuilt, and says what recovery \
    cut and what was rebuilt. Damaged segment data cannot be repaired: it is reported.")]
pub struct VerifyArgs {
    /// Directory of the log.
    pub dir: PathBuf,
    /// Delete damaged derived files, recover the log and rebuild them (needs the write lock).
    #[arg(long)]
    pub repair: bool,
    /// Do not print notes (expected findings that are not problems).
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &VerifyArgs) -> Result<(), Failure> {
    if args.repair {
        return crate::verify_repair::run(&args.dir, args.quiet);
    }
    layout::require_log_dir(&args.dir)?;
    println!("verifying {}", args.dir.display());
    let findings = check(&args.dir, args.quiet)?;
    findings.summary();
    match findings.problems {
        0 => Ok(()),
        problems => Err(Failure::Unsound { problems }),
    }
}

/// What was checked, for the summary.
#[derive(Debug, Default)]
pub struct Counts {
    pub partitions: u64,
    pub segments: u64,
    pub frames: u64,
    pub events: u64,
    pub indexes: u64,
    pub index_entries: u64,
    pub tables: u64,
    pub snapshots: u64,
}

/// Problems and notes, printed as they are found.
pub struct Findings {
    pub problems: usize,
    pub counts: Counts,
    /// Derived files found damaged, and why: what `--repair` deletes.
    pub damaged_derived: BTreeMap<PathBuf, String>,
    quiet: bool,
    /// Problems per file, to bound what is printed.
    per_file: BTreeMap<PathBuf, usize>,
}

/// Problems printed per file; the rest are counted.
const PROBLEMS_PRINTED_PER_FILE: usize = 20;

impl Findings {
    fn new(quiet: bool) -> Findings {
        Findings {
            problems: 0,
            counts: Counts::default(),
            damaged_derived: BTreeMap::new(),
            quiet,
            per_file: BTreeMap::new(),
        }
    }

    /// Damage at byte `position` of `path`.
    pub fn problem(&mut self, path: &Path, position: u64, message: impl Display) {
        self.problems += 1;
        let count = self.per_file.entry(path.to_owned()).or_default();
        *count += 1;
        if *count <= PROBLEMS_PRINTED_PER_FILE {
            println!("problem: {} byte {position}: {message}", path.display());
        }
    }

    /// Damage in a derived file (index, key table, snapshot): the engine rebuilds or skips it;
    /// `--repair` deletes it.
    pub fn derived_problem(&mut self, path: &Path, position: u64, message: impl Display) {
        let message = message.to_string();
        self.damaged_derived
            .entry(path.to_owned())
            .or_insert_with(|| format!("byte {position}: {message}"));
        self.problem(path, position, message);
    }

    /// Something worth knowing that is not damage.
    pub fn note(&mut self, path: &Path, message: impl Display) {
        if !self.quiet {
            println!("note: {}: {message}", path.display());
        }
    }

    pub fn summary(&self) {
        for (path, &count) in &self.per_file {
            if count > PROBLEMS_PRINTED_PER_FILE {
                println!(
                    "problem: {}: {} more problems not printed",
                    path.display(),
                    count - PROBLEMS_PRINTED_PER_FILE
                );
            }
        }
        let c = &self.counts;
        println!(
            "checked: {} partitions, {} segments ({} frames, {} events), {} indexes ({} entries), \
             {} key tables, {} snapshots, annal.meta, annal.journal checkpoints",
            c.partitions,
            c.segments,
            count_text(c.frames),
            count_text(c.events),
            c.indexes,
            count_text(c.index_entries),
            c.tables,
            c.snapshots
        );
        match self.problems {
            0 => println!("result: sound"),
            n => println!("result: {n} problem{}", if n == 1 { "" } else { "s" }),
        }
    }
}

/// Checks the whole log, read-only.
pub fn check(dir: &Path, quiet: bool) -> Result<Findings, Failure> {
    let mut findings = Findings::new(quiet);
    let meta = check_meta(dir, &mut findings)?;
    let present = partition_dirs(dir)?;
    let partitions = match meta {
        Some(meta) => meta.partitions,
        // Without a partition count, check every partition directory there is.
        None => present.iter().max().map_or(0, |p| p + 1),
    };
    for &p in present.iter().filter(|&&p| p >= partitions) {
        findings.problem(
            &layout::partition_dir(dir, p),
            0,
            format!("partition directory beyond the log's {partitions} partitions"),
        );
    }
    // The journal's checkpoints also hold a mark for the groups partition, after the others.
    let checkpoint = check_journal(dir, meta.map(|m| m.partitions + 1), &mut findings)?;
    if let Some(checkpoint) = &checkpoint {
        if checkpoint.marks.len() < partitions as usize {
            // The checkpoint names fewer partitions than there are directories: its marks do
            // not describe them (the mismatch with annal.meta is reported above).
            return Err(Failure::message(format!(
                "the checkpoint in force names {} partitions; the log has {partitions}",
                checkpoint.marks.len()
            )));
        }
    }
    for p in 0..partitions {
        let mark = checkpoint.as_ref().map(|c| c.marks[p as usize]);
        verify_partition::check(dir, p, mark, &mut findings)?;
        findings.counts.partitions += 1;
    }
    // The groups partition (consumer groups' cursors), after the application's: its mark is the
    // checkpoint's last.
    let groups = layout::groups_dir(dir);
    if groups.is_dir() {
        let mark = checkpoint
            .as_ref()
            .and_then(|c| c.marks.get(partitions as usize).copied());
        verify_partition::check_dir(&groups, partitions, mark, &mut findings)?;
    }
    check_snapshots(dir, &mut findings)?;
    Ok(findings)
}

fn check_meta(dir: &Path, findings: &mut Findings) -> Result<Option<Meta>, Failure> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Failure::io("read", &path, e))?;
    match headers::decode_meta(&bytes) {
        Ok(meta) => Ok(Some(meta)),
        Err(damage) => {
            findings.problem(&path, damage.position, damage.reason);
            Ok(None)
        }
    }
}

/// The partition numbers of the `pNNNN` directories present.
fn partition_dirs(dir: &Path) -> Result<Vec<u32>, Failure> {
    Ok(layout::list_files(dir)?
        .iter()
        .filter_map(|name| layout::parse_partition_dir(name))
        .filter(|&p| layout::partition_dir(dir, p).is_dir())
        .collect())
}

/// Checks both checkpoint slots; returns the checkpoint in force. Without a partition count
/// from `annal.meta` (damaged), the count the first slot names is used.
fn check_journal(
    dir: &Path,
    partitions: Option<u32>,
    findings: &mut Findings,
) -> Result<Option<Checkpoint>, Failure> {
    let path = dir.join(layout::JOURNAL_FILE);
    let bytes = match read_prefix(&path, headers::slot_len(annal::PARTITIONS_MAX) * 2) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.problem(&path, 0, "the journal is missing");
            return Ok(None);
        }
        Err(e) => return Err(Failure::io("read", &path, e)),
    };
    let Some(partitions) = partitions.or_else(|| headers::slot_partitions(&bytes)) else {
        findings.problem(&path, 0, "no checkpoint slot is readable");
        return Ok(None);
    };
    let slot_len = headers::slot_len(partitions);
    let mut in_force: Option<Checkpoint> = None;
    for start in [0, slot_len] {
        let slot = bytes.get(start as usize..).unwrap_or(&[]);
        match headers::decode_slot(slot, partitions) {
            Slot::Valid(checkpoint) => {
                if in_force
                    .as_ref()
                    .is_none_or(|c| checkpoint.number > c.number)
                {
                    in_force = Some(checkpoint);
                }
            }
            Slot::Unwritten => {}
            Slot::Damaged(damage) => {
                findings.problem(&path, start + damage.position, damage.reason);
            }
        }
    }
    if in_force.is_none() {
        findings.problem(&path, 0, "neither checkpoint slot is valid");
    }
    Ok(in_force)
}

/// Up to `len` bytes from the start of a file.
fn read_prefix(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(len)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn check_snapshots(dir: &Path, findings: &mut Findings) -> Result<(), Failure> {
    let root = dir.join(snapshot::SNAPSHOTS_DIR);
    for name in layout::list_files(&root)? {
        let key_dir = root.join(&name);
        if !key_dir.is_dir() || !snapshot::is_key_hash_dir(&name) {
            findings.note(&key_dir, "not a snapshot directory: ignored");
            continue;
        }
        for file in layout::list_files(&key_dir)? {
            let path = key_dir.join(&file);
            match snapshot::parse_name(&file) {
                Some(named) => check_snapshot(&path, &name, named, findings)?,
                None if file.ends_with(".tmp") => findings.note(
                    &path,
                    "an interrupted snapshot save: removed by the next save",
                ),
                None => findings.note(&path, "not a snapshot file name: ignored"),
            }
        }
    }
    Ok(())
}

fn check_snapshot(
    path: &Path,
    dir_name: &str,
    named: snapshot::SnapshotName,
    findings: &mut Findings,
) -> Result<(), Failure> {
    findings.counts.snapshots += 1;
    let bytes = read_prefix(path, snapshot::FILE_BYTES_MAX + 1)
        .map_err(|e| Failure::io("read", path, e))?;
    let file = match snapshot::decode(&bytes, Some(named.version)) {
        Ok(file) => file,
        Err(damage) => {
            findings.derived_problem(path, damage.position, damage.reason);
            return Ok(());
        }
    };
    let key_position = 32;
    if format!("{:016x}", annal::key_hash(file.key)) != dir_name {
        findings.derived_problem(
            path,
            key_position,
            "the snapshot's key does not hash to the name of its directory",
        );
    } else if crc32fast::hash(file.key) != named.key_crc {
        findings.derived_problem(
            path,
            key_position,
            "the checksum of the snapshot's key differs from the one in its file name",
        );
    }
    Ok(())
}
