//! One shard's driver: a glommio executor on its own core that runs the shard's core
//! ([`ShardCore`], `engine/src/shard/`) and carries out what it decides. The core owns the
//! partitions, their Raft groups, their state machines and their callers; the driver owns
//! the IO: the inbox, the peer connections, the WAL writer task and the node's shared views.
//! Nothing here is shared with other threads except through the bus and the shared views.
//!
//! The loop (see `shard/mod.rs` for what each step decides): wait for an input, a write
//! completion or the next tick; read the clocks once; feed completions and up to
//! `max_inputs_per_turn` inputs to the core; tick it; collect its Readies; then execute the
//! turn's output — shared views, events, bus messages, frames to peers, write jobs, answers.
//! The writer task runs only when the loop yields, so a leader's appends still leave before
//! its own write.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use phalanx_net::Transport;
use phalanx_net::spare::Spare;
use phalanx_storage::{AnyStore, LogPosition, LogStore, StoreOptions};

use super::allocator;
use super::bus::{Bus, ShardMsg};
use super::lost_state;
use super::placement::partitions_of;
use super::request::Responder;
use super::shared::NodeShared;
use super::snapshots::SnapshotStore;
use super::writer::{self, Completion, WriteJob, WriterStats};
use crate::Error;
use crate::config::NodeConfig;
use crate::events::Event;
use crate::raft::Status;
use crate::shard::limits::ShardLimits;
use crate::shard::request::Answer;
use crate::shard::{CoreSetup, ShardCore};

use crate::state_machine::{PartitionId, StateMachineFactory};

pub use crate::shard::SYSTEM_LOG_TYPE;

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

/// One shard: its core and its IO.
pub(crate) struct Shard<T: Transport> {
    id: usize,
    cfg: Arc<NodeConfig>,
    core: ShardCore<Responder>,
    jobs: Option<flume::Sender<WriteJob>>,
    done: flume::Receiver<Completion>,
    writer_task: Option<glommio::Task<()>>,
    /// The writer's counters (for `Op::Stats`).
    writer_stats: Rc<RefCell<WriterStats>>,
    transport: T,
    inbox: flume::Receiver<ShardMsg>,
    bus: Bus,
    shared: Arc<NodeShared>,
    /// Recent turns' leader changes and events: the room the output keeps for them.
    spare_leaders: Spare,
    spare_events: Spare,
    /// When the allocator returns freed memory (`allocator.rs`).
    purge: allocator::PurgePolicy,
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
    /// Opens the shard's WAL and snapshots, settles partitions that lost durable state, and
    /// builds the core from what they hold (replay happens through the normal apply path).
    pub(crate) async fn open(setup: ShardSetup, transport: T) -> Result<Self, Error> {
        let ShardSetup { shard, shards, cfg, inbox, bus, shared, state_machines } = setup;
        let dir = cfg.wal_shard_dir(shard);
        let opts = StoreOptions { sync_writes: cfg.sync_writes, faults: cfg.store_faults.clone() };
        let mut store = AnyStore::open(cfg.wal, &dir, opts).await.map_err(|e| {
            Error::storage(shard, format!("opening the {} store in {}", cfg.wal.name(), dir.display()), e)
        })?;
        // What the shard may build is bounded by what one write and one frame hold; a
        // configuration they cannot carry is refused before anything is loaded.
        let limits = ShardLimits::derive(&cfg, store.max_batch_cost(), transport.max_frame_bytes())?;
        // Snapshots live beside the WAL shards, not inside them: a WAL directory holds only
        // the store's own files (it refuses anything else as foreign).
        let snapshot_dir = cfg.data_dir.join("snapshots").join(format!("shard-{shard}"));
        let snapshots = SnapshotStore::open(&snapshot_dir).map_err(|e| Error::io(snapshot_dir, e))?;
        // All partitions in one pass: the store reads its log once, sequentially, instead of
        // one partition (and, for the native WAL, nearly one read per entry) at a time.
        let owned: Vec<PartitionId> = partitions_of(shard, shards, cfg.initial_partitions).collect();
        let mut loaded = store
            .load_partitions(&owned)
            .await
            .map_err(|e| Error::storage(shard, format!("loading {} partitions", owned.len()), e))?;
        let mut loaded_snapshots = std::collections::BTreeMap::new();
        for p in &owned {
            if let Some(s) = snapshots.load(*p)? {
                loaded_snapshots.insert(*p, s);
            }
        }
        // Partitions that lost durable state (a new or wiped disk, a damaged WAL tail) are
        // decided first (a node that cannot recover refuses before writing anything), then
        // marked recovering, durably, before any other write of theirs (`lost_state.rs`).
        let positions =
            loaded_snapshots.iter().map(|(p, s)| (*p, LogPosition::new(s.meta.index, s.meta.term))).collect();
        let marked = lost_state::settle_at_open(shard, &cfg, &mut store, &mut loaded, &positions).await?;
        let core_setup = CoreSetup {
            shard,
            shards,
            cfg: cfg.clone(),
            state_machines,
            limits,
            now: Instant::now(),
            wall_ms: phalanx_net::wall_ms(),
        };
        let core = ShardCore::restore(core_setup, loaded, loaded_snapshots, marked)?;
        let (jobs, jobs_rx) = flume::unbounded();
        let (done_tx, done) = flume::unbounded();
        let writer_stats = Rc::new(RefCell::new(WriterStats::default()));
        let writer_task = glommio::spawn_local(writer::run(
            shard,
            store,
            snapshots,
            jobs_rx,
            done_tx,
            writer_stats.clone(),
        ));
        let mut shard = Shard {
            id: shard,
            cfg,
            core,
            jobs: Some(jobs),
            done,
            writer_task: Some(writer_task),
            writer_stats,
            transport,
            inbox,
            bus,
            shared,
            spare_leaders: Spare::new(),
            spare_events: Spare::new(),
            purge: allocator::PurgePolicy::new(),
        };
        // The restore's events.
        shard.execute()?;
        Ok(shard)
    }

