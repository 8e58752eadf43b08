//! The journal scan of recovery: the chain of records from the checkpoint, and the decision
//! between a torn tail (the write a crash interrupted: cut) and corruption (a later valid record
//! proves that the missing one had been durable: refused, or skipped when salvaging).

use std::path::Path;

use crate::error::{Error, Result};
use crate::options::RecoveryMode;
use crate::storage::journal::{
    self, probe_record, records_start, Checkpoint, RecordInfo, RecordProbe, JOURNAL_ALIGN,
};

/// The records to replay, and where the journal continues.
pub(super) struct Scan {
    /// Each record with its byte position in the journal.
    pub records: Vec<(u64, RecordInfo)>,
    pub end_position: u64,
    pub next_sequence: u64,
    pub tail_torn: bool,
    /// Whether records were skipped over damage (salvage mode), and how many events they held.
    pub salvaged: bool,
    pub salvage_lost_events: u64,
}

pub(super) fn scan_journal(
    bytes: &[u8],
    partitions: u32,
    checkpoint: &Checkpoint,
    path: &Path,
    mode: RecoveryMode,
) -> Result<Scan> {
    let epoch = checkpoint.number;
    // The writer writes records only after the file is written that far; a journal shorter
    // than where its checkpoint says records go lost synced bytes (or was cut by hand), and
    // records after that position may have gone with them. Salvage opens it as it is.
    let cut_short = checkpoint.journal_position > bytes.len() as u64;
    if checkpoint.journal_position < records_start(partitions)
        || (cut_short && mode == RecoveryMode::TolerateTornTail)
    {
        return Err(Error::corrupt(
            path,
            bytes.len() as u64,
            "the journal ends before the position its checkpoint names",
        ));
    }
    let mut records = Vec::new();
    let mut position = checkpoint.journal_position;
    let mut expected = checkpoint.journal_sequence;
    let mut salvaged = false;
    let mut salvage_lost_events = 0;
    // The chain ends at the first position that does not hold the next record. Then it is a
    // torn tail, unless a later valid record proves that the missing one had been durable.
    let tail_torn = loop {
        let stop = chain(
            bytes,
            partitions,
            epoch,
            &mut position,
            &mut expected,
            &mut records,
        );
        let later = later_records(bytes, partitions, epoch, position, expected);
        let Some((evidence_at, evidence)) = later.durable else {
            break matches!(stop, Stop::Invalid(..)) || later.any;
        };
        match mode {
            RecoveryMode::TolerateTornTail => {
                let (at, reason) = match stop {
                    Stop::Invalid(at, reason) => (at, reason),
                    Stop::Missing => (position, "a record that was durable is missing"),
                };
                return Err(Error::corrupt(path, at, reason));
            }
            RecoveryMode::SalvageAfterCorruption => {
                salvaged = true;
                let chained_end = records
                    .last()
                    .map_or(checkpoint.journal_index, |(_, r)| r.journal_end());
                salvage_lost_events += evidence.journal_index.saturating_sub(chained_end);
                position = evidence_at;
                expected = evidence.sequence;
            }
        }
    };
    Ok(Scan {
        records,
        end_position: position,
        next_sequence: expected,
        tail_torn,
        salvaged,
        salvage_lost_events,
    })
}

/// Why a chain of records stopped.
enum Stop {
    /// Zeros, or a record of another epoch or sequence: nothing of this chain is here.
    Missing,
    /// Bytes that are not a whole valid record, and where they go wrong.
    Invalid(u64, &'static str),
}

/// Follows the chain of records from `position` to where it stops.
fn chain(
    bytes: &[u8],
    partitions: u32,
    epoch: u64,
    position: &mut u64,
    expected: &mut u64,
    records: &mut Vec<(u64, RecordInfo)>,
) -> Stop {
    loop {
        let rest = bytes.get(*position as usize..).unwrap_or(&[]);
        match probe_record(rest, partitions) {
            RecordProbe::Record(info) if info.epoch == epoch && info.sequence == *expected => {
                let next = *position + info.padded_len();
                records.push((*position, info));
                *position = next;
                *expected += 1;
            }
            RecordProbe::Record(_) | RecordProbe::Empty => return Stop::Missing,
            RecordProbe::Invalid(at, reason) => {
                return Stop::Invalid(*position + at as u64, reason)
            }
        }
    }
}

/// What lies after the end of a chain.
struct Later {
    /// The first valid record of this epoch, later in the chain than `expected`, whose writer
    /// knew record `expected` to be durable: proof that the damage hit synced data.
    durable: Option<(u64, RecordInfo)>,
    /// Whether any valid record of this epoch later in the chain is there at all (written, but
    /// not known durable when it was written: a power cut may keep it and lose earlier ones).
    any: bool,
}

fn later_records(bytes: &[u8], partitions: u32, epoch: u64, from: u64, expected: u64) -> Later {
    let mut later = Later {
        durable: None,
        any: false,
    };
    let mut at = from + JOURNAL_ALIGN;
    while (at as usize) < bytes.len() {
        let rest = &bytes[at as usize..];
        // Cheap rejection first: most pages are zeros or hold the middle of a record.
        if rest.len() > journal::RECORD_MAGIC_OFFSET
            && rest[journal::RECORD_MAGIC_OFFSET] == journal::RECORD_MAGIC
        {
            if let RecordProbe::Record(info) = probe_record(rest, partitions) {
                if info.epoch == epoch && info.sequence > expected {
                    later.any = true;
                    if info.durable_before > expected {
                        later.durable = Some((at, info));
                        return later;
                    }
                }
            }
        }
        at += JOURNAL_ALIGN;
    }
    later
}
