//! Quiescence of idle groups (`raft/quiesce.rs`): an idle, settled group stops heartbeating
//! and its followers stop their election timers; proposals, reads, votes and the failure
//! detector's suspicion wake it; reads and CheckQuorum stay sound.

mod common;

use std::collections::BTreeSet;

use common::*;
use phalanx::raft::{Config, NodeId, Role, preferred_leader};
use phalanx_proto::{VoteRequest, VoteResponse, raft_message::Body};

/// Ticks of idleness before a leader quiesces, in these tests.
const QUIESCE_AFTER: u64 = 10;

fn quiescing(c: &mut Config) {
    c.quiesce_after_ticks = QUIESCE_AFTER;
}

/// A three-voter group led by 1 with one committed write, quiesced.
fn quiesced_cluster() -> Cluster {
    quiesced_cluster_led_by(&[1, 2, 3], 1)
}

/// A group of `voters` led by `leader` with one committed write, quiesced.
fn quiesced_cluster_led_by(voters: &[NodeId], leader: NodeId) -> Cluster {
    let mut c = Cluster::new(voters, quiescing);
    c.elect(leader);
    c.propose(leader, "a").expect("accepted");
    c.stabilize();
    c.ticks(QUIESCE_AFTER + 3 * 2);
    for &id in voters {
        assert!(c.raft(id).is_quiesced(), "node {id} did not quiesce: {:?}", c.raft(id).soft_state());
    }
    c
}

fn leader_messages_since(c: &Cluster, from: usize) -> usize {
    c.trace[from..].len()
}

#[test]
fn an_idle_group_quiesces_and_goes_silent() {
    let mut c = quiesced_cluster();
    let before = c.trace.len();
    c.ticks(500);
    assert_eq!(leader_messages_since(&c, before), 0, "a quiesced group still sends messages");
    for id in [1, 2, 3] {
        assert_eq!(c.raft(id).next_deadline(), u64::MAX, "node {id} still has a timer");
    }
    assert_eq!(c.leader(), Some(1));
    // Nothing cached: an idle replica keeps its term runs, not its entries.
    for id in [1, 2, 3] {
        assert_eq!(c.raft(id).log().cached_len(), 0, "node {id} keeps entries in memory");
    }
}

#[test]
fn quiescence_off_keeps_heartbeats() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.ticks(100);
    let before = c.trace.len();
    c.ticks(10);
    assert!(c.trace[before..].iter().any(|m| kind(m) == "Heartbeat"));
    assert!(!c.raft(1).is_quiesced());
}

#[test]
fn a_proposal_wakes_the_group_and_commits_after_a_long_idle() {
    let mut c = quiesced_cluster();
    // Far longer than an election timeout: the woken leader must not take its followers'
    // old answers as a lost quorum.
    c.ticks(300);
    c.propose(1, "b").expect("accepted");
    // A tick passes before any follower answers the wake-up.
    c.tick_node(1, 1);
    assert!(c.raft(1).is_leader(), "the woken leader judged its quorum by the quiescence's silence");
    c.stabilize();
    for id in [1, 2, 3] {
        assert!(!c.raft(id).is_quiesced(), "node {id} still quiesced after a write");
        assert_eq!(c.raft(id).log().committed(), c.raft(1).log().last_index());
    }
    c.ticks(5);
    assert_eq!(c.leader(), Some(1), "the woken leader stepped down");
    assert_eq!(c.raft(1).role(), Role::Leader);
    // Idle again: it quiesces again.
    c.ticks(QUIESCE_AFTER + 6);
    assert!(c.raft(1).is_quiesced());
}

#[test]
fn a_read_wakes_the_leader_and_needs_a_quorum() {
    let mut c = quiesced_cluster();
    c.ticks(100);
    c.raft_mut(1).read_index(7).expect("accepted");
    c.stabilize();
    let rs = c.node(1).read_states.last().copied().expect("read answered");
    assert_eq!(rs.request_id, 7);
    assert_eq!(rs.result, Ok(c.raft(1).log().committed()));

    // A quiesced leader cut off from its followers cannot confirm a read: the round needs a
    // quorum's answers in its term.
    let mut c = quiesced_cluster();
    c.isolate(1);
    c.raft_mut(1).read_index(8).expect("accepted");
    c.stabilize();
    c.ticks(3);
    assert!(c.node(1).read_states.iter().all(|r| r.request_id != 8 || r.result.is_err()));
}

