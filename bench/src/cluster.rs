//! An embedded cluster: N nodes in this process, each with its own shards, WAL shards (in a
//! temporary directory removed at the end) and Raft port on loopback (or the in-memory
//! transport for framework-mode runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx::{Node, NodeConfig, NodeHandle, StateMachineFactory};
use phalanx_net::{
    AnyFactory, DynamicDiscovery, MemoryConfig, MemoryNetwork, NodeAddr, TcpConfig, TcpFactory,
};
use phalanx_storage::StorageKind;

/// Which transport the embedded nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Real TCP (glommio, io_uring) on 127.0.0.1.
    Tcp,
    /// The in-process transport (framework mode).
    Memory,
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

/// Running nodes and where they keep their data.
pub struct EmbeddedCluster {
    nodes: Vec<Node>,
    handles: Vec<NodeHandle>,
    partitions: u32,
    _dir: tempfile::TempDir,
}

impl EmbeddedCluster {
    /// Starts every node and returns once each is running (leaders come later).
    pub fn start(opts: &ClusterOpts, sms: StateMachineFactory) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("phalanx-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
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
        let mut nodes = Vec::new();
        for ((&id, factory), addr) in ids.iter().zip(factories).zip(&addrs) {
            let mut cfg = NodeConfig::new(id, dir.path().join(format!("node-{id}")));
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
            nodes.push(Node::start(cfg, factory, sms.clone()).map_err(|e| format!("node {id}: {e}"))?);
        }
        let handles = nodes.iter().map(Node::handle).collect();
        Ok(EmbeddedCluster { nodes, handles, partitions: opts.partitions, _dir: dir })
    }

    /// Every node's handle.
    #[must_use]
    pub fn handles(&self) -> &[NodeHandle] {
        &self.handles
    }

    /// The handle of the node that leads `partition`, if one does.
    #[must_use]
    pub fn leader(&self, partition: u64) -> Option<&NodeHandle> {
        self.handles.iter().find(|h| h.am_i_leader_quick(partition))
    }

    /// Waits until every partition has a leader.
    pub fn wait_for_leaders(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for p in 0..=u64::from(self.partitions) {
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
        let n = self.handles.len() as u64;
        let deadline = Instant::now() + timeout;
        loop {
            let mut moved = 0;
            for p in 1..=u64::from(self.partitions) {
                let want = self.handles[(p % n) as usize].node_id();
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

    /// Stops every node.
    pub fn shutdown(self) {
        for n in self.nodes {
            n.shutdown();
        }
    }
}
