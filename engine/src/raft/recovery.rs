//! Recovery of a replica that lost durable state it may have acknowledged: a wiped disk, a
//! damaged WAL tail (issue 11).
//!
//! Raft's safety rests on every voter remembering what it said. A replica that forgot its
//! term and vote can vote twice in one term (two leaders); one that forgot entries it
//! acknowledged can help elect a candidate that lacks a committed entry (an acknowledged
//! write vanishes). So a recovering replica (`HardState::recovering`, set by the shell for
//! a group whose stored state is empty or known damaged) **never votes and never campaigns**
//! until both of these hold:
//!
//! 1. **A term floor `F`**: the terms of enough *other* voters that at least one of them is
//!    in every majority the replica could have been part of. Any term `T` it voted in (or
//!    acknowledged entries in) before the loss was persisted by the winner of `T` and its
//!    voters; with `n` voters a majority is `m`, so the replica learns the current term of
//!    `n - m + 1` other voters that are not recovering themselves (for 3 voters: both
//!    others), and `F` is the largest term heard, so `F >= T`. It asks with
//!    [`RecoveryProbe`] every election timeout until it knows `F`.
//! 2. **Caught up from a leader of a term `>= F` that committed an entry of its own term,**
//!    up to a commit index that leader announced after the loss. That leader holds every
//!    entry committed before its term (Leader Completeness), and if its term is `F` itself
//!    it committed everything of `F` the replica acknowledged before the loss; the replica
//!    now holds all of it. The vote it may have
//!    cast in the leader's term went to that leader (only one can win a term), so it
//!    records that vote; any later vote is for a term above `F`, in which it never voted.
//!
//! Unless **nothing was ever committed**: when *every* other voter answered and none holds
//! an entry, no entry can have been committed with this replica's acknowledgement (a
//! majority holds each committed entry, and one loss at a time leaves the others' logs
//! intact). It then takes `F` as its term, counts its vote in `F` as cast (it may have
//! voted there) and stops recovering at once. This is how a new cluster starts: its
//! replicas are all empty — a new disk and a wiped one look alike — and they answer each
//! other with empty logs, whatever terms the first to finish reached while campaigning.
//!
//! Until it knows `F` it answers no leader at all: back at term 0, it would otherwise follow
//! a leader of a term it had already left behind, and its acknowledgements could help that
//! leader commit entries or confirm a read that the later term contradicts. Learning `F`, it
//! moves to term `F`, so older leaders are refused as stale. From then on it follows leaders
//! and acknowledges appends like any follower: an acknowledgement speaks only for entries it
//! holds again. A leader that hears a rejection
//! showing a follower's log shorter than what the leader believed it matched starts over
//! from the follower's real log (`step_leader.rs`), so the follower never stays behind on
//! stale progress and never counts for entries it no longer holds.
//!
//! What this costs: while a replica recovers, its group needs a majority without it for
//! elections; a 3-voter group with a recovering replica and another node down elects no new
//! leader until one of them is back (writes continue if the leader is up). A 2-voter group,
//! which survives no failure, elects no leader again after losing a voter's disk: the
//! wiped replica restarts with the configuration it was started with and cannot tell
//! whether the group still has those two voters (voting for the other one, safe if it has,
//! elects a leader that lacks committed entries if the group has grown to three since —
//! the simulator finds that). A cluster's very first election needs every voter to answer
//! (all report empty logs), since an empty replica cannot tell a new cluster from a wiped
//! disk otherwise. Losing the disks of a majority is beyond what any replication protocol
//! can repair: then recovery waits forever rather than elect someone who lost committed
//! writes.
//!
//! [`RecoveryProbe`]: phalanx_proto::RecoveryProbe

use std::collections::BTreeMap;

use phalanx_proto::{RecoveryProbe, RecoveryProbeResponse, raft_message::Body};

use super::group::RaftGroup;
use super::quorum::majority;
use super::types::{NodeId, Role};

/// What a recovering replica has learned so far.
#[derive(Clone, Debug, Default)]
pub(super) struct Recovery {
    /// Answers to probes, by voter.
    answers: BTreeMap<NodeId, RecoveryProbeResponse>,
    /// The term floor, once enough voters answered.
    floor: Option<u64>,
    /// Tick at which unanswered voters are asked (again); the first tick asks at once.
    /// Independent of the election timer, which a leader's heartbeats keep pushing back.
    next_probe: u64,
    /// Once the floor is known: (term, index) of a commit index a leader of that term
    /// announced; recovery ends when this replica holds it and it is of that term.
    target: Option<(u64, u64)>,
}

impl RaftGroup {
    /// Whether this replica is recovering from lost durable state (it neither votes nor
    /// campaigns until it caught up; see `recovery.rs`).
    #[must_use]
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// The term floor a recovering replica learned, if any.
    #[must_use]
    pub fn recovery_floor(&self) -> Option<u64> {
        self.recovery.as_ref().and_then(|r| r.floor)
    }

