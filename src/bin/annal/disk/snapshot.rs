//! Snapshot files (`docs/format.md` "Snapshot files"): their names and their bytes.

use super::bytes::{first_nonzero, u32_at, u64_at};
use super::Damage;

pub const SNAPSHOTS_DIR: &str = "snapshots";
const SNAPSHOT_MAGIC: &[u8; 8] = b"ANNALSNP";
const RESERVED_OFFSET: usize = 12;
const VERSION_OFFSET: usize = 16;
const KEY_LEN_OFFSET: usize = 24;
const STATE_LEN_OFFSET: usize = 28;
const HEADER_LEN: usize = 32;
const KEY_BYTES_MAX: u64 = u16::MAX as u64;
const STATE_BYTES_MAX: u64 = annal::SNAPSHOT_BYTES_MAX as u64;
/// The longest valid snapshot file: a reader never reads more than one byte past it.
pub const FILE_BYTES_MAX: u64 = HEADER_LEN as u64 + KEY_BYTES_MAX + STATE_BYTES_MAX + 4;

/// A snapshot file's name: `v<version, 20 digits>-<CRC-32 of the key, 8 hex>.snap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotName {
    pub version: u64,
    pub key_crc: u32,
}

pub fn parse_name(name: &str) -> Option<SnapshotName> {
    let rest = name.strip_prefix('v')?.strip_suffix(".snap")?;
    let (version, crc) = rest.split_once('-')?;
    if version.len() != 20 || crc.len() != 8 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !crc
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(SnapshotName {
        version: version.parse().ok()?,
        key_crc: u32::from_str_radix(crc, 16).ok()?,
    })
}

/// Whether a directory name under `snapshots/` has the shape of a key hash: 16 lowercase hex.
pub fn is_key_hash_dir(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A snapshot that passes the format's checks 1 to 8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile<'b> {
    pub version: u64,
    pub key: &'b [u8],
    pub state: &'b [u8],
}

/// Decodes a snapshot file, in the order of the format's checks.
pub fn decode(bytes: &[u8], name_version: Option<u64>) -> Result<SnapshotFile<'_>, Damage> {
    let len = bytes.len() as u64;
    if len > FILE_BYTES_MAX {
        return Err(Damage::at(
            FILE_BYTES_MAX,
            "snapshot file larger than the format allows",
        ));
    }
    if len < HEADER_LEN as u64 + 4 {
        return Err(Damage::at(
            len,
            "snapshot file shorter than its header and checksum",
        ));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(Damage::at(0, "bad snapshot magic"));
    }
    let crc_at = bytes.len() - 4;
    if crc32fast::hash(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
        return Err(Damage::at(crc_at as u64, "snapshot checksum mismatch"));
    }
    let format = u32_at(bytes, 8);
    if format != super::FORMAT_VERSION {
        return Err(Damage::at(
            8,
            format!("snapshot of format version {format}"),
        ));
    }
    if let Some(position) = first_nonzero(bytes, RESERVED_OFFSET..VERSION_OFFSET) {
        return Err(Damage::at(
            position as u64,
            "non-zero reserved byte in a snapshot",
        ));
    }
    let key_len = u64::from(u32_at(bytes, KEY_LEN_OFFSET));
    let state_len = u64::from(u32_at(bytes, STATE_LEN_OFFSET));
    if key_len == 0 || key_len > KEY_BYTES_MAX {
        return Err(Damage::at(
            KEY_LEN_OFFSET as u64,
            "snapshot key length out of range",
        ));
    }
    if state_len > STATE_BYTES_MAX {
        return Err(Damage::at(
            STATE_LEN_OFFSET as u64,
            "snapshot state length out of range",
        ));
    }
    if HEADER_LEN as u64 + key_len + state_len + 4 != len {
        return Err(Damage::at(
            KEY_LEN_OFFSET as u64,
            "snapshot lengths do not add up to the file's length",
        ));
    }
    let version = u64_at(bytes, VERSION_OFFSET);
    if name_version.is_some_and(|named| named != version) {
        return Err(Damage::at(
            VERSION_OFFSET as u64,
            "snapshot version differs from the one in its file name",
        ));
    }
    let key_end = HEADER_LEN + key_len as usize;
    Ok(SnapshotFile {
        version,
        key: &bytes[HEADER_LEN..key_end],
        state: &bytes[key_end..crc_at],
    })
}
