//! TCP transport configuration: every size, count and duration is a named field with its unit.

use crate::error::NetError;
use crate::frame::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_READ_CHUNK_BYTES, FRAME_HEADER_BYTES, MAX_FRAME_BYTES_LIMIT,
};
use crate::handshake::MAX_CLUSTER_ID_BYTES;
use crate::transport::NodeId;

/// Default capacity of one peer's outgoing queue, in batches (one shard loop turn sends at
/// most one batch per peer, so this is thousands of turns of slack).
pub const DEFAULT_PEER_QUEUE_BATCHES: usize = 4096;
/// Default capacity of one peer's outgoing queue, in encoded bytes.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 64 << 20;
/// Default time allowed for a TCP connect.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Default time allowed for the handshake once connected (both sides).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;
/// Default time one socket write may stay blocked (a peer that stopped reading) before the
/// connection is dropped and re-established.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;
/// Default time a frame begun on an inbound connection may take to arrive whole (16 MiB in
/// 30 s is about 0.5 MiB/s): a peer that stops half-way does not hold its buffer forever.
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 30_000;
/// Default `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
/// fails the connection. Without it a vanished peer is noticed only after ~15 minutes of
/// retransmissions.
pub const DEFAULT_TCP_USER_TIMEOUT_MS: u64 = 10_000;
/// Default first reconnect delay after a failed attempt.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 10;
/// Default ceiling of the exponential reconnect delay.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 1_000;
/// Default cap on inbound connections one shard reads at once.
pub const DEFAULT_MAX_INBOUND_CONNECTIONS: usize = 1024;
/// Default cap on inbound connections in their handshake at once (shard 0 only).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;
/// Default capacity of a shard's handoff queue (connections passed from shard 0).
pub const DEFAULT_HANDOFF_QUEUE: usize = 64;
/// Default longest wait of a queued frame for the dialer task before a `send` writes it
/// through itself: none. Measured in the 3-node bench, coalescing up to 100 us left the send
/// delay as it was without write-through (11-12% of frames > 200 us: a queue is rarely sent
/// to again within the delay, so the deadline is only checked once the dialer has run),
/// while writing at once brought that to ~1% for the same throughput.
pub const DEFAULT_COALESCE_MAX_US: u64 = 0;
/// Largest coalescing delay accepted in configuration.
pub const MAX_COALESCE_MAX_US: u64 = 1_000_000;
/// Largest read chunk accepted in configuration.
pub const MAX_READ_CHUNK_BYTES: usize = 16 << 20;

/// Configuration of one node's TCP transport (shared by its shards).
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This node's id (non-zero).
    pub node_id: NodeId,
    /// The cluster id checked in every handshake.
    pub cluster_id: String,
    /// Shared secrets every handshake must prove, both ways (`crate::auth`); `None` accepts
    /// any node that names the cluster id.
    pub node_auth: Option<std::sync::Arc<crate::auth::NodeAuth>>,
    /// Mutual TLS between nodes (`crate::tls`): every connection, both ways, is a TLS
    /// session in which each side proved a certificate from the CA (and a pin, if set).
    /// `None`: plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::TlsContext>>,
    /// Address the Raft listener binds, `host:port` (the node's one advertised `raft_port`;
    /// port 0 lets the OS pick, see [`super::TcpFactory::local_addr`]).
    pub listen_addr: String,
    /// Largest frame payload sent or accepted.
    pub max_frame_bytes: usize,
    /// Per-peer outgoing queue capacity in batches.
    pub peer_queue_batches: usize,
    /// Per-peer outgoing queue capacity in encoded bytes (at least one largest frame).
    pub peer_queue_bytes: usize,
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// Handshake timeout (dialer waiting for the ack; acceptor waiting for the Hello).
    pub handshake_timeout_ms: u64,
    /// How long one write may block before the connection is dropped.
    pub write_timeout_ms: u64,
    /// How long a frame begun on an inbound connection may take to arrive whole before the
    /// connection is closed (idle connections between frames are kept: peers may be quiet).
    pub frame_timeout_ms: u64,
    /// `TCP_USER_TIMEOUT` on every connection; 0 keeps the OS default.
    pub tcp_user_timeout_ms: u64,
    /// First reconnect delay after a failure (jittered, doubled up to `backoff_max_ms`).
    pub backoff_initial_ms: u64,
    /// Ceiling of the reconnect delay.
    pub backoff_max_ms: u64,
    /// Bytes asked from the socket per read.
    pub read_chunk_bytes: usize,
    /// How long a queued frame may wait for the dialer task (which runs when the shard loop
    /// yields) before the next `send` writes the queue through itself. 0 (the default) writes
    /// every frame at once: lowest latency, one `send(2)` and possibly one wake-up of the
    /// receiver per frame. A few hundred microseconds trade latency for fewer syscalls when
    /// a shard sends to one peer many times per loop turn.
    pub coalesce_max_us: u64,
    /// Inbound connections one shard reads at once; more are refused as unavailable.
    pub max_inbound_connections: usize,
    /// Inbound connections in their handshake at once; more are closed at accept.
    pub max_pending_handshakes: usize,
    /// Connections shard 0 may have queued for handoff to one other shard.
    pub handoff_queue: usize,
}

