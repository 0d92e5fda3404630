//! The load engine: N clients spread over a few driver threads (`driver.rs`: tokio for
//! embedded targets, glommio for remote ones), each issuing requests to a [`TargetSpec`]
//! (embedded handles or remote client ports).
//!
//! Pacing:
//! - **closed loop**: each client sends its next request when the previous one answers;
//! - **open loop** (`--rate R`): requests are due at `start + i / R`; a client takes the next
//!   due slot, waits for it if it is in the future, and its latency is measured **from the
//!   slot's time**, so a request that could not start on time because every client was busy
//!   carries its queueing delay (no coordinated omission);
//! - **limited** (the etcd profiles): etcd `check perf`'s shape — a token bucket of burst 1 at
//!   the target rate feeding the clients; a late slot is not made up for, and latency is
//!   measured from when the request is sent, as etcd measures it.
//!
//! Latency goes into HDR histograms (microseconds), one per driver for the whole window and
//! one per driver per second (for the plot), merged at the end; the warm-up is not recorded.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use phalanx::NodeHandle;

use crate::driver::{self, Flavor};
use crate::keys::{KeySpace, Rng};
use crate::remote::{RemoteInfo, RemotePool};
use crate::target::{OpKind, Outcome, Target};

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Append raw entries to a partition's log.
    Append,
    /// Key-value puts.
    Put,
    /// Linearizable key-value gets (the keys are written first).
    Get,
    /// Gets with probability `read_ratio`, puts otherwise.
    Mix,
}

impl Workload {
    /// Name used in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Workload::Append => "append",
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mix => "mix",
        }
    }
}

/// When requests are sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// Next request when the previous one answers.
    Closed,
    /// `rate` requests/s on a fixed schedule; latency from the scheduled time.
    Open {
        /// Requests per second (all clients together).
        rate: f64,
    },
    /// etcd `check perf`'s limiter: `rate` requests/s, burst 1, no catching up; latency from
    /// the send.
    Limited {
        /// Requests per second (all clients together).
        rate: f64,
    },
}

impl Pacing {
    /// The target rate, if any.
    #[must_use]
    pub fn rate(self) -> Option<f64> {
        match self {
            Pacing::Closed => None,
            Pacing::Open { rate } | Pacing::Limited { rate } => Some(rate),
        }
    }

    /// Name used in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Pacing::Closed => "closed",
            Pacing::Open { .. } => "open",
            Pacing::Limited { .. } => "limited",
        }
    }
}

/// Where the load goes.
#[derive(Clone)]
pub enum TargetSpec {
    /// The embedded cluster's running nodes, and those that join it while the load runs.
    Embedded(Vec<NodeHandle>, Joined),
    /// Remote nodes, with `connections` per endpoint per driver thread.
    Remote(Arc<RemoteInfo>, usize),
}

/// Nodes that joined an embedded cluster after its load started (requests look there only
/// for a partition none of the first nodes leads: the hot path takes no lock).
pub type Joined = Arc<std::sync::Mutex<Vec<NodeHandle>>>;

impl TargetSpec {
    /// The embedded cluster's running nodes; none joins later.
    #[must_use]
    pub fn embedded(handles: Vec<NodeHandle>) -> Self {
        TargetSpec::Embedded(handles, Joined::default())
    }

    /// The runtime its drivers need: remote connections are glommio sockets.
    fn flavor(&self) -> Flavor {
        match self {
            TargetSpec::Embedded(..) => Flavor::Tokio,
            TargetSpec::Remote(..) => Flavor::Glommio,
        }
    }
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    /// Concurrent clients.
    pub clients: usize,
    /// Driver threads the clients are spread over.
    pub drivers: usize,
    /// Request type.
    pub workload: Workload,
    /// Share of gets in the `mix` workload.
    pub read_ratio: f64,
    /// Value (payload) size in bytes.
    pub value_size: usize,
    /// Entries per request.
    pub batch: usize,
    /// Partitions and keys.
    pub keys: Arc<KeySpace>,
    /// When requests are sent.
    pub pacing: Pacing,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Checkpoint a partition after every this many entries written to it (0: never).
    pub checkpoint_every: u64,
    /// Stop once this many requests completed (warm-up included), before `duration` if
    /// sooner (used to fill a WAL with a known number of entries).
    pub stop_after_ops: Option<u64>,
    /// Stop once this is set, before `duration` if sooner (a scenario that measures an
    /// event of unknown length under load).
    pub stop: Option<Arc<AtomicBool>>,
    /// Print the live progress line.
    pub progress: bool,
}

