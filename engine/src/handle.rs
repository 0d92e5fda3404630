//! `NodeHandle`: the embeddable API. `Clone + Send + Sync`, usable from any thread and any
//! async runtime (tokio, glommio, a plain executor): every call is a message to the shard
//! that owns the partition and a one-shot answer, so no runtime's timers or IO are needed.
//! Timeouts are enforced by the shards (`request_timeout_ms`), which answer
//! `ProposalTimeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::config::NodeConfig;
use crate::events::Event;
use crate::hlc::Ticket;
use crate::partition_key;
use crate::raft::{NodeId, Status};
use crate::runtime::bus::Bus;
use crate::runtime::request::{PartitionStatus, ReplicationResult, Request, Responder};
use crate::runtime::shard::SYSTEM_LOG_TYPE;
use crate::runtime::shared::NodeShared;
use crate::shard::request::{ControlOp, Op};
use crate::state_machine::PartitionId;

/// A handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<NodeConfig>,
    bus: Bus,
    shared: Arc<NodeShared>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("node_id", &self.inner.cfg.node_id).finish()
    }
}

async fn answer<T>(rx: oneshot::Receiver<T>, stopped: T) -> T {
    rx.await.unwrap_or(stopped)
}

impl NodeHandle {
    pub(crate) fn new(cfg: Arc<NodeConfig>, bus: Bus, shared: Arc<NodeShared>) -> Self {
        NodeHandle { inner: Arc::new(Inner { cfg, bus, shared }) }
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.inner.cfg.node_id
    }

    /// The node's configuration.
    #[must_use]
    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Number of user partitions (`1..=N`).
    #[must_use]
    pub fn partitions(&self) -> u32 {
        self.inner.cfg.initial_partitions
    }

    /// The largest payload of one entry this node accepts, in bytes (`max_entry_bytes`);
    /// larger ones are refused with `TooLarge`.
    #[must_use]
    pub fn max_entry_bytes(&self) -> usize {
        self.inner.cfg.max_entry_bytes
    }

    /// Why the node stopped working, if a shard failed (a storage failure is fatal).
    #[must_use]
    pub fn failure(&self) -> Option<crate::Error> {
        self.inner.shared.failure()
    }

    fn send(&self, r: Request) {
        self.inner.bus.request(r);
    }

    // ----- replication -----

    /// Replicates one entry of `log_type` to `partition` and waits until it is committed
    /// and applied here. Fails with `NodeIsNotLeader` on a follower; writing the reserved
    /// `_RaftSystem` type is refused with `InvalidRequest`.
    pub async fn replicate(&self, partition: PartitionId, log_type: &str, data: Bytes) -> ReplicationResult {
        self.replicate_with(partition, log_type, vec![data], true).await
    }

    /// Replicates several entries as one proposal (contiguous, one ticket).
    pub async fn replicate_batch(
        &self,
        partition: PartitionId,
        log_type: &str,
        data: Vec<Bytes>,
    ) -> ReplicationResult {
        self.replicate_with(partition, log_type, data, true).await
    }

    /// Replicates entries; with `auto_commit` false they are durable on a quorum when this
    /// returns but reach state machines only after [`NodeHandle::commit_logs`] with the
    /// returned ticket (never after [`NodeHandle::rollback_logs`]).
    pub async fn replicate_with(
        &self,
        partition: PartitionId,
        log_type: &str,
        data: Vec<Bytes>,
        auto_commit: bool,
    ) -> ReplicationResult {
        if log_type == SYSTEM_LOG_TYPE {
            return ReplicationResult::refused(Status::InvalidRequest);
        }
        self.propose(partition, log_type, data, auto_commit, false).await
    }

    pub(crate) async fn propose(
        &self,
        partition: PartitionId,
        log_type: &str,
        payloads: Vec<Bytes>,
        auto_commit: bool,
        system: bool,
    ) -> ReplicationResult {
        let (reply, rx) = oneshot::channel();
        let log_type = crate::log_type::intern(log_type);
        let op = Op::Replicate { partition, log_type, payloads, auto_commit, system };
        self.send(Request { op, reply: Responder::Replication(reply) });
        answer(rx, ReplicationResult::refused(Status::Errored)).await
    }

