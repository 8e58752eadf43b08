//! `annal dump`: the records of a log, or what one of its files holds, decoded.

use std::path::{Path, PathBuf};

use annal::{Error, Options};
use clap::Args;

use crate::disk::frame::Probe;
use crate::disk::headers::{self, Slot};
use crate::disk::layout::{self, LogDir};
use crate::disk::partition::{decode_rows, PartitionCursor, Stop};
use crate::disk::segment::{SegmentFile, DATA_START};
use crate::disk::{index, keys, snapshot, Damage};
use crate::failure::Failure;
use crate::output::{self, Out, Row, RowFormat};

/// Print a log's records, or decode one of its files.
///
/// A directory prints its records partition by partition, in offset order. A file is decoded:
/// a segment (.seg), an index (.idx), a key table (.keys), a snapshot (.snap), annal.meta, or
/// annal.journal's checkpoints.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal dump annal-data --partition 3 --from 100 --count 10\n  \
    annal dump annal-data --key account-0007\n  \
    annal dump annal-data/p0003/00000000000000000000.seg\n  \
    annal dump annal-data/p0003/00000000000000000000.idx\n  \
    annal dump annal-data --json --count 5 | jq .payload\n\n\
    A directory is read from its files, so dump works while another process has the log open; \
    --key reads through the log's key tables (Log::read_key) when the log is not open \
    elsewhere, and walks the key's partition otherwise.")]
pub struct DumpArgs {
    /// A log directory, or one file of a log.
    pub path: PathBuf,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// First offset to print in each partition (with --key: first version).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Print at most this many records (or index entries).
    #[arg(long)]
    pub count: Option<u64>,
    /// Only the events of this key, in version order.
    #[arg(long, conflicts_with = "partition")]
    pub key: Option<String>,
    /// One JSON object per record.
    #[arg(long)]
    pub json: bool,
    /// Payload bytes shown per record; 0 shows the size only.
    #[arg(long, default_value_t = 64)]
    pub preview: usize,
}

impl DumpArgs {
    fn format(&self) -> RowFormat {
        RowFormat {
            json: self.json,
            preview_bytes: self.preview,
        }
    }

    fn limit(&self) -> u64 {
        self.count.unwrap_or(u64::MAX)
    }
}

pub fn run(args: &DumpArgs) -> Result<(), Failure> {
    let path = &args.path;
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::message(format!("{} does not exist", path.display()))
        }
        _ => Failure::io("read", path, e),
    })?;
    if metadata.is_dir() {
        let log = LogDir::read(path)?;
        return match &args.key {
            Some(key) => dump_key(&log, key.as_bytes(), args),
            None => dump_partitions(&log, args),
        };
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('.').map(|(_, suffix)| suffix) {
        Some(layout::SEGMENT_SUFFIX) => dump_segment(path, args),
        Some(layout::INDEX_SUFFIX) => dump_index(path, args),
        Some(layout::TABLE_SUFFIX) => dump_table(path),
        Some("snap") => dump_snapshot(path, args),
        Some("meta") if name == layout::META_FILE => dump_meta(path),
        Some("journal") if name == layout::JOURNAL_FILE => dump_checkpoints(path),
        _ => Err(Failure::message(format!(
            "{} is not a file dump reads: give a log directory, or a .seg, .idx, .keys or \
             .snap file, annal.meta or annal.journal",
            path.display()
        ))),
    }
}

fn dump_partitions(log: &LogDir, args: &DumpArgs) -> Result<(), Failure> {
    let partitions = match args.partition {
        Some(p) => vec![log.check_partition(p)?],
        None => (0..log.meta.partitions).collect(),
    };
    let mut left = args.limit();
    let mut out = Out::new();
    for partition in partitions {
        let mut cursor = PartitionCursor::new(&log.dir, partition, args.from);
        while left > 0 {
            let Some(row) = cursor.next_row()? else {
                if let Some(Stop::Invalid { path, damage }) = cursor.stop() {
                    note_invalid_end(partition, path, damage);
                }
                break;
            };
            out.row(&row, args.format())?;
            left -= 1;
        }
    }
    out.flush()
}

/// Says on stderr that a partition's frames end in bytes that are not a frame.
pub fn note_invalid_end(partition: u32, path: &Path, damage: &Damage) {
    eprintln!(
        "annal: note: partition {partition} ends at {} byte {}: {} (a write in progress, a \
         write cut by a crash, or damage: `annal verify` tells which)",
        path.display(),
        damage.position,
        damage.reason
    );
}

