//! What `open` does with what it finds in a partition directory.
//!
//! Only the last (active) segment can hold a torn or unsynced tail: a segment is sealed only
//! after its data is synced, and the next one is created only after that. So recovery reads the
//! sealed segments' names and nothing else, and checks the active segment from its last index
//! entry that still points at a valid frame. Open time therefore does not grow with the log.
//!
//! The cases, and the one action for each (also a table in `docs/design.md`):
//!
//! | found | action |
//! |---|---|
//! | no segment | create segment 0 |
//! | `*.tmp` left by an interrupted creation | delete it |
//! | index file without its segment | delete it |
//! | active segment whose header is all zeros (and every byte after it) | recreate it empty |
//! | a segment header with bad magic or checksum | `Error::Corrupt` |
//! | a segment header of another format version | `Error::IncompatibleFormat` |
//! | index missing, torn, or with garbage entries | keep its valid prefix, rebuild the rest |
//! | last index entries pointing past the valid data | drop them, scan from an earlier one |
//! | frames after the last valid one (torn, corrupt, zeros) | cut the file there, preallocate again |

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::frame::{self, Probe};
use crate::storage::index::{self, IndexEntry};
use crate::storage::io;
use crate::storage::segment::{self, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::write::active::Active;
use crate::write::partition::Config;

/// A partition as recovery leaves it.
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub active: Active,
    pub end_offset: u64,
    pub last_timestamp_ms: u64,
    pub report: RecoveryReport,
}

/// What recovery did to one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of the active segment checked frame by frame.
    pub scanned_bytes: u64,
    /// Whether the index was rewritten because it was missing, damaged or behind.
    pub index_rewritten: bool,
    /// Whether the active segment was recreated because its creation never completed.
    pub segment_recreated: bool,
}

struct Listing {
    segments: Vec<u64>,
    indexes: Vec<u64>,
}

pub(crate) fn recover_partition(dir: &Path, id: u32, config: &Config) -> Result<Recovered> {
    io::create_dir_all(dir)?;
    let listing = list(dir)?;
    for base in &listing.indexes {
        if listing.segments.binary_search(base).is_err() {
            io::remove_file(&segment::index_path(dir, *base))?;
        }
    }
    let Some((&last, sealed)) = listing.segments.split_last() else {
        return fresh(dir, id, 0, config, 0, RecoveryReport::default());
    };
    // A sealed segment ends where the next one begins.
    let mut segments: Vec<Arc<Segment>> = sealed
        .iter()
        .zip(&listing.segments[1..])
        .map(|(&base, &next)| Arc::new(Segment::sealed(dir, id, base, next)))
        .collect();
    let recovered = recover_active(dir, id, last, config)?;
    segments.extend(recovered.segments);
    Ok(Recovered {
        segments,
        ..recovered
    })
}

