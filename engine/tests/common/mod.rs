//! Shared harness for the Raft core conformance tests.
//!
//! A [`Cluster`] holds a few `RaftGroup`s of one group, each with a simulated durable store,
//! a state machine (the payloads delivered to it) and a hand-driven network (a FIFO queue of
//! messages with cuttable links). Nothing happens unless a test makes it happen: time moves
//! only on `tick*`, messages move only on `deliver*` / `stabilize`, so every scenario is
//! deterministic and can be driven step by step, as the paper's figures are.
//!
//! Processing a node follows the `Ready` contract: send `messages` at once, persist
//! (snapshot, entries, hard state, compaction) into the node's [`Store`], then send
//! `persisted_messages`, apply `deliveries`, and `advance`.

#![allow(dead_code)] // Each test crate uses a different part of the harness.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use phalanx::hlc::Ticket;
use phalanx::raft::{
    Config, LogFetch, Membership, MultiRaft, MultiReady, NodeId, Proposal, ProposalKind, Proposed, RaftGroup,
    ReadState, Ready, RestoreState, Role, Snapshot, Status,
};
use phalanx_proto::{
    AppendEntriesRequest, ConfChange, ConfChangeType, EntryKind, HardState, LogEntry, RaftMessage,
    raft_message::Body,
};

/// The group every harness cluster runs.
pub const GROUP: u64 = 1;
/// The fixed seed of every harness node (mixed with the node id by the core).
pub const SEED: u64 = 0x5EED;
/// Upper bound on processing rounds in `stabilize`: a test that needs more is livelocked.
const MAX_ROUNDS: usize = 10_000;

/// A default configuration for node `id` of the harness group, with a fixed seed.
#[must_use]
pub fn config(id: NodeId) -> Config {
    let mut c = Config::new(id, GROUP);
    c.seed = SEED;
    // Keep every entry in memory so tests can inspect whole logs; `raft_replication.rs`
    // covers the trimmed cache and reading entries back from storage.
    c.log_cache_entries = usize::MAX;
    c
}

/// Plain Raft as the paper's §5 describes it: no PreVote, no CheckQuorum lease, so
/// `campaign()` starts a real election at once and votes are granted on the log rule alone.
pub fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

/// Leaves the configuration as it is (defaults: PreVote and CheckQuorum on).
pub fn defaults(_: &mut Config) {}

/// A log entry for hand-built logs and messages.
#[must_use]
pub fn entry(index: u64, term: u64) -> LogEntry {
    LogEntry { index, term, kind: EntryKind::Normal as i32, ..Default::default() }
}

/// Entries `1..=terms.len()` with the given terms (a log as drawn in the paper's figures).
#[must_use]
pub fn log_of_terms(terms: &[u64]) -> Vec<LogEntry> {
    terms.iter().enumerate().map(|(i, &t)| entry(i as u64 + 1, t)).collect()
}

/// The terms of a node's in-memory log, in index order.
#[must_use]
pub fn terms(r: &RaftGroup) -> Vec<u64> {
    r.log().entries().map(|e| e.term).collect()
}

/// A ticket that is unique per `n`.
#[must_use]
pub fn ticket(n: u64) -> Ticket {
    Ticket { physical_ms: 1_000 + n, logical: 0, node_id: 1 }
}

/// An auto-commit proposal of one payload.
#[must_use]
pub fn proposal(payload: &str) -> Proposal {
    proposal_n(ProposalKind::AutoCommit, &[payload], 0)
}

/// A proposal of `kind` with one entry per payload and ticket `ticket(t)`.
#[must_use]
pub fn proposal_n(kind: ProposalKind, payloads: &[&str], t: u64) -> Proposal {
    Proposal {
        kind,
        log_type: "test".into(),
        payloads: payloads.iter().map(|p| Bytes::copy_from_slice(p.as_bytes())).collect(),
        ticket: ticket(t),
    }
}

/// A membership change.
#[must_use]
pub fn conf_change(change: ConfChangeType, node_id: NodeId) -> ConfChange {
    ConfChange { change: change as i32, node_id }
}

/// A message for `group`, `from` → `to`.
#[must_use]
pub fn msg(from: NodeId, to: NodeId, body: Body) -> RaftMessage {
    RaftMessage { group: GROUP, from, to, body: Some(body) }
}

