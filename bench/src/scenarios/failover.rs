//! `--scenario failover`: crash the node that leads the most partitions and measure, for
//! every partition it led, how long until a surviving node leads it **and** a write to it
//! commits. The crash isolates the node's transport at one instant (no more frames in or
//! out, as after `kill -9`), then stops its shards.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::cli::Settings;
use crate::proc_stats::{self, CpuMeter};
use crate::report::Report;
use crate::target::APPEND_LOG_TYPE;

/// How long past the idle period the scenario waits for quiescence: the leader's next
/// heartbeat tick, its followers' acknowledgements, the tick after (a few hundred ms).
const QUIESCE_SETTLE: Duration = Duration::from_secs(1);
/// Give up on a partition after this long.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// One affected partition's times since the crash (ms); `None` when it never recovered.
#[derive(Clone, Copy, Debug)]
struct Recovered {
    partition: u64,
    leader_ms: Option<f64>,
    write_ms: Option<f64>,
}

/// Runs the failover scenario.
pub fn run(s: &Settings) -> Result<Report, String> {
    let mut cluster = super::start_cluster(s, s.partitions, true)?;
    // Warm every partition with one write, so each has committed an entry of its term.
    for p in 0..=u64::from(s.partitions) {
        if let Some(h) = cluster.leader(p) {
            let r =
                futures_lite::future::block_on(h.replicate(p, APPEND_LOG_TYPE, Bytes::from_static(b"warm")));
            if !r.success() {
                return Err(format!("warm-up write to partition {p}: {}", r.status.name()));
            }
        }
    }
    // With quiescence on, the partitions go idle first: the crash meets them quiesced, their
    // followers without election timers, and only the failure detector to notice.
    if s.quiesce_after_ms > 0 {
        let settle = Duration::from_millis(s.quiesce_after_ms) + QUIESCE_SETTLE;
        eprintln!("waiting {:.1} s for the partitions to quiesce...", settle.as_secs_f64());
        std::thread::sleep(settle);
    }
    let quiesced = super::quiesced_replicas(&cluster);
    let mut led = vec![0usize; cluster.node_count()];
    for p in 0..=u64::from(s.partitions) {
        if let Some(i) = cluster.leader_index(p) {
            led[i] += 1;
        }
    }
    let victim = (0..led.len()).max_by_key(|&i| (led[i], std::cmp::Reverse(i))).unwrap_or(0);
    let affected: Vec<u64> =
        (0..=u64::from(s.partitions)).filter(|&p| cluster.leader_index(p) == Some(victim)).collect();
    let victim_id = cluster.handle(victim).map_or(0, |h| h.node_id());
    eprintln!(
        "crashing node {victim_id}, leader of {} of {} partitions...",
        affected.len(),
        s.partitions + 1
    );
    let cpu = CpuMeter::start();
    let crashed_at = cluster.kill(victim)?;
    let survivors = cluster.handles();
    let targets = affected.clone();
    let j = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("bench-failover")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let survivors = Rc::new(survivors);
            let tasks: Vec<_> = targets
                .into_iter()
                .map(|p| {
                    let survivors = survivors.clone();
                    glommio::spawn_local(async move {
                        let mut out = Recovered { partition: p, leader_ms: None, write_ms: None };
                        let ms = || crashed_at.elapsed().as_secs_f64() * 1000.0;
                        while crashed_at.elapsed() < FAILOVER_TIMEOUT {
                            let Some(h) = survivors.iter().find(|h| h.am_i_leader_quick(p)) else {
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                                continue;
                            };
                            out.leader_ms.get_or_insert_with(ms);
                            let r = h.replicate(p, APPEND_LOG_TYPE, Bytes::from_static(b"failover")).await;
                            if r.success() {
                                out.write_ms = Some(ms());
                                break;
                            }
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await);
            }
            all
        })
        .map_err(|e| format!("failover thread: {e}"))?;
    let results = j.join().map_err(|e| format!("failover: {e}"))?;
    let cpu_percent = cpu.percent();
    let cluster_nodes = cluster.node_count();
    drop(cluster);
    let leader: Vec<f64> = results.iter().filter_map(|r| r.leader_ms).collect();
    let write: Vec<f64> = results.iter().filter_map(|r| r.write_ms).collect();
    let failed: Vec<u64> = results.iter().filter(|r| r.write_ms.is_none()).map(|r| r.partition).collect();
    let (l50, l99, lmax) = super::quantiles_ms(&leader);
    let (w50, w99, wmax) = super::quantiles_ms(&write);
    let mut r = Report { meta: super::meta(s), ..Default::default() };
    r.meta.clients = 0;
    r.meta.workload = "none".into();
    r.cpu_percent = Some(cpu_percent);
    r.rss_bytes = proc_stats::peak_rss_bytes();
    r.pass = Some(failed.is_empty());
    for (k, v) in [
        ("killed_node", json!(victim_id)),
        ("affected_partitions", json!(affected.len())),
        ("unrecovered_partitions", json!(failed)),
        ("new_leader_p50_ms", json!(l50)),
        ("new_leader_p99_ms", json!(l99)),
        ("new_leader_max_ms", json!(lmax)),
        ("write_accepted_p50_ms", json!(w50)),
        ("write_accepted_p99_ms", json!(w99)),
        ("write_accepted_max_ms", json!(wmax)),
        ("all_recovered_ms", json!(if failed.is_empty() { Some(wmax) } else { None })),
        ("election_timeout_ms", json!([s.tick_ms * 10, s.tick_ms * 20])),
        ("quiesce_after_ms", json!(s.quiesce_after_ms)),
        ("quiesced_replicas_at_crash", json!(quiesced)),
        (
            "per_partition",
            json!(results.iter().map(|x| json!({"partition": x.partition, "leader_ms": x.leader_ms, "write_ms": x.write_ms})).collect::<Vec<_>>()),
        ),
    ] {
        r.extra.insert(k.into(), v);
    }
    r.lines.push(format!(
        "  crashed node {victim_id}: it led {} partitions (election timeout {}-{} ms)",
        affected.len(),
        s.tick_ms * 10,
        s.tick_ms * 20
    ));
    r.lines.push(format!(
        "  quiesced at the crash: {quiesced} of {} replicas (quiescence {})",
        (u64::from(s.partitions) + 1) * cluster_nodes as u64,
        if s.quiesce_after_ms == 0 { "off".to_string() } else { format!("after {} ms", s.quiesce_after_ms) }
    ));
    r.lines.push(format!("{:>28} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms"));
    r.lines.push(format!("{:>28} {l50:>9.1} {l99:>9.1} {lmax:>9.1}", "new leader"));
    r.lines.push(format!("{:>28} {w50:>9.1} {w99:>9.1} {wmax:>9.1}", "new leader + write commits"));
    if failed.is_empty() {
        r.lines.push(format!("  every affected partition took writes again after {wmax:.1} ms"));
    } else {
        r.lines.push(format!(
            "  {} partitions did not recover within {FAILOVER_TIMEOUT:?}: {failed:?}",
            failed.len()
        ));
    }
    if let Some(path) = &s.plot {
        let svg = crate::plot::distribution(
            &format!("failover: {} partitions, time from crash to first committed write", write.len()),
            "ms",
            &write,
        );
        crate::plot::write(path, &svg)?;
    }
    Ok(r)
}
