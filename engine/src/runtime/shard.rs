//! One shard: a glommio executor on its own core that owns a set of partitions, their Raft
//! groups, their state machines, its WAL shard and its peer connections. Nothing here is
//! shared with other threads except through the bus and the node's shared cache.
//!
//! The loop, per turn:
//! 1. wait for an input or the next tick; drain up to `max_inputs_per_turn` inputs
//!    (requests, peer messages) into the groups;
//! 2. tick the groups whose deadlines are due;
//! 3. collect every group's Ready into one `MultiReady`; send the messages that may leave
//!    at once (one coalesced frame per peer) — a leader's appends go out before its own
//!    fsync, and it counts itself toward a quorum only after it;
//! 4. apply committed entries to the state machines and complete callers' futures —
//!    committed means durable on a quorum, so this need not wait for the local fsync;
//! 5. hand the Ready's persistent part to the WAL writer (`writer.rs`), which makes it
//!    durable in order, merging every Ready queued behind a write in progress into the next
//!    batch: one `fdatasync` per batch (group commit);
//! 6. when a write completes: send the messages that needed durable state (vote grants,
//!    append acks), acknowledge the Ready (`advance`), serve reads whose index is now
//!    applied, compact behind checkpoints.
//!
//! The loop never waits for an fsync: while one runs it keeps receiving acknowledgements,
//! committing, answering callers and sending.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use phalanx_net::Transport;
use phalanx_proto::{MessageBatch, RaftMessage};
use phalanx_storage::limits::{ENTRY_BYTES_MAX, ENTRY_RECORD_OVERHEAD_BYTES};
use phalanx_storage::{AnyStore, LogPosition, LogStore, PartitionWrite, StoreOptions, WriteBatch};

use super::lost_state;
use super::writer::{self, Completion, WriteJob};

use super::bus::{Bus, ShardMsg};
use super::placement::{partitions_of, shard_of};
use super::request::{ControlOp, PartitionStatus, ReplicationResult, Request};
use super::shared::NodeShared;
use super::snapshots::SnapshotStore;
use super::waiters::{ProposalWaiter, ReadKind, Waiters};
use crate::config::{LOG_ENTRY_ENVELOPE_BYTES, MAX_LOG_TYPE_BYTES, NodeConfig};
use crate::events::Event;
use crate::hlc::{HybridLogicalClock, Ticket};
use crate::raft::{
    Membership, MultiRaft, NodeId, Proposal, ProposalKind, Ready, RestoreState, Snapshot, Status,
};
use crate::state_machine::{PartitionId, StateMachine, StateMachineFactory};
use crate::system::{ClusterDirectory, SystemStateMachine, SystemView, announcement};

/// The reserved log type of the system partition's own entries.
pub const SYSTEM_LOG_TYPE: &str = "_RaftSystem";

/// Ready rounds per loop turn: each round may enable another (an acknowledgement that lets
/// the leader commit), but a turn must end so inputs and ticks are served.
const MAX_READY_ROUNDS_PER_TURN: usize = 8;
/// Readies handed to the writer and not durable yet; beyond it the shard stops collecting
/// Readies (inputs still queue in the groups) until writes complete.
const MAX_WRITES_IN_FLIGHT: usize = 256;
/// Bytes of messages in one batch to a peer (one frame). Half the transport's default frame
/// limit: a batch is split before it, and one message alone (an append holds at most
/// `max_bytes_per_append` plus one entry of at most `MAX_ENTRY_PAYLOAD_BYTES`) stays below
/// the limit too.
const PEER_BATCH_BYTES_MAX: usize = phalanx_net::frame::DEFAULT_MAX_FRAME_BYTES / 2;
/// An upper bound of a message's encoding from lengths alone (encoding every append once
/// more to size the batches cost measurable CPU per write): what carries data counts its
/// data plus the envelope per entry, the rest a fixed allowance.
fn message_bytes_bound(m: &RaftMessage) -> usize {
    use phalanx_proto::raft_message::Body;
    /// Everything but the data: ids, terms, indexes, flags, a membership of a few nodes.
    const FIXED: usize = 256;
    let per_entry = LOG_ENTRY_ENVELOPE_BYTES + 8;
    FIXED
        + match &m.body {
            Some(Body::AppendRequest(a)) => {
                a.entries.iter().map(|e| e.payload.len() + e.log_type.len() + per_entry).sum()
            }
            Some(Body::Snapshot(s)) => {
                let members = s.conf_state.as_ref().map_or(0, |c| 11 * (c.voters.len() + c.learners.len()));
                let pending: usize =
                    s.pending_two_step.iter().map(|e| e.payload.len() + e.log_type.len() + per_entry).sum();
                s.data.len() + members + pending
            }
            Some(Body::ForwardedProposal(f)) => {
                f.log_type.len() + f.payloads.iter().map(|p| p.len() + 8).sum::<usize>()
            }
            _ => 0,
        }
}

/// How often a node re-announces itself on the system partition until the announcement is
/// applied (the first attempts fail while partition 0 has no leader).
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);
/// Ticks a shard catches up at once after a stall; older ones are skipped rather than fired
/// in a burst (which would start needless elections).
const MAX_CATCH_UP_TICKS: u32 = 4;

