//! Command line: the flags, and their resolution into [`Settings`] — profile and scenario
//! defaults applied, every number checked, every bad combination refused with a message
//! that names the flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use phalanx_storage::StorageKind;

use crate::cluster::TransportKind;
use crate::keys::KeyDistribution;
use crate::load::{Pacing, Workload};
use crate::profiles::{self, Profile};

/// Phalanx load generator: an embedded cluster (default) or running nodes (remote mode),
/// closed- or open-loop load, peer-shaped profiles, and the idle, failover and recovery
/// scenarios. `bench/README.md` documents every figure and how to reproduce it.
#[derive(Parser, Debug)]
#[command(
    name = "phalanx-bench",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Another benchmark instead of the cluster load.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where the cluster runs: embedded (nodes in this process) or remote (running `phalanx
    /// node` processes, reached through their client ports).
    #[arg(long, value_enum, default_value_t = ModeArg::Embedded, help_heading = "Target")]
    pub mode: ModeArg,
    /// Client ports of the remote nodes, comma separated (remote mode).
    #[arg(long, value_delimiter = ',', help_heading = "Target")]
    pub endpoints: Vec<String>,
    /// Connections per endpoint per driver thread (remote mode); requests are pipelined.
    #[arg(long, default_value_t = 1, help_heading = "Target")]
    pub connections: usize,

    /// What to measure.
    #[arg(long, value_enum, default_value_t = ScenarioArg::Throughput, help_heading = "Scenario")]
    pub scenario: ScenarioArg,
    /// A peer's published benchmark shape: etcd-s, etcd-m, etcd-l, etcd-xl (etcd `check
    /// perf`, PASS/FAIL as etcd prints it) or openraft (a sweep of clients x batch).
    #[arg(long, default_value = "custom", help_heading = "Scenario")]
    pub profile: String,
    /// Short runs for CI: every scenario in seconds.
    #[arg(long, help_heading = "Scenario")]
    pub smoke: bool,
    /// Also measure one fsync and one loopback round trip in this run (to compare
    /// single-client latency with them).
    #[arg(long, help_heading = "Scenario")]
    pub probes: bool,

    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3, help_heading = "Embedded cluster")]
    pub nodes: u64,
    /// Shards (cores) per node.
    #[arg(long, default_value_t = 1, help_heading = "Embedded cluster")]
    pub cores_per_node: usize,
    /// Executor threads every node's shards share (0: each node runs its own, one per
    /// shard) [default: one per CPU this process may use, at most one per shard; openraft: 1].
    /// Nodes are placed round-robin: shard i of node k on executor (k x cores-per-node + i)
    /// mod N.
    #[arg(long, help_heading = "Embedded cluster")]
    pub executors: Option<usize>,
    /// User partitions [default: 64; idle: 10000; openraft: 1, its one Raft group; remote: the
    /// cluster's].
    #[arg(long, help_heading = "Embedded cluster")]
    pub partitions: Option<u32>,
    /// Transport between the embedded nodes [default: tcp; openraft: memory].
    #[arg(long, value_enum, help_heading = "Embedded cluster")]
    pub transport: Option<TransportArg>,
    /// Log store: wal, rocksdb, sqlite, memory [default: wal; openraft: memory].
    #[arg(long, help_heading = "Embedded cluster")]
    pub wal: Option<String>,
    /// fsync every WAL batch.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, help_heading = "Embedded cluster")]
    pub sync_writes: bool,
    /// Raft tick in milliseconds (heartbeat 2 ticks, election timeout 10-20 ticks).
    #[arg(long, default_value_t = 50, help_heading = "Embedded cluster")]
    pub tick_ms: u64,
    /// Quiesce partitions idle this many ms (the engine's default); 0 never quiesces (to
    /// measure side by side).
    #[arg(long, default_value_t = phalanx::config::DEFAULT_QUIESCE_AFTER_MS, help_heading = "Embedded cluster")]
    pub quiesce_after_ms: u64,
    /// Mutual TLS between the embedded nodes (certificates from a throwaway CA made for the
    /// run), to measure its cost side by side with a run without.
    #[arg(long, help_heading = "Embedded cluster")]
    pub tls: bool,
    /// Shared-secret authentication of the embedded nodes' handshakes (a secret made for the
    /// run).
    #[arg(long, help_heading = "Embedded cluster")]
    pub node_secret: bool,

    /// Request type [default: append; etcd profiles: put].
    #[arg(long, value_enum, help_heading = "Load")]
    pub workload: Option<WorkloadArg>,
    /// Share of gets in the mix workload (0..=1).
    #[arg(long, default_value_t = 0.5, help_heading = "Load")]
    pub read_ratio: f64,
    /// Concurrent clients [default: 256; etcd profiles: 50/200/500/1000; openraft: the sweep].
    #[arg(long, help_heading = "Load")]
    pub clients: Option<usize>,
    /// Open loop: target requests/s, latency from each request's scheduled start. Without
    /// it, closed loop.
    #[arg(long, help_heading = "Load")]
    pub rate: Option<f64>,
    /// Threads the clients run on [default: 1 embedded, 2 remote].
    #[arg(long, help_heading = "Load")]
    pub drivers: Option<usize>,
    /// Value (payload) bytes [default: 256; etcd: 1024; openraft: 0].
    #[arg(long, help_heading = "Load")]
    pub value_size: Option<usize>,
    /// Key bytes of put/get [default: 16; etcd: 256].
    #[arg(long, help_heading = "Load")]
    pub key_size: Option<usize>,
    /// Distinct keys per partition (puts overwrite them; gets read them).
    #[arg(long, default_value_t = 1000, help_heading = "Load")]
    pub keys_per_partition: u64,
    /// Entries per request [default: 1; openraft: the sweep 1 and 4].
    #[arg(long, help_heading = "Load")]
    pub batch: Option<usize>,
    /// An application's checkpoint policy: after every N entries written to a partition, the
    /// client that wrote the Nth asks for a checkpoint there, and the log is compacted behind
    /// it (0: never, the log grows for the whole run) [default: 0; openraft: 5000, openraft's
    /// snapshot policy].
    #[arg(long, help_heading = "Load")]
    pub checkpoint_every: Option<u64>,
    /// How requests pick partitions.
    #[arg(long, value_enum, default_value_t = KeysArg::Uniform, help_heading = "Load")]
    pub keys: KeysArg,
    /// Measured seconds [default: 10; etcd: 60; openraft: 5 per row; smoke: 1-2].
    #[arg(long, help_heading = "Load")]
    pub duration_secs: Option<f64>,
    /// Unmeasured seconds before measuring [default: 2; etcd: 0].
    #[arg(long, help_heading = "Load")]
    pub warmup_secs: Option<f64>,

    /// Recovery: entries written before the node is stopped [default: 100000; smoke: 2000].
    #[arg(long, help_heading = "Recovery")]
    pub entries: Option<u64>,
    /// Recovery: entries written while the node is down (it must catch up on them).
    #[arg(long, default_value_t = 0, help_heading = "Recovery")]
    pub lag_entries: u64,

    /// Join: bytes of values the cluster holds when the new node joins [default: 1 GiB;
    /// smoke: 4 MiB].
    #[arg(long, help_heading = "Join")]
    pub join_data_bytes: Option<u64>,
    /// Join: bytes of each of those values [default: 65536; smoke: 4096].
    #[arg(long, help_heading = "Join")]
    pub join_value_bytes: Option<usize>,

    /// Write every figure as JSON to this file (fields: bench/README.md).
    #[arg(long, help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (latency percentiles and throughput per second; failover: time per
    /// partition).
    #[arg(long, help_heading = "Output")]
    pub plot: Option<PathBuf>,
}

