//! An embedded cluster: N nodes in this process, each with its own shards, WAL shards (in a
//! temporary directory removed when the cluster is dropped, on every path, errors included)
//! and Raft port on loopback (or the in-memory transport for framework-mode runs). Every
//! node's transport is wrapped by [`crate::isolate`] so the bench can crash a node
//! in-process; traffic figures come from the engine's own counters (`NodeHandle::stats`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx::{Executors, Node, NodeConfig, NodeHandle, StateMachineFactory};
use phalanx_net::{
    AnyFactory, DynamicDiscovery, MemoryConfig, MemoryNetwork, NodeAddr, TcpConfig, TcpFactory,
};
use phalanx_storage::StorageKind;

use crate::isolate::{IsolatingFactory, Isolation};

/// Which transport the embedded nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Real TCP (glommio, io_uring) on 127.0.0.1.
    Tcp,
    /// The in-process transport (framework mode).
    Memory,
}

impl TransportKind {
    /// Name used in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Memory => "memory",
        }
    }
}

/// Shape of an embedded cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of nodes.
    pub nodes: u64,
    /// Shards per node.
    pub cores_per_node: usize,
    /// Executor threads every node's shards share (0: each node its own, one per shard).
    pub executors: usize,
    /// User partitions.
    pub partitions: u32,
    /// Transport.
    pub transport: TransportKind,
    /// Log store.
    pub wal: StorageKind,
    /// fsync every batch.
    pub sync_writes: bool,
    /// Raft tick.
    pub tick_ms: u64,
    /// Idle period before a partition quiesces, ms (0: never).
    pub quiesce_after_ms: u64,
    /// Mutual TLS between the nodes.
    pub tls: bool,
    /// Shared-secret node authentication.
    pub node_secret: bool,
}

/// What secures the nodes' transport for `--tls` / `--node-secret`: one throwaway CA and node
/// certificate, one secret, shared by every node of the run.
#[derive(Default)]
struct NodeSecurity {
    tls: Option<Arc<phalanx_net::tls::TlsContext>>,
    auth: Option<Arc<phalanx_net::auth::NodeAuth>>,
    /// Holds the certificate files while the nodes run (and reload them).
    _pki: Option<phalanx_net::tls::test_certs::TestPki>,
}

impl NodeSecurity {
    fn new(opts: &ClusterOpts) -> Result<NodeSecurity, String> {
        let mut s = NodeSecurity::default();
        if opts.tls {
            let mut pki = phalanx_net::tls::test_certs::TestPki::new("phalanx-bench CA")
                .map_err(|e| format!("--tls: {e}"))?;
            s.tls = Some(pki.node_context("node").map_err(|e| format!("--tls: {e}"))?);
            s._pki = Some(pki);
        }
        if opts.node_secret {
            // A benchmark's secret on loopback: what matters is the cost of the MAC and the
            // replay cache, the same for any secret of this length.
            let secret = format!("phalanx-bench secret of run {:>16}", std::process::id()).into_bytes();
            s.auth = Some(Arc::new(
                phalanx_net::auth::NodeAuth::new(secret, None).map_err(|e| format!("--node-secret: {e}"))?,
            ));
        }
        Ok(s)
    }

    /// The transport configuration of node `id` listening on `addr`.
    fn tcp_config(&self, id: u64, addr: impl Into<String>) -> TcpConfig {
        let mut c = TcpConfig::new(id, "phalanx-bench", addr);
        c.tls = self.tls.clone();
        c.node_auth = self.auth.clone();
        c
    }
}

/// One node slot: running or stopped, with what it needs to start again.
struct Member {
    cfg: NodeConfig,
    addr: String,
    node: Option<Node>,
    handle: NodeHandle,
    isolation: Arc<Isolation>,
}

/// Traffic a node sent, from its own counters (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTotals {
    /// Raft messages the shards handed to their transports.
    pub messages_handed: u64,
    /// Frames written to peers (the transports' `batches_sent`).
    pub frames_sent: u64,
    /// Frame bytes written to peers, headers included (the transports' `bytes_sent`).
    pub bytes_sent: u64,
}

impl NetTotals {
    fn of(s: &phalanx::stats::NodeStats) -> NetTotals {
        let t = s.transport();
        NetTotals {
            messages_handed: s.core().messages_sent,
            frames_sent: t.batches_sent,
            bytes_sent: t.bytes_sent,
        }
    }

