//! Node configuration: identity, addresses, partitions, cores, storage and timing. Every
//! size and duration has a named field with its unit; `validate` names the first bad one.

use std::path::PathBuf;

use phalanx_storage::{FaultInjector, StorageKind};

use crate::raft::{Config as RaftConfig, NodeId};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero). See [`derive_node_id`] to derive one from a name.
    pub node_id: NodeId,
    /// Identifies the cluster: peers with another cluster id are refused at the handshake.
    pub cluster_id: String,
    /// Host other nodes use to reach this node's Raft port.
    pub raft_host: String,
    /// This node's Raft port (0: pick a free one, useful in tests).
    pub raft_port: u16,
    /// Every node of the initial cluster, this one included: (id, "host:port"). When
    /// `joining`, the voters of the cluster it joins instead, without this node.
    pub initial_cluster: Vec<(NodeId, String)>,
    /// This node joins a running cluster that has already added it to its roster (as a
    /// learner): its partitions start from the cluster's voters (`initial_cluster`) as their
    /// members, without this node, and wait for their leaders to bring it in. It never seeds
    /// a roster.
    pub joining: bool,
    /// This node's client address ("host:port"), announced through the system partition so
    /// other nodes can point clients at it. `None` when it serves no client port.
    pub client_address: Option<String>,
    /// Number of user partitions (1..=N); partition 0 (system) always exists too.
    pub initial_partitions: u32,
    /// Shards (one per core) this node runs.
    pub cores: usize,
    /// Pin each shard's thread to a CPU of its own. A shard pins only to a CPU no other
    /// node on this host holds (`runtime/cpus.rs`); one that finds none runs unpinned, so
    /// several nodes on one host never stack on the same CPUs. Off when several nodes share
    /// one machine's cores in one process (tests, the embedded benchmark).
    pub pin_cores: bool,
    /// The node's data directory: its identity file, snapshots (`DATA/snapshots/`), and the
    /// WAL shards (`DATA/shard-<i>/`) unless `wal_dir` puts them elsewhere.
    pub data_dir: PathBuf,
    /// Where the WAL shards live (`WAL/shard-<i>/`), e.g. on a faster disk. Defaults to
    /// `data_dir`.
    pub wal_dir: Option<PathBuf>,
    /// Which log store to use.
    pub wal: StorageKind,
    /// Sync every WAL batch (default true). Off, acknowledged writes may be lost on a crash.
    pub sync_writes: bool,
    /// Length of one Raft tick.
    pub tick_interval_ms: u64,
    /// How long a request may wait for its outcome before it fails with `ProposalTimeout`.
    pub request_timeout_ms: u64,
    /// Capacity of each shard's inbox (requests, peer messages, bus traffic); when it is full
    /// new requests are refused with `Busy`.
    pub shard_inbox_capacity: usize,
    /// Inputs a shard handles per loop turn before it persists and sends (bounds latency).
    pub max_inputs_per_turn: usize,
    /// Largest payload of one entry accepted from a caller, in bytes; larger ones are
    /// refused with `TooLarge`. At most [`MAX_ENTRY_PAYLOAD_BYTES`], derived from the
    /// store's entry limit (an entry is its payload, its log type and its envelope).
    pub max_entry_bytes: usize,
    /// How often a node hands leadership of partitions it leads to their preferred leader
    /// (voter `p % voters`, by id order), when that node is up and caught up, so leadership
    /// spreads evenly instead of following election luck. 0 turns balancing off.
    pub leader_balance_interval_ms: u64,
    /// Per-group Raft tuning (id, group and seed are filled in per group).
    pub raft: RaftConfig,
    /// How partitions follow the roster.
    pub membership: MembershipConfig,
    /// The failure detector (SWIM, `swim/`).
    pub swim: crate::swim::SwimConfig,
    /// Start even though a WAL's damaged last batch may hold acknowledged writes of a
    /// partition no other node holds a copy of (this node is its only voter): drop the
    /// batch and accept the loss. Off by default: such a node refuses to start, naming the
    /// file and offset (`runtime/lost_state.rs`). Partitions with other voters never need
    /// it: they recover from them.
    pub truncate_damaged_wal_tail: bool,
    /// Faults to inject into every shard's log store: tests arm a failing write or fsync to
    /// prove a storage failure stops the shard and fails its requests. `None` in production.
    pub store_faults: Option<FaultInjector>,
}

/// How long a partition is idle before its leader quiesces it, by default, in ms.
pub const DEFAULT_QUIESCE_AFTER_MS: u64 = 1500;

