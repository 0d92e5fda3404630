//! The `LogStore` contract.

use bytes::Bytes;
use phalanx_proto::LogEntry;

use crate::error::Result;
use crate::faults::FaultInjector;
use crate::types::{MetaWrite, PartitionId, PartitionState, RecoveredPartition, StoreStats, WriteBatch};

/// Options every adapter understands.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sync every batch before `write` returns (default `true`).
    ///
    /// **With `false`, acknowledged writes may be lost on a crash of the machine** (and, for
    /// adapters that buffer in user space, of the process): a batch is then only handed to
    /// the OS. It exists for benchmarks and tests and is never the default.
    pub sync_writes: bool,
    /// Faults to inject (tests only). `None` in production.
    pub faults: Option<FaultInjector>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { sync_writes: true, faults: None }
    }
}

/// The log storage of one shard: the logs, hard states and compaction floors of every
/// partition the shard owns, plus a little metadata.
///
/// # Who calls it
///
/// One shard's executor, and only it: a store is single-threaded (it is not `Send` in
/// general, and its futures are not either) and its methods are never called concurrently —
/// `write` takes `&mut self`. Blocking backends (RocksDB, SQLite) run their calls on the
/// executor's blocking pool so the shard's event loop never stalls.
///
/// # Durability
///
/// When [`LogStore::write`] returns `Ok`, the whole batch is *durable*: it survives a crash
/// of the process or of the machine (with [`StoreOptions::sync_writes`] on, the default; with
/// it off only a clean close is guaranteed, see there). The native WAL makes a batch durable
/// with exactly one synchronous write (its segments are open `O_DSYNC`). A batch is **all-or-nothing**: after a crash during `write`,
/// recovery finds either all of it or none of it — never some partitions, some entries, or
/// entries without the hard state written with them.
///
/// # Ordering
///
/// Batches are applied in call order. Within a batch, partitions are independent (a
/// partition may appear only once), then metadata changes apply in order. Within one
/// partition the steps apply in this order (the order of the engine's `Ready`):
///
/// 1. `snapshot` at (index, term): if the stored log holds an entry with that index *and*
///    term, the entries after it are kept, otherwise all entries are dropped; the floor
///    becomes (index, term);
/// 2. `entries`: stored entries at or after `entries[0].index` are replaced, then the new
///    ones appended (they must be contiguous, start in `floor + 1 ..= last + 1` and have
///    terms ≥ 1);
/// 3. `hard_state` (term, vote, commit) is stored — atomically with the entries;
/// 4. `compact_to(i)`: entries ≤ i are discarded and (i, term(i)) becomes the floor.
///
/// Reads see every batch that returned `Ok`.
///
/// A write's future must be driven to completion: dropping it half-way leaves unknown what
/// reached the disk, so the store then fails every call, as after a failed write.
///
/// # Errors
///
/// * A batch that breaks these rules or a limit is refused before anything is written
///   ([`crate::StorageError::InvalidBatch`], [`crate::StorageError::LimitExceeded`]); the
///   store stays usable.
/// * **A failed write or sync is fatal.** The store never retries it (after a failed
///   `fdatasync` the data may be gone even if a retry succeeds): it enters a failed state in
///   which every later call — reads included — returns [`crate::StorageError::Fatal`]. The
///   node stops the shard loudly; on restart, recovery finds the failed batch either whole or
///   absent.
/// * `open` refuses damaged files: a torn tail (the last, unacknowledged batch cut short by a
///   crash) is dropped, but a damaged record followed by valid ones is reported as
///   [`crate::StorageError::Corrupt`] naming the file and offset; files of a newer format
///   version are refused ([`crate::StorageError::FormatTooNew`]); foreign files are refused
///   ([`crate::StorageError::Foreign`]). Reads of damaged records fail the same way. Nothing
///   panics on bad input.
///
/// # Recovery
///
/// Opening a store recovers every partition's hard state, floor and entry index. For each id
/// in [`LogStore::partitions`], [`LogStore::load_partition`] returns what the engine's
/// `RestoreState` needs from storage (`hard_state`, `floor`, `entries`);
/// [`LogStore::load_partitions`] returns the same for many partitions at once, which is how a
/// restarting shard should load its partitions (the native WAL then reads each segment once,
/// sequentially, instead of one read per entry).
#[allow(async_fn_in_trait)] // Single-threaded by design: callers never need `Send` futures.
pub trait LogStore {
    /// Short adapter name ("wal", "rocksdb", "sqlite", "memory"), for logs and reports.
    fn name(&self) -> &'static str;

