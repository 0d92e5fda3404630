//! Phalanx: a thread-per-core, shard-nothing multi-Raft consensus engine.
//!
//! - [`raft`] — the pure, deterministic Raft core (no IO, no clocks).
//! - [`runtime`] — shards on pinned glommio executors, the bus, group commit.
//! - [`NodeHandle`] — the embeddable API, usable from any async runtime.
//! - [`StateMachine`] — what an application implements.
//! - [`hlc`] — hybrid logical clock tickets.

pub mod config;
pub mod events;
mod handle;
pub mod hlc;
pub mod partition_key;
pub mod raft;
pub mod runtime;
pub mod state_machine;

pub use config::{NodeConfig, derive_node_id};
pub use events::Event;
pub use handle::NodeHandle;
pub use raft::Status;
pub use runtime::{Node, PartitionStatus, ReplicationResult};
pub use state_machine::{NoopStateMachine, PartitionId, StateMachine, StateMachineFactory};
pub mod client;
pub mod kv;
