//! Conformance: leadership transfer (Raft thesis §3.10), step down and heartbeat
//! suspension.

mod common;

use common::*;
use phalanx::raft::{Membership, Role, Status};
use phalanx_proto::ConfChangeType;
use phalanx_proto::raft_message::Body;

fn timeout_nows(c: &Cluster) -> Vec<(u64, u64)> {
    c.trace.iter().filter(|m| kind(m) == "TimeoutNow").map(|m| (m.from, m.to)).collect()
}

/// §3.10: "the prior leader sends a TimeoutNow request to the target server ... [which]
/// starts a new election" at once, without waiting for its timer. The target's vote
/// requests carry the transfer flag so voters inside their leader lease still answer
/// (with PreVote and CheckQuorum on, a plain election could not happen so soon).
#[test]
fn transfer_to_caught_up_target_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.ticks(3);
    c.raft_mut(1).transfer_leadership(2).unwrap();
    c.stabilize();
    assert_eq!(timeout_nows(&c), vec![(1, 2)]);
    assert_eq!(c.leader(), Some(2));
    assert_eq!(c.raft(2).term(), 2);
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(c.raft(1).leader(), Some(2));
    assert!(
        c.trace
            .iter()
            .any(|m| matches!(&m.body, Some(Body::VoteRequest(v)) if v.leader_transfer && !v.pre_vote)),
        "the target skips PreVote and flags its requests as a transfer"
    );
}

/// §3.10 step 1: "the prior leader ... ensures the target server's log is up-to-date" before
/// sending TimeoutNow. A lagging target first receives the missing entries; TimeoutNow goes
/// out only once it has them all, and the new leader holds every committed entry.
#[test]
fn transfer_waits_until_target_caught_up() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.cut_pair(1, 3);
    for i in 0..10 {
        c.propose(1, &format!("v{i}")).unwrap();
    }
    c.stabilize();
    let last = c.raft(1).log().last_index();
    assert!(c.raft(3).log().last_index() < last);
    c.raft_mut(1).transfer_leadership(3).unwrap();
    c.stabilize();
    assert!(timeout_nows(&c).is_empty(), "no TimeoutNow to a lagging target");
    c.heal();
    c.ticks(config(1).heartbeat_ticks);
    assert_eq!(timeout_nows(&c), vec![(1, 3)]);
    let at = c.trace.iter().position(|m| kind(m) == "TimeoutNow").unwrap();
    let acks_before: u64 = c.trace[..at]
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::AppendResponse(r)) if m.from == 3 && r.success => Some(r.match_index),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert_eq!(acks_before, last, "TimeoutNow only after the target acknowledged the whole log");
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(3).applied_strings().len(), 10);
}

/// §3.10: "the prior leader stops accepting new client requests" during the transfer:
/// proposals (and membership changes, checkpoints...) are refused with `Busy`.
#[test]
fn proposals_refused_with_busy_during_transfer() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.cut_pair(1, 3);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.raft_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(c.propose(1, "y"), Err(Status::Busy));
    let r = c.raft_mut(1);
    assert_eq!(r.propose_conf_change(conf_change(ConfChangeType::AddLearner, 9)), Err(Status::Busy));
    assert_eq!(r.propose_checkpoint(ticket(1)), Err(Status::Busy));
}

/// §3.10: "if the transfer does not complete after about an election timeout, the prior
/// leader aborts the transfer and resumes accepting client requests".
#[test]
fn transfer_aborts_after_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.isolate(3);
    c.raft_mut(1).transfer_leadership(3).unwrap();
    let min = config(1).election_ticks_min;
    c.ticks(min - 1);
    assert_eq!(c.propose(1, "early"), Err(Status::Busy), "still transferring");
    c.ticks(1);
    assert!(c.raft(1).is_leader(), "the leader keeps leading when the transfer fails");
    c.propose(1, "after").unwrap();
    c.stabilize();
    assert_eq!(c.node(2).applied_strings(), vec!["after"]);
}