impl NodeConfig {
    /// Quiesces idle partitions after `ms` (0: never), in whole ticks (at least one).
    pub fn set_quiesce_after_ms(&mut self, ms: u64) {
        self.raft.quiesce_after_ticks =
            if ms == 0 { 0 } else { ms.div_ceil(self.tick_interval_ms.max(1)).max(1) };
    }

    /// A single-node configuration with defaults, storing under `data_dir`.
    #[must_use]
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        let mut raft = RaftConfig::new(node_id, 0);
        raft.election_ticks_min = 10;
        raft.election_ticks_max = 20;
        raft.heartbeat_ticks = 2;
        let mut c = NodeConfig {
            node_id,
            cluster_id: "phalanx".into(),
            raft_host: "127.0.0.1".into(),
            raft_port: 0,
            initial_cluster: Vec::new(),
            joining: false,
            client_address: None,
            initial_partitions: 8,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            data_dir: data_dir.into(),
            wal_dir: None,
            wal: StorageKind::Wal,
            sync_writes: true,
            tick_interval_ms: 50,
            request_timeout_ms: 10_000,
            shard_inbox_capacity: 65_536,
            max_inputs_per_turn: 4096,
            max_entry_bytes: MAX_ENTRY_PAYLOAD_BYTES,
            leader_balance_interval_ms: 2_000,
            raft,
            membership: MembershipConfig::default(),
            swim: crate::swim::SwimConfig::default(),
            truncate_damaged_wal_tail: false,
            store_faults: None,
        };
        // As the reference's `QuiesceAfter` (`raft.quiesce_after_ticks` counts ticks: set it
        // again after changing the tick).
        c.set_quiesce_after_ms(DEFAULT_QUIESCE_AFTER_MS);
        c
    }

    /// Checks the configuration: [`Error::Config`](crate::Error::Config) naming the first bad
    /// field.
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.first_problem().map_err(crate::Error::Config)
    }

    /// The first bad field, described.
    fn first_problem(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be non-zero".into());
        }
        if self.cores == 0 || self.cores > MAX_SHARDS {
            return Err(format!("cores must be in 1..={MAX_SHARDS}"));
        }
        if self.tick_interval_ms == 0 {
            return Err("tick_interval_ms must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms must be at least 1".into());
        }
        if self.shard_inbox_capacity == 0 || self.max_inputs_per_turn == 0 || self.max_entry_bytes == 0 {
            return Err(
                "shard_inbox_capacity, max_inputs_per_turn and max_entry_bytes must be at least 1".into()
            );
        }
        // Partition 0 is the system's own: with no user partition, user writes would land in
        // it.
        if self.initial_partitions == 0 || self.initial_partitions > MAX_PARTITIONS {
            return Err(format!(
                "initial_partitions must be in 1..={MAX_PARTITIONS} (partition 0 is reserved for the system)"
            ));
        }
        let listed = self.initial_cluster.iter().any(|(id, _)| *id == self.node_id);
        if self.joining && (self.initial_cluster.is_empty() || listed) {
            return Err(format!(
                "a joining node's initial_cluster lists the voters of the cluster it joins, without this node \
                 (id {})",
                self.node_id
            ));
        }
        if !self.joining && !self.initial_cluster.is_empty() && !listed {
            return Err(format!("initial_cluster does not list this node (id {})", self.node_id));
        }
        let mut ids: Vec<NodeId> = self.initial_cluster.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("initial_cluster lists node id {} twice", w[0]));
        }
        let mut addrs: Vec<&str> = self.initial_cluster.iter().map(|(_, a)| a.as_str()).collect();
        addrs.sort_unstable();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("initial_cluster lists address {} for two nodes", w[0]));
        }
        self.check_own_address()?;
        if self.max_entry_bytes > MAX_ENTRY_PAYLOAD_BYTES {
            return Err(format!(
                "max_entry_bytes must be at most {MAX_ENTRY_PAYLOAD_BYTES} (the store's entry limit less the \
                 log type and the entry's envelope)"
            ));
        }
        // A leader's door must not take an entry its followers refuse as bad peer input: the
        // partition would stall, resending it forever.
        if self.raft.max_entry_bytes < self.max_entry_bytes + MAX_LOG_TYPE_BYTES {
            return Err(format!(
                "raft.max_entry_bytes ({}) must hold the largest entry this node accepts: max_entry_bytes ({}) \
                 plus the longest log type ({MAX_LOG_TYPE_BYTES})",
                self.raft.max_entry_bytes, self.max_entry_bytes
            ));
        }
        // A snapshot followers accept must be one a restart can load back from its file (which
        // also holds the snapshot's metadata and pending two-step entries).
        let file_max = crate::runtime::snapshots::MAX_SNAPSHOT_FILE_BYTES;
        if self.raft.max_snapshot_bytes as u64 >= file_max {
            return Err(format!(
                "raft.max_snapshot_bytes ({}) must be below the snapshot file limit ({file_max} bytes)",
                self.raft.max_snapshot_bytes
            ));
        }
        self.swim.check(self.tick_interval_ms)?;
        let m = &self.membership;
        if m.promote_window_ms == 0 || m.reconcile_interval_ms == 0 || m.max_catch_ups_per_shard == 0 {
            return Err("membership.promote_window_ms, membership.reconcile_interval_ms and \
                 membership.max_catch_ups_per_shard must be at least 1"
                .into());
        }
        let mut raft = self.raft.clone();
        raft.id = self.node_id;
        raft.validate().map_err(|e| format!("raft: {e}"))
    }

    /// This node's entry in `initial_cluster` must be where it listens: peers dial that
    /// address, so a node listed elsewhere is never reached and never elects a leader, with
    /// nothing to show why. (Port 0, "pick a free one", is resolved only at bind time.)
    fn check_own_address(&self) -> Result<(), String> {
        let Some((_, listed)) = self.initial_cluster.iter().find(|(id, _)| *id == self.node_id) else {
            return Ok(());
        };
        if self.raft_port == 0 {
            return Ok(());
        }
        let listen = format!("{}:{}", self.raft_host, self.raft_port);
        if *listed == listen {
            return Ok(());
        }
        let mismatch = || {
            format!(
                "initial_cluster lists this node (id {}) at {listed}, but it listens on {listen}: \
                 peers would never reach it",
                self.node_id
            )
        };
        let Some((_, port)) = listed.rsplit_once(':') else {
            return Err(format!("initial_cluster address {listed:?} of node {} has no port", self.node_id));
        };
        if port.parse::<u16>().ok() != Some(self.raft_port) {
            return Err(mismatch());
        }
        // Same port, other spelling of the host ("localhost" for "127.0.0.1"): the same place
        // if the names resolve to a common address.
        use std::net::ToSocketAddrs;
        let resolve = |a: &str| a.to_socket_addrs().map(|it| it.collect::<Vec<_>>()).unwrap_or_default();
        let (l, b) = (resolve(listed), resolve(&listen));
        if l.iter().any(|x| b.contains(x)) { Ok(()) } else { Err(mismatch()) }
    }

    /// The directory holding WAL shard `shard`.
    #[must_use]
    pub fn wal_shard_dir(&self, shard: usize) -> PathBuf {
        self.wal_dir.as_ref().unwrap_or(&self.data_dir).join(format!("shard-{shard}"))
    }

    /// Voters of every partition at bootstrap: the initial cluster (or just this node).
    #[must_use]
    pub fn initial_voters(&self) -> Vec<NodeId> {
        if self.initial_cluster.is_empty() {
            vec![self.node_id]
        } else {
            self.initial_cluster.iter().map(|(id, _)| *id).collect()
        }
    }
}

