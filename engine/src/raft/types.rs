//! Small value types shared by the core's modules.

use std::collections::BTreeSet;

use bytes::Bytes;
use phalanx_proto::{ConfState, LogEntry};

use crate::hlc::Ticket;

/// A node id. 0 means "no node" (no vote, no leader).
pub type NodeId = u64;
/// A group (partition) id. 0 is the system partition.
pub type GroupId = u64;

/// A node's role in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Running a PreVote round: asking whether it could win, without bumping its term.
    PreCandidate,
    /// Running an election in its current term.
    Candidate,
    /// Leads the group in its current term.
    Leader,
}

/// Volatile state the shell may want to observe (leader changes), reported when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: Role,
    /// The leader this node knows for its current term, if any.
    pub leader: Option<NodeId>,
    /// The node's current term.
    pub term: u64,
}

/// Voting and non-voting members of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Members that vote and count toward quorums.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but never vote or count toward quorums.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of `voters` and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership { voters: voters.into_iter().collect(), learners: BTreeSet::new() }
    }

    /// Whether `id` is a voter or a learner.
    #[must_use]
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The wire form.
    #[must_use]
    pub fn to_proto(&self) -> ConfState {
        ConfState {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
        }
    }

    /// From the wire form. A node listed as both voter and learner is a voter.
    #[must_use]
    pub fn from_proto(c: &ConfState) -> Self {
        let voters: BTreeSet<NodeId> = c.voters.iter().copied().filter(|v| *v != 0).collect();
        let learners = c.learners.iter().copied().filter(|l| *l != 0 && !voters.contains(l)).collect();
        Membership { voters, learners }
    }
}

/// The payload of a checkpoint entry only the leader that proposed it compacts behind (a
/// user's checkpoint has none: every replica compacts). A leader checkpoints a partition
/// this way before it adds a member, so it has a snapshot to send; had its followers
/// snapshotted too, a join would make every replica serialize and save every partition.
pub const LEADER_CHECKPOINT: &[u8] = b"leader";

/// What a snapshot covers: everything up to and including `index`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotMeta {
    /// The last log index reflected in the snapshot.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Membership as of `index`.
    pub membership: Membership,
    /// Entries of two-step proposals applied before `index` whose commit or rollback marker
    /// comes after it. They belong to the snapshot because the state machine has not seen
    /// them yet: a node restoring from the snapshot must still deliver them when their commit
    /// marker is applied.
    pub pending_two_step: Vec<LogEntry>,
}

/// A state machine image plus what it covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Coverage and membership.
    pub meta: SnapshotMeta,
    /// The application's state machine image (opaque to the core).
    pub data: Bytes,
}

/// The answer to a linearizable read request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller passed to `read_index`.
    pub request_id: u64,
    /// The commit index to wait for before serving the read, or why the read failed.
    pub result: Result<u64, super::Status>,
}

/// How a proposal's entries are delivered to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalKind {
    /// Delivered as soon as committed (the reference's `autoCommit: true`).
    AutoCommit,
    /// Replicated and durable on a quorum, delivered only after `commit_logs` with the same
    /// ticket commits (the reference's `autoCommit: false`).
    TwoStep,
    /// An entry of the reserved `_RaftSystem` log type (system partition only).
    System,
}

/// A batch of entries proposed together under one ticket.
#[derive(Clone, Debug)]
pub struct Proposal {
    /// Delivery rule.
    pub kind: ProposalKind,
    /// The application's log type (the shell passes [`crate::log_type::intern`]'s buffer, so
    /// entries share it without reference counting).
    pub log_type: Bytes,
    /// One entry per payload, appended contiguously.
    pub payloads: Vec<Bytes>,
    /// The proposal's ticket (HLC timestamp from the shell's clock).
    pub ticket: Ticket,
}

impl Proposal {
    /// Bytes it adds to a leader's uncommitted tail (`Config::max_uncommitted_bytes`): each
    /// entry's payload and log type.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.payloads.iter().map(|b| (b.len() + self.log_type.len()) as u64).sum()
    }
}

/// Where a proposal landed in the log: entries `first_index..=last_index` of `term`. The
/// proposal succeeded when the entry at `last_index` is applied with the same `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// The leader's term.
    pub term: u64,
    /// Index of the first entry.
    pub first_index: u64,
    /// Index of the last entry.
    pub last_index: u64,
}

/// Entries a leader needs from storage to catch up a follower (they are no longer in memory).
/// The shell reads `lo..hi` (at most `max_bytes`, at least one entry) and hands them back with
/// `RaftGroup::on_entries_fetched`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFetch {
    /// The follower that needs them.
    pub to: NodeId,
    /// First index.
    pub lo: u64,
    /// One past the last index.
    pub hi: u64,
    /// Byte budget.
    pub max_bytes: usize,
}

/// What a node recovered from its storage, used to restart a group.
#[derive(Clone, Debug, Default)]
pub struct RestoreState {
    /// Persisted term, vote and commit index.
    pub hard_state: phalanx_proto::HardState,
    /// The compaction floor: the last discarded index and its term (0, 0 when nothing was).
    pub floor: (u64, u64),
    /// Entries after the floor, contiguous, in index order.
    pub entries: Vec<LogEntry>,
    /// The latest state machine snapshot, if any (required when `floor.0 > 0`). The group
    /// keeps it to send to followers that need entries below the floor.
    pub snapshot: Option<Snapshot>,
    /// Membership before any entry in the log (the bootstrap configuration) when there is no
    /// snapshot.
    pub initial_membership: Membership,
}
