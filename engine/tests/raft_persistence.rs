//! Conformance: persistence ordering and `Ready` numbering. Raft paper §5 / Figure 2
//! ("Persistent state on all servers: updated on stable storage before responding to RPCs"),
//! and the core's contract: messages that depend on durable state leave only in
//! `persisted_messages`; acknowledging Ready *n* acknowledges every Ready before it.

mod common;

use common::*;
use phalanx::raft::Role;

/// Figure 2: `votedFor` is persisted before responding. A vote grant travels only in
/// `persisted_messages`, in the same Ready whose hard state records the vote; a refusal
/// depends on nothing durable and may leave at once.
#[test]
fn vote_grant_leaves_only_after_persistence() {
    let mut r = solo(2, &[1, 2, 3], plain);
    r.step(msg(1, 2, vote_req(1, 0, 0, false))).unwrap();
    let rd = r.ready().unwrap();
    assert!(vote_answers(&rd.messages).is_empty(), "grant must not be in the immediate messages");
    assert_eq!(vote_answers(&rd.persisted_messages), vec![(1, true, false, 1)]);
    let hs = rd.hard_state.expect("the vote is persisted with the grant");
    assert_eq!((hs.term, hs.vote), (1, 1));
    r.advance(rd.number);

    r.step(msg(3, 2, vote_req(1, 0, 0, false))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(vote_answers(&rd.messages), vec![(3, false, false, 1)]);
    assert!(rd.persisted_messages.is_empty());
}

/// Figure 2 / §5.3: a follower acknowledges entries only once they are durable: the
/// AppendEntries success travels in `persisted_messages` of the Ready that carries the
/// entries to persist. A rejection may leave at once.
#[test]
fn append_ack_leaves_only_after_persistence() {
    let mut r = solo(2, &[1, 2, 3], plain);
    r.step(msg(1, 2, append(1, (0, 0), vec![entry(1, 1), entry(2, 1)], 0))).unwrap();
    let rd = r.ready().unwrap();
    assert!(rd.messages.iter().all(|m| kind(m) != "AppendResp"));
    assert_eq!(rd.persisted_messages.iter().map(kind).collect::<Vec<_>>(), vec!["AppendResp"]);
    assert_eq!(rd.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
    r.advance(rd.number);

    r.step(msg(1, 2, append(1, (5, 1), vec![entry(6, 1)], 0))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(
        rd.messages.iter().map(kind).collect::<Vec<_>>(),
        vec!["AppendResp"],
        "rejection is immediate"
    );
    assert!(rd.persisted_messages.is_empty());
}

/// §5.2 with Figure 2's persistence rule applied to the candidate itself: its own vote counts
/// only once its new term and vote are durable (`advance`). Counting it earlier could elect
/// it, crash, and let it vote again in the same term after restart.
#[test]
fn candidate_counts_own_vote_only_after_advance() {
    let mut r = solo(1, &[1, 2, 3], plain);
    r.campaign();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, 1)));
    r.step(msg(2, 1, vote_resp(1, true, false))).unwrap();
    assert_eq!(r.role(), Role::Candidate, "one durable grant of three, own vote not yet durable");
    r.advance(rd.number);
    assert_eq!(r.role(), Role::Leader);

    // A single-node group elects itself only after persisting its vote.
    let mut r = solo(1, &[1], plain);
    r.campaign();
    assert_eq!(r.role(), Role::Candidate);
    let rd = r.ready().unwrap();
    assert_eq!(r.role(), Role::Candidate);
    r.advance(rd.number);
    assert_eq!(r.role(), Role::Leader);
}

/// A candidate that crashes before persisting its vote restarts in its old term with no
/// vote: nothing it said depended on state that was lost.
#[test]
fn crash_before_persist_loses_only_unacknowledged_state() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.raft_mut(1).campaign();
    // The Ready is taken but never persisted: crash.
    let _ = c.nodes.get_mut(&1).unwrap().raft.ready().unwrap();
    c.crash(1);
    c.restart(1);
    assert_eq!((c.raft(1).term(), c.raft(1).vote()), (0, 0));
    c.elect(1);
    assert_eq!(c.raft(1).term(), 1);
}

