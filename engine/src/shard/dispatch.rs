//! Requests from callers: the door's checks, proposals, reads, leadership controls, status,
//! and callers waiting for a partition to have a leader.

use std::time::{Duration, Instant};

use bytes::Bytes;
use phalanx_storage::limits::ENTRY_RECORD_OVERHEAD_BYTES;

use super::ShardCore;
use super::held::Proposing;
use super::request::{Answer, ControlOp, Op, PartitionStatus, ReplicationResult, Request};
use super::system_duties::SYSTEM_LOG_TYPE;
use super::waiters::{ProposalWaiter, ReadKind};
use crate::config::{LOG_ENTRY_ENVELOPE_BYTES, MAX_LOG_TYPE_BYTES};
use crate::hlc::Ticket;
use crate::raft::{Proposal, ProposalKind, Proposed, RaftGroup, Status};
use crate::state_machine::PartitionId;
use crate::stats::{CoreStats, PartitionStats, ShardStats};

/// A caller waiting for a partition to have a leader, or for the roster to change.
pub(crate) struct LeaderWaiter<R> {
    awaited: Awaited,
    deadline: Instant,
    reply: R,
}

/// What a [`LeaderWaiter`] waits for.
enum Awaited {
    /// A leader of the partition.
    Leader(PartitionId),
    /// A roster past this version (shard 0, which applies the system partition).
    RosterAfter(u64),
}

impl<R> ShardCore<R> {
    fn owns(&self, p: PartitionId) -> bool {
        p <= u64::from(self.cfg.initial_partitions)
            && crate::runtime::placement::shard_of(p, self.shards) == self.id
    }

    fn deadline(&self) -> Instant {
        self.now + Duration::from_millis(self.cfg.request_timeout_ms)
    }

    fn answer(&mut self, reply: R, answer: Answer) {
        self.waiters.answers.push((reply, answer));
    }

    /// A caller's request.
    pub fn on_request(&mut self, r: Request<R>) {
        let Request { op, reply } = r;
        if let Some(p) = op.partition() {
            if !self.owns(p) {
                // Unknown partition (or a routing bug): a clear refusal, not a hang.
                let refusal = op.refusal(Status::InvalidRequest);
                return self.answer(reply, refusal);
            }
            if self.stopped.contains_key(&p) {
                let refusal = op.refusal(Status::Errored);
                return self.answer(reply, refusal);
            }
        }
        let deadline = self.deadline();
        match op {
            Op::Replicate { partition, log_type, payloads, auto_commit, system } => {
                if (log_type == SYSTEM_LOG_TYPE.as_bytes()) != system
                    || payloads.is_empty()
                    || log_type.len() > MAX_LOG_TYPE_BYTES
                {
                    return self.answer(
                        reply,
                        Answer::Replication(ReplicationResult::refused(Status::InvalidRequest)),
                    );
                }
                if let Err(status) = self.check_size(&log_type, &payloads) {
                    return self.answer(reply, Answer::Replication(ReplicationResult::refused(status)));
                }
                let ticket = self.hlc.now(self.wall_ms);
                let kind = if system {
                    ProposalKind::System
                } else if auto_commit {
                    ProposalKind::AutoCommit
                } else {
                    ProposalKind::TwoStep
                };
                let proposal = Proposal { kind, log_type, payloads, ticket };
                self.submit(partition, Proposing::Entries(proposal), reply, deadline);
            }
            Op::Marker { partition, ticket, commit } => {
                self.submit(partition, Proposing::Marker { ticket, commit }, reply, deadline);
            }
            Op::Checkpoint { partition } => {
                let ticket = self.hlc.now(self.wall_ms);
                self.submit(partition, Proposing::Checkpoint(ticket), reply, deadline);
            }
            Op::ReadBarrier { partition } => self.start_read(partition, ReadKind::Barrier, reply, deadline),
            Op::Query { partition, query } => {
                self.start_read(partition, ReadKind::Query(query), reply, deadline)
            }
            Op::Control { partition, op } => {
                let r = self.multi.update(partition, |g| match op {
                    ControlOp::StepDown => g.step_down(),
                    ControlOp::Transfer(target) => g.transfer_leadership(target),
                    ControlOp::SuspendHeartbeats => g.suspend_heartbeats(),
                    ControlOp::ResumeHeartbeats => g.resume_heartbeats(),
                });
                self.answer(reply, Answer::Control(r.unwrap_or(Err(Status::InvalidRequest))));
            }
            Op::FollowerLag { partition, follower } => {
                let lag = self.multi.group(partition).and_then(|g| g.follower_lag(follower));
                self.answer(reply, Answer::Lag(lag));
            }
            Op::Status => {
                let out = self.groups_by_id().map(partition_status).collect();
                self.answer(reply, Answer::Status(out));
            }
            Op::Stats => {
                let stats = self.stats();
                self.answer(reply, Answer::Stats(Some(Box::new(stats))));
            }
            Op::WaitLeader { partition, timeout_ms } => {
                match self.multi.group(partition).and_then(|g| g.leader()) {
                    Some(l) => self.answer(reply, Answer::Leader(Ok(l))),
                    None => {
                        let deadline = self.now + Duration::from_millis(timeout_ms);
                        self.leader_waiters.push(LeaderWaiter {
                            awaited: Awaited::Leader(partition),
                            deadline,
                            reply,
                        });
                    }
                }
            }
            Op::WaitRoster { after_version, timeout_ms } => {
                if self.directory.roster.version > after_version {
                    self.answer(reply, Answer::Roster(Box::new(self.directory.roster.clone())));
                } else {
                    let deadline = self.now + Duration::from_millis(timeout_ms);
                    let awaited = Awaited::RosterAfter(after_version);
                    self.leader_waiters.push(LeaderWaiter { awaited, deadline, reply });
                }
            }
        }
    }

