//! The detector's rules, exercised on a few detectors joined by a lossless in-memory network
//! whose links can be cut: suspicion, death, refutation (directly and through a relay),
//! indirect probes, a restart, and the bounds on what a peer can make it hold.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use phalanx_proto::{Gossip, GossipKind, NodeLiveness};

use super::*;

/// Detectors 1..=n, every message delivered at the next step unless its link is cut.
struct Net {
    nodes: Vec<Option<Detector>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    now: Instant,
    in_flight: Vec<(NodeId, NodeId, Gossip)>,
}

const STEP: Duration = Duration::from_millis(10);

fn cfg() -> SwimConfig {
    SwimConfig { probe_interval_ms: 100, probe_timeout_ms: 40, ..SwimConfig::default() }
}

impl Net {
    fn new(n: u64) -> Net {
        let now = Instant::now();
        let members: Vec<NodeId> = (1..=n).collect();
        let nodes = (1..=n)
            .map(|id| {
                let mut d = Detector::new(id, cfg(), 1_000, id, now);
                d.set_members(&members, 1, now);
                Some(d)
            })
            .collect();
        Net { nodes, cut: BTreeSet::new(), now, in_flight: Vec::new() }
    }

    fn node(&mut self, id: NodeId) -> &mut Detector {
        self.nodes[(id - 1) as usize].as_mut().expect("node is up")
    }

    fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn isolate(&mut self, a: NodeId) {
        for b in 1..=self.nodes.len() as u64 {
            if b != a {
                self.cut_both(a, b);
            }
        }
    }

    /// One step: deliver what was sent, tick everyone, collect what they send.
    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        for (from, to, g) in std::mem::take(&mut self.in_flight) {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(Some(d)) = self.nodes.get_mut((to - 1) as usize) {
                d.on_gossip(from, g, now);
            }
        }
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            let Some(d) = slot else { continue };
            d.tick(now);
            let from = i as u64 + 1;
            for (to, g) in d.take_messages() {
                self.in_flight.push((from, to, g));
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let steps = d.as_millis() / STEP.as_millis();
        for _ in 0..steps {
            self.step();
        }
    }

    fn view(&mut self, of: NodeId, about: NodeId) -> Option<Liveness> {
        self.node(of).liveness(about)
    }
}

/// Long enough for any member to be probed, suspected and declared dead: a pass over the
/// members, a round, and the suspicion timeout, twice over.
fn detection_bound(members: usize) -> Duration {
    let c = cfg();
    2 * (Duration::from_millis(c.probe_interval_ms) * (members as u32 + 1) + c.suspicion_timeout(members))
}

#[test]
fn a_silent_member_is_suspected_then_dead_everywhere_and_the_others_stay_alive() {
    let mut net = Net::new(4);
    net.run(Duration::from_secs(1));
    net.isolate(3);
    let mut suspected = false;
    let deadline = net.now + detection_bound(4);
    while net.now < deadline
        && [1, 2, 4]
            .iter()
            .any(|&n| net.nodes[n - 1].as_ref().and_then(|d| d.liveness(3)) != Some(Liveness::Dead))
    {
        net.step();
        suspected |= [1, 2, 4]
            .iter()
            .any(|&n| net.nodes[n - 1].as_ref().and_then(|d| d.liveness(3)) == Some(Liveness::Suspect));
    }
    assert!(suspected, "node 3 went dead without being suspect first");
    for n in [1, 2, 4] {
        assert_eq!(net.view(n, 3), Some(Liveness::Dead), "node {n} about 3");
        for m in [1, 2, 4] {
            if m != n {
                assert_eq!(net.view(n, m), Some(Liveness::Alive), "node {n} about {m}");
            }
        }
    }
    // Every detector reported the change once, in order: suspect, then dead (or dead at once
    // when the death was heard before a suspicion).
    for n in [1, 2, 4] {
        let changes: Vec<Liveness> =
            net.node(n).take_changes().into_iter().filter(|(m, _)| *m == 3).map(|(_, s)| s).collect();
        assert!(changes == [Liveness::Suspect, Liveness::Dead] || changes == [Liveness::Dead], "{changes:?}");
    }
}

