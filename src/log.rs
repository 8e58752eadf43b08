//! [`Log`]: open, append, read, flush, close. It owns the directory lock and the partitions.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::options::{Durability, Options, PARTITIONS_DEFAULT};
use crate::reader::Reader;
use crate::record::Event;
use crate::storage::hash;
use crate::storage::io;
use crate::storage::meta::{self, Meta};
use crate::write::partition::{now_ms, Appended, Config, Partition, Stats, Ticket};
use crate::write::recovery::{self, RecoveryReport};
use crate::write::writer::Writer;

/// An open event log: a directory of partitions, each a sequence of segment files.
///
/// `Log` is `Send + Sync`: share it between threads by reference or in an `Arc`. Concurrent
/// appends to one partition are ordered by the partition and share fsyncs.
///
/// ```
/// # fn main() -> annal::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use annal::{Durability, Event, Log, Options};
/// let log = Log::open(dir.path(), Options::default().partitions(4).durability(Durability::Sync))?;
/// let at = log.append(b"order-42", b"{\"type\":\"OrderPlaced\"}")?; // durable when it returns
/// let batch = [Event::new(b"a").header("type", "ItemAdded"), Event::new(b"b")];
/// log.append_batch(b"order-42", &batch)?; // all or nothing
/// let records: Vec<_> = log.read(at.partition, at.offset)?.collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 3);
/// assert_eq!(records[1].header("type").unwrap().as_ref(), b"ItemAdded");
/// log.close()?;
/// # Ok(()) }
/// ```
pub struct Log {
    dir: PathBuf,
    options: Options,
    partitions: Vec<Arc<Partition>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    reports: Vec<RecoveryReport>,
    /// Held for the life of the `Log`: its `flock` keeps other `Log`s out of the directory.
    _lock: File,
}

