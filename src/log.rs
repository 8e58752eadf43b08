//! [`Log`]: open, append, read, flush, close. It owns the directory lock and the writer thread.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::consumer::{Group, Groups};
use crate::error::{Error, Result};
use crate::options::{Options, PARTITIONS_DEFAULT};
use crate::reader::Reader;
use crate::record::Event;
use crate::storage::hash;
use crate::storage::io;
use crate::storage::meta::{self, Meta};
use crate::stream::indexer::Indexer;
use crate::stream::snapshot::SnapshotStore;
use crate::stream::Expected;
use crate::write::journal::JournalWriter;
use crate::write::partition::Partition;
use crate::write::recovery::{self, RecoveryReport};
use crate::write::sequencer::{KeyWrite, Queued, Sequencer};
use crate::write::ticket::{Progress, Ticket};
use crate::write::writer::{Writer, WriterStart};
use crate::write::{now_ms, Appended, Config, Counters, Shared};
use crate::Durability;

/// An open event log: a directory of partitions, each a sequence of segment files, and the
/// journal that makes appends to all of them durable with one fsync.
///
/// `Log` is `Send + Sync`: share it between threads by reference or in an `Arc`. Concurrent
/// appends, to any partitions, share fsyncs.
///
/// A `Log` belongs to the process that opened it: after `fork`, the child's copy has no writer
/// thread, and every call on it fails with [`Error::UsedAfterFork`]. The directory lock is
/// inherited by the child as long as it runs (the lock file is opened with `O_CLOEXEC`, so an
/// `exec` releases it).
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
    pub(crate) shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Builds the key tables of sealed segments in the background (`stream/indexer.rs`).
    indexer: Mutex<Option<Indexer>>,
    report: RecoveryReport,
    pub(crate) snapshots: SnapshotStore,
    groups: Arc<Groups>,
    /// When the log was created (ms since the Unix epoch, from `annal.meta`).
    created_ms: u64,
    /// The process that opened the log: only it has the writer thread.
    pid: u32,
    /// Held for the life of the `Log`: its `flock` keeps other `Log`s out of the directory.
    _lock: File,
}

/// Set in a child process right after `fork`: the `Log`s it inherited have no writer thread.
/// (Logs the child opens itself are told apart by their process id.)
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn mark_forked() {
    FORKED.store(true, Ordering::Relaxed);
}

fn watch_for_fork() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe
        // as the child side of fork requires; no other state is touched.
        unsafe {
            libc::pthread_atfork(None, None, Some(mark_forked));
        }
    });
}

