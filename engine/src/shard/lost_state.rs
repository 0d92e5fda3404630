//! What a shard decides at open about durable state it may have lost (issue 11): which of its
//! partitions must recover before they vote again (`raft/recovery.rs`), and when to refuse
//! to start instead.
//!
//! A partition has lost state, as far as a node can tell, when
//! - its store holds nothing at all for it (whatever snapshot file it has): a new node, or a
//!   wiped disk —
//!   the two look the same from here, and recovery tells them apart by asking the other
//!   voters (a new cluster's voters all answer term 0);
//! - the store dropped a damaged last batch that may have been acknowledged
//!   ([`DamagedTail`]) holding something of it — or any partition, when not all of the
//!   batch could be read.
//!
//! Such partitions are marked recovering **durably, before anything else is written**: the
//! next write could overwrite the damaged batch (or give the empty partition a little
//! state), and a crash after it must not make the node forget that it lost something.
//!
//! Where no peer can hold a copy of what was dropped — a partition whose only voter is this
//! node — recovery could never end: the node refuses to start, naming the file and offset,
//! unless the operator accepts the loss with `truncate_damaged_wal_tail`.

//!
//! These are the decisions, as pure functions over what the store loaded ([`settle`]); the
//! driver (`runtime/lost_state.rs`) reads what they need from the store and writes what they
//! return, and the simulator does the same with its simulated disk.

use std::collections::{BTreeMap, BTreeSet};

use phalanx_proto::HardState;
use phalanx_storage::{DamagedTail, LogPosition, PartitionWrite, RecoveredPartition};

use crate::Error;
use crate::config::NodeConfig;
use crate::state_machine::PartitionId;

/// What [`settle`] decided, to be written in this order before the shard starts.
#[derive(Debug, Default)]
pub struct Settled {
    /// Snapshot installs that align the store with snapshot files it does not reflect.
    pub align: Vec<PartitionWrite>,
    /// Partitions marked recovering, durably, before anything else of theirs is written.
    pub mark: Vec<PartitionWrite>,
    /// Each marked partition's hard state as stored once `mark` is written.
    pub marked: BTreeMap<PartitionId, HardState>,
    /// The partitions `align` installs a snapshot for.
    pub aligned: Vec<PartitionId>,
}

/// Decides, for a shard's partitions as the store loaded them (`loaded`, updated to what the
/// store holds once the returned writes are made), which lost durable state and must
/// recover (refusing, with an error, a node that could recover from no one), and which
/// snapshot files (`snapshots`: each partition's snapshot position) the stored log does not
/// reflect. `holds(p, position)`: whether the store holds the entry at `position` of `p`.
pub fn settle(
    shard: usize,
    cfg: &NodeConfig,
    loaded: &mut [(PartitionId, Option<RecoveredPartition>)],
    snapshots: &BTreeMap<PartitionId, LogPosition>,
    damaged: Option<&DamagedTail>,
    holds: &dyn Fn(PartitionId, LogPosition) -> bool,
) -> Result<Settled, Error> {
    // Decided on what the store held, before the alignment gives an empty partition a floor.
    let lost = partitions_to_recover(shard, cfg, loaded, damaged)?;
    let align = align_with_snapshots(loaded, snapshots, holds);
    let aligned = align.iter().map(|w| w.partition).collect();
    let (marked, mark) = mark_recovering(loaded, &lost);
    Ok(Settled { align, mark, marked, aligned })
}

