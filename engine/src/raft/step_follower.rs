//! The follower's side of replication (§5.3): the Log Matching check, conflict hints,
//! truncation of divergent suffixes, commit propagation, heartbeats and TimeoutNow.

use phalanx_proto::{
    AppendEntriesRequest, AppendEntriesResponse, Heartbeat, HeartbeatResponse, raft_message::Body,
};

use super::group::RaftGroup;
use super::status::Status;
use super::types::NodeId;

impl RaftGroup {
    pub(super) fn step_follower(&mut self, from: NodeId, body: Body) -> Result<(), Status> {
        let leader_msg = matches!(body, Body::AppendRequest(_) | Body::Heartbeat(_) | Body::Snapshot(_));
        if leader_msg {
            match self.leader {
                None => self.leader = Some(from),
                // Only one leader can be elected per term (§5.2): a second one is a protocol
                // violation by the peer, not something to follow.
                Some(l) if l != from => return self.reject(Status::LogsFromAnotherLeader),
                Some(_) => {}
            }
            self.leader_contact = Some(self.now);
            self.reset_election_deadline();
            if !matches!(body, Body::Heartbeat(_)) {
                // Entries or a snapshot: the group is busy again (`quiesce.rs`).
                self.quiet = super::quiesce::Quiet::Awake;
            }
        }
        match body {
            Body::AppendRequest(req) => self.handle_append(from, req),
            Body::Heartbeat(hb) => {
                self.handle_heartbeat(from, hb);
                Ok(())
            }
            Body::Snapshot(chunk) => self.handle_snapshot_chunk(from, *chunk),
            Body::TimeoutNow(_) => {
                // §3.10: the leader hands over; campaign at once, skipping PreVote, and tell
                // voters to ignore their lease.
                if self.promotable() {
                    self.hup(true);
                }
                Ok(())
            }
            // Stale answers to a campaign or leadership we no longer hold.
            _ => Ok(()),
        }
    }

    fn handle_append(&mut self, from: NodeId, mut req: AppendEntriesRequest) -> Result<(), Status> {
        // A commit-only append that matches tells the leader nothing new when answered: a
        // match is not answered (a mismatch is, below).
        let silent = req.commit_only && req.entries.is_empty();
        let committed = self.log.committed();
        if req.prev_log_index < committed {
            // Everything up to our commit index matches the leader (Leader Completeness), so
            // tell it where we are instead of re-checking entries we already committed.
            let resp = AppendEntriesResponse {
                term: self.term,
                success: true,
                match_index: committed,
                last_log_index: self.log.last_index(),
                recovering: self.recovery.is_some(),
                ..Default::default()
            };
            if !silent {
                self.send_after_persist(from, Body::AppendResponse(resp));
            }
            return Ok(());
        }
        if !self.log.match_term(req.prev_log_index, req.prev_log_term) {
            // §5.3 Log Matching: refuse, with a hint that lets the leader skip a whole term of
            // mismatching entries in one round.
            let probe = req.prev_log_index.min(self.log.last_index());
            let (hint_index, hint_term) = self.log.find_conflict_by_term(probe, req.prev_log_term);
            let resp = AppendEntriesResponse {
                term: self.term,
                success: false,
                match_index: req.prev_log_index,
                conflict_index: hint_index,
                conflict_term: hint_term,
                last_log_index: self.log.last_index(),
                recovering: self.recovery.is_some(),
            };
            self.send(from, Body::AppendResponse(resp));
            return Ok(());
        }
        // Validate the batch before touching the log: contiguous, correct terms, starting
        // right after prev. A malformed batch is a peer bug; refuse it whole.
        let mut last_term = req.prev_log_term;
        for (expect, e) in (req.prev_log_index + 1..).zip(&req.entries) {
            if e.index != expect || e.term < last_term || e.term > req.term {
                return self.reject(Status::InvalidRequest);
            }
            if e.payload.len() + e.log_type.len() > self.cfg.max_entry_bytes {
                return self.reject(Status::TooLarge);
            }
            last_term = e.term;
        }
        let last_new = req.prev_log_index + req.entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(&req.entries) {
            if conflict <= committed {
                // Overwriting a committed entry would break State Machine Safety: only a
                // faulty peer asks for it.
                return self.reject(Status::LogMismatch);
            }
            // The new entries move into the log: the request is ours, no copy is needed.
            let fresh = req.entries.split_off((conflict - req.prev_log_index - 1) as usize);
            if conflict <= self.log.last_index() {
                self.conf.on_truncate(conflict);
            }
            self.conf.on_append(&fresh);
            self.log.truncate_and_append(fresh);
        }
        // §5.3: commit = min(leaderCommit, index of last new entry).
        self.log.commit_to(req.leader_commit.min(last_new));
        if self.recovery.is_some() {
            self.maybe_finish_recovery(from, req.leader_commit);
        }
        let resp = AppendEntriesResponse {
            term: self.term,
            success: true,
            match_index: last_new,
            last_log_index: self.log.last_index(),
            recovering: self.recovery.is_some(),
            ..Default::default()
        };
        if !silent {
            // The leader counts this acknowledgement toward commitment: durable first.
            self.send_after_persist(from, Body::AppendResponse(resp));
        }
        Ok(())
    }

    fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) {
        // The leader clamps `commit` to what it knows we hold; clamp again to our log in case
        // we restarted and lost unacknowledged entries.
        self.log.commit_to(hb.commit.min(self.log.last_index()));
        let quiesced = self.follower_heartbeat(hb.quiesce);
        self.send(
            from,
            Body::HeartbeatResponse(HeartbeatResponse { term: self.term, read_ctx: hb.read_ctx, quiesced }),
        );
    }
}
