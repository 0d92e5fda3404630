//! The IO of what a shard does at open about durable state it may have lost: it reads what
//! the decisions need from the store, and writes what they return (the decisions themselves
//! are pure: `shard/lost_state.rs`).

use std::collections::BTreeMap;

use phalanx_proto::HardState;
use phalanx_storage::{
    AnyStore, LogPosition, LogStore, PartitionWrite, RecoveredPartition, StorageError, WriteBatch,
};

use crate::Error;
use crate::config::NodeConfig;
use crate::shard::lost_state::settle;
use crate::shard::write::split;
use crate::state_machine::PartitionId;

/// Settles the partitions of shard `shard` that lost durable state, and aligns the store with
/// the snapshot files (`snapshots`), updating `loaded` to what the store then holds. Returns
/// the hard states of the partitions marked recovering.
pub(crate) async fn settle_at_open(
    shard: usize,
    cfg: &NodeConfig,
    store: &mut AnyStore,
    loaded: &mut [(PartitionId, Option<RecoveredPartition>)],
    snapshots: &BTreeMap<PartitionId, LogPosition>,
) -> Result<BTreeMap<PartitionId, HardState>, Error> {
    let mut terms = BTreeMap::new();
    for (p, snap) in snapshots {
        let term = store.term(*p, snap.index).await;
        let what = || format!("partition {p}: reading the term of its snapshot's entry {}", snap.index);
        terms.insert(*p, term.map_err(|e| Error::storage(shard, what(), e))?);
    }
    let holds = |p: PartitionId, at: LogPosition| terms.get(&p) == Some(&Some(at.term));
    let settled = settle(shard, cfg, loaded, snapshots, store.damaged_tail(), &holds)?;
    write_all(store, settled.align)
        .await
        .map_err(|e| Error::storage(shard, "installing snapshots in the log store", e))?;
    if !settled.aligned.is_empty() {
        tracing::info!(shard, partitions = ?settled.aligned, "log store aligned with snapshots saved before a crash");
    }
    write_all(store, settled.mark)
        .await
        .map_err(|e| Error::storage(shard, "marking partitions recovering", e))?;
    Ok(settled.marked)
}

/// Writes `writes` in as many batches as the store's limits need (the writer's split).
async fn write_all(store: &mut AnyStore, writes: Vec<PartitionWrite>) -> Result<(), StorageError> {
    if writes.is_empty() {
        return Ok(());
    }
    let batch = WriteBatch { partitions: writes, meta: Vec::new() };
    for chunk in split(batch, store.max_batch_cost()) {
        store.write(&chunk).await?;
    }
    Ok(())
}