/// What a shard thread needs to start.
pub(crate) struct ShardSetup {
    pub shard: usize,
    pub shards: usize,
    pub cfg: Arc<NodeConfig>,
    pub inbox: flume::Receiver<ShardMsg>,
    pub bus: Bus,
    pub shared: Arc<NodeShared>,
    pub state_machines: StateMachineFactory,
}

/// What woke the loop.
enum Wake {
    Input(Option<ShardMsg>),
    Durable(Option<Completion>),
    Tick,
}

struct LeaderWaiter {
    partition: PartitionId,
    deadline: Instant,
    reply: oneshot::Sender<Result<NodeId, Status>>,
}

/// One shard's state.
pub(crate) struct Shard<T: Transport> {
    id: usize,
    shards: usize,
    cfg: Arc<NodeConfig>,
    multi: MultiRaft,
    jobs: Option<flume::Sender<WriteJob>>,
    done: flume::Receiver<Completion>,
    writer_task: Option<glommio::Task<()>>,
    writes_in_flight: usize,
    transport: T,
    inbox: flume::Receiver<ShardMsg>,
    bus: Bus,
    shared: Arc<NodeShared>,
    sms: HashMap<PartitionId, Box<dyn StateMachine>>,
    waiters: Waiters,
    leader_waiters: Vec<LeaderWaiter>,
    hlc: HybridLogicalClock,
    /// Per partition: the commit index found at restart; entries up to it are replays.
    replay_until: HashMap<PartitionId, u64>,
    /// Partitions that applied a checkpoint and should compact once possible.
    compact_wanted: Vec<PartitionId>,
    /// Snapshots of checkpoints this shard took, saved by the writer before the write of the
    /// next job (the one whose batch compacts the WAL below them).
    snapshots_to_save: Vec<(PartitionId, Snapshot)>,
    peers_seen: HashMap<NodeId, Instant>,
    /// Messages of this turn, sent at its end.
    outbox: Vec<RaftMessage>,
    /// Shard 0 only: the system partition's state, shared with its state machine.
    system: Option<Rc<RefCell<SystemView>>>,
    /// The latest cluster directory (from the system partition, via the bus).
    directory: Arc<ClusterDirectory>,
    next_announce: Instant,
    /// Shard 0 only: peers the failure detector considers down.
    down: BTreeSet<NodeId>,
    started: Instant,
    next_balance: Instant,
    tick: Duration,
    next_tick: Instant,
    stopping: bool,
    /// The turn's clock, read once per turn ([`Shard::read_clocks`]).
    now: Instant,
    /// The turn's wall clock, ms since the Unix epoch (the HLC's physical part).
    wall_ms: u64,
    /// The largest entry (encoded) one log write of this shard's store holds, and so the
    /// largest a caller may propose; a request's entries together must fit too.
    entry_bytes_max: usize,
    /// Partitions stopped on this node because the store refused their write (see
    /// `stop_partition`), with the reason; their requests are refused.
    stopped: BTreeMap<PartitionId, String>,
}

fn physical_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A stopped shard answers nothing, but handles may still send to its inbox, and requests
/// already queued there would wait forever: a thread takes the inbox over and refuses every
/// request with `Errored` until the last sender is gone (the node and every handle dropped).
fn refuse_from_now_on(shard: usize, inbox: flume::Receiver<ShardMsg>) {
    let refuse = |m| {
        if let ShardMsg::Request(r) = m {
            r.refuse(Status::Errored);
        }
    };
    let queued = inbox.clone();
    let spawned = std::thread::Builder::new().name(format!("phalanx-stopped-s{shard}")).spawn(move || {
        while let Ok(m) = inbox.recv() {
            refuse(m);
        }
    });
    if let Err(e) = spawned {
        // At least what is queued now gets its answer.
        tracing::warn!(shard, "no thread to refuse requests to a stopped shard: {e}");
        while let Ok(m) = queued.try_recv() {
            refuse(m);
        }
    }
}