    /// Commits a two-step proposal: its entries reach the state machines once the commit
    /// marker commits. `log_index` is the marker's index.
    pub async fn commit_logs(&self, partition: PartitionId, ticket: Ticket) -> ReplicationResult {
        self.marker(partition, ticket, true).await
    }

    /// Rolls back a two-step proposal: its entries never reach the state machines.
    pub async fn rollback_logs(&self, partition: PartitionId, ticket: Ticket) -> ReplicationResult {
        self.marker(partition, ticket, false).await
    }

    async fn marker(&self, partition: PartitionId, ticket: Ticket, commit: bool) -> ReplicationResult {
        let (reply, rx) = oneshot::channel();
        self.send(Request {
            op: Op::Marker { partition, ticket, commit },
            reply: Responder::Replication(reply),
        });
        answer(rx, ReplicationResult::refused(Status::Errored)).await
    }

    /// Replicates a checkpoint: once applied, the log below it may be compacted (the state
    /// machine's snapshot covers it).
    pub async fn replicate_checkpoint(&self, partition: PartitionId) -> ReplicationResult {
        let (reply, rx) = oneshot::channel();
        self.send(Request { op: Op::Checkpoint { partition }, reply: Responder::Replication(reply) });
        answer(rx, ReplicationResult::refused(Status::Errored)).await
    }

    // ----- reads -----