/// A target that catches up late in the transfer still gets its chance: the transfer's
/// deadline moves to an election timeout after the first TimeoutNow, so the leader takes no
/// proposal before the target's campaign arrives. Voters {1, 2}, node 2 lagging: it catches up
/// an election timeout less one tick into the transfer, its VoteRequest arrives two ticks
/// later. When the transfer expired in between, the leader appended a proposal, refused the
/// successor it had chosen (its log was now longer) and won the next election itself; a
/// leaving member handed a partition over like this a dozen times in a row (simulator seed
/// 11589).
#[test]
fn a_late_timeout_now_holds_proposals_until_the_target_campaigns() {
    let mut c = Cluster::new(&[1, 2], plain);
    c.elect(1);
    c.stabilize();
    c.cut_pair(1, 2);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.heal();
    c.raft_mut(1).transfer_leadership(2).unwrap();
    c.process(1);
    // Node 2 gets the entries now; the answer that shows it caught up reaches the leader an
    // election timeout less one tick after the transfer started.
    let last = c.raft(1).log().last_index();
    let mut rounds = 0;
    let answers = loop {
        rounds += 1;
        assert!(rounds <= 10, "node 2 did not catch up");
        for m in c.take_msgs(|m| m.to == 2) {
            c.deliver(m);
        }
        c.process(2);
        let answers = c.take_msgs(|m| m.from == 2);
        if c.raft(2).log().last_index() == last {
            break answers;
        }
        assert!(!answers.is_empty(), "node 2 answers until it caught up");
        for m in answers {
            c.deliver(m);
        }
        c.process(1);
    };
    let min = config(1).election_ticks_min;
    for _ in 0..min - 1 {
        c.raft_mut(1).tick();
    }
    c.process(1);
    c.clear_net();
    for m in answers {
        c.deliver(m);
    }
    c.process(1);
    let timeout_now = c.take_msgs(|m| m.to == 2 && kind(m) == "TimeoutNow");
    assert!(!timeout_now.is_empty(), "node 2 caught up: TimeoutNow");
    c.clear_net();
    for m in timeout_now {
        c.deliver(m);
    }
    c.process(2);
    let campaign = c.take_msgs(|m| m.from == 2);
    // Past the transfer's first deadline: the leader still waits for its target.
    c.raft_mut(1).tick();
    c.raft_mut(1).tick();
    assert_eq!(c.propose(1, "y"), Err(Status::Busy), "still transferring");
    for m in campaign {
        c.deliver(m);
    }
    c.stabilize();
    assert_eq!(c.leader(), Some(2), "the target won");
}

/// The deadline moves once: a target that never campaigns (each TimeoutNow lost, though the
/// leader sends another at each of its answers while it keeps up) holds the proposals back
/// until an election timeout after the first TimeoutNow, not for good.
#[test]
fn a_target_that_never_campaigns_holds_proposals_one_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    c.cut_pair(1, 3);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.raft_mut(1).transfer_leadership(3).unwrap();
    let min = config(1).election_ticks_min;
    // Node 3 catches up a few ticks into the transfer; every TimeoutNow is lost.
    c.ticks(3);
    c.heal();
    let mut first = None;
    let mut sent = 0;
    let mut ticks = 0;
    while c.propose(1, "after") == Err(Status::Busy) {
        ticks += 1;
        assert!(ticks <= 3 * min, "the transfer never ended");
        c.raft_mut(1).tick();
        for _ in 0..10 {
            c.process_all();
            let lost = c.take_msgs(|m| kind(m) == "TimeoutNow").len();
            if lost > 0 && first.is_none() {
                first = Some(c.raft(1).now());
            }
            sent += lost;
            if c.deliver_queued() == 0 {
                break;
            }
        }
    }
    let first = first.expect("node 3 caught up: TimeoutNow");
    assert!(sent > 1, "TimeoutNow went out again and again ({sent})");
    assert_eq!(c.raft(1).now(), first + min, "proposals taken again an election timeout after the first");
    assert!(c.raft(1).is_leader());
    c.stabilize();
    assert!(c.node(3).applied_strings().contains(&"after".to_string()));
}