impl<T: Transport> Shard<T> {
    /// Opens the shard's WAL and snapshots, restores every partition it owns, and replays
    /// nothing yet (replay happens through the normal apply path).
    pub(crate) async fn open(setup: ShardSetup, transport: T) -> Result<Self, String> {
        let ShardSetup { shard, shards, cfg, inbox, bus, shared, state_machines } = setup;
        let dir = cfg.wal_shard_dir(shard);
        let opts = StoreOptions { sync_writes: cfg.sync_writes, faults: cfg.store_faults.clone() };
        let mut store = AnyStore::open(cfg.wal, &dir, opts).await.map_err(|e| {
            format!("shard {shard}: opening the {} store in {}: {e}", cfg.wal.name(), dir.display())
        })?;
        // Snapshots live beside the WAL shards, not inside them: a WAL directory holds only
        // the store's own files (it refuses anything else as foreign).
        let snapshots = SnapshotStore::open(cfg.data_dir.join("snapshots").join(format!("shard-{shard}")))
            .map_err(|e| format!("shard {shard}: snapshot directory: {e}"))?;
        let initial = Membership::with_voters(cfg.initial_voters());
        let mut multi = MultiRaft::new();
        let mut sms: HashMap<PartitionId, Box<dyn StateMachine>> = HashMap::new();
        let mut replay_until = HashMap::new();
        let system = (shard_of(0, shards) == shard).then(|| Rc::new(RefCell::new(SystemView::default())));
        // All partitions in one pass: the store reads its log once, sequentially, instead of
        // one partition (and, for the native WAL, nearly one read per entry) at a time.
        let owned: Vec<PartitionId> = partitions_of(shard, shards, cfg.initial_partitions).collect();
        let mut loaded = store
            .load_partitions(&owned)
            .await
            .map_err(|e| format!("shard {shard}: loading {} partitions: {e}", owned.len()))?;
        let mut loaded_snapshots = HashMap::new();
        for p in &owned {
            if let Some(s) = snapshots.load(*p).map_err(|e| format!("partition {p}: {e}"))? {
                loaded_snapshots.insert(*p, s);
            }
        }
        // Partitions that lost durable state (a new or wiped disk, a damaged WAL tail) are
        // decided first (a node that cannot recover refuses before writing anything), then
        // marked recovering, durably, before any other write of theirs (`lost_state.rs`).
        let lost = lost_state::partitions_to_recover(shard, &cfg, &loaded, store.damaged_tail())?;
        let positions =
            loaded_snapshots.iter().map(|(p, s)| (*p, LogPosition::new(s.meta.index, s.meta.term))).collect();
        let aligned = lost_state::align_with_snapshots(&mut store, &mut loaded, &positions)
            .await
            .map_err(|e| format!("shard {shard}: {e}"))?;
        if !aligned.is_empty() {
            tracing::info!(shard, partitions = ?aligned, "log store aligned with snapshots saved before a crash");
        }
        let mut marked = lost_state::persist_recovering(&mut store, &loaded, &lost)
            .await
            .map_err(|e| format!("shard {shard}: {e}"))?;
        for (p, recovered) in loaded {
            let snapshot = loaded_snapshots.remove(&p);
            let mut sm = match (&system, p) {
                // Partition 0 applies `_RaftSystem` entries itself; the rest reach the
                // application's state machine.
                (Some(view), 0) => Box::new(SystemStateMachine::new(state_machines(0), view.clone())),
                _ => state_machines(p),
            };
            if let Some(s) = &snapshot {
                sm.restore(p, &s.data);
            }
            let applied = snapshot.as_ref().map_or(0, |s| s.meta.index);
            let restore = match recovered {
                Some(r) => {
                    if r.hard_state.commit > applied {
                        replay_until.insert(p, r.hard_state.commit);
                    }
                    RestoreState {
                        hard_state: marked.remove(&p).unwrap_or(r.hard_state),
                        floor: r.floor,
                        entries: r.entries,
                        snapshot,
                        initial_membership: initial.clone(),
                    }
                }
                None => RestoreState {
                    hard_state: marked.remove(&p).unwrap_or_default(),
                    snapshot,
                    initial_membership: initial.clone(),
                    ..RestoreState::default()
                },
            };
            sm.restore_started(p);
            shared.events.publish(Event::RestoreStarted { partition: p });
            if !replay_until.contains_key(&p) {
                sm.restore_finished(p);
                shared.events.publish(Event::RestoreFinished { partition: p });
            }
            let mut rc = cfg.raft.clone();
            rc.id = cfg.node_id;
            rc.group = p;
            rc.seed = cfg.raft.seed ^ cfg.node_id.rotate_left(17) ^ p;
            multi.add_group(rc, restore).map_err(|e| format!("partition {p}: {e}"))?;
            sms.insert(p, sm);
        }
        // A write splits into batches of at most the store's batch cost; one entry (with its
        // partition's other records) must fit in one of them.
        let batch_room = store
            .max_batch_cost()
            .saturating_sub(phalanx_storage::limits::PARTITION_RECORDS_BYTES + ENTRY_RECORD_OVERHEAD_BYTES);
        let entry_bytes_max = batch_room.min(ENTRY_BYTES_MAX) as usize;
        let tick = Duration::from_millis(cfg.tick_interval_ms);
        let balance_every = Duration::from_millis(cfg.leader_balance_interval_ms);
        let (jobs, jobs_rx) = flume::unbounded();
        let (done_tx, done) = flume::unbounded();
        let writer_task = glommio::spawn_local(writer::run(store, snapshots, jobs_rx, done_tx));
        Ok(Shard {
            id: shard,
            shards,
            hlc: HybridLogicalClock::new(cfg.node_id),
            cfg,
            multi,
            jobs: Some(jobs),
            done,
            writer_task: Some(writer_task),
            writes_in_flight: 0,
            transport,
            inbox,
            bus,
            shared,
            sms,
            waiters: Waiters::default(),
            leader_waiters: Vec::new(),
            replay_until,
            compact_wanted: Vec::new(),
            snapshots_to_save: Vec::new(),
            peers_seen: HashMap::new(),
            system,
            directory: Arc::new(ClusterDirectory::default()),
            next_announce: Instant::now(),
            down: BTreeSet::new(),
            started: Instant::now(),
            next_balance: Instant::now() + balance_every,
            tick,
            next_tick: Instant::now() + tick,
            stopping: false,
            now: Instant::now(),
            wall_ms: physical_ms(),
            outbox: Vec::new(),
            entry_bytes_max,
            stopped: BTreeMap::new(),
        })
    }

