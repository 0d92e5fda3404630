//! Conformance: leader election and vote granting (Raft paper §5.1, §5.2, §5.4.1).

mod common;

use common::*;
use phalanx::raft::{Role, Status};
use phalanx_proto::raft_message::Body;

/// §5.2 "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis": a second candidate in the same term is refused, while the
/// candidate already voted for gets its grant repeated (a retransmitted request).
#[test]
fn vote_granting_at_most_one_vote_per_term() {
    let mut r = solo(3, &[1, 2, 3], plain);
    r.step(msg(1, 3, vote_req(1, 0, 0, false))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(vote_answers(&rd.persisted_messages), vec![(1, true, false, 1)]);
    assert_eq!(r.vote(), 1);
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, 1)), "the vote is persisted with the grant");

    r.step(msg(2, 3, vote_req(1, 0, 0, false))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(
        vote_answers(&all_msgs(&rd)),
        vec![(2, false, false, 1)],
        "second candidate of term 1 refused"
    );
    assert_eq!(r.vote(), 1);

    r.step(msg(1, 3, vote_req(1, 0, 0, false))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(vote_answers(&all_msgs(&rd)), vec![(1, true, false, 1)], "same candidate: grant repeated");
}

/// §5.2 (same rule, whole cluster): two candidates in one term cannot both win. Nodes 1 and 2
/// campaign in term 1 at the same moment; at most one becomes leader, and a leader exists
/// after the randomized timeouts break any tie.
#[test]
fn election_safety_at_most_one_leader_per_term() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], plain);
    c.raft_mut(1).campaign();
    c.raft_mut(2).campaign();
    c.stabilize();
    let leaders: Vec<_> = c.ids().into_iter().filter(|&i| c.raft(i).is_leader()).collect();
    assert!(leaders.len() <= 1, "two leaders in term 1: {leaders:?}");
    for _ in 0..100 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().expect("a leader after the timeouts");
    let t = c.raft(l).term();
    let same_term_leaders =
        c.ids().into_iter().filter(|&i| c.raft(i).is_leader() && c.raft(i).term() == t).count();
    assert_eq!(same_term_leaders, 1);
}

/// §5.4.1 election restriction: a vote is granted only to a candidate whose log is at least
/// as up-to-date — a later last term wins, with equal last terms the longer log wins.
#[test]
fn vote_granting_requires_up_to_date_log() {
    // The voter's log: terms [1, 1, 2], so last = (3, 2).
    let mut r = solo_with_log(3, &[1, 2, 3], 2, log_of_terms(&[1, 1, 2]), 0, plain);
    let cases = [
        // (candidate last index, last term, granted?)
        (5, 1, false), // longer but older last term
        (2, 2, false), // same last term, shorter
        (3, 2, true),  // identical
        (4, 2, true),  // same last term, longer
        (1, 3, true),  // shorter but newer last term
    ];
    let mut term = 2;
    for (li, lt, want) in cases {
        term += 1; // a fresh term each time, so the one-vote-per-term rule does not interfere
        r.step(msg(1, 3, vote_req(term, li, lt, false))).unwrap();
        let rd = flush(&mut r);
        assert_eq!(
            vote_answers(&all_msgs(&rd)),
            vec![(1, want, false, term)],
            "candidate last=({li},{lt}) vs voter last=(3,2)"
        );
        assert_eq!(r.term(), term, "a vote request of a higher term is adopted whatever the answer");
    }
}

/// §5.4.1 across a cluster: the node holding an entry the others lack cannot lose it — a
/// candidate missing it is refused by the node that has it, and with it a majority.
#[test]
fn candidate_with_stale_log_cannot_win() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_pair(1, 3);
    c.propose(1, "x").unwrap();
    c.stabilize();
    // Entry 2 is committed on {1, 2}; node 3 lacks it.
    assert_eq!(c.raft(1).log().committed(), 2);
    assert_eq!(c.raft(3).log().last_index(), 1);
    c.crash(1);
    c.campaign(3);
    assert!(!c.raft(3).is_leader(), "node 3 lacks committed entry 2 and must not win");
    c.elect(2);
}

/// §5.2 randomized election timeouts: each node draws its timeout from
/// `[election_ticks_min, election_ticks_max)` with its seeded generator; nodes draw different
/// values (so split votes are rare) and the same seed gives the same draws (determinism).
#[test]
fn randomized_election_timeouts_in_range_distinct_and_seeded() {
    let draw = |seed: u64| -> Vec<u64> {
        (1..=5)
            .map(|id| {
                let r = solo(id, &[1, 2, 3, 4, 5], |c| c.seed = seed);
                r.next_deadline()
            })
            .collect()
    };
    let a = draw(7);
    let cfg = config(1);
    for d in &a {
        assert!((cfg.election_ticks_min..cfg.election_ticks_max).contains(d), "timeout {d} out of range");
    }
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() > 1, "all five nodes drew the same timeout: {a:?}");
    assert_eq!(a, draw(7), "same seed, same timeouts");
    assert!((8..40).any(|s| draw(s) != a), "the seed changes the draws");

    // A node re-draws on each reset: successive timeouts of one node vary.
    let mut r = solo(1, &[1, 2, 3], plain);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let before = r.now();
        let d = r.next_deadline() - before;
        assert!((cfg.election_ticks_min..cfg.election_ticks_max).contains(&d));
        seen.insert(d);
        r.tick_to(r.next_deadline()); // fires: becomes candidate, new timeout
        let _ = flush(&mut r);
    }
    assert!(seen.len() > 1, "the timeout never changed: {seen:?}");
}

