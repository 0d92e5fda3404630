//! A replica that lost durable state (issue 11, items 2 and 3): it must neither vote nor
//! campaign until it caught up from a leader, and leaders must notice that its log went
//! backwards. See `engine/src/raft/recovery.rs` for the rules and why they are safe.

mod common;

use common::*;
use phalanx::raft::Status;
use phalanx_proto::raft_message::Body;

/// Delivers and processes until quiet, then ticks `n` times.
fn settle_ticks(c: &mut Cluster, n: u64) {
    c.stabilize();
    c.ticks(n);
}

#[test]
fn a_new_cluster_of_empty_replicas_elects_once_every_voter_answered() {
    let mut c = Cluster::empty();
    for id in 1..=3 {
        c.add_restored(config(id), recovering_restore(&[1, 2, 3]));
    }
    assert!((1..=3).all(|id| c.raft(id).is_recovering()));
    // One node down: an empty replica cannot tell a new cluster from a wiped disk without
    // every voter's word, so nobody runs.
    c.crash(3);
    settle_ticks(&mut c, 60);
    assert!(c.leader().is_none(), "elected with a voter unheard");
    assert!(c.raft(1).is_recovering() && c.raft(2).is_recovering());
    c.restart(3);
    settle_ticks(&mut c, 60);
    assert!(c.leader().is_some(), "no leader once every voter answered term 0");
    assert!((1..=3).all(|id| !c.raft(id).is_recovering()));
}

fn recovering_restore(voters: &[u64]) -> phalanx::raft::RestoreState {
    let mut r = phalanx::raft::RestoreState {
        initial_membership: phalanx::raft::Membership::with_voters(voters.iter().copied()),
        ..Default::default()
    };
    r.hard_state.recovering = true;
    r
}

#[test]
fn a_wiped_follower_catches_up_before_it_votes_again() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("v{i}")).expect("leader takes it");
    }
    c.stabilize();
    let last = c.raft(1).log().last_index();
    c.wipe(3);
    assert!(c.raft(3).is_recovering());
    assert_eq!(c.raft(3).log().last_index(), 0);
    // While recovering it refuses votes: a candidate with an empty log (node 3's own view of
    // "up to date") gets nothing from it.
    let before = c.raft(3).term();
    c.deliver(msg(2, 3, vote_req(before + 1, 0, 0, false)));
    let rd = c.process(3).expect("an answer");
    let answers = vote_answers(&all_msgs(&rd));
    assert!(answers.iter().all(|(_, granted, _, _)| !granted), "{answers:?}");
    // It catches up from the leader, which notices its log went back, and then leaves
    // recovery (after the leader's next commit in its term reaches it).
    c.propose(1, "after").expect("leader takes it");
    settle_ticks(&mut c, 30);
    assert_eq!(c.raft(3).log().last_index(), last + 1);
    assert!(!c.raft(3).is_recovering(), "still recovering: floor {:?}", c.raft(3).recovery_floor());
    c.check_safety();
}

/// The acknowledged write that would vanish: entry committed by {1, 3}; 3 loses its disk,
/// 1 goes down. Without recovery, 3 (empty) votes for 2 (which lacks the entry) and the
/// write is gone. With it, 3 does not vote: no leader until 1 is back, and the write stays.
#[test]
fn a_wiped_replica_never_helps_elect_a_leader_lacking_what_it_acknowledged() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    c.cut_pair(1, 2);
    let at = c.propose(1, "acked").expect("leader takes it");
    c.stabilize();
    assert!(c.raft(1).log().committed() >= at.last_index, "committed by 1 and 3");
    assert!(c.raft(2).log().last_index() < at.last_index, "2 lacks it");
    c.crash(1);
    c.heal();
    c.wipe(3);
    for _ in 0..10 {
        c.raft_mut(2).campaign();
        settle_ticks(&mut c, 25);
        assert!(!c.raft(2).is_leader(), "2 won without the committed entry");
    }
    c.restart(1);
    settle_ticks(&mut c, 80);
    let leader = c.leader().expect("a leader once 1 is back");
    assert!(c.raft(leader).log().term(at.last_index) == Some(at.term), "the acknowledged entry survived");
    c.check_safety();
}

