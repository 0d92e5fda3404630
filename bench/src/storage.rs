//! `phalanx-bench storage`: the storage adapters side by side.
//!
//! Appends `--entry-bytes` (256) byte entries in synced batches of `--batch-entries` (256)
//! entries spread over 1, 64 and 1024 partitions — each touched partition also gets a hard
//! state, as a Raft leader's loop turn would — for every adapter built, interleaved so host
//! noise hits them alike. Partitions are compacted to their last `--keep-entries` entries as
//! they grow, like a node that checkpoints, so long runs stay bounded.
//!
//! Reports entries/s, MB/s (payload bytes), syncs/s, syncs per batch, and p50/p99 latency of
//! one `write` call. With `--runs N` the whole sweep repeats and every figure is the median of
//! the N runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use phalanx_proto::{EntryKind, HardState, HlcTimestamp, LogEntry};
use phalanx_storage::{AnyStore, LogStore, PartitionWrite, StorageKind, StoreOptions, WriteBatch};

/// Arguments of `phalanx-bench storage`.
#[derive(clap::Args, Clone, Debug)]
pub struct StorageArgs {
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Adapters to run, comma-separated (default: every persistent adapter built).
    #[arg(long, value_delimiter = ',')]
    pub adapters: Vec<String>,
    /// Partition counts to spread each batch over.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 64, 1024])]
    pub partitions: Vec<u64>,
    /// Entries per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_entries: usize,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 256)]
    pub entry_bytes: usize,
    /// Measured seconds per adapter and partition count.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Unmeasured seconds before each measurement. Long enough for every adapter to reach its
    /// steady state: the native WAL zero-fills its first segments, then recycles them.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_seconds: f64,
    /// Entries each partition keeps when it is compacted.
    #[arg(long, default_value_t = 1000)]
    pub keep_entries: u64,
    /// Repetitions of the whole sweep; figures are medians over them.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Where to create the stores (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Do not sync batches (never the default; for comparison only).
    #[arg(long)]
    pub no_sync: bool,
    /// raft-engine adapter only: LZ4-compress batches with more than this many bytes of
    /// entries (raft-engine's `batch-compression-threshold`; its own default is 8192). 0, the
    /// adapter's default, stores entries uncompressed like every other adapter — this
    /// benchmark's payload is one 256-byte pattern repeated in every entry, which LZ4
    /// collapses as no real log would.
    #[arg(long, default_value_t = 0)]
    pub raft_engine_compression_bytes: u64,
    /// raft-engine adapter only: bytes of zero-filled log files raft-engine prepares (and the
    /// adapter syncs) when each store opens, before the clock starts (raft-engine's
    /// `prefill-for-recycle`; default 0, off). With them raft-engine appends into files
    /// already written, as it does in its steady state once purged files are recycled — what
    /// the native WAL's segments always are. 1 GiB covers a case of this benchmark.
    #[arg(long, default_value_t = 0)]
    pub raft_engine_prefill_bytes: u64,
}

/// One measured case.
#[derive(Clone, Debug)]
struct Sample {
    entries_per_sec: f64,
    mb_per_sec: f64,
    fsyncs_per_sec: f64,
    fsyncs_per_batch: f64,
    p50_us: f64,
    p99_us: f64,
    batches: u64,
}

/// Per-partition position of the synthetic log.
struct Gen {
    partitions: u64,
    batch_entries: usize,
    keep: u64,
    last: Vec<u64>,
    floor: Vec<u64>,
    cursor: u64,
    payload: Bytes,
}

impl Gen {
    fn new(partitions: u64, batch_entries: usize, entry_bytes: usize, keep: u64) -> Self {
        let payload: Vec<u8> = (0..entry_bytes).map(|i| (i * 31 % 251) as u8).collect();
        Gen {
            partitions,
            batch_entries,
            keep,
            last: vec![0; partitions as usize],
            floor: vec![0; partitions as usize],
            cursor: 0,
            payload: payload.into(),
        }
    }

