//! The deterministic simulator: N nodes × M groups over a seeded faulty network and
//! simulated disks, with crashes that lose everything not yet durable. After every step the
//! [`Checker`] verifies Raft's safety properties; after the faults heal it checks liveness.
//!
//! Everything random comes from one seed, so a failing run replays exactly:
//! `PHALANX_SIM_SEED=<seed> cargo test --release -p phalanx-tests --test sim`.

pub mod checker;
pub mod disk;
pub mod net;
pub mod node;
mod workload;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use phalanx::NodeConfig;
use phalanx::raft::{GroupId, NodeId, Role, SeededRng, mix_seed};

pub use checker::{Checker, Violation};
use net::{NetFaults, Network};
use node::{FetchCounts, SimNode};
use workload::Workload;

/// Knobs of one run, all derived from its seed unless set by hand.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Simulated ticks.
    pub steps: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Initial voters: nodes 1..=voters (the rest start outside the group and may join).
    pub voters: u64,
    /// Number of user partitions (groups `1..=groups`; the system partition 0 runs too).
    pub groups: u64,
    /// Network faults during the chaos phase.
    pub faults: NetFaults,
    /// Largest simulated fsync latency in ticks.
    pub max_disk_latency: u64,
    /// Tick at which faults stop and the liveness phase starts.
    pub heal_at: u64,
    /// Whether crashes, partitions and membership changes happen.
    pub chaos: bool,
    /// Crash probability per tick, in units of 1/10,000.
    pub crash_per_10k: u64,
    /// Probability per tick that a down node restarts, in percent.
    pub restart_pct: u64,
    /// Share of crashes that also lose durable state, in percent: half wipe the disk, half
    /// cut the tail of some groups' logs. Only while no other node has lost state (the
    /// protocol survives the loss of a minority's disks one at a time, not of a majority's).
    pub disk_loss_pct: u64,
    /// The batch cost the simulated WAL writer cuts writes at (`runtime::split_write`), far
    /// below the real store's so that crashes land between a write's batches: a crash during
    /// a write leaves a random prefix of them durable.
    pub split_cost: u64,
    /// Probability per tick of a new partition, in units of 1/10,000.
    pub partition_per_10k: u64,
    /// The Raft configuration of every group (id, group, seed filled in per node).
    pub raft: phalanx::raft::Config,
    /// At the heal, crash the node leading the most groups (when the others can do without
    /// it) and hold it down until its groups must have elected again (`check_failover`).
    pub down_at_heal: bool,
    /// Share of the crashes that lose nothing durable which are clean stops instead (SIGTERM:
    /// the stop comes among a turn's inputs, the last write is stored, the writer finishes),
    /// in percent.
    pub clean_stop_pct: u64,
}

impl SimConfig {
    /// A configuration drawn from `seed`.
    #[must_use]
    pub fn from_seed(seed: u64, steps: u64) -> Self {
        let mut r = SeededRng::new(mix_seed(&[seed, 0xC0FF_EE00]));
        let nodes = if r.range(0, 2) == 0 { 3 } else { 5 };
        // Some 3-node runs bootstrap two voters and grow to three: a replica that lost its
        // disk then restarts with a stale configuration of two (`recovery.rs`).
        let voters = match (nodes, r.range(0, 4)) {
            (5, 0 | 1) => 5,
            (3, 0) => 2,
            _ => 3,
        };
        let max_delay = r.range(1, 7);
        let max_disk_latency = r.range(0, 6);
        let rtt = round_trip_ticks(max_delay, max_disk_latency);
        SimConfig {
            seed,
            steps,
            nodes,
            voters,
            groups: r.range(1, 4),
            faults: NetFaults {
                drop_per_mille: r.range(0, 100),
                dup_per_mille: r.range(0, 50),
                min_delay: 1,
                max_delay,
                fifo_links: r.range(0, 2) == 0,
            },
            max_disk_latency,
            heal_at: steps * 3 / 4,
            chaos: true,
            crash_per_10k: [10, 40, 150, 500][r.range(0, 4) as usize],
            restart_pct: [2, 5, 20, 60][r.range(0, 4) as usize],
            disk_loss_pct: [0, 10, 30, 60][r.range(0, 4) as usize],
            split_cost: [200, 400, 1000, u64::MAX][r.range(0, 4) as usize],
            partition_per_10k: [10, 30, 100][r.range(0, 3) as usize],
            down_at_heal: r.range(0, 3) == 0,
            // Its own stream: seeds without clean stops keep the traces they had before
            // clean stops were simulated (and the mutants their regression seeds).
            clean_stop_pct: [0, 0, 30, 60]
                [SeededRng::new(mix_seed(&[seed, CLEAN_STOP_STREAM])).range(0, 4) as usize],
            raft: {
                let mut c = node::base_config();
                // Small appends split a new leader's no-op from the older entries before it,
                // which is what exposes commit-rule bugs (Figure 8).
                c.max_entries_per_append = [1, 2, 8, 8][r.range(0, 4) as usize];
                c.max_inflight_appends = [1, 4][r.range(0, 2) as usize];
                // A small entry cache makes lagging followers read entries back from disk.
                c.log_cache_entries = [0, 4, 64, usize::MAX][r.range(0, 4) as usize];
                // Operators set election timeouts above the round trip (§5.6 timing).
                c.election_ticks_min = c.election_ticks_min.max(rtt);
                // A narrow timeout spread makes split votes (two candidates in one term)
                // common, which is where vote-durability bugs show; a spread below the round
                // trip can split votes forever, so such seeds are checked for safety only.
                c.election_ticks_max = c.election_ticks_min + [2, rtt, 2 * rtt][r.range(0, 3) as usize];
                c.pre_vote = r.range(0, 4) != 0;
                c.check_quorum = r.range(0, 4) != 0;
                // Quiescence (`raft/quiesce.rs`) in most runs: groups the workload leaves
                // alone for a while quiesce, and crashes, partitions and writes meet them so.
                c.quiesce_after_ticks = [0, 15, 40, 40][r.range(0, 4) as usize];
                c
            },
        }
    }