/// An append request (for hand-crafted peer input).
#[must_use]
pub fn append(term: u64, prev: (u64, u64), entries: Vec<LogEntry>, commit: u64) -> Body {
    Body::AppendRequest(AppendEntriesRequest {
        term,
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        entries,
        leader_commit: commit,
        commit_only: false,
    })
}

/// A short name of a message body, for assertions and failure output.
#[must_use]
pub fn kind(m: &RaftMessage) -> &'static str {
    match m.body.as_ref() {
        Some(Body::VoteRequest(r)) if r.pre_vote => "PreVote",
        Some(Body::VoteRequest(_)) => "Vote",
        Some(Body::VoteResponse(r)) if r.pre_vote => "PreVoteResp",
        Some(Body::VoteResponse(_)) => "VoteResp",
        Some(Body::AppendRequest(_)) => "Append",
        Some(Body::AppendResponse(_)) => "AppendResp",
        Some(Body::Heartbeat(_)) => "Heartbeat",
        Some(Body::HeartbeatResponse(_)) => "HeartbeatResp",
        Some(Body::Snapshot(_)) => "Snapshot",
        Some(Body::SnapshotResponse(_)) => "SnapshotResp",
        Some(Body::TimeoutNow(_)) => "TimeoutNow",
        Some(Body::ReadIndexRequest(_)) => "ReadIndex",
        Some(Body::ReadIndexResponse(_)) => "ReadIndexResp",
        Some(Body::ForwardedProposal(_)) => "Forward",
        Some(Body::RecoveryProbe(_)) => "RecoveryProbe",
        Some(Body::RecoveryProbeResponse(_)) => "RecoveryProbeResp",
        Some(Body::Gossip(_)) => "Gossip",
        None => "Empty",
    }
}

/// Encodes a state machine image (the list of delivered payloads) as snapshot data.
#[must_use]
pub fn encode_image(payloads: &[Bytes]) -> Bytes {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out.into()
}

/// Decodes snapshot data written by [`encode_image`].
#[must_use]
pub fn decode_image(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        out.push(Bytes::copy_from_slice(&data[4..4 + n]));
        data = &data[4 + n..];
    }
    out
}

/// A node's simulated durable storage: what survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Store {
    /// Persisted term, vote, commit.
    pub hard_state: HardState,
    /// Last discarded (index, term).
    pub floor: (u64, u64),
    /// Entries after the floor, contiguous.
    pub entries: Vec<LogEntry>,
    /// The latest durable snapshot.
    pub snapshot: Option<Snapshot>,
}

impl Store {
    /// Persists what a Ready asks for, in the order `Ready` documents.
    pub fn persist(&mut self, rd: &Ready) {
        if let Some(s) = &rd.snapshot {
            let (i, t) = (s.meta.index, s.meta.term);
            let keep = self.entries.iter().position(|e| e.index == i && e.term == t);
            match keep {
                Some(p) => {
                    self.entries.drain(..=p);
                }
                None => self.entries.clear(),
            }
            self.floor = (i, t);
            self.snapshot = Some(s.clone());
        }
        if let Some(first) = rd.entries.first() {
            let from = first.index;
            assert!(from > self.floor.0, "Ready asks to store entry {from} at or below the floor");
            let keep = (from - self.floor.0 - 1) as usize;
            assert!(keep <= self.entries.len(), "Ready leaves a gap in the stored log at {from}");
            self.entries.truncate(keep);
            for (k, e) in rd.entries.iter().enumerate() {
                assert_eq!(e.index, from + k as u64, "Ready entries are not contiguous");
            }
            self.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            self.hard_state = hs;
        }
        if let Some(c) = rd.compact_to
            && c > self.floor.0
        {
            let n = (c - self.floor.0) as usize;
            let term = self.entries[n - 1].term;
            self.entries.drain(..n);
            self.floor = (c, term);
        }
    }

    /// Stored entries `lo..hi`.
    #[must_use]
    pub fn read(&self, lo: u64, hi: u64) -> Vec<LogEntry> {
        self.entries.iter().filter(|e| e.index >= lo && e.index < hi).cloned().collect()
    }

