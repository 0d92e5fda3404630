//! A simulated node: the engine's real shard core (`phalanx::shard::ShardCore`, the logic of
//! a shard: dispatch, the Ready pipeline, waiters, checkpoints, restore and replay, shard 0's
//! duties), its simulated disk, and a simulated log writer that makes the core's write jobs
//! durable as the real one does — queued jobs merged into batches by the same
//! `merge_jobs`, each made durable in the steps of the same `plan` (received snapshot files
//! first, then the batch cut by `split`), jobs completed in order; checkpoint snapshots saved
//! beside the writes, one save at a time, their compactions held back by the same
//! `CheckpointSaves`. A crash loses the core, the queue, the save in progress and whatever
//! of the write in flight had not reached the disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use phalanx::NodeConfig;
use phalanx::raft::{Config, GroupId, MultiRaft, NodeId};
use phalanx::shard::checkpoint_saves::CheckpointSaves;
use phalanx::shard::limits::ShardLimits;
use phalanx::shard::lost_state::settle;
use phalanx::shard::request::Answer;
use phalanx::shard::write::{Completion, MAX_JOBS_PER_BATCH, WriteJob, WriteStep, merge_jobs, plan};
use phalanx::shard::{CoreSetup, ShardCore};
use phalanx::state_machine::PartitionId;
use phalanx::{StateMachine, StateMachineFactory};
use phalanx_net::frame::DEFAULT_MAX_FRAME_BYTES;
use phalanx_proto::{LogEntry, RaftMessage};
use phalanx_storage::{DamagedTail, LogPosition};

use super::checker::entry_id;
use super::disk::Disk;

/// What a node's core showed its observers and state machines since the simulator last
/// looked: the checker's inputs.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Entries appended to a group's log, with the term of the entry before each.
    pub appended: Vec<(GroupId, LogEntry, Option<u64>)>,
    /// Entries a group committed.
    pub committed: Vec<(GroupId, LogEntry)>,
    /// State machine inputs, in order.
    pub deliveries: Vec<Delivery>,
}

/// One state machine input.
#[derive(Debug)]
pub struct Delivery {
    /// Group.
    pub group: GroupId,
    /// Its position in the state machine's input.
    pub position: usize,
    /// The entry.
    pub entry: LogEntry,
    /// Whether it was new to the state machine (false: a duplicate apply).
    pub new: bool,
    /// Whether it came as a replay of an entry applied before a restart (`restore_entry`).
    pub replay: bool,
}

/// A state machine that records what it was given: the ids of its inputs, in order.
struct Recorder {
    inputs: Vec<u64>,
    seen: BTreeSet<u64>,
    log: Arc<Mutex<Recorded>>,
}

impl Recorder {
    fn record(&mut self, p: PartitionId, e: &LogEntry, replay: bool) {
        let id = entry_id(e);
        let position = self.inputs.len();
        self.inputs.push(id);
        // Forwarded proposals (payloads starting with `f`) are exempt from the duplicate
        // check: forwarding is fire and forget, and a forward the network duplicated while
        // leadership moved may be proposed by two leaders, as with etcd's MsgProp. Every other
        // write is proposed exactly once, so a second delivery of its content is the
        // engine's fault.
        let new = self.seen.insert(id) || e.payload.first() == Some(&b'f');
        if let Ok(mut log) = self.log.lock() {
            log.deliveries.push(Delivery { group: p, position, entry: e.clone(), new, replay });
        }
    }
}

impl StateMachine for Recorder {
    fn apply(&mut self, p: PartitionId, e: &LogEntry) -> Bytes {
        self.record(p, e, false);
        Bytes::new()
    }

    fn restore_entry(&mut self, p: PartitionId, e: &LogEntry) {
        self.record(p, e, true);
    }

    fn snapshot(&mut self, _p: PartitionId) -> Bytes {
        let mut v = Vec::with_capacity(self.inputs.len() * 8);
        for i in &self.inputs {
            v.extend_from_slice(&i.to_le_bytes());
        }
        Bytes::from(v)
    }

    fn restore(&mut self, _p: PartitionId, image: &[u8]) {
        self.inputs =
            image.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        self.seen = self.inputs.iter().copied().collect();
    }
}

/// How many times a write's latency a checkpoint snapshot's save takes.
const SAVE_LATENCY_FACTOR: u64 = 8;

/// A merged batch in flight: its durable steps, then the jobs it completes.
struct MergedWrite {
    steps: Vec<WriteStep>,
    jobs: Vec<WriteJob>,
}