/// Election safety: 3 voted for 1 in term T, then lost its disk. It must not vote for 2 in T.
#[test]
fn a_wiped_replica_does_not_vote_twice_in_a_term() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    let t = c.raft(1).term();
    c.wipe(3);
    c.deliver(msg(2, 3, vote_req(t, 100, t, false)));
    let rd = c.process(3).expect("an answer");
    assert!(vote_answers(&all_msgs(&rd)).iter().all(|(_, granted, _, _)| !granted));
}

/// A leader in the replicate state used to keep a wiped follower's old match index and drop
/// its rejections as stale: the follower stayed empty for good. (The leader hears of the
/// loss from the follower's probe too, but starts the follower's progress over only at its
/// first rejection: `step_leader.rs`.)
#[test]
fn a_leader_starts_over_with_a_follower_whose_log_went_back() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    for i in 0..8 {
        c.propose(1, &format!("v{i}")).expect("leader takes it");
    }
    c.stabilize();
    c.cut_tail(3, 4);
    c.propose(1, "next").expect("leader takes it");
    settle_ticks(&mut c, 40);
    assert!(c.raft(1).stats().followers_restarted >= 1, "the leader never noticed");
    assert_eq!(c.raft(3).log().last_index(), c.raft(1).log().last_index(), "3 caught up");
    assert!(!c.raft(3).is_recovering(), "caught up from a leader of its floor's term: recovery ends");
    c.check_safety();
}

/// A replica that lost its state acknowledges nothing until it knows its term floor: back at
/// term 0, it would otherwise follow a leader of a term it had already left behind and help
/// it commit or confirm a read (simulator seed 9414: a stale read).
#[test]
fn a_recovering_replica_does_not_answer_a_stale_leader() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    let old_term = c.raft(1).term();
    // 1 is cut off and keeps believing it leads (CheckQuorum off); 2 and 3 move on.
    c.isolate(1);
    c.raft_mut(2).campaign();
    settle_ticks(&mut c, 40);
    assert!(c.raft(2).is_leader() && c.raft(2).term() > old_term, "2 leads a later term");
    c.propose(2, "later").expect("2 takes it");
    settle_ticks(&mut c, 10);
    // 3 loses its disk; 2 is cut off from 3 so that 3 cannot learn its floor; 1 comes back
    // to 3 only.
    c.wipe(3);
    c.heal();
    c.cut_pair(2, 3);
    c.cut_pair(1, 2);
    let before = c.raft(1).log().committed();
    c.propose(1, "stale").expect("1 still thinks it leads");
    settle_ticks(&mut c, 40);
    assert!(c.raft(3).is_recovering());
    assert_eq!(c.raft(1).log().committed(), before, "the stale leader committed nothing with 3");
    c.check_safety();
}

#[test]
fn a_recovering_replica_never_campaigns_even_when_asked() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    c.wipe(2);
    c.crash(1);
    c.raft_mut(2).campaign();
    c.deliver(msg(1, 2, Body::TimeoutNow(phalanx_proto::TimeoutNow { term: c.raft(2).term() })));
    settle_ticks(&mut c, 40);
    assert!(!c.raft(2).is_leader());
    assert_eq!(c.raft(2).stats().elections_started, 0);
    assert!(c.raft(2).is_recovering());
    // Proposals go nowhere meanwhile, with the usual status.
    assert_eq!(c.propose(2, "x").err(), Some(Status::NodeIsNotLeader));
}