    /// What a restarting node recovers.
    #[must_use]
    pub fn restore(&self, initial: &Membership) -> RestoreState {
        RestoreState {
            hard_state: self.hard_state,
            floor: self.floor,
            entries: self.entries.clone(),
            snapshot: self.snapshot.clone(),
            initial_membership: initial.clone(),
        }
    }

    /// The last stored index.
    #[must_use]
    pub fn last_index(&self) -> u64 {
        self.floor.0 + self.entries.len() as u64
    }
}

/// One simulated node.
pub struct Node {
    /// The core under test.
    pub raft: RaftGroup,
    /// Its configuration (kept for restarts).
    pub cfg: Config,
    /// The bootstrap membership (kept for restarts).
    pub initial: Membership,
    /// Durable state.
    pub store: Store,
    /// The state machine: payloads delivered, in order (rebuilt from a snapshot on install
    /// or restart).
    pub sm: Vec<Bytes>,
    /// Every delivery since the last (re)start, whole entries.
    pub deliveries: Vec<LogEntry>,
    /// Every committed entry this node ever reported, by index: (term, kind).
    pub committed: BTreeMap<u64, (u64, i32)>,
    /// Answers to `read_index`.
    pub read_states: Vec<ReadState>,
    /// Every Ready this node produced (for tests that inspect them).
    pub readies: Vec<Ready>,
    /// Highest commit index seen in a Ready's hard state (checked monotonic).
    pub max_commit: u64,
}

/// A cluster of nodes of one group, with a hand-driven network.
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, oldest first.
    pub net: VecDeque<RaftMessage>,
    /// Directed links that drop every message (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Crashed nodes: they produce nothing and messages to them are dropped.
    pub down: BTreeSet<NodeId>,
    /// Every message delivered (stepped into its target), in order.
    pub trace: Vec<RaftMessage>,
    /// Results of stepping delivered messages that were errors, with the message kind.
    pub step_errors: Vec<(NodeId, &'static str, Status)>,
    /// When set, `process` keeps the fetches it would answer in `held_fetches` (for tests of
    /// what may happen between a fetch and its answer).
    pub hold_fetches: bool,
    /// Fetches held back, with the node that asked.
    pub held_fetches: Vec<(NodeId, LogFetch)>,
}

impl Cluster {
    /// A cluster of `voters`, all voters, configured by `tweak` on top of [`config`].
    pub fn new(voters: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        Self::with_membership(Membership::with_voters(voters.iter().copied()), &[], tweak)
    }

    /// A cluster whose bootstrap membership is `m`; nodes are every member plus `extra`
    /// (nodes that start outside the group, to be added later).
    pub fn with_membership(m: Membership, extra: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        let mut nodes = BTreeMap::new();
        let ids: Vec<NodeId> = m.members().chain(extra.iter().copied()).collect();
        for id in ids {
            let mut cfg = config(id);
            tweak(&mut cfg);
            let restore = RestoreState { initial_membership: m.clone(), ..Default::default() };
            let raft = RaftGroup::new(cfg.clone(), restore).expect("valid bootstrap");
            nodes.insert(id, Node::new(raft, cfg, m.clone(), Store::default()));
        }
        Cluster {
            nodes,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            trace: Vec::new(),
            step_errors: Vec::new(),
            hold_fetches: false,
            held_fetches: Vec::new(),
        }
    }

    /// A cluster with no nodes yet (add them with [`Cluster::add_restored`]).
    #[must_use]
    pub fn empty() -> Self {
        Self::with_membership(Membership::default(), &[], defaults)
    }

    /// Adds node `id` restarted with `log` in `term` (no vote, commit 0), of a group of
    /// `voters`.
    pub fn add_with_log(
        &mut self,
        id: NodeId,
        voters: &[NodeId],
        term: u64,
        log: Vec<LogEntry>,
        tweak: impl Fn(&mut Config),
    ) {
        let mut cfg = config(id);
        tweak(&mut cfg);
        let restore = RestoreState {
            hard_state: HardState { term, vote: 0, commit: 0, recovering: false },
            entries: log,
            initial_membership: Membership::with_voters(voters.iter().copied()),
            ..Default::default()
        };
        self.add_restored(cfg, restore);
    }

