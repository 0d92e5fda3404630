//! The connection handshake (messages in `proto/phalanx/v1/net.proto`).
//!
//! ```text
//! dialer (shard s of node A)                 acceptor (node B)
//!   ── Hello{version, cluster, A, s, shards, target=B} ──▶
//!                                              checks; picks shard s % B.shards
//!   ◀── HelloAck{B, B.shards, shard} ──  or  ◀── HelloReject{code, reason}, close
//!   ── Batch ── Batch ── … ──▶   (one direction only: B never writes after the ack)
//! ```
//!
//! The acceptor refuses another protocol version, another cluster id, a Hello meant for
//! another node, a sender id of 0 or equal to its own, and shard numbers out of range. The
//! dialer refuses an ack from a node other than the one it meant to reach. Anything but one
//! well-formed Hello first (or one Ack/Reject in reply) closes the connection. Every refusal
//! is logged with its reason by the caller and counted.
//!
//! With a shared secret (`LocalIdentity::auth`) both sides authenticate (`auth.rs`): the
//! dialer signs its Hello and checks the ack's MAC, the acceptor checks the Hello's after the
//! checks above and signs its ack; a failure on either side ends the handshake
//! ([`HandshakeError::Unauthenticated`], the acceptor sending a reject first).
//!
//! Handshake frames are tiny; they are read with [`MAX_HANDSHAKE_FRAME_BYTES`], so a peer
//! that has not identified itself yet cannot make us buffer a full `max_frame_bytes`.

use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use phalanx_proto::{Hello, HelloAck, HelloReject, PROTOCOL_VERSION, RejectCode};

use crate::auth::{AuthFailure, NodeAuth, wall_ms};

use crate::frame::{Frame, FrameDecoder, FrameError, FrameKind, encode_frame};
use crate::transport::NodeId;

/// Largest handshake frame payload accepted.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4096;

/// Longest cluster id accepted (fits a handshake frame with room to spare).
pub const MAX_CLUSTER_ID_BYTES: usize = 256;

/// Most shards a peer may announce: bounds the shard arithmetic and catches garbage.
pub const MAX_PEER_SHARDS: u32 = 4096;

/// Bytes read per socket read during the handshake.
const HANDSHAKE_READ_CHUNK_BYTES: usize = 512;

/// Who this node is, as the handshake checks it.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    /// This cluster's id.
    pub cluster_id: String,
    /// This node.
    pub node_id: NodeId,
    /// This node's shard count.
    pub shards: u32,
    /// The shared secrets every handshake must prove (`None`: no authentication).
    pub auth: Option<Arc<NodeAuth>>,
}

/// Why a handshake failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The acceptor refused us.
    #[error("refused by peer ({code:?}): {reason}")]
    Refused {
        /// Machine-readable reason.
        code: RejectCode,
        /// The peer's explanation.
        reason: String,
    },
    /// We refused the peer's Hello.
    #[error("refused ({:?}): {}", .0.code(), .0.reason)]
    Rejected(HelloReject),
    /// The node that answered is not the one we meant to reach.
    #[error("expected node {expected}, node {got} answered")]
    WrongNode {
        /// The node we dialed.
        expected: NodeId,
        /// The node that acknowledged.
        got: NodeId,
    },
    /// A bad frame (malformed, oversized, unexpected kind).
    #[error("bad handshake frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the connection before the handshake completed.
    #[error("connection closed during the handshake")]
    Closed,
    /// Shared-secret authentication failed (the Hello's, at the acceptor, which names the
    /// node the Hello claimed; the ack's, at the dialer).
    #[error("authentication of node {node} failed: {failure}")]
    Unauthenticated {
        /// The node the failed message claimed to come from.
        node: NodeId,
        /// Why.
        failure: AuthFailure,
    },
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    Timeout,
    /// The TLS handshake failed (the peer is not TLS, or a certificate was refused, by
    /// either side: expired, from another CA, not pinned, not for the dialled address).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Socket error.
    #[error("io error during the handshake: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for HandshakeError {
    /// A TLS error surfacing through a read or write (with TLS 1.3 a dialer learns that the
    /// acceptor refused its certificate only when it reads the alert, after its side of the
    /// TLS handshake completed) is a [`HandshakeError::Tls`], not a socket error.
    fn from(e: std::io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            HandshakeError::Tls(e.to_string())
        } else {
            HandshakeError::Io(e)
        }
    }
}

