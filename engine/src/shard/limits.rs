//! The byte limits a shard works under, derived in one place (issue 12, item 5) from the
//! three it must stay under: what one write of its store holds, what one frame of its
//! transport carries, and the node's configuration. Everything a caller or a peer can make
//! the shard build — an entry, one request's entries, a peer message, a batch of messages, a
//! write — is bounded here so that no layer below ever refuses it for its size:
//!
//! | limit | unit | bounded by |
//! |---|---|---|
//! | [`ShardLimits::entry_bytes_max`] | encoded entry | the store's largest entry and one write's room |
//! | [`ShardLimits::request_bytes_max`] | cost of one request's entries | one write's room; one frame (a follower forwards a request whole) |
//! | [`ShardLimits::peer_batch_bytes_max`] | messages to one peer in one turn | one frame |
//! | one peer message | bytes | one frame, checked at open ([`ShardLimits::derive`]) |
//!
//! (The writer splits a turn's merged writes at the store's batch cost itself,
//! `write.rs`.)

use phalanx_proto::RaftMessage;
use phalanx_storage::limits::{ENTRY_BYTES_MAX, ENTRY_RECORD_OVERHEAD_BYTES, PARTITION_RECORDS_BYTES};

use crate::config::{LOG_ENTRY_ENVELOPE_BYTES, NodeConfig};
use crate::error::Error;

/// Bytes of a Raft message other than its data: ids, terms, indexes, flags, and its own
/// length prefix in the batch.
pub(crate) const MESSAGE_FIXED_BYTES: usize = 256;

/// Bytes one entry adds to an append beyond its payload and log type: its envelope and its
/// length prefix in the message.
pub(crate) const APPEND_ENTRY_OVERHEAD_BYTES: usize = LOG_ENTRY_ENVELOPE_BYTES + 8;

/// Bytes one payload of a forwarded proposal adds beyond itself: its length prefix.
const FORWARDED_PAYLOAD_OVERHEAD_BYTES: usize = 8;

/// Bytes one member of a snapshot's membership takes at most (a varint id and its tag).
const MEMBER_BYTES: usize = 11;

/// The most members a snapshot's membership lists (voters and learners), as the transport's
/// discovery bounds the nodes of a cluster.
const MEMBERS_MAX: usize = phalanx_net::discovery::MAX_NODES;

/// The byte limits of one shard; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLimits {
    /// Largest encoded entry, in bytes: within the store's entry limit and within one write
    /// (with its partition's other records).
    pub entry_bytes_max: usize,
    /// Largest cost of one request's entries together, in bytes (each entry's payload, log
    /// type, envelope and record overhead, as the store counts it): within one write (with
    /// the partition's other records), so the store never refuses a request, and within one
    /// frame, since a follower forwards a request to its leader as one message.
    pub request_bytes_max: usize,
    /// Largest estimate ([`message_bytes_bound`]) of the messages in one batch to a peer, in
    /// bytes: the transport's frame limit. A batch is cut before it; one message alone never
    /// exceeds it (checked at [`ShardLimits::derive`]).
    pub peer_batch_bytes_max: usize,
}

impl ShardLimits {
    /// The limits of a shard whose store writes at most `write_cost_bytes` per batch (its
    /// `max_batch_cost`) and whose transport carries frames of at most `frame_bytes`. Refuses
    /// a configuration under which some message the shard must send would not fit in a frame
    /// (it would be dropped, and resent, forever): naming the settings to change.
    pub fn derive(cfg: &NodeConfig, write_cost_bytes: u64, frame_bytes: usize) -> Result<ShardLimits, Error> {
        // One entry, with its partition's other records, must fit in one write.
        let write_room =
            write_cost_bytes.saturating_sub(PARTITION_RECORDS_BYTES + ENTRY_RECORD_OVERHEAD_BYTES);
        let entry_bytes_max = write_room.min(ENTRY_BYTES_MAX) as usize;
        // A request's entries go to one partition's write; counted by their cost (encoding
        // and record overhead), as the store counts them.
        let request_bytes_max = (write_room as usize).min(frame_bytes.saturating_sub(MESSAGE_FIXED_BYTES));
        let limits = ShardLimits { entry_bytes_max, request_bytes_max, peer_batch_bytes_max: frame_bytes };
        let largest = limits.largest_message_bytes(cfg);
        if largest > frame_bytes {
            return Err(Error::Config(format!(
                "the transport's max_frame_bytes ({frame_bytes}) cannot carry this node's largest Raft message \
                 ({largest} bytes: an append of raft.max_bytes_per_append {} or one entry of up to \
                 raft.max_entry_bytes {}, raft.max_entries_per_append {} entries, or a snapshot chunk of \
                 raft.snapshot_chunk_bytes {}); raise max_frame_bytes or lower those",
                cfg.raft.max_bytes_per_append,
                cfg.raft.max_entry_bytes,
                cfg.raft.max_entries_per_append,
                cfg.raft.snapshot_chunk_bytes
            )));
        }
        if limits.request_bytes_max == 0 {
            return Err(Error::Config(format!(
                "the store's batch limit ({write_cost_bytes} bytes) or the transport's max_frame_bytes \
                 ({frame_bytes}) leaves no room for an entry"
            )));
        }
        Ok(limits)
    }

