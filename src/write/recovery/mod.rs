//! What `open` does with what a previous run left: it trusts each partition up to its mark in
//! the latest checkpoint, and replays the journal from the checkpoint on.
//!
//! Nothing below a checkpoint is scanned at open: that data was synced, and readers check every
//! frame when they read it. So open time depends on what was written since the last checkpoint
//! (at most the journal's size), never on the size of the log.
//!
//! The cases, and the one action for each (also a table in `docs/design.md`):
//!
//! | found | action |
//! |---|---|
//! | segment data past its partition's checkpoint mark | never read; the replay writes over it (the journal holds it, or it was never durable) |
//! | segments created after the checkpoint | deleted (the replay creates them again) |
//! | `*.tmp` left by an interrupted creation | deleted |
//! | an active segment shorter than its checkpoint mark | `Error::Corrupt`: synced data is missing |
//! | index missing, damaged, or with entries past the mark | rebuilt from the synced data |
//! | journal records from the checkpoint on, chained by sequence and epoch | replayed into the segments |
//! | the first record that is missing, torn or corrupt, with no valid later record that says it was durable | the end: a torn tail, never acknowledged as durable |
//! | a damaged record followed by a valid record whose `durable_before` covers it | `Error::Corrupt`, or with `RecoveryMode::SalvageAfterCorruption` skip it and report what was lost |
//! | replayed frames whose offsets do not continue their partition | `Error::Corrupt` |
//! | a journal shorter than the position its checkpoint names | `Error::Corrupt` (salvage opens it) |
//!
//! After the replay every segment is synced and a new checkpoint is written, so that the replayed
//! region is never needed again and records of the previous run can never be mistaken for new
//! ones (records carry the checkpoint number they were written under).

mod partition;
mod scan;

use std::path::Path;
use std::sync::Arc;

use self::partition::{check_partition, prepare_partition};
use self::scan::scan_journal;

use crate::error::{Error, LostRange, Result};
use crate::storage::frame;
use crate::storage::io;
use crate::storage::journal::{self, latest_checkpoint, Checkpoint, RecordInfo};
use crate::storage::segment;
use crate::write::active::{Demand, Fault, Lane};
use crate::write::journal::{JournalState, JournalWriter};
use crate::write::partition::Partition;
use crate::write::sequencer::{QueuedFrame, Start};
use crate::write::{Config, Counters};

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Journal records replayed into the segments (appends written since the last checkpoint).
    pub records_replayed: u64,
    /// Bytes of those records.
    pub bytes_replayed: u64,
    /// Whether the journal ended in a torn or corrupt record: a write that a crash interrupted,
    /// never acknowledged as durable. It was cut.
    pub journal_tail_torn: bool,
    /// With `RecoveryMode::SalvageAfterCorruption`: the offsets lost to damaged journal records
    /// (and those dropped after them because they no longer continue their partition).
    pub salvage_lost: Vec<LostRange>,
    /// With `RecoveryMode::SalvageAfterCorruption`: how many events the skipped records held
    /// (from the global positions around them). A partition whose lost events were all in the
    /// skipped records shows no gap later, so `salvage_lost` cannot name it; this count does.
    pub salvage_lost_events: u64,
    /// Per partition, in partition order.
    pub partitions: Vec<PartitionRecovery>,
    /// The groups partition (`groups/`), where consumer groups keep their records; its
    /// `partition` is the partition count.
    pub groups: PartitionRecovery,
}

/// What recovery did to one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionRecovery {
    pub partition: u32,
    /// Events replayed from the journal.
    pub events_replayed: u64,
    /// Offsets that were in the segment files past the checkpoint but not in the journal, and
    /// so are gone: appends never acknowledged as durable (or acknowledged under `Buffered` or
    /// `Interval` and lost with the unsynced journal tail).
    pub cut: Option<LostRange>,
    /// Segment bytes past the checkpoint mark (what the replay wrote over, or dropped with the
    /// segments created after the checkpoint).
    pub cut_bytes: u64,
    /// Whether the active segment's index was rebuilt because it was missing or damaged.
    pub index_rebuilt: bool,
}

impl RecoveryReport {
    /// The report of one partition.
    pub fn partition(&self, partition: u32) -> Option<&PartitionRecovery> {
        self.partitions.get(partition as usize)
    }
}

/// A log as recovery leaves it, ready for its writer.
pub(crate) struct Recovered {
    pub partitions: Vec<Arc<Partition>>,
    pub lanes: Vec<Lane>,
    pub journal: JournalWriter,
    pub start: Start,
    pub report: RecoveryReport,
}

