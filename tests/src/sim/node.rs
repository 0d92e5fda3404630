//! A simulated node: a `MultiRaft`, its disk, its state machines, and the writes in flight
//! to the disk. It plays the runtime shell's part: send, persist, then acknowledge, apply
//! and advance — in the order `Ready` prescribes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use phalanx::raft::{Config, GroupId, Membership, MultiRaft, NodeId, ReadState, Snapshot};
use phalanx_proto::{HardState, LogEntry, RaftMessage};

use super::checker::entry_id;
use super::disk::Disk;

/// A state machine that records what it was given: the ids of its inputs, in order.
#[derive(Clone, Debug, Default)]
pub struct StateMachine {
    /// Inputs, in order.
    pub inputs: Vec<u64>,
    seen: BTreeSet<u64>,
}

impl StateMachine {
    /// Encodes the state (its snapshot image).
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.inputs.len() * 8);
        for i in &self.inputs {
            v.extend_from_slice(&i.to_le_bytes());
        }
        Bytes::from(v)
    }

    /// Restores from an image made by `encode`.
    #[must_use]
    pub fn decode(b: &[u8]) -> Self {
        let inputs: Vec<u64> =
            b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let seen = inputs.iter().copied().collect();
        StateMachine { inputs, seen }
    }

    /// Applies one input; returns false if it was seen before (a duplicate apply).
    ///
    /// Forwarded proposals (payloads starting with `f`) are exempt: forwarding is fire and
    /// forget, and a forward the network duplicated while leadership moved may be proposed by
    /// two leaders, as with etcd's MsgProp. Every other write is proposed exactly once, so a
    /// second delivery of its content is the engine's fault.
    pub fn apply(&mut self, e: &LogEntry) -> bool {
        let id = entry_id(e);
        self.inputs.push(id);
        self.seen.insert(id) || e.payload.first() == Some(&b'f')
    }
}

/// One group's part of a disk write.
pub struct GroupWrite {
    /// Group.
    pub group: GroupId,
    /// Received snapshot to install.
    pub snapshot: Option<Snapshot>,
    /// Local snapshot (from `compact`) to store before compacting.
    pub local_snapshot: Option<Snapshot>,
    /// Entries to store.
    pub entries: Vec<LogEntry>,
    /// Hard state to store.
    pub hard_state: Option<HardState>,
    /// Prefix to discard.
    pub compact_to: Option<u64>,
    /// To send once durable.
    pub persisted_messages: Vec<RaftMessage>,
    /// To apply once durable.
    pub committed: Vec<LogEntry>,
    /// State machine input once durable.
    pub deliveries: Vec<LogEntry>,
    /// Entries to read back from disk for lagging followers, once durable.
    pub fetches: Vec<phalanx::raft::LogFetch>,
}

/// A disk write in flight: one MultiReady's persistent part.
pub struct PendingWrite {
    /// Tick at which the simulated fsync completes.
    pub done_at: u64,
    /// MultiReady number to acknowledge.
    pub number: u64,
    /// Per group.
    pub groups: Vec<GroupWrite>,
}

/// A simulated node.
pub struct SimNode {
    /// Node id.
    pub id: NodeId,
    /// Whether it is running.
    pub up: bool,
    /// Restart count (positions are monotonic only within one incarnation).
    pub incarnation: u64,
    /// The groups.
    pub multi: MultiRaft,
    /// Durable state.
    pub disk: Disk,
    /// Writes in flight, in order.
    pub pending: VecDeque<PendingWrite>,
    /// State machines.
    pub sms: BTreeMap<GroupId, StateMachine>,
    /// Snapshots made by `compact`, to be stored with the next write.
    pub local_snapshots: BTreeMap<GroupId, Snapshot>,
    /// Read answers received, not yet checked.
    pub reads: Vec<(GroupId, ReadState)>,
    /// Fetches whose read waits for the next write to complete (the runtime's writer reads
    /// a job's fetches after the whole merged batch, later Readies' compactions included).
    pub held_fetches: Vec<(GroupId, phalanx::raft::LogFetch)>,
    /// Configuration template for this node's groups.
    template: Config,
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

impl SimNode {
    /// A fresh node holding `groups`, all starting with `initial` membership.
    #[must_use]
    pub fn new(id: NodeId, groups: &[GroupId], initial: &Membership, template: &Config, seed: u64) -> Self {
        let mut n = SimNode {
            id,
            up: true,
            incarnation: 0,
            multi: MultiRaft::new(),
            disk: Disk::default(),
            pending: VecDeque::new(),
            sms: BTreeMap::new(),
            local_snapshots: BTreeMap::new(),
            reads: Vec::new(),
            held_fetches: Vec::new(),
            template: template.clone(),
        };
        for &g in groups {
            n.disk.groups.insert(g, Default::default());
        }
        if let Err((g, e)) = n.boot(initial, seed) {
            panic!("node {id} group {g}: a new node does not start: {e}");
        }
        n
    }

