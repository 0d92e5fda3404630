//! Test nodes: each shard on its own glommio executor thread, driven from the test thread
//! through commands, delivering everything it receives to one shared channel.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use phalanx_proto::{
    AppendEntriesRequest, Heartbeat, LogEntry, MessageBatch, RaftMessage, raft_message::Body,
};

use crate::error::NetError;
use crate::stats::TransportStats;
use crate::transport::{Inbound, InboundSink, NodeId, Transport, TransportFactory};

/// io_uring memory per test executor: small, so many executors fit a default `ulimit -l`.
pub const TEST_IO_MEMORY_BYTES: usize = 1 << 20;

/// Upper bound on any wait in the suite; a check that needs longer has failed.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Poll period of [`wait_until`].
const POLL_PERIOD: Duration = Duration::from_millis(5);

/// A batch some shard of some node received.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The receiving node.
    pub node: NodeId,
    /// The receiving shard.
    pub shard: usize,
    /// What arrived.
    pub inbound: Inbound,
}

enum Cmd {
    Send(NodeId, Vec<MessageBatch>),
    Stats(flume::Sender<TransportStats>),
    /// Blocks the shard's thread (a stalled receiver).
    Stall(Duration),
    Shutdown(flume::Sender<()>),
}

struct ShardThread {
    cmd: flume::Sender<Cmd>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

/// A node under test: `shards` executor threads each running one transport.
pub struct TestNode {
    /// The node's id.
    pub id: NodeId,
    shards: Vec<ShardThread>,
    accepting: Arc<AtomicBool>,
    /// Sequence numbers handed out by [`TestNode::send_seq`], per shard.
    seqs: Vec<AtomicU64>,
}

impl TestNode {
    /// Starts `shards` shards of node `id` from `factory`; returns once every shard's
    /// transport is running (or the first start error).
    pub fn start<F: TransportFactory>(
        id: NodeId,
        factory: Arc<F>,
        shards: usize,
        out: flume::Sender<Delivered>,
    ) -> Result<TestNode, NetError> {
        let accepting = Arc::new(AtomicBool::new(true));
        let mut threads = Vec::new();
        for shard in 0..shards {
            let (cmd_tx, cmd_rx) = flume::unbounded::<Cmd>();
            let (ready_tx, ready_rx) = flume::bounded::<Result<(), NetError>>(1);
            let (f, out, acc) = (factory.clone(), out.clone(), accepting.clone());
            let thread = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(TEST_IO_MEMORY_BYTES)
                .name(&format!("n{id}s{shard}"))
                .spawn(move || async move {
                    let sink: InboundSink = Rc::new(move |inbound: Inbound| {
                        acc.load(Ordering::Acquire)
                            && out.send(Delivered { node: id, shard, inbound }).is_ok()
                    });
                    let t = match f.start(shard, shards, sink) {
                        Ok(t) => {
                            let _ = ready_tx.send(Ok(()));
                            t
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Ok(cmd) = cmd_rx.recv_async().await {
                        match cmd {
                            Cmd::Send(to, batches) => {
                                for b in batches {
                                    t.send(to, b);
                                }
                            }
                            Cmd::Stats(reply) => {
                                let _ = reply.send(t.stats());
                            }
                            Cmd::Stall(d) => std::thread::sleep(d),
                            Cmd::Shutdown(reply) => {
                                t.shutdown().await;
                                let _ = reply.send(());
                                return;
                            }
                        }
                    }
                    t.shutdown().await;
                })
                .map_err(|e| NetError::Io(std::io::Error::other(e.to_string())))?;
            match ready_rx.recv_timeout(WAIT_LIMIT) {
                Ok(Ok(())) => threads.push(ShardThread { cmd: cmd_tx, thread: Some(thread) }),
                Ok(Err(e)) => {
                    let _ = thread.join();
                    stop_all(&mut threads);
                    return Err(e);
                }
                Err(_) => {
                    stop_all(&mut threads);
                    return Err(NetError::Io(std::io::Error::other("shard did not start in time")));
                }
            }
        }
        let seqs = (0..shards).map(|_| AtomicU64::new(0)).collect();
        Ok(TestNode { id, shards: threads, accepting, seqs })
    }

    /// The node's shard count.
    #[must_use]
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Sends batches from `shard` to node `to`, in order, in one executor turn.
    pub fn send(&self, shard: usize, to: NodeId, batches: Vec<MessageBatch>) {
        let _ = self.shards[shard].cmd.send(Cmd::Send(to, batches));
    }

    /// Sends `count` one-message batches numbered by this shard's sequence (see [`seq_of`]).
    pub fn send_seq(&self, shard: usize, to: NodeId, count: u64) {
        let first = self.seqs[shard].fetch_add(count, Ordering::Relaxed);
        let batches = (first..first + count).map(|s| seq_batch(self.id, to, shard, s)).collect();
        self.send(shard, to, batches);
    }

    /// As [`send_seq`](Self::send_seq), each batch carrying `pad_bytes` more bytes (a
    /// second message, an append with one entry of that size), to fill buffers fast.
    pub fn send_padded_seq(&self, shard: usize, to: NodeId, count: u64, pad_bytes: usize) {
        let first = self.seqs[shard].fetch_add(count, Ordering::Relaxed);
        let pad = bytes::Bytes::from(vec![0xA5; pad_bytes]);
        let batches = (first..first + count)
            .map(|s| {
                let mut b = seq_batch(self.id, to, shard, s);
                b.messages.push(RaftMessage {
                    group: shard as u64,
                    from: self.id,
                    to,
                    body: Some(Body::AppendRequest(AppendEntriesRequest {
                        entries: vec![LogEntry { payload: pad.clone(), ..LogEntry::default() }],
                        ..AppendEntriesRequest::default()
                    })),
                });
                b
            })
            .collect();
        self.send(shard, to, batches);
    }

    /// The stats of one shard.
    #[must_use]
    pub fn stats(&self, shard: usize) -> TransportStats {
        let (tx, rx) = flume::bounded(1);
        let _ = self.shards[shard].cmd.send(Cmd::Stats(tx));
        rx.recv_timeout(WAIT_LIMIT).unwrap_or_default()
    }

    /// Every shard's stats added up.
    #[must_use]
    pub fn total_stats(&self) -> TransportStats {
        (0..self.shards()).map(|s| self.stats(s)).fold(TransportStats::default(), |a, b| a.plus(&b))
    }

    /// Blocks one shard's executor thread for `d` (returns at once).
    pub fn stall(&self, shard: usize, d: Duration) {
        let _ = self.shards[shard].cmd.send(Cmd::Stall(d));
    }

    /// Makes the sink report a full inbox (`false`) or accept again (`true`).
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Release);
    }

