//! The scenarios (`--scenario`): each builds its cluster (or reaches the remote one), runs,
//! and returns a [`Report`]. The cluster is dropped on every path, errors included, which
//! stops its nodes and removes its temporary directory.

pub mod failover;
pub mod idle;
pub mod join;
pub mod recovery;
pub mod throughput;

use std::sync::Arc;
use std::time::Duration;

use phalanx::StateMachineFactory;
use phalanx::kv::KvStateMachine;

use crate::cli::{ModeArg, Settings};
use crate::cluster::{ClusterOpts, EmbeddedCluster};
use crate::report::{Meta, Report};

/// How long a fresh cluster may take to elect every leader: generous, elections of many
/// partitions on a busy 2-core machine are slow.
pub fn leader_timeout(partitions: u32) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(u64::from(partitions) * 20)
}

/// The transport as reports name it: `tcp`, `tcp+tls`, `tcp+secret`, `tcp+tls+secret`, `memory`.
pub fn transport_name(s: &Settings) -> String {
    let mut t = s.transport.name().to_string();
    if s.tls {
        t.push_str("+tls");
    }
    if s.node_secret {
        t.push_str("+secret");
    }
    t
}

/// Starts the embedded cluster `s` describes (with `partitions`), waits for every leader,
/// and optionally spreads leadership evenly.
pub fn start_cluster(s: &Settings, partitions: u32, balance: bool) -> Result<EmbeddedCluster, String> {
    let opts = ClusterOpts {
        nodes: s.nodes,
        cores_per_node: s.cores_per_node,
        executors: s.executors,
        partitions,
        transport: s.transport,
        wal: s.wal,
        sync_writes: s.sync_writes,
        tick_ms: s.tick_ms,
        quiesce_after_ms: s.quiesce_after_ms,
        tls: s.tls,
        node_secret: s.node_secret,
    };
    let sms: StateMachineFactory = Arc::new(|_| Box::new(KvStateMachine::new()));
    eprintln!(
        "starting {} nodes x {} cores{}, {} partitions ({} transport, {} WAL{})...",
        s.nodes,
        s.cores_per_node,
        if s.executors > 0 { format!(" on {} shared executors", s.executors) } else { String::new() },
        partitions,
        transport_name(s),
        s.wal.name(),
        if s.sync_writes { ", fsync" } else { ", no fsync" }
    );
    let cluster = EmbeddedCluster::start(&opts, sms)?;
    cluster.wait_for_leaders(leader_timeout(partitions))?;
    if balance {
        cluster.balance_leaders(leader_timeout(partitions))?;
    }
    Ok(cluster)
}

/// Replicas quiesced on the cluster's running nodes, from their statistics.
pub fn quiesced_replicas(cluster: &EmbeddedCluster) -> usize {
    cluster.handles().iter().map(|h| futures_lite::future::block_on(h.stats()).core().quiesced).sum()
}

/// The load `s` describes on `keys`: its clients, workload, pacing, duration and warm-up,
/// with the live progress line (scenarios change what they measure differently).
pub fn load_opts(s: &Settings, keys: Arc<crate::keys::KeySpace>) -> crate::load::LoadOpts {
    crate::load::LoadOpts {
        clients: s.clients,
        drivers: s.drivers,
        workload: s.workload,
        read_ratio: s.read_ratio,
        value_size: s.value_size,
        batch: s.batch,
        keys,
        pacing: s.pacing,
        duration: s.duration,
        warmup: s.warmup,
        checkpoint_every: s.checkpoint_every,
        stop: None,
        stop_after_ops: None,
        progress: true,
    }
}

/// The report's fixed fields for `s`.
pub fn meta(s: &Settings) -> Meta {
    let remote = s.mode == ModeArg::Remote;
    Meta {
        scenario: s.scenario.name().into(),
        profile: s.profile.name().into(),
        mode: if remote { "remote".into() } else { "embedded".into() },
        nodes: s.nodes,
        cores_per_node: if remote { 0 } else { s.cores_per_node },
        executors: if remote { 0 } else { s.executors },
        partitions: s.partitions,
        clients: s.clients,
        drivers: s.drivers,
        workload: s.workload.name().into(),
        read_ratio: s.read_ratio,
        value_size: s.value_size,
        key_size: s.key_size,
        batch: s.batch,
        checkpoint_every: s.checkpoint_every,
        pacing: s.pacing.name().into(),
        target_rate: s.pacing.rate(),
        transport: if remote { "remote".into() } else { transport_name(s) },
        wal: if remote { "remote".into() } else { s.wal.name().into() },
        sync_writes: (!remote).then_some(s.sync_writes),
        smoke: s.smoke,
    }
}

/// Quantiles of a set of millisecond samples: (p50, p99, max).
#[must_use]
pub fn quantiles_ms(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[(((v.len() - 1) as f64) * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Runs the scenario `s` asks for.
pub fn run(s: &Settings) -> Result<Vec<Report>, String> {
    match s.scenario {
        crate::cli::ScenarioArg::Throughput => throughput::run(s),
        crate::cli::ScenarioArg::Idle => idle::run(s).map(|r| vec![r]),
        crate::cli::ScenarioArg::Failover => failover::run(s).map(|r| vec![r]),
        crate::cli::ScenarioArg::Recovery => recovery::run(s).map(|r| vec![r]),
        crate::cli::ScenarioArg::Join => join::run(s).map(|r| vec![r]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_samples() {
        assert_eq!(quantiles_ms(&[]), (0.0, 0.0, 0.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let (p50, p99, max) = quantiles_ms(&v);
        assert!((50.0..=51.0).contains(&p50));
        assert_eq!((p99, max), (99.0, 100.0));
    }
}
