//! Checks of the TCP transport against misbehaving peers, driven with raw sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use phalanx_proto::{
    AppendEntriesRequest, EntryKind, Hello, HelloReject, LogEntry, MessageBatch, PROTOCOL_VERSION,
    RaftMessage, RejectCode, raft_message::Body,
};

use super::fixtures::{TEST_CLUSTER_ID, TcpFixture};
use super::{Delivered, Fixture, TestNode, WAIT_LIMIT, closed_within, collect, seq_of, wait_until};
use crate::error::NetError;
use crate::frame::{Frame, FrameDecoder, FrameKind, encode_frame, encode_raw_frame};
use crate::handshake::MAX_HANDSHAKE_FRAME_BYTES;
use crate::tcp::TcpFactory;

fn start(fx: &mut TcpFixture, id: u64, tx: &flume::Sender<Delivered>) -> TestNode {
    TestNode::start(id, fx.factory(id), 1, tx.clone()).unwrap()
}

/// A batch of one append carrying `payload_bytes` of data.
fn big_batch(from: u64, to: u64, payload_bytes: usize) -> MessageBatch {
    let entry = LogEntry {
        term: 1,
        index: 1,
        kind: EntryKind::Normal as i32,
        log_type: "t".into(),
        payload: Bytes::from(vec![7u8; payload_bytes]),
        ticket: None,
    };
    MessageBatch {
        messages: vec![RaftMessage {
            group: 5,
            from,
            to,
            body: Some(Body::AppendRequest(AppendEntriesRequest {
                term: 1,
                entries: vec![entry],
                ..Default::default()
            })),
        }],
    }
}

fn hello(node_id: u64, target: u64) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: TEST_CLUSTER_ID.into(),
        node_id,
        shard: 0,
        shards: 1,
        target_node_id: target,
        ..Default::default()
    }
}

fn raw_connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    s
}

fn raw_send_hello(port: u16, h: &Hello) -> TcpStream {
    let mut s = raw_connect(port);
    let mut out = Vec::new();
    encode_frame(FrameKind::Hello, h, MAX_HANDSHAKE_FRAME_BYTES, &mut out).unwrap();
    s.write_all(&out).unwrap();
    s
}

/// Reads one frame, or `None` if the peer closed first.
fn raw_read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut d = FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Some(f) = d.next_frame().unwrap() {
            return Some(f);
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => d.push(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    panic!("no frame and no close within {WAIT_LIMIT:?}");
}

#[test]
fn oversize_frame_closes_the_connection_and_the_sender_notices() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = start(&mut fx, 1, &tx);
    let b = TestNode::start(2, fx.factory_with(2, |c| c.max_frame_bytes = 1024), 1, tx.clone()).unwrap();
    a.send(0, 2, vec![big_batch(1, 2, 4096)]);
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).protocol_errors >= 1), "{:?}", b.stats(0));
    assert!(wait_until(WAIT_LIMIT, || a.stats(0).connections_lost >= 1), "{:?}", a.stats(0));
    // Normal traffic resumes on a new connection; the oversized batch never arrives.
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| seq_of(&d.inbound.batch).is_some())
    });
    assert!(through);
    assert!(a.stats(0).connects >= 2);

    // The sender's own limit: dropped before it is written, counted, the connection kept.
    let c = TestNode::start(3, fx.factory_with(3, |c| c.max_frame_bytes = 1024), 1, tx.clone()).unwrap();
    c.send(0, 2, vec![big_batch(3, 2, 4096)]);
    assert!(wait_until(WAIT_LIMIT, || c.stats(0).batches_dropped_oversize == 1));
    assert!(a.shutdown() && b.shutdown() && c.shutdown());
}

#[test]
fn large_batches_arrive_whole() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = start(&mut fx, 1, &tx);
    let b = start(&mut fx, 2, &tx);
    let batches: Vec<_> = (0..8).map(|i| big_batch(1, 2, 300_000 + i * 1000)).collect();
    a.send(0, 2, batches.clone());
    let got = collect(&rx, 8, WAIT_LIMIT);
    assert_eq!(got.iter().map(|d| d.inbound.batch.clone()).collect::<Vec<_>>(), batches);
    assert!(a.shutdown() && b.shutdown());
}