impl TcpConfig {
    /// Defaults for everything but identity and address.
    pub fn new(node_id: NodeId, cluster_id: impl Into<String>, listen_addr: impl Into<String>) -> Self {
        TcpConfig {
            node_id,
            cluster_id: cluster_id.into(),
            node_auth: None,
            tls: None,
            listen_addr: listen_addr.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            peer_queue_batches: DEFAULT_PEER_QUEUE_BATCHES,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            frame_timeout_ms: DEFAULT_FRAME_TIMEOUT_MS,
            tcp_user_timeout_ms: DEFAULT_TCP_USER_TIMEOUT_MS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            read_chunk_bytes: DEFAULT_READ_CHUNK_BYTES,
            coalesce_max_us: DEFAULT_COALESCE_MAX_US,
            max_inbound_connections: DEFAULT_MAX_INBOUND_CONNECTIONS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            handoff_queue: DEFAULT_HANDOFF_QUEUE,
        }
    }

    /// Names the first out-of-range field.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |what: &str| Err(NetError::Config(what.to_string()));
        if self.node_id == 0 {
            return bad("node_id must be non-zero");
        }
        if self.cluster_id.len() > MAX_CLUSTER_ID_BYTES {
            return bad("cluster_id is longer than 256 bytes");
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return bad("max_frame_bytes must be in 1..=u32::MAX");
        }
        if self.peer_queue_batches == 0 {
            return bad("peer_queue_batches must be positive");
        }
        if self.peer_queue_bytes < self.max_frame_bytes + FRAME_HEADER_BYTES {
            return bad("peer_queue_bytes must hold at least one max_frame_bytes frame");
        }
        for (v, name) in [
            (self.connect_timeout_ms, "connect_timeout_ms"),
            (self.handshake_timeout_ms, "handshake_timeout_ms"),
            (self.write_timeout_ms, "write_timeout_ms"),
            (self.frame_timeout_ms, "frame_timeout_ms"),
            (self.backoff_initial_ms, "backoff_initial_ms"),
        ] {
            if v == 0 {
                return Err(NetError::Config(format!("{name} must be positive")));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return bad("backoff_max_ms must be at least backoff_initial_ms");
        }
        if self.tcp_user_timeout_ms > u64::from(u32::MAX) {
            return bad("tcp_user_timeout_ms must fit in 32 bits");
        }
        if self.coalesce_max_us > MAX_COALESCE_MAX_US {
            return bad("coalesce_max_us must be at most 1 s");
        }
        if self.read_chunk_bytes == 0 || self.read_chunk_bytes > MAX_READ_CHUNK_BYTES {
            return bad("read_chunk_bytes must be in 1..=16 MiB");
        }
        if self.max_inbound_connections == 0 || self.max_pending_handshakes == 0 || self.handoff_queue == 0 {
            return bad("max_inbound_connections, max_pending_handshakes and handoff_queue must be positive");
        }
        Ok(())
    }
}
