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
use crate::stream::table::{HashKind, KeyEntry, Table, TableFor};
use crate::write::partition::Partition;
use crate::write::Appended;

/// The key lookup state of one partition.
pub(crate) struct StreamIndex {
    hash_kind: HashKind,
    /// Tables of sealed segments, by base offset, once loaded or built.
    tables: Mutex<HashMap<u64, Arc<Table>>>,
    /// The in-memory table of the newest segment that was consulted.
    mem: Mutex<Option<MemTable>>,
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
        }
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
        for segment in visible_segments(partition).iter().rev() {
            let pin = segment.pin();
            let map = pin.map()?;
            let data_len = pin.data(&map).len();
            let entry = if pin.end_offset() == u64::MAX {
                let mut mem = self.mem.lock();
                self.caught_up(&mut mem, partition, &pin, &map)?
                    .id_entry_of(id)
            } else {
                self.table_of(&pin, &map)?.id_entry_of(id)
            };
            let Some(entry) = entry else { continue };
            let found = check_id(&map, data_len, entry.position as usize, entry.index, id);
            let Some((key, info, index)) = found else {
                return Err(Error::corrupt(
                    &pin.path,
                    u64::from(entry.position),
                    "an id table points at a frame without that id",
                ));
            };
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
        Ok(None)
    }

    /// Calls `visit` with the frames of `key`, newest first, until it returns false.
    fn frames_newest_first(
        &self,
        partition: &Partition,
        key: &[u8],
        mut visit: impl FnMut(FoundFrame) -> bool,
    ) -> Result<()> {
        let hash = self.hash_kind.hash(key);
        for segment in visible_segments(partition).iter().rev() {
            let pin = segment.pin();
            let map = pin.map()?;
            let mut retried = false;
            loop {
                let (entries, sealed) = if pin.end_offset() == u64::MAX {
                    let mut mem = self.mem.lock();
                    let mem = self.caught_up(&mut mem, partition, &pin, &map)?;
                    (Source::Mem(mem).entries(hash), false)
                } else {
                    (
                        Source::Sealed(self.table_of(&pin, &map)?).entries(hash),
                        true,
                    )
                };
                let data = pin.data(&map);
                match check_frames(data, &entries, key) {
                    Ok(found) => {
                        for (position, info) in found.into_iter().rev() {
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
                    Err(position) if sealed && !retried => {
                        // The table lied: forget it (file included) and build it anew.
                        self.tables.lock().remove(&pin.base_offset);
                        let path = segment::table_path(&partition.dir, pin.base_offset);
                        let _ = io::remove_file(&path, &io::INDEX_FAULTS);
                        let _ = position;
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

    /// The in-memory table of the segment being written, caught up with what is visible.
    fn caught_up<'m>(
        &self,
        mem: &'m mut Option<MemTable>,
        partition: &Partition,
        pin: &SegmentPin,
        map: &Bytes,
    ) -> Result<&'m MemTable> {
        // The visible end first: the writer moves the segment's readable end before it, so the
        // bytes of every frame below it are within `data`.
        let end_offset = partition.visible_end().min(pin.end_offset());
        let data = pin.data(map);
        if mem
            .as_ref()
            .is_none_or(|m| m.base_offset != pin.base_offset)
        {
            *mem = Some(MemTable::new(pin.base_offset));
        }
        let table = mem.as_mut().expect("set above");
        if table.offset < end_offset {
            table
                .catch_up(data, end_offset, self.hash_kind)
                .map_err(|broken| Error::corrupt(&pin.path, broken.position, broken.reason))?;
        }
        Ok(table)
    }

    /// The table of a sealed segment: cached, else read from its file, else built from the
    /// segment (and its file written, for the next process).
    fn table_of(&self, pin: &SegmentPin, map: &Bytes) -> Result<Arc<Table>> {
        if let Some(table) = self.tables.lock().get(&pin.base_offset) {
            return Ok(table.clone());
        }
        let data = pin.data(map);
        let of = TableFor {
            base_offset: pin.base_offset,
            end_offset: pin.end_offset(),
            hash_kind: self.hash_kind,
            data_end: data.len() as u64,
        };
        let dir = pin.path.parent().unwrap_or(std::path::Path::new("."));
        let path = segment::table_path(dir, pin.base_offset);
        let from_file = std::fs::read(&path)
            .ok()
            .and_then(|bytes| Table::parse(bytes.into(), &of).ok());
        let table = match from_file {
            Some(table) => table,
            None => {
                let bytes = self.build_table(pin, data, &of)?;
                // Best effort: the table is derived, and a failed write only means the next
                // process builds it again.
                let _ = write_table(&path, &bytes);
                Table::parse(bytes.into(), &of)
                    .map_err(|reason| Error::corrupt(&path, 0, reason))?
            }
        };
        let table = Arc::new(table);
        self.tables.lock().insert(pin.base_offset, table.clone());
        Ok(table)
    }

    /// Walks a sealed segment (continuing the in-memory table when it holds this segment).
    fn build_table(&self, pin: &SegmentPin, data: &[u8], of: &TableFor) -> Result<Vec<u8>> {
        let mut mem = self.mem.lock();
        let mut own;
        let table = match mem.as_mut() {
            Some(table) if table.base_offset == pin.base_offset => table,
            _ => {
                own = MemTable::new(pin.base_offset);
                &mut own
            }
        };
        table
            .catch_up(data, of.end_offset, self.hash_kind)
            .map_err(|broken| Error::corrupt(&pin.path, broken.position, broken.reason))?;
        if table.position != data.len() as u64 && pin.end_position() != u64::MAX {
            return Err(Error::corrupt(
                &pin.path,
                table.position,
                "bytes after the last frame of a sealed segment",
            ));
        }
        let bytes = table.encode(of);
        if mem
            .as_ref()
            .is_some_and(|m| m.base_offset == pin.base_offset)
        {
            *mem = None;
        }
        Ok(bytes)
    }
}

impl Source<'_> {
    fn entries(&self, hash: u64) -> Vec<KeyEntry> {
        match self {
            Source::Sealed(table) => table.key_entries(hash),
            Source::Mem(mem) => mem.key_entries(hash).to_vec(),
        }
    }
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
