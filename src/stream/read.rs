//! Reading by key, by time and in the global order: the read side of aggregate streams.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::Log;
use crate::reader::Reader;
use crate::record::Record;
use crate::storage::frame::RecordCursor;
use crate::storage::segment;
use crate::stream::snapshot::Snapshot;
use crate::write::partition::Partition;

impl Log {
    /// The events of `key` from version `from_version` on, in version order: what an
    /// event-sourced application replays to load one aggregate. Found through the key tables
    /// of the key's partition, never by scanning it; only visible events are returned.
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use annal::{Event, Expected, Log, Options};
    /// let log = Log::open(dir.path(), Options::default())?;
    /// log.append(b"cart-1", b"added apple")?;
    /// log.append(b"cart-2", b"added pear")?;
    /// log.append(b"cart-1", b"added plum")?;
    /// let cart: Vec<_> = log.read_key(b"cart-1", 0)?;
    /// assert_eq!(cart.len(), 2);
    /// assert_eq!((cart[1].version, cart[1].payload.as_ref()), (1, &b"added plum"[..]));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::EmptyKey`], [`Error::KeyTooLarge`], [`Error::Corrupt`] if a frame of the key
    /// fails its checks, [`Error::UsedAfterFork`], I/O errors while mapping a segment.
    pub fn read_key(&self, key: &[u8], from_version: u64) -> Result<Vec<Record>> {
        self.read_key_while(key, from_version, |_| true)
    }

    /// The events of `key` appended at or before `timestamp_ms` (milliseconds since the Unix
    /// epoch), in version order: the aggregate as it was at that moment.
    ///
    /// # Errors
    ///
    /// As [`read_key`](Self::read_key).
    pub fn read_key_until(&self, key: &[u8], timestamp_ms: u64) -> Result<Vec<Record>> {
        self.read_key_while(key, 0, |record| record.timestamp_ms <= timestamp_ms)
    }

    /// The version of `key`'s last visible event; `None` if it has none.
    ///
    /// # Errors
    ///
    /// As [`read_key`](Self::read_key).
    pub fn last_version(&self, key: &[u8]) -> Result<Option<u64>> {
        self.check_process()?;
        let partition = self.partition(self.route(key)?)?;
        partition.streams.last_version(partition, key)
    }

    fn read_key_while(
        &self,
        key: &[u8],
        from_version: u64,
        keep: impl FnMut(&Record) -> bool,
    ) -> Result<Vec<Record>> {
        self.check_process()?;
        let partition = self.partition(self.route(key)?)?;
        key_records(partition, key, from_version, keep)
    }

    /// The first offset of `partition` whose event was appended at or after `timestamp_ms`;
    /// the partition's visible end if there is none. Timestamps never decrease in the log, so
    /// this is a binary search over the partition's sparse index, not a scan.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`], and errors reading the partition.
    pub fn offset_for_timestamp(&self, partition: u32, timestamp_ms: u64) -> Result<u64> {
        self.check_process()?;
        let partition = self.partition(partition)?;
        first_offset_where(partition, |record| record.timestamp_ms >= timestamp_ms)
    }

    /// Reads every partition as one stream in the log's global order, from global position
    /// `from_global`: the order in which appends were made durable, without gaps, with each
    /// key's (and each partition's) order kept. Like [`Reader`], the iterator returns `None`
    /// when it reaches what is visible, and can be polled again.
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use annal::{Log, Options};
    /// let log = Log::open(dir.path(), Options::default())?;
    /// for key in [&b"a"[..], b"b", b"c", b"a"] {
    ///     log.append(key, b"event")?;
    /// }
    /// log.flush()?;
    /// let all: Vec<u64> = log.read_all(1)?.map(|r| r.map(|r| r.global_position)).collect::<Result<_, _>>()?;
    /// assert_eq!(all, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Errors reading the partitions; then from the iterator.
    pub fn read_all(&self, from_global: u64) -> Result<GlobalReader> {
        self.check_process()?;
        let mut readers = Vec::with_capacity(self.partition_count() as usize);
        for p in 0..self.partition_count() {
            let partition = self.partition(p)?;
            let offset = first_offset_where(partition, |r| r.global_position >= from_global)?;
            readers.push(Reader::new(partition.clone(), offset));
        }
        let groups = self.shared.config.groups_partition() as usize;
        let mut reader = GlobalReader {
            readers,
            heads: BinaryHeap::new(),
            dry: Vec::new(),
            next_global: from_global,
            failed: false,
            progress: self.shared.progress.clone(),
            groups: self.shared.partitions[groups].clone(),
        };
        reader.dry = (0..reader.readers.len()).collect();
        Ok(reader)
    }
}

