//! Conformance: PreVote (Raft thesis §9.6) and CheckQuorum with the leader lease (thesis
//! §6.2, §4.2.3).

mod common;

use common::*;
use phalanx::raft::Role;

/// Ticks until `cond` holds, at most `max` ticks; returns the ticks taken.
fn ticks_until(c: &mut Cluster, max: u64, cond: impl Fn(&Cluster) -> bool) -> Option<u64> {
    for t in 1..=max {
        c.tick_all();
        if cond(c) {
            return Some(t);
        }
    }
    None
}

/// §9.6: "a candidate must first ... learn whether its log is up-to-date enough to win; if
/// not, it does not increment its term". A node partitioned away from the cluster keeps
/// timing out but never raises its term.
#[test]
fn prevote_partitioned_node_does_not_bump_term() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.isolate(3);
    c.ticks(200);
    assert_eq!(c.raft(3).term(), 1, "the isolated node's term must not move");
    assert_eq!(c.raft(3).stats().elections_started, 0, "PreVote rounds only, never a real election");
    assert_ne!(c.raft(3).role(), Role::Candidate);
    assert!(c.raft(1).is_leader());
}

/// §9.6: the point of PreVote — a partitioned node that rejoins cannot disrupt the
/// cluster: the leader keeps its term and leadership.
#[test]
fn prevote_rejoining_node_does_not_disrupt() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.isolate(3);
    c.ticks(200);
    c.heal();
    c.ticks(50);
    assert_eq!(c.leader(), Some(1));
    for id in c.ids() {
        assert_eq!(c.raft(id).term(), 1, "node {id}");
    }
    c.propose(1, "after").unwrap();
    c.stabilize();
    assert_eq!(c.node(3).applied_strings(), vec!["after"], "the rejoined node follows again");
}

/// Control for the two tests above: without PreVote and CheckQuorum the isolated node bumps
/// its term on every timeout, and on rejoining forces the healthy leader out (the
/// disruption PreVote prevents).
#[test]
fn without_prevote_rejoining_node_disrupts() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.isolate(3);
    c.ticks(100);
    assert!(c.raft(3).term() > 3, "term of the isolated node: {}", c.raft(3).term());
    let t3 = c.raft(3).term();
    c.heal();
    c.ticks(5);
    assert!(c.raft(1).term() >= t3, "the old leader was pushed to the higher term");
}

/// §9.6: a PreVote changes nothing on the voter — no term, no vote — and its grant needs no
/// persistence (it is an immediate message); it answers in the term the pre-candidate
/// would campaign in.
#[test]
fn prevote_grant_changes_no_durable_state() {
    let mut r = solo(2, &[1, 2, 3], defaults);
    r.step(msg(1, 2, vote_req(1, 0, 0, true))).unwrap();
    let rd = flush(&mut r);
    assert_eq!((r.term(), r.vote()), (0, 0));
    assert!(rd.hard_state.is_none(), "nothing to persist");
    assert!(rd.persisted_messages.is_empty());
    assert_eq!(vote_answers(&rd.messages), vec![(1, true, true, 1)]);
}

/// §9.6 + §5.4.1: a PreVote is granted only to a log at least as up-to-date; a refusal
/// carries the voter's own term.
#[test]
fn prevote_refused_to_stale_log() {
    let mut r = solo_with_log(2, &[1, 2, 3], 3, log_of_terms(&[1, 3]), 0, defaults);
    r.step(msg(1, 2, vote_req(4, 5, 2, true))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(vote_answers(&rd.messages), vec![(1, false, true, 3)]);
    assert_eq!(r.term(), 3);
}

/// §9.6: a pre-candidate that wins the PreVote round starts a real election in term + 1,
/// and one that loses it stays in its term.
#[test]
fn prevote_round_then_real_election() {
    let mut r = solo(1, &[1, 2, 3], defaults);
    r.campaign();
    assert_eq!((r.role(), r.term()), (Role::PreCandidate, 0));
    let rd = flush(&mut r);
    assert!(rd.messages.iter().all(|m| kind(m) == "PreVote"));
    assert!(rd.hard_state.is_none(), "a PreVote round persists nothing");
    r.step(msg(2, 1, vote_resp(1, true, true))).unwrap();
    assert_eq!((r.role(), r.term(), r.vote()), (Role::Candidate, 1, 1));

    let mut r = solo(1, &[1, 2, 3], defaults);
    r.campaign();
    r.step(msg(2, 1, vote_resp(0, false, true))).unwrap();
    r.step(msg(3, 1, vote_resp(0, false, true))).unwrap();
    assert_eq!((r.role(), r.term()), (Role::Follower, 0), "lost PreVote: no term bump");
}

/// §6.2 CheckQuorum: "a leader steps down if an election timeout elapses without a
/// successful round of heartbeats to a majority of its cluster". A leader cut off from its
/// followers steps down on its own (checks run every `election_ticks_min`, so within two
/// such periods of the last contact — at most `election_ticks_max` ticks with the default
/// timeouts), whatever the phase of the partition relative to the check.
#[test]
fn check_quorum_leader_without_quorum_steps_down() {
    let cfg = config(1);
    for offset in 0..cfg.election_ticks_min {
        let mut c = Cluster::new(&[1, 2, 3, 4, 5], defaults);
        c.elect(1);
        c.ticks(offset);
        // Leader keeps one follower: 2 of 5 is no quorum.
        c.isolate(1);
        c.cut.remove(&(1, 2));
        c.cut.remove(&(2, 1));
        let took = ticks_until(&mut c, 100, |c| !c.raft(1).is_leader())
            .unwrap_or_else(|| panic!("offset {offset}: leader never stepped down"));
        assert!(took <= cfg.election_ticks_max, "offset {offset}: stepped down after {took} ticks");
        assert!(took <= 2 * cfg.election_ticks_min, "offset {offset}: {took} ticks");
        assert_eq!(c.raft(1).role(), Role::Follower);
    }
}

/// §6.2: CheckQuorum never deposes a leader that hears from a quorum, even an idle one.
#[test]
fn check_quorum_leader_with_quorum_stays() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], defaults);
    c.elect(1);
    c.crash(4);
    c.crash(5);
    c.ticks(300);
    assert!(c.raft(1).is_leader());
    assert_eq!(c.raft(1).term(), 1);
}

