//! Callers waiting on a shard: proposals waiting for their last entry to be applied, and
//! reads waiting for a read index and then for the state machine to catch up with it.
//!
//! Every request has the same timeout, so deadlines arrive in insertion order: one FIFO of
//! (deadline, key) per kind expires them in O(expired) with lazy deletion, instead of
//! scanning every waiter each tick. Entries of completed requests leave the front of their
//! FIFO as expiry passes them, so a FIFO holds about the requests in flight, not every
//! request of the last timeout.
//!
//! Answers are queued in [`Waiters::answers`] and the driver sends them together at the end
//! of the loop turn: each send wakes the caller's thread, and a wake that finds it still
//! awake from the previous one is nearly free, while wakes spread over the turn each found
//! it parked again (measured: 6% of an embedded run's CPU went to those wake-ups).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::request::{Answer, ReplicationResult};
use crate::hlc::Ticket;
use crate::id_hash::IdHashMap;
use crate::raft::Status;
use crate::state_machine::PartitionId;

/// A proposal waiting for its last entry.
pub(crate) struct ProposalWaiter<R> {
    pub term: u64,
    pub ticket: Ticket,
    pub reply: R,
}

/// What a read does once its index is applied.
pub(crate) enum ReadKind {
    /// Answers the read index.
    Barrier,
    /// Answers the state machine's answer to the query.
    Query(Bytes),
}

impl ReadKind {
    fn refusal(&self, status: Status) -> Answer {
        match self {
            ReadKind::Barrier => Answer::ReadIndex(Err(status)),
            ReadKind::Query(_) => Answer::Query(Err(status)),
        }
    }
}

/// A read whose index is applied: serve it with [`ServableRead::kind`] and answer `reply`.
pub(crate) struct ServableRead<R> {
    /// Its read index.
    pub index: u64,
    pub kind: ReadKind,
    pub reply: R,
}

/// A read whose index is known, waiting for it to be applied.
struct ApplyingRead<R> {
    id: u64,
    kind: ReadKind,
    reply: R,
}

struct PendingRead<R> {
    partition: PartitionId,
    kind: ReadKind,
    reply: R,
}

/// Everything callers wait for on one shard.
pub(crate) struct Waiters<R> {
    /// Per partition, by the index of the proposal's last entry, ascending. Proposals are
    /// added and their entries applied in log order, so both ends of one short contiguous
    /// queue do nearly all the work. (A map keyed by partition and index scattered thousands
    /// of waiters over memory: a cache miss per applied entry, half of `process_readies`
    /// with 4,096 clients in flight.)
    proposals: IdHashMap<PartitionId, VecDeque<(u64, ProposalWaiter<R>)>>,
    proposal_deadlines: VecDeque<(Instant, PartitionId, u64, Ticket)>,
    /// Reads asked of the Raft core, by request id.
    reads: IdHashMap<u64, PendingRead<R>>,
    read_deadlines: VecDeque<(Instant, u64)>,
    /// Reads whose index is known, per partition, by index: served once applied.
    applying: IdHashMap<PartitionId, BTreeMap<u64, Vec<ApplyingRead<R>>>>,
    /// Where each read in `applying` is, so expiry finds it directly.
    applying_at: IdHashMap<u64, (PartitionId, u64)>,
    next_read_id: u64,
    /// Answers decided since the driver last took them (every answer of the shard, not only
    /// its waiters': one queue keeps them in the order they were decided).
    pub answers: Vec<(R, Answer)>,
}

/// Read ids of one incarnation of a shard start at its start time (ms since the epoch)
/// shifted left by this many bits: a follower matches the leader's answer to a forwarded read
/// by its id, and an answer addressed to an earlier incarnation (sent before a crash,
/// delivered after the restart) must not match a read of this one. Ids stay unique while a
/// shard issues fewer than 2^16 reads per millisecond it has been up (65 million per
/// second); 2^41 ms since the epoch shifted by 16 stays far below 2^64.
const READ_ID_START_SHIFT: u32 = 16;

impl<R> Waiters<R> {
    /// Waiters of a shard started at `wall_ms` (ms since the Unix epoch).
    pub(crate) fn new(wall_ms: u64) -> Self {
        Waiters {
            proposals: IdHashMap::default(),
            proposal_deadlines: VecDeque::new(),
            reads: IdHashMap::default(),
            read_deadlines: VecDeque::new(),
            applying: IdHashMap::default(),
            applying_at: IdHashMap::default(),
            next_read_id: wall_ms << READ_ID_START_SHIFT,
            answers: Vec::new(),
        }
    }

