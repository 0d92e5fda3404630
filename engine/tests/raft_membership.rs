//! Conformance: learners and single-server membership changes (Raft thesis §4.1–§4.2,
//! Raft paper §6).

mod common;

use common::*;
use phalanx::raft::{Membership, Role, Status};
use phalanx_proto::raft_message::Body;
use phalanx_proto::{ConfChangeType, EntryKind, LogEntry, Message, VoteRequest};

fn learners(voters: &[u64], learners: &[u64]) -> Membership {
    Membership { voters: voters.iter().copied().collect(), learners: learners.iter().copied().collect() }
}

fn cc_entry(index: u64, term: u64, change: ConfChangeType, node: u64) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: EntryKind::ConfChange as i32,
        payload: conf_change(change, node).encode_to_vec().into(),
        ..Default::default()
    }
}

/// Thesis §4.2.1 (non-voting members): a learner never campaigns — however long it goes
/// without hearing from a leader — and candidates do not ask it for votes.
#[test]
fn learner_never_campaigns_and_is_never_asked_to_vote() {
    let mut c = Cluster::with_membership(learners(&[1, 2, 3], &[4]), &[], defaults);
    assert!(!c.raft(4).promotable());
    c.isolate(1);
    c.isolate(2);
    c.isolate(3);
    c.ticks(300);
    assert_eq!(c.raft(4).role(), Role::Follower);
    assert_eq!(c.raft(4).stats().elections_started, 0);
    assert_eq!(c.raft(4).term(), 0);
    c.heal();
    for _ in 0..100 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    assert!(c.leader().is_some());
    assert!(c.trace.iter().all(|m| !(m.to == 4 && matches!(kind(m), "Vote" | "PreVote"))));
}

/// Thesis §4.2.1: learners receive the log and apply it like any follower.
#[test]
fn learner_receives_and_applies_the_log() {
    let mut c = Cluster::with_membership(learners(&[1, 2, 3], &[4]), &[], defaults);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("v{i}")).unwrap();
    }
    c.stabilize();
    c.ticks(2);
    c.assert_logs_match(1);
    assert_eq!(c.node(4).applied_strings(), c.node(1).applied_strings());
    assert_eq!(c.raft(4).leader(), Some(1));
}

/// Thesis §4.2.1: learners are not counted in majorities — neither for commitment nor for
/// CheckQuorum. With voters {1, 2} and learner 3, an entry on the leader and the learner
/// only is not committed, and a leader hearing only from the learner steps down.
#[test]
fn learner_not_counted_toward_commit_or_check_quorum() {
    let mut c = Cluster::with_membership(learners(&[1, 2], &[3]), &[], defaults);
    c.elect(1);
    let committed = c.raft(1).log().committed();
    c.cut_pair(1, 2);
    let p = c.propose(1, "x").unwrap();
    c.stabilize();
    assert_eq!(c.raft(3).log().last_index(), p.last_index, "the learner has it");
    assert_eq!(c.raft(1).log().committed(), committed, "leader + learner is no majority of {{1, 2}}");
    c.ticks(2 * config(1).election_ticks_min);
    assert!(!c.raft(1).is_leader(), "CheckQuorum: the learner's answers do not keep the leader");
}

/// Thesis §4.1 with the fix of the single-server bug (raft-dev, 2015): a leader may not
/// propose a configuration change until it has committed an entry of its own term —
/// `ActiveProposal` until then.
#[test]
fn conf_change_refused_until_leader_commits_in_its_term() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    assert!(c.campaign_settle(1, 1));
    assert_eq!(c.raft(1).log().committed(), 0);
    let err = c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 4)).unwrap_err();
    assert_eq!(err, Status::ActiveProposal);
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), 1);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 4)).unwrap();
}

/// Thesis §4.1: "a leader ... does not start a new configuration change until the previous
/// one has committed" — one change in flight at a time.
#[test]
fn conf_change_only_one_in_flight() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_pair(1, 2);
    c.cut_pair(1, 3);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 4)).unwrap();
    let err = c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 5)).unwrap_err();
    assert_eq!(err, Status::ActiveProposal);
    c.heal();
    c.ticks(2);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 5)).unwrap();
    c.stabilize();
    assert_eq!(c.raft(1).membership().learners, [4, 5].into());
}