/// Thesis §4.2.3 (the lease that makes CheckQuorum and PreVote safe against disruptive
/// servers): "if a server receives a RequestVote request within the minimum election timeout
/// of hearing from a current leader, it does not update its term or grant its vote". Once the
/// leader has been silent for that long, the request is handled normally.
#[test]
fn lease_follower_ignores_vote_requests_while_leader_is_fresh() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.pre_vote = false);
    c.elect(1);
    c.ticks(3);
    let req = msg(3, 2, vote_req(9, 100, 9, false));
    c.raft_mut(2).step(req.clone()).unwrap();
    let rd = c.process(2).unwrap_or_default();
    assert_eq!(c.raft(2).term(), 1, "term not updated inside the lease");
    assert_eq!(c.raft(2).vote(), 1);
    assert!(vote_answers(&all_msgs(&rd)).is_empty(), "no answer inside the lease");
    // The leader goes silent for the minimum election timeout: the lease is over.
    c.crash(1);
    c.tick_node(2, config(2).election_ticks_min);
    c.clear_net();
    c.raft_mut(2).step(req).unwrap();
    let rd = c.process(2).unwrap();
    assert_eq!(c.raft(2).term(), 9);
    assert_eq!(vote_answers(&all_msgs(&rd)), vec![(3, true, false, 9)]);
}

/// The same lease with PreVote but without CheckQuorum: PreVote alone let a server whose log
/// was as long as a lagging voter's win an election — a member being removed, which never
/// heard of its removal, deposed the leader removing it again and again (the simulator, seed
/// 3378, before the lease applied here).
#[test]
fn lease_holds_with_prevote_alone() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.check_quorum = false);
    c.elect(1);
    c.ticks(3);
    // A pre-vote and a vote of a later term, from a server whose log is longer.
    for pre_vote in [true, false] {
        c.raft_mut(2).step(msg(3, 2, vote_req(9, 100, 9, pre_vote))).unwrap();
        let rd = c.process(2).unwrap_or_default();
        assert_eq!(c.raft(2).term(), 1, "term not updated inside the lease");
        assert!(vote_answers(&all_msgs(&rd)).is_empty(), "no answer inside the lease");
    }
}

/// Thesis §4.2.3 applied to the leader itself: a leader that keeps hearing from a quorum is
/// a "current leader", so a disruptive RequestVote of a higher term (here from a node that
/// was partitioned without PreVote and bumped its term) must not depose it — at any time in
/// its leadership, not only during its first election timeout.
#[test]
fn lease_leader_ignores_disruptive_vote_request() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.pre_vote = false);
    c.elect(1);
    c.ticks(5 * config(1).election_ticks_max);
    assert!(c.raft(1).is_leader());
    let req = msg(3, 1, vote_req(9, 100, 9, false));
    c.raft_mut(1).step(req).unwrap();
    assert!(c.raft(1).is_leader(), "a leader with a live quorum was deposed by a vote request");
    assert_eq!(c.raft(1).term(), 1);
}

/// Thesis §6.2, strictly: the leader steps down once *an election timeout* passes without
/// hearing from a quorum — here with a narrow timeout range (`election_ticks_max` =
/// `election_ticks_min + 2`), where the followers elect a new leader after at most
/// `election_ticks_max` ticks of silence.
#[test]
fn check_quorum_steps_down_within_one_election_timeout_of_last_contact() {
    let tweak = |cfg: &mut phalanx::raft::Config| cfg.election_ticks_max = cfg.election_ticks_min + 2;
    let mut cfg = config(1);
    tweak(&mut cfg);
    for offset in 0..cfg.election_ticks_min {
        let mut c = Cluster::new(&[1, 2, 3, 4, 5], tweak);
        c.elect(1);
        c.ticks(offset);
        c.isolate(1);
        let took = ticks_until(&mut c, 100, |c| !c.raft(1).is_leader())
            .unwrap_or_else(|| panic!("offset {offset}: leader never stepped down"));
        assert!(took <= cfg.election_ticks_max, "offset {offset}: stepped down after {took} ticks");
    }
}