    /// Runs until asked to stop or the store fails.
    pub(crate) async fn run(mut self) {
        'turns: loop {
            self.read_clocks();
            if self.now < self.next_tick && self.done.is_empty() {
                let wait = self.next_tick - self.now;
                let (inbox, done) = (self.inbox.clone(), self.done.clone());
                let got = futures_lite::future::or(
                    futures_lite::future::or(
                        async move { Wake::Input(inbox.recv_async().await.ok()) },
                        async move { Wake::Durable(done.recv_async().await.ok()) },
                    ),
                    async move {
                        glommio::timer::sleep(wait).await;
                        Wake::Tick
                    },
                )
                .await;
                self.read_clocks();
                match got {
                    Wake::Input(Some(m)) => self.handle(m),
                    Wake::Input(None) => self.stopping = true, // every sender is gone
                    Wake::Durable(Some(c)) => {
                        if let Err(e) = self.on_durable(c) {
                            self.fatal(e);
                            break 'turns;
                        }
                    }
                    Wake::Durable(None) | Wake::Tick => {}
                }
            }
            while let Ok(c) = self.done.try_recv() {
                if let Err(e) = self.on_durable(c) {
                    self.fatal(e);
                    break 'turns;
                }
            }
            for _ in 0..self.cfg.max_inputs_per_turn {
                match self.inbox.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            if self.stopping {
                break;
            }
            self.tick_if_due();
            if let Err(e) = self.process_readies() {
                self.fatal(e);
                break;
            }
        }
        self.waiters.fail_all(Status::Errored);
        for w in self.leader_waiters.drain(..) {
            let _ = w.reply.send(Err(Status::Errored));
        }
        refuse_from_now_on(self.id, self.inbox.clone());
        // Its partitions have no leader here any more: routing and `am_i_leader_quick` must not
        // send requests to a shard that answers nothing.
        for p in self.multi.group_ids().collect::<Vec<_>>() {
            let term = self.shared.leader(p).map_or(0, |(_, t)| t);
            self.shared.set_leader(p, None, term);
        }
        // Commit indexes no Ready carried yet (a change of it alone waits for the next write:
        // `Ready::hard_state`) go out with a last write, so a restart after a clean stop
        // replays every entry this node applied. (After a failed write the writer refuses
        // it, as everything else.)
        let partitions: Vec<PartitionWrite> = self
            .multi
            .group_ids()
            .filter_map(|p| {
                let hs = self.multi.group(p)?.unsaved_hard_state()?;
                Some(PartitionWrite { partition: p, hard_state: Some(hs), ..Default::default() })
            })
            .collect();
        if let Some(jobs) = &self.jobs
            && !partitions.is_empty()
        {
            let _ = jobs.send(WriteJob {
                // Acknowledges nothing: the loop that would act on the completion is done.
                number: 0,
                batch: WriteBatch { partitions, ..Default::default() },
                snapshots: std::mem::take(&mut self.snapshots_to_save),
                persisted_messages: Vec::new(),
                fetches: Vec::new(),
            });
        }
        // Closing the job channel lets the writer finish what it holds and close the store.
        self.jobs = None;
        if let Some(t) = self.writer_task.take() {
            t.await;
        }
        let Shard { transport, .. } = self;
        transport.shutdown().await;
    }

    fn fatal(&mut self, reason: String) {
        // Storage failures are fatal (never retry an fsync): stop this shard loudly instead
        // of acknowledging anything more.
        tracing::error!(shard = self.id, "shard stopped: {reason}");
        self.shared.fail(reason.clone());
        self.shared.events.publish(Event::ShardFailed { shard: self.id, reason });
    }

    /// Reads the clocks for this turn. A request's deadline and its HLC ticket need the time
    /// to within a turn, not to the nanosecond: reading both clocks per request took 5% of a
    /// busy leader's thread (perf, 256 clients on one partition).
    fn read_clocks(&mut self) {
        self.now = Instant::now();
        self.wall_ms = physical_ms();
    }

    fn tick_if_due(&mut self) {
        let now = self.now;
        if now < self.next_tick {
            return;
        }
        let mut fired = 0;
        while now >= self.next_tick && fired < MAX_CATCH_UP_TICKS {
            self.multi.tick();
            self.next_tick += self.tick;
            fired += 1;
        }
        if now >= self.next_tick {
            self.next_tick = now + self.tick;
        }
        self.waiters.expire(now);
        self.check_leader_waiters(now);
        self.shared.note_activity(&self.peers_seen);
        self.peers_seen.clear();
        if self.system.is_some() {
            self.announce_if_needed(now);
            self.detect_failures(now);
        }
        if self.cfg.leader_balance_interval_ms > 0 && now >= self.next_balance {
            self.next_balance = now + Duration::from_millis(self.cfg.leader_balance_interval_ms);
            self.balance_leaders();
        }
    }

    /// Hands each partition this node leads to its preferred leader (voter `p % voters`), if
    /// that node is up and fully caught up: leadership then spreads evenly over the nodes, and
    /// returns to a node after it restarts.
    fn balance_leaders(&mut self) {
        let down = self.shared.down_nodes();
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        for p in groups {
            let _ = self.multi.update(p, |g| {
                if !g.is_leader() {
                    return;
                }
                let voters: Vec<NodeId> = g.membership().voters.iter().copied().collect();
                if voters.is_empty() {
                    return;
                }
                let preferred = voters[(p % voters.len() as u64) as usize];
                let caught_up = g.progress(preferred).is_some_and(|pr| pr.matched == g.log().last_index());
                if preferred != g.id() && caught_up && !down.contains(&preferred) {
                    let _ = g.transfer_leadership(preferred);
                }
            });
        }
    }

