//! Opening one partition at its checkpoint mark: the checks that can refuse the open (made
//! before anything changes), then the changes: segments created after the mark deleted, the
//! active segment's index loaded and extended, the lane made ready for the replay.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, LostRange, Result};
use crate::storage::frame;
use crate::storage::index::{self, IndexEntry, IndexPolicy};
use crate::storage::io;
use crate::storage::journal::{PartitionMark, NO_SEGMENT};
use crate::storage::segment::{self, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::stream::table::{self, HashKind};
use crate::write::active::{Active, Lane, Resumed};
use crate::write::partition::{partition_dir, Partition};
use crate::write::recovery::PartitionRecovery;
use crate::write::{Config, Counters};

/// The checks of `prepare_partition` that can refuse the open, made before anything changes.
pub(super) fn check_partition(
    dir: &Path,
    id: u32,
    user_partitions: u32,
    mark: PartitionMark,
    faults: &io::Faults,
) -> Result<()> {
    // A start file that cannot be read refuses the open here, before anything changes.
    segment::read_start(&partition_dir(dir, id, user_partitions), faults)?;
    if mark.segment_base == NO_SEGMENT {
        return Ok(());
    }
    let path = segment::segment_path(&partition_dir(dir, id, user_partitions), mark.segment_base);
    let bytes = match io::read_prefix(&path, SEGMENT_HEADER_LEN as u64, faults) {
        Ok(header) => {
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            (header, len)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::corrupt(
                &path,
                0,
                "the segment named by the checkpoint is missing",
            ))
        }
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let (header, len) = bytes;
    let header = SegmentHeader::decode(&header, &path)?;
    if header.partition != id {
        return Err(Error::corrupt(
            &path,
            segment::SEGMENT_PARTITION_OFFSET as u64,
            "segment header names another partition than its directory",
        ));
    }
    if header.base_offset != mark.segment_base {
        return Err(Error::corrupt(
            &path,
            segment::SEGMENT_BASE_OFFSET_OFFSET as u64,
            "segment header names another base offset than its file name",
        ));
    }
    if len < mark.synced_position || mark.synced_position < SEGMENT_HEADER_LEN as u64 {
        return Err(Error::corrupt(
            &path,
            len,
            "segment is shorter than the data its checkpoint says was synced",
        ));
    }
    Ok(())
}

/// Opens one partition at its checkpoint mark: cuts what lies past the mark, deletes segments
/// created after it, and loads the active segment's index.
pub(super) fn prepare_partition(
    dir: &Path,
    id: u32,
    mark: PartitionMark,
    config: &Arc<Config>,
    counters: &Arc<Counters>,
) -> Result<(Lane, PartitionRecovery)> {
    let path = partition_dir(dir, id, config.user_partitions);
    let mut report = PartitionRecovery {
        partition: id,
        ..PartitionRecovery::default()
    };
    let policy = config.index_policy;
    let mut listing = list(&path, &config.faults)?;
    // Retention records the start before it deletes segments: finish a deletion cut short.
    let start = segment::read_start(&path, &config.faults)?;
    while listing.segments.len() >= 2
        && listing.segments[1] <= start
        && (mark.segment_base == NO_SEGMENT || listing.segments[0] < mark.segment_base)
    {
        let base = listing.segments.remove(0);
        io::remove_file(&segment::segment_path(&path, base), &config.faults)?;
        io::sync_dir(&path, &config.faults)?;
    }
    // Offsets that the segment files hold past the mark, for the report.
    let mut file_end = mark.end_offset;
    for &base in listing
        .segments
        .iter()
        .filter(|&&base| mark.segment_base == NO_SEGMENT || base > mark.segment_base)
    {
        let seg_path = segment::segment_path(&path, base);
        if let Ok(bytes) = std::fs::read(&seg_path) {
            let (end, len) = chained_end(&bytes, SEGMENT_HEADER_LEN as u64, base);
            file_end = file_end.max(end);
            report.cut_bytes += len;
        }
        io::remove_file(&seg_path, &config.faults)?;
        io::remove_file(&segment::index_path(&path, base), &config.faults)?;
    }
    // A key table describes bytes of its segment. Those of a segment sealed before the mark
    // never change; those of the segment at the mark change past the mark (recovery cuts and
    // replays there), so its table (written at a clean close) stays only if it ends within
    // the mark; segments after the mark are gone.
    for &base in &listing.tables {
        let table_path = segment::table_path(&path, base);
        let keep =
            if mark.segment_base == NO_SEGMENT || listing.segments.binary_search(&base).is_err() {
                false
            } else if base < mark.segment_base {
                true
            } else if base == mark.segment_base {
                table_within_mark(&table_path, &mark)
            } else {
                false
            };
        if !keep {
            io::remove_file(&table_path, &config.faults)?;
        }
    }
    for &base in &listing.indexes {
        if listing.segments.binary_search(&base).is_err() {
            io::remove_file(&segment::index_path(&path, base), &config.faults)?;
        }
    }
    let partition_path = path.clone();
    if mark.segment_base == NO_SEGMENT {
        if file_end > mark.end_offset {
            report.cut = Some(LostRange {
                partition: id,
                first_offset: mark.end_offset,
                last_offset: file_end - 1,
            });
        }
        let partition = Arc::new(Partition::new(
            id,
            partition_path,
            policy,
            Vec::new(),
            mark.end_offset,
            start,
            hash_kind(config),
        ));
        return Ok((
            Lane::new(
                partition,
                config.clone(),
                counters.clone(),
                None,
                mark.end_offset,
            ),
            report,
        ));
    }
    let base = mark.segment_base;
    if listing.segments.binary_search(&base).is_err() {
        return Err(Error::corrupt(
            segment::segment_path(&path, base),
            0,
            "the segment named by the checkpoint is missing",
        ));
    }
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let sealed: Vec<u64> = listing
        .segments
        .iter()
        .copied()
        .filter(|&b| b < base)
        .collect();
    for (i, &sealed_base) in sealed.iter().enumerate() {
        let next = sealed.get(i + 1).copied().unwrap_or(base);
        segments.push(Arc::new(Segment::sealed(&path, id, sealed_base, next)));
    }

    let seg_path = segment::segment_path(&path, base);
    let data = io::File::open(&seg_path, &config.faults)?;
    let map = segment::map_file(data.std(), &seg_path)?;
    // `check_partition` checked the header and the length before anything changed; they are
    // checked again here, on the bytes mapped, since the slices below depend on them.
    let header = SegmentHeader::decode(&map, &seg_path)?;
    let synced = mark.synced_position;
    if header.partition != id || header.base_offset != base || (map.len() as u64) < synced {
        return Err(Error::corrupt(
            &seg_path,
            0,
            "segment changed while the log was being opened",
        ));
    }
    let (end, len) = chained_end(&map, synced, mark.end_offset);
    file_end = file_end.max(end);
    report.cut_bytes += len;
    if file_end > mark.end_offset {
        report.cut = Some(LostRange {
            partition: id,
            first_offset: mark.end_offset,
            last_offset: file_end - 1,
        });
    }
    // What lies past the mark is not cut from the file: it is never read (readers stop at the
    // visible end, recovery at the mark), the replay overwrites it, and the blocks it holds
    // stay reserved, so that a log on a full disk still opens and replays.
    let allocated = map.len() as u64;
    let index_path = segment::index_path(&path, base);
    let (entries, index_rebuilt) = load_index(
        &index_path,
        base,
        &map[..synced as usize],
        mark.end_offset,
        policy,
    )?;
    report.index_rebuilt = index_rebuilt;
    let last_entry_position = entries.last().map(|e| e.position);
    let index_entries = entries.len();
    let segment = Arc::new(Segment::active(&path, id, base, synced, map, entries));
    segments.push(segment.clone());
    let partition = Arc::new(Partition::new(
        id,
        partition_path,
        policy,
        segments,
        mark.end_offset,
        start,
        hash_kind(config),
    ));
    let active = Active::resume(Resumed {
        segment,
        data,
        created_ms: header.created_ms,
        allocated,
        position: synced,
        end: mark.end_offset,
        index_entries,
        last_entry_position,
    });
    Ok((
        Lane::new(
            partition,
            config.clone(),
            counters.clone(),
            Some(active),
            mark.end_offset,
        ),
        report,
    ))
}

/// Loads the active segment's index: the valid prefix of its file (entries point at synced
/// data only), extended by scanning the synced data after its last entry. The file is rewritten
/// when it held anything else; normally the scan covers less than one index interval.
fn load_index(
    path: &Path,
    base: u64,
    synced: &[u8],
    end_offset: u64,
    policy: IndexPolicy,
) -> Result<(Vec<IndexEntry>, bool)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let header_len = SEGMENT_HEADER_LEN as u64;
    let decoded = index::decode(&bytes, base, header_len, synced.len() as u64);
    if let Some(index::IndexDamage::Version(found)) = decoded.damage {
        return Err(Error::IncompatibleFormat {
            path: path.to_owned(),
            found,
            supported: crate::FORMAT_VERSION,
        });
    }
    // An index placed with another interval stays correct, but its header must say the
    // interval that the entries appended from now on follow.
    let other_interval = decoded.interval_bytes != Some(policy.interval_bytes);
    let damage = decoded.damage;
    let mut entries = decoded.entries;
    let kept = entries.len();
    let (position, offset) = entries
        .last()
        .map_or((header_len, base), |e| (e.position, e.offset));
    // From the last entry's frame on: the policy wants no second entry at that frame.
    let mut chain = frame::Chain::new(synced, position, offset);
    index::extend_from_chain(&mut entries, &mut chain, end_offset, policy);
    let rebuilt = damage.is_some() || entries.len() != kept;
    if rebuilt || other_interval {
        // Derived data: a log on a full disk must still open. Whatever the file holds then is
        // at worst a valid prefix; the next open extends it again. The writer appends entries
        // after the ones kept here, so a file that could not be rewritten must not be left
        // longer than them: it is cut, or (if even that fails) appends land after stale
        // entries, which the next open drops as out of order and rebuilds.
        if rewrite_index(path, base, policy.interval_bytes, &entries).is_err() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(
                        (index::INDEX_HEADER_LEN + entries.len() * index::INDEX_ENTRY_LEN) as u64,
                    )
                });
        }
    }
    Ok((entries, rebuilt))
}

