//! `phalanx-bench`: the bundled load generator.
//!
//! With no subcommand it runs the main job: an embedded 3-node cluster in this process,
//! real TCP on loopback, the native WAL with fsync on every replica, 64 partitions, 256
//! closed-loop clients writing 256-byte entries — and prints throughput and latency.
//! `phalanx-bench --help` lists the knobs; `bench/README.md` documents every figure.

mod cluster;
mod load;
mod proc_stats;
mod report;
mod storage;

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use phalanx::StateMachineFactory;
use phalanx::kv::KvStateMachine;
use phalanx_storage::StorageKind;

use cluster::{ClusterOpts, EmbeddedCluster, TransportKind};
use load::{KeyDistribution, LoadOpts, Workload};
use report::Report;

/// mimalloc: the engine allocates and frees many small buffers on every shard thread at
/// once; glibc's allocator spent a third of the benchmark's CPU time in malloc/free and
/// consolidation, mimalloc's per-thread heaps avoid that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Phalanx load generator.
#[derive(Parser, Debug)]
#[command(name = "phalanx-bench", version, about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Another benchmark instead of the cluster load.
    #[command(subcommand)]
    command: Option<Command>,
    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards (cores) per node.
    #[arg(long, default_value_t = 1)]
    cores_per_node: usize,
    /// User partitions.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Threads the clients run on.
    #[arg(long, default_value_t = 2)]
    drivers: usize,
    /// Request type.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Append)]
    workload: WorkloadArg,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Entries per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How requests pick partitions.
    #[arg(long, value_enum, default_value_t = KeysArg::Uniform)]
    keys: KeysArg,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured seconds before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Transport between the embedded nodes.
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// Log store: wal, rocksdb, sqlite, memory.
    #[arg(long, default_value = "wal")]
    wal: String,
    /// fsync every WAL batch (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sync_writes: bool,
    /// Raft tick in milliseconds.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Benchmarks other than the default cluster load.
#[derive(Subcommand, Debug)]
enum Command {
    /// Storage adapters side by side: synced batches over 1, 64 and 1024 partitions.
    Storage(storage::StorageArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    Append,
    Put,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeysArg {
    Uniform,
    Zipfian,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransportArg {
    Tcp,
    Memory,
}

/// Log filter when `RUST_LOG` is unset. glommio's reactor reports at error level that a
/// device does not support polled IO and falls back to interrupts; that is expected on
/// most disks, so it is not shown by default.
const DEFAULT_LOG_FILTER: &str = "warn,glommio::reactor=off";

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    if let Some(Command::Storage(s)) = args.command {
        return ExitCode::from(storage::run(s));
    }
    match run(&args) {
        Ok(pass) => {
            if pass == Some(false) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("phalanx-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<Option<bool>, String> {
    if a.nodes == 0 || a.clients == 0 || a.partitions == 0 || a.cores_per_node == 0 || a.batch == 0 {
        return Err(
            "--nodes, --clients, --partitions, --cores-per-node and --batch must be at least 1".into()
        );
    }
    if a.duration_secs == 0 {
        return Err("--duration-secs must be at least 1".into());
    }
    let wal = StorageKind::parse(&a.wal)
        .filter(|k| StorageKind::built().contains(k))
        .ok_or_else(|| format!("--wal {:?}: not an adapter of this build", a.wal))?;
    let transport = match a.transport {
        TransportArg::Tcp => TransportKind::Tcp,
        TransportArg::Memory => TransportKind::Memory,
    };
    let copts = ClusterOpts {
        nodes: a.nodes,
        cores_per_node: a.cores_per_node,
        partitions: a.partitions,
        transport,
        wal,
        sync_writes: a.sync_writes,
        tick_ms: a.tick_ms,
    };
    let sms: StateMachineFactory = Arc::new(|_| Box::new(KvStateMachine::new()));
    eprintln!(
        "starting {} nodes x {} cores, {} partitions ({:?} transport, {} WAL)...",
        a.nodes,
        a.cores_per_node,
        a.partitions,
        transport,
        wal.name()
    );
    let cluster = EmbeddedCluster::start(&copts, sms)?;
    cluster.wait_for_leaders(Duration::from_secs(30))?;
    cluster.balance_leaders(Duration::from_secs(30))?;
    let lopts = LoadOpts {
        clients: a.clients,
        drivers: a.drivers,
        workload: match a.workload {
            WorkloadArg::Append => Workload::Append,
            WorkloadArg::Put => Workload::Put,
        },
        value_size: a.value_size,
        batch: a.batch,
        keys: match a.keys {
            KeysArg::Uniform => KeyDistribution::Uniform,
            KeysArg::Zipfian => KeyDistribution::Zipfian,
        },
        partitions: a.partitions,
        duration: Duration::from_secs(a.duration_secs),
        warmup: Duration::from_secs(a.warmup_secs),
    };
    let cpu = proc_stats::CpuMeter::start();
    let load = load::run(cluster.handles(), &lopts)?;
    let cpu_percent = cpu.percent();
    cluster.shutdown();
    let report = Report {
        scenario: "throughput".into(),
        profile: "custom".into(),
        mode: "embedded".into(),
        nodes: a.nodes,
        cores_per_node: a.cores_per_node,
        partitions: a.partitions,
        clients: a.clients,
        value_size: a.value_size,
        batch: a.batch,
        workload: format!("{:?}", a.workload).to_lowercase(),
        transport: format!("{:?}", a.transport).to_lowercase(),
        wal: wal.name().into(),
        sync_writes: a.sync_writes,
        load,
        cpu_percent,
        rss_bytes: proc_stats::peak_rss_bytes(),
        pass: None,
    };
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report.pass)
}
