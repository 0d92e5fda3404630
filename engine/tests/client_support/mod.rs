//! A one-node cluster (in-memory transport) serving its client port on loopback, shared by the
//! client-port tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx::client::security::ClientPortSecurity;
use phalanx::client::server::{ClientServer, Directory, ServerLimits};
use phalanx::kv::KvStateMachine;
use phalanx::{Node, NodeConfig, StateMachineFactory};
use phalanx_net::{MemoryConfig, MemoryNetwork};

/// How long a test waits for something that should happen quickly.
pub const WAIT: Duration = Duration::from_secs(10);

/// The node and its client port; both stopped when dropped.
pub struct Server {
    _dir: tempfile::TempDir,
    pub node: Option<Node>,
    pub server: Option<ClientServer>,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        if let Some(n) = self.node.take() {
            n.shutdown();
        }
    }
}

/// A node with `partitions` partitions serving its client port with `limits` and `security`.
pub fn serve_with(limits: ServerLimits, security: ClientPortSecurity, partitions: u32) -> Server {
    let net = MemoryNetwork::new(MemoryConfig::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = NodeConfig::new(1, dir.path().join("n1"));
    cfg.cores = 1;
    cfg.pin_cores = false;
    cfg.initial_cluster = vec![(1, "mem-1".into())];
    cfg.initial_partitions = partitions;
    cfg.tick_interval_ms = 10;
    let sms: StateMachineFactory = Arc::new(|_p| Box::new(KvStateMachine::new()));
    let node = Node::start(cfg, net.factory(1), sms).expect("node starts");
    let listener = ClientServer::bind("127.0.0.1:0".parse().expect("an address")).expect("a free port");
    let server = ClientServer::serve_secure(node.handle(), listener, Directory::default(), limits, security)
        .expect("serves");
    let addr = server.local_addr();
    Server { _dir: dir, node: Some(node), server: Some(server), addr }
}

impl Server {
    /// The port's counters.
    pub fn stats(&self) -> phalanx_proto::ClientPortStats {
        self.server.as_ref().expect("running").stats()
    }

    /// Waits (at most [`WAIT`]) until the counters satisfy `ok`.
    pub fn wait(&self, what: &str, ok: impl Fn(&phalanx_proto::ClientPortStats) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ok(&self.stats()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", self.stats());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
