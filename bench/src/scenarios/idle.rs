//! `--scenario idle`: K partitions on the cluster's nodes and no load. Reports what idling
//! costs — CPU of the process, frames, messages and bytes per second between nodes (counted
//! by the bench's transport wrapper), and memory per partition. With quiescence (the
//! engine's default) idle partitions stop heartbeating after `--quiesce-after-ms`; with
//! `--quiesce-after-ms 0` they heartbeat forever: the two side by side show what it saves.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Settings;
use crate::proc_stats::{self, CpuMeter};
use crate::report::Report;

/// Longest wait for quiescence before measuring.
const QUIESCE_WAIT_MAX: Duration = Duration::from_secs(60);
/// A quiesced count unchanged this long has stopped rising: measure anyway.
const QUIESCE_STALL: Duration = Duration::from_secs(5);

/// Runs the idle scenario.
pub fn run(s: &Settings) -> Result<Report, String> {
    let rss_before = proc_stats::current_rss_bytes();
    let started = Instant::now();
    let mut cluster = super::start_cluster(s, s.partitions, false)?;
    let elected = started.elapsed();
    eprintln!(
        "every partition has a leader after {:.1} s; settling {:.1} s...",
        elected.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    std::thread::sleep(s.warmup);
    if s.quiesce_after_ms > 0 {
        // Measured once quiesced: until every replica is (or stops getting there).
        let t = Instant::now();
        let total = (s.partitions as usize + 1) * cluster.node_count();
        let mut last = (0, Instant::now());
        while t.elapsed() < QUIESCE_WAIT_MAX {
            let q = super::quiesced_replicas(&cluster);
            if q == total || (q == last.0 && last.1.elapsed() >= QUIESCE_STALL) {
                break;
            }
            if q != last.0 {
                last = (q, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "{} of {total} replicas quiesced {:.1} s after the warm-up",
            super::quiesced_replicas(&cluster),
            t.elapsed().as_secs_f64()
        );
    }
    let nodes = cluster.node_count();
    let net0 = cluster.net_totals_all();
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    let step = Duration::from_secs(1);
    while t0.elapsed() < s.duration {
        std::thread::sleep(step.min(s.duration.saturating_sub(t0.elapsed())));
        eprint!("\ridle {:>5.1}s/{:.0}s", t0.elapsed().as_secs_f64(), s.duration.as_secs_f64());
    }
    eprintln!();
    let secs = t0.elapsed().as_secs_f64();
    let cpu_percent = cpu.percent();
    let net = cluster.net_totals_all().since(&net0);
    let rss_now = proc_stats::current_rss_bytes();
    let quiesced = super::quiesced_replicas(&cluster);
    let partitions = f64::from(s.partitions);
    // Partition 0 (system) is there too; the per-partition figure spreads over user ones.
    let rss_growth = rss_now.saturating_sub(rss_before) as f64;
    let per_partition = rss_growth / partitions;
    let per_replica = per_partition / nodes as f64;
    let frames = net.frames_sent as f64 / secs;
    let bytes = net.bytes_sent as f64 / secs;
    let messages = net.messages_handed as f64 / secs;
    let restart = restart_all(&mut cluster, s)?;
    drop(cluster);
    let mut r = Report { meta: super::meta(s), ..Default::default() };
    r.meta.clients = 0;
    r.meta.workload = "none".into();
    r.cpu_percent = Some(cpu_percent);
    r.rss_bytes = proc_stats::peak_rss_bytes();
    for (k, v) in [
        ("idle_secs", json!(secs)),
        ("quiesce_after_ms", json!(s.quiesce_after_ms)),
        ("quiesced_replicas", json!(quiesced)),
        ("election_secs", json!(elected.as_secs_f64())),
        ("frames_per_sec", json!(frames)),
        ("bytes_per_sec", json!(bytes)),
        ("messages_per_sec", json!(messages)),
        ("rss_current_bytes", json!(rss_now)),
        ("rss_growth_bytes", json!(rss_growth)),
        ("rss_per_partition_bytes", json!(per_partition)),
        ("rss_per_replica_bytes", json!(per_replica)),
        ("cpu_percent_per_1000_partitions", json!(cpu_percent / partitions * 1000.0)),
        ("restart_open_secs", json!(restart.open.as_secs_f64())),
        ("restart_election_secs", json!(restart.elected.as_secs_f64())),
        ("restart_quiesced_secs", json!(restart.quiesced.map(|d| d.as_secs_f64()))),
    ] {
        r.extra.insert(k.into(), v);
    }
    r.lines.push(format!(
        "  idle {secs:.1} s, {} partitions x {nodes} replicas (leaders elected in {:.1} s), quiescence {}",
        s.partitions,
        elected.as_secs_f64(),
        if s.quiesce_after_ms == 0 { "off".to_string() } else { format!("after {} ms", s.quiesce_after_ms) }
    ));
    r.lines.push(format!(
        "  quiesced: {quiesced} of {} replicas (partition 0 included)",
        (u64::from(s.partitions) + 1) * nodes as u64
    ));
    r.lines.push(format!(
        "  between nodes: {frames:.0} frames/s, {messages:.0} messages/s, {:.1} KiB/s",
        bytes / 1024.0
    ));
    r.lines.push(format!(
        "  cpu: {cpu_percent:.1} % of one core ({:.2} % per 1000 partitions)",
        cpu_percent / partitions * 1000.0
    ));
    r.lines.push(format!(
        "  memory: {:.1} MiB more than before the cluster started = {:.1} KiB per partition ({:.1} KiB per replica)",
        rss_growth / (1 << 20) as f64,
        per_partition / 1024.0,
        per_replica / 1024.0
    ));
    r.lines.push(format!(
        "  restart of every node from its WAL: open {:.1} s, every partition has a leader after {:.1} s{}",
        restart.open.as_secs_f64(),
        restart.elected.as_secs_f64(),
        match restart.quiesced {
            Some(q) => format!(", every replica quiesced after {:.1} s", q.as_secs_f64()),
            None if s.quiesce_after_ms == 0 => String::new(),
            None => format!(" (not every replica quiesced within {} s)", QUIESCE_WAIT_MAX.as_secs()),
        }
    ));
    Ok(r)
}

/// What a restart of every node took, each from the start of the restart.
struct Restart {
    /// Until every node's `Node::start` returned (WAL shards opened, partitions restored).
    open: Duration,
    /// Until every partition had a leader again.
    elected: Duration,
    /// Until every replica was quiesced again (`None`: quiescence off, or not within
    /// `QUIESCE_WAIT_MAX`).
    quiesced: Option<Duration>,
}

/// Stops every node, then starts them all again from their data directories: the time a
/// cluster of this many partitions takes to come back.
fn restart_all(cluster: &mut crate::cluster::EmbeddedCluster, s: &Settings) -> Result<Restart, String> {
    eprintln!("restarting every node from its WAL...");
    for i in 0..cluster.node_count() {
        cluster.kill(i)?;
    }
    let t = Instant::now();
    for i in 0..cluster.node_count() {
        cluster.restart(i)?;
    }
    let open = t.elapsed();
    cluster.wait_for_leaders(super::leader_timeout(s.partitions))?;
    let elected = t.elapsed();
    let mut quiesced = None;
    if s.quiesce_after_ms > 0 {
        let total = (s.partitions as usize + 1) * cluster.node_count();
        while t.elapsed() < elected + QUIESCE_WAIT_MAX {
            if super::quiesced_replicas(cluster) == total {
                quiesced = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!(
        "restarted: open {:.1} s, leaders after {:.1} s, quiesced after {}",
        open.as_secs_f64(),
        elected.as_secs_f64(),
        quiesced.map_or("-".to_string(), |q| format!("{:.1} s", q.as_secs_f64()))
    );
    Ok(Restart { open, elected, quiesced })
}