/// Benchmarks other than the cluster load.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Storage adapters side by side: synced batches over 1, 64 and 1024 partitions.
    Storage(crate::storage::StorageArgs),
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Nodes in this process.
    Embedded,
    /// Running nodes' client ports.
    Remote,
}

/// `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// Load and measure throughput and latency.
    Throughput,
    /// K idle partitions: CPU, traffic between nodes, memory per partition.
    Idle,
    /// Kill the node leading the most partitions: time to a new leader that takes writes.
    Failover,
    /// Restart a node whose WAL holds N entries: time to ready and caught up.
    Recovery,
    /// A new node joins a loaded cluster holding data: time to voter everywhere, the load
    /// before and during; then time from a kill to `down`.
    Join,
}

impl ScenarioArg {
    /// The name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ScenarioArg::Throughput => "throughput",
            ScenarioArg::Idle => "idle",
            ScenarioArg::Failover => "failover",
            ScenarioArg::Recovery => "recovery",
            ScenarioArg::Join => "join",
        }
    }
}

/// `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Raw log appends.
    Append,
    /// Key-value puts.
    Put,
    /// Linearizable key-value gets.
    Get,
    /// Gets and puts (--read-ratio).
    Mix,
}

/// `--keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeysArg {
    /// Every partition equally.
    Uniform,
    /// Zipfian (s = 0.99) over partitions.
    Zipfian,
}

