//! Quiescence: an idle group stops heartbeating and its followers stop their election
//! timers, so a shard's cost per tick follows its active groups, not all of them
//! (CockroachDB and Dragonboat quiesce idle ranges the same way).
//!
//! **Leader.** After `quiesce_after_ticks` without a proposal, a read or a wake, with every
//! entry committed, applied and durable locally, no transfer and no read pending, and every
//! follower holding the whole log (followers the failure detector does not hold alive
//! excepted: a dead node must not keep a thousand partitions awake), its heartbeats carry
//! `quiesce`. It keeps heartbeating — and CheckQuorum keeps running — until every follower
//! it waits for acknowledged; then it stops both and drops its entry cache.
//!
//! **Follower.** A heartbeat with `quiesce` stops its election timer and it answers
//! `quiesced`. While quiesced it treats vote requests as one in its leader's lease: the
//! leader is alive for as long as the failure detector says so, and the shell calls
//! [`RaftGroup::leader_suspected`] when it no longer does — the follower then campaigns at
//! once. Any other message of its leader (an append, a heartbeat without `quiesce`) wakes it;
//! so does one a leader does not send — a vote request, a recovery probe: the leader
//! restarted, campaigns or recovers lost state, and leads no more. A restart faster than a
//! suspicion shows in the detector as a higher incarnation; the shell then wakes the
//! followers quiesced under that node and they campaign at once (a leader that lost its disk
//! probes only the voters of its bootstrap configuration: a member added since would wait
//! for it forever — the simulator, seeds 4785 and 7623).
//!
//! **Waking the leader.** A proposal, a read, a transfer, a vote request, or any message other
//! than an acknowledgement of its quiescence wakes it: it heartbeats at once (which wakes its
//! followers), its vote lease counts from the wake, and CheckQuorum next checks one election
//! timeout after the wake — the answers to the wake-up heartbeat count, the silence of the
//! quiescence does not.
//!
//! **Why it is safe.** Quiescence moves timers only. A write still needs a quorum's
//! acknowledgement and a read a quorum's answer to a heartbeat round of the leader's term, so
//! a leader deposed while quiesced can neither commit nor confirm a read; once woken, it
//! steps down after an election timeout without a quorum (CheckQuorum). Refusing votes only
//! ever delays an election, and the detector bounds the delay.

use std::collections::BTreeSet;

use super::group::RaftGroup;
use super::types::{NodeId, Role};

/// Where a group stands on quiescence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quiet {
    /// Heartbeats and election timers run.
    #[default]
    Awake,
    /// Leader: its heartbeats carry `quiesce`; it waits for its followers' acknowledgements.
    Quiescing,
    /// Leader: no heartbeats, no CheckQuorum. Follower: no election timer.
    Quiesced,
}

impl RaftGroup {
    /// Whether the group is quiesced (no timer of its own runs).
    #[must_use]
    pub fn is_quiesced(&self) -> bool {
        self.quiet == Quiet::Quiesced
    }

    /// Follower: the leader it is quiesced under (`None` when awake or leading).
    #[must_use]
    pub fn quiesced_leader(&self) -> Option<NodeId> {
        (self.quiet == Quiet::Quiesced && self.role != Role::Leader).then_some(self.leader).flatten()
    }

    /// The failure detector no longer holds `node` alive: a follower quiesced under it wakes
    /// and campaigns at once (its leader stopped heartbeating, so no timer would notice).
    pub fn leader_suspected(&mut self, node: NodeId) {
        if self.leader_restarted(node) {
            self.hup(false);
        }
    }

    /// Leader: wakes the group for work that needs fresh word from its followers (the shell's
    /// membership changes judge who is active by answers within an election timeout, and a
    /// quiesced group has none). Does nothing on a follower or an awake leader.
    pub fn wake(&mut self) {
        if self.role == Role::Leader && self.quiet != Quiet::Awake {
            self.note_activity();
        }
    }

    /// Records activity: a leader's idle period starts over, and a quiescing or quiesced
    /// leader wakes.
    pub(super) fn note_activity(&mut self) {
        self.last_activity = Some(self.now);
        if self.role == Role::Leader && self.quiet != Quiet::Awake {
            self.wake_leader();
        }
    }