/// How every partition follows the roster (`shard/membership.rs`): a new member joins each
/// partition as a learner, and the roster makes it a voter once it has kept up on every
/// partition for a while.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// A learner keeps up with a partition while it lags its leader's log by at most this
    /// many entries. 0 (the default): one append's worth, `raft.max_entries_per_append` — a
    /// learner within it is one round trip from the leader's log.
    pub promote_max_lag_entries: u64,
    /// How long, in ms, a learner must keep up with a partition before that partition reports
    /// it caught up (a burst of load must not make a voter of a member that falls behind).
    pub promote_window_ms: u64,
    /// Most partitions one shard brings a new member into at once (each sends it a snapshot
    /// or its whole log): a join must not take every partition's bandwidth at once.
    pub max_catch_ups_per_shard: usize,
    /// How often, in ms, a shard compares the partitions it leads with the roster and
    /// reports progress.
    pub reconcile_interval_ms: u64,
    /// Longest log, in entries above the last snapshot, a new member is streamed from the
    /// leader's log; a longer one is checkpointed first, so the member gets a snapshot and a
    /// short tail. (Streaming a long tail reads it back from the leader's WAL, in the writer
    /// that also makes the leader's own writes durable: the cluster's writes stalled for
    /// seconds.) 0 (the default): eight appends' worth, `8 × raft.max_entries_per_append`.
    pub catch_up_max_log_entries: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            promote_max_lag_entries: 0,
            promote_window_ms: 1_000,
            max_catch_ups_per_shard: 4,
            reconcile_interval_ms: 200,
            catch_up_max_log_entries: 0,
        }
    }
}