/// The Ready contract: numbers increase by one, and `advance(n)` acknowledges every Ready up
/// to `n` — a shell may pipeline Readies and acknowledge the last one only.
#[test]
fn ready_numbering_advance_acknowledges_all_before() {
    let mut c = Cluster::new(&[1], plain);
    c.elect(1);
    let r = c.raft_mut(1);
    let base = r.log().last_index();
    r.propose(proposal("a")).unwrap();
    let rd1 = r.ready().unwrap();
    r.propose(proposal("b")).unwrap();
    let rd2 = r.ready().unwrap();
    r.propose(proposal("c")).unwrap();
    let rd3 = r.ready().unwrap();
    assert_eq!(rd2.number, rd1.number + 1);
    assert_eq!(rd3.number, rd2.number + 1);
    assert_eq!(r.log().persisted(), base);
    r.advance(rd2.number);
    assert_eq!(r.log().persisted(), base + 2, "Readies 1 and 2 acknowledged together");
    assert_eq!(r.log().committed(), base + 2, "single voter: commits what it persisted");
    r.advance(rd1.number); // stale acknowledgement: no effect
    assert_eq!(r.log().persisted(), base + 2);
    r.advance(rd3.number);
    assert_eq!(r.log().persisted(), base + 3);
    assert_eq!(r.log().committed(), base + 3);
    let rd4 = r.ready().unwrap();
    assert_eq!(rd4.committed_entries.len(), 3);
    assert_eq!(rd4.deliveries.iter().map(|e| e.payload.as_ref()).collect::<Vec<_>>(), vec![b"a", b"b", b"c"]);
}

/// DESIGN "the leader may send before its own fsync completes": the leader's appends for
/// new entries are immediate messages of the very Ready that asks to persist them.
#[test]
fn leader_sends_appends_before_its_own_persistence() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    let p = c.propose(1, "x").unwrap();
    let rd = c.nodes.get_mut(&1).unwrap().raft.ready().unwrap();
    assert_eq!(rd.entries.last().unwrap().index, p.last_index);
    let appends = rd.messages.iter().filter(|m| kind(m) == "Append").count();
    assert_eq!(appends, 2, "one append per follower, sent at once");
}

/// The hard state's commit index never points past the durable log: a node restarted from
/// its store at any point of a run recovers (RaftGroup::new refuses inconsistent state) and
/// keeps its committed entries.
#[test]
fn restart_from_store_at_any_point_is_consistent() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    for i in 0..60u64 {
        if let Some(leader) = c.leader() {
            let _ = c.propose(leader, &format!("v{i}"));
        }
        // One processing round, then crash and restart a rotating node.
        c.process_all();
        c.deliver_queued();
        let victim = 1 + i % 3;
        let committed_before = c.node(victim).store.hard_state.commit;
        c.crash(victim);
        c.restart(victim);
        assert!(c.raft(victim).log().committed() >= committed_before);
        c.ticks(5);
    }
    for _ in 0..200 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    c.ticks(10);
    c.check_safety();
    for id in c.ids() {
        eprintln!(
            "node {id}: {:?} log {:?} commit {} now {}",
            c.raft(id).soft_state(),
            terms(c.raft(id)),
            c.raft(id).log().committed(),
            c.raft(id).now()
        );
    }
    let l = c.leader().unwrap();
    c.assert_logs_match(l);
    let applied = c.node(l).applied_strings();
    assert!(applied.len() >= 10, "progress despite the crashes: {applied:?}");
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings(), applied, "node {id} state machine");
    }
}

/// Limits on everything (DESIGN): a Ready hands at most `max_apply_entries_per_ready`
/// committed entries to the state machine; the rest follow in the next Readies, in order.
#[test]
fn apply_is_bounded_per_ready_and_continues_in_order() {
    let mut c = Cluster::new(&[1], |cfg| cfg.max_apply_entries_per_ready = 2);
    c.elect(1);
    for i in 0..7 {
        c.propose(1, &format!("v{i}")).unwrap();
    }
    c.stabilize();
    let want: Vec<String> = (0..7).map(|i| format!("v{i}")).collect();
    assert_eq!(c.node(1).applied_strings(), want);
    assert!(c.node(1).readies.iter().all(|r| r.committed_entries.len() <= 2));
}

