//! `RaftGroup`: one node's state machine for one Raft group, and its role transitions.
//!
//! The group is driven by four inputs — `step` (a message), `tick_to` (time), proposals
//! and `advance` (persistence acknowledged) — and produces numbered `Ready`s. It never
//! performs IO, reads a clock or draws unseeded randomness. The behaviour is split by
//! concern across the sibling modules (`election`, `step_leader`, `step_follower`,
//! `replication`, `read_index`, `snapshot`, `proposal`, `ready`, `tick`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use phalanx_proto::{HardState, RaftMessage, raft_message::Body};

use super::config::Config;
use super::log::RaftLog;
use super::membership::ConfHistory;
use super::progress::{Progress, ProgressMap, ProgressState};
use super::read_index::ReadIndexState;
use super::ready::{Pipeline, ReadyTracker};
use super::rng::{SeededRng, mix_seed};
use super::snapshot::IncomingSnapshot;
use super::two_step::TwoStep;
use super::types::{GroupId, Membership, NodeId, RestoreState, Role, Snapshot, SnapshotMeta, SoftState};

/// Counters of noteworthy events, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages rejected as bad peer input (wrong address, protocol violations).
    pub rejected_messages: u64,
    /// Elections this node started (real elections, not PreVote rounds).
    pub elections_started: u64,
    /// Times this node became leader.
    pub became_leader: u64,
    /// Snapshots sent to followers that needed entries below the floor (`SnapshotRequired`).
    pub snapshots_sent: u64,
    /// Append rejections received from followers whose log did not match (`LogMismatch`).
    pub log_mismatches: u64,
    /// Followers whose log turned out shorter than what they had acknowledged (lost state):
    /// their progress started over.
    pub followers_restarted: u64,
}

/// One node's Raft state machine for one group.
#[derive(Debug)]
pub struct RaftGroup {
    /// Shared by the groups of a container with the same tuning (`MultiRaft::add_group`): a
    /// copy per group was 152 bytes of every replica. Its `group` and `seed` are those of the
    /// first group that used it; this group's are below (the seed only seeds `rng`).
    pub(super) cfg: Arc<Config>,
    pub(super) group: GroupId,
    pub(super) term: u64,
    pub(super) vote: NodeId,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) log: RaftLog,
    pub(super) conf: ConfHistory,
    /// Leader only: every other member's replication progress.
    pub(super) progress: ProgressMap,
    /// Candidate / pre-candidate: votes received (`None` in any other role; boxed like the
    /// other rare state below, so an idle replica does not carry it).
    #[allow(clippy::box_collection)] // 8 bytes in every replica, not an empty map's 24
    pub(super) votes: Option<Box<BTreeMap<NodeId, bool>>>,
    /// Logical time in ticks.
    pub(super) now: u64,
    pub(super) election_deadline: u64,
    pub(super) heartbeat_deadline: u64,
    pub(super) check_quorum_deadline: u64,
    /// Tick at which this node last heard from a leader of its term (for the vote lease).
    pub(super) leader_contact: Option<u64>,
    /// Leader only: a leadership transfer in progress.
    pub(super) transfer: Option<Box<Transfer>>,
    pub(super) heartbeats_suspended: bool,
    pub(super) rng: SeededRng,
    pub(super) reads: ReadIndexState,
    pub(super) two_step: TwoStep,
    /// Index of the last applied checkpoint entry (the compaction limit).
    pub(super) last_checkpoint: u64,
    /// The latest local snapshot, sent to followers that need entries below the floor.
    pub(super) snapshot: Option<Box<Snapshot>>,
    pub(super) incoming_snapshot: Option<Box<IncomingSnapshot>>,
    pub(super) ready: ReadyTracker,
    /// The next Ready's output and the Readies not acknowledged yet; `None` when there is
    /// none of either (`ready.rs`).
    pub(super) pipe: Option<Box<Pipeline>>,
    /// `None` until the first event.
    pub(super) stats: Option<Box<GroupStats>>,
    /// Tickets of proposals recently forwarded to us, to drop network duplicates.
    pub(super) recent_forwards: Option<Box<RecentTickets>>,
    /// Leader: the commit index advanced and some follower may not have been told yet
    /// (sent at the next `ready`, see `flush_commit`).
    pub(super) commit_unsent: bool,
    /// Leader: entries were appended since the last `ready` and go to the followers then
    /// (see `flush_appends`).
    pub(super) appends_unsent: bool,
    /// This replica lost durable state and has not caught up yet (`recovery.rs`).
    pub(super) recovery: Option<Box<super::recovery::Recovery>>,
    /// Quiescence (`quiesce.rs`).
    pub(super) quiet: super::quiesce::Quiet,
    /// Leader: tick of the last proposal, read or wake (the idle period counts from it);
    /// `None` when there was none since the election.
    pub(super) last_activity: Option<u64>,
}