    /// Whether Raft promises this configuration progress once faults stop, so the run checks
    /// liveness. It needs (§5.6) election timeouts randomized over more than a round trip,
    /// or split votes can repeat forever; and PreVote or CheckQuorum, or a removed server
    /// can keep deposing leaders with ever higher terms (thesis §4.2.3).
    #[must_use]
    pub fn liveness_expected(&self) -> bool {
        let rtt = round_trip_ticks(self.faults.max_delay, self.max_disk_latency);
        let spread = self.raft.election_ticks_max - self.raft.election_ticks_min;
        spread >= rtt && (self.raft.pre_vote || self.raft.check_quorum)
    }
}

/// The longest vote round trip: request and answer delays plus the vote's fsync.
fn round_trip_ticks(max_delay: u64, max_disk_latency: u64) -> u64 {
    2 * max_delay + max_disk_latency + 1
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Ticks simulated.
    pub steps: u64,
    /// Broken properties.
    pub violations: Vec<Violation>,
    /// Hash of the whole trace (equal for equal seeds).
    pub trace_hash: u64,
    /// Messages sent.
    pub messages: u64,
    /// Client writes acknowledged.
    pub acked: u64,
    /// Client writes refused, never appended, after their proposal got a ticket (mostly held
    /// through a leadership transfer that moved the leadership: `shard/held.rs`).
    pub refused: u64,
    /// Leaders elected (distinct group/term pairs).
    pub elections: u64,
    /// Snapshots sent.
    pub snapshots: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Crashes that lost durable state (wiped disks, cut log tails).
    pub disk_losses: u64,
    /// Whether liveness was checked (see `SimConfig::liveness_expected`).
    pub liveness_checked: bool,
    /// Entry reads from disk for followers (the leader no longer held them in memory).
    pub fetches: u64,
    /// Fetches whose range a compaction removed before they were read.
    pub fetches_overtaken: u64,
    /// Roster versions the system partition reached (its seed included).
    pub roster_versions: u64,
    /// Ticks × groups a leader spent quiesced (`raft/quiesce.rs`).
    pub quiesced_ticks: u64,
    /// Each node's view of each group at the end (for debugging a failing seed).
    pub final_state: String,
}

/// A group the node crashed at the heal led: its id, the term, whether it was quiesced.
type LedAtHeal = (GroupId, u64, bool);

/// A running simulation.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    rng: SeededRng,
    net: Network,
    nodes: Vec<SimNode>,
    /// Every group of a node: the system partition (0) and `1..=groups`. The clients use
    /// them all (as the roster will change partition 0's members too, issue 13).
    groups: Vec<GroupId>,
    checker: Checker,
    workload: Workload,
    trace: std::collections::hash_map::DefaultHasher,
    crashes: u64,
    disk_losses: u64,
    /// Per group and node, its commit index at the heal.
    commit_at_heal: std::collections::BTreeMap<(GroupId, NodeId), u64>,
    fetches: FetchCounts,
    /// Groups that lost a voter's disk while they had two voters: no majority of the others
    /// can elect a leader, so their liveness is not expected (their safety is still checked).
    stranded: std::collections::BTreeSet<GroupId>,
    /// `PHALANX_SIM_TRACE=<tick>`: print every delivered message from that tick on.
    trace_from: Option<u64>,
    /// Ticks × groups a leader spent quiesced.
    quiesced_ticks: u64,
    /// The node crashed at the heal (`SimConfig::down_at_heal`), and the groups it led then
    /// with their terms and whether they were quiesced.
    down_at_heal: Option<(usize, Vec<LedAtHeal>)>,
    /// Decides which crashes are clean stops (its own stream, see `clean_stop_pct`).
    stop_rng: SeededRng,
    /// The node stopping cleanly this tick, after its inputs.
    stopping: Option<usize>,
}

