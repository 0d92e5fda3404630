//! An embedded cluster: N nodes in this process, each with its own shards, WAL shards (in a
//! temporary directory removed when the cluster is dropped, on every path, errors included)
//! and Raft port on loopback (or the in-memory transport for framework-mode runs). Every
//! node's transport is wrapped by [`crate::netcount`] so the bench can count traffic and
//! crash a node in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx::{Node, NodeConfig, NodeHandle, StateMachineFactory};
use phalanx_net::{
    AnyFactory, DynamicDiscovery, MemoryConfig, MemoryNetwork, NodeAddr, TcpConfig, TcpFactory,
};
use phalanx_storage::StorageKind;

use crate::netcount::{CountingFactory, NetCounters, NetTotals};

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
}

/// One node slot: running or stopped, with what it needs to start again.
struct Member {
    cfg: NodeConfig,
    addr: String,
    node: Option<Node>,
    handle: NodeHandle,
    counters: Arc<NetCounters>,
}

/// Running nodes and where they keep their data.
pub struct EmbeddedCluster {
    members: Vec<Member>,
    opts: ClusterOpts,
    sms: StateMachineFactory,
    discovery: Arc<DynamicDiscovery>,
    memory: Arc<MemoryNetwork>,
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
        let mut factories: Vec<AnyFactory> = Vec::new();
        let mut addrs = Vec::new();
        for &id in &ids {
            match opts.transport {
                TransportKind::Tcp => {
                    let f = TcpFactory::bind(
                        TcpConfig::new(id, "phalanx-bench", "127.0.0.1:0"),
                        discovery.clone(),
                    )
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
        let mut cluster =
            EmbeddedCluster { members: Vec::new(), opts: opts.clone(), sms, discovery, memory, dir };
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
            let counters = Arc::new(NetCounters::default());
            let node = Node::start(
                cfg.clone(),
                CountingFactory::new(factory, counters.clone()),
                cluster.sms.clone(),
            )
            .map_err(|e| format!("node {id}: {e}"))?;
            let handle = node.handle();
            cluster.members.push(Member { cfg, addr: addr.clone(), node: Some(node), handle, counters });
        }
        Ok(cluster)
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

    /// Traffic totals of node slot `i`.
    #[must_use]
    pub fn net_totals(&self, i: usize) -> NetTotals {
        self.members.get(i).map(|m| m.counters.totals()).unwrap_or_default()
    }

    /// Traffic totals of every node (what crossed between nodes: each frame is counted once,
    /// by its sender).
    #[must_use]
    pub fn net_totals_all(&self) -> NetTotals {
        (0..self.members.len()).fold(NetTotals::default(), |acc, i| acc.plus(&self.net_totals(i)))
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

    /// Crashes node slot `i` as far as its peers can tell: its transport drops every batch in
    /// and out from this instant (returned), then its shards are stopped. The engine has no
    /// abrupt in-process kill; `Node::shutdown` alone lets the WAL writer finish, which peers
    /// cannot see anyway once the node is isolated.
    pub fn kill(&mut self, i: usize) -> Result<Instant, String> {
        let m = self.members.get_mut(i).ok_or_else(|| format!("no node slot {i}"))?;
        let node = m.node.take().ok_or_else(|| format!("node {} is not running", m.cfg.node_id))?;
        m.counters.isolate();
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
                        TcpConfig::new(id, "phalanx-bench", m.addr.clone()),
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
        let counters = Arc::new(NetCounters::default());
        let started = Instant::now();
        let node =
            Node::start(m.cfg.clone(), CountingFactory::new(factory, counters.clone()), self.sms.clone())
                .map_err(|e| format!("node {id}: restart: {e}"))?;
        let took = started.elapsed();
        m.handle = node.handle();
        m.node = Some(node);
        m.counters = counters;
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
