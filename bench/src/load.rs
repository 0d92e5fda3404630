//! Closed-loop load: N concurrent clients, each issuing its next request when the previous
//! one answers, spread over a few driver threads (glommio executors). Latency goes into HDR
//! histograms (microseconds), merged at the end; the first `warmup` is not recorded.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use phalanx::kv::KV_LOG_TYPE;
use phalanx::{NodeHandle, Status};
use phalanx_proto::{KvCommand, Message, PutRequest, kv_command};

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Append a raw entry to a partition's log.
    Append,
    /// A key-value put (through the replicated key-value state machine).
    Put,
}

/// How requests pick partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDistribution {
    /// Every partition equally.
    Uniform,
    /// Zipfian (s = 0.99): a few partitions get most requests.
    Zipfian,
}

/// A closed-loop run.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    /// Concurrent clients.
    pub clients: usize,
    /// Driver threads the clients are spread over.
    pub drivers: usize,
    /// Request type.
    pub workload: Workload,
    /// Payload (value) size in bytes.
    pub value_size: usize,
    /// Entries per request.
    pub batch: usize,
    /// Partition choice.
    pub keys: KeyDistribution,
    /// User partitions to spread over.
    pub partitions: u32,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latency of successful requests, µs.
    pub latency: Histogram<u64>,
    /// Successful requests in the measured window.
    pub ops: u64,
    /// Entries written in the measured window (ops × batch).
    pub entries: u64,
    /// Failed requests by status, measured window.
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Successful requests per second, one entry per second of the measured window.
    pub per_second: Vec<u64>,
}

/// Largest latency recorded (1 minute, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures"))
}

/// A Zipfian sampler over `1..=n` (Gray et al.'s method, as YCSB uses).
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n, theta, alpha, zetan, eta }
    }

    fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 1;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 2.min(self.n);
        }
        (1 + (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n)
    }
}

/// xorshift64*: the clients' cheap, per-client random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared {
    stop: AtomicBool,
    recording: AtomicBool,
    ops: AtomicU64,
}

struct DriverOut {
    latency: Histogram<u64>,
    ops: u64,
    errors: BTreeMap<String, u64>,
}

fn leader_of(handles: &[NodeHandle], p: u64) -> Option<&NodeHandle> {
    handles.iter().find(|h| h.am_i_leader_quick(p))
}

async fn client(
    id: usize,
    handles: Arc<Vec<NodeHandle>>,
    opts: Arc<LoadOpts>,
    shared: Arc<Shared>,
    out: Rc<RefCell<DriverOut>>,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let zipf = (opts.keys == KeyDistribution::Zipfian).then(|| Zipf::new(u64::from(opts.partitions), 0.99));
    let value = Bytes::from(vec![b'v'; opts.value_size]);
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let p = match &zipf {
            Some(z) => z.sample(rng.unit()),
            None => 1 + rng.next() % u64::from(opts.partitions),
        };
        let Some(h) = leader_of(&handles, p) else {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            continue;
        };
        seq += 1;
        let payloads: Vec<Bytes> = match opts.workload {
            Workload::Append => vec![value.clone(); opts.batch],
            Workload::Put => (0..opts.batch)
                .map(|k| {
                    let cmd = KvCommand {
                        op: Some(kv_command::Op::Put(PutRequest {
                            key: format!("c{id}-{seq}-{k}"),
                            value: value.clone(),
                        })),
                    };
                    Bytes::from(cmd.encode_to_vec())
                })
                .collect(),
        };
        let log_type = if opts.workload == Workload::Put { KV_LOG_TYPE } else { "bench" };
        let start = Instant::now();
        let r = h.replicate_batch(p, log_type, payloads).await;
        let us = start.elapsed().as_micros() as u64;
        if !shared.recording.load(Ordering::Relaxed) {
            continue;
        }
        let busy = {
            let mut o = out.borrow_mut();
            if r.success() {
                o.ops += 1;
                let _ = o.latency.record(us.clamp(1, MAX_LATENCY_US));
                shared.ops.fetch_add(1, Ordering::Relaxed);
            } else {
                *o.errors.entry(r.status.name().to_string()).or_default() += 1;
            }
            r.status == Status::Busy
        };
        if busy {
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// Runs the closed loop against `handles`, printing live ops/s to stderr each second.
pub fn run(handles: &[NodeHandle], opts: &LoadOpts) -> Result<LoadResult, String> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        recording: AtomicBool::new(false),
        ops: AtomicU64::new(0),
    });
    let handles = Arc::new(handles.to_vec());
    let opts_arc = Arc::new(opts.clone());
    let drivers = opts.drivers.clamp(1, opts.clients.max(1));
    let mut joins = Vec::new();
    for d in 0..drivers {
        let (handles, opts, shared) = (handles.clone(), opts_arc.clone(), shared.clone());
        let ids: Vec<usize> = (0..opts.clients).filter(|c| c % drivers == d).collect();
        let j = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("bench-driver-{d}"))
            .io_memory(1 << 20)
            .spawn(move || async move {
                let out = Rc::new(RefCell::new(DriverOut {
                    latency: new_histogram(),
                    ops: 0,
                    errors: BTreeMap::new(),
                }));
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| {
                        glommio::spawn_local(client(
                            id,
                            handles.clone(),
                            opts.clone(),
                            shared.clone(),
                            out.clone(),
                        ))
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
                Rc::try_unwrap(out).map(RefCell::into_inner).unwrap_or_else(|rc| DriverOut {
                    latency: rc.borrow().latency.clone(),
                    ops: rc.borrow().ops,
                    errors: rc.borrow().errors.clone(),
                })
            })
            .map_err(|e| format!("driver thread: {e}"))?;
        joins.push(j);
    }
    std::thread::sleep(opts.warmup);
    shared.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut last = 0;
    while started.elapsed() < opts.duration {
        let step = Duration::from_secs(1).min(opts.duration.saturating_sub(started.elapsed()));
        std::thread::sleep(step);
        let now = shared.ops.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / step.as_secs_f64().max(1e-9);
        per_second.push(rate as u64);
        last = now;
        let done = started.elapsed().as_secs_f64() / opts.duration.as_secs_f64();
        let bar = (done * 30.0).round() as usize;
        eprint!(
            "\r[{:<30}] {:>5.1}s {:>10.0} ops/s",
            "#".repeat(bar.min(30)),
            started.elapsed().as_secs_f64(),
            rate
        );
    }
    eprintln!();
    shared.recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let mut latency = new_histogram();
    let mut ops = 0;
    let mut errors = BTreeMap::new();
    for j in joins {
        let o = j.join().map_err(|e| format!("driver: {e}"))?;
        latency.add(&o.latency).map_err(|e| format!("histogram: {e}"))?;
        ops += o.ops;
        for (k, v) in o.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    Ok(LoadResult { latency, ops, entries: ops * opts.batch as u64, errors, elapsed, per_second })
}