impl MembershipConfig {
    /// The lag bound in entries, derived from `raft` when not set.
    #[must_use]
    pub fn max_lag(&self, raft: &RaftConfig) -> u64 {
        if self.promote_max_lag_entries > 0 {
            return self.promote_max_lag_entries;
        }
        raft.max_entries_per_append as u64
    }

    /// The catch-up log bound in entries, derived from `raft` when not set.
    #[must_use]
    pub fn catch_up_max_log(&self, raft: &RaftConfig) -> u64 {
        if self.catch_up_max_log_entries > 0 {
            return self.catch_up_max_log_entries;
        }
        (raft.max_entries_per_append as u64).saturating_mul(8)
    }
}

/// Longest log type a caller may give an entry, in bytes.
pub const MAX_LOG_TYPE_BYTES: usize = 256;
/// Bytes an entry's encoding adds to its payload and log type at most (the store's bound).
pub const LOG_ENTRY_ENVELOPE_BYTES: usize = phalanx_storage::limits::ENTRY_ENCODING_OVERHEAD_MAX as usize;
/// Largest payload an entry may carry, in bytes: the store's largest entry less the longest
/// log type and the envelope.
pub const MAX_ENTRY_PAYLOAD_BYTES: usize =
    phalanx_storage::limits::ENTRY_BYTES_MAX as usize - MAX_LOG_TYPE_BYTES - LOG_ENTRY_ENVELOPE_BYTES;

/// Most shards a node runs.
pub const MAX_SHARDS: usize = 256;
/// Most user partitions a node is configured with.
pub const MAX_PARTITIONS: u32 = 1_000_000;

/// A node id derived from a stable name (the reference derives one when `NodeId` is 0).
pub use phalanx_net::derive_node_id;

#[cfg(test)]
mod tests {
    use super::*;

    fn three(me: NodeId) -> NodeConfig {
        let mut c = NodeConfig::new(me, "/nonexistent");
        c.raft_port = 7000 + me as u16;
        c.initial_cluster = (1..=3).map(|i| (i, format!("127.0.0.1:{}", 7000 + i))).collect();
        c
    }

    /// Issue 11, item 6: configurations that cannot work are refused at start, naming why.
    #[test]
    fn configurations_that_cannot_work_are_refused() {
        assert_eq!(three(2).first_problem(), Ok(()));
        let mut c = three(2);
        c.initial_partitions = 0;
        assert!(c.first_problem().is_err_and(|e| e.contains("initial_partitions") && e.contains("system")));
        // This node listed at an address it does not listen on: peers would never reach it.
        let mut c = three(2);
        c.raft_port = 7009;
        let e = c.first_problem().expect_err("listed elsewhere");
        assert!(e.contains("127.0.0.1:7002") && e.contains("127.0.0.1:7009"), "{e}");
        // The same place spelled another way is fine.
        let mut c = three(2);
        c.initial_cluster[1].1 = "localhost:7002".into();
        assert_eq!(c.first_problem(), Ok(()));
        // Port 0 (pick one at bind time) cannot be checked here.
        let mut c = three(2);
        c.raft_port = 0;
        assert_eq!(c.first_problem(), Ok(()));
        let mut c = three(2);
        c.initial_cluster[2].1 = c.initial_cluster[0].1.clone();
        assert!(c.first_problem().is_err_and(|e| e.contains("two nodes")));
        let mut c = three(2);
        c.initial_cluster[2].0 = 1;
        assert!(c.first_problem().is_err_and(|e| e.contains("twice")));
        let mut c = three(2);
        c.max_entry_bytes = MAX_ENTRY_PAYLOAD_BYTES + 1;
        assert!(c.first_problem().is_err_and(|e| e.contains("max_entry_bytes")));
        // The followers' limit one byte below the door's largest entry; at it, fine.
        let mut c = three(2);
        c.max_entry_bytes = 1000;
        c.raft.max_entry_bytes = 1000 + MAX_LOG_TYPE_BYTES - 1;
        assert!(c.first_problem().is_err_and(|e| e.contains("raft.max_entry_bytes")));
        c.raft.max_entry_bytes += 1;
        assert_eq!(c.first_problem(), Ok(()));
    }
}
