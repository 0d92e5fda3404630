//! `--scenario join`: a new node joins a loaded cluster that holds `--join-data-bytes` of
//! data across its partitions. Measured: the time from the roster's add to the node being a
//! voter of every partition (its partitions' leaders report it), the cluster's write
//! throughput and latency per second before and during the join, and then the time from
//! killing a node (its transport cut at one instant, as by SIGKILL) to the others' failure
//! detector suspecting it everywhere, and calling it down everywhere (SWIM, `engine/src/swim/`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Settings;
use crate::keys::KeySpace;
use crate::load::{self, Joined, LoadOpts, SecondStats, TargetSpec};
use crate::proc_stats::{self, CpuMeter};
use crate::report::Report;

/// Concurrent puts while writing the data the new node must catch up on.
const PRELOAD_CONCURRENCY: usize = 64;
/// Give up waiting for the join, or for the failure detector, after this long.
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the join's progress is read (one status request per node): often enough to
/// time it to a few percent, rarely enough not to load the nodes being measured.
const POLL: Duration = Duration::from_millis(100);
/// The load runs this long before the join starts, for the "before" figures.
const BEFORE: Duration = Duration::from_secs(5);

/// Runs the join scenario.
pub fn run(s: &Settings) -> Result<Report, String> {
    let mut cluster = super::start_cluster(s, s.partitions, true)?;
    let handles = cluster.handles();
    // The load reaches the new node too once it joins (the balancer gives it leaderships).
    let joined = Joined::default();
    let spec = TargetSpec::Embedded(handles.clone(), joined.clone());

    // The data a new node must receive: values of --value-size under enough keys per
    // partition to make --join-data-bytes, then a checkpoint of every partition (as after a
    // long life: the new node gets snapshots and a short log).
    let per_partition = s.join_data_bytes.div_ceil(u64::from(s.partitions)).max(1);
    let keys_per_partition = per_partition.div_ceil(s.join_value_bytes as u64).max(1);
    let data = Arc::new(KeySpace::new(s.partitions, s.keys, keys_per_partition, s.key_size));
    eprintln!(
        "writing {} MiB: {} keys of {} bytes per partition...",
        (u64::from(s.partitions) * keys_per_partition * s.join_value_bytes as u64) >> 20,
        keys_per_partition,
        s.join_value_bytes
    );
    let t_fill = Instant::now();
    load::preload(&spec, &data, s.join_value_bytes, PRELOAD_CONCURRENCY)?;
    let fill_secs = t_fill.elapsed().as_secs_f64();
    for p in 0..=u64::from(s.partitions) {
        let Some(h) = cluster.leader(p) else { return Err(format!("partition {p} has no leader")) };
        let r = futures_lite::future::block_on(h.replicate_checkpoint(p));
        if !r.success() {
            return Err(format!("checkpoint of partition {p}: {}", r.status.name()));
        }
    }

    // The load, in the background, over the whole join.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keys = Arc::new(KeySpace::new(s.partitions, s.keys, s.keys_per_partition, s.key_size));
    let opts = LoadOpts {
        duration: JOIN_TIMEOUT,
        warmup: Duration::ZERO,
        stop: Some(stop.clone()),
        progress: false,
        ..super::load_opts(s, keys)
    };
    let load_started = Instant::now();
    let load = {
        let spec = spec.clone();
        std::thread::spawn(move || load::run(&spec, &opts))
    };
    std::thread::sleep(BEFORE);

    let cpu = CpuMeter::start();
    let join_at = Instant::now();
    let (slot, id) = cluster.add_joining_node()?;
    let addr = cluster.address(slot).unwrap_or_default().to_string();
    if let (Some(h), Ok(mut j)) = (cluster.handle(slot), joined.lock()) {
        j.push(h.clone());
    }
    eprintln!("node {id} joins...");
    let add = phalanx::roster::Change::Add(id, addr, String::new());
    let mut learner_everywhere_ms = None;
    loop {
        if join_at.elapsed() > JOIN_TIMEOUT {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "node {id} did not become a voter of every partition within {JOIN_TIMEOUT:?}"
            ));
        }
        let roster = handles[0].roster();
        if !roster.members.contains_key(&id)
            && let Some(h) = cluster.leader(0)
        {
            let r = futures_lite::future::block_on(h.change_roster(roster.version, add.clone()));
            if r.status != phalanx::raft::Status::Success {
                eprintln!("  add: {} ({})", r.status.name(), r.reason);
            }
        }
        let (members, voters) = membership_of(&handles, id);
        if members == s.partitions + 1 {
            learner_everywhere_ms.get_or_insert(join_at.elapsed().as_secs_f64() * 1000.0);
        }
        if voters == s.partitions + 1 {
            break;
        }
        std::thread::sleep(POLL);
    }
    let voter_ms = join_at.elapsed().as_secs_f64() * 1000.0;
    let join_cpu = cpu.percent();
    // As long again after the join, for the figures "after".
    std::thread::sleep(BEFORE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let l = load.join().map_err(|_| "the load thread panicked".to_string())??;

    // Kill an original node and time the others' failure detector.
    let victim = 1;
    let victim_id = cluster.handle(victim).map_or(0, |h| h.node_id());
    let killed_at = cluster.kill(victim)?;
    let observers: Vec<_> = cluster.handles();
    let mut suspect_ms = None;
    let down_ms = loop {
        // Suspected (or already dead: news of the death can outrun the suspicion) everywhere.
        if suspect_ms.is_none()
            && observers.iter().all(|h| h.liveness(victim_id) != phalanx::swim::Liveness::Alive)
        {
            suspect_ms = Some(killed_at.elapsed().as_secs_f64() * 1000.0);
        }
        if observers.iter().all(|h| h.down_nodes().contains(&victim_id)) {
            break Some(killed_at.elapsed().as_secs_f64() * 1000.0);
        }
        if killed_at.elapsed() > JOIN_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    drop(cluster);

    // The load's seconds before the join, during it, and after it.
    let second = |t: Instant| (t.saturating_duration_since(load_started).as_secs()) as usize;
    let joined = join_at + Duration::from_secs_f64(voter_ms / 1000.0);
    let seconds = l.per_second.as_slice();
    let before = window(seconds, 0, second(join_at));
    let during = window(seconds, second(join_at), second(joined) + 1);
    // The seconds after the join while the load still ran at full strength (not the
    // partial seconds of its stop).
    let after = window(seconds, second(joined) + 1, second(joined) + 1 + BEFORE.as_secs() as usize - 1);
    let bytes = u64::from(s.partitions) * keys_per_partition * s.join_value_bytes as u64;

    let mut r = Report { meta: super::meta(s), load: Some(l), ..Default::default() };
    r.cpu_percent = Some(join_cpu);
    r.rss_bytes = proc_stats::peak_rss_bytes();
    r.pass = Some(down_ms.is_some());
    for (k, v) in [
        ("join_data_bytes", json!(bytes)),
        ("fill_secs", json!(fill_secs)),
        ("joined_node", json!(id)),
        ("learner_everywhere_ms", json!(learner_everywhere_ms)),
        ("voter_everywhere_ms", json!(voter_ms)),
        ("before", before.to_json()),
        ("during", during.to_json()),
        ("after", after.to_json()),
        ("killed_node", json!(victim_id)),
        ("kill_to_suspect_ms", json!(suspect_ms)),
        ("kill_to_down_ms", json!(down_ms)),
        ("election_timeout_ms", json!([s.tick_ms * 10, s.tick_ms * 20])),
    ] {
        r.extra.insert(k.into(), v);
    }
    r.lines.push(format!(
        "  node {id} joined a cluster holding {} MiB in {} partitions: a learner everywhere after {}, a voter \
         everywhere after {voter_ms:.0} ms",
        bytes >> 20,
        s.partitions + 1,
        learner_everywhere_ms.map_or("-".into(), |m| format!("{m:.0} ms")),
    ));
    r.lines.push(format!(
        "{:>10} {:>8} {:>12} {:>12} {:>12}",
        "", "seconds", "ops/s (med)", "p99 µs (med)", "p99 µs (max)"
    ));
    for (name, w) in [("before", &before), ("during", &during), ("after", &after)] {
        r.lines.push(format!(
            "{name:>10} {:>8} {:>12.0} {:>12} {:>12}",
            w.seconds, w.ops_median, w.p99_median_us, w.p99_max_us
        ));
    }
    r.lines.push(match down_ms {
        Some(ms) => format!(
            "  node {victim_id} killed: suspect on every other node after {}, down after {ms:.0} ms",
            suspect_ms.map_or("-".into(), |m| format!("{m:.0} ms"))
        ),
        None => format!("  node {victim_id} killed: not called down within {JOIN_TIMEOUT:?}"),
    });
    Ok(r)
}

/// How many partitions have `id` as a member, and as a voter, by their leaders' reports
/// (one status request per node).
fn membership_of(handles: &[phalanx::NodeHandle], id: u64) -> (u32, u32) {
    let mut members = 0;
    let mut voters = 0;
    for h in handles {
        for st in futures_lite::future::block_on(h.status()).into_iter().filter(|st| st.is_leader) {
            members += u32::from(st.membership.contains(id));
            voters += u32::from(st.membership.voters.contains(&id));
        }
    }
    (members, voters)
}

/// Seconds of a load, summarized.
struct Window {
    seconds: usize,
    ops_median: f64,
    p99_median_us: u64,
    p99_max_us: u64,
}

impl Window {
    fn to_json(&self) -> serde_json::Value {
        json!({"seconds": self.seconds, "ops_per_sec_median": self.ops_median,
               "p99_us_median": self.p99_median_us, "p99_us_max": self.p99_max_us})
    }
}

/// The seconds `from..to` of `seconds`.
fn window(seconds: &[SecondStats], from: usize, to: usize) -> Window {
    let w = &seconds[from.min(seconds.len())..to.min(seconds.len())];
    let mut ops: Vec<u64> = w.iter().map(|x| x.ops).collect();
    let mut p99: Vec<u64> = w.iter().map(|x| x.p99_us).collect();
    ops.sort_unstable();
    p99.sort_unstable();
    Window {
        seconds: w.len(),
        ops_median: ops.get(ops.len() / 2).copied().unwrap_or(0) as f64,
        p99_median_us: p99.get(p99.len() / 2).copied().unwrap_or(0),
        p99_max_us: p99.last().copied().unwrap_or(0),
    }
}