    /// A linearizable read barrier: returns once this node's state machine for `partition`
    /// has applied every write acknowledged before the call (ReadIndex, §6.4). Works on
    /// followers too (they ask the leader for the read index). Returns the read index.
    pub async fn read_barrier(&self, partition: PartitionId) -> Result<u64, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Request { op: Op::ReadBarrier { partition }, reply: Responder::ReadIndex(reply) });
        answer(rx, Err(Status::Errored)).await
    }

    /// Runs a read-only query against `partition`'s state machine after a read barrier (see
    /// [`crate::StateMachine::query`]).
    pub async fn query(&self, partition: PartitionId, query: Bytes) -> Result<Bytes, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Request { op: Op::Query { partition, query }, reply: Responder::Query(reply) });
        answer(rx, Err(Status::Errored)).await
    }

    // ----- leadership -----

    /// Whether this node led `partition` when its shard last reported (no round trip). A
    /// stopped shard reports no leader for its partitions.
    #[must_use]
    pub fn am_i_leader_quick(&self, partition: PartitionId) -> bool {
        self.inner.shared.leader(partition).is_some_and(|(l, _)| l == self.node_id())
    }

    /// The leader of `partition` as this node last saw it, and its term.
    #[must_use]
    pub fn leader_of(&self, partition: PartitionId) -> Option<(NodeId, u64)> {
        self.inner.shared.leader(partition)
    }

    /// Whether this node is the leader of `partition`, confirmed by a quorum (a read barrier
    /// that only a current leader can pass without forwarding).
    pub async fn am_i_leader(&self, partition: PartitionId) -> bool {
        self.am_i_leader_quick(partition)
            && self.read_barrier(partition).await.is_ok()
            && self.am_i_leader_quick(partition)
    }

    /// Waits until `partition` has a known leader (or `timeout`), returning it.
    pub async fn wait_for_leader(&self, partition: PartitionId, timeout: Duration) -> Result<NodeId, Status> {
        let (reply, rx) = oneshot::channel();
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        self.send(Request { op: Op::WaitLeader { partition, timeout_ms }, reply: Responder::Leader(reply) });
        answer(rx, Err(Status::Errored)).await
    }

    async fn control(&self, partition: PartitionId, op: ControlOp) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Request { op: Op::Control { partition, op }, reply: Responder::Control(reply) });
        answer(rx, Err(Status::Errored)).await
    }

    /// Gives up leadership of `partition` (handing it to a caught-up voter if there is one).
    pub async fn step_down(&self, partition: PartitionId) -> Result<(), Status> {
        self.control(partition, ControlOp::StepDown).await
    }

    /// Hands leadership of `partition` to `target` once it has caught up (§3.10).
    pub async fn transfer_leadership(&self, partition: PartitionId, target: NodeId) -> Result<(), Status> {
        self.control(partition, ControlOp::Transfer(target)).await
    }

    /// Stops this leader's heartbeats for `partition` (followers will elect another).
    pub async fn suspend_heartbeats(&self, partition: PartitionId) -> Result<(), Status> {
        self.control(partition, ControlOp::SuspendHeartbeats).await
    }

    /// Resumes this leader's heartbeats for `partition`.
    pub async fn resume_heartbeats(&self, partition: PartitionId) -> Result<(), Status> {
        self.control(partition, ControlOp::ResumeHeartbeats).await
    }

    // ----- routing -----

    /// The user partition for `key`, by the prefix before its last `/` (never 0).
    #[must_use]
    pub fn partition_key(&self, key: &str) -> PartitionId {
        partition_key::partition_key(key, self.partitions())
    }

    /// The user partition for the whole of `key` (never 0).
    #[must_use]
    pub fn prefix_partition_key(&self, key: &str) -> PartitionId {
        partition_key::prefix_partition_key(key, self.partitions())
    }

    // ----- observability -----

    /// How many entries `follower` lags behind this leader on `partition` (`None` when this
    /// node does not lead it or does not know the follower).
    pub async fn follower_lag(&self, partition: PartitionId, follower: NodeId) -> Option<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Request { op: Op::FollowerLag { partition, follower }, reply: Responder::Lag(reply) });
        answer(rx, None).await
    }

    /// Peers heard from within `window`.
    #[must_use]
    pub fn active_nodes(&self, window: Duration) -> Vec<NodeId> {
        let since = Instant::now().checked_sub(window).unwrap_or_else(Instant::now);
        self.inner.shared.active_since(since)
    }

    /// When `node` was last heard from.
    #[must_use]
    pub fn last_node_activity(&self, node: NodeId) -> Option<Instant> {
        self.inner.shared.last_activity(node)
    }

    /// Peers the failure detector (SWIM, `swim/`) holds dead: suspected and not refuted
    /// within the suspicion timeout.
    #[must_use]
    pub fn down_nodes(&self) -> Vec<NodeId> {
        self.inner.shared.nodes_in(crate::swim::Liveness::Dead)
    }

    /// Peers the failure detector suspects: a probe round failed, the suspicion has not
    /// timed out yet.
    #[must_use]
    pub fn suspect_nodes(&self) -> Vec<NodeId> {
        self.inner.shared.nodes_in(crate::swim::Liveness::Suspect)
    }

    /// The newest roster version a peer said does not list this node (newer than the roster
    /// this node holds): for a member, it left or was removed ([`crate::Event::NotInRoster`]).
    #[must_use]
    pub fn unlisted_at(&self) -> Option<u64> {
        self.inner.shared.unlisted_at().filter(|v| *v > self.roster().version)
    }

    /// The failure detector's verdict on `node` (alive unless it said otherwise).
    #[must_use]
    pub fn liveness(&self, node: NodeId) -> crate::swim::Liveness {
        self.inner.shared.liveness(node)
    }

    /// The cluster as the system partition knows it (nodes' announced addresses).
    #[must_use]
    pub fn cluster_directory(&self) -> std::sync::Arc<crate::system::ClusterDirectory> {
        self.inner.shared.directory()
    }

    /// Every partition as this node sees it.
    pub async fn status(&self) -> Vec<PartitionStatus> {
        let mut all = Vec::new();
        for shard in 0..self.inner.bus.shards() {
            let (reply, rx) = oneshot::channel();
            self.inner.bus.request_to(shard, Request { op: Op::Status, reply: Responder::Status(reply) });
            all.extend(answer(rx, Vec::new()).await);
        }
        all.sort_by_key(|s| s.id);
        all
    }

    /// The roster as this node's replica of the system partition last applied it (version 0
    /// until the system partition's first leader seeds it from the initial cluster).
    #[must_use]
    pub fn roster(&self) -> crate::roster::Roster {
        self.inner.shared.directory().roster.clone()
    }

    /// Proposes a roster change on the system partition, applied only if the roster is at
    /// `expected_version`, and waits until it is committed and applied here. Ask the system
    /// partition's leader (`leader_of(0)`): elsewhere the answer is `NodeIsNotLeader`.
    pub async fn change_roster(
        &self,
        expected_version: u64,
        change: crate::roster::Change,
    ) -> crate::roster::RosterResult {
        use crate::roster::RosterResult;
        let payload = crate::system::roster_change(expected_version, &change);
        let r = self.propose(0, SYSTEM_LOG_TYPE, vec![payload], true, true).await;
        if !r.success() {
            return RosterResult::failed(r.status);
        }
        match <phalanx_proto::RosterOutcome as prost::Message>::decode(r.response.as_ref()) {
            Ok(o) => RosterResult::from_outcome(&o),
            Err(_) => RosterResult::failed(Status::Errored),
        }
    }

    /// What the node counts, per shard and partition (see [`crate::stats`]): each shard
    /// answers between two loop turns. A shard that stopped is missing.
    pub async fn stats(&self) -> crate::stats::NodeStats {
        let mut shards = Vec::new();
        for shard in 0..self.inner.bus.shards() {
            let (reply, rx) = oneshot::channel();
            self.inner.bus.request_to(shard, Request { op: Op::Stats, reply: Responder::Stats(reply) });
            if let Some(s) = answer(rx, None).await {
                shards.push(*s);
            }
        }
        crate::stats::NodeStats { node_id: self.node_id(), shards }
    }

    /// Subscribes to this node's events (leader changes, restores, failures).
    #[must_use]
    pub fn subscribe(&self) -> flume::Receiver<Event> {
        self.inner.shared.events.subscribe()
    }

    // ----- membership -----

    /// Waits until every partition (system included) has a known leader and, once the
    /// roster is seeded, this node is one of its voters: the node has joined its cluster and
    /// can serve. A node started with `NodeConfig::joining` becomes a voter once a member
    /// added it ([`NodeHandle::change_membership`] with `Change::Add`, on any member) and
    /// every partition caught it up. Fails with `ProposalTimeout` after `timeout`.
    pub async fn join_cluster(&self, timeout: Duration) -> Result<(), Status> {
        use crate::roster::Role;
        let deadline = Instant::now() + timeout;
        for p in 0..=u64::from(self.partitions()) {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_for_leader(p, left).await?;
        }
        let me = self.node_id();
        let joining = self.config().joining;
        self.wait_roster_until(deadline, |r| {
            r.members.get(&me).is_some_and(|m| m.role == Role::Voter) || (r.version == 0 && !joining)
        })
        .await
        .map(|_| ())
    }

    /// Waits until `done` holds of this node's roster; `ProposalTimeout` at `deadline`.
    async fn wait_roster_until(
        &self,
        deadline: Instant,
        done: impl Fn(&crate::roster::Roster) -> bool,
    ) -> Result<crate::roster::Roster, Status> {
        loop {
            let roster = self.roster();
            if done(&roster) {
                return Ok(roster);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::ProposalTimeout);
            }
            self.wait_roster_change(roster.version, left).await;
        }
    }

    /// Waits until this node's roster is past `after_version`, at most `timeout`; returns the
    /// roster then (at `after_version` or below when the time ran out).
    pub async fn wait_roster_change(&self, after_version: u64, timeout: Duration) -> crate::roster::Roster {
        let (reply, rx) = oneshot::channel();
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        self.send(Request {
            op: Op::WaitRoster { after_version, timeout_ms },
            reply: Responder::Roster(reply),
        });
        *answer(rx, Box::new(self.roster())).await
    }

    /// Changes the roster from any member: checked here first against this node's roster with
    /// the rules the system partition's leader applies (a refusal other than another member's
    /// transition comes back at once, with its status), then proposed — by this node if it
    /// leads the system partition, else forwarded to the leader — and confirmed when this
    /// node's roster shows it. While another member is in transition, or the roster moved
    /// under the change, it asks again at the new version; an operator's `phalanx ctl member`
    /// does the same through the client port. `ProposalTimeout` after `timeout`.
    pub async fn change_membership(
        &self,
        change: crate::roster::Change,
        timeout: Duration,
    ) -> crate::roster::RosterResult {
        use crate::roster::{Refusal, RosterResult};
        /// How long one forwarded attempt waits for the roster before it is sent again (it is
        /// lost when the system partition has no leader).
        const RETRY: Duration = Duration::from_secs(1);
        let deadline = Instant::now() + timeout;
        loop {
            let roster = self.roster();
            let unseeded = roster.version == 0 && !matches!(change, crate::roster::Change::Seed { .. });
            let waiting = unseeded
                || match roster.clone().apply(roster.version, &change) {
                    // Already as asked (an add of the same member, a second remove of a leaver).
                    Ok(false) => {
                        return RosterResult {
                            status: Status::Success,
                            version: roster.version,
                            changed: false,
                            reason: String::new(),
                        };
                    }
                    Ok(true) => false,
                    Err(Refusal::ChangeInFlight { .. }) => true,
                    Err(r) => {
                        return RosterResult {
                            status: crate::roster::refusal_status(r.to_proto()),
                            version: roster.version,
                            changed: false,
                            reason: r.to_string(),
                        };
                    }
                };
            if !waiting {
                if self.am_i_leader_quick(0) {
                    let r = self.change_roster(roster.version, change.clone()).await;
                    if !matches!(
                        r.status,
                        Status::StaleMembership
                            | Status::ConcurrentMembershipChange
                            | Status::NodeIsNotLeader
                    ) {
                        return r;
                    }
                } else if !self
                    .inner
                    .bus
                    .system_command(0, crate::system::roster_change(roster.version, &change))
                {
                    tracing::debug!("shard 0's inbox is full: the roster change is sent again");
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return RosterResult::failed(Status::ProposalTimeout);
            }
            let after = self.wait_roster_change(roster.version, left.min(RETRY)).await;
            if after.version > roster.version && shows(&after, &change) {
                return RosterResult {
                    status: Status::Success,
                    version: after.version,
                    changed: true,
                    reason: String::new(),
                };
            }
        }
    }

    /// Leaves the cluster: asks the roster to remove this node ([`Self::change_membership`]),
    /// then waits until it no longer lists it — every partition handed its leadership over and
    /// dropped it. Returns the roster's version then; stop the node with
    /// [`crate::Node::shutdown`] afterwards. `InsufficientVoters` for the last voter.
    pub async fn leave_cluster(&self, timeout: Duration) -> Result<u64, Status> {
        let deadline = Instant::now() + timeout;
        let me = self.node_id();
        let r = self.change_membership(crate::roster::Change::Remove(me), timeout).await;
        if r.status != Status::Success {
            return Err(r.status);
        }
        // Partition 0 drops this node last and stops replicating to it: a peer's word that
        // its newer roster no longer lists us is how we learn the end.
        let unlisted = || self.inner.shared.unlisted_at();
        let roster = self
            .wait_roster_until(deadline, |r| {
                !r.members.contains_key(&me) || unlisted().is_some_and(|v| v > r.version)
            })
            .await?;
        Ok(unlisted().filter(|v| *v > roster.version).unwrap_or(roster.version))
    }

    /// Hands over leadership of every partition this node leads, so the cluster does not
    /// wait for election timeouts when the node stops (it stays a member). Stop the node with
    /// [`crate::Node::shutdown`] afterwards.
    pub async fn hand_over_leadership(&self) -> Result<(), Status> {
        for p in 0..=u64::from(self.partitions()) {
            if self.am_i_leader_quick(p) {
                match self.step_down(p).await {
                    Ok(()) | Err(Status::NodeIsNotLeader) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Whether `roster` shows `change` done (a removed voter shows as leaving first).
fn shows(roster: &crate::roster::Roster, change: &crate::roster::Change) -> bool {
    use crate::roster::{Change, Role};
    match change {
        Change::Seed { .. } => roster.version > 0,
        Change::Add(id, _, _) => roster.members.contains_key(id),
        Change::Promote(id) => roster.members.get(id).is_some_and(|m| m.role == Role::Voter),
        Change::Remove(id) => roster.members.get(id).is_none_or(|m| m.role == Role::Leaving),
    }
}