#[test]
fn a_cut_link_is_bridged_by_indirect_probes() {
    let mut net = Net::new(3);
    net.cut_both(1, 3);
    net.run(detection_bound(3) * 2);
    assert_eq!(net.view(1, 3), Some(Liveness::Alive));
    assert_eq!(net.view(3, 1), Some(Liveness::Alive));
    assert!(net.node(1).stats().indirect_rounds > 0, "node 1 never needed a relay");
    assert_eq!(net.node(1).stats().failed_rounds, 0);
    assert!(net.node(2).stats().relayed > 0);
}

#[test]
fn a_false_suspicion_clears_through_an_indirect_probe() {
    let mut net = Net::new(3);
    net.run(Duration::from_millis(500));
    net.cut_both(1, 3);
    let inc = net.node(3).incarnation();
    // Node 1 suspects 3 (a stall, say); only a relay can tell 3.
    let now = net.now;
    net.node(1).hear(3, View { incarnation: inc, state: Liveness::Suspect }, now);
    assert_eq!(net.view(1, 3), Some(Liveness::Suspect));
    // Before the suspicion times out, node 1's probe of 3 goes through node 2 carrying the
    // suspicion; 3 refutes at a higher incarnation, and its answer clears it at node 1.
    net.run(cfg().suspicion_timeout(3) - Duration::from_millis(50));
    assert_eq!(net.view(1, 3), Some(Liveness::Alive));
    assert!(net.node(3).incarnation() > inc);
    assert_eq!(net.node(3).stats().refutations, 1);
    assert_eq!(net.view(2, 3), Some(Liveness::Alive));
}

#[test]
fn a_suspicion_heard_through_gossip_is_refuted_by_its_subject() {
    let mut net = Net::new(5);
    net.run(Duration::from_millis(300));
    let inc = net.node(4).incarnation();
    let now = net.now;
    net.node(2).hear(4, View { incarnation: inc, state: Liveness::Suspect }, now);
    net.run(detection_bound(5));
    for n in [1, 2, 3, 5] {
        assert_eq!(net.view(n, 4), Some(Liveness::Alive), "node {n}");
        assert_eq!(net.node(n).table().get(4).map(|e| e.view.incarnation), Some(inc + 1));
    }
}

#[test]
fn a_restarted_member_refutes_its_death_even_at_its_old_incarnation() {
    let mut net = Net::new(3);
    net.run(Duration::from_millis(300));
    net.isolate(2);
    net.run(detection_bound(3));
    assert_eq!(net.view(1, 2), Some(Liveness::Dead));
    // Node 2 comes back with its old incarnation (a clock that did not move, say).
    net.cut.clear();
    let now = net.now;
    let mut d = Detector::new(2, cfg(), 1_000, 99, now);
    d.set_members(&[1, 2, 3], 1, now);
    net.nodes[1] = Some(d);
    net.run(detection_bound(3));
    assert_eq!(net.view(1, 2), Some(Liveness::Alive));
    assert_eq!(net.view(3, 2), Some(Liveness::Alive));
    assert!(net.node(2).incarnation() > 1_000);
}

#[test]
fn a_member_restarted_before_any_suspicion_is_known_restarted_everywhere_at_once() {
    let mut net = Net::new(3);
    net.run(Duration::from_millis(300));
    for n in [1, 3] {
        net.node(n).take_reincarnations();
    }
    // Node 2 restarts at a higher incarnation before anyone suspected it.
    let now = net.now;
    let mut d = Detector::new(2, cfg(), 2_000, 99, now);
    d.set_members(&[1, 2, 3], 1, now);
    net.nodes[1] = Some(d);
    // Its first step sends its greeting; the next delivers it: well within one probe
    // interval, whatever the probe order.
    net.step();
    net.step();
    for n in [1, 3] {
        assert_eq!(net.node(n).take_reincarnations(), vec![2], "node {n}");
        assert_eq!(net.node(n).table().get(2).map(|e| e.view.incarnation), Some(2_000), "node {n}");
    }
    // Only the first roster is a start: a later one sends no greeting.
    let now = net.now;
    net.node(2).take_messages();
    net.node(2).set_members(&[1, 2, 3], 2, now);
    assert!(net.node(2).take_messages().is_empty());
}

#[test]
fn members_that_leave_are_forgotten_and_their_verdict_withdrawn() {
    let mut net = Net::new(3);
    net.isolate(3);
    net.run(detection_bound(3));
    assert_eq!(net.view(1, 3), Some(Liveness::Dead));
    net.node(1).take_changes();
    let now = net.now;
    net.node(1).set_members(&[1, 2], 2, now);
    assert_eq!(net.view(1, 3), None);
    assert_eq!(net.node(1).take_changes(), vec![(3, Liveness::Alive)]);
    // Later news about it is ignored.
    let now = net.now;
    net.node(1).hear(3, View { incarnation: 9_999, state: Liveness::Dead }, now);
    assert_eq!(net.view(1, 3), None);
}