    /// Whether the replica must leave leaders unanswered: it lost its state and does not know
    /// its term floor yet, so it does not know how far its term had gone. An answer now could
    /// help a leader of a term it had already left behind commit entries or confirm a read
    /// (simulator seed 9414: a wiped replica, back at term 0, answered a stale term-6
    /// leader's heartbeats, and that leader served a read missing writes committed in term 7).
    pub(super) fn ignores_leaders(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.floor.is_none())
    }

    /// When the next probe round is due (`u64::MAX`: none, the floor is known).
    pub(super) fn next_probe_deadline(&self) -> u64 {
        match &self.recovery {
            Some(r) if r.floor.is_none() => r.next_probe,
            _ => u64::MAX,
        }
    }

    /// A probe round is due: ask the voters that have not answered (or were recovering
    /// themselves), every election timeout until enough did.
    pub(super) fn recovery_tick(&mut self) {
        let next = self.now + self.cfg.election_ticks_min;
        let me = self.cfg.id;
        let voters = self.voters();
        let Some(r) = &mut self.recovery else { return };
        if r.floor.is_some() || r.next_probe > self.now {
            return;
        }
        r.next_probe = next;
        // Voters that have not answered, or answered while recovering themselves (their term
        // will be evidence once they are done).
        let ask: Vec<NodeId> = voters
            .into_iter()
            .filter(|v| *v != me && r.answers.get(v).is_none_or(|a| a.recovering))
            .collect();
        for v in ask {
            self.send(v, Body::RecoveryProbe(RecoveryProbe {}));
        }
        // A group with no other voter has nobody to ask (and nobody who could hold anything
        // it lost): the floor is what it holds.
        self.maybe_set_floor();
    }

    /// Any replica answers a probe with its term. A leader also learns that the prober is
    /// recovering (no leadership for it, empty appends to its heartbeat answers); its
    /// progress starts over at the prober's first rejection (`step_leader.rs`), which also
    /// comes when this probe is lost.
    pub(super) fn handle_recovery_probe(&mut self, from: NodeId) {
        let resp = RecoveryProbeResponse {
            term: self.term,
            recovering: self.recovery.is_some(),
            last_index: self.log.last_index(),
        };
        self.send(from, Body::RecoveryProbeResponse(resp));
        if self.role == Role::Leader
            && let Some(pr) = self.progress.get_mut(&from)
        {
            pr.recovering = true;
        }
    }

    /// A voter told us its term.
    pub(super) fn handle_recovery_probe_response(&mut self, from: NodeId, resp: RecoveryProbeResponse) {
        let Some(r) = &mut self.recovery else { return };
        if r.floor.is_some() || !self.conf.current().voters.contains(&from) {
            return;
        }
        r.answers.insert(from, resp);
        self.maybe_set_floor();
    }

    /// Sets the floor once the answers allow it (see the module docs).
    fn maybe_set_floor(&mut self) {
        let me = self.cfg.id;
        let voters = self.voters();
        let Some(r) = &mut self.recovery else { return };
        if r.floor.is_some() {
            return;
        }
        let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != me).collect();
        if others.is_empty() && self.log.last_index() > 0 {
            // The only voter this replica knows of (a group shrunk to one voter) lost part of
            // its log: nobody holds a copy of what it lost, so it cannot recover and the
            // group stays unavailable. (An empty log is a new group, which a wiped single
            // voter cannot be told from, as at start.) Ending the recovery here made it lead
            // without entries it had committed (simulator seed 82).
            return;
        }
        let n = voters.len().max(1);
        let need = n - majority(n) + 1;
        let sound = others.iter().filter(|v| r.answers.get(*v).is_some_and(|a| !a.recovering)).count();
        let nothing_committed = others.iter().all(|v| r.answers.get(v).is_some_and(|a| a.last_index == 0));
        if sound < need.min(others.len()) && !nothing_committed {
            return;
        }
        let floor = r.answers.values().map(|a| a.term).max().unwrap_or(0);
        r.floor = Some(floor);
        if floor > self.term {
            // Its term goes back to at least where it had been: leaders of older terms are
            // now refused as stale, like by any replica that never lost its state.
            self.become_follower(floor, None);
        }
        if floor == 0 || nothing_committed {
            // No term was ever reached, or no entry was ever committed: nothing this
            // replica acknowledged can be lost. Its vote in the floor's term may have been
            // cast: count it as cast.
            if self.term > 0 && self.vote == 0 {
                self.vote = me;
            }
            self.finish_recovery(None);
        }
    }

    /// After an append from the leader `from` of our term: recovery ends once we know the
    /// floor, the leader's term is at least the floor, and we hold the leader's log up to a
    /// commit index it announced in this term, whose entry is of this term (the leader had
    /// committed an entry of its own). Any such index will do, not the latest: a follower
    /// catching up under load would otherwise never reach the moving commit index.
    pub(super) fn maybe_finish_recovery(&mut self, from: NodeId, leader_commit: u64) {
        let term = self.term;
        let Some(r) = &self.recovery else { return };
        if r.floor.is_none_or(|f| term < f) {
            return;
        }
        let target = match r.target {
            Some((t, c)) if t == term => c,
            _ => leader_commit,
        };
        let next = if self.log.committed() < target {
            target
        } else if self.log.term(target) == Some(term) {
            self.finish_recovery(Some(from));
            return;
        } else {
            // The leader had not committed an entry of its term yet at `target`: aim further.
            leader_commit.max(target)
        };
        if let Some(r) = &mut self.recovery {
            r.target = Some((term, next));
        }
    }

    fn finish_recovery(&mut self, leader: Option<NodeId>) {
        self.recovery = None;
        if let Some(l) = leader
            && self.vote == 0
        {
            // Whatever we voted for in this term before the loss, only this leader won it.
            self.vote = l;
        }
    }
}
