//! Value types of the [`crate::LogStore`] contract.

use bytes::Bytes;
use phalanx_proto::{HardState, LogEntry};

/// A partition (Raft group) id. 0 is the system partition.
pub type PartitionId = u64;

/// A position in a partition's log: an index and the term of the entry there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPosition {
    /// Log index.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
}

impl LogPosition {
    /// A position.
    #[must_use]
    pub const fn new(index: u64, term: u64) -> Self {
        LogPosition { index, term }
    }
}

/// What one batch asks of one partition. Applied in field order: `snapshot`, `entries`,
/// `hard_state`, `compact_to` (the order of the engine's `Ready`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartitionWrite {
    /// The partition.
    pub partition: PartitionId,
    /// Install a snapshot covering the log up to this position: if the stored log holds an
    /// entry with this index *and* term, the entries after it are kept; otherwise every entry
    /// is dropped. Either way the floor becomes this position.
    pub snapshot: Option<LogPosition>,
    /// Entries to store, contiguous and in index order, each with a term ≥ 1. Stored entries
    /// at or after `entries[0].index` are replaced. `entries[0].index` must lie in
    /// `floor + 1 ..= last + 1` (after the snapshot above, if any).
    pub entries: Vec<LogEntry>,
    /// Term, vote and commit index to persist, atomically with the entries.
    pub hard_state: Option<HardState>,
    /// Discard entries up to and including this index, remembering it (and its term) as the
    /// floor. At or below the floor it does nothing; above the last index it is an error.
    pub compact_to: Option<u64>,
}

impl PartitionWrite {
    /// A write of `partition` that does nothing yet.
    #[must_use]
    pub fn new(partition: PartitionId) -> Self {
        PartitionWrite { partition, ..Default::default() }
    }

    /// Whether this write asks for nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compact_to.is_none()
    }
}

/// Setting (`Some`) or deleting (`None`) one metadata key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    /// The key (at most [`crate::limits::META_KEY_BYTES_MAX`] bytes).
    pub key: Bytes,
    /// The value (at most [`crate::limits::META_VALUE_BYTES_MAX`] bytes), or `None` to delete.
    pub value: Option<Bytes>,
}

/// One durable, all-or-nothing write: many partitions plus metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// Per-partition writes; a partition appears at most once.
    pub partitions: Vec<PartitionWrite>,
    /// Metadata changes, applied in order.
    pub meta: Vec<MetaWrite>,
}

impl WriteBatch {
    /// Whether the batch asks for nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(PartitionWrite::is_empty) && self.meta.is_empty()
    }

    /// Number of log entries in the batch.
    #[must_use]
    pub fn entry_count(&self) -> usize {
        self.partitions.iter().map(|p| p.entries.len()).sum()
    }
}

/// What a store holds for one partition, without its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// The compaction floor: the last discarded index and its term ((0, 0) when none).
    pub floor: LogPosition,
    /// The last entry (equal to `floor` when no entry is held).
    pub last: LogPosition,
    /// The persisted hard state (all zero when none was written).
    pub hard_state: HardState,
}

impl PartitionState {
    /// Index of the first entry held (`floor.index + 1`; greater than `last.index` when
    /// the log is empty).
    #[must_use]
    pub fn first_index(&self) -> u64 {
        self.floor.index + 1
    }

    /// Number of entries held.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.last.index - self.floor.index
    }

    /// Whether no entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`crate::LogStore::term`] of `index` when the state answers it without reading an
    /// entry (the floor, the last entry, or outside the log: `Some(None)`); `None` when the
    /// entry must be read.
    #[must_use]
    pub fn known_term(&self, index: u64) -> Option<Option<u64>> {
        if index == self.floor.index {
            Some(Some(self.floor.term))
        } else if index == self.last.index {
            Some(Some(self.last.term))
        } else if index < self.floor.index || index > self.last.index {
            Some(None)
        } else {
            None
        }
    }
}