    /// Append rejections (`success == false`) delivered from `from`, i.e. backtracking rounds.
    #[must_use]
    pub fn rejections_from(&self, from: NodeId) -> usize {
        self.trace
            .iter()
            .filter(|m| m.from == from && matches!(&m.body, Some(Body::AppendResponse(r)) if !r.success))
            .count()
    }

    /// Adds a node built from an explicit restore state (e.g. a hand-made log).
    pub fn add_restored(&mut self, cfg: Config, restore: RestoreState) {
        let store = Store {
            hard_state: restore.hard_state,
            floor: restore.floor,
            entries: restore.entries.clone(),
            snapshot: None,
        };
        let initial = restore.initial_membership.clone();
        let raft = RaftGroup::new(cfg.clone(), restore).expect("valid restore state");
        let id = cfg.id;
        self.nodes.insert(id, Node::new(raft, cfg, initial, store));
    }

    /// The core of node `id`.
    pub fn raft(&self, id: NodeId) -> &RaftGroup {
        &self.nodes[&id].raft
    }

    /// The core of node `id`, mutably (to propose, tick, campaign...).
    pub fn raft_mut(&mut self, id: NodeId) -> &mut RaftGroup {
        &mut self.nodes.get_mut(&id).expect("known node").raft
    }

    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    /// Ids of every node.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of every node that is up.
    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().filter(|id| !self.down.contains(id)).collect()
    }

    /// Handles node `id`'s Ready, if any: send, persist, send persisted, apply, advance.
    /// Returns the Ready handled.
    pub fn process(&mut self, id: NodeId) -> Option<Ready> {
        if self.down.contains(&id) {
            return None;
        }
        let rd = self.nodes.get_mut(&id).expect("known node").raft.ready()?;
        self.net.extend(rd.messages.iter().cloned());
        let n = self.nodes.get_mut(&id).expect("known node");
        n.persist_and_apply(&rd);
        self.net.extend(rd.persisted_messages.iter().cloned());
        n.raft.advance(rd.number);
        // Entries the leader dropped from memory, read back from the durable store.
        for f in &rd.fetches {
            if self.hold_fetches {
                self.held_fetches.push((id, *f));
                continue;
            }
            let entries = n.store.read(f.lo, f.hi);
            n.raft.on_entries_fetched(f.to, f.lo, entries);
        }
        n.readies.push(rd.clone());
        Some(rd)
    }

    /// Takes node `id`'s Ready and persists it, but neither sends its messages nor calls
    /// `advance` (for tests of the persistence ordering).
    pub fn take_ready(&mut self, id: NodeId) -> Option<Ready> {
        let n = self.nodes.get_mut(&id).expect("known node");
        let rd = n.raft.ready()?;
        n.persist_and_apply(&rd);
        n.readies.push(rd.clone());
        Some(rd)
    }

    /// Processes every up node once. Returns whether any had a Ready.
    pub fn process_all(&mut self) -> bool {
        let mut any = false;
        for id in self.up_ids() {
            any |= self.process(id).is_some();
        }
        any
    }

    /// Whether a message may travel now.
    fn passes(&self, m: &RaftMessage) -> bool {
        !self.down.contains(&m.from) && !self.down.contains(&m.to) && !self.cut.contains(&(m.from, m.to))
    }

    /// Steps one message into its target (or drops it if its link is cut or an end is down).
    pub fn deliver(&mut self, m: RaftMessage) {
        if !self.passes(&m) {
            return;
        }
        let to = m.to;
        let k = kind(&m);
        self.trace.push(m.clone());
        if let Some(n) = self.nodes.get_mut(&to)
            && let Err(e) = n.raft.step(m)
        {
            self.step_errors.push((to, k, e));
        }
    }

    /// Delivers every message queued now (not those they cause). Returns how many were queued.
    pub fn deliver_queued(&mut self) -> usize {
        let batch: Vec<RaftMessage> = self.net.drain(..).collect();
        let n = batch.len();
        for m in batch {
            self.deliver(m);
        }
        n
    }

    /// Removes and returns the queued messages matching `pred`, keeping the others queued.
    pub fn take_msgs(&mut self, pred: impl Fn(&RaftMessage) -> bool) -> Vec<RaftMessage> {
        let (hit, keep): (Vec<_>, Vec<_>) = self.net.drain(..).partition(|m| pred(m));
        self.net = keep.into();
        hit
    }

    /// Whether `m` is an append that its target would accept and that would store an entry at
    /// `index` or beyond (to drop exactly the appends that would make progress past a point).
    #[must_use]
    pub fn would_store(&self, m: &RaftMessage, index: u64) -> bool {
        match &m.body {
            Some(Body::AppendRequest(a)) => {
                a.entries.iter().any(|e| e.index >= index)
                    && self
                        .nodes
                        .get(&m.to)
                        .is_some_and(|n| n.raft.log().match_term(a.prev_log_index, a.prev_log_term))
            }
            _ => false,
        }
    }

    /// Drops every queued message.
    pub fn clear_net(&mut self) {
        self.net.clear();
    }

    /// Processes and delivers until nothing is left to do. Panics when it does not settle.
    pub fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let any = self.process_all();
            if !any && self.net.is_empty() {
                self.check_safety();
                return;
            }
            self.deliver_queued();
        }
        panic!("cluster did not settle within {MAX_ROUNDS} rounds");
    }

    /// Advances every up node's clock by one tick, then stabilizes.
    pub fn tick_all(&mut self) {
        for id in self.up_ids() {
            self.raft_mut(id).tick();
        }
        self.stabilize();
    }

    /// Advances node `id`'s clock by `n` ticks without processing anything.
    pub fn tick_node(&mut self, id: NodeId, n: u64) {
        let r = self.raft_mut(id);
        let to = r.now() + n;
        r.tick_to(to);
    }

    /// `n` times [`Cluster::tick_all`].
    pub fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick_all();
        }
    }

    /// Node `id` campaigns now; the cluster then settles.
    pub fn campaign(&mut self, id: NodeId) {
        self.raft_mut(id).campaign();
        self.stabilize();
    }

    /// Node `id` campaigns and must win.
    pub fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        assert!(self.raft(id).is_leader(), "node {id} did not win: {:?}", self.raft(id).soft_state());
    }

    /// Node `id` campaigns (again, up to `attempts` times, each in a new term) until it wins;
    /// messages are exchanged only until the win, so the new leader's first appends are
    /// still unsent when this returns. Returns whether it won.
    pub fn campaign_settle(&mut self, id: NodeId, attempts: usize) -> bool {
        for _ in 0..attempts {
            self.raft_mut(id).campaign();
            for _ in 0..20 {
                if self.raft(id).is_leader() {
                    return true;
                }
                if !self.process_all() && self.net.is_empty() {
                    break;
                }
                self.deliver_queued();
            }
            if self.raft(id).is_leader() {
                return true;
            }
        }
        false
    }

    /// The leader with the highest term among up nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.up_ids()
            .into_iter()
            .filter(|&id| self.raft(id).is_leader())
            .max_by_key(|&id| self.raft(id).term())
    }

    /// Proposes one auto-commit payload on `id`.
    pub fn propose(&mut self, id: NodeId, payload: &str) -> Result<Proposed, Status> {
        self.raft_mut(id).propose(proposal(payload))
    }

    /// Cuts both directions between `id` and every other node.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_pair(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id`: it loses everything not in its store; messages to it are dropped.
    pub fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
    }

    /// Restarts a crashed node from its store.
    pub fn restart(&mut self, id: NodeId) {
        self.down.remove(&id);
        let n = self.nodes.get_mut(&id).expect("known node");
        let restore = n.store.restore(&n.initial);
        let raft = RaftGroup::new(n.cfg.clone(), restore).expect("restart from store");
        n.sm = Vec::new();
        if let Some(s) = &n.store.snapshot {
            n.sm = decode_image(&s.data);
        }
        n.raft = raft;
        n.deliveries.clear();
    }

    /// Restarts `id` with its disk wiped (a replaced disk): an empty store whose replica the
    /// shell marks recovering, as the runtime does for a group with no stored state.
    pub fn wipe(&mut self, id: NodeId) {
        self.crash(id);
        let n = self.nodes.get_mut(&id).expect("known node");
        n.store = Store::default();
        n.store.hard_state.recovering = true;
        n.committed.clear();
        n.max_commit = 0;
        self.restart(id);
    }

    /// Restarts `id` with the last `k` stored entries lost (a damaged WAL tail) and its vote
    /// forgotten, marked recovering as the runtime marks the partitions of a dropped tail.
    pub fn cut_tail(&mut self, id: NodeId, k: usize) {
        self.crash(id);
        let n = self.nodes.get_mut(&id).expect("known node");
        let keep = n.store.entries.len().saturating_sub(k);
        n.store.entries.truncate(keep);
        let last = n.store.last_index();
        n.store.hard_state.commit = n.store.hard_state.commit.min(last);
        n.store.hard_state.vote = 0;
        n.store.hard_state.recovering = true;
        n.max_commit = n.max_commit.min(last);
        self.restart(id);
    }

    /// Takes a snapshot of `id`'s state machine and compacts (the shell's side of
    /// `RaftGroup::compact`). Returns the new floor.
    pub fn compact(&mut self, id: NodeId) -> Result<u64, Status> {
        let n = self.nodes.get_mut(&id).expect("known node");
        let data = encode_image(&n.sm);
        let floor = n.raft.compact(data.clone())?;
        let meta = n.raft.snapshot_meta().expect("compact stores a snapshot").clone();
        // The snapshot must be durable before the next Ready's compact_to is applied.
        n.store.snapshot = Some(Snapshot { meta, data });
        Ok(floor)
    }

    /// Committed entries agree across nodes (State Machine Safety, §5.4.3), and each node's
    /// in-memory log holds its committed prefix with the same terms.
    pub fn check_safety(&self) {
        let mut seen: BTreeMap<u64, (u64, NodeId)> = BTreeMap::new();
        for (&id, n) in &self.nodes {
            for (&i, &(t, _)) in &n.committed {
                match seen.get(&i) {
                    Some(&(t2, other)) => assert_eq!(
                        t, t2,
                        "State Machine Safety violated at index {i}: node {id} committed term {t}, node {other} term {t2}"
                    ),
                    None => {
                        seen.insert(i, (t, id));
                    }
                }
            }
        }
    }

    /// Asserts that every up node holds the same log as `id`: same last index and term, and
    /// the same term at every index both still hold (their compaction floors may differ).
    pub fn assert_logs_match(&self, id: NodeId) {
        let want = self.raft(id).log();
        for other in self.up_ids() {
            let got = self.raft(other).log();
            assert_eq!(
                (got.last_index(), got.last_term()),
                (want.last_index(), want.last_term()),
                "last entry of node {other} differs from node {id}: {:?} vs {:?}",
                terms(self.raft(other)),
                terms(self.raft(id)),
            );
            let from = got.first_index().max(want.first_index());
            for i in from..=want.last_index() {
                assert_eq!(got.term(i), want.term(i), "term at index {i}: node {other} vs node {id}");
            }
        }
    }
}

