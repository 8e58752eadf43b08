//! The aggregate snapshot store: the state of one key's aggregate at one version, so that loading
//! it replays only the events after that version.
//!
//! Snapshots are derived data: without them the aggregate is rebuilt by a full replay. So a
//! snapshot file that is damaged is skipped, never returned, and `load` falls back to the
//! previous snapshot of the key, or to `None`. The layout is the section "Snapshot files" of
//! `docs/format.md`:
//!
//! ```text
//! <log dir>/snapshots/<key_hash as 16 lowercase hex>/v<version as 20 digits>-<crc32 of key as 8 hex>.snap
//!   0  [u8; 8] magic "ANNALSNP"
//!   8  u32     format version
//!  12  u32     reserved, 0
//!  16  u64     version of the aggregate
//!  24  u32     key_len
//!  28  u32     state_len
//!  32  key bytes, then state bytes
//!      u32     CRC-32 of every byte before it
//! ```
//!
//! Crash safety: a save writes a whole new file through `io::write_file_atomic` (temporary
//! file, fsync, rename, directory fsync) and removes older files only after that returned, so a
//! crash at any instant leaves the previous snapshot or the new one in place. Each key keeps the
//! snapshot just saved and the newest `keep - 1` valid others, so that a snapshot damaged after
//! it was written (bit rot) still has a valid one behind it.
//!
//! Keys of one directory share a 64-bit hash, so a file is returned only when the key inside it
//! equals the key asked for; the key's CRC in the name only spares reading other keys' files.
//!
//! A state over [`SNAPSHOT_BYTES_MAX`] is refused with [`Error::SnapshotTooLarge`].

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::storage::codec::{self, read_u32, read_u64, CRC_LEN, MAGIC_LEN};
use crate::storage::frame::KEY_BYTES_LIMIT;
use crate::storage::hash::key_hash;
use crate::storage::io::{self, Faults};
use crate::FORMAT_VERSION;

/// Largest state a snapshot holds, in bytes (64 MiB). Every saved file is read back whole, so
/// the limit bounds what a load allocates.
pub const SNAPSHOT_BYTES_MAX: u32 = 64 << 20;

/// The directory under the log directory that holds every key's snapshot directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// How many valid snapshots each key keeps: the newest, and one to fall back to.
pub const KEEP_DEFAULT: usize = 2;
const _: () = assert!(
    KEEP_DEFAULT >= 2,
    "a damaged newest snapshot needs one behind it"
);

pub const SNAPSHOT_MAGIC: [u8; MAGIC_LEN] = *b"ANNALSNP";
pub const SNAPSHOT_RESERVED_OFFSET: usize = codec::HEADER_PREFIX_LEN;
pub const SNAPSHOT_VERSION_OFFSET: usize = SNAPSHOT_RESERVED_OFFSET + 4;
pub const SNAPSHOT_KEY_LEN_OFFSET: usize = SNAPSHOT_VERSION_OFFSET + 8;
pub const SNAPSHOT_STATE_LEN_OFFSET: usize = SNAPSHOT_KEY_LEN_OFFSET + 4;
pub const SNAPSHOT_HEADER_LEN: usize = SNAPSHOT_STATE_LEN_OFFSET + 4;
/// A key is at most as long as a frame can carry, so every key that has events can have a
/// snapshot.
pub const SNAPSHOT_KEY_BYTES_MAX: u32 = KEY_BYTES_LIMIT;
/// The longest valid snapshot file; a load reads no more than one byte past it.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = SNAPSHOT_HEADER_LEN as u64
    + SNAPSHOT_KEY_BYTES_MAX as u64
    + SNAPSHOT_BYTES_MAX as u64
    + CRC_LEN as u64;

const _: () = assert!(SNAPSHOT_RESERVED_OFFSET == 12 && SNAPSHOT_VERSION_OFFSET == 16);
const _: () = assert!(SNAPSHOT_KEY_LEN_OFFSET == 24 && SNAPSHOT_STATE_LEN_OFFSET == 28);
const _: () = assert!(SNAPSHOT_HEADER_LEN == 32);

