//! Proposals held while their partition's leadership is being handed over.
//!
//! A leader that transfers its leadership (the balancer, a leaving member, an operator)
//! refuses proposals until the transfer ends (`RaftGroup::transfer_leadership`): entries it
//! appended then would most likely be overwritten by the new leader's log. Passed straight to
//! the caller, that refusal was `Busy`, which says "overloaded, back off" about a node that
//! was only handing over; every cluster start showed a few (the balancer moves leaderships to
//! their preferred nodes right after the first elections).
//!
//! So the shard holds such proposals, in arrival order, and proposes them when the transfer
//! ends: here, if the transfer gave up and this node still leads; otherwise they are answered
//! `NodeIsNotLeader`, never having been appended, and the client retries at the new leader,
//! which the answer names. (A leader hands over by stepping down at its successor's vote
//! request, before it knows who won: so they wait for the new leader's first message too.)
//! A proposal arriving while others of its partition are held waits behind them, so a
//! partition's proposals keep their order. A transfer ends within two election timeouts (the
//! group gives up then), and a partition holds proposals at most
//! [`HOLD_MAX_ELECTION_TIMEOUTS`] election timeouts; a held proposal past its caller's
//! deadline is answered `ProposalTimeout`, also never appended.
//!
//! What one partition holds is bounded by what its leader accepts uncommitted
//! (`raft.max_uncommitted_entries` and `raft.max_uncommitted_bytes`): released at once, more
//! would be refused `Busy` anyway, so more is refused `Busy` at the door.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::ShardCore;
use super::request::{Answer, ReplicationResult};
use crate::hlc::Ticket;
use crate::raft::{Proposal, Proposed, RaftGroup, Status};
use crate::state_machine::PartitionId;

/// Longest a partition holds proposals, in (longest) election timeouts: the transfer ends
/// within two (one to catch its target up, one for the target's campaign after the first
/// TimeoutNow: `RaftGroup::transfer_leadership`), and the winner of the election it started
/// announces itself within the next. Past it, they are proposed or refused even if no leader
/// is known.
const HOLD_MAX_ELECTION_TIMEOUTS: u32 = 3;

/// A proposal on its way into a group's log.
pub(super) enum Proposing {
    /// Entries (one proposal, one ticket).
    Entries(Proposal),
    /// A two-step proposal's commit (`commit`) or rollback marker.
    Marker {
        /// The two-step proposal's ticket.
        ticket: Ticket,
        /// Commit rather than roll back.
        commit: bool,
    },
    /// A checkpoint, with its ticket.
    Checkpoint(Ticket),
}

impl Proposing {
    /// The ticket its caller is answered with.
    pub(super) fn ticket(&self) -> Ticket {
        match self {
            Proposing::Entries(p) => p.ticket,
            Proposing::Marker { ticket, .. } | Proposing::Checkpoint(ticket) => *ticket,
        }
    }

    /// Entries it appends.
    fn entries(&self) -> usize {
        match self {
            Proposing::Entries(p) => p.payloads.len(),
            Proposing::Marker { .. } | Proposing::Checkpoint(_) => 1,
        }
    }

    /// Bytes it appends, counted as the leader counts its uncommitted tail.
    fn bytes(&self) -> u64 {
        match self {
            Proposing::Entries(p) => p.bytes(),
            Proposing::Marker { .. } | Proposing::Checkpoint(_) => 0,
        }
    }

    /// Appends it to `g`'s log (the group refuses what its leader cannot take).
    fn propose(self, g: &mut RaftGroup) -> Result<Proposed, Status> {
        match self {
            Proposing::Entries(p) => g.propose(p),
            Proposing::Marker { ticket, commit: true } => g.commit_logs(ticket),
            Proposing::Marker { ticket, commit: false } => g.rollback_logs(ticket),
            Proposing::Checkpoint(ticket) => g.propose_checkpoint(ticket),
        }
    }
}

/// One held proposal and its caller.
struct HeldProposal<R> {
    proposing: Proposing,
    reply: R,
    deadline: Instant,
}

/// One partition's held proposals, in arrival order, and what they add up to.
struct Queue<R> {
    items: VecDeque<HeldProposal<R>>,
    /// When the partition started holding.
    since: Instant,
    entries: usize,
    bytes: u64,
}

/// Every partition's held proposals (empty but for the moments of a transfer).
pub(super) struct Held<R> {
    by_partition: BTreeMap<PartitionId, Queue<R>>,
}

impl<R> Default for Held<R> {
    fn default() -> Self {
        Held { by_partition: BTreeMap::new() }
    }
}

