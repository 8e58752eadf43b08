//! The segment files of one partition as its writer sees them: the segment being written, how
//! far it is written, visible and synced, and the index entries on their way to the file.
//!
//! Frames reach a segment only after their journal record was written, so a segment never holds
//! anything the journal does not (`docs/design.md`). Each step of one chunk of a round is a
//! method, in the order the writer calls them:
//!
//! 1. [`Lane::admit`] each frame: decide which segment it goes to (rolls by size or age);
//! 2. [`Lane::reserve`]: create or grow the segments those frames need, so that a full disk is
//!    met *before* the journal write, when failing is still clean;
//! 3. [`Lane::write`]: write the frames (after the journal record), rolling where admitted;
//! 4. [`Lane::publish`]: make what is written visible to readers;
//! 5. [`Lane::checkpoint`] (now and then): pad to a fresh page, sync the data and the index.

use std::sync::Arc;

use crate::error::Result;
use crate::storage::frame;
use crate::storage::index::{self, IndexEntry};
use crate::storage::io;
use crate::storage::journal::{align_up, PartitionMark, JOURNAL_ALIGN, NO_SEGMENT};
use crate::storage::segment::{self, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::write::partition::Partition;
use crate::write::sequencer::QueuedFrame;
use crate::write::{now_ms, Config, Counters};

/// Room kept at the end of every segment for the padding frame of a checkpoint, so that a
/// checkpoint never needs space that was not reserved.
pub const PADDING_ROOM: u64 = JOURNAL_ALIGN + frame::PADDING_LEN_MIN as u64;
/// The first reservation of a new segment, and the smallest step by which one grows. Segments
/// grow by doubling up to `PREALLOCATE_STEP_MAX` per step, so that an idle partition costs
/// kilobytes while a busy one calls `fallocate` rarely.
pub const PREALLOCATE_STEP_MIN: u64 = 64 << 10;
pub const PREALLOCATE_STEP_MAX: u64 = 8 << 20;
/// Writeback of a segment's new data is started (`sync_file_range`) once this much is written
/// since it was last started, so that the checkpoint's sync finds little left to write. Not per
/// round: under `Sync` each small round would add a disk write of its own beside the journal's
/// (a lone `Sync` producer went from 8.5k–9.1k to 9.7k–9.9k appends/s without them). Not much
/// larger: with steps of 1 MiB, pipelined `Sync` appends (about 110 KB per partition per
/// round) fell from 1.66M to 1.49M events/s, the checkpoints finding more left to write.
pub const WRITEBACK_STEP: u64 = 64 << 10;

/// The segment being written.
pub(crate) struct Active {
    pub segment: Arc<Segment>,
    data: io::File,
    created_ms: u64,
    /// File length reserved by preallocation (or written, where preallocation is unsupported).
    allocated: u64,
    /// False once the file system said it cannot preallocate: the file then grows with writes.
    preallocates: bool,
    written_position: u64,
    written_end: u64,
    visible_position: u64,
    /// Data up to here is synced (by a checkpoint or a roll).
    synced_position: u64,
    /// Writeback of the data up to here is started or done.
    writeback_position: u64,
    synced_end: u64,
    /// Entries of frames written but not yet visible.
    new_entries: Vec<IndexEntry>,
    /// Entries of visible frames not yet in the index file. They reach the file only at a
    /// checkpoint, after the data they point at is synced, so that every entry in the file
    /// points at synced data.
    unpersisted_entries: Vec<IndexEntry>,
    last_entry_position: Option<u64>,
    index_file_len: u64,
}

/// How a recovered segment continues.
pub(crate) struct Resumed {
    pub segment: Arc<Segment>,
    pub data: io::File,
    pub created_ms: u64,
    pub allocated: u64,
    /// Synced data ends here, at offset `end`.
    pub position: u64,
    pub end: u64,
    pub index_entries: usize,
    pub last_entry_position: Option<u64>,
}

impl Active {
    pub fn resume(resumed: Resumed) -> Active {
        Active {
            segment: resumed.segment,
            data: resumed.data,
            created_ms: resumed.created_ms,
            allocated: resumed.allocated,
            preallocates: true,
            written_position: resumed.position,
            written_end: resumed.end,
            visible_position: resumed.position,
            synced_position: resumed.position,
            writeback_position: resumed.position,
            synced_end: resumed.end,
            new_entries: Vec::new(),
            unpersisted_entries: Vec::new(),
            last_entry_position: resumed.last_entry_position,
            index_file_len: (index::INDEX_HEADER_LEN
                + resumed.index_entries * index::INDEX_ENTRY_LEN)
                as u64,
        }
    }
}

/// What one chunk of a round asks of a partition.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Demand {
    /// Base offset of the chunk's first frame for this partition.
    pub first_base: Option<u64>,
    /// Bytes going to the segment being written (created first if there is none).
    pub here: u64,
    /// The first frame that goes to a new segment (its base offset), and the bytes from it on.
    pub roll: Option<(u64, u64)>,
}