    /// The next batch: `batch_entries` entries over the partitions, round robin.
    fn next(&mut self) -> WriteBatch {
        let touched = self.partitions.min(self.batch_entries as u64);
        let mut per = vec![self.batch_entries as u64 / touched; touched as usize];
        for extra in per.iter_mut().take(self.batch_entries % touched as usize) {
            *extra += 1;
        }
        let mut batch = WriteBatch { partitions: Vec::with_capacity(touched as usize), meta: Vec::new() };
        for n in per {
            let p = self.cursor % self.partitions;
            self.cursor += 1;
            let k = p as usize;
            let mut w = PartitionWrite::new(p + 1);
            w.entries = (self.last[k] + 1..=self.last[k] + n)
                .map(|index| LogEntry {
                    term: 1,
                    index,
                    kind: EntryKind::Normal as i32,
                    log_type: "bench".into(),
                    payload: self.payload.clone(),
                    ticket: Some(HlcTimestamp { physical_ms: index, logical: 0, node_id: 1 }),
                })
                .collect();
            self.last[k] += n;
            w.hard_state = Some(HardState { term: 1, vote: 1, commit: self.last[k], recovering: false });
            if self.last[k] - self.floor[k] > 2 * self.keep {
                self.floor[k] = self.last[k] - self.keep;
                w.compact_to = Some(self.floor[k]);
            }
            batch.partitions.push(w);
        }
        batch
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Opens the store of `kind` with default options, but for the raft-engine knobs given.
async fn open_store(
    kind: StorageKind,
    dir: &std::path::Path,
    args: &StorageArgs,
) -> phalanx_storage::Result<AnyStore> {
    let opts = StoreOptions { sync_writes: !args.no_sync, faults: None };
    #[cfg(feature = "raft-engine")]
    if kind == StorageKind::RaftEngine {
        use phalanx_storage::raft_engine::{RaftEngineOptions, RaftEngineStore};
        let o = RaftEngineOptions {
            store: opts,
            batch_compression_threshold_bytes: args.raft_engine_compression_bytes,
            prefill_bytes: args.raft_engine_prefill_bytes,
            ..RaftEngineOptions::default()
        };
        return Ok(AnyStore::RaftEngine(RaftEngineStore::open_with(dir, o).await?));
    }
    AnyStore::open(kind, dir, opts).await
}

async fn measure(
    kind: StorageKind,
    partitions: u64,
    args: &StorageArgs,
    dir: PathBuf,
) -> Result<Sample, String> {
    let mut store = open_store(kind, &dir, args).await.map_err(|e| format!("{}: open: {e}", kind.name()))?;
    let mut batches_gen = Gen::new(partitions, args.batch_entries, args.entry_bytes, args.keep_entries);
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup_seconds);
    while Instant::now() < warm_until {
        store.write(&batches_gen.next()).await.map_err(|e| format!("{}: write: {e}", kind.name()))?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let before = store.stats();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut batches = 0u64;
    while Instant::now() < until {
        let batch = batches_gen.next();
        let t = Instant::now();
        store.write(&batch).await.map_err(|e| format!("{}: write: {e}", kind.name()))?;
        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
        batches += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = store.stats();
    store.close().await.map_err(|e| format!("{}: close: {e}", kind.name()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let entries = batches * args.batch_entries as u64;
    let syncs = after.write_syncs - before.write_syncs;
    Ok(Sample {
        entries_per_sec: entries as f64 / secs,
        mb_per_sec: (entries * args.entry_bytes as u64) as f64 / secs / 1e6,
        fsyncs_per_sec: syncs as f64 / secs,
        fsyncs_per_batch: syncs as f64 / batches.max(1) as f64,
        p50_us: hist.value_at_quantile(0.50) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
        batches,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

/// Runs the storage benchmark; returns a process exit code.
pub fn run(args: StorageArgs) -> u8 {
    let kinds: Vec<StorageKind> = if args.adapters.is_empty() {
        StorageKind::built().into_iter().filter(|k| *k != StorageKind::Memory).collect()
    } else {
        match args.adapters.iter().map(|a| StorageKind::parse(a).ok_or(a)).collect() {
            Ok(k) => k,
            Err(a) => {
                eprintln!(
                    "unknown adapter {a}; built: {:?}",
                    StorageKind::built().iter().map(|k| k.name()).collect::<Vec<_>>()
                );
                return 2;
            }
        }
    };
    if args.batch_entries == 0 || args.partitions.contains(&0) || args.runs == 0 {
        eprintln!("--batch-entries, --partitions and --runs must be positive");
        return 2;
    }
    let tmp = match &args.dir {
        Some(d) => d.clone(),
        None => match tempfile::tempdir() {
            Ok(t) => t.keep(),
            Err(e) => {
                eprintln!("tempdir: {e}");
                return 1;
            }
        },
    };
    let machine = machine();
    println!(
        "storage benchmark: {} entries of {} B per batch, sync {}, {} s per case (+{} s warm-up), {} run(s), in {}",
        args.batch_entries,
        args.entry_bytes,
        if args.no_sync { "OFF" } else { "on" },
        args.seconds,
        args.warmup_seconds,
        args.runs,
        tmp.display()
    );
    println!("machine: {machine}");
    let a = args.clone();
    let root = tmp.clone();
    let result = phalanx_storage::run_local("bench-storage", move || async move {
        let mut samples: BTreeMap<(u64, usize), Vec<Sample>> = BTreeMap::new();
        for run in 0..a.runs {
            for &p in &a.partitions {
                for (i, kind) in kinds.iter().enumerate() {
                    let dir = root.join(format!("run{run}-{}-{p}", kind.name()));
                    let s = measure(*kind, p, &a, dir).await?;
                    eprintln!(
                        "  run {} {:>11} {:>5} partitions: {:>10.0} entries/s  p99 {:>7.0} us",
                        run + 1,
                        kind.name(),
                        p,
                        s.entries_per_sec,
                        s.p99_us
                    );
                    samples.entry((p, i)).or_default().push(s);
                }
            }
        }
        Ok::<_, String>((kinds, samples))
    });
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (kinds, samples) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
        Err(e) => {
            eprintln!("executor: {e}");
            return 1;
        }
    };
    println!(
        "{:<11} {:>10} {:>12} {:>8} {:>10} {:>12} {:>9} {:>9}",
        "adapter", "partitions", "entries/s", "MB/s", "fsyncs/s", "fsyncs/batch", "p50_us", "p99_us"
    );
    let mut results = Vec::new();
    for ((p, i), runs) in &samples {
        let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
        let row = Sample {
            entries_per_sec: m(|s| s.entries_per_sec),
            mb_per_sec: m(|s| s.mb_per_sec),
            fsyncs_per_sec: m(|s| s.fsyncs_per_sec),
            fsyncs_per_batch: m(|s| s.fsyncs_per_batch),
            p50_us: m(|s| s.p50_us),
            p99_us: m(|s| s.p99_us),
            batches: runs.iter().map(|s| s.batches).sum(),
        };
        let name = kinds[*i].name();
        println!(
            "{:<11} {:>10} {:>12.0} {:>8.1} {:>10.0} {:>12.3} {:>9.0} {:>9.0}",
            name,
            p,
            row.entries_per_sec,
            row.mb_per_sec,
            row.fsyncs_per_sec,
            row.fsyncs_per_batch,
            row.p50_us,
            row.p99_us
        );
        results.push((name, *p, row));
    }
    let eps = |name: &str, p: u64| {
        results.iter().find(|(n, q, _)| *n == name && *q == p).map(|r| r.2.entries_per_sec)
    };
    // The native WAL against every other adapter run, in the order given.
    for other in kinds.iter().map(|k| k.name()).filter(|n| *n != "wal") {
        for &p in &args.partitions {
            if let (Some(w), Some(o)) = (eps("wal", p), eps(other, p)) {
                println!("wal / {other} entries/s at {p} partitions: {:.2}x", w / o);
            }
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "benchmark": "storage",
            "machine": machine,
            "config": {
                "batch_entries": args.batch_entries,
                "entry_bytes": args.entry_bytes,
                "seconds": args.seconds,
                "warmup_seconds": args.warmup_seconds,
                "runs": args.runs,
                "sync_writes": !args.no_sync,
                "keep_entries": args.keep_entries,
                "raft_engine_compression_bytes": args.raft_engine_compression_bytes,
                "raft_engine_prefill_bytes": args.raft_engine_prefill_bytes,
            },
            "results": results.iter().map(|(name, p, r)| serde_json::json!({
                "adapter": name,
                "partitions": p,
                "entries_per_sec": r.entries_per_sec,
                "mb_per_sec": r.mb_per_sec,
                "fsyncs_per_sec": r.fsyncs_per_sec,
                "fsyncs_per_batch": r.fsyncs_per_batch,
                "p50_us": r.p50_us,
                "p99_us": r.p99_us,
                "batches": r.batches,
            })).collect::<Vec<_>>(),
        });
        let text = match serde_json::to_string_pretty(&doc) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("json: {e}");
                return 1;
            }
        };
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
        println!("wrote {}", path.display());
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_spread_over_partitions() {
        let mut g = Gen::new(64, 256, 256, 1000);
        let b = g.next();
        assert_eq!(b.partitions.len(), 64);
        assert!(b.partitions.iter().all(|w| w.entries.len() == 4));
        let mut g = Gen::new(1024, 256, 256, 1000);
        let (b1, b2) = (g.next(), g.next());
        assert_eq!(b1.entry_count(), 256);
        assert_eq!(b1.partitions[0].partition, 1);
        assert_eq!(b2.partitions[0].partition, 257);
        let mut g = Gen::new(1, 256, 256, 100);
        let b = g.next();
        assert_eq!(b.partitions[0].entries.len(), 256);
        assert_eq!(b.partitions[0].compact_to, Some(156));
    }
}
