//! The key-to-partition hash. It is part of the on-disk contract (`docs/format.md`): changing it
//! would send a key's new events to another partition than its old ones.

use std::num::NonZeroU32;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash of a key: FNV-1a 64 over the key bytes, then the MurmurHash3 `fmix64` finalizer.
///
/// FNV-1a alone leaves the low bits of the hash depending only on the low bits of each input
/// byte, so keys differing in one high bit would share a partition under `% partitions`. The
/// finalizer spreads every input bit over every output bit.
pub fn key_hash(key: &[u8]) -> u64 {
    fmix64(fnv1a64(key))
}

/// The partition that owns `key` in a log of `partitions` partitions: `key_hash(key) %
/// partitions` (`docs/format.md`).
///
/// The count is a [`NonZeroU32`] because a log always has at least one partition: a zero count
/// is a caller's bug, so the type rules it out instead of a division by zero at run time or an
/// error that every caller would have to handle for nothing.
///
/// ```
/// use std::num::NonZeroU32;
/// let partitions = NonZeroU32::new(8).unwrap();
/// assert_eq!(annal::partition_for(b"order-42", partitions), 6);
/// ```
///
/// A count of zero does not compile:
///
/// ```compile_fail
/// annal::partition_for(b"order-42", 0);
/// ```
pub fn partition_for(key: &[u8], partitions: NonZeroU32) -> u32 {
    // The remainder is below `partitions`, a u32, so the cast never truncates.
    (key_hash(key) % u64::from(partitions.get())) as u32
}

fn fnv1a64(key: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(partitions: u32) -> NonZeroU32 {
        NonZeroU32::new(partitions).unwrap()
    }

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// These vectors are also printed in docs/format.md; they must never change.
    #[test]
    fn key_hash_is_stable() {
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(key_hash(b"order-42"), 0x8e47_543c_313c_6386);
        assert_eq!(partition_for(b"order-42", of(8)), 6);
        assert_eq!(partition_for(b"foobar", of(8)), 3);
    }

    #[test]
    fn high_bit_differences_spread_over_partitions() {
        // "a" and "q" differ only in bit 4; FNV-1a alone would put them in one partition of 8.
        let partitions: std::collections::HashSet<u32> = (b'a'..=b'z')
            .map(|c| partition_for(&[b'k', c], of(8)))
            .collect();
        assert!(partitions.len() >= 6, "{partitions:?}");
    }

    #[test]
    fn a_single_partition_owns_every_key() {
        for key in [&b""[..], b"a", b"order-42"] {
            assert_eq!(partition_for(key, of(1)), 0);
        }
    }
}