/// Decides which of `loaded` (every partition of the shard, with what the store holds) must
/// recover, logs what was lost, and refuses what cannot recover.
fn partitions_to_recover(
    shard: usize,
    cfg: &NodeConfig,
    loaded: &[(PartitionId, Option<RecoveredPartition>)],
    damaged: Option<&DamagedTail>,
) -> Result<BTreeSet<PartitionId>, Error> {
    let mut out = BTreeSet::new();
    for (p, r) in loaded {
        // Anything stored, even a hard state of term 0 (a replica that left recovery in a
        // cluster that never elected), is state: only nothing at all is a new or wiped disk.
        // A snapshot file alone does not count: it holds no term and no vote (a WAL on a disk
        // of its own, `--wal-path`, may be replaced while the snapshots survive).
        if r.is_none() {
            out.insert(*p);
        }
    }
    let Some(d) = damaged else { return Ok(out) };
    let hit: Vec<PartitionId> =
        loaded.iter().map(|(p, _)| *p).filter(|p| !d.complete || d.partitions.contains_key(p)).collect();
    let alone = cfg.initial_voters() == [cfg.node_id];
    if alone {
        if !cfg.truncate_damaged_wal_tail {
            return Err(Error::LostState(format!(
                "shard {shard}: the WAL's last batch is damaged and may hold acknowledged writes ({d}); \
                 no other node holds a copy (this node is the only voter). Restore the data directory \
                 from a backup, or start with --truncate-damaged-wal-tail to drop that batch and accept the \
                 loss"
            )));
        }
        tracing::error!(
            shard,
            "dropping the WAL's damaged last batch as told (--truncate-damaged-wal-tail): {d}; writes it held \
             that were acknowledged are lost"
        );
        return Ok(out);
    }
    tracing::error!(
        shard,
        partitions = hit.len(),
        "the WAL's last batch is damaged and was dropped ({d}); it may hold acknowledged writes: these \
         partitions recover from the other voters before this node votes in them again"
    );
    out.extend(hit);
    Ok(out)
}

/// Makes the store agree with the snapshot files: a partition whose snapshot covers more
/// than its stored log (the snapshot's file was saved, then the crash came before the batch
/// that installs it; or the log's tail was dropped as damaged) gets the snapshot's install
/// written now, as the Ready would have (`LogStore` contract, step 1: the entries after it
/// are kept if the log holds its last entry, dropped otherwise). The group restarts from the
/// snapshot; without this, its next entries would start past the stored log's end and the
/// store would refuse them. Returns the writes.
fn align_with_snapshots(
    loaded: &mut [(PartitionId, Option<RecoveredPartition>)],
    snapshots: &BTreeMap<PartitionId, LogPosition>,
    holds: &dyn Fn(PartitionId, LogPosition) -> bool,
) -> Vec<PartitionWrite> {
    let mut writes = Vec::new();
    for (p, r) in loaded.iter_mut() {
        let Some(&snap) = snapshots.get(p) else { continue };
        let floor = r.as_ref().map_or(0, |r| r.floor.0);
        if holds(*p, snap) || snap.index < floor {
            continue;
        }
        writes.push(PartitionWrite { partition: *p, snapshot: Some(snap), ..Default::default() });
        // What the store now holds: nothing but the floor (the log did not hold its entry).
        let hard_state = r.as_ref().map(|r| r.hard_state).unwrap_or_default();
        *r = Some(RecoveredPartition { hard_state, floor: (snap.index, snap.term), entries: Vec::new() });
    }
    writes
}

/// Marks `partitions` recovering, keeping each one's term, vote and commit index: their
/// hard states as they will be stored, and the writes that store them (none for one
/// already marked).
fn mark_recovering(
    loaded: &[(PartitionId, Option<RecoveredPartition>)],
    partitions: &BTreeSet<PartitionId>,
) -> (BTreeMap<PartitionId, HardState>, Vec<PartitionWrite>) {
    let mut marked = BTreeMap::new();
    let mut writes = Vec::new();
    for (p, r) in loaded {
        if !partitions.contains(p) {
            continue;
        }
        let stored = r.as_ref().map(|r| r.hard_state).unwrap_or_default();
        let hs = HardState { recovering: true, ..stored };
        marked.insert(*p, hs);
        if !stored.recovering {
            writes.push(PartitionWrite { partition: *p, hard_state: Some(hs), ..Default::default() });
        }
    }
    (marked, writes)
}
