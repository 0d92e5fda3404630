//! What a node counts, read in one call ([`crate::NodeHandle::stats`]): per shard, its
//! partitions (state and Raft counters), the shard core's message counters and queue depths,
//! its transport's and its log store's counters, and a histogram of its write latencies.
//! Every figure is one the engine keeps anyway; reading them costs one request per shard,
//! answered between two loop turns, so the hot path pays nothing for them. (A metrics
//! endpoint will serve this data.)

use std::time::Duration;

use phalanx_net::TransportStats;
use phalanx_storage::StoreStats;

use crate::raft::{GroupStats, NodeId};
use crate::shard::request::PartitionStatus;

/// One node's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The node.
    pub node_id: NodeId,
    /// Its shards, by shard number (a shard that stopped is missing).
    pub shards: Vec<ShardStats>,
}

impl NodeStats {
    /// The shards' transport counters added up (gauges too).
    #[must_use]
    pub fn transport(&self) -> TransportStats {
        self.shards.iter().fold(TransportStats::default(), |a, s| a.plus(&s.transport))
    }

    /// The shards' store counters added up.
    #[must_use]
    pub fn store(&self) -> StoreStats {
        self.shards.iter().fold(StoreStats::default(), |a, s| a.plus(&s.store))
    }

    /// The shards' core counters and depths added up.
    #[must_use]
    pub fn core(&self) -> CoreStats {
        self.shards.iter().fold(CoreStats::default(), |a, s| a.plus(&s.core))
    }

    /// Every write latency of the node's shards in one histogram.
    #[must_use]
    pub fn write_latency(&self) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        for s in &self.shards {
            h.merge(&s.write_latency);
        }
        h
    }

    /// Partitions this node leads.
    #[must_use]
    pub fn leaders(&self) -> usize {
        self.shards.iter().map(|s| s.core.leaders).sum()
    }

    /// Every partition, by id.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionStats> {
        self.shards.iter().flat_map(|s| s.partitions.iter())
    }
}

/// One shard's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard.
    pub shard: usize,
    /// Its partitions, by id.
    pub partitions: Vec<PartitionStats>,
    /// The shard core's counters and queue depths.
    pub core: CoreStats,
    /// Inputs (requests, peer batches, bus messages) waiting in the shard's inbox.
    pub inbox_depth: usize,
    /// The shard's transport.
    pub transport: TransportStats,
    /// The shard's log store, as of its last completed write.
    pub store: StoreStats,
    /// How long the shard's log writes took (`LogStore::write`: one batch, synced when the
    /// store syncs).
    pub write_latency: LatencyHistogram,
}

/// One partition on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStats {
    /// Its state (leader, term, indexes).
    pub status: PartitionStatus,
    /// Its Raft group's counters on this node.
    pub raft: GroupStats,
}

/// What a shard core counts (cumulative since the shard started, except the depths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Partitions this shard leads.
    pub leaders: usize,
    /// Depth: partitions quiesced on this shard, led or followed (`raft/quiesce.rs`).
    pub quiesced: usize,
    /// Raft messages handed to the transport.
    pub messages_sent: u64,
    /// Batches (one frame each) handed to the transport.
    pub batches_sent: u64,
    /// Raft messages received from peers (including those for another shard's partitions,
    /// passed on over the bus).
    pub messages_received: u64,
    /// Received messages for a partition this node does not have.
    pub unknown_group_messages: u64,
    /// Received messages a group refused (bad peer input, a stale leader's message).
    pub messages_refused: u64,
    /// Checkpoints not compacted because the state machine's snapshot exceeded
    /// `raft.max_snapshot_bytes` (the log below them is kept).
    pub snapshots_too_large: u64,
    /// Proposals held while their partition's leadership was handed over (`shard/held.rs`),
    /// then proposed or answered `NodeIsNotLeader`.
    pub proposals_held: u64,
    /// Depth: write jobs handed to the writer and not yet complete.
    pub writes_in_flight: usize,
    /// Depth: callers waiting for a proposal or a read.
    pub waiting_callers: usize,
}

impl CoreStats {
    /// Element-wise sum.
    #[must_use]
    pub fn plus(&self, o: &CoreStats) -> CoreStats {
        CoreStats {
            leaders: self.leaders + o.leaders,
            quiesced: self.quiesced + o.quiesced,
            messages_sent: self.messages_sent + o.messages_sent,
            batches_sent: self.batches_sent + o.batches_sent,
            messages_received: self.messages_received + o.messages_received,
            unknown_group_messages: self.unknown_group_messages + o.unknown_group_messages,
            messages_refused: self.messages_refused + o.messages_refused,
            snapshots_too_large: self.snapshots_too_large + o.snapshots_too_large,
            proposals_held: self.proposals_held + o.proposals_held,
            writes_in_flight: self.writes_in_flight + o.writes_in_flight,
            waiting_callers: self.waiting_callers + o.waiting_callers,
        }
    }
}

/// Buckets of a [`LatencyHistogram`]: bucket `i` counts latencies below `2^i` µs (and at
/// least `2^(i-1)`); the last one also everything longer, from 2^38 µs (3.2 days) on.
pub const LATENCY_BUCKETS: usize = 40;

/// A histogram of durations in power-of-two buckets of microseconds: fixed size, so
/// recording costs no allocation and merging is element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Counts per bucket (see [`LATENCY_BUCKETS`]).
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Durations recorded.
    pub count: u64,
    /// Their sum, in µs.
    pub sum_us: u64,
    /// The longest, in µs.
    pub max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: [0; LATENCY_BUCKETS], count: 0, sum_us: 0, max_us: 0 }
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[bucket.min(LATENCY_BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds `other`'s durations.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The durations recorded since `earlier` (a copy of this histogram taken before):
    /// element-wise difference (the maximum stays this one's).
    #[must_use]
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = *self;
        for (a, b) in d.buckets.iter_mut().zip(earlier.buckets.iter()) {
            *a = a.saturating_sub(*b);
        }
        d.count = d.count.saturating_sub(earlier.count);
        d.sum_us = d.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    /// An upper bound of quantile `q` (0..=1), in µs: the top of the bucket holding it
    /// (at most twice the true value), capped by the maximum. 0 when empty.
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based: at least the first duration.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let top = if i == 0 { 0 } else { (1u64 << i) - 1 };
                return top.min(self.max_us);
            }
        }
        self.max_us
    }

    /// The mean, in µs (0 when empty).
    #[must_use]
    pub fn mean_us(&self) -> u64 {
        self.sum_us.checked_div(self.count).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_bounds_its_quantiles_within_a_factor_of_two() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.5), 0);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.max_us, 1000);
        assert_eq!(h.mean_us(), 500);
        for (q, exact) in [(0.5, 500u64), (0.9, 900), (0.99, 990), (1.0, 1000)] {
            let got = h.quantile_us(q);
            assert!(got >= exact && got < 2 * exact.max(1), "q{q}: {got} for {exact}");
        }
        // Zero, and durations beyond the last bucket, are counted.
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(u64::MAX / 4));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS - 1], 1);
        let before = h;
        h.record(Duration::from_millis(3));
        let d = h.since(&before);
        assert_eq!(d.count, 1);
        assert_eq!(d.quantile_us(0.5), 3000u64.next_power_of_two() - 1);
        let mut m = before;
        m.merge(&d);
        assert_eq!(m.count, h.count);
        assert_eq!(m.buckets, h.buckets);
    }
}
