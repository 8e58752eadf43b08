//! The journal's checkpoint slots (`docs/format.md`, "Checkpoint slot"), read for one fact: how
//! far the log's global order is certainly in its segment files. Journal records are not decoded
//! here: the reading commands read events from the segments.

use std::io::Read;
use std::path::Path;

use super::bytes::{u32_at, u64_at};
use super::layout::JOURNAL_FILE;
use super::FORMAT_VERSION;

const MAGIC: &[u8; 8] = b"ANNALCKP";
/// Bytes of a slot before its partition marks, and of one mark.
const SLOT_HEAD_LEN: usize = 64;
const MARK_LEN: usize = 24;
const CRC_OFFSET: usize = 60;
const PAGE: usize = 4096;

/// What the checkpoint in force says, as far as the reading commands need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub number: u64,
    /// Every global position below this was written to its partition's segment and synced
    /// when the checkpoint was recorded: the journal index after it, less the groups
    /// partition's events before it (which take journal indexes but no global position).
    pub global_end: u64,
}

/// The checkpoint in force in the journal of the log in `dir`, whose `annal.meta` says
/// `partitions`; `None` when the journal is missing or neither slot holds a valid checkpoint
/// (a slot being written while it is read fails its CRC, and the other one is in force).
///
/// # Errors
///
/// The journal exists but cannot be read.
pub fn checkpoint(dir: &Path, partitions: u32) -> std::io::Result<Option<Checkpoint>> {
    // The groups partition's mark follows the application's partitions.
    let marks = partitions as usize + 1;
    let slot_len = (SLOT_HEAD_LEN + MARK_LEN * marks).next_multiple_of(PAGE);
    let mut bytes = Vec::with_capacity(2 * slot_len);
    match std::fs::File::open(dir.join(JOURNAL_FILE)) {
        Ok(file) => file.take(2 * slot_len as u64).read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let slots = bytes
        .chunks(slot_len)
        .filter_map(|slot| decode(slot, marks));
    Ok(slots.max_by_key(|c| c.number))
}

fn decode(slot: &[u8], marks: usize) -> Option<Checkpoint> {
    let marks_end = SLOT_HEAD_LEN + MARK_LEN * marks;
    if slot.len() < marks_end
        || &slot[..8] != MAGIC
        || u32_at(slot, 8) != FORMAT_VERSION
        || u32_at(slot, 12) as usize != marks
        || u32_at(slot, 56) != 0
    {
        return None;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&slot[..CRC_OFFSET]);
    crc.update(&slot[SLOT_HEAD_LEN..marks_end]);
    if crc.finalize() != u32_at(slot, CRC_OFFSET) {
        return None;
    }
    let journal_index = u64_at(slot, 40);
    let groups_end = u64_at(slot, marks_end - MARK_LEN + 16);
    Some(Checkpoint {
        number: u64_at(slot, 16),
        global_end: journal_index.saturating_sub(groups_end),
    })
}