    /// Loses everything not durable.
    pub fn crash(&mut self) {
        self.up = false;
        self.pending.clear();
        self.sms.clear();
        self.local_snapshots.clear();
        self.reads.clear();
        self.held_fetches.clear();
        self.multi = MultiRaft::new();
    }

    /// Crashes with the disk wiped (a replaced disk): everything lost.
    pub fn wipe(&mut self) {
        self.crash();
        for gd in self.disk.groups.values_mut() {
            *gd = Default::default();
            // What the restart finds and marks (an empty group); marked now so that, while
            // it is down, nobody takes it for a node with its state intact.
            gd.hard_state.recovering = true;
            gd.written = true;
        }
    }

    /// Crashes with the last `k` entries of `groups` lost (a damaged WAL tail the store
    /// dropped and reported): those groups must recover at restart.
    pub fn cut_tails(&mut self, groups: &[GroupId], k: usize) {
        self.crash();
        for g in groups {
            if let Some(gd) = self.disk.groups.get_mut(g) {
                gd.cut_tail(k);
                gd.hard_state.recovering = true;
            }
        }
    }

    /// Whether any group of this node is recovering from lost state (the flag is on the disk
    /// from the moment the loss is known until the end of the recovery is durable).
    #[must_use]
    pub fn has_lost_state(&self) -> bool {
        self.disk.groups.values().any(|gd| gd.hard_state.recovering)
    }

    /// Crashes while its oldest write in flight is being stored: the write is cut into the
    /// batches the runtime's WAL writer would write (`split_write`, batches of at most
    /// `max_cost`), snapshot files first as the writer saves them, and the first `keep` of
    /// those batches reached the disk. What a crash between them leaves must restart safely.
    pub fn crash_mid_write(&mut self, keep: usize, max_cost: u64) {
        if let Some(w) = self.pending.pop_front() {
            let mut received = BTreeMap::new();
            let mut partitions = Vec::new();
            for gw in w.groups {
                let gd = self.disk.groups.entry(gw.group).or_default();
                if let Some(s) = gw.local_snapshot.or_else(|| gw.snapshot.clone()) {
                    gd.snapshot = Some(s);
                }
                let snapshot = gw.snapshot.map(|s| {
                    let pos = phalanx_storage::LogPosition::new(s.meta.index, s.meta.term);
                    received.insert(gw.group, s);
                    pos
                });
                partitions.push(phalanx_storage::PartitionWrite {
                    partition: gw.group,
                    snapshot,
                    entries: gw.entries,
                    hard_state: gw.hard_state,
                    compact_to: gw.compact_to,
                });
            }
            let batch = phalanx_storage::WriteBatch { partitions, meta: Vec::new() };
            for piece in phalanx::runtime::split_write(batch, max_cost).into_iter().take(keep) {
                for pw in piece.partitions {
                    let snapshot = pw.snapshot.and_then(|_| received.get(&pw.partition));
                    let gd = self.disk.groups.entry(pw.partition).or_default();
                    gd.store(snapshot, &pw.entries, pw.hard_state, pw.compact_to);
                }
            }
        }
        self.crash();
    }

    /// Restarts from the disk; `Err` names a group the core could not restore (the node
    /// stays down).
    pub fn restart(&mut self, initial: &Membership, seed: u64) -> Result<(), (GroupId, String)> {
        self.incarnation += 1;
        self.up = true;
        // Each node keeps its own clock; a restarted node's clock starts again at zero, as a
        // monotonic clock does after a reboot.
        let r = self.boot(initial, seed);
        if r.is_err() {
            self.crash();
        }
        r
    }

    fn boot(&mut self, initial: &Membership, seed: u64) -> Result<(), (GroupId, String)> {
        self.multi = MultiRaft::new();
        self.sms.clear();
        let groups: Vec<GroupId> = self.disk.groups.keys().copied().collect();
        for g in groups {
            // The runtime's rule at open (`runtime/lost_state.rs`): a group with nothing
            // stored may have lost everything; it is marked recovering, durably, first.
            if let Some(gd) = self.disk.groups.get_mut(&g) {
                if gd.is_empty() {
                    gd.hard_state.recovering = true;
                    gd.written = true;
                }
                // The runtime's other rule at open: a snapshot that covers more than the
                // stored log (its tail was lost) is installed in the log store first.
                if let Some(snap) = gd.snapshot.clone()
                    && !gd.holds(snap.meta.index, snap.meta.term)
                    && snap.meta.index >= gd.floor.0
                {
                    gd.install_snapshot(&snap);
                }
            }
            let gd = &self.disk.groups[&g];
            let restore = gd.restore_state(initial);
            let snap = gd.snapshot.clone();
            let mut cfg = self.template.clone();
            cfg.id = self.id;
            cfg.group = g;
            cfg.seed = seed ^ (self.incarnation << 32);
            self.multi.add_group(cfg, restore).map_err(|e| (g, e))?;
            let sm = match &snap {
                Some(s) => StateMachine::decode(&s.data),
                None => StateMachine::default(),
            };
            self.sms.insert(g, sm);
        }
        Ok(())
    }
}
