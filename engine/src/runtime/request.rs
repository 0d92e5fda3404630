//! Requests from `NodeHandle`s (any thread, any async runtime) to the shard that owns the
//! partition, and their answers. Each carries a one-shot reply channel; a shard that stops
//! drops it, which the caller sees as `Errored`.

use bytes::Bytes;
use futures_channel::oneshot;

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
}

/// What a handle asks a shard.
pub(crate) enum Request {
    Replicate {
        partition: PartitionId,
        log_type: Bytes,
        payloads: Vec<Bytes>,
        auto_commit: bool,
        system: bool,
        reply: oneshot::Sender<ReplicationResult>,
    },
    Marker {
        partition: PartitionId,
        ticket: Ticket,
        commit: bool,
        reply: oneshot::Sender<ReplicationResult>,
    },
    Checkpoint {
        partition: PartitionId,
        reply: oneshot::Sender<ReplicationResult>,
    },
    ReadBarrier {
        partition: PartitionId,
        reply: oneshot::Sender<Result<u64, Status>>,
    },
    Query {
        partition: PartitionId,
        query: Bytes,
        reply: oneshot::Sender<Result<Bytes, Status>>,
    },
    Control {
        partition: PartitionId,
        op: ControlOp,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    FollowerLag {
        partition: PartitionId,
        follower: NodeId,
        reply: oneshot::Sender<Option<u64>>,
    },
    Status {
        reply: oneshot::Sender<Vec<PartitionStatus>>,
    },
    WaitLeader {
        partition: PartitionId,
        timeout_ms: u64,
        reply: oneshot::Sender<Result<NodeId, Status>>,
    },
}

/// Leadership controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlOp {
    StepDown,
    Transfer(NodeId),
    SuspendHeartbeats,
    ResumeHeartbeats,
}

impl Request {
    /// The partition the request is about (`None`: the shard itself).
    pub(crate) fn partition(&self) -> Option<PartitionId> {
        match self {
            Request::Replicate { partition, .. }
            | Request::Marker { partition, .. }
            | Request::Checkpoint { partition, .. }
            | Request::ReadBarrier { partition, .. }
            | Request::Query { partition, .. }
            | Request::Control { partition, .. }
            | Request::FollowerLag { partition, .. }
            | Request::WaitLeader { partition, .. } => Some(*partition),
            Request::Status { .. } => None,
        }
    }

    /// Answers the request with a refusal.
    pub(crate) fn refuse(self, status: Status) {
        match self {
            Request::Replicate { reply, .. }
            | Request::Marker { reply, .. }
            | Request::Checkpoint { reply, .. } => {
                let _ = reply.send(ReplicationResult::refused(status));
            }
            Request::ReadBarrier { reply, .. } => {
                let _ = reply.send(Err(status));
            }
            Request::Query { reply, .. } => {
                let _ = reply.send(Err(status));
            }
            Request::Control { reply, .. } => {
                let _ = reply.send(Err(status));
            }
            Request::FollowerLag { reply, .. } => {
                let _ = reply.send(None);
            }
            Request::Status { reply } => {
                let _ = reply.send(Vec::new());
            }
            Request::WaitLeader { reply, .. } => {
                let _ = reply.send(Err(status));
            }
        }
    }
}
