//! A fast, deterministic hasher for integer keys (group ids, log indexes, request ids).
//!
//! Iteration order must not depend on a random seed (or simulator runs would not replay),
//! and SipHash cost more than the lookup itself on the per-message and per-proposal paths.
//! Multiply-rotate (as rustc's FxHash) spreads sequential ids well. Keys come from this
//! process (ids it assigned, indexes of its own log), never straight from a peer, so
//! hash flooding is not a concern.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// The hasher: one rotate, xor and multiply per `u64` written.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
}

/// A `HashMap` keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