/// The simulated log writer: jobs queue while a write is in flight; when it completes, up
/// to `MAX_JOBS_PER_BATCH` queued jobs are merged into the next.
#[derive(Default)]
pub struct Writer {
    queue: VecDeque<WriteJob>,
    /// The write in progress and the tick its last sync completes.
    in_flight: Option<(u64, Vec<MergedWrite>)>,
    /// Checkpoint snapshots not durable yet and the compactions they hold back.
    saves: CheckpointSaves,
    /// The checkpoint save in progress and the tick it is durable.
    saving: Option<(u64, WriteStep)>,
}

impl Writer {
    /// What the writer holds, for a violation's report.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "queued {} jobs, write in flight until {:?}, checkpoint save until {:?}, {:?}",
            self.queue.len(),
            self.in_flight.as_ref().map(|(t, _)| t),
            self.saving.as_ref().map(|(t, _)| t),
            self.saves
        )
    }

    /// Whether nothing is queued, in flight or being saved.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none() && self.saving.is_none()
    }
}

/// Entry reads for followers, counted for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchCounts {
    /// Reads.
    pub fetches: u64,
    /// Reads whose range a compaction had removed.
    pub overtaken: u64,
}

/// A simulated node.
pub struct SimNode {
    /// Node id.
    pub id: NodeId,
    /// Whether it is running.
    pub up: bool,
    /// Restart count (positions are monotonic only within one incarnation).
    pub incarnation: u64,
    core: Option<ShardCore<u64>>,
    /// What a node that is down shows: no groups.
    empty: MultiRaft,
    /// Durable state.
    pub disk: Disk,
    /// The log writer.
    pub writer: Writer,
    /// Answers to the simulated clients, by request id.
    pub answers: Vec<(u64, Answer)>,
    recorded: Arc<Mutex<Recorded>>,
    /// The last index of the system partition its state machine holds (a snapshot's, or the
    /// last committed entry handed to it). The group's applied index lags it: it moves when
    /// the local write completes, while entries are applied as soon as they commit.
    system_position: Arc<std::sync::atomic::AtomicU64>,
    /// Lost durable state that the next start finds (a wiped disk, a damaged log tail).
    lost_pending: bool,
    /// The tick the node last lost durable state or started again with some still lost (set
    /// by the simulator): until leaders heard from it since, they may not know.
    pub lost_at: u64,
    /// The damaged tail the store reports at the next start.
    damaged: Option<DamagedTail>,
    /// This incarnation's monotonic clock, in ticks (ms).
    clock: u64,
    /// Per group, the commit index this incarnation recovered from its disk: what a restart
    /// may replay.
    pub recovered_commit: BTreeMap<GroupId, u64>,
    cfg: Arc<NodeConfig>,
    base: Instant,
}

/// The group configuration every simulated node starts from (id, group and seed are
/// filled in per node).
#[must_use]
pub fn base_config() -> Config {
    let mut c = Config::new(1, 1);
    c.election_ticks_min = 10;
    c.election_ticks_max = 20;
    c.heartbeat_ticks = 2;
    c.max_inflight_appends = 4;
    c.max_entries_per_append = 8;
    c.max_uncommitted_entries = 64;
    c.max_pending_reads = 16;
    c.max_apply_entries_per_ready = 16;
    // Small chunks so snapshots take several round trips.
    c.snapshot_chunk_bytes = 256;
    c
}

/// The batch cost one simulated write holds, as the core sizes its entries by it (the real
/// store's is 16 MiB; the simulator's entries are tiny). The writer still splits writes at the
/// seed's much smaller `split_cost`.
const SIM_WRITE_COST_BYTES: u64 = 1 << 20;

impl SimNode {
    /// A new node with an empty disk, started at wall time `wall_ms`.
    #[must_use]
    pub fn new(id: NodeId, cfg: Arc<NodeConfig>, base: Instant, wall_ms: u64) -> Self {
        let mut n = SimNode {
            id,
            up: false,
            incarnation: 0,
            core: None,
            empty: MultiRaft::new(),
            disk: Disk::default(),
            writer: Writer::default(),
            answers: Vec::new(),
            recorded: Arc::new(Mutex::new(Recorded::default())),
            system_position: Arc::default(),
            lost_pending: false,
            lost_at: 0,
            damaged: None,
            clock: 0,
            recovered_commit: BTreeMap::new(),
            cfg,
            base,
        };
        if let Err(e) = n.boot(wall_ms) {
            panic!("node {id}: a new node does not start: {e}");
        }
        n
    }