#[test]
fn what_a_peer_sends_is_bounded() {
    let now = Instant::now();
    let mut d = Detector::new(1, cfg(), 1_000, 1, now);
    d.set_members(&[1, 2, 3], 1, now);
    // A flood of relay requests: the relay table stays bounded.
    for seq in 0..10_000 {
        let g = Gossip { kind: GossipKind::PingReq as i32, seq, target: 3, ..Gossip::default() };
        d.on_gossip(2, g, now);
    }
    assert_eq!(d.relays.len(), MAX_RELAYS);
    assert_eq!(d.stats().relays_refused, 10_000 - MAX_RELAYS as u64);
    // Huge lists, strangers, bad states, the largest incarnation: nothing grows or panics.
    let updates: Vec<NodeLiveness> = (0..100_000)
        .map(|i| NodeLiveness { node: 100 + i, incarnation: u64::MAX, state: (i % 5) as i32 })
        .chain([NodeLiveness { node: 1, incarnation: u64::MAX, state: 2 }])
        .collect();
    d.on_gossip(2, Gossip { kind: 77, updates, ..Gossip::default() }, now);
    assert_eq!(d.table().len(), 2);
    assert_eq!(d.incarnation(), 1_000, "news past the read limit is not read");
    let g = Gossip {
        updates: vec![NodeLiveness { node: 1, incarnation: u64::MAX, state: 2 }],
        ..Gossip::default()
    };
    d.on_gossip(2, g, now);
    assert_eq!(d.incarnation(), u64::MAX);
    // Every message it sends stays within the update bound.
    for n in 0..40 {
        let now = now + Duration::from_millis(10 * n);
        d.hear(2, View { incarnation: n, state: Liveness::Suspect }, now);
        d.tick(now);
    }
    for (_, g) in d.take_messages() {
        assert!(g.updates.len() <= MAX_UPDATES_PER_MESSAGE);
    }
}

#[test]
fn news_is_passed_on_a_bounded_number_of_times() {
    let now = Instant::now();
    let mut d = Detector::new(1, cfg(), 1_000, 1, now);
    d.set_members(&[1, 2, 3], 1, now);
    d.hear(3, View { incarnation: 5, state: Liveness::Alive }, now);
    let limit = cfg().retransmits(3);
    let mut carried = 0;
    for _ in 0..100 {
        if let Some(g) = d.piggyback(2) {
            carried += g.updates.iter().filter(|u| u.node == 3).count();
        }
    }
    assert_eq!(carried, limit as usize);
    assert!(!d.has_news());
}

#[test]
fn a_stalled_loop_gives_answers_a_turn_before_judging() {
    let now = Instant::now();
    let mut d = Detector::new(1, cfg(), 1_000, 1, now);
    d.set_members(&[1, 2], 1, now);
    let greeting = d.take_messages();
    assert_eq!(greeting.len(), 1);
    assert_eq!(greeting[0].1.kind, GossipKind::GossipOnly as i32);
    d.tick(now);
    let ping = d.take_messages();
    assert_eq!(ping.len(), 1);
    // The loop stalls past the whole round; the answer is read in the turn after.
    let later = now + Duration::from_millis(500);
    d.tick(later);
    assert_eq!(d.liveness(2), Some(Liveness::Alive), "judged before reading its sockets");
    let ack = Gossip {
        kind: GossipKind::Ack as i32,
        seq: ping[0].1.seq,
        target: 2,
        incarnation: 7,
        ..Gossip::default()
    };
    d.on_gossip(2, ack, later);
    d.tick(later + Duration::from_millis(10));
    assert_eq!(d.liveness(2), Some(Liveness::Alive));
    assert_eq!(d.stats().failed_rounds, 0);
}