/// The Hello shard `shard` of `local` sends to reach `target`.
#[must_use]
pub fn hello(local: &LocalIdentity, shard: u32, target: NodeId) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: local.cluster_id.clone(),
        node_id: local.node_id,
        shard,
        shards: local.shards,
        target_node_id: target,
        ..Default::default()
    }
}

fn reject(code: RejectCode, reason: String) -> HelloReject {
    HelloReject { code: code as i32, reason }
}

/// The acceptor's checks of a Hello; `Err` carries the reply to send before closing.
pub fn check_hello(h: &Hello, local: &LocalIdentity) -> Result<(), HelloReject> {
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(reject(
            RejectCode::ProtocolVersion,
            format!("protocol version {} is not {PROTOCOL_VERSION}", h.protocol_version),
        ));
    }
    if h.cluster_id != local.cluster_id {
        return Err(reject(
            RejectCode::ClusterId,
            format!("cluster id {:?} is not {:?}", h.cluster_id, local.cluster_id),
        ));
    }
    if h.target_node_id != local.node_id {
        return Err(reject(
            RejectCode::WrongNode,
            format!("this is node {}, not node {}", local.node_id, h.target_node_id),
        ));
    }
    if h.node_id == 0 || h.node_id == local.node_id {
        return Err(reject(
            RejectCode::InvalidHello,
            format!("sender node id {} is invalid here", h.node_id),
        ));
    }
    if h.shards == 0 || h.shards > MAX_PEER_SHARDS || h.shard >= h.shards {
        return Err(reject(
            RejectCode::InvalidHello,
            format!("shard {} of {} is out of range (at most {MAX_PEER_SHARDS} shards)", h.shard, h.shards),
        ));
    }
    Ok(())
}

/// Reads exactly one frame; bytes that followed it stay in `decoder`.
async fn read_one_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        if decoder.read_from(stream, HANDSHAKE_READ_CHUNK_BYTES).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// Dialer side: sends `hello` (signed with `auth`, if given), waits for the reply, checks it
/// comes from `hello.target_node_id` (and, with `auth`, that its MAC answers this Hello).
/// After the ack nothing may follow from the acceptor: bytes already buffered are an error.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &Hello,
    auth: Option<&NodeAuth>,
) -> Result<HelloAck, HandshakeError> {
    let mut signed;
    let hello = match auth {
        Some(a) => {
            signed = hello.clone();
            a.sign_hello(&mut signed, wall_ms())?;
            &signed
        }
        None => hello,
    };
    let mut out = Vec::with_capacity(128);
    encode_frame(FrameKind::Hello, hello, MAX_HANDSHAKE_FRAME_BYTES, &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
    let frame = read_one_frame(stream, &mut decoder).await?;
    match frame.kind {
        FrameKind::HelloAck => {
            let ack: HelloAck = frame.decode()?;
            if ack.node_id != hello.target_node_id {
                return Err(HandshakeError::WrongNode { expected: hello.target_node_id, got: ack.node_id });
            }
            if let Some(a) = auth {
                a.verify_ack(&ack, hello, &hello.cluster_id, wall_ms())
                    .map_err(|failure| HandshakeError::Unauthenticated { node: ack.node_id, failure })?;
            }
            if decoder.buffered() > 0 {
                return Err(HandshakeError::Frame(FrameError::Unexpected {
                    got: FrameKind::HelloAck,
                    expected: "nothing after the handshake ack",
                }));
            }
            Ok(ack)
        }
        FrameKind::HelloReject => {
            let r: HelloReject = frame.decode()?;
            let code = r.code();
            Err(HandshakeError::Refused { code, reason: r.reason })
        }
        got => Err(FrameError::Unexpected { got, expected: "HelloAck or HelloReject" }.into()),
    }
}

/// Acceptor side, first half: reads the Hello and checks it. Returns it with the bytes read
/// past it (a well-behaved dialer sends nothing before the ack, but they must not be lost
/// if it did). On a refused Hello the reject is sent (best effort) before returning the error.
pub async fn accept_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
) -> Result<(Hello, Vec<u8>), HandshakeError> {
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
    let frame = read_one_frame(stream, &mut decoder).await?;
    frame.expect_kind(FrameKind::Hello, "Hello")?;
    let h: Hello = frame.decode()?;
    if let Err(r) = check_hello(&h, local) {
        send_reject(stream, &r).await;
        return Err(HandshakeError::Rejected(r));
    }
    // After the checks that need no secret: a misconfigured node hears what is wrong first.
    if let Some(a) = &local.auth
        && let Err(failure) = a.verify_hello(&h, wall_ms())
    {
        send_reject(stream, &reject(RejectCode::Authentication, failure.to_string())).await;
        return Err(HandshakeError::Unauthenticated { node: h.node_id, failure });
    }
    Ok((h, decoder.take_buffered().to_vec()))
}