/// `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// TCP on loopback (io_uring).
    Tcp,
    /// In-process.
    Memory,
}

/// Everything a run needs, defaults resolved and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Embedded or remote.
    pub mode: ModeArg,
    /// Remote endpoints.
    pub endpoints: Vec<String>,
    /// Remote connections per endpoint per driver.
    pub connections: usize,
    /// Scenario.
    pub scenario: ScenarioArg,
    /// Profile.
    pub profile: Profile,
    /// CI-sized run.
    pub smoke: bool,
    /// Run the fsync and loopback probes.
    pub probes: bool,
    /// Embedded nodes.
    pub nodes: u64,
    /// Shards per node.
    pub cores_per_node: usize,
    /// Executor threads the nodes share (0: one per shard, each node its own).
    pub executors: usize,
    /// User partitions (embedded), or the requested count (remote: from the cluster).
    pub partitions: u32,
    /// Embedded transport.
    pub transport: TransportKind,
    /// Embedded log store.
    pub wal: StorageKind,
    /// fsync every batch.
    pub sync_writes: bool,
    /// Raft tick.
    pub tick_ms: u64,
    /// Idle period before a partition quiesces, ms (0: never).
    pub quiesce_after_ms: u64,
    /// Mutual TLS between the embedded nodes.
    pub tls: bool,
    /// Shared-secret node authentication.
    pub node_secret: bool,
    /// Workload.
    pub workload: Workload,
    /// Share of gets (mix).
    pub read_ratio: f64,
    /// Clients (the openraft sweep uses `sweep_clients`).
    pub clients: usize,
    /// Pacing.
    pub pacing: Pacing,
    /// Driver threads.
    pub drivers: usize,
    /// Value bytes.
    pub value_size: usize,
    /// Key bytes.
    pub key_size: usize,
    /// Keys per partition.
    pub keys_per_partition: u64,
    /// Entries per request.
    pub batch: usize,
    /// Entries per partition between checkpoints (0: none).
    pub checkpoint_every: u64,
    /// Partition choice.
    pub keys: KeyDistribution,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Recovery: entries before the stop.
    pub entries: u64,
    /// Recovery: entries while down.
    pub lag_entries: u64,
    /// Join: bytes of data the cluster holds.
    pub join_data_bytes: u64,
    /// Join: bytes of each value of that data.
    pub join_value_bytes: usize,
    /// openraft sweep: clients.
    pub sweep_clients: Vec<usize>,
    /// openraft sweep: batches.
    pub sweep_batches: Vec<usize>,
    /// JSON output.
    pub json: Option<PathBuf>,
    /// SVG output.
    pub plot: Option<PathBuf>,
}

/// Largest value accepted by `--value-size` (the engine's default entry limit is 8 MiB).
const MAX_VALUE_BYTES: usize = 8 << 20;
/// Largest key (the key-value state machine's limit).
const MAX_KEY_BYTES: usize = phalanx::kv::MAX_KEY_BYTES;
/// Most clients (each is a task; remote mode multiplexes them over few connections).
const MAX_CLIENTS: usize = 100_000;
/// Largest `--checkpoint-every` (a billion entries per partition is "never" in practice).
const MAX_CHECKPOINT_EVERY: u64 = 1_000_000_000;
/// Most driver threads.
const MAX_DRIVERS: usize = 64;
/// Driver threads of an embedded run unless `--drivers` says otherwise. One thread runs 256
/// closed-loop clients on ~7% of a core; a second only competes with the nodes under test
/// for the machine's cores (measured on 2 vCPUs, 6 runs each side by side: 82.4k writes/s
/// with 2 drivers, 94.5k with 1).
const DEFAULT_EMBEDDED_DRIVERS: usize = 1;
/// Driver threads of a remote run: each drives its own connections to every endpoint.
const DEFAULT_REMOTE_DRIVERS: usize = 2;

