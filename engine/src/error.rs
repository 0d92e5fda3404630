//! The engine's error type: why a node did not start, or why one of its shards stopped.
//! Storage and network failures keep their own typed errors as sources (shared, so a
//! failure recorded once can be handed to every handle that asks for it).

use std::path::PathBuf;
use std::sync::Arc;

use phalanx_net::NetError;
use phalanx_storage::StorageError;

use crate::state_machine::PartitionId;

/// Why a node did not start, or why a shard stopped.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The node's configuration is invalid; names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory belongs to another node, core count or cluster, or holds shards
    /// without the file that says whose they are.
    #[error("data directory {}: {reason}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A file of the node (its identity file, a snapshot file) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A snapshot file is damaged or not a snapshot; nothing was guessed from it.
    #[error("snapshot file {}: {reason}", path.display())]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offset.
        reason: String,
    },
    /// The log store of a shard failed: at open, or while the node ran (a failed write or
    /// sync is fatal for the shard: nothing after it is acknowledged).
    #[error("shard {shard}: {what}: {source}")]
    Storage {
        /// The shard.
        shard: usize,
        /// What the shard was doing.
        what: String,
        /// The store's error.
        #[source]
        source: Arc<StorageError>,
    },
    /// A shard's transport could not start.
    #[error("shard {shard}: transport: {source}")]
    Transport {
        /// The shard.
        shard: usize,
        /// The transport's error.
        #[source]
        source: Arc<NetError>,
    },
    /// A partition's stored state cannot be restored (the Raft core refuses it).
    #[error("partition {partition}: {reason}")]
    Restore {
        /// The partition.
        partition: PartitionId,
        /// Why.
        reason: String,
    },
    /// Durable state was lost that no other node can restore: the node refuses to start
    /// rather than run with what may be missing acknowledged writes.
    #[error("{0}")]
    LostState(String),
    /// The client port could not be bound or served (an address in use, no permission).
    #[error("client port {addr}: {source}")]
    ClientPort {
        /// The address.
        addr: String,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An executor thread (a shard's, the client port's) could not start, or exited while
    /// starting.
    #[error("{thread}: {reason}")]
    Executor {
        /// Whose: `shard 3`, `client port`.
        thread: String,
        /// What happened.
        reason: String,
    },
    /// A shard's log writer task stopped before the shard did.
    #[error("shard {shard}: the WAL writer stopped")]
    WriterStopped {
        /// The shard.
        shard: usize,
    },
}

impl Error {
    /// A storage failure of `shard` while doing `what`.
    pub(crate) fn storage(shard: usize, what: impl Into<String>, source: StorageError) -> Self {
        Error::Storage { shard, what: what.into(), source: Arc::new(source) }
    }

    /// An IO failure on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source: Arc::new(source) }
    }
}
