//! Named limits shared by every adapter. A batch that exceeds one is refused with
//! [`crate::StorageError::LimitExceeded`] before anything is written.
//!
//! Writers that build batches out of larger work (the engine's WAL writer splits merged
//! Readies) count a batch's [`batch_cost`] against [`crate::LogStore::max_batch_cost`]: a
//! batch within it, with entries within [`ENTRY_BYTES_MAX`] and at most
//! [`BATCH_PARTITIONS_MAX`] partitions, is never refused for its size by any adapter.

use phalanx_proto::{LogEntry, Message};

use crate::types::WriteBatch;

/// Largest encoded log entry (protobuf `LogEntry`), in bytes. The engine's own proposal limits
/// are far below; this bounds the memory a single read or record can demand.
pub const ENTRY_BYTES_MAX: u64 = 8 << 20;

/// Largest total of encoded entries in one batch, in bytes. Bounds the memory of one write
/// and, for the native WAL, must fit in a segment (see `WalOptions::segment_bytes`).
pub const BATCH_BYTES_MAX: u64 = 16 << 20;

/// Most partitions in one batch.
pub const BATCH_PARTITIONS_MAX: usize = 65_536;

/// Longest metadata key, in bytes.
pub const META_KEY_BYTES_MAX: usize = 1024;

/// Largest metadata value, in bytes. Metadata is held in memory by every adapter.
pub const META_VALUE_BYTES_MAX: usize = 1 << 20;

/// Most metadata keys a store holds.
pub const META_KEYS_MAX: usize = 65_536;

/// Bytes an entry's protobuf encoding adds at most to its payload and log type: term,
/// index and kind (11 each), the two length prefixes (6 each) and the ticket (35), rounded
/// up. Lets a writer bound a batch's cost without encoding anything.
pub const ENTRY_ENCODING_OVERHEAD_MAX: u64 = 96;

/// Bytes an adapter may add to an entry's encoding in a batch: the native WAL's record
/// header (12) and its (partition, index, term) prefix (24).
pub const ENTRY_RECORD_OVERHEAD_BYTES: u64 = 36;

/// Bytes a partition's records other than entries may take in a batch: the native WAL's
/// snapshot (12 + 25), hard state (12 + 32) and compaction (12 + 24) records, rounded up.
pub const PARTITION_RECORDS_BYTES: u64 = 128;

/// What one entry costs in a batch: its encoding plus [`ENTRY_RECORD_OVERHEAD_BYTES`].
#[must_use]
pub fn entry_cost(e: &LogEntry) -> u64 {
    e.encoded_len() as u64 + ENTRY_RECORD_OVERHEAD_BYTES
}

/// An upper bound of [`batch_cost`] from lengths alone (payloads, log types and
/// [`ENTRY_ENCODING_OVERHEAD_MAX`]), cheap enough for every write: a batch under the limit by
/// this bound needs no exact count.
#[must_use]
pub fn batch_cost_bound(b: &WriteBatch) -> u64 {
    let per_entry = ENTRY_ENCODING_OVERHEAD_MAX + ENTRY_RECORD_OVERHEAD_BYTES;
    cost_with(b, |e| (e.payload.len() + e.log_type.len()) as u64 + per_entry)
}

/// What a batch costs: its entries, [`PARTITION_RECORDS_BYTES`] per partition, and its
/// metadata (key, value and a record header each). An upper bound of the bytes the native
/// WAL writes for it, and never below the entry bytes [`BATCH_BYTES_MAX`] counts.
#[must_use]
pub fn batch_cost(b: &WriteBatch) -> u64 {
    cost_with(b, entry_cost)
}

/// A batch's cost with each entry counted by `entry`.
fn cost_with(b: &WriteBatch, entry: impl Fn(&LogEntry) -> u64) -> u64 {
    let entries: u64 = b.partitions.iter().flat_map(|p| &p.entries).map(entry).sum();
    let meta: u64 =
        b.meta.iter().map(|m| m.key.len() as u64 + m.value.as_ref().map_or(0, |v| v.len() as u64) + 16).sum();
    entries + PARTITION_RECORDS_BYTES * b.partitions.len() as u64 + meta
}