impl Log {
    /// Opens the log in `dir`, creating it if it does not exist, and recovers every partition.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another `Log` has the directory open, [`Error::NotADirectory`],
    /// [`Error::IncompatibleFormat`], [`Error::PartitionCountMismatch`], [`Error::Corrupt`] for
    /// damaged metadata or segment headers, [`Error::InvalidOptions`], and I/O errors.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Log> {
        options.validate()?;
        let dir = dir.as_ref().to_owned();
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotADirectory { path: dir });
        }
        let faults = options.fail_points.clone();
        io::create_dir_all_durable(&dir, &faults)?;
        let lock = meta::lock(&dir)?;
        let meta = match Meta::read(&dir)? {
            Some(meta) => {
                if let Some(requested) = options.partitions {
                    if requested != meta.partitions {
                        return Err(Error::PartitionCountMismatch {
                            path: dir,
                            on_disk: meta.partitions,
                            requested,
                        });
                    }
                }
                meta
            }
            None => {
                if has_partition_dirs(&dir)? {
                    return Err(Error::corrupt(
                        dir.join(meta::META_FILE),
                        0,
                        "metadata file missing from a directory that holds partitions",
                    ));
                }
                let meta = Meta {
                    partitions: options.partitions.unwrap_or(PARTITIONS_DEFAULT),
                    created_ms: now_ms(),
                };
                meta.write(&dir, &faults)?;
                meta
            }
        };
        let mut created_dirs = false;
        for id in 0..meta.partitions {
            let path = partition_dir(&dir, id);
            if !path.is_dir() {
                io::create_dir_all(&path)?;
                created_dirs = true;
            }
        }
        if created_dirs {
            io::sync_dir(&dir, &faults)?;
        }

        let config = Arc::new(Config::new(&options));
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        let mut recovered_writers = Vec::with_capacity(meta.partitions as usize);
        let mut reports = Vec::with_capacity(meta.partitions as usize);
        for id in 0..meta.partitions {
            let path = partition_dir(&dir, id);
            let recovered = recovery::recover_partition(&path, id, &config)?;
            let partition = Arc::new(Partition::new(
                id,
                path,
                config.clone(),
                recovered.segments,
                recovered.end_offset,
                recovered.last_timestamp_ms,
            ));
            reports.push(recovered.report);
            recovered_writers.push(Writer::new(
                partition.clone(),
                recovered.active,
                recovered.last_timestamp_ms,
            ));
            partitions.push(partition);
        }
        let log = Log {
            dir,
            options,
            partitions,
            writers: Mutex::new(Vec::with_capacity(recovered_writers.len())),
            reports,
            _lock: lock,
        };
        for (id, writer) in recovered_writers.into_iter().enumerate() {
            let handle = std::thread::Builder::new()
                .name(format!("annal-writer-{id}"))
                .spawn(move || writer.run())
                // Dropping `log` on this error stops and joins the writers already started.
                .map_err(|e| Error::io("spawn writer thread", &log.dir, e))?;
            log.writers.lock().push(handle);
        }
        Ok(log)
    }

    /// Appends one event under `key`. Under [`Durability::Sync`] it returns once the event is
    /// durable; otherwise once it is queued (see [`Durability`]).
    ///
    /// # Errors
    ///
    /// Limits ([`Error::EmptyKey`], [`Error::KeyTooLarge`], [`Error::EventTooLarge`], ...),
    /// [`Error::AppendFailed`] (not appended; later appends may succeed), [`Error::Poisoned`],
    /// [`Error::Closed`].
    pub fn append<'e>(&self, key: &[u8], event: impl Into<Event<'e>>) -> Result<Appended> {
        self.append_events(key, &[event.into()])
    }

    /// Appends several events under one key as one frame with one checksum: after any crash
    /// either all of them are in the log, at consecutive offsets, or none is.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append), plus [`Error::EmptyBatch`], [`Error::BatchTooManyEvents`]
    /// and [`Error::BatchTooLarge`].
    pub fn append_batch<'e, I>(&self, key: &[u8], events: I) -> Result<Appended>
    where
        I: IntoIterator,
        I::Item: Into<Event<'e>>,
    {
        self.append_events(key, &collect(events))
    }

    /// Appends events that are already converted: no caller code runs under the queue lock.
    fn append_events(&self, key: &[u8], events: &[Event<'_>]) -> Result<Appended> {
        let partition = self.route(key)?;
        match self.options.durability {
            Durability::Sync => partition.enqueue_with_ticket(key, events)?.wait(),
            Durability::Interval(_) | Durability::Buffered => partition.enqueue(key, events),
        }
    }

    /// Queues one event and returns at once with a [`Ticket`]; [`Ticket::wait`] returns when it
    /// is durable. Many appends can be in flight from one thread; they share fsyncs.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append), for what can be checked before the write.
    pub fn append_pipelined<'e>(&self, key: &[u8], event: impl Into<Event<'e>>) -> Result<Ticket> {
        self.route(key)?.enqueue_with_ticket(key, &[event.into()])
    }

    /// Queues one batch (see [`append_batch`](Self::append_batch)) and returns a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`append_batch`](Self::append_batch), for what can be checked before the write.
    pub fn append_batch_pipelined<'e, I>(&self, key: &[u8], events: I) -> Result<Ticket>
    where
        I: IntoIterator,
        I::Item: Into<Event<'e>>,
    {
        self.route(key)?.enqueue_with_ticket(key, &collect(events))
    }

    /// Checks a key and returns the partition it belongs to.
    fn route(&self, key: &[u8]) -> Result<&Arc<Partition>> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let key_limit = u64::from(self.options.key_bytes_max);
        if key.len() as u64 > key_limit {
            return Err(Error::KeyTooLarge {
                bytes: key.len() as u64,
                limit: key_limit,
            });
        }
        Ok(&self.partitions[self.partition_for(key) as usize])
    }

    /// Reads `partition` in offset order from `from_offset`, up to what is visible (see
    /// [`Reader`]).
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`]. Errors while reading come from the iterator.
    pub fn read(&self, partition: u32, from_offset: u64) -> Result<Reader> {
        Ok(Reader::new(self.partition(partition)?.clone(), from_offset))
    }

    /// The partition that `key`'s events go to: `hash(key) % partitions` (`docs/format.md`).
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        // Meta::decode and Options::validate both refuse a count of zero.
        let partitions = std::num::NonZeroU32::new(self.partitions.len() as u32)
            .expect("a log has at least one partition");
        hash::partition_for(key, partitions)
    }

    /// Number of partitions, fixed when the log was created.
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// One past the last offset readers can see in `partition`.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`].
    pub fn end_offset(&self, partition: u32) -> Result<u64> {
        Ok(self.partition(partition)?.visible_end())
    }

    /// What recovery found and did in `partition` when the log was opened.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`].
    pub fn recovery_report(&self, partition: u32) -> Result<RecoveryReport> {
        self.partition(partition)?;
        Ok(self.reports[partition as usize])
    }

    /// What the writers did since the log was opened, summed over all partitions.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for partition in &self.partitions {
            stats.add(&partition.counters);
        }
        stats
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes and syncs everything appended before this call, in every durability mode.
    ///
    /// # Errors
    ///
    /// [`Error::AppendFailed`] if a write failure since the last flush or close lost appends that
    /// had been acknowledged before their write (`Interval`, `Buffered`; each failure is reported
    /// once; those appends are not in the log). Under `Sync` every failure was already returned
    /// to its appender and is not reported again. [`Error::Poisoned`] after a failed fsync.
    pub fn flush(&self) -> Result<()> {
        let mut first_error = None;
        for partition in &self.partitions {
            if let Err(error) = partition.flush() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes and syncs everything queued, stops the writer threads and releases the directory.
    /// Dropping a `Log` does the same but cannot report errors.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush): a failure not reported before, or [`Error::Poisoned`].
    pub fn close(self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&self) -> Result<()> {
        let writers = std::mem::take(&mut *self.writers.lock());
        if writers.is_empty() {
            return Ok(());
        }
        for partition in &self.partitions {
            let mut queue = partition.queue.lock();
            queue.closing = true;
            partition.work.notify_one();
            drop(queue);
            partition.space.notify_all();
        }
        // A writer that panicked has poisoned its partition (see commit.rs), which is reported
        // below; the join error itself carries nothing more.
        for writer in writers {
            let _ = writer.join();
        }
        let mut first_error = None;
        for partition in &self.partitions {
            let mut status = partition.status.lock();
            let error = match (status.poisoned.clone(), status.unreported.take()) {
                (Some(source), _) => Some(Error::Poisoned {
                    partition: partition.id,
                    source,
                }),
                (None, Some(source)) => Some(Error::AppendFailed {
                    partition: partition.id,
                    source,
                }),
                (None, None) => None,
            };
            if first_error.is_none() {
                first_error = error;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn partition(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(partition as usize)
            .ok_or(Error::PartitionOutOfRange {
                partition,
                partitions: self.partitions.len() as u32,
            })
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("partitions", &self.partitions.len())
            .field("durability", &self.options.durability)
            .finish()
    }
}

/// Converts a caller's events before any lock is taken: the caller's iterator may do anything,
/// including panic or append to this log, and must not do it while a partition is locked.
fn collect<'e, I>(events: I) -> Vec<Event<'e>>
where
    I: IntoIterator,
    I::Item: Into<Event<'e>>,
{
    events.into_iter().map(Into::into).collect()
}

/// The directory of partition `id`: `p0000`, `p0001`, ...
pub(crate) fn partition_dir(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("p{id:04}"))
}

fn has_partition_dirs(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() == 5 && name.starts_with('p') && name[1..].bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(true);
        }
    }
    Ok(false)
}
