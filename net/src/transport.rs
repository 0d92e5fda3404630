//! The transport contract every implementation (TCP, in-memory) honours.
//!
//! # Threads
//!
//! A node runs one glommio executor per shard. The runtime creates one [`TransportFactory`]
//! per node (on any thread) and calls [`TransportFactory::start`] once per shard, **on that
//! shard's executor thread**, handing it the shard's [`InboundSink`]. The returned
//! [`Transport`] is `!Send`: it and its background tasks live on that executor.
//!
//! # What `send` promises
//!
//! Raft tolerates lost, duplicated and reordered messages, so the transport trades guarantees
//! for never blocking the shard loop:
//!
//! - [`Transport::send`] never blocks and never fails loudly. It enqueues the batch on a
//!   bounded per-peer queue and returns. When the queue is full, the peer is unknown, the
//!   peer is this node, the batch exceeds `max_frame_bytes`, or the peer is unreachable, the
//!   batch is **dropped and counted** in [`TransportStats`].
//! - Bytes leave when the shard's executor runs the transport's tasks, i.e. when the shard
//!   loop awaits something that yields. A loop that never yields never sends.
//! - While one connection to a peer lives, the batches one shard sends that peer arrive in
//!   the order they were sent, each at most once, whole (a batch is one frame).
//! - When a connection breaks, what was handed to it may be lost; nothing is replayed on the
//!   next connection. Batches queued while no connection is up are kept (within the bound)
//!   until the next connection, and discarded (counted) when a connection attempt fails.
//! - Shard *i* of node A delivers to shard `i % B.shards` of node B. Node B's runtime routes
//!   messages for partitions that shard does not own over its cross-core bus.
//!
//! # Batches
//!
//! Every message of a batch sent to node `to` must have `from == local node` and
//! `to == to`. The receiver checks this (a peer cannot speak for another node) and closes
//! the connection on a violation; the in-memory transport checks it at `send`, so tests catch
//! runtime bugs the TCP transport would reject.
//!
//! # Receiving
//!
//! Each inbound batch is handed to the shard's [`InboundSink`] on the shard's thread, in
//! arrival order per connection. The sink must not block; it returns `false` when the
//! shard's inbox is full, and the batch is dropped and counted.

use std::future::Future;
use std::rc::Rc;

use phalanx_proto::MessageBatch;

use crate::error::NetError;
use crate::stats::TransportStats;

/// A node's id: non-zero, unique in the cluster (the engine's `NodeId`).
pub type NodeId = u64;

/// A batch that arrived from a peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    /// The node that sent it (authenticated by the connection's handshake).
    pub from: NodeId,
    /// The sender's shard.
    pub from_shard: u32,
    /// The messages, in the order the sender produced them.
    pub batch: MessageBatch,
}

/// Where a shard's transport delivers what arrives. Called on the shard's thread only; must
/// not block; returns `false` when the shard's inbox is full (the batch is then dropped and
/// counted as `batches_dropped_inbox_full`).
pub type InboundSink = Rc<dyn Fn(Inbound) -> bool>;

/// One shard's endpoint of the network. See the [module docs](self) for the contract.
pub trait Transport: 'static {
    /// Queues `batch` for node `to`; never blocks. See the module docs for when it is dropped.
    fn send(&self, to: NodeId, batch: MessageBatch);

    /// A snapshot of this shard's counters.
    fn stats(&self) -> TransportStats;

    /// The largest batch encoding this transport carries, in bytes (its `max_frame_bytes`):
    /// a larger batch is dropped and counted as `batches_dropped_oversize`. Senders cut their
    /// batches below it, and must never need one message larger than it.
    fn max_frame_bytes(&self) -> usize;

    /// Stops every task of this shard's transport and closes its sockets; resolves when they
    /// are gone. Batches still queued are dropped. Dropping a transport without calling this
    /// cancels its tasks too, but does not wait for them.
    fn shutdown(self) -> impl Future<Output = ()>;
}

/// Creates the per-shard transports of one node.
pub trait TransportFactory: Send + Sync + 'static {
    /// The per-shard transport.
    type T: Transport;

    /// Starts shard `shard` of `shards`. Call it on that shard's glommio executor thread
    /// (it spawns the transport's tasks there; off an executor thread it panics), once per
    /// shard; every call of one node passes the same `shards`. A second start of a running
    /// shard is refused ([`NetError::AlreadyStarted`]); to restart a node, create a new factory.
    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<Self::T, NetError>;
}

/// Why a batch breaks the contract (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A message claims another sender.
    #[error("message {index} claims to be from node {claimed}, the connection is from node {actual}")]
    WrongSender {
        /// Position in the batch.
        index: usize,
        /// The message's `from`.
        claimed: NodeId,
        /// The authenticated sender.
        actual: NodeId,
    },
    /// A message is addressed to another node.
    #[error("message {index} is addressed to node {addressed}, not to node {actual}")]
    WrongRecipient {
        /// Position in the batch.
        index: usize,
        /// The message's `to`.
        addressed: NodeId,
        /// The node the batch went to.
        actual: NodeId,
    },
}

/// Checks that every message of `batch` is from `from` and to `to`.
pub fn check_batch(batch: &MessageBatch, from: NodeId, to: NodeId) -> Result<(), BatchError> {
    for (index, m) in batch.messages.iter().enumerate() {
        if m.from != from {
            return Err(BatchError::WrongSender { index, claimed: m.from, actual: from });
        }
        if m.to != to {
            return Err(BatchError::WrongRecipient { index, addressed: m.to, actual: to });
        }
    }
    Ok(())
}

/// The shard of a node with `peer_shards` shards that shard `shard` talks to.
#[must_use]
pub fn peer_shard(shard: usize, peer_shards: usize) -> usize {
    if peer_shards == 0 { 0 } else { shard % peer_shards }
}
