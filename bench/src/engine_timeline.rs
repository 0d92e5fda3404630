//! The engine's side of the per-second timeline (issue 16, "no stalls: instrument first"):
//! while a load runs on an embedded cluster, every node's counters (`NodeHandle::stats`) are
//! sampled a few times a second; afterwards each second of the client timeline gets, per
//! node, what its log writers did in that second (writes, syncs, segment preparation and
//! recycling, entries moved by segment garbage collection, write latency) and the deepest
//! queues seen (shard inboxes, writes in flight, callers waiting). A second whose client p99
//! jumps can then be matched with what the engine was doing in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use phalanx::NodeHandle;
use phalanx::stats::{LatencyHistogram, NodeStats};
use phalanx_storage::StoreStats;
use serde_json::{Value, json};

use crate::load::SecondStats;

/// Time between two samples: short enough that a second's window edges are off by at most
/// this, long enough that sampling (one stats request per node) costs nothing measurable.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Samples kept at most: an hour at [`SAMPLE_INTERVAL`] (each a few hundred bytes per node),
/// so a long run's memory stays bounded; later samples are dropped.
const MAX_SAMPLES: usize = 36_000;
/// Slowest client seconds printed with the engine's view of them.
const WORST_SECONDS_SHOWN: usize = 3;

/// What one node showed at one sample.
#[derive(Clone, Debug)]
struct NodeSample {
    store: StoreStats,
    write_latency: LatencyHistogram,
    inbox_depth: usize,
    writes_in_flight: usize,
    waiting_callers: usize,
}

impl NodeSample {
    fn of(s: &NodeStats) -> Self {
        let core = s.core();
        NodeSample {
            store: s.store(),
            write_latency: s.write_latency(),
            inbox_depth: s.shards.iter().map(|sh| sh.inbox_depth).max().unwrap_or(0),
            writes_in_flight: core.writes_in_flight,
            waiting_callers: core.waiting_callers,
        }
    }
}

/// One node in one second of the timeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSecond {
    /// Log writes (batches made durable).
    pub writes: u64,
    /// Syncs off the write path (segment preparation and recycling).
    pub background_syncs: u64,
    /// Segment files created (zero-filled).
    pub segments_created: u64,
    /// Segment files recycled.
    pub segments_recycled: u64,
    /// Entries rewritten forward by segment garbage collection.
    pub entries_relocated: u64,
    /// Bytes the log writers handed to the OS.
    pub bytes_written: u64,
    /// Log write latency, 99th percentile (upper bound, power-of-two buckets), µs.
    pub write_p99_us: u64,
    /// Slowest log write (upper bound), µs.
    pub write_max_us: u64,
    /// Deepest shard inbox seen in a sample (messages waiting for a shard's turn).
    pub inbox_depth_max: usize,
    /// Most write jobs handed out and not durable, in a sample (all shards).
    pub writes_in_flight_max: usize,
    /// Most callers waiting for an answer, in a sample (all shards).
    pub waiting_callers_max: usize,
}

/// Samples every node until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Vec<NodeSample>)>>,
}

impl Sampler {
    /// Starts sampling `handles` (one per node) every [`SAMPLE_INTERVAL`].
    #[must_use]
    pub fn start(handles: Vec<NodeHandle>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let take = || {
                let at = Instant::now();
                let nodes: Vec<NodeSample> = handles
                    .iter()
                    .map(|h| NodeSample::of(&futures_lite::future::block_on(h.stats())))
                    .collect();
                (at, nodes)
            };
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES {
                let (at, nodes) = take();
                samples.push((at, nodes));
                std::thread::sleep(SAMPLE_INTERVAL.saturating_sub(at.elapsed()));
            }
            // One more after the load ended: the edge of its last second.
            samples.push(take());
            samples
        });
        Sampler { stop, thread }
    }

    /// Stops sampling; returns, for each second from `started` on (`seconds` of them), every
    /// node's [`NodeSecond`]. A second without samples at both edges is left empty.
    #[must_use]
    pub fn finish(self, started: Instant, seconds: usize) -> Vec<Vec<NodeSecond>> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        (0..seconds)
            .map(|k| {
                let from = started + Duration::from_secs(k as u64);
                let to = from + Duration::from_secs(1);
                window(&samples, from, to)
            })
            .collect()
    }
}

