//! Three `phalanx` processes on 127.0.0.1 with the native WAL and 64 partitions: leaders
//! for every partition; writes through `phalanx ctl` and the client port; `kill -9` of the
//! node leading the most partitions while writers run; writes keep succeeding; the node
//! restarts from its WAL and catches up; every acknowledged write is read back on every node
//! and nothing is applied twice.
//!
//! "Applied twice" is observable: writers use `append_value`, which concatenates a unique
//! token to a key's value — a command applied twice would show its token twice. A write
//! whose outcome is unknown (timeout, connection lost) is never retried with the same token,
//! so each token may appear at most once, and every acknowledged one exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use phalanx::client::{Client, ClientFailure};
use phalanx_proto::{
    AppendValueRequest, CheckpointRequest, ClientErrorCode, GetRequest, StatusRequest, client_request::Op,
    client_response::Result as R,
};

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");
const PARTITIONS: u32 = 64;
/// Bound on every wait in this test.
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A node process, killed when dropped so a failing test leaves nothing behind.
struct Proc {
    child: Option<Child>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    dir: PathBuf,
    raft: Vec<u16>,
    client: Vec<u16>,
    procs: Vec<Proc>,
}

impl Cluster {
    fn new(dir: &Path) -> Self {
        let raft: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = Cluster { dir: dir.to_path_buf(), raft, client, procs: Vec::new() };
        for i in 0..3 {
            let p = c.spawn(i);
            c.procs.push(p);
        }
        c
    }

    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client[i])
    }

    fn endpoints(&self) -> Vec<String> {
        (0..3).map(|i| self.endpoint(i)).collect()
    }

    fn spawn(&self, i: usize) -> Proc {
        let cluster: Vec<String> = (0..3).map(|j| format!("{}=127.0.0.1:{}", j + 1, self.raft[j])).collect();
        let clients: Vec<String> =
            (0..3).map(|j| format!("{}=127.0.0.1:{}", j + 1, self.client[j])).collect();
        let log = std::fs::File::create(self.dir.join(format!("node{}.log", i + 1))).expect("log file");
        let child = Command::new(BIN)
            .args(["node", "--raft-nodeid", &(i + 1).to_string(), "--raft-port", &self.raft[i].to_string()])
            .args(["--client-port", &self.client[i].to_string(), "--initial-cluster", &cluster.join(",")])
            .args([
                "--initial-cluster-clients",
                &clients.join(","),
                "--initial-cluster-partitions",
                &PARTITIONS.to_string(),
            ])
            .args(["--wal-adapter", "wal", "--cores", "2", "--pin-cores", "false", "--tick-ms", "20"])
            .arg("--data-dir")
            .arg(self.dir.join(format!("n{}", i + 1)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn phalanx node");
        Proc { child: Some(child) }
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            // SIGKILL: no chance to hand over leadership or flush anything.
            c.kill().expect("kill -9");
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        self.procs[i] = self.spawn(i);
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["ctl", "--endpoints", &self.endpoints().join(",")])
            .args(args)
            .output()
            .expect("run phalanx ctl")
    }

    /// Per partition, the leader as its own node reports it.
    fn leaders(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for e in self.endpoints() {
            let Ok(mut c) = Client::connect(&e) else { continue };
            if let Ok(R::Status(s)) = c.call(Op::Status(StatusRequest {})) {
                for p in s.partitions {
                    if p.leader == s.node_id {
                        out.insert(p.id, p.leader);
                    }
                }
            }
        }
        out
    }

    fn wait_for_all_leaders(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let l = self.leaders();
            if l.len() == PARTITIONS as usize + 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} partitions have a leader",
                l.len(),
                PARTITIONS + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the writers saw.
#[derive(Default)]
struct History {
    /// key → tokens acknowledged.
    acked: BTreeMap<String, Vec<String>>,
    /// key → tokens whose outcome is unknown.
    unknown: BTreeMap<String, Vec<String>>,
}

/// Appends unique tokens to `key` until `stop`, following leaders and moving on after
/// failures. Returns nothing; records into `history`.
fn writer(
    key: String,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    acks: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    let mut target = 0usize;
    let mut client: Option<Client> = None;
    let mut hint: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let endpoint = hint.take().unwrap_or_else(|| endpoints[target % endpoints.len()].clone());
        if client.as_ref().is_none_or(|c| c.endpoint() != endpoint) {
            client = Client::connect(&endpoint).ok();
        }
        let Some(c) = client.as_mut() else {
            target += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        n += 1;
        let token = format!("{key}#{n};");
        let op = Op::AppendValue(AppendValueRequest { key: key.clone(), value: Bytes::from(token.clone()) });
        match c.call(op) {
            Ok(_) => {
                acks.fetch_add(1, Ordering::Relaxed);
                history.lock().expect("history").acked.entry(key.clone()).or_default().push(token);
            }
            Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::NotLeader as i32 => {
                // Not applied anywhere: refused before proposing.
                if e.leader_address.is_empty() {
                    target += 1;
                    std::thread::sleep(Duration::from_millis(20));
                } else {
                    hint = Some(e.leader_address);
                }
            }
            Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::Busy as i32 => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => {
                // Timeout, lost connection, replication failed: the outcome is unknown.
                history.lock().expect("history").unknown.entry(key.clone()).or_default().push(token);
                client = None;
                target += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Checkpoints every partition in turn until `stop` (so logs are compacted behind the load,
/// and the restarted node recovers from snapshots and a compacted WAL). Returns how many
/// checkpoints were replicated.
fn checkpointer(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> u64 {
    let mut done = 0;
    let mut p = 0u64;
    while !stop.load(Ordering::Relaxed) {
        p = p % u64::from(PARTITIONS) + 1;
        let mut endpoint = endpoints[p as usize % endpoints.len()].clone();
        // A few hops along NOT_LEADER hints; an unreachable or leaderless partition waits
        // for its next turn.
        for _ in 0..3 {
            let Ok(mut c) = Client::connect(&endpoint) else { break };
            match c.call(Op::Checkpoint(CheckpointRequest { partition: p })) {
                Ok(_) => {
                    done += 1;
                    break;
                }
                Err(ClientFailure::Server(e)) if !e.leader_address.is_empty() => endpoint = e.leader_address,
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done
}

fn read(endpoint: &str, key: &str) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = Client::connect(endpoint) {
            match c.call(Op::Get(GetRequest { key: key.to_string() })) {
                Ok(R::Get(g)) => return Some(String::from_utf8_lossy(&g.value).into_owned()),
                Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::NotFound as i32 => return None,
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "could not read {key} from {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_dash_nine_of_a_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Cluster::new(dir.path());
    c.wait_for_all_leaders();

    // Writes through ctl.
    let out = c.ctl(&["put", "greeting", "hello"]);
    assert!(out.status.success(), "ctl put: {}", String::from_utf8_lossy(&out.stderr));
    let out = c.ctl(&["get", "greeting"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let out = c.ctl(&["get", "no-such-key"]);
    assert!(!out.status.success(), "a missing key is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let out = c.ctl(&["checkpoint", "1"]);
    assert!(out.status.success(), "ctl checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    for bad in ["0", "65"] {
        let out = c.ctl(&["checkpoint", bad]);
        assert!(!out.status.success(), "a checkpoint of partition {bad} is refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no partition"));
    }
    let out = c.ctl(&["status", "--json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(PARTITIONS as usize + 1));
    assert!(status["partitions"][1]["leader"].as_u64().is_some());

    // Load through the client port.
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let acks = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, history, acks, eps) = (stop.clone(), history.clone(), acks.clone(), c.endpoints());
            std::thread::spawn(move || writer(format!("list-{w}"), eps, stop, history, acks))
        })
        .collect();
    let checkpoints = {
        let (stop, eps) = (stop.clone(), c.endpoints());
        std::thread::spawn(move || checkpointer(eps, stop))
    };
    std::thread::sleep(Duration::from_secs(3));

    // kill -9 the node leading the most partitions.
    let leaders = c.leaders();
    let mut counts = [0usize; 3];
    for l in leaders.values() {
        counts[(*l - 1) as usize] += 1;
    }
    let victim = (0..3).max_by_key(|i| counts[*i]).expect("three nodes");
    let before_kill = acks.load(Ordering::Relaxed);
    c.kill9(victim);
    std::thread::sleep(Duration::from_secs(4));
    let during_outage = acks.load(Ordering::Relaxed) - before_kill;
    assert!(during_outage > 0, "writes must keep succeeding while node {} is down", victim + 1);

    c.restart(victim);
    c.wait_for_all_leaders();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    let checkpoints = checkpoints.join().expect("checkpointer thread");

    // Every acknowledged token exactly once, unknown ones at most once, in order; on every
    // node (the restarted one caught up through its WAL and the leaders).
    let h = history.lock().expect("history");
    let mut total_acked = 0;
    let mut lost = 0;
    for (key, acked) in &h.acked {
        total_acked += acked.len();
        let allowed: BTreeSet<&String> =
            acked.iter().chain(h.unknown.get(key).into_iter().flatten()).collect();
        for node in 0..3 {
            let value = read(&c.endpoint(node), key).unwrap_or_default();
            let tokens: Vec<String> = value.split_inclusive(';').map(str::to_string).collect();
            let unique: BTreeSet<&String> = tokens.iter().collect();
            assert_eq!(unique.len(), tokens.len(), "node {}: a token of {key} was applied twice", node + 1);
            for t in &tokens {
                assert!(allowed.contains(t), "node {}: {key} holds {t}, which was never written", node + 1);
            }
            for t in acked {
                if !unique.contains(t) {
                    lost += 1;
                }
            }
        }
    }
    let unknown: usize = h.unknown.values().map(Vec::len).sum();
    println!(
        "multiprocess: acknowledged={total_acked} acknowledged_during_outage={during_outage} unknown_outcome={unknown} \
         lost={lost} victim=node{} partitions_led_by_victim={} checkpoints={checkpoints}",
        victim + 1,
        counts[victim]
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert!(checkpoints > 0, "checkpoints were replicated under the load");
    assert!(total_acked > 100, "the load made progress");
}
