//! The shard core: everything one shard decides, as a deterministic state machine. It owns
//! the shard's Raft groups (`MultiRaft`), their state machines and the callers waiting on
//! them; it reads no clock (the driver passes the time in), does no IO and touches no
//! channel. What it decides waits in its [`Output`] until the driver takes it: frames per
//! peer, write jobs for the log writer (with the snapshot files to save first), answers to
//! callers, events, leader and directory updates, and messages for other shards.
//!
//! The driver (`runtime/shard.rs`) runs one loop per shard: it moves inputs in — requests,
//! peer message batches, write completions, bus messages, the time — and executes the
//! output. A loop turn:
//! 1. wait for an input or the next tick; feed up to `max_inputs_per_turn` inputs in;
//! 2. [`ShardCore::tick_if_due`]: tick the groups whose deadlines are due, expire callers,
//!    shard 0's system duties, leader balancing;
//! 3. [`ShardCore::process_readies`]: collect every group's Ready; messages that may leave at
//!    once go to the outbox (a leader's appends go out before its own write, and it counts
//!    itself toward a quorum only after it); committed entries are applied and callers
//!    answered (committed means durable on a quorum, so this need not wait for the local
//!    write); the persistent part becomes a write job;
//! 4. the driver sends the turn's frames, hands the write jobs to the writer, sends the
//!    answers;
//! 5. [`ShardCore::on_durable`] when a write completes: send the messages that needed durable
//!    state (vote grants, append acks), acknowledge the Ready (`advance`), serve reads whose
//!    index is now applied, compact behind checkpoints.
//!
//! The loop never waits for a write: while one runs it keeps receiving acknowledgements,
//! committing, answering callers and sending.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the core's state, its inputs and its output |
//! | `request.rs` | what callers ask and what the core answers |
//! | `dispatch.rs` | requests: the door's checks, proposals, reads, controls, leader waits |
//! | `held.rs` | proposals held while their partition's leadership is handed over |
//! | `pipeline.rs` | the Ready pipeline: Readies into write jobs, applying, completions |
//! | `waiters.rs` | callers waiting for commits and reads, and their deadlines |
//! | `limits.rs` | the byte limits, derived from the store's and the transport's |
//! | `outbox.rs` | a turn's messages cut into one frame per peer |
//! | `write.rs` | write jobs for the log writer and their completions |
//! | `lost_state.rs` | at open: which partitions lost durable state, and the store aligned with snapshot files |
//! | `restore.rs` | building the groups from what the store loaded; replay after a restart |
//! | `checkpoints.rs` | snapshots at checkpoints, compaction behind them |
//! | `checkpoint_saves.rs` | writers: checkpoint snapshots saved beside the writes, compactions held until durable |
//! | `system_duties.rs` | shard 0: announcements, the directory, failure detection |
//! | `balance.rs` | leader balancing |
//! | `membership.rs` | every partition this shard leads follows the roster |
//! | `stopping.rs` | a partition the store refused; the shard's clean stop |

mod balance;
pub mod checkpoint_saves;
mod checkpoints;
mod dispatch;
mod held;
pub mod limits;
pub mod lost_state;
pub mod membership;
pub(crate) mod outbox;
mod pipeline;
pub mod request;
mod restore;
mod stopping;
mod system_duties;
pub(crate) mod waiters;
pub mod write;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_proto::{MessageBatch, RaftMessage};

pub use system_duties::SYSTEM_LOG_TYPE;

use self::dispatch::LeaderWaiter;
use self::limits::ShardLimits;
use self::outbox::Outbox;
use self::request::Answer;
use self::waiters::Waiters;
use self::write::WriteJob;
use crate::config::NodeConfig;
use crate::events::Event;
use crate::hlc::HybridLogicalClock;
use crate::id_hash::IdHashMap;
use crate::raft::{MultiRaft, NodeId, RaftGroup, Ready, Snapshot};
use crate::state_machine::{PartitionId, StateMachine, StateMachineFactory};
use crate::system::{ClusterDirectory, SystemView};

/// Ticks a shard catches up at once after a stall; older ones are skipped rather than fired
/// in a burst (which would start needless elections).
const MAX_CATCH_UP_TICKS: u32 = 4;

