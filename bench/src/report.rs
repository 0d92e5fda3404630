//! The end-of-run report: a table on stdout and, with `--json FILE`, every figure under
//! stable field names (documented in `bench/README.md`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::load::LoadResult;

/// Everything a run reports.
#[derive(Debug)]
pub struct Report {
    /// Scenario name (`throughput`, ...).
    pub scenario: String,
    /// Profile name, or "custom".
    pub profile: String,
    /// Mode (`embedded`, `remote`).
    pub mode: String,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Shards per node.
    pub cores_per_node: usize,
    /// User partitions.
    pub partitions: u32,
    /// Concurrent clients.
    pub clients: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Entries per request.
    pub batch: usize,
    /// Workload name.
    pub workload: String,
    /// Transport name.
    pub transport: String,
    /// Log store name.
    pub wal: String,
    /// Whether every write was fsynced.
    pub sync_writes: bool,
    /// The measurement.
    pub load: LoadResult,
    /// CPU use of the process during the measured window, % of one core.
    pub cpu_percent: f64,
    /// Peak resident set size of the process.
    pub rss_bytes: u64,
    /// Pass/fail against a profile's criteria, when it has some.
    pub pass: Option<bool>,
}

impl Report {
    /// Requests per second.
    #[must_use]
    pub fn ops_per_sec(&self) -> f64 {
        self.load.ops as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }

    fn q(&self, q: f64) -> u64 {
        if self.load.latency.is_empty() { 0 } else { self.load.latency.value_at_quantile(q) }
    }

    /// The JSON form.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let errors: u64 = self.load.errors.values().sum();
        json!({
            "scenario": self.scenario,
            "profile": self.profile,
            "mode": self.mode,
            "nodes": self.nodes,
            "cores_per_node": self.cores_per_node,
            "partitions": self.partitions,
            "clients": self.clients,
            "value_size": self.value_size,
            "batch": self.batch,
            "workload": self.workload,
            "transport": self.transport,
            "wal": self.wal,
            "sync_writes": self.sync_writes,
            "duration_secs": self.load.elapsed.as_secs_f64(),
            "ops": self.load.ops,
            "entries": self.load.entries,
            "ops_per_sec": self.ops_per_sec(),
            "entries_per_sec": self.load.entries as f64 / self.load.elapsed.as_secs_f64().max(1e-9),
            "p50_us": self.q(0.50),
            "p90_us": self.q(0.90),
            "p99_us": self.q(0.99),
            "p999_us": self.q(0.999),
            "max_us": self.load.latency.max(),
            "mean_us": self.load.latency.mean(),
            "stddev_us": self.load.latency.stdev(),
            "errors": errors,
            "errors_by_status": self.load.errors.iter().collect::<BTreeMap<_, _>>(),
            "ops_per_sec_timeline": self.load.per_second,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "pass": self.pass,
        })
    }

    /// The human-readable table.
    #[must_use]
    pub fn table(&self) -> String {
        let errors: u64 = self.load.errors.values().sum();
        let mut s = String::new();
        s.push_str(&format!(
            "phalanx-bench {} ({}): {} nodes x {} cores, {} partitions, {} clients, {} x {}-byte {} per request, {} transport, {} WAL{}\n",
            self.scenario,
            self.profile,
            self.nodes,
            self.cores_per_node,
            self.partitions,
            self.clients,
            self.batch,
            self.value_size,
            self.workload,
            self.transport,
            self.wal,
            if self.sync_writes { " (fsync)" } else { " (no fsync)" },
        ));
        s.push_str(&format!(
            "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10}\n",
            "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "cpu %", "rss MiB"
        ));
        let ms = |us: u64| us as f64 / 1000.0;
        s.push_str(&format!(
            "{:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>7.0} {:>10.1}\n",
            self.ops_per_sec(),
            ms(self.q(0.50)),
            ms(self.q(0.90)),
            ms(self.q(0.99)),
            ms(self.q(0.999)),
            ms(self.load.latency.max()),
            errors,
            self.cpu_percent,
            self.rss_bytes as f64 / (1 << 20) as f64,
        ));
        for (status, n) in &self.load.errors {
            s.push_str(&format!("  errors {status}: {n}\n"));
        }
        if let Some(p) = self.pass {
            s.push_str(if p { "PASS\n" } else { "FAIL\n" });
        }
        s
    }
}