    /// Leader: back to heartbeats and CheckQuorum, with a heartbeat now.
    fn wake_leader(&mut self) {
        let was = self.quiet;
        self.quiet = Quiet::Awake;
        self.leader_contact = Some(self.now);
        self.check_quorum_deadline = self.now + self.cfg.election_ticks_min;
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_ticks;
        if was == Quiet::Quiesced {
            // Followers do not expect heartbeats: one without `quiesce` wakes them now.
            self.bcast_heartbeat();
        }
    }

    /// A message from peer `from` reached a leader: anything but an acknowledgement of its
    /// quiescence wakes it (a follower that restarted, lost the marker or lags).
    pub(super) fn leader_heard(&mut self, quiesce_ack: bool) {
        if self.quiet == Quiet::Quiesced && !quiesce_ack {
            self.note_activity();
        }
    }

    /// Leader, on its heartbeat tick: starts quiescing when the group is idle and settled, or
    /// finishes when every follower it waits for acknowledged.
    pub(super) fn maybe_quiesce(&mut self, unreachable: &BTreeSet<NodeId>) {
        match self.quiet {
            Quiet::Awake if self.may_quiesce(unreachable) => {
                self.quiet = Quiet::Quiescing;
                // Acknowledgements count only from this round on (one of an earlier round may
                // predate a wake the follower followed).
                for p in self.progress.values_mut() {
                    p.quiet_acked = false;
                }
            }
            Quiet::Quiescing if !self.may_quiesce(unreachable) => self.note_activity(),
            Quiet::Quiescing => self.finish_quiescing(unreachable),
            _ => {}
        }
    }

    /// Leader: a follower acknowledged the quiescence (counted at the next heartbeat tick).
    pub(super) fn on_quiesce_ack(&mut self, from: NodeId) {
        if self.quiet == Quiet::Quiescing
            && let Some(p) = self.progress.get_mut(&from)
        {
            p.quiet_acked = true;
        }
    }

    /// Follower: the leader it is quiesced under (`from`) is no longer the leader the
    /// quiescence trusted — it sent what a leader does not (a vote request, a recovery probe:
    /// it restarted), or the detector doubts or saw a restart of its node. The follower wakes,
    /// out of the lease that rested on the detector. Returns whether it did.
    pub(super) fn leader_restarted(&mut self, from: NodeId) -> bool {
        if self.quiesced_leader() != Some(from) {
            return false;
        }
        self.quiet = Quiet::Awake;
        self.leader_contact = None;
        self.reset_election_deadline();
        true
    }

    fn finish_quiescing(&mut self, unreachable: &BTreeSet<NodeId>) {
        if self.progress.iter().all(|(id, p)| p.quiet_acked || unreachable.contains(id)) {
            self.quiet = Quiet::Quiesced;
            self.shed_memory();
        }
    }

    /// Leader: whether the group may quiesce now.
    fn may_quiesce(&self, unreachable: &BTreeSet<NodeId>) -> bool {
        let last = self.log.last_index();
        self.cfg.quiesce_after_ticks > 0
            && self.role == Role::Leader
            && self.last_activity.is_none_or(|t| self.now >= t + self.cfg.quiesce_after_ticks)
            && self.transfer.is_none()
            && !self.heartbeats_suspended
            && self.reads.is_idle()
            && self.log.committed() == last
            && self.log.applied() == last
            && self.log.persisted() == last
            && self.incoming_snapshot.is_none()
            && self.progress.iter().all(|(id, p)| {
                unreachable.contains(id) || (p.matched == last && !p.recovering && p.fetch_pending.is_none())
            })
    }

    /// Follower: a heartbeat of its leader, with or without `quiesce`.
    pub(super) fn follower_heartbeat(&mut self, quiesce: bool) -> bool {
        let take = quiesce && self.recovery.is_none();
        self.quiet = if take { Quiet::Quiesced } else { Quiet::Awake };
        if take {
            self.shed_memory();
        }
        take
    }

    /// Drops what an idle group does not need: cached entries (a follower that needs them
    /// wakes the group, and they are read back from storage) and spare buffer capacity.
    fn shed_memory(&mut self) {
        self.log.trim_cache(self.log.applied());
        self.log.shrink();
        for p in self.progress.values_mut() {
            p.inflight = std::collections::VecDeque::new();
        }
        self.reads.shrink();
        self.drop_empty_pipeline();
    }
}
