//! The runtime shell around the pure core: shards, the bus, the shard loop, group commit.
//!
//! - `node.rs` — starting/stopping a node: its shards placed on executors
//! - `executors.rs` — the executor threads shards run on (a node's own, or shared by nodes)
//! - `shard.rs` — the shard's driver: runs its core (`engine/src/shard/`) and does its IO
//! - `writer.rs` — the WAL writer task: merges queued write jobs into batches (group commit)
//! - `cpus.rs` — which CPU each shard is pinned to (claimed per host, never stacked)
//! - `bus.rs` — bounded inboxes between shards and from handles
//! - `placement.rs` — which shard owns a partition
//! - `request.rs` — a handle's request on the bus, and where its answer goes
//! - `shared.rs` — the leader cache and peer activity shared with handles
//! - `snapshots.rs` — durable snapshot files
//! - `lost_state.rs` — at open: partitions that lost durable state recover (or the node refuses)

pub mod allocator;
pub(crate) mod bus;
pub(crate) mod cpus;
pub mod executors;
pub(crate) mod lost_state;
pub mod node;
pub mod placement;
pub mod request;
pub(crate) mod shard;
pub(crate) mod shared;
pub mod snapshots;
pub(crate) mod writer;

/// How the WAL writer cuts a write into batches the store takes (the simulator tears its
/// writes at the same points).
pub use crate::shard::write::split as split_write;
pub use executors::Executors;
pub use node::Node;
pub use request::{PartitionStatus, ReplicationResult};
pub use shard::SYSTEM_LOG_TYPE;