impl Demand {
    pub fn is_empty(&self) -> bool {
        self.first_base.is_none()
    }
}

/// Why a step failed, and so what the writer must do.
pub(crate) enum Fault {
    /// Nothing of the chunk reached the journal or a segment: the chunk can be failed or
    /// retried without a trace.
    Clean(crate::error::Error),
    /// A write or sync after the journal record failed: what is on disk is not known.
    Poison(crate::error::Error),
}

/// One partition's writer side.
pub(crate) struct Lane {
    pub partition: Arc<Partition>,
    config: Arc<Config>,
    counters: Arc<Counters>,
    active: Option<Active>,
    /// A segment created ahead for the roll admitted in the current chunk.
    next: Option<Active>,
    /// The partition's end offset as written.
    written_end: u64,
    /// The end offset of what is durable: synced in the journal or in a segment.
    pub durable_end: u64,
}

impl Lane {
    pub fn new(
        partition: Arc<Partition>,
        config: Arc<Config>,
        counters: Arc<Counters>,
        active: Option<Active>,
        end: u64,
    ) -> Lane {
        Lane {
            partition,
            config,
            counters,
            active,
            next: None,
            written_end: end,
            durable_end: end,
        }
    }

    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// Adds `frame` to the chunk's demand. Returns false if it would need a second roll within
    /// the chunk: the chunk must end before it.
    pub fn admit(&self, demand: &mut Demand, frame: &QueuedFrame) -> bool {
        let len = u64::from(frame.frame_len);
        let limit = self.config.segment_bytes - PADDING_ROOM;
        let header = SEGMENT_HEADER_LEN as u64;
        if let Some((_, bytes)) = &mut demand.roll {
            if header + *bytes + len > limit {
                return false;
            }
            *bytes += len;
            return true;
        }
        demand.first_base.get_or_insert(frame.base_offset);
        let (position, old) = match &self.active {
            Some(active) => (
                active.written_position + demand.here,
                self.config
                    .segment_age_max_ms
                    .is_some_and(|age| now_ms().saturating_sub(active.created_ms) >= age),
            ),
            None => (header + demand.here, false),
        };
        if (position + len > limit || old) && position > header {
            demand.roll = Some((frame.base_offset, len));
        } else {
            demand.here += len;
        }
        true
    }

    /// Creates or grows the segments that `demand` needs. Nothing readers see changes.
    pub fn reserve(&mut self, demand: &Demand, last_timestamp_ms: u64) -> Result<()> {
        let Some(first_base) = demand.first_base else {
            return Ok(());
        };
        match &mut self.active {
            None => {
                let active = self.create(first_base, demand.here, last_timestamp_ms)?;
                self.partition.segments.write().push(active.segment.clone());
                self.active = Some(active);
            }
            Some(active) => {
                let needed = active.written_position + demand.here + PADDING_ROOM;
                grow(active, needed, self.config.segment_bytes)?;
            }
        }
        if let Some((base, bytes)) = demand.roll {
            match &mut self.next {
                Some(next) if next.segment.base_offset == base => {
                    grow(
                        next,
                        SEGMENT_HEADER_LEN as u64 + bytes + PADDING_ROOM,
                        self.config.segment_bytes,
                    )?;
                }
                _ => {
                    self.discard_next();
                    self.next = Some(self.create(base, bytes, last_timestamp_ms)?);
                }
            }
        }
        Ok(())
    }