#[test]
fn quiesced_followers_wait_for_the_detector_then_elect_at_once() {
    let mut c = quiesced_cluster();
    c.crash(1);
    c.ticks(200);
    assert!(c.leader().is_none() || c.leader() == Some(1));
    for id in [2, 3] {
        assert_eq!(c.raft(id).role(), Role::Follower, "node {id} campaigned while its leader was alive");
    }
    // The detector suspects 1 on node 2 first: it campaigns at once, node 3 (still trusting
    // its leader) refuses.
    c.raft_mut(2).leader_suspected(1);
    c.stabilize();
    assert!(c.raft(3).is_quiesced(), "a quiesced follower followed a challenger of a live leader");
    // Node 3 suspects it too and campaigns at once. Node 2, still a pre-candidate and first
    // in the group's order of preference (its preferred leader: voter 1 % 3 of [1, 2, 3]),
    // takes the tie: it refuses node 3's PreVote and asks node 3, awake now, for its own.
    assert_eq!(preferred_leader(GROUP, [1, 2, 3].into_iter()), Some(2));
    let term = c.raft(2).term();
    c.raft_mut(3).leader_suspected(1);
    c.stabilize();
    assert_eq!(c.leader(), Some(2), "no new leader after both suspected the old one");
    assert_eq!(c.raft(3).term(), term + 1, "a split vote cost a term");
    c.propose(2, "after").expect("accepted");
    c.stabilize();
}

/// The followers of a lost leader hear the detector's verdict in the same tick and campaign
/// together. Each would grant the other's PreVote, run in the same term and split the vote,
/// and nobody would lead until an election timeout later; instead the one earlier in the
/// order of preference wins at once, in the next term.
#[test]
fn followers_suspecting_their_lost_leader_together_do_not_split_the_vote() {
    // Group 1's order of preference among [1, 2, 3]: 2, 3, 1. Node 2 is lost.
    let mut c = quiesced_cluster_led_by(&[1, 2, 3], 2);
    let term = c.raft(1).term();
    c.crash(2);
    c.raft_mut(1).leader_suspected(2);
    c.raft_mut(3).leader_suspected(2);
    c.stabilize();
    assert_eq!(c.leader(), Some(3));
    for id in [1, 3] {
        assert_eq!(c.raft(id).term(), term + 1, "node {id}: a split vote cost a term");
    }
}

/// Five voters, two lost (the leader and the next in the order of preference): of the three
/// that campaign together, the first in the order that is up wins at once.
#[test]
fn three_followers_campaigning_together_elect_the_first_in_the_order() {
    // Group 1's order of preference among [1, 2, 3, 4, 5]: 2, 3, 4, 5, 1.
    let mut c = quiesced_cluster_led_by(&[1, 2, 3, 4, 5], 2);
    let term = c.raft(4).term();
    c.crash(2);
    c.crash(3);
    for id in [5, 1, 4] {
        c.raft_mut(id).leader_suspected(2);
    }
    c.stabilize();
    assert_eq!(c.leader(), Some(4));
    assert_eq!(c.raft(5).term(), term + 1, "a split vote cost a term");
}

/// The recovery bench's split vote, at the core: a restarted preferred leader campaigns at
/// once (its pacer's dormant group, `pacer.rs`) in the same moment as a follower suspects the
/// leader it quiesced under (a starved one: it does not answer). The restarted replica, first
/// in the order of preference, leads in the next term.
#[test]
fn a_restarted_preferred_leader_and_a_suspicious_follower_do_not_split_the_vote() {
    let mut c = quiesced_cluster();
    let term = c.raft(3).term();
    c.crash(2);
    c.restart(2);
    // Node 1 is alive but answers nobody for now.
    c.crash(1);
    c.raft_mut(2).campaign();
    c.raft_mut(3).leader_suspected(1);
    c.stabilize();
    assert_eq!(c.leader(), Some(2), "the restarted preferred leader did not win");
    assert_eq!(c.raft(3).term(), term + 1, "a split vote cost a term");
}

