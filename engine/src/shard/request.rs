//! What callers ask a shard and what it answers, as plain data. The reply handle `R` of a
//! [`Request`] is opaque to the core: the runtime's is a one-shot sender per kind of answer
//! (`runtime/request.rs`), a simulator's can be a number. The core hands it back with its
//! [`Answer`] in `Output::answers`, so deciding an answer never touches a channel.

use bytes::Bytes;

use crate::hlc::Ticket;
use crate::raft::{NodeId, Status};
use crate::state_machine::PartitionId;

/// The outcome of a replication request (the reference's `RaftReplicationResult`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationResult {
    /// What happened.
    pub status: Status,
    /// The proposal's ticket (its HLC timestamp); the zero ticket when it was refused before
    /// one was assigned.
    pub ticket: Ticket,
    /// Index of the proposal's last entry (0 when refused).
    pub log_index: u64,
    /// What the state machine answered for the last entry (e.g. a compare-and-set outcome),
    /// empty when it said nothing or the entry is not delivered yet (two-step).
    pub response: Bytes,
}

impl ReplicationResult {
    /// Whether the proposal committed.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status == Status::Success
    }

    /// A refusal before anything was appended.
    #[must_use]
    pub fn refused(status: Status) -> Self {
        ReplicationResult { status, ticket: Ticket::default(), log_index: 0, response: Bytes::new() }
    }
}

/// One partition's state as this node sees it (for `status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Partition.
    pub id: PartitionId,
    /// The leader this node knows.
    pub leader: Option<NodeId>,
    /// This node's term.
    pub term: u64,
    /// This node's commit index.
    pub commit_index: u64,
    /// This node's applied index.
    pub applied_index: u64,
    /// This node's last log index.
    pub last_index: u64,
    /// Whether this node leads the partition.
    pub is_leader: bool,
    /// The partition's voters and learners in this node's latest configuration.
    pub membership: crate::raft::Membership,
    /// When this node leads: how many entries each other member lags its log.
    pub follower_lags: Vec<(NodeId, u64)>,
}

/// Leadership controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOp {
    /// Give up leadership (to a caught-up voter if there is one).
    StepDown,
    /// Hand leadership to this voter once it has caught up.
    Transfer(NodeId),
    /// Stop heartbeats (followers will elect another leader).
    SuspendHeartbeats,
    /// Resume heartbeats.
    ResumeHeartbeats,
}

/// What a caller asks a shard. Each is answered once, with the [`Answer`] variant
/// [`Op::refusal`] names.
#[derive(Clone, Debug)]
pub enum Op {
    /// Replicate entries (one proposal, one ticket).
    Replicate {
        /// The partition.
        partition: PartitionId,
        /// Their log type (the reserved system type only with `system`).
        log_type: Bytes,
        /// One payload per entry (at least one).
        payloads: Vec<Bytes>,
        /// Whether they reach state machines once committed (otherwise at their commit
        /// marker: two-step).
        auto_commit: bool,
        /// Whether these are the system's own entries.
        system: bool,
    },
    /// Commit (`commit`) or roll back a two-step proposal.
    Marker {
        /// The partition.
        partition: PartitionId,
        /// The proposal's ticket.
        ticket: Ticket,
        /// Commit rather than roll back.
        commit: bool,
    },
    /// Replicate a checkpoint (the log below it may then be compacted).
    Checkpoint {
        /// The partition.
        partition: PartitionId,
    },
    /// A linearizable read barrier: answered with the read index once applied here.
    ReadBarrier {
        /// The partition.
        partition: PartitionId,
    },
    /// A state machine query after a read barrier.
    Query {
        /// The partition.
        partition: PartitionId,
        /// The query, as the state machine reads it.
        query: Bytes,
    },
    /// A leadership control.
    Control {
        /// The partition.
        partition: PartitionId,
        /// What to do.
        op: ControlOp,
    },
    /// How far a follower lags behind this leader.
    FollowerLag {
        /// The partition.
        partition: PartitionId,
        /// The follower.
        follower: NodeId,
    },
    /// Every partition of the shard as this node sees it.
    Status,
    /// The shard's counters (`stats.rs`); the driver adds its transport's and store's.
    Stats,
    /// Wait until the partition has a known leader.
    WaitLeader {
        /// The partition.
        partition: PartitionId,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// Waits until the roster's version is past `after_version` (or `timeout_ms`), then
    /// answers the roster (shard 0, which applies the system partition).
    WaitRoster {
        /// The version the caller has seen.
        after_version: u64,
        /// How long to wait at most, in milliseconds.
        timeout_ms: u64,
    },
}

/// A shard's answer, one variant per kind of question (see [`Op::refusal`] for which).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `Replicate`, `Marker`, `Checkpoint`.
    Replication(ReplicationResult),
    /// `ReadBarrier`: the read index, once applied here.
    ReadIndex(Result<u64, Status>),
    /// `Query`: the state machine's answer.
    Query(Result<Bytes, Status>),
    /// `Control`.
    Control(Result<(), Status>),
    /// `FollowerLag`.
    Lag(Option<u64>),
    /// `Status`.
    Status(Vec<PartitionStatus>),
    /// `Stats` (`None`: the shard is stopping).
    Stats(Option<Box<crate::stats::ShardStats>>),
    /// `WaitLeader`.
    Leader(Result<NodeId, Status>),
    /// `WaitRoster`: the roster then.
    Roster(Box<crate::roster::Roster>),
}

/// A question and where its answer goes.
pub struct Request<R> {
    /// The question.
    pub op: Op,
    /// Handed back with the answer.
    pub reply: R,
}

impl Op {
    /// The partition the request is about (`None`: the shard itself).
    #[must_use]
    pub fn partition(&self) -> Option<PartitionId> {
        match self {
            Op::Replicate { partition, .. }
            | Op::Marker { partition, .. }
            | Op::Checkpoint { partition }
            | Op::ReadBarrier { partition }
            | Op::Query { partition, .. }
            | Op::Control { partition, .. }
            | Op::FollowerLag { partition, .. }
            | Op::WaitLeader { partition, .. } => Some(*partition),
            Op::Status | Op::Stats | Op::WaitRoster { .. } => None,
        }
    }

    /// The answer that refuses this request with `status`.
    #[must_use]
    pub fn refusal(&self, status: Status) -> Answer {
        match self {
            Op::Replicate { .. } | Op::Marker { .. } | Op::Checkpoint { .. } => {
                Answer::Replication(ReplicationResult::refused(status))
            }
            Op::ReadBarrier { .. } => Answer::ReadIndex(Err(status)),
            Op::Query { .. } => Answer::Query(Err(status)),
            Op::Control { .. } => Answer::Control(Err(status)),
            Op::FollowerLag { .. } => Answer::Lag(None),
            Op::Status => Answer::Status(Vec::new()),
            Op::Stats => Answer::Stats(None),
            Op::WaitLeader { .. } => Answer::Leader(Err(status)),
            Op::WaitRoster { .. } => Answer::Roster(Box::default()),
        }
    }
}
