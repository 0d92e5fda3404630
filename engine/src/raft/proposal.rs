//! The leader's write API: proposals (auto-commit, two-step, system), commit and rollback
//! markers, checkpoints, membership changes, and the leadership controls (transfer, step
//! down, heartbeat suspension).

use phalanx_proto::{ConfChange, EntryKind, LogEntry, Message, TimeoutNow, raft_message::Body};

use super::group::{RaftGroup, Transfer};
use super::membership::apply_change;
use super::replication::IfEmpty;
use super::status::Status;
use super::types::{LEADER_CHECKPOINT, NodeId, Proposal, ProposalKind, Proposed, Role};
use crate::hlc::{Ticket, ticket_of};

impl RaftGroup {
    /// Appends a proposal's entries (one per payload) and starts replicating them. The
    /// proposal succeeds when the entry at `last_index` is committed with the returned term.
    pub fn propose(&mut self, p: Proposal) -> Result<Proposed, Status> {
        if p.payloads.is_empty() {
            return Err(Status::InvalidRequest);
        }
        let kind = match p.kind {
            ProposalKind::AutoCommit => EntryKind::Normal,
            ProposalKind::TwoStep => EntryKind::Proposed,
            // `_RaftSystem` entries belong to the system partition (group 0) only.
            ProposalKind::System if self.group != 0 => return Err(Status::InvalidRequest),
            ProposalKind::System => EntryKind::System,
        };
        self.check_can_propose(p.payloads.len())?;
        let bytes = p.bytes();
        // Like etcd's MaxUncommittedEntriesSize: a leader whose followers cannot keep up
        // holds back new proposals instead of its memory growing with them; one proposal
        // always passes an empty tail, so no single proposal is refused forever.
        if self.log.uncommitted_bytes() > 0
            && self.log.uncommitted_bytes() + bytes > self.cfg.max_uncommitted_bytes
        {
            return Err(Status::Busy);
        }
        let ticket = Some(p.ticket.into());
        let first = self.log.last_index() + 1;
        // One buffer shared by every entry of the proposal (and every copy of them).
        let log_type = p.log_type;
        let entries: Vec<LogEntry> = p
            .payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| LogEntry {
                term: self.term,
                index: first + i as u64,
                kind: kind as i32,
                log_type: log_type.clone(),
                payload,
                ticket,
            })
            .collect();
        Ok(self.append_proposal(entries))
    }

    /// Proposes on the leader, or passes the proposal to the leader this node knows (fire and
    /// forget). Returns where it landed when this node leads, `None` when it was forwarded;
    /// `NodeIsNotLeader` when no leader is known. Nobody waits on it, so a repeated system
    /// command may land on its earlier copy (see [`Self::propose_unanswered`]).
    pub fn propose_or_forward(&mut self, p: Proposal) -> Result<Option<Proposed>, Status> {
        if self.role == Role::Leader {
            return self.propose_unanswered(p).map(Some);
        }
        let Some(leader) = self.leader else { return Err(Status::NodeIsNotLeader) };
        if p.payloads.is_empty() {
            return Err(Status::InvalidRequest);
        }
        let kind = match p.kind {
            ProposalKind::AutoCommit => EntryKind::Normal,
            ProposalKind::TwoStep => EntryKind::Proposed,
            ProposalKind::System => EntryKind::System,
        };
        let f = phalanx_proto::ForwardedProposal {
            term: self.term,
            kind: kind as i32,
            log_type: p.log_type,
            payloads: p.payloads,
            ticket: Some(p.ticket.into()),
        };
        self.send(leader, Body::ForwardedProposal(Box::new(f)));
        Ok(None)
    }

    /// A follower passed us a proposal: propose it if we lead (and it is well formed).
    pub(super) fn handle_forwarded_proposal(
        &mut self,
        f: phalanx_proto::ForwardedProposal,
    ) -> Result<(), Status> {
        let kind = match EntryKind::try_from(f.kind) {
            Ok(EntryKind::Normal) => ProposalKind::AutoCommit,
            Ok(EntryKind::Proposed) => ProposalKind::TwoStep,
            Ok(EntryKind::System) => ProposalKind::System,
            _ => return self.reject(Status::InvalidRequest),
        };
        let Some(ticket) = f.ticket else { return self.reject(Status::InvalidRequest) };
        if self.role != Role::Leader {
            // Leadership moved on while it travelled: the proposer will retry.
            return Err(Status::NodeIsNotLeader);
        }
        let ticket: Ticket = ticket.into();
        // The network may deliver a forward twice; a ticket identifies one proposal, so the
        // copy is dropped (within the window of recent forwards this leader remembers).
        if !self.recent_forwards.get_or_insert_with(Box::default).insert(ticket) {
            return Ok(());
        }
        let p = Proposal { kind, log_type: f.log_type, payloads: f.payloads, ticket };
        self.propose_unanswered(p).map(|_| ())
    }

    /// Proposes what nobody waits on (its proposer learns the outcome by seeing it applied):
    /// a system command identical to the last system entry of the uncommitted tail is not
    /// appended again, and lands on that copy.
    ///
    /// The system partition's proposers repeat their commands every membership round until
    /// they see them applied (`shard/membership.rs`, `shard/system_duties.rs`). A proposer
    /// lagging behind partition 0's log sees nothing applied, and while the commit waited on
    /// that very replica, its copies of one report filled the leader's uncommitted window and
    /// the clients' writes were refused (simulator seeds 15877, 18214, 21641).
    ///
    /// Only the *last* system entry: every system command applied twice in a row does what it
    /// did once (an announcement again, a roster change against the version it moved, a
    /// progress report already recorded), and the non-system entries between do not touch the
    /// system state. With another system command after the copy, a repeat is appended: one
    /// node's announcements A1, A2, A1 end at A1, which A1, A2 does not. A committed copy is
    /// not looked at either: its proposer sees it soon, and the scan stays in the tail
    /// (`Config::max_uncommitted_entries` bounds it).
    fn propose_unanswered(&mut self, p: Proposal) -> Result<Proposed, Status> {
        // Both callers lead (`propose` checks again).
        if p.kind == ProposalKind::System
            && let [payload] = p.payloads.as_slice()
        {
            let tail = self.log.committed() + 1..=self.log.last_index();
            let last_system =
                tail.rev().map_while(|i| self.log.entry(i)).find(|e| e.kind == EntryKind::System as i32);
            if let Some(e) = last_system
                && e.payload == *payload
                && e.log_type == p.log_type
            {
                return Ok(Proposed { term: e.term, first_index: e.index, last_index: e.index });
            }
        }
        self.propose(p)
    }

    /// Proposes the commit marker of a two-step proposal: once it commits, the proposal's
    /// entries are delivered to the state machine. `ProposalNotFound` if no two-step proposal
    /// with `ticket` is known (committed and unresolved, or still in flight).
    pub fn commit_logs(&mut self, ticket: Ticket) -> Result<Proposed, Status> {
        self.propose_marker(ticket, EntryKind::CommitMarker)
    }

    /// Proposes the rollback marker of a two-step proposal: its entries are never delivered.
    pub fn rollback_logs(&mut self, ticket: Ticket) -> Result<Proposed, Status> {
        self.propose_marker(ticket, EntryKind::RollbackMarker)
    }

    fn propose_marker(&mut self, ticket: Ticket, kind: EntryKind) -> Result<Proposed, Status> {
        self.check_can_propose(1)?;
        if !self.two_step.is_pending(&ticket) && !self.has_unapplied_two_step(ticket) {
            return Err(Status::ProposalNotFound);
        }
        Ok(self.append_one(kind, ticket, bytes::Bytes::new()))
    }

    /// Whether a two-step entry with `ticket` is in the log but not yet handed for applying.
    fn has_unapplied_two_step(&self, ticket: Ticket) -> bool {
        let from = self.log.apply_handed() + 1;
        (from..=self.log.last_index()).any(|i| {
            self.log.entry(i).is_some_and(|e| e.kind == EntryKind::Proposed as i32 && ticket_of(e) == ticket)
        })
    }

    /// Proposes a checkpoint: once applied, entries below it may be compacted.
    pub fn propose_checkpoint(&mut self, ticket: Ticket) -> Result<Proposed, Status> {
        self.check_can_propose(1)?;
        Ok(self.append_one(EntryKind::Checkpoint, ticket, bytes::Bytes::new()))
    }

    /// Proposes a checkpoint only its proposer compacts behind ([`LEADER_CHECKPOINT`]): the
    /// leader needs a snapshot to send a new member, its followers need nothing.
    pub fn propose_leader_checkpoint(&mut self, ticket: Ticket) -> Result<Proposed, Status> {
        self.check_can_propose(1)?;
        Ok(self.append_one(EntryKind::Checkpoint, ticket, bytes::Bytes::from_static(LEADER_CHECKPOINT)))
    }

    /// Proposes a single-server membership change. Refused with `ActiveProposal` while the
    /// previous change is uncommitted or before the leader committed an entry of its term,
    /// `InsufficientVoters` if no voter would remain, `InvalidRequest` if it changes nothing.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<Proposed, Status> {
        self.check_can_propose(1)?;
        if self.log.term(self.log.committed()) != Some(self.term) {
            return Err(Status::ActiveProposal);
        }
        if self.conf.last_change_index() > self.log.committed() {
            return Err(Status::ActiveProposal);
        }
        apply_change(self.conf.current(), &cc)?;
        let payload = cc.encode_to_vec().into();
        Ok(self.append_one(EntryKind::ConfChange, Ticket::default(), payload))
    }

    fn append_one(&mut self, kind: EntryKind, ticket: Ticket, payload: bytes::Bytes) -> Proposed {
        let e = LogEntry {
            term: self.term,
            index: self.log.last_index() + 1,
            kind: kind as i32,
            log_type: bytes::Bytes::new(),
            payload,
            ticket: (!ticket.is_zero()).then(|| ticket.into()),
        };
        self.append_proposal(vec![e])
    }

    fn append_proposal(&mut self, entries: Vec<LogEntry>) -> Proposed {
        self.note_activity();
        let first_index = entries[0].index;
        let last_index = first_index + entries.len() as u64 - 1;
        self.append_entries(entries);
        Proposed { term: self.term, first_index, last_index }
    }

    fn check_can_propose(&self, n: usize) -> Result<(), Status> {
        if self.role != Role::Leader {
            return Err(Status::NodeIsNotLeader);
        }
        if self.transfer.is_some() {
            // Entries appended now could be lost to the new leader's log; refuse briefly.
            return Err(Status::Busy);
        }
        let uncommitted = (self.log.last_index() - self.log.committed()) as usize;
        if uncommitted + n > self.cfg.max_uncommitted_entries {
            return Err(Status::Busy);
        }
        Ok(())
    }

    /// Starts handing leadership to `target` (§3.10): once its log is caught up it receives
    /// TimeoutNow and campaigns at once. Proposals are refused (`Busy`) until the transfer
    /// completes or times out: an election timeout after it started, or after the target was
    /// first sent TimeoutNow if that is later (`send_timeout_now`).
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), Status> {
        if self.role != Role::Leader {
            return Err(Status::NodeIsNotLeader);
        }
        if target == self.cfg.id {
            return Ok(());
        }
        if !self.conf.current().voters.contains(&target) {
            return Err(Status::InvalidRequest);
        }
        if self.progress.get(&target).is_some_and(|p| p.recovering) {
            // It lost durable state and will not campaign until it caught up: a transfer
            // would only hold proposals back until it timed out.
            return Err(Status::Busy);
        }
        if let Some(t) = self.transfer.as_deref() {
            if t.target == target {
                return Ok(());
            }
            return Err(Status::ActiveProposal);
        }
        self.note_activity();
        let deadline = self.now + self.cfg.election_ticks_min;
        self.transfer = Some(Box::new(Transfer { target, deadline, handed: false }));
        let caught_up = self.progress.get(&target).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(target);
        } else {
            self.send_appends(target, IfEmpty::Send);
        }
        Ok(())
    }

    /// Gives up leadership: hands it to the most up-to-date voter if one is caught up, and
    /// becomes a follower at once either way.
    pub fn step_down(&mut self) -> Result<(), Status> {
        if self.role != Role::Leader {
            return Err(Status::NodeIsNotLeader);
        }
        let last = self.log.last_index();
        let voters = self.voters();
        let best = self
            .progress
            .iter()
            .filter(|(id, p)| voters.contains(id) && p.matched == last)
            .map(|(id, _)| *id)
            .next();
        if let Some(to) = best {
            self.send(to, Body::TimeoutNow(TimeoutNow { term: self.term }));
        }
        let term = self.term;
        self.become_follower(term, None);
        Ok(())
    }

    /// Stops the leader's periodic heartbeats for this group (followers will time out and
    /// elect someone else unless heartbeats resume). Appends still flow.
    pub fn suspend_heartbeats(&mut self) -> Result<(), Status> {
        if self.role != Role::Leader {
            return Err(Status::NodeIsNotLeader);
        }
        self.heartbeats_suspended = true;
        Ok(())
    }

    /// Resumes periodic heartbeats.
    pub fn resume_heartbeats(&mut self) -> Result<(), Status> {
        if self.role != Role::Leader {
            return Err(Status::NodeIsNotLeader);
        }
        self.heartbeats_suspended = false;
        self.heartbeat_deadline = self.now;
        Ok(())
    }

    /// Starts an election now (PreVote first when enabled), as if the election timer fired.
    /// Used to bootstrap a group quickly and by tests.
    pub fn campaign(&mut self) {
        self.hup(false);
    }
}
