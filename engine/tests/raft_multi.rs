//! Conformance: `MultiRaft`, the groups of one shard driven together (DESIGN "Per shard and
//! per loop turn, work is batched"): routing, merged Readies, ticking only groups with a
//! deadline due, and refusing messages for unknown groups.

mod common;

use std::collections::BTreeMap;

use common::*;
use phalanx::raft::{Config, Membership, MultiRaft, RestoreState, Role, Status};
use phalanx_proto::RaftMessage;

const NODES: [u64; 3] = [1, 2, 3];

fn cfg(id: u64, group: u64) -> Config {
    let mut c = Config::new(id, group);
    c.seed = SEED;
    c
}

fn restore(voters: &[u64], learners: &[u64]) -> RestoreState {
    RestoreState {
        initial_membership: Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        },
        ..Default::default()
    }
}

/// Three shards (one per node), each holding the same `groups`.
struct Shards {
    nodes: BTreeMap<u64, MultiRaft>,
    /// Number of groups in each MultiReady handled, per node.
    merged: Vec<(u64, usize)>,
}

impl Shards {
    fn new(groups: &[u64]) -> Self {
        let mut nodes = BTreeMap::new();
        for id in NODES {
            let mut m = MultiRaft::new();
            for &g in groups {
                m.add_group(cfg(id, g), restore(&NODES, &[])).expect("valid group");
            }
            nodes.insert(id, m);
        }
        Shards { nodes, merged: Vec::new() }
    }

    /// Handles every shard's MultiReady (messages out, acknowledged at once), then delivers
    /// the messages; repeats until quiet.
    fn stabilize(&mut self) {
        let merged = &mut self.merged;
        settle_shards(&mut self.nodes, |id, mr| {
            merged.push((id, mr.groups.len()));
            for (gid, rd) in &mr.groups {
                for msg in rd.messages.iter().chain(rd.persisted_messages.iter()) {
                    assert_eq!(msg.group, *gid, "a group's Ready carries only its own messages");
                }
            }
        });
    }

    fn tick(&mut self) {
        for m in self.nodes.values_mut() {
            m.tick();
        }
        self.stabilize();
    }
}

/// Many groups on one shard: every group elects and commits independently, and a shard's
/// output for one turn is one MultiReady merging the Readies of all its groups with work.
#[test]
fn many_groups_elect_and_replicate_with_merged_readies() {
    let groups: Vec<u64> = (1..=20).collect();
    let mut s = Shards::new(&groups);
    for &g in &groups {
        s.nodes.get_mut(&1).unwrap().update(g, |r| r.campaign()).unwrap();
    }
    s.stabilize();
    assert!(
        s.merged.iter().any(|&(id, n)| id == 1 && n == groups.len()),
        "node 1 handled all 20 campaigns in one MultiReady: {:?}",
        &s.merged[..3]
    );
    for &g in &groups {
        let r = s.nodes[&1].group(g).unwrap();
        assert!(r.is_leader(), "group {g}");
        s.nodes.get_mut(&1).unwrap().update(g, |r| r.propose(proposal("x"))).unwrap().unwrap();
    }
    s.stabilize();
    for _ in 0..4 {
        s.tick();
    }
    for id in NODES {
        for &g in &groups {
            let r = s.nodes[&id].group(g).unwrap();
            assert_eq!(r.log().committed(), 2, "node {id} group {g}");
            assert_eq!(r.leader(), Some(1));
        }
    }
}

/// Only groups with a deadline due are touched by `tick`: idle followers are not visited
/// before their election timeout, and groups with nothing scheduled (learners) never are.
#[test]
fn only_due_groups_are_ticked() {
    let mut m = MultiRaft::new();
    for g in 1..=50 {
        m.add_group(cfg(2, g), restore(&[1, 2, 3], &[])).unwrap();
    }
    for g in 51..=60 {
        m.add_group(cfg(4, g), restore(&[1, 2, 3], &[4])).unwrap();
    }
    let _ = m.ready();
    let min = Config::new(1, 1).election_ticks_min;
    for _ in 0..min - 1 {
        m.tick();
    }
    assert_eq!(m.now(), min - 1);
    for g in 1..=60 {
        assert_eq!(m.group(g).unwrap().now(), 0, "group {g} was ticked before anything was due");
    }
    let max = Config::new(1, 1).election_ticks_max;
    for _ in min - 1..max {
        m.tick();
    }
    for g in 1..=50 {
        let r = m.group(g).unwrap();
        assert!(r.now() >= min, "group {g} never ticked");
        assert_eq!(r.role(), Role::PreCandidate, "group {g} timed out");
    }
    for g in 51..=60 {
        assert_eq!(m.group(g).unwrap().now(), 0, "learner group {g} has nothing due and is never ticked");
    }
}

/// A group added to a running container starts its clock at the container's time: it must
/// not fire an election the instant it joins (its deadline is relative to the join).
#[test]
fn group_added_later_does_not_campaign_at_once() {
    let mut m = MultiRaft::new();
    m.add_group(cfg(2, 1), restore(&[1, 2, 3], &[4])).unwrap();
    for _ in 0..100 {
        m.tick();
    }
    let _ = m.ready();
    m.add_group(cfg(2, 7), restore(&[1, 2, 3], &[])).unwrap();
    let r = m.group(7).unwrap();
    assert_eq!(r.role(), Role::Follower, "campaigned on joining");
    assert!(r.next_deadline() >= 100 + Config::new(1, 1).election_ticks_min);
    let mr = m.ready();
    let msgs: usize = mr.iter().flat_map(|mr| mr.groups.iter()).map(|(_, rd)| rd.messages.len()).sum();
    assert_eq!(msgs, 0);
}

