//! [`AnyStore`]: whichever adapter a node is configured with, behind one type, so the runtime
//! need not be generic over the store.

use std::path::Path;

use bytes::Bytes;
use phalanx_proto::LogEntry;

use crate::error::Result;
use crate::memory::MemoryStore;
use crate::store::{LogStore, StoreOptions};
use crate::types::{PartitionId, PartitionState, RecoveredPartition, StoreStats, WriteBatch};
use crate::wal::{WalOptions, WalStore};

/// Which adapter to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageKind {
    /// The native segment WAL (the default).
    Wal,
    /// RocksDB (cargo feature `rocksdb`).
    RocksDb,
    /// SQLite (cargo feature `sqlite`).
    Sqlite,
    /// TiKV's raft-engine (cargo feature `raft-engine`).
    RaftEngine,
    /// In memory (tests, framework benchmarks): nothing survives the process.
    Memory,
}

impl StorageKind {
    /// The adapters compiled into this build, default first.
    #[must_use]
    pub fn built() -> Vec<StorageKind> {
        let mut v = vec![StorageKind::Wal];
        if cfg!(feature = "rocksdb") {
            v.push(StorageKind::RocksDb);
        }
        if cfg!(feature = "sqlite") {
            v.push(StorageKind::Sqlite);
        }
        if cfg!(feature = "raft-engine") {
            v.push(StorageKind::RaftEngine);
        }
        v.push(StorageKind::Memory);
        v
    }

    /// Short name, as [`LogStore::name`] reports it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Wal => "wal",
            StorageKind::RocksDb => "rocksdb",
            StorageKind::Sqlite => "sqlite",
            StorageKind::RaftEngine => "raft-engine",
            StorageKind::Memory => "memory",
        }
    }

    /// Parses a short name.
    #[must_use]
    pub fn parse(s: &str) -> Option<StorageKind> {
        [
            StorageKind::Wal,
            StorageKind::RocksDb,
            StorageKind::Sqlite,
            StorageKind::RaftEngine,
            StorageKind::Memory,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// One of the adapters.
// One per shard, created once and never moved on a hot path: boxing would only add a hop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyStore {
    /// Native WAL.
    Wal(WalStore),
    /// RocksDB.
    #[cfg(feature = "rocksdb")]
    RocksDb(crate::rocks::RocksStore),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::SqliteStore),
    /// raft-engine.
    #[cfg(feature = "raft-engine")]
    RaftEngine(crate::raft_engine::RaftEngineStore),
    /// In memory.
    Memory(MemoryStore),
}

impl AnyStore {
    /// Opens a store of `kind` in `dir` with default adapter options and `opts`. Fails with
    /// [`crate::StorageError::Backend`] for an adapter not compiled in.
    pub async fn open(kind: StorageKind, dir: &Path, opts: StoreOptions) -> Result<AnyStore> {
        match kind {
            StorageKind::Wal => Ok(AnyStore::Wal(
                WalStore::open(dir, WalOptions { store: opts, ..WalOptions::default() }).await?,
            )),
            #[cfg(feature = "rocksdb")]
            StorageKind::RocksDb => Ok(AnyStore::RocksDb(crate::rocks::RocksStore::open(dir, opts).await?)),
            #[cfg(feature = "sqlite")]
            StorageKind::Sqlite => Ok(AnyStore::Sqlite(crate::sqlite::SqliteStore::open(dir, opts).await?)),
            #[cfg(feature = "raft-engine")]
            StorageKind::RaftEngine => {
                Ok(AnyStore::RaftEngine(crate::raft_engine::RaftEngineStore::open(dir, opts).await?))
            }
            StorageKind::Memory => Ok(AnyStore::Memory(MemoryStore::new(opts))),
            #[allow(unreachable_patterns)] // Reachable when a feature is off.
            other => Err(crate::StorageError::Backend {
                backend: other.name(),
                reason: format!("adapter not built (enable the cargo feature `{}`)", other.name()),
            }),
        }
    }
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Wal($s) => $e,
            #[cfg(feature = "rocksdb")]
            AnyStore::RocksDb($s) => $e,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($s) => $e,
            #[cfg(feature = "raft-engine")]
            AnyStore::RaftEngine($s) => $e,
            AnyStore::Memory($s) => $e,
        }
    };
}

impl LogStore for AnyStore {
    fn name(&self) -> &'static str {
        dispatch!(self, s => s.name())
    }

    async fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        dispatch!(self, s => s.write(batch).await)
    }

    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>> {
        dispatch!(self, s => s.entries(partition, lo, hi, max_bytes).await)
    }

    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>> {
        dispatch!(self, s => s.term(partition, index).await)
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionState>> {
        dispatch!(self, s => s.partition(partition))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        dispatch!(self, s => s.partitions())
    }

    async fn load_partition(&self, partition: PartitionId) -> Result<Option<RecoveredPartition>> {
        dispatch!(self, s => s.load_partition(partition).await)
    }

    async fn load_partitions(
        &self,
        partitions: &[PartitionId],
    ) -> Result<Vec<(PartitionId, Option<RecoveredPartition>)>> {
        dispatch!(self, s => s.load_partitions(partitions).await)
    }

    async fn remove_partition(&mut self, partition: PartitionId) -> Result<()> {
        dispatch!(self, s => s.remove_partition(partition).await)
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        dispatch!(self, s => s.get_meta(key))
    }

    async fn set_meta(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        dispatch!(self, s => s.set_meta(key, value).await)
    }

    fn stats(&self) -> StoreStats {
        dispatch!(self, s => s.stats())
    }

    fn sync_writes(&self) -> bool {
        dispatch!(self, s => s.sync_writes())
    }

    fn max_batch_cost(&self) -> u64 {
        dispatch!(self, s => s.max_batch_cost())
    }

    fn damaged_tail(&self) -> Option<&crate::DamagedTail> {
        dispatch!(self, s => s.damaged_tail())
    }

    async fn close(self) -> Result<()> {
        dispatch!(self, s => s.close().await)
    }
}