#[test]
fn garbage_before_the_handshake_is_refused() {
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let b = start(&mut fx, 2, &tx);
    let port = fx.port(2).unwrap();
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0u8; 64][..], &[0xFF; 3][..]] {
        let mut s = raw_connect(port);
        s.write_all(garbage).unwrap();
        if garbage.len() < 5 {
            // Too short to be a header: only the handshake timeout ends it.
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        assert!(closed_within(&mut s, WAIT_LIMIT), "not closed after {garbage:?}");
    }
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).handshakes_rejected >= 3), "{:?}", b.stats(0));
    assert!(b.shutdown());
}

#[test]
fn garbage_or_forged_batches_after_the_handshake_close_the_connection() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let b = start(&mut fx, 2, &tx);
    let port = fx.port(2).unwrap();
    // Node 9 is a member (never started): its handshake passes; what follows does not.
    fx.add_absent(9);

    let mut s = raw_send_hello(port, &hello(9, 2));
    assert_eq!(raw_read_frame(&mut s).unwrap().kind, FrameKind::HelloAck);
    s.write_all(&[0, 0, 0, 2, 4, 0xFF, 0xFF]).unwrap(); // undecodable batch
    assert!(closed_within(&mut s, WAIT_LIMIT));

    let mut s = raw_send_hello(port, &hello(9, 2));
    assert_eq!(raw_read_frame(&mut s).unwrap().kind, FrameKind::HelloAck);
    let mut out = Vec::new();
    encode_raw_frame(FrameKind::App(100), b"client frame on a raft connection", 1024, &mut out).unwrap();
    s.write_all(&out).unwrap();
    assert!(closed_within(&mut s, WAIT_LIMIT));

    let mut s = raw_send_hello(port, &hello(9, 2));
    assert_eq!(raw_read_frame(&mut s).unwrap().kind, FrameKind::HelloAck);
    let mut out = Vec::new();
    encode_frame(FrameKind::Batch, &big_batch(7, 2, 10), 1024, &mut out).unwrap(); // claims node 7
    s.write_all(&out).unwrap();
    assert!(closed_within(&mut s, WAIT_LIMIT));

    assert!(wait_until(WAIT_LIMIT, || b.stats(0).protocol_errors == 3), "{:?}", b.stats(0));
    assert!(rx.try_recv().is_err(), "nothing delivered");
    assert!(b.shutdown());
}

#[test]
fn wrong_cluster_id_is_refused_and_counted_on_both_sides() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let b = start(&mut fx, 2, &tx);
    let c =
        TestNode::start(3, fx.factory_with(3, |c| c.cluster_id = "another-cluster".into()), 1, tx.clone())
            .unwrap();
    c.send_seq(0, 2, 1);
    assert!(wait_until(WAIT_LIMIT, || c.stats(0).handshakes_refused_by_peer >= 1), "{:?}", c.stats(0));
    assert!(b.stats(0).handshakes_rejected >= 1);
    assert!(c.stats(0).batches_dropped_unreachable >= 1, "queued batches of a refused peer are dropped");
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    assert!(b.shutdown() && c.shutdown());
}

