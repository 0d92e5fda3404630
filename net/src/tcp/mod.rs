//! The TCP transport: glommio sockets (io_uring), one connection per (shard, peer).
//!
//! # Port and shard scheme
//!
//! A node advertises **one** Raft port. Shard *i* of node A keeps one outgoing connection to
//! each peer B, which B's shard `i % B.shards` reads. Connections are one-way (A's shard
//! writes, B's shard reads); B answers over its own connection to A.
//!
//! Shard 0 owns the listener. It accepts, reads the [Hello](crate::handshake) (which names
//! the dialing shard and the dialer's shard count), checks it, and **hands the socket over**
//! to the target shard: the fd is duplicated, shard 0's handle dropped, and the fd (with any
//! bytes read past the Hello) sent over a bounded flume channel to the target shard, which
//! adopts it on its own io_uring, sends the HelloAck and reads batches. The ack therefore
//! means "the shard that reads you is running".
//!
//! Why a handoff and not a port per shard (`raft_port + shard`): one port keeps deployment,
//! firewalls and discovery unchanged when core counts differ between nodes or change across
//! restarts, and the dialer need not know the peer's shard count before connecting. The
//! handoff is sound because the socket is idle at that moment (a dialer sends nothing before
//! the ack, and nothing is in flight on shard 0's handle when it is dropped), an fd is just a
//! number any thread may adopt, and the channel owns the fd (`OwnedFd`): a handoff that is
//! never received closes the socket instead of leaking it. The cost is one extra hop per
//! *connection*, not per message. Why not `SO_REUSEPORT` listeners on every shard: the
//! kernel balances connections by hash, not by the shard the dialer needs.
//!
//! # Tasks per shard
//!
//! - one dialer per peer this shard has sent to (connect with jittered exponential backoff,
//!   handshake, then write coalesced frames from the peer's bounded queue). `send` itself
//!   writes the queue to the socket with one non-blocking `send(2)` when the dialer is not
//!   writing (write-through, see `peer_queue`; `coalesce_max_us` can delay that): frames
//!   must not wait for the shard loop to yield;
//! - one reader per inbound connection (decode frames under `max_frame_bytes`, check every
//!   batch, hand it to the sink);
//! - one handoff receiver; on shard 0 also the accept loop and one task per handshake in
//!   progress.
//!
//! Every task is registered in the shard's task set; [`Transport::shutdown`] cancels them
//! all and waits, which drops (closes) every socket including the listener.

mod acceptor;
mod config;
mod dialer;
mod peer_queue;
mod reader;
mod socket;

pub(crate) use socket::try_send;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use phalanx_proto::{Hello, MessageBatch};
use tracing::{debug, warn};

pub use self::config::*;
use self::peer_queue::{PeerQueue, Push};
use crate::discovery::Discovery;
use crate::error::NetError;
use crate::handshake::{LocalIdentity, MAX_PEER_SHARDS};
use crate::stats::{Counters, TransportStats, add, inc};
use crate::tasks::{TaskId, TaskSet};
use crate::transport::{InboundSink, NodeId, Transport, TransportFactory};

/// Buffer capacity of a connection (its write buffers, or its read buffers) below which an
/// idle connection keeps it and waits without a timer: a few turns' frames of a quiet node.
pub(crate) const IDLE_KEEP_BYTES: usize = 64 << 10;

/// How long a connection holding more than [`IDLE_KEEP_BYTES`] waits with nothing to carry
/// before it gives the excess back: two windows of `spare.rs`, after which a buffer trimmed on
/// use would have kept nothing of the last burst either.
pub(crate) const IDLE_GIVE_BACK_MS: u64 = 2 * crate::spare::SPARE_WINDOW.as_millis() as u64;

/// Most nodes remembered as warned about a failed authentication (ids come from
/// unauthenticated Hellos: when full the set starts over, costing one more warning each).
const AUTH_WARNED_MAX: usize = 1024;

/// A connection passed from shard 0 to the shard that reads it.
struct Handoff {
    fd: OwnedFd,
    /// The connection's TLS session (with what it read and has not decrypted), if TLS.
    tls: Option<crate::tls::stream::Session>,
    hello: Hello,
    leftover: Vec<u8>,
    peer_addr: Option<SocketAddr>,
}

/// What the shards of one node share: which shards run and how to reach them.
struct Registry {
    state: Mutex<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    /// The node's shard count, fixed by the first `start`.
    shards: usize,
    started: Vec<bool>,
    handoff: Vec<Option<flume::Sender<Handoff>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handoff_sender(&self, shard: usize) -> Option<flume::Sender<Handoff>> {
        self.lock().handoff.get(shard).cloned().flatten()
    }
}

