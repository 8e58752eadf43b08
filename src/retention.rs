//! Retention: which sealed segments of the application's partitions may go, deleting them, and
//! what readers and groups are told.
//!
//! A partition loses whole segments from its oldest end only, so its offsets stay contiguous
//! from its *start* (the first segment's base, kept by `Partition`). A segment may go when:
//! - it is sealed and lies below the segment named by the last durable checkpoint (recovery
//!   opens that one and replays the journal into those after it, so they must stay);
//! - the options say so: its newest event is older than the age limit, or the partition's files
//!   exceed the bytes limit, and, with `until_consumed`, every group is past it.
//!
//! Deleting one: the partition's start moves past it first (readers below it now get
//! `Error::OffsetBelowStart` instead of a file that vanishes), the segment leaves the list, its
//! file is removed and the directory synced (so that after a power loss the deleted segments
//! are still a prefix of the partition), then its index and key table. Recovery removes an index
//! or table left without its segment. Groups whose cursor is below the new start are moved up
//! and told by their next poll (`consumer/member.rs`).

use std::sync::Arc;

use crate::consumer::Groups;
use crate::error::Result;
use crate::storage::io;
use crate::storage::segment::{self, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::write::partition::Partition;
use crate::write::{now_ms, Shared};

/// What one enforcement of the retention options deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Segments deleted, over all partitions.
    pub segments_deleted: u64,
    /// Bytes of segment files deleted.
    pub bytes_deleted: u64,
    /// Each partition's start afterwards.
    pub starts: Vec<u64>,
}

/// Deletes what the retention options allow, partition by partition.
pub(crate) fn enforce(shared: &Shared, groups: &Groups) -> Result<RetentionReport> {
    let _one_at_a_time = shared.retention_lock.lock();
    let retention = shared.config.retention;
    let user_partitions = shared.config.user_partitions as usize;
    let mut report = RetentionReport::default();
    if retention.any() {
        let watermarks = if retention.until_consumed {
            match groups.watermarks(shared)? {
                Some(watermarks) => Some(watermarks),
                // No group: nothing is consumed, nothing goes.
                None => vec![0; user_partitions].into(),
            }
        } else {
            None
        };
        let limited = retention.age_max.is_some() || retention.bytes_max.is_some();
        let now = now_ms();
        for (p, partition) in shared.partitions[..user_partitions].iter().enumerate() {
            let segments = partition.segments.read().clone();
            let mut sizes = Vec::with_capacity(segments.len());
            for segment in &segments {
                sizes.push(file_len(&segment::segment_path(
                    &partition.dir,
                    segment.base_offset,
                ))?);
            }
            let mut total: u64 = sizes.iter().sum();
            let checkpoint_base = partition.checkpoint_base();
            let mut doomed = 0;
            for (i, pair) in segments.windows(2).enumerate() {
                let (oldest, next) = (&pair[0], &pair[1]);
                if oldest.base_offset >= checkpoint_base {
                    break;
                }
                let end = next.base_offset;
                let consumed = watermarks.as_ref().is_none_or(|w| w[p] >= end);
                let over_bytes = retention.bytes_max.is_some_and(|max| total > max);
                let too_old = match retention.age_max {
                    Some(age) => {
                        let age_ms = age.as_millis().min(u128::from(u64::MAX)) as u64;
                        newest_event_bound_ms(partition, next, &shared.config.faults)?
                            .saturating_add(age_ms)
                            <= now
                    }
                    None => false,
                };
                let expired = consumed && (!limited || over_bytes || too_old);
                if !expired {
                    break;
                }
                total -= sizes[i];
                doomed = i + 1;
            }
            if doomed > 0 {
                delete(
                    shared,
                    partition,
                    &segments[..doomed],
                    segments[doomed].base_offset,
                )?;
                report.segments_deleted += doomed as u64;
                report.bytes_deleted += sizes[..doomed].iter().sum::<u64>();
            }
        }
    }
    report.starts = shared.partitions[..user_partitions]
        .iter()
        .map(|p| p.start())
        .collect();
    Ok(report)
}

/// A bound on the newest event of the segment before `next`: `next`'s creation time (a
/// segment is created when the one before it is full, after its last event was appended).
fn newest_event_bound_ms(
    partition: &Partition,
    next: &Segment,
    faults: &io::Faults,
) -> Result<u64> {
    let path = segment::segment_path(&partition.dir, next.base_offset);
    let header = io::read_prefix(&path, SEGMENT_HEADER_LEN as u64, faults)
        .map_err(|e| crate::error::Error::io("read", &path, e))?;
    Ok(SegmentHeader::decode(&header, &path)?.created_ms)
}

fn file_len(path: &std::path::Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(crate::error::Error::io("stat", path, e)),
    }
}

/// Deletes the oldest segments of `partition`, `doomed`, which end at `start`: the new start
/// is recorded durably first, so that after a crash the next open finishes the deletion, and
/// tells a segment missing above it (damage) from one retention deleted.
fn delete(
    shared: &Shared,
    partition: &Partition,
    doomed: &[Arc<Segment>],
    start: u64,
) -> Result<()> {
    let faults = &shared.config.faults;
    let start_path = segment::start_path(&partition.dir);
    io::write_file_atomic(&start_path, &segment::encode_start(start), faults)?;
    partition.set_start(start);
    let bases: Vec<u64> = doomed.iter().map(|s| s.base_offset).collect();
    partition
        .segments
        .write()
        .retain(|s| !bases.contains(&s.base_offset));
    for &base in &bases {
        partition.streams.forget_segment(base);
        io::remove_file(&segment::segment_path(&partition.dir, base), faults)?;
        io::sync_dir(&partition.dir, faults)?;
        io::remove_file(&segment::index_path(&partition.dir, base), faults)?;
        io::remove_file(&segment::table_path(&partition.dir, base), faults)?;
    }
    Ok(())
}
