//! The pure, deterministic Raft core.
//!
//! Nothing in this folder performs IO, reads a clock or uses an unseeded random source
//! (`tests/purity.rs` scans it). Inputs are messages (`step`), time (`tick_to`), proposals
//! and persistence acknowledgements (`advance`); the output is a numbered [`Ready`].
//!
//! Map of the folder, one concern per file:
//! - `group.rs` — [`RaftGroup`], its state and role transitions
//! - `step.rs` — message validation, the term rules, dispatch by role
//! - `election.rs` — PreVote, elections, vote granting and counting, the leader lease
//! - `step_follower.rs` — Log Matching, truncation, commit propagation, TimeoutNow
//! - `step_leader.rs` — follower answers, backtracking, transfer handoff
//! - `replication.rs` — sending appends with flow control, commitment rule
//! - `progress.rs` — per-follower probe / replicate / snapshot state and in-flight window
//! - `quorum.rs` — majority arithmetic
//! - `membership.rs` — single-server configuration changes
//! - `read_index.rs` — linearizable reads (ReadIndex)
//! - `snapshot.rs` — compaction floor, snapshot sending and installing
//! - `recovery.rs` — a replica that lost durable state: no vote until it caught up
//! - `quiesce.rs` — idle groups stop heartbeats and election timers
//! - `pacer.rs` — a shard's groups start dormant and wake a bounded number at a time
//! - `two_step.rs` — two-step proposals (commit / rollback markers)
//! - `proposal.rs` — the write API and leadership controls
//! - `tick.rs` — deadlines: election timeout, heartbeats, CheckQuorum
//! - `ready.rs` — [`Ready`] and its acknowledgement
//! - `multi.rs` — [`MultiRaft`], many groups on one shard with merged Readies
//! - `log.rs`, `config.rs`, `status.rs`, `types.rs`, `rng.rs` — building blocks

mod config;
mod election;
mod group;
mod log;
mod membership;
mod multi;
mod pacer;
mod progress;
mod proposal;
mod quiesce;
mod quorum;
mod read_index;
mod ready;
mod recovery;
mod replication;
mod rng;
mod snapshot;
mod status;
mod step;
mod step_follower;
mod step_leader;
mod tick;
mod two_step;
mod types;

pub use config::Config;
pub use group::{GroupStats, RaftGroup};
pub use log::RaftLog;
pub use membership::{ConfHistory, apply_change};
pub use multi::{MultiRaft, MultiReady};
pub use pacer::{MAX_WAKING_GROUPS, preferred_leader};
pub use progress::{Progress, ProgressMap, ProgressState};
pub use quiesce::Quiet;
pub use quorum::{VoteResult, committed_value, majority, vote_result};
pub use ready::Ready;
pub use rng::{SeededRng, mix_seed};
pub use status::Status;
pub use two_step::TwoStep;
pub use types::{
    GroupId, LEADER_CHECKPOINT, LogFetch, Membership, NodeId, Proposal, ProposalKind, Proposed, ReadState,
    RestoreState, Role, Snapshot, SnapshotMeta, SoftState,
};