/// What the driver must carry out, accumulated since it last took it. The driver applies
/// the shared views (`leaders`, `peer_status`, `directory`) before publishing `events`, so a
/// subscriber reacting to an event sees the state it announces, and sends `frames` before
/// `answers`.
pub struct Output<R> {
    /// Batches to send, per peer, in order.
    pub frames: Vec<(NodeId, MessageBatch)>,
    /// Jobs for the log writer, in order (completions come back in the same order).
    pub writes: Vec<WriteJob>,
    /// Answers to callers.
    pub answers: Vec<(R, Answer)>,
    /// Events for subscribers.
    pub events: Vec<Event>,
    /// Leader changes for the node's shared cache: partition, leader, term.
    pub leaders: Vec<(PartitionId, Option<NodeId>, u64)>,
    /// Shard 0: the system partition's new directory, for every shard and every handle.
    pub directory: Option<Arc<ClusterDirectory>>,
    /// Shard 0: the failure detector's verdicts, for every shard and handle.
    pub peer_status: Vec<(NodeId, crate::swim::Liveness)>,
    /// Shard 0: peers the failure detector heard restarted, for every shard.
    pub peer_reincarnations: Vec<NodeId>,
    /// Peer messages for partitions of another shard (a sender with another core count):
    /// shard, sender, messages.
    pub forwards: Vec<(usize, NodeId, Vec<RaftMessage>)>,
    /// Shard 0: a peer's roster, at this version (newer than this node's), does not list
    /// this node (`swim/`).
    pub unlisted_at: Option<u64>,
    /// When peers were last heard from by this shard, since the last tick.
    pub activity: Vec<(NodeId, Instant)>,
    /// System commands for the system partition's shard (0) to propose: membership
    /// progress this shard's partitions report (`membership.rs`).
    pub system_commands: Vec<bytes::Bytes>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            frames: Vec::new(),
            writes: Vec::new(),
            answers: Vec::new(),
            events: Vec::new(),
            leaders: Vec::new(),
            directory: None,
            peer_status: Vec::new(),
            peer_reincarnations: Vec::new(),
            unlisted_at: None,
            forwards: Vec::new(),
            activity: Vec::new(),
            system_commands: Vec::new(),
        }
    }
}

/// What a shard core is built from, besides what its store loaded.
pub struct CoreSetup {
    /// This shard.
    pub shard: usize,
    /// The node's shards.
    pub shards: usize,
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// The application's state machines.
    pub state_machines: StateMachineFactory,
    /// The shard's byte limits, derived from its store and transport (`limits.rs`).
    pub limits: ShardLimits,
    /// The time the shard starts.
    pub now: Instant,
    /// The wall clock then, ms since the Unix epoch.
    pub wall_ms: u64,
}

/// One shard's state; `R` is how a caller is answered (see `request.rs`).
pub struct ShardCore<R> {
    id: usize,
    shards: usize,
    cfg: Arc<NodeConfig>,
    multi: MultiRaft,
    /// Write jobs handed out and not completed yet.
    writes_in_flight: usize,
    sms: IdHashMap<PartitionId, Box<dyn StateMachine>>,
    waiters: Waiters<R>,
    leader_waiters: Vec<LeaderWaiter<R>>,
    /// Proposals waiting for their partition's leadership transfer to end (`held.rs`).
    held: held::Held<R>,
    hlc: HybridLogicalClock,
    /// Per partition: the commit index found at restart; entries up to it are replays.
    replay_until: IdHashMap<PartitionId, u64>,
    /// Partitions that applied a checkpoint and should compact once possible.
    compact_wanted: Vec<PartitionId>,
    /// Snapshots of checkpoints this shard took, saved by the writer before the write of the
    /// next job (the one whose batch compacts the WAL below them).
    snapshots_to_save: Vec<(PartitionId, Snapshot)>,
    /// Peers heard from since the last tick, and when.
    peers_seen: BTreeMap<NodeId, Instant>,
    /// Messages of this turn, cut into frames at its end.
    outbox: Outbox,
    /// Shard 0 only: the system partition's state, shared with its state machine.
    system: Option<Rc<RefCell<SystemView>>>,
    /// The latest cluster directory (from the system partition, via the bus).
    directory: Arc<ClusterDirectory>,
    next_announce: Instant,
    /// Peers the failure detector holds dead (shard 0 decides; the others hear it).
    down: BTreeSet<NodeId>,
    /// Shard 0: the failure detector (`swim/`).
    swim: Option<crate::swim::Detector>,
    next_balance: Instant,
    /// The leader balancer's work list (`balance.rs`).
    balance: balance::Balance,
    tick: Duration,
    next_tick: Instant,
    stopping: bool,
    /// The turn's clock ([`ShardCore::set_clock`]).
    now: Instant,
    /// The turn's wall clock, ms since the Unix epoch (the HLC's physical part).
    wall_ms: u64,
    /// The byte limits: the largest entry and request a caller may propose, the largest batch
    /// to a peer.
    limits: ShardLimits,
    /// Partitions stopped on this node because the store refused their write (see
    /// `stopping.rs`), with the reason; their requests are refused.
    stopped: BTreeMap<PartitionId, String>,
    out: Output<R>,
    /// Sees every group's Ready as the core takes it ([`ShardCore::set_observer`]).
    observer: Option<ReadyObserver>,
    /// The cumulative counters of [`ShardCore::stats`] (its depths are read when asked).
    counters: crate::stats::CoreStats,
    /// Following the roster (`membership.rs`).
    membership: membership::Reconciler,
}