#[test]
fn wrong_protocol_version_or_target_gets_a_typed_reject() {
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let b = start(&mut fx, 2, &tx);
    let port = fx.port(2).unwrap();
    let cases = [
        (Hello { protocol_version: PROTOCOL_VERSION + 1, ..hello(9, 2) }, RejectCode::ProtocolVersion),
        (hello(9, 3), RejectCode::WrongNode),
        (hello(2, 2), RejectCode::InvalidHello),
        (Hello { shard: 4, shards: 4, ..hello(9, 2) }, RejectCode::InvalidHello),
        // A well-formed Hello from a node id the cluster does not list (issue 11).
        (hello(9, 2), RejectCode::UnknownNode),
    ];
    for (h, code) in cases {
        let mut s = raw_send_hello(port, &h);
        let f = raw_read_frame(&mut s).expect("a reply");
        assert_eq!(f.kind, FrameKind::HelloReject);
        let r: HelloReject = f.decode().unwrap();
        assert_eq!(r.code(), code, "{}", r.reason);
        assert!(closed_within(&mut s, WAIT_LIMIT));
    }
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).handshakes_rejected == 5));
    assert!(b.shutdown());
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let b = TestNode::start(2, fx.factory_with(2, |c| c.handshake_timeout_ms = 100), 1, tx.clone()).unwrap();
    let mut s = raw_connect(fx.port(2).unwrap());
    let t0 = Instant::now();
    assert!(closed_within(&mut s, WAIT_LIMIT));
    assert!(t0.elapsed() >= Duration::from_millis(90));
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).handshakes_rejected == 1));
    assert!(b.shutdown());
}

#[test]
fn port_in_use_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let fx = TcpFixture::new();
    let e = TcpFactory::bind(TcpFixture::config(1, &addr), fx.discovery.clone()).err().expect("refused");
    assert!(matches!(e, NetError::Bind { .. }), "{e}");
    assert!(e.to_string().contains(&addr), "{e}");
    let e =
        TcpFactory::bind(TcpFixture::config(0, "127.0.0.1:0"), fx.discovery.clone()).err().expect("refused");
    assert!(matches!(e, NetError::Config(_)), "{e}");
}

#[test]
fn a_peer_moving_to_another_address_is_followed() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = start(&mut fx, 1, &tx);
    let b = start(&mut fx, 2, &tx);
    a.send_seq(0, 2, 1);
    assert_eq!(collect(&rx, 1, WAIT_LIMIT).len(), 1);
    let old_port = fx.port(2).unwrap();
    assert!(b.shutdown());
    fx.forget_port(2);
    let b = start(&mut fx, 2, &tx);
    assert_ne!(fx.port(2).unwrap(), old_port);
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok()
    });
    assert!(through, "{:?}", a.stats(0));
    assert!(a.shutdown() && b.shutdown());
    assert!(wait_until(WAIT_LIMIT, || fx.leftovers().is_none()), "{:?}", fx.leftovers());
}

#[test]
fn connections_are_handed_to_every_shard_and_counted() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = TestNode::start(1, fx.factory(1), 4, tx.clone()).unwrap();
    let b = TestNode::start(2, fx.factory(2), 4, tx.clone()).unwrap();
    for s in 0..4 {
        a.send_seq(s, 2, 3);
    }
    let got = collect(&rx, 12, WAIT_LIMIT);
    assert_eq!(got.len(), 12);
    for s in 0..4 {
        assert_eq!(b.stats(s).inbound_accepted, 1, "shard {s} reads one connection");
        assert_eq!(b.stats(s).batches_received, 3);
        assert_eq!(a.stats(s).connects, 1);
        // Its own to b, and b's to it (every shard dials the peers it knows at start).
        assert_eq!(a.stats(s).connections_open, 2);
    }
    assert!(a.shutdown() && b.shutdown());
    assert!(wait_until(WAIT_LIMIT, || fx.leftovers().is_none()), "{:?}", fx.leftovers());
}

/// Issue 11, item 4, the Raft port: a peer that begins a frame and stops is closed after the
/// frame timeout (counted); one that is merely quiet between frames is not.
#[test]
fn a_half_sent_frame_is_closed_after_the_frame_timeout() {
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let b = TestNode::start(2, fx.factory_with(2, |c| c.frame_timeout_ms = 200), 1, tx.clone()).unwrap();
    let port = fx.port(2).unwrap();
    fx.add_absent(9);
    fx.add_absent(8);
    let mut quiet = raw_send_hello(port, &hello(8, 2));
    assert_eq!(raw_read_frame(&mut quiet).unwrap().kind, FrameKind::HelloAck);
    let mut half = raw_send_hello(port, &hello(9, 2));
    assert_eq!(raw_read_frame(&mut half).unwrap().kind, FrameKind::HelloAck);
    // A batch frame announcing 1000 bytes; 10 arrive, then nothing.
    let mut partial = 1000u32.to_be_bytes().to_vec();
    partial.push(FrameKind::Batch.to_u8());
    partial.extend_from_slice(&[0u8; 10]);
    half.write_all(&partial).unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut half, WAIT_LIMIT), "a half-sent frame kept its connection");
    assert!(t0.elapsed() >= Duration::from_millis(150), "closed before the frame timeout");
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).frame_timeouts == 1), "{:?}", b.stats(0));
    assert!(!closed_within(&mut quiet, Duration::from_millis(400)), "a quiet peer was closed");
    assert!(b.shutdown());
}