    /// The largest [`message_bytes_bound`] of any message this shard sends: the largest of
    /// [`ShardLimits::largest_raft_message_bytes`] and a forwarded request.
    #[must_use]
    pub fn largest_message_bytes(&self, cfg: &NodeConfig) -> usize {
        Self::largest_raft_message_bytes(cfg).max(MESSAGE_FIXED_BYTES + self.request_bytes_max)
    }

    /// The largest [`message_bytes_bound`] of the messages the Raft settings size, which a
    /// frame must carry whatever the other limits: an append (up to `max_bytes_per_append` of
    /// data, or one entry alone, which a follower accepts up to `raft.max_entry_bytes`) or a
    /// snapshot chunk. (A snapshot's last chunk also carries the group's pending two-step
    /// entries, which nothing bounds yet: see ARCHITECTURE.md, "Limits".)
    #[must_use]
    pub fn largest_raft_message_bytes(cfg: &NodeConfig) -> usize {
        let r = &cfg.raft;
        let data = r.max_bytes_per_append.max(r.max_entry_bytes);
        // An append holds at most `max_entries_per_append` entries, and each entry but the
        // first counts at least its fixed part (`approx_size`'s 40 bytes) toward the byte cap.
        let entries = r.max_entries_per_append.min(r.max_bytes_per_append / 40 + 1);
        let append = MESSAGE_FIXED_BYTES + data + entries * APPEND_ENTRY_OVERHEAD_BYTES;
        let chunk = MESSAGE_FIXED_BYTES + r.snapshot_chunk_bytes + MEMBERS_MAX * MEMBER_BYTES;
        append.max(chunk)
    }
}

