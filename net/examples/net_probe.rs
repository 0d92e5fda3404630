//! Network probe: loopback round trip and throughput of a Phalanx transport.
//!
//! Two nodes with one shard each, each shard on its own glommio executor thread. Node 2
//! answers every batch it receives with a one-message batch. Node 1 measures:
//!
//! 1. round trip of a one-message batch (one outstanding at a time): p50 / p90 / p99 / max;
//! 2. throughput of 64-message batches (appends carrying one entry each) with a window of
//!    batches in flight: batches/s, messages/s, payload MB/s.
//!
//! ```text
//! cargo run --release -p phalanx-net --example net_probe -- [--transport tcp|memory|both]
//!     [--rtt-iterations N] [--throughput-secs S] [--window W] [--payload-bytes B] [--pin] [--json]
//! ```
//!
//! The load generator reuses this as its "network probe": `--json` prints one JSON object
//! per transport.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use phalanx_net::discovery::{DynamicDiscovery, NodeAddr};
use phalanx_net::memory::{MemoryConfig, MemoryNetwork};
use phalanx_net::tcp::{TcpConfig, TcpFactory};
use phalanx_net::{Inbound, InboundSink, Transport, TransportFactory, TransportStats};
use phalanx_proto::raft_message::Body;
use phalanx_proto::{
    AppendEntriesRequest, EntryKind, Heartbeat, HeartbeatResponse, LogEntry, MessageBatch, RaftMessage,
};