#[test]
fn the_bounds_scale_with_the_members() {
    assert_eq!(log10_ceil(1), 1);
    assert_eq!(log10_ceil(10), 1);
    assert_eq!(log10_ceil(11), 2);
    assert_eq!(log10_ceil(1_000), 3);
    let c = SwimConfig::default();
    let r = c.resolved(50);
    assert_eq!((r.probe_timeout_ms, r.probe_interval_ms), (100, 200));
    assert_eq!(r.suspicion_timeout(5), Duration::from_millis(800));
    assert!(c.check(50).is_ok());
    // A slower tick stretches the defaults instead of making them invalid.
    assert_eq!(c.resolved(100).probe_timeout_ms, 200);
    assert_eq!(c.resolved(100).probe_interval_ms, 400);
    assert!(c.check(100).is_ok());
    // Explicit settings are checked as given.
    assert!(SwimConfig { probe_timeout_ms: 100, ..c.clone() }.check(60).is_err());
    assert!(SwimConfig { probe_interval_ms: 100, probe_timeout_ms: 100, ..c.clone() }.check(50).is_err());
}

// ----- the merge rule (`table.rs`) -----

fn v(incarnation: u64, state: Liveness) -> View {
    View { incarnation, state }
}

#[test]
fn the_higher_incarnation_wins_whatever_the_states() {
    use Liveness::*;
    // A node refuted: its alive at a higher incarnation beats any state at a lower one.
    assert!(v(3, Dead).overridden_by(v(4, Alive)));
    assert!(v(3, Suspect).overridden_by(v(4, Alive)));
    // A lower incarnation never wins, not even dead.
    assert!(!v(4, Alive).overridden_by(v(3, Dead)));
    assert!(!v(4, Suspect).overridden_by(v(3, Dead)));
}

#[test]
fn at_one_incarnation_the_worse_state_wins() {
    use Liveness::*;
    assert!(v(2, Alive).overridden_by(v(2, Suspect)));
    assert!(v(2, Suspect).overridden_by(v(2, Dead)));
    assert!(v(2, Alive).overridden_by(v(2, Dead)));
    assert!(!v(2, Suspect).overridden_by(v(2, Alive)));
    assert!(!v(2, Dead).overridden_by(v(2, Suspect)));
    // The same news twice is old news.
    assert!(!v(2, Suspect).overridden_by(v(2, Suspect)));
}

#[test]
fn merging_is_order_independent() {
    use Liveness::*;
    let now = Instant::now();
    let news = [(5, Suspect), (4, Dead), (6, Alive), (6, Suspect), (5, Alive), (6, Alive)];
    // Every order of the news ends at the join of them all: (6, Suspect).
    let mut orders = vec![news.to_vec()];
    let mut rev = news.to_vec();
    rev.reverse();
    orders.push(rev);
    let mut rotated = news.to_vec();
    rotated.rotate_left(2);
    orders.push(rotated);
    for order in orders {
        let mut t = Table::default();
        t.set_members(&[7], now);
        for (inc, s) in order {
            t.merge(7, v(inc, s), now);
        }
        assert_eq!(t.get(7).map(|e| e.view), Some(v(6, Suspect)));
    }
}

#[test]
fn news_of_strangers_is_ignored_and_leavers_are_forgotten() {
    let now = Instant::now();
    let mut t = Table::default();
    t.set_members(&[2, 3], now);
    assert_eq!(t.merge(9, v(1, Liveness::Dead), now), None);
    assert!(t.get(9).is_none());
    assert_eq!(t.merge(2, v(0, Liveness::Suspect), now), Some(Liveness::Alive));
    assert_eq!(t.set_members(&[3], now), vec![2]);
    assert_eq!(t.len(), 1);
}

#[test]
fn a_member_dropped_from_the_roster_hears_it_from_its_peers() {
    let mut net = Net::new(3);
    net.run(Duration::from_millis(300));
    // Nodes 1 and 2 apply roster version 2 without node 3; node 3 never gets it.
    let now = net.now;
    net.node(1).set_members(&[1, 2], 2, now);
    net.node(2).set_members(&[1, 2], 2, now);
    assert_eq!(net.node(3).unlisted_at(), None);
    net.run(detection_bound(3));
    assert_eq!(net.node(3).unlisted_at(), Some(2));
    assert_eq!(net.node(3).take_unlisted(), Some(2));
    assert_eq!(net.node(3).take_unlisted(), None, "reported once");
    // Its own roster catching up to that version makes it old news; a member never hears it.
    let now = net.now;
    net.node(3).set_members(&[1, 2], 2, now);
    assert_eq!(net.node(3).unlisted_at(), None);
    assert_eq!(net.node(1).unlisted_at(), None);
}
