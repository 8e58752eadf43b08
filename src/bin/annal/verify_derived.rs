//! `annal verify`, the derived files of one segment: its index and its key table, checked
//! against the frames the walk of the segment found (`verify_partition.rs`). Damage here costs
//! no data: the engine rebuilds these files from the segment, and `--repair` deletes them.

use std::path::Path;

use crate::disk::index::{self, IndexFile};
use crate::disk::keys::{self, KeyTable};
use crate::disk::layout::{self, INDEX_SUFFIX, TABLE_SUFFIX};
use crate::disk::segment::DATA_START;
use crate::failure::Failure;
use crate::verify::Findings;
use crate::verify_partition::{Synced, Walked};

pub fn check_index(
    dir: &Path,
    base: u64,
    walked: &Walked,
    synced: Synced,
    findings: &mut Findings,
) -> Result<(), Failure> {
    let path = layout::segment_file(dir, base, INDEX_SUFFIX);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.note(
                &path,
                "missing: the engine rebuilds it from the segment when it reads it",
            );
            return Ok(());
        }
        Err(e) => return Err(Failure::io("read", &path, e)),
    };
    findings.counts.indexes += 1;
    let file = match index::decode(&bytes) {
        Ok(file) => file,
        Err(damage) => {
            findings.derived_problem(&path, damage.position, damage.reason);
            return Ok(());
        }
    };
    if file.base_offset != base {
        let at = index::BASE_OFFSET_OFFSET as u64;
        findings.derived_problem(
            &path,
            at,
            format!("the header names base offset {}", file.base_offset),
        );
        return Ok(());
    }
    if let Some(at) = file.torn_tail {
        findings.derived_problem(&path, at, "the file ends inside an entry");
    }
    check_index_entries(&path, &file, walked, synced, findings);
    Ok(())
}

fn check_index_entries(
    path: &Path,
    file: &IndexFile,
    walked: &Walked,
    synced: Synced,
    findings: &mut Findings,
) {
    let mut previous: Option<&index::IndexEntry> = None;
    let mut unsynced = 0;
    for entry in &file.entries {
        findings.counts.index_entries += 1;
        if previous.is_none()
            && (entry.position != DATA_START || entry.offset != walked.header.base_offset)
        {
            findings.derived_problem(
                path,
                entry.at,
                "the first entry is not the segment's first frame",
            );
        }
        if let Some(previous) = previous {
            if entry.offset <= previous.offset || entry.position <= previous.position {
                findings.derived_problem(path, entry.at, "entries out of order");
            } else if entry.timestamp_ms < previous.timestamp_ms {
                findings.derived_problem(path, entry.at + 8, "entry timestamps decrease");
            }
        }
        previous = Some(entry);
        if walked.in_damage(entry.position) {
            continue;
        }
        match walked.frame_at(entry.position) {
            Some(found) if found.header.base_offset == entry.offset && found.header.timestamp_ms == entry.timestamp_ms => {}
            Some(found) => findings.derived_problem(
                path,
                entry.at,
                format!(
                    "entry says offset {} (time {}) at segment byte {}; the frame there holds offset {} (time {})",
                    entry.offset, entry.timestamp_ms, entry.position, found.header.base_offset, found.header.timestamp_ms
                ),
            ),
            None if entry.position < walked.end_position || synced.covers(entry.position) || synced == Synced::Whole => {
                findings.derived_problem(
                    path,
                    entry.at,
                    format!("entry points at segment byte {}, where no frame starts", entry.position),
                );
            }
            None => unsynced += 1,
        }
    }
    if unsynced > 0 {
        findings.note(
            path,
            format!("{unsynced} entries point past the frames found, where the checkpoint covers nothing"),
        );
    }
}

