//! Length-prefixed frames, shared by the Raft transport and the engine's client port.
//!
//! ```text
//! ┌──────────────────────────┬──────────────┬───────────────────────────┐
//! │ u32 payload length (BE)  │ u8 kind      │ payload (length bytes)    │
//! └──────────────────────────┴──────────────┴───────────────────────────┘
//! ```
//!
//! The length counts the payload only, so the header is a fixed [`FRAME_HEADER_BYTES`] and an
//! empty payload is legal. A decoder refuses a frame whose declared length exceeds its
//! `max_frame_bytes` as soon as it has read the header, before buffering any of it: a peer
//! cannot make us allocate more than the limit.
//!
//! Kinds `1..=63` belong to this crate (only the ones in [`FrameKind`] are defined; the
//! others are reserved and refused as [`FrameError::UnknownKind`]). Kinds
//! [`APP_KIND_FIRST`]`..=255` are free for applications of the framing, e.g. the engine's
//! client port: they decode as [`FrameKind::App`] and their meaning is the application's.
//! Kind 0 is never valid (an all-zero header is a common sign of a desynchronised stream).

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};
use prost::Message;

use crate::spare::Spare;

/// Bytes in a frame header: the 4-byte length and the kind byte.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Default largest payload a decoder accepts. Large enough for a batch of appends carrying
/// the engine's largest entry batch, small enough that a hostile length cannot exhaust memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Hard ceiling for any configured `max_frame_bytes`: the length field is a `u32`.
pub const MAX_FRAME_BYTES_LIMIT: usize = u32::MAX as usize;

/// The first frame kind free for applications (the client port): `APP_KIND_FIRST..=255`.
pub const APP_KIND_FIRST: u8 = 64;

/// Default bytes requested from the socket per read when filling a decoder.
pub const DEFAULT_READ_CHUNK_BYTES: usize = 64 << 10;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A `phalanx.v1.Hello` (first frame of a Raft connection).
    Hello,
    /// A `phalanx.v1.HelloAck`.
    HelloAck,
    /// A `phalanx.v1.HelloReject`.
    HelloReject,
    /// A `phalanx.v1.MessageBatch`.
    Batch,
    /// An application-defined kind, always `>= APP_KIND_FIRST`.
    App(u8),
}

impl FrameKind {
    /// The kind's byte on the wire.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            FrameKind::Hello => 1,
            FrameKind::HelloAck => 2,
            FrameKind::HelloReject => 3,
            FrameKind::Batch => 4,
            FrameKind::App(k) => k,
        }
    }

    /// Parses a kind byte; `0` and the reserved `5..APP_KIND_FIRST` are refused.
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        match b {
            1 => Ok(FrameKind::Hello),
            2 => Ok(FrameKind::HelloAck),
            3 => Ok(FrameKind::HelloReject),
            4 => Ok(FrameKind::Batch),
            k if k >= APP_KIND_FIRST => Ok(FrameKind::App(k)),
            k => Err(FrameError::UnknownKind(k)),
        }
    }

    /// An application kind, or `None` when `k` is below [`APP_KIND_FIRST`].
    #[must_use]
    pub fn app(k: u8) -> Option<Self> {
        (k >= APP_KIND_FIRST).then_some(FrameKind::App(k))
    }
}