/// Creates one node's per-shard TCP transports. Create it (which binds the listener) before
/// spawning the shard executors, share it (`Arc`) with them, and call
/// [`start`](TransportFactory::start) on each shard's thread.
pub struct TcpFactory {
    cfg: Arc<TcpConfig>,
    discovery: Arc<dyn Discovery>,
    listener: Mutex<Option<std::net::TcpListener>>,
    local_addr: SocketAddr,
    registry: Arc<Registry>,
}

impl TcpFactory {
    /// Validates `cfg` and binds the Raft listener now, on the calling thread, so that a port
    /// in use is reported before any shard starts. Connections are accepted once shard 0 has
    /// started; until then they wait in the kernel's backlog.
    pub fn bind(cfg: TcpConfig, discovery: Arc<dyn Discovery>) -> Result<Self, NetError> {
        cfg.validate()?;
        let bind_err = |source| NetError::Bind { addr: cfg.listen_addr.clone(), source };
        let addr = cfg
            .listen_addr
            .to_socket_addrs()
            .map_err(bind_err)?
            .next()
            .ok_or_else(|| bind_err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
        // std's listener, not glommio's `bind`: glommio sets SO_REUSEPORT, which would let a
        // second node bind the same port silently and share its connections.
        let listener = crate::listen::listen(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr()?;
        Ok(TcpFactory {
            cfg: Arc::new(cfg),
            discovery,
            listener: Mutex::new(Some(listener)),
            local_addr,
            registry: Arc::new(Registry { state: Mutex::new(RegistryState::default()) }),
        })
    }

    /// The address the listener is bound to (the OS-chosen port when `listen_addr` had 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }
}

impl TransportFactory for TcpFactory {
    type T = TcpTransport;

    fn start(&self, shard: usize, shards: usize, sink: InboundSink) -> Result<TcpTransport, NetError> {
        if shards == 0 || shard >= shards || shards > MAX_PEER_SHARDS as usize {
            return Err(NetError::BadShard { shard, shards });
        }
        let (tx, rx) = flume::bounded(self.cfg.handoff_queue);
        {
            let mut st = self.registry.lock();
            if st.shards == 0 {
                st.shards = shards;
                st.started = vec![false; shards];
                st.handoff = vec![None; shards];
            } else if st.shards != shards {
                return Err(NetError::BadShard { shard, shards });
            }
            if st.started[shard] {
                return Err(NetError::AlreadyStarted(shard));
            }
            st.started[shard] = true;
            st.handoff[shard] = Some(tx);
        }
        let listener = if shard == 0 {
            self.listener.lock().unwrap_or_else(PoisonError::into_inner).take()
        } else {
            None
        };
        let inner = Rc::new(Shard {
            cfg: self.cfg.clone(),
            local: LocalIdentity {
                cluster_id: self.cfg.cluster_id.clone(),
                node_id: self.cfg.node_id,
                shards: shards as u32,
                auth: self.cfg.node_auth.clone(),
            },
            shard: shard as u32,
            counters: Counters::default(),
            tasks: TaskSet::new(),
            sink,
            discovery: self.discovery.clone(),
            seen_version: Cell::new(None),
            addrs: RefCell::new(HashMap::new()),
            peers: RefCell::new(HashMap::new()),
            inbound: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            pending_handshakes: Cell::new(0),
            auth_warned: RefCell::new(std::collections::HashSet::new()),
            registry: self.registry.clone(),
        });
        if let Some(l) = listener {
            acceptor::start_listener(&inner, l)?;
        }
        acceptor::start_handoff_receiver(&inner, rx);
        // Every known peer is dialed now, with or without anything to send. A restarting node
        // whose Raft groups are followers sends nothing until an election timeout; dialing
        // announces it at once, and the peers' dialers that backed off while it was down
        // redial it (`dialer::Redial`) instead of waiting up to `backoff_max_ms`.
        inner.refresh_discovery();
        let known: Vec<NodeId> =
            inner.addrs.borrow().keys().copied().filter(|&id| id != inner.local.node_id && id != 0).collect();
        for id in known {
            let _ = inner.peer_queue(id);
        }
        debug!(node = inner.local.node_id, shard, shards, "tcp transport started");
        Ok(TcpTransport { inner })
    }
}

/// One outgoing peer of a shard.
struct Peer {
    addr: String,
    queue: Rc<PeerQueue>,
    redial: Rc<dialer::Redial>,
    task: TaskId,
}

/// One shard's TCP state, shared by its tasks.
struct Shard {
    cfg: Arc<TcpConfig>,
    local: LocalIdentity,
    shard: u32,
    counters: Counters,
    tasks: Rc<TaskSet>,
    sink: InboundSink,
    discovery: Arc<dyn Discovery>,
    /// Discovery version the address cache reflects.
    seen_version: Cell<Option<u64>>,
    addrs: RefCell<HashMap<NodeId, String>>,
    peers: RefCell<HashMap<NodeId, Peer>>,
    /// Readers by (sending node, sending shard) → (connection serial, task).
    inbound: RefCell<HashMap<(NodeId, u32), (u64, TaskId)>>,
    next_conn: Cell<u64>,
    pending_handshakes: Cell<usize>,
    /// Nodes whose last handshake failed authentication and was logged as a warning: the
    /// next failures of the same episode log at debug (a node with the wrong secret retries
    /// every backoff). At most [`AUTH_WARNED_MAX`]; a node that authenticates leaves it.
    auth_warned: RefCell<std::collections::HashSet<NodeId>>,
    registry: Arc<Registry>,
}

impl Shard {
    /// Re-reads discovery when its version moved; drops dialers whose peer left or moved.
    fn refresh_discovery(&self) {
        let v = self.discovery.version();
        if self.seen_version.get() == Some(v) {
            return;
        }
        self.seen_version.set(Some(v));
        let fresh: HashMap<NodeId, String> =
            self.discovery.nodes().into_iter().map(|n| (n.id, n.addr)).collect();
        let stale: Vec<NodeId> = self
            .peers
            .borrow()
            .iter()
            .filter(|(id, p)| fresh.get(id) != Some(&p.addr))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(p) = self.peers.borrow_mut().remove(&id) {
                debug!(
                    node = self.local.node_id,
                    shard = self.shard,
                    peer = id,
                    "peer left or moved; reconnecting"
                );
                add(&self.counters.batches_dropped_unreachable, p.queue.clear() as u64);
                self.tasks.cancel(p.task);
            }
        }
        *self.addrs.borrow_mut() = fresh;
    }

    /// The queue of peer `to`, starting its dialer on first use.
    fn peer_queue(self: &Rc<Self>, to: NodeId) -> Option<Rc<PeerQueue>> {
        if let Some(p) = self.peers.borrow().get(&to) {
            return Some(p.queue.clone());
        }
        let addr = self.addrs.borrow().get(&to).cloned()?;
        let queue = Rc::new(PeerQueue::new(
            self.cfg.peer_queue_batches,
            self.cfg.peer_queue_bytes,
            self.cfg.max_frame_bytes,
            Duration::from_micros(self.cfg.coalesce_max_us),
        ));
        let redial = Rc::new(dialer::Redial::default());
        let task =
            self.tasks.spawn(dialer::run(self.clone(), to, addr.clone(), queue.clone(), redial.clone()))?;
        self.peers.borrow_mut().insert(to, Peer { addr, queue: queue.clone(), redial, task });
        Some(queue)
    }

    fn send(self: &Rc<Self>, to: NodeId, batch: &MessageBatch) {
        if self.tasks.is_closed() || to == self.local.node_id || to == 0 {
            inc(&self.counters.batches_dropped_unreachable);
            return;
        }
        self.refresh_discovery();
        let Some(queue) = self.peer_queue(to) else {
            inc(&self.counters.batches_dropped_unreachable);
            return;
        };
        match queue.push(batch) {
            // A frame written only in part is counted by the dialer once it wrote the rest.
            Push::Queued { frames, bytes } => {
                add(&self.counters.batches_sent, frames as u64);
                add(&self.counters.bytes_sent, bytes as u64);
            }
            Push::Full => inc(&self.counters.batches_dropped_queue_full),
            Push::Oversize(len) => {
                inc(&self.counters.batches_dropped_oversize);
                warn!(
                    node = self.local.node_id,
                    peer = to,
                    len,
                    max = self.cfg.max_frame_bytes,
                    "batch larger than max_frame_bytes dropped (the runtime's batch byte limit must stay below it)"
                );
            }
        }
    }
}

/// One shard's TCP transport. `!Send`: it lives on the shard's executor.
pub struct TcpTransport {
    inner: Rc<Shard>,
}

impl TcpTransport {
    /// This shard's index.
    #[must_use]
    pub fn shard(&self) -> usize {
        self.inner.shard as usize
    }

    fn unregister(&self) {
        let mut st = self.inner.registry.lock();
        if let Some(slot) = st.handoff.get_mut(self.inner.shard as usize) {
            *slot = None;
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: NodeId, batch: MessageBatch) {
        self.inner.send(to, &batch);
    }

    fn stats(&self) -> TransportStats {
        self.inner.counters.snapshot()
    }

    fn max_frame_bytes(&self) -> usize {
        self.inner.cfg.max_frame_bytes
    }

    async fn shutdown(self) {
        self.unregister();
        self.inner.tasks.shutdown().await;
        let queued: usize = self.inner.peers.borrow_mut().drain().map(|(_, p)| p.queue.clear()).sum();
        add(&self.inner.counters.batches_dropped_unreachable, queued as u64);
        debug!(node = self.inner.local.node_id, shard = self.inner.shard, "tcp transport stopped");
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.unregister();
        self.inner.tasks.close_now();
    }
}
