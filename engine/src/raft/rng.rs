//! A tiny seeded pseudo-random generator (SplitMix64).
//!
//! The core must be deterministic: every random choice (election timeouts) comes from this
//! generator, seeded from the group's configuration, so a simulator run replays exactly.

/// SplitMix64 (Steele, Lea, Flood 2014): fast, tiny state, good enough for timeouts.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator seeded with `seed`. Equal seeds give equal sequences.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi)`; returns `lo` when the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// Mixes several identifiers into one seed, so each (node, group) pair gets its own stream.
#[must_use]
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut rng = SeededRng::new(0x0005_EED0_F7A1_A4C5);
    let mut acc = 0u64;
    for p in parts {
        rng.state ^= *p;
        acc ^= rng.next_u64();
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn range_stays_in_bounds() {
        let mut r = SeededRng::new(1);
        for _ in 0..1000 {
            let v = r.range(10, 20);
            assert!((10..20).contains(&v));
        }
        assert_eq!(r.range(5, 5), 5);
    }

    #[test]
    fn mixed_seeds_differ() {
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
        assert_eq!(mix_seed(&[1, 2]), mix_seed(&[1, 2]));
    }
}
