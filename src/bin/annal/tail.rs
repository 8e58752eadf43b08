//! `annal tail`: events as they arrive, from the log's files, in global order (or one key's or
//! one partition's order).
//!
//! A `Log` cannot be opened while its writer holds the directory, so `tail` reads the files, and
//! `--follow` waits for the writer's next write through inotify (`watch.rs`): woken by the
//! write, not polling; `--poll` is only the fallback where inotify is not available, and a
//! bound on the wait.
//!
//! What the files show runs slightly ahead of what the writer has acknowledged: a round's frames
//! are written to the segments just before the journal's fsync (`docs/design.md`), and only the
//! writer's process knows where the acknowledged end is. An event printed here whose writer
//! crashes before that fsync is cut by recovery. Telling the acknowledged end to other
//! processes needs the engine (the same wake-ups would carry it).
//!
//! In global order, a position that no partition's files hold is either deleted by retention or
//! not visible yet. The merge goes past it only when it is in no file: every partition has a
//! later record, or the journal's checkpoint in force says it was written and the partitions,
//! read after that checkpoint, do not hold it (`disk/journal.rs`). A segment lost to damage
//! looks the same here; `annal verify` reports it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::disk::layout::LogDir;
use crate::disk::partition::PartitionCursor;
use crate::failure::Failure;
use crate::output::{Out, Row, RowFormat};

/// Print events as they arrive, in global order (or one key's, or one partition's).
///
/// Reads the files, so it follows a log that another process is appending to.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal tail annal-data                          # what is there now, in global order\n  \
    annal tail annal-data --follow                 # then wait for more (Ctrl-C ends)\n  \
    annal tail annal-data --key account-0007 --follow\n  \
    annal tail annal-data --partition 3 --from-global 5000 --json\n\n\
    --follow is woken by the writer's writes (inotify), falling back to looking every --poll \
    where that is not available. The files can run a fsync ahead of the writer's acknowledgements: an event shown just before its \
    writer crashes may be cut by recovery.")]
pub struct TailArgs {
    /// Directory of the log.
    pub dir: PathBuf,
    /// Only the events of this key (in version order).
    #[arg(long, conflicts_with = "partition")]
    pub key: Option<String>,
    /// Only the events of this partition (in offset order).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Keep printing events as they arrive.
    #[arg(long, short)]
    pub follow: bool,
    /// Start at this global position.
    #[arg(long, default_value_t = 0)]
    pub from_global: u64,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// The longest --follow waits before it looks again (it is woken by writes before that).
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub poll: Duration,
    /// One JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Payload bytes shown per event; 0 shows the size only.
    #[arg(long, default_value_t = 64)]
    pub preview: usize,
}

pub fn run(args: &TailArgs) -> Result<(), Failure> {
    let log = LogDir::read(&args.dir)?;
    let mut source = match (&args.key, args.partition) {
        (Some(key), _) => {
            let partition = log.partition_of(key.as_bytes());
            let cursor = PartitionCursor::near_global(&log.dir, partition, args.from_global)?;
            Source::One(Box::new(cursor.only_key(key.as_bytes())))
        }
        (None, Some(partition)) => {
            let partition = log.check_partition(partition)?;
            Source::One(Box::new(PartitionCursor::near_global(
                &log.dir,
                partition,
                args.from_global,
            )?))
        }
        (None, None) => Source::All(GlobalMerge::new(&log, args.from_global)?),
    };
    let format = RowFormat {
        json: args.json,
        preview_bytes: args.preview,
    };
    let mut left = args.count.unwrap_or(u64::MAX);
    let mut out = Out::new();
    let watch = if args.follow {
        let dirs = (0..log.meta.partitions)
            .map(|p| crate::disk::layout::partition_dir(&log.dir, p))
            .collect();
        crate::watch::Watch::new(&log.dir, dirs)
    } else {
        None
    };
    while left > 0 {
        while left > 0 {
            let Some(row) = source.next_row()? else { break };
            if row.global_position < args.from_global {
                continue;
            }
            out.row(&row, format)?;
            left -= 1;
        }
        out.flush()?;
        if !args.follow || left == 0 {
            break;
        }
        match &watch {
            Some(watch) => watch.wait(args.poll),
            None => std::thread::sleep(args.poll),
        }
    }
    out.flush()
}

enum Source {
    One(Box<PartitionCursor>),
    All(GlobalMerge),
}