/// A change that would leave the group with no voter is refused with
/// `InsufficientVoters` (removal or demotion of the last voter); a change that changes
/// nothing is `InvalidRequest`.
#[test]
fn conf_change_refuses_zero_voters_and_no_ops() {
    let mut c = Cluster::with_membership(learners(&[1], &[2]), &[], plain);
    c.elect(1);
    let r = c.raft_mut(1);
    assert_eq!(
        r.propose_conf_change(conf_change(ConfChangeType::Remove, 1)),
        Err(Status::InsufficientVoters)
    );
    assert_eq!(
        r.propose_conf_change(conf_change(ConfChangeType::AddLearner, 1)),
        Err(Status::InsufficientVoters)
    );
    assert_eq!(r.propose_conf_change(conf_change(ConfChangeType::AddVoter, 1)), Err(Status::InvalidRequest));
    assert_eq!(
        r.propose_conf_change(conf_change(ConfChangeType::AddLearner, 2)),
        Err(Status::InvalidRequest)
    );
    assert_eq!(r.propose_conf_change(conf_change(ConfChangeType::Remove, 9)), Err(Status::InvalidRequest));
    assert_eq!(r.propose_conf_change(conf_change(ConfChangeType::AddVoter, 0)), Err(Status::InvalidRequest));
    assert_eq!(r.membership(), &learners(&[1], &[2]));
    let last = r.log().last_index();
    assert_eq!(r.propose_conf_change(conf_change(ConfChangeType::AddVoter, 2)).unwrap().last_index, last + 1);
}

/// Thesis §4.1: "a server always uses the latest configuration in its log, regardless of
/// whether the entry is committed". The leader counts the new configuration at once: adding
/// voter 4 to {1, 2, 3}, the entry on {1, 2} is 2 of 4 — not committed, although 2 of the old
/// 3 would have been. Followers switch as soon as they append the entry.
#[test]
fn conf_change_takes_effect_on_append() {
    let mut c = Cluster::with_membership(Membership::with_voters([1, 2, 3]), &[4], plain);
    c.elect(1);
    c.cut_pair(1, 3);
    c.cut_pair(1, 4);
    let p = c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddVoter, 4)).unwrap();
    assert_eq!(c.raft(1).membership().voters, [1, 2, 3, 4].into(), "leader: in force on append");
    c.stabilize();
    assert_eq!(c.raft(2).log().last_index(), p.last_index);
    assert_eq!(c.raft(2).membership().voters, [1, 2, 3, 4].into(), "follower: in force on append");
    assert_eq!(c.raft(3).membership().voters, [1, 2, 3].into());
    assert!(c.raft(1).log().committed() < p.last_index, "2 of 4 voters is no majority");
    c.heal();
    c.cut_pair(1, 4);
    c.ticks(2);
    assert_eq!(c.raft(1).log().committed(), p.last_index, "3 of 4");
    c.heal();
    c.ticks(2);
    c.assert_logs_match(1);
    assert!(c.raft(4).promotable());
}

/// Thesis §4.1: "if the entry is overwritten ... the server falls back to the previous
/// configuration". A follower that appended an uncommitted change and then has it truncated
/// by a new leader's log reverts.
#[test]
fn truncated_conf_change_reverts() {
    let mut r = solo_with_log(2, &[1, 2, 3], 1, log_of_terms(&[1]), 1, plain);
    r.step(msg(1, 2, append(1, (1, 1), vec![cc_entry(2, 1, ConfChangeType::AddVoter, 4)], 1))).unwrap();
    assert_eq!(r.membership().voters, [1, 2, 3, 4].into());
    let _ = flush(&mut r);
    r.step(msg(3, 2, append(2, (1, 1), vec![entry(2, 2)], 1))).unwrap();
    assert_eq!(terms(&r), vec![1, 2]);
    assert_eq!(r.membership().voters, [1, 2, 3].into(), "fell back to the previous configuration");
    // A truncated removal reverts too.
    let mut r = solo_with_log(2, &[1, 2, 3], 1, log_of_terms(&[1]), 1, plain);
    r.step(msg(1, 2, append(1, (1, 1), vec![cc_entry(2, 1, ConfChangeType::Remove, 2)], 1))).unwrap();
    assert!(!r.membership().voters.contains(&2));
    r.step(msg(3, 2, append(2, (1, 1), vec![entry(2, 2)], 1))).unwrap();
    assert!(r.membership().voters.contains(&2));
    assert!(r.promotable());
}

