//! The end-of-run report: a table on stdout and, with `--json FILE`, every figure under
//! stable field names (documented in `bench/README.md`). Fields that a scenario does not
//! measure are present and `null`, so a consumer never has to guess whether a name exists.

use serde_json::{Map, Value, json};

use crate::load::LoadResult;

/// What was run: the fields every report carries.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// Scenario name (`throughput`, `idle`, `failover`, `recovery`).
    pub scenario: String,
    /// Profile name, or `custom`.
    pub profile: String,
    /// `embedded` or `remote`.
    pub mode: String,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Shards per node (embedded; 0 when unknown).
    pub cores_per_node: usize,
    /// Executors the embedded nodes share (0: each node its own, one per shard).
    pub executors: usize,
    /// User partitions.
    pub partitions: u32,
    /// Concurrent clients.
    pub clients: usize,
    /// Driver threads.
    pub drivers: usize,
    /// Workload name.
    pub workload: String,
    /// Share of gets (mix).
    pub read_ratio: f64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Key size in bytes (put/get/mix).
    pub key_size: usize,
    /// Entries per request.
    pub batch: usize,
    /// Entries per partition between the application's checkpoints (0: none).
    pub checkpoint_every: u64,
    /// `closed`, `open` or `limited`.
    pub pacing: String,
    /// Target requests/s (open and limited pacing).
    pub target_rate: Option<f64>,
    /// Transport name (`tcp`, `memory`; `remote` in remote mode).
    pub transport: String,
    /// Log store name.
    pub wal: String,
    /// Whether every write was fsynced (`None` when unknown: remote mode).
    pub sync_writes: Option<bool>,
    /// A CI-sized `--smoke` run (its figures are not measurements).
    pub smoke: bool,
}