    /// The door's size check (issue 11): every entry within the caller's limit and within
    /// what one log write holds, and the request's entries together within one write and one
    /// peer frame too (`limits.rs`), so no client input can build a write the store refuses
    /// or a forwarded request the transport drops. (Several requests' entries
    /// may still fill a turn beyond one write: the writer splits those.)
    fn check_size(&self, log_type: &[u8], payloads: &[Bytes]) -> Result<(), Status> {
        let envelope = log_type.len() + LOG_ENTRY_ENVELOPE_BYTES;
        let per_entry_max =
            self.cfg.max_entry_bytes.min(self.limits.entry_bytes_max.saturating_sub(envelope));
        let mut total = 0usize;
        for p in payloads {
            if p.len() > per_entry_max {
                return Err(Status::TooLarge);
            }
            total += p.len() + envelope + ENTRY_RECORD_OVERHEAD_BYTES as usize;
        }
        if total > self.limits.request_bytes_max { Err(Status::TooLarge) } else { Ok(()) }
    }

    pub(super) fn track_proposal(
        &mut self,
        partition: PartitionId,
        ticket: Ticket,
        outcome: Option<Result<Proposed, Status>>,
        reply: R,
        deadline: Instant,
    ) {
        match outcome {
            Some(Ok(at)) => {
                let w = ProposalWaiter { term: at.term, ticket, reply };
                self.waiters.add_proposal(partition, at.last_index, w, deadline);
            }
            Some(Err(status)) => {
                let refused = ReplicationResult { status, ticket, log_index: 0, response: Bytes::new() };
                self.answer(reply, Answer::Replication(refused));
            }
            None => {
                self.answer(reply, Answer::Replication(ReplicationResult::refused(Status::InvalidRequest)))
            }
        }
    }

    fn start_read(&mut self, partition: PartitionId, kind: ReadKind, reply: R, deadline: Instant) {
        let id = self.waiters.add_read(partition, kind, reply, deadline);
        match self.multi.update(partition, |g| g.read_index(id)) {
            Some(Ok(())) => {}
            Some(Err(status)) => self.waiters.read_failed(id, status),
            None => self.waiters.read_failed(id, Status::InvalidRequest),
        }
    }

