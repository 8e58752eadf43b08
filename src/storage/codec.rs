//! Little-endian fields, and the checksummed fixed headers that every annal file starts with.
//!
//! The three file headers (`annal.meta`, segment, index; `docs/format.md`) share one shape:
//! 8 bytes of magic, the `u32` format version at byte 8, their own fields, and in their last 4
//! bytes the CRC-32 of every byte before it. They are checked in one order: length, magic,
//! checksum, version, so that a damaged header is reported as damaged, never as another version.

use crate::FORMAT_VERSION;

/// Where the format version sits in every header.
pub const VERSION_OFFSET: usize = 8;
/// Magic plus version: the part every header has before its own fields.
pub const HEADER_PREFIX_LEN: usize = VERSION_OFFSET + 4;
/// Length of the trailing checksum.
pub const CRC_LEN: usize = 4;

pub fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A header of `N` bytes with its magic and this build's format version filled in.
pub fn new_header<const N: usize>(magic: &[u8; 8]) -> [u8; N] {
    const { assert!(N >= HEADER_PREFIX_LEN + CRC_LEN) };
    let mut bytes = [0u8; N];
    bytes[..8].copy_from_slice(magic);
    bytes[VERSION_OFFSET..HEADER_PREFIX_LEN].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes
}

/// Writes the checksum of a header whose fields are filled in.
pub fn seal_header(bytes: &mut [u8]) {
    let crc_offset = bytes.len() - CRC_LEN;
    let crc = crc32fast::hash(&bytes[..crc_offset]);
    bytes[crc_offset..].copy_from_slice(&crc.to_le_bytes());
}

/// What [`check_header`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    Valid,
    /// Fewer bytes than the header.
    Short,
    BadMagic,
    BadChecksum,
    /// A whole, valid header of another format version.
    Version(u32),
}

/// Checks the header of `len` bytes at the start of `bytes`.
pub fn check_header(bytes: &[u8], len: usize, magic: &[u8; 8]) -> HeaderCheck {
    let Some(header) = bytes.get(..len) else {
        return HeaderCheck::Short;
    };
    if header[..8] != magic[..] {
        return HeaderCheck::BadMagic;
    }
    let crc_offset = len - CRC_LEN;
    if crc32fast::hash(&header[..crc_offset]) != read_u32(header, crc_offset) {
        return HeaderCheck::BadChecksum;
    }
    match read_u32(header, VERSION_OFFSET) {
        FORMAT_VERSION => HeaderCheck::Valid,
        other => HeaderCheck::Version(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_header_checks_out_and_any_damage_is_found() {
        let mut header = new_header::<24>(b"ANNALTST");
        header[12..20].copy_from_slice(&42u64.to_le_bytes());
        seal_header(&mut header);
        assert_eq!(check_header(&header, 24, b"ANNALTST"), HeaderCheck::Valid);
        assert_eq!(
            check_header(&header[..23], 24, b"ANNALTST"),
            HeaderCheck::Short
        );
        assert_eq!(
            check_header(&header, 24, b"ANNALXXX"),
            HeaderCheck::BadMagic
        );
        for i in 8..24 {
            let mut damaged = header;
            damaged[i] ^= 1;
            assert_eq!(
                check_header(&damaged, 24, b"ANNALTST"),
                HeaderCheck::BadChecksum
            );
        }
        header[VERSION_OFFSET] = 9;
        seal_header(&mut header);
        assert_eq!(
            check_header(&header, 24, b"ANNALTST"),
            HeaderCheck::Version(9)
        );
    }
}