/// Why bytes could not be turned into (or from) a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared (or, when encoding, the actual) payload length exceeds the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A message encoded to another length than it reported (a broken `Message`
    /// implementation); nothing was appended.
    #[error("message encoded to {actual} bytes after reporting {expected}")]
    SizeMismatch {
        /// What `encoded_len` said.
        expected: usize,
        /// What the encoding took.
        actual: usize,
    },
    /// The kind byte is 0 or reserved.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {buffered} of {needed} bytes received")]
    Truncated {
        /// Bytes of the incomplete frame received.
        buffered: usize,
        /// Bytes the frame needs (header included; the header size when the header itself is
        /// incomplete).
        needed: usize,
    },
    /// The payload is not a valid encoding of the kind's message.
    #[error("undecodable {kind:?} payload: {source}")]
    Decode {
        /// The frame's kind.
        kind: FrameKind,
        /// What prost said.
        #[source]
        source: prost::DecodeError,
    },
    /// A frame of one kind arrived where another was required.
    #[error("unexpected {got:?} frame, expected {expected}")]
    Unexpected {
        /// What arrived.
        got: FrameKind,
        /// What the protocol allowed at this point.
        expected: &'static str,
    },
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Decodes the payload as `M`.
    ///
    /// Decodes from a slice on purpose: `bytes` fields are then copied out instead of pointing
    /// into the receive buffer, so a small entry kept by the engine (log cache, unstable log)
    /// does not pin a whole read buffer in memory.
    pub fn decode<M: Message + Default>(&self) -> Result<M, FrameError> {
        M::decode(&self.payload[..]).map_err(|source| FrameError::Decode { kind: self.kind, source })
    }

    /// Checks the frame is of `kind`, naming `expected` in the error.
    pub fn expect_kind(&self, kind: FrameKind, expected: &'static str) -> Result<(), FrameError> {
        if self.kind == kind { Ok(()) } else { Err(FrameError::Unexpected { got: self.kind, expected }) }
    }
}

/// Appends one frame carrying `msg` to `out`; returns the bytes appended.
///
/// Encodes straight into `out`, so a writer can coalesce many frames into one buffer and one
/// write without intermediate copies. Refuses (appending nothing) a message whose encoding exceeds `max_frame_bytes`.
pub fn encode_frame<M: Message>(
    kind: FrameKind,
    msg: &M,
    max_frame_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_frame_sized(kind, msg, msg.encoded_len(), max_frame_bytes, out)
}

/// [`encode_frame`] for a caller that already has `len = msg.encoded_len()` (it checked its
/// own limits with it): the message is sized once, not once per layer.
pub(crate) fn encode_frame_sized<M: Message>(
    kind: FrameKind,
    msg: &M,
    len: usize,
    max_frame_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    check_len(len, max_frame_bytes)?;
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + len);
    put_header(kind, len, out);
    // `encode_raw`, not `encode`: `encode` sizes the whole message again only to check a
    // `Vec`'s (unbounded) room; that pass was ~18% of encoding a typical batch (callgrind).
    msg.encode_raw(out);
    let actual = out.len() - start - FRAME_HEADER_BYTES;
    if actual != len {
        // A header that disagrees with its payload would desynchronise the stream for good;
        // prost's sizes match its encoding, so this is a bug, refused rather than sent.
        out.truncate(start);
        return Err(FrameError::SizeMismatch { expected: len, actual });
    }
    Ok(FRAME_HEADER_BYTES + len)
}

/// Appends one frame with a raw payload to `out`; returns the bytes appended.
pub fn encode_raw_frame(
    kind: FrameKind,
    payload: &[u8],
    max_frame_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    check_len(payload.len(), max_frame_bytes)?;
    put_header(kind, payload.len(), out);
    out.put_slice(payload);
    Ok(FRAME_HEADER_BYTES + payload.len())
}

fn check_len(len: usize, max_frame_bytes: usize) -> Result<(), FrameError> {
    let max = max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT);
    if len > max { Err(FrameError::FrameTooLarge { len, max }) } else { Ok(()) }
}

fn put_header(kind: FrameKind, len: usize, out: &mut impl BufMut) {
    // `check_len` bounded `len` by `u32::MAX`.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    out.put_u8(kind.to_u8());
}

/// First size of a decoder's read chunk, in bytes; it doubles (up to the caller's chunk
/// size) while reads fill it, so an idle or trickling connection holds a few KiB.
pub const MIN_READ_CHUNK_BYTES: usize = 4 << 10;

