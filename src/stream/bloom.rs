//! A Bloom filter over 64-bit hashes, stored as little-endian `u64` words (`docs/format.md`).
//!
//! Key and id tables keep one each so that a lookup of a key or id that a segment does not
//! hold (a new key, a new id: the common case for appends) costs a few bit tests, not a binary
//! search. About 10 bits per item and 7 probes give roughly a 1% false-positive rate; a false
//! positive costs only the binary search it would have skipped.

/// Bits per item the filter is sized for.
pub const BITS_PER_ITEM: u64 = 10;
/// Bit tests per lookup.
pub const PROBES: u32 = 7;

/// The number of `u64` words of a filter for `items` items: at least one.
pub fn words_for(items: u64) -> u64 {
    (items * BITS_PER_ITEM).div_ceil(64).max(1)
}

/// The bit positions of `hash` in a filter of `words` words: double hashing from the two
/// halves of the hash, mixed so that similar hashes spread.
fn probes(hash: u64, words: u64) -> impl Iterator<Item = u64> {
    let mixed = mix(hash);
    let h1 = mixed;
    let h2 = (mixed >> 32) | 1;
    let bits = words * 64;
    (0..u64::from(PROBES)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

fn mix(mut x: u64) -> u64 {
    // The finalizer of splitmix64.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Sets the bits of `hash` in `words`.
pub fn insert(words: &mut [u64], hash: u64) {
    let n = words.len() as u64;
    for bit in probes(hash, n) {
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

/// Whether `hash` may be in the filter stored as little-endian words in `bytes`. An empty
/// filter holds nothing.
pub fn may_contain(bytes: &[u8], hash: u64) -> bool {
    let n = (bytes.len() / 8) as u64;
    if n == 0 {
        return false;
    }
    probes(hash, n).all(|bit| {
        let at = (bit / 64) as usize * 8;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word) & (1 << (bit % 64)) != 0
    })
}

/// Folds an event id to the 64-bit hash its filter uses.
pub fn id_hash(id: u128) -> u64 {
    (id as u64) ^ ((id >> 64) as u64).rotate_left(29)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn inserted_hashes_are_found_and_most_others_are_not() {
        let items = 10_000u64;
        let mut words = vec![0u64; words_for(items) as usize];
        for i in 0..items {
            insert(&mut words, i * 7919);
        }
        let bytes = to_bytes(&words);
        assert!((0..items).all(|i| may_contain(&bytes, i * 7919)));
        let false_positives = (0..items)
            .filter(|i| may_contain(&bytes, 1 << 40 | (i * 7919 + 1)))
            .count();
        assert!(false_positives < 300, "{false_positives} false positives");
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        assert!(!may_contain(&[], 5));
    }
}
