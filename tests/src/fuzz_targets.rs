//! Fuzz target bodies: one function per decoder that takes bytes from outside the process.
//!
//! Each takes arbitrary bytes and runs them through the real decoding path; none may panic,
//! hang or allocate without bound on any input. A panic here is a bug found, in the engine or
//! in an assertion below that states what the engine promises. They are driven by libFuzzer
//! from the standalone crate in `tests/fuzz/` (see its README) and replayed over their
//! committed corpora by `tests/tests/fuzz_corpus.rs` under the normal test command.
//!
//! Checksums stand in the fuzzer's way: a mutated snapshot or WAL batch almost never carries
//! a valid CRC, so nothing behind the check would be explored. The `snapshot` and `wal`
//! targets therefore read their first byte as a mode: even, the bytes are decoded as they
//! are (the checksum paths); odd, the target first writes valid checksums (and lengths)
//! into them, so the structure behind is reached.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on;
use phalanx::StateMachine;
use phalanx::client::security::{ClientPortSecurity, ClientToken};
use phalanx::client::server::{check_token, decode_request};
use phalanx::client::{AUTH_KIND, MAX_CLIENT_FRAME_BYTES};
use phalanx::kv::{KV_LOG_TYPE, KvStateMachine, MAX_KEY_BYTES};
use phalanx::roster::Roster;
use phalanx_net::auth::{AuthFailure, MAX_CLOCK_SKEW_MS, NodeAuth};
use phalanx_net::frame::{DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, FrameKind, MIN_READ_CHUNK_BYTES};
use phalanx_net::handshake::{self, LocalIdentity, MAX_HANDSHAKE_FRAME_BYTES};
use phalanx_net::spare::Spare;
use phalanx_net::transport::check_batch;
use phalanx_proto::{
    AppendValueResponse, CasResponse, ClientRequest, DeleteResponse, GetRequest, GetResponse, Hello,
    HelloAck, HelloReject, KvCommand, LogEntry, Message, MessageBatch, SystemSnapshot, client_request,
    kv_command,
};
use phalanx_storage::wal::format::{
    BATCH_HEADER_BYTES, BATCH_MAGIC, BatchHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader,
    align_up, parse_record,
};
use phalanx_storage::wal::replay_segment_image;

/// The shared secret the `handshake` target's node holds (fixed, so a seed signed with it
/// reaches the verified path).
pub const FUZZ_SECRET: &[u8] = b"phalanx fuzz secret, current";
/// The previous secret of the `handshake` target's node (a rotation in progress).
pub const FUZZ_PREVIOUS_SECRET: &[u8] = b"phalanx fuzz secret, previous";
/// The cluster the `handshake` target's node belongs to.
pub const FUZZ_CLUSTER: &str = "fuzz";
/// The `handshake` target's node id (seeds' Hellos target it; the `frame` target's batches
/// are addressed to it).
pub const FUZZ_LOCAL_NODE: u64 = 2;
/// The peer the `frame` target's connection comes from and the `handshake` target's seeds
/// claim to be.
pub const FUZZ_PEER_NODE: u64 = 1;
/// Shards of the `handshake` target's node.
pub const FUZZ_LOCAL_SHARDS: u32 = 4;
/// The nonce of the Hello the `handshake` target's acks answer (what a dialer would have
/// sent; fixed so a seed's ack can verify).
pub const FUZZ_HELLO_NONCE: [u8; 16] = [7; 16];
/// Milliseconds per step of the clock offset the `handshake` target reads from its first
/// byte: ±127 steps span ±31.75 s, either side of [`MAX_CLOCK_SKEW_MS`].
const SKEW_STEP_MS: i64 = 250;
const _: () = assert!(127 * SKEW_STEP_MS > MAX_CLOCK_SKEW_MS as i64);
/// Latest clock the `handshake` target gives its node: the end of the year 9999, in ms. A
/// node's clock is its wall clock, which never nears `u64::MAX` whatever timestamp a peer
/// sends (there the replay cache's expiry saturates: see `tests/fuzz/README.md`).
const CLOCK_MAX_MS: u64 = 253_402_300_799_999;

