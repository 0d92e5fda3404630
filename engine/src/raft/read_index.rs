//! Linearizable reads without writing to the log: ReadIndex (§6.4). The leader records its
//! commit index, confirms it is still leader with a heartbeat round acknowledged by a quorum,
//! and answers with that index; the caller serves the read once it has applied it. A new
//! leader first commits an entry of its term, so its commit index covers every entry
//! committed before it took over.

use std::collections::{BTreeMap, VecDeque};

use phalanx_proto::{ReadIndexRequest, ReadIndexResponse, raft_message::Body};

use super::group::RaftGroup;
use super::quorum::committed_value;
use super::status::Status;
use super::types::{NodeId, ReadState, Role};

/// Who asked for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requester {
    /// The local shell, with its request id.
    Local(u64),
    /// A follower, with the id it chose.
    Remote(NodeId, u64),
}

#[derive(Clone, Debug)]
struct PendingRead {
    /// Heartbeat context that must be acknowledged by a quorum.
    seq: u64,
    /// Commit index at registration: the read point.
    index: u64,
    who: Requester,
}

/// ReadIndex bookkeeping for one group.
#[derive(Clone, Debug, Default)]
pub struct ReadIndexState {
    /// Leader: last heartbeat context issued in this term.
    ctx_seq: u64,
    /// Leader: whether an entry of this term is committed yet.
    committed_in_term: bool,
    /// Leader: a heartbeat round must go out for newly registered reads.
    needs_broadcast: bool,
    /// The reads in flight; boxed and present only while there are some (`shrink` drops
    /// the empty box of a quiescing group): 104 of every idle replica's bytes otherwise.
    q: Option<Box<ReadQueues>>,
}

/// The reads a group holds.
#[derive(Clone, Debug, Default)]
struct ReadQueues {
    /// Leader: reads waiting for a quorum of acknowledgements.
    pending: VecDeque<PendingRead>,
    /// Leader: reads that arrived before the first commit of the term.
    waiting: VecDeque<Requester>,
    /// Follower: request ids forwarded to the leader and not answered yet, with the tick at
    /// which each gives up (the request or its answer may be lost) and the node asked.
    forwarded: BTreeMap<u64, (u64, NodeId)>,
    /// Answers for the local shell, handed out in the next Ready.
    out: Vec<ReadState>,
}

impl ReadQueues {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.waiting.is_empty() && self.forwarded.is_empty() && self.out.is_empty()
    }
}

impl ReadIndexState {
    /// The heartbeat context to send now.
    pub(super) fn current_ctx(&self) -> u64 {
        self.ctx_seq
    }

    pub(super) fn on_become_leader(&mut self) {
        self.ctx_seq = 0;
        self.committed_in_term = false;
        self.needs_broadcast = false;
    }

    pub(super) fn on_commit_in_term(&mut self) {
        self.committed_in_term = true;
    }

    /// Whether a heartbeat round is owed to pending reads.
    pub(super) fn needs_broadcast(&self) -> bool {
        self.needs_broadcast
    }

    /// The queues, created on first use.
    fn q(&mut self) -> &mut ReadQueues {
        self.q.get_or_insert_with(Box::default)
    }

    fn queued(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.pending.len() + q.waiting.len())
    }

    fn forwarded(&self) -> Option<&BTreeMap<u64, (u64, NodeId)>> {
        self.q.as_ref().map(|q| &q.forwarded)
    }

    /// Whether no read is pending, waiting or owed a broadcast (a group may quiesce).
    pub(super) fn is_idle(&self) -> bool {
        !self.needs_broadcast && self.q.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Gives back the queues' memory (a quiescing group, `quiesce.rs`): all of it when no
    /// read is in flight, else their spare capacity.
    pub(super) fn shrink(&mut self) {
        if self.q.as_ref().is_some_and(|q| q.is_empty()) {
            self.q = None;
        } else if let Some(q) = self.q.as_mut() {
            q.pending.shrink_to_fit();
            q.waiting.shrink_to_fit();
            q.out.shrink_to_fit();
        }
    }

    /// Whether answers wait for the shell.
    pub(super) fn has_answers(&self) -> bool {
        self.q.as_ref().is_some_and(|q| !q.out.is_empty())
    }

    /// The answers for the shell (handed out in a Ready).
    pub(super) fn take_answers(&mut self) -> Vec<ReadState> {
        self.q.as_mut().map(|q| std::mem::take(&mut q.out)).unwrap_or_default()
    }
}

