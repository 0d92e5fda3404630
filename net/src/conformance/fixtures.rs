//! Fixtures for the transports of this crate.

use std::collections::HashMap;
use std::sync::Arc;

use super::Fixture;
use crate::discovery::{DynamicDiscovery, NodeAddr};
use crate::memory::{MemoryConfig, MemoryFactory, MemoryNetwork};
use crate::tcp::{TcpConfig, TcpFactory};
use crate::transport::NodeId;

/// The cluster id every test node uses unless a check changes it.
pub const TEST_CLUSTER_ID: &str = "conformance";

/// TCP on 127.0.0.1 with OS-assigned ports, shared dynamic discovery, and fast reconnects so
/// checks finish quickly.
pub struct TcpFixture {
    /// Discovery shared by every node of the fixture.
    pub discovery: Arc<DynamicDiscovery>,
    ports: HashMap<NodeId, u16>,
    /// Mutual TLS for every node (one certificate for all, from a throwaway CA).
    tls: Option<(Arc<crate::tls::TlsContext>, Arc<crate::tls::test_certs::TestPki>)>,
}

impl Default for TcpFixture {
    fn default() -> Self {
        TcpFixture { discovery: Arc::new(DynamicDiscovery::new()), ports: HashMap::new(), tls: None }
    }
}

impl TcpFixture {
    /// A fixture with no nodes.
    #[must_use]
    pub fn new() -> Self {
        TcpFixture::default()
    }

    /// A fixture whose nodes all speak mutual TLS.
    ///
    /// # Panics
    /// When the throwaway certificates cannot be made (a test setup failure).
    #[must_use]
    pub fn with_tls() -> Self {
        let mut pki = crate::tls::test_certs::TestPki::new("conformance CA").expect("test CA");
        let ctx = pki.node_context("node").expect("test node certificate");
        TcpFixture { tls: Some((ctx, Arc::new(pki))), ..TcpFixture::default() }
    }

    /// The configuration checks start from.
    #[must_use]
    pub fn config(id: NodeId, listen: &str) -> TcpConfig {
        let mut c = TcpConfig::new(id, TEST_CLUSTER_ID, listen);
        c.backoff_initial_ms = 5;
        c.backoff_max_ms = 50;
        c.handshake_timeout_ms = 1_000;
        c
    }

    /// A factory for `id` with `tweak` applied to its configuration; the node keeps its port
    /// across restarts and is (re)registered in discovery.
    pub fn factory_with(&mut self, id: NodeId, tweak: impl FnOnce(&mut TcpConfig)) -> Arc<TcpFactory> {
        let port = self.ports.get(&id).copied().unwrap_or(0);
        let mut cfg = Self::config(id, &format!("127.0.0.1:{port}"));
        cfg.tls = self.tls.as_ref().map(|(ctx, _)| ctx.clone());
        tweak(&mut cfg);
        let f = TcpFactory::bind(cfg, self.discovery.clone()).expect("bind 127.0.0.1");
        let port = f.local_addr().port();
        self.ports.insert(id, port);
        self.discovery.upsert(NodeAddr::new(id, format!("127.0.0.1:{port}"))).expect("valid address");
        Arc::new(f)
    }

    /// The port node `id` listens on.
    #[must_use]
    pub fn port(&self, id: NodeId) -> Option<u16> {
        self.ports.get(&id).copied()
    }

    /// Forgets `id`'s port, so its next factory binds a new one (an address change).
    pub fn forget_port(&mut self, id: NodeId) {
        self.ports.remove(&id);
    }
}

impl Fixture for TcpFixture {
    type F = TcpFactory;

    fn factory(&mut self, id: NodeId) -> Arc<TcpFactory> {
        self.factory_with(id, |_| {})
    }

    fn add_absent(&mut self, id: NodeId) {
        // A port that was just free: bind it, note it, close it; connecting is refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        self.discovery.upsert(NodeAddr::new(id, format!("127.0.0.1:{port}"))).expect("valid address");
    }

    fn leftovers(&self) -> Option<String> {
        let ports: Vec<u16> = self.ports.values().copied().collect();
        let open = open_sockets_on(&ports);
        (!open.is_empty()).then(|| format!("sockets still open on ports {ports:?}: {open:?}"))
    }
}

/// This process's socket fds whose local or remote port is one of `ports` (from
/// `/proc/net/tcp{,6}` and `/proc/self/fd`). Sockets without an fd (TIME_WAIT, orphans being
/// closed by the kernel) are not counted: they hold no resource of ours.
#[must_use]
pub fn open_sockets_on(ports: &[u16]) -> Vec<String> {
    let mut inodes = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port_of = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let (local, remote) = (port_of(f[1]), port_of(f[2]));
            let ours = ports.iter().any(|p| Some(*p) == local || Some(*p) == remote);
            if ours && f[9] != "0" {
                inodes.insert(f[9].to_string(), format!("{} -> {} state {}", f[1], f[2], f[3]));
            }
        }
    }
    let mut open = Vec::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let t = target.to_string_lossy();
            let inode = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'));
            if let Some(desc) = inode.and_then(|i| inodes.get(i)) {
                open.push(desc.clone());
            }
        }
    }
    open
}

/// The in-memory transport.
pub struct MemoryFixture {
    /// The shared wire (fault hooks).
    pub net: Arc<MemoryNetwork>,
}

impl Default for MemoryFixture {
    fn default() -> Self {
        MemoryFixture { net: MemoryNetwork::new(MemoryConfig::default()) }
    }
}

impl MemoryFixture {
    /// A fixture with the default configuration.
    #[must_use]
    pub fn new() -> Self {
        MemoryFixture::default()
    }
}

impl Fixture for MemoryFixture {
    type F = MemoryFactory;

    fn factory(&mut self, id: NodeId) -> Arc<MemoryFactory> {
        Arc::new(self.net.factory(id))
    }

    fn add_absent(&mut self, _id: NodeId) {
        // A node that never starts is simply not registered.
    }

    fn leftovers(&self) -> Option<String> {
        let running = self.net.running_shards();
        (!running.is_empty()).then(|| format!("shards still registered: {running:?}"))
    }
}