    /// Writes this partition's frames of the chunk, in order, rolling where `demand` says.
    /// `pending` holds the frames' bytes; they are written from there, with one `pwritev` per
    /// segment, without being copied together first.
    pub fn write<'f>(
        &mut self,
        frames: impl Iterator<Item = &'f QueuedFrame>,
        pending: &[u8],
        demand: &Demand,
    ) -> Result<(), Fault> {
        let policy = self.partition.index_policy;
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut slices_len = 0u64;
        for frame in frames {
            debug_assert_eq!(frame.base_offset, self.written_end);
            if demand
                .roll
                .is_some_and(|(base, _)| base == frame.base_offset)
            {
                self.write_slices(&slices, slices_len)?;
                slices.clear();
                slices_len = 0;
                self.roll()?;
            }
            let active = self.active.as_mut().expect("reserved before writing");
            let position = active.written_position + slices_len;
            if policy.wants_entry(active.last_entry_position, position) {
                active.new_entries.push(IndexEntry {
                    offset: frame.base_offset,
                    position,
                    timestamp_ms: frame.timestamp_ms,
                });
                active.last_entry_position = Some(position);
            }
            let bytes = frame.bytes(pending);
            slices.push(bytes);
            slices_len += bytes.len() as u64;
            self.written_end = frame.end_offset();
        }
        self.write_slices(&slices, slices_len)
    }

    fn write_slices(&mut self, slices: &[&[u8]], len: u64) -> Result<(), Fault> {
        if slices.is_empty() {
            return Ok(());
        }
        let active = self.active.as_mut().expect("reserved before writing");
        let end = active.written_position + len;
        debug_assert!(end + PADDING_ROOM <= active.allocated);
        active
            .data
            .write_all_vectored_at(slices, active.written_position)
            .map_err(Fault::Poison)?;
        // Segments are synced only at checkpoints; starting their writeback as they fill
        // spreads the disk's work over the lap instead of stalling the writer at the checkpoint.
        if end - active.writeback_position >= WRITEBACK_STEP {
            active
                .data
                .start_writeback(active.writeback_position, end - active.writeback_position);
            active.writeback_position = end;
        }
        active.written_position = end;
        active.written_end = self.written_end;
        if end > active.segment.mapped_len() as u64 {
            // Readers must be able to reach what becomes visible.
            active
                .segment
                .remap(active.data.std())
                .map_err(Fault::Poison)?;
        }
        Ok(())
    }

    /// Seals the segment being written and continues in the one reserved ahead: the old data
    /// is synced first, so that sealed segments never change again.
    fn roll(&mut self) -> Result<(), Fault> {
        let mut old = self.active.take().expect("a roll has a segment to seal");
        let next = self.next.take().expect("reserved before writing");
        old.data.sync_data().map_err(Fault::Poison)?;
        old.synced_position = old.written_position;
        old.writeback_position = old.written_position;
        old.synced_end = old.written_end;
        flush_entries(&mut old);
        persist_index(&mut old);
        old.segment.seal(old.written_end, old.written_position);
        self.partition
            .streams
            .sealed(self.partition.id, &old.segment);
        // The cut is tidiness: an uncut tail is never read (a sealed segment ends at the next
        // one's base offset).
        let _ = old.data.set_len(old.written_position);
        self.partition.segments.write().push(next.segment.clone());
        self.active = Some(next);
        Counters::add(&self.counters.segments_rolled, 1);
        Ok(())
    }

    /// Makes everything written visible to readers: index entries first, then the segment's
    /// readable end, then the partition's visible end.
    pub fn publish(&mut self) {
        if let Some(active) = &mut self.active {
            flush_entries(active);
            active.visible_position = active.written_position;
            active.segment.publish_position(active.visible_position);
        }
        self.partition.set_visible_end(self.written_end);
    }

    /// Pads the segment being written to a fresh page, syncs it and its index, and returns the
    /// partition's mark for the checkpoint. After it, no write ever touches a page that holds
    /// checkpointed data, so a power loss during a later write cannot damage it.
    pub fn checkpoint(&mut self, last_timestamp_ms: u64) -> Result<PartitionMark, Fault> {
        let Some(active) = &mut self.active else {
            return Ok(PartitionMark {
                segment_base: NO_SEGMENT,
                synced_position: 0,
                end_offset: self.written_end,
            });
        };
        // A segment with nothing written since its creation is padded too: its next frames
        // would otherwise go into the page of its header, which this checkpoint names.
        let unaligned = !active.written_position.is_multiple_of(JOURNAL_ALIGN);
        if active.synced_position < active.written_position || unaligned {
            let mut pad = align_up(active.written_position) - active.written_position;
            if pad != 0 && pad < frame::PADDING_LEN_MIN as u64 {
                pad += JOURNAL_ALIGN;
            }
            if pad != 0 {
                let mut bytes = Vec::with_capacity(pad as usize);
                frame::encode_padding(
                    &mut bytes,
                    pad as usize,
                    active.written_end,
                    last_timestamp_ms,
                );
                active
                    .data
                    .write_all_at(&bytes, active.written_position)
                    .map_err(Fault::Poison)?;
                active.written_position += pad;
            }
            active.data.sync_data().map_err(Fault::Poison)?;
            active.synced_position = active.written_position;
            active.writeback_position = active.written_position;
            active.synced_end = active.written_end;
            flush_entries(active);
            persist_index(active);
        }
        // Nothing is published here: the data is durable only once the checkpoint that names
        // it is, and the caller publishes after that (`Lane::publish`).
        self.durable_end = self.written_end;
        Ok(PartitionMark {
            segment_base: active.segment.base_offset,
            synced_position: active.synced_position,
            end_offset: active.synced_end,
        })
    }

    /// Deletes a segment reserved ahead that the next chunk will not use (its offsets were
    /// rewound after a failure).
    pub fn discard_next(&mut self) {
        if let Some(next) = self.next.take() {
            let path = next.segment.path.clone();
            let index_path = next.segment.index_path.clone();
            drop(next);
            let _ = io::remove_file(&path, &self.config.faults);
            let _ = io::remove_file(&index_path, &self.config.faults);
        }
    }

    /// After a clean failure under `Sync`: the partition continues at its written end.
    pub fn rewind(&mut self) {
        self.discard_next();
    }

    fn create(&self, base: u64, bytes: u64, last_timestamp_ms: u64) -> Result<Active> {
        let dir = &self.partition.dir;
        io::create_dir_all_durable(dir, &self.config.faults)?;
        let created_ms = now_ms().max(last_timestamp_ms);
        let needed = SEGMENT_HEADER_LEN as u64 + bytes + PADDING_ROOM;
        let capacity = step(0, needed, self.config.segment_bytes);
        let created = segment::create(
            dir,
            SegmentHeader {
                partition: self.partition.id,
                base_offset: base,
                created_ms,
            },
            capacity,
            self.partition.index_policy,
            &self.config.faults,
        )?;
        let allocated = created
            .data
            .std()
            .metadata()
            .map_err(|e| crate::error::Error::io("stat", &created.segment.path, e))?
            .len();
        let mut active = Active::resume(Resumed {
            segment: created.segment,
            data: created.data,
            created_ms,
            allocated,
            position: SEGMENT_HEADER_LEN as u64,
            end: base,
            index_entries: 0,
            last_entry_position: None,
        });
        // Where preallocation is unsupported the file holds only its header: this learns so,
        // and reserves by the writes to come.
        grow(&mut active, needed, self.config.segment_bytes)?;
        Ok(active)
    }
}

