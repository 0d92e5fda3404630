//! Time. The group keeps absolute deadlines (in ticks) instead of elapsed counters, so a
//! container can skip groups with nothing due (`next_deadline`) and tick only active ones.

use std::collections::BTreeSet;

use phalanx_proto::raft_message::Body;

use super::group::RaftGroup;
use super::quiesce::Quiet;
use super::types::{NodeId, Role};

impl RaftGroup {
    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.tick_to(self.now + 1);
    }

    /// Advances time to `now` (ticks), firing every deadline that is due. Time never goes
    /// backwards: an earlier `now` is ignored.
    pub fn tick_to(&mut self, now: u64) {
        self.tick_to_with(now, &BTreeSet::new());
    }

    /// `tick_to`, knowing which peers the failure detector does not hold alive: a leader
    /// quiesces without waiting for them (`quiesce.rs`).
    pub fn tick_to_with(&mut self, now: u64, unreachable: &BTreeSet<NodeId>) {
        if now <= self.now {
            return;
        }
        self.now = now;
        self.expire_forwarded_reads();
        if self.role == Role::Leader {
            self.tick_leader(unreachable);
            return;
        }
        if self.next_probe_deadline() <= now {
            self.recovery_tick();
        }
        // A quiesced follower has no election timer: the failure detector watches its leader.
        if self.election_deadline <= now && self.quiet != Quiet::Quiesced {
            if self.promotable() {
                self.hup(false);
            } else {
                // Learners and removed nodes never campaign; just re-arm.
                self.reset_election_deadline();
            }
        }
    }

    /// The next tick at which `tick_to` would do something, so containers can sleep until
    /// then. `u64::MAX` when nothing is scheduled.
    #[must_use]
    pub fn next_deadline(&self) -> u64 {
        let timers = match self.role {
            Role::Leader if self.quiet == Quiet::Quiesced => u64::MAX,
            Role::Leader => {
                let mut d = if self.cfg.check_quorum { self.check_quorum_deadline } else { u64::MAX };
                if !self.heartbeats_suspended {
                    d = d.min(self.heartbeat_deadline);
                }
                if let Some(t) = self.transfer.as_deref() {
                    d = d.min(t.deadline);
                }
                d
            }
            _ if self.promotable() && self.quiet != Quiet::Quiesced => self.election_deadline,
            _ => u64::MAX,
        };
        timers.min(self.forwarded_reads_deadline()).min(self.next_probe_deadline())
    }

    fn tick_leader(&mut self, unreachable: &BTreeSet<NodeId>) {
        let now = self.now;
        if self.quiet == Quiet::Quiesced {
            return;
        }
        if self.heartbeat_deadline <= now {
            self.heartbeat_deadline = now + self.cfg.heartbeat_ticks;
            self.maybe_quiesce(unreachable);
            if self.quiet == Quiet::Quiesced {
                return;
            }
            if !self.heartbeats_suspended {
                self.bcast_heartbeat();
            }
        }
        if self.cfg.check_quorum && self.check_quorum_deadline <= now {
            // The latest tick by which a quorum of voters had all been heard from (this node
            // counts as heard now if it votes). A leader woken from quiescence checks first an
            // election timeout after the wake (`quiesce.rs`): its wake-up heartbeat's answers
            // count, the silence of the quiescence does not.
            let heard = self.quorum_heard_at();
            if heard + self.cfg.election_ticks_min <= now {
                // §6.2 / CheckQuorum: a leader that has not heard from a quorum within an
                // election timeout steps down, so clients retry elsewhere instead of waiting.
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            // Exactly when that contact expires is the next moment to check; until then we
            // are the "current leader" of the vote lease (thesis §4.2.3) and ignore
            // disruptive vote requests, as our followers do.
            self.check_quorum_deadline = heard + self.cfg.election_ticks_min;
            self.leader_contact = Some(heard);
        }
        if let Some(t) = self.transfer.as_deref()
            && t.deadline <= now
        {
            // The target did not take over within an election timeout: give up so the
            // leader accepts proposals again.
            self.transfer = None;
        }
    }

    /// The latest tick T such that a quorum of voters has been heard from at or after T.
    fn quorum_heard_at(&self) -> u64 {
        let me = self.cfg.id;
        let now = self.now;
        super::quorum::committed_value(&self.conf.current().voters, |v| {
            if v == me { now } else { self.progress.get(&v).map_or(0, |p| p.last_heard) }
        })
    }

    /// Broadcasts heartbeats carrying the commit index and the latest ReadIndex context.
    pub(super) fn bcast_heartbeat(&mut self) {
        let ctx = self.reads.current_ctx();
        let targets: Vec<u64> = self.progress.keys().copied().collect();
        for to in targets {
            self.send_heartbeat(to, ctx);
        }
    }

    /// Sends one heartbeat. The commit index is clamped to what the follower is known to
    /// hold, so a follower never commits an entry it may not have in the leader's form.
    pub(super) fn send_heartbeat(&mut self, to: u64, ctx: u64) {
        let Some(p) = self.progress.get_mut(&to) else { return };
        let commit = self.log.committed().min(p.matched);
        p.commit_sent = p.commit_sent.max(commit);
        let quiesce = self.quiet == Quiet::Quiescing;
        let hb = phalanx_proto::Heartbeat { term: self.term, commit, read_ctx: ctx, quiesce };
        self.send(to, Body::Heartbeat(hb));
    }
}
