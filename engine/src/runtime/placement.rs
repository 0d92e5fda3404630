//! Which shard owns a partition. The function is part of the node's layout (each shard's WAL
//! holds its partitions' logs), so it is fixed: partition `p` lives on shard `p % shards`.
//! Partition 0 (the system partition) is therefore always on shard 0. Restarting a node with
//! a different core count is refused (the WAL shards would not match; see `Node::start`).

use crate::state_machine::PartitionId;

/// The shard owning `partition` on a node with `shards` shards.
#[must_use]
pub fn shard_of(partition: PartitionId, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (partition % shards as u64) as usize
}

/// The partitions (system included) that shard `shard` owns when the node has user
/// partitions `1..=partitions`.
pub fn partitions_of(shard: usize, shards: usize, partitions: u32) -> impl Iterator<Item = PartitionId> {
    (0..=u64::from(partitions)).filter(move |p| shard_of(*p, shards) == shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_partition_on_shard_zero_and_every_partition_owned_once() {
        for shards in 1..8 {
            assert_eq!(shard_of(0, shards), 0);
            let total: usize = (0..shards).map(|s| partitions_of(s, shards, 100).count()).sum();
            assert_eq!(total, 101);
        }
    }
}
