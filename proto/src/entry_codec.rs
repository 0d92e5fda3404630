//! A direct encoder of [`LogEntry`] into a byte slice, byte-identical to prost's.
//!
//! Why it exists: the WAL encodes every entry it stores into its batch buffer, a `&mut [u8]`.
//! prost writes through `BufMut`, and `BufMut` for a slice re-checks the remaining room and
//! re-slices on every byte of every varint: in the storage benchmark that made encoding entries
//! one of the largest user-space costs of a batch (`perf`: `encode_varint` ≈ 9 % of the
//! process). This encoder writes each field with one bounds check. It produces exactly the
//! bytes prost does (proto3 canonical: fields in tag order, default scalars and empty bytes
//! left out, a present ticket always written): the tests compare the two on edge values.

use crate::{HlcTimestamp, LogEntry};

/// Wire type of varint fields.
const VARINT: u8 = 0;
/// Wire type of length-delimited fields.
const LEN: u8 = 2;

/// Writes bytes at a moving position of a slice sized by the caller.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    #[inline]
    fn varint(&mut self, mut v: u64) {
        // At most 10 bytes; the caller sized the slice from `encoded_len`, so the slice
        // indexing below only fails on a caller's bug (and then panics rather than corrupt).
        let b = &mut self.buf[self.pos..];
        let mut i = 0;
        while v >= 0x80 {
            b[i] = (v as u8) | 0x80;
            v >>= 7;
            i += 1;
        }
        b[i] = v as u8;
        self.pos += i + 1;
    }

    #[inline]
    fn key(&mut self, tag: u32, wire: u8) {
        self.varint(u64::from(tag << 3 | u32::from(wire)));
    }

    #[inline]
    fn uint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.key(tag, VARINT);
            self.varint(v);
        }
    }

    #[inline]
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        if !v.is_empty() {
            self.key(tag, LEN);
            self.varint(v.len() as u64);
            self.buf[self.pos..self.pos + v.len()].copy_from_slice(v);
            self.pos += v.len();
        }
    }
}

/// Bytes of `v` as a varint.
#[inline]
fn varint_len(v: u64) -> usize {
    // ceil(significant bits / 7), and 1 for zero.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn ticket_len(t: &HlcTimestamp) -> usize {
    let u = |v: u64| if v == 0 { 0 } else { 1 + varint_len(v) };
    u(t.physical_ms) + u(u64::from(t.logical)) + u(t.node_id)
}

impl LogEntry {
    /// Writes the entry's protobuf encoding at the start of `out` and returns its length,
    /// which is `self.encoded_len()`; the bytes are exactly those of `prost::Message::encode`.
    ///
    /// # Panics
    /// If `out` is shorter than `self.encoded_len()` (a caller's sizing bug).
    pub fn encode_to_slice(&self, out: &mut [u8]) -> usize {
        let mut o = Out { buf: out, pos: 0 };
        o.uint(1, self.term);
        o.uint(2, self.index);
        // An enum is an int32: negative values are sign-extended to 64 bits, as prost does.
        o.uint(3, i64::from(self.kind) as u64);
        o.bytes(4, &self.log_type);
        o.bytes(5, &self.payload);
        if let Some(t) = &self.ticket {
            o.key(6, LEN);
            o.varint(ticket_len(t) as u64);
            o.uint(1, t.physical_ms);
            o.uint(2, u64::from(t.logical));
            o.uint(3, t.node_id);
        }
        o.pos
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;

    fn same_as_prost(e: &LogEntry) {
        let want = e.encode_to_vec();
        let mut got = vec![0xAAu8; want.len()];
        let n = e.encode_to_slice(&mut got);
        assert_eq!(n, want.len(), "{e:?}");
        assert_eq!(got, want, "{e:?}");
        assert_eq!(LogEntry::decode(&got[..]).ok().as_ref(), Some(e));
    }

    #[test]
    fn matches_prost_on_edge_values() {
        let nums = [0u64, 1, 0x7f, 0x80, 0x3fff, 0x4000, u64::from(u32::MAX), 1 << 56, u64::MAX];
        let kinds = [0i32, 1, 4, 127, 128, i32::MAX, -1, i32::MIN];
        let blobs: [&[u8]; 4] = [b"", b"x", &[7u8; 127], &[9u8; 300]];
        let mut n = 0usize;
        for (i, &a) in nums.iter().enumerate() {
            for &b in &nums {
                let kind = kinds[(i + n) % kinds.len()];
                let log_type = Bytes::copy_from_slice(blobs[n % blobs.len()]);
                let payload = Bytes::copy_from_slice(blobs[(n / 4) % blobs.len()]);
                let ticket = match n % 3 {
                    0 => None,
                    1 => Some(HlcTimestamp::default()),
                    _ => Some(HlcTimestamp { physical_ms: b, logical: a as u32, node_id: a ^ b }),
                };
                same_as_prost(&LogEntry { term: a, index: b, kind, log_type, payload, ticket });
                n += 1;
            }
        }
        same_as_prost(&LogEntry::default());
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
        }
    }
}