/// Lists segment and index files, removing temporary files of interrupted creations.
fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing {
        segments: Vec::new(),
        indexes: Vec::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            io::remove_file(&entry.path())?;
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

/// Creates an empty active segment at `base`.
fn fresh(
    dir: &Path,
    id: u32,
    base: u64,
    config: &Config,
    last_timestamp_ms: u64,
    report: RecoveryReport,
) -> Result<Recovered> {
    let created_ms = crate::write::partition::now_ms();
    let created = segment::create(
        dir,
        SegmentHeader {
            partition: id,
            base_offset: base,
            created_ms,
        },
        config.segment_bytes,
        config.index_policy,
        &config.faults,
    )?;
    Ok(Recovered {
        segments: vec![created.segment.clone()],
        active: Active::new(
            created.segment,
            created.data,
            created.index,
            created_ms,
            SEGMENT_HEADER_LEN as u64,
            base,
            0,
            None,
        ),
        end_offset: base,
        last_timestamp_ms,
        report,
    })
}

fn recover_active(dir: &Path, id: u32, base: u64, config: &Config) -> Result<Recovered> {
    let path = segment::segment_path(dir, base);
    let index_path = segment::index_path(dir, base);
    let data = io::File::open(&path, &config.faults)?;
    let map = segment::map_file(data.std(), &path)?;
    let header = match SegmentHeader::decode(&map, &path) {
        Ok(header) => header,
        Err(error) => {
            if map.iter().all(|&b| b == 0) {
                // Only reachable if the file system lost the header despite the sync before the
                // rename; nothing can have been acknowledged in such a segment.
                drop(map);
                drop(data);
                io::remove_file(&path)?;
                io::remove_file(&index_path)?;
                let report = RecoveryReport {
                    segment_recreated: true,
                    ..RecoveryReport::default()
                };
                return fresh(dir, id, base, config, 0, report);
            }
            return Err(error);
        }
    };
    if header.base_offset != base || header.partition != id {
        return Err(Error::corrupt(
            &path,
            0,
            "segment header does not match its file name or partition",
        ));
    }
    let index_bytes = match std::fs::read(&index_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", &index_path, e)),
    };
    let index::DecodedIndex {
        mut entries,
        damage,
        ..
    } = index::decode(
        &index_bytes,
        base,
        SEGMENT_HEADER_LEN as u64,
        map.len() as u64,
    );
    let decoded = entries.len();

    // The scan starts at the last entry that points at a valid frame with the promised offset.
    let mut start = (SEGMENT_HEADER_LEN as u64, base);
    while let Some(entry) = entries.last() {
        if frame_at(&map, entry.position, entry.offset).is_some() {
            start = (entry.position, entry.offset);
            break;
        }
        entries.pop();
    }
    let kept = entries.len();
    let mut last_timestamp_ms = entries
        .last()
        .map_or(header.created_ms, |e| e.timestamp_ms.max(header.created_ms));
    let (mut position, mut offset) = start;
    let mut last_entry_position = entries.last().map(|e| e.position);
    while let Some(info) = frame_at(&map, position, offset) {
        if config
            .index_policy
            .wants_entry(last_entry_position, position)
        {
            entries.push(IndexEntry {
                offset,
                position,
                timestamp_ms: info.timestamp_ms,
            });
            last_entry_position = Some(position);
        }
        last_timestamp_ms = last_timestamp_ms.max(info.timestamp_ms);
        position += u64::from(info.frame_len);
        offset = info.end_offset();
    }
    drop(map);

    // Cut everything after the last valid frame, so that no torn or stale bytes can ever be
    // mistaken for a frame once new frames are written up to them, then reserve space again.
    data.set_len(position)?;
    // On a full disk the log still opens; appends then grow the file and report a full disk
    // themselves.
    let _ = data.preallocate(config.segment_bytes.max(position));
    data.sync_all()?;

    let index_rewritten = damage.is_some() || kept != decoded || entries.len() != kept;
    let mut index_entries = entries.len();
    let index_file = if index_rewritten {
        match rewrite_index(&index_path, base, config, &entries) {
            Ok(file) => file,
            // The index is derived data: a log on a full disk must still open. What the file
            // holds now is at worst a valid prefix; the next open rebuilds the rest.
            Err(_) => {
                index_entries = 0;
                open_or_create(&index_path)?
            }
        }
    } else {
        io::File::open(&index_path, &io::INDEX_FAULTS)?
    };
    let map = segment::map_file(data.std(), &path)?;
    let segment = Arc::new(Segment::active(dir, id, base, position, map, entries));
    Ok(Recovered {
        segments: vec![segment.clone()],
        active: Active::new(
            segment,
            data,
            index_file,
            header.created_ms,
            position,
            offset,
            index_entries,
            last_entry_position,
        ),
        end_offset: offset,
        last_timestamp_ms,
        report: RecoveryReport {
            scanned_bytes: position - start.0,
            index_rewritten,
            segment_recreated: false,
        },
    })
}

fn rewrite_index(
    path: &Path,
    base: u64,
    config: &Config,
    entries: &[IndexEntry],
) -> Result<io::File> {
    let interval_bytes = config.index_policy.interval_bytes;
    let file = io::File::create_truncate(path, &io::INDEX_FAULTS)?;
    file.write_all_at(&index::encode_file(base, interval_bytes, entries), 0)?;
    file.sync_data()?;
    Ok(file)
}

fn open_or_create(path: &Path) -> Result<io::File> {
    match io::File::open(path, &io::INDEX_FAULTS) {
        Ok(file) => Ok(file),
        Err(_) => io::File::create_truncate(path, &io::INDEX_FAULTS),
    }
}

/// The frame at `position` if it is whole, checks out and starts at `offset`.
fn frame_at(map: &[u8], position: u64, offset: u64) -> Option<frame::FrameInfo> {
    let rest = map.get(usize::try_from(position).ok()?..)?;
    match frame::probe(rest) {
        Probe::Frame(info) if info.base_offset == offset => {
            let bytes = &rest[..info.frame_len as usize];
            frame::validate_records(bytes, &info).ok().map(|()| info)
        }
        _ => None,
    }
}
