//! Finding one key's frames, or one event id, in a partition without scanning it: the sealed
//! segments' tables (`table.rs`, loaded or built once), then the in-memory table of the segment
//! being written (`active.rs`, caught up with what is visible each time it is consulted).
//!
//! Every frame a table points at is checked before it is used: its checksum (by `probe`), its
//! base version and record count against the entry, and its key against the key asked for (a
//! hash collision is skipped, never returned). A sealed segment's table that points at anything
//! else lied: it is rebuilt from the segment and asked again. Only published (visible) frames
//! are found: the sequencer keeps what is newer (`versions.rs`, `ids.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::storage::frame::{self, FrameInfo, Probe, RecordCursor};
use crate::storage::io;
use crate::storage::segment::{self, Segment, SegmentPin};
use crate::stream::active::MemTable;
use crate::stream::indexer::Job;
use crate::stream::table::{HashKind, KeyEntry, SegmentId, Table};
use crate::write::partition::Partition;
use crate::write::Appended;

/// Sealed segments' tables kept per partition (each is a mapping of its file).
const TABLES_CACHED_MAX: usize = 1024;

/// The key lookup state of one partition.
pub(crate) struct StreamIndex {
    hash_kind: HashKind,
    /// Tables of sealed segments, by base offset, once loaded or built.
    tables: Mutex<HashMap<u64, Arc<Table>>>,
    /// The in-memory table of the newest segment that was consulted, and that segment.
    mem: Mutex<Option<(Arc<Segment>, MemTable)>>,
    /// Sealed segments whose table file was found lying: not read again by this process.
    forget_file: Mutex<std::collections::HashSet<u64>>,
    /// Where the writer's sealed segments go to have their tables built (`indexer.rs`).
    sealed_to: Mutex<Option<crossbeam_channel::Sender<Job>>>,
}

/// A checked frame of the key asked for.
pub(crate) struct FoundFrame {
    /// The segment's mapping, which the frame's records are sliced from.
    pub map: Bytes,
    pub segment_base: u64,
    pub position: usize,
    pub info: FrameInfo,
}

/// An event found by its id.
#[derive(Clone, Debug)]
pub(crate) struct FoundId {
    pub key: Bytes,
    pub appended: Appended,
}

/// Where one segment's entries come from.
enum Source<'t> {
    Sealed(Arc<Table>),
    Mem(&'t MemTable),
}

impl StreamIndex {
    pub fn new(hash_kind: HashKind) -> StreamIndex {
        StreamIndex {
            hash_kind,
            tables: Mutex::new(HashMap::new()),
            mem: Mutex::new(None),
            forget_file: Mutex::new(std::collections::HashSet::new()),
            sealed_to: Mutex::new(None),
        }
    }

    /// Sends the segments sealed from now on to `jobs`.
    pub fn send_sealed_to(&self, jobs: crossbeam_channel::Sender<Job>) {
        *self.sealed_to.lock() = Some(jobs);
    }

    pub fn stop_sending_sealed(&self) {
        self.sealed_to.lock().take();
    }

    /// Drops what is kept of a segment that retention deleted.
    pub fn forget_segment(&self, base: u64) {
        self.tables.lock().remove(&base);
        self.forget_file.lock().remove(&base);
    }

    /// Called by the writer when it sealed `segment`: its table is built in the background.
    pub fn sealed(&self, partition: u32, segment: &Arc<Segment>) {
        if let Some(jobs) = self.sealed_to.lock().as_ref() {
            let _ = jobs.send(Job {
                partition,
                segment: segment.clone(),
            });
        }
    }

    /// Builds (or loads) the table of a sealed segment, for the indexer.
    pub fn index_sealed(&self, partition: &Partition, segment: &Arc<Segment>) -> Result<()> {
        self.table_of(partition, &segment.pin()).map(drop)
    }

    /// The last version of `key` among the partition's visible events; `None` if it has none.
    pub fn last_version(&self, partition: &Partition, key: &[u8]) -> Result<Option<u64>> {
        let mut last = None;
        self.frames_newest_first(partition, key, |found| {
            last = Some(found.info.base_version + u64::from(found.info.record_count) - 1);
            false
        })?;
        Ok(last)
    }