/// The visible events of `key` in `partition` from version `from_version` on, in version
/// order, while `keep` says so (the first event it refuses ends the list).
pub(crate) fn key_records(
    partition: &Partition,
    key: &[u8],
    from_version: u64,
    mut keep: impl FnMut(&Record) -> bool,
) -> Result<Vec<Record>> {
    let frames = partition.streams.key_frames(partition, key, from_version)?;
    let mut records = Vec::new();
    for found in frames {
        let end = found.position + found.info.frame_len as usize;
        let frame_bytes = &found.map[found.position..end];
        let mut cursor = RecordCursor::new(&found.info);
        let mut index = 0u64;
        loop {
            let ranges = match cursor.next_record(frame_bytes) {
                Ok(Some(ranges)) => ranges,
                Ok(None) => break,
                Err(damage) => {
                    let path = segment::segment_path(&partition.dir, found.segment_base);
                    return Err(Error::corrupt(path, found.position as u64, damage));
                }
            };
            let record = Record::from_frame(
                partition.id,
                &found.map,
                found.position,
                &found.info,
                ranges,
                index,
            );
            index += 1;
            if record.version < from_version {
                continue;
            }
            if !keep(&record) {
                return Ok(records);
            }
            records.push(record);
        }
    }
    Ok(records)
}

/// The offset of version `version` of `key` in `partition`, if that event is visible.
pub(crate) fn version_offset(
    partition: &Partition,
    key: &[u8],
    version: u64,
) -> Result<Option<u64>> {
    let frames = partition.streams.key_frames(partition, key, version)?;
    Ok(frames.first().and_then(|found| {
        let info = &found.info;
        let within = version
            .checked_sub(info.base_version)
            .filter(|&i| i < u64::from(info.record_count));
        within.map(|i| info.base_offset + i)
    }))
}

/// The first offset of the partition whose record satisfies `past` (a predicate that is false
/// and then true along the partition), or the visible end.
pub(crate) fn first_offset_where(
    partition: &Arc<Partition>,
    past: impl Fn(&Record) -> bool,
) -> Result<u64> {
    let (mut low, mut high) = (partition.start(), partition.visible_end());
    while low < high {
        let mid = low + (high - low) / 2;
        let record = Reader::new(partition.clone(), mid).next().transpose()?;
        match record {
            Some(record) if !past(&record) => low = mid + 1,
            _ => high = mid,
        }
    }
    Ok(low)
}

/// The log read in global order ([`Log::read_all`]).
pub struct GlobalReader {
    readers: Vec<Reader>,
    /// The next record of each partition that has one, by global position.
    heads: BinaryHeap<Reverse<(u64, usize, RecordSlot)>>,
    /// Partitions without a head: polled again when the next position is not at a head.
    dry: Vec<usize>,
    next_global: u64,
    failed: bool,
    /// To tell a position that retention deleted from one not visible yet.
    progress: Arc<crate::write::ticket::Progress>,
    groups: Arc<Partition>,
}

/// A record in the heap, ordered by nothing (the position before it decides).
struct RecordSlot(Record);

impl PartialEq for RecordSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RecordSlot {}
impl PartialOrd for RecordSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RecordSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl GlobalReader {
    /// The global position of the next record this reader returns.
    pub fn next_global_position(&self) -> u64 {
        self.next_global
    }