impl Node {
    fn new(raft: RaftGroup, cfg: Config, initial: Membership, store: Store) -> Self {
        Node {
            raft,
            cfg,
            initial,
            store,
            sm: Vec::new(),
            deliveries: Vec::new(),
            committed: BTreeMap::new(),
            read_states: Vec::new(),
            readies: Vec::new(),
            max_commit: 0,
        }
    }

    fn persist_and_apply(&mut self, rd: &Ready) {
        self.store.persist(rd);
        if let Some(hs) = rd.hard_state {
            assert!(
                hs.commit >= self.max_commit,
                "commit index went backwards: {} -> {}",
                self.max_commit,
                hs.commit
            );
            self.max_commit = hs.commit;
        }
        if let Some(s) = &rd.snapshot {
            self.sm = decode_image(&s.data);
        }
        for e in &rd.committed_entries {
            if let Some(&(t, _)) = self.committed.get(&e.index) {
                assert_eq!(
                    t, e.term,
                    "node {} committed index {} twice with different terms",
                    self.cfg.id, e.index
                );
            }
            self.committed.insert(e.index, (e.term, e.kind));
        }
        for e in &rd.deliveries {
            self.sm.push(e.payload.clone());
            self.deliveries.push(e.clone());
        }
        self.read_states.extend(rd.read_states.iter().copied());
    }