    /// The visible frames of `key` holding versions at or after `from_version`, in version
    /// order.
    pub fn key_frames(
        &self,
        partition: &Partition,
        key: &[u8],
        from_version: u64,
    ) -> Result<Vec<FoundFrame>> {
        let mut frames = Vec::new();
        self.frames_newest_first(partition, key, |found| {
            let end = found.info.base_version + u64::from(found.info.record_count);
            if end <= from_version {
                return false;
            }
            let more = found.info.base_version > from_version;
            frames.push(found);
            more
        })?;
        frames.reverse();
        Ok(frames)
    }

    /// The visible event with this id in the partition, if any.
    pub fn find_id(&self, partition: &Partition, id: u128) -> Result<Option<FoundId>> {
        let visible_end = partition.visible_end();
        for segment in visible_segments(partition).iter().rev() {
            let pin = segment.pin();
            let mut retried = false;
            loop {
                let sealed = pin.end_offset() != u64::MAX;
                let entry = if sealed {
                    match self.table_of(partition, &pin) {
                        Ok(table) => table.id_entry_of(id),
                        // Deleted by retention since the list was taken: so is all before it.
                        Err(_) if deleted(partition, &pin) => return Ok(None),
                        Err(error) => return Err(error),
                    }
                } else {
                    let mut mem = self.mem.lock();
                    self.caught_up(&mut mem, partition, &pin)?.id_entry_of(id)
                };
                let Some(entry) = entry else { break };
                let map = match pin.map() {
                    Ok(map) => map,
                    Err(_) if deleted(partition, &pin) => return Ok(None),
                    Err(error) => return Err(error),
                };
                let data_len = pin.data(&map).len();
                let found = check_id(&map, data_len, entry.position as usize, entry.index, id);
                match found {
                    // Not visible yet: the sequencer still holds it among its queued ids.
                    Some((_, info, _)) if info.base_offset >= visible_end => return Ok(None),
                    Some((key, info, index)) => {
                        let index = u64::from(index);
                        return Ok(Some(FoundId {
                            key,
                            appended: Appended {
                                partition: partition.id,
                                offset: info.base_offset + index,
                                count: 1,
                                version: info.base_version + index,
                                global_position: info.global_position + index,
                                duplicate: true,
                            },
                        }));
                    }
                    None if sealed && !retried => {
                        self.distrust(partition, pin.base_offset);
                        retried = true;
                    }
                    None => {
                        return Err(Error::corrupt(
                            &pin.path,
                            u64::from(entry.position),
                            "an id table points at a frame without that id",
                        ))
                    }
                }
            }
        }
        Ok(None)
    }

    /// Forgets a sealed segment's table that lied (its file too): the next use rebuilds it.
    fn distrust(&self, partition: &Partition, base_offset: u64) {
        self.tables.lock().remove(&base_offset);
        let path = segment::table_path(&partition.dir, base_offset);
        let _ = io::remove_file(&path, &io::INDEX_FAULTS);
        self.forget_file.lock().insert(base_offset);
    }

