//! Little-endian fields, and the checksummed fixed headers that every annal file starts with.
//!
//! The three file headers (`annal.meta`, segment, index; `docs/format.md`) share one shape:
//! 8 bytes of magic, the `u32` format version at byte 8, their own fields, and in their last 4
//! bytes the CRC-32 of every byte before it. They are checked in one order: length, magic,
//! checksum, version, so that a damaged header is reported as damaged, never as another version.
//! Then each file checks its own fields, and that its reserved bytes are zero: they are zero in
//! this version, so anything else was written by something that does not follow it.

use std::ops::Range;

use crate::FORMAT_VERSION;

/// Where the magic sits in every header.
pub const MAGIC_OFFSET: usize = 0;
/// Length of the magic.
pub const MAGIC_LEN: usize = 8;
/// Where the format version sits in every header.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC_LEN;
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
pub fn new_header<const N: usize>(magic: &[u8; MAGIC_LEN]) -> [u8; N] {
    const { assert!(N >= HEADER_PREFIX_LEN + CRC_LEN) };
    let mut bytes = [0u8; N];
    bytes[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(magic);
    bytes[VERSION_OFFSET..HEADER_PREFIX_LEN].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes
}

/// Writes the checksum of a header whose fields are filled in.
pub fn seal_header(bytes: &mut [u8]) {
    let crc_offset = bytes.len() - CRC_LEN;
    let crc = crc32fast::hash(&bytes[..crc_offset]);
    bytes[crc_offset..].copy_from_slice(&crc.to_le_bytes());
}

/// What is wrong with a header, as [`check_header`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderDamage {
    /// The file ends at byte `len`, inside the header.
    Short {
        len: usize,
    },
    BadMagic,
    /// The CRC-32 at `crc_offset` does not match the bytes before it.
    BadChecksum {
        crc_offset: usize,
    },
    /// A whole, valid header of another format version.
    Version(u32),
}

impl HeaderDamage {
    /// The byte position of the damage in the file: where the file ends for a short header,
    /// else the field that is wrong.
    pub fn position(&self) -> u64 {
        match *self {
            HeaderDamage::Short { len } => len as u64,
            HeaderDamage::BadMagic => MAGIC_OFFSET as u64,
            HeaderDamage::BadChecksum { crc_offset } => crc_offset as u64,
            HeaderDamage::Version(_) => VERSION_OFFSET as u64,
        }
    }
}

/// Checks the header of `len` bytes at the start of `bytes`.
pub fn check_header(bytes: &[u8], len: usize, magic: &[u8; MAGIC_LEN]) -> Result<(), HeaderDamage> {
    let Some(header) = bytes.get(..len) else {
        return Err(HeaderDamage::Short { len: bytes.len() });
    };
    if header[MAGIC_OFFSET..VERSION_OFFSET] != magic[..] {
        return Err(HeaderDamage::BadMagic);
    }
    let crc_offset = len - CRC_LEN;
    if crc32fast::hash(&header[..crc_offset]) != read_u32(header, crc_offset) {
        return Err(HeaderDamage::BadChecksum { crc_offset });
    }
    match read_u32(header, VERSION_OFFSET) {
        FORMAT_VERSION => Ok(()),
        other => Err(HeaderDamage::Version(other)),
    }
}

/// The position of the first non-zero byte of `reserved`, a range of `bytes` that this version
/// of the format leaves zero.
pub fn first_nonzero(bytes: &[u8], reserved: Range<usize>) -> Option<usize> {
    let start = reserved.start;
    bytes[reserved]
        .iter()
        .position(|&b| b != 0)
        .map(|i| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_header_checks_out_and_any_damage_is_found_at_its_byte() {
        let mut header = new_header::<24>(b"ANNALTST");
        header[12..20].copy_from_slice(&42u64.to_le_bytes());
        seal_header(&mut header);
        assert_eq!(check_header(&header, 24, b"ANNALTST"), Ok(()));
        let short = check_header(&header[..23], 24, b"ANNALTST").unwrap_err();
        assert_eq!(short, HeaderDamage::Short { len: 23 });
        assert_eq!(short.position(), 23);
        let magic = check_header(&header, 24, b"ANNALXXX").unwrap_err();
        assert_eq!(magic, HeaderDamage::BadMagic);
        assert_eq!(magic.position(), 0);
        for i in 8..24 {
            let mut damaged = header;
            damaged[i] ^= 1;
            let damage = check_header(&damaged, 24, b"ANNALTST").unwrap_err();
            assert_eq!(damage, HeaderDamage::BadChecksum { crc_offset: 20 });
            assert_eq!(damage.position(), 20);
        }
        header[VERSION_OFFSET] = 9;
        seal_header(&mut header);
        let version = check_header(&header, 24, b"ANNALTST").unwrap_err();
        assert_eq!(version, HeaderDamage::Version(9));
        assert_eq!(version.position(), 8);
    }

    #[test]
    fn first_nonzero_finds_the_first_set_byte_of_the_range() {
        let mut bytes = [0u8; 16];
        assert_eq!(first_nonzero(&bytes, 4..12), None);
        bytes[2] = 1;
        bytes[12] = 1;
        assert_eq!(first_nonzero(&bytes, 4..12), None);
        bytes[9] = 1;
        bytes[11] = 1;
        assert_eq!(first_nonzero(&bytes, 4..12), Some(9));
    }
}