    /// Shard 0: proposes (or forwards to the leader) this node's announcement until the
    /// system partition has applied it.
    fn announce_if_needed(&mut self, now: Instant) {
        if now < self.next_announce {
            return;
        }
        self.next_announce = now + ANNOUNCE_RETRY;
        let me = phalanx_proto::NodeAnnouncement {
            node_id: self.cfg.node_id,
            raft_address: format!("{}:{}", self.cfg.raft_host, self.cfg.raft_port),
            client_address: self.cfg.client_address.clone().unwrap_or_default(),
            shards: self.shards as u32,
        };
        if self.directory.nodes.get(&me.node_id) == Some(&me) {
            return;
        }
        let ticket = self.hlc.now(self.wall_ms);
        let p = Proposal {
            kind: ProposalKind::System,
            log_type: Bytes::from_static(SYSTEM_LOG_TYPE.as_bytes()),
            payloads: vec![announcement(me)],
            ticket,
        };
        let _ = self.multi.update(0, |g| g.propose_or_forward(p));
    }

    /// Shard 0: the failure detector. A peer not heard from (by any shard) within an election
    /// timeout is down; heard again, it is up. Changes become events and go to every shard.
    fn detect_failures(&mut self, now: Instant) {
        let timeout = self.tick * self.cfg.raft.election_ticks_max as u32;
        let peers: Vec<NodeId> =
            self.cfg.initial_voters().into_iter().filter(|n| *n != self.cfg.node_id).collect();
        for peer in peers {
            let last = self.shared.last_activity(peer).unwrap_or(self.started);
            let down = now.saturating_duration_since(last) > timeout;
            if down == self.down.contains(&peer) {
                continue;
            }
            // The shared view first, so a subscriber reacting to the event sees it.
            self.shared.set_down(peer, down);
            if down {
                self.down.insert(peer);
                self.shared.events.publish(Event::NodeDown { node: peer });
            } else {
                self.down.remove(&peer);
                self.shared.events.publish(Event::NodeUp { node: peer });
            }
            self.on_peer_status(peer, !down);
            self.bus.broadcast(self.id, || ShardMsg::PeerStatus { node: peer, up: !down });
        }
    }

    /// The failure detector's verdict on a peer: reads forwarded to it fail at once.
    fn on_peer_status(&mut self, node: NodeId, up: bool) {
        if up {
            return;
        }
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        for p in groups {
            self.multi.update(p, |g| g.peer_unreachable(node));
        }
    }

    /// Shard 0: after applying partition 0, publish and broadcast a changed directory.
    fn broadcast_system_state(&mut self) {
        let Some(view) = &self.system else { return };
        let mut v = view.borrow_mut();
        if !v.changed {
            return;
        }
        v.changed = false;
        let d = Arc::new(v.directory.clone());
        drop(v);
        self.directory = d.clone();
        self.shared.set_directory(d.clone());
        self.shared.events.publish(Event::DirectoryChanged);
        self.bus.broadcast(self.id, || ShardMsg::System(d.clone()));
    }

    fn owns(&self, p: PartitionId) -> bool {
        p <= u64::from(self.cfg.initial_partitions) && shard_of(p, self.shards) == self.id
    }

    fn deadline(&self) -> Instant {
        self.now + Duration::from_millis(self.cfg.request_timeout_ms)
    }