/// io_uring memory per executor.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// Round trips discarded before measuring (connection set-up, caches).
const WARMUP_ROUND_TRIPS: usize = 1_000;
/// Messages per throughput batch.
const THROUGHPUT_BATCH_MESSAGES: usize = 64;
/// How long the driver waits for any one answer before declaring the probe broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Opts {
    transports: Vec<String>,
    rtt_iterations: usize,
    throughput_secs: f64,
    window: usize,
    payload_bytes: usize,
    pin: bool,
    json: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        transports: vec!["tcp".into(), "memory".into()],
        rtt_iterations: 20_000,
        throughput_secs: 3.0,
        window: 64,
        payload_bytes: 128,
        pin: false,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--transport" => {
                let v = val("--transport")?;
                o.transports = match v.as_str() {
                    "both" => vec!["tcp".into(), "memory".into()],
                    "tcp" | "memory" => vec![v],
                    _ => return Err(format!("unknown transport {v:?} (tcp, memory, both)")),
                };
            }
            "--rtt-iterations" => o.rtt_iterations = val(&a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--throughput-secs" => o.throughput_secs = val(&a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--window" => o.window = val(&a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--payload-bytes" => o.payload_bytes = val(&a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--pin" => o.pin = true,
            "--json" => o.json = true,
            "-h" | "--help" => {
                return Err("usage: net_probe [--transport tcp|memory|both] [--rtt-iterations N] \
                            [--throughput-secs S] [--window W] [--payload-bytes B] [--pin] [--json]"
                    .into());
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if o.rtt_iterations == 0 || o.window == 0 || o.throughput_secs <= 0.0 {
        return Err("iterations, window and seconds must be positive".into());
    }
    Ok(o)
}

/// What the driver measured.
#[derive(Debug, Default)]
struct Report {
    rtt_us: Vec<f64>,
    tput_batches: u64,
    tput_secs: f64,
    sender: TransportStats,
    echo: TransportStats,
}

fn request(seq: u64) -> MessageBatch {
    MessageBatch {
        messages: vec![RaftMessage {
            group: seq,
            from: 1,
            to: 2,
            body: Some(Body::Heartbeat(Heartbeat { term: 1, commit: seq, read_ctx: 0, quiesce: false })),
        }],
    }
}

fn append_batch(seq: u64, payload: &Bytes) -> MessageBatch {
    let messages = (0..THROUGHPUT_BATCH_MESSAGES as u64)
        .map(|g| RaftMessage {
            group: seq,
            from: 1,
            to: 2,
            body: Some(Body::AppendRequest(AppendEntriesRequest {
                term: 1,
                prev_log_index: g,
                prev_log_term: 1,
                entries: vec![LogEntry {
                    term: 1,
                    index: g + 1,
                    kind: EntryKind::Normal as i32,
                    log_type: "probe".into(),
                    payload: payload.clone(),
                    ticket: None,
                }],
                leader_commit: 0,
                commit_only: false,
            })),
        })
        .collect();
    MessageBatch { messages }
}

fn answer(to_seq: u64) -> MessageBatch {
    MessageBatch {
        messages: vec![RaftMessage {
            group: to_seq,
            from: 2,
            to: 1,
            body: Some(Body::HeartbeatResponse(HeartbeatResponse {
                term: 1,
                read_ctx: to_seq,
                quiesced: false,
            })),
        }],
    }
}

fn placement(pin: bool, cpu: usize) -> Placement {
    if pin { Placement::Fixed(cpu) } else { Placement::Unbound }
}

/// Runs the probe between two nodes of one transport.
fn probe<F: TransportFactory>(f1: Arc<F>, f2: Arc<F>, o: &Opts) -> Result<Report, String> {
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let (ready_tx, ready_rx) = flume::bounded::<Result<(), String>>(1);
    let (echo_stats_tx, echo_stats_rx) = flume::bounded::<TransportStats>(1);
    // Node 2: answers every batch with a one-message batch, from inside its sink.
    let echo = LocalExecutorBuilder::new(placement(o.pin, 1))
        .io_memory(IO_MEMORY_BYTES)
        .name("probe-echo")
        .spawn(move || async move {
            let slot: Rc<OnceCell<F::T>> = Rc::new(OnceCell::new());
            let s = slot.clone();
            let sink: InboundSink = Rc::new(move |inb: Inbound| {
                if let (Some(t), Some(m)) = (s.get(), inb.batch.messages.first()) {
                    t.send(inb.from, answer(m.group));
                }
                true
            });
            match f2.start(0, 1, sink) {
                Ok(t) => {
                    let _ = slot.set(t);
                    let _ = ready_tx.send(Ok(()));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            }
            let _ = stop_rx.recv_async().await;
            if let Some(t) = Rc::try_unwrap(slot).ok().and_then(OnceCell::into_inner) {
                let _ = echo_stats_tx.send(t.stats());
                t.shutdown().await;
            }
        })
        .map_err(|e| e.to_string())?;
    ready_rx.recv().map_err(|e| e.to_string())??;

    let opts = o.clone();
    let driver = LocalExecutorBuilder::new(placement(o.pin, 0))
        .io_memory(IO_MEMORY_BYTES)
        .name("probe-driver")
        .spawn(move || async move { drive(f1, &opts).await })
        .map_err(|e| e.to_string())?;
    let result = driver.join().map_err(|e| e.to_string())?;
    let _ = stop_tx.send(());
    let echo_stats = echo_stats_rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or_default();
    echo.join().map_err(|e| e.to_string())?;
    result.map(|mut r| {
        r.echo = echo_stats;
        r
    })
}

async fn drive<F: TransportFactory>(f1: Arc<F>, o: &Opts) -> Result<Report, String> {
    let (tx, rx) = local_channel::new_unbounded::<u64>();
    let sink: InboundSink = Rc::new(move |inb: Inbound| {
        for m in &inb.batch.messages {
            let _ = tx.try_send(m.group);
        }
        true
    });
    let t = f1.start(0, 1, sink).map_err(|e| e.to_string())?;
    let recv = || async {
        futures_lite::future::or(
            async { rx.recv().await.ok_or("answer channel closed".to_string()) },
            async {
                glommio::timer::sleep(ANSWER_TIMEOUT).await;
                Err("no answer within 5 s (see the transport stats)".to_string())
            },
        )
        .await
    };
    let mut report = Report::default();

    // Round trip: one outstanding one-message batch at a time.
    let mut seq = 0u64;
    for i in 0..WARMUP_ROUND_TRIPS + o.rtt_iterations {
        let t0 = Instant::now();
        t.send(2, request(seq));
        let got = recv().await.map_err(|e| format!("{e}; stats {:?}", t.stats()))?;
        if got != seq {
            return Err(format!("answer {got} for request {seq}"));
        }
        if i >= WARMUP_ROUND_TRIPS {
            report.rtt_us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        seq += 1;
    }

    // Throughput: keep `window` batches in flight; each answer releases one.
    let payload = Bytes::from(vec![0xA5u8; o.payload_bytes]);
    let in_flight = Cell::new(0usize);
    let deadline = Instant::now() + Duration::from_secs_f64(o.throughput_secs);
    let start = Instant::now();
    let mut done = 0u64;
    while Instant::now() < deadline {
        while in_flight.get() < o.window {
            t.send(2, append_batch(seq, &payload));
            seq += 1;
            in_flight.set(in_flight.get() + 1);
        }
        recv().await.map_err(|e| format!("{e}; stats {:?}", t.stats()))?;
        in_flight.set(in_flight.get() - 1);
        done += 1;
    }
    report.tput_secs = start.elapsed().as_secs_f64();
    while in_flight.get() > 0 {
        recv().await?;
        in_flight.set(in_flight.get() - 1);
    }
    report.tput_batches = done;
    report.sender = t.stats();
    t.shutdown().await;
    Ok(report)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn print_report(name: &str, o: &Opts, mut r: Report) {
    r.rtt_us.sort_by(f64::total_cmp);
    let (p50, p90, p99) =
        (percentile(&r.rtt_us, 0.5), percentile(&r.rtt_us, 0.9), percentile(&r.rtt_us, 0.99));
    let max = r.rtt_us.last().copied().unwrap_or(0.0);
    let bps = r.tput_batches as f64 / r.tput_secs;
    let mps = bps * THROUGHPUT_BATCH_MESSAGES as f64;
    let mbps = mps * o.payload_bytes as f64 / 1e6;
    let wire_mbps = r.sender.bytes_sent as f64 / r.tput_secs / 1e6;
    let drops = r.sender.batches_dropped_queue_full
        + r.sender.batches_dropped_unreachable
        + r.sender.batches_dropped_oversize
        + r.echo.batches_dropped_queue_full
        + r.echo.batches_dropped_unreachable;
    if o.json {
        println!(
            "{{\"transport\":\"{name}\",\"rtt_us\":{{\"n\":{},\"p50\":{p50:.1},\"p90\":{p90:.1},\"p99\":{p99:.1},\"max\":{max:.1}}},\
             \"throughput\":{{\"batch_messages\":{THROUGHPUT_BATCH_MESSAGES},\"payload_bytes\":{},\"window\":{},\"secs\":{:.2},\
             \"batches_per_sec\":{bps:.0},\"messages_per_sec\":{mps:.0},\"payload_mb_per_sec\":{mbps:.1}}},\"drops\":{drops}}}",
            r.rtt_us.len(),
            o.payload_bytes,
            o.window,
            r.tput_secs
        );
    } else {
        println!("{name}: 2 nodes x 1 shard, loopback{}", if o.pin { ", pinned to cpus 0,1" } else { "" });
        println!(
            "  round trip, 1-message batch: n={} p50={p50:.1}us p90={p90:.1}us p99={p99:.1}us max={max:.1}us",
            r.rtt_us.len()
        );
        println!(
            "  throughput, {THROUGHPUT_BATCH_MESSAGES}-message batches ({} B payload/msg, window {}): {bps:.0} batches/s \
             = {mps:.0} msgs/s, {mbps:.1} MB/s payload (~{wire_mbps:.1} MB/s of frames sent) over {:.2}s",
            o.payload_bytes, o.window, r.tput_secs
        );
        println!("  drops: {drops}");
    }
}

fn run(o: &Opts) -> Result<(), String> {
    for name in &o.transports {
        let report = if name == "tcp" {
            let d = Arc::new(DynamicDiscovery::new());
            let f1 = TcpFactory::bind(TcpConfig::new(1, "probe", "127.0.0.1:0"), d.clone())
                .map_err(|e| e.to_string())?;
            let f2 = TcpFactory::bind(TcpConfig::new(2, "probe", "127.0.0.1:0"), d.clone())
                .map_err(|e| e.to_string())?;
            for (id, f) in [(1, &f1), (2, &f2)] {
                d.upsert(NodeAddr::new(id, f.local_addr().to_string())).map_err(|e| e.to_string())?;
            }
            probe(Arc::new(f1), Arc::new(f2), o)?
        } else {
            let net = MemoryNetwork::new(MemoryConfig::default());
            probe(Arc::new(net.factory(1)), Arc::new(net.factory(2)), o)?
        };
        print_report(name, o, report);
    }
    Ok(())
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("net_probe failed: {e}");
        std::process::exit(1);
    }
}