    /// Payloads delivered to the state machine, as strings.
    #[must_use]
    pub fn applied_strings(&self) -> Vec<String> {
        self.sm.iter().filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }
}

/// Whether a node is in `role`.
#[must_use]
pub fn is_role(r: &RaftGroup, role: Role) -> bool {
    r.role() == role
}

/// A lone core for message-by-message tests: node `id` of a group of `voters`.
pub fn solo(id: NodeId, voters: &[NodeId], tweak: impl Fn(&mut Config)) -> RaftGroup {
    let mut cfg = config(id);
    tweak(&mut cfg);
    let restore = RestoreState {
        initial_membership: Membership::with_voters(voters.iter().copied()),
        ..Default::default()
    };
    RaftGroup::new(cfg, restore).expect("valid bootstrap")
}

/// A lone core restarted with `log` in `term` (vote none, commit `commit`).
pub fn solo_with_log(
    id: NodeId,
    voters: &[NodeId],
    term: u64,
    log: Vec<LogEntry>,
    commit: u64,
    tweak: impl Fn(&mut Config),
) -> RaftGroup {
    let mut cfg = config(id);
    tweak(&mut cfg);
    let restore = RestoreState {
        hard_state: HardState { term, vote: 0, commit, recovering: false },
        entries: log,
        initial_membership: Membership::with_voters(voters.iter().copied()),
        ..Default::default()
    };
    RaftGroup::new(cfg, restore).expect("valid restore state")
}