/// An upper bound of a message's encoding in a batch from lengths alone (encoding every
/// append once more to size the batches cost measurable CPU per write): what carries data
/// counts its data plus its overhead per item, the rest [`MESSAGE_FIXED_BYTES`].
pub(crate) fn message_bytes_bound(m: &RaftMessage) -> usize {
    use phalanx_proto::raft_message::Body;
    MESSAGE_FIXED_BYTES
        + match &m.body {
            Some(Body::AppendRequest(a)) => a
                .entries
                .iter()
                .map(|e| e.payload.len() + e.log_type.len() + APPEND_ENTRY_OVERHEAD_BYTES)
                .sum(),
            Some(Body::Snapshot(s)) => {
                let members =
                    s.conf_state.as_ref().map_or(0, |c| MEMBER_BYTES * (c.voters.len() + c.learners.len()));
                let pending: usize = s
                    .pending_two_step
                    .iter()
                    .map(|e| e.payload.len() + e.log_type.len() + APPEND_ENTRY_OVERHEAD_BYTES)
                    .sum();
                s.data.len() + members + pending
            }
            Some(Body::ForwardedProposal(f)) => {
                f.log_type.len()
                    + f.payloads.iter().map(|p| p.len() + FORWARDED_PAYLOAD_OVERHEAD_BYTES).sum::<usize>()
            }
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_proto::raft_message::Body;
    use phalanx_proto::{
        AppendEntriesRequest, ConfState, EntryKind, ForwardedProposal, HlcTimestamp, InstallSnapshotChunk,
        LogEntry, Message, MessageBatch,
    };

    fn entry(payload: usize, log_type: usize) -> LogEntry {
        LogEntry {
            term: u64::MAX,
            index: u64::MAX,
            kind: EntryKind::Checkpoint as i32,
            log_type: vec![b't'; log_type].into(),
            payload: vec![7u8; payload].into(),
            ticket: Some(HlcTimestamp { physical_ms: u64::MAX, logical: u32::MAX, node_id: u64::MAX }),
        }
    }

    fn message(body: Body) -> RaftMessage {
        RaftMessage { from: u64::MAX, to: u64::MAX, group: u64::MAX, body: Some(body) }
    }

    /// The bound holds for the largest field values of every message that carries data, with
    /// the message's prefix in a batch: a batch cut by it never exceeds the frame limit.
    #[test]
    fn the_bound_covers_every_encoding_in_a_batch() {
        let appends = [
            vec![],
            vec![entry(0, 0)],
            vec![entry(1 << 20, 256)],
            (0..1000).map(|i| entry(i % 300, i % 7)).collect::<Vec<_>>(),
        ];
        let mut messages: Vec<RaftMessage> = appends
            .into_iter()
            .map(|entries| {
                message(Body::AppendRequest(AppendEntriesRequest {
                    term: u64::MAX,
                    prev_log_index: u64::MAX,
                    prev_log_term: u64::MAX,
                    entries,
                    leader_commit: u64::MAX,
                    commit_only: true,
                }))
            })
            .collect();
        messages.push(message(Body::Snapshot(Box::new(InstallSnapshotChunk {
            term: u64::MAX,
            last_included_index: u64::MAX,
            last_included_term: u64::MAX,
            conf_state: Some(ConfState { voters: vec![u64::MAX; 100], learners: vec![u64::MAX; 50] }),
            offset: u64::MAX,
            data: vec![1u8; 1 << 16].into(),
            done: true,
            pending_two_step: vec![entry(300, 10), entry(0, 0)],
            total_size: u64::MAX,
        }))));
        messages.push(message(Body::ForwardedProposal(Box::new(ForwardedProposal {
            term: u64::MAX,
            kind: EntryKind::Proposed as i32,
            log_type: vec![b'x'; 256].into(),
            payloads: vec![vec![3u8; 1000].into(), Default::default(), vec![4u8; 1 << 20].into()],
            ticket: Some(HlcTimestamp { physical_ms: u64::MAX, logical: u32::MAX, node_id: u64::MAX }),
        }))));
        for m in messages {
            let bound = message_bytes_bound(&m);
            let in_batch = MessageBatch { messages: vec![m] }.encoded_len();
            assert!(in_batch <= bound, "encoding {in_batch} in a batch above its bound {bound}");
        }
    }

    fn cfg() -> NodeConfig {
        NodeConfig::new(1, "/nonexistent")
    }

    #[test]
    fn the_defaults_agree_with_the_default_store_and_frame() {
        let frame = phalanx_net::frame::DEFAULT_MAX_FRAME_BYTES;
        let l = ShardLimits::derive(&cfg(), phalanx_storage::limits::BATCH_BYTES_MAX, frame)
            .expect("defaults agree");
        assert_eq!(l.entry_bytes_max, ENTRY_BYTES_MAX as usize);
        // The largest entry is also a request the store takes whole.
        assert!(l.entry_bytes_max + ENTRY_RECORD_OVERHEAD_BYTES as usize <= l.request_bytes_max);
        assert_eq!(l.peer_batch_bytes_max, frame);
        assert!(l.largest_message_bytes(&cfg()) <= frame);
        // The door's largest payload, with the longest log type, is an entry the store takes.
        let c = cfg();
        assert!(
            c.max_entry_bytes + crate::config::MAX_LOG_TYPE_BYTES + LOG_ENTRY_ENVELOPE_BYTES
                <= l.entry_bytes_max
        );
    }

    /// A frame limit one byte below the largest append or snapshot chunk is refused at open,
    /// naming the setting; at it, it is accepted (and a forwarded request shrinks to fit).
    #[test]
    fn a_frame_limit_below_the_largest_message_is_refused_at_open() {
        let c = cfg();
        let write = phalanx_storage::limits::BATCH_BYTES_MAX;
        let fits = ShardLimits::largest_raft_message_bytes(&c);
        let l = ShardLimits::derive(&c, write, fits).expect("a frame of the largest message is enough");
        assert_eq!(l.largest_message_bytes(&c), fits);
        match ShardLimits::derive(&c, write, fits - 1) {
            Err(Error::Config(m)) => assert!(m.contains("max_frame_bytes"), "{m}"),
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A small frame limit shrinks what one request may carry (a follower forwards it whole)
    /// once the appends fit in it.
    #[test]
    fn a_small_frame_bounds_a_request() {
        let mut c = cfg();
        c.raft.max_entry_bytes = 64 << 10;
        c.raft.max_bytes_per_append = 64 << 10;
        c.raft.snapshot_chunk_bytes = 64 << 10;
        let frame = 1 << 20;
        let l = ShardLimits::derive(&c, phalanx_storage::limits::BATCH_BYTES_MAX, frame).expect("fits");
        assert_eq!(l.request_bytes_max, frame - MESSAGE_FIXED_BYTES);
        assert!(l.largest_message_bytes(&c) <= frame);
    }
}
