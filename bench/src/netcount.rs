//! A transport wrapper the bench puts between each embedded node and its real transport
//! (TCP or in-memory), without changing the engine:
//!
//! - it **counts** what crosses: batches and message counts handed to the transport, and a
//!   mirror of the transport's own counters (frames and frame bytes actually written, with
//!   headers), readable from any thread — the engine keeps its transports' stats on the
//!   shard threads and does not publish them;
//! - it can **isolate** the node at once (every batch in and out dropped), which is how the
//!   failover and recovery scenarios crash a node in-process: peers see it go silent mid-turn,
//!   as after a `kill -9`, before its shards are stopped.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use phalanx_net::{InboundSink, NetError, NodeId, Transport, TransportFactory, TransportStats};
use phalanx_proto::MessageBatch;

/// Counters of one node's transports (every shard), shared with the bench's threads.
#[derive(Debug, Default)]
pub struct NetCounters {
    isolated: AtomicBool,
    /// Batches the engine handed to `send`.
    pub batches_handed: AtomicU64,
    /// Raft messages in those batches.
    pub messages_handed: AtomicU64,
    /// Batches delivered to this node's shards.
    pub batches_received: AtomicU64,
    /// Batches dropped (either way) while isolated.
    pub dropped_isolated: AtomicU64,
    /// Per-shard mirrors of the transport's own counters, refreshed on every send.
    mirrors: Mutex<Vec<Arc<Mirror>>>,
}

/// The last snapshot of one shard transport's counters.
#[derive(Debug, Default)]
struct Mirror {
    batches_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Totals over a node's shards at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTotals {
    /// Batches handed to `send` by the engine.
    pub batches_handed: u64,
    /// Raft messages in them.
    pub messages_handed: u64,
    /// Frames written to peers (the transport's `batches_sent`).
    pub frames_sent: u64,
    /// Frame bytes written to peers, headers included (the transport's `bytes_sent`).
    pub bytes_sent: u64,
}

impl NetTotals {
    /// Element-wise difference (`self` later than `earlier`).
    #[must_use]
    pub fn since(&self, earlier: &NetTotals) -> NetTotals {
        NetTotals {
            batches_handed: self.batches_handed.saturating_sub(earlier.batches_handed),
            messages_handed: self.messages_handed.saturating_sub(earlier.messages_handed),
            frames_sent: self.frames_sent.saturating_sub(earlier.frames_sent),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
        }
    }

    /// Element-wise sum.
    #[must_use]
    pub fn plus(&self, o: &NetTotals) -> NetTotals {
        NetTotals {
            batches_handed: self.batches_handed + o.batches_handed,
            messages_handed: self.messages_handed + o.messages_handed,
            frames_sent: self.frames_sent + o.frames_sent,
            bytes_sent: self.bytes_sent + o.bytes_sent,
        }
    }
}

impl NetCounters {
    /// Drops everything this node sends or receives from now on.
    pub fn isolate(&self) {
        self.isolated.store(true, Ordering::SeqCst);
    }

    /// Whether the node is isolated.
    #[must_use]
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    /// Current totals over every shard.
    #[must_use]
    pub fn totals(&self) -> NetTotals {
        let mirrors = self.mirrors.lock().unwrap_or_else(PoisonError::into_inner);
        let (frames, bytes) = mirrors.iter().fold((0, 0), |(f, b), m| {
            (f + m.batches_sent.load(Ordering::Relaxed), b + m.bytes_sent.load(Ordering::Relaxed))
        });
        NetTotals {
            batches_handed: self.batches_handed.load(Ordering::Relaxed),
            messages_handed: self.messages_handed.load(Ordering::Relaxed),
            frames_sent: frames,
            bytes_sent: bytes,
        }
    }
}

/// Wraps a node's transport factory; see the module docs.
pub struct CountingFactory<F> {
    inner: F,
    counters: Arc<NetCounters>,
}

impl<F> CountingFactory<F> {
    /// Wraps `inner`, counting into `counters`.
    pub fn new(inner: F, counters: Arc<NetCounters>) -> Self {
        CountingFactory { inner, counters }
    }
}

/// One shard's wrapped transport.
pub struct CountingTransport<T> {
    inner: T,
    counters: Arc<NetCounters>,
    mirror: Arc<Mirror>,
}

impl<F: TransportFactory> TransportFactory for CountingFactory<F> {
    type T = CountingTransport<F::T>;

    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<Self::T, NetError> {
        let c = self.counters.clone();
        let wrapped: InboundSink = Rc::new(move |inbound| {
            if c.is_isolated() {
                c.dropped_isolated.fetch_add(1, Ordering::Relaxed);
                // Reported as delivered: the transport must not count a full inbox.
                return true;
            }
            c.batches_received.fetch_add(1, Ordering::Relaxed);
            sink(inbound)
        });
        let inner = self.inner.start(shard, shards, wrapped)?;
        let mirror = Arc::new(Mirror::default());
        self.counters.mirrors.lock().unwrap_or_else(PoisonError::into_inner).push(mirror.clone());
        Ok(CountingTransport { inner, counters: self.counters.clone(), mirror })
    }
}

impl<T: Transport> Transport for CountingTransport<T> {
    fn send(&self, to: NodeId, batch: MessageBatch) {
        let c = &self.counters;
        if c.is_isolated() {
            c.dropped_isolated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        c.batches_handed.fetch_add(1, Ordering::Relaxed);
        c.messages_handed.fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        self.inner.send(to, batch);
        // The transport writes asynchronously: this snapshot lags by the frames in flight,
        // which is noise over a measurement of seconds.
        let s = self.inner.stats();
        self.mirror.batches_sent.store(s.batches_sent, Ordering::Relaxed);
        self.mirror.bytes_sent.store(s.bytes_sent, Ordering::Relaxed);
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