/// Splits `data` into the pieces a socket might have delivered: the first byte picks the
/// pattern (0: all at once; otherwise a pseudo-random walk of sizes up to about twice its
/// value), the rest is the stream. Returns the pattern byte and the stream.
fn split_first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, &[]),
    }
}

/// Deterministic chunk sizes for a stream fed in pieces (xorshift; no dependency).
struct Chunks {
    state: u64,
    max: usize,
}

impl Chunks {
    fn new(pattern: u8) -> Self {
        Chunks { state: 0x9E37_79B9_7F4A_7C15 ^ u64::from(pattern), max: 2 * usize::from(pattern) }
    }

    fn next(&mut self, left: usize) -> usize {
        if self.max == 0 {
            return left;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (1 + (self.state % self.max as u64) as usize).min(left)
    }
}

/// Feeds `stream` to `decoder` in the pieces `pattern` picks, handing every complete frame to
/// `on_frame` until it or the decoder refuses (after which a connection is closed: the
/// stream is desynchronised). Checks the decoder's promises on the way: no frame over its
/// limit, memory following the bytes received rather than what a header declares.
fn feed(decoder: &mut FrameDecoder, pattern: u8, stream: &[u8], mut on_frame: impl FnMut(Frame) -> bool) {
    let mut chunks = Chunks::new(pattern);
    let (mut spare, t0) = (Spare::new(), Instant::now());
    let mut pos = 0;
    let mut reads = 0u32;
    while pos < stream.len() {
        let n = chunks.next(stream.len() - pos);
        decoder.push(&stream[pos..pos + n]);
        pos += n;
        reads += 1;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= decoder.max_frame_bytes(), "a frame over the limit");
                    if !on_frame(f) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // "The buffer grows at most twofold past what is buffered" (FrameDecoder's docs).
        assert!(
            decoder.memory_bytes() <= 2 * pos + 2 * MIN_READ_CHUNK_BYTES,
            "the decoder holds {} bytes after {pos} received",
            decoder.memory_bytes()
        );
        if decoder.buffered() == 0 {
            // A made-up clock, 100 ms per read: deterministic, and windows do pass.
            decoder.give_back_spare(&mut spare, n, t0 + Duration::from_millis(100) * reads);
        }
    }
    let _ = decoder.finish();
}

/// The Raft port's frame decoder: arbitrary bytes in arbitrary chunks through a decoder at the
/// port's default limit; every frame's payload decoded as its kind says, and a `Batch` frame
/// checked the way a connection's reader checks it.
pub fn frame(data: &[u8]) {
    let (pattern, stream) = split_first(data);
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    feed(&mut d, pattern, stream, |f| {
        match f.kind {
            FrameKind::Batch => match f.decode::<MessageBatch>() {
                Ok(batch) => {
                    let _ = check_batch(&batch, FUZZ_PEER_NODE, FUZZ_LOCAL_NODE);
                }
                Err(_) => return false,
            },
            FrameKind::Hello => {
                let _ = f.decode::<Hello>();
            }
            FrameKind::HelloAck => {
                let _ = f.decode::<HelloAck>();
            }
            FrameKind::HelloReject => {
                let _ = f.decode::<HelloReject>().map(|r| r.code());
            }
            FrameKind::App(_) => {
                let _ = f.decode::<ClientRequest>();
            }
        }
        // The reader accepts only batches and closes on anything else.
        f.expect_kind(FrameKind::Batch, "Batch").is_ok()
    });
}

/// The identity and secrets of the `handshake` target's node.
#[must_use]
pub fn fuzz_identity() -> LocalIdentity {
    LocalIdentity {
        cluster_id: FUZZ_CLUSTER.into(),
        node_id: FUZZ_LOCAL_NODE,
        shards: FUZZ_LOCAL_SHARDS,
        auth: Some(std::sync::Arc::new(fuzz_auth())),
    }
}

/// A fresh [`NodeAuth`] with the fixed secrets (fresh: an empty replay cache, so a run does
/// not depend on the inputs before it).
#[must_use]
pub fn fuzz_auth() -> NodeAuth {
    // Both secrets are in the accepted length range: this cannot fail.
    NodeAuth::new(FUZZ_SECRET.to_vec(), Some(FUZZ_PREVIOUS_SECRET.to_vec())).expect("valid fixed secrets")
}