/// Messages naming a group the shard does not hold are refused and counted; a group exists
/// once (duplicates refused) and can be removed.
#[test]
fn unknown_group_counted_and_group_lifecycle() {
    let mut m = MultiRaft::new();
    m.add_group(cfg(2, 1), restore(&[1, 2, 3], &[])).unwrap();
    assert!(m.add_group(cfg(2, 1), restore(&[1, 2, 3], &[])).is_err());
    let stray = RaftMessage { group: 99, ..msg(1, 2, heartbeat(1, 0)) };
    assert_eq!(m.step(stray), Err(Status::InvalidRequest));
    assert_eq!(m.unknown_group_messages(), 1);
    assert_eq!(m.len(), 1);
    // A message for the right group but the wrong node is counted by the group itself.
    let wrong_to = RaftMessage { to: 3, ..msg(1, 2, heartbeat(1, 0)) };
    assert_eq!(m.step(wrong_to), Err(Status::InvalidRequest));
    assert_eq!(m.group(1).unwrap().stats().rejected_messages, 1);
    assert_eq!(m.unknown_group_messages(), 1);
    assert!(m.remove_group(1).is_some());
    assert!(m.is_empty());
    assert!(m.step(msg(1, 2, heartbeat(1, 0))).is_err());
    assert_eq!(m.unknown_group_messages(), 2);
}

/// `MultiRaft::advance(n)` acknowledges every group's Ready in MultiReadies up to `n`
/// (sequenced persistence across the whole shard).
#[test]
fn multi_advance_acknowledges_all_groups_up_to_n() {
    let mut m = MultiRaft::new();
    for g in 1..=3 {
        m.add_group(cfg(1, g), restore(&[1], &[])).unwrap();
        m.update(g, |r| r.campaign()).unwrap();
    }
    let a = m.ready().unwrap();
    assert_eq!(a.groups.len(), 3);
    let b_missing = m.ready();
    assert!(b_missing.is_none(), "nothing new until the votes are durable");
    m.advance(a.number);
    for g in 1..=3 {
        assert!(m.group(g).unwrap().is_leader(), "group {g}: own vote counted after advance");
    }
    let b = m.ready().unwrap();
    let c2 = {
        for g in 1..=3 {
            m.update(g, |r| r.propose(proposal("x"))).unwrap().unwrap();
        }
        m.ready().unwrap()
    };
    assert_eq!(c2.number, b.number + 1);
    m.advance(c2.number);
    for g in 1..=3 {
        let r = m.group(g).unwrap();
        assert_eq!(r.log().persisted(), 2, "group {g}");
        assert_eq!(r.log().committed(), 2, "group {g}");
    }
}

/// Determinism (DESIGN: the core replays exactly): two identical shards fed identical inputs
/// produce identical outputs, group order included.
#[test]
fn multi_raft_is_deterministic() {
    let run = || {
        let mut s = Shards::new(&(1..=8).collect::<Vec<_>>());
        let mut trace = Vec::new();
        for _ in 0..60 {
            s.tick();
            for m in s.nodes.values() {
                let mut ids: Vec<u64> = m.group_ids().collect();
                ids.sort_unstable();
                for g in ids {
                    let r = m.group(g).unwrap();
                    trace.push((r.id(), g, r.term(), r.role() == Role::Leader, r.log().last_index()));
                }
            }
        }
        (trace, s.merged)
    };
    assert_eq!(run(), run());
}

/// A member the detector held unreachable and now holds alive again wakes the quiesced
/// groups led here that it belongs to (`MultiRaft::wake_leaders_of`): they heartbeat at once
/// instead of waiting for the member's election timeouts to wake them.
#[test]
fn a_member_back_alive_wakes_the_quiesced_groups_led_here() {
    let groups: Vec<u64> = (1..=4).collect();
    let mut s = Shards { nodes: BTreeMap::new(), merged: Vec::new() };
    for id in NODES {
        let mut m = MultiRaft::new();
        for &g in &groups {
            let mut c = cfg(id, g);
            c.quiesce_after_ticks = 5;
            m.add_group(c, restore(&NODES, &[])).expect("valid group");
        }
        s.nodes.insert(id, m);
    }
    for &g in &groups {
        s.nodes.get_mut(&1).unwrap().update(g, |r| r.campaign()).unwrap();
    }
    s.stabilize();
    for _ in 0..40 {
        s.tick();
    }
    for &g in &groups {
        assert!(s.nodes[&1].group(g).unwrap().is_quiesced(), "group {g} did not quiesce");
    }
    let leader = s.nodes.get_mut(&1).unwrap();
    leader.set_peer_alive(3, false);
    assert!(groups.iter().all(|&g| leader.group(g).unwrap().is_quiesced()), "a doubt wakes no leader");
    leader.set_peer_alive(3, true);
    for &g in &groups {
        assert!(!leader.group(g).unwrap().is_quiesced(), "group {g} stayed quiesced");
    }
    let rd = leader.ready().expect("the woken groups have heartbeats to send");
    let to_3 =
        rd.groups.iter().flat_map(|(_, r)| r.messages.iter()).filter(|m| m.to == 3 && kind(m) == "Heartbeat");
    assert_eq!(to_3.count(), groups.len(), "one heartbeat per group to the member back");
}
