//! Leader election (§5.2, §5.4.1) with PreVote (§9.6) and the CheckQuorum lease (§6.2):
//! campaigning, granting votes, counting them.

use phalanx_proto::{VoteRequest, VoteResponse, raft_message::Body};

use super::group::RaftGroup;
use super::pacer::preference_rank;
use super::quorum::{VoteResult, vote_result};
use super::types::{NodeId, Role};

/// The votes of a node not campaigning.
static NO_VOTES: std::collections::BTreeMap<NodeId, bool> = std::collections::BTreeMap::new();

impl RaftGroup {
    /// The election timer fired (or a transfer asked us to run): start a PreVote round, or a
    /// real election when PreVote is off or this is a leadership transfer.
    pub(super) fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.term == u64::MAX {
            // Only a faulty peer can have pushed us here: there is no next term to run in.
            self.reset_election_deadline();
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.campaign_pre_vote();
        } else {
            self.run_election(transfer);
        }
    }

    fn campaign_pre_vote(&mut self) {
        self.become_pre_candidate();
        // A PreVote needs no persistence: nothing changes on disk.
        self.votes.get_or_insert_with(Box::default).insert(self.cfg.id, true);
        if self.poll() != VoteResult::Pending {
            return;
        }
        self.request_votes(self.pre_vote_request());
    }

    /// This pre-candidate's PreVote request: for the next term, with its log's end.
    fn pre_vote_request(&self) -> VoteRequest {
        VoteRequest {
            term: self.term + 1,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: true,
            leader_transfer: false,
        }
    }

    fn run_election(&mut self, transfer: bool) {
        self.become_candidate();
        // Our own vote counts only once the new term and vote are durable (`on_persisted`):
        // counting it earlier could elect us, crash, and let us vote again in this term.
        let req = VoteRequest {
            term: self.term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: false,
            leader_transfer: transfer,
        };
        self.request_votes(req);
    }

    fn request_votes(&mut self, req: VoteRequest) {
        let me = self.cfg.id;
        for v in self.voters() {
            if v != me {
                self.send(v, Body::VoteRequest(req));
            }
        }
    }

    /// Whether this node heard from a leader recently enough that it refuses to help depose
    /// it (thesis §4.2.3: the lease that stops disruptive servers, and makes CheckQuorum safe
    /// for reads). With PreVote too, not only CheckQuorum: PreVote alone lets a server whose
    /// log is as long as a lagging voter's win elections — a member being removed, which may
    /// never hear of its removal, deposed the leader removing it again and again (the
    /// simulator, seed 3378: a pre-vote-only run where the removal never committed).
    ///
    /// A follower quiesced under its leader is in its lease for as long as the failure
    /// detector holds that leader alive (the shell wakes it when it does not, `quiesce.rs`).
    pub(super) fn in_lease(&self) -> bool {
        (self.cfg.check_quorum || self.cfg.pre_vote)
            && self.leader.is_some()
            && (self.quiesced_leader().is_some()
                || self.leader_contact.is_some_and(|t| self.now < t + self.cfg.election_ticks_min))
    }

    /// Whether this pre-candidate takes precedence over `from`, which asks for a PreVote in
    /// the same election (`req`): two replicas that start campaigning at the same moment —
    /// both followers of a leader the failure detector just suspected, or one of them and a
    /// restarted preferred leader whose dormant group campaigns at once (`pacer.rs`) — would
    /// each grant the other's PreVote (neither has a leader), run in the same term, vote for
    /// themselves and split it, and nobody would lead until an election timeout later
    /// (`bench/README.md`: the failover scenario's partitions, and some of the recovery runs).
    /// So of two such pre-candidates, the one earlier in the group's order of preference
    /// (`pacer::preference_rank`, the balancer's choice first) refuses the other's PreVote
    /// and asks it again for its own: the other is campaigning, so it no longer holds the
    /// lease that may have refused us a moment before, and it grants. Only when our log is at
    /// least as up to date as `from`'s (otherwise we could not win and it could), and only
    /// until `from` has granted us once in this round: if we still cannot win (a partial
    /// partition keeps a quorum from us), its next round finds us granting as usual.
    ///
    /// Safe: a PreVote changes no term and no vote; refusing one only ever delays an
    /// election, and the conditions above bound the delay to one round of `from`'s.
    fn wins_tie_with(&self, from: NodeId, req: &VoteRequest) -> bool {
        let voters = || self.conf.current().voters.iter().copied();
        self.role == Role::PreCandidate
            && req.term == self.term + 1
            && (self.log.last_term(), self.log.last_index()) >= (req.last_log_term, req.last_log_index)
            && self.votes.as_ref().is_none_or(|v| v.get(&from) != Some(&true))
            && matches!(
                (preference_rank(self.group, voters(), self.cfg.id), preference_rank(self.group, voters(), from)),
                (Some(mine), Some(theirs)) if mine < theirs
            )
    }

    /// Answers a vote request whose term is at least ours (term handling done by `step`).
    pub(super) fn handle_vote_request(&mut self, from: NodeId, req: VoteRequest) {
        let log_ok = self.log.is_up_to_date(req.last_log_index, req.last_log_term);
        // A replica that lost durable state may have voted in this term already, or hold
        // less than it acknowledged: no vote, real or PreVote, until it caught up.
        let can_vote = self.recovery.is_none()
            && (self.vote == from
                || (self.vote == 0 && self.leader.is_none())
                // A PreVote for a future term: we would be free to vote in that term.
                || (req.pre_vote && req.term > self.term));
        let granted = can_vote && log_ok;
        if req.pre_vote && granted && self.wins_tie_with(from, &req) {
            // Refused, and asked again for its PreVote: see `wins_tie_with`.
            self.send(
                from,
                Body::VoteResponse(VoteResponse { term: self.term, granted: false, pre_vote: true }),
            );
            self.send(from, Body::VoteRequest(self.pre_vote_request()));
            return;
        }
        if req.pre_vote {
            // A granted PreVote answers in the requested term, so the pre-candidate can tell
            // it from a stale one; a refusal carries our term so it learns where we are.
            let term = if granted { req.term } else { self.term };
            self.send(from, Body::VoteResponse(VoteResponse { term, granted, pre_vote: true }));
            return;
        }
        if granted {
            self.vote = from;
            self.reset_election_deadline();
            // §5.2: the vote must be durable before the candidate hears of it.
            self.send_after_persist(
                from,
                Body::VoteResponse(VoteResponse { term: self.term, granted: true, pre_vote: false }),
            );
        } else {
            self.send(
                from,
                Body::VoteResponse(VoteResponse { term: self.term, granted: false, pre_vote: false }),
            );
        }
    }

    /// A (pre-)candidate counts a vote answer.
    pub(super) fn handle_vote_response(&mut self, from: NodeId, resp: VoteResponse) {
        let expected = match self.role {
            Role::PreCandidate => resp.pre_vote,
            Role::Candidate => !resp.pre_vote,
            _ => return,
        };
        if !expected {
            return;
        }
        self.votes.get_or_insert_with(Box::default).insert(from, resp.granted);
        self.poll();
    }

    /// Our own vote became durable: count it.
    pub(super) fn on_self_vote_persisted(&mut self) {
        if self.role == Role::Candidate && self.vote == self.cfg.id {
            self.votes.get_or_insert_with(Box::default).insert(self.cfg.id, true);
            self.poll();
        }
    }

    /// Acts on the votes counted so far.
    pub(super) fn poll(&mut self) -> VoteResult {
        let result = vote_result(&self.conf.current().voters, self.votes.as_deref().unwrap_or(&NO_VOTES));
        match result {
            VoteResult::Won if self.role == Role::PreCandidate => self.run_election(false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
        result
    }
}