/// Every node's activity between the last sample at or before `from` and the first at or
/// after `to`; gauges are the maximum over the samples in between.
fn window(samples: &[(Instant, Vec<NodeSample>)], from: Instant, to: Instant) -> Vec<NodeSecond> {
    let Some(a) = samples.iter().rposition(|(t, _)| *t <= from) else { return Vec::new() };
    let Some(b) = samples.iter().position(|(t, _)| *t >= to) else { return Vec::new() };
    let (first, last) = (&samples[a].1, &samples[b].1);
    first
        .iter()
        .zip(last)
        .enumerate()
        .map(|(n, (x, y))| {
            let lat = y.write_latency.since(&x.write_latency);
            let gauge = |f: fn(&NodeSample) -> usize| {
                samples[a..=b].iter().filter_map(|(_, nodes)| nodes.get(n).map(f)).max().unwrap_or(0)
            };
            NodeSecond {
                writes: y.store.batches.saturating_sub(x.store.batches),
                background_syncs: y.store.background_syncs.saturating_sub(x.store.background_syncs),
                segments_created: y.store.segments_created.saturating_sub(x.store.segments_created),
                segments_recycled: y.store.segments_recycled.saturating_sub(x.store.segments_recycled),
                entries_relocated: y.store.entries_relocated.saturating_sub(x.store.entries_relocated),
                bytes_written: y.store.bytes_written.saturating_sub(x.store.bytes_written),
                write_p99_us: lat.quantile_us(0.99),
                write_max_us: lat.quantile_us(1.0),
                inbox_depth_max: gauge(|s| s.inbox_depth),
                writes_in_flight_max: gauge(|s| s.writes_in_flight),
                waiting_callers_max: gauge(|s| s.waiting_callers),
            }
        })
        .collect()
}

/// The timeline as JSON: one array of nodes per second.
#[must_use]
pub fn to_json(timeline: &[Vec<NodeSecond>]) -> Value {
    Value::Array(
        timeline
            .iter()
            .map(|nodes| {
                Value::Array(
                    nodes
                        .iter()
                        .map(|n| {
                            json!({
                                "writes": n.writes,
                                "background_syncs": n.background_syncs,
                                "segments_created": n.segments_created,
                                "segments_recycled": n.segments_recycled,
                                "entries_relocated": n.entries_relocated,
                                "bytes_written": n.bytes_written,
                                "write_p99_us": n.write_p99_us,
                                "write_max_us": n.write_max_us,
                                "inbox_depth_max": n.inbox_depth_max,
                                "writes_in_flight_max": n.writes_in_flight_max,
                                "waiting_callers_max": n.waiting_callers_max,
                            })
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Report lines for the clients' slowest seconds (by their slowest request), each with what
/// every node's engine did in it.
#[must_use]
pub fn worst_seconds(clients: &[SecondStats], engine: &[Vec<NodeSecond>]) -> Vec<String> {
    let mut order: Vec<usize> = (0..clients.len().min(engine.len())).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(clients[k].max_us));
    order
        .into_iter()
        .take(WORST_SECONDS_SHOWN)
        .map(|k| {
            let c = &clients[k];
            let nodes: Vec<String> = engine[k]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "n{}: {} writes p99≤{:.1} max≤{:.1} ms, segs +{} ♻{}, relocated {}, bg syncs {}, inbox≤{}, in flight≤{}, waiting≤{}",
                        i + 1,
                        n.writes,
                        n.write_p99_us as f64 / 1000.0,
                        n.write_max_us as f64 / 1000.0,
                        n.segments_created,
                        n.segments_recycled,
                        n.entries_relocated,
                        n.background_syncs,
                        n.inbox_depth_max,
                        n.writes_in_flight_max,
                        n.waiting_callers_max
                    )
                })
                .collect();
            format!(
                "  second {k}: clients p99 {:.1} ms, max {:.1} ms | {}",
                c.p99_us as f64 / 1000.0,
                c.max_us as f64 / 1000.0,
                nodes.join(" | ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(batches: u64, lat_ms: &[u64], inbox: usize) -> NodeSample {
        let mut write_latency = LatencyHistogram::default();
        for ms in lat_ms {
            write_latency.record(Duration::from_millis(*ms));
        }
        NodeSample {
            store: StoreStats { batches, ..Default::default() },
            write_latency,
            inbox_depth: inbox,
            writes_in_flight: 0,
            waiting_callers: 0,
        }
    }

    #[test]
    fn a_second_is_the_difference_of_the_samples_around_it_and_the_deepest_queue_in_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let samples = vec![
            (at(0), vec![sample(10, &[1], 0)]),
            (at(500), vec![sample(20, &[1, 1], 7)]),
            (at(1000), vec![sample(40, &[1, 1, 1, 64], 2)]),
            (at(1500), vec![sample(45, &[1, 1, 1, 64, 1], 0)]),
        ];
        let w = window(&samples, at(0), at(1000));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].writes, 30);
        assert_eq!(w[0].inbox_depth_max, 7);
        // Three writes in the second, the slowest 64 ms: bounded by its bucket's top.
        assert!(w[0].write_max_us >= 64_000 && w[0].write_max_us < 128_000, "{:?}", w[0]);
        // A window past the last sample is empty, not made up.
        assert!(window(&samples, at(1000), at(2000)).is_empty());
    }
}
