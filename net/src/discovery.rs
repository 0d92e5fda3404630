//! Who the peers are and where to reach them.
//!
//! # Contract
//!
//! A [`Discovery`] maps node ids to `"host:port"` Raft addresses and is shared by every shard
//! of a node (`Send + Sync`). Implementations guarantee:
//!
//! - [`Discovery::nodes`] returns a consistent snapshot: ids are unique and non-zero, every
//!   address is a syntactically valid `host:port` with a non-zero port. The local node may be
//!   listed (transports ignore it: a node never connects to itself).
//! - [`Discovery::version`] changes (increases) whenever the snapshot changes, and is cheap
//!   (an atomic load): transports poll it on every send and re-read the snapshot only when it
//!   moved. A node whose address changed is reconnected at the new address; a node that was
//!   removed is disconnected and batches to it are dropped as unreachable.
//! - Lookups never block for long (no network IO): they run on shard threads.
//!
//! # Peer lists
//!
//! [`parse_node_list`] reads the `--initial-cluster` syntax: comma-separated entries, each
//! `id=host:port` or just `host:port`. An entry without an id gets
//! [`derive_node_id`]`("host:port")`, so every node derives the same id for it (the reference
//! derives ids from names when `NodeId` is 0). IPv6 hosts are bracketed: `[::1]:7000`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::transport::NodeId;

/// Longest host name accepted in an address (the DNS limit).
pub const MAX_HOST_BYTES: usize = 253;

/// Most nodes a peer list may hold; far above any sane Raft cluster, it bounds parsing work.
pub const MAX_NODES: usize = 4096;

/// One node and its Raft address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// The node's id (non-zero).
    pub id: NodeId,
    /// `"host:port"` of its Raft listener.
    pub addr: String,
}

impl NodeAddr {
    /// A node entry; validated by the discovery that takes it.
    pub fn new(id: NodeId, addr: impl Into<String>) -> Self {
        NodeAddr { id, addr: addr.into() }
    }
}

/// Why a peer list or entry is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// An entry of a list is empty (e.g. `"a:1,,b:2"`).
    #[error("entry {0} of the node list is empty")]
    EmptyEntry(usize),
    /// The id before `=` is not a positive integer.
    #[error("bad node id in {0:?}: expected a positive integer")]
    BadNodeId(String),
    /// Node id 0 is reserved ("derive from the name").
    #[error("node id 0 is reserved in {0:?}")]
    ZeroNodeId(String),
    /// Not of the form `host:port`.
    #[error("bad address {0:?}: expected host:port (IPv6 as [addr]:port)")]
    BadAddress(String),
    /// The port is not in 1..=65535.
    #[error("bad port in {0:?}: expected 1..=65535")]
    BadPort(String),
    /// Two entries share an id.
    #[error("node id {0} is listed twice")]
    DuplicateId(NodeId),
    /// Two entries share an address.
    #[error("address {0:?} is listed twice")]
    DuplicateAddress(String),
    /// More than [`MAX_NODES`] entries.
    #[error("more than {MAX_NODES} nodes")]
    TooManyNodes,
}

/// Where the peers are. See the [module docs](self) for the contract.
pub trait Discovery: Send + Sync + 'static {
    /// Every known node with its address.
    fn nodes(&self) -> Vec<NodeAddr>;

    /// The address of one node.
    fn address(&self, id: NodeId) -> Option<String> {
        self.nodes().into_iter().find(|n| n.id == id).map(|n| n.addr)
    }

    /// Changes whenever the node list changes.
    fn version(&self) -> u64;
}

/// A node id derived from a stable name: xxHash64 of the name, never 0. The same function
/// as the engine's `derive_node_id`, so a name means one id everywhere.
#[must_use]
pub fn derive_node_id(name: &str) -> NodeId {
    let h = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0x09A1_A4C5);
    if h == 0 { 1 } else { h }
}

/// Checks that `addr` is `host:port` with a plausible host and a port in 1..=65535.
pub fn validate_addr(addr: &str) -> Result<(), DiscoveryError> {
    let bad = || DiscoveryError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= MAX_HOST_BYTES
            && !host.contains(':')
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !host_ok {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(DiscoveryError::BadPort(addr.to_string())),
    }
}

/// Parses one `id=host:port` or `host:port` entry (surrounding whitespace ignored).
pub fn parse_node(entry: &str) -> Result<NodeAddr, DiscoveryError> {
    let entry = entry.trim();
    let (id, addr) = match entry.split_once('=') {
        Some((id, addr)) => {
            let id_text = id.trim();
            let id: NodeId = id_text.parse().map_err(|_| DiscoveryError::BadNodeId(entry.to_string()))?;
            if id == 0 {
                return Err(DiscoveryError::ZeroNodeId(entry.to_string()));
            }
            let addr = addr.trim();
            (id, addr)
        }
        None => (derive_node_id(entry), entry),
    };
    validate_addr(addr)?;
    Ok(NodeAddr { id, addr: addr.to_string() })
}

