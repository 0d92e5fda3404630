//! The conformance suite every [`Transport`](crate::Transport) must pass.
//!
//! Each check is a generic function over a [`Fixture`] (how to create one node's factory and
//! how to tell that stopped nodes left nothing behind). Nodes run for real: every shard on
//! its own glommio executor thread ([`TestNode`]). `cfg(test)` runs the suite against the TCP
//! transport (127.0.0.1, OS-assigned ports) and the in-memory transport, plus the checks that
//! only make sense for one of them (raw sockets, fault hooks). Other crates can run it
//! against their own transports with the `conformance` feature.
//!
//! Every wait is bounded ([`WAIT_LIMIT`]); a check either passes in well under a second or
//! fails, it never hangs.

pub mod fixtures;
pub mod harness;

#[cfg(test)]
mod memory_only;
#[cfg(test)]
mod tcp_only;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_only;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use phalanx_proto::{MessageBatch, RaftMessage};

pub use self::harness::*;
use crate::transport::{NodeId, TransportFactory};

/// One transport under test.
pub trait Fixture {
    /// The factory type.
    type F: TransportFactory;

    /// A fresh factory for node `id`. A node started again after a shutdown gets a new
    /// factory that its peers reach the same way as before (TCP: the same address).
    fn factory(&mut self, id: NodeId) -> Arc<Self::F>;

    /// Makes `id` a known peer that is not running (TCP: an address nobody listens on).
    fn add_absent(&mut self, id: NodeId);

    /// Once every node is shut down: a description of what was left behind (open sockets,
    /// registrations), or `None`.
    fn leftovers(&self) -> Option<String>;
}

fn start<X: Fixture>(fx: &mut X, id: NodeId, shards: usize, out: &flume::Sender<Delivered>) -> TestNode {
    let f = fx.factory(id);
    TestNode::start(id, f, shards, out.clone()).expect("node starts")
}

/// Checks that, per (sending node, sending shard), the sequence numbers received are exactly
/// `0..n` in order.
fn assert_in_order(got: &[Delivered], n: u64) {
    let mut per_stream: HashMap<(NodeId, NodeId, u32), Vec<u64>> = HashMap::new();
    for d in got {
        let seq = seq_of(&d.inbound.batch).expect("a sequence batch");
        per_stream.entry((d.node, d.inbound.from, d.inbound.from_shard)).or_default().push(seq);
    }
    for (stream, seqs) in per_stream {
        assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "stream {stream:?} out of order or incomplete");
    }
}

/// Two nodes × 2 shards, both directions: every batch arrives once, in order, at the
/// sending shard's counterpart.
pub fn check_in_order<X: Fixture>(fx: &mut X) {
    const PER_SHARD: u64 = 500;
    const CHUNK: u64 = 50;
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 2, &tx);
    let b = start(fx, 2, 2, &tx);
    for _ in 0..PER_SHARD / CHUNK {
        for s in 0..2 {
            a.send_seq(s, 2, CHUNK);
            b.send_seq(s, 1, CHUNK);
        }
    }
    let got = collect(&rx, (4 * PER_SHARD) as usize, WAIT_LIMIT);
    assert_eq!(got.len() as u64, 4 * PER_SHARD, "stats a={:?} b={:?}", a.total_stats(), b.total_stats());
    for d in &got {
        assert_eq!(d.shard, d.inbound.from_shard as usize, "shard i talks to shard i");
        assert_ne!(d.node, d.inbound.from);
    }
    assert_in_order(&got, PER_SHARD);
    let (sa, sb) = (a.total_stats(), b.total_stats());
    assert_eq!(sa.batches_sent, 2 * PER_SHARD);
    assert_eq!(sb.batches_received, 2 * PER_SHARD);
    assert_eq!(dropped(&sa) + dropped(&sb), 0);
    assert!(sa.bytes_sent > 0 && sb.bytes_received == sa.bytes_sent, "{sa:?} {sb:?}");
    assert!(a.shutdown() && b.shutdown());
}

/// Shard *i* of a node with 3 shards reaches shard `i % 2` of a node with 2, and back.
pub fn check_shard_mapping<X: Fixture>(fx: &mut X) {
    const N: u64 = 20;
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 3, &tx);
    let b = start(fx, 2, 2, &tx);
    for s in 0..3 {
        a.send_seq(s, 2, N);
    }
    for s in 0..2 {
        b.send_seq(s, 1, N);
    }
    let got = collect(&rx, (5 * N) as usize, WAIT_LIMIT);
    assert_eq!(got.len() as u64, 5 * N);
    for d in &got {
        let expected = d.inbound.from_shard as usize % if d.node == 2 { 2 } else { 3 };
        assert_eq!(d.shard, expected, "{d:?}");
    }
    assert_in_order(&got, N);
    assert!(a.shutdown() && b.shutdown());
}

/// A peer that stops and starts again is reached again, without any action by the sender.
pub fn check_reconnect_after_restart<X: Fixture>(fx: &mut X) {
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 1, &tx);
    let b = start(fx, 2, 1, &tx);
    a.send_seq(0, 2, 1);
    assert_eq!(collect(&rx, 1, WAIT_LIMIT).len(), 1);
    assert!(b.shutdown());
    // While the peer is down, sends are dropped and counted, never blocking. (What was
    // written before the sender noticed the loss is counted as sent and lost: TCP cannot
    // tell at write time.)
    let dropping = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        dropped(&a.stats(0)) >= 1
    });
    assert!(dropping, "{:?}", a.stats(0));
    let b = start(fx, 2, 1, &tx);
    while rx.try_recv().is_ok() {}
    // Keep sending until something gets through: the sender reconnects on its own.
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok()
    });
    assert!(through, "no delivery after the restart: {:?}", a.stats(0));
    assert!(a.shutdown() && b.shutdown());
}