    /// Calls `visit` with the frames of `key`, newest first, until it returns false.
    fn frames_newest_first(
        &self,
        partition: &Partition,
        key: &[u8],
        mut visit: impl FnMut(FoundFrame) -> bool,
    ) -> Result<()> {
        let hash = self.hash_kind.hash(key);
        // A sealed segment's table covers all of it, also while the round that sealed it is
        // not yet published: frames past the visible end are not returned.
        let visible_end = partition.visible_end();
        for segment in visible_segments(partition).iter().rev() {
            let pin = segment.pin();
            let mut retried = false;
            loop {
                let sealed = pin.end_offset() != u64::MAX;
                let entries = if sealed {
                    match self.table_of(partition, &pin) {
                        Ok(table) => Source::Sealed(table).entries(hash),
                        // Deleted by retention since the list was taken: so is all before it.
                        Err(_) if deleted(partition, &pin) => return Ok(()),
                        Err(error) => return Err(error),
                    }
                } else {
                    let mut mem = self.mem.lock();
                    let mem = self.caught_up(&mut mem, partition, &pin)?;
                    Source::Mem(mem).entries(hash)
                };
                if entries.is_empty() {
                    break;
                }
                // Mapped only now: most segments hold none of a key's frames, and mapping a
                // sealed segment costs a system call and page faults.
                let map = match pin.map() {
                    Ok(map) => map,
                    Err(_) if deleted(partition, &pin) => return Ok(()),
                    Err(error) => return Err(error),
                };
                let data = pin.data(&map);
                match check_frames(data, &entries, key) {
                    Ok(found) => {
                        let visible = found
                            .into_iter()
                            .filter(|(_, f)| f.base_offset < visible_end);
                        for (position, info) in visible.rev() {
                            let frame = FoundFrame {
                                map: map.clone(),
                                segment_base: pin.base_offset,
                                position,
                                info,
                            };
                            if !visit(frame) {
                                return Ok(());
                            }
                        }
                        break;
                    }
                    Err(_) if sealed && !retried => {
                        // The table lied: forget it (file included) and build it anew.
                        self.distrust(partition, pin.base_offset);
                        retried = true;
                    }
                    Err(position) => {
                        return Err(Error::corrupt(
                            &pin.path,
                            position,
                            "a key table points at no frame of its key",
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The in-memory table of the segment being written, caught up with what is visible. When
    /// the segment it held was sealed since, that table is finished and kept as the sealed
    /// segment's table first, so that no segment is walked twice.
    fn caught_up<'m>(
        &self,
        mem: &'m mut Option<(Arc<Segment>, MemTable)>,
        partition: &Partition,
        pin: &SegmentPin,
    ) -> Result<&'m MemTable> {
        if let Some((old, _)) = mem
            .as_ref()
            .filter(|(s, _)| s.base_offset != pin.base_offset)
        {
            let old = old.clone();
            let (_, table) = mem.take().expect("checked above");
            if old.end_offset() != u64::MAX {
                let old_pin = old.pin();
                // Best effort: if it fails, the table is built from the segment when needed.
                let _ = self.finish_table(partition, &old_pin, table);
            }
        }
        // The visible end first, then the mapping and the readable end: the writer remaps a
        // grown file and moves the segment's readable end before it publishes, so the bytes of
        // every frame below this visible end are within `data`. (A mapping taken before the
        // visible end was read may be shorter than the frames it covers.)
        let end_offset = partition.visible_end().min(pin.end_offset());
        let map = pin.map()?;
        let map = &map;
        let data = pin.data(map);
        if mem.is_none() {
            // A table file written when the log was last closed covers the segment's first
            // frames: continue from it instead of walking them.
            let path = segment::table_path(&partition.dir, pin.base_offset);
            let id = self.segment_id(pin, map);
            let prefix = self.read_table(&path, &id, end_offset, data.len() as u64);
            let table = match prefix {
                Some(prefix) => MemTable::after(Arc::new(prefix)),
                None => MemTable::new(pin.base_offset),
            };
            *mem = Some((partition_segment(partition, pin.base_offset), table));
        }
        let (_, table) = mem.as_mut().expect("set above");
        if table.offset < end_offset {
            table
                .catch_up(data, end_offset, self.hash_kind)
                .map_err(|broken| Error::corrupt(&pin.path, broken.position, broken.reason))?;
        }
        Ok(table)
    }

    /// The table of a sealed segment: cached, else read from its file, else built from the
    /// segment (and its file written, for the next process).
    fn table_of(&self, partition: &Partition, pin: &SegmentPin) -> Result<Arc<Table>> {
        if let Some(table) = self.tables.lock().get(&pin.base_offset) {
            return Ok(table.clone());
        }
        let path = segment::table_path(&partition.dir, pin.base_offset);
        let distrusted = self.forget_file.lock().contains(&pin.base_offset);
        if !distrusted {
            if let Some(table) = self.table_file(pin, &path) {
                let table = Arc::new(table);
                self.keep_table(pin.base_offset, table.clone());
                return Ok(table);
            }
        }
        // Continue the in-memory table if it holds this segment, else walk it from its start.
        let held = {
            let mut mem = self.mem.lock();
            match mem.take() {
                Some((segment, table)) if segment.base_offset == pin.base_offset => Some(table),
                other => {
                    *mem = other;
                    None
                }
            }
        };
        let table = held.unwrap_or_else(|| MemTable::new(pin.base_offset));
        self.finish_table(partition, pin, table)
    }

    /// Reads a sealed segment's table file, if it is there, checks out and covers the whole
    /// segment.
    fn table_file(&self, pin: &SegmentPin, path: &std::path::Path) -> Option<Table> {
        // A segment sealed before this open is read whole; one sealed since ends at its data.
        let data_end = match pin.end_position() {
            u64::MAX => std::fs::metadata(&pin.path).ok()?.len(),
            end => end,
        };
        let id = self.segment_id_from_file(pin)?;
        let table = self.read_table(path, &id, pin.end_offset(), data_end)?;
        (table.covers().end_offset == pin.end_offset()).then_some(table)
    }

    /// The identity a table of this segment must carry, from the segment file's header (read
    /// without mapping the segment: most tables are read for segments that hold nothing of the
    /// key looked up).
    fn segment_id_from_file(&self, pin: &SegmentPin) -> Option<SegmentId> {
        use std::io::Read;
        let mut header = [0u8; segment::SEGMENT_HEADER_LEN];
        std::fs::File::open(&pin.path)
            .and_then(|mut file| file.read_exact(&mut header))
            .ok()?;
        Some(self.segment_id(pin, &header))
    }

    /// The identity of the segment whose header starts `bytes` (its mapping or its header).
    fn segment_id(&self, pin: &SegmentPin, bytes: &[u8]) -> SegmentId {
        let crc = bytes
            .get(segment::SEGMENT_HEADER_CRC_OFFSET..segment::SEGMENT_HEADER_LEN)
            .map_or(0, |crc| {
                u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
            });
        SegmentId {
            base_offset: pin.base_offset,
            segment_crc: crc,
            hash_kind: self.hash_kind,
        }
    }

    /// A table file of the segment at `base_offset`, covering at most `end_offset` and
    /// `data_end`, if it checks out.
    fn read_table(
        &self,
        path: &std::path::Path,
        segment: &SegmentId,
        end_offset: u64,
        data_end: u64,
    ) -> Option<Table> {
        // Mapped, not read: the table stays in the page cache, not on the heap, however many
        // segments a long-lived process has looked into. Table files are never written in
        // place (a new one is renamed over the old), so the mapped bytes never change.
        let file = std::fs::File::open(path).ok()?;
        let bytes = segment::map_file_with(&file, path, segment::Populate::Now).ok()?;
        Table::parse(bytes, segment, end_offset, data_end).ok()
    }

    /// Writes the in-memory table of the segment being written as a table file covering what
    /// it holds, so that the next process starts from it instead of walking the segment. Only
    /// for a log whose data is all durable (it is closed cleanly): recovery keeps such a table
    /// only while the segment is not cut below its end.
    pub fn persist(&self, partition: &Partition) -> Result<()> {
        let mut mem = self.mem.lock();
        let Some((segment, _)) = mem.as_ref() else {
            return Ok(());
        };
        if segment.end_offset() != u64::MAX {
            return Ok(());
        }
        let pin = segment.pin();
        let map = pin.map()?;
        let id = self.segment_id(&pin, &map);
        let table = self.caught_up(&mut mem, partition, &pin)?;
        let bytes = table.encode(&table.covers(&id));
        write_table(
            &segment::table_path(&partition.dir, pin.base_offset),
            &bytes,
        )
    }

    /// Walks the rest of a sealed segment into `table`, keeps the result as the segment's
    /// table and writes its file.
    fn finish_table(
        &self,
        partition: &Partition,
        pin: &SegmentPin,
        mut table: MemTable,
    ) -> Result<Arc<Table>> {
        let map = pin.map()?;
        let data = pin.data(&map);
        table
            .catch_up(data, pin.end_offset(), self.hash_kind)
            .map_err(|broken| Error::corrupt(&pin.path, broken.position, broken.reason))?;
        let of = table.covers(&self.segment_id(pin, &map));
        let bytes = table.encode(&of);
        let path = segment::table_path(&partition.dir, pin.base_offset);
        // Best effort: the table is derived, and a failed write only means that the next
        // process builds it again.
        if write_table(&path, &bytes).is_ok() {
            self.forget_file.lock().remove(&pin.base_offset);
        }
        let id = self.segment_id(pin, &map);
        let table = Table::parse(bytes.into(), &id, of.end_offset, of.end_position)
            .map_err(|reason| Error::corrupt(&path, 0, reason))?;
        let table = Arc::new(table);
        self.keep_table(pin.base_offset, table.clone());
        Ok(table)
    }

    /// Caches a sealed segment's table, within `TABLES_CACHED_MAX` (each one is a mapping).
    fn keep_table(&self, base_offset: u64, table: Arc<Table>) {
        let mut tables = self.tables.lock();
        if tables.len() >= TABLES_CACHED_MAX {
            // Any one: a table dropped is mapped again when needed.
            if let Some(&victim) = tables.keys().next() {
                tables.remove(&victim);
            }
        }
        tables.insert(base_offset, table);
    }
}

/// The partition's segment at `base_offset` (which exists: the caller holds a pin on it).
fn partition_segment(partition: &Partition, base_offset: u64) -> Arc<Segment> {
    let segments = partition.segments.read();
    let at = segments.partition_point(|s| s.base_offset < base_offset);
    segments[at].clone()
}

impl Source<'_> {
    fn entries(&self, hash: u64) -> Vec<KeyEntry> {
        match self {
            Source::Sealed(table) => table.key_entries(hash),
            Source::Mem(mem) => mem.key_entries(hash),
        }
    }
}

/// Whether retention deleted this sealed segment (its end is at or below the partition's start):
/// an error opening it then means it is gone, not damaged.
fn deleted(partition: &Partition, pin: &SegmentPin) -> bool {
    pin.end_offset() != u64::MAX && pin.end_offset() <= partition.start()
}

/// The segments that may hold visible records, oldest first.
fn visible_segments(partition: &Partition) -> Vec<Arc<Segment>> {
    let visible_end = partition.visible_end();
    let segments = partition.segments.read();
    let end = segments.partition_point(|s| s.base_offset < visible_end);
    segments[..end].to_vec()
}

/// Checks each entry's frame; returns the frames of `key` (positions and headers), in entry
/// order, or the position of an entry that points at no matching frame.
fn check_frames(
    data: &[u8],
    entries: &[KeyEntry],
    key: &[u8],
) -> std::result::Result<Vec<(usize, FrameInfo)>, u64> {
    let mut found = Vec::new();
    for entry in entries {
        let position = entry.position as usize;
        let info = match data.get(position..).map(frame::probe) {
            Some(Probe::Frame(info))
                if info.base_version == entry.base_version
                    && info.record_count == entry.count
                    && info.record_count > 0 =>
            {
                info
            }
            _ => return Err(u64::from(entry.position)),
        };
        let frame_key = &data[position..position + info.frame_len as usize][info.key_range()];
        if frame_key == key {
            found.push((position, info));
        }
    }
    Ok(found)
}

/// The key, frame and record index of the event with `id` at `index` of the frame at
/// `position`; `None` if it is not there.
fn check_id(
    map: &Bytes,
    data_len: usize,
    position: usize,
    index: u32,
    id: u128,
) -> Option<(Bytes, FrameInfo, u32)> {
    let data = &map[..data_len];
    let Probe::Frame(info) = frame::probe(data.get(position..)?) else {
        return None;
    };
    let frame_bytes = &data[position..position + info.frame_len as usize];
    let mut cursor = RecordCursor::new(&info);
    for _ in 0..index {
        cursor.next_record(frame_bytes).ok()??;
    }
    let ranges = cursor.next_record(frame_bytes).ok()??;
    if ranges.event_id != Some(id) {
        return None;
    }
    let key = info.key_range();
    let key = map.slice(position + key.start..position + key.end);
    Some((key, info, index))
}

/// Writes a table file: a temporary file renamed into place. Not synced: a table is derived,
/// checked by its checksums when read, and rebuilt when a crash took it.
fn write_table(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = io::tmp_path(path);
    let file = io::File::create_truncate(&tmp, &io::INDEX_FAULTS)?;
    file.write_all_at(bytes, 0)?;
    drop(file);
    io::rename(&tmp, path, &io::INDEX_FAULTS)
}