/// Salt of the random streams that decide clean stops (apart from the main one, see
/// `SimConfig::clean_stop_pct`).
const CLEAN_STOP_STREAM: u64 = 0x570F;

/// Messages one node may send in one round: far above what any run needs (a few groups, a
/// few peers, appends of at most 8 entries), far below what exhausts memory.
const MAX_MESSAGES_PER_ROUND: usize = 10_000;
/// Upper bound on ready/persist rounds per node per tick (each round may enable another).
const MAX_ROUNDS_PER_TICK: usize = 16;
/// With `down_at_heal`, the clients leave every group alone for this many ticks before the
/// heal: time to settle and quiesce (`quiesce_after_ticks` is at most 40).
const QUIET_BEFORE_HEAL: u64 = 150;
/// Ticks after the heal within which every group must elect a leader and commit.
pub const LIVENESS_TICKS: u64 = 1000;

impl Sim {
    /// A simulation of `cfg`.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        let groups: Vec<GroupId> = (0..=cfg.groups).collect();
        let base = Instant::now();
        let nodes =
            (1..=cfg.nodes).map(|id| SimNode::new(id, Arc::new(node_config(&cfg, id)), base, 0)).collect();
        Sim {
            rng: SeededRng::new(mix_seed(&[cfg.seed, 0x5151])),
            stop_rng: SeededRng::new(mix_seed(&[cfg.seed, 0x5151, CLEAN_STOP_STREAM])),
            stopping: None,
            net: Network::new(cfg.faults.clone()),
            now: 0,
            nodes,
            groups,
            checker: Checker::new(),
            workload: Workload::default(),
            trace: Default::default(),
            crashes: 0,
            disk_losses: 0,
            commit_at_heal: std::collections::BTreeMap::new(),
            fetches: FetchCounts::default(),
            stranded: std::collections::BTreeSet::new(),
            trace_from: std::env::var("PHALANX_SIM_TRACE").ok().and_then(|v| v.parse().ok()),
            quiesced_ticks: 0,
            down_at_heal: None,
            cfg,
        }
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        let end = self.cfg.steps.max(self.cfg.heal_at + LIVENESS_TICKS);
        while self.now < end {
            self.step();
        }
        if self.cfg.liveness_expected() {
            let live: Vec<GroupId> = self.live_groups();
            self.workload.check_liveness(&live, &mut self.checker);
            self.check_convergence();
            self.check_roster_followed();
        }
        self.check_detectors();
        self.checker.finish();
        let roster_versions = self.checker.roster_versions();
        let final_state = self.describe();
        Report {
            final_state,
            seed: self.cfg.seed,
            steps: self.now,
            violations: self.checker.violations,
            trace_hash: self.trace.finish(),
            messages: self.net.sent,
            acked: self.workload.acked,
            refused: self.workload.refused,
            elections: self.workload.leaders_seen,
            snapshots: self.nodes.iter().map(|n| snapshots_sent(n, &self.groups)).sum(),
            crashes: self.crashes,
            disk_losses: self.disk_losses,
            liveness_checked: self.cfg.liveness_expected(),
            fetches: self.fetches.fetches,
            fetches_overtaken: self.fetches.overtaken,
            roster_versions,
            quiesced_ticks: self.quiesced_ticks,
        }
    }

    /// One tick of simulated time.
    pub fn step(&mut self) {
        self.now += 1;
        let now = self.now;
        if self.cfg.down_at_heal && now + QUIET_BEFORE_HEAL == self.cfg.heal_at {
            // The groups go idle before the heal, so the leader crashed then is most likely
            // quiesced: its followers have only the failure detector to notice.
            self.workload.rest_all(&self.groups, self.cfg.heal_at + 1);
        }
        if self.cfg.chaos && now < self.cfg.heal_at {
            self.inject_faults();
        } else if now == self.cfg.heal_at {
            self.heal();
            self.crash_a_leader_at_heal();
        } else if now == self.cfg.heal_at + self.failover_ticks() {
            self.check_failover();
        }
        for m in self.net.due(now) {
            let to = m.to as usize - 1;
            if let Some(n) = self.nodes.get_mut(to)
                && n.up
            {
                if self.trace_from.is_some_and(|t| now >= t) {
                    eprintln!("t={now} deliver {}", describe_message(&m));
                }
                // Bad or stale input is the core's to reject; the simulator only delivers.
                n.deliver(m);
            }
        }
        let healed = now >= self.cfg.heal_at;
        self.workload.run(
            &mut self.nodes,
            &self.groups,
            &mut self.checker,
            &mut self.rng,
            now,
            healed || !self.cfg.chaos,
        );
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            if self.stopping == Some(i) {
                self.stopping = None;
                self.nodes[i].stop_cleanly(now, self.cfg.split_cost, &mut self.fetches);
                for detail in std::mem::take(&mut self.nodes[i].disk.refused) {
                    self.checker.on_store_refused(self.nodes[i].id, detail);
                }
                self.workload.forget_node(i as u64 + 1);
                continue;
            }
            // A slightly slow clock now and then: nodes' ticks need not line up.
            if self.rng.range(0, 100) >= 3 {
                self.nodes[i].tick(now);
            }
            self.process_node(i);
        }
        self.observe();
    }

    fn inject_faults(&mut self) {
        let n = self.cfg.nodes;
        if self.rng.range(0, 10_000) < self.cfg.partition_per_10k {
            if self.rng.range(0, 3) == 0 {
                let from = self.rng.range(1, n + 1);
                let to = self.rng.range(1, n + 1);
                if from != to {
                    self.net.cut_one_way(from, to);
                }
            } else {
                // Symmetric partition: a random split.
                let mut a = Vec::new();
                let mut b = Vec::new();
                for id in 1..=n {
                    if self.rng.range(0, 2) == 0 { a.push(id) } else { b.push(id) }
                }
                self.net.partition(&a, &b);
            }
        }
        if self.net.is_partitioned() && self.rng.range(0, 100) < 2 {
            self.net.heal();
        }
        if self.rng.range(0, 10_000) < self.cfg.crash_per_10k {
            // Most crashes hit a node with a write in flight: that is where durability bugs
            // (answering before persisting) show.
            let busy: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].up && !self.nodes[i].writer.is_idle())
                .collect();
            let victim = if !busy.is_empty() && self.rng.range(0, 10) < 8 {
                busy[self.rng.range(0, busy.len() as u64) as usize]
            } else {
                self.rng.range(0, n) as usize
            };
            if self.nodes[victim].up {
                let others_lost =
                    (0..self.nodes.len()).any(|i| i != victim && self.nodes[i].has_lost_state());
                // Down nodes' views are unknown (a shrinking change may wait in one's log).
                let all_up = self.nodes.iter().all(|n| n.up);
                if !others_lost && all_up && self.rng.range(0, 100) < self.cfg.disk_loss_pct {
                    self.nodes[victim].lost_at = self.now;
                    if self.rng.range(0, 2) == 0 {
                        self.nodes[victim].wipe();
                    } else {
                        let groups: Vec<GroupId> =
                            self.groups.iter().copied().filter(|_| self.rng.range(0, 2) == 0).collect();
                        let k = self.rng.range(1, 6) as usize;
                        self.nodes[victim].cut_tails(&groups, k);
                    }
                    self.disk_losses += 1;
                } else if self.stop_rng.range(0, 100) < self.cfg.clean_stop_pct {
                    // Stops after this tick's inputs (in `step`), before their Ready.
                    self.stopping = Some(victim);
                } else {
                    // Most crashes hit a write in flight: a random prefix of its batches is
                    // durable.
                    let keep = self.rng.range(0, 4) as usize;
                    self.nodes[victim].crash_mid_write(keep);
                }
                if self.stopping != Some(victim) {
                    self.workload.forget_node(victim as u64 + 1);
                }
                self.crashes += 1;
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up && self.rng.range(0, 100) < self.cfg.restart_pct {
                self.restart(i);
            }
        }
    }

    /// Restarts node `i`; a restore the core refuses is a violation (the node stays down).
    fn restart(&mut self, i: usize) {
        if self.nodes[i].has_lost_state() {
            self.nodes[i].lost_at = self.now;
        }
        if let Err(e) = self.nodes[i].restart(self.now) {
            let id = self.nodes[i].id;
            self.checker.on_unrecoverable(id, e.to_string());
        }
    }

    fn heal(&mut self) {
        self.net.heal();
        self.net.faults.drop_per_mille = 0;
        self.net.faults.dup_per_mille = 0;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.restart(i);
            }
        }
        for n in &mut self.nodes {
            let Some(core) = n.core() else { continue };
            for &g in &self.groups {
                core.multi_mut().update(g, |grp| {
                    if grp.is_leader() {
                        let _ = grp.resume_heartbeats();
                    }
                });
            }
        }
        self.workload.heal_at = Some(self.now);
        for &g in &self.groups {
            for n in &self.nodes {
                let c = n.multi().group(g).map_or(0, |grp| grp.log().committed());
                self.commit_at_heal.insert((g, n.id), c);
            }
        }
    }

    /// How long after the heal the groups of a node crashed then must have a leader again:
    /// the failure detector's time to suspect it (a probe round over every member, its
    /// timeouts) and to pass the word on, plus two election timeouts (a PreVote refused by a
    /// follower that did not suspect yet is tried again), plus a few round trips.
    fn failover_ticks(&self) -> u64 {
        let c = node_config(&self.cfg, 1);
        let rtt = round_trip_ticks(self.cfg.faults.max_delay, self.cfg.max_disk_latency);
        c.swim.probe_interval_ms * (self.cfg.nodes + 1) + 2 * self.cfg.raft.election_ticks_max + 4 * rtt
    }

    /// At the heal, with `down_at_heal`: crashes the node leading the most groups, when every
    /// group keeps a majority of its voters without it and no replica is recovering lost
    /// state, and keeps it down until `check_failover`.
    fn crash_a_leader_at_heal(&mut self) {
        if !self.cfg.down_at_heal || !self.cfg.liveness_expected() || !self.stranded.is_empty() {
            return;
        }
        if self.nodes.iter().any(|n| !n.up || n.has_lost_state()) {
            return;
        }
        let led = |n: &SimNode| -> Vec<(GroupId, u64, bool)> {
            self.groups
                .iter()
                .filter_map(|&g| {
                    n.multi()
                        .group(g)
                        .filter(|grp| grp.is_leader())
                        .map(|grp| (g, grp.term(), grp.is_quiesced()))
                })
                .collect()
        };
        let Some(victim) =
            (0..self.nodes.len()).max_by_key(|&i| (led(&self.nodes[i]).len(), std::cmp::Reverse(i)))
        else {
            return;
        };
        let id = self.nodes[victim].id;
        let spared = self.groups.iter().all(|&g| {
            self.nodes.iter().filter_map(|n| n.multi().group(g)).all(|grp| {
                let voters = &grp.membership().voters;
                !voters.contains(&id) || voters.len() > phalanx::raft::majority(voters.len())
            })
        });
        // Only groups with a follower quiesced under it: an awake group elects on its timers,
        // and its liveness is the later probes' to check (a voter far behind can take longer
        // than this check's bound to vote).
        let groups: Vec<LedAtHeal> = led(&self.nodes[victim])
            .into_iter()
            .filter(|(g, ..)| {
                self.nodes
                    .iter()
                    .filter_map(|n| n.multi().group(*g))
                    .any(|grp| grp.quiesced_leader() == Some(id))
            })
            .collect();
        if !spared || groups.is_empty() {
            return;
        }
        self.nodes[victim].crash_mid_write(usize::MAX);
        self.workload.forget_node(id);
        self.crashes += 1;
        self.down_at_heal = Some((victim, groups));
    }

    /// The groups the node crashed at the heal led, with followers quiesced under it, have a
    /// leader again (their followers have no election timer: the failure detector must wake
    /// them), and the node restarts.
    fn check_failover(&mut self) {
        let Some((victim, groups)) = self.down_at_heal.take() else { return };
        let id = self.nodes[victim].id;
        let ticks = self.failover_ticks();
        for (g, term, quiesced) in groups {
            let led = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.multi().group(g))
                .any(|grp| grp.is_leader() && grp.term() > term);
            if !led {
                self.checker.on_liveness_failure(
                    g,
                    format!(
                        "no leader {ticks} ticks after node {id}, its leader in term {term} (quiesced: {quiesced}, \
                         followers quiesced), crashed at the heal"
                    ),
                );
            }
        }
        self.restart(victim);
    }

    /// Completes due writes, runs the node's Ready pipeline and carries out its output
    /// until the node is quiet.
    fn process_node(&mut self, i: usize) {
        let now = self.now;
        for _ in 0..MAX_ROUNDS_PER_TICK {
            let latency = self.rng.range(0, self.cfg.max_disk_latency + 1);
            let wrote = self.nodes[i].run_writer(now, latency, self.cfg.split_cost, &mut self.fetches);
            let mut sent = self.nodes[i].process();
            if sent.len() > MAX_MESSAGES_PER_ROUND {
                // Reported, and dropped: the run goes on to its other checks instead of
                // running out of memory.
                self.checker.on_message_storm(self.nodes[i].id, sent.len());
                sent.clear();
            }
            let quiet = !wrote && sent.is_empty();
            for m in sent {
                self.net.send(m, now, &mut self.rng);
            }
            self.check_recorded(i);
            for detail in std::mem::take(&mut self.nodes[i].disk.refused) {
                self.checker.on_store_refused(self.nodes[i].id, detail);
            }
            self.workload.take_answers(&mut self.nodes[i], &mut self.checker, now);
            if quiet {
                break;
            }
        }
    }

    /// Feeds the checker what node `i`'s core appended, committed and delivered.
    fn check_recorded(&mut self, i: usize) {
        let node_id = self.nodes[i].id;
        let rec = self.nodes[i].take_recorded();
        for (g, e, prev) in &rec.appended {
            self.checker.on_append(*g, node_id, e, *prev);
        }
        for (g, e) in &rec.committed {
            self.checker.on_committed(*g, node_id, e);
        }
        for d in &rec.deliveries {
            self.checker.on_delivery(d.group, node_id, d.position, &d.entry);
            let id = checker::entry_id(&d.entry);
            if !d.new {
                self.checker.on_duplicate(d.group, node_id, id);
            }
            if d.replay {
                let recovered = self.nodes[i].recovered_commit.get(&d.group).copied().unwrap_or(0);
                self.checker.on_replay(d.group, node_id, d.entry.index, recovered);
            }
        }
    }

    /// After the heal no member of a group is left behind for good: one that lags the
    /// group's commit index at the end must have caught up some of the way since the heal (a
    /// leader that kept a wiped follower's old progress left it at index 0). Slow
    /// configurations (one entry per append, one in flight) may not close the whole gap in
    /// the window, so making progress is what is required.
    /// The groups whose liveness is expected (not stranded).
    fn live_groups(&self) -> Vec<GroupId> {
        self.groups.iter().copied().filter(|g| !self.stranded.contains(g)).collect()
    }

    fn check_convergence(&mut self) {
        for g in self.live_groups() {
            let Some((max_end, members)) = self
                .nodes
                .iter()
                .filter_map(|n| n.multi().group(g))
                .max_by_key(|grp| grp.log().committed())
                .map(|grp| (grp.log().committed(), grp.membership().clone()))
            else {
                continue;
            };
            // A follower that receives a snapshot moves its commit index only when it is
            // installed (the simulator's tiny chunks take many round trips).
            let receiving_snapshot = |id: NodeId| {
                self.nodes.iter().filter_map(|n| n.multi().group(g)).any(|grp| {
                    grp.is_leader()
                        && grp.progress(id).is_some_and(|p| p.state == phalanx::raft::ProgressState::Snapshot)
                })
            };
            for n in &self.nodes {
                let Some(grp) = n.multi().group(g) else { continue };
                let Some(&at_heal) = self.commit_at_heal.get(&(g, n.id)) else { continue };
                let end = grp.log().committed();
                if members.contains(n.id) && end < max_end && end <= at_heal && !receiving_snapshot(n.id) {
                    let detail = format!(
                        "node {} stuck at commit {end} (the group at {max_end}){} {} ticks after the heal",
                        n.id,
                        if grp.is_recovering() { ", recovering," } else { "" },
                        LIVENESS_TICKS
                    );
                    self.checker.on_liveness_failure(g, detail);
                }
            }
        }
    }

    /// A replica that lost durable state does not vote until it caught up from a leader: a
    /// group whose configuration (in any running node's view: views differ while a change is
    /// in flight) has it among one or two voters can elect none. Such a group is stranded
    /// until an operator replaces the member: its safety is still checked, its liveness no
    /// longer. That is the loss's doing only when the configuration appears before leaders
    /// could know: within an election timeout and a round trip of the loss (or of the node's
    /// start with the loss still unrecovered) — the time a leader takes to see the node
    /// silent, or to hear it is recovering. A group shrunk later was shrunk by following the
    /// roster, which must wait for a quorum of active voters: its liveness stays checked.
    fn note_stranded(&mut self) {
        let grace = self.cfg.raft.election_ticks_max
            + round_trip_ticks(self.cfg.faults.max_delay, self.cfg.max_disk_latency);
        for &g in &self.groups {
            if self.stranded.contains(&g) {
                continue;
            }
            let lost: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| n.lost_state_in(g) && self.now.saturating_sub(n.lost_at) <= grace)
                .map(|n| n.id)
                .collect();
            if lost.is_empty() {
                continue;
            }
            let stranded = self.nodes.iter().filter(|n| n.up).filter_map(|n| n.multi().group(g)).any(|grp| {
                let voters = &grp.membership().voters;
                voters.len() <= phalanx::raft::majority(voters.len())
                    && lost.iter().any(|l| voters.contains(l))
            });
            if stranded {
                self.stranded.insert(g);
            }
        }
    }

    /// After the heal every node's failure detector sees every other running node that is a
    /// member alive (a death heard during the faults was refuted: SWIM's accuracy once the
    /// network is whole), and every member the run has no node for dead (completeness).
    fn check_detectors(&mut self) {
        let real = |id: NodeId| id <= self.cfg.nodes;
        let up: std::collections::BTreeSet<NodeId> =
            self.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        let mut wrong = Vec::new();
        for n in &mut self.nodes {
            let id = n.id;
            let Some(core) = n.core() else { continue };
            let Some(d) = core.detector() else { continue };
            for (m, e) in d.table().iter() {
                let want = if up.contains(&m) {
                    phalanx::swim::Liveness::Alive
                } else if !real(m) {
                    phalanx::swim::Liveness::Dead
                } else {
                    continue;
                };
                if e.view.state != want {
                    wrong.push(format!(
                        "node {id} holds node {m} {:?} (incarnation {})",
                        e.view.state, e.view.incarnation
                    ));
                }
            }
        }
        if !wrong.is_empty() {
            let detail =
                format!("failure detectors {LIVENESS_TICKS} ticks after the heal: {}", wrong.join("; "));
            self.checker.on_liveness_failure(0, detail);
        }
    }

    /// After the heal every group converged to the roster: its committed configuration has
    /// the roster's voters as voters and its learners as learners, and no member is still
    /// leaving. Members the run has no node for (added by the workload, never started) can
    /// never catch up: they are left out of the comparison. A stranded group holds every
    /// transition back, so a run with one is not checked; nor are the slowest runs (one
    /// entry per append: a group that is behind moves one entry per round trip, often read
    /// back from disk, and may still be finishing a change — their progress is checked by
    /// `check_convergence`).
    fn check_roster_followed(&mut self) {
        use phalanx::roster::Role as R;
        if !self.stranded.is_empty() || self.cfg.raft.max_entries_per_append == 1 {
            return;
        }
        let Some(roster) = self.checker.latest_roster().cloned() else { return };
        let real = |id: &NodeId| *id <= self.cfg.nodes;
        let with = |role: R| -> std::collections::BTreeSet<NodeId> {
            roster.members.values().filter(|m| m.role == role).map(|m| m.id).filter(real).collect()
        };
        let leaving = with(R::Leaving);
        if !leaving.is_empty() {
            let detail = format!("members {leaving:?} still leaving {LIVENESS_TICKS} ticks after the heal");
            self.checker.on_liveness_failure(0, detail);
        }
        let (voters, learners) = (with(R::Voter), with(R::Learner));
        for g in self.live_groups() {
            let Some(grp) = self.at_highest_commit(g) else { continue };
            let conf = grp.membership();
            // A learner the roster made a voter votes once it keeps up; the slowest runs (one
            // entry per append, read back from disk) may still be closing the gap.
            let leader = self.nodes.iter().filter_map(|n| n.multi().group(g)).find(|l| l.is_leader());
            let catching_up = |m: &NodeId| {
                leader.is_some_and(|l| l.follower_lag(*m).is_some_and(|lag| lag > PROMOTE_MAX_LAG_ENTRIES))
            };
            let mut has_voters: std::collections::BTreeSet<NodeId> =
                conf.voters.iter().copied().filter(real).collect();
            has_voters.extend(conf.learners.iter().filter(|m| voters.contains(m) && catching_up(m)));
            let has_learners: std::collections::BTreeSet<NodeId> =
                conf.learners.iter().copied().filter(real).filter(|m| !has_voters.contains(m)).collect();
            if grp.conf_change_pending() || has_voters != voters || has_learners != learners {
                let detail = format!(
                    "configuration {conf:?}{} is not the roster's (version {}: voters {voters:?}, learners \
                     {learners:?}) {LIVENESS_TICKS} ticks after the heal",
                    if grp.conf_change_pending() { " (a change pending)" } else { "" },
                    roster.version
                );
                self.checker.on_liveness_failure(g, detail);
            }
        }
    }

    /// A running replica of group `g` at the highest commit index any replica reached: its
    /// latest configuration is committed unless one is pending (a replica further behind,
    /// such as one that lost its disk, may hold an old one).
    fn at_highest_commit(&self, g: GroupId) -> Option<&phalanx::raft::RaftGroup> {
        let highest = self.checker.highest_commit(g);
        self.nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| n.multi().group(g))
            .find(|grp| grp.log().committed() == highest)
    }

    /// A human-readable picture of every node's groups.
    #[must_use]
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("t={} cfg={:?}\n", self.now, self.cfg);
        for n in &self.nodes {
            let _ = writeln!(s, "  n{} writer: {}", n.id, n.writer.describe());
            for &g in &self.groups {
                let Some(grp) = n.multi().group(g) else {
                    let _ = writeln!(s, "  n{} g{g}: down", n.id);
                    continue;
                };
                let log = grp.log();
                let _ = writeln!(
                    s,
                    "  n{} g{g}: up={} {:?} term={} vote={} leader={:?} floor={} last={}/{} commit={} applied={} \
                     members={:?} writing={} next_deadline={} now={} recovering={} quiesced={}",
                    n.id,
                    n.up,
                    grp.role(),
                    grp.term(),
                    grp.vote(),
                    grp.leader(),
                    log.floor_index(),
                    log.last_index(),
                    log.last_term(),
                    log.committed(),
                    log.applied(),
                    grp.membership(),
                    !n.writer.is_idle(),
                    grp.next_deadline(),
                    grp.now(),
                    grp.is_recovering(),
                    grp.is_quiesced(),
                );
                for m in grp.membership().members() {
                    if let Some(p) = grp.progress(m) {
                        let _ = writeln!(s, "      -> n{m}: {p:?}");
                    }
                }
            }
        }
        s
    }

    /// Per-step checks and the trace.
    fn observe(&mut self) {
        let now = self.now;
        now.hash(&mut self.trace);
        for n in &self.nodes {
            n.up.hash(&mut self.trace);
            if !n.up {
                continue;
            }
            for &g in &self.groups {
                let Some(grp) = n.multi().group(g) else { continue };
                let log = grp.log();
                (grp.term(), grp.role() as u8, log.committed(), log.last_index()).hash(&mut self.trace);
                self.checker.on_positions(g, n.id, n.incarnation, log.committed(), log.applied());
                if grp.role() == Role::Leader {
                    self.quiesced_ticks += u64::from(grp.is_quiesced());
                    self.workload.note_leader(g, grp.term());
                    self.checker.on_leader(g, grp.term(), n.id, log);
                    self.checker.on_leader_conf_changes(g, n.id, grp.uncommitted_conf_changes());
                }
            }
            if let Some((at, roster)) = n.roster() {
                self.checker.on_roster(n.id, at, &roster);
            }
        }
        self.note_stranded();
        // Each group's committed configuration against the roster.
        let committed: Vec<_> = self
            .groups
            .iter()
            .filter_map(|&g| {
                let grp = self.at_highest_commit(g).filter(|grp| !grp.conf_change_pending())?;
                Some((g, grp.membership().voters.clone()))
            })
            .collect();
        for (g, voters) in committed {
            self.checker.on_committed_voters(g, &voters);
        }
        self.net.sent.hash(&mut self.trace);
    }
}