    /// Callers waiting: proposals and reads.
    pub(crate) fn len(&self) -> usize {
        self.proposals.values().map(VecDeque::len).sum::<usize>() + self.reads.len() + self.applying_at.len()
    }

    pub(crate) fn add_proposal(
        &mut self,
        partition: PartitionId,
        last_index: u64,
        w: ProposalWaiter<R>,
        deadline: Instant,
    ) {
        self.proposal_deadlines.push_back((deadline, partition, last_index, w.ticket));
        let q = self.proposals.entry(partition).or_default();
        if q.back().is_none_or(|(i, _)| *i < last_index) {
            q.push_back((last_index, w));
            return;
        }
        // Below the newest: a new leader term reusing indexes this node proposed before.
        match q.binary_search_by_key(&last_index, |(i, _)| *i) {
            Ok(at) => {
                // The index was reused: the old proposal's entry was overwritten.
                let old = std::mem::replace(&mut q[at].1, w);
                self.answers.push((old.reply, fail(Status::ReplicationFailed, old.ticket, 0)));
            }
            Err(at) => q.insert(at, (last_index, w)),
        }
    }

    /// Where the waiter for `index` is in queue `q`.
    fn position(q: &VecDeque<(u64, ProposalWaiter<R>)>, index: u64) -> Option<usize> {
        // Applied in log order: almost always the oldest.
        match q.front() {
            Some((i, _)) if *i == index => Some(0),
            _ => q.binary_search_by_key(&index, |(i, _)| *i).ok(),
        }
    }

    /// The waiter for `index` of `partition`.
    fn proposal(&self, partition: PartitionId, index: u64) -> Option<&ProposalWaiter<R>> {
        let q = self.proposals.get(&partition)?;
        q.get(Self::position(q, index)?).map(|(_, w)| w)
    }

    /// Removes the waiter for `index` of `partition`, and the partition's queue once empty
    /// (a shard of 100,000 partitions keeps no queue for those nobody waits on).
    fn remove_proposal(&mut self, partition: PartitionId, index: u64) -> Option<ProposalWaiter<R>> {
        let q = self.proposals.get_mut(&partition)?;
        let (_, w) = q.remove(Self::position(q, index)?)?;
        if q.is_empty() {
            self.proposals.remove(&partition);
        }
        Some(w)
    }

    /// Whether someone waits for the entry at `index`.
    pub(crate) fn wants(&self, partition: PartitionId, index: u64) -> bool {
        self.proposal(partition, index).is_some()
    }

    /// The entry at `index` with `term` was applied: complete its proposal, if any.
    /// Returns the failure status when the proposal was overwritten by another leader.
    pub(crate) fn on_applied(
        &mut self,
        partition: PartitionId,
        index: u64,
        term: u64,
        response: Bytes,
    ) -> Option<Status> {
        let w = self.remove_proposal(partition, index)?;
        if w.term == term {
            let done =
                ReplicationResult { status: Status::Success, ticket: w.ticket, log_index: index, response };
            self.answers.push((w.reply, Answer::Replication(done)));
            None
        } else {
            self.answers.push((w.reply, fail(Status::ReplicationFailed, w.ticket, index)));
            Some(Status::ReplicationFailed)
        }
    }

    /// A new read id for the Raft core.
    pub(crate) fn add_read(
        &mut self,
        partition: PartitionId,
        kind: ReadKind,
        reply: R,
        deadline: Instant,
    ) -> u64 {
        self.next_read_id += 1;
        let id = self.next_read_id;
        self.reads.insert(id, PendingRead { partition, kind, reply });
        self.read_deadlines.push_back((deadline, id));
        id
    }

    /// The read `id` failed before it got an index.
    pub(crate) fn read_failed(&mut self, id: u64, status: Status) {
        if let Some(r) = self.reads.remove(&id) {
            self.answers.push((r.reply, r.kind.refusal(status)));
        }
    }

    /// The read `id` must wait until `index` is applied. Returns its partition.
    pub(crate) fn read_index_known(&mut self, id: u64, index: u64) -> Option<PartitionId> {
        let r = self.reads.remove(&id)?;
        self.applying.entry(r.partition).or_default().entry(index).or_default().push(ApplyingRead {
            id,
            kind: r.kind,
            reply: r.reply,
        });
        self.applying_at.insert(id, (r.partition, index));
        Some(r.partition)
    }

