//! Little-endian fields and the shared shape of file headers (`docs/format.md`): 8 bytes of
//! magic, the `u32` format version at byte 8, the file's own fields, and a CRC-32 of every byte
//! before it in the header's last 4 bytes.

use super::{Damage, FORMAT_VERSION};

/// Where the format version sits in every header.
pub const VERSION_OFFSET: usize = 8;
/// Length of a CRC-32 field.
pub const CRC_LEN: usize = 4;

pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

pub fn u128_at(bytes: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(b)
}

/// Checks a header of `len` bytes at the start of `bytes`, in the engine's order: length, magic,
/// checksum, version; so a damaged header is reported as damaged, never as another version.
/// `what` names the file kind in the reasons ("segment", "index", ...).
pub fn check_header(bytes: &[u8], len: usize, magic: &[u8; 8], what: &str) -> Result<(), Damage> {
    let Some(header) = bytes.get(..len) else {
        return Err(Damage::at(
            bytes.len() as u64,
            format!("{what} shorter than its {len}-byte header"),
        ));
    };
    if header[..8] != magic[..] {
        return Err(Damage::at(
            0,
            format!("bad {what} magic (not an annal {what} file)"),
        ));
    }
    let crc_offset = len - CRC_LEN;
    if crc32fast::hash(&header[..crc_offset]) != u32_at(header, crc_offset) {
        return Err(Damage::at(
            crc_offset as u64,
            format!("{what} header checksum mismatch"),
        ));
    }
    let version = u32_at(header, VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(Damage::at(
            VERSION_OFFSET as u64,
            format!(
                "{what} has format version {version}; this build reads version {FORMAT_VERSION}"
            ),
        ));
    }
    Ok(())
}

/// The position of the first non-zero byte of `bytes[range]`.
pub fn first_nonzero(bytes: &[u8], range: std::ops::Range<usize>) -> Option<usize> {
    let start = range.start;
    bytes[range].iter().position(|&b| b != 0).map(|i| start + i)
}