/// File names carry the version as 20 decimal digits, enough for every `u64`, so that name
/// order is version order; then the key's CRC-32 as 8 hex digits.
const VERSION_DIGITS: usize = 20;
const KEY_CRC_DIGITS: usize = 8;
const _: () = assert!(u64::MAX.ilog10() as usize + 1 == VERSION_DIGITS);
const SNAPSHOT_EXTENSION: &str = ".snap";

/// The state of one key's aggregate at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The aggregate's key, as given to the save.
    pub key: Bytes,
    /// The aggregate's version: the state includes every event of the key up to it.
    pub version: u64,
    /// The bytes the application saved, as it encoded them.
    pub state: Bytes,
}

/// The snapshots of one log, in `<log dir>/snapshots`.
#[derive(Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    faults: Faults,
    keep: usize,
    /// Saves run one at a time: two saves of one version would share a temporary file, and a
    /// save removes the `.tmp` leftovers of its directory, which must not be another save's
    /// file in progress. Loads take no lock: a save replaces files by rename and removes only
    /// files older than the newest, which a load reads first.
    saving: Mutex<()>,
}

impl SnapshotStore {
    /// The store of the log in `log_dir`. Creates nothing until the first save.
    pub fn new(log_dir: &Path, faults: Faults) -> SnapshotStore {
        SnapshotStore {
            dir: log_dir.join(SNAPSHOTS_DIR),
            faults,
            keep: KEEP_DEFAULT,
            saving: Mutex::new(()),
        }
    }

    /// Saves `state` as the snapshot of `key` at `version`, durably. A version at or below an
    /// existing one is allowed; the same version is replaced atomically.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyKey`], [`Error::KeyTooLarge`] (over 65,535 bytes) and
    /// [`Error::SnapshotTooLarge`] (a state over [`SNAPSHOT_BYTES_MAX`]) before anything is
    /// written; [`Error::Io`] or [`Error::DiskFull`] when a write or sync fails, and then the
    /// new snapshot is not known to be durable (the previous ones are all kept).
    pub fn save(&self, key: &[u8], version: u64, state: &[u8]) -> Result<()> {
        self.save_in(&self.key_dir(key), key, version, state)
    }

    /// The newest valid snapshot of `key`, or `None` when it has none (replay from the start).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directory or a file cannot be read, and
    /// [`Error::IncompatibleFormat`] for a whole file of another format version. Damaged files
    /// are skipped, not reported.
    #[cfg(test)]
    pub fn load(&self, key: &[u8]) -> Result<Option<Snapshot>> {
        self.load_in(&self.key_dir(key), key, u64::MAX)
    }

    /// The newest valid snapshot of `key` whose version is at most `version_max`, for reading
    /// an aggregate as of an earlier version. Errors as for [`load`](Self::load).
    pub fn load_at_or_before(&self, key: &[u8], version_max: u64) -> Result<Option<Snapshot>> {
        self.load_in(&self.key_dir(key), key, version_max)
    }

    fn key_dir(&self, key: &[u8]) -> PathBuf {
        self.dir.join(format!("{:016x}", key_hash(key)))
    }

    /// [`save`](Self::save) into `dir`, which tests choose to make keys share a directory.
    fn save_in(&self, dir: &Path, key: &[u8], version: u64, state: &[u8]) -> Result<()> {
        check_limits(key, state)?;
        let _saving = self.saving.lock();
        io::create_dir_all_durable(dir, &self.faults)?;
        remove_tmp_files(dir, &self.faults);
        let path = dir.join(file_name(key, version));
        io::write_file_atomic(&path, &encode(key, version, state), &self.faults)?;
        self.prune(dir, key, version);
        Ok(())
    }

