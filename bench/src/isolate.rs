//! A transport wrapper that can **isolate** a node at once: every batch in and out is dropped
//! from that instant. It is how the failover and recovery scenarios crash a node in-process:
//! peers see it go silent mid-turn, as after a `kill -9`, before its shards are stopped (the
//! engine has no abrupt in-process kill). It counts nothing: traffic figures come from the
//! engine itself (`NodeHandle::stats`).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use phalanx_net::{InboundSink, NetError, NodeId, Transport, TransportFactory, TransportStats};
use phalanx_proto::MessageBatch;

/// Whether a node is cut off, shared with its transports.
#[derive(Debug, Default)]
pub struct Isolation(AtomicBool);

impl Isolation {
    /// Drops everything the node sends or receives from now on.
    pub fn isolate(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_isolated(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wraps a node's transport factory; see the module docs.
pub struct IsolatingFactory<F> {
    inner: F,
    isolation: Arc<Isolation>,
}

impl<F> IsolatingFactory<F> {
    /// Wraps `inner`, cut off once `isolation` says so.
    pub fn new(inner: F, isolation: Arc<Isolation>) -> Self {
        IsolatingFactory { inner, isolation }
    }
}

/// One shard's wrapped transport.
pub struct IsolatingTransport<T> {
    inner: T,
    isolation: Arc<Isolation>,
}

impl<F: TransportFactory> TransportFactory for IsolatingFactory<F> {
    type T = IsolatingTransport<F::T>;

    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<Self::T, NetError> {
        let isolation = self.isolation.clone();
        // An isolated node's inbound batches are reported as delivered: the transport must
        // not count a full inbox.
        let wrapped: InboundSink = Rc::new(move |inbound| isolation.is_isolated() || sink(inbound));
        let inner = self.inner.start(shard, shards, wrapped)?;
        Ok(IsolatingTransport { inner, isolation: self.isolation.clone() })
    }
}

impl<T: Transport> Transport for IsolatingTransport<T> {
    fn send(&self, to: NodeId, batch: MessageBatch) {
        if !self.isolation.is_isolated() {
            self.inner.send(to, batch);
        }
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes()
    }

    async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}
