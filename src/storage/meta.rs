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
//!  20  u32     reserved, 0
//!  24  u64     created, ms since the Unix epoch
//!  32  u32     CRC-32 of bytes [0, 32)
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::codec::{self, read_u32, read_u64, HeaderCheck};
use crate::storage::io::{self, Faults};
use crate::FORMAT_VERSION;

pub const META_FILE: &str = "annal.meta";
pub const LOCK_FILE: &str = "annal.lock";
pub const META_MAGIC: [u8; 8] = *b"ANNALLOG";
pub const META_CRC_OFFSET: usize = 32;
pub const META_LEN: usize = META_CRC_OFFSET + 4;
pub const HASH_FNV1A64_FMIX64: u32 = 1;

const _: () = assert!(META_LEN == 36);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub partitions: u32,
    pub created_ms: u64,
}

impl Meta {
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut bytes = codec::new_header::<META_LEN>(&META_MAGIC);
        bytes[12..16].copy_from_slice(&self.partitions.to_le_bytes());
        bytes[16..20].copy_from_slice(&HASH_FNV1A64_FMIX64.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        codec::seal_header(&mut bytes);
        bytes
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<Meta> {
        if bytes.len() != META_LEN {
            return Err(Error::corrupt(path, 0, "not an annal metadata file"));
        }
        match codec::check_header(bytes, META_LEN, &META_MAGIC) {
            HeaderCheck::Valid => {}
            HeaderCheck::Short | HeaderCheck::BadMagic => {
                return Err(Error::corrupt(path, 0, "not an annal metadata file"));
            }
            HeaderCheck::BadChecksum => {
                return Err(Error::corrupt(path, 0, "metadata checksum mismatch"));
            }
            HeaderCheck::Version(found) => {
                return Err(Error::IncompatibleFormat {
                    path: path.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        let partitions = read_u32(bytes, 12);
        if partitions == 0 || partitions > crate::options::PARTITIONS_MAX {
            return Err(Error::corrupt(path, 12, "partition count out of range"));
        }
        if read_u32(bytes, 16) != HASH_FNV1A64_FMIX64 {
            return Err(Error::corrupt(path, 16, "unknown key hash algorithm"));
        }
        Ok(Meta {
            partitions,
            created_ms: read_u64(bytes, 24),
        })
    }

    /// Reads the metadata file, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        match std::fs::read(&path) {
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
pub fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damaged_byte_is_refused() {
        let meta = Meta {
            partitions: 8,
            created_ms: 42,
        };
        let bytes = meta.encode();
        let path = Path::new("m");
        assert_eq!(Meta::decode(&bytes, path).unwrap(), meta);
        for i in 0..META_LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x01;
            assert!(Meta::decode(&damaged, path).is_err(), "byte {i}");
        }
    }
}
