//! Building a shard's groups from what its store loaded, and replay after a restart.
//!
//! The driver does the IO first (opening the store and the snapshot files, deciding and
//! marking partitions that lost state, aligning the log with snapshots saved before a crash;
//! `runtime/lost_state.rs`); the core then restores each partition from what that left: the
//! snapshot into the state machine, the log and hard state into the group. Entries up to the
//! commit index found at restart are replays: they reach the state machine through
//! `restore_entry`, and `RestoreFinished` is published once the last one is applied.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use phalanx_proto::HardState;
use phalanx_storage::RecoveredPartition;

use super::outbox::Outbox;
use super::waiters::Waiters;
use super::{CoreSetup, Output, ShardCore};
use crate::Error;
use crate::events::Event;
use crate::hlc::HybridLogicalClock;
use crate::id_hash::IdHashMap;
use crate::raft::{Membership, MultiRaft, RestoreState, Snapshot};
use crate::state_machine::{PartitionId, StateMachine};
use crate::system::{ClusterDirectory, SystemStateMachine, SystemView};

impl<R> ShardCore<R> {
    /// The shard's core from what its store loaded (`loaded`: every partition it owns, with
    /// what the store holds of it), the saved `snapshots`, and the hard states of partitions
    /// the driver marked recovering (`marked`, already durable).
    pub fn restore(
        setup: CoreSetup,
        loaded: Vec<(PartitionId, Option<RecoveredPartition>)>,
        mut snapshots: BTreeMap<PartitionId, Snapshot>,
        mut marked: BTreeMap<PartitionId, HardState>,
    ) -> Result<Self, Error> {
        let CoreSetup { shard, shards, cfg, state_machines, limits, now, wall_ms } = setup;
        let initial = Membership::with_voters(cfg.initial_voters());
        // Groups start dormant and wake a bounded number at a time (`raft/pacer.rs`).
        let mut multi = MultiRaft::paced(crate::raft::MAX_WAKING_GROUPS);
        let mut sms: IdHashMap<PartitionId, Box<dyn StateMachine>> = IdHashMap::default();
        let mut replay_until = IdHashMap::default();
        let mut out = Output::default();
        let system = (crate::runtime::placement::shard_of(0, shards) == shard)
            .then(|| Rc::new(RefCell::new(SystemView::default())));
        for (p, recovered) in loaded {
            let snapshot = snapshots.remove(&p);
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
            out.events.push(Event::RestoreStarted { partition: p });
            if !replay_until.contains_key(&p) {
                sm.restore_finished(p);
                out.events.push(Event::RestoreFinished { partition: p });
            }
            let mut rc = cfg.raft.clone();
            rc.id = cfg.node_id;
            rc.group = p;
            rc.seed = cfg.raft.seed ^ cfg.node_id.rotate_left(17) ^ p;
            multi.add_group(rc, restore).map_err(|reason| Error::Restore { partition: p, reason })?;
            sms.insert(p, sm);
        }
        let tick = Duration::from_millis(cfg.tick_interval_ms);
        let balance_every = Duration::from_millis(cfg.leader_balance_interval_ms);
        // Shard 0 runs the failure detector; its incarnation starts at the wall clock's ms,
        // above anything said about the node's previous run.
        let swim = (shard == 0).then(|| {
            let seed = crate::raft::mix_seed(&[cfg.raft.seed, cfg.node_id, 0x5317]);
            crate::swim::Detector::new(
                cfg.node_id,
                cfg.swim.resolved(cfg.tick_interval_ms),
                wall_ms,
                seed,
                now,
            )
        });
        Ok(ShardCore {
            id: shard,
            shards,
            hlc: HybridLogicalClock::new(cfg.node_id),
            cfg,
            multi,
            writes_in_flight: 0,
            sms,
            waiters: Waiters::new(wall_ms),
            held: Default::default(),
            leader_waiters: Vec::new(),
            replay_until,
            compact_wanted: Vec::new(),
            snapshots_to_save: Vec::new(),
            peers_seen: BTreeMap::new(),
            outbox: Outbox::default(),
            system,
            directory: Arc::new(ClusterDirectory::default()),
            next_announce: now,
            down: Default::default(),
            swim,
            next_balance: now + balance_every,
            balance: Default::default(),
            tick,
            next_tick: now + tick,
            stopping: false,
            now,
            wall_ms,
            limits,
            stopped: BTreeMap::new(),
            out,
            observer: None,
            counters: Default::default(),
            membership: Default::default(),
        })
    }

    /// The commit index found at restart while partition `p` still replays up to it (0: not
    /// replaying).
    pub(super) fn replay_limit(&self, p: PartitionId) -> u64 {
        self.replay_until.get(&p).copied().unwrap_or(0)
    }

    /// Partition `p` applied the entry at `index`: its replay ends at the restart's commit
    /// index (`limit`, from [`ShardCore::replay_limit`]).
    pub(super) fn replayed(&mut self, p: PartitionId, index: u64, limit: u64) {
        if limit == 0 || index < limit {
            return;
        }
        self.replay_until.remove(&p);
        if let Some(sm) = self.sms.get_mut(&p) {
            sm.restore_finished(p);
        }
        self.out.events.push(Event::RestoreFinished { partition: p });
    }
}