impl<R> Held<R> {
    /// Callers waiting here.
    pub(super) fn len(&self) -> usize {
        self.by_partition.values().map(|q| q.items.len()).sum()
    }
}

impl<R> ShardCore<R> {
    /// Proposes `proposing` to `partition`'s group, or holds it while the group hands its
    /// leadership over (or others of the partition are held); answers the caller when refused.
    pub(super) fn submit(
        &mut self,
        partition: PartitionId,
        proposing: Proposing,
        reply: R,
        deadline: Instant,
    ) {
        let transferring = self.multi.group(partition).is_some_and(|g| g.transferring_to().is_some());
        if !transferring && !self.held.by_partition.contains_key(&partition) {
            let ticket = proposing.ticket();
            let outcome = self.multi.update(partition, |g| proposing.propose(g));
            return self.track_proposal(partition, ticket, outcome, reply, deadline);
        }
        let (entries_max, bytes_max) =
            (self.cfg.raft.max_uncommitted_entries, self.cfg.raft.max_uncommitted_bytes);
        let since = self.now;
        let q = self.held.by_partition.entry(partition).or_insert_with(|| Queue {
            items: VecDeque::new(),
            since,
            entries: 0,
            bytes: 0,
        });
        let (entries, bytes) = (proposing.entries(), proposing.bytes());
        // Like the leader's own limit: one proposal always passes an empty queue.
        if !q.items.is_empty() && (q.entries + entries > entries_max || q.bytes + bytes > bytes_max) {
            let ticket = proposing.ticket();
            return self.refuse(reply, ticket, Status::Busy);
        }
        q.entries += entries;
        q.bytes += bytes;
        q.items.push_back(HeldProposal { proposing, reply, deadline });
        self.counters.proposals_held += 1;
    }

    /// Step 3's start: proposes what partitions whose transfer ended hold — here if this node
    /// still leads, else it is refused `NodeIsNotLeader` (nothing was appended) once the new
    /// leader is known.
    pub(super) fn release_held(&mut self) {
        if self.held.by_partition.is_empty() {
            return;
        }
        let hold_max = self
            .tick
            .saturating_mul(u32::try_from(self.cfg.raft.election_ticks_max).unwrap_or(u32::MAX))
            .saturating_mul(HOLD_MAX_ELECTION_TIMEOUTS);
        let now = self.now;
        let ended: Vec<PartitionId> = self
            .held
            .by_partition
            .iter()
            .filter(|(p, q)| {
                self.multi.group(**p).is_none_or(|g| {
                    g.transferring_to().is_none() && (g.is_leader() || g.leader().is_some())
                        || now.saturating_duration_since(q.since) >= hold_max
                })
            })
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let Some(q) = self.held.by_partition.remove(&p) else { continue };
            for h in q.items {
                let ticket = h.proposing.ticket();
                match self.multi.update(p, |g| h.proposing.propose(g)) {
                    // The partition left this node while they waited.
                    None => self.refuse(h.reply, ticket, Status::NodeIsNotLeader),
                    outcome => self.track_proposal(p, ticket, outcome, h.reply, h.deadline),
                }
            }
        }
    }

    /// Answers `ProposalTimeout` to held callers whose deadline passed (never appended).
    pub(super) fn expire_held(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for q in self.held.by_partition.values_mut() {
            if q.items.iter().all(|h| h.deadline > now) {
                continue;
            }
            for h in std::mem::take(&mut q.items) {
                if h.deadline > now {
                    q.items.push_back(h);
                } else {
                    q.entries -= h.proposing.entries();
                    q.bytes -= h.proposing.bytes();
                    expired.push(h);
                }
            }
        }
        self.held.by_partition.retain(|_, q| !q.items.is_empty());
        for h in expired {
            self.refuse(h.reply, h.proposing.ticket(), Status::ProposalTimeout);
        }
    }

    /// Answers `status` to every held caller of `p` (`None`: of every partition).
    pub(super) fn fail_held(&mut self, p: Option<PartitionId>, status: Status) {
        let parts: Vec<PartitionId> =
            self.held.by_partition.keys().copied().filter(|q| p.is_none_or(|p| p == *q)).collect();
        for q in parts {
            let Some(queue) = self.held.by_partition.remove(&q) else { continue };
            for h in queue.items {
                self.refuse(h.reply, h.proposing.ticket(), status);
            }
        }
    }

    fn refuse(&mut self, reply: R, ticket: Ticket, status: Status) {
        let refused = ReplicationResult { status, ticket, log_index: 0, response: Bytes::new() };
        self.waiters.answers.push((reply, Answer::Replication(refused)));
    }
}
