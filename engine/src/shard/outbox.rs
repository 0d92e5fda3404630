//! Messages a shard sends in one loop turn, cut into one batch (one frame) per peer at the
//! turn's end: each batch is a frame, a `send(2)` and a wake-up of the receiver, so a turn
//! sends once per peer, not once per Ready round and per completed write.

use std::collections::BTreeMap;

use phalanx_proto::{MessageBatch, RaftMessage};

use crate::config::LOG_ENTRY_ENVELOPE_BYTES;
use crate::raft::NodeId;

/// Bytes of messages in one batch to a peer (one frame). Half the transport's default frame
/// limit: a batch is split before it, and one message alone (an append holds at most
/// `max_bytes_per_append` plus one entry of at most `MAX_ENTRY_PAYLOAD_BYTES`) stays below
/// the limit too.
pub(crate) const PEER_BATCH_BYTES_MAX: usize = phalanx_net::frame::DEFAULT_MAX_FRAME_BYTES / 2;

/// An upper bound of a message's encoding from lengths alone (encoding every append once
/// more to size the batches cost measurable CPU per write): what carries data counts its
/// data plus the envelope per entry, the rest a fixed allowance.
fn message_bytes_bound(m: &RaftMessage) -> usize {
    use phalanx_proto::raft_message::Body;
    /// Everything but the data: ids, terms, indexes, flags, a membership of a few nodes.
    const FIXED: usize = 256;
    let per_entry = LOG_ENTRY_ENVELOPE_BYTES + 8;
    FIXED
        + match &m.body {
            Some(Body::AppendRequest(a)) => {
                a.entries.iter().map(|e| e.payload.len() + e.log_type.len() + per_entry).sum()
            }
            Some(Body::Snapshot(s)) => {
                let members = s.conf_state.as_ref().map_or(0, |c| 11 * (c.voters.len() + c.learners.len()));
                let pending: usize =
                    s.pending_two_step.iter().map(|e| e.payload.len() + e.log_type.len() + per_entry).sum();
                s.data.len() + members + pending
            }
            Some(Body::ForwardedProposal(f)) => {
                f.log_type.len() + f.payloads.iter().map(|p| p.len() + 8).sum::<usize>()
            }
            _ => 0,
        }
}

/// The turn's messages, in the order they were produced.
#[derive(Default)]
pub(crate) struct Outbox {
    messages: Vec<RaftMessage>,
}

impl Outbox {
    pub(crate) fn append(&mut self, messages: &mut Vec<RaftMessage>) {
        self.messages.append(messages);
    }

    pub(crate) fn extend(&mut self, messages: impl IntoIterator<Item = RaftMessage>) {
        self.messages.extend(messages);
    }

    /// Drops every queued message of group `p` (it stopped here).
    pub(crate) fn forget_group(&mut self, p: u64) {
        self.messages.retain(|m| m.group != p);
    }

    /// Cuts the queued messages into batches of at most [`PEER_BATCH_BYTES_MAX`] per peer, in
    /// order, into `frames`. (A turn's appends of large entries to several partitions once
    /// made a 22 MiB batch, which the transport drops as above its frame limit — and the
    /// resends, coalesced the same way, again.) A peer's messages keep their order.
    pub(crate) fn flush(&mut self, frames: &mut Vec<(NodeId, MessageBatch)>) {
        if self.messages.is_empty() {
            return;
        }
        let mut per_peer: BTreeMap<NodeId, (Vec<RaftMessage>, usize)> = BTreeMap::new();
        for m in self.messages.drain(..) {
            let len = message_bytes_bound(&m);
            let to = m.to;
            let (messages, bytes) = per_peer.entry(to).or_default();
            if !messages.is_empty() && *bytes + len > PEER_BATCH_BYTES_MAX {
                frames.push((to, MessageBatch { messages: std::mem::take(messages) }));
                *bytes = 0;
            }
            *bytes += len;
            messages.push(m);
        }
        for (to, (messages, _)) in per_peer {
            frames.push((to, MessageBatch { messages }));
        }
    }
}
