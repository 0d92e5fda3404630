//! Phalanx storage: the per-core WAL shards.
//!
//! Each core owns one store holding the logs, hard states and compaction floors of all its
//! partitions. The contract every adapter honours is the [`LogStore`] trait (read its docs
//! first). Adapters:
//!
//! * [`wal::WalStore`] — the default native segment WAL on glommio DMA files (O_DIRECT,
//!   io_uring), one synchronous write per batch (segments open `O_DSYNC`: durable when the
//!   write completes, no separate `fdatasync`);
//! * `rocks::RocksStore` — one RocksDB instance per shard (cargo feature `rocksdb`);
//! * `sqlite::SqliteStore` — one SQLite database per shard (cargo feature `sqlite`);
//! * `raft_engine::RaftEngineStore` — one TiKV raft-engine per shard (cargo feature
//!   `raft-engine`);
//! * [`memory::MemoryStore`] — in memory, for tests and framework-mode benchmarks.
//!
//! [`AnyStore`] wraps whichever adapter a node is configured with. The shared conformance
//! suite (`conformance`, feature `conformance`) runs against every adapter.

pub mod any;
mod chunked;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod faults;
#[cfg(any(feature = "rocksdb", feature = "sqlite", feature = "raft-engine"))]
mod kv;
pub mod limits;
pub mod memory;
mod plan;
#[cfg(feature = "raft-engine")]
pub mod raft_engine;
#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
mod types;
pub mod wal;

use std::path::{Path, PathBuf};

pub use any::{AnyStore, StorageKind};
pub use error::{Result, StorageError};
pub use faults::FaultInjector;
pub use store::{LogStore, StoreOptions};
pub use types::{
    DamagedTail, LogPosition, MetaWrite, PartitionId, PartitionState, PartitionWrite, RecoveredPartition,
    StoreStats, WriteBatch,
};

/// The directory of shard `shard`'s store under a node's data directory: `DATA/shard-<i>/`.
#[must_use]
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// Runs `f` on a fresh single-threaded glommio executor configured the way stores expect
/// (1 MiB of I/O memory, no spinning before parking), for tests, tools and benchmarks.
pub fn run_local<F, Fut, T>(name: &str, f: F) -> std::io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .spawn(f)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match handle.join() {
        Ok(v) => Ok(v),
        // A panic inside the executor (a failed test assertion) is re-raised as is.
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
            std::panic::resume_unwind(p)
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// I/O memory a shard executor should register: small, so that non-root users with the
/// default `ulimit -l` fit (see DESIGN.md, "Things learned on these machines").
pub const IO_MEMORY_BYTES: usize = 1 << 20;