/// Parses a comma-separated list of entries (see [`parse_node`]); refuses duplicates.
/// An empty or all-blank string is an empty list.
pub fn parse_node_list(spec: &str) -> Result<Vec<NodeAddr>, DiscoveryError> {
    if spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut nodes = Vec::new();
    for (i, entry) in spec.split(',').enumerate() {
        if i >= MAX_NODES {
            return Err(DiscoveryError::TooManyNodes);
        }
        if entry.trim().is_empty() {
            return Err(DiscoveryError::EmptyEntry(i));
        }
        nodes.push(parse_node(entry)?);
    }
    check_unique(&nodes)?;
    Ok(nodes)
}

/// Validates every entry and refuses duplicate ids or addresses.
fn check_nodes(nodes: &[NodeAddr]) -> Result<(), DiscoveryError> {
    if nodes.len() > MAX_NODES {
        return Err(DiscoveryError::TooManyNodes);
    }
    for n in nodes {
        if n.id == 0 {
            return Err(DiscoveryError::ZeroNodeId(n.addr.clone()));
        }
        validate_addr(&n.addr)?;
    }
    check_unique(nodes)
}

fn check_unique(nodes: &[NodeAddr]) -> Result<(), DiscoveryError> {
    let mut ids = std::collections::HashSet::new();
    let mut addrs = std::collections::HashSet::new();
    for n in nodes {
        if !ids.insert(n.id) {
            return Err(DiscoveryError::DuplicateId(n.id));
        }
        if !addrs.insert(n.addr.as_str()) {
            return Err(DiscoveryError::DuplicateAddress(n.addr.clone()));
        }
    }
    Ok(())
}

/// A fixed node list (the `--initial-cluster` flag). Its version never changes.
#[derive(Clone, Debug)]
pub struct StaticDiscovery {
    nodes: Vec<NodeAddr>,
}

impl StaticDiscovery {
    /// A fixed list; refuses invalid entries and duplicates.
    pub fn new(nodes: Vec<NodeAddr>) -> Result<Self, DiscoveryError> {
        check_nodes(&nodes)?;
        Ok(StaticDiscovery { nodes })
    }

    /// Parses a list (see [`parse_node_list`]).
    pub fn parse(spec: &str) -> Result<Self, DiscoveryError> {
        Self::new(parse_node_list(spec)?)
    }
}

impl Discovery for StaticDiscovery {
    fn nodes(&self) -> Vec<NodeAddr> {
        self.nodes.clone()
    }

    fn address(&self, id: NodeId) -> Option<String> {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.addr.clone())
    }

    fn version(&self) -> u64 {
        0
    }
}

/// A node list the application changes at runtime (membership changes, a service registry).
/// Thread-safe; every change bumps the version, which transports pick up on their next send.
#[derive(Debug, Default)]
pub struct DynamicDiscovery {
    nodes: RwLock<BTreeMap<NodeId, String>>,
    version: AtomicU64,
}

