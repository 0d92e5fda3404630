//! A transport chosen at run time (the binary's flag, a test's parameter) without making the
//! runtime generic over it.

use phalanx_proto::MessageBatch;

use crate::error::NetError;
use crate::memory::{MemoryFactory, MemoryTransport};
use crate::stats::TransportStats;
use crate::tcp::{TcpFactory, TcpTransport};
use crate::transport::{InboundSink, NodeId, Transport, TransportFactory};

/// Either factory.
pub enum AnyFactory {
    /// TCP (io_uring).
    Tcp(TcpFactory),
    /// In-process.
    Memory(MemoryFactory),
}

/// Either transport.
pub enum AnyTransport {
    /// TCP (io_uring).
    Tcp(TcpTransport),
    /// In-process.
    Memory(MemoryTransport),
}

impl TransportFactory for AnyFactory {
    type T = AnyTransport;

    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<AnyTransport, NetError> {
        Ok(match self {
            AnyFactory::Tcp(f) => AnyTransport::Tcp(f.start(shard, shards, sink)?),
            AnyFactory::Memory(f) => AnyTransport::Memory(f.start(shard, shards, sink)?),
        })
    }
}

impl Transport for AnyTransport {
    fn send(&self, to: NodeId, batch: MessageBatch) {
        match self {
            AnyTransport::Tcp(t) => t.send(to, batch),
            AnyTransport::Memory(t) => t.send(to, batch),
        }
    }

    fn stats(&self) -> TransportStats {
        match self {
            AnyTransport::Tcp(t) => t.stats(),
            AnyTransport::Memory(t) => t.stats(),
        }
    }

    fn max_frame_bytes(&self) -> usize {
        match self {
            AnyTransport::Tcp(t) => t.max_frame_bytes(),
            AnyTransport::Memory(t) => t.max_frame_bytes(),
        }
    }

    async fn shutdown(self) {
        match self {
            AnyTransport::Tcp(t) => t.shutdown().await,
            AnyTransport::Memory(t) => t.shutdown().await,
        }
    }
}

impl From<TcpFactory> for AnyFactory {
    fn from(f: TcpFactory) -> Self {
        AnyFactory::Tcp(f)
    }
}

impl From<MemoryFactory> for AnyFactory {
    fn from(f: MemoryFactory) -> Self {
        AnyFactory::Memory(f)
    }
}