/// Forwarded proposals a leader remembers to drop duplicates.
pub const RECENT_FORWARDS_MAX: usize = 4096;

/// A leadership transfer in progress (§3.10).
#[derive(Debug)]
pub(super) struct Transfer {
    /// The voter it hands over to.
    pub(super) target: NodeId,
    /// Tick at which the leader gives up and takes proposals again.
    pub(super) deadline: u64,
    /// Whether the target was sent TimeoutNow (`RaftGroup::send_timeout_now`).
    pub(super) handed: bool,
}

/// A bounded set of recently seen tickets (oldest forgotten first).
#[derive(Debug, Default)]
pub(super) struct RecentTickets {
    order: std::collections::VecDeque<crate::hlc::Ticket>,
    set: std::collections::BTreeSet<crate::hlc::Ticket>,
}

impl RecentTickets {
    /// Records `t`; false if it was already there.
    pub(super) fn insert(&mut self, t: crate::hlc::Ticket) -> bool {
        if !self.set.insert(t) {
            return false;
        }
        self.order.push_back(t);
        if self.order.len() > RECENT_FORWARDS_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

impl GroupStats {
    /// The counters in `stats`, made at the first event (for callers that hold another part
    /// of the group borrowed; the others use `RaftGroup::stats_mut`).
    pub(super) fn count(stats: &mut Option<Box<GroupStats>>) -> &mut GroupStats {
        stats.get_or_insert_with(Box::default)
    }
}

impl RaftGroup {
    /// Starts (or restarts) a group from what storage recovered. Errors name what is
    /// inconsistent in `restore` (e.g. a commit index beyond the log).
    pub fn new(cfg: Config, restore: RestoreState) -> Result<Self, String> {
        let (group, seed) = (cfg.group, cfg.seed);
        Self::with_shared_config(Arc::new(cfg), group, seed, restore)
    }

    /// `new`, with a configuration other groups may share: `cfg`'s own `group` and `seed`
    /// are ignored for `group` and `seed`.
    pub fn with_shared_config(
        cfg: Arc<Config>,
        group: GroupId,
        seed: u64,
        restore: RestoreState,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let RestoreState { hard_state, floor, entries, snapshot, initial_membership } = restore;
        for (i, e) in entries.iter().enumerate() {
            if e.index != floor.0 + 1 + i as u64 {
                return Err(format!(
                    "restored entries are not contiguous at position {i} (index {})",
                    e.index
                ));
            }
        }
        let last = floor.0 + entries.len() as u64;
        let (applied, base, pending) = match snapshot.as_ref().map(|s| &s.meta) {
            Some(s) => {
                if s.index < floor.0 {
                    return Err(format!(
                        "snapshot index {} is below the compaction floor {}",
                        s.index, floor.0
                    ));
                }
                if s.index > last && last > floor.0 {
                    return Err(format!("snapshot index {} is past the last entry {last}", s.index));
                }
                (s.index, s.membership.clone(), s.pending_two_step.clone())
            }
            None if floor.0 > 0 => return Err(format!("log compacted to {} but no snapshot", floor.0)),
            None => (0, initial_membership, Vec::new()),
        };
        let commit = hard_state.commit.max(applied);
        let log = if let Some(s) = snapshot.as_ref().map(|s| &s.meta).filter(|s| s.index > last) {
            // The snapshot is newer than the whole log: start the log at the snapshot.
            RaftLog::restored((s.index, s.term), Vec::new(), s.index, s.index)
        } else {
            if commit > last {
                return Err(format!("commit index {commit} is past the last entry {last}"));
            }
            RaftLog::restored(floor, entries, commit, applied)
        };
        let mut conf = ConfHistory::new(base);
        // Entries at or below the snapshot index are reflected in its membership already.
        // Looked at in place: a restart's log can be a million entries, and a copy of them
        // (each entry's buffers shared, so two atomic counts up and down apiece, and the
        // list regrowing) was a fifth of a restart's profile (`bench/README.md`, "Recovery").
        conf.on_append(log.entries().filter(|e| e.index > applied));
        let seed = mix_seed(&[seed, cfg.id, group]);
        let mut g = RaftGroup {
            group,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf,
            progress: ProgressMap::default(),
            votes: None,
            now: 0,
            election_deadline: 0,
            heartbeat_deadline: 0,
            check_quorum_deadline: 0,
            leader_contact: None,
            transfer: None,
            heartbeats_suspended: false,
            rng: SeededRng::new(seed),
            reads: ReadIndexState::default(),
            two_step: TwoStep::from_entries(&pending),
            last_checkpoint: 0,
            snapshot: snapshot.map(Box::new),
            incoming_snapshot: None,
            ready: ReadyTracker::new(hard_state),
            pipe: None,
            stats: None,
            recent_forwards: None,
            commit_unsent: false,
            appends_unsent: false,
            recovery: hard_state.recovering.then(Box::default),
            quiet: super::quiesce::Quiet::Awake,
            last_activity: None,
            cfg,
        };
        // Checkpoints at or below the applied index are not replayed; find the last one so
        // the restarted node can compact again without waiting for a new checkpoint.
        g.last_checkpoint = g
            .log
            .entries()
            .take_while(|e| e.index <= applied)
            .filter(|e| e.kind == phalanx_proto::EntryKind::Checkpoint as i32)
            .map(|e| e.index)
            .last()
            .unwrap_or(0);
        g.reset_election_deadline();
        Ok(g)
    }

    // ----- accessors -----

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The group's id.
    #[must_use]
    pub fn group_id(&self) -> GroupId {
        self.group
    }

    /// The configuration. Shared by the groups of a container with the same tuning: its
    /// `group` and `seed` may be another group's (this one's is [`RaftGroup::group_id`]).
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Current term.
    #[must_use]
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Vote cast in the current term (0 for none).
    #[must_use]
    pub fn vote(&self) -> NodeId {
        self.vote
    }

    /// Current role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Leader known for the current term.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this node is leader.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Leader only: the voter a leadership transfer in progress hands over to. Proposals are
    /// refused (`Busy`) until the transfer ends, within two election timeouts.
    #[must_use]
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.as_deref().map(|t| t.target)
    }

    /// The log.
    #[must_use]
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration in force (latest in the log).
    #[must_use]
    pub fn membership(&self) -> &Membership {
        self.conf.current()
    }

    /// Role, leader and term.
    #[must_use]
    pub fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader, term: self.term }
    }

    /// Term, vote, commit index and recovery as they stand (not necessarily persisted yet).
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
            recovering: self.recovery.is_some(),
        }
    }

    /// Leader only: a follower's replication progress.
    #[must_use]
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    /// Leader only: how many entries `id` lags behind the leader's last index.
    #[must_use]
    pub fn follower_lag(&self, id: NodeId) -> Option<u64> {
        if id == self.cfg.id && self.is_leader() {
            return Some(self.log.last_index() - self.log.persisted());
        }
        self.progress.get(&id).map(|p| self.log.last_index().saturating_sub(p.matched))
    }

    /// Logical time in ticks.
    #[must_use]
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Event counters.
    #[must_use]
    pub fn stats(&self) -> &GroupStats {
        static NONE: GroupStats = GroupStats {
            rejected_messages: 0,
            elections_started: 0,
            became_leader: 0,
            snapshots_sent: 0,
            log_mismatches: 0,
            followers_restarted: 0,
        };
        self.stats.as_deref().unwrap_or(&NONE)
    }

    /// Event counters, to count one.
    pub(super) fn stats_mut(&mut self) -> &mut GroupStats {
        GroupStats::count(&mut self.stats)
    }

    /// Index of the last applied checkpoint.
    #[must_use]
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint
    }

    /// The latest local snapshot's metadata.
    #[must_use]
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|s| &s.meta)
    }

    /// Whether this node may campaign. A voter of the configuration in force may. So may a
    /// node whose removal (or demotion) is still uncommitted: otherwise a leader that
    /// removed itself and lost leadership before committing the change would hold the only
    /// up-to-date log while refusing to run, and the remaining voters, lacking the entry,
    /// could never win its vote. Elected under the new configuration, it manages the group
    /// without counting itself until the change commits, then steps down (thesis §4.2.2).
    #[must_use]
    pub fn promotable(&self) -> bool {
        if self.recovery.is_some() {
            // A replica that lost durable state never runs (`recovery.rs`).
            return false;
        }
        let me = self.cfg.id;
        if self.conf.current().voters.contains(&me) {
            return true;
        }
        let change = self.conf.last_change_index();
        change > self.log.committed() && self.conf.at(change - 1).voters.contains(&me)
    }

    /// Whether the latest configuration change in the log is not committed yet (no other
    /// change may be proposed until it is).
    #[must_use]
    pub fn conf_change_pending(&self) -> bool {
        self.conf.last_change_index() > self.log.committed()
    }

    /// How many configuration changes the log holds above the commit index. At most one on
    /// a leader (single-server changes, thesis §4.1); a simulator checks it.
    #[must_use]
    pub fn uncommitted_conf_changes(&self) -> usize {
        self.conf.changes_after(self.log.committed())
    }

    /// Leader only: whether `voters`, as a configuration, would have a quorum of active
    /// members — this leader, and followers heard from within an election timeout that are
    /// not recovering lost state. A membership change that fails it would leave the
    /// partition unable to commit until absent voters return (etcd's strict reconfiguration
    /// check), so the roster's changes wait for it.
    #[must_use]
    pub fn quorum_active_in(&self, voters: &BTreeSet<NodeId>) -> bool {
        let active = voters.iter().filter(|v| self.is_active(**v)).count();
        self.is_leader() && active >= super::quorum::majority(voters.len())
    }

    /// Leader only: whether member `id` is active — this leader, or a follower that answered
    /// an append of this leader, heard from within an election timeout, not recovering lost
    /// state. A new leader counts everyone heard at its election (CheckQuorum's grace), but
    /// that says nothing of a follower that lost its disk: until it answers, it is not
    /// active (the simulator, seed 2377: a leader six ticks old shrank a group to two voters,
    /// one of them recovering, and stranded it).
    #[must_use]
    pub fn is_active(&self, id: NodeId) -> bool {
        id == self.cfg.id
            || self.progress.get(&id).is_some_and(|p| {
                p.answered
                    && !p.recovering
                    && self.now.saturating_sub(p.last_heard) < self.cfg.election_ticks_min
            })
    }

    /// Leader only: whether a snapshot is being sent to `id`, which answered within an
    /// election timeout (one that stopped answering takes no bandwidth).
    #[must_use]
    pub fn is_receiving_snapshot(&self, id: NodeId) -> bool {
        self.progress.get(&id).is_some_and(|p| {
            p.state == ProgressState::Snapshot
                && self.now.saturating_sub(p.last_heard) < self.cfg.election_ticks_min
        })
    }

    /// Voters of the configuration in force.
    pub(super) fn voters(&self) -> BTreeSet<NodeId> {
        self.conf.current().voters.clone()
    }

    // ----- messages -----

    /// Queues a message that may leave at once.
    pub(super) fn send(&mut self, to: NodeId, body: Body) {
        let m = RaftMessage { group: self.group, from: self.cfg.id, to, body: Some(body) };
        self.pipe().msgs.push(m);
    }

    /// Queues a message that may leave only once this turn's state is durable (vote grants,
    /// append acknowledgements, snapshot installation).
    pub(super) fn send_after_persist(&mut self, to: NodeId, body: Body) {
        let m = RaftMessage { group: self.group, from: self.cfg.id, to, body: Some(body) };
        self.pipe().msgs_after_persist.push(m);
    }

    // ----- role transitions -----

    pub(super) fn reset_election_deadline(&mut self) {
        let timeout = self.rng.range(self.cfg.election_ticks_min, self.cfg.election_ticks_max);
        self.election_deadline = self.now + timeout;
    }

    /// State common to every transition: adopt `term` (clearing the vote if it is new),
    /// forget the leader, votes, transfers and per-follower progress.
    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = 0;
            self.fail_forwarded_reads();
        }
        self.leader = None;
        self.votes = None;
        self.transfer = None;
        self.progress.clear();
        self.heartbeats_suspended = false;
        self.quiet = super::quiesce::Quiet::Awake;
        self.reset_election_deadline();
    }

    /// Becomes a follower in `term`, following `leader` if known.
    pub(super) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        let was_leader = self.role == Role::Leader;
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.leader_contact = Some(self.now);
        }
        if was_leader {
            self.fail_leader_reads();
        }
    }

    pub(super) fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never pre-campaigns");
        // A PreVote round changes neither term nor vote (§9.6): only the role.
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = None;
        self.reset_election_deadline();
    }

    pub(super) fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never campaigns");
        self.reset(self.term + 1);
        self.vote = self.cfg.id;
        self.role = Role::Candidate;
        self.stats_mut().elections_started += 1;
    }

    pub(super) fn become_leader(&mut self) {
        assert!(matches!(self.role, Role::Candidate), "only a candidate becomes leader");
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.leader_contact = Some(self.now);
        // An election is not activity: a new leader quiesces as soon as its followers hold
        // its first entry, unless a proposal or a read comes first (then the idle period
        // counts from it). After a start or a failover most partitions are idle, and each
        // one heartbeating through a whole idle period was what a 100,000-partition start
        // could not afford (`pacer.rs`). Quiescing costs a busy partition nothing: its next
        // write wakes the followers with its append.
        self.last_activity = None;
        self.stats_mut().became_leader += 1;
        let last = self.log.last_index();
        let members: Vec<NodeId> = self.conf.current().members().filter(|&m| m != self.cfg.id).collect();
        self.progress = ProgressMap::with_capacity(members.len());
        for m in members {
            self.progress.insert(m, Progress::new(last, self.now));
        }
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_ticks;
        self.check_quorum_deadline = self.now + self.cfg.election_ticks_min;
        self.reads.on_become_leader();
        // §5.4.2 / §8: a leader commits entries of earlier terms only by committing one of its
        // own, so it appends an empty entry at once.
        self.append_noop();
    }
}

impl RaftGroup {
    /// Re-arms the timers relative to the current time (used when a group joins a running
    /// container whose clock is ahead of zero).
    pub(super) fn reset_timers_from_now(&mut self) {
        self.reset_election_deadline();
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_ticks;
        self.check_quorum_deadline = self.now + self.cfg.election_ticks_min;
    }
}
