//! A fast, non-keyed hasher for the state's maps.
//!
//! A full sync at 100k services does millions of map operations on small keys (frontend
//! tuples, set names, element values); the standard SipHash took a measurable share of
//! the sync. Keys come from the cluster's own objects, and anyone who can create enough
//! Services to force collisions can already make the proxy do proportional work, so a
//! keyed hash buys nothing here. Words are mixed as FxHash (rustc's) does, then the
//! result is avalanched once.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

/// Word-at-a-time multiplicative hasher.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// Multiplication only carries entropy upwards, but hashbrown picks buckets with the
    /// low bits: without this final avalanche (murmur3's fmix64), keys that differ only
    /// in the middle of a string (`service-12345`) crowded into few buckets.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub(crate) type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    #[test]
    fn distinct_small_keys_hash_apart() {
        let b = BuildHasherDefault::<FastHasher>::default();
        let hashes: FastSet<u64> = (0u32..10_000)
            .map(|i| b.hash_one(("10.96.0.1", i)))
            .collect();
        assert_eq!(hashes.len(), 10_000);
        // A tail shorter than a word still counts.
        assert_ne!(b.hash_one("endpoints"), b.hash_one("endpointt"));
        // Keys differing only mid-string must spread over the low bits hashbrown uses for
        // buckets: 10k such keys over 2^14 buckets leave few empty.
        let buckets: FastSet<u64> = (0u32..10_000)
            .map(|i| b.hash_one(format!("service-{i}")) & ((1 << 14) - 1))
            .collect();
        assert!(buckets.len() > 7_000, "{} distinct buckets", buckets.len());
    }
}
