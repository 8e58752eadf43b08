//! Where the files of a log are (`docs/format.md` "Directory layout"), and the check that a
//! directory holds a log at all.

use std::io;
use std::path::{Path, PathBuf};

use super::headers::{self, Meta};
use crate::failure::Failure;

pub const META_FILE: &str = "annal.meta";
pub const JOURNAL_FILE: &str = "annal.journal";
pub const LOCK_FILE: &str = "annal.lock";
pub const GROUPS_DIR: &str = "groups";
pub const SEGMENT_SUFFIX: &str = "seg";
pub const INDEX_SUFFIX: &str = "idx";
pub const TABLE_SUFFIX: &str = "keys";

/// A log directory whose `annal.meta` was read and checked.
#[derive(Clone, Debug)]
pub struct LogDir {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl LogDir {
    /// Checks that `dir` holds a log and reads its metadata, without opening the log.
    ///
    /// # Errors
    ///
    /// A clear [`Failure`] when the directory is missing, is not a directory, holds no
    /// `annal.meta`, or the metadata is damaged.
    pub fn read(dir: &Path) -> Result<LogDir, Failure> {
        require_log_dir(dir)?;
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Failure::io("read", &path, e))?;
        let meta =
            headers::decode_meta(&bytes).map_err(|damage| Failure::corrupt(&path, damage))?;
        Ok(LogDir {
            dir: dir.to_owned(),
            meta,
        })
    }

    pub fn partition_dir(&self, partition: u32) -> PathBuf {
        partition_dir(&self.dir, partition)
    }

    /// The partition number, checked against the partition count.
    pub fn check_partition(&self, partition: u32) -> Result<u32, Failure> {
        if partition >= self.meta.partitions {
            return Err(Failure::message(format!(
                "partition {partition} does not exist; the log has {} partitions (0..={})",
                self.meta.partitions,
                self.meta.partitions - 1
            )));
        }
        Ok(partition)
    }

    /// The partition `key` belongs to.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let partitions = std::num::NonZeroU32::new(self.meta.partitions)
            .expect("annal.meta holds a partition count of at least 1: checked when decoded");
        annal::partition_for(key, partitions)
    }
}

/// Fails clearly unless `dir` is a directory holding `annal.meta`.
pub fn require_log_dir(dir: &Path) -> Result<(), Failure> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Failure::message(format!(
                "{} does not exist",
                dir.display()
            )));
        }
        Err(e) => return Err(Failure::io("read", dir, e)),
        Ok(metadata) if !metadata.is_dir() => {
            return Err(Failure::message(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {}
    }
    if !dir.join(META_FILE).exists() {
        return Err(Failure::message(format!(
            "{} is not an annal log: it has no {META_FILE}",
            dir.display()
        )));
    }
    Ok(())
}

pub fn partition_dir(log_dir: &Path, partition: u32) -> PathBuf {
    log_dir.join(format!("p{partition:04}"))
}

/// The directory of the groups partition: consumer groups' records, in segments like any
/// partition's, whose headers name partition number `partitions` (the one after the
/// application's).
pub fn groups_dir(log_dir: &Path) -> PathBuf {
    log_dir.join(GROUPS_DIR)
}

/// The partition a directory name stands for (`p0003`), if it has that shape.
pub fn parse_partition_dir(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('p')?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn segment_file(partition_dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    partition_dir.join(format!("{base_offset:020}.{suffix}"))
}

/// The base offset a segment, index or table file name stands for, and its suffix.
pub fn parse_segment_name(name: &str) -> Option<(u64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

/// The base offsets of a partition's segment files, in order. A partition without a directory
/// (nothing appended yet) has none.
pub fn list_segments(partition_dir: &Path) -> Result<Vec<u64>, Failure> {
    let mut bases: Vec<u64> = list_files(partition_dir)?
        .iter()
        .filter_map(|name| parse_segment_name(name))
        .filter(|(_, suffix)| *suffix == SEGMENT_SUFFIX)
        .map(|(base, _)| base)
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// The names of the files in `dir`, sorted; none if it does not exist.
pub fn list_files(dir: &Path) -> Result<Vec<String>, Failure> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Failure::io("read directory", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Failure::io("read directory", dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