/// A partition as recovered from the store: the storage part of the engine's
/// `RestoreState` (`hard_state`, `floor`, `entries`). Snapshot metadata and the initial
/// membership are the runtime's to keep (e.g. in metadata keys).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveredPartition {
    /// Persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The compaction floor as `(index, term)`, `(0, 0)` when nothing was discarded.
    pub floor: (u64, u64),
    /// Every entry after the floor, contiguous, in index order.
    pub entries: Vec<LogEntry>,
}

/// The last batch of a log, dropped at open because it failed its checksum while its header
/// says it is the batch that came next (not a batch of another life of a recycled file).
///
/// Checksums cannot tell a batch torn by a crash while it was written (never acknowledged,
/// safe to drop) from one damaged after it was written and acknowledged (dropping it loses
/// acknowledged writes): the store drops it and says so, and the engine treats the
/// partitions concerned as having lost state (they recover from their peers, or the node
/// refuses to start where no peer holds a copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedTail {
    /// The file holding it.
    pub file: std::path::PathBuf,
    /// Its offset in the file.
    pub offset: u64,
    /// Its batch sequence number.
    pub batch_seq: u64,
    /// The partitions its readable records touched (records are read in order up to the
    /// first damaged one), with the range of entry indexes each held (`None`: records of it
    /// but no entries).
    pub partitions: std::collections::BTreeMap<PartitionId, Option<(u64, u64)>>,
    /// Whether every record of it could be read. When not, any partition of the store may
    /// have lost state, not only those listed.
    pub complete: bool,
}

impl std::fmt::Display for DamagedTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch {} at offset {} of {}", self.batch_seq, self.offset, self.file.display())?;
        let parts: Vec<String> = self
            .partitions
            .iter()
            .map(|(p, r)| match r {
                Some((lo, hi)) => format!("partition {p} entries {lo}..={hi}"),
                None => format!("partition {p} (no entries)"),
            })
            .collect();
        match (parts.is_empty(), self.complete) {
            (true, true) => Ok(()),
            (true, false) => write!(f, ", unreadable: any partition"),
            (false, true) => write!(f, ", holding {}", parts.join(", ")),
            (false, false) => write!(f, ", holding {} and records that cannot be read", parts.join(", ")),
        }
    }
}

/// Counters a store keeps about its own work, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches made durable by `write` (including `set_meta` and `remove_partition`).
    pub batches: u64,
    /// Syncs issued on the write path: synchronous (`O_DSYNC`) batch writes for the native
    /// WAL, synced commits for the RocksDB and SQLite adapters (their own background syncs
    /// are not seen).
    pub write_syncs: u64,
    /// Syncs issued off the write path (native WAL: preparing and recycling segments).
    pub background_syncs: u64,
    /// Bytes handed to the OS by `write` (including framing and padding).
    pub bytes_written: u64,
    /// Log entries written.
    pub entries_written: u64,
    /// Entries rewritten forward by segment garbage collection (native WAL).
    pub entries_relocated: u64,
    /// Segment files created and zero-filled (native WAL).
    pub segments_created: u64,
    /// Segment files recycled for reuse (native WAL).
    pub segments_recycled: u64,
    /// Disk reads issued to fetch log entries (`entries`, `load_partition`,
    /// `load_partitions`; native WAL only — the other adapters leave it at 0).
    pub entry_reads: u64,
}

impl StoreStats {
    /// Element-wise sum: the counters of several stores together.
    #[must_use]
    pub fn plus(&self, b: &StoreStats) -> StoreStats {
        StoreStats {
            batches: self.batches + b.batches,
            write_syncs: self.write_syncs + b.write_syncs,
            background_syncs: self.background_syncs + b.background_syncs,
            bytes_written: self.bytes_written + b.bytes_written,
            entries_written: self.entries_written + b.entries_written,
            entries_relocated: self.entries_relocated + b.entries_relocated,
            segments_created: self.segments_created + b.segments_created,
            segments_recycled: self.segments_recycled + b.segments_recycled,
            entry_reads: self.entry_reads + b.entry_reads,
        }
    }
}