/// The key's events through `Log::read_key` (the key tables) when the log can be opened; by a
/// walk of its partition when another process has it open.
fn dump_key(log: &LogDir, key: &[u8], args: &DumpArgs) -> Result<(), Failure> {
    let mut out = Out::new();
    let limit = args.limit();
    match annal::Log::open(&log.dir, Options::default()) {
        Ok(opened) => {
            let records = opened
                .read_key(key, args.from)
                .map_err(|e| Failure::annal("read the key", e))?;
            for record in records.iter().take(limit.min(usize::MAX as u64) as usize) {
                out.row(&Row::from(record), args.format())?;
            }
            out.flush()?;
            opened
                .close()
                .map_err(|e| Failure::annal(format!("close {}", log.dir.display()), e))
        }
        Err(Error::Locked { .. }) => {
            eprintln!(
                "annal: note: {} is open by another process: walking partition {} for the key \
                 instead of using the key tables",
                log.dir.display(),
                log.partition_of(key)
            );
            let mut cursor = PartitionCursor::new(&log.dir, log.partition_of(key), 0).only_key(key);
            let mut printed = 0;
            while printed < limit {
                let Some(row) = cursor.next_row()? else { break };
                if row.version >= args.from {
                    out.row(&row, args.format())?;
                    printed += 1;
                }
            }
            out.flush()
        }
        Err(error) => Err(Failure::annal(format!("open {}", log.dir.display()), error)),
    }
}

fn dump_segment(path: &Path, args: &DumpArgs) -> Result<(), Failure> {
    let mut segment = SegmentFile::open(path)?;
    let header = segment.header;
    let mut out = Out::new();
    if !args.json {
        out.line(&format!(
            "segment {}: partition {}, base offset {}, created {}, header checksum {:08x}",
            path.display(),
            header.partition,
            header.base_offset,
            output::time_text(header.created_ms),
            header.crc
        ))?;
    }
    let (mut position, mut offset) = (DATA_START, header.base_offset);
    let mut left = args.limit();
    let end = loop {
        let frame = match segment.probe_at(position)? {
            Probe::Frame(frame) if frame.base_offset == offset => frame,
            Probe::Frame(frame) => {
                break format!(
                    "a frame of offset {} where offset {offset} should follow",
                    frame.base_offset
                );
            }
            Probe::Empty => break "zeros or the end of the file: no more frames".to_owned(),
            Probe::Invalid(reason) => break reason.to_owned(),
        };
        if left == 0 {
            break "printed --count records".to_owned();
        }
        let bytes = segment.frame_bytes(position, &frame);
        if frame.is_padding() {
            if !args.json && frame.base_offset >= args.from {
                out.line(&format!(
                    "padding frame at byte {position}: {} bytes",
                    frame.frame_len
                ))?;
            }
        } else if frame.end_offset() > args.from {
            if !args.json {
                out.line(&format!(
                    "frame at byte {position}: {} bytes, {} record{}, offsets {}..={}, key {}",
                    frame.frame_len,
                    frame.record_count,
                    if frame.record_count == 1 { "" } else { "s" },
                    frame.base_offset,
                    frame.end_offset() - 1,
                    output::quoted(frame.key(bytes), 200)
                ))?;
            }
            let rows = decode_rows(header.partition, bytes, &frame).map_err(|(at, reason)| {
                Failure::corrupt(path, Damage::at(position + at, reason))
            })?;
            for row in rows.iter().filter(|r| r.offset >= args.from) {
                if left == 0 {
                    break;
                }
                out.row(row, args.format())?;
                left -= 1;
            }
        }
        position += u64::from(frame.frame_len);
        offset = frame.end_offset();
    };
    if !args.json {
        out.line(&format!("end at byte {position}, offset {offset}: {end}"))?;
    }
    out.flush()
}