/// Sends a reject, ignoring failures: the connection is closed right after anyway.
pub async fn send_reject<S: AsyncWrite + Unpin>(stream: &mut S, r: &HelloReject) {
    let mut out = Vec::with_capacity(64 + r.reason.len());
    if encode_frame(FrameKind::HelloReject, r, MAX_HANDSHAKE_FRAME_BYTES, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
}

/// Acceptor side, second half: acknowledges `hello` from the shard that will read the
/// connection (signed, with a shared secret).
pub async fn send_ack<S: AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
    shard: u32,
    hello: &Hello,
) -> Result<(), HandshakeError> {
    let mut ack = HelloAck { node_id: local.node_id, shards: local.shards, shard, ..Default::default() };
    if let Some(a) = &local.auth {
        a.sign_ack(&mut ack, hello, &local.cluster_id, wall_ms())?;
    }
    let mut out = Vec::with_capacity(96);
    encode_frame(FrameKind::HelloAck, &ack, MAX_HANDSHAKE_FRAME_BYTES, &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

/// A reject meaning "try again later" (target shard not running, too many connections).
#[must_use]
pub fn unavailable(reason: impl Into<String>) -> HelloReject {
    reject(RejectCode::Unavailable, reason.into())
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use futures_lite::io::Cursor;

    use super::*;

    fn local() -> LocalIdentity {
        LocalIdentity { cluster_id: "c".into(), node_id: 2, shards: 4, auth: None }
    }

    fn good() -> Hello {
        hello(&LocalIdentity { cluster_id: "c".into(), node_id: 1, shards: 2, auth: None }, 1, 2)
    }

    #[test]
    fn checks() {
        assert!(check_hello(&good(), &local()).is_ok());
        let cases: Vec<(Hello, RejectCode)> = vec![
            (Hello { protocol_version: 99, ..good() }, RejectCode::ProtocolVersion),
            (Hello { cluster_id: "other".into(), ..good() }, RejectCode::ClusterId),
            (Hello { target_node_id: 3, ..good() }, RejectCode::WrongNode),
            (Hello { node_id: 0, ..good() }, RejectCode::InvalidHello),
            (Hello { node_id: 2, ..good() }, RejectCode::InvalidHello),
            (Hello { shards: 0, shard: 0, ..good() }, RejectCode::InvalidHello),
            (Hello { shard: 2, ..good() }, RejectCode::InvalidHello),
            (Hello { shards: MAX_PEER_SHARDS + 1, ..good() }, RejectCode::InvalidHello),
        ];
        for (h, code) in cases {
            let r = check_hello(&h, &local()).unwrap_err();
            assert_eq!(r.code(), code, "{h:?}");
            assert!(!r.reason.is_empty());
        }
    }

    /// A duplex stand-in: reads from a script, records writes.
    struct Script {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl AsyncRead for Script {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for Script {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.output.extend_from_slice(buf);
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
    fn script(input: Vec<u8>) -> Script {
        Script { input: Cursor::new(input), output: Vec::new() }
    }

    #[test]
    fn accept_reads_hello_and_keeps_leftover() {
        let mut input = Vec::new();
        encode_frame(FrameKind::Hello, &good(), MAX_HANDSHAKE_FRAME_BYTES, &mut input).unwrap();
        input.extend_from_slice(b"xyz");
        let mut s = script(input);
        let (h, left) = block_on(accept_hello(&mut s, &local())).unwrap();
        assert_eq!(h, good());
        assert_eq!(left, b"xyz");
        assert!(s.output.is_empty(), "the ack is sent by the reading shard, later");
    }

    #[test]
    fn accept_refuses_with_a_reject_frame() {
        let mut input = Vec::new();
        let bad = Hello { cluster_id: "other".into(), ..good() };
        encode_frame(FrameKind::Hello, &bad, MAX_HANDSHAKE_FRAME_BYTES, &mut input).unwrap();
        let mut s = script(input);
        let e = block_on(accept_hello(&mut s, &local())).unwrap_err();
        assert!(matches!(e, HandshakeError::Rejected(ref r) if r.code() == RejectCode::ClusterId), "{e}");
        let mut d = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
        d.push(&s.output);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::HelloReject);
        assert_eq!(f.decode::<HelloReject>().unwrap().code(), RejectCode::ClusterId);
    }

    #[test]
    fn accept_refuses_garbage_and_other_kinds() {
        let e = block_on(accept_hello(&mut script(vec![0xde, 0xad, 0xbe, 0xef, 0x00, 1]), &local()));
        assert!(matches!(e, Err(HandshakeError::Frame(FrameError::FrameTooLarge { .. }))));
        let mut input = Vec::new();
        encode_frame(FrameKind::Batch, &phalanx_proto::MessageBatch::default(), 64, &mut input).unwrap();
        let e = block_on(accept_hello(&mut script(input), &local()));
        assert!(matches!(e, Err(HandshakeError::Frame(FrameError::Unexpected { .. }))));
        let e = block_on(accept_hello(&mut script(vec![0, 0, 0, 2, 1, 0xFF, 0xFF]), &local()));
        assert!(matches!(e, Err(HandshakeError::Frame(FrameError::Decode { .. }))));
        let e = block_on(accept_hello(&mut script(vec![0, 0]), &local()));
        assert!(matches!(e, Err(HandshakeError::Closed)));
    }

    /// Fuzz-ish: random bytes (and random bytes after a plausible header) never panic either
    /// side of the handshake.
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 5 && next() % 2 == 0 {
                let declared = (next() % (len as u64)) as u32;
                bytes[..4].copy_from_slice(&declared.to_be_bytes());
                bytes[4] = (next() % 4 + 1) as u8;
            }
            let _ = block_on(accept_hello(&mut script(bytes.clone()), &local()));
            let _ = block_on(dial(&mut script(bytes), &good(), None));
        }
    }

    #[test]
    fn dial_checks_the_answer() {
        let ack = |node_id| {
            let mut v = Vec::new();
            encode_frame(
                FrameKind::HelloAck,
                &HelloAck { node_id, shards: 4, shard: 1, ..Default::default() },
                64,
                &mut v,
            )
            .unwrap();
            v
        };
        let mut s = script(ack(2));
        assert_eq!(block_on(dial(&mut s, &good(), None)).unwrap().shards, 4);
        let mut d = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
        d.push(&s.output);
        assert_eq!(d.next_frame().unwrap().unwrap().decode::<Hello>().unwrap(), good());

        let e = block_on(dial(&mut script(ack(3)), &good(), None));
        assert!(matches!(e, Err(HandshakeError::WrongNode { expected: 2, got: 3 })));

        let mut trailing = ack(2);
        trailing.push(0);
        assert!(matches!(
            block_on(dial(&mut script(trailing), &good(), None)),
            Err(HandshakeError::Frame(_))
        ));

        let mut rej = Vec::new();
        encode_frame(FrameKind::HelloReject, &unavailable("busy"), 64, &mut rej).unwrap();
        let e = block_on(dial(&mut script(rej), &good(), None));
        assert!(
            matches!(e, Err(HandshakeError::Refused { code: RejectCode::Unavailable, ref reason }) if reason == "busy")
        );
        assert!(matches!(block_on(dial(&mut script(vec![]), &good(), None)), Err(HandshakeError::Closed)));
    }
}