/// One second of the measured window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecondStats {
    /// Successful requests that completed in this second.
    pub ops: u64,
    /// Failed requests.
    pub errors: u64,
    /// Latency percentiles of this second's successful requests, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latency of successful requests, µs.
    pub latency: Histogram<u64>,
    /// Successful requests in the measured window.
    pub ops: u64,
    /// Entries written in the measured window (successful writes × batch).
    pub entries: u64,
    /// Successful reads (gets) in the window.
    pub reads: u64,
    /// Reads that found no value (counted in `ops` and `reads`).
    pub not_found: u64,
    /// Failed requests by status, measured window.
    pub errors: BTreeMap<String, u64>,
    /// Checkpoints asked for (`checkpoint_every`), warm-up included.
    pub checkpoints: u64,
    /// Checkpoints that did not succeed (still refused as busy after retrying, failed).
    pub checkpoint_failures: u64,
    /// When the measured window began.
    pub started: Instant,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// The measured window second by second.
    pub per_second: Vec<SecondStats>,
}

impl LoadResult {
    /// Successful requests per second.
    #[must_use]
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Entries written per second.
    #[must_use]
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in µs (0 when nothing was recorded).
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() { 0 } else { self.latency.value_at_quantile(q) }
    }

    /// Failed requests.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Largest latency recorded (1 minute, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Pause after a `Busy` answer: the node asked us to back off.
const BUSY_PAUSE: Duration = Duration::from_micros(200);
/// How long a checkpoint the node refused as `Busy` stays due: longer than a leadership
/// transfer (at most an election timeout, during which a leader holds proposals) and the
/// wait for the next leader that may follow it.
const CHECKPOINT_BUSY_RETRY: Duration = Duration::from_secs(2);
/// Pause between those retries.
const CHECKPOINT_BUSY_PAUSE: Duration = Duration::from_millis(1);

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig)
        .unwrap_or_else(|_| Histogram::new(sigfig).expect("a valid significant-figure count"))
}

struct Shared {
    stop: AtomicBool,
    recording: AtomicBool,
    started: OnceLock<Instant>,
    /// Successful requests while recording (the live progress line).
    ops: AtomicU64,
    /// Requests completed at all (for `stop_after_ops`).
    completed: AtomicU64,
    /// Entries written per partition (index `p - 1`), warm-up included: the checkpoint policy.
    written: Vec<AtomicU64>,
}

impl Shared {
    /// Counts `n` entries written to partition `p`; true when they cross a multiple of
    /// `every`, so exactly one writer asks for each checkpoint.
    fn checkpoint_due(&self, p: u64, n: u64, every: u64) -> bool {
        let Some(c) = self.written.get((p.max(1) - 1) as usize) else { return false };
        let before = c.fetch_add(n, Ordering::Relaxed);
        every > 0 && (before + n) / every > before / every
    }
}

struct DriverOut {
    latency: Histogram<u64>,
    seconds: Vec<Histogram<u64>>,
    second_errors: Vec<u64>,
    ops: u64,
    entries: u64,
    reads: u64,
    not_found: u64,
    errors: BTreeMap<String, u64>,
    checkpoints: u64,
    checkpoint_failures: u64,
}

impl DriverOut {
    fn new(seconds: usize) -> Self {
        DriverOut {
            latency: histogram(3),
            // Two significant figures per second: plenty for a plot, 1/10 of the memory.
            seconds: (0..seconds).map(|_| histogram(2)).collect(),
            second_errors: vec![0; seconds],
            ops: 0,
            entries: 0,
            reads: 0,
            not_found: 0,
            errors: BTreeMap::new(),
            checkpoints: 0,
            checkpoint_failures: 0,
        }
    }
}

/// A driver thread's schedule of request slots (open and limited pacing).
struct Pacer {
    interval: Duration,
    next: Cell<Instant>,
    catch_up: bool,
}

