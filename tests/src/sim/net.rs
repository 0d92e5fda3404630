//! The simulated network: every message gets a random delay (which also reorders), and may
//! be dropped or duplicated; partitions block links, symmetric or one-way.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use phalanx::raft::{NodeId, SeededRng};
use phalanx_proto::RaftMessage;

/// Fault rates of one run, drawn from its seed.
#[derive(Clone, Debug)]
pub struct NetFaults {
    /// Probability (per mille) that a message is dropped.
    pub drop_per_mille: u64,
    /// Probability (per mille) that a message is delivered twice.
    pub dup_per_mille: u64,
    /// Smallest delivery delay in ticks.
    pub min_delay: u64,
    /// Largest delivery delay in ticks.
    pub max_delay: u64,
    /// Keep each link first-in first-out (like one TCP connection): delays vary but never
    /// reorder messages between the same two nodes. Otherwise anything may overtake.
    pub fifo_links: bool,
}

/// A message on the wire.
#[derive(Debug)]
struct InFlight {
    at: u64,
    seq: u64,
    msg: RaftMessage,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The network between simulated nodes.
pub struct Network {
    /// Current fault rates.
    pub faults: NetFaults,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Blocked directed links (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Latest delivery time scheduled per link (for FIFO links).
    link_tail: std::collections::BTreeMap<(NodeId, NodeId), u64>,
    /// Messages sent, dropped, duplicated (for reports).
    pub sent: u64,
    /// Messages dropped by faults or partitions.
    pub dropped: u64,
}

impl Network {
    /// A network with `faults`.
    #[must_use]
    pub fn new(faults: NetFaults) -> Self {
        Network {
            faults,
            queue: BinaryHeap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            link_tail: Default::default(),
            sent: 0,
            dropped: 0,
        }
    }

    /// Sends a message at time `now`.
    pub fn send(&mut self, msg: RaftMessage, now: u64, rng: &mut SeededRng) {
        self.sent += 1;
        if self.blocked.contains(&(msg.from, msg.to)) || rng.range(0, 1000) < self.faults.drop_per_mille {
            self.dropped += 1;
            return;
        }
        let dup = rng.range(0, 1000) < self.faults.dup_per_mille;
        if dup {
            let at = now + rng.range(self.faults.min_delay, self.faults.max_delay + 1);
            self.push(msg.clone(), at);
        }
        let at = now + rng.range(self.faults.min_delay, self.faults.max_delay + 1);
        self.push(msg, at);
    }

    fn push(&mut self, msg: RaftMessage, mut at: u64) {
        if self.faults.fifo_links {
            let tail = self.link_tail.entry((msg.from, msg.to)).or_default();
            at = at.max(*tail);
            *tail = at;
        }
        self.seq += 1;
        self.queue.push(Reverse(InFlight { at, seq: self.seq, msg }));
    }

    /// Takes every message due at or before `now`, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<RaftMessage> {
        let mut out = Vec::new();
        while self.queue.peek().is_some_and(|Reverse(m)| m.at <= now) {
            if let Some(Reverse(m)) = self.queue.pop() {
                // A link cut while the message was in flight loses it too.
                if self.blocked.contains(&(m.msg.from, m.msg.to)) {
                    self.dropped += 1;
                } else {
                    out.push(m.msg);
                }
            }
        }
        out
    }

    /// Cuts both directions between the two sides.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is cut.
    #[must_use]
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