/// Transfer preconditions: only a leader transfers (`NodeIsNotLeader`), only to a voter
/// (`InvalidRequest`), one transfer at a time (`ActiveProposal` for another target, a repeat
/// for the same target is accepted), and a transfer to itself changes nothing.
#[test]
fn transfer_preconditions() {
    let m = Membership { voters: [1, 2, 3].into(), learners: [4].into() };
    let mut c = Cluster::with_membership(m, &[], defaults);
    c.elect(1);
    assert_eq!(c.raft_mut(2).transfer_leadership(3), Err(Status::NodeIsNotLeader));
    assert_eq!(c.raft_mut(1).transfer_leadership(4), Err(Status::InvalidRequest), "learner");
    assert_eq!(c.raft_mut(1).transfer_leadership(9), Err(Status::InvalidRequest), "unknown");
    c.raft_mut(1).transfer_leadership(1).unwrap();
    c.propose(1, "self transfer is a no-op").unwrap();
    c.isolate(3);
    c.raft_mut(1).transfer_leadership(3).unwrap();
    c.raft_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(c.raft_mut(1).transfer_leadership(2), Err(Status::ActiveProposal));
}

/// `step_down` gives up leadership at once, handing it to a caught-up voter with
/// TimeoutNow (§3.10) so the group is not left leaderless for an election timeout.
#[test]
fn step_down_hands_over_to_caught_up_voter() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.raft_mut(1).step_down().unwrap();
    assert_eq!(c.raft(1).role(), Role::Follower);
    c.stabilize();
    let l = c.leader().expect("a new leader without waiting for a timeout");
    assert_ne!(l, 1);
    assert_eq!(c.raft(l).term(), 2);
    assert_eq!(c.raft_mut(2).step_down().is_ok(), l == 2);
}

/// Suspending heartbeats makes followers time out and elect another leader (the old one
/// learns the new term); resuming makes heartbeats flow at once.
#[test]
fn suspend_and_resume_heartbeats() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.raft_mut(1).resume_heartbeats().unwrap();
    c.raft_mut(1).suspend_heartbeats().unwrap();
    assert_eq!(c.raft_mut(2).suspend_heartbeats(), Err(Status::NodeIsNotLeader));
    let mut ticks = 0;
    while c.leader() == Some(1) {
        c.tick_all();
        ticks += 1;
        assert!(ticks < 200, "followers never timed out");
    }
    for _ in 0..100 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().unwrap();
    assert_ne!(l, 1);
    c.raft_mut(l).suspend_heartbeats().unwrap();
    c.raft_mut(l).resume_heartbeats().unwrap();
    let before = c.trace.len();
    c.tick_all();
    assert!(c.trace[before..].iter().any(|m| kind(m) == "Heartbeat" && m.from == l));
}

/// §3.10: the target "starts a new election" on TimeoutNow whatever it was doing — also
/// when its own election timer had just fired and it is running a PreVote round (here: it
/// missed the leader's heartbeats for a while). Ignoring it would leave the leader refusing
/// proposals (`Busy`) until the transfer times out.
#[test]
fn timeout_now_reaches_a_pre_candidate_target() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.cut.insert((1, 2));
    for _ in 0..100 {
        if c.raft(2).role() == Role::PreCandidate {
            break;
        }
        c.tick_all();
    }
    assert_eq!(c.raft(2).role(), Role::PreCandidate);
    assert!(c.raft(1).is_leader());
    c.heal();
    c.raft_mut(1).transfer_leadership(2).unwrap();
    c.process(1);
    let tn = c.take_msgs(|m| kind(m) == "TimeoutNow");
    assert_eq!(tn.len(), 1, "node 2 is caught up: TimeoutNow at once");
    for m in tn {
        c.deliver(m);
    }
    c.stabilize();
    assert_eq!(c.leader(), Some(2), "the transfer target did not take over");
}
