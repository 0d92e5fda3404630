//! The leader's handling of follower answers: progress updates, backtracking with the
//! conflict hint, commitment, ReadIndex confirmations, snapshot progress and the
//! leadership-transfer handoff.

use phalanx_proto::{AppendEntriesResponse, HeartbeatResponse, TimeoutNow, raft_message::Body};

use super::group::{GroupStats, RaftGroup};
use super::progress::ProgressState;
use super::replication::IfEmpty;
use super::status::Status;
use super::types::NodeId;

impl RaftGroup {
    pub(super) fn step_leader(&mut self, from: NodeId, body: Body) -> Result<(), Status> {
        match body {
            Body::AppendResponse(resp) => {
                // Within our term our log only grows and every append we sent ended at or
                // before our last index: a follower cannot have matched (or been probed at)
                // an index past it. Only a faulty peer says so.
                if resp.match_index > self.log.last_index() {
                    return self.reject(Status::InvalidRequest);
                }
                self.handle_append_response(from, resp);
            }
            Body::HeartbeatResponse(resp) => self.handle_heartbeat_response(from, resp),
            Body::SnapshotResponse(resp) => self.handle_snapshot_response(from, resp),
            // Another leader in our own term cannot exist (§5.2 Election Safety).
            Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                return self.reject(Status::LeaderAlreadyElected);
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_response(&mut self, from: NodeId, resp: AppendEntriesResponse) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = self.now;
        pr.recovering = resp.recovering;
        pr.answered = true;
        if resp.success {
            if pr.maybe_update(resp.match_index) {
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot if pr.matched >= pr.snapshot_index => pr.become_probe(),
                    _ => {}
                }
                if self.maybe_commit() {
                    self.commit_advanced();
                }
                self.maybe_send_timeout_now(from);
            }
            // The window may have room again. A follower whose acknowledgement arrived after
            // the entry was already committed would otherwise learn the commit index only
            // from the next heartbeat: it is told with this Ready (as etcd tells it at once).
            if self.progress.get(&from).is_some_and(|p| p.commit_sent < self.log.committed().min(p.matched)) {
                self.commit_advanced();
            }
            self.send_appends(from, IfEmpty::Skip);
            return;
        }
        GroupStats::count(&mut self.stats).log_mismatches += 1;
        if resp.last_log_index < pr.matched
            || (pr.state == ProgressState::Probe && resp.match_index <= pr.matched)
        {
            // Its log is shorter than what it acknowledged, or differs at or below the match
            // point: it lost entries (a wiped disk, a damaged tail). A stale rejection from
            // before the match can look the same; then starting over costs a probe round.
            // Keeping the match point would leave it behind for good (every later rejection
            // looks stale against it, and a probe cannot go below the match point: the same
            // append went out again for every rejection, and for every duplicate of one — a
            // storm that grew with each round trip) and count it for entries it no longer
            // holds.
            pr.restart_after_loss(self.log.last_index());
            GroupStats::count(&mut self.stats).followers_restarted += 1;
        }
        // Backtrack with the follower's hint: jump to the last index where our term is no
        // greater than the follower's term at its hinted index.
        let probe = if resp.conflict_term > 0 {
            self.log.find_conflict_by_term(resp.conflict_index, resp.conflict_term).0
        } else {
            // Clamped like the term hint above: an index past our log is not a place to probe.
            resp.conflict_index.min(self.log.last_index())
        };
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if pr.maybe_decrease_to(resp.match_index, probe) {
            self.send_appends(from, IfEmpty::Skip);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, resp: HeartbeatResponse) {
        if resp.quiesced {
            self.on_quiesce_ack(from);
        }
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = self.now;
        if resp.read_ctx > pr.read_ack {
            pr.read_ack = resp.read_ctx;
        }
        let state = pr.state;
        match state {
            // The follower is reachable: let the probe go out again (the last one may be lost).
            ProgressState::Probe => pr.probe_sent = false,
            // A full window whose acknowledgements were all lost would stall the follower
            // forever: free one slot so an append goes out; its answer (success, or a
            // rejection that drops us back to probing) gets replication moving again.
            ProgressState::Replicate if pr.inflight.len() >= self.cfg.max_inflight_appends => {
                pr.inflight.pop_front();
            }
            _ => {}
        }
        let lagging = pr.matched < self.log.last_index();
        // A recovering follower leaves recovery on an append carrying the commit index (a
        // heartbeat's is clamped to its match): an idle group must still send it one.
        let recovering = pr.recovering;
        if resp.read_ctx > 0 {
            self.release_confirmed_reads();
        }
        // A transfer target that caught up while its TimeoutNow was lost gets another.
        self.maybe_send_timeout_now(from);
        match state {
            ProgressState::Snapshot => self.send_snapshot_chunk(from),
            // Send even an empty append: in replicate state `next` may already be past our
            // last index with every append in flight lost, and only an append's answer (a
            // success, or a rejection that drops us back to probing) resumes replication.
            _ if lagging || recovering => self.send_appends(from, IfEmpty::Send),
            _ => {}
        }
    }

    /// Hands over leadership once the transfer target has caught up.
    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId) {
        if self.transfer.as_deref().is_some_and(|t| t.target == to)
            && self.progress.get(&to).is_some_and(|p| p.matched == self.log.last_index())
        {
            self.send_timeout_now(to);
        }
    }

    /// Tells the transfer's target to campaign at once. The first time, the transfer's
    /// deadline moves to an election timeout from now: the target's campaign reaches us a
    /// round trip later (within an election timeout, §5.6), and a leader that took proposals
    /// again before it came held a longer log than the successor it chose, refused it its
    /// vote and won the next election itself (a leaving member handing over a partition did
    /// so a dozen times in a row in simulator seed 11589). Only the first: the target answers
    /// every heartbeat, and each answer sends TimeoutNow again while it keeps up, so a target
    /// that never campaigns would otherwise hold the proposals back for good.
    pub(super) fn send_timeout_now(&mut self, to: NodeId) {
        let now = self.now;
        let election = self.cfg.election_ticks_min;
        if let Some(t) = self.transfer.as_deref_mut()
            && !t.handed
        {
            t.handed = true;
            t.deadline = t.deadline.max(now + election);
        }
        self.send(to, Body::TimeoutNow(TimeoutNow { term: self.term }));
    }
}
