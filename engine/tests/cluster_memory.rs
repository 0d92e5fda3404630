//! Single-process clusters over the in-memory transport: nodes elect leaders for every
//! partition, replicate, survive a leader crash, restart and converge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on;
use phalanx::kv::KvStateMachine;
use phalanx::{Executors, Node, NodeConfig, NodeHandle, StateMachineFactory, Status};
use phalanx_net::{MemoryConfig, MemoryNetwork};
use phalanx_storage::StorageKind;

/// A one-node cluster of `partitions` on the native WAL under `dir`, with `faults`.
fn single_node(
    dir: &std::path::Path,
    partitions: u32,
    faults: Option<phalanx_storage::FaultInjector>,
) -> NodeConfig {
    let mut cfg = NodeConfig::new(1, dir.join("n1"));
    cfg.cores = 1;
    cfg.pin_cores = false;
    cfg.initial_cluster = vec![(1, "mem-1".into())];
    cfg.initial_partitions = partitions;
    cfg.tick_interval_ms = 10;
    cfg.store_faults = faults;
    cfg
}

fn kv_factory() -> StateMachineFactory {
    Arc::new(|_p| Box::new(KvStateMachine::new()))
}

struct Cluster {
    net: Arc<MemoryNetwork>,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Node>>,
    ids: Vec<u64>,
    partitions: u32,
    wal: StorageKind,
    /// Shards per node (by id - 1); 2 when not listed.
    cores: Vec<usize>,
    /// Changes every node's configuration (the defaults otherwise).
    tweak: fn(&mut NodeConfig),
    /// Executors every node's shards share (`Node::start_on`); each node its own if none.
    executors: Option<Executors>,
}

impl Cluster {
    fn new(n: u64, partitions: u32, wal: StorageKind) -> Self {
        Self::with_cores(n, partitions, wal, Vec::new())
    }

    /// A cluster with a leader for every partition.
    fn with_leaders(n: u64, partitions: u32, wal: StorageKind) -> Self {
        let c = Self::new(n, partitions, wal);
        c.wait_all_leaders(Duration::from_secs(20));
        c
    }

    fn with_cores(n: u64, partitions: u32, wal: StorageKind, cores: Vec<usize>) -> Self {
        Self::build(n, partitions, wal, cores, |_| {}, None)
    }

    /// A cluster whose nodes' configuration `tweak` changes.
    fn with_tweak(n: u64, partitions: u32, wal: StorageKind, tweak: fn(&mut NodeConfig)) -> Self {
        Self::build(n, partitions, wal, Vec::new(), tweak, None)
    }

    /// A cluster whose nodes' shards all run on `pool` (`Node::start_on`).
    fn on_pool(n: u64, partitions: u32, wal: StorageKind, cores: Vec<usize>, pool: Executors) -> Self {
        Self::build(n, partitions, wal, cores, |_| {}, Some(pool))
    }

    fn build(
        n: u64,
        partitions: u32,
        wal: StorageKind,
        cores: Vec<usize>,
        tweak: fn(&mut NodeConfig),
        executors: Option<Executors>,
    ) -> Self {
        let mut c = Cluster {
            tweak,
            executors,
            cores,
            net: MemoryNetwork::new(MemoryConfig::default()),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            ids: (1..=n).collect(),
            partitions,
            wal,
        };
        for id in c.ids.clone() {
            let node = c.start(id);
            c.nodes.push(Some(node));
        }
        c
    }

