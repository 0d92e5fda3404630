//! The cross-core bus: one bounded inbox per shard, fed by every other shard, by the shard's
//! own transport, and by `NodeHandle`s on any thread. It carries requests for the shard's
//! partitions, peer messages (including those that reached the wrong shard), and stop
//! signals. Bounded: a full inbox refuses requests with `Busy` and drops peer traffic
//! (Raft retransmits), so memory never grows without limit.

use std::sync::Arc;

use phalanx_proto::RaftMessage;

use super::placement::shard_of;
use super::request::Request;
use crate::raft::{NodeId, Status};
use crate::system::ClusterDirectory;

/// What a shard's inbox carries.
pub(crate) enum ShardMsg {
    /// A request from a handle.
    Request(Request),
    /// Consensus messages from a peer node.
    Peer { from: NodeId, messages: Vec<RaftMessage> },
    /// The system partition's state changed (from the shard that owns partition 0).
    System(Arc<ClusterDirectory>),
    /// The failure detector's view of a peer changed.
    PeerStatus { node: NodeId, liveness: crate::swim::Liveness },
    /// The failure detector heard a peer alive at a higher incarnation: it restarted.
    PeerReincarnated { node: NodeId },
    /// A system command for the system partition (to the shard that owns it), from a shard
    /// reporting membership progress.
    SystemCommand(bytes::Bytes),
    /// Stop the shard.
    Stop,
}

/// Senders into every shard's inbox.
#[derive(Clone)]
pub(crate) struct Bus {
    inboxes: Arc<Vec<flume::Sender<ShardMsg>>>,
}

impl Bus {
    pub(crate) fn new(inboxes: Vec<flume::Sender<ShardMsg>>) -> Self {
        Bus { inboxes: Arc::new(inboxes) }
    }

    pub(crate) fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends a request to the shard owning its partition; refuses it with `Busy` when that
    /// inbox is full and `Errored` when the shard has stopped.
    pub(crate) fn request(&self, r: Request) {
        let shard = r.op.partition().map_or(0, |p| shard_of(p, self.shards()));
        self.request_to(shard, r);
    }

    pub(crate) fn request_to(&self, shard: usize, r: Request) {
        let Some(tx) = self.inboxes.get(shard) else {
            r.refuse(Status::Errored);
            return;
        };
        match tx.try_send(ShardMsg::Request(r)) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(ShardMsg::Request(r))) => r.refuse(Status::Busy),
            Err(flume::TrySendError::Disconnected(ShardMsg::Request(r))) => r.refuse(Status::Errored),
            Err(_) => {}
        }
    }

    /// Delivers peer messages into `shard`'s inbox (the transport's sink). False if dropped.
    pub(crate) fn deliver_peer(&self, shard: usize, from: NodeId, messages: Vec<RaftMessage>) -> bool {
        self.inboxes.get(shard).is_some_and(|tx| tx.try_send(ShardMsg::Peer { from, messages }).is_ok())
    }

    /// Hands `shard` a system command to propose. False if dropped (its inbox is full: the
    /// sender reports again at its next round).
    pub(crate) fn system_command(&self, shard: usize, command: bytes::Bytes) -> bool {
        self.inboxes.get(shard).is_some_and(|tx| tx.try_send(ShardMsg::SystemCommand(command)).is_ok())
    }

    /// Sends a message built by `make` to every shard but `except`; a full inbox drops it
    /// (the next change is broadcast again in full).
    pub(crate) fn broadcast(&self, except: usize, make: impl Fn() -> ShardMsg) {
        for (i, tx) in self.inboxes.iter().enumerate() {
            if i != except && tx.try_send(make()).is_err() {
                tracing::debug!(shard = i, "bus full: broadcast dropped");
            }
        }
    }

    /// Asks every shard to stop (blocking until each inbox takes the signal).
    pub(crate) fn stop_all(&self) {
        for tx in self.inboxes.iter() {
            let _ = tx.send(ShardMsg::Stop);
        }
    }
}
