//! Named limits shared by every adapter. A batch that exceeds one is refused with
//! [`crate::StorageError::LimitExceeded`] before anything is written.

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