/// Incremental frame decoder over a byte buffer.
///
/// Feed it bytes ([`push`](Self::push), or [`read_from`](Self::read_from) an async reader)
/// and pull complete frames with [`next_frame`](Self::next_frame). It never panics on any
/// input. After it returned an error the stream is desynchronised: drop the connection (and
/// the decoder).
///
/// Its memory follows the bytes actually received, never what a header declares: a peer
/// that sends a header announcing a large frame and then nothing costs a few KiB, not the
/// frame (the buffer grows at most twofold past what is buffered).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    scratch: Vec<u8>,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_frame_bytes`.
    #[must_use]
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            scratch: Vec::new(),
            max_frame_bytes: max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT),
        }
    }

    /// The payload limit in force.
    #[must_use]
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `reader` (at most `chunk_bytes`) into the buffer; returns the bytes
    /// read, 0 at end of stream.
    ///
    /// Reads into a scratch chunk that stays allocated (and initialised) across reads, then
    /// copies the bytes read: a small read costs a small copy, not the zeroing of a whole
    /// chunk of fresh buffer.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        chunk_bytes: usize,
    ) -> std::io::Result<usize> {
        let max = chunk_bytes.max(1);
        if self.scratch.is_empty() {
            self.scratch.resize(MIN_READ_CHUNK_BYTES.min(max), 0);
        }
        let want = self.scratch.len().min(max);
        let n = reader.read(&mut self.scratch[..want]).await?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        if n == want && want < max {
            // The peer sends faster than this chunk drains: read more per call.
            self.scratch.resize((want * 2).min(max), 0);
        }
        Ok(n)
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        // Refuse before waiting for (and buffering) the payload.
        check_len(len, self.max_frame_bytes)?;
        let kind = FrameKind::from_u8(self.buf[4])?;
        if self.buf.len() < FRAME_HEADER_BYTES + len {
            // The buffer grows with what arrives (doubling: linear copies in all), never to
            // what the header claims before the bytes are here.
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_BYTES);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    /// Bytes buffered that do not form a complete frame yet.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of memory the decoder holds (buffer capacity and read chunk): what a connection
    /// costs while it waits.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity() + self.scratch.capacity()
    }

    /// Gives back what recent reads did not need (`spare` follows this decoder's reads,
    /// `read` bytes the last one, at `now`): the read chunk beyond twice the largest recent
    /// read and, when no partial frame is buffered, a buffer that large. A connection that
    /// carried a burst (ten thousand partitions electing at start-up) and then a trickle
    /// (the failure detector's) kept the burst's buffers otherwise. The next reads grow them
    /// again as [`read_from`](Self::read_from) does.
    pub fn give_back_spare(&mut self, spare: &mut Spare, read: usize, now: Instant) {
        let keep = spare.note(read, now).max(MIN_READ_CHUNK_BYTES);
        if self.scratch.len() > keep.saturating_mul(2) {
            self.scratch.truncate(keep);
            self.scratch.shrink_to_fit();
        }
        if self.buf.is_empty() && self.buf.capacity() > keep.saturating_mul(2) {
            self.buf = BytesMut::new();
        }
    }

    /// At end of stream: `Ok` when the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let needed = if self.buf.len() < FRAME_HEADER_BYTES {
            FRAME_HEADER_BYTES
        } else {
            FRAME_HEADER_BYTES
                + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        };
        Err(FrameError::Truncated { buffered: self.buf.len(), needed })
    }

    /// Takes the buffered bytes out (e.g. to hand a connection over with what was already
    /// read past the last frame).
    pub fn take_buffered(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use phalanx_proto::{Heartbeat, MessageBatch, RaftMessage, raft_message::Body};

    use super::*;

    /// xorshift64*: deterministic "random" bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn batch(n: u64) -> MessageBatch {
        MessageBatch {
            messages: (0..n)
                .map(|i| RaftMessage {
                    group: i,
                    from: 1,
                    to: 2,
                    body: Some(Body::Heartbeat(Heartbeat {
                        term: i,
                        commit: 3,
                        read_ctx: 0,
                        quiesce: false,
                    })),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut out = Vec::new();
        for n in 0..5 {
            encode_frame(FrameKind::Batch, &batch(n), DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        }
        encode_raw_frame(FrameKind::App(200), b"client", DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut frames = Vec::new();
        for b in &out {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(frames.len(), 6);
        for (n, f) in frames.iter().take(5).enumerate() {
            assert_eq!(f.kind, FrameKind::Batch);
            assert_eq!(f.decode::<MessageBatch>().unwrap(), batch(n as u64));
        }
        assert_eq!(frames[5].kind, FrameKind::App(200));
        assert_eq!(&frames[5].payload[..], b"client");
    }

    #[test]
    fn empty_payload_is_a_frame() {
        let mut out = Vec::new();
        encode_frame(FrameKind::Batch, &MessageBatch::default(), 16, &mut out).unwrap();
        assert_eq!(out.len(), FRAME_HEADER_BYTES);
        let mut d = FrameDecoder::new(16);
        d.push(&out);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.decode::<MessageBatch>().unwrap(), MessageBatch::default());
    }

    #[test]
    fn oversized_refused_from_header_alone() {
        let mut d = FrameDecoder::new(1024);
        d.push(&[0, 0, 4, 1, 4]); // 1025 bytes declared, none sent
        assert!(matches!(d.next_frame(), Err(FrameError::FrameTooLarge { len: 1025, max: 1024 })));
        let mut d = FrameDecoder::new(1024);
        d.push(&[0xFF, 0xFF, 0xFF, 0xFF, 4]);
        assert!(matches!(d.next_frame(), Err(FrameError::FrameTooLarge { .. })));
        let mut out = Vec::new();
        assert!(matches!(
            encode_raw_frame(FrameKind::Batch, &[0; 1025], 1024, &mut out),
            Err(FrameError::FrameTooLarge { len: 1025, max: 1024 })
        ));
        assert!(out.is_empty(), "a refused frame appends nothing");
    }

    /// Regression (issue 11): a header announcing a 16 MiB frame made the decoder reserve the
    /// whole frame at once; a thousand such connections held gigabytes. Memory follows the
    /// bytes received.
    #[test]
    fn memory_follows_received_bytes_not_declared_length() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let len = u32::try_from(DEFAULT_MAX_FRAME_BYTES).expect("fits");
        d.push(&len.to_be_bytes());
        d.push(&[FrameKind::Batch.to_u8()]);
        assert!(d.next_frame().expect("a valid header").is_none());
        assert!(d.memory_bytes() <= 4 * MIN_READ_CHUNK_BYTES, "{} bytes for a bare header", d.memory_bytes());
        // Feeding the frame in pieces grows the buffer at most about twofold past the data.
        let chunk = vec![0u8; 64 << 10];
        let mut fed = FRAME_HEADER_BYTES;
        for _ in 0..16 {
            d.push(&chunk);
            fed += chunk.len();
            assert!(d.next_frame().expect("still valid").is_none());
            assert!(d.memory_bytes() <= 2 * fed + 2 * MIN_READ_CHUNK_BYTES, "{} for {fed}", d.memory_bytes());
        }
    }

    #[test]
    fn size_mismatch_appends_nothing() {
        let b = batch(3);
        let mut out = vec![1, 2, 3];
        let len = b.encoded_len();
        assert!(matches!(
            encode_frame_sized(FrameKind::Batch, &b, len + 1, DEFAULT_MAX_FRAME_BYTES, &mut out),
            Err(FrameError::SizeMismatch { expected, actual }) if expected == len + 1 && actual == len
        ));
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(
            encode_frame_sized(FrameKind::Batch, &b, len, DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap(),
            5 + len
        );
    }

    #[test]
    fn kinds() {
        for k in [0u8, 5, 17, 63] {
            assert!(matches!(FrameKind::from_u8(k), Err(FrameError::UnknownKind(x)) if x == k));
            let mut d = FrameDecoder::new(16);
            d.push(&[0, 0, 0, 0, k]);
            assert!(matches!(d.next_frame(), Err(FrameError::UnknownKind(x)) if x == k));
        }
        for k in 1..=255u8 {
            if let Ok(kind) = FrameKind::from_u8(k) {
                assert_eq!(kind.to_u8(), k);
            }
        }
        assert_eq!(FrameKind::app(63), None);
        assert_eq!(FrameKind::app(64), Some(FrameKind::App(64)));
    }

    #[test]
    fn truncated_at_end_of_stream() {
        let mut out = Vec::new();
        encode_frame(FrameKind::Batch, &batch(3), DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        for cut in 1..out.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            d.push(&out[..cut]);
            assert!(d.next_frame().unwrap().is_none());
            assert!(matches!(d.finish(), Err(FrameError::Truncated { buffered, .. }) if buffered == cut));
        }
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let mut d = FrameDecoder::new(64);
        d.push(&[0, 0, 0, 3, 4, 0xFF, 0xFF, 0xFF]);
        let f = d.next_frame().unwrap().unwrap();
        assert!(matches!(f.decode::<MessageBatch>(), Err(FrameError::Decode { kind: FrameKind::Batch, .. })));
    }

    /// Fuzz-ish: random bytes, random chunking, random limits — never a panic, and every
    /// frame returned respects the limit.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2_000 {
            let max = rng.below(4096) as usize;
            let mut d = FrameDecoder::new(max);
            let len = rng.below(8192) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible headers so the payload paths are exercised too.
            if len >= 5 && rng.below(2) == 0 {
                let declared = rng.below(len as u64) as u32;
                bytes[..4].copy_from_slice(&declared.to_be_bytes());
                bytes[4] = [1, 2, 3, 4, 64, 255][rng.below(6) as usize];
            }
            let mut pos = 0;
            'feed: while pos < bytes.len() {
                let step = 1 + rng.below(700) as usize;
                let end = (pos + step).min(bytes.len());
                d.push(&bytes[pos..end]);
                pos = end;
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            assert!(f.payload.len() <= max);
                            // Decoding garbage must fail cleanly or succeed, never panic.
                            let _ = f.decode::<MessageBatch>();
                            let _ = f.decode::<phalanx_proto::Hello>();
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = d.finish();
        }
    }

    #[test]
    fn read_from_async_reader() {
        let mut out = Vec::new();
        encode_frame(FrameKind::Batch, &batch(2), DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        let mut reader = futures_lite::io::Cursor::new(out);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        futures_lite::future::block_on(async { while d.read_from(&mut reader, 7).await.unwrap() > 0 {} });
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.decode::<MessageBatch>().unwrap(), batch(2));
        d.finish().unwrap();
    }

    #[test]
    fn a_burst_of_reads_is_given_back_once_reads_are_small_again() {
        // One large frame read in large chunks grows the read chunk and the buffer.
        let big = MessageBatch {
            messages: (0..20_000u64).map(|i| RaftMessage { group: i, from: 1, to: 2, body: None }).collect(),
        };
        let mut out = Vec::new();
        encode_frame(FrameKind::Batch, &big, DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        let mut reader = futures_lite::io::Cursor::new(out);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let (mut spare, t0) = (Spare::new(), Instant::now());
        futures_lite::future::block_on(async {
            loop {
                let n = d.read_from(&mut reader, 1 << 20).await.unwrap();
                while d.next_frame().unwrap().is_some() {}
                if d.buffered() == 0 {
                    d.give_back_spare(&mut spare, n, t0);
                }
                if n == 0 {
                    break;
                }
            }
        });
        let grown = d.memory_bytes();
        assert!(grown > 4 * MIN_READ_CHUNK_BYTES, "the burst grew the decoder: {grown}");
        // Kept while the burst is recent, given back two windows after it.
        d.give_back_spare(&mut spare, 10, t0 + crate::spare::SPARE_WINDOW / 2);
        assert_eq!(d.memory_bytes(), grown);
        d.give_back_spare(&mut spare, 10, t0 + 3 * crate::spare::SPARE_WINDOW);
        assert!(d.memory_bytes() <= MIN_READ_CHUNK_BYTES, "{} left", d.memory_bytes());
    }
}
