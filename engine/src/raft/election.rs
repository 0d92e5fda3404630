//! Leader election (§5.2, §5.4.1) with PreVote (§9.6) and the CheckQuorum lease (§6.2):
//! campaigning, granting votes, counting them.

use phalanx_proto::{VoteRequest, VoteResponse, raft_message::Body};

use super::group::RaftGroup;
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
        let req = VoteRequest {
            term: self.term + 1,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: true,
            leader_transfer: false,
        };
        self.request_votes(req);
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