    /// Element-wise difference (`self` later than `earlier`).
    #[must_use]
    pub fn since(&self, earlier: &NetTotals) -> NetTotals {
        NetTotals {
            messages_handed: self.messages_handed.saturating_sub(earlier.messages_handed),
            frames_sent: self.frames_sent.saturating_sub(earlier.frames_sent),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
        }
    }

    /// Element-wise sum.
    #[must_use]
    pub fn plus(&self, o: &NetTotals) -> NetTotals {
        NetTotals {
            messages_handed: self.messages_handed + o.messages_handed,
            frames_sent: self.frames_sent + o.frames_sent,
            bytes_sent: self.bytes_sent + o.bytes_sent,
        }
    }
}

/// Running nodes and where they keep their data.
pub struct EmbeddedCluster {
    members: Vec<Member>,
    opts: ClusterOpts,
    sms: StateMachineFactory,
    discovery: Arc<DynamicDiscovery>,
    memory: Arc<MemoryNetwork>,
    security: NodeSecurity,
    /// The executors every node's shards share (`--executors`), or none: each node its own.
    executors: Option<Executors>,
    // Declared last: dropped after the nodes, which hold files in it.
    dir: tempfile::TempDir,
}

impl EmbeddedCluster {
    /// Starts every node and returns once each is running (leaders come later).
    pub fn start(opts: &ClusterOpts, sms: StateMachineFactory) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("phalanx-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        crate::cleanup::register(dir.path());
        let ids: Vec<u64> = (1..=opts.nodes).collect();
        let discovery = Arc::new(DynamicDiscovery::new());
        let memory = MemoryNetwork::new(MemoryConfig::default());
        let security = NodeSecurity::new(opts)?;
        let executors = match opts.executors {
            0 => None,
            n => Some(Executors::start(n, false, "phalanx-exec").map_err(|e| format!("--executors: {e}"))?),
        };
        let mut factories: Vec<AnyFactory> = Vec::new();
        let mut addrs = Vec::new();
        for &id in &ids {
            match opts.transport {
                TransportKind::Tcp => {
                    let f = TcpFactory::bind(security.tcp_config(id, "127.0.0.1:0"), discovery.clone())
                        .map_err(|e| format!("node {id}: {e}"))?;
                    addrs.push(f.local_addr().to_string());
                    factories.push(f.into());
                }
                TransportKind::Memory => {
                    addrs.push(format!("memory-{id}"));
                    factories.push(memory.factory(id).into());
                }
            }
        }
        if opts.transport == TransportKind::Tcp {
            let list = ids.iter().zip(&addrs).map(|(id, a)| NodeAddr::new(*id, a.clone())).collect();
            discovery.replace_all(list).map_err(|e| format!("discovery: {e}"))?;
        }
        let mut cluster = EmbeddedCluster {
            members: Vec::new(),
            opts: opts.clone(),
            sms,
            discovery,
            memory,
            security,
            executors,
            dir,
        };
        for ((&id, factory), addr) in ids.iter().zip(factories).zip(&addrs) {
            let mut cfg = NodeConfig::new(id, cluster.dir.path().join(format!("node-{id}")));
            cfg.cluster_id = "phalanx-bench".into();
            cfg.initial_cluster = ids.iter().zip(&addrs).map(|(i, a)| (*i, a.clone())).collect();
            cfg.raft_host = "127.0.0.1".into();
            cfg.raft_port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
            cfg.initial_partitions = opts.partitions;
            cfg.cores = opts.cores_per_node;
            // Several nodes share this machine's cores: let the OS place their threads.
            cfg.pin_cores = false;
            cfg.wal = opts.wal;
            cfg.sync_writes = opts.sync_writes;
            cfg.tick_interval_ms = opts.tick_ms;
            cfg.set_quiesce_after_ms(opts.quiesce_after_ms);
            let isolation = Arc::new(Isolation::default());
            let node =
                cluster.start_node(&cfg, factory, &isolation).map_err(|e| format!("node {id}: {e}"))?;
            let handle = node.handle();
            cluster.members.push(Member { cfg, addr: addr.clone(), node: Some(node), handle, isolation });
        }
        Ok(cluster)
    }

    /// Starts the node `cfg` describes: on the shared executors (its shards after those of
    /// the nodes with smaller ids, round-robin), or on its own.
    fn start_node(
        &self,
        cfg: &NodeConfig,
        factory: AnyFactory,
        isolation: &Arc<Isolation>,
    ) -> Result<Node, phalanx::Error> {
        let transports = IsolatingFactory::new(factory, isolation.clone());
        match &self.executors {
            None => Node::start(cfg.clone(), transports, self.sms.clone()),
            Some(pool) => {
                let first = (cfg.node_id.saturating_sub(1) as usize).wrapping_mul(cfg.cores);
                Node::start_on(cfg.clone(), transports, self.sms.clone(), pool, first)
            }
        }
    }