impl Log {
    /// Opens the log in `dir`, creating it if it does not exist, and recovers it. The path is
    /// resolved once, here: later changes of the working directory do not move the log.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another `Log` has the directory open, [`Error::NotADirectory`],
    /// [`Error::IncompatibleFormat`], [`Error::PartitionCountMismatch`], [`Error::Corrupt`] for
    /// damaged metadata, journal or segment headers, or damage that destroyed synced data,
    /// [`Error::InvalidOptions`], and I/O errors.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Log> {
        options.validate()?;
        watch_for_fork();
        let dir = absolute(dir.as_ref())?;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotADirectory { path: dir });
        }
        let faults = options.fail_points.clone();
        io::create_dir_all_durable(&dir, &faults)?;
        let lock = meta::lock(&dir)?;
        // A process killed between creating a directory here (a partition's, the snapshots
        // directory, a key's snapshot directory) and syncing its parent left an entry that a
        // power cut may still take: make every such entry durable before relying on it.
        io::sync_dir(&dir, &faults)?;
        let snapshots = dir.join(crate::stream::snapshot::SNAPSHOTS_DIR);
        if snapshots.is_dir() {
            io::sync_dir(&snapshots, &faults)?;
        }
        let meta = match Meta::read(&dir, &faults)? {
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
            None => create(&dir, &options)?,
        };

        let config = Arc::new(Config::new(&options, meta.partitions));
        let counters = Arc::new(Counters::default());
        let recovered = recovery::recover(&dir, &config, &counters)?;
        let progress = Arc::new(Progress::new(recovered.start.next_journal));
        let journal_end = recovered.start.next_journal;
        let last_timestamp_ms = recovered.start.last_timestamp_ms;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config: config.clone(),
            sequencer: Sequencer::new(config, recovered.start),
            progress,
            partitions: recovered.partitions,
            counters,
            retention_lock: parking_lot::Mutex::new(()),
        });
        let groups = Arc::new(Groups::default());
        // Retention runs in the indexer's thread, after each sealed segment and every second.
        let retention: Option<crate::stream::indexer::Chore> =
            shared.config.retention.any().then(|| {
                let (shared, groups) = (Arc::downgrade(&shared), Arc::downgrade(&groups));
                Box::new(move || {
                    if let (Some(shared), Some(groups)) = (shared.upgrade(), groups.upgrade()) {
                        // Best effort: an error (I/O) is met again by the next run, or reported
                        // by `enforce_retention`.
                        let _ = crate::retention::enforce(&shared, &groups);
                    }
                }) as crate::stream::indexer::Chore
            });
        let indexer = Indexer::start(&shared.partitions, retention)?;
        let writer = Writer::new(
            shared.clone(),
            WriterStart {
                lanes: recovered.lanes,
                journal: recovered.journal,
                journal_end,
                last_timestamp_ms,
            },
        );
        let handle = std::thread::Builder::new()
            .name("annal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawn writer thread", &dir, e))?;
        let snapshots = SnapshotStore::new(&dir, options.fail_points.clone());
        Ok(Log {
            dir,
            options,
            shared,
            writer: Mutex::new(Some(handle)),
            indexer: Mutex::new(Some(indexer)),
            report: recovered.report,
            snapshots,
            groups,
            created_ms: meta.created_ms,
            pid: std::process::id(),
            _lock: lock,
        })
    }

    /// Appends one event under `key`. Under [`Durability::Sync`] it returns once the event is
    /// durable; otherwise once it is queued (see [`Durability`]).
    ///
    /// # Errors
    ///
    /// Limits ([`Error::EmptyKey`], [`Error::KeyTooLarge`], [`Error::EventTooLarge`], ...),
    /// [`Error::AppendFailed`] (not appended; later appends may succeed),
    /// [`Error::WritesStalled`] (writes fail, e.g. on a full disk; nothing was queued),
    /// [`Error::Poisoned`], [`Error::Closed`], [`Error::UsedAfterFork`].
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
        self.append_to(key, Expected::Any, events)
    }

    /// Queues one event and returns at once with a [`Ticket`]; [`Ticket::wait`] returns when it
    /// is durable. Many appends can be in flight from one thread; they share fsyncs.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append), for what can be checked before the write.
    pub fn append_pipelined<'e>(&self, key: &[u8], event: impl Into<Event<'e>>) -> Result<Ticket> {
        self.append_to_pipelined(key, Expected::Any, &[event.into()])
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
        self.append_to_pipelined(key, Expected::Any, &collect(events))
    }

    /// Appends `events` to `key`'s stream as one batch (all or nothing), if the stream is as
    /// `expected`; returns where they went, with their versions. Returns like
    /// [`append`](Self::append): under `Sync` once durable.
    ///
    /// The check is atomic with the assignment of the versions: of several appenders racing
    /// with `Expected::Exact(n)` on one key, exactly one succeeds.
    ///
    /// Events may carry ids ([`Event::id`]). If every event's id is already in the key's
    /// stream, nothing is written and the original positions come back, with
    /// [`Appended::duplicate`] set, whatever `expected` says and however old the original is:
    /// a retry after a crash or a timeout is safe.
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use annal::{Error, Event, Expected, Log, Options};
    /// let log = Log::open(dir.path(), Options::default())?;
    /// let opened = log.append_to(b"account-7", Expected::NoStream, &[Event::new(b"opened").id(1)])?;
    /// assert_eq!(opened.version, 0);
    /// let deposit = [Event::new(b"deposited 10").id(2)];
    /// let at = log.append_to(b"account-7", Expected::Exact(opened.last_version()), &deposit)?;
    /// assert_eq!(at.version, 1);
    /// // A stale writer is refused, and nothing is written.
    /// let stale = log.append_to(b"account-7", Expected::Exact(0), &[Event::new(b"withdrew 5")]);
    /// assert!(matches!(stale, Err(Error::Conflict { actual: Some(1), .. })));
    /// // A retry of the deposit (same id) writes nothing and returns the original place.
    /// let retry = log.append_to(b"account-7", Expected::Exact(0), &deposit)?;
    /// assert!(retry.duplicate && retry.offset == at.offset);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] (nothing written), [`Error::IdsPartlyPresent`] and
    /// [`Error::IdReused`] (nothing written), and the errors of
    /// [`append_batch`](Self::append_batch).
    pub fn append_to(
        &self,
        key: &[u8],
        expected: Expected,
        events: &[Event<'_>],
    ) -> Result<Appended> {
        let queued = self.enqueue_one(key, expected, events)?;
        match self.options.durability {
            Durability::Sync => queued.ticket(&self.shared.progress).wait(),
            Durability::Interval(_) | Durability::Buffered => Ok(queued.first),
        }
    }

    /// [`append_to`](Self::append_to) without waiting: returns a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`append_to`](Self::append_to), for what can be checked before the write.
    pub fn append_to_pipelined(
        &self,
        key: &[u8],
        expected: Expected,
        events: &[Event<'_>],
    ) -> Result<Ticket> {
        let queued = self.enqueue_one(key, expected, events)?;
        Ok(queued.ticket(&self.shared.progress))
    }

    /// Appends to several keys (in any partitions) atomically: after any crash, all of the
    /// keys' events are in the log or none is. Each key has its own expected version; if any
    /// does not hold, nothing is written. Returns each key's place, in the order given.
    ///
    /// All the events together must fit [`Options::batch_bytes_max`](crate::Options).
    ///
    /// # Errors
    ///
    /// As [`append_to`](Self::append_to), plus [`Error::RepeatedKey`].
    pub fn append_multi(&self, appends: &[KeyAppend<'_, '_>]) -> Result<Vec<Appended>> {
        if appends.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let queued = self.enqueue(appends)?;
        let appended = queued.all();
        if self.options.durability == Durability::Sync {
            queued.ticket(&self.shared.progress).wait()?;
        }
        Ok(appended)
    }

    /// One key's append: no allocation on the way to the sequencer.
    fn enqueue_one(&self, key: &[u8], expected: Expected, events: &[Event<'_>]) -> Result<Queued> {
        self.check_process()?;
        let write = [KeyWrite {
            partition: self.route(key)?,
            key,
            expected,
            events,
        }];
        self.shared
            .sequencer
            .enqueue(&self.shared.partitions, &write)
    }

    fn enqueue(&self, appends: &[KeyAppend<'_, '_>]) -> Result<Queued> {
        self.check_process()?;
        let mut writes = Vec::with_capacity(appends.len());
        for append in appends {
            writes.push(KeyWrite {
                partition: self.route(append.key)?,
                key: append.key,
                expected: append.expected,
                events: append.events,
            });
        }
        self.shared
            .sequencer
            .enqueue(&self.shared.partitions, &writes)
    }

    /// Checks a key and returns the partition it belongs to.
    pub(crate) fn route(&self, key: &[u8]) -> Result<u32> {
        self.shared.route(key)
    }

    /// The consumer group `name` (1 to 255 bytes): its committed cursors are loaded from the
    /// log (a group never committed to starts at the earliest offsets). Members join it with
    /// [`Group::join`].
    ///
    /// ```
    /// # fn main() -> annal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// use annal::{Log, Options};
    /// let log = Log::open(dir.path(), Options::default())?;
    /// log.append(b"order-1", b"placed")?;
    /// let mut consumer = log.group("projections")?.join()?;
    /// let batch = consumer.poll(1_000, Duration::from_millis(100))?;
    /// for delivery in &batch {
    ///     assert_eq!(delivery.record.payload.as_ref(), b"placed");
    /// }
    /// consumer.commit(&batch)?; // durable: after a restart, delivery resumes after it
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for a bad name, errors reading the group's record.
    pub fn group(&self, name: &str) -> Result<Group> {
        self.check_process()?;
        Group::open(&self.shared, &self.groups, name)
    }

    /// Deletes the group `name`: its cursors go back to the start, durably, and it is no
    /// longer listed by [`group_names`](Self::group_names) until it commits again.
    ///
    /// # Errors
    ///
    /// [`Error::GroupInUse`] while the group has members, and the errors of appends.
    pub fn delete_group(&self, name: &str) -> Result<()> {
        self.check_process()?;
        Group::open(&self.shared, &self.groups, name)?.delete()
    }

    /// The names of the groups that committed (or were reset) and were not deleted since, in
    /// name order. Reads the
    /// groups partition (a record per commit): meant for tools, not for every request.
    ///
    /// # Errors
    ///
    /// Errors reading the groups partition.
    pub fn group_names(&self) -> Result<Vec<String>> {
        self.check_process()?;
        self.groups.names(&self.shared)
    }

    /// Reads `partition` in offset order from `from_offset`, up to what is visible (see
    /// [`Reader`]).
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`], [`Error::OffsetBelowStart`] below the partition's start
    /// (retention deleted what was there), [`Error::UsedAfterFork`]. Errors while reading come from
    /// the iterator.
    pub fn read(&self, partition: u32, from_offset: u64) -> Result<Reader> {
        self.check_process()?;
        let p = self.partition(partition)?;
        let start = p.start();
        if from_offset < start {
            return Err(Error::OffsetBelowStart {
                partition,
                offset: from_offset,
                start,
            });
        }
        Ok(Reader::new(p.clone(), from_offset))
    }

    /// The partition that `key`'s events go to: `hash(key) % partitions` (`docs/format.md`).
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        (hash::key_hash(key) % u64::from(self.partition_count())) as u32
    }

    /// Number of partitions, fixed when the log was created.
    pub fn partition_count(&self) -> u32 {
        self.shared.config.user_partitions
    }

    /// One past the last offset readers can see in `partition`.
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`].
    pub fn end_offset(&self, partition: u32) -> Result<u64> {
        Ok(self.partition(partition)?.visible_end())
    }

    /// Deletes the sealed segments that the retention options allow now
    /// ([`Options::retention_age_max`](crate::Options::retention_age_max),
    /// [`Options::retention_bytes_max`](crate::Options::retention_bytes_max),
    /// [`Options::retention_until_consumed`](crate::Options::retention_until_consumed)). This
    /// also runs in the background (after each sealed segment, and every second); call it to
    /// apply the options at once, or to see its errors. Returns what it deleted.
    ///
    /// # Errors
    ///
    /// I/O errors deleting files, errors reading groups' records.
    pub fn enforce_retention(&self) -> Result<crate::RetentionReport> {
        self.check_process()?;
        crate::retention::enforce(&self.shared, &self.groups)
    }

    /// When the log was created (ms since the Unix epoch, as `annal.meta` records it): with the
    /// directory, it tells one log from another (the relay's deduplication ids use it).
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The first offset still stored in `partition`: 0 until retention deletes segments
    /// ([`Options::retention_bytes_max`](crate::Options::retention_bytes_max) and the like).
    ///
    /// # Errors
    ///
    /// [`Error::PartitionOutOfRange`].
    pub fn start_offset(&self, partition: u32) -> Result<u64> {
        Ok(self.partition(partition)?.start())
    }

    /// What recovery found and did when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// What the writer did since the log was opened.
    pub fn stats(&self) -> crate::Stats {
        let mut stats = self.shared.counters.snapshot();
        stats.ticket_spins = self.shared.progress.ticket_spins();
        stats
    }

    /// The directory of the log, as resolved when it was opened.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes and syncs everything appended before this call, in every durability mode, with
    /// one fsync for all partitions.
    ///
    /// # Errors
    ///
    /// [`Error::AppendsLost`] if a failure since the last flush or close lost appends that had
    /// been acknowledged before their write (`Interval`, `Buffered`; reported once; the error
    /// names the offsets), [`Error::WritesStalled`] while writes fail and are being retried
    /// (nothing is lost yet), [`Error::Poisoned`] after a failed fsync.
    pub fn flush(&self) -> Result<()> {
        self.check_process()?;
        let seq = self.shared.sequencer.request_flush();
        self.shared.progress.wait_flush(seq)
    }

    /// Writes and syncs everything queued, records a checkpoint (so that the next open replays
    /// nothing), stops the writer thread and releases the directory. Dropping a `Log` does the
    /// same but cannot report errors.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush): a failure not reported before, or [`Error::Poisoned`].
    pub fn close(self) -> Result<()> {
        self.check_process()?;
        self.shut_down()
    }

    fn shut_down(&self) -> Result<()> {
        let Some(writer) = self.writer.lock().take() else {
            return Ok(());
        };
        self.shared.sequencer.close();
        // A writer that panicked has poisoned the log (see writer.rs), which is reported below;
        // the join error itself carries nothing more.
        let _ = writer.join();
        if let Some(indexer) = self.indexer.lock().take() {
            indexer.stop(&self.shared.partitions);
        }
        self.shared.progress.final_report()?;
        // Everything is durable now: each partition's in-memory key table can be kept for the
        // next open (best effort; without it, the next process walks the segment instead).
        for partition in &self.shared.partitions {
            let _ = partition.streams.persist(partition);
        }
        Ok(())
    }

    /// One of the application's partitions (never the groups partition).
    pub(crate) fn partition(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.shared
            .partitions
            .get(partition as usize)
            .filter(|_| partition < self.partition_count())
            .ok_or(Error::PartitionOutOfRange {
                partition,
                partitions: self.partition_count(),
            })
    }

    pub(crate) fn check_process(&self) -> Result<()> {
        // The process id is asked only after a fork happened: it costs a system call.
        if FORKED.load(Ordering::Relaxed) && std::process::id() != self.pid {
            return Err(Error::UsedAfterFork);
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // In a forked child the writer thread does not exist: joining would wait forever.
        if self.check_process().is_ok() {
            let _ = self.shut_down();
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("partitions", &self.partition_count())
            .field("durability", &self.options.durability)
            .finish_non_exhaustive()
    }
}

/// Creates a new log in `dir` (which holds no metadata yet): the journal first, then the
/// metadata file, whose presence marks a complete log. A creation cut short by a crash leaves
/// no metadata, and the next open starts it over.
fn create(dir: &Path, options: &Options) -> Result<Meta> {
    if has_partition_dirs(dir)? {
        return Err(Error::corrupt(
            dir.join(meta::META_FILE),
            0,
            "metadata file missing from a directory that holds partitions",
        ));
    }
    let faults = &options.fail_points;
    let meta = Meta {
        partitions: options.partitions.unwrap_or(PARTITIONS_DEFAULT),
        created_ms: now_ms(),
    };
    // The journal's checkpoints hold a mark for each partition, the groups partition included.
    JournalWriter::create(dir, meta.partitions + 1, faults)?;
    io::sync_dir(dir, faults)?;
    meta.write(dir, faults)?;
    Ok(meta)
}

/// `path`, made absolute against the current directory once.
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::NotADirectory {
            path: path.to_owned(),
        });
    }
    std::path::absolute(path).map_err(|e| Error::io("resolve path", path, e))
}