    fn load_in(&self, dir: &Path, key: &[u8], version_max: u64) -> Result<Option<Snapshot>> {
        for (version, path) in key_files(dir, key)? {
            if version > version_max {
                continue;
            }
            match read_snapshot(&path, version, &self.faults) {
                Ok(Some(snapshot)) if snapshot.key == key => return Ok(Some(snapshot)),
                // Removed since the listing, or another key's file under the same name.
                Ok(_) => {}
                Err(error) if error.is_corruption() => {}
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Keeps the snapshot just saved and the newest `keep - 1` valid others of `key`, and
    /// removes the key's older valid files. Damaged files and other keys' files are left alone:
    /// their key cannot be trusted or is not ours. So each save reads the files it keeps or
    /// removes (normally two). Failures are ignored: the new snapshot is already durable, and an
    /// older file left behind costs only space until the next save.
    fn prune(&self, dir: &Path, key: &[u8], saved_version: u64) {
        let Ok(files) = key_files(dir, key) else {
            return;
        };
        let mut kept = 1;
        for (version, path) in files {
            if version == saved_version {
                continue;
            }
            if !matches!(read_snapshot(&path, version, &self.faults), Ok(Some(s)) if s.key == key) {
                continue;
            }
            if kept < self.keep {
                kept += 1;
            } else {
                // A removal lost to a crash brings back an older valid snapshot, never garbage,
                // so the directory is not synced for it.
                let _ = io::remove_file(&path, &self.faults);
            }
        }
    }
}

fn check_limits(key: &[u8], state: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() as u64 > u64::from(SNAPSHOT_KEY_BYTES_MAX) {
        return Err(Error::KeyTooLarge {
            bytes: key.len() as u64,
            limit: u64::from(SNAPSHOT_KEY_BYTES_MAX),
        });
    }
    if state.len() as u64 > u64::from(SNAPSHOT_BYTES_MAX) {
        return Err(Error::SnapshotTooLarge {
            bytes: state.len() as u64,
            limit: u64::from(SNAPSHOT_BYTES_MAX),
        });
    }
    Ok(())
}

fn file_name(key: &[u8], version: u64) -> String {
    format!(
        "v{version:020}-{:08x}{SNAPSHOT_EXTENSION}",
        crc32fast::hash(key)
    )
}

/// The version and key CRC in a snapshot file's name; `None` for any other name (`.tmp` ones
/// included).
fn parse_file_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_prefix('v')?.strip_suffix(SNAPSHOT_EXTENSION)?;
    let (version, crc) = stem.split_once('-')?;
    let decimal = version.len() == VERSION_DIGITS && version.bytes().all(|b| b.is_ascii_digit());
    let hex =
        crc.len() == KEY_CRC_DIGITS && crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !decimal || !hex {
        return None;
    }
    Some((version.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
}

/// The snapshot files in `dir` whose name carries `key`'s CRC, newest version first. A missing
/// directory holds none.
fn key_files(dir: &Path, key: &[u8]) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let key_crc = crc32fast::hash(key);
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        if let Some((version, crc)) = name.to_str().and_then(parse_file_name) {
            if crc == key_crc {
                files.push((version, entry.path()));
            }
        }
    }
    files.sort_unstable_by_key(|&(version, _)| std::cmp::Reverse(version));
    Ok(files)
}

/// Removes what interrupted saves left in `dir`. Only saves write there and they run one at a
/// time, so none of these files is in progress. Failures are ignored: loads never read them.
fn remove_tmp_files(dir: &Path, faults: &Faults) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "tmp") {
            let _ = io::remove_file(&entry.path(), faults);
        }
    }
}