/// Thesis §4.2.2: a leader that removes itself "steps down once the Cnew entry is
/// committed"; until then it manages the cluster without counting itself in majorities.
#[test]
fn removed_leader_steps_down_after_commit() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_pair(1, 3);
    let p = c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::Remove, 1)).unwrap();
    c.stabilize();
    assert!(c.raft(1).is_leader(), "still leading while the removal is uncommitted");
    assert!(
        c.raft(1).log().committed() < p.last_index,
        "{{2}} alone is no majority of {{2, 3}}: 1 does not count"
    );
    c.heal();
    c.ticks(2);
    assert!(!c.raft(1).is_leader(), "steps down once its removal commits");
    assert!(!c.raft(1).promotable());
    for _ in 0..100 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().unwrap();
    assert!([2, 3].contains(&l));
    assert_eq!(c.raft(l).membership().voters, [2, 3].into());
    c.propose(l, "after").unwrap();
    c.stabilize();
    assert_eq!(c.node(2).applied_strings(), vec!["after"]);
}

/// Thesis §4.2.1 and §4.1: a new server joins as a learner, catches up, is promoted and
/// then votes and counts; a removed server, which the leader stops replicating to, cannot
/// disrupt the cluster (PreVote + lease, §4.2.3).
#[test]
fn learner_promotion_and_removed_server_does_not_disrupt() {
    let mut c = Cluster::with_membership(Membership::with_voters([1, 2, 3]), &[4], defaults);
    c.elect(1);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 4)).unwrap();
    c.stabilize();
    c.ticks(2);
    c.assert_logs_match(1);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddVoter, 4)).unwrap();
    c.stabilize();
    c.ticks(2);
    assert_eq!(c.raft(4).membership().voters, [1, 2, 3, 4].into());
    // Remove 3: it never learns (the leader stops replicating to it) and keeps timing out.
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::Remove, 3)).unwrap();
    c.stabilize();
    c.ticks(2);
    assert_eq!(c.raft(1).membership().voters, [1, 2, 4].into());
    let term = c.raft(1).term();
    c.ticks(300);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.raft(1).term(), term, "the removed server did not disrupt");
    // With 3 gone, {1, 2, 4} commit; node 4 now counts: cut 2 and it still commits.
    c.crash(3);
    c.cut_pair(1, 2);
    let p = c.propose(1, "x").unwrap();
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), p.last_index);
}

/// Thesis §4.2.2 applied to a demotion: a leader that makes itself a learner keeps leading
/// (without counting itself) until the change commits, then steps down, never campaigns
/// again, and keeps receiving the log as a learner.
#[test]
fn leader_demoting_itself_steps_down_and_stays_a_learner() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 1)).unwrap();
    assert!(c.raft(1).is_leader());
    c.stabilize();
    c.ticks(2);
    assert!(!c.raft(1).is_leader());
    assert_eq!(c.raft(1).membership(), &learners(&[2, 3], &[1]));
    for _ in 0..200 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().unwrap();
    assert_ne!(l, 1);
    c.propose(l, "x").unwrap();
    c.stabilize();
    c.ticks(4);
    assert_eq!(c.node(1).applied_strings(), vec!["x"], "the demoted node still learns the log");
    c.ticks(200);
    assert_eq!(c.raft(1).stats().elections_started, 1, "only its original election");
}

