//! Per-group configuration of the Raft core. Times are in ticks; the runtime shell decides how
//! long a tick is (`tick_interval_ms`).

use super::types::{GroupId, NodeId};

/// Configuration of one Raft group on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// The group (partition) id.
    pub group: GroupId,
    /// Lower bound of the randomized election timeout, in ticks. Also the leader's lease and
    /// CheckQuorum period.
    pub election_ticks_min: u64,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    pub election_ticks_max: u64,
    /// Ticks between leader heartbeats. Must be well below `election_ticks_min`.
    pub heartbeat_ticks: u64,
    /// Run a PreVote round before a real election (Raft thesis §9.6), so a partitioned node
    /// rejoining cannot force a term bump on a healthy cluster.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout,
    /// and followers that heard from a leader recently refuse to vote (leader lease).
    pub check_quorum: bool,
    /// Appends in flight per follower in the replicate state (the pipelining window).
    pub max_inflight_appends: usize,
    /// Entries per AppendEntries message.
    pub max_entries_per_append: usize,
    /// Payload bytes per AppendEntries message (at least one entry is always sent).
    pub max_bytes_per_append: usize,
    /// Uncommitted entries a leader accepts before answering proposals with `Busy`.
    pub max_uncommitted_entries: usize,
    /// Payload and log type bytes of uncommitted entries a leader holds before answering
    /// proposals with `Busy` (one proposal always passes when nothing is uncommitted). Bounds
    /// a group's memory when its followers fall behind; at least one largest entry.
    pub max_uncommitted_bytes: u64,
    /// Linearizable reads waiting for confirmation before `read_index` answers `Busy`.
    pub max_pending_reads: usize,
    /// Committed entries handed to the state machine in one `Ready`.
    pub max_apply_entries_per_ready: usize,
    /// Applied entries kept in memory for followers that lag a little; older ones are dropped
    /// from memory and read back from storage when a follower needs them. Bounds a group's
    /// memory by this plus its unapplied tail.
    pub log_cache_entries: usize,
    /// Snapshot bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a follower accepts; a larger one is refused as bad peer input.
    pub max_snapshot_bytes: usize,
    /// Largest entry (payload plus log type, in bytes) a follower accepts from a leader; an
    /// append carrying a larger one is refused as bad peer input (a leader's door refuses
    /// such proposals, so only a faulty peer sends one), before it reaches the log store,
    /// which would refuse it.
    pub max_entry_bytes: usize,
    /// Ticks without a proposal or read after which a leader whose followers all caught up
    /// quiesces the group (`quiesce.rs`): no heartbeats, no election timers, while the failure
    /// detector holds the leader alive. 0 never quiesces.
    pub quiesce_after_ticks: u64,
    /// Seed of the group's random generator (election timeouts). Mixed with `id` and `group`.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults below for node `id` in `group`.
    #[must_use]
    pub fn new(id: NodeId, group: GroupId) -> Self {
        Config {
            id,
            group,
            election_ticks_min: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 64,
            max_entries_per_append: 1024,
            max_bytes_per_append: 1 << 20,
            max_uncommitted_entries: 100_000,
            max_uncommitted_bytes: 64 << 20,
            max_pending_reads: 10_000,
            max_apply_entries_per_ready: 4096,
            log_cache_entries: 64,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 1 << 30,
            max_entry_bytes: crate::config::MAX_ENTRY_PAYLOAD_BYTES + crate::config::MAX_LOG_TYPE_BYTES,
            quiesce_after_ticks: 0,
            seed: 0,
        }
    }

    /// Whether `other` differs from this configuration at most in `group` and `seed`: groups
    /// may then share one (`MultiRaft::add_group`).
    #[must_use]
    pub fn same_tuning(&self, other: &Config) -> bool {
        Config { group: other.group, seed: other.seed, ..self.clone() } == *other
    }

    /// Checks the configuration, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be non-zero (0 means 'no node')".into());
        }
        if self.heartbeat_ticks == 0 {
            return Err("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks_min <= self.heartbeat_ticks {
            return Err("election_ticks_min must be greater than heartbeat_ticks".into());
        }
        if self.election_ticks_max <= self.election_ticks_min {
            return Err("election_ticks_max must be greater than election_ticks_min".into());
        }
        if self.max_uncommitted_bytes < self.max_entry_bytes as u64 {
            return Err("max_uncommitted_bytes must hold at least one largest entry (max_entry_bytes)".into());
        }
        for (name, v) in [
            ("max_inflight_appends", self.max_inflight_appends),
            ("max_entries_per_append", self.max_entries_per_append),
            ("max_bytes_per_append", self.max_bytes_per_append),
            ("max_uncommitted_entries", self.max_uncommitted_entries),
            ("max_pending_reads", self.max_pending_reads),
            ("max_apply_entries_per_ready", self.max_apply_entries_per_ready),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("max_snapshot_bytes", self.max_snapshot_bytes),
            ("max_entry_bytes", self.max_entry_bytes),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}