fn encode(key: &[u8], version: u64, state: &[u8]) -> Vec<u8> {
    let mut header = codec::new_header::<SNAPSHOT_HEADER_LEN>(&SNAPSHOT_MAGIC);
    // check_limits held, so both lengths fit their u32 fields.
    let (key_len, state_len) = (key.len() as u32, state.len() as u32);
    header[SNAPSHOT_VERSION_OFFSET..SNAPSHOT_KEY_LEN_OFFSET]
        .copy_from_slice(&version.to_le_bytes());
    header[SNAPSHOT_KEY_LEN_OFFSET..SNAPSHOT_STATE_LEN_OFFSET]
        .copy_from_slice(&key_len.to_le_bytes());
    header[SNAPSHOT_STATE_LEN_OFFSET..].copy_from_slice(&state_len.to_le_bytes());
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_LEN + key.len() + state.len() + CRC_LEN);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(state);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Reads and checks the snapshot file at `path`, named with `name_version`; `None` when the
/// file is gone. Damage is `Error::Corrupt` at the byte that is wrong.
fn read_snapshot(path: &Path, name_version: u64, faults: &Faults) -> Result<Option<Snapshot>> {
    // One byte past the largest valid file is enough to tell that a file is too long, so no
    // length on disk can make this read allocate more.
    let bytes = match io::read_prefix(path, SNAPSHOT_FILE_BYTES_MAX + 1, faults) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    decode(Bytes::from(bytes), path, name_version).map(Some)
}