#[test]
fn recovery_is_persisted_and_ends_with_a_durable_hard_state() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    c.wipe(3);
    // A crash while recovering: the flag is on disk, so it recovers again.
    c.crash(3);
    c.restart(3);
    assert!(c.raft(3).is_recovering());
    c.propose(1, "x").expect("leader takes it");
    settle_ticks(&mut c, 30);
    assert!(!c.raft(3).is_recovering());
    assert!(!c.node(3).store.hard_state.recovering, "the end of recovery is durable");
    assert_eq!(c.node(3).store.hard_state.vote, 1, "the leader's term's vote is recorded");
}

/// Leadership is never handed to a recovering replica: it would ignore the TimeoutNow and
/// the transfer would hold proposals back until it timed out (leader balancing retries every
/// couple of seconds).
#[test]
fn leadership_is_not_transferred_to_a_recovering_replica() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.stabilize();
    c.wipe(3);
    // Node 2 is cut off: 3 cannot learn its floor, so it stays recovering while caught up.
    c.cut_pair(2, 3);
    c.propose(1, "x").expect("leader takes it");
    settle_ticks(&mut c, 30);
    assert!(c.raft(3).is_recovering());
    // Without its floor it acknowledges nothing, so it is not caught up either.
    assert!(c.raft(3).log().last_index() < c.raft(1).log().last_index());
    assert_eq!(c.raft_mut(1).transfer_leadership(3), Err(Status::Busy));
    assert!(c.propose(1, "still").is_ok(), "proposals are not held back");
    c.heal();
    settle_ticks(&mut c, 40);
    assert!(!c.raft(3).is_recovering());
    assert_eq!(c.raft_mut(1).transfer_leadership(3), Ok(()));
}

/// Found by the simulator (seed 892 with the `lost-state-ignored` mutant): a follower whose
/// entry at its match index differs from the leader's (it lost state it did not report)
/// rejects the probe there. The leader's probe could not go below the match point, so every
/// rejection — and every duplicate the network made of one — sent the same append again: a
/// storm that grew with each round trip until the simulator ran out of memory. Now such a
/// rejection starts the follower over, and its duplicates are stale.
#[test]
fn duplicated_rejections_at_the_match_point_do_not_multiply_appends() {
    use phalanx_proto::AppendEntriesResponse;
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    for i in 0..8 {
        c.propose(1, &format!("v{i}")).expect("leader takes it");
    }
    c.stabilize();
    let last = c.raft(1).log().last_index();
    let term = c.raft(1).term();
    assert_eq!(c.raft(1).progress(3).map(|p| p.matched), Some(last));
    // One more entry, whose append 3 rejects as if its log ended at the match point: the
    // leader probes 3 from there.
    c.propose(1, "more").expect("leader takes it");
    c.process(1);
    c.clear_net();
    let past = AppendEntriesResponse {
        term,
        success: false,
        match_index: last + 1,
        conflict_term: 0,
        conflict_index: last + 1,
        last_log_index: last,
        ..Default::default()
    };
    c.deliver(msg(3, 1, Body::AppendResponse(past)));
    c.process(1);
    c.clear_net();
    assert_eq!(c.raft(1).progress(3).map(|p| p.state), Some(phalanx::raft::ProgressState::Probe));
    // Now 3 says its entry at the match point is of another term.
    let reject = AppendEntriesResponse {
        term,
        success: false,
        match_index: last,
        conflict_term: 1,
        conflict_index: 1,
        last_log_index: last,
        ..Default::default()
    };
    let mut appends = 0;
    for _ in 0..5 {
        c.deliver(msg(3, 1, Body::AppendResponse(reject)));
        if let Some(rd) = c.process(1) {
            appends += all_msgs(&rd).iter().filter(|m| m.to == 3 && kind(m) == "Append").count();
        }
    }
    assert!(appends <= 2, "{appends} appends for five copies of one rejection");
    assert!(c.raft(1).stats().followers_restarted >= 1, "the leader did not start the follower over");
}
