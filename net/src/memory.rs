//! In-process transport: many nodes in one process, each shard on its own executor thread.
//!
//! A [`MemoryNetwork`] is the shared "wire": a registry of (node, shard) → bounded flume
//! inbox, plus fault state. Each shard's transport runs one receiver task that drains its
//! inbox into the sink on the shard's thread. The contract is the TCP transport's:
//!
//! - `send` never blocks; the batch is dropped and counted when the receiving shard's inbox
//!   is full (`batches_dropped_queue_full`), when the peer is not running or a link is cut
//!   (`batches_dropped_unreachable`), when it exceeds `max_frame_bytes`
//!   (`batches_dropped_oversize`) or breaks the batch contract (`batches_dropped_invalid`,
//!   checked here at send so tests catch what a TCP peer would refuse).
//! - In order per (sending shard, receiving node): one FIFO inbox per receiving shard.
//! - Shard *i* delivers to shard `i % peer.shards`.
//!
//! The bound is per receiving shard (all senders share its inbox), not per sending peer as
//! with TCP: simpler, and what tests need is that the bound exists and drops are counted.
//!
//! # Faults
//!
//! [`cut`](MemoryNetwork::cut) / [`heal`](MemoryNetwork::heal) one direction of a link,
//! [`cut_both`](MemoryNetwork::cut_both) / [`heal_both`](MemoryNetwork::heal_both) both,
//! [`partition`](MemoryNetwork::partition) two groups, [`isolate`](MemoryNetwork::isolate)
//! / [`rejoin`](MemoryNetwork::rejoin) a node (all its traffic both ways), and
//! [`heal_all`](MemoryNetwork::heal_all). Faults apply at send *and* at delivery: batches
//! already queued on a link that gets cut are dropped too, so a partition takes effect at
//! once.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use phalanx_proto::MessageBatch;
use tracing::error;

use crate::error::NetError;
use crate::frame::{DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES};
use crate::handshake::MAX_PEER_SHARDS;
use crate::stats::{Counters, TransportStats, add, inc};
use crate::tasks::TaskSet;
use crate::transport::{Inbound, InboundSink, NodeId, Transport, TransportFactory, check_batch, peer_shard};

/// Default inbox capacity of one shard, in batches.
pub const DEFAULT_INBOX_BATCHES: usize = 4096;

/// Configuration of a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Capacity of each shard's inbox, in batches.
    pub inbox_batches: usize,
    /// Largest batch encoding accepted (as the TCP transport's frame limit).
    pub max_frame_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { inbox_batches: DEFAULT_INBOX_BATCHES, max_frame_bytes: DEFAULT_MAX_FRAME_BYTES }
    }
}

/// A registered inbox: registration id (so a stale transport never removes a newer one)
/// and sender.
type Inbox = Option<(u64, flume::Sender<Inbound>)>;

/// An immutable snapshot of the wire, replaced on every change (copy on write) so senders
/// read it without locking.
#[derive(Clone, Default)]
struct Routes {
    nodes: HashMap<NodeId, Vec<Inbox>>,
    cut: HashSet<(NodeId, NodeId)>,
    isolated: HashSet<NodeId>,
}

impl Routes {
    fn allows(&self, from: NodeId, to: NodeId) -> bool {
        !self.isolated.contains(&from) && !self.isolated.contains(&to) && !self.cut.contains(&(from, to))
    }
}

/// The shared in-process wire. Create one per test cluster, then one factory per node.
pub struct MemoryNetwork {
    cfg: MemoryConfig,
    routes: Mutex<Arc<Routes>>,
    version: AtomicU64,
    next_registration: AtomicU64,
}

impl MemoryNetwork {
    /// An empty network.
    #[must_use]
    pub fn new(cfg: MemoryConfig) -> Arc<Self> {
        Arc::new(MemoryNetwork {
            cfg,
            routes: Mutex::new(Arc::new(Routes::default())),
            version: AtomicU64::new(1),
            next_registration: AtomicU64::new(1),
        })
    }