/// The Hello the `handshake` target's acks answer.
#[must_use]
pub fn fuzz_dialer_hello() -> Hello {
    Hello {
        nonce: FUZZ_HELLO_NONCE.to_vec().into(),
        ..handshake::hello(
            &LocalIdentity {
                cluster_id: FUZZ_CLUSTER.into(),
                node_id: FUZZ_PEER_NODE,
                shards: 2,
                auth: None,
            },
            0,
            FUZZ_LOCAL_NODE,
        )
    }
}

/// A duplex stream for the handshake functions: reads a script, swallows writes.
struct Script<'a> {
    input: &'a [u8],
}

impl futures_lite::AsyncRead for Script<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_lite::AsyncWrite for Script<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The Raft port's handshake, both sides, with shared-secret authentication. The first byte
/// sets this node's clock relative to the timestamp of the message being verified
/// ([`SKEW_STEP_MS`] per step, signed; a timestamp past [`CLOCK_MAX_MS`] is taken from there);
/// the rest is what the peer sent.
///
/// The real entry points run first (the acceptor's `accept_hello`, the dialer's `dial`:
/// frame, decode, checks, then the MAC at the wall clock). Then the first frame is decoded
/// and verified at the chosen clock, so a seed signed with [`FUZZ_SECRET`] reaches the
/// verified path and the replay cache: a Hello that verifies must be refused when replayed,
/// and one this node signs itself must verify.
pub fn handshake(data: &[u8]) {
    let (skew, stream) = split_first(data);
    let local = fuzz_identity();
    let _ = block_on(handshake::accept_hello(&mut Script { input: stream }, &local));
    let dialer = fuzz_auth();
    let _ = block_on(handshake::dial(&mut Script { input: stream }, &fuzz_dialer_hello(), Some(&dialer)));

    let mut d = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
    d.push(stream);
    let Ok(Some(f)) = d.next_frame() else { return };
    let now = |ts: u64| ts.min(CLOCK_MAX_MS).saturating_add_signed(i64::from(skew as i8) * SKEW_STEP_MS);
    let auth = fuzz_auth();
    match f.kind {
        FrameKind::Hello => {
            let Ok(h) = f.decode::<Hello>() else { return };
            let _ = handshake::check_hello(&h, &local);
            let at = now(h.timestamp_ms);
            if auth.verify_hello(&h, at).is_ok() {
                assert_eq!(
                    auth.verify_hello(&h, at),
                    Err(AuthFailure::Replayed),
                    "a replayed Hello accepted"
                );
            }
            // Whatever the fields, a Hello this node signs verifies, once.
            let mut signed = h;
            if auth.sign_hello(&mut signed, at).is_ok() {
                let fresh = fuzz_auth();
                assert_eq!(fresh.verify_hello(&signed, at), Ok(()), "a signed Hello refused");
                assert_eq!(fresh.verify_hello(&signed, at), Err(AuthFailure::Replayed));
            }
        }
        FrameKind::HelloAck => {
            let Ok(ack) = f.decode::<HelloAck>() else { return };
            let hello = fuzz_dialer_hello();
            let _ = auth.verify_ack(&ack, &hello, FUZZ_CLUSTER, now(ack.timestamp_ms));
            let at = now(ack.timestamp_ms);
            let mut signed = ack;
            if auth.sign_ack(&mut signed, &hello, FUZZ_CLUSTER, at).is_ok() {
                assert_eq!(
                    auth.verify_ack(&signed, &hello, FUZZ_CLUSTER, at),
                    Ok(()),
                    "a signed ack refused"
                );
            }
        }
        FrameKind::HelloReject => {
            let _ = f.decode::<HelloReject>().map(|r| r.code());
        }
        FrameKind::Batch | FrameKind::App(_) => {}
    }
}

/// The token the `client_request` target's port requires when it requires one.
pub const FUZZ_CLIENT_TOKEN: &[u8] = b"phalanx fuzz client token";
/// The bit of the `client_request` target's first byte that makes its port require
/// [`FUZZ_CLIENT_TOKEN`]; the other bits are the chunk pattern.
pub const CLIENT_TOKEN_BIT: u8 = 0x80;