/// Batches to a peer that is down are dropped and counted; none is reported sent.
pub fn check_drops_when_peer_down<X: Fixture>(fx: &mut X) {
    const N: u64 = 10_000;
    let (tx, _rx) = flume::unbounded();
    fx.add_absent(2);
    let a = start(fx, 1, 1, &tx);
    a.send_seq(0, 2, N);
    assert!(wait_until(WAIT_LIMIT, || dropped(&a.stats(0)) == N), "{:?}", a.stats(0));
    let s = a.stats(0);
    assert_eq!(s.batches_sent, 0);
    assert_eq!(s.batches_dropped_queue_full + s.batches_dropped_unreachable, N, "{s:?}");
    assert!(a.shutdown());
}

/// A receiver that stalls does not make the sender block or grow without bound: the excess
/// is dropped (queue full) and counted; the rest arrives once it resumes.
///
/// The batches carry padding so that their volume (40 MB) exceeds what the kernel can hold
/// in flight on a connection (socket buffers, a few MB at most here) plus any transport's
/// queue bound: a transport that writes to its socket at once must hit its bound as surely
/// as one that queues first.
pub fn check_slow_receiver_is_bounded<X: Fixture>(fx: &mut X) {
    const N: u64 = 20_000;
    const PAD_BYTES: usize = 2 << 10;
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 1, &tx);
    let b = start(fx, 2, 1, &tx);
    a.send_seq(0, 2, 1); // connect first, so the bound and not the connection is tested
    assert_eq!(collect(&rx, 1, WAIT_LIMIT).len(), 1);
    b.stall(0, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(20));
    a.send_padded_seq(0, 2, N, PAD_BYTES);
    let s = a.stats(0);
    assert!(s.batches_dropped_queue_full > 0, "no bound hit: {s:?}");
    assert!(
        wait_until(WAIT_LIMIT, || {
            let (sa, sb) = (a.stats(0), b.stats(0));
            sb.batches_received + dropped(&sa) == N + 1
        }),
        "a={:?} b={:?}",
        a.stats(0),
        b.stats(0)
    );
    assert!(a.shutdown() && b.shutdown());
}

/// A sink reporting a full inbox makes the receiver drop and count.
pub fn check_inbox_full_is_counted<X: Fixture>(fx: &mut X) {
    const N: u64 = 100;
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 1, &tx);
    let b = start(fx, 2, 1, &tx);
    b.set_accepting(false);
    a.send_seq(0, 2, N);
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).batches_dropped_inbox_full == N), "{:?}", b.stats(0));
    assert_eq!(b.stats(0).batches_received, 0);
    assert!(rx.try_recv().is_err());
    assert!(a.shutdown() && b.shutdown());
}

/// Sends to self, to node 0 and to unknown nodes are dropped as unreachable.
pub fn check_self_and_unknown_peers<X: Fixture>(fx: &mut X) {
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 1, &tx);
    a.send_seq(0, 1, 1);
    a.send_seq(0, 0, 1);
    a.send_seq(0, 99, 1);
    assert!(wait_until(WAIT_LIMIT, || a.stats(0).batches_dropped_unreachable == 3), "{:?}", a.stats(0));
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    assert!(a.shutdown());
}

/// A batch whose messages claim another sender or recipient is never delivered, and valid
/// traffic flows again afterwards.
pub fn check_contract_violations_never_delivered<X: Fixture>(fx: &mut X) {
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 1, &tx);
    let b = start(fx, 2, 1, &tx);
    a.send_seq(0, 2, 1);
    assert_eq!(collect(&rx, 1, WAIT_LIMIT).len(), 1);
    let forged = |from, to| MessageBatch { messages: vec![RaftMessage { group: 0, from, to, body: None }] };
    a.send(0, 2, vec![forged(3, 2)]);
    a.send(0, 2, vec![forged(1, 3)]);
    let through = wait_until(WAIT_LIMIT, || {
        a.send_seq(0, 2, 1);
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(d) => {
                assert!(seq_of(&d.inbound.batch).is_some(), "forged batch delivered: {d:?}");
                true
            }
            Err(_) => false,
        }
    });
    assert!(through);
    let (sa, sb) = (a.stats(0), b.stats(0));
    assert!(sa.batches_dropped_invalid + sb.protocol_errors >= 1, "a={sa:?} b={sb:?}");
    assert!(a.shutdown() && b.shutdown());
}

/// Shutdown completes while peers still send, and leaves nothing behind.
pub fn check_clean_shutdown<X: Fixture>(fx: &mut X) {
    let (tx, rx) = flume::unbounded();
    let a = start(fx, 1, 2, &tx);
    let b = start(fx, 2, 2, &tx);
    for s in 0..2 {
        a.send_seq(s, 2, 100);
        b.send_seq(s, 1, 100);
    }
    assert_eq!(collect(&rx, 400, WAIT_LIMIT).len(), 400);
    for s in 0..2 {
        b.send_seq(s, 1, 100);
    }
    assert!(a.shutdown(), "node 1 did not shut down in time");
    for s in 0..2 {
        b.send_seq(s, 1, 100);
    }
    assert!(b.shutdown(), "node 2 did not shut down in time");
    let left = wait_until(WAIT_LIMIT, || fx.leftovers().is_none());
    assert!(left, "left behind: {:?}", fx.leftovers());
}