impl RaftGroup {
    /// Asks for a linearizable read point. The answer arrives as a `ReadState` with
    /// `request_id` in a later Ready: the index to wait for, or why the read failed. A
    /// follower forwards the request to its leader.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), Status> {
        if self.role == Role::Leader {
            return self.leader_read(Requester::Local(request_id));
        }
        let Some(leader) = self.leader else { return Err(Status::NodeIsNotLeader) };
        if self.reads.forwarded().map_or(0, BTreeMap::len) >= self.cfg.max_pending_reads {
            return Err(Status::Busy);
        }
        self.reads.q().forwarded.insert(request_id, (self.now + self.cfg.election_ticks_min, leader));
        self.send(leader, Body::ReadIndexRequest(ReadIndexRequest { term: self.term, request_id }));
        Ok(())
    }

    fn leader_read(&mut self, who: Requester) -> Result<(), Status> {
        if self.reads.queued() >= self.cfg.max_pending_reads {
            return Err(Status::Busy);
        }
        // A read is activity: a quiesced leader wakes, and its heartbeat round confirms the
        // read (a quorum must answer in this term, quiesced or not).
        self.note_activity();
        if !self.reads.committed_in_term {
            self.reads.q().waiting.push_back(who);
            return Ok(());
        }
        self.register_read(who);
        Ok(())
    }

    fn register_read(&mut self, who: Requester) {
        self.reads.ctx_seq += 1;
        let seq = self.reads.ctx_seq;
        let index = self.log.committed();
        self.reads.q().pending.push_back(PendingRead { seq, index, who });
        // Reads registered in one turn share one heartbeat round, sent when the Ready is
        // built.
        self.reads.needs_broadcast = true;
        // A single voter confirms itself.
        self.release_confirmed_reads();
    }

    /// Sends the heartbeat round owed to newly registered reads.
    pub(super) fn flush_read_broadcast(&mut self) {
        if self.reads.needs_broadcast {
            self.reads.needs_broadcast = false;
            if self.role == Role::Leader && self.reads.q.as_ref().is_some_and(|q| !q.pending.is_empty()) {
                self.bcast_heartbeat();
            }
        }
    }

    /// Leader: after the first commit of the term, reads that waited for it can start.
    pub(super) fn release_waiting_reads(&mut self) {
        while let Some(who) = self.reads.q.as_mut().and_then(|q| q.waiting.pop_front()) {
            self.register_read(who);
        }
    }

    /// Leader: answers every read whose heartbeat context a quorum has acknowledged.
    pub(super) fn release_confirmed_reads(&mut self) {
        if self.reads.q.as_ref().is_none_or(|q| q.pending.is_empty()) {
            return;
        }
        let me = self.cfg.id;
        let acked = committed_value(&self.conf.current().voters, |v| {
            if v == me { u64::MAX } else { self.progress.get(&v).map_or(0, |p| p.read_ack) }
        });
        while let Some(q) = self.reads.q.as_mut()
            && q.pending.front().is_some_and(|r| r.seq <= acked)
        {
            let Some(r) = q.pending.pop_front() else { break };
            self.answer_read(r.who, Ok(r.index));
        }
    }

    fn answer_read(&mut self, who: Requester, result: Result<u64, Status>) {
        match who {
            Requester::Local(request_id) => self.reads.q().out.push(ReadState { request_id, result }),
            Requester::Remote(to, request_id) => {
                let resp = ReadIndexResponse {
                    term: self.term,
                    request_id,
                    read_index: *result.as_ref().unwrap_or(&0),
                    ok: result.is_ok(),
                };
                self.send(to, Body::ReadIndexResponse(resp));
            }
        }
    }

    /// Leader stepping down: every read it holds fails so callers retry elsewhere.
    pub(super) fn fail_leader_reads(&mut self) {
        let mut all: Vec<Requester> = Vec::new();
        if let Some(q) = self.reads.q.as_mut() {
            all.extend(q.pending.drain(..).map(|r| r.who));
            all.extend(q.waiting.drain(..));
        }
        self.reads.needs_broadcast = false;
        for who in all {
            self.answer_read(who, Err(Status::NodeIsNotLeader));
        }
    }

    /// Follower whose term changed: reads forwarded to the old leader may never be answered;
    /// fail them so callers retry.
    pub(super) fn fail_forwarded_reads(&mut self) {
        if let Some(q) = self.reads.q.as_mut() {
            for request_id in std::mem::take(&mut q.forwarded).into_keys() {
                q.out.push(ReadState { request_id, result: Err(Status::NodeIsNotLeader) });
            }
        }
    }

    /// Follower: a forwarded read unanswered after an election timeout was lost on the way
    /// (request or answer). Fail it so the caller retries: otherwise, with a stable leader
    /// (no term change), its slot in the bounded queue would be held forever.
    pub(super) fn expire_forwarded_reads(&mut self) {
        let now = self.now;
        let Some(q) = self.reads.q.as_mut() else { return };
        let expired: Vec<u64> =
            q.forwarded.iter().filter(|&(_, &(deadline, _))| deadline <= now).map(|(&id, _)| id).collect();
        for request_id in expired {
            q.forwarded.remove(&request_id);
            q.out.push(ReadState { request_id, result: Err(Status::ProposalTimeout) });
        }
    }

    /// The earliest tick at which a forwarded read gives up (`u64::MAX`: none pending).
    pub(super) fn forwarded_reads_deadline(&self) -> u64 {
        self.reads
            .forwarded()
            .and_then(|f| f.values().map(|(deadline, _)| *deadline).min())
            .unwrap_or(u64::MAX)
    }

    /// The shell's failure detector says `node` is unreachable: reads forwarded to it fail
    /// now (`NodeIsNotLeader`, so callers retry) instead of at their timeout.
    pub fn peer_unreachable(&mut self, node: NodeId) {
        let Some(q) = self.reads.q.as_mut() else { return };
        let lost: Vec<u64> =
            q.forwarded.iter().filter(|(_, (_, asked))| *asked == node).map(|(id, _)| *id).collect();
        for request_id in lost {
            q.forwarded.remove(&request_id);
            q.out.push(ReadState { request_id, result: Err(Status::NodeIsNotLeader) });
        }
    }

    pub(super) fn handle_read_index_request(&mut self, from: NodeId, request_id: u64) {
        let who = Requester::Remote(from, request_id);
        let outcome =
            if self.role == Role::Leader { self.leader_read(who) } else { Err(Status::NodeIsNotLeader) };
        if let Err(e) = outcome {
            self.answer_read(who, Err(e));
        }
    }

    pub(super) fn handle_read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        // Only the node we asked may answer: anyone else naming our request id is confused
        // or hostile, and its index proves nothing.
        let Some(q) = self.reads.q.as_mut() else { return };
        if q.forwarded.get(&resp.request_id).is_some_and(|(_, asked)| *asked == from) {
            q.forwarded.remove(&resp.request_id);
            let result = if resp.ok { Ok(resp.read_index) } else { Err(Status::NodeIsNotLeader) };
            q.out.push(ReadState { request_id: resp.request_id, result });
        }
    }
}