    /// Makes `batch` durable (see the contract above). An empty batch returns at once.
    async fn write(&mut self, batch: &WriteBatch) -> Result<()>;

    /// Entries `lo..hi` of `partition`, stopping early once `max_bytes` (by
    /// [`LogEntry::approx_size`]) would be exceeded — but always at least one entry when
    /// `lo < hi`. The range must lie within `first_index..=last_index + 1`.
    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>>;

    /// Term of the entry at `index`: the floor's term at the floor index, `None` below the
    /// floor or past the last entry (or for an unknown partition).
    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>>;

    /// Floor, last entry and hard state of `partition`, or `None` when the store holds
    /// nothing for it.
    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionState>>;

    /// Every partition the store holds something for, in ascending order.
    fn partitions(&self) -> Result<Vec<PartitionId>>;

    /// Everything stored for `partition` (the storage part of the engine's `RestoreState`),
    /// or `None` when nothing is.
    async fn load_partition(&self, partition: PartitionId) -> Result<Option<RecoveredPartition>> {
        let Some(state) = self.partition(partition)? else { return Ok(None) };
        let entries = self.entries(partition, state.first_index(), state.last.index + 1, u64::MAX).await?;
        Ok(Some(RecoveredPartition {
            hard_state: state.hard_state,
            floor: (state.floor.index, state.floor.term),
            entries,
        }))
    }

    /// [`LogStore::load_partition`] for each of `partitions`: one `(id, result)` pair per id
    /// given, in the order given (an id given twice is answered twice), `None` for an id the
    /// store holds nothing for. The results are exactly what `load_partition` returns for each
    /// id; the first error fails the whole call. All entries returned are in memory at once.
    ///
    /// The default calls `load_partition` for each id. Adapters whose entries of different
    /// partitions are interleaved on disk override it to read them in one pass (the native
    /// WAL reads each segment holding wanted records once, in large sequential reads).
    async fn load_partitions(
        &self,
        partitions: &[PartitionId],
    ) -> Result<Vec<(PartitionId, Option<RecoveredPartition>)>> {
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            out.push((p, self.load_partition(p).await?));
        }
        Ok(out)
    }

    /// Removes every trace of `partition` (entries, hard state, floor), durably, and lets its
    /// space be reclaimed. Removing an unknown partition is not an error.
    async fn remove_partition(&mut self, partition: PartitionId) -> Result<()>;

    /// The value of a metadata key.
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Sets (or with `None` deletes) a metadata key, durably (one batch).
    async fn set_meta(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let batch = WriteBatch {
            partitions: Vec::new(),
            meta: vec![MetaWrite {
                key: Bytes::copy_from_slice(key),
                value: value.map(Bytes::copy_from_slice),
            }],
        };
        self.write(&batch).await
    }

    /// The last batch the store dropped at open because it failed its checksum although it
    /// may have been written whole and acknowledged (see [`crate::DamagedTail`]); `None` for
    /// a clean log, a torn write that was never acknowledged, or an adapter whose backend
    /// guarantees whole transactions.
    fn damaged_tail(&self) -> Option<&crate::DamagedTail> {
        None
    }

    /// The largest [`crate::limits::batch_cost`] a batch may have to be sure of not being
    /// refused for its size (with entries within [`crate::limits::ENTRY_BYTES_MAX`] and at
    /// most [`crate::limits::BATCH_PARTITIONS_MAX`] partitions). Writers split larger work
    /// into batches of at most this. The default is [`crate::limits::BATCH_BYTES_MAX`];
    /// adapters with a tighter bound of their own (the native WAL: a batch fits in one
    /// segment) report it.
    fn max_batch_cost(&self) -> u64 {
        crate::limits::BATCH_BYTES_MAX
    }

    /// Counters (batches, syncs, bytes).
    fn stats(&self) -> StoreStats;

    /// Whether batches are synced before `write` returns.
    fn sync_writes(&self) -> bool;

    /// Closes the store cleanly, waiting for background work. Dropping a store without
    /// closing it is allowed (it is what a crash looks like) and loses nothing acknowledged.
    async fn close(self) -> Result<()>
    where
        Self: Sized;
}