/// The size to grow a reservation of `allocated` bytes to, so that it holds `needed`: at least
/// double, in steps of `PREALLOCATE_STEP_MIN ..= PREALLOCATE_STEP_MAX`, never past the segment.
fn step(allocated: u64, needed: u64, segment_bytes: u64) -> u64 {
    let growth = allocated.clamp(PREALLOCATE_STEP_MIN, PREALLOCATE_STEP_MAX);
    needed
        .max(allocated + growth)
        .min(segment_bytes)
        .max(needed)
}

fn grow(active: &mut Active, needed: u64, segment_bytes: u64) -> Result<()> {
    if needed <= active.allocated {
        return Ok(());
    }
    if !active.preallocates {
        active.allocated = needed;
        return Ok(());
    }
    let target = step(active.allocated, needed, segment_bytes);
    match active.data.preallocate(target)? {
        io::Preallocation::Reserved => active.allocated = target,
        io::Preallocation::Unsupported => {
            active.preallocates = false;
            active.allocated = needed;
        }
    }
    Ok(())
}

/// Moves the entries of written frames to the segment's in-memory index.
fn flush_entries(active: &mut Active) {
    if !active.new_entries.is_empty() {
        active.segment.push_index_entries(&active.new_entries);
        active
            .unpersisted_entries
            .extend_from_slice(&active.new_entries);
        active.new_entries.clear();
    }
}

/// Appends the entries of synced frames to the index file and syncs it. The file is opened only
/// for this, so that a partition costs one open file, its segment's. Derived data: entries that
/// fail to reach the file only make lookups after a reopen scan further, and a lost index is
/// rebuilt; so errors here are ignored.
fn persist_index(active: &mut Active) {
    if active.unpersisted_entries.is_empty() {
        return;
    }
    debug_assert!(active
        .unpersisted_entries
        .iter()
        .all(|entry| entry.position < active.synced_position));
    let mut encoded = Vec::with_capacity(active.unpersisted_entries.len() * index::INDEX_ENTRY_LEN);
    for entry in &active.unpersisted_entries {
        index::encode_entry(&mut encoded, active.segment.base_offset, entry);
    }
    let written = io::File::open(&active.segment.index_path, &io::INDEX_FAULTS).and_then(|file| {
        file.write_all_at(&encoded, active.index_file_len)?;
        file.sync_data()
    });
    if written.is_ok() {
        active.index_file_len += encoded.len() as u64;
    }
    active.unpersisted_entries.clear();
}