/// Everything a run reports.
#[derive(Debug, Default)]
pub struct Report {
    /// What was run.
    pub meta: Meta,
    /// The measured load, if the scenario drives one.
    pub load: Option<LoadResult>,
    /// CPU use of the process during the measurement, % of one core.
    pub cpu_percent: Option<f64>,
    /// Peak resident set size of the process.
    pub rss_bytes: u64,
    /// Pass/fail against a profile's criteria, when it has some.
    pub pass: Option<bool>,
    /// Verdict lines printed after the table (etcd's `PASS: ...` lines).
    pub checks: Vec<String>,
    /// Scenario figures (JSON), merged into the top level.
    pub extra: Map<String, Value>,
    /// Scenario lines printed after the table.
    pub lines: Vec<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    /// The JSON form.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let m = &self.meta;
        let mut v = json!({
            "scenario": m.scenario,
            "profile": m.profile,
            "mode": m.mode,
            "nodes": m.nodes,
            "cores_per_node": m.cores_per_node,
            "executors": m.executors,
            "partitions": m.partitions,
            "clients": m.clients,
            "drivers": m.drivers,
            "workload": m.workload,
            "read_ratio": m.read_ratio,
            "value_size": m.value_size,
            "key_size": m.key_size,
            "batch": m.batch,
            "checkpoint_every": m.checkpoint_every,
            "pacing": m.pacing,
            "target_rate": m.target_rate,
            "transport": m.transport,
            "wal": m.wal,
            "sync_writes": m.sync_writes,
            "smoke": m.smoke,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "pass": self.pass,
            "checks": self.checks,
        });
        let load = match &self.load {
            Some(l) => json!({
                "duration_secs": l.elapsed.as_secs_f64(),
                "ops": l.ops,
                "entries": l.entries,
                "reads": l.reads,
                "not_found": l.not_found,
                "ops_per_sec": l.ops_per_sec(),
                "entries_per_sec": l.entries_per_sec(),
                "p50_us": l.quantile_us(0.50),
                "p90_us": l.quantile_us(0.90),
                "p99_us": l.quantile_us(0.99),
                "p999_us": l.quantile_us(0.999),
                "max_us": l.latency.max(),
                "mean_us": l.latency.mean(),
                "stddev_us": l.latency.stdev(),
                "errors": l.error_count(),
                "errors_by_status": l.errors,
                "checkpoints": l.checkpoints,
                "checkpoint_failures": l.checkpoint_failures,
                "timeline": l.per_second.iter().map(|s| json!({
                    "ops": s.ops, "errors": s.errors, "p50_us": s.p50_us, "p90_us": s.p90_us,
                    "p99_us": s.p99_us, "p999_us": s.p999_us, "max_us": s.max_us,
                })).collect::<Vec<_>>(),
            }),
            None => json!({
                "duration_secs": null, "ops": null, "entries": null, "reads": null, "not_found": null,
                "ops_per_sec": null, "entries_per_sec": null, "p50_us": null, "p90_us": null,
                "p99_us": null, "p999_us": null, "max_us": null, "mean_us": null, "stddev_us": null,
                "errors": 0, "errors_by_status": {}, "checkpoints": 0, "checkpoint_failures": 0,
                "timeline": [],
            }),
        };
        if let (Some(obj), Value::Object(l)) = (v.as_object_mut(), load) {
            obj.extend(l);
            obj.extend(self.extra.clone());
        }
        v
    }

    /// The header line naming what ran.
    #[must_use]
    pub fn header(&self) -> String {
        let m = &self.meta;
        let pacing = match m.target_rate {
            Some(r) => format!("{} loop at {r:.0} req/s", m.pacing),
            None => format!("{} loop", m.pacing),
        };
        let sync = match m.sync_writes {
            Some(true) => " (fsync)",
            Some(false) => " (no fsync)",
            None => "",
        };
        let cluster = if m.mode == "remote" {
            format!(
                "phalanx-bench {} ({}, remote): {} nodes, {} partitions",
                m.scenario, m.profile, m.nodes, m.partitions
            )
        } else {
            format!(
                "phalanx-bench {} ({}, {}): {} nodes x {} cores{}, {} partitions, {} transport, {} WAL{}",
                m.scenario,
                m.profile,
                m.mode,
                m.nodes,
                m.cores_per_node,
                if m.executors > 0 { format!(" on {} shared executors", m.executors) } else { String::new() },
                m.partitions,
                m.transport,
                m.wal,
                sync,
            )
        };
        if m.clients == 0 {
            return format!("{cluster}\n");
        }
        format!(
            "{cluster}; {} clients ({}), {} x {}-byte {} per request\n",
            m.clients, pacing, m.batch, m.value_size, m.workload,
        )
    }

    /// The human-readable table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = self.header();
        if let Some(l) = &self.load {
            s.push_str(&format!(
                "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10}\n",
                "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "cpu %", "rss MiB"
            ));
            s.push_str(&format!(
                "{:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>7.0} {:>10.1}\n",
                l.ops_per_sec(),
                ms(l.quantile_us(0.50)),
                ms(l.quantile_us(0.90)),
                ms(l.quantile_us(0.99)),
                ms(l.quantile_us(0.999)),
                ms(l.latency.max()),
                l.error_count(),
                self.cpu_percent.unwrap_or(0.0),
                self.rss_bytes as f64 / (1 << 20) as f64,
            ));
            if l.entries != l.ops && l.entries > 0 {
                s.push_str(&format!("  entries/s: {:.0}\n", l.entries_per_sec()));
            }
            if l.checkpoints > 0 {
                s.push_str(&format!(
                    "  checkpoints: {} (one per {} entries per partition), {} failed\n",
                    l.checkpoints, self.meta.checkpoint_every, l.checkpoint_failures
                ));
            }
            if l.reads > 0 {
                s.push_str(&format!("  reads: {} ({} found nothing)\n", l.reads, l.not_found));
            }
            for (status, n) in &l.errors {
                s.push_str(&format!("  errors {status}: {n}\n"));
            }
        } else {
            s.push_str(&format!(
                "  cpu %: {:.1}   peak rss MiB: {:.1}\n",
                self.cpu_percent.unwrap_or(0.0),
                self.rss_bytes as f64 / (1 << 20) as f64
            ));
        }
        for line in &self.lines {
            s.push_str(line);
            s.push('\n');
        }
        for line in &self.checks {
            s.push_str(line);
            s.push('\n');
        }
        if let Some(p) = self.pass {
            s.push_str(if p { "PASS\n" } else { "FAIL\n" });
        }
        s
    }
}

/// Writes `value` to `path` (pretty JSON).
pub fn write_json(path: &std::path::Path, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("--json {}: {e}", path.display()))
}
