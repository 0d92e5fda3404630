//! `--scenario recovery`: fill the cluster's logs with N entries, crash one node (a
//! follower of some partitions, leader of others), optionally write more while it is down,
//! wait until the others have replaced it as leader everywhere (timed as **failover**: the
//! failover scenario's subject, kept out of the restart's times below, which it otherwise
//! dominated when the restart was quicker than the elections), then restart it from its
//! data directory and time:
//!
//! - **open**: `Node::start` — the WAL shards read back and every partition restored;
//! - **ready**: the restarted node knows a leader for every partition (it can route);
//! - **caught up**: it has applied, on every partition, everything the cluster had committed
//!   when it restarted.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Settings;
use crate::keys::KeySpace;
use crate::load::{self, LoadOpts, Pacing, TargetSpec, Workload};
use crate::proc_stats::{self, CpuMeter};
use crate::report::Report;

/// Give up waiting for the restarted node after this long.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Most time a fill may take.
const FILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Give up waiting for the surviving nodes to elect leaders in the crashed one's place after
/// this long (elections take a few election timeouts, a second or two).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

fn fill(s: &Settings, spec: &TargetSpec, entries: u64) -> Result<u64, String> {
    if entries == 0 {
        return Ok(0);
    }
    let batch = s.batch.max(1) as u64;
    let opts = LoadOpts {
        clients: s.clients,
        drivers: s.drivers,
        workload: Workload::Append,
        read_ratio: 0.0,
        value_size: s.value_size,
        batch: s.batch,
        keys: std::sync::Arc::new(KeySpace::new(s.partitions, s.keys, 1, 1)),
        pacing: Pacing::Closed,
        duration: FILL_TIMEOUT,
        warmup: Duration::ZERO,
        // The WAL must hold every entry written: no compaction.
        checkpoint_every: 0,
        stop: None,
        stop_after_ops: Some(entries.div_ceil(batch)),
        progress: false,
    };
    let r = load::run(spec, &opts)?;
    if r.error_count() > 0 {
        return Err(format!("writing the entries: {} requests failed ({:?})", r.error_count(), r.errors));
    }
    Ok(r.entries)
}

/// Runs the recovery scenario.
pub fn run(s: &Settings) -> Result<Report, String> {
    let mut cluster = super::start_cluster(s, s.partitions, true)?;
    let victim = cluster.node_count() - 1;
    let victim_id = cluster.handle(victim).map_or(0, |h| h.node_id());
    eprintln!("writing {} entries ({} bytes each)...", s.entries, s.value_size);
    let t = Instant::now();
    let written = fill(s, &TargetSpec::embedded(cluster.handles()), s.entries)?;
    let fill_secs = t.elapsed().as_secs_f64();
    eprintln!("wrote {written} entries in {fill_secs:.1} s; crashing node {victim_id}...");
    cluster.kill(victim)?;
    let crashed = Instant::now();
    let lagged = fill(s, &TargetSpec::embedded(cluster.handles()), s.lag_entries)?;
    // The survivors replace it as leader where it led.
    let failover = loop {
        let led_elsewhere = cluster.handles().iter().all(|h| {
            (0..=u64::from(s.partitions)).all(|p| h.leader_of(p).is_some_and(|(l, _)| l != victim_id))
        });
        if led_elsewhere {
            break crashed.elapsed();
        }
        if crashed.elapsed() > FAILOVER_TIMEOUT {
            return Err(format!(
                "the other nodes did not replace node {victim_id} as leader within {FAILOVER_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // What the restarted node must reach: each partition's commit index on its leader now.
    let mut target = vec![0u64; s.partitions as usize + 1];
    for h in cluster.handles() {
        for st in futures_lite::future::block_on(h.status()) {
            if let Some(slot) = target.get_mut(st.id as usize) {
                *slot = (*slot).max(st.commit_index);
            }
        }
    }
    let committed: u64 = target.iter().sum();
    let wal_bytes = cluster.data_dir(victim).map_or(0, |d| proc_stats::dir_bytes(&d));
    eprintln!("restarting node {victim_id} ({:.1} MiB on disk)...", wal_bytes as f64 / (1 << 20) as f64);
    let cpu = CpuMeter::start();
    let began = Instant::now();
    let open = cluster.restart(victim)?;
    let handle = cluster.handle(victim).cloned().ok_or("restarted node has no handle")?;
    let mut ready = None;
    let caught_up = loop {
        if ready.is_none() && (0..=u64::from(s.partitions)).all(|p| handle.leader_of(p).is_some()) {
            ready = Some(began.elapsed());
        }
        let status = futures_lite::future::block_on(handle.status());
        let behind = status
            .iter()
            .filter(|st| target.get(st.id as usize).is_some_and(|&t| st.applied_index < t))
            .count();
        if ready.is_some() && behind == 0 && !status.is_empty() {
            break began.elapsed();
        }
        if began.elapsed() > CATCH_UP_TIMEOUT {
            drop(cluster);
            return Err(format!(
                "node {victim_id} did not catch up within {CATCH_UP_TIMEOUT:?} ({behind} partitions behind)"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let cpu_percent = cpu.percent();
    drop(cluster);
    let ready = ready.unwrap_or(caught_up);
    let mut r = Report { meta: super::meta(s), ..Default::default() };
    r.meta.workload = "append".into();
    r.cpu_percent = Some(cpu_percent);
    r.rss_bytes = proc_stats::peak_rss_bytes();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let replay_rate = committed as f64 / open.as_secs_f64().max(1e-9);
    for (k, v) in [
        ("restarted_node", json!(victim_id)),
        ("entries_written", json!(written)),
        ("entries_written_while_down", json!(lagged)),
        ("entries_committed", json!(committed)),
        ("fill_secs", json!(fill_secs)),
        ("wal_bytes", json!(wal_bytes)),
        ("failover_ms", json!(ms(failover))),
        ("open_ms", json!(ms(open))),
        ("ready_ms", json!(ms(ready))),
        ("caught_up_ms", json!(ms(caught_up))),
        ("replay_entries_per_sec", json!(replay_rate)),
    ] {
        r.extra.insert(k.into(), v);
    }
    r.lines.push(format!(
        "  node {victim_id} restarted with {committed} committed entries ({:.1} MiB) in its data directory; {lagged} written while it was down",
        wal_bytes as f64 / (1 << 20) as f64
    ));
    r.lines.push(format!(
        "{:>40} {:>10.1} ms  (from the crash, before the restart)",
        "failover (led elsewhere everywhere)",
        ms(failover)
    ));
    r.lines.push(format!(
        "{:>40} {:>10.1} ms  ({replay_rate:.0} entries/s)",
        "open (WAL read, partitions restored)",
        ms(open)
    ));
    r.lines.push(format!("{:>40} {:>10.1} ms", "ready (a leader known everywhere)", ms(ready)));
    r.lines.push(format!("{:>40} {:>10.1} ms", "caught up (applied the commit index)", ms(caught_up)));
    Ok(r)
}