    /// Runs until asked to stop or the store fails.
    pub(crate) async fn run(mut self) {
        let mut failed = false;
        let mut last_look = Instant::now();
        loop {
            let now = self.read_clocks();
            if now.duration_since(last_look) >= allocator::PURGE_LOOK_INTERVAL {
                self.purge.look(now.duration_since(last_look));
                last_look = now;
            }
            let idle = now < self.core.next_tick() && self.done.is_empty();
            if idle {
                let wait = self.core.next_tick() - now;
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
                    Wake::Input(Some(m)) => self.input(m),
                    Wake::Input(None) => self.core.stop(), // every sender is gone
                    Wake::Durable(Some(c)) => {
                        if let Err(e) = self.core.on_durable(c) {
                            failed = self.fatal(e);
                            break;
                        }
                    }
                    Wake::Durable(None) | Wake::Tick => {}
                }
            }
            let mut error = None;
            while let Ok(c) = self.done.try_recv() {
                if let Err(e) = self.core.on_durable(c) {
                    error = Some(e);
                    break;
                }
            }
            if let Some(e) = error {
                failed = self.fatal(e);
                break;
            }
            for _ in 0..self.cfg.max_inputs_per_turn {
                match self.inbox.try_recv() {
                    Ok(m) => self.input(m),
                    Err(_) => break,
                }
            }
            if self.core.stopping() {
                break;
            }
            self.core.tick_if_due();
            self.core.process_readies();
            if let Err(e) = self.execute() {
                failed = self.fatal(e);
                break;
            }
            if !idle {
                // A turn that found work waiting did not await: without this, a busy shard
                // would keep its executor to itself (its WAL writer, its transport and any
                // other shard placed on the same executor wait for it to yield).
                futures_lite::future::yield_now().await;
            }
        }
        let last = self.core.shut_down();
        if failed {
            // Nothing more leaves a shard whose store failed but the answers (every caller
            // still waiting is refused; what committed is committed on a quorum).
            let out = self.core.output();
            out.frames.clear();
            out.writes.clear();
        }
        let _ = self.execute();
        refuse_from_now_on(self.id, self.inbox.clone());
        // The last write (after a failed write the writer refuses it, as everything else).
        if let (Some(jobs), Some(job)) = (&self.jobs, last) {
            let _ = jobs.send(job);
        }
        // Closing the job channel lets the writer finish what it holds and close the store.
        self.jobs = None;
        if let Some(t) = self.writer_task.take() {
            t.await;
        }
        let Shard { transport, .. } = self;
        transport.shutdown().await;
    }

    /// Reads the clocks for this turn (once: see `ShardCore::set_clock`).
    fn read_clocks(&mut self) -> Instant {
        let now = Instant::now();
        self.core.set_clock(now, phalanx_net::wall_ms());
        now
    }

    fn input(&mut self, m: ShardMsg) {
        // A peer's batch counts its messages: a shard heartbeating ten thousand partitions
        // gets a few batches a turn, each of thousands.
        let n = if let ShardMsg::Peer { messages, .. } = &m { messages.len() } else { 1 };
        self.purge.inputs(n as u64);
        match m {
            ShardMsg::Request(r) => self.core.on_request(r),
            ShardMsg::Peer { from, messages } => self.core.on_peer(from, messages),
            ShardMsg::System(d) => self.core.on_directory(d),
            ShardMsg::PeerStatus { node, liveness } => self.core.on_peer_status(node, liveness),
            ShardMsg::PeerReincarnated { node } => self.core.on_peer_reincarnated(node),
            ShardMsg::SystemCommand(c) => self.core.propose_system_command(c),
            ShardMsg::Stop => self.core.stop(),
        }
    }

    /// Carries out the core's output: the shared views first (so a subscriber reacting to
    /// an event sees what it announces), then events, bus messages, frames, write jobs and
    /// answers. `Err` when the writer is gone.
    fn execute(&mut self) -> Result<(), Error> {
        // The turn's clock (`read_clocks`), not a second reading.
        let now = self.core.now();
        let out = self.core.output();
        // A start-up or an election of every partition fills these once, two entries per
        // partition; what recent turns needed is kept, not ten thousand partitions' worth.
        let (leaders, events) = (out.leaders.len(), out.events.len());
        for (p, leader, term) in out.leaders.drain(..) {
            self.shared.set_leader(p, leader, term);
        }
        for &(node, liveness) in &out.peer_status {
            self.shared.set_liveness(node, liveness);
        }
        if let Some(v) = out.unlisted_at.take() {
            self.shared.set_unlisted_at(v);
        }
        if let Some(d) = &out.directory {
            self.shared.set_directory(d.clone());
        }
        if !out.activity.is_empty() {
            self.shared.note_activity(&out.activity);
            out.activity.clear();
        }
        for e in out.events.drain(..) {
            self.shared.events.publish(e);
        }
        self.spare_leaders.trim(&mut out.leaders, leaders, now);
        self.spare_events.trim(&mut out.events, events, now);
        for (node, liveness) in out.peer_status.drain(..) {
            self.bus.broadcast(self.id, || ShardMsg::PeerStatus { node, liveness });
        }
        for node in out.peer_reincarnations.drain(..) {
            self.bus.broadcast(self.id, || ShardMsg::PeerReincarnated { node });
        }
        if let Some(d) = out.directory.take() {
            self.bus.broadcast(self.id, || ShardMsg::System(d.clone()));
        }
        for command in out.system_commands.drain(..) {
            if !self.bus.system_command(0, command) {
                tracing::debug!("bus full: dropped a system command for shard 0");
            }
        }
        for (shard, from, messages) in out.forwards.drain(..) {
            if !self.bus.deliver_peer(shard, from, messages) {
                tracing::debug!(shard, from, "bus full: dropped forwarded peer messages");
            }
        }
        for (to, batch) in out.frames.drain(..) {
            self.transport.send(to, batch);
        }
        let mut writer_gone = false;
        for job in out.writes.drain(..) {
            match &self.jobs {
                Some(jobs) if !writer_gone => writer_gone = jobs.send(job).is_err(),
                _ => writer_gone = true,
            }
        }
        let mut answers = std::mem::take(&mut out.answers);
        for (reply, mut answer) in answers.drain(..) {
            if let Answer::Stats(Some(s)) = &mut answer {
                // One snapshot, taken now that this turn's frames went to the transport: the
                // core's counters again (it answered before its turn's flush), and what it
                // cannot see: its inbox, its transport, its store.
                s.core = self.core.core_stats();
                s.inbox_depth = self.inbox.len();
                s.transport = self.transport.stats();
                let w = self.writer_stats.borrow();
                s.store = w.store;
                s.write_latency = w.write_latency;
            }
            reply.send(answer);
        }
        // The emptied buffer goes back: its capacity serves the next turn.
        let out = self.core.output();
        if out.answers.is_empty() {
            out.answers = answers;
        }
        if writer_gone { Err(Error::WriterStopped { shard: self.id }) } else { Ok(()) }
    }

    /// Returns true: the shard has failed.
    fn fatal(&mut self, error: Error) -> bool {
        // Storage failures are fatal (never retry a sync): stop this shard loudly instead of
        // acknowledging anything more.
        tracing::error!(shard = self.id, "shard stopped: {error}");
        let reason = error.to_string();
        self.shared.fail(error);
        self.shared.events.publish(Event::ShardFailed { shard: self.id, reason });
        true
    }
}