pub fn check_table(
    dir: &Path,
    base: u64,
    next_base: Option<u64>,
    walked: &Walked,
    synced: Synced,
    findings: &mut Findings,
) -> Result<(), Failure> {
    let path = layout::segment_file(dir, base, TABLE_SUFFIX);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        // Tables are built when first needed (or in the background): a missing one is normal.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Failure::io("read", &path, e)),
    };
    findings.counts.tables += 1;
    let table = match keys::decode(&bytes) {
        Ok(table) => table,
        Err(damage) => {
            findings.derived_problem(&path, damage.position, damage.reason);
            return Ok(());
        }
    };
    if table.base_offset != base {
        findings.derived_problem(
            &path,
            keys::BASE_OFFSET_OFFSET as u64,
            format!("the table names base offset {}", table.base_offset),
        );
        return Ok(());
    }
    if table.segment_crc != walked.header.crc {
        findings.derived_problem(
            &path,
            keys::SEGMENT_CRC_OFFSET as u64,
            format!(
                "the table is for another segment file (header checksum {:08x}; this one's is {:08x})",
                table.segment_crc, walked.header.crc
            ),
        );
        return Ok(());
    }
    let end_at = keys::END_OFFSET_OFFSET as u64;
    match next_base {
        Some(next) if table.end_offset != next => {
            findings.derived_problem(
                &path,
                end_at,
                format!(
                    "a sealed segment's table ends at offset {}, the segment at {next}",
                    table.end_offset
                ),
            );
            return Ok(());
        }
        None if table.end_offset > walked.end_offset => {
            if synced.covers(table.end_position.saturating_sub(1)) {
                findings.derived_problem(
                    &path,
                    end_at,
                    format!(
                        "the table covers offsets up to {}, past the segment's end {}",
                        table.end_offset, walked.end_offset
                    ),
                );
            } else {
                findings.note(&path, "covers frames past the checkpoint mark that are not in the segment: dropped by the next open");
            }
            return Ok(());
        }
        _ => {}
    }
    if table.end_position > walked.data_len {
        findings.derived_problem(
            &path,
            keys::END_POSITION_OFFSET as u64,
            "the table's end position is past the segment's data",
        );
        return Ok(());
    }
    check_table_entries(&path, &table, walked, findings);
    Ok(())
}

fn check_table_entries(path: &Path, table: &KeyTable, walked: &Walked, findings: &mut Findings) {
    let mut previous: Option<(u64, u64)> = None;
    for entry in &table.keys {
        let order = (entry.hash, entry.base_version);
        if previous.is_some_and(|p| order < p) {
            findings.derived_problem(path, entry.at, "key entries out of order");
        }
        previous = Some(order);
        if walked.in_damage(entry.position) {
            continue;
        }
        let fits = entry.position < table.end_position
            && walked.frame_at(entry.position).is_some_and(|f| {
                f.header.base_version == entry.base_version
                    && f.header.record_count == entry.count
                    && (!table.standard_hash() || f.key_hash == entry.hash)
            });
        if !fits {
            findings.derived_problem(
                path,
                entry.at,
                format!(
                    "key entry does not match the frame at segment byte {}",
                    entry.position
                ),
            );
        }
    }
    let covered = walked
        .frames
        .iter()
        .filter(|f| !f.header.is_padding() && f.position < table.end_position)
        .count();
    if covered != table.keys.len() && walked.damaged.is_empty() {
        findings.derived_problem(
            path,
            32,
            format!(
                "the table has {} key entries for {covered} frames",
                table.keys.len()
            ),
        );
    }
    let mut previous_id = None;
    for entry in &table.ids {
        if previous_id.is_some_and(|p| entry.id <= p) {
            findings.derived_problem(path, entry.at, "id entries out of order");
        }
        previous_id = Some(entry.id);
        if walked.in_damage(entry.position) {
            continue;
        }
        let fits = entry.position < table.end_position
            && walked
                .frame_at(entry.position)
                .and_then(|f| f.ids.get(entry.index as usize).copied().flatten())
                == Some(entry.id);
        if !fits {
            findings.derived_problem(
                path,
                entry.at,
                format!(
                    "id entry {:032x} is not record {} of the frame at segment byte {}",
                    entry.id, entry.index, entry.position
                ),
            );
        }
    }
}