/// One key's part of a multi-key append ([`Log::append_multi`]).
#[derive(Clone, Debug)]
pub struct KeyAppend<'c, 'e> {
    key: &'c [u8],
    expected: Expected,
    events: &'c [Event<'e>],
}

impl<'c, 'e> KeyAppend<'c, 'e> {
    pub fn new(key: &'c [u8], expected: Expected, events: &'c [Event<'e>]) -> Self {
        KeyAppend {
            key,
            expected,
            events,
        }
    }

    pub(crate) fn key(&self) -> &'c [u8] {
        self.key
    }

    pub(crate) fn expected(&self) -> Expected {
        self.expected
    }

    pub(crate) fn events(&self) -> &'c [Event<'e>] {
        self.events
    }
}

fn collect<'e, I>(events: I) -> Vec<Event<'e>>
where
    I: IntoIterator,
    I::Item: Into<Event<'e>>,
{
    events.into_iter().map(Into::into).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Expected;

    /// Appends one event to the groups partition, as consumer groups will.
    fn append_to_groups(log: &Log, key: &[u8]) -> Appended {
        let events = [Event::new(b"group record")];
        let write = [KeyWrite {
            partition: log.shared.config.groups_partition(),
            key,
            expected: Expected::Any,
            events: &events,
        }];
        let queued = log
            .shared
            .sequencer
            .enqueue(&log.shared.partitions, &write)
            .unwrap();
        queued.ticket(&log.shared.progress).wait().unwrap()
    }

    fn global_positions(log: &Log) -> Vec<u64> {
        log.read_all(0)
            .unwrap()
            .map(|r| r.unwrap().global_position)
            .collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else if entry.file_name() != "annal.lock" {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn the_groups_partition_takes_offsets_and_journal_indexes_but_no_global_positions() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        let log = Log::open(&dir, Options::default().partitions(2)).unwrap();
        assert_eq!(log.append(b"a", b"event").unwrap().global_position, 0);
        let group = append_to_groups(&log, b"g/projections");
        assert_eq!((group.offset, group.version), (0, 0));
        assert_eq!(log.append(b"b", b"event").unwrap().global_position, 1);
        assert_eq!(append_to_groups(&log, b"g/projections").version, 1);
        assert_eq!(log.append(b"a", b"event").unwrap().global_position, 2);
        assert_eq!(global_positions(&log), [0, 1, 2]);
        // Not one of the application's partitions.
        assert_eq!(log.partition_count(), 2);
        assert!(matches!(
            log.read(2, 0),
            Err(Error::PartitionOutOfRange { .. })
        ));
        assert!(dir.join("groups").is_dir());

        // A kill -9 (the open directory copied) and a clean close both continue both orders.
        let image = root.path().join("image");
        copy_dir(&dir, &image);
        log.close().unwrap();
        for dir in [&dir, &image] {
            let log = Log::open(dir, Options::default()).unwrap();
            assert_eq!(log.recovery_report().groups.partition, 2);
            assert_eq!(log.append(b"c", b"event").unwrap().global_position, 3);
            assert_eq!(append_to_groups(&log, b"g/projections").offset, 2);
            assert_eq!(log.append(b"d", b"event").unwrap().global_position, 4);
            assert_eq!(global_positions(&log), [0, 1, 2, 3, 4]);
            log.close().unwrap();
        }
    }

    #[test]
    fn a_failed_write_rewinds_global_positions_past_groups_records() {
        let fail_points = crate::io::FailPoints::new();
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default()
            .partitions(2)
            .fail_points(fail_points.clone());
        let log = Log::open(dir.path(), options).unwrap();
        append_to_groups(&log, b"g/x");
        assert_eq!(log.append(b"a", b"event").unwrap().global_position, 0);
        fail_points.fail_writes(1);
        assert!(matches!(
            log.append(b"a", b"lost"),
            Err(Error::AppendFailed { .. })
        ));
        assert_eq!(log.append(b"a", b"event").unwrap().global_position, 1);
        assert_eq!(global_positions(&log), [0, 1]);
    }
}