pub(crate) fn recover(
    dir: &Path,
    config: &Arc<Config>,
    counters: &Arc<Counters>,
) -> Result<Recovered> {
    // The application's partitions and the groups partition after them.
    let partitions = config.lanes();
    let journal_path = JournalWriter::path(dir);
    let journal_file = io::File::open(&journal_path, &None)?;
    let journal_bytes = segment::map_file(journal_file.std(), &journal_path)?;
    drop(journal_file);
    let checkpoint = latest_checkpoint(&journal_bytes, partitions, &journal_path)?;
    let scan = scan_journal(
        &journal_bytes,
        partitions,
        &checkpoint,
        &journal_path,
        config.recovery,
    )?;

    // Everything that can refuse the open is checked before anything on disk changes.
    if !scan.salvaged {
        check_chain(&scan.records, &checkpoint, &journal_path)?;
    }
    for id in 0..partitions {
        let mark = checkpoint.partitions[id as usize];
        check_partition(dir, id, config.user_partitions, mark, &config.faults)?;
    }

    let mut report = RecoveryReport {
        salvage_lost_events: scan.salvage_lost_events,
        ..RecoveryReport::default()
    };
    let mut lanes = Vec::with_capacity(partitions as usize);
    let mut partition_list = Vec::with_capacity(partitions as usize);
    for id in 0..partitions {
        let mark = checkpoint.partitions[id as usize];
        let (lane, partition_report) = prepare_partition(dir, id, mark, config, counters)?;
        partition_list.push(lane.partition.clone());
        lanes.push(lane);
        report.partitions.push(partition_report);
    }

    let mut last_timestamp_ms = checkpoint.last_timestamp_ms;
    let mut global = checkpoint.journal_index;
    let mut salvage_lost: Vec<Option<LostRange>> = vec![None; partitions as usize];
    let mut ends: Vec<u64> = lanes.iter().map(Lane::written_end).collect();
    for (position, record) in &scan.records {
        if record.journal_index != global && !scan.salvaged {
            return Err(Error::corrupt(
                &journal_path,
                position + journal::RECORD_GLOBAL_OFFSET as u64,
                "journal record's journal index does not continue the log",
            ));
        }
        let record_bytes =
            &journal_bytes[*position as usize..(*position + u64::from(record.len)) as usize];
        let mut kept = Vec::with_capacity(record.entries.len());
        for entry in &record.entries {
            let p = entry.partition as usize;
            let info = entry.info;
            let continues = info.base_offset == ends[p];
            if !continues && !scan.salvaged {
                return Err(Error::corrupt(
                    &journal_path,
                    position + (entry.frame_start + frame::BASE_OFFSET_OFFSET) as u64,
                    "journal frame's offset does not continue its partition",
                ));
            }
            // Salvage: a partition that lost frames to the damage keeps nothing after the gap,
            // since its offsets must stay contiguous; the report names what it lost.
            if let Some(lost) = &mut salvage_lost[p] {
                lost.last_offset = lost.last_offset.max(info.end_offset().saturating_sub(1));
                continue;
            }
            if !continues {
                if info.base_offset > ends[p] {
                    salvage_lost[p] = Some(LostRange {
                        partition: entry.partition,
                        first_offset: ends[p],
                        last_offset: info.end_offset().saturating_sub(1),
                    });
                }
                continue;
            }
            ends[p] = info.end_offset();
            kept.push(QueuedFrame {
                partition: entry.partition,
                entry_start: entry.frame_start - journal::ENTRY_TAG_LEN,
                frame_len: info.frame_len,
                base_offset: info.base_offset,
                record_count: info.record_count,
                timestamp_ms: info.timestamp_ms,
                // Recovery replays frames as they are: these two are not used again.
                journal_index: 0,
                global_position: info.global_position,
                in_global_order: true,
                base_version: info.base_version,
                joined_to_next: false,
            });
            report.partitions[p].events_replayed += u64::from(info.record_count);
            last_timestamp_ms = last_timestamp_ms.max(info.timestamp_ms);
        }
        replay_frames(&mut lanes, &kept, record_bytes, last_timestamp_ms)?;
        global = record.journal_index
            + record
                .entries
                .iter()
                .map(|entry| u64::from(entry.info.record_count))
                .sum::<u64>();
        report.records_replayed += 1;
        report.bytes_replayed += u64::from(record.len);
    }
    report.salvage_lost = salvage_lost.into_iter().flatten().collect();
    report.journal_tail_torn = scan.tail_torn;

    let mut journal = JournalWriter::open(
        dir,
        partitions,
        config.journal_bytes,
        JournalState {
            position: scan.end_position,
            next_sequence: scan.next_sequence,
            epoch: checkpoint.number,
            file_len: journal_bytes.len() as u64,
            // Under `Interval` the journal is synced soon, and starting its writeback early
            // keeps that sync short; under `Buffered` it is synced only by a flush, and its
            // pages are rewritten every lap: writing them back would double the disk's work.
            writeback_ahead: matches!(config.durability, crate::options::Durability::Interval(_)),
        },
        &config.faults,
        counters.clone(),
    )?;
    drop(journal_bytes);
    // Everything replayed becomes synced, and a new checkpoint starts a new epoch.
    let mut marks = Vec::with_capacity(lanes.len());
    for lane in &mut lanes {
        marks.push(lane.checkpoint(last_timestamp_ms).map_err(fault_error)?);
    }
    for (lane, partition_report) in lanes.iter().zip(&mut report.partitions) {
        if let Some(cut) = &mut partition_report.cut {
            if cut.last_offset < lane.written_end() {
                partition_report.cut = None;
            } else {
                cut.first_offset = cut.first_offset.max(lane.written_end());
            }
        }
    }
    let bases: Vec<u64> = marks.iter().map(|m| m.segment_base).collect();
    journal.checkpoint(
        Checkpoint {
            number: 0,
            journal_sequence: 0,
            journal_position: 0,
            journal_index: global,
            last_timestamp_ms,
            partitions: marks,
        },
        false,
    )?;
    for (lane, base) in lanes.iter().zip(bases) {
        lane.partition.set_checkpoint_base(base);
    }
    for lane in &mut lanes {
        lane.publish();
    }
    // Every event took a journal index; all but the groups partition's took a global
    // position too, and that partition's offsets count its events.
    let groups_events = lanes[config.groups_partition() as usize].written_end();
    // The report is of the application's partitions; the groups partition's is kept apart.
    report.groups = report
        .partitions
        .pop()
        .expect("the groups partition comes last");
    let start = Start {
        next_offsets: lanes.iter().map(Lane::written_end).collect(),
        next_journal: global,
        next_global: global.saturating_sub(groups_events),
        last_timestamp_ms,
    };
    Ok(Recovered {
        partitions: partition_list,
        lanes,
        journal,
        start,
        report,
    })
}