fn dump_index(path: &Path, args: &DumpArgs) -> Result<(), Failure> {
    let bytes = read(path)?;
    let file = index::decode(&bytes).map_err(|damage| Failure::corrupt(path, damage))?;
    let mut out = Out::new();
    out.line(&format!(
        "index {}: base offset {}, interval {} bytes, {} entries",
        path.display(),
        file.base_offset,
        file.interval_bytes,
        file.entries.len()
    ))?;
    for entry in file
        .entries
        .iter()
        .take(args.limit().min(usize::MAX as u64) as usize)
    {
        out.line(&format!(
            "entry at byte {}: offset {} at segment byte {}, time {}",
            entry.at,
            entry.offset,
            entry.position,
            output::time_text(entry.timestamp_ms)
        ))?;
    }
    if let Some(at) = file.torn_tail {
        out.line(&format!("the file ends inside an entry at byte {at}"))?;
    }
    out.flush()
}

fn dump_table(path: &Path) -> Result<(), Failure> {
    let bytes = read(path)?;
    let table = keys::decode(&bytes).map_err(|damage| Failure::corrupt(path, damage))?;
    let mut hashes: Vec<u64> = table.keys.iter().map(|e| e.hash).collect();
    hashes.dedup();
    let mut out = Out::new();
    out.line(&format!(
        "key table {}: {} bytes, header and body checksums hold",
        path.display(),
        bytes.len()
    ))?;
    out.line(&format!(
        "segment: base offset {}, header checksum {:08x}; covers offsets {}..{} up to segment byte {}",
        table.base_offset, table.segment_crc, table.base_offset, table.end_offset, table.end_position
    ))?;
    out.line(&format!(
        "hash kind: {}",
        if table.standard_hash() {
            "0 (key_hash)"
        } else {
            "1 (every key hashes to 0: a test hook)"
        }
    ))?;
    out.line(&format!(
        "key entries (frames): {}, distinct key hashes: {}, key filter: {} words",
        table.keys.len(),
        hashes.len(),
        table.key_filter_words
    ))?;
    out.line(&format!(
        "id entries (events with ids): {}, id filter: {} words",
        table.ids.len(),
        table.id_filter_words
    ))?;
    out.flush()
}

fn dump_snapshot(path: &Path, args: &DumpArgs) -> Result<(), Failure> {
    let bytes = read(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let named = snapshot::parse_name(&name);
    let file = snapshot::decode(&bytes, named.map(|n| n.version))
        .map_err(|damage| Failure::corrupt(path, damage))?;
    output::print_line(&format!(
        "snapshot {}: key {} at version {}, state {} bytes {}",
        path.display(),
        output::quoted(file.key, 200),
        file.version,
        file.state.len(),
        output::quoted(file.state, args.preview.max(1))
    ))
}

fn dump_meta(path: &Path) -> Result<(), Failure> {
    let bytes = read(path)?;
    let meta = headers::decode_meta(&bytes).map_err(|damage| Failure::corrupt(path, damage))?;
    output::print_line(&format!(
        "{}: format version {}, {} partitions, key hash FNV-1a 64 + fmix64, created {}",
        path.display(),
        annal::FORMAT_VERSION,
        meta.partitions,
        output::time_text(meta.created_ms)
    ))
}

fn dump_checkpoints(path: &Path) -> Result<(), Failure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let log = LogDir::read(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?;
    // Checkpoints hold a mark for each partition and one for the groups partition after them.
    let partitions = log.meta.partitions + 1;
    let slot_len = headers::slot_len(partitions);
    let bytes = read(path)?;
    let mut out = Out::new();
    for (name, start) in [("A", 0u64), ("B", slot_len)] {
        let slot = bytes.get(start as usize..).unwrap_or(&[]);
        match headers::decode_slot(slot, partitions) {
            Slot::Unwritten => out.line(&format!(
                "slot {name} at byte {start}: not written (or torn)"
            ))?,
            Slot::Damaged(damage) => out.line(&format!(
                "slot {name} at byte {start}: damaged at byte {}: {}",
                start + damage.position,
                damage.reason
            ))?,
            Slot::Valid(checkpoint) => {
                out.line(&format!(
                    "slot {name} at byte {start}: checkpoint {}",
                    checkpoint.number
                ))?;
                for (p, mark) in checkpoint.marks.iter().enumerate() {
                    if mark.segment_base == headers::NO_SEGMENT {
                        out.line(&format!("  partition {p}: no segment"))?;
                    } else {
                        out.line(&format!(
                            "  partition {p}: segment {} synced to byte {}, end offset {}",
                            mark.segment_base, mark.synced_position, mark.end_offset
                        ))?;
                    }
                }
            }
        }
    }
    out.flush()
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::io("read", path, e))
}