impl DynamicDiscovery {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        DynamicDiscovery::default()
    }

    /// A list holding `nodes`.
    pub fn with_nodes(nodes: Vec<NodeAddr>) -> Result<Self, DiscoveryError> {
        let d = DynamicDiscovery::new();
        d.replace_all(nodes)?;
        Ok(d)
    }

    /// Adds a node or changes its address. Refuses an address another node already has.
    pub fn upsert(&self, node: NodeAddr) -> Result<(), DiscoveryError> {
        check_nodes(std::slice::from_ref(&node))?;
        let mut map = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if map.iter().any(|(id, a)| *id != node.id && *a == node.addr) {
            return Err(DiscoveryError::DuplicateAddress(node.addr));
        }
        if map.len() >= MAX_NODES && !map.contains_key(&node.id) {
            return Err(DiscoveryError::TooManyNodes);
        }
        if map.get(&node.id) != Some(&node.addr) {
            map.insert(node.id, node.addr);
            self.version.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Removes a node; returns whether it was listed.
    pub fn remove(&self, id: NodeId) -> bool {
        let mut map = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let removed = map.remove(&id).is_some();
        if removed {
            self.version.fetch_add(1, Ordering::Release);
        }
        removed
    }

    /// Replaces the whole list at once (one version step).
    pub fn replace_all(&self, nodes: Vec<NodeAddr>) -> Result<(), DiscoveryError> {
        check_nodes(&nodes)?;
        let mut map = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        *map = nodes.into_iter().map(|n| (n.id, n.addr)).collect();
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

impl Discovery for DynamicDiscovery {
    fn nodes(&self) -> Vec<NodeAddr> {
        let map = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(id, addr)| NodeAddr { id: *id, addr: addr.clone() }).collect()
    }

    fn address(&self, id: NodeId) -> Option<String> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        let l = parse_node_list(" 1=10.0.0.1:7000, 2 = node-b.local:7001 ,[::1]:7002").unwrap();
        assert_eq!(l[0], NodeAddr::new(1, "10.0.0.1:7000"));
        assert_eq!(l[1], NodeAddr::new(2, "node-b.local:7001"));
        assert_eq!(l[2], NodeAddr::new(derive_node_id("[::1]:7002"), "[::1]:7002"));
        assert!(parse_node_list("").unwrap().is_empty());
        assert!(parse_node_list("  ").unwrap().is_empty());
    }

    #[test]
    fn clear_errors() {
        use DiscoveryError::*;
        assert_eq!(parse_node_list("a:1,,b:2"), Err(EmptyEntry(1)));
        assert_eq!(parse_node_list("x=a:1"), Err(BadNodeId("x=a:1".into())));
        assert_eq!(parse_node_list("-1=a:1"), Err(BadNodeId("-1=a:1".into())));
        assert_eq!(parse_node_list("0=a:1"), Err(ZeroNodeId("0=a:1".into())));
        assert_eq!(parse_node_list("1=a"), Err(BadAddress("a".into())));
        assert_eq!(parse_node_list("1=:80"), Err(BadAddress(":80".into())));
        assert_eq!(parse_node_list("1=a b:80"), Err(BadAddress("a b:80".into())));
        assert_eq!(parse_node_list("1=::1:80"), Err(BadAddress("::1:80".into())));
        assert_eq!(parse_node_list("1=[zz]:80"), Err(BadAddress("[zz]:80".into())));
        assert_eq!(parse_node_list("1=a:0"), Err(BadPort("a:0".into())));
        assert_eq!(parse_node_list("1=a:65536"), Err(BadPort("a:65536".into())));
        assert_eq!(parse_node_list("1=a:x"), Err(BadPort("a:x".into())));
        assert_eq!(parse_node_list("1=a:1,1=b:2"), Err(DuplicateId(1)));
        assert_eq!(parse_node_list("1=a:1,2=a:1"), Err(DuplicateAddress("a:1".into())));
        assert_eq!(parse_node_list("a:1,a:1"), Err(DuplicateId(derive_node_id("a:1"))));
        // Errors print what is wrong and where.
        assert!(BadPort("a:0".into()).to_string().contains("a:0"));
    }

    #[test]
    fn derived_ids_are_stable_and_non_zero() {
        assert_eq!(derive_node_id("node-1"), derive_node_id("node-1"));
        assert_ne!(derive_node_id("node-1"), derive_node_id("node-2"));
        assert_ne!(derive_node_id(""), 0);
    }

    #[test]
    fn dynamic_versions_move_on_change_only() {
        let d = DynamicDiscovery::new();
        let v0 = d.version();
        d.upsert(NodeAddr::new(1, "a:1")).unwrap();
        let v1 = d.version();
        assert!(v1 > v0);
        d.upsert(NodeAddr::new(1, "a:1")).unwrap();
        assert_eq!(d.version(), v1, "no change, no new version");
        assert_eq!(d.upsert(NodeAddr::new(2, "a:1")), Err(DiscoveryError::DuplicateAddress("a:1".into())));
        d.upsert(NodeAddr::new(1, "a:2")).unwrap();
        assert!(d.version() > v1);
        assert_eq!(d.address(1).as_deref(), Some("a:2"));
        assert!(d.remove(1));
        assert!(!d.remove(1));
        assert!(d.nodes().is_empty());
        d.replace_all(vec![NodeAddr::new(3, "c:3"), NodeAddr::new(4, "d:4")]).unwrap();
        assert_eq!(d.nodes().len(), 2);
        assert!(d.replace_all(vec![NodeAddr::new(0, "c:3")]).is_err());
        assert_eq!(d.nodes().len(), 2, "a refused replacement changes nothing");
    }

    #[test]
    fn dynamic_is_shared_across_threads() {
        let d = std::sync::Arc::new(DynamicDiscovery::new());
        let hs: Vec<_> = (1..=4u64)
            .map(|i| {
                let d = d.clone();
                std::thread::spawn(move || d.upsert(NodeAddr::new(i, format!("h{i}:{i}"))).unwrap())
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(d.nodes().len(), 4);
        assert!(d.version() >= 4);
    }

    #[test]
    fn static_lists() {
        let s = StaticDiscovery::parse("1=a:1,2=b:2").unwrap();
        assert_eq!(s.address(2).as_deref(), Some("b:2"));
        assert_eq!(s.address(3), None);
        assert_eq!(s.version(), 0);
        assert!(StaticDiscovery::new(vec![NodeAddr::new(1, "nope")]).is_err());
    }
}