/// Follows valid frames from `position` (expecting `offset`); returns the end offset they reach
/// and the bytes they take. Used only to report what a cut removes.
fn chained_end(bytes: &[u8], position: u64, offset: u64) -> (u64, u64) {
    let mut chain = frame::Chain::new(bytes, position, offset);
    chain.by_ref().for_each(drop);
    (chain.offset, chain.position - position)
}

fn rewrite_index(
    path: &Path,
    base: u64,
    interval_bytes: u32,
    entries: &[IndexEntry],
) -> Result<()> {
    let file = io::File::create_truncate(path, &io::INDEX_FAULTS)?;
    file.write_all_at(&index::encode_file(base, interval_bytes, entries), 0)?;
    file.sync_data()
}

struct Listing {
    segments: Vec<u64>,
    indexes: Vec<u64>,
    tables: Vec<u64>,
}

/// Lists segment and index files of a partition directory (none if it does not exist yet),
/// removing temporary files of interrupted creations.
fn list(dir: &Path, faults: &io::Faults) -> Result<Listing> {
    let mut listing = Listing {
        segments: Vec::new(),
        indexes: Vec::new(),
        tables: Vec::new(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            io::remove_file(&entry.path(), faults)?;
        } else if let Some(base) = segment::parse_name(name, segment::SEGMENT_SUFFIX) {
            listing.segments.push(base);
        } else if let Some(base) = segment::parse_name(name, segment::INDEX_SUFFIX) {
            listing.indexes.push(base);
        } else if let Some(base) = segment::parse_name(name, segment::TABLE_SUFFIX) {
            listing.tables.push(base);
        }
    }
    listing.segments.sort_unstable();
    listing.indexes.sort_unstable();
    Ok(listing)
}

/// Whether the key table at `path` (of the segment at the mark) covers nothing past the mark.
fn table_within_mark(path: &Path, mark: &PartitionMark) -> bool {
    use std::io::Read;
    let mut header = [0u8; table::TABLE_HEADER_LEN];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut header));
    read.is_ok()
        && table::read_header(&header).is_some_and(|of| {
            of.base_offset == mark.segment_base
                && of.end_offset <= mark.end_offset
                && of.end_position <= mark.synced_position
        })
}

/// The key hash of the partition's key tables: the standard one, unless a test forces
/// collisions.
fn hash_kind(config: &Config) -> HashKind {
    match &config.faults {
        Some(faults) if faults.key_hash_collisions() => HashKind::Colliding,
        _ => HashKind::Standard,
    }
}