impl Pacer {
    /// The next slot's time; waits until it comes.
    async fn slot(&self) -> Instant {
        let now = Instant::now();
        let mut t = self.next.get();
        if !self.catch_up && t < now {
            // A token bucket of burst 1: time not used is lost.
            t = now;
        }
        self.next.set(t + self.interval);
        if t > now {
            crate::driver::sleep(t - now).await;
        }
        t
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    id: usize,
    target: Target,
    opts: Arc<LoadOpts>,
    shared: Arc<Shared>,
    out: Rc<RefCell<DriverOut>>,
    pacer: Option<Rc<Pacer>>,
) {
    let mut rng = Rng::for_client(id);
    let value = Bytes::from(vec![b'v'; opts.value_size]);
    let kpp = opts.keys.keys_per_partition;
    let mut keys: Vec<String> = Vec::with_capacity(opts.batch);
    while !shared.stop.load(Ordering::Relaxed) {
        let slot = match &pacer {
            Some(p) => Some(p.slot().await),
            None => None,
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let p = opts.keys.partition(&mut rng);
        let kind = match opts.workload {
            Workload::Append => OpKind::Append,
            Workload::Put => OpKind::Put,
            Workload::Get => OpKind::Get,
            Workload::Mix => {
                if rng.unit() < opts.read_ratio {
                    OpKind::Get
                } else {
                    OpKind::Put
                }
            }
        };
        keys.clear();
        let nkeys = match kind {
            OpKind::Append | OpKind::Checkpoint => 0,
            OpKind::Get => 1,
            OpKind::Put => opts.batch,
        };
        for _ in 0..nkeys {
            keys.push(opts.keys.key(p, rng.below(kpp)));
        }
        let start = match (opts.pacing, slot) {
            (Pacing::Open { .. }, Some(t)) => t,
            _ => Instant::now(),
        };
        let outcome = target.exec(kind, p, &keys, &value, opts.batch).await;
        let end = Instant::now();
        shared.completed.fetch_add(1, Ordering::Relaxed);
        let busy = outcome.busy();
        if shared.recording.load(Ordering::Relaxed)
            && let Some(&started) = shared.started.get()
        {
            let us = (end.saturating_duration_since(start).as_micros() as u64).clamp(1, MAX_LATENCY_US);
            let mut o = out.borrow_mut();
            let last = o.seconds.len().saturating_sub(1);
            let sec = (end.saturating_duration_since(started).as_secs() as usize).min(last);
            match outcome {
                Outcome::Ok | Outcome::NotFound => {
                    o.ops += 1;
                    let _ = o.latency.record(us);
                    if let Some(h) = o.seconds.get_mut(sec) {
                        let _ = h.record(us);
                    }
                    match kind {
                        OpKind::Get => {
                            o.reads += 1;
                            if outcome == Outcome::NotFound {
                                o.not_found += 1;
                            }
                        }
                        _ => o.entries += opts.batch as u64,
                    }
                    shared.ops.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Failed(status) => {
                    *o.errors.entry(status.to_string()).or_default() += 1;
                    if let Some(e) = o.second_errors.get_mut(sec) {
                        *e += 1;
                    }
                }
            }
        }
        // The application's checkpoint policy: the writer that crosses the mark asks for it
        // before its next request, as an application would between its own writes (not timed
        // as a request; its time shows as this client's absence).
        if kind != OpKind::Get
            && outcome.success()
            && shared.checkpoint_due(p, opts.batch as u64, opts.checkpoint_every)
        {
            // Refused as Busy (a full inbox, the uncommitted limit), it is still due: an
            // application retries it rather than skip a compaction.
            let give_up = Instant::now() + CHECKPOINT_BUSY_RETRY;
            let mut done = target.exec(OpKind::Checkpoint, p, &[], &value, 1).await;
            while done.busy() && Instant::now() < give_up {
                crate::driver::sleep(CHECKPOINT_BUSY_PAUSE).await;
                done = target.exec(OpKind::Checkpoint, p, &[], &value, 1).await;
            }
            let ok = done.success();
            let mut o = out.borrow_mut();
            o.checkpoints += 1;
            if !ok {
                o.checkpoint_failures += 1;
            }
        }
        if busy {
            crate::driver::sleep(BUSY_PAUSE).await;
        }
    }
}

fn make_target(spec: &TargetSpec) -> Target {
    match spec {
        TargetSpec::Embedded(h, joined) => Target::Embedded(Arc::new(h.clone()), joined.clone()),
        TargetSpec::Remote(info, conns) => Target::Remote(Rc::new(RemotePool::new(info.clone(), *conns))),
    }
}

/// Runs the load against `spec`, printing live ops/s to stderr each second.
pub fn run(spec: &TargetSpec, opts: &LoadOpts) -> Result<LoadResult, String> {
    run_with(spec, opts, || {})
}

/// [`run`], calling `at_start` once the warm-up is over, as the measured window begins: a
/// caller reading counters of its own (messages, log writes, CPU) reads them there, so that
/// they cover the same window as the requests they are divided by.
pub fn run_with(spec: &TargetSpec, opts: &LoadOpts, at_start: impl FnOnce()) -> Result<LoadResult, String> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        recording: AtomicBool::new(false),
        started: OnceLock::new(),
        ops: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        written: (0..opts.keys.partitions()).map(|_| AtomicU64::new(0)).collect(),
    });
    // One histogram per second for the timeline; a run that stops after a count (filling a
    // WAL) has no timeline, and an hour of per-second histograms would cost 150 MB.
    let seconds =
        if opts.stop_after_ops.is_some() { 1 } else { opts.duration.as_secs_f64().ceil().max(1.0) as usize };
    let opts_arc = Arc::new(opts.clone());
    let drivers = opts.drivers.clamp(1, opts.clients.max(1));
    let mut joins = Vec::new();
    for d in 0..drivers {
        let (opts, shared, spec) = (opts_arc.clone(), shared.clone(), spec.clone());
        let ids: Vec<usize> = (0..opts.clients).filter(|c| c % drivers == d).collect();
        let j = driver::spawn(&format!("bench-driver-{d}"), spec.flavor(), move || async move {
            let out = Rc::new(RefCell::new(DriverOut::new(seconds)));
            let target = make_target(&spec);
            let pacer = opts.pacing.rate().map(|rate| {
                Rc::new(Pacer {
                    interval: Duration::from_secs_f64(drivers as f64 / rate),
                    next: Cell::new(Instant::now()),
                    catch_up: matches!(opts.pacing, Pacing::Open { .. }),
                })
            });
            let tasks: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    driver::spawn_local(client(
                        id,
                        target.clone(),
                        opts.clone(),
                        shared.clone(),
                        out.clone(),
                        pacer.clone(),
                    ))
                })
                .collect();
            for t in tasks {
                if t.join().await.is_none() {
                    return Err("a client task panicked");
                }
            }
            drop(target);
            Rc::try_unwrap(out).map(RefCell::into_inner).map_err(|_| "driver output still shared")
        })?;
        joins.push(j);
    }
    // A node that failed (a storage error stops its shard) ends the run with its reason
    // instead of measuring a broken cluster.
    let failure = || match spec {
        TargetSpec::Embedded(handles, _) => {
            handles.iter().find_map(|h| h.failure().map(|f| format!("node {} failed: {f}", h.node_id())))
        }
        TargetSpec::Remote(..) => None,
    };
    let done = |s: &Shared| {
        opts.stop_after_ops.is_some_and(|n| s.completed.load(Ordering::Relaxed) >= n)
            || opts.stop.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
            || failure().is_some()
    };
    let warm_until = Instant::now() + opts.warmup;
    while Instant::now() < warm_until && !done(&shared) {
        std::thread::sleep(
            Duration::from_millis(20).min(warm_until.saturating_duration_since(Instant::now())),
        );
    }
    at_start();
    let started = Instant::now();
    let _ = shared.started.set(started);
    shared.recording.store(true, Ordering::SeqCst);
    let mut last = 0;
    let mut last_at = started;
    while started.elapsed() < opts.duration && !done(&shared) {
        let next = (last_at + Duration::from_secs(1)).min(started + opts.duration);
        while Instant::now() < next && !done(&shared) {
            std::thread::sleep(Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())));
        }
        let now = shared.ops.load(Ordering::Relaxed);
        let step = last_at.elapsed().as_secs_f64().max(1e-9);
        let rate = (now - last) as f64 / step;
        last = now;
        last_at = Instant::now();
        if opts.progress {
            let done_frac = started.elapsed().as_secs_f64() / opts.duration.as_secs_f64().max(1e-9);
            let bar = ((done_frac * 30.0).round() as usize).min(30);
            eprint!(
                "\r[{:<30}] {:>5.1}s/{:.1}s {:>10.0} ops/s",
                "#".repeat(bar),
                started.elapsed().as_secs_f64(),
                opts.duration.as_secs_f64(),
                rate
            );
        }
    }
    if opts.progress {
        eprintln!();
    }
    shared.recording.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    let mut latency = histogram(3);
    let mut secs: Vec<Histogram<u64>> = (0..seconds).map(|_| histogram(2)).collect();
    let mut sec_errors = vec![0u64; seconds];
    let (mut ops, mut entries, mut reads, mut not_found) = (0, 0, 0, 0);
    let (mut checkpoints, mut checkpoint_failures) = (0, 0);
    let mut errors = BTreeMap::new();
    let mut first_error = None;
    for j in joins {
        match j.join() {
            Ok(Ok(o)) => {
                latency.add(&o.latency).map_err(|e| format!("histogram: {e}"))?;
                for (acc, h) in secs.iter_mut().zip(&o.seconds) {
                    acc.add(h).map_err(|e| format!("histogram: {e}"))?;
                }
                for (acc, e) in sec_errors.iter_mut().zip(&o.second_errors) {
                    *acc += e;
                }
                ops += o.ops;
                entries += o.entries;
                reads += o.reads;
                not_found += o.not_found;
                checkpoints += o.checkpoints;
                checkpoint_failures += o.checkpoint_failures;
                for (k, v) in o.errors {
                    *errors.entry(k).or_default() += v;
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("driver: {e}"));
            }
        }
    }
    if let Some(e) = failure().or(first_error) {
        return Err(e);
    }
    // A window cut short (stop_after_ops) has fewer seconds than planned.
    let measured_secs = (elapsed.as_secs_f64().ceil() as usize).clamp(1, seconds);
    let per_second = secs
        .iter()
        .zip(&sec_errors)
        .take(measured_secs)
        .map(|(h, &errors)| {
            let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
            SecondStats {
                ops: h.len(),
                errors,
                p50_us: q(0.5),
                p90_us: q(0.9),
                p99_us: q(0.99),
                p999_us: q(0.999),
                max_us: h.max(),
            }
        })
        .collect();
    Ok(LoadResult {
        latency,
        ops,
        entries,
        reads,
        not_found,
        errors,
        checkpoints,
        checkpoint_failures,
        started,
        elapsed,
        per_second,
    })
}

