//! Operation statuses: the expected outcomes callers must handle.
//!
//! These mirror the reference's `RaftOperationStatus` (the roster's `StaleMembership`,
//! `ConcurrentMembershipChange` and `MemberNotFound` among them) plus the statuses Phalanx
//! adds (`PartitionMoved`, `Busy`, `InvalidRequest`, `TooLarge`). They are
//! *expected* outcomes, returned as values; broken invariants panic and storage failures are
//! fatal (`phalanx::Error`). Every variant is produced somewhere except `PartitionMoved`,
//! reserved for elastic partitions (splits and merges, planned after quiescence, issue 14).
//! The reference's `Pending` and `SnapshotRequired` describe work the core does itself
//! (an election in progress, a snapshot sent to a follower behind the floor) and are never a
//! caller's answer, so they are not statuses here.

use std::fmt;

/// The outcome of a Raft operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Operation completed successfully.
    Success,
    /// Operation failed with an internal error.
    Errored,
    /// The local node is not the leader for the requested partition.
    NodeIsNotLeader,
    /// A request came from a leader with an old term (a peer message `RaftGroup::step`
    /// refuses, answering with the current term).
    LeaderInOldTerm,
    /// A leader was already elected for the term.
    LeaderAlreadyElected,
    /// A follower received logs from a node other than the leader it knows for the term.
    LogsFromAnotherLeader,
    /// Another proposal (e.g. a membership change or a leadership transfer) is still active.
    ActiveProposal,
    /// The supplied proposal ticket was not found.
    ProposalNotFound,
    /// The proposal did not complete in time.
    ProposalTimeout,
    /// Replication failed before commit (e.g. the entry was overwritten by a new leader).
    ReplicationFailed,
    /// A follower rejected an append because it does not hold the anchoring previous entry.
    LogMismatch,
    /// The partition was moved (split, merged or reassigned); re-read the partition map. Not
    /// produced yet: reserved for elastic partitions.
    PartitionMoved,
    /// A bounded queue is full; retry later.
    Busy,
    /// A membership change would leave the group with no voters.
    InsufficientVoters,
    /// The request is malformed or not allowed (e.g. removing a node that is not a member).
    InvalidRequest,
    /// The request is larger than the node accepts: an entry beyond the largest one log
    /// write may hold, or a request whose entries together are. Not retryable as it is.
    TooLarge,
    /// A roster change named another version than the roster's: read the roster again.
    StaleMembership,
    /// A roster change while another member is still joining or leaving.
    ConcurrentMembershipChange,
    /// A roster change names no member of the roster.
    MemberNotFound,
}

impl Status {
    /// Whether this status means success.
    #[must_use]
    pub fn is_success(self) -> bool {
        self == Status::Success
    }

    /// The status's name as the reference spells it (`NodeIsNotLeader`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Status::Success => "Success",
            Status::Errored => "Errored",
            Status::NodeIsNotLeader => "NodeIsNotLeader",
            Status::LeaderInOldTerm => "LeaderInOldTerm",
            Status::LeaderAlreadyElected => "LeaderAlreadyElected",
            Status::LogsFromAnotherLeader => "LogsFromAnotherLeader",
            Status::ActiveProposal => "ActiveProposal",
            Status::ProposalNotFound => "ProposalNotFound",
            Status::ProposalTimeout => "ProposalTimeout",
            Status::ReplicationFailed => "ReplicationFailed",
            Status::LogMismatch => "LogMismatch",
            Status::PartitionMoved => "PartitionMoved",
            Status::Busy => "Busy",
            Status::InsufficientVoters => "InsufficientVoters",
            Status::InvalidRequest => "InvalidRequest",
            Status::TooLarge => "TooLarge",
            Status::StaleMembership => "StaleMembership",
            Status::ConcurrentMembershipChange => "ConcurrentMembershipChange",
            Status::MemberNotFound => "MemberNotFound",
        }
    }

    /// Every status, for exhaustive tables (metrics, docs).
    pub const ALL: [Status; 19] = [
        Status::Success,
        Status::Errored,
        Status::NodeIsNotLeader,
        Status::LeaderInOldTerm,
        Status::LeaderAlreadyElected,
        Status::LogsFromAnotherLeader,
        Status::ActiveProposal,
        Status::ProposalNotFound,
        Status::ProposalTimeout,
        Status::ReplicationFailed,
        Status::LogMismatch,
        Status::PartitionMoved,
        Status::Busy,
        Status::InsufficientVoters,
        Status::InvalidRequest,
        Status::TooLarge,
        Status::StaleMembership,
        Status::ConcurrentMembershipChange,
        Status::MemberNotFound,
    ];
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Status {}