/// A pre-candidate takes a tie only from a replica later in the order of preference whose
/// log is no more up to date, in the same election, and only once a round: otherwise it
/// grants the PreVote as usual.
#[test]
fn a_pre_candidate_takes_a_tie_only_when_it_could_win_it() {
    // Five voters, so that one grant does not decide node 2's round; 1 (the leader), 4 and 5
    // are down. Group 1's order of preference: 2, 3, 4, 5, 1.
    let mut c = quiesced_cluster_led_by(&[1, 2, 3, 4, 5], 1);
    for id in [1, 4, 5] {
        c.crash(id);
    }
    // Node 2 campaigns; node 3, still in its leader's lease, refuses.
    c.raft_mut(2).leader_suspected(1);
    c.stabilize();
    assert_eq!(c.raft(2).role(), Role::PreCandidate);
    let term = c.raft(2).term();
    let last = (c.raft(2).log().last_index(), c.raft(2).log().last_term());
    let pre_vote = |term: u64, last: (u64, u64)| {
        msg(
            3,
            2,
            Body::VoteRequest(VoteRequest {
                term,
                last_log_index: last.0,
                last_log_term: last.1,
                pre_vote: true,
                leader_transfer: false,
            }),
        )
    };
    let answers = |c: &mut Cluster| {
        c.process(2);
        c.take_msgs(|m| m.from == 2 && m.to == 3)
            .into_iter()
            .map(|m| match m.body {
                Some(Body::VoteResponse(r)) => format!("granted={}", r.granted),
                Some(Body::VoteRequest(r)) => format!("asks pre_vote={} term={}", r.pre_vote, r.term),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    // A longer log: node 3 could win and node 2 could not; node 2 grants.
    c.deliver(pre_vote(term + 1, (last.0 + 1, last.1)));
    assert_eq!(answers(&mut c), ["granted=true"]);
    // A later election than node 2's: it grants as usual.
    c.deliver(pre_vote(term + 2, last));
    assert_eq!(answers(&mut c), ["granted=true"]);
    // The same election, the same log: node 2 takes the tie and asks node 3 for its PreVote.
    c.deliver(pre_vote(term + 1, last));
    assert_eq!(
        answers(&mut c),
        ["granted=false".to_string(), format!("asks pre_vote=true term={}", term + 1)]
    );
    // Node 3 grants it; two of five is no quorum, so node 2 campaigns on, and node 3's next
    // PreVote in this round is granted as usual: a replica that cannot win does not hold
    // the election up for longer than one round of the other's.
    c.deliver(msg(3, 2, Body::VoteResponse(VoteResponse { term: term + 1, granted: true, pre_vote: true })));
    c.process(2);
    c.clear_net();
    assert_eq!(c.raft(2).role(), Role::PreCandidate);
    c.deliver(pre_vote(term + 1, last));
    assert_eq!(answers(&mut c), ["granted=true"]);
}

#[test]
fn a_suspicion_of_someone_else_changes_nothing() {
    let mut c = quiesced_cluster();
    c.raft_mut(2).leader_suspected(3);
    c.stabilize();
    assert!(c.raft(2).is_quiesced());
}

#[test]
fn a_restarted_leader_is_followed_again() {
    let mut c = quiesced_cluster();
    c.crash(1);
    c.restart(1);
    // Node 1 restarts as a follower with an election timer: it campaigns, and its old
    // followers, quiesced under it, take it for what it is — a candidate.
    for _ in 0..100 {
        c.tick_all();
        if c.leader().is_some() && !c.raft(c.leader().unwrap_or(1)).is_quiesced() {
            break;
        }
    }
    let l = c.leader().expect("a leader after the old one restarted");
    c.propose(l, "again").expect("accepted");
    c.stabilize();
    assert_eq!(c.raft(2).log().committed(), c.raft(l).log().last_index());
}

#[test]
fn a_lagging_follower_holds_quiescence_unless_the_detector_holds_it_down() {
    let mut c = Cluster::new(&[1, 2, 3], quiescing);
    c.elect(1);
    c.cut_pair(1, 3);
    c.propose(1, "a").expect("accepted");
    c.stabilize();
    c.ticks(QUIESCE_AFTER * 4);
    assert!(!c.raft(1).is_quiesced(), "quiesced with a follower behind");
    let down: BTreeSet<NodeId> = [3].into();
    for _ in 0..4 {
        let now = c.raft(1).now() + 2;
        c.raft_mut(1).tick_to_with(now, &down);
        c.stabilize();
    }
    assert!(c.raft(1).is_quiesced(), "a follower the detector holds down kept the group awake");
    // The follower returns: its election timer runs (it never quiesced), its PreVote wakes
    // the leader, which catches it up.
    c.heal();
    for _ in 0..60 {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(1), "the returning follower deposed a live leader");
    assert_eq!(c.raft(3).log().committed(), c.raft(1).log().last_index());
}

/// Processes and delivers until settled, losing every append to `lossy` on the way: it
/// hears heartbeats (and can acknowledge a quiescence) but never receives entries.
fn settle_losing_appends_to(c: &mut Cluster, lossy: NodeId) {
    for _ in 0..1000 {
        let any = c.process_all();
        let _ = c.take_msgs(|m| m.to == lossy && kind(m) == "Append");
        if c.deliver_queued() == 0 && !any {
            return;
        }
    }
    panic!("did not settle");
}

/// The lagging follower is alive and answers heartbeats (no detector verdict, no cut link),
/// yet its appends are lost: the leader must not quiesce while it lags, or it would stay
/// behind until the next write (mutant `quiesce-with-a-lagging-follower`, which the
/// simulator's schedules stopped finding once returning members wake their leaders).
#[test]
fn a_follower_that_hears_heartbeats_but_lacks_entries_holds_quiescence() {
    let mut c = Cluster::new(&[1, 2, 3], quiescing);
    c.elect(1);
    c.propose(1, "a").expect("accepted");
    settle_losing_appends_to(&mut c, 3);
    assert!(c.raft(3).log().last_index() < c.raft(1).log().last_index(), "3 got the entry");
    for _ in 0..QUIESCE_AFTER * 4 {
        for id in c.up_ids() {
            c.raft_mut(id).tick();
        }
        settle_losing_appends_to(&mut c, 3);
    }
    assert!(c.raft(3).log().last_index() < c.raft(1).log().last_index(), "3 caught up");
    assert!(!c.raft(1).is_quiesced(), "quiesced with a follower behind that answers heartbeats");
    // Once its appends get through, it catches up and the group quiesces.
    c.ticks(QUIESCE_AFTER * 4);
    assert_eq!(c.raft(3).log().last_index(), c.raft(1).log().last_index());
    assert!(c.raft(1).is_quiesced(), "{:?}", c.raft(1).soft_state());
}

#[test]
fn a_woken_leader_without_a_quorum_steps_down() {
    let mut c = quiesced_cluster();
    c.crash(2);
    c.crash(3);
    c.propose(1, "lost").expect("accepted");
    c.stabilize();
    let min = c.raft(1).config().election_ticks_min;
    c.ticks(min + 2);
    assert_ne!(c.raft(1).role(), Role::Leader, "CheckQuorum did not run after the wake");
}

#[test]
fn a_vote_request_wakes_a_quiesced_leader_which_keeps_its_lease() {
    let mut c = quiesced_cluster();
    // Node 3 missed everything (a restart with its state): it campaigns.
    c.crash(3);
    c.restart(3);
    for _ in 0..60 {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(1), "a restarted follower deposed a live quiesced leader");
    assert_eq!(c.raft(1).term(), c.raft(3).term());
}
