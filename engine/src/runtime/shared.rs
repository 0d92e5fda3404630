//! State shared by a node's shards and handles: a cache of each partition's leader (so
//! `am_i_leader_quick` and routing need no round trip), when each peer was last heard from,
//! the failure detector's verdicts,
//! the event hub, and whether a shard failed. Written rarely (leader changes, once per tick),
//! read from any thread; never on the per-entry path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::Error;
use crate::events::EventHub;
use crate::raft::NodeId;
use crate::state_machine::PartitionId;
use crate::swim::Liveness;
use crate::system::ClusterDirectory;

/// Shared state of one node.
#[derive(Debug)]
pub(crate) struct NodeShared {
    /// Per partition: the leader this node knows (0: none).
    leaders: Vec<AtomicU64>,
    /// Per partition: the term of that knowledge.
    terms: Vec<AtomicU64>,
    activity: Mutex<HashMap<NodeId, Instant>>,
    pub events: EventHub,
    failed: AtomicBool,
    failure: Mutex<Option<Error>>,
    directory: Mutex<Arc<ClusterDirectory>>,
    /// The failure detector's verdicts on peers not alive.
    liveness: Mutex<BTreeMap<NodeId, Liveness>>,
    /// The newest roster version a peer said does not list this node (0: none).
    unlisted_at: AtomicU64,
}

impl NodeShared {
    pub(crate) fn new(partitions: u32) -> Self {
        let n = partitions as usize + 1;
        NodeShared {
            leaders: (0..n).map(|_| AtomicU64::new(0)).collect(),
            terms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            activity: Mutex::new(HashMap::new()),
            events: EventHub::default(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            directory: Mutex::new(Arc::new(ClusterDirectory::default())),
            liveness: Mutex::new(BTreeMap::new()),
            unlisted_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_leader(&self, p: PartitionId, leader: Option<NodeId>, term: u64) {
        if let (Some(l), Some(t)) = (self.leaders.get(p as usize), self.terms.get(p as usize)) {
            t.store(term, Ordering::Release);
            l.store(leader.unwrap_or(0), Ordering::Release);
        }
    }

    /// The leader of `p` as last seen by its shard, and the term.
    pub(crate) fn leader(&self, p: PartitionId) -> Option<(NodeId, u64)> {
        let l = self.leaders.get(p as usize)?.load(Ordering::Acquire);
        let t = self.terms.get(p as usize)?.load(Ordering::Acquire);
        (l != 0).then_some((l, t))
    }

    /// Merges a shard's view of when peers were last heard from.
    pub(crate) fn note_activity(&self, seen: &[(NodeId, Instant)]) {
        if seen.is_empty() {
            return;
        }
        if let Ok(mut a) = self.activity.lock() {
            for (n, t) in seen {
                let e = a.entry(*n).or_insert(*t);
                if *t > *e {
                    *e = *t;
                }
            }
        }
    }

    /// When `node` was last heard from.
    pub(crate) fn last_activity(&self, node: NodeId) -> Option<Instant> {
        self.activity.lock().ok()?.get(&node).copied()
    }

    /// Peers heard from within `window`.
    pub(crate) fn active_since(&self, since: Instant) -> Vec<NodeId> {
        let Ok(a) = self.activity.lock() else { return Vec::new() };
        let mut v: Vec<NodeId> = a.iter().filter(|(_, t)| **t >= since).map(|(n, _)| *n).collect();
        v.sort_unstable();
        v
    }

    /// The system partition's latest directory.
    pub(crate) fn directory(&self) -> Arc<ClusterDirectory> {
        self.directory.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub(crate) fn set_directory(&self, d: Arc<ClusterDirectory>) {
        if let Ok(mut cur) = self.directory.lock() {
            *cur = d;
        }
    }

    /// Peers the failure detector holds in `state`, in id order.
    pub(crate) fn nodes_in(&self, state: Liveness) -> Vec<NodeId> {
        let Ok(l) = self.liveness.lock() else { return Vec::new() };
        l.iter().filter(|(_, s)| **s == state).map(|(n, _)| *n).collect()
    }

    /// The failure detector's verdict on `node` (alive unless it said otherwise).
    pub(crate) fn liveness(&self, node: NodeId) -> Liveness {
        self.liveness.lock().ok().and_then(|l| l.get(&node).copied()).unwrap_or(Liveness::Alive)
    }

    /// The newest roster version a peer said does not list this node.
    pub(crate) fn unlisted_at(&self) -> Option<u64> {
        Some(self.unlisted_at.load(Ordering::Acquire)).filter(|v| *v > 0)
    }

    pub(crate) fn set_unlisted_at(&self, version: u64) {
        self.unlisted_at.fetch_max(version, Ordering::AcqRel);
    }

    pub(crate) fn set_liveness(&self, node: NodeId, state: Liveness) {
        if let Ok(mut l) = self.liveness.lock() {
            if state == Liveness::Alive {
                l.remove(&node);
            } else {
                l.insert(node, state);
            }
        }
    }

    pub(crate) fn fail(&self, error: Error) {
        self.failed.store(true, Ordering::Release);
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(error);
        }
    }

    /// Why the node failed, if a shard did.
    pub(crate) fn failure(&self) -> Option<Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure.lock().ok()?.clone()
    }
}