/// One line describing a message (for traces).
#[must_use]
pub fn describe_message(m: &phalanx_proto::RaftMessage) -> String {
    use phalanx_proto::raft_message::Body;
    let body = match &m.body {
        Some(Body::AppendRequest(a)) => format!(
            "App t{} prev={}/{} n={} commit={}",
            a.term,
            a.prev_log_index,
            a.prev_log_term,
            a.entries.len(),
            a.leader_commit
        ),
        Some(Body::AppendResponse(a)) => format!(
            "AppResp t{} ok={} match={} hint={}/{} last={}",
            a.term, a.success, a.match_index, a.conflict_index, a.conflict_term, a.last_log_index
        ),
        Some(other) => format!("{other:?}"),
        None => "empty".into(),
    };
    format!("g{} {}->{} {body}", m.group, m.from, m.to)
}

fn snapshots_sent(n: &SimNode, groups: &[GroupId]) -> u64 {
    groups.iter().filter_map(|g| n.multi().group(*g)).map(|g| g.stats().snapshots_sent).sum()
}

/// The engine configuration of node `id` in a run of `cfg`: one shard holding the system
/// partition and the clients' groups; one tick per simulated millisecond.
fn node_config(cfg: &SimConfig, id: NodeId) -> NodeConfig {
    let mut c = NodeConfig::new(id, format!("sim-{id}"));
    c.cores = 1;
    c.pin_cores = false;
    c.initial_cluster = (1..=cfg.voters).map(|n| (n, format!("sim-{n}:1"))).collect();
    c.initial_partitions = cfg.groups as u32;
    c.tick_interval_ms = 1;
    c.request_timeout_ms = REQUEST_TIMEOUT_TICKS;
    c.leader_balance_interval_ms = 0;
    // Membership rounds and the promotion window in ticks, short against a run's length; at
    // most two partitions of a node take a new member at once, so the bound is exercised.
    c.membership.reconcile_interval_ms = 5;
    c.membership.promote_window_ms = 20;
    c.membership.max_catch_ups_per_shard = 2;
    // A learner keeps up within a few appends (the runs' appends carry 1 to 8 entries).
    c.membership.promote_max_lag_entries = PROMOTE_MAX_LAG_ENTRIES;
    // The failure detector at the runs' scale: a direct probe gets a message round trip
    // (and a little), the round twice that; suspicions last four rounds.
    c.swim.probe_timeout_ms = 2 * cfg.faults.max_delay + 2;
    c.swim.probe_interval_ms = 2 * c.swim.probe_timeout_ms;
    c.raft = cfg.raft.clone();
    c.raft.seed = cfg.seed;
    c
}

/// A learner keeps up with a group while it lags by at most this many entries.
const PROMOTE_MAX_LAG_ENTRIES: u64 = 16;

/// How long a simulated client waits for an answer, in ticks.
const REQUEST_TIMEOUT_TICKS: u64 = 500;

/// Runs one seed with its default configuration.
#[must_use]
pub fn run_seed(seed: u64, steps: u64) -> Report {
    Sim::new(SimConfig::from_seed(seed, steps)).run()
}

/// Runs `seed` as the simulator drew it before clean stops were simulated (no clean stops,
/// the rest unchanged): the schedule a regression seed was recorded with.
#[must_use]
pub fn run_seed_without_clean_stops(seed: u64, steps: u64) -> Report {
    let mut cfg = SimConfig::from_seed(seed, steps);
    cfg.clean_stop_pct = 0;
    Sim::new(cfg).run()
}

/// The node ids of a run.
#[must_use]
pub fn node_ids(cfg: &SimConfig) -> Vec<NodeId> {
    (1..=cfg.nodes).collect()
}