/// etcd's strict reconfiguration check, as the roster's changes use it: a follower counts as
/// active only once it answered an append of this leader. A new leader counts everyone as
/// heard at its election (CheckQuorum's grace), which says nothing of a voter that is silent
/// or recovering a lost disk: shrinking a group onto one would strand it (simulator seed
/// 2377).
#[test]
fn a_new_leader_counts_only_followers_that_answered_as_active() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    // Node 3 hears the election but never answers an append of the new leader.
    assert!(c.campaign_settle(1, 1));
    c.cut_pair(1, 3);
    c.stabilize();
    assert!(c.raft(1).is_leader());
    assert!(c.raft(1).is_active(2), "node 2 answered");
    assert!(!c.raft(1).is_active(3), "node 3 never answered this leader");
    let two_three: std::collections::BTreeSet<u64> = [2, 3].into_iter().collect();
    assert!(!c.raft(1).quorum_active_in(&two_three), "{{2, 3}} has one active member");
    let one_two: std::collections::BTreeSet<u64> = [1, 2].into_iter().collect();
    assert!(c.raft(1).quorum_active_in(&one_two));
    c.heal();
    c.ticks(config(1).heartbeat_ticks * 2);
    c.stabilize();
    assert!(c.raft(1).is_active(3), "node 3 answered once healed");
}

/// §5.1 (Figure 2, RequestVote: "reply false if term < currentTerm"), for a voter of the
/// group: a candidate in an older term learns the receiver's term from the refusal. Voters
/// {1, 2}: the leader appended 2's promotion but 2 never got it, so 2 is a learner in its own
/// view and never campaigns; a removed member keeps campaigning, one term per election
/// timeout, and raises 2's term. Ignored, node 1's campaigns, which count up from the lost
/// leadership's term no faster, were all stale at node 2, and the group never elected again
/// (simulator seed 28262). A server outside the configuration is still ignored: knowing our
/// term would only let it disrupt us sooner.
#[test]
fn a_voter_campaigning_in_an_older_term_learns_ours() {
    let mut c = Cluster::with_membership(learners(&[1], &[2]), &[], plain);
    c.elect(1);
    c.stabilize();
    c.cut_pair(1, 2);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddVoter, 2)).unwrap();
    c.stabilize();
    assert_eq!(c.raft(1).membership().voters.len(), 2, "node 1 counts on node 2 now");
    assert!(c.raft(2).membership().learners.contains(&2), "node 2 does not know");
    // A removed member (3) campaigns in a higher term: node 2 follows no leader it still
    // hears, so it moves to that term.
    let mut outsider = c.raft(1).term() + 20;
    let campaign = |term: u64| {
        let req = VoteRequest {
            term,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leader_transfer: false,
        };
        msg(3, 2, Body::VoteRequest(req))
    };
    c.deliver(campaign(outsider));
    c.process(2);
    assert_eq!(c.raft(2).term(), outsider);
    c.clear_net();
    // A stale request of the outsider's gets no answer.
    c.deliver(campaign(outsider - 1));
    c.process(2);
    assert!(c.take_msgs(|m| m.from == 2).is_empty(), "an outsider learns nothing");

    // Node 1 lost its leadership (a restart): it campaigns, learns node 2's term from a
    // refusal, and wins in it or the next, while the outsider goes on campaigning.
    c.heal();
    c.raft_mut(1).step_down().unwrap();
    let min = config(1).election_ticks_min;
    let mut ticks = 0;
    while !c.raft(1).is_leader() {
        ticks += 1;
        assert!(ticks <= 20 * config(1).election_ticks_max, "node 1 never won: {:?}", c.raft(1).soft_state());
        if ticks % min == 0 {
            outsider += 1;
            c.deliver(campaign(outsider));
        }
        c.tick_all();
    }
    assert!(c.raft(1).term() + 1 >= outsider, "elected in node 2's term (or the next)");
    c.stabilize();
    assert!(c.raft(2).membership().voters.contains(&2), "and node 2 learned its promotion");
}
