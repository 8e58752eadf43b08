//! The journal's checkpoint in force (`docs/format.md`, "Checkpoint slot"), read for one fact:
//! how far the log's global order is certainly in its segment files. Journal records are not
//! decoded here: the reading commands read events from the segments.

use std::io::Read;
use std::path::Path;

use super::headers::{decode_slot, slot_len, Slot};
use super::layout::JOURNAL_FILE;

/// Every global position below the returned one was written to its partition's segment and
/// synced when the checkpoint in force was recorded: the journal index after it, less the groups
/// partition's events before it (which take journal indexes but no global position). `None`
/// when the journal is missing or neither slot holds a valid checkpoint (a slot being written
/// while it is read fails its checksum, and the other one is in force). `partitions` is
/// `annal.meta`'s count.
///
/// # Errors
///
/// The journal exists but cannot be read.
pub fn checkpoint_global_end(dir: &Path, partitions: u32) -> std::io::Result<Option<u64>> {
    // Checkpoints hold a mark for each partition and one for the groups partition after them.
    let marks = partitions + 1;
    let slot_len = slot_len(marks);
    let mut bytes = Vec::new();
    match std::fs::File::open(dir.join(JOURNAL_FILE)) {
        Ok(file) => file.take(2 * slot_len).read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let in_force = bytes
        .chunks(slot_len as usize)
        .filter_map(|slot| match decode_slot(slot, marks) {
            Slot::Valid(checkpoint) => Some(checkpoint),
            Slot::Unwritten | Slot::Damaged(_) => None,
        })
        .max_by_key(|checkpoint| checkpoint.number);
    Ok(in_force.map(|checkpoint| {
        let groups_end = checkpoint.marks.last().map_or(0, |mark| mark.end_offset);
        checkpoint.journal_index.saturating_sub(groups_end)
    }))
}