/// Takes a lone core's Ready and acknowledges it at once (as if persisted instantly).
pub fn flush(r: &mut RaftGroup) -> Ready {
    let rd = r.ready().unwrap_or_default();
    if rd.number > 0 {
        r.advance(rd.number);
    }
    rd
}

/// Every message of a Ready, immediate ones first.
#[must_use]
pub fn all_msgs(rd: &Ready) -> Vec<RaftMessage> {
    rd.messages.iter().chain(rd.persisted_messages.iter()).cloned().collect()
}

/// The vote answers in `msgs` as (to, granted, pre_vote, term).
#[must_use]
pub fn vote_answers(msgs: &[RaftMessage]) -> Vec<(NodeId, bool, bool, u64)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            Some(Body::VoteResponse(r)) => Some((m.to, r.granted, r.pre_vote, r.term)),
            _ => None,
        })
        .collect()
}

/// A vote request body.
#[must_use]
pub fn vote_req(term: u64, last_index: u64, last_term: u64, pre_vote: bool) -> Body {
    Body::VoteRequest(phalanx_proto::VoteRequest {
        term,
        last_log_index: last_index,
        last_log_term: last_term,
        pre_vote,
        leader_transfer: false,
    })
}

/// A vote answer body.
#[must_use]
pub fn vote_resp(term: u64, granted: bool, pre_vote: bool) -> Body {
    Body::VoteResponse(phalanx_proto::VoteResponse { term, granted, pre_vote })
}

/// A heartbeat body.
#[must_use]
pub fn heartbeat(term: u64, commit: u64) -> Body {
    Body::Heartbeat(phalanx_proto::Heartbeat { term, commit, read_ctx: 0, quiesce: false })
}

/// Most rounds `settle_shards` runs before it gives up on a cluster that does not go quiet.
pub const MAX_SETTLE_ROUNDS: usize = 1000;

/// Drives shards (`MultiRaft`, one per node) until quiet: every shard's MultiReady is handed
/// out (`seen` gets it first) and acknowledged at once, then its messages are delivered; a
/// message to a node not in `nodes` (down) is lost. Panics after `MAX_SETTLE_ROUNDS`.
pub fn settle_shards(nodes: &mut BTreeMap<NodeId, MultiRaft>, mut seen: impl FnMut(NodeId, &MultiReady)) {
    for _ in 0..MAX_SETTLE_ROUNDS {
        let mut net = Vec::new();
        let mut any = false;
        for (&id, m) in nodes.iter_mut() {
            if let Some(mr) = m.ready() {
                any = true;
                seen(id, &mr);
                for (_, rd) in &mr.groups {
                    net.extend(rd.messages.iter().chain(rd.persisted_messages.iter()).cloned());
                }
                m.advance(mr.number);
            }
        }
        if !any && net.is_empty() {
            return;
        }
        for msg in net {
            if let Some(node) = nodes.get_mut(&msg.to) {
                node.step(msg).expect("well-formed message");
            }
        }
    }
    panic!("shards did not settle");
}