/// A node authentication with `secret` (32 bytes of it) as current, `previous` if given.
fn auth(secret: u8, previous: Option<u8>) -> std::sync::Arc<crate::auth::NodeAuth> {
    std::sync::Arc::new(crate::auth::NodeAuth::new(vec![secret; 32], previous.map(|p| vec![p; 32])).unwrap())
}

/// Node `id` with the shared secret `auth(secret, previous)`.
fn start_with_secret(
    fx: &mut TcpFixture,
    id: u64,
    tx: &flume::Sender<Delivered>,
    (secret, previous): (u8, Option<u8>),
) -> TestNode {
    TestNode::start(id, fx.factory_with(id, |c| c.node_auth = Some(auth(secret, previous))), 1, tx.clone())
        .unwrap()
}

#[test]
fn nodes_with_the_shared_secret_talk_and_a_node_without_it_is_refused_and_counted() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = start_with_secret(&mut fx, 1, &tx, (1, None));
    let b = start_with_secret(&mut fx, 2, &tx, (1, None));
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == 1)
    });
    assert!(through, "{:?} {:?}", a.stats(0), b.stats(0));
    // No secret, and the wrong secret: refused by b, counted under their reasons; and the
    // node with the wrong secret refuses b's ack the other way.
    let c = start(&mut fx, 3, &tx);
    let d = start_with_secret(&mut fx, 4, &tx, (2, None));
    c.send_seq(0, 2, 1);
    d.send_seq(0, 2, 1);
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).auth_missing >= 1), "{:?}", b.stats(0));
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).auth_bad_mac >= 1), "{:?}", b.stats(0));
    let refused_back =
        || c.stats(0).handshakes_refused_by_peer >= 1 && d.stats(0).handshakes_refused_by_peer >= 1;
    assert!(wait_until(WAIT_LIMIT, refused_back), "{:?} {:?}", c.stats(0), d.stats(0));
    b.send_seq(0, 4, 1);
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).auth_bad_mac >= 2 || d.stats(0).auth_bad_mac >= 1));
    while let Ok(m) = rx.try_recv() {
        assert!(m.inbound.from != 3 && m.inbound.from != 4, "nothing from an unauthenticated node");
    }
    assert!(a.shutdown() && b.shutdown() && c.shutdown() && d.shutdown());
}