impl Source {
    fn next_row(&mut self) -> Result<Option<Row>, Failure> {
        match self {
            Source::One(cursor) => cursor.next_row(),
            Source::All(merge) => merge.next_row(),
        }
    }
}

/// Every partition merged into the log's global order, as `annal::GlobalReader` does: the
/// next record is the one at the next global position. When that position is not visible yet
/// in its partition, the merge stops there rather than skip it. It goes past a position that is
/// in no file: when every partition has a record past it, or when the checkpoint in force says
/// it was written (`disk::journal`) and the partitions read after that checkpoint do not hold
/// it.
struct GlobalMerge {
    cursors: Vec<PartitionCursor>,
    /// The next record of each partition, once read.
    heads: Vec<Option<Row>>,
    next_global: u64,
    dir: std::path::PathBuf,
    partitions: u32,
    /// Every position below this was written to the segment files, as the journal's checkpoint
    /// in force said at the last look.
    written_end: u64,
}

impl GlobalMerge {
    fn new(log: &LogDir, from_global: u64) -> Result<GlobalMerge, Failure> {
        let cursors = (0..log.meta.partitions)
            .map(|p| PartitionCursor::near_global(&log.dir, p, from_global))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GlobalMerge {
            heads: vec![None; cursors.len()],
            cursors,
            next_global: from_global,
            dir: log.dir.clone(),
            partitions: log.meta.partitions,
            written_end: 0,
        })
    }

    fn next_row(&mut self) -> Result<Option<Row>, Failure> {
        if let Some(row) = self.take_head()? {
            return Ok(Some(row));
        }
        // The next position is in no head: read on in the partitions that have none.
        for p in 0..self.cursors.len() {
            if self.heads[p].is_none() {
                self.heads[p] = self.read_head(p)?;
            }
        }
        self.take_head()
    }

    fn take_head(&mut self) -> Result<Option<Row>, Failure> {
        loop {
            if let Some(p) = self.head_at_next() {
                let row = self.heads[p].take();
                self.next_global += 1;
                self.heads[p] = self.read_head(p)?;
                return Ok(row);
            }
            if !self.pass_deleted()? {
                return Ok(None);
            }
        }
    }

    fn head_at_next(&self) -> Option<usize> {
        self.heads.iter().position(|head| {
            head.as_ref()
                .is_some_and(|row| row.global_position == self.next_global)
        })
    }

    fn lowest_head(&self) -> Option<u64> {
        self.heads.iter().flatten().map(|r| r.global_position).min()
    }

    /// No head is at the next position (every head is past it). Moves on if the position is in
    /// no file; returns false if it may not be visible yet.
    fn pass_deleted(&mut self) -> Result<bool, Failure> {
        // Each partition's files hold their positions in order: with a head in every partition,
        // the position is in none of them.
        if self.heads.iter().all(Option::is_some) {
            let lowest = self.lowest_head().expect("every partition has a head");
            self.next_global = lowest;
            return Ok(true);
        }
        // A partition without a head may get it yet (written after its last read), or have had
        // no events at all. The checkpoint in force is read first, then those partitions again:
        // a position that the checkpoint says was written and that no partition holds after it
        // is in no file (retention deleted it; a lost segment is `annal verify`'s to report).
        let written_end = self.written_end()?;
        if self.next_global >= written_end {
            return Ok(false);
        }
        for p in 0..self.cursors.len() {
            if self.heads[p].is_none() {
                self.heads[p] = self.read_head(p)?;
            }
        }
        if self.head_at_next().is_some() {
            return Ok(true);
        }
        // Not past what the checkpoint covers: a later position may still be on its way to a
        // partition without a head.
        let target = self
            .lowest_head()
            .map_or(written_end, |l| l.min(written_end));
        self.next_global = target;
        Ok(true)
    }

    /// Where the checkpoint in force ends in the global order; the journal is read again only
    /// when the next position is past what the last look said.
    fn written_end(&mut self) -> Result<u64, Failure> {
        if self.next_global >= self.written_end {
            let journal = self.dir.join(crate::disk::layout::JOURNAL_FILE);
            let end = crate::disk::journal::checkpoint_global_end(&self.dir, self.partitions)
                .map_err(|e| Failure::io("read", &journal, e))?;
            self.written_end = self.written_end.max(end.unwrap_or(0));
        }
        Ok(self.written_end)
    }

    /// The partition's next record at or past the next global position.
    fn read_head(&mut self, p: usize) -> Result<Option<Row>, Failure> {
        while let Some(row) = self.cursors[p].next_row()? {
            if row.global_position >= self.next_global {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }
}
