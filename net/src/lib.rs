//! Phalanx transport: how shards of different nodes exchange Raft messages.
//!
//! - [`frame`]: length-prefixed frames and an incremental decoder (also used by the engine's
//!   client port, through the application frame kinds).
//! - [`handshake`]: the first exchange on every connection (protocol version, cluster id,
//!   node ids, shard numbers), authenticated by [`auth`] when a shared secret is set.
//! - [`transport`]: the [`Transport`] / [`TransportFactory`] contract every implementation
//!   honours (ordering, loss, the never-blocking `send`, the inbound sink).
//! - [`tcp`]: glommio (io_uring) TCP transport, one advertised port per node.
//! - [`tls`]: TLS and mutual TLS (rustls) on the Raft and client ports, reloaded when its
//!   files change.
//! - [`listen`]: binding a port a process that just exited may still hold.
//! - [`memory`]: in-process transport with fault hooks, for tests and single-process clusters.
//! - [`discovery`]: where peers are; static and application-controlled lists.
//! - [`spare`]: how much of a reused buffer's capacity to keep after a burst.
//!
//! See `net/README.md` for the wire format and how to run the conformance suite and the
//! network probe.

pub mod any;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod listen;
pub mod memory;
pub mod spare;
pub mod stats;
mod tasks;
pub mod tcp;
pub mod tls;
pub mod transport;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use any::{AnyFactory, AnyTransport};
pub use auth::wall_ms;
pub use discovery::{
    Discovery, DynamicDiscovery, NodeAddr, StaticDiscovery, derive_node_id, parse_node_list,
};
pub use error::NetError;
pub use frame::{DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, FrameError, FrameKind};
pub use memory::{MemoryConfig, MemoryFactory, MemoryNetwork, MemoryTransport};
pub use stats::TransportStats;
pub use tcp::{TcpConfig, TcpFactory, TcpTransport};
pub use transport::{Inbound, InboundSink, NodeId, Transport, TransportFactory};