    /// Shuts every shard's transport down and joins the threads; `false` if a shard did not
    /// finish within [`WAIT_LIMIT`].
    pub fn shutdown(mut self) -> bool {
        stop_all(&mut self.shards)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        stop_all(&mut self.shards);
    }
}

fn stop_all(threads: &mut Vec<ShardThread>) -> bool {
    let mut ok = true;
    let waits: Vec<_> = threads
        .iter()
        .map(|t| {
            let (tx, rx) = flume::bounded(1);
            let _ = t.cmd.send(Cmd::Shutdown(tx));
            rx
        })
        .collect();
    for rx in waits {
        ok &= rx.recv_timeout(WAIT_LIMIT).is_ok();
    }
    for t in threads.iter_mut() {
        if let Some(h) = t.thread.take() {
            ok &= h.join().is_ok();
        }
    }
    threads.clear();
    ok
}

/// Total batches a sender dropped for any reason.
#[must_use]
pub fn dropped(s: &TransportStats) -> u64 {
    s.batches_dropped_queue_full
        + s.batches_dropped_unreachable
        + s.batches_dropped_oversize
        + s.batches_dropped_invalid
}

/// A one-message batch from `from` (shard `shard`) to `to` carrying sequence number `seq`.
#[must_use]
pub fn seq_batch(from: NodeId, to: NodeId, shard: usize, seq: u64) -> MessageBatch {
    MessageBatch {
        messages: vec![RaftMessage {
            group: shard as u64,
            from,
            to,
            body: Some(Body::Heartbeat(Heartbeat { term: 1, commit: seq, read_ctx: 0, quiesce: false })),
        }],
    }
}

/// The sequence number of a batch built by [`seq_batch`].
#[must_use]
pub fn seq_of(b: &MessageBatch) -> Option<u64> {
    match b.messages.first()?.body.as_ref()? {
        Body::Heartbeat(h) => Some(h.commit),
        _ => None,
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_PERIOD);
    }
}

/// Receives deliveries until `n` arrived or `limit` passed.
pub fn collect(rx: &flume::Receiver<Delivered>, n: usize, limit: Duration) -> Vec<Delivered> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(d) => got.push(d),
            Err(_) => break,
        }
    }
    got
}

/// Whether the peer of a raw socket closes it within `limit`, reading and discarding what it
/// sends meanwhile (tests of servers that must drop a misbehaving client or peer).
pub fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    if s.set_read_timeout(Some(Duration::from_millis(50))).is_err() {
        return true;
    }
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}