fn fault_error(fault: Fault) -> Error {
    match fault {
        Fault::Clean(error) | Fault::Poison(error) => error,
    }
}

/// Writes one record's frames to their segments as the writer does: in chunks in which no
/// partition rolls twice, one reservation and one write per partition and chunk.
fn replay_frames(
    lanes: &mut [Lane],
    frames: &[QueuedFrame],
    record: &[u8],
    last_timestamp_ms: u64,
) -> Result<()> {
    let mut demands: std::collections::BTreeMap<u32, Demand> = Default::default();
    let mut start = 0;
    while start < frames.len() {
        demands.clear();
        let mut end = start;
        for frame in &frames[start..] {
            let demand = demands.entry(frame.partition).or_default();
            if !lanes[frame.partition as usize].admit(demand, frame) {
                break;
            }
            end += 1;
        }
        for (&p, demand) in &demands {
            lanes[p as usize].reserve(demand, last_timestamp_ms)?;
        }
        for (&p, demand) in &demands {
            let chunk = frames[start..end].iter().filter(|f| f.partition == p);
            lanes[p as usize]
                .write(chunk, record, demand)
                .map_err(fault_error)?;
        }
        start = end;
    }
    Ok(())
}

/// Checks that the records continue the log: global positions, and every frame's offset in its
/// partition, from the checkpoint on.
fn check_chain(records: &[(u64, RecordInfo)], checkpoint: &Checkpoint, path: &Path) -> Result<()> {
    let mut ends: Vec<u64> = checkpoint.partitions.iter().map(|m| m.end_offset).collect();
    let mut global = checkpoint.journal_index;
    for (position, record) in records {
        if record.journal_index != global {
            return Err(Error::corrupt(
                path,
                position + journal::RECORD_GLOBAL_OFFSET as u64,
                "journal record's journal index does not continue the log",
            ));
        }
        for entry in &record.entries {
            let end = &mut ends[entry.partition as usize];
            if entry.info.base_offset != *end {
                return Err(Error::corrupt(
                    path,
                    position + (entry.frame_start + frame::BASE_OFFSET_OFFSET) as u64,
                    "journal frame's offset does not continue its partition",
                ));
            }
            *end = entry.info.end_offset();
        }
        global = record.journal_end();
    }
    Ok(())
}
