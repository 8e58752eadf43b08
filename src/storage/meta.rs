//! The log's metadata file and its directory lock.
//!
//! `annal.meta` records what every later open must agree with: the format version and the
//! partition count (which fixes where each key's events live). It is written once, atomically,
//! when the log is created.
//!
//! ```text
//!   0  [u8; 8] magic "ANNALLOG"
//!   8  u32     format version
//!  12  u32     partition count
//!  16  u32     key hash algorithm: 1 = FNV-1a 64 + fmix64 (hash.rs)
//!  20  u32     reserved, 0; anything else is refused
//!  24  u64     created, ms since the Unix epoch
//!  32  u32     CRC-32 of bytes [0, 32)
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::codec::{self, read_u32, read_u64, HeaderDamage};
use crate::storage::io::{self, Faults};
use crate::FORMAT_VERSION;

pub const META_FILE: &str = "annal.meta";
pub const LOCK_FILE: &str = "annal.lock";
pub const META_MAGIC: [u8; 8] = *b"ANNALLOG";
pub const META_PARTITIONS_OFFSET: usize = codec::HEADER_PREFIX_LEN;
pub const META_HASH_OFFSET: usize = META_PARTITIONS_OFFSET + 4;
pub const META_RESERVED_OFFSET: usize = META_HASH_OFFSET + 4;
pub const META_RESERVED_LEN: usize = 4;
pub const META_CREATED_OFFSET: usize = META_RESERVED_OFFSET + META_RESERVED_LEN;
pub const META_CRC_OFFSET: usize = META_CREATED_OFFSET + 8;
pub const META_LEN: usize = META_CRC_OFFSET + codec::CRC_LEN;
pub const HASH_FNV1A64_FMIX64: u32 = 1;

const _: () = assert!(META_RESERVED_OFFSET == 20 && META_CREATED_OFFSET == 24);
const _: () = assert!(META_LEN == 36);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub partitions: u32,
    pub created_ms: u64,
}

