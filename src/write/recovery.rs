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

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, LostRange, Result};
use crate::options::RecoveryMode;
use crate::storage::frame;
use crate::storage::index::{self, IndexEntry, IndexPolicy};
use crate::storage::io;
use crate::storage::journal::{
    self, latest_checkpoint, probe_record, records_start, Checkpoint, PartitionMark, RecordInfo,
    RecordProbe, JOURNAL_ALIGN, NO_SEGMENT,
};
use crate::storage::segment::{self, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::write::active::{Active, Demand, Fault, Lane, Resumed};
use crate::write::journal::{JournalState, JournalWriter};
use crate::write::partition::{partition_dir, Partition};
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
    partitions: u32,
    config: &Arc<Config>,
    counters: &Arc<Counters>,
) -> Result<Recovered> {
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
        check_partition(dir, id, checkpoint.partitions[id as usize])?;
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
    let mut global = checkpoint.global_position;
    let mut salvage_lost: Vec<Option<LostRange>> = vec![None; partitions as usize];
    let mut ends: Vec<u64> = lanes.iter().map(Lane::written_end).collect();
    for (position, record) in &scan.records {
        if record.global_position != global && !scan.salvaged {
            return Err(Error::corrupt(
                &journal_path,
                position + journal::RECORD_GLOBAL_OFFSET as u64,
                "journal record's global position does not continue the log",
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
                global_position: 0,
            });
            report.partitions[p].events_replayed += u64::from(info.record_count);
            last_timestamp_ms = last_timestamp_ms.max(info.timestamp_ms);
        }
        replay_frames(&mut lanes, &kept, record_bytes, last_timestamp_ms)?;
        global = record.global_position
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
            writeback_ahead: config.durability != crate::options::Durability::Sync,
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
    journal.checkpoint(
        Checkpoint {
            number: 0,
            journal_sequence: 0,
            journal_position: 0,
            global_position: global,
            last_timestamp_ms,
            partitions: marks,
        },
        false,
    )?;
    for lane in &mut lanes {
        lane.publish();
    }
    let start = Start {
        next_offsets: lanes.iter().map(Lane::written_end).collect(),
        next_global: global,
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

/// The records to replay, and where the journal continues.
struct Scan {
    /// Each record with its byte position in the journal.
    records: Vec<(u64, RecordInfo)>,
    end_position: u64,
    next_sequence: u64,
    tail_torn: bool,
    /// Whether records were skipped over damage (salvage mode), and how many events they held.
    salvaged: bool,
    salvage_lost_events: u64,
}

fn scan_journal(
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
                    .map_or(checkpoint.global_position, |(_, r)| r.global_end());
                salvage_lost_events += evidence.global_position.saturating_sub(chained_end);
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

/// Checks that the records continue the log: global positions, and every frame's offset in its
/// partition, from the checkpoint on.
fn check_chain(records: &[(u64, RecordInfo)], checkpoint: &Checkpoint, path: &Path) -> Result<()> {
    let mut ends: Vec<u64> = checkpoint.partitions.iter().map(|m| m.end_offset).collect();
    let mut global = checkpoint.global_position;
    for (position, record) in records {
        if record.global_position != global {
            return Err(Error::corrupt(
                path,
                position + journal::RECORD_GLOBAL_OFFSET as u64,
                "journal record's global position does not continue the log",
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
        global = record.global_end();
    }
    Ok(())
}

/// The checks of `prepare_partition` that can refuse the open, made before anything changes.
fn check_partition(dir: &Path, id: u32, mark: PartitionMark) -> Result<()> {
    if mark.segment_base == NO_SEGMENT {
        return Ok(());
    }
    let path = segment::segment_path(&partition_dir(dir, id), mark.segment_base);
    let bytes = match std::fs::File::open(&path) {
        Ok(file) => {
            use std::io::Read;
            let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            file.take(SEGMENT_HEADER_LEN as u64)
                .read_to_end(&mut header)
                .map_err(|e| Error::io("read", &path, e))?;
            (header, len)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::corrupt(
                &path,
                0,
                "the segment named by the checkpoint is missing",
            ))
        }
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let (header, len) = bytes;
    let header = SegmentHeader::decode(&header, &path)?;
    if header.partition != id {
        return Err(Error::corrupt(
            &path,
            segment::SEGMENT_PARTITION_OFFSET as u64,
            "segment header names another partition than its directory",
        ));
    }
    if header.base_offset != mark.segment_base {
        return Err(Error::corrupt(
            &path,
            segment::SEGMENT_BASE_OFFSET_OFFSET as u64,
            "segment header names another base offset than its file name",
        ));
    }
    if len < mark.synced_position || mark.synced_position < SEGMENT_HEADER_LEN as u64 {
        return Err(Error::corrupt(
            &path,
            len,
            "segment is shorter than the data its checkpoint says was synced",
        ));
    }
    Ok(())
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

/// Opens one partition at its checkpoint mark: cuts what lies past the mark, deletes segments
/// created after it, and loads the active segment's index.
fn prepare_partition(
    dir: &Path,
    id: u32,
    mark: PartitionMark,
    config: &Arc<Config>,
    counters: &Arc<Counters>,
) -> Result<(Lane, PartitionRecovery)> {
    let path = partition_dir(dir, id);
    let mut report = PartitionRecovery {
        partition: id,
        ..PartitionRecovery::default()
    };
    let policy = config.index_policy;
    let listing = list(&path, &config.faults)?;
    // Offsets that the segment files hold past the mark, for the report.
    let mut file_end = mark.end_offset;
    for &base in listing
        .segments
        .iter()
        .filter(|&&base| mark.segment_base == NO_SEGMENT || base > mark.segment_base)
    {
        let seg_path = segment::segment_path(&path, base);
        if let Ok(bytes) = std::fs::read(&seg_path) {
            let (end, len) = chained_end(&bytes, SEGMENT_HEADER_LEN as u64, base);
            file_end = file_end.max(end);
            report.cut_bytes += len;
        }
        io::remove_file(&seg_path, &config.faults)?;
        io::remove_file(&segment::index_path(&path, base), &config.faults)?;
    }
    for &base in &listing.indexes {
        if listing.segments.binary_search(&base).is_err() {
            io::remove_file(&segment::index_path(&path, base), &config.faults)?;
        }
    }
    let partition_path = path.clone();
    if mark.segment_base == NO_SEGMENT {
        if file_end > mark.end_offset {
            report.cut = Some(LostRange {
                partition: id,
                first_offset: mark.end_offset,
                last_offset: file_end - 1,
            });
        }
        let partition = Arc::new(Partition::new(
            id,
            partition_path,
            policy,
            Vec::new(),
            mark.end_offset,
        ));
        return Ok((
            Lane::new(
                partition,
                config.clone(),
                counters.clone(),
                None,
                mark.end_offset,
            ),
            report,
        ));
    }
    let base = mark.segment_base;
    if listing.segments.binary_search(&base).is_err() {
        return Err(Error::corrupt(
            segment::segment_path(&path, base),
            0,
            "the segment named by the checkpoint is missing",
        ));
    }
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let sealed: Vec<u64> = listing
        .segments
        .iter()
        .copied()
        .filter(|&b| b < base)
        .collect();
    for (i, &sealed_base) in sealed.iter().enumerate() {
        let next = sealed.get(i + 1).copied().unwrap_or(base);
        segments.push(Arc::new(Segment::sealed(&path, id, sealed_base, next)));
    }

    let seg_path = segment::segment_path(&path, base);
    let data = io::File::open(&seg_path, &config.faults)?;
    let map = segment::map_file(data.std(), &seg_path)?;
    // `check_partition` checked the header and the length before anything changed.
    let header = SegmentHeader::decode(&map, &seg_path)?;
    let synced = mark.synced_position;
    debug_assert!(header.partition == id && header.base_offset == base);
    debug_assert!(map.len() as u64 >= synced);
    let (end, len) = chained_end(&map, synced, mark.end_offset);
    file_end = file_end.max(end);
    report.cut_bytes += len;
    if file_end > mark.end_offset {
        report.cut = Some(LostRange {
            partition: id,
            first_offset: mark.end_offset,
            last_offset: file_end - 1,
        });
    }
    // What lies past the mark is not cut from the file: it is never read (readers stop at the
    // visible end, recovery at the mark), the replay overwrites it, and the blocks it holds
    // stay reserved, so that a log on a full disk still opens and replays.
    let allocated = map.len() as u64;
    let index_path = segment::index_path(&path, base);
    let (entries, index_rebuilt) = load_index(
        &index_path,
        base,
        &map[..synced as usize],
        mark.end_offset,
        policy,
    )?;
    report.index_rebuilt = index_rebuilt;
    let last_entry_position = entries.last().map(|e| e.position);
    let index_entries = entries.len();
    let segment = Arc::new(Segment::active(&path, id, base, synced, map, entries));
    segments.push(segment.clone());
    let partition = Arc::new(Partition::new(
        id,
        partition_path,
        policy,
        segments,
        mark.end_offset,
    ));
    let active = Active::resume(Resumed {
        segment,
        data,
        created_ms: header.created_ms,
        allocated,
        position: synced,
        end: mark.end_offset,
        index_entries,
        last_entry_position,
    });
    Ok((
        Lane::new(
            partition,
            config.clone(),
            counters.clone(),
            Some(active),
            mark.end_offset,
        ),
        report,
    ))
}

/// Loads the active segment's index: the valid prefix of its file (entries point at synced
/// data only), extended by scanning the synced data after its last entry. The file is rewritten
/// when it held anything else; normally the scan covers less than one index interval.
fn load_index(
    path: &Path,
    base: u64,
    synced: &[u8],
    end_offset: u64,
    policy: IndexPolicy,
) -> Result<(Vec<IndexEntry>, bool)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let header_len = SEGMENT_HEADER_LEN as u64;
    let decoded = index::decode(&bytes, base, header_len, synced.len() as u64);
    if let Some(index::IndexDamage::Version(found)) = decoded.damage {
        return Err(Error::IncompatibleFormat {
            path: path.to_owned(),
            found,
            supported: crate::FORMAT_VERSION,
        });
    }
    // An index placed with another interval stays correct, but its header must say the
    // interval that the entries appended from now on follow.
    let other_interval = decoded.interval_bytes != Some(policy.interval_bytes);
    let damage = decoded.damage;
    let mut entries = decoded.entries;
    let kept = entries.len();
    let (position, offset) = entries
        .last()
        .map_or((header_len, base), |e| (e.position, e.offset));
    // From the last entry's frame on: the policy wants no second entry at that frame.
    let mut chain = frame::Chain::new(synced, position, offset);
    index::extend_from_chain(&mut entries, &mut chain, end_offset, policy);
    let rebuilt = damage.is_some() || entries.len() != kept;
    if rebuilt || other_interval {
        // Derived data: a log on a full disk must still open. Whatever the file holds then is
        // at worst a valid prefix; the next open extends it again. The writer appends entries
        // after the ones kept here, so a file that could not be rewritten must not be left
        // longer than them: it is cut, or (if even that fails) appends land after stale
        // entries, which the next open drops as out of order and rebuilds.
        if rewrite_index(path, base, policy.interval_bytes, &entries).is_err() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(
                        (index::INDEX_HEADER_LEN + entries.len() * index::INDEX_ENTRY_LEN) as u64,
                    )
                });
        }
    }
    Ok((entries, rebuilt))
}

/// Follows valid frames from `position` (expecting `offset`); returns the end offset they reach
/// and the bytes they take. Used only to report what a cut removes.
fn chained_end(bytes: &[u8], position: u64, offset: u64) -> (u64, u64) {
    let mut chain = frame::Chain::new(bytes, position, offset);
    chain.by_ref().for_each(drop);
    (chain.offset, chain.position - position)
}

fn rewrite_index(
    path: &Path,
    base: u64,
    interval_bytes: u32,
    entries: &[IndexEntry],
) -> Result<()> {
    let file = io::File::create_truncate(path, &io::INDEX_FAULTS)?;
    file.write_all_at(&index::encode_file(base, interval_bytes, entries), 0)?;
    file.sync_data()
}

struct Listing {
    segments: Vec<u64>,
    indexes: Vec<u64>,
}

/// Lists segment and index files of a partition directory (none if it does not exist yet),
/// removing temporary files of interrupted creations.
fn list(dir: &Path, faults: &io::Faults) -> Result<Listing> {
    let mut listing = Listing {
        segments: Vec::new(),
        indexes: Vec::new(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            io::remove_file(&entry.path(), faults)?;
        } else if let Some(base) = segment::parse_name(name, segment::SEGMENT_SUFFIX) {
            listing.segments.push(base);
        } else if let Some(base) = segment::parse_name(name, segment::INDEX_SUFFIX) {
            listing.indexes.push(base);
        }
    }
    listing.segments.sort_unstable();
    listing.indexes.sort_unstable();
    Ok(listing)
}
