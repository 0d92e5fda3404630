//! `--scenario throughput` (the default): load the cluster and measure throughput and
//! latency; with an etcd profile, etcd's verdict; with `--profile openraft`, the sweep.

use std::sync::Arc;

use serde_json::json;

use crate::cli::{ModeArg, Settings};
use crate::cluster::EmbeddedCluster;
use crate::engine_timeline;
use crate::keys::KeySpace;
use crate::load::{self, TargetSpec, Workload};
use crate::probes;
use crate::proc_stats::{self, CpuMeter};
use crate::profiles::{self, Profile};
use crate::remote;
use crate::report::Report;

/// Concurrent puts while preloading the keys gets read.
const PRELOAD_CONCURRENCY: usize = 128;

/// Runs one load (or the openraft sweep) and returns one report per row.
pub fn run(s: &Settings) -> Result<Vec<Report>, String> {
    if s.profile == Profile::Openraft {
        return sweep(s);
    }
    Ok(vec![one(s)?])
}

/// One load against the embedded cluster or the remote one.
fn one(s: &Settings) -> Result<Report, String> {
    let mut s = s.clone();
    let (spec, cluster) = match s.mode {
        ModeArg::Remote => {
            let info = remote::discover(&s.endpoints)?;
            eprintln!(
                "remote cluster: {} endpoints, {} nodes known, {} partitions",
                info.endpoints.len(),
                info.addresses.len(),
                info.partitions
            );
            s.partitions = info.partitions;
            s.nodes = info.addresses.len() as u64;
            (TargetSpec::Remote(Arc::new(info), s.connections), None)
        }
        ModeArg::Embedded => {
            let c = super::start_cluster(&s, s.partitions, true)?;
            (TargetSpec::embedded(c.handles()), Some(c))
        }
    };
    let mut report = measure(&s, &spec, cluster.as_ref())?;
    drop(cluster);
    if let Some(e) = s.profile.etcd() {
        if let Some(l) = &report.load {
            let (pass, lines) = profiles::etcd_verdict(e.rate, l);
            report.pass = Some(pass);
            report.checks = lines;
        }
    }
    Ok(report)
}