    /// Reads of `partition` whose index is at most `applied`: ready to serve.
    pub(crate) fn take_servable(&mut self, partition: PartitionId, applied: u64) -> Vec<ServableRead<R>> {
        let Some(m) = self.applying.get_mut(&partition) else { return Vec::new() };
        let rest = m.split_off(&(applied + 1));
        let ready = std::mem::replace(m, rest);
        if m.is_empty() {
            self.applying.remove(&partition);
        }
        let mut out = Vec::new();
        for (index, reads) in ready {
            for ApplyingRead { id, kind, reply } in reads {
                self.applying_at.remove(&id);
                out.push(ServableRead { index, kind, reply });
            }
        }
        out
    }

    /// Partitions with reads waiting to be served.
    pub(crate) fn partitions_with_reads(&self) -> Vec<PartitionId> {
        self.applying.keys().copied().collect()
    }

    /// Fails every request whose deadline passed with `ProposalTimeout`, and drops the
    /// entries of completed requests from the front of the deadline FIFOs.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(d, p, i, ticket)) = self.proposal_deadlines.front() {
            // Lazy deletion: the waiter may be gone (completed) or replaced by a newer one.
            let live = self.proposal(p, i).is_some_and(|w| w.ticket == ticket);
            if live && d > now {
                break;
            }
            self.proposal_deadlines.pop_front();
            if live && let Some(w) = self.remove_proposal(p, i) {
                self.answers.push((w.reply, fail(Status::ProposalTimeout, w.ticket, i)));
            }
        }
        while let Some(&(d, id)) = self.read_deadlines.front() {
            let live = self.reads.contains_key(&id) || self.applying_at.contains_key(&id);
            if live && d > now {
                break;
            }
            self.read_deadlines.pop_front();
            if let Some(r) = self.reads.remove(&id) {
                self.answers.push((r.reply, r.kind.refusal(Status::ProposalTimeout)));
                continue;
            }
            let Some((p, index)) = self.applying_at.remove(&id) else { continue };
            if let Some(m) = self.applying.get_mut(&p) {
                if let Some(reads) = m.get_mut(&index)
                    && let Some(pos) = reads.iter().position(|r| r.id == id)
                {
                    let ApplyingRead { kind, reply, .. } = reads.swap_remove(pos);
                    self.answers.push((reply, kind.refusal(Status::ProposalTimeout)));
                    if reads.is_empty() {
                        m.remove(&index);
                    }
                }
                if m.is_empty() {
                    self.applying.remove(&p);
                }
            }
        }
    }

    /// Fails every proposal and read of partition `p` (it stops on this node).
    pub(crate) fn fail_partition(&mut self, p: PartitionId, status: Status) {
        for (i, w) in self.proposals.remove(&p).unwrap_or_default() {
            self.answers.push((w.reply, fail(status, w.ticket, i)));
        }
        let mut reads: Vec<u64> =
            self.reads.iter().filter(|(_, r)| r.partition == p).map(|(id, _)| *id).collect();
        reads.sort_unstable();
        for id in reads {
            self.read_failed(id, status);
        }
        if let Some(m) = self.applying.remove(&p) {
            for (_, v) in m {
                for ApplyingRead { id, kind, reply } in v {
                    self.applying_at.remove(&id);
                    self.answers.push((reply, kind.refusal(status)));
                }
            }
        }
        // Their deadline entries go lazily (nothing live matches them any more).
    }

    /// Fails everything (the shard stops).
    pub(crate) fn fail_all(&mut self, status: Status) {
        let mut proposals: Vec<_> = self.proposals.drain().collect();
        proposals.sort_unstable_by_key(|(p, _)| *p);
        for (i, w) in proposals.into_iter().flat_map(|(_, q)| q) {
            self.answers.push((w.reply, fail(status, w.ticket, i)));
        }
        let mut reads: Vec<_> = self.reads.drain().collect();
        reads.sort_unstable_by_key(|(id, _)| *id);
        for (_, r) in reads {
            self.answers.push((r.reply, r.kind.refusal(status)));
        }
        let mut applying: Vec<_> = self.applying.drain().collect();
        applying.sort_unstable_by_key(|(p, _)| *p);
        for (_, m) in applying {
            for (_, v) in m {
                for ApplyingRead { kind, reply, .. } in v {
                    self.answers.push((reply, kind.refusal(status)));
                }
            }
        }
        self.proposal_deadlines.clear();
        self.read_deadlines.clear();
        self.applying_at.clear();
    }
}

fn fail(status: Status, ticket: Ticket, log_index: u64) -> Answer {
    Answer::Replication(ReplicationResult { status, ticket, log_index, response: Bytes::new() })
}