/// A Ready reports the soft state (role, leader, term) exactly when it changed.
#[test]
fn soft_state_reported_on_change_only() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    let changes: Vec<_> = c.node(2).readies.iter().filter_map(|r| r.soft_state).collect();
    assert_eq!(changes.last().map(|s| (s.role, s.leader, s.term)), Some((Role::Follower, Some(1), 1)));
    let n = changes.len();
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.ticks(4);
    let again = c.node(2).readies.iter().filter(|r| r.soft_state.is_some()).count();
    assert_eq!(again, n, "no soft state without a change");
}

/// A restart from inconsistent storage is refused with an error naming the problem (never
/// a panic later): entries not contiguous, commit past the log, a compacted log without a
/// snapshot; and so is an invalid configuration.
#[test]
fn inconsistent_restore_state_and_bad_config_refused() {
    use phalanx::raft::{Membership, RaftGroup, RestoreState};
    use phalanx_proto::HardState;
    let m = Membership::with_voters([1, 2, 3]);
    let base = || RestoreState { initial_membership: m.clone(), ..Default::default() };
    let cases: Vec<(&str, RestoreState)> = vec![
        ("gap", RestoreState { entries: vec![entry(1, 1), entry(3, 1)], ..base() }),
        ("not from floor + 1", RestoreState { entries: vec![entry(2, 1)], ..base() }),
        (
            "commit past the log",
            RestoreState {
                hard_state: HardState { term: 1, vote: 0, commit: 5, recovering: false },
                entries: log_of_terms(&[1]),
                ..base()
            },
        ),
        ("floor without snapshot", RestoreState { floor: (3, 1), entries: vec![entry(4, 1)], ..base() }),
    ];
    for (what, restore) in cases {
        let err = RaftGroup::new(config(1), restore).expect_err(what);
        assert!(!err.is_empty(), "{what}");
    }
    type Tweak = fn(&mut phalanx::raft::Config);
    let bad_configs: Vec<(&str, Tweak)> = vec![
        ("id 0", |c| c.id = 0),
        ("heartbeat 0", |c| c.heartbeat_ticks = 0),
        ("election <= heartbeat", |c| c.election_ticks_min = c.heartbeat_ticks),
        ("empty timeout range", |c| c.election_ticks_max = c.election_ticks_min),
        ("window 0", |c| c.max_inflight_appends = 0),
    ];
    for (what, tweak) in bad_configs {
        let mut cfg = config(1);
        tweak(&mut cfg);
        assert!(RaftGroup::new(cfg, base()).is_err(), "{what}");
    }
}

/// Figure 2 keeps `commitIndex` volatile: a Ready whose only hard-state change is the commit
/// index persists no hard state; the change rides with the group's next Ready that writes
/// entries. Term and vote are persisted in the Ready that changes them, with the newest
/// commit index. What no Ready carried yet is `unsaved_hard_state` (a clean stop writes it).
#[test]
fn commit_only_change_waits_for_the_next_write() {
    let mut r = solo(2, &[1, 2, 3], plain);
    r.step(msg(1, 2, append(1, (0, 0), vec![entry(1, 1), entry(2, 1)], 0))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote, h.commit)), Some((1, 0, 0)), "a new term is written");
    r.advance(rd.number);

    // The leader's commit notice: entries to apply, but no hard state to write.
    r.step(msg(1, 2, append(1, (2, 1), vec![], 2))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.committed_entries.len(), 2);
    assert!(rd.hard_state.is_none(), "a commit-only change is not written on its own");
    assert_eq!(r.unsaved_hard_state().map(|h| h.commit), Some(2));
    r.advance(rd.number);
    assert!(r.ready().is_none(), "a held-back commit alone is no reason for a Ready");

    // The next entries carry it.
    r.step(msg(1, 2, append(1, (2, 1), vec![entry(3, 1)], 2))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.commit)), Some((1, 2)));
    assert_eq!(r.unsaved_hard_state(), None);
    r.advance(rd.number);

    // Commit moves alone again, then a vote in a new term: written at once, with it.
    r.step(msg(1, 2, append(1, (3, 1), vec![], 3))).unwrap();
    let rd = r.ready().unwrap();
    assert!(rd.hard_state.is_none());
    r.advance(rd.number);
    r.step(msg(3, 2, vote_req(2, 3, 1, false))).unwrap();
    let rd = r.ready().unwrap();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote, h.commit)), Some((2, 3, 3)));
    assert_eq!(r.unsaved_hard_state(), None);
}
