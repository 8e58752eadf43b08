//! The next version of every key appended since the log was opened, kept by the sequencer under
//! its lock.
//!
//! A key that is not here has no events appended since open, so its versions are all on disk:
//! the appender looks its last version up in the key tables (`lookup.rs`) *outside* the lock
//! and offers it with the epoch it read before looking. The offer is taken only if the key is
//! still absent and the epoch unchanged; the epoch moves when the map is cleared (after a
//! failed write under `Sync`, whose rewound versions are known only to the disk again). Keys
//! are stored whole, so two keys with the same hash never share a counter.
//!
//! Memory: one entry per key touched since open, about 48 bytes plus the key's length.

use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct KeyVersions {
    next: HashMap<Box<[u8]>, u64>,
    epoch: u64,
}

impl KeyVersions {
    /// The version the key's next event gets, if the key is known.
    pub fn next(&self, key: &[u8]) -> Option<u64> {
        self.next.get(key).copied()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes a version looked up on disk under `epoch`, unless the key became known meanwhile
    /// or the map was cleared since. Returns whether the key is known now.
    pub fn offer(&mut self, key: &[u8], next: u64, epoch: u64) -> bool {
        if self.next.contains_key(key) {
            return true;
        }
        if epoch != self.epoch {
            return false;
        }
        self.next.insert(key.into(), next);
        true
    }

    /// Records that the key's next event gets `next`.
    pub fn set(&mut self, key: &[u8], next: u64) {
        match self.next.get_mut(key) {
            Some(slot) => *slot = next,
            None => {
                self.next.insert(key.into(), next);
            }
        }
    }

    /// Forgets every key: their versions are on disk again (and only there).
    pub fn clear(&mut self) {
        self.next.clear();
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_from_before_a_clear_is_refused() {
        let mut versions = KeyVersions::default();
        let epoch = versions.epoch();
        versions.clear();
        assert!(!versions.offer(b"k", 5, epoch));
        assert_eq!(versions.next(b"k"), None);
        assert!(versions.offer(b"k", 5, versions.epoch()));
        assert_eq!(versions.next(b"k"), Some(5));
    }

    #[test]
    fn a_known_key_keeps_its_version() {
        let mut versions = KeyVersions::default();
        versions.set(b"k", 9);
        assert!(versions.offer(b"k", 2, versions.epoch()));
        assert_eq!(versions.next(b"k"), Some(9));
    }
}