    /// Answers callers waiting for a leader (the leader once known, `ProposalTimeout` at
    /// their deadline) or for a roster change (the roster once past their version, the
    /// roster as it is at their deadline).
    pub(super) fn check_leader_waiters(&mut self, now: Instant) {
        if self.leader_waiters.is_empty() {
            return;
        }
        let mut keep = Vec::with_capacity(self.leader_waiters.len());
        for w in std::mem::take(&mut self.leader_waiters) {
            match w.awaited {
                Awaited::Leader(p) => match self.multi.group(p).and_then(|g| g.leader()) {
                    Some(l) => self.answer(w.reply, Answer::Leader(Ok(l))),
                    None if w.deadline <= now => {
                        self.answer(w.reply, Answer::Leader(Err(Status::ProposalTimeout)))
                    }
                    None => keep.push(w),
                },
                Awaited::RosterAfter(v)
                    if self.directory.roster.version > v
                        || self.swim.as_ref().and_then(|s| s.unlisted_at()).is_some_and(|u| u > v)
                        || w.deadline <= now =>
                {
                    self.answer(w.reply, Answer::Roster(Box::new(self.directory.roster.clone())));
                }
                Awaited::RosterAfter(_) => keep.push(w),
            }
        }
        self.leader_waiters = keep;
    }

    /// Fails every caller waiting for a leader of `p` (`None`: of any partition; those waiting
    /// for the roster then get it as it is).
    pub(super) fn fail_leader_waiters(&mut self, p: Option<PartitionId>, status: Status) {
        for w in std::mem::take(&mut self.leader_waiters) {
            match w.awaited {
                Awaited::Leader(q) if p.is_none_or(|p| p == q) => {
                    self.answer(w.reply, Answer::Leader(Err(status)));
                }
                Awaited::RosterAfter(_) if p.is_none() => {
                    self.answer(w.reply, Answer::Roster(Box::new(self.directory.roster.clone())));
                }
                _ => self.leader_waiters.push(w),
            }
        }
    }
}

/// One partition's state as this node sees it.
fn partition_status(g: &RaftGroup) -> PartitionStatus {
    PartitionStatus {
        id: g.group_id(),
        leader: g.leader(),
        term: g.term(),
        commit_index: g.log().committed(),
        applied_index: g.log().applied(),
        last_index: g.log().last_index(),
        is_leader: g.is_leader(),
        membership: g.membership().clone(),
        follower_lags: if g.is_leader() {
            g.membership()
                .members()
                .filter(|m| *m != g.id())
                .filter_map(|m| Some((m, g.follower_lag(m)?)))
                .collect()
        } else {
            Vec::new()
        },
    }
}

impl<R> ShardCore<R> {
    /// The shard's groups, by partition id.
    fn groups_by_id(&self) -> impl Iterator<Item = &RaftGroup> {
        let mut ids: Vec<PartitionId> = self.multi.group_ids().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|p| self.multi.group(p))
    }

    /// What the core counts, for `Op::Stats` (the driver fills in the rest: inbox depth,
    /// transport, store, write latencies).
    pub fn stats(&self) -> ShardStats {
        let partitions: Vec<PartitionStats> = self
            .groups_by_id()
            .map(|g| PartitionStats { status: partition_status(g), raft: g.stats().clone() })
            .collect();
        ShardStats { shard: self.id, partitions, core: self.core_stats(), ..ShardStats::default() }
    }

    /// The core's counters and depths alone (no walk over the partitions' state).
    pub fn core_stats(&self) -> CoreStats {
        let unknown = self.multi.unknown_group_messages();
        CoreStats {
            leaders: self
                .multi
                .group_ids()
                .filter(|p| self.multi.group(*p).is_some_and(RaftGroup::is_leader))
                .count(),
            quiesced: self.multi.quiesced_groups(),
            unknown_group_messages: unknown,
            // The core counts every refusal; the unknown groups' are in both counts.
            messages_refused: self.counters.messages_refused.saturating_sub(unknown),
            writes_in_flight: self.writes_in_flight,
            waiting_callers: self.waiters.len() + self.leader_waiters.len() + self.held.len(),
            ..self.counters
        }
    }
}