/// §5.2: the node whose randomized timeout fires first starts the election and wins it; no
/// one campaigns before `election_ticks_min` ticks without a leader.
#[test]
fn first_timeout_wins_election() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], defaults);
    let first = c.ids().into_iter().min_by_key(|&i| (c.raft(i).next_deadline(), i)).unwrap();
    let min = config(1).election_ticks_min;
    let mut ticks = 0;
    while c.leader().is_none() {
        c.tick_all();
        ticks += 1;
        assert!(ticks <= 100, "no leader after 100 ticks");
    }
    assert!(ticks >= min, "elected after {ticks} ticks, before the minimum timeout");
    assert_eq!(c.leader(), Some(first));
    assert_eq!(c.raft(first).term(), 1, "PreVote then one real election: term 1");
}

/// §5.1 "If a candidate or leader discovers that its term is out of date, it immediately
/// reverts to follower state": a leader answered with a higher term steps down and adopts it.
#[test]
fn higher_term_turns_leader_into_follower() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    assert_eq!(c.raft(1).term(), 1);
    let resp =
        Body::HeartbeatResponse(phalanx_proto::HeartbeatResponse { term: 5, read_ctx: 0, quiesced: false });
    c.raft_mut(1).step(msg(2, 1, resp)).unwrap();
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(c.raft(1).term(), 5);
    assert_eq!(c.raft(1).vote(), 0, "a new term clears the vote");
    assert_eq!(c.raft(1).leader(), None);
}

/// §5.1 / §5.2: a candidate that receives AppendEntries from a leader of a term at least its
/// own recognizes that leader and returns to follower state.
#[test]
fn candidate_recognizes_leader_of_same_or_higher_term() {
    let mut r = solo(2, &[1, 2, 3], plain);
    r.campaign();
    assert_eq!((r.role(), r.term()), (Role::Candidate, 1));
    let _ = flush(&mut r);
    r.step(msg(1, 2, heartbeat(1, 0))).unwrap();
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 1, Some(1)));

    let mut r = solo(2, &[1, 2, 3], plain);
    r.campaign();
    r.step(msg(3, 2, append(4, (0, 0), vec![], 0))).unwrap();
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 4, Some(3)));
}

/// §5.1 "If a server receives a request with a stale term number, it rejects the request":
/// a stale AppendEntries changes nothing (log, term, leader), and a stale RequestVote is not
/// granted.
#[test]
fn stale_term_requests_are_rejected() {
    let mut r = solo_with_log(3, &[1, 2, 3], 5, log_of_terms(&[1, 5]), 0, plain);
    let refused = r.step(msg(1, 3, append(4, (2, 5), vec![entry(3, 4)], 3)));
    assert_eq!(refused, Err(Status::LeaderInOldTerm));
    let rd = flush(&mut r);
    assert_eq!(terms(&r), vec![1, 5], "stale append must not touch the log");
    assert_eq!((r.term(), r.leader(), r.log().committed()), (5, None, 0));
    assert!(rd.persisted_messages.is_empty(), "no acknowledgement for a stale append");

    r.step(msg(1, 3, vote_req(4, 10, 4, false))).unwrap();
    let rd = flush(&mut r);
    assert!(vote_answers(&all_msgs(&rd)).iter().all(|a| !a.1), "stale vote request not granted");
    assert_eq!((r.term(), r.vote()), (5, 0));
}

/// §5.1 with PreVote on: since such a node does not disrupt a stale leader with vote
/// requests, it tells a stale leader its term directly (answering the stale append with its
/// own term), and the stale leader steps down on hearing it; its uncommitted entry is lost.
#[test]
fn stale_leader_learns_new_term_and_steps_down() {
    // CheckQuorum off so the isolated leader keeps believing it leads.
    let mut c = Cluster::new(&[1, 2, 3], |c| c.check_quorum = false);
    c.elect(1);
    c.isolate(1);
    c.raft_mut(1).propose(proposal("stale")).unwrap();
    for _ in 0..100 {
        c.tick_all();
        if c.raft(2).is_leader() || c.raft(3).is_leader() {
            break;
        }
    }
    let new_leader = if c.raft(2).is_leader() { 2 } else { 3 };
    assert!(c.raft(new_leader).is_leader());
    assert!(c.raft(1).is_leader(), "without CheckQuorum the isolated leader does not know");
    assert!(c.raft(1).term() < c.raft(new_leader).term());
    c.heal();
    c.ticks(3);
    assert!(!c.raft(1).is_leader());
    assert_eq!(c.raft(1).term(), c.raft(new_leader).term());
    assert_eq!(c.raft(1).leader(), Some(new_leader));
    c.assert_logs_match(new_leader);
    assert!(!c.node(1).applied_strings().contains(&"stale".to_string()));
}
