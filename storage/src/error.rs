//! Storage errors, in tiers.
//!
//! * Caller mistakes ([`StorageError::InvalidBatch`], [`StorageError::OutOfRange`],
//!   [`StorageError::LimitExceeded`]) are reported before anything is written; the store stays
//!   usable.
//! * Damaged or unexpected files ([`StorageError::Corrupt`], [`StorageError::FormatTooNew`],
//!   [`StorageError::Foreign`], [`StorageError::Locked`]) are reported by `open` (or by a read
//!   that meets a damaged record) with the file, and the offset when known. Nothing panics on
//!   bad files.
//! * A failed write or sync poisons the store: it returns [`StorageError::Fatal`] from then on,
//!   for every call. After a failed `fdatasync` the kernel may have dropped the dirty data and
//!   cleared the error, so retrying could report success for data that is gone; the only safe
//!   reaction is to stop the shard and recover from disk.

use std::path::PathBuf;
use std::sync::Arc;

/// A storage result.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything a [`crate::LogStore`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file holds data that fails its checksum or breaks the format's rules somewhere other
    /// than a torn tail. The store refuses to guess: an operator must look.
    #[error("corrupt storage file {}{}: {reason}", file.display(), fmt_offset(*offset))]
    Corrupt {
        /// The damaged file (or the database directory when the backend does not say).
        file: PathBuf,
        /// Byte offset of the damaged record in `file`, when the backend knows it.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer format version than this build understands.
    #[error("{} was written by storage format version {found}; this build reads up to {supported}", file.display())]
    FormatTooNew {
        /// The file carrying the version.
        file: PathBuf,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The file is not a Phalanx storage file of the expected kind (wrong magic, unexpected
    /// file in a store directory, another adapter's directory).
    #[error("{} is not a Phalanx storage file of this kind: {reason}", file.display())]
    Foreign {
        /// The offending file.
        file: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// Another process (or another store in this process) has the directory open.
    #[error("storage directory {} is locked by another store", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// An I/O error that did not poison the store (open, read).
    #[error("I/O error: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A backend (RocksDB, SQLite) error that fits no other variant.
    #[error("{backend} error: {reason}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Its message.
        reason: String,
    },
    /// The batch breaks the contract (non-contiguous entries, compaction past the last
    /// entry, a partition twice in one batch, …). Nothing was written.
    #[error("invalid batch for partition {partition}: {reason}")]
    InvalidBatch {
        /// The partition concerned.
        partition: u64,
        /// What is wrong.
        reason: String,
    },
    /// A read asked for entries outside `first_index..=last_index`.
    #[error("partition {partition}: entries {lo}..{hi} out of range (first {first}, last {last})")]
    OutOfRange {
        /// The partition.
        partition: u64,
        /// Requested start (inclusive).
        lo: u64,
        /// Requested end (exclusive).
        hi: u64,
        /// First index held.
        first: u64,
        /// Last index held.
        last: u64,
    },
    /// A named limit was exceeded. Nothing was written.
    #[error("{what} is {value}, above the limit {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The store failed a write or sync earlier and is poisoned: nothing is retried, every
    /// call returns this. Stop the shard and reopen from disk.
    #[error("storage is failed (fatal, never retried): {cause}")]
    Fatal {
        /// The original failure.
        #[source]
        cause: Arc<StorageError>,
    },
}

fn fmt_offset(offset: Option<u64>) -> String {
    match offset {
        Some(o) => format!(" at offset {o}"),
        None => String::new(),
    }
}

impl StorageError {
    /// Whether the store refused the call before writing anything and stays usable (a batch
    /// that breaks the contract or a limit), as opposed to a failure that poisons it.
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        matches!(self, StorageError::InvalidBatch { .. } | StorageError::LimitExceeded { .. })
    }

    /// Shorthand for an I/O error on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }

    /// Shorthand for a corruption at a known offset.
    pub(crate) fn corrupt(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt { file: file.into(), offset: Some(offset), reason: reason.into() }
    }

    /// Shorthand for an invalid batch.
    pub(crate) fn invalid(partition: u64, reason: impl Into<String>) -> Self {
        StorageError::InvalidBatch { partition, reason: reason.into() }
    }

    /// Whether this is the poisoned-store error.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(self, StorageError::Fatal { .. })
    }

    /// Whether this reports damaged data.
    #[must_use]
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt { .. })
            || matches!(self, StorageError::Fatal { cause } if cause.is_corrupt())
    }
}

/// The poisoned state shared by the adapters: once set, every call returns it.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    cause: Option<Arc<StorageError>>,
    /// A write started and has not finished. Seen by a later call, it means the write's
    /// future was dropped half-way: what reached the disk is unknown, so the store is as
    /// good as failed.
    in_flight: bool,
}

impl Poison {
    /// `Err(Fatal)` once poisoned (or after an abandoned write).
    pub(crate) fn check(&self) -> Result<()> {
        match &self.cause {
            Some(cause) => Err(StorageError::Fatal { cause: cause.clone() }),
            None if self.in_flight => Err(StorageError::Fatal {
                cause: Arc::new(StorageError::Backend {
                    backend: "storage",
                    reason: "a write was abandoned before it completed (its future was dropped)".into(),
                }),
            }),
            None => Ok(()),
        }
    }

    /// Marks the start of a write that will touch the disk.
    pub(crate) fn begin(&mut self) -> Result<()> {
        self.check()?;
        self.in_flight = true;
        Ok(())
    }

    /// Marks the end of a write, whatever its outcome (failures poison separately).
    pub(crate) fn end(&mut self) {
        self.in_flight = false;
    }

    /// Poisons the store with `err` (the first cause wins) and returns the fatal error.
    pub(crate) fn poison(&mut self, err: StorageError) -> StorageError {
        let cause = match &self.cause {
            Some(c) => c.clone(),
            None => {
                tracing::error!(error = %err, "storage write failed: store is poisoned");
                let c = match err {
                    StorageError::Fatal { cause } => cause,
                    other => Arc::new(other),
                };
                self.cause = Some(c.clone());
                c
            }
        };
        StorageError::Fatal { cause }
    }
}