fn measure(s: &Settings, spec: &TargetSpec, cluster: Option<&EmbeddedCluster>) -> Result<Report, String> {
    let keys = Arc::new(KeySpace::new(s.partitions, s.keys, s.keys_per_partition, s.key_size));
    let mut report = Report { meta: super::meta(s), ..Default::default() };
    if matches!(s.workload, Workload::Get | Workload::Mix) {
        eprintln!("writing {} keys for the reads...", u64::from(s.partitions) * s.keys_per_partition);
        load::preload(spec, &keys, s.value_size, PRELOAD_CONCURRENCY)?;
    }
    if s.probes {
        let p = probes::run(&std::env::temp_dir())?;
        report.extra.insert("probe_fsync_p50_us".into(), json!(p.fsync_p50_us));
        report.extra.insert("probe_rtt_p50_us".into(), json!(p.rtt_p50_us));
        report.lines.push(format!(
            "  probes: fdatasync p50 {:.3} ms, loopback TCP round trip p50 {:.3} ms",
            p.fsync_p50_us / 1000.0,
            p.rtt_p50_us / 1000.0
        ));
    }
    let opts = super::load_opts(s, keys);
    // The counters are read as the measured window starts, after the warm-up: per-request
    // ratios (messages, log writes, CPU) divide them by the window's requests.
    let mut net0 = None;
    let mut store0 = None;
    let mut cpu = None;
    let sampler = cluster.map(|c| engine_timeline::Sampler::start(c.handles()));
    let l = load::run_with(spec, &opts, || {
        net0 = cluster.map(EmbeddedCluster::net_totals_all);
        store0 = cluster.map(EmbeddedCluster::store_totals_all);
        cpu = Some(CpuMeter::start());
    })?;
    report.cpu_percent = cpu.map(|c| c.percent());
    report.rss_bytes = proc_stats::peak_rss_bytes();
    if let Some(sampler) = sampler {
        let engine = sampler.finish(l.started, l.per_second.len());
        report.extra.insert("engine_timeline".into(), engine_timeline::to_json(&engine));
        report.lines.push("  slowest seconds, with what each node's engine did in them:".into());
        report.lines.extend(engine_timeline::worst_seconds(&l.per_second, &engine));
    }
    if let (Some(c), Some(n0)) = (cluster, net0) {
        let d = c.net_totals_all().since(&n0);
        let t = l.elapsed.as_secs_f64().max(1e-9);
        report.extra.insert("net_frames_per_sec".into(), json!(d.frames_sent as f64 / t));
        report.extra.insert("net_bytes_per_sec".into(), json!(d.bytes_sent as f64 / t));
        report.extra.insert("net_messages_per_sec".into(), json!(d.messages_handed as f64 / t));
    }
    if let (Some(c), Some((stats0, lat0))) = (cluster, store0) {
        // The engine's own write counters (`NodeHandle::stats`): how often the WAL wrote and
        // how long its writes took, every node together.
        let (stats, lat) = c.store_totals_all();
        let lat = lat.since(&lat0);
        let writes = stats.batches.saturating_sub(stats0.batches);
        let entries = stats.entries_written.saturating_sub(stats0.entries_written);
        let t = l.elapsed.as_secs_f64().max(1e-9);
        report.extra.insert("store_writes_per_sec".into(), json!(writes as f64 / t));
        report.extra.insert("store_entries_per_write".into(), json!(entries as f64 / (writes.max(1) as f64)));
        report.extra.insert("store_write_p50_us".into(), json!(lat.quantile_us(0.5)));
        report.extra.insert("store_write_p99_us".into(), json!(lat.quantile_us(0.99)));
        report.lines.push(format!(
            "  log writes (all nodes): {:.0}/s, {:.1} entries each, latency p50 ≤ {} µs, p99 ≤ {} µs (engine counters)",
            writes as f64 / t,
            entries as f64 / (writes.max(1) as f64),
            lat.quantile_us(0.5),
            lat.quantile_us(0.99)
        ));
    }
    if let (Some(f), Some(r)) = (report.extra.get("probe_fsync_p50_us"), report.extra.get("probe_rtt_p50_us"))
    {
        let floor = f.as_f64().unwrap_or(0.0) + r.as_f64().unwrap_or(0.0);
        let ratio = l.quantile_us(0.5) as f64 / floor.max(1e-9);
        report.extra.insert("p50_over_fsync_plus_rtt".into(), json!(ratio));
        report.lines.push(format!("  p50 / (fdatasync + round trip) = {ratio:.2}"));
    }
    report.load = Some(l);
    Ok(report)
}

/// The openraft sweep: a fresh cluster per row (the in-memory log keeps every entry).
fn sweep(s: &Settings) -> Result<Vec<Report>, String> {
    let mut rows = Vec::new();
    println!(
        "openraft profile: {} nodes in one process, {} transport, {} log, {}-byte payloads, {} partitions, {:.1} s per row",
        s.nodes,
        s.transport.name(),
        s.wal.name(),
        s.value_size,
        s.partitions,
        s.duration.as_secs_f64()
    );
    println!(
        "{:>8} {:>6} {:>12} {:>12} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "clients", "batch", "put/s", "requests/s", "p50 ms", "p99 ms", "max ms", "errors", "cpu %"
    );
    for &clients in &s.sweep_clients {
        for &batch in &s.sweep_batches {
            let mut row = s.clone();
            row.clients = clients;
            row.batch = batch;
            let c = super::start_cluster(&row, row.partitions, true)?;
            let spec = TargetSpec::embedded(c.handles());
            let r = measure(&row, &spec, Some(&c));
            drop(c);
            let r = r?;
            if let Some(l) = &r.load {
                println!(
                    "{:>8} {:>6} {:>12.0} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>7.0}",
                    clients,
                    batch,
                    l.entries_per_sec(),
                    l.ops_per_sec(),
                    l.quantile_us(0.5) as f64 / 1000.0,
                    l.quantile_us(0.99) as f64 / 1000.0,
                    l.latency.max() as f64 / 1000.0,
                    l.error_count(),
                    r.cpu_percent.unwrap_or(0.0)
                );
            }
            rows.push(r);
        }
    }
    Ok(rows)
}