    /// The node's groups (none while it is down).
    #[must_use]
    pub fn multi(&self) -> &MultiRaft {
        self.core.as_ref().map_or(&self.empty, |c| c.multi())
    }

    /// The roster the node's system partition has applied, while it is up, and the index
    /// of the system partition's log it reflects.
    pub fn roster(&self) -> Option<(u64, phalanx::roster::Roster)> {
        let roster = self.core.as_ref().and_then(|c| c.roster())?;
        Some((self.system_position.load(Ordering::Relaxed), roster))
    }

    /// The node's core, while it is up.
    pub fn core(&mut self) -> Option<&mut ShardCore<u64>> {
        self.core.as_mut()
    }

    /// The node's monotonic clock now.
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.clock)
    }

    /// Advances the node's clock by one tick (ms) and ticks its core if due.
    pub fn tick(&mut self, wall_ms: u64) {
        self.clock += 1;
        let now = self.now();
        if let Some(core) = self.core.as_mut() {
            core.set_clock(now, wall_ms);
            core.tick_if_due();
        }
    }

    /// Messages from a peer.
    pub fn deliver(&mut self, m: RaftMessage) {
        if let Some(core) = self.core.as_mut() {
            core.on_peer(m.from, vec![m]);
        }
    }

    /// Takes what the core and its state machines recorded since the last call.
    pub fn take_recorded(&mut self) -> Recorded {
        self.recorded.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    /// Runs the core's Ready pipeline and takes its output: frames (returned, for the
    /// network), write jobs (queued at the writer), answers (kept for the clients).
    pub fn process(&mut self) -> Vec<RaftMessage> {
        let Some(core) = self.core.as_mut() else { return Vec::new() };
        core.process_readies();
        let out = core.output();
        let mut sent = Vec::new();
        for (_, batch) in out.frames.drain(..) {
            sent.extend(batch.messages);
        }
        self.writer.queue.extend(out.writes.drain(..));
        self.answers.append(&mut out.answers);
        // One shard: nothing to tell other shards or handles.
        out.activity.clear();
        out.events.clear();
        out.leaders.clear();
        out.peer_status.clear();
        out.peer_reincarnations.clear();
        out.unlisted_at = None;
        out.directory = None;
        out.forwards.clear();
        out.system_commands.clear();
        sent
    }

    /// Completes the write in flight if its sync is done by tick `now` (storing it, then
    /// completing its jobs in order), then starts the next one if jobs are queued, done
    /// `latency` ticks from now. Returns whether anything happened.
    pub fn run_writer(&mut self, now: u64, latency: u64, split_cost: u64, counts: &mut FetchCounts) -> bool {
        let mut progressed = false;
        if self.writer.saving.as_ref().is_some_and(|(done_at, _)| *done_at <= now) {
            self.finish_save();
            progressed = true;
        }
        if self.writer.in_flight.as_ref().is_some_and(|(done_at, _)| *done_at <= now)
            && let Some((_, merged)) = self.writer.in_flight.take()
        {
            for m in merged {
                for step in m.steps {
                    self.disk.apply(step);
                }
                for job in m.jobs {
                    let completion = self.complete(job, counts);
                    if let Some(core) = self.core.as_mut()
                        && let Err(e) = core.on_durable(completion)
                    {
                        panic!("node {}: a simulated write cannot fail: {e}", self.id);
                    }
                }
            }
            progressed = true;
        }
        if self.writer.in_flight.is_none() && !self.writer.queue.is_empty() {
            let n = self.writer.queue.len().min(MAX_JOBS_PER_BATCH);
            let mut jobs: Vec<WriteJob> = self.writer.queue.drain(..n).collect();
            let batches = merge_jobs(&mut jobs);
            let mut jobs = jobs.into_iter();
            let mut merged = Vec::new();
            for mut m in batches {
                if self.writer.saves.admit(&mut m.batch, m.checkpoints) {
                    // The real writer waits for the save in progress here.
                    self.finish_save();
                }
                let steps = plan(m.batch, m.snapshots, split_cost);
                merged.push(MergedWrite { steps, jobs: jobs.by_ref().take(m.jobs).collect() });
            }
            self.writer.in_flight = Some((now + latency, merged));
            progressed = true;
        }
        if self.writer.in_flight.is_none()
            && let Some(batch) = self.writer.saves.take_released()
        {
            // Compactions released with no job to carry them go alone.
            let steps = plan(batch, Vec::new(), split_cost);
            self.writer.in_flight = Some((now + latency, vec![MergedWrite { steps, jobs: Vec::new() }]));
            progressed = true;
        }
        if self.writer.saving.is_none()
            && let Some(files) = self.writer.saves.next_save()
        {
            // A snapshot file is larger than a batch: its save takes longer, and overlaps
            // more of what follows it (installs of its partition among them).
            self.writer.saving = Some((now + SAVE_LATENCY_FACTOR * latency + 1, WriteStep::Snapshots(files)));
            progressed = true;
        }
        progressed
    }

    /// The checkpoint save in progress reaches the disk.
    fn finish_save(&mut self) {
        if let Some((_, files)) = self.writer.saving.take() {
            self.disk.apply(files);
            self.writer.saves.saved();
        }
    }

    /// A job's completion: its messages, and its fetches read from the disk as it is now.
    fn complete(&self, job: WriteJob, counts: &mut FetchCounts) -> Completion {
        let mut fetched = Vec::new();
        for (p, f) in job.fetches {
            counts.fetches += 1;
            let disk = self.disk.groups.get(&p);
            if disk.is_some_and(|d| d.floor.0 >= f.lo) {
                counts.overtaken += 1;
            }
            let entries = disk.map(|d| d.read(f.lo, f.hi, f.max_bytes)).unwrap_or_default();
            fetched.push((p, f, entries));
        }
        Completion {
            number: job.number,
            persisted_messages: job.persisted_messages,
            result: Ok(()),
            fetched,
            refused: Vec::new(),
        }
    }

    /// Stops cleanly, as the runtime's shard does on SIGTERM: the stop arrives among a turn's
    /// inputs, which are in (no Ready was collected since), so the core's `shut_down` runs
    /// with them unprocessed; its last job queues behind what the writer holds, and the writer
    /// stores everything (the write in flight, the queue, the checkpoint saves) before the
    /// process exits. Nothing is lost; what the next start finds must restore.
    pub fn stop_cleanly(&mut self, now: u64, split_cost: u64, counts: &mut FetchCounts) {
        /// Writer rounds to store everything held: each completes a write or a save.
        const MAX_DRAIN_ROUNDS: u64 = 10_000;
        let Some(mut core) = self.core.take() else { return };
        core.stop();
        let last = core.shut_down();
        // What the turn's inputs already queued goes first (the shell's last `execute`);
        // frames are dropped, as the network may.
        self.writer.queue.extend(core.output().writes.drain(..));
        self.writer.queue.extend(last);
        // The shard's loop has ended: completions reach no core.
        drop(core);
        for round in 0..MAX_DRAIN_ROUNDS {
            if self.writer.is_idle() {
                break;
            }
            self.run_writer(now + round, 0, split_cost, counts);
        }
        assert!(self.writer.is_idle(), "node {}: the writer did not drain at a clean stop", self.id);
        self.crash();
    }

    /// Loses everything not durable.
    pub fn crash(&mut self) {
        self.up = false;
        self.core = None;
        self.writer = Writer::default();
        self.answers.clear();
        self.take_recorded();
    }

    /// Crashes while its write in flight is being stored: the first `keep` of its durable
    /// steps (in the writer's order) reached the disk. What a crash between them leaves must
    /// restart safely.
    pub fn crash_mid_write(&mut self, keep: usize) {
        if let Some((_, merged)) = self.writer.in_flight.take() {
            for step in merged.into_iter().flat_map(|m| m.steps).take(keep) {
                self.disk.apply(step);
            }
        }
        self.crash();
    }

    /// Crashes with the disk wiped (a replaced disk): everything lost.
    pub fn wipe(&mut self) {
        self.crash();
        self.disk = Disk::default();
        self.lost_pending = true;
    }

    /// Crashes with the last `k` entries of `groups` lost (a damaged last WAL batch the store
    /// drops at open and reports).
    pub fn cut_tails(&mut self, groups: &[GroupId], k: usize) {
        self.crash();
        let mut hit = BTreeMap::new();
        for g in groups {
            if let Some(gd) = self.disk.groups.get_mut(g) {
                gd.cut_tail(k);
                hit.insert(*g, None);
            }
        }
        if !hit.is_empty() {
            self.damaged = Some(DamagedTail {
                file: "sim.wal".into(),
                offset: 0,
                batch_seq: 0,
                partitions: hit,
                complete: true,
            });
            self.lost_pending = true;
        }
    }

    /// Whether the node lost durable state it has not recovered yet: lost while down, or
    /// a group still recovering (the flag is on the disk from the moment the loss is known
    /// until the end of the recovery is durable).
    #[must_use]
    pub fn has_lost_state(&self) -> bool {
        self.lost_pending || self.disk.groups.values().any(|gd| gd.hard_state.recovering)
    }

    /// Whether the node lost durable state of group `g` it has not recovered yet.
    #[must_use]
    pub fn lost_state_in(&self, g: GroupId) -> bool {
        self.lost_pending || self.disk.groups.get(&g).is_some_and(|gd| gd.hard_state.recovering)
    }

    /// Restarts from the disk at wall time `wall_ms`; `Err` when the engine refuses to
    /// restore it (the node stays down).
    pub fn restart(&mut self, wall_ms: u64) -> Result<(), phalanx::Error> {
        self.incarnation += 1;
        // A restarted node's monotonic clock starts again, as after a reboot.
        self.clock = 0;
        let r = self.boot(wall_ms);
        if r.is_err() {
            self.crash();
        }
        r
    }

    /// Starts as the runtime's driver does: what the store holds, settled by the engine's
    /// rules for lost state (the writes they ask for stored first), restored by the core.
    fn boot(&mut self, wall_ms: u64) -> Result<(), phalanx::Error> {
        let partitions: Vec<PartitionId> = (0..=u64::from(self.cfg.initial_partitions)).collect();
        let mut loaded: Vec<_> =
            partitions.iter().map(|p| (*p, self.disk.groups.get(p).and_then(|gd| gd.recovered()))).collect();
        let snapshots: BTreeMap<PartitionId, _> = partitions
            .iter()
            .filter_map(|p| self.disk.groups.get(p)?.snapshot.clone().map(|s| (*p, s)))
            .collect();
        let positions =
            snapshots.iter().map(|(p, s)| (*p, LogPosition::new(s.meta.index, s.meta.term))).collect();
        let disk = &self.disk;
        let holds = |p: PartitionId, at: LogPosition| {
            disk.groups.get(&p).is_some_and(|gd| gd.holds(at.index, at.term))
        };
        let settled = settle(0, &self.cfg, &mut loaded, &positions, self.damaged.as_ref(), &holds)?;
        for w in settled.align.into_iter().chain(settled.mark) {
            if let Err(e) = self.disk.groups.entry(w.partition).or_default().store(&w) {
                self.disk.refused.push(e);
            }
        }
        self.damaged = None;
        self.recovered_commit = self.disk.groups.iter().map(|(g, gd)| (*g, gd.hard_state.commit)).collect();
        let log = self.recorded.clone();
        let state_machines: StateMachineFactory = Arc::new(move |_p| {
            Box::new(Recorder { inputs: Vec::new(), seen: BTreeSet::new(), log: log.clone() })
        });
        let setup = CoreSetup {
            shard: 0,
            shards: 1,
            cfg: self.cfg.clone(),
            state_machines,
            limits: ShardLimits::derive(&self.cfg, SIM_WRITE_COST_BYTES, DEFAULT_MAX_FRAME_BYTES)?,
            now: self.now(),
            wall_ms,
        };
        let mut core = ShardCore::restore(setup, loaded, snapshots, settled.marked)?;
        let log = self.recorded.clone();
        let system_position = self.system_position.clone();
        system_position.store(core.multi().group(0).map_or(0, |g| g.log().applied()), Ordering::Relaxed);
        core.set_observer(Box::new(move |g, r| {
            let gid = g.group_id();
            if gid == 0 {
                let at =
                    r.committed_entries.last().map(|e| e.index).or(r.snapshot.as_ref().map(|s| s.meta.index));
                if let Some(at) = at {
                    system_position.store(at, Ordering::Relaxed);
                }
            }
            let Ok(mut rec) = log.lock() else { return };
            for (k, e) in r.entries.iter().enumerate() {
                let prev = if k == 0 { g.log().term(e.index - 1) } else { Some(r.entries[k - 1].term) };
                rec.appended.push((gid, e.clone(), prev));
            }
            for e in &r.committed_entries {
                rec.committed.push((gid, e.clone()));
            }
        }));
        self.core = Some(core);
        self.up = true;
        self.lost_pending = false;
        Ok(())
    }
}