    /// The factory of node `node`.
    #[must_use]
    pub fn factory(self: &Arc<Self>, node: NodeId) -> MemoryFactory {
        MemoryFactory { net: self.clone(), node }
    }

    fn snapshot(&self) -> (u64, Arc<Routes>) {
        let r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock so the version matches the snapshot.
        (self.version.load(Ordering::Acquire), r.clone())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Routes) -> T) -> T {
        let mut r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(Arc::make_mut(&mut r));
        self.version.fetch_add(1, Ordering::Release);
        out
    }

    /// Drops everything `from` sends to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.update(|r| r.cut.insert((from, to)));
    }

    /// Restores `from` → `to`.
    pub fn heal(&self, from: NodeId, to: NodeId) {
        self.update(|r| r.cut.remove(&(from, to)));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: NodeId, b: NodeId) {
        self.update(|r| {
            r.cut.insert((a, b));
            r.cut.insert((b, a));
        });
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal_both(&self, a: NodeId, b: NodeId) {
        self.update(|r| {
            r.cut.remove(&(a, b));
            r.cut.remove(&(b, a));
        });
    }

    /// Cuts every link between a node of `left` and a node of `right`, both ways.
    pub fn partition(&self, left: &[NodeId], right: &[NodeId]) {
        self.update(|r| {
            for &a in left {
                for &b in right {
                    r.cut.insert((a, b));
                    r.cut.insert((b, a));
                }
            }
        });
    }

    /// Drops all traffic to and from `node`.
    pub fn isolate(&self, node: NodeId) {
        self.update(|r| r.isolated.insert(node));
    }

    /// Ends [`isolate`](Self::isolate) for `node` (its cut links stay cut).
    pub fn rejoin(&self, node: NodeId) {
        self.update(|r| r.isolated.remove(&node));
    }

    /// Removes every fault.
    pub fn heal_all(&self) {
        self.update(|r| {
            r.cut.clear();
            r.isolated.clear();
        });
    }

    /// Every (node, shard) with a running transport.
    #[must_use]
    pub fn running_shards(&self) -> Vec<(NodeId, usize)> {
        let routes = self.snapshot().1;
        let mut out: Vec<(NodeId, usize)> = routes
            .nodes
            .iter()
            .flat_map(|(n, inboxes)| {
                inboxes.iter().enumerate().filter(|(_, i)| i.is_some()).map(|(s, _)| (*n, s))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `from` can currently reach `to` (ignoring whether `to` runs).
    #[must_use]
    pub fn allows(&self, from: NodeId, to: NodeId) -> bool {
        self.snapshot().1.allows(from, to)
    }
}

/// Creates one node's per-shard in-memory transports.
pub struct MemoryFactory {
    net: Arc<MemoryNetwork>,
    node: NodeId,
}

impl MemoryFactory {
    /// The node this factory starts.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The network it is attached to.
    #[must_use]
    pub fn network(&self) -> &Arc<MemoryNetwork> {
        &self.net
    }
}

impl TransportFactory for MemoryFactory {
    type T = MemoryTransport;

    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<MemoryTransport, NetError> {
        if self.node == 0 {
            return Err(NetError::Config("node id must be non-zero".into()));
        }
        if shards == 0 || shard >= shards || shards > MAX_PEER_SHARDS as usize {
            return Err(NetError::BadShard { shard, shards });
        }
        let (tx, rx) = flume::bounded(self.net.cfg.inbox_batches.max(1));
        let reg = self.net.next_registration.fetch_add(1, Ordering::Relaxed);
        self.net.update(|r| {
            let inboxes = r.nodes.entry(self.node).or_default();
            if inboxes.len() != shards {
                // A node restarting with another shard count: allowed once all its shards stopped.
                if inboxes.iter().any(Option::is_some) {
                    return Err(NetError::BadShard { shard, shards });
                }
                *inboxes = vec![None; shards];
            }
            if inboxes[shard].is_some() {
                return Err(NetError::AlreadyStarted(shard));
            }
            inboxes[shard] = Some((reg, tx));
            Ok(())
        })?;
        let (version, routes) = self.net.snapshot();
        let inner = Rc::new(MemShard {
            net: self.net.clone(),
            node: self.node,
            shard,
            registration: reg,
            counters: Counters::default(),
            routes: RefCell::new((version, routes)),
            tasks: TaskSet::new(),
        });
        let s = inner.clone();
        inner.tasks.spawn(async move {
            while let Ok(inbound) = rx.recv_async().await {
                s.deliver(&sink, inbound);
            }
        });
        Ok(MemoryTransport { inner })
    }
}

struct MemShard {
    net: Arc<MemoryNetwork>,
    node: NodeId,
    shard: usize,
    registration: u64,
    counters: Counters,
    routes: RefCell<(u64, Arc<Routes>)>,
    tasks: Rc<TaskSet>,
}

impl MemShard {
    fn routes(&self) -> Arc<Routes> {
        let v = self.net.version.load(Ordering::Acquire);
        let mut cached = self.routes.borrow_mut();
        if cached.0 != v {
            *cached = self.net.snapshot();
        }
        cached.1.clone()
    }

    fn send(&self, to: NodeId, batch: MessageBatch) {
        let c = &self.counters;
        if self.tasks.is_closed() || to == self.node || to == 0 {
            return inc(&c.batches_dropped_unreachable);
        }
        let routes = self.routes();
        if !routes.allows(self.node, to) {
            return inc(&c.batches_dropped_unreachable);
        }
        let Some(tx) = routes
            .nodes
            .get(&to)
            .and_then(|inboxes| inboxes.get(peer_shard(self.shard, inboxes.len())).cloned().flatten())
        else {
            return inc(&c.batches_dropped_unreachable);
        };
        if let Err(e) = check_batch(&batch, self.node, to) {
            error!(node = self.node, peer = to, error = %e, "batch breaks the transport contract; dropped");
            return inc(&c.batches_dropped_invalid);
        }
        let len = prost::Message::encoded_len(&batch);
        if len > self.net.cfg.max_frame_bytes {
            return inc(&c.batches_dropped_oversize);
        }
        match tx.1.try_send(Inbound { from: self.node, from_shard: self.shard as u32, batch }) {
            Ok(()) => {
                inc(&c.batches_sent);
                add(&c.bytes_sent, (FRAME_HEADER_BYTES + len) as u64);
            }
            Err(flume::TrySendError::Full(_)) => inc(&c.batches_dropped_queue_full),
            Err(flume::TrySendError::Disconnected(_)) => inc(&c.batches_dropped_unreachable),
        }
    }

    fn deliver(&self, sink: &InboundSink, inbound: Inbound) {
        let c = &self.counters;
        if !self.routes().allows(inbound.from, self.node) {
            // Cut while in flight: a partition takes effect for queued traffic too.
            return inc(&c.batches_dropped_unreachable);
        }
        let len = FRAME_HEADER_BYTES + prost::Message::encoded_len(&inbound.batch);
        add(&c.bytes_received, len as u64);
        if sink(inbound) {
            inc(&c.batches_received);
        } else {
            inc(&c.batches_dropped_inbox_full);
        }
    }

    fn unregister(&self) {
        let (node, shard, reg) = (self.node, self.shard, self.registration);
        self.net.update(|r| {
            let slot = r.nodes.get_mut(&node).and_then(|v| v.get_mut(shard));
            if let Some(slot) = slot.filter(|s| s.as_ref().is_some_and(|(id, _)| *id == reg)) {
                *slot = None;
            }
        });
    }
}

/// One shard's in-memory transport. `!Send`: it lives on the shard's executor.
pub struct MemoryTransport {
    inner: Rc<MemShard>,
}

impl Transport for MemoryTransport {
    fn send(&self, to: NodeId, batch: MessageBatch) {
        self.inner.send(to, batch);
    }

    fn stats(&self) -> TransportStats {
        self.inner.counters.snapshot()
    }

    fn max_frame_bytes(&self) -> usize {
        self.inner.net.cfg.max_frame_bytes
    }

    async fn shutdown(self) {
        self.inner.unregister();
        self.inner.tasks.shutdown().await;
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.inner.unregister();
        self.inner.tasks.close_now();
    }
}