#[test]
fn tampered_replayed_expired_and_wrong_cluster_hellos_are_refused_and_counted() {
    use crate::auth::{MAX_CLOCK_SKEW_MS, wall_ms};
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let b = start_with_secret(&mut fx, 2, &tx, (1, None));
    let port = fx.port(2).unwrap();
    fx.add_absent(9);
    let key = auth(1, None);
    let signed = |h: Hello, at: u64| {
        let mut h = h;
        key.sign_hello(&mut h, at).unwrap();
        h
    };
    let refused = |h: &Hello| {
        let mut s = raw_send_hello(port, h);
        let f = raw_read_frame(&mut s).expect("a reply");
        assert_eq!(f.kind, FrameKind::HelloReject);
        let r: HelloReject = f.decode().unwrap();
        assert!(closed_within(&mut s, WAIT_LIMIT));
        r
    };
    // A good one first, then the same bytes again: a replay.
    let good = signed(hello(9, 2), wall_ms());
    let mut s = raw_send_hello(port, &good);
    assert_eq!(raw_read_frame(&mut s).unwrap().kind, FrameKind::HelloAck);
    drop(s);
    assert_eq!(refused(&good).code(), RejectCode::Authentication);
    // Tampered after signing (claims another shard).
    assert_eq!(
        refused(&Hello { shard: 1, shards: 2, ..signed(hello(9, 2), wall_ms()) }).code(),
        RejectCode::Authentication
    );
    // Signed too long ago.
    assert_eq!(
        refused(&signed(hello(9, 2), wall_ms() - 3 * MAX_CLOCK_SKEW_MS)).code(),
        RejectCode::Authentication
    );
    // Unsigned.
    assert_eq!(refused(&hello(9, 2)).code(), RejectCode::Authentication);
    // Signed for another cluster: refused for the cluster id before the secret is looked at.
    assert_eq!(
        refused(&signed(Hello { cluster_id: "another-cluster".into(), ..hello(9, 2) }, wall_ms())).code(),
        RejectCode::ClusterId
    );
    let st = b.stats(0);
    assert!(
        wait_until(WAIT_LIMIT, || {
            let s = b.stats(0);
            s.auth_replayed == 1 && s.auth_bad_mac == 1 && s.auth_expired == 1 && s.auth_missing == 1
        }),
        "{st:?}"
    );
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).handshakes_rejected == 5), "{:?}", b.stats(0));
    assert!(b.shutdown());
}

#[test]
fn a_secret_rotates_through_two_rounds_of_restarts() {
    // Round 0: both on secret 1. Round 1: each restarts accepting 2 as well (still signing
    // with 1). Round 2: each restarts signing with 2 (accepting 1). Every mixed pair talks.
    let rounds = [(1, None), (1, Some(2)), (2, Some(1))];
    for w in rounds.windows(2) {
        let (old, new) = (w[0], w[1]);
        let mut fx = TcpFixture::new();
        let (tx, rx) = flume::unbounded();
        let a = start_with_secret(&mut fx, 1, &tx, old);
        let b = start_with_secret(&mut fx, 2, &tx, new);
        for (from, to, node) in [(1, 2, &a), (2, 1, &b)] {
            let through = wait_until(WAIT_LIMIT, || {
                node.send_seq(0, to, 1);
                rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == from)
            });
            assert!(through, "{old:?} -> {new:?}: {:?} {:?}", a.stats(0), b.stats(0));
        }
        assert!(a.shutdown() && b.shutdown());
    }
}

/// A node that restarts is heard from at once, not when its peers' backoff runs out: the
/// peer's dialer, backing off after losing it, redials as soon as the restarted node has
/// connected to the peer (it is up). Here the peer's backoff is a minute, beyond the wait.
#[test]
fn a_restarted_peer_that_connects_to_us_is_redialed_without_waiting_out_the_backoff() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let slow = |c: &mut crate::tcp::TcpConfig| {
        c.backoff_initial_ms = 60_000;
        c.backoff_max_ms = 60_000;
    };
    let a = TestNode::start(1, fx.factory_with(1, slow), 1, tx.clone()).unwrap();
    let b = start(&mut fx, 2, &tx);
    a.send_seq(0, 2, 1);
    assert_eq!(collect(&rx, 1, WAIT_LIMIT).len(), 1);
    assert!(b.shutdown());
    // A's dialer notices the close and waits out its backoff (30 to 60 s).
    assert!(wait_until(WAIT_LIMIT, || a.stats(0).connections_lost == 1), "{:?}", a.stats(0));
    let b = start(&mut fx, 2, &tx);
    // B reaches A at once (its dialer starts fresh), which tells A that B is back.
    let heard = wait_until(WAIT_LIMIT, || {
        b.send_seq(0, 1, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == 2)
    });
    assert!(heard, "{:?}", b.stats(0));
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == 1)
    });
    assert!(through, "{:?}", a.stats(0));
    assert!(a.stats(0).redials >= 1, "{:?}", a.stats(0));
    assert!(a.shutdown() && b.shutdown());
    assert!(wait_until(WAIT_LIMIT, || fx.leftovers().is_none()), "{:?}", fx.leftovers());
}
