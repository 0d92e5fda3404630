//! Messages a shard sends in one loop turn, cut into one batch (one frame) per peer at the
//! turn's end: each batch is a frame, a `send(2)` and a wake-up of the receiver, so a turn
//! sends once per peer, not once per Ready round and per completed write.

use std::collections::BTreeMap;
use std::time::Instant;

use phalanx_net::spare::Spare;
use phalanx_proto::{MessageBatch, RaftMessage};

use super::limits::message_bytes_bound;
use crate::raft::NodeId;

/// The turn's messages, in the order they were produced.
#[derive(Default)]
pub(crate) struct Outbox {
    messages: Vec<RaftMessage>,
    /// The largest recent turns: the message slots kept between turns (`spare.rs`). An
    /// election of ten thousand partitions at start-up grew the outbox to 4 MiB; a fixed
    /// busy turn's worth (16,384 slots) still kept 1.5 MiB of it per shard for good.
    spare: Spare,
}

impl Outbox {
    pub(crate) fn append(&mut self, messages: &mut Vec<RaftMessage>) {
        self.messages.append(messages);
    }

    pub(crate) fn extend(&mut self, messages: impl IntoIterator<Item = RaftMessage>) {
        self.messages.extend(messages);
    }

    /// The peers the turn sends to that get no failure-detector message yet.
    pub(crate) fn peers_without_gossip(&self) -> Vec<NodeId> {
        use phalanx_proto::raft_message::Body;
        // One pass: per peer, whether one of its messages is gossip already.
        let mut peers: BTreeMap<NodeId, bool> = BTreeMap::new();
        for m in &self.messages {
            *peers.entry(m.to).or_default() |= matches!(m.body, Some(Body::Gossip(_)));
        }
        peers.into_iter().filter(|(_, has)| !has).map(|(p, _)| p).collect()
    }

    /// Drops every queued message of group `p` (it stopped here).
    pub(crate) fn forget_group(&mut self, p: u64) {
        self.messages.retain(|m| m.group != p);
    }

    /// Cuts the queued messages into batches of at most `batch_bytes_max` (by
    /// [`message_bytes_bound`]; the transport's frame limit, `limits.rs`) per peer, in order,
    /// into `frames`. (A turn's appends of large entries to several partitions once
    /// made a 22 MiB batch, which the transport drops as above its frame limit — and the
    /// resends, coalesced the same way, again.) A peer's messages keep their order.
    /// Run every turn (at `now`), with messages or not: an idle turn is what lets a burst's
    /// slots go.
    pub(crate) fn flush(
        &mut self,
        batch_bytes_max: usize,
        frames: &mut Vec<(NodeId, MessageBatch)>,
        now: Instant,
    ) {
        let used = self.messages.len();
        if used == 0 {
            self.spare.trim(&mut self.messages, 0, now);
            return;
        }
        let mut per_peer: BTreeMap<NodeId, (Vec<RaftMessage>, usize)> = BTreeMap::new();
        for m in self.messages.drain(..) {
            let len = message_bytes_bound(&m);
            let to = m.to;
            let (messages, bytes) = per_peer.entry(to).or_default();
            if !messages.is_empty() && *bytes + len > batch_bytes_max {
                frames.push((to, MessageBatch { messages: std::mem::take(messages) }));
                *bytes = 0;
            }
            *bytes += len;
            messages.push(m);
        }
        for (to, (messages, _)) in per_peer {
            frames.push((to, MessageBatch { messages }));
        }
        self.spare.trim(&mut self.messages, used, now);
    }
}
