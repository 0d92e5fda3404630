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

/// Reads a canonical encoding (what [`LogEntry::encode_to_slice`] and prost write); `None`
/// at anything else, for prost to decode instead.
struct In<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl In<'_> {
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // A tenth byte carries one bit; more is not a canonical u64.
                return (i < 9 || b <= 1).then_some(v);
            }
        }
        None
    }

    #[inline]
    fn bytes(&mut self) -> Option<&[u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(len)?;
        let b = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(b)
    }

    /// The next key if it is `tag` with wire type `wire` (consumed), else `None`, the
    /// position left as it was.
    #[inline]
    fn key_is(&mut self, tag: u32, wire: u8) -> bool {
        let want = (tag << 3 | u32::from(wire)) as u8;
        if self.buf.get(self.pos) == Some(&want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

fn ticket_from(buf: &[u8]) -> Option<HlcTimestamp> {
    let mut i = In { buf, pos: 0 };
    let mut t = HlcTimestamp::default();
    if i.key_is(1, VARINT) {
        t.physical_ms = i.varint()?;
    }
    if i.key_is(2, VARINT) {
        t.logical = u32::try_from(i.varint()?).ok()?;
    }
    if i.key_is(3, VARINT) {
        t.node_id = i.varint()?;
    }
    (i.pos == buf.len()).then_some(t)
}

/// [`LogEntry::decode_from_slice`]'s canonical reader; `bytes` makes a byte field's value
/// from its bytes in `buf` (a copy, or a view of the buffer `buf` is).
fn canonical_from(buf: &[u8], bytes: impl Fn(&[u8]) -> bytes::Bytes) -> Option<LogEntry> {
    let mut i = In { buf, pos: 0 };
    let mut e = LogEntry::default();
    if i.key_is(1, VARINT) {
        e.term = i.varint()?;
    }
    if i.key_is(2, VARINT) {
        e.index = i.varint()?;
    }
    if i.key_is(3, VARINT) {
        // An int32 enum, sign-extended on the wire: what prost keeps is the low 32 bits.
        e.kind = i.varint()? as i32;
    }
    if i.key_is(4, LEN) {
        e.log_type = bytes(i.bytes()?);
    }
    if i.key_is(5, LEN) {
        e.payload = bytes(i.bytes()?);
    }
    if i.key_is(6, LEN) {
        e.ticket = Some(ticket_from(i.bytes()?)?);
    }
    (i.pos == buf.len()).then_some(e)
}

impl LogEntry {
    /// Decodes an entry, as `prost::Message::decode` does. Why not prost itself: the WAL
    /// decodes every entry of a restart's log (1M of them take ~0.1 s of prost's field loop);
    /// a canonical encoding — all the WAL and prost ever write — is read here field by field
    /// in order (varints read as prost reads them), and anything else (fields out of order
    /// or repeated, unknown fields, a value out of its field's range) goes to prost, so the
    /// result is always prost's.
    ///
    /// # Errors
    /// What prost reports for input it cannot decode.
    pub fn decode_from_slice(buf: &[u8]) -> Result<LogEntry, prost::DecodeError> {
        match canonical_from(buf, bytes::Bytes::copy_from_slice) {
            Some(e) => Ok(e),
            None => <LogEntry as prost::Message>::decode(buf),
        }
    }

    /// [`LogEntry::decode_from_slice`] of the bytes `buf` holds, whose byte fields are views
    /// of `buf` (no copy: they keep all of `buf` alive).
    ///
    /// # Errors
    /// What prost reports for input it cannot decode.
    pub fn decode_from_bytes(buf: &bytes::Bytes) -> Result<LogEntry, prost::DecodeError> {
        match canonical_from(buf, |b| buf.slice_ref(b)) {
            Some(e) => Ok(e),
            None => <LogEntry as prost::Message>::decode(buf.clone()),
        }
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
        assert_eq!(LogEntry::decode_from_slice(&got).ok().as_ref(), Some(e));
        assert_eq!(LogEntry::decode_from_bytes(&Bytes::from(got.clone())).ok().as_ref(), Some(e));
        assert!(
            canonical_from(&got, Bytes::copy_from_slice).is_some(),
            "the fast path reads what is written: {e:?}"
        );
    }

    /// Whatever the bytes, the result is prost's: the same entry or an error (any error).
    fn decodes_as_prost(b: &[u8]) {
        let views = LogEntry::decode_from_bytes(&Bytes::copy_from_slice(b));
        for ours in [LogEntry::decode_from_slice(b), views] {
            match (LogEntry::decode(b), ours) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{b:?} where prost gives {a:?}"),
            }
        }
    }

    #[test]
    fn anything_else_decodes_as_prost_does() {
        let e = LogEntry {
            term: 3,
            index: 300,
            kind: 1,
            log_type: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"payload"),
            ticket: Some(HlcTimestamp { physical_ms: 1 << 40, logical: 7, node_id: 2 }),
        };
        let good = e.encode_to_vec();
        // Every truncation, every single-byte change, and fields reordered or repeated.
        for n in 0..good.len() {
            decodes_as_prost(&good[..n]);
        }
        for at in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, good[at] ^ 0x08] {
                let mut b = good.clone();
                b[at] = v;
                decodes_as_prost(&b);
            }
        }
        let payload_first =
            [&[0x2a, 7][..], b"payload", &[0x08, 3, 0x10, 0xac, 0x02, 0x22, 1, b't']].concat();
        decodes_as_prost(&payload_first);
        decodes_as_prost(&[&good[..], &[0x08, 9][..]].concat());
        // A non-minimal varint (term 3 in two bytes), an unknown field (tag 15).
        decodes_as_prost(&[&[0x08, 0x83, 0x00][..], &good[2..]].concat());
        decodes_as_prost(&[&good[..], &[0x78, 1][..]].concat());
        // An eleven-byte varint, and a ten-byte one too large for a u64.
        decodes_as_prost(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        decodes_as_prost(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
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