    fn handle(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Request(r) => self.handle_request(r),
            ShardMsg::Peer { from, messages } => self.handle_peer(from, messages),
            ShardMsg::System(d) => self.directory = d,
            ShardMsg::PeerStatus { node, up } => self.on_peer_status(node, up),
            ShardMsg::Stop => self.stopping = true,
        }
    }

    fn handle_peer(&mut self, from: NodeId, messages: Vec<RaftMessage>) {
        self.peers_seen.insert(from, self.now);
        let mut elsewhere: BTreeMap<usize, Vec<RaftMessage>> = BTreeMap::new();
        for m in messages {
            let owner = shard_of(m.group, self.shards);
            if owner != self.id {
                // The sender has another core count than we do: route through the bus.
                elsewhere.entry(owner).or_default().push(m);
                continue;
            }
            if let Err(status) = self.multi.step(m) {
                tracing::trace!(shard = self.id, from, %status, "peer message rejected");
            }
        }
        for (shard, msgs) in elsewhere {
            if !self.bus.deliver_peer(shard, from, msgs) {
                tracing::debug!(shard, from, "bus full: dropped forwarded peer messages");
            }
        }
    }

    fn handle_request(&mut self, r: Request) {
        if let Some(p) = r.partition()
            && !self.owns(p)
        {
            // Unknown partition (or a routing bug): a clear refusal, not a hang.
            r.refuse(Status::InvalidRequest);
            return;
        }
        if let Some(p) = r.partition()
            && self.stopped.contains_key(&p)
        {
            r.refuse(Status::Errored);
            return;
        }
        let deadline = self.deadline();
        match r {
            Request::Replicate { partition, log_type, payloads, auto_commit, system, reply } => {
                if (log_type == SYSTEM_LOG_TYPE.as_bytes()) != system || payloads.is_empty() {
                    let _ = reply.send(ReplicationResult::refused(Status::InvalidRequest));
                    return;
                }
                if log_type.len() > MAX_LOG_TYPE_BYTES {
                    let _ = reply.send(ReplicationResult::refused(Status::InvalidRequest));
                    return;
                }
                if let Err(status) = self.check_size(&log_type, &payloads) {
                    let _ = reply.send(ReplicationResult::refused(status));
                    return;
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
                let outcome = self.multi.update(partition, |g| g.propose(proposal));
                self.track_proposal(partition, ticket, outcome, reply, deadline);
            }
            Request::Marker { partition, ticket, commit, reply } => {
                let outcome = self.multi.update(partition, |g| {
                    if commit { g.commit_logs(ticket) } else { g.rollback_logs(ticket) }
                });
                self.track_proposal(partition, ticket, outcome, reply, deadline);
            }
            Request::Checkpoint { partition, reply } => {
                let ticket = self.hlc.now(self.wall_ms);
                let outcome = self.multi.update(partition, |g| g.propose_checkpoint(ticket));
                self.track_proposal(partition, ticket, outcome, reply, deadline);
            }
            Request::ReadBarrier { partition, reply } => {
                self.start_read(partition, ReadKind::Barrier(reply), deadline)
            }
            Request::Query { partition, query, reply } => {
                self.start_read(partition, ReadKind::Query(query, reply), deadline);
            }
            Request::Control { partition, op, reply } => {
                let r = self.multi.update(partition, |g| match op {
                    ControlOp::StepDown => g.step_down(),
                    ControlOp::Transfer(target) => g.transfer_leadership(target),
                    ControlOp::SuspendHeartbeats => g.suspend_heartbeats(),
                    ControlOp::ResumeHeartbeats => g.resume_heartbeats(),
                });
                let _ = reply.send(r.unwrap_or(Err(Status::InvalidRequest)));
            }
            Request::FollowerLag { partition, follower, reply } => {
                let lag = self.multi.group(partition).and_then(|g| g.follower_lag(follower));
                let _ = reply.send(lag);
            }
            Request::Status { reply } => {
                let mut out: Vec<PartitionStatus> = self
                    .multi
                    .group_ids()
                    .filter_map(|p| self.multi.group(p))
                    .map(|g| PartitionStatus {
                        id: g.group_id(),
                        leader: g.leader(),
                        term: g.term(),
                        commit_index: g.log().committed(),
                        applied_index: g.log().applied(),
                        last_index: g.log().last_index(),
                        is_leader: g.is_leader(),
                    })
                    .collect();
                out.sort_by_key(|s| s.id);
                let _ = reply.send(out);
            }
            Request::WaitLeader { partition, timeout_ms, reply } => {
                match self.multi.group(partition).and_then(|g| g.leader()) {
                    Some(l) => {
                        let _ = reply.send(Ok(l));
                    }
                    None => {
                        let deadline = self.now + Duration::from_millis(timeout_ms);
                        self.leader_waiters.push(LeaderWaiter { partition, deadline, reply });
                    }
                }
            }
        }
    }

    /// The door's size check (issue 11): every entry within the caller's limit and within
    /// what one log write holds, and the request's entries together within one write too,
    /// so no client input can build a write the store refuses. (Several requests' entries
    /// may still fill a turn beyond one write: the writer splits those.)
    fn check_size(&self, log_type: &[u8], payloads: &[Bytes]) -> Result<(), Status> {
        let envelope = log_type.len() + LOG_ENTRY_ENVELOPE_BYTES;
        let per_entry_max = self.cfg.max_entry_bytes.min(self.entry_bytes_max.saturating_sub(envelope));
        let mut total = 0usize;
        for p in payloads {
            if p.len() > per_entry_max {
                return Err(Status::TooLarge);
            }
            total += p.len() + envelope + ENTRY_RECORD_OVERHEAD_BYTES as usize;
        }
        if total > self.entry_bytes_max { Err(Status::TooLarge) } else { Ok(()) }
    }

    /// The store refused a write of partition `p` (a limit or the contract: nothing of it was
    /// stored, the store is usable). With writes split to the store's limits and requests
    /// checked at the door this is an engine bug or a misconfiguration, never a client's
    /// doing — but it must not stop the node: only this partition stops here, as if its
    /// replica had crashed. Its callers are answered `Errored` (their entries may still
    /// commit through the other replicas), later requests are refused, its leadership is
    /// dropped, and the writer stores nothing more of it. The other replicas carry on; this
    /// one recovers from what it stored when the node restarts.
    fn stop_partition(&mut self, p: PartitionId, reason: String) {
        tracing::error!(
            shard = self.id,
            partition = p,
            "partition stopped on this node: the store refused its write ({reason}); restart the node to \
             recover it from its log"
        );
        let term = self.multi.group(p).map_or(0, |g| g.term());
        self.multi.remove_group(p);
        self.sms.remove(&p);
        self.waiters.fail_partition(p, Status::Errored);
        for w in std::mem::take(&mut self.leader_waiters) {
            if w.partition == p {
                let _ = w.reply.send(Err(Status::Errored));
            } else {
                self.leader_waiters.push(w);
            }
        }
        self.replay_until.remove(&p);
        self.compact_wanted.retain(|q| *q != p);
        self.snapshots_to_save.retain(|(q, _)| *q != p);
        self.outbox.retain(|m| m.group != p);
        self.shared.set_leader(p, None, term);
        self.shared.events.publish(Event::PartitionStopped { partition: p, reason: reason.clone() });
        self.stopped.insert(p, reason);
    }

    fn track_proposal(
        &mut self,
        partition: PartitionId,
        ticket: Ticket,
        outcome: Option<Result<crate::raft::Proposed, Status>>,
        reply: oneshot::Sender<ReplicationResult>,
        deadline: Instant,
    ) {
        match outcome {
            Some(Ok(at)) => {
                self.waiters.add_proposal(
                    partition,
                    at.last_index,
                    ProposalWaiter { term: at.term, ticket, reply },
                    deadline,
                );
            }
            Some(Err(status)) => {
                let _ =
                    reply.send(ReplicationResult { status, ticket, log_index: 0, response: Bytes::new() });
            }
            None => {
                let _ = reply.send(ReplicationResult::refused(Status::InvalidRequest));
            }
        }
    }

    fn start_read(&mut self, partition: PartitionId, kind: ReadKind, deadline: Instant) {
        let id = self.waiters.add_read(partition, kind, deadline);
        match self.multi.update(partition, |g| g.read_index(id)) {
            Some(Ok(())) => {}
            Some(Err(status)) => self.waiters.read_failed(id, status),
            None => self.waiters.read_failed(id, Status::InvalidRequest),
        }
    }

    fn check_leader_waiters(&mut self, now: Instant) {
        if self.leader_waiters.is_empty() {
            return;
        }
        let mut keep = Vec::with_capacity(self.leader_waiters.len());
        for w in self.leader_waiters.drain(..) {
            match self.multi.group(w.partition).and_then(|g| g.leader()) {
                Some(l) => {
                    let _ = w.reply.send(Ok(l));
                }
                None if w.deadline <= now => {
                    let _ = w.reply.send(Err(Status::ProposalTimeout));
                }
                None => keep.push(w),
            }
        }
        self.leader_waiters = keep;
    }

    /// Sends everything queued in this turn, one batch per peer. One send per peer per turn,
    /// not one per Ready round and per completed write: each batch is a frame, a `send(2)`
    /// and a wake-up of the receiver. Called before the loop yields, so a leader's appends
    /// still leave before its own write (the writer task runs only when the loop yields).
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        // Per peer, batches of at most PEER_BATCH_BYTES_MAX: a turn's appends of large
        // entries to several partitions once made a 22 MiB batch, which the transport drops
        // as above its frame limit — and the resends, coalesced the same way, again.
        // A full batch goes at once; a peer's messages keep their order either way.
        let mut per_peer: BTreeMap<NodeId, (Vec<RaftMessage>, usize)> = BTreeMap::new();
        for m in self.outbox.drain(..) {
            let len = message_bytes_bound(&m);
            let to = m.to;
            let (messages, bytes) = per_peer.entry(to).or_default();
            if !messages.is_empty() && *bytes + len > PEER_BATCH_BYTES_MAX {
                self.transport.send(to, MessageBatch { messages: std::mem::take(messages) });
                *bytes = 0;
            }
            *bytes += len;
            messages.push(m);
        }
        for (to, (messages, _)) in per_peer {
            self.transport.send(to, MessageBatch { messages });
        }
    }

    /// Steps 3–5 of the loop for every Ready available now.
    fn process_readies(&mut self) -> Result<(), String> {
        for _ in 0..MAX_READY_ROUNDS_PER_TURN {
            if self.writes_in_flight >= MAX_WRITES_IN_FLIGHT {
                break;
            }
            let Some(mut mr) = self.multi.ready() else { break };
            // Sent at the end of the turn (`flush_outbox`), still before this Ready's write.
            for (_, r) in &mut mr.groups {
                self.outbox.append(&mut r.messages);
            }
            let mut job = WriteJob {
                number: mr.number,
                batch: WriteBatch::default(),
                // Checkpoint snapshots taken since the last job: this job's batch carries their
                // compaction, and the writer saves snapshots before the batch.
                snapshots: std::mem::take(&mut self.snapshots_to_save),
                persisted_messages: Vec::new(),
                fetches: Vec::new(),
            };
            for (p, r) in &mut mr.groups {
                job.persisted_messages.append(&mut r.persisted_messages);
                job.fetches.extend(r.fetches.drain(..).map(|f| (*p, f)));
                if let Some(s) = &r.snapshot {
                    job.snapshots.push((*p, s.clone()));
                }
                let w = PartitionWrite {
                    partition: *p,
                    snapshot: r.snapshot.as_ref().map(|s| LogPosition::new(s.meta.index, s.meta.term)),
                    entries: std::mem::take(&mut r.entries),
                    hard_state: r.hard_state,
                    compact_to: r.compact_to,
                };
                if !w.is_empty() {
                    job.batch.partitions.push(w);
                }
            }
            let mut system_touched = false;
            for (p, r) in mr.groups {
                system_touched |= p == 0;
                self.apply_ready(p, r);
            }
            if system_touched {
                self.broadcast_system_state();
            }
            if self.writes_in_flight == 0
                && job.batch.is_empty()
                && job.snapshots.is_empty()
                && job.fetches.is_empty()
            {
                // Nothing to make durable and nothing queued before it: done now.
                let c = Completion {
                    number: job.number,
                    persisted_messages: job.persisted_messages,
                    result: Ok(()),
                    fetched: Vec::new(),
                    refused: Vec::new(),
                };
                self.writes_in_flight += 1;
                self.on_durable(c)?;
                continue;
            }
            let Some(jobs) = &self.jobs else { break };
            if jobs.send(job).is_err() {
                return Err("the WAL writer stopped".into());
            }
            self.writes_in_flight += 1;
        }
        // Every message and every reply of the turn at once (see `waiters.rs`).
        self.flush_outbox();
        self.waiters.flush();
        Ok(())
    }

    /// Step 6: a Ready is durable.
    fn on_durable(&mut self, c: Completion) -> Result<(), String> {
        self.writes_in_flight -= 1;
        for (p, reason) in c.refused {
            self.stop_partition(p, reason);
        }
        c.result?;
        self.outbox.extend(c.persisted_messages);
        self.multi.advance(c.number);
        for (p, f, entries) in c.fetched {
            self.multi.update(p, |g| g.on_entries_fetched(f.to, f.lo, entries));
        }
        self.serve_reads();
        if self.writes_in_flight == 0 {
            self.compact_behind_checkpoints();
        }
        Ok(())
    }

    /// Step 4 for one group: leader changes, a received snapshot, committed entries,
    /// read answers.
    fn apply_ready(&mut self, p: PartitionId, r: Ready) {
        let Some(sm) = self.sms.get_mut(&p) else { return };
        if let Some(ss) = r.soft_state {
            self.shared.set_leader(p, ss.leader, ss.term);
            self.shared.events.publish(Event::LeaderChanged {
                partition: p,
                leader: ss.leader,
                term: ss.term,
            });
            sm.leader_changed(p, ss.leader);
        }
        if let Some(s) = &r.snapshot {
            sm.restore(p, &s.data);
        }
        let replay_limit = self.replay_until.get(&p).copied().unwrap_or(0);
        let mut outputs: Vec<(u64, Bytes)> = Vec::new();
        for e in &r.deliveries {
            if e.index <= replay_limit {
                sm.restore_entry(p, e);
            } else {
                let out = sm.apply(p, e);
                if self.waiters.wants(p, e.index) {
                    outputs.push((e.index, out));
                }
            }
            if e.kind == phalanx_proto::EntryKind::Checkpoint as i32 && !self.compact_wanted.contains(&p) {
                self.compact_wanted.push(p);
            }
        }
        // Both lists are in log order, except that entries a commit marker releases come
        // with lower indexes than the marker and so match no committed entry after it: one
        // merge pass finds each entry's output (a search per entry was quadratic in a turn).
        let mut outputs = outputs.into_iter().peekable();
        for e in &r.committed_entries {
            while outputs.next_if(|(i, _)| *i < e.index).is_some() {}
            let response = outputs.next_if(|(i, _)| *i == e.index).map_or_else(Bytes::new, |(_, out)| out);
            if let Some(status) = self.waiters.on_applied(p, e.index, e.term, response) {
                sm.replication_error(p, status);
                self.shared.events.publish(Event::ReplicationError { partition: p, status });
            }
            if replay_limit > 0 && e.index >= replay_limit {
                self.replay_until.remove(&p);
                sm.restore_finished(p);
                self.shared.events.publish(Event::RestoreFinished { partition: p });
            }
        }
        for rs in r.read_states {
            match rs.result {
                Ok(index) => {
                    self.waiters.read_index_known(rs.request_id, index);
                }
                Err(status) => self.waiters.read_failed(rs.request_id, status),
            }
        }
    }

    /// Serves reads whose read index is now applied.
    fn serve_reads(&mut self) {
        for p in self.waiters.partitions_with_reads() {
            let Some(applied) = self.multi.group(p).map(|g| g.log().applied()) else { continue };
            for (index, kind) in self.waiters.take_servable(p, applied) {
                match kind {
                    ReadKind::Barrier(reply) => {
                        let _ = reply.send(Ok(index));
                    }
                    ReadKind::Query(q, reply) => {
                        let answer =
                            self.sms.get(&p).map_or(Err(Status::InvalidRequest), |sm| sm.query(p, &q));
                        let _ = reply.send(answer);
                    }
                }
            }
        }
    }

    /// A checkpoint was applied: snapshot the state machine and let the core compact the log
    /// below it. The snapshot goes to the writer with the next job, whose batch is the one
    /// that compacts the WAL, and the writer saves it first: durable before the compaction,
    /// while this loop goes on (saving it here stalled the shard for two fsyncs per
    /// checkpoint).
    fn compact_behind_checkpoints(&mut self) {
        let wanted = std::mem::take(&mut self.compact_wanted);
        for p in wanted {
            let Some(sm) = self.sms.get_mut(&p) else { continue };
            let image = sm.snapshot(p);
            match self.multi.update(p, |g| g.compact(image.clone()).map(|_| g.snapshot_meta().cloned())) {
                Some(Ok(Some(meta))) => {
                    // An older snapshot of the partition not yet saved is superseded.
                    self.snapshots_to_save.retain(|(q, _)| *q != p);
                    self.snapshots_to_save.push((p, Snapshot { meta, data: image }));
                }
                // Work is still outstanding for this group: try again after the next Ready.
                Some(Err(Status::Busy)) => self.compact_wanted.push(p),
                _ => {}
            }
        }
    }
}