    fn refill(&mut self) -> Result<()> {
        let mut still_dry = Vec::new();
        for p in std::mem::take(&mut self.dry) {
            match self.readers[p].next().transpose()? {
                Some(record) => {
                    self.heads
                        .push(Reverse((record.global_position, p, RecordSlot(record))));
                }
                None => still_dry.push(p),
            }
        }
        self.dry = still_dry;
        Ok(())
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        let at_head = |heads: &BinaryHeap<Reverse<(u64, usize, RecordSlot)>>, next| {
            heads.peek().is_some_and(|Reverse((g, _, _))| *g == next)
        };
        if !at_head(&self.heads, self.next_global) {
            // Every global position below this was visible before the refill: each event
            // takes a journal index, and all but the groups partition's a global position.
            let visible = self
                .progress
                .done_journal()
                .saturating_sub(self.groups.visible_end());
            self.refill()?;
            if !at_head(&self.heads, self.next_global) {
                if self.next_global >= visible {
                    // Not visible yet in its partition (a round is published partition by
                    // partition): stop here rather than skip it.
                    return Ok(None);
                }
                // Visible, yet in no partition from where its readers are: retention deleted
                // it. Go on from the next position left.
                let next_head = self.heads.peek().map(|Reverse((g, _, _))| *g);
                self.next_global = next_head.unwrap_or(visible).min(visible);
                if !at_head(&self.heads, self.next_global) {
                    return Ok(None);
                }
            }
        }
        let Reverse((_, p, RecordSlot(record))) = self.heads.pop().expect("checked above");
        self.next_global += 1;
        match self.readers[p].next().transpose()? {
            Some(next) => self
                .heads
                .push(Reverse((next.global_position, p, RecordSlot(next)))),
            None => self.dry.push(p),
        }
        Ok(Some(record))
    }
}

impl Iterator for GlobalReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

impl Log {
    /// Stores a snapshot of `key`'s aggregate as of `version` (the last event folded into
    /// `state`). Crash-safe: after any crash, [`load`](Self::load) finds this snapshot or the
    /// one before it, never a damaged one. A key keeps its two newest snapshots.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if the key has no event at `version` yet (a snapshot must describe
    /// events in the log), [`Error::SnapshotTooLarge`], key errors, I/O errors.
    pub fn save_snapshot(&self, key: &[u8], version: u64, state: &[u8]) -> Result<()> {
        let last = self.last_version(key)?;
        if last.is_none_or(|last| version > last) {
            return Err(Error::Conflict {
                key: bytes::Bytes::copy_from_slice(key),
                expected: crate::Expected::Exact(version),
                actual: last,
            });
        }
        self.snapshots.save(key, version, state)
    }

    /// Loads `key`'s aggregate: its newest valid snapshot (if any) and the events after it,
    /// in version order. Without a snapshot, all of the key's events. A snapshot is used only
    /// if its version is among the key's events in the log (the log is the truth).
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use annal::{Log, Options};
    /// let log = Log::open(dir.path(), Options::default())?;
    /// for amount in [10, 20, 30] {
    ///     log.append(b"account-7", amount.to_string().as_bytes())?;
    /// }
    /// log.save_snapshot(b"account-7", 1, b"balance=30")?;
    /// let (snapshot, rest) = log.load(b"account-7")?;
    /// assert_eq!(snapshot.unwrap().state.as_ref(), b"balance=30");
    /// assert_eq!(rest.len(), 1); // version 2 only
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`read_key`](Self::read_key), and I/O errors reading the snapshot directory.
    pub fn load(&self, key: &[u8]) -> Result<(Option<Snapshot>, Vec<Record>)> {
        let Some(last) = self.last_version(key)? else {
            return Ok((None, Vec::new()));
        };
        let snapshot = self.snapshots.load_at_or_before(key, last)?;
        let from = snapshot.as_ref().map_or(0, |s| s.version + 1);
        Ok((snapshot, self.read_key(key, from)?))
    }
}