#[cfg(test)]
mod tests {
    //! The shard core's read ids (`shard/waiters.rs`), tested here: the core reads no clock,
    //! not even in its tests.

    use std::time::{Duration, Instant};

    use crate::hlc::Ticket;
    use crate::raft::Status;
    use crate::shard::request::Answer;
    use crate::shard::waiters::{ProposalWaiter, ReadKind, Waiters};

    fn waiter(term: u64, id: u32) -> ProposalWaiter<u32> {
        ProposalWaiter { term, ticket: Ticket { physical_ms: 1, logical: id, node_id: 1 }, reply: id }
    }

    /// What each caller was answered, in order: its id and the status.
    fn answered(w: &mut Waiters<u32>) -> Vec<(u32, Status)> {
        w.answers
            .drain(..)
            .map(|(id, a)| match a {
                Answer::Replication(r) => (id, r.status),
                _ => panic!("caller {id}: not a replication answer"),
            })
            .collect()
    }

    /// Proposal waiters are kept per partition in log order. Entries applied in order complete
    /// them; an index a later term proposed again fails the earlier caller; a proposal below
    /// the newest (a new term reusing indexes) still finds its entry; a stopped partition fails
    /// its callers in log order and leaves the others'.
    #[test]
    fn proposals_complete_in_log_order_and_survive_reused_indexes() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut w: Waiters<u32> = Waiters::new(1_000);
        w.add_proposal(1, 5, waiter(1, 1), later);
        w.add_proposal(1, 7, waiter(1, 2), later);
        w.add_proposal(2, 3, waiter(1, 3), later);
        w.add_proposal(1, 9, waiter(1, 4), later);
        // Term 2 reuses index 7 (overwriting caller 2's entry) and proposes 6 below the newest.
        w.add_proposal(1, 7, waiter(2, 5), later);
        w.add_proposal(1, 6, waiter(2, 6), later);
        assert_eq!(answered(&mut w), [(2, Status::ReplicationFailed)]);
        assert_eq!(w.len(), 5);
        for (i, term) in [(5, 1), (6, 2), (7, 2)] {
            assert!(w.wants(1, i), "index {i}");
            assert_eq!(w.on_applied(1, i, term, bytes::Bytes::new()), None);
        }
        assert!(!w.wants(1, 8));
        assert_eq!(answered(&mut w), [(1, Status::Success), (6, Status::Success), (5, Status::Success)]);
        // Index 9 applied with another term than its proposal's: overwritten.
        assert_eq!(w.on_applied(1, 9, 3, bytes::Bytes::new()), Some(Status::ReplicationFailed));
        w.add_proposal(1, 12, waiter(3, 7), later);
        w.add_proposal(1, 11, waiter(3, 8), later);
        w.fail_partition(1, Status::Errored);
        assert_eq!(
            answered(&mut w),
            [(4, Status::ReplicationFailed), (8, Status::Errored), (7, Status::Errored)]
        );
        assert!(w.wants(2, 3) && !w.wants(1, 11), "partition 2's caller is left alone");
        w.expire(later + Duration::from_secs(1));
        assert_eq!(answered(&mut w), [(3, Status::ProposalTimeout)]);
        assert_eq!(w.len(), 0);
    }

    /// Regression (simulator seed 515, the first run through the real shell): read ids
    /// restarted at 1 with every incarnation, so a leader's answer to a read forwarded before
    /// a crash matched a new read after the restart and answered it with a stale index.
    #[test]
    fn read_ids_of_a_later_incarnation_never_repeat_an_earlier_one() {
        let deadline = Instant::now();
        let mut before: Waiters<()> = Waiters::new(1_000);
        let ids: Vec<u64> = (0..1000).map(|_| before.add_read(1, ReadKind::Barrier, (), deadline)).collect();
        let mut after: Waiters<()> = Waiters::new(1_001);
        let next = after.add_read(1, ReadKind::Barrier, (), deadline);
        assert!(ids.iter().all(|id| *id < next), "a restarted shard reused a read id");
    }
}