/// The client port's request decoding: arbitrary bytes in arbitrary chunks through a decoder
/// at the port's limit; the connection's frames through the server's `check_token` (when the
/// port requires a token, [`CLIENT_TOKEN_BIT`] of the first byte, or when a token frame
/// comes) and `decode_request`, as its read loop calls them, until one is refused (the
/// server then closes the connection). Each key-value request is then carried the way the
/// server carries it: encoded as the `KvCommand` the node replicates, applied by the node's
/// key-value state machine, whose answer must decode as the server decodes it.
pub fn client_request(data: &[u8]) {
    let (first, stream) = split_first(data);
    let token = (first & CLIENT_TOKEN_BIT != 0).then(|| ClientToken::new(FUZZ_CLIENT_TOKEN).ok()).flatten();
    let security = ClientPortSecurity { tls: None, token };
    let mut authenticated = security.token.is_none();
    let mut d = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    let mut sm = KvStateMachine::new();
    feed(&mut d, first & !CLIENT_TOKEN_BIT, stream, |f| {
        // The server's read loop (`serve_connection`): a token frame, or any first frame
        // when a token is required, is checked as a token.
        if f.kind == FrameKind::App(AUTH_KIND) || !authenticated {
            authenticated = check_token(&security, &f).is_ok();
            return authenticated;
        }
        let Ok(req) = decode_request(&f) else { return false };
        if let Some(op) = req.op {
            execute_kv(&mut sm, op);
        }
        true
    });
    // A snapshot of what the requests built restores to the same map.
    let image = sm.snapshot(1);
    let mut restored = KvStateMachine::new();
    restored.restore(1, &image);
    assert_eq!(restored.len(), sm.len(), "a snapshot lost keys");
}

/// What the server does with a key-value request once decoded (`replicate_kv`, `Op::Get` in
/// `engine/src/client/server.rs`), minus the replication.
fn execute_kv(sm: &mut KvStateMachine, op: client_request::Op) {
    use client_request::Op;
    let valid_key = |k: &str| !k.is_empty() && k.len() <= MAX_KEY_BYTES;
    let mut apply = |op: kv_command::Op| {
        let entry = LogEntry {
            log_type: KV_LOG_TYPE.into(),
            payload: KvCommand { op: Some(op) }.encode_to_vec().into(),
            ..Default::default()
        };
        sm.apply(1, &entry)
    };
    match op {
        Op::Put(p) if valid_key(&p.key) => {
            apply(kv_command::Op::Put(p));
        }
        Op::Cas(c) if valid_key(&c.key) => {
            let answer = apply(kv_command::Op::Cas(c));
            assert!(CasResponse::decode(answer).is_ok(), "an undecodable compare-and-set answer");
        }
        Op::AppendValue(a) if valid_key(&a.key) => {
            let answer = apply(kv_command::Op::AppendValue(a));
            assert!(AppendValueResponse::decode(answer).is_ok(), "an undecodable append answer");
        }
        Op::Delete(del) if valid_key(&del.key) => {
            let answer = apply(kv_command::Op::Delete(del));
            assert!(DeleteResponse::decode(answer).is_ok(), "an undecodable delete answer");
        }
        Op::Get(g) if valid_key(&g.key) => {
            let q: Bytes = GetRequest { key: g.key }.encode_to_vec().into();
            let answer = sm.query(1, &q);
            assert!(answer.is_ok_and(|a| GetResponse::decode(a).is_ok()), "an unanswerable get");
        }
        _ => {}
    }
}

/// The WAL's decoders. The raw bytes go through the segment header, batch header and record
/// parsers; then the whole input, as one segment file's bytes, through the recovery of that
/// segment and the decoding of every live entry (`replay_segment_image`). First byte: the
/// mode (odd: checksums and the segment length are made valid first, see the module docs).
pub fn wal(data: &[u8]) {
    let (mode, image) = split_first(data);
    let _ = SegmentHeader::decode(image);
    let _ = BatchHeader::decode(image);
    for verify in [true, false] {
        let mut off = 0;
        while let Some(rest) = image.get(off..) {
            let Ok((_, n)) = parse_record(rest, verify) else { break };
            assert!(n >= RECORD_HEADER_BYTES && n <= rest.len(), "a record length out of its buffer");
            off += n;
        }
    }
    let mut image = image.to_vec();
    if mode % 2 == 1 {
        make_checksums_valid(&mut image);
    }
    if let Ok(seg) = replay_segment_image(Path::new("fuzz.seg"), &image) {
        assert!(seg.end <= seg.header.segment_bytes, "the log ends past its segment");
    }
}

fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Rewrites a segment image so its checksums hold (format in `storage/src/wal/format.rs`):
/// the segment length becomes the image's length (in whole blocks) when the block size is
/// plausible, and every batch found at block boundaries gets its records' CRCs, its record
/// count, its body CRC and its header CRC recomputed. The layout stays the fuzzer's.
pub fn make_checksums_valid(img: &mut [u8]) {
    let header = SEGMENT_HEADER_BYTES as usize;
    if img.len() < header {
        return;
    }
    let block = get_u32(img, 32).unwrap_or(0);
    if block.is_power_of_two() && (512..=4096).contains(&block) {
        let bytes = img.len() as u64 / u64::from(block) * u64::from(block);
        img[24..32].copy_from_slice(&bytes.to_le_bytes());
    }
    let crc = crc32c::crc32c(&img[0..60]);
    put_u32(img, 60, crc);
    let block = u64::from(block.clamp(512, 4096).next_power_of_two());
    let mut pos = header;
    while pos + BATCH_HEADER_BYTES <= img.len() && get_u32(img, pos) == Some(BATCH_MAGIC) {
        let body_start = pos + BATCH_HEADER_BYTES;
        let body_end = body_start + get_u32(img, pos + 24).unwrap_or(0) as usize;
        if body_end > img.len() {
            break;
        }
        let (mut off, mut count) = (body_start, 0u32);
        while off + RECORD_HEADER_BYTES <= body_end {
            let end = off + RECORD_HEADER_BYTES + get_u32(img, off).unwrap_or(0) as usize;
            if end > body_end {
                break;
            }
            let crc = crc32c::crc32c_append(
                crc32c::crc32c(&img[off..off + 8]),
                &img[off + RECORD_HEADER_BYTES..end],
            );
            put_u32(img, off + 8, crc);
            off = end;
            count += 1;
        }
        put_u32(img, pos + 28, count);
        let body_crc = crc32c::crc32c(&img[body_start..body_end]);
        put_u32(img, pos + 32, body_crc);
        let head_crc = crc32c::crc32c(&img[pos..pos + 36]);
        put_u32(img, pos + 36, head_crc);
        pos = align_up(body_end as u64, block) as usize;
    }
}

/// Snapshot file magic (`engine/src/runtime/snapshots.rs`; `fuzz_corpus.rs` checks a file
/// the store saved starts with it).
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"PHXSNAP1";

/// A snapshot file around `body` (magic, length, body, CRC32C): the layout of
/// `engine/src/runtime/snapshots.rs`.
#[must_use]
pub fn snapshot_file(body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 20);
    b.extend_from_slice(SNAPSHOT_MAGIC);
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    b
}

/// Snapshot files: the node's decoder (`runtime::snapshots::decode`), then the image restored
/// the ways a node restores it — the key-value state machine's, and the system partition's
/// (its roster). First byte: the mode (odd: the rest is a body, wrapped in a valid header and
/// checksum first).
pub fn snapshot(data: &[u8]) {
    let (mode, rest) = split_first(data);
    let wrapped;
    let file = if mode % 2 == 1 {
        wrapped = snapshot_file(rest);
        &wrapped[..]
    } else {
        rest
    };
    let Ok(s) = phalanx::runtime::snapshots::decode(Path::new("fuzz.snap"), file) else { return };
    assert!(!s.meta.membership.voters.contains(&0), "node 0 in a membership");
    let mut kv = KvStateMachine::new();
    kv.restore(1, &s.data);
    if let Ok(sys) = SystemSnapshot::decode(&s.data[..]) {
        if let Some(r) = sys.system.and_then(|st| st.roster) {
            let _ = Roster::from_proto(&r);
        }
        kv.restore(0, &sys.application);
    }
}
