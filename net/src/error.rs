//! Errors a caller of this crate can get back. Per-connection problems (a peer's bad frame,
//! a refused handshake, a failed connect) are not errors of any call: they close that one
//! connection, are logged and counted in [`crate::TransportStats`].

use crate::discovery::DiscoveryError;

/// Why a factory or transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A configuration value is out of range; names the field.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The Raft listener could not be bound (address in use, permission...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `start` was called twice for one shard of one factory.
    #[error("shard {0} was already started by this factory")]
    AlreadyStarted(usize),
    /// `start` got a shard index or count that does not fit the node.
    #[error("shard {shard} of {shards} is out of range or inconsistent with earlier starts")]
    BadShard {
        /// The shard asked for.
        shard: usize,
        /// The shard count passed.
        shards: usize,
    },
    /// Another IO failure while setting up.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// A peer list could not be parsed or is inconsistent.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}
