//! Conformance: a paced `MultiRaft` (`raft/pacer.rs`): groups start dormant, wake a bounded
//! number at a time, the preferred leader campaigns at once, every other replica waits for
//! its leader or its timer, and a group whose preferred node is down still elects.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::settle_shards;

use phalanx::raft::{Config, Membership, MultiRaft, RestoreState, preferred_leader};

const NODES: [u64; 3] = [1, 2, 3];
/// Woken groups per shard in these tests (small, so the bound shows).
const MAX_WAKING: usize = 4;
/// Upper bound on ticks for a test cluster to settle.
const MAX_TICKS: u64 = 2_000;

fn cfg(id: u64, group: u64) -> Config {
    let mut c = Config::new(id, group);
    c.seed = 0x5EED;
    c.quiesce_after_ticks = 10;
    c
}

fn restore() -> RestoreState {
    RestoreState {
        initial_membership: Membership { voters: NODES.iter().copied().collect(), learners: BTreeSet::new() },
        ..Default::default()
    }
}

/// One paced shard per running node, each holding every group; messages to a node that is
/// down are lost.
struct Shards {
    nodes: BTreeMap<u64, MultiRaft>,
    groups: Vec<u64>,
}

impl Shards {
    fn new(up: &[u64], groups: u64) -> Self {
        let groups: Vec<u64> = (1..=groups).collect();
        let mut nodes = BTreeMap::new();
        for &id in up {
            let mut m = MultiRaft::paced(MAX_WAKING);
            for &g in &groups {
                m.add_group(cfg(id, g), restore()).expect("valid group");
            }
            nodes.insert(id, m);
        }
        Shards { nodes, groups }
    }

    /// Hands out every Ready (acknowledged at once) and delivers messages until quiet.
    fn stabilize(&mut self) {
        settle_shards(&mut self.nodes, |_, _| {});
    }

    fn tick(&mut self) {
        for m in self.nodes.values_mut() {
            m.tick();
        }
        self.stabilize();
    }

    /// Groups with a leader every running node agrees on.
    fn led(&self) -> usize {
        self.groups
            .iter()
            .filter(|&&g| {
                let leaders: BTreeSet<_> =
                    self.nodes.values().map(|m| m.group(g).and_then(|r| r.leader())).collect();
                leaders.len() == 1 && leaders.iter().all(Option::is_some)
            })
            .count()
    }

    /// Leaders on `id` that have not quiesced yet.
    fn awake_leaders(&self, id: u64) -> usize {
        let m = &self.nodes[&id];
        self.groups.iter().filter(|&&g| m.group(g).is_some_and(|r| r.is_leader() && !r.is_quiesced())).count()
    }
}

/// Every group starts dormant (no leader, nothing scheduled), each node wakes at most
/// `MAX_WAKING` at a time, the preferred leader campaigns at once and wins, and every group
/// ends led by its preferred node and quiesced.
#[test]
fn paced_start_elects_each_preferred_leader_a_bounded_number_at_a_time() {
    let mut s = Shards::new(&NODES, 30);
    for m in s.nodes.values() {
        assert_eq!(m.dormant_queued(), 30);
        for &g in &s.groups {
            let r = m.group(g).expect("group");
            assert!(r.is_dormant(), "group {g} starts dormant");
            assert_eq!(r.next_deadline(), u64::MAX, "a dormant group has no timer");
        }
    }
    s.stabilize();
    assert_eq!(s.led(), 0, "nothing elects before the first tick");
    s.tick();
    // Each node woke its first MAX_WAKING preferred groups, which campaigned at once.
    assert_eq!(s.led(), NODES.len() * MAX_WAKING, "one election per woken group, no timer waited for");
    let mut ticks = 1;
    while s.led() < s.groups.len() || NODES.iter().any(|&id| s.awake_leaders(id) > 0) {
        assert!(ticks < MAX_TICKS, "start did not settle: {} of {} led", s.led(), s.groups.len());
        for id in NODES {
            assert!(s.awake_leaders(id) <= MAX_WAKING, "node {id}: more unsettled leaders than places");
        }
        s.tick();
        ticks += 1;
    }
    for &g in &s.groups {
        let want = preferred_leader(g, NODES.into_iter());
        for (id, m) in &s.nodes {
            let r = m.group(g).expect("group");
            assert_eq!(r.leader(), want, "node {id} group {g}");
            assert!(r.is_quiesced(), "node {id} group {g} quiesced");
        }
    }
    // Well under one election timeout per round of four groups: nobody waited for a timer.
    assert!(ticks < 30 / MAX_WAKING as u64 * 10, "took {ticks} ticks");
}

/// A group whose preferred node is down elects on the others: its replicas there wake with
/// an election timer once the preferred groups are done.
#[test]
fn a_group_whose_preferred_node_is_down_still_elects() {
    let mut s = Shards::new(&[2, 3], 12);
    let mut ticks = 0;
    while s.led() < s.groups.len() {
        assert!(ticks < MAX_TICKS, "{} of {} led with node 1 down", s.led(), s.groups.len());
        s.tick();
        ticks += 1;
    }
    for &g in &s.groups {
        let leader = s.nodes[&2].group(g).and_then(|r| r.leader());
        assert!(matches!(leader, Some(2 | 3)), "group {g}: {leader:?}");
    }
}

/// A message wakes a dormant replica at once: the first append of a leader makes it a
/// follower before the pacer's turn comes, and the pacer skips it then.
#[test]
fn a_leader_message_wakes_a_dormant_replica() {
    let mut s = Shards::new(&NODES, 3);
    // Node 2 prefers group 1 (voter 1 % 3 of [1, 2, 3]) and node 3 group 2.
    assert_eq!(preferred_leader(1, NODES.into_iter()), Some(2));
    s.tick();
    let r = s.nodes[&1].group(1).expect("group");
    assert_eq!(r.leader(), Some(2));
    assert!(!r.is_dormant(), "woken by its leader");
}
