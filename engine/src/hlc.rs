//! Hybrid logical clock (Kulkarni et al., 2014).
//!
//! A proposal's *ticket* is an HLC timestamp: it orders events across nodes even when their
//! physical clocks disagree, and it is unique per node. The clock itself is pure: callers pass
//! in the physical time they read, so the Raft core and the simulator stay deterministic. Only
//! the runtime shell reads the wall clock.

use phalanx_proto::HlcTimestamp;

/// A hybrid logical clock timestamp with total order: physical time, then logical counter,
/// then node id. It is the identity of a proposal (its ticket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// Milliseconds since the Unix epoch (or the largest physical time observed).
    pub physical_ms: u64,
    /// Orders events within one millisecond.
    pub logical: u32,
    /// The issuing node; makes tickets unique across nodes.
    pub node_id: u64,
}

impl Ticket {
    /// Whether this is the all-zero ticket, used for entries that carry none (no-ops).
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Ticket::default()
    }
}

impl From<HlcTimestamp> for Ticket {
    fn from(t: HlcTimestamp) -> Self {
        Ticket { physical_ms: t.physical_ms, logical: t.logical, node_id: t.node_id }
    }
}

impl From<Ticket> for HlcTimestamp {
    fn from(t: Ticket) -> Self {
        HlcTimestamp { physical_ms: t.physical_ms, logical: t.logical, node_id: t.node_id }
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node_id)
    }
}

/// The ticket carried by an entry, or the zero ticket when it has none.
#[must_use]
pub fn ticket_of(entry: &phalanx_proto::LogEntry) -> Ticket {
    entry.ticket.map(Ticket::from).unwrap_or_default()
}

/// A hybrid logical clock owned by one node.
#[derive(Clone, Debug)]
pub struct HybridLogicalClock {
    node_id: u64,
    last: Ticket,
}

impl HybridLogicalClock {
    /// A clock for `node_id` that has observed nothing yet.
    #[must_use]
    pub fn new(node_id: u64) -> Self {
        HybridLogicalClock { node_id, last: Ticket { node_id, ..Ticket::default() } }
    }

    /// A timestamp for a local or send event, strictly greater than every timestamp this clock
    /// issued or received before. `physical_ms` is the caller's reading of the wall clock.
    pub fn now(&mut self, physical_ms: u64) -> Ticket {
        if physical_ms > self.last.physical_ms {
            self.last = Ticket { physical_ms, logical: 0, node_id: self.node_id };
        } else {
            self.bump_logical();
        }
        self.last
    }

    /// Merges a timestamp received from another node, returning one greater than both it and
    /// every timestamp this clock issued before.
    pub fn receive(&mut self, remote: Ticket, physical_ms: u64) -> Ticket {
        let max_phys = physical_ms.max(self.last.physical_ms).max(remote.physical_ms);
        let logical = if max_phys == self.last.physical_ms && max_phys == remote.physical_ms {
            self.last.logical.max(remote.logical)
        } else if max_phys == self.last.physical_ms {
            self.last.logical
        } else if max_phys == remote.physical_ms {
            remote.logical
        } else {
            self.last = Ticket { physical_ms: max_phys, logical: 0, node_id: self.node_id };
            return self.last;
        };
        self.last = Ticket { physical_ms: max_phys, logical, node_id: self.node_id };
        self.bump_logical();
        self.last
    }

    /// The last timestamp issued.
    #[must_use]
    pub fn last(&self) -> Ticket {
        self.last
    }

    fn bump_logical(&mut self) {
        match self.last.logical.checked_add(1) {
            Some(l) => self.last.logical = l,
            // 4 billion events in one millisecond: borrow the next millisecond rather than wrap.
            None => {
                self.last.physical_ms += 1;
                self.last.logical = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_even_when_physical_time_goes_back() {
        let mut c = HybridLogicalClock::new(7);
        let a = c.now(1000);
        let b = c.now(999);
        let d = c.now(1000);
        assert!(a < b && b < d);
        assert_eq!(d.node_id, 7);
    }

    #[test]
    fn receive_orders_after_remote() {
        let mut c = HybridLogicalClock::new(1);
        let remote = Ticket { physical_ms: 5000, logical: 9, node_id: 2 };
        let t = c.receive(remote, 10);
        assert!(t > remote);
        assert!(c.now(10) > t);
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = HybridLogicalClock::new(1);
        c.last = Ticket { physical_ms: 1, logical: u32::MAX, node_id: 1 };
        let t = c.now(0);
        assert_eq!(t, Ticket { physical_ms: 2, logical: 0, node_id: 1 });
    }
}