/// Writes every key of the key space once (`value_size` bytes each), so gets find values.
/// Runs `concurrency` requests at a time on one driver thread.
pub fn preload(
    spec: &TargetSpec,
    keys: &Arc<KeySpace>,
    value_size: usize,
    concurrency: usize,
) -> Result<u64, String> {
    let spec = spec.clone();
    let keys = keys.clone();
    let total = u64::from(keys.partitions()) * keys.keys_per_partition;
    let flavor = spec.flavor();
    let j = driver::spawn("bench-preload", flavor, move || async move {
        let target = make_target(&spec);
        let value = Bytes::from(vec![b'v'; value_size]);
        let next = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let tasks: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (target, value, next, failed, keys) =
                    (target.clone(), value.clone(), next.clone(), failed.clone(), keys.clone());
                driver::spawn_local(async move {
                    loop {
                        let i = next.get();
                        if i >= total {
                            break;
                        }
                        next.set(i + 1);
                        let kpp = keys.keys_per_partition;
                        let p = 1 + i / kpp;
                        let key = keys.key(p, i % kpp);
                        if !target.exec(OpKind::Put, p, &[key], &value, 1).await.success() {
                            failed.set(failed.get() + 1);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            if t.join().await.is_none() {
                return Err("a preload task panicked".to_string());
            }
        }
        Ok(failed.get())
    })?;
    let failed = j.join().and_then(|r| r).map_err(|e| format!("preload: {e}"))?;
    if failed > 0 {
        return Err(format!("preloading keys: {failed} of {total} puts failed"));
    }
    Ok(total)
}
