//! Phalanx: a thread-per-core, shard-nothing multi-Raft consensus engine.
//!
//! - [`raft`] — the pure, deterministic Raft core (no IO, no clocks).
//! - [`shard`] — a shard's logic as a deterministic state machine (the Raft core's shell).
//! - [`runtime`] — shards on pinned glommio executors, the bus, group commit.
//! - [`NodeHandle`] — the embeddable API, usable from any async runtime.
//! - [`StateMachine`] — what an application implements.
//! - [`hlc`] — hybrid logical clock tickets.
//! - [`kv`], [`client`] — the node binary's replicated key-value state machine and client port.
//!
//! A [`Node`] runs its shards on threads of its own; the [`NodeHandle`] it gives out is
//! `Clone + Send + Sync` and needs nothing from the caller's runtime (every call is a message
//! to a shard and a one-shot answer), so it works the same from tokio, glommio or a plain
//! thread.
//!
//! # Embedding in a tokio service
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use phalanx::kv::KvStateMachine;
//! use phalanx::{Node, NodeConfig};
//! use phalanx_net::{MemoryConfig, MemoryNetwork};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut cfg = NodeConfig::new(1, dir.path()); // a one-node cluster
//! cfg.cores = 1;
//! cfg.pin_cores = false;
//! cfg.initial_partitions = 4;
//! cfg.tick_interval_ms = 10;
//! // In production: the native WAL (the default) and `phalanx_net::TcpFactory`.
//! cfg.wal = phalanx_storage::StorageKind::Memory;
//! let net = MemoryNetwork::new(MemoryConfig::default());
//! let node = Node::start(cfg, net.factory(1), Arc::new(|_p| Box::new(KvStateMachine::new())))?;
//!
//! let handle = node.handle();
//! let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
//! rt.block_on(async move {
//!     handle.join_cluster(Duration::from_secs(10)).await.expect("a leader for every partition");
//!     let partition = handle.partition_key("tenant-42/order-1");
//!     let r = handle.replicate(partition, "OrderCreated", bytes::Bytes::from_static(b"{}")).await;
//!     assert!(r.success(), "{:?}", r.status);
//!     // Linearizable: every write acknowledged before this call is applied here now.
//!     handle.read_barrier(partition).await.expect("read barrier");
//! });
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Embedding in a glommio service
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use glommio::{LocalExecutorBuilder, Placement};
//! use phalanx::kv::KvStateMachine;
//! use phalanx::{Node, NodeConfig};
//! use phalanx_net::{MemoryConfig, MemoryNetwork};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut cfg = NodeConfig::new(1, dir.path());
//! cfg.cores = 1;
//! cfg.pin_cores = false;
//! cfg.initial_partitions = 2;
//! cfg.tick_interval_ms = 10;
//! cfg.wal = phalanx_storage::StorageKind::Memory;
//! let net = MemoryNetwork::new(MemoryConfig::default());
//! let node = Node::start(cfg, net.factory(1), Arc::new(|_p| Box::new(KvStateMachine::new())))?;
//! let handle = node.handle();
//!
//! // The application's own executor; the node's shards run on theirs.
//! let app = LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).spawn(move || async move {
//!     handle.join_cluster(Duration::from_secs(10)).await.expect("leaders");
//!     // Two-step: durable on a quorum now, delivered to state machines only on commit.
//!     let staged = handle.replicate_with(1, "Payment", vec![bytes::Bytes::from_static(b"42")], false).await;
//!     assert!(staged.success());
//!     let committed = handle.commit_logs(1, staged.ticket).await;
//!     assert!(committed.success());
//!     committed.log_index
//! })?;
//! let marker_index = app.join()?;
//! assert!(marker_index > 0);
//! node.shutdown();
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod config;
mod error;
pub mod events;
mod handle;
pub mod hlc;
mod id_hash;
pub mod kv;
pub mod log_type;
pub mod partition_key;
pub mod raft;
pub mod roster;
pub mod runtime;
pub mod shard;
pub mod state_machine;
pub mod stats;
pub mod swim;
pub mod system;

pub use config::{MembershipConfig, NodeConfig, derive_node_id};
pub use error::Error;
pub use events::Event;
pub use handle::NodeHandle;
pub use raft::Status;
pub use runtime::{Executors, Node, PartitionStatus, ReplicationResult};
pub use state_machine::{NoopStateMachine, PartitionId, StateMachine, StateMachineFactory};