/// Checks in the order of every annal header (length, magic, checksum, version), then the
/// fields, so that a damaged file is reported as damaged, never as another version.
fn decode(bytes: Bytes, path: &Path, name_version: u64) -> Result<Snapshot> {
    let corrupt = |position: usize, reason| Err(Error::corrupt(path, position as u64, reason));
    let len = bytes.len();
    if len as u64 > SNAPSHOT_FILE_BYTES_MAX {
        return corrupt(SNAPSHOT_FILE_BYTES_MAX as usize, "snapshot file too long");
    }
    if len < SNAPSHOT_HEADER_LEN + CRC_LEN {
        return corrupt(len, "snapshot file shorter than its header");
    }
    if bytes[..MAGIC_LEN] != SNAPSHOT_MAGIC {
        return corrupt(0, "not a snapshot file");
    }
    let crc_offset = len - CRC_LEN;
    if crc32fast::hash(&bytes[..crc_offset]) != read_u32(&bytes, crc_offset) {
        return corrupt(crc_offset, "snapshot checksum mismatch");
    }
    let found = read_u32(&bytes, codec::VERSION_OFFSET);
    if found != FORMAT_VERSION {
        return Err(Error::IncompatibleFormat {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let reserved = SNAPSHOT_RESERVED_OFFSET..SNAPSHOT_VERSION_OFFSET;
    if let Some(position) = codec::first_nonzero(&bytes, reserved) {
        return corrupt(position, "non-zero reserved byte in a snapshot");
    }
    let key_len = read_u32(&bytes, SNAPSHOT_KEY_LEN_OFFSET);
    let state_len = read_u32(&bytes, SNAPSHOT_STATE_LEN_OFFSET);
    if key_len == 0 || key_len > SNAPSHOT_KEY_BYTES_MAX {
        return corrupt(SNAPSHOT_KEY_LEN_OFFSET, "snapshot key length out of range");
    }
    if state_len > SNAPSHOT_BYTES_MAX {
        return corrupt(SNAPSHOT_STATE_LEN_OFFSET, "snapshot state over the limit");
    }
    // Both lengths are bounded above, so this sum cannot overflow.
    let key_end = SNAPSHOT_HEADER_LEN + key_len as usize;
    if key_end + state_len as usize != crc_offset {
        return corrupt(
            SNAPSHOT_KEY_LEN_OFFSET,
            "snapshot lengths differ from the file's",
        );
    }
    let version = read_u64(&bytes, SNAPSHOT_VERSION_OFFSET);
    if version != name_version {
        return corrupt(
            SNAPSHOT_VERSION_OFFSET,
            "snapshot version differs from its name",
        );
    }
    Ok(Snapshot {
        key: bytes.slice(SNAPSHOT_HEADER_LEN..key_end),
        version,
        state: bytes.slice(key_end..crc_offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::FailPoints;

    const KEY: &[u8] = b"order-42";

    fn loaded(store: &SnapshotStore, key: &[u8], version_max: u64) -> Option<(u64, Vec<u8>)> {
        let snapshot = store.load_at_or_before(key, version_max).unwrap()?;
        assert_eq!(snapshot.key, key);
        Some((snapshot.version, snapshot.state.to_vec()))
    }

    fn latest(store: &SnapshotStore, key: &[u8]) -> Option<(u64, Vec<u8>)> {
        let snapshot = loaded(store, key, u64::MAX);
        assert_eq!(
            store.load(key).unwrap().map(|s| s.version),
            snapshot.as_ref().map(|s| s.0)
        );
        snapshot
    }

    fn versions_on_disk(store: &SnapshotStore, key: &[u8]) -> Vec<u64> {
        let files = key_files(&store.key_dir(key), key).unwrap();
        files.into_iter().map(|(version, _)| version).collect()
    }

    fn path_of(store: &SnapshotStore, key: &[u8], version: u64) -> PathBuf {
        store.key_dir(key).join(file_name(key, version))
    }

    /// A store holding version 1 ("old") and version 2 ("new state") of `KEY`, and the bytes
    /// of version 2's file.
    fn two_versions(dir: &tempfile::TempDir) -> (SnapshotStore, PathBuf, Vec<u8>) {
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 1, b"old").unwrap();
        store.save(KEY, 2, b"new state").unwrap();
        let newest = path_of(&store, KEY, 2);
        let bytes = fs::read(&newest).unwrap();
        (store, newest, bytes)
    }

    #[test]
    fn a_saved_snapshot_loads_back_from_its_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 7, b"state").unwrap();
        let expected = Snapshot {
            key: Bytes::from_static(KEY),
            version: 7,
            state: Bytes::from_static(b"state"),
        };
        assert_eq!(store.load(KEY).unwrap(), Some(expected));
        let name = format!("v00000000000000000007-{:08x}.snap", crc32fast::hash(KEY));
        let path = dir.path().join("snapshots/8e47543c313c6386").join(name);
        assert_eq!(fs::metadata(path).unwrap().len(), 32 + 8 + 5 + 4);
    }

    #[test]
    fn the_newest_version_wins_and_only_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        for version in 1..=4 {
            store.save(KEY, version, &[version as u8]).unwrap();
        }
        assert_eq!(latest(&store, KEY), Some((4, vec![4])));
        assert_eq!(versions_on_disk(&store, KEY), [4, 3]);
    }

    #[test]
    fn saving_the_same_version_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 5, b"first").unwrap();
        store.save(KEY, 5, b"second").unwrap();
        assert_eq!(latest(&store, KEY), Some((5, b"second".to_vec())));
        assert_eq!(versions_on_disk(&store, KEY), [5]);
    }

    #[test]
    fn an_older_version_can_be_saved_and_the_newest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 10, b"ten").unwrap();
        store.save(KEY, 20, b"twenty").unwrap();
        store.save(KEY, 15, b"fifteen").unwrap();
        assert_eq!(latest(&store, KEY), Some((20, b"twenty".to_vec())));
        assert_eq!(loaded(&store, KEY, 19), Some((15, b"fifteen".to_vec())));
        assert_eq!(versions_on_disk(&store, KEY), [20, 15]);
    }

    #[test]
    fn load_at_or_before_returns_the_newest_at_or_below_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 5, b"five").unwrap();
        store.save(KEY, 10, b"ten").unwrap();
        assert_eq!(loaded(&store, KEY, 4), None);
        assert_eq!(loaded(&store, KEY, 5), Some((5, b"five".to_vec())));
        assert_eq!(loaded(&store, KEY, 9), Some((5, b"five".to_vec())));
        assert_eq!(loaded(&store, KEY, 10), Some((10, b"ten".to_vec())));
    }

    #[test]
    fn a_torn_newest_file_falls_back_to_the_previous_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let (store, newest, bytes) = two_versions(&dir);
        for len in 0..bytes.len() {
            fs::write(&newest, &bytes[..len]).unwrap();
            assert_eq!(
                latest(&store, KEY),
                Some((1, b"old".to_vec())),
                "torn at {len}"
            );
        }
        fs::write(&newest, &bytes).unwrap();
        assert_eq!(latest(&store, KEY), Some((2, b"new state".to_vec())));
    }

    #[test]
    fn a_flipped_bit_at_any_byte_falls_back_to_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let (store, newest, bytes) = two_versions(&dir);
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 1 << (position % 8);
            fs::write(&newest, &damaged).unwrap();
            let found = latest(&store, KEY);
            assert_eq!(
                found,
                Some((1, b"old".to_vec())),
                "bit flipped at {position}"
            );
        }
    }

    #[test]
    fn keys_sharing_a_directory_never_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        let shared = store.dir.join("0000000000000000");
        let load = |key: &[u8], version_max| {
            let snapshot = store.load_in(&shared, key, version_max).unwrap()?;
            assert_eq!(snapshot.key, key);
            Some((snapshot.version, snapshot.state.to_vec()))
        };
        for version in [1, 3, 5] {
            store.save_in(&shared, b"alpha", version, b"A").unwrap();
        }
        store.save_in(&shared, b"beta", 2, b"B").unwrap();
        store.save_in(&shared, b"beta", 9, b"B9").unwrap();
        assert_eq!(load(b"alpha", u64::MAX), Some((5, b"A".to_vec())));
        assert_eq!(load(b"alpha", 2), None, "beta's version 2 is not alpha's");
        assert_eq!(load(b"beta", 8), Some((2, b"B".to_vec())));
        // A file of beta's under a name with alpha's CRC (a CRC collision on top of the hash
        // collision) is read, and refused for its key.
        let impostor = shared.join(file_name(b"alpha", 9));
        fs::copy(shared.join(file_name(b"beta", 9)), &impostor).unwrap();
        assert_eq!(load(b"alpha", u64::MAX), Some((5, b"A".to_vec())));
        // Pruning alpha removes alpha's old file only.
        store.save_in(&shared, b"alpha", 6, b"A6").unwrap();
        assert!(impostor.exists() && shared.join(file_name(b"beta", 2)).exists());
        assert!(!shared.join(file_name(b"alpha", 3)).exists());
        assert_eq!(load(b"alpha", u64::MAX), Some((6, b"A6".to_vec())));
        assert_eq!(load(b"beta", u64::MAX), Some((9, b"B9".to_vec())));
    }

    #[test]
    fn a_failed_fsync_fails_the_save_and_keeps_the_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FailPoints::new();
        let store = SnapshotStore::new(dir.path(), Some(faults.clone()));
        store.save(KEY, 1, b"old").unwrap();
        faults.fail_syncs(1);
        let error = store.save(KEY, 2, b"new").unwrap_err();
        assert!(matches!(error, Error::Io { op: "fsync", .. }), "{error:?}");
        assert_eq!(latest(&store, KEY), Some((1, b"old".to_vec())));
        let tmp = io::tmp_path(&path_of(&store, KEY, 2));
        assert!(tmp.exists(), "the failed save leaves its temporary file");
        store.save(KEY, 3, b"newer").unwrap();
        assert!(!tmp.exists(), "the next save removes it");
        assert_eq!(latest(&store, KEY), Some((3, b"newer".to_vec())));
    }

    #[test]
    fn an_unknown_key_loads_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        store.save(KEY, 1, b"state").unwrap();
        assert_eq!(store.load(b"order-43").unwrap(), None);
        assert_eq!(store.load_at_or_before(b"order-43", 1).unwrap(), None);
    }

    #[test]
    fn a_missing_snapshots_directory_loads_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        assert_eq!(store.load(KEY).unwrap(), None);
        assert!(
            !dir.path().join(SNAPSHOTS_DIR).exists(),
            "new creates nothing"
        );
    }

    #[test]
    fn limits_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), None);
        assert!(matches!(store.save(b"", 1, b"s"), Err(Error::EmptyKey)));
        let long_key = vec![b'k'; KEY_BYTES_LIMIT as usize + 1];
        let error = store.save(&long_key, 1, b"s").unwrap_err();
        assert!(matches!(
            error,
            Error::KeyTooLarge {
                bytes: 65536,
                limit: 65535
            }
        ));
        let big_state = vec![0u8; SNAPSHOT_BYTES_MAX as usize + 1];
        let error = store.save(KEY, 1, &big_state).unwrap_err();
        let limit = u64::from(SNAPSHOT_BYTES_MAX);
        assert!(
            matches!(error, Error::SnapshotTooLarge { bytes, limit: l } if bytes == limit + 1 && l == limit)
        );
        assert!(!dir.path().join(SNAPSHOTS_DIR).exists());
    }

    #[test]
    fn damage_is_reported_at_its_byte() {
        let path = Path::new("v.snap");
        let bytes = encode(b"k", 3, b"state");
        let decode_at =
            |bytes: &[u8], name_version| decode(Bytes::copy_from_slice(bytes), path, name_version);
        assert_eq!(decode_at(&bytes, 3).unwrap().state, &b"state"[..]);
        let position = |bytes: &[u8], name_version| match decode_at(bytes, name_version) {
            Err(Error::Corrupt { position, .. }) => position,
            other => panic!("{other:?}"),
        };
        let resealed = |offset: usize, value: u8| {
            let mut bytes = bytes.clone();
            bytes[offset] = value;
            let crc_offset = bytes.len() - CRC_LEN;
            let crc = crc32fast::hash(&bytes[..crc_offset]);
            bytes[crc_offset..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        assert_eq!(position(&bytes[..35], 3), 35);
        assert_eq!(position(&resealed(0, b'X'), 3), 0);
        let mut flipped = bytes.clone();
        flipped[33] ^= 1;
        assert_eq!(position(&flipped, 3), bytes.len() as u64 - 4);
        assert_eq!(position(&resealed(13, 1), 3), 13);
        assert_eq!(position(&resealed(SNAPSHOT_KEY_LEN_OFFSET, 2), 3), 24);
        assert_eq!(
            position(&resealed(SNAPSHOT_STATE_LEN_OFFSET + 3, 0xff), 3),
            28
        );
        assert_eq!(position(&bytes, 4), 16, "the name says another version");
        let other_version = resealed(codec::VERSION_OFFSET, 9);
        let error = decode_at(&other_version, 3).unwrap_err();
        assert!(
            matches!(error, Error::IncompatibleFormat { found: 9, .. }),
            "{error:?}"
        );
    }

    /// A power cut at every recorded instant of three saves (the third one pruning the first),
    /// each with several choices of what unsynced bytes and directory entries survive.
    #[test]
    fn a_crash_at_any_instant_of_a_save_leaves_the_previous_or_the_new_snapshot() {
        let root = tempfile::tempdir().unwrap();
        let faults = FailPoints::new();
        faults.record_crashes(root.path());
        let store = SnapshotStore::new(root.path(), Some(faults.clone()));
        let state_of = |version: u64| vec![version as u8; 700 * version as usize];
        let mut save_ends = Vec::new();
        for version in 1..=3 {
            store.save(KEY, version, &state_of(version)).unwrap();
            save_ends.push(faults.recorded_ops());
        }
        for ops in 0..=faults.recorded_ops() {
            let saved = save_ends.iter().filter(|&&end| end <= ops).count() as u64;
            for seed in 0..8 {
                let image = tempfile::tempdir().unwrap();
                faults.crash_image(ops, image.path(), seed).unwrap();
                let found = SnapshotStore::new(image.path(), None).load(KEY).unwrap();
                let version = found.as_ref().map_or(0, |s| s.version);
                let at = format!("crash after {ops} ops, seed {seed}");
                assert!(
                    version == saved || (version == saved + 1 && saved < 3),
                    "{version}, {at}"
                );
                if let Some(snapshot) = found {
                    assert_eq!(snapshot.state, state_of(version), "{at}");
                }
            }
        }
    }
}