    fn config(&self, id: u64) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, self.dir.path().join(format!("n{id}")));
        cfg.cores = self.cores.get((id - 1) as usize).copied().unwrap_or(2);
        cfg.initial_cluster = self.ids.iter().map(|i| (*i, format!("mem-{i}"))).collect();
        cfg.initial_partitions = self.partitions;
        cfg.pin_cores = false;
        cfg.wal = self.wal;
        cfg.tick_interval_ms = 10;
        cfg.request_timeout_ms = 5_000;
        cfg.client_address = Some(format!("client-{id}:1"));
        cfg.leader_balance_interval_ms = 100;
        (self.tweak)(&mut cfg);
        cfg
    }

    fn start(&self, id: u64) -> Node {
        match &self.executors {
            None => Node::start(self.config(id), self.net.factory(id), kv_factory()).expect("node starts"),
            // Node k's shards after node k-1's, round-robin over the pool.
            Some(pool) => {
                let cfg = self.config(id);
                let first = (id as usize - 1) * cfg.cores;
                Node::start_on(cfg, self.net.factory(id), kv_factory(), pool, first).expect("node starts")
            }
        }
    }

    fn handle(&self, id: u64) -> NodeHandle {
        self.nodes[(id - 1) as usize].as_ref().expect("node up").handle()
    }

    fn up(&self) -> Vec<u64> {
        self.ids.iter().copied().filter(|i| self.nodes[(*i - 1) as usize].is_some()).collect()
    }

    /// The node that leads `p`, by asking the nodes that are up.
    fn leader(&self, p: u64) -> Option<u64> {
        self.up().into_iter().find(|i| self.handle(*i).am_i_leader_quick(p))
    }

    fn wait_all_leaders(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for p in 0..=u64::from(self.partitions) {
            loop {
                if self.leader(p).is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "partition {p} elected no leader in {timeout:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Writes `key = value` through the current leader, retrying while leadership moves.
    fn put(&self, key: &str, value: &str) -> u64 {
        let h = self.handle(self.up()[0]);
        let p = h.partition_key(key);
        let payload = kv_put(key, value);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.leader(p) {
                let r = block_on(self.handle(l).replicate(p, phalanx::kv::KV_LOG_TYPE, payload.clone()));
                if r.success() {
                    return r.log_index;
                }
                assert!(
                    matches!(
                        r.status,
                        Status::NodeIsNotLeader
                            | Status::ReplicationFailed
                            | Status::ProposalTimeout
                            | Status::Busy
                    ),
                    "unexpected {:?}",
                    r.status
                );
            }
            assert!(Instant::now() < deadline, "could not write {key}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `{prefix}0` .. `{prefix}{n-1}`, each `= value`.
    fn put_all(&self, prefix: &str, n: usize, value: &str) {
        for i in 0..n {
            self.put(&format!("{prefix}{i}"), value);
        }
    }

    /// Reads `key` linearizably on node `id`.
    fn get(&self, id: u64, key: &str) -> Option<String> {
        let h = self.handle(id);
        let p = h.partition_key(key);
        let q: Bytes = prost::Message::encode_to_vec(&phalanx_proto::GetRequest { key: key.into() }).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match block_on(h.query(p, q.clone())) {
                Ok(b) => {
                    let r: phalanx_proto::GetResponse =
                        prost::Message::decode(b.as_ref()).expect("get answer");
                    return r.found.then(|| String::from_utf8_lossy(&r.value).into_owned());
                }
                Err(Status::NodeIsNotLeader | Status::ProposalTimeout | Status::Busy) => {}
                Err(e) => panic!("get {key} on node {id}: {e}"),
            }
            assert!(Instant::now() < deadline, "could not read {key} on node {id}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replicates a checkpoint on every user partition through its leader (retrying while
    /// leadership moves).
    fn checkpoint_all(&self) {
        for p in 1..=u64::from(self.partitions) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.leader(p).is_some_and(|l| block_on(self.handle(l).replicate_checkpoint(p)).success())
            {
                assert!(Instant::now() < deadline, "could not checkpoint partition {p}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn crash(&mut self, id: u64) {
        self.net.isolate(id);
        if let Some(n) = self.nodes[(id - 1) as usize].take() {
            n.shutdown();
        }
    }

    /// Starts node `id`, new to the cluster, to join it (`NodeConfig::joining`: its initial
    /// cluster lists the cluster's voters, not itself).
    fn start_joining(&mut self, id: u64) {
        let mut cfg = self.config(id);
        cfg.joining = true;
        let node = Node::start(cfg, self.net.factory(id), kv_factory()).expect("node starts");
        self.ids.push(id);
        self.nodes.push(Some(node));
    }

    /// Writes `{a}i`, crashes the leader of partition 1, writes `{b}i` without it, restarts
    /// it, writes `{c}i`, and reads every key back on the restarted node (it restored its
    /// WAL and caught up). Returns the node it crashed.
    fn crash_the_leader_and_read_back_after_restart(&mut self, keys: usize) -> u64 {
        self.put_all("a", keys, "1");
        let victim = self.leader(1).expect("partition 1 has a leader");
        self.crash(victim);
        self.put_all("b", keys, "2");
        self.restart(victim);
        self.wait_all_leaders(Duration::from_secs(20));
        self.put_all("c", keys, "3");
        for i in (0..keys).step_by(3) {
            assert_eq!(self.get(victim, &format!("a{i}")).as_deref(), Some("1"));
            assert_eq!(self.get(victim, &format!("b{i}")).as_deref(), Some("2"));
            assert_eq!(self.get(victim, &format!("c{i}")).as_deref(), Some("3"));
        }
        victim
    }

    fn restart(&mut self, id: u64) {
        self.net.rejoin(id);
        let node = self.start(id);
        self.nodes[(id - 1) as usize] = Some(node);
    }
}

#[test]
fn three_nodes_by_64_partitions_elect_replicate_and_read_everywhere() {
    let c = Cluster::with_leaders(3, 64, StorageKind::Memory);
    for i in 0..50 {
        c.put(&format!("k{i}"), &format!("v{i}"));
    }
    for id in 1..=3 {
        for i in (0..50).step_by(7) {
            assert_eq!(c.get(id, &format!("k{i}")), Some(format!("v{i}")), "node {id} key k{i}");
        }
    }
    assert_eq!(c.get(2, "missing"), None);
}

/// A read barrier answers the read index: at least the index of every write acknowledged
/// before it (on any node), at most what the node has applied when it answers. (It once
/// answered the request's internal id instead.)
#[test]
fn a_read_barrier_returns_the_read_index() {
    let c = Cluster::with_leaders(3, 4, StorageKind::Memory);
    let mut last = 0;
    for i in 0..30 {
        last = c.put(&format!("tenant/k{i}"), "v");
    }
    let p = c.handle(1).partition_key("tenant/k0");
    assert!(last > 30, "30 writes to one partition end past index 30, got {last}");
    for id in 1..=3 {
        let h = c.handle(id);
        let index = block_on(h.read_barrier(p)).expect("read barrier");
        let applied =
            block_on(h.status()).into_iter().find(|s| s.id == p).expect("partition status").applied_index;
        assert!(index >= last, "node {id}: read index {index} below the acknowledged write at {last}");
        assert!(index <= applied, "node {id}: read index {index} above the applied index {applied}");
    }
}

/// A cluster for the leadership-transfer tests: one partition, no balancer (no transfer but
/// the test's), and an election timeout of 1–1.5 s (100–150 ticks of 10 ms), so a transfer
/// the test starts stays pending for a second whatever the machine's load.
fn transfer_cluster() -> Cluster {
    let c = Cluster::with_tweak(3, 1, StorageKind::Memory, |cfg| {
        cfg.leader_balance_interval_ms = 0;
        cfg.raft.election_ticks_min = 100;
        cfg.raft.election_ticks_max = 150;
    });
    c.wait_all_leaders(Duration::from_secs(30));
    c
}

/// The payload of a KV put of `key = value`.
fn kv_put(key: &str, value: &str) -> Bytes {
    let cmd = phalanx_proto::KvCommand {
        op: Some(phalanx_proto::kv_command::Op::Put(phalanx_proto::PutRequest {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })),
    };
    prost::Message::encode_to_vec(&cmd).into()
}

/// Writes to partition 1, cuts the network with `cut(leader, target)` so the transfer to
/// `target` cannot end at once, writes again (the target lags), and starts that transfer.
/// Returns (leader, target).
fn start_a_stuck_transfer(c: &Cluster, cut: impl Fn(&MemoryNetwork, u64, u64)) -> (u64, u64) {
    c.put("before", "1");
    let leader = c.leader(1).expect("partition 1 has a leader");
    let target = c.up().into_iter().find(|i| *i != leader).expect("a follower");
    cut(&c.net, leader, target);
    c.put("lagging", "1");
    block_on(c.handle(leader).transfer_leadership(1, target)).expect("transfer starts");
    (leader, target)
}

/// Waits until node `id` has held `n` proposals for a leadership transfer.
fn wait_held(c: &Cluster, id: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while block_on(c.handle(id).stats()).core().proposals_held < n {
        assert!(Instant::now() < deadline, "node {id} held no proposal");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A write that reaches a leader while it hands its leadership to a follower that cannot
/// take it (cut off) waits for the transfer to give up and then commits there. It used to be
/// refused `Busy`, as if the node were overloaded: every cluster start showed a few, when the
/// balancer moved leaderships to their preferred nodes.
#[test]
fn a_write_during_a_transfer_that_gives_up_commits_on_the_leader() {
    let c = transfer_cluster();
    let (leader, target) = start_a_stuck_transfer(&c, |net, _, target| net.isolate(target));
    let p = c.handle(leader).partition_key("during");
    let r = block_on(c.handle(leader).replicate(p, phalanx::kv::KV_LOG_TYPE, kv_put("during", "1")));
    assert!(r.success(), "a write during a transfer that gave up: {:?}", r.status);
    assert_eq!(c.leader(1), Some(leader), "the transfer gave up: the leader still leads");
    assert!(block_on(c.handle(leader).stats()).core().proposals_held >= 1, "the write was held");
    c.net.rejoin(target);
    assert_eq!(c.get(leader, "during").as_deref(), Some("1"));
}

/// A write held while the leader hands over, when the handover succeeds, is answered
/// `NodeIsNotLeader` and was never appended: the client retries at the new leader knowing
/// nothing happened. (The target's acknowledgements are cut, so the leader thinks it lags and
/// the transfer waits; healing them lets it take over while the write is held.)
#[test]
fn a_write_held_during_a_transfer_that_succeeds_is_refused_unappended() {
    let c = transfer_cluster();
    let (leader, target) = start_a_stuck_transfer(&c, |net, leader, target| net.cut(target, leader));
    let h = c.handle(leader);
    let p = h.partition_key("held");
    let write = std::thread::spawn(move || {
        block_on(h.replicate(p, phalanx::kv::KV_LOG_TYPE, kv_put("held", "1"))).status
    });
    wait_held(&c, leader, 1);
    c.net.heal(target, leader);
    let status = write.join().expect("writer thread");
    assert_eq!(status, Status::NodeIsNotLeader, "the held write after the leadership moved");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.leader(1) != Some(target) {
        assert!(Instant::now() < deadline, "node {target} did not take over partition 1");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.put("after", "1");
    for id in c.up() {
        assert_eq!(c.get(id, "held"), None, "node {id} applied the refused write");
        assert_eq!(c.get(id, "after").as_deref(), Some("1"));
    }
}

#[test]
fn survives_leader_crash_and_restart_converges() {
    let mut c = Cluster::with_leaders(3, 64, StorageKind::Wal);
    c.crash_the_leader_and_read_back_after_restart(40);
}

/// This process's threads: name and time spent on a CPU so far (`schedstat`, ns).
fn threads() -> Vec<(String, u64)> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_string();
            let ran = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((name, ran.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// CPU time, ns, of the threads whose name starts with `prefix`, and their distinct
/// executors (glommio names a thread, and its blocking pool's, `{name}-{executor id}`).
fn pool_threads(prefix: &str) -> (u64, std::collections::BTreeSet<String>) {
    let mine: Vec<(String, u64)> = threads().into_iter().filter(|(n, _)| n.starts_with(prefix)).collect();
    let executors = mine.iter().filter_map(|(n, _)| n.rsplit_once('-').map(|(e, _)| e.to_string())).collect();
    (mine.iter().map(|(_, ns)| ns).sum(), executors)
}

/// Three nodes of two shards each on one pool of two executors (`Node::start_on`): six
/// shards on two threads. They replicate, a crashed leader restarts on the same pool and
/// catches up, and when every node is gone the pool's threads end with the pool.
#[test]
fn nodes_sharing_executors_replicate_and_restart_on_the_same_pool() {
    let pool = Executors::start(2, false, "shared-ex").expect("a pool of two executors");
    let mut c = Cluster::on_pool(3, 8, StorageKind::Wal, vec![2, 2, 2], pool);
    // Other tests of this binary run nodes of their own at the same time: what shows that
    // these nodes run on the pool is the pool's threads doing their work.
    let (_, executors) = pool_threads("shared-ex");
    assert_eq!(executors.into_iter().collect::<Vec<_>>(), ["shared-ex0", "shared-ex1"]);
    c.wait_all_leaders(Duration::from_secs(20));
    c.crash_the_leader_and_read_back_after_restart(30);
    let (ran_ns, _) = pool_threads("shared-ex");
    // Six shards electing, ticking every 10 ms, writing 90 keys and recovering a node: far
    // more than the 10 ms a pool whose executors only wait for jobs could show.
    assert!(ran_ns > 10_000_000, "the pool's threads ran {ran_ns} ns: the nodes are not on it");
    // Dropping the nodes waits for their shards; the pool's last clone then stops its threads.
    c.nodes.clear();
    c.executors = None;
    let (_, executors) = pool_threads("shared-ex");
    assert!(executors.is_empty(), "the pool's threads outlived it: {executors:?}");
}

#[test]
fn system_partition_directory_and_failure_events_reach_every_node() {
    let mut c = Cluster::with_leaders(3, 4, StorageKind::Memory);
    // Every node announces itself through partition 0; every node learns every announcement.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let complete = (1..=3).all(|id| {
            let d = c.handle(id).cluster_directory();
            (1..=3).all(|n| d.client_address(n) == Some(format!("client-{n}:1").as_str()))
        });
        if complete {
            break;
        }
        assert!(Instant::now() < deadline, "directory incomplete");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The failure detector reports a crashed node down, then up again after it restarts.
    let events = c.handle(1).subscribe();
    c.crash(3);
    let wait_for = |want: &phalanx::Event| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(e) if &e == want => return,
                Ok(_) => {}
                Err(_) => panic!("no {want:?} within 20 s"),
            }
        }
    };
    wait_for(&phalanx::Event::NodeDown { node: 3 });
    assert_eq!(c.handle(1).down_nodes(), vec![3]);
    c.restart(3);
    wait_for(&phalanx::Event::NodeUp { node: 3 });
    assert!(c.handle(1).down_nodes().is_empty());
}

#[test]
fn leadership_spreads_to_preferred_leaders() {
    let c = Cluster::with_leaders(3, 64, StorageKind::Memory);
    // Partition p prefers voter p % 3 (ids in order): each node should end up leading its
    // share, whatever the elections' luck.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let preferred_everywhere = (1..=64u64).all(|p| c.leader(p) == Some(1 + p % 3));
        if preferred_everywhere {
            break;
        }
        assert!(Instant::now() < deadline, "leadership did not move to the preferred leaders");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_with_different_core_counts_route_through_the_bus() {
    // Shard i of one node talks to shard i % n of the other: messages for partitions the
    // receiving shard does not own cross that node's bus.
    let c = Cluster::with_cores(3, 12, StorageKind::Memory, vec![1, 2, 3]);
    c.wait_all_leaders(Duration::from_secs(20));
    for i in 0..40 {
        c.put(&format!("k{i}"), &format!("v{i}"));
    }
    for id in 1..=3 {
        for i in (0..40).step_by(5) {
            assert_eq!(c.get(id, &format!("k{i}")), Some(format!("v{i}")), "node {id} key k{i}");
        }
    }
}

/// A storage failure stops the shard loudly, and nobody waits on it: requests in flight or
/// queued in its inbox when it stopped, and every request sent to it afterwards, are
/// answered `Errored`; the node reports why and no longer claims to lead. Regression: a
/// benchmark client waited forever on a request queued in a stopped shard's inbox.
#[test]
fn a_failed_shard_answers_every_request() {
    const THREADS: usize = 16;
    const CALLS_AFTER_FAILURE: usize = 50;
    let net = MemoryNetwork::new(MemoryConfig::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = phalanx_storage::FaultInjector::new();
    let cfg = single_node(dir.path(), 1, Some(faults.clone()));
    let node = Node::start(cfg, net.factory(1), kv_factory()).expect("node starts");
    let h = node.handle();
    block_on(h.wait_for_leader(1, Duration::from_secs(10))).expect("a leader");
    assert_eq!(block_on(h.replicate(1, "t", Bytes::from_static(b"ok"))).status, Status::Success);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for _ in 0..THREADS {
        let (h, done) = (h.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut after = 0;
            let mut statuses = Vec::new();
            while after < CALLS_AFTER_FAILURE {
                let s = block_on(h.replicate(1, "t", Bytes::from_static(b"x"))).status;
                if s != Status::Success {
                    after += 1;
                }
                statuses.push(s);
            }
            let _ = done.send(statuses);
        });
    }
    std::thread::sleep(Duration::from_millis(50));
    faults.fail_next_sync();
    let mut failed = 0;
    for _ in 0..THREADS {
        let statuses = done_rx.recv_timeout(Duration::from_secs(30)).expect("every request is answered");
        assert!(statuses.iter().all(|s| matches!(s, Status::Success | Status::Errored)), "{statuses:?}");
        failed += statuses.iter().filter(|s| **s == Status::Errored).count();
    }
    assert_eq!(failed, THREADS * CALLS_AFTER_FAILURE);
    // A typed storage failure of the shard, the store's error as its source.
    let failure = h.failure();
    assert!(
        matches!(&failure, Some(phalanx::Error::Storage { shard: 0, source, .. }) if source.to_string().contains("sync")),
        "{failure:?}"
    );
    assert!(!h.am_i_leader_quick(1), "a failed node does not claim leadership");
}

/// A checkpoint's snapshot is saved by the WAL writer ahead of the write that compacts the
/// log below it: after a restart, what only the snapshot holds is still there.
#[test]
fn checkpoint_snapshots_are_saved_and_restored_after_restart() {
    let mut c = Cluster::with_leaders(3, 2, StorageKind::Wal);
    c.put_all("a", 30, "1");
    c.checkpoint_all();
    // Later writes: the snapshots ride with the next write of each node.
    c.put_all("b", 30, "2");
    let snapshot_files = |id: u64| -> usize {
        let dir = c.dir.path().join(format!("n{id}")).join("snapshots");
        let shards = std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        shards
            .iter()
            .flat_map(|s| {
                std::fs::read_dir(s.path()).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default()
            })
            .filter(|f| f.file_name().to_string_lossy().ends_with(".snap"))
            .count()
    };
    for id in 1..=3 {
        assert_eq!(snapshot_files(id), 2, "node {id} saved one snapshot per checkpointed partition");
    }
    for id in 1..=3 {
        c.crash(id);
        c.restart(id);
        c.wait_all_leaders(Duration::from_secs(20));
        for i in (0..30).step_by(4) {
            assert_eq!(c.get(id, &format!("a{i}")).as_deref(), Some("1"), "node {id}, a{i}");
            assert_eq!(c.get(id, &format!("b{i}")).as_deref(), Some("2"), "node {id}, b{i}");
        }
    }
}

/// Issue 11: a node whose WAL is gone but whose snapshot files survived (the WAL on a disk
/// of its own, replaced) restarts: the snapshots are installed in the new log store, the
/// partitions recover from the others, and every write is readable on it. (The group used to
/// restart from the snapshot with a log store ending below it: its next write was refused.)
#[test]
fn a_node_that_lost_its_wal_but_kept_its_snapshots_recovers() {
    let mut c = Cluster::with_leaders(3, 2, StorageKind::Wal);
    c.put_all("a", 30, "1");
    c.checkpoint_all();
    c.put_all("b", 30, "2");
    c.crash(3);
    let n3 = c.dir.path().join("n3");
    for shard in std::fs::read_dir(&n3).expect("node 3's directory").flatten() {
        if shard.file_name().to_string_lossy().starts_with("shard-") {
            std::fs::remove_dir_all(shard.path()).expect("remove a WAL shard");
        }
    }
    assert!(n3.join("snapshots").exists(), "the snapshots stay");
    c.put_all("c", 30, "3");
    c.restart(3);
    c.wait_all_leaders(Duration::from_secs(20));
    for i in (0..30).step_by(3) {
        assert_eq!(c.get(3, &format!("a{i}")).as_deref(), Some("1"), "a{i}");
        assert_eq!(c.get(3, &format!("b{i}")).as_deref(), Some("2"), "b{i}");
        assert_eq!(c.get(3, &format!("c{i}")).as_deref(), Some("3"), "c{i}");
    }
    assert!(c.handle(3).failure().is_none());
}

/// A clean stop writes the commit index it held back (commit-only hard states wait for the
/// next write): restarted, still cut off from its peers, a node knows every commit it knew.
#[test]
fn a_clean_stop_keeps_the_commit_index() {
    let mut c = Cluster::with_leaders(3, 2, StorageKind::Wal);
    c.put_all("k", 20, "v");
    let commits = |h: &NodeHandle| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = block_on(h.status()).iter().map(|s| (s.id, s.commit_index)).collect();
        v.sort_unstable();
        v
    };
    // Wait until node 3 has heard every partition's latest commit index (the notices that
    // follow the last writes are exactly what the deferral holds back).
    let deadline = Instant::now() + Duration::from_secs(20);
    let known = loop {
        let mine = commits(&c.handle(3));
        // Leader balancing may be moving a leadership at this instant: then look again.
        let leaders: Option<Vec<(u64, u64)>> = mine
            .iter()
            .map(|(p, _)| {
                let l = c.leader(*p)?;
                Some((*p, commits(&c.handle(l)).iter().find(|(q, _)| q == p).map_or(0, |(_, ci)| *ci)))
            })
            .collect();
        if leaders.as_ref() == Some(&mine) {
            break mine;
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up: {mine:?} vs {leaders:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    c.crash(3);
    // Restart it without rejoining: nothing can tell it the commit index again.
    c.nodes[2] = Some(c.start(3));
    assert_eq!(commits(&c.handle(3)), known, "the restarted node lost commit indexes it had");
}

/// Issue 11, item 1: a few legal writes stopped every node (four 7 MiB appends made one WAL
/// batch over the store's 16 MiB limit). Writers of entries at, just below and just above
/// the limit, all at once on several partitions of a cluster on the native WAL: every entry
/// within the limit commits, every one above is refused `TooLarge` at the door, requests
/// whose entries together exceed one log write are refused too, and no node stops.
#[test]
fn entries_at_every_size_boundary_never_stop_a_node() {
    let c = Cluster::with_leaders(3, 4, StorageKind::Wal);
    let max = c.handle(1).max_entry_bytes();
    let log_type = "t";
    let mut threads = Vec::new();
    for (k, size) in [max - 1, max, max + 1, max, max - 1, max + 1].into_iter().enumerate() {
        let handles: Vec<NodeHandle> = (1..=3).map(|id| c.handle(id)).collect();
        threads.push(std::thread::spawn(move || {
            let p = 1 + (k as u64 % 4);
            let payload = Bytes::from(vec![k as u8; size]);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut last = Status::Errored;
                for h in &handles {
                    let r = block_on(h.replicate(p, log_type, payload.clone()));
                    if r.status == Status::Success || r.status == Status::TooLarge {
                        return (size, r.status);
                    }
                    last = r.status;
                }
                assert!(Instant::now() < deadline, "size {size}: still {last} after 60 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    for t in threads {
        let (size, status) = t.join().expect("writer thread");
        let want = if size > max { Status::TooLarge } else { Status::Success };
        assert_eq!(status, want, "entry of {size} bytes (limit {max})");
    }
    // One request whose entries each fit but together exceed one log write.
    let p = 1;
    let leader = c.leader(p).expect("a leader");
    let many = vec![Bytes::from(vec![1u8; max / 2]); 5];
    assert_eq!(block_on(c.handle(leader).replicate_batch(p, log_type, many)).status, Status::TooLarge);
    let two = vec![Bytes::from(vec![2u8; max / 2]); 2];
    assert_eq!(block_on(c.handle(leader).replicate_batch(p, log_type, two)).status, Status::Success);
    // Issue 12, item 5: the largest entry the door takes — the largest payload with the
    // longest log type — is exactly the store's largest entry. It is stored and replicated
    // to every node; one byte more of payload, or of log type, is refused.
    let longest = "l".repeat(phalanx::config::MAX_LOG_TYPE_BYTES);
    let r = block_on(c.handle(leader).replicate(p, &longest, Bytes::from(vec![3u8; max])));
    assert_eq!(r.status, Status::Success, "the largest entry");
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        loop {
            let applied =
                block_on(c.handle(id).status()).into_iter().find(|s| s.id == p).map(|s| s.applied_index);
            if applied >= Some(r.log_index) {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} did not apply the largest entry: {applied:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let over = block_on(c.handle(leader).replicate(p, &longest, Bytes::from(vec![4u8; max + 1])));
    assert_eq!(over.status, Status::TooLarge);
    let longer = format!("{longest}l");
    let over = block_on(c.handle(leader).replicate(p, &longer, Bytes::from(vec![5u8; 1])));
    assert_eq!(over.status, Status::InvalidRequest, "a log type one byte too long");
    for id in 1..=3 {
        assert!(c.handle(id).failure().is_none(), "node {id} stopped");
    }
    c.put("after", "ok");
    assert_eq!(c.get(2, "after").as_deref(), Some("ok"));
}

/// Issue 11, item 1: a write the store refuses (a limit, the contract) leaves the store
/// usable, so it must not stop the node: the partition concerned stops on this node, its
/// callers are answered, the other partitions go on.
#[test]
fn a_write_the_store_refuses_stops_only_its_partition() {
    let net = MemoryNetwork::new(MemoryConfig::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = phalanx_storage::FaultInjector::new();
    let cfg = single_node(dir.path(), 2, Some(faults.clone()));
    let node = Node::start(cfg, net.factory(1), kv_factory()).expect("node starts");
    let h = node.handle();
    let events = h.subscribe();
    for p in 1..=2 {
        block_on(h.wait_for_leader(p, Duration::from_secs(10))).expect("a leader");
        assert_eq!(block_on(h.replicate(p, "t", Bytes::from_static(b"before"))).status, Status::Success);
    }
    faults.refuse_writes_of(Some(1));
    let r = block_on(h.replicate(1, "t", Bytes::from_static(b"refused")));
    assert_eq!(r.status, Status::Errored, "the caller of the refused write is answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(phalanx::Event::PartitionStopped { partition: 1, reason }) => {
                assert!(reason.contains("injected refusal"), "{reason}");
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("no PartitionStopped event"),
        }
    }
    faults.refuse_writes_of(None);
    assert_eq!(block_on(h.replicate(1, "t", Bytes::from_static(b"later"))).status, Status::Errored);
    assert_eq!(block_on(h.replicate(2, "t", Bytes::from_static(b"other"))).status, Status::Success);
    assert!(h.failure().is_none(), "the node runs on");
    assert!(!h.am_i_leader_quick(1));
    node.shutdown();
    // After a restart the partition recovers from what was stored.
    let cfg = single_node(dir.path(), 2, None);
    let node = Node::start(cfg, MemoryNetwork::new(MemoryConfig::default()).factory(1), kv_factory())
        .expect("restarts");
    let h = node.handle();
    block_on(h.wait_for_leader(1, Duration::from_secs(10))).expect("a leader again");
    assert_eq!(block_on(h.replicate(1, "t", Bytes::from_static(b"again"))).status, Status::Success);
    node.shutdown();
}

/// Issue 12, item 5: a transport whose frames cannot carry the node's largest Raft message
/// (here: one entry of the largest size) would drop it and every resend; the node refuses
/// to start, naming the setting, instead of running a partition that can never replicate.
/// With the entry limits lowered to fit, the same transport starts and serves.
#[test]
fn a_transport_frame_below_the_largest_message_refuses_start() {
    let frame = 1 << 20;
    let net = MemoryNetwork::new(MemoryConfig { max_frame_bytes: frame, ..MemoryConfig::default() });
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = single_node(dir.path(), 1, None);
    match Node::start(cfg.clone(), net.factory(1), kv_factory()) {
        Err(phalanx::Error::Config(m)) => {
            assert!(m.contains("max_frame_bytes") && m.contains(&frame.to_string()), "{m}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started with frames smaller than its largest message"),
    }
    let mut small = cfg;
    small.raft.max_bytes_per_append = 256 << 10;
    small.raft.snapshot_chunk_bytes = 256 << 10;
    small.max_entry_bytes = 256 << 10;
    small.raft.max_entry_bytes = small.max_entry_bytes + phalanx::config::MAX_LOG_TYPE_BYTES;
    let node = Node::start(small, net.factory(1), kv_factory()).expect("entries that fit the frames");
    let h = node.handle();
    block_on(h.wait_for_leader(1, Duration::from_secs(10))).expect("a leader");
    let r = block_on(h.replicate(1, "t", Bytes::from(vec![1u8; 256 << 10])));
    assert_eq!(r.status, Status::Success);
    let r = block_on(h.replicate(1, "t", Bytes::from(vec![1u8; (256 << 10) + 1])));
    assert_eq!(r.status, Status::TooLarge);
}

/// Issue 12, item 6: `NodeHandle::stats` reads what the engine counts, per node, shard and
/// partition, and the figures agree with what happened: every partition on every node with
/// its state, one leader per partition across the nodes, the writes' entries in the stores
/// and their latencies, the messages handed to the transports and the frames those sent.
#[test]
fn stats_report_what_the_engine_counts() {
    let c = Cluster::with_leaders(3, 4, StorageKind::Wal);
    let before: Vec<_> = (1..=3).map(|id| block_on(c.handle(id).stats())).collect();
    let writes = 40;
    c.put_all("s", writes, "v");
    // A write is acknowledged once a quorum holds it: the third node's store may still be
    // writing it. Every node holds every write once its store's counters say so.
    let after: Vec<_> = (1..=3)
        .map(|id| {
            let b = &before[(id - 1) as usize];
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let a = block_on(c.handle(id).stats());
                if a.store().entries_written - b.store().entries_written >= writes as u64 {
                    return a;
                }
                assert!(Instant::now() < deadline, "node {id}'s store never wrote every write");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .collect();
    for (b, a) in before.iter().zip(&after) {
        let id = a.node_id;
        assert_eq!(a.shards.len(), 2, "node {id}: one entry per shard");
        let ids: Vec<u64> = a.partitions().map(|p| p.status.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..=4).collect::<Vec<u64>>(), "node {id}: every partition once");
        for p in a.partitions() {
            assert!(
                p.status.applied_index <= p.status.commit_index
                    && p.status.commit_index <= p.status.last_index
            );
        }
        let latency = a.write_latency().since(&b.write_latency());
        assert!(latency.count > 0 && latency.count <= a.store().batches - b.store().batches, "{latency:?}");
        assert!(latency.quantile_us(0.5) <= latency.max_us);
        let core = a.core();
        let t = a.transport();
        assert!(core.messages_sent >= core.batches_sent && core.batches_sent > 0, "node {id}: {core:?}");
        // Over the in-memory transport, every batch handed over is sent (none oversized).
        assert_eq!(
            t.batches_sent + t.batches_dropped_unreachable + t.batches_dropped_queue_full,
            core.batches_sent
        );
        assert!(t.bytes_sent > 0 && t.batches_received > 0 && core.messages_received > 0);
        assert_eq!(core.unknown_group_messages, 0);
    }
    // One leader per partition, system partition included: the nodes answer one after the
    // other, and leadership may move between their answers (balancing), so until one round
    // of answers agrees.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: usize = (1..=3).map(|id| block_on(c.handle(id).stats()).leaders()).sum();
        if leaders == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{leaders} leaders for 5 partitions");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The stats agree with the status answer taken just before (terms and indexes only grow).
    let status = block_on(c.handle(1).status());
    let stats = block_on(c.handle(1).stats());
    assert_eq!(stats.partitions().count(), status.len());
    for s in &status {
        let p = stats.partitions().find(|p| p.status.id == s.id).expect("every partition");
        assert!(p.status.term >= s.term && p.status.commit_index >= s.commit_index, "{p:?} after {s:?}");
    }
}

/// Waits until every running node's roster is at `version`, and returns node 1's view.
fn roster_at(c: &Cluster, version: u64) -> phalanx::roster::Roster {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rosters: Vec<_> = c.up().into_iter().map(|id| c.handle(id).roster()).collect();
        if rosters.iter().all(|r| r.version == version && r == &rosters[0]) {
            return rosters[0].clone();
        }
        assert!(Instant::now() < deadline, "rosters not at version {version}: {rosters:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 13, item 1: the system partition's first leader seeds the roster with the initial
/// cluster; changes through its leader are decided against the expected version (stale
/// versions, a second join while one is in flight, unknown members, the last voter are
/// refused with their statuses); every node applies them and emits one event each, in order;
/// a node that restarts from its log, and one that restarts from a compacted log (the
/// system partition's snapshot), both hold the same roster.
#[test]
fn the_roster_is_seeded_changed_by_version_and_survives_restarts() {
    use phalanx::roster::{Change, Role};
    let mut c = Cluster::with_leaders(3, 2, StorageKind::Wal);
    let events = c.handle(2).subscribe();
    let seeded = roster_at(&c, 1);
    assert_eq!(seeded.voters().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(seeded.members[&2].raft_address, "mem-2");
    let change = |expected: u64, ch: Change| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = c.leader(0) {
                let r = block_on(c.handle(l).change_roster(expected, ch.clone()));
                if !matches!(r.status, Status::NodeIsNotLeader | Status::ProposalTimeout) {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "no system partition leader took {ch:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let add4 = Change::Add(4, "mem-4".into(), "client-4:1".into());
    let r = change(1, add4.clone());
    assert_eq!((r.status, r.version, r.changed), (Status::Success, 2, true));
    assert_eq!(change(1, Change::Promote(4)).status, Status::StaleMembership);
    assert_eq!(change(2, add4.clone()).status, Status::Success, "the same add again is idempotent");
    assert_eq!(
        change(2, Change::Add(5, "mem-5".into(), String::new())).status,
        Status::ConcurrentMembershipChange
    );
    assert_eq!(change(2, Change::Promote(9)).status, Status::MemberNotFound);
    let dup = change(2, Change::Add(6, "mem-1".into(), String::new()));
    assert_eq!(dup.status, Status::InvalidRequest);
    assert!(dup.reason.contains("mem-1"), "{}", dup.reason);
    assert_eq!(change(2, Change::Remove(4)).status, Status::Success);
    // Member 4 never came: removed at once, as a learner. A second member that never comes
    // joins (it stays a learner: no partition can report it caught up).
    let r = change(3, Change::Add(5, "mem-5".into(), String::new()));
    assert_eq!((r.status, r.version), (Status::Success, 4));
    assert_eq!(change(4, Change::Promote(5)).status, Status::InvalidRequest, "not caught up");
    let roster = roster_at(&c, 4);
    assert_eq!(roster.members[&5].role, Role::Learner);
    assert!(!roster.members.contains_key(&4));
    // Node 2 saw every applied change once, in order (the seed may have come before it
    // subscribed; every change after it did not).
    let mut seen = Vec::new();
    while seen.last() != Some(&4) {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(phalanx::Event::RosterChanged { version, .. }) => seen.push(version),
            Ok(_) => {}
            Err(e) => panic!("roster events {seen:?}: {e}"),
        }
    }
    assert!(seen == vec![1, 2, 3, 4] || seen == vec![2, 3, 4], "roster events {seen:?}");
    // A restart replays the roster from the log.
    c.crash(2);
    c.restart(2);
    assert_eq!(roster_at(&c, 4), roster);
    // A restart from a compacted system partition restores it from the snapshot.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.leader(0).is_some_and(|l| block_on(c.handle(l).replicate_checkpoint(0)).success()) {
        assert!(Instant::now() < deadline, "could not checkpoint the system partition");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.crash(1);
    c.restart(1);
    assert_eq!(roster_at(&c, 4), roster);
}

/// Issue 12, item 5: a checkpoint whose state machine snapshot is larger than followers
/// accept (`raft.max_snapshot_bytes`) once compacted the log below it, so a follower that
/// needed those entries could only be sent a snapshot it refuses, forever. Now the log is
/// kept (counted in the stats, logged): a follower that was down catches up from the log and
/// reads every write.
#[test]
fn a_snapshot_larger_than_followers_accept_keeps_the_log() {
    let mut c = Cluster::with_tweak(3, 1, StorageKind::Wal, |cfg| {
        cfg.raft.max_snapshot_bytes = 4 << 10;
        cfg.raft.log_cache_entries = 4;
        cfg.leader_balance_interval_ms = 0;
    });
    c.wait_all_leaders(Duration::from_secs(20));
    c.crash(3);
    let value = "v".repeat(1000);
    c.put_all("big", 10, &value);
    c.checkpoint_all();
    let leader = c.leader(1).expect("a leader");
    let deadline = Instant::now() + Duration::from_secs(10);
    while block_on(c.handle(leader).stats()).core().snapshots_too_large == 0 {
        assert!(Instant::now() < deadline, "the oversized snapshot was not reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.restart(3);
    for i in 0..10 {
        assert_eq!(c.get(3, &format!("big{i}")).as_deref(), Some(value.as_str()), "node 3 never caught up");
    }
}

/// Issue 13, item 3 for embedders: the roster changes through any member's handle (a node
/// that does not lead the system partition forwards the change and confirms it in its own
/// roster); a new node joins with `joining` and `join_cluster` returns once it is a voter; a
/// member leaves with `leave_cluster`, which returns once every partition dropped it.
#[test]
fn embedders_add_join_and_leave_through_the_handle() {
    use phalanx::roster::{Change, Role};
    let mut c = Cluster::with_leaders(3, 2, StorageKind::Memory);
    roster_at(&c, 1);
    c.put_all("before-", 20, "v");
    let timeout = Duration::from_secs(30);
    // Asked of a node that does not lead the system partition.
    let leader0 = c.leader(0).expect("a system partition leader");
    let asker = (1..=3).find(|i| *i != leader0).expect("a follower");
    let h = c.handle(asker);
    let add = Change::Add(4, "mem-4".into(), "client-4:1".into());
    let r = block_on(h.change_membership(add.clone(), timeout));
    assert_eq!((r.status, r.changed), (Status::Success, true), "{r:?}");
    assert_eq!(r.version, 2);
    // Refusals come back at once with their status; a repeated add is already done.
    assert_eq!(block_on(h.change_membership(Change::Promote(99), timeout)).status, Status::MemberNotFound);
    let again = block_on(h.change_membership(add, timeout));
    assert_eq!((again.status, again.changed), (Status::Success, false));
    c.start_joining(4);
    block_on(c.handle(4).join_cluster(timeout)).expect("node 4 becomes a voter");
    let roster = c.handle(4).roster();
    assert_eq!(roster.members[&4].role, Role::Voter);
    assert_eq!(c.get(4, "before-7").as_deref(), Some("v"));
    // Node 2 leaves: the roster marks it leaving, every partition drops it, the roster lets
    // it go; writes go on meanwhile.
    let left = block_on(c.handle(2).leave_cluster(timeout)).expect("node 2 leaves");
    c.put_all("after-", 10, "w");
    let roster = roster_at_least(&c, left);
    assert!(!roster.members.contains_key(&2), "{roster:?}");
    for p in 0..=2u64 {
        let l = c.leader(p).expect("a leader");
        let st = block_on(c.handle(l).status());
        let s = st.iter().find(|s| s.id == p).expect("the partition");
        assert!(
            !s.membership.voters.contains(&2) && !s.membership.learners.contains(&2),
            "{p}: {:?}",
            s.membership
        );
        assert!(s.membership.voters.contains(&4), "{p}: {:?}", s.membership);
    }
}

/// Waits until node 1's roster is at `version` or later.
fn roster_at_least(c: &Cluster, version: u64) -> phalanx::roster::Roster {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.handle(1).roster();
        if r.version >= version {
            return r;
        }
        assert!(Instant::now() < deadline, "roster at {} below {version}", r.version);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 13, item 4: with `swim.eviction_grace_ms` set, partition 0's leader removes a member
/// the failure detector has held dead for that long; every partition drops it. Off by
/// default: without it the dead member stays.
#[test]
fn a_member_dead_past_the_grace_is_evicted() {
    let mut c = Cluster::with_tweak(3, 2, StorageKind::Memory, |cfg| cfg.swim.eviction_grace_ms = 500);
    c.wait_all_leaders(Duration::from_secs(20));
    roster_at(&c, 1);
    let events = c.handle(1).subscribe();
    c.crash(3);
    // Suspect, then down, then removed (leaving, then gone once every partition dropped it).
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.handle(1).roster().members.contains_key(&3) {
        assert!(Instant::now() < deadline, "node 3 not evicted: {:?}, events {seen:?}", c.handle(1).roster());
        if let Ok(e) = events.recv_timeout(Duration::from_millis(50)) {
            if matches!(e, phalanx::Event::NodeSuspect { node: 3 } | phalanx::Event::NodeDown { node: 3 }) {
                seen.push(e);
            }
        }
    }
    assert!(seen.contains(&phalanx::Event::NodeDown { node: 3 }), "{seen:?}");
    for p in 0..=2u64 {
        let l = c.leader(p).expect("a leader");
        let st = block_on(c.handle(l).status());
        let s = st.iter().find(|s| s.id == p).expect("the partition");
        assert_eq!(s.membership.voters.iter().copied().collect::<Vec<_>>(), vec![1, 2], "{p}");
    }
    c.put("after-eviction", "v");
}

#[test]
fn without_a_grace_a_dead_member_stays() {
    let mut c = Cluster::with_leaders(3, 1, StorageKind::Memory);
    roster_at(&c, 1);
    c.crash(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.handle(1).down_nodes().contains(&3) {
        assert!(Instant::now() < deadline, "node 3 never down");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well past any grace a test would use: still a voter.
    std::thread::sleep(Duration::from_secs(2));
    let r = c.handle(1).roster();
    assert_eq!(r.members[&3].role, phalanx::roster::Role::Voter, "{r:?}");
    assert_eq!(r.version, 1);
}
