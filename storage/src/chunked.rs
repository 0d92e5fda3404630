//! A double-ended sequence kept in fixed-size chunks, for the in-memory store's logs.
//!
//! A `VecDeque` that grows doubles its buffer: it copies every element it holds into memory
//! the allocator has just obtained from the OS, which the kernel must zero page by page. An
//! in-memory log that only grows (framework-mode benchmarks keep every entry) paid for that
//! again at every doubling: 17% of a 3-node framework-mode run's CPU was page zeroing under
//! `MemoryStore::apply`'s reallocations. Here growing adds a chunk and never moves an element.
//!
//! Layout invariant: every chunk but the first and the last is full (`CHUNK` elements); the
//! first may have lost elements at its front, the last may not be full yet. Indexing is then
//! arithmetic on the first chunk's length.

use std::collections::VecDeque;

/// Elements per chunk: large enough that the chunk list stays short, small enough that a
/// partly used chunk wastes little.
const CHUNK: usize = 1024;

/// See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct ChunkedDeque<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque { chunks: VecDeque::new(), len: 0 }
    }
}

impl<T> ChunkedDeque<T> {
    /// Number of elements.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The last element.
    pub(crate) fn back(&self) -> Option<&T> {
        self.chunks.back().and_then(VecDeque::back)
    }

    /// The element at position `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let first = self.chunks.front()?;
        if i < first.len() {
            return first.get(i);
        }
        let j = i - first.len();
        self.chunks.get(1 + j / CHUNK)?.get(j % CHUNK)
    }

    /// Elements at positions `range` (clamped to the length).
    pub(crate) fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &T> {
        (range.start..range.end.min(self.len)).filter_map(|i| self.get(i))
    }

    /// Appends `x`.
    pub(crate) fn push_back(&mut self, x: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(x),
            _ => {
                let mut c = VecDeque::with_capacity(CHUNK);
                c.push_back(x);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    /// Keeps the first `n` elements.
    pub(crate) fn truncate(&mut self, n: usize) {
        while self.len > n {
            let Some(last) = self.chunks.back_mut() else { break };
            let drop = (self.len - n).min(last.len());
            last.truncate(last.len() - drop);
            self.len -= drop;
            if last.is_empty() {
                self.chunks.pop_back();
            }
        }
    }

    /// Removes the first `n` elements (all of them if there are fewer).
    pub(crate) fn drain_front(&mut self, n: usize) {
        let mut left = n.min(self.len);
        while left > 0 {
            let Some(first) = self.chunks.front_mut() else { break };
            let drop = left.min(first.len());
            first.drain(..drop);
            self.len -= drop;
            left -= drop;
            if first.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    /// Removes everything.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

impl<T> Extend<T> for ChunkedDeque<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for x in iter {
            self.push_back(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random operations against a `VecDeque` model, across many chunk boundaries.
    #[test]
    fn behaves_like_a_vecdeque() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut d = ChunkedDeque::default();
        let mut m = VecDeque::new();
        let mut counter = 0u64;
        for _ in 0..20_000 {
            match next(10) {
                0..=5 => {
                    let k = next(3 * CHUNK);
                    for _ in 0..k {
                        d.push_back(counter);
                        m.push_back(counter);
                        counter += 1;
                    }
                }
                6 | 7 => {
                    let k = next(2 * CHUNK + 2);
                    d.drain_front(k);
                    m.drain(..k.min(m.len()));
                }
                8 => {
                    let n = next(m.len() + 2);
                    d.truncate(n);
                    m.truncate(n);
                }
                _ => {
                    if next(50) == 0 {
                        d.clear();
                        m.clear();
                    }
                }
            }
            assert_eq!(d.len(), m.len());
            assert_eq!(d.back(), m.back());
            for _ in 0..8 {
                let i = next(m.len() + 3);
                assert_eq!(d.get(i), m.get(i), "index {i} of {}", m.len());
            }
            let a = next(m.len() + 1);
            let b = a + next(m.len() + 2 - a);
            let got: Vec<u64> = d.range(a..b).copied().collect();
            let want: Vec<u64> = m.range(a..b.min(m.len())).copied().collect();
            assert_eq!(got, want);
        }
    }
}