/// Executors of an embedded cluster of `shards` shards unless `--executors` says otherwise:
/// one per CPU this process may use, at most one per shard. One thread per shard on fewer
/// CPUs only adds context switches and cross-thread wake-ups (`bench/README.md`, "Nodes
/// sharing executors").
fn default_executors(shards: usize) -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(shards).max(1)
}

fn secs(v: f64, flag: &str) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{flag} {v}: expected seconds between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Settings {
    /// Resolves defaults and checks every value.
    pub fn from_args(a: &Args) -> Result<Settings, String> {
        let profile = Profile::parse(&a.profile)?;
        let scenario = a.scenario;
        let smoke = a.smoke;
        if profile != Profile::Custom && scenario != ScenarioArg::Throughput {
            return Err(format!(
                "--profile {} is a throughput shape; it does not apply to --scenario {}",
                profile.name(),
                scenario.name()
            ));
        }
        if a.mode == ModeArg::Remote {
            if scenario != ScenarioArg::Throughput {
                return Err(format!(
                    "--scenario {} needs --mode embedded: it stops and starts nodes, and remote mode starts and kills nothing",
                    scenario.name()
                ));
            }
            if profile == Profile::Openraft {
                return Err("--profile openraft is 3 nodes in one process: it needs --mode embedded".into());
            }
            if a.endpoints.is_empty() {
                return Err("--mode remote needs --endpoints HOST:PORT[,HOST:PORT...]".into());
            }
            if a.partitions.is_some() {
                return Err("--partitions: in remote mode the cluster's own partition count is used".into());
            }
            if a.probes {
                return Err("--probes measures this machine's disk: it needs --mode embedded".into());
            }
        } else if !a.endpoints.is_empty() {
            return Err("--endpoints is for --mode remote".into());
        }
        for e in &a.endpoints {
            if e.rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()).flatten())
                .is_none()
            {
                return Err(format!("--endpoints: {e:?} is not HOST:PORT"));
            }
        }
        if a.nodes == 0 || a.nodes > 15 {
            return Err(format!("--nodes {}: expected 1..=15", a.nodes));
        }
        if a.cores_per_node == 0 || a.cores_per_node > phalanx::config::MAX_SHARDS {
            return Err(format!(
                "--cores-per-node {}: expected 1..={}",
                a.cores_per_node,
                phalanx::config::MAX_SHARDS
            ));
        }
        if let Some(e) = a.executors {
            if e > phalanx::runtime::executors::MAX_EXECUTORS {
                return Err(format!(
                    "--executors {e}: expected 0..={}",
                    phalanx::runtime::executors::MAX_EXECUTORS
                ));
            }
            if a.mode == ModeArg::Remote {
                return Err("--executors places embedded nodes: it needs --mode embedded".into());
            }
        }
        if a.tick_ms == 0 || a.tick_ms > 60_000 {
            return Err(format!("--tick-ms {}: expected 1..=60000", a.tick_ms));
        }
        if let Some(d) = a.drivers
            && (d == 0 || d > MAX_DRIVERS)
        {
            return Err(format!("--drivers {d}: expected 1..={MAX_DRIVERS}"));
        }
        if a.connections == 0 || a.connections > 1024 {
            return Err(format!("--connections {}: expected 1..=1024", a.connections));
        }
        if !(0.0..=1.0).contains(&a.read_ratio) {
            return Err(format!("--read-ratio {}: expected 0..=1", a.read_ratio));
        }
        if a.keys_per_partition == 0 || a.keys_per_partition > 10_000_000 {
            return Err(format!("--keys-per-partition {}: expected 1..=10000000", a.keys_per_partition));
        }
        let etcd = profile.etcd();
        let openraft = profile == Profile::Openraft;
        let partitions = match a.partitions {
            Some(0) => return Err("--partitions must be at least 1".into()),
            Some(p) if p > phalanx::config::MAX_PARTITIONS => {
                return Err(format!("--partitions {p}: at most {}", phalanx::config::MAX_PARTITIONS));
            }
            Some(p) => p,
            // openraft's benchmark drives one Raft group through its leader.
            None if openraft => 1,
            None => match (scenario, smoke) {
                (ScenarioArg::Idle, false) => 10_000,
                (ScenarioArg::Idle, true) => 200,
                (ScenarioArg::Failover | ScenarioArg::Recovery | ScenarioArg::Join, true) => 8,
                _ => 64,
            },
        };
        let transport = match (a.transport, openraft) {
            (Some(TransportArg::Tcp), _) | (None, false) => TransportKind::Tcp,
            (Some(TransportArg::Memory), _) | (None, true) => TransportKind::Memory,
        };
        if (a.tls || a.node_secret) && (transport != TransportKind::Tcp || a.mode == ModeArg::Remote) {
            return Err("--tls and --node-secret secure the embedded nodes' TCP transport (not --transport memory or --mode remote)".into());
        }
        let wal_name = a.wal.clone().unwrap_or_else(|| if openraft { "memory".into() } else { "wal".into() });
        let wal =
            StorageKind::parse(&wal_name).filter(|k| StorageKind::built().contains(k)).ok_or_else(|| {
                format!(
                    "--wal {wal_name:?}: not an adapter of this build (wal, memory, and the features built)"
                )
            })?;
        let workload = match a.workload {
            Some(WorkloadArg::Append) => Workload::Append,
            Some(WorkloadArg::Put) => Workload::Put,
            Some(WorkloadArg::Get) => Workload::Get,
            Some(WorkloadArg::Mix) => Workload::Mix,
            None if etcd.is_some() => Workload::Put,
            None => Workload::Append,
        };
        if etcd.is_some() && workload != Workload::Put {
            return Err("etcd's check perf writes: the etcd profiles run --workload put".into());
        }
        let clients = a.clients.or(etcd.map(|e| e.clients)).unwrap_or(256);
        if clients == 0 || clients > MAX_CLIENTS {
            return Err(format!("--clients {clients}: expected 1..={MAX_CLIENTS}"));
        }
        let pacing = match (a.rate, etcd) {
            (Some(r), _) if !r.is_finite() || r <= 0.0 || r > 1e9 => {
                return Err(format!("--rate {r}: expected requests per second above 0"));
            }
            (Some(r), Some(_)) => Pacing::Limited { rate: r },
            (Some(r), None) => Pacing::Open { rate: r },
            (None, Some(e)) => Pacing::Limited { rate: e.rate },
            (None, None) => Pacing::Closed,
        };
        if openraft && a.rate.is_some() {
            return Err("--profile openraft is closed loop; drop --rate".into());
        }
        let value_size = a.value_size.unwrap_or(if etcd.is_some() {
            profiles::ETCD_VALUE_BYTES
        } else if openraft {
            0
        } else {
            256
        });
        if value_size > MAX_VALUE_BYTES {
            return Err(format!("--value-size {value_size}: at most {MAX_VALUE_BYTES}"));
        }
        let key_size = a.key_size.unwrap_or(if etcd.is_some() { profiles::ETCD_KEY_BYTES } else { 16 });
        if key_size == 0 || key_size > MAX_KEY_BYTES {
            return Err(format!("--key-size {key_size}: expected 1..={MAX_KEY_BYTES}"));
        }
        let batch = a.batch.unwrap_or(1);
        if batch == 0 || batch > 10_000 {
            return Err(format!("--batch {batch}: expected 1..=10000"));
        }
        if workload == Workload::Get && a.batch.is_some_and(|b| b > 1) {
            return Err("--batch applies to writes; a get reads one key".into());
        }
        let default_duration = match (smoke, etcd.is_some(), openraft, scenario) {
            (true, true, _, _) => 2.0,
            (true, _, true, _) => 0.5,
            (true, ..) => 1.0,
            (false, true, _, _) => profiles::ETCD_DURATION_SECS,
            (false, _, true, _) => 5.0,
            _ => 10.0,
        };
        let duration = secs(a.duration_secs.unwrap_or(default_duration), "--duration-secs")?;
        if duration.is_zero() {
            return Err("--duration-secs must be above 0".into());
        }
        // etcd's check perf measures from its first request: no warm-up.
        let default_warmup = match (smoke, etcd.is_some(), openraft) {
            (_, true, _) => 0.0,
            (true, _, true) => 0.2,
            (true, ..) => 0.5,
            (false, _, true) => 1.0,
            _ => 2.0,
        };
        let warmup = secs(a.warmup_secs.unwrap_or(default_warmup), "--warmup-secs")?;
        let entries = a.entries.unwrap_or(if smoke { 2_000 } else { 100_000 });
        if scenario == ScenarioArg::Recovery && entries == 0 {
            return Err("--entries must be at least 1".into());
        }
        if scenario == ScenarioArg::Failover && a.nodes < 3 {
            return Err("--scenario failover needs --nodes 3 or more (a majority must survive)".into());
        }
        let join_data_bytes = a.join_data_bytes.unwrap_or(if smoke { 4 << 20 } else { 1 << 30 });
        let join_value_bytes = a.join_value_bytes.unwrap_or(if smoke { 4096 } else { 65_536 });
        if join_value_bytes == 0 || join_value_bytes > MAX_VALUE_BYTES {
            return Err(format!("--join-value-bytes {join_value_bytes}: expected 1..={MAX_VALUE_BYTES}"));
        }
        if join_data_bytes > 64 << 30 {
            return Err(format!("--join-data-bytes {join_data_bytes}: at most 64 GiB"));
        }
        if scenario == ScenarioArg::Join && a.nodes < 3 {
            return Err("--scenario join needs --nodes 3 or more (one is killed at the end)".into());
        }
        if scenario == ScenarioArg::Recovery && a.nodes < 2 {
            return Err("--scenario recovery needs --nodes 2 or more".into());
        }
        if a.plot.is_some()
            && matches!(scenario, ScenarioArg::Idle | ScenarioArg::Recovery | ScenarioArg::Join)
        {
            return Err(format!(
                "--plot: the {} scenario has no load or per-partition times to plot",
                scenario.name()
            ));
        }
        let sweep_clients = match a.clients {
            Some(c) => vec![c],
            None => profiles::OPENRAFT_CLIENTS.to_vec(),
        };
        let sweep_batches = match a.batch {
            Some(b) => vec![b],
            None => profiles::OPENRAFT_BATCHES.to_vec(),
        };
        let checkpoint_every =
            a.checkpoint_every.unwrap_or(if openraft { profiles::OPENRAFT_CHECKPOINT_EVERY } else { 0 });
        if checkpoint_every > MAX_CHECKPOINT_EVERY {
            return Err(format!(
                "--checkpoint-every {checkpoint_every}: at most {MAX_CHECKPOINT_EVERY} (0: never)"
            ));
        }
        if openraft && a.plot.is_some() {
            return Err("--plot: the openraft sweep is a table; plot one row with --profile custom".into());
        }
        Ok(Settings {
            mode: a.mode,
            endpoints: a.endpoints.clone(),
            connections: a.connections,
            scenario,
            profile,
            smoke,
            probes: a.probes,
            nodes: a.nodes,
            cores_per_node: a.cores_per_node,
            executors: match (a.executors, a.mode) {
                (Some(e), _) => e,
                (None, ModeArg::Remote) => 0,
                (None, ModeArg::Embedded) if openraft => profiles::OPENRAFT_EXECUTORS,
                (None, ModeArg::Embedded) => default_executors(a.nodes as usize * a.cores_per_node),
            },
            partitions,
            transport,
            wal,
            sync_writes: a.sync_writes,
            tick_ms: a.tick_ms,
            quiesce_after_ms: a.quiesce_after_ms,
            tls: a.tls,
            node_secret: a.node_secret,
            workload,
            read_ratio: if workload == Workload::Mix {
                a.read_ratio
            } else if workload == Workload::Get {
                1.0
            } else {
                0.0
            },
            clients,
            pacing,
            drivers: a.drivers.unwrap_or(match a.mode {
                ModeArg::Embedded => DEFAULT_EMBEDDED_DRIVERS,
                ModeArg::Remote => DEFAULT_REMOTE_DRIVERS,
            }),
            value_size,
            key_size,
            keys_per_partition: a.keys_per_partition,
            batch,
            checkpoint_every,
            keys: match a.keys {
                KeysArg::Uniform => KeyDistribution::Uniform,
                KeysArg::Zipfian => KeyDistribution::Zipfian,
            },
            duration,
            warmup,
            entries,
            lag_entries: a.lag_entries,
            join_data_bytes,
            join_value_bytes,
            sweep_clients,
            sweep_batches,
            json: a.json.clone(),
            plot: a.plot.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let a = Args::try_parse_from(std::iter::once("phalanx-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::from_args(&a)
    }

    #[test]
    fn defaults_are_the_quick_start_job() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.nodes, s.partitions, s.clients, s.value_size), (3, 64, 256, 256));
        assert_eq!(s.transport, TransportKind::Tcp);
        assert_eq!(s.wal, StorageKind::Wal);
        assert!(s.sync_writes);
        assert_eq!(s.pacing, Pacing::Closed);
        assert_eq!(s.duration, Duration::from_secs(10));
    }

    #[test]
    fn profiles_set_their_shapes() {
        let s = settings(&["--profile", "etcd-l"]).unwrap();
        assert_eq!((s.clients, s.value_size, s.key_size, s.workload), (500, 1024, 256, Workload::Put));
        assert_eq!(s.pacing, Pacing::Limited { rate: 8000.0 });
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.warmup, Duration::ZERO);
        let s = settings(&["--profile", "openraft"]).unwrap();
        assert_eq!((s.transport, s.wal, s.value_size), (TransportKind::Memory, StorageKind::Memory, 0));
        assert_eq!(s.sweep_clients, vec![1, 64, 256, 4096]);
        assert_eq!(s.sweep_batches, vec![1, 4]);
        assert_eq!((s.partitions, s.checkpoint_every), (1, 5_000), "one group, openraft's snapshot policy");
        assert_eq!(settings(&[]).unwrap().checkpoint_every, 0, "the quick start never checkpoints");
        let s = settings(&["--scenario", "idle"]).unwrap();
        assert_eq!(s.partitions, 10_000);
    }

    #[test]
    fn embedded_nodes_share_one_executor_per_cpu_unless_told() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(settings(&[]).unwrap().executors, cpus.min(3), "3 nodes x 1 core");
        assert_eq!(settings(&["--nodes", "1"]).unwrap().executors, 1, "never more than the shards");
        assert_eq!(settings(&["--profile", "openraft"]).unwrap().executors, 1);
        assert_eq!(settings(&["--executors", "0"]).unwrap().executors, 0, "each node its own");
        assert_eq!(settings(&["--executors", "5"]).unwrap().executors, 5);
        let remote = ["--mode", "remote", "--endpoints", "a:1"];
        assert_eq!(settings(&remote).unwrap().executors, 0, "remote nodes run where they run");
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        for (args, needle) in [
            (&["--profile", "etcd-xxl"][..], "unknown profile"),
            (&["--clients", "0"][..], "--clients"),
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "-5"][..], "--rate"),
            (&["--read-ratio", "1.5"][..], "--read-ratio"),
            (&["--duration-secs", "0"][..], "--duration-secs"),
            (&["--duration-secs", "nan"][..], "--duration-secs"),
            (&["--mode", "remote"][..], "--endpoints"),
            (&["--mode", "remote", "--endpoints", "nohost"][..], "HOST:PORT"),
            (&["--mode", "remote", "--endpoints", "a:1", "--executors", "2"][..], "--executors"),
            (&["--executors", "100000"][..], "--executors"),
            (&["--mode", "remote", "--endpoints", "a:1", "--scenario", "failover"][..], "embedded"),
            (&["--profile", "openraft", "--scenario", "idle"][..], "throughput"),
            (&["--wal", "nope"][..], "--wal"),
            (&["--partitions", "0"][..], "--partitions"),
            (&["--batch", "0"][..], "--batch"),
            (&["--checkpoint-every", "2000000000"][..], "--checkpoint-every"),
            (&["--value-size", "99999999999"][..], "--value-size"),
            (&["--scenario", "failover", "--nodes", "1"][..], "failover"),
            (&["--clients", "abc"][..], "invalid value"),
            (&["--profile", "etcd-s", "--workload", "append"][..], "put"),
        ] {
            let e = settings(args).expect_err(&format!("{args:?} must be refused"));
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