    /// Number of node slots (running or not).
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.members.len()
    }

    /// Handles of the running nodes. A stopped node's handle would still report the
    /// leadership it had when it stopped, so it is left out.
    #[must_use]
    pub fn handles(&self) -> Vec<NodeHandle> {
        self.members.iter().filter(|m| m.node.is_some()).map(|m| m.handle.clone()).collect()
    }

    /// Handle of node slot `i` (running or not).
    #[must_use]
    pub fn handle(&self, i: usize) -> Option<&NodeHandle> {
        self.members.get(i).map(|m| &m.handle)
    }

    /// Where node slot `i` keeps its data.
    #[must_use]
    pub fn data_dir(&self, i: usize) -> Option<std::path::PathBuf> {
        self.members.get(i).map(|m| m.cfg.data_dir.clone())
    }

    /// What node slot `i` counts (`None` when it is not running).
    #[must_use]
    pub fn stats(&self, i: usize) -> Option<phalanx::stats::NodeStats> {
        let m = self.members.get(i)?;
        m.node.as_ref()?;
        Some(futures_lite::future::block_on(m.handle.stats()))
    }

    /// Traffic totals of node slot `i` since it (re)started (zero when it is not running).
    #[must_use]
    pub fn net_totals(&self, i: usize) -> NetTotals {
        self.stats(i).map(|s| NetTotals::of(&s)).unwrap_or_default()
    }

    /// Traffic totals of every node (what crossed between nodes: each frame is counted once,
    /// by its sender).
    #[must_use]
    pub fn net_totals_all(&self) -> NetTotals {
        (0..self.members.len()).fold(NetTotals::default(), |acc, i| acc.plus(&self.net_totals(i)))
    }

    /// Every running node's store counters and write latencies, added up.
    #[must_use]
    pub fn store_totals_all(&self) -> (phalanx_storage::StoreStats, phalanx::stats::LatencyHistogram) {
        let mut store = phalanx_storage::StoreStats::default();
        let mut latency = phalanx::stats::LatencyHistogram::default();
        for s in (0..self.members.len()).filter_map(|i| self.stats(i)) {
            store = store.plus(&s.store());
            latency.merge(&s.write_latency());
        }
        (store, latency)
    }

    /// The running node that leads `partition`, if one does.
    #[must_use]
    pub fn leader(&self, partition: u64) -> Option<&NodeHandle> {
        self.members
            .iter()
            .filter(|m| m.node.is_some())
            .map(|m| &m.handle)
            .find(|h| h.am_i_leader_quick(partition))
    }

    /// Index of the running node that leads `partition`.
    #[must_use]
    pub fn leader_index(&self, partition: u64) -> Option<usize> {
        self.members.iter().position(|m| m.node.is_some() && m.handle.am_i_leader_quick(partition))
    }

    /// Waits until every partition has a leader among the running nodes.
    pub fn wait_for_leaders(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for p in 0..=u64::from(self.opts.partitions) {
            while self.leader(p).is_none() {
                if Instant::now() > deadline {
                    return Err(format!("partition {p} has no leader after {timeout:?}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Spreads leadership evenly: partition `p` is led by node `p % nodes` (an operator's
    /// rebalancing, done once before measuring so no node is a hotspot by election luck).
    pub fn balance_leaders(&self, timeout: Duration) -> Result<(), String> {
        let n = self.members.len() as u64;
        let deadline = Instant::now() + timeout;
        loop {
            let mut moved = 0;
            for p in 1..=u64::from(self.opts.partitions) {
                let want = self.members[(p % n) as usize].handle.node_id();
                if let Some(l) = self.leader(p)
                    && l.node_id() != want
                {
                    let _ = futures_lite::future::block_on(l.transfer_leadership(p, want));
                    moved += 1;
                }
            }
            if moved == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{moved} partitions still have another leader after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
            self.wait_for_leaders(timeout)?;
        }
    }

    /// Starts one more node that joins the running cluster (`NodeConfig::joining`): its
    /// partitions start from the current voters, and its transport is reachable at once.
    /// The caller adds it to the roster. Returns its slot and node id.
    pub fn add_joining_node(&mut self) -> Result<(usize, u64), String> {
        let id = self.members.iter().map(|m| m.cfg.node_id).max().unwrap_or(0) + 1;
        let (factory, addr): (AnyFactory, String) = match self.opts.transport {
            TransportKind::Tcp => {
                let f = TcpFactory::bind(self.security.tcp_config(id, "127.0.0.1:0"), self.discovery.clone())
                    .map_err(|e| format!("node {id}: {e}"))?;
                let addr = f.local_addr().to_string();
                self.discovery
                    .upsert(NodeAddr::new(id, addr.clone()))
                    .map_err(|e| format!("discovery: {e}"))?;
                (f.into(), addr)
            }
            TransportKind::Memory => (self.memory.factory(id).into(), format!("memory-{id}")),
        };
        let voters = self
            .members
            .first()
            .map(|m| m.handle.roster())
            .map(|r| {
                r.members
                    .values()
                    .filter(|m| m.role == phalanx::roster::Role::Voter)
                    .map(|m| (m.id, m.raft_address.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if voters.is_empty() {
            return Err("the roster has no voter yet".into());
        }
        let mut cfg = self.members[0].cfg.clone();
        cfg.node_id = id;
        cfg.data_dir = self.dir.path().join(format!("node-{id}"));
        cfg.raft_port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
        cfg.raft.id = id;
        cfg.initial_cluster = voters;
        cfg.joining = true;
        let isolation = Arc::new(Isolation::default());
        let node = self.start_node(&cfg, factory, &isolation).map_err(|e| format!("node {id}: {e}"))?;
        let handle = node.handle();
        self.members.push(Member { cfg, addr, node: Some(node), handle, isolation });
        Ok((self.members.len() - 1, id))
    }

    /// The Raft address of node slot `i`.
    #[must_use]
    pub fn address(&self, i: usize) -> Option<&str> {
        self.members.get(i).map(|m| m.addr.as_str())
    }

    /// Crashes node slot `i` as far as its peers can tell: its transport drops every batch in
    /// and out from this instant (returned), then its shards are stopped. The engine has no
    /// abrupt in-process kill; `Node::shutdown` alone lets the WAL writer finish, which peers
    /// cannot see anyway once the node is isolated.
    pub fn kill(&mut self, i: usize) -> Result<Instant, String> {
        let m = self.members.get_mut(i).ok_or_else(|| format!("no node slot {i}"))?;
        let node = m.node.take().ok_or_else(|| format!("node {} is not running", m.cfg.node_id))?;
        m.isolation.isolate();
        let at = Instant::now();
        node.shutdown();
        Ok(at)
    }

    /// Starts node slot `i` again from its data directory (same id, same address), with a
    /// fresh transport. Returns how long `Node::start` took: opening the WAL shards and
    /// restoring every partition.
    pub fn restart(&mut self, i: usize) -> Result<Duration, String> {
        let m = self.members.get_mut(i).ok_or_else(|| format!("no node slot {i}"))?;
        if m.node.is_some() {
            return Err(format!("node {} is running", m.cfg.node_id));
        }
        let id = m.cfg.node_id;
        let factory: AnyFactory = match self.opts.transport {
            TransportKind::Tcp => {
                // The old listener is closed by now; a new one on the same port keeps every
                // peer's address valid.
                let mut tries = 0;
                loop {
                    match TcpFactory::bind(
                        self.security.tcp_config(id, m.addr.clone()),
                        self.discovery.clone(),
                    ) {
                        Ok(f) => break f.into(),
                        Err(e) if tries < 50 => {
                            tries += 1;
                            tracing::debug!("rebinding node {id}: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => return Err(format!("node {id}: rebinding {}: {e}", m.addr)),
                    }
                }
            }
            TransportKind::Memory => self.memory.factory(id).into(),
        };
        let isolation = Arc::new(Isolation::default());
        let started = Instant::now();
        let cfg = m.cfg.clone();
        let node =
            self.start_node(&cfg, factory, &isolation).map_err(|e| format!("node {id}: restart: {e}"))?;
        let took = started.elapsed();
        let m = &mut self.members[i];
        m.handle = node.handle();
        m.node = Some(node);
        m.isolation = isolation;
        Ok(took)
    }
}

/// Dropping the cluster stops every node and removes its temporary directory.
impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        // Nodes first (they hold files in the directory), then the directory (the field).
        for m in &mut self.members {
            if let Some(n) = m.node.take() {
                n.shutdown();
            }
        }
        crate::cleanup::unregister(self.dir.path());
    }
}