impl Meta {
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut bytes = codec::new_header::<META_LEN>(&META_MAGIC);
        bytes[META_PARTITIONS_OFFSET..META_HASH_OFFSET]
            .copy_from_slice(&self.partitions.to_le_bytes());
        bytes[META_HASH_OFFSET..META_RESERVED_OFFSET]
            .copy_from_slice(&HASH_FNV1A64_FMIX64.to_le_bytes());
        bytes[META_CREATED_OFFSET..META_CRC_OFFSET].copy_from_slice(&self.created_ms.to_le_bytes());
        codec::seal_header(&mut bytes);
        bytes
    }

    /// Decodes and checks the metadata file. Damage is reported at the byte that is wrong.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Meta> {
        if let Err(damage) = codec::check_header(bytes, META_LEN, &META_MAGIC) {
            let reason = match damage {
                HeaderDamage::Short { .. } => "metadata file shorter than its header",
                HeaderDamage::BadMagic => "not an annal metadata file",
                HeaderDamage::BadChecksum { .. } => "metadata checksum mismatch",
                HeaderDamage::Version(found) => {
                    return Err(Error::IncompatibleFormat {
                        path: path.to_owned(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            };
            return Err(Error::corrupt(path, damage.position(), reason));
        }
        if bytes.len() > META_LEN {
            return Err(Error::corrupt(
                path,
                META_LEN as u64,
                "bytes after the end of the metadata",
            ));
        }
        let partitions = read_u32(bytes, META_PARTITIONS_OFFSET);
        if partitions == 0 || partitions > crate::options::PARTITIONS_MAX {
            return Err(Error::corrupt(
                path,
                META_PARTITIONS_OFFSET as u64,
                "partition count out of range",
            ));
        }
        if read_u32(bytes, META_HASH_OFFSET) != HASH_FNV1A64_FMIX64 {
            return Err(Error::corrupt(
                path,
                META_HASH_OFFSET as u64,
                "unknown key hash algorithm",
            ));
        }
        let reserved = META_RESERVED_OFFSET..META_CREATED_OFFSET;
        if let Some(position) = codec::first_nonzero(bytes, reserved) {
            return Err(Error::corrupt(
                path,
                position as u64,
                "non-zero reserved byte in the metadata",
            ));
        }
        Ok(Meta {
            partitions,
            created_ms: read_u64(bytes, META_CREATED_OFFSET),
        })
    }

    /// Reads the metadata file, if there is one.
    pub fn read(dir: &Path, faults: &Faults) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        // One byte past a valid file tells a longer one apart.
        match io::read_prefix(&path, META_LEN as u64 + 1, faults) {
            Ok(bytes) => Meta::decode(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Writes the metadata file atomically and durably.
    pub fn write(&self, dir: &Path, faults: &Faults) -> Result<()> {
        io::write_file_atomic(&dir.join(META_FILE), &self.encode(), faults)
    }
}

/// Takes the exclusive lock on the directory. The lock is an `flock` on `annal.lock`, held for
/// as long as the returned file is open; the kernel releases it when the process dies, so a
/// crash never leaves a stale lock behind.
///
/// An `flock` belongs to the open file description, which a child process shares through any
/// descriptor it inherits: a child started while the log is open would keep the log locked
/// after this process closed it or died. The descriptor is therefore opened with `O_CLOEXEC`,
/// which `std::fs::OpenOptions` sets on every file it opens on Unix, so an `exec` closes it
/// (tested below and in `tests/files_not_inherited_by_child_processes.rs`).
pub fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    // A child process between its `fork` and its `exec` still shares the descriptors of a
    // `Log` that this process closed a moment ago: its lock is waited for, briefly.
    for _ in 0..LOCK_TRIES {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => std::thread::sleep(LOCK_RETRY),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
    }
    Err(Error::Locked {
        path: dir.to_owned(),
    })
}

/// How often, and how far apart, `lock` tries to take a lock held elsewhere.
const LOCK_TRIES: u32 = 20;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    /// The position of the `Error::Corrupt` that decoding `bytes` fails with.
    #[track_caller]
    fn corrupt_at(bytes: &[u8]) -> u64 {
        match Meta::decode(bytes, Path::new("m")) {
            Err(Error::Corrupt { position, .. }) => position,
            other => panic!("{other:?}"),
        }
    }

    fn meta() -> Meta {
        Meta {
            partitions: 8,
            created_ms: 42,
        }
    }

    /// `meta()` encoded, with `value` written at `at` and the checksum made valid again.
    fn rewritten(at: usize, value: &[u8]) -> [u8; META_LEN] {
        let mut bytes = meta().encode();
        bytes[at..at + value.len()].copy_from_slice(value);
        codec::seal_header(&mut bytes);
        bytes
    }

    #[test]
    fn round_trip_and_every_damaged_byte_is_refused() {
        let bytes = meta().encode();
        let path = Path::new("m");
        assert_eq!(Meta::decode(&bytes, path).unwrap(), meta());
        for i in 0..META_LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x01;
            assert!(Meta::decode(&damaged, path).is_err(), "byte {i}");
        }
    }

    #[test]
    fn damage_is_reported_at_the_byte_that_is_wrong() {
        let bytes = meta().encode();
        let mut magic = bytes;
        magic[3] ^= 1;
        assert_eq!(corrupt_at(&magic), 0);
        let mut body = bytes;
        body[25] ^= 1;
        assert_eq!(corrupt_at(&body), META_CRC_OFFSET as u64);
        assert_eq!(corrupt_at(&bytes[..20]), 20);
        assert_eq!(corrupt_at(&[&bytes[..], &[0]].concat()), META_LEN as u64);
        assert_eq!(corrupt_at(&rewritten(12, &0u32.to_le_bytes())), 12);
        assert_eq!(corrupt_at(&rewritten(16, &2u32.to_le_bytes())), 16);
    }

    #[test]
    fn the_lock_file_is_closed_on_exec() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let file = lock(dir.path()).unwrap();
        // SAFETY: F_GETFD only reads the flags of a descriptor that `file` owns.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags}");
    }

    #[test]
    fn a_non_zero_reserved_byte_with_a_valid_checksum_is_refused_at_its_position() {
        for at in META_RESERVED_OFFSET..META_CREATED_OFFSET {
            assert_eq!(corrupt_at(&rewritten(at, &[0x80])), at as u64, "byte {at}");
        }
    }
}
