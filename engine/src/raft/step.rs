//! `step`: validating an incoming message, applying the term rules (§5.1: a higher term
//! makes us a follower, a lower term is stale), and dispatching by role.

use phalanx_proto::{HeartbeatResponse, RaftMessage, VoteResponse, raft_message::Body};

use super::group::RaftGroup;
use super::status::Status;
use super::types::Role;

/// The term a message carries.
fn body_term(b: &Body) -> u64 {
    match b {
        Body::VoteRequest(m) => m.term,
        Body::VoteResponse(m) => m.term,
        Body::AppendRequest(m) => m.term,
        Body::AppendResponse(m) => m.term,
        Body::Heartbeat(m) => m.term,
        Body::HeartbeatResponse(m) => m.term,
        Body::Snapshot(m) => m.term,
        Body::SnapshotResponse(m) => m.term,
        Body::TimeoutNow(m) => m.term,
        Body::ReadIndexRequest(m) => m.term,
        Body::ReadIndexResponse(m) => m.term,
        Body::ForwardedProposal(m) => m.term,
        Body::RecoveryProbe(_) => 0,
        Body::RecoveryProbeResponse(m) => m.term,
        Body::Gossip(_) => 0,
    }
}

impl RaftGroup {
    /// Feeds one message from a peer. Messages that are not addressed to this group and node,
    /// or that break the protocol, are rejected with `InvalidRequest` (or the status naming
    /// the violation) and counted; they never panic the node.
    pub fn step(&mut self, m: RaftMessage) -> Result<(), Status> {
        let RaftMessage { group, from, to, body } = m;
        let Some(body) = body else { return self.reject(Status::InvalidRequest) };
        if group != self.group || to != self.cfg.id || from == 0 || from == self.cfg.id {
            return self.reject(Status::InvalidRequest);
        }
        if self.role == Role::Leader {
            // A quiesced leader wakes for anything but an acknowledgement of its quiescence.
            self.leader_heard(matches!(&body, Body::HeartbeatResponse(r) if r.quiesced));
        } else if !matches!(
            body,
            Body::AppendRequest(_)
                | Body::Heartbeat(_)
                | Body::Snapshot(_)
                | Body::TimeoutNow(_)
                | Body::ReadIndexResponse(_)
        ) {
            // From a quiesced follower's leader, anything a leader does not send means it
            // restarted: it campaigns, or recovers lost state (`quiesce.rs`).
            let _ = self.leader_restarted(from);
        }
        // ReadIndex traffic does not move terms: a confirmation from any leader that proved
        // its leadership after the request was sent is a valid read point.
        match body {
            Body::ReadIndexRequest(r) => {
                self.handle_read_index_request(from, r.request_id);
                return Ok(());
            }
            Body::ReadIndexResponse(r) => {
                self.handle_read_index_response(from, r);
                return Ok(());
            }
            // A proposal is not tied to the proposer's term: whoever leads now takes it.
            Body::ForwardedProposal(f) => return self.handle_forwarded_proposal(*f),
            // Recovery probes carry no term and move none (`recovery.rs`).
            Body::RecoveryProbe(_) => {
                self.handle_recovery_probe(from);
                return Ok(());
            }
            Body::RecoveryProbeResponse(r) => {
                self.handle_recovery_probe_response(from, r);
                return Ok(());
            }
            // The shard's failure detector takes these before any group sees them.
            Body::Gossip(_) => return self.reject(Status::InvalidRequest),
            _ => {}
        }
        if self.ignores_leaders()
            && matches!(body, Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_))
        {
            // A replica that lost its state answers leaders only once it knows its term floor
            // (`recovery.rs`).
            return Ok(());
        }
        let term = body_term(&body);
        if term > self.term {
            match &body {
                Body::VoteRequest(req) => {
                    if !req.leader_transfer && self.in_lease() {
                        // We heard from a live leader within the minimum election timeout:
                        // ignore, so a partitioned or removed server cannot depose it.
                        return Ok(());
                    }
                    if !req.pre_vote {
                        self.become_follower(term, None);
                    }
                }
                // A granted PreVote answers in the term the pre-candidate would campaign in;
                // it is not a sign that the cluster moved on.
                Body::VoteResponse(resp) if resp.pre_vote && resp.granted => {}
                Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                    self.become_follower(term, Some(from));
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.term {
            match &body {
                Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                    // §5.1: reject a stale leader with our term so it steps down. Without this
                    // a stale leader whose followers moved on (e.g. a learner that cannot
                    // campaign, or peers that ignore its votes because of PreVote and the
                    // lease) would never learn the new term.
                    self.send(
                        from,
                        Body::HeartbeatResponse(HeartbeatResponse {
                            term: self.term,
                            read_ctx: 0,
                            quiesced: false,
                        }),
                    );
                    // Refused, but not bad input (not counted as a rejection): the sender
                    // lost its leadership and learns it from the answer.
                    return Err(Status::LeaderInOldTerm);
                }
                Body::VoteRequest(req) if req.pre_vote => {
                    self.send(
                        from,
                        Body::VoteResponse(VoteResponse { term: self.term, granted: false, pre_vote: true }),
                    );
                }
                // §5.1 (Figure 2: "reply false if term < currentTerm"): a voter of our
                // configuration campaigning in an older term learns ours from the refusal.
                // Ignored, a candidate whose only other voter cannot campaign (a learner in
                // its own view, its promotion not in its log yet) never learned that replica's
                // term, which removed members' campaigns had raised: it campaigned in terms
                // that were all stale there, for good. A server outside the configuration is
                // still ignored: knowing our term would only let it disrupt us sooner.
                Body::VoteRequest(_) if self.conf.current().voters.contains(&from) => {
                    self.send(
                        from,
                        Body::VoteResponse(VoteResponse { term: self.term, granted: false, pre_vote: false }),
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        match body {
            Body::VoteRequest(req) => {
                self.handle_vote_request(from, req);
                Ok(())
            }
            body => match self.role {
                Role::Leader => self.step_leader(from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(from, body),
                Role::Follower => self.step_follower(from, body),
            },
        }
    }

    /// Counts and returns a rejection of bad peer input.
    pub(super) fn reject(&mut self, status: Status) -> Result<(), Status> {
        self.stats_mut().rejected_messages += 1;
        Err(status)
    }

    fn step_candidate(&mut self, from: u64, body: Body) -> Result<(), Status> {
        match body {
            Body::VoteResponse(resp) => {
                self.handle_vote_response(from, resp);
                Ok(())
            }
            // A leader exists in our term (§5.2): it won; follow it.
            Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                let term = self.term;
                self.become_follower(term, Some(from));
                self.step_follower(from, body)
            }
            // §3.10: the leader of our term hands over to us while our own PreVote round
            // runs (its heartbeats were late). Campaign at once, as a follower would. (A
            // candidate is in a later term: a TimeoutNow never reaches it here.)
            Body::TimeoutNow(_) if self.role == Role::PreCandidate => {
                self.hup(true);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