/// A watcher of the Readies a core takes: the group (its log as the Ready left it) and the
/// Ready, before the core acts on it.
pub type ReadyObserver = Box<dyn FnMut(&RaftGroup, &Ready)>;

impl<R> ShardCore<R> {
    /// Sets the time of this turn. A request's deadline and its HLC ticket need the time to
    /// within a turn, not to the nanosecond: reading both clocks per request took 5% of a
    /// busy leader's thread (perf, 256 clients on one partition).
    pub fn set_clock(&mut self, now: Instant, wall_ms: u64) {
        self.now = now;
        self.wall_ms = wall_ms;
    }

    /// The turn's clock, as last set by [`ShardCore::set_clock`].
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the core next needs [`ShardCore::tick_if_due`].
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// Whether the shard was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Asks the shard to stop at the end of this turn.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// The shard's groups, for observers (status, simulators, tests).
    pub fn multi(&self) -> &MultiRaft {
        &self.multi
    }

    /// The shard's groups, to change directly: for simulators and tests, and only for what
    /// the shell has no request for yet (membership changes until the roster drives them,
    /// issue 13; forwarding a proposal to the leader).
    pub fn multi_mut(&mut self) -> &mut MultiRaft {
        &mut self.multi
    }

    /// The roster as this shard's replica of the system partition has applied it (`None`
    /// on shards without the system partition), for observers (simulators, tests).
    pub fn roster(&self) -> Option<crate::roster::Roster> {
        self.system.as_ref().map(|v| v.borrow().directory.roster.clone())
    }

    /// Shows every group's Ready to `observer` as the core takes it (a simulator's checker
    /// sees each entry appended and committed).
    pub fn set_observer(&mut self, observer: ReadyObserver) {
        self.observer = Some(observer);
    }

    /// What the driver must carry out now (it drains what it executes).
    pub fn output(&mut self) -> &mut Output<R> {
        self.out.answers.append(&mut self.waiters.answers);
        &mut self.out
    }

    /// Consensus messages from peer `from`, and the failure detector's.
    pub fn on_peer(&mut self, from: NodeId, messages: Vec<RaftMessage>) {
        self.peers_seen.insert(from, self.now);
        let mut elsewhere: BTreeMap<usize, Vec<RaftMessage>> = BTreeMap::new();
        self.counters.messages_received += messages.len() as u64;
        for m in messages {
            if let Some(phalanx_proto::raft_message::Body::Gossip(_)) = &m.body {
                self.on_gossip(from, m);
                continue;
            }
            let owner = crate::runtime::placement::shard_of(m.group, self.shards);
            if owner != self.id {
                // The sender has another core count than we do: route through the bus.
                elsewhere.entry(owner).or_default().push(m);
                continue;
            }
            if let Err(status) = self.multi.step(m) {
                // Refusals by a group; `MultiRaft` counts those for unknown groups (one field
                // read instead of a second group lookup per message).
                self.counters.messages_refused += 1;
                tracing::trace!(shard = self.id, from, %status, "peer message rejected");
            }
        }
        for (shard, msgs) in elsewhere {
            self.out.forwards.push((shard, from, msgs));
        }
    }

    /// The system partition's directory changed (from shard 0, via the bus).
    pub fn on_directory(&mut self, d: Arc<ClusterDirectory>) {
        self.directory = d;
    }

    /// Step 2 of the loop: ticks the groups if due, expires callers, and runs the periodic
    /// duties (shard 0's include the failure detector).
    pub fn tick_if_due(&mut self) {
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
        self.expire_held(now);
        self.check_leader_waiters(now);
        let seen = std::mem::take(&mut self.peers_seen);
        if self.system.is_some() {
            self.announce_if_needed(now);
            self.run_detector(now);
            self.evict_dead_if_due(now);
        }
        self.out.activity.extend(seen);
        self.follow_roster_if_due();
        if self.cfg.leader_balance_interval_ms > 0 && now >= self.next_balance {
            self.next_balance = now + Duration::from_millis(self.cfg.leader_balance_interval_ms);
            self.balance_leaders();
        }
    }
}
