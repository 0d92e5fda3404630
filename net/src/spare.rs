//! Spare capacity of reused buffers: what a burst grew is given back once it has not been
//! needed for a while.
//!
//! A buffer reused use after use (a shard's outbox, a connection's write buffer) keeps its
//! capacity so that a busy turn does not allocate. But a burst — ten thousand partitions
//! electing their leaders at start-up, a snapshot streamed to a new member — grows it far
//! past what the steady state needs, and a fixed retained size kept that for good: 13 MiB of
//! a three-node cluster idling 10,000 partitions (`bench/README.md`, quiescence). [`Spare`]
//! keeps what the largest use of the current and the previous window needed and gives the
//! rest back, so a steady load never reallocates and an idle buffer shrinks within two
//! windows of its last burst.

use std::time::{Duration, Instant};

/// How long a use counts towards the capacity a buffer keeps: a buffer keeps what the
/// largest use of the last one to two windows needed.
pub const SPARE_WINDOW: Duration = Duration::from_secs(1);

/// The recent largest use of one reused buffer.
#[derive(Debug, Default)]
pub struct Spare {
    /// Start of the current window (`None` before the first use).
    start: Option<Instant>,
    /// Largest use in the current window.
    peak: usize,
    /// Largest use in the previous window (0 when it saw none).
    previous: usize,
}

impl Spare {
    /// No use seen yet.
    #[must_use]
    pub const fn new() -> Self {
        Spare { start: None, peak: 0, previous: 0 }
    }

    /// Notes a use of `len` items at `now`; returns the capacity worth keeping: the largest
    /// use of this window and the previous one.
    pub fn note(&mut self, len: usize, now: Instant) -> usize {
        let start = *self.start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age >= SPARE_WINDOW {
            // A window with no use at all in between leaves nothing worth keeping.
            self.previous = if age >= 2 * SPARE_WINDOW { 0 } else { self.peak };
            self.peak = 0;
            self.start = Some(now);
        }
        self.peak = self.peak.max(len);
        self.peak.max(self.previous)
    }

    /// [`note`](Self::note)s a use of `len` items, then shrinks `v` if it holds more than
    /// twice what is worth keeping. Twice: a buffer that grew by doubling to its peak is not
    /// reallocated window after window under a steady load.
    pub fn trim<T>(&mut self, v: &mut Vec<T>, len: usize, now: Instant) {
        let keep = self.note(len, now);
        if v.capacity() > keep.saturating_mul(2) {
            v.shrink_to(keep.max(v.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_load_keeps_its_capacity() {
        let t0 = Instant::now();
        let mut s = Spare::new();
        let mut v: Vec<u8> = Vec::with_capacity(1000);
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 100);
            v.extend(std::iter::repeat_n(0, 700));
            let len = v.len();
            v.clear();
            s.trim(&mut v, len, now);
            assert_eq!(v.capacity(), 1000, "use {i}");
        }
    }

    #[test]
    fn a_burst_is_given_back_within_two_windows() {
        let t0 = Instant::now();
        let mut s = Spare::new();
        let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
        s.trim(&mut v, 1 << 20, t0);
        assert_eq!(v.capacity(), 1 << 20, "the burst's own window keeps it");
        // Small uses after it: kept while the burst is in the current or previous window.
        s.trim(&mut v, 10, t0 + SPARE_WINDOW / 2);
        assert_eq!(v.capacity(), 1 << 20);
        s.trim(&mut v, 10, t0 + SPARE_WINDOW + SPARE_WINDOW / 2);
        assert_eq!(v.capacity(), 1 << 20, "the previous window had the burst");
        s.trim(&mut v, 10, t0 + 2 * SPARE_WINDOW + SPARE_WINDOW / 2);
        assert!(v.capacity() < 100, "two windows later: {}", v.capacity());
    }

    #[test]
    fn an_idle_gap_forgets_everything() {
        let t0 = Instant::now();
        let mut s = Spare::new();
        let mut v: Vec<u8> = Vec::with_capacity(4096);
        s.trim(&mut v, 4096, t0);
        s.trim(&mut v, 0, t0 + 3 * SPARE_WINDOW);
        assert_eq!(v.capacity(), 0);
    }

    #[test]
    fn never_shrinks_below_what_the_buffer_holds() {
        let t0 = Instant::now();
        let mut s = Spare::new();
        let mut v: Vec<u8> = vec![1; 100];
        v.reserve(10_000);
        s.trim(&mut v, 0, t0 + 3 * SPARE_WINDOW);
        assert!(v.capacity() >= 100);
        assert_eq!(v.len(), 100);
    }
}
