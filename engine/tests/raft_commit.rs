//! Conformance: the commit rules (Raft paper §5.3, §5.4.2, §8) and the Figure 8 scenario.

mod common;

use common::*;
use phalanx::raft::{Membership, RestoreState};
use phalanx_proto::{EntryKind, HardState};

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it
/// on a majority of the servers" — and not before: with two of five nodes it stays
/// uncommitted, with three it commits, and followers learn the commit index from the leader.
#[test]
fn commit_needs_a_majority_of_replicas() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], plain);
    c.elect(1);
    let noop = c.raft(1).log().last_index();
    assert_eq!(c.raft(1).log().committed(), noop);
    c.cut_pair(1, 3);
    c.cut_pair(1, 4);
    c.cut_pair(1, 5);
    let p = c.propose(1, "x").unwrap();
    c.stabilize();
    assert_eq!(c.raft(2).log().last_index(), p.last_index);
    assert_eq!(c.raft(1).log().committed(), noop, "2 of 5 is no majority");
    c.heal();
    c.cut_pair(1, 4);
    c.cut_pair(1, 5);
    c.ticks(config(1).heartbeat_ticks); // retried via heartbeats: now on {1, 2, 3}
    assert_eq!(c.raft(1).log().committed(), p.last_index, "3 of 5 is a majority");
    assert_eq!(c.raft(2).log().committed(), p.last_index, "followers learn commit from the leader");
    assert_eq!(c.node(1).applied_strings(), vec!["x"]);
}

/// §8 / §5.4.2: "a leader must have the latest information on which entries are committed
/// ... Raft handles this by having each leader commit a blank no-op entry into the log at the
/// start of its term." The new leader's first entry is a no-op of its term, appended at
/// election, before any proposal.
#[test]
fn new_leader_appends_noop_of_its_term_at_once() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.raft_mut(1).campaign();
    // Let the votes in, but watch the Ready that follows the win.
    for _ in 0..10 {
        c.process_all();
        c.deliver_queued();
        if c.raft(1).is_leader() {
            break;
        }
    }
    assert!(c.raft(1).is_leader());
    let last = c.raft(1).log().entries().last().unwrap().clone();
    assert_eq!((last.index, last.term, last.kind), (1, 1, EntryKind::Noop as i32));
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), 1);
    assert!(c.node(1).deliveries.is_empty(), "no-ops are not delivered to the state machine");
    assert_eq!(c.node(1).committed.get(&1).map(|c| c.1), Some(EntryKind::Noop as i32));
}

/// §5.4.2: "Raft never commits log entries from previous terms by counting replicas. Only
/// log entries from the leader's current term are committed by counting replicas; once an
/// entry from the current term has been committed ... all prior entries are committed
/// indirectly." A leader whose previous-term entry is on a majority does not commit it until
/// its own no-op is on a majority too.
#[test]
fn only_current_term_entries_commit_by_counting_replicas() {
    // Node 1 (log 1:1, 2:2) and node 2 (same) hold entry 2 of term 2; node 3 has only 1:1.
    let mut c = Cluster::empty();
    c.add_with_log(1, &[1, 2, 3], 2, log_of_terms(&[1, 2]), |cfg| {
        plain(cfg);
        cfg.max_entries_per_append = 1;
    });
    c.add_with_log(2, &[1, 2, 3], 2, log_of_terms(&[1, 2]), plain);
    c.add_with_log(3, &[1, 2, 3], 2, log_of_terms(&[1]), plain);
    assert!(c.campaign_settle(1, 1));
    // The win and the no-op (3:3) happen, but no append reaches anyone yet.
    c.cut_pair(1, 2);
    c.cut_pair(1, 3);
    c.stabilize();
    c.heal();
    assert!(c.raft(1).is_leader());
    assert_eq!(c.raft(1).term(), 3);
    // Entry 2 (term 2) is on nodes 1 and 2, a majority — and must not be committed by that.
    assert_eq!(c.raft(1).log().committed(), 0);
    // Replicate one entry per append to node 3 and deliver only the one carrying index 2.
    c.tick_node(1, config(1).heartbeat_ticks);
    let mut rounds = 0;
    while c.raft(3).log().last_index() < 2 {
        c.process(1);
        let msgs = c.take_msgs(|_| true);
        for m in msgs {
            if m.to == 3 && !c.would_store(&m, 3) {
                c.deliver(m);
            }
        }
        c.process(3);
        c.deliver_queued();
        rounds += 1;
        assert!(rounds < 20);
    }
    c.process(1);
    assert_eq!(terms(c.raft(3)), vec![1, 2]);
    assert_eq!(c.raft(1).progress(3).unwrap().matched, 2);
    assert_eq!(c.raft(1).log().committed(), 0, "entry 2 (term 2) is on all three nodes yet not committed");
    // Once the no-op of term 3 is on a majority, everything up to it commits.
    c.stabilize();
    c.ticks(config(1).heartbeat_ticks);
    assert_eq!(c.raft(1).log().committed(), 3);
    assert_eq!(c.raft(3).log().committed(), 3);
}

/// Sequenced persistence (DESIGN "the leader ... counts itself in the quorum only after its
/// fsync"): with one follower acknowledging out of three nodes, the entry commits only when
/// the leader's own Ready holding it is acknowledged with `advance`.
#[test]
fn commit_counts_leader_only_after_its_own_persistence() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_pair(1, 3);
    let p = c.propose(1, "x").unwrap();
    // The leader's Ready: send the append, persist, but do not advance yet.
    let rd = c.take_ready(1).unwrap();
    assert_eq!(rd.entries.last().unwrap().index, p.last_index);
    c.net.extend(rd.messages.iter().cloned());
    c.deliver_queued();
    c.process(2);
    c.deliver_queued(); // node 2's durable ack reaches the leader
    assert_eq!(c.raft(1).progress(2).unwrap().matched, p.last_index);
    assert_eq!(c.raft(1).log().persisted(), p.last_index - 1);
    assert_eq!(c.raft(1).log().committed(), p.last_index - 1, "1 durable replica of 3 is no majority");
    c.raft_mut(1).advance(rd.number);
    assert_eq!(c.raft(1).log().committed(), p.last_index, "leader + node 2 is a majority");
}

/// Raft paper Figure 8, step by step, in both of its endings. It shows why a leader cannot
/// determine commitment using log entries from older terms (§5.4.2).
///
/// Node ids 1..5 are S1..S5; every node starts with entry 1:1 committed, as in the figure.
/// Our leaders append a no-op on election, so the entries a leader writes at the start of
/// its term are its no-op — exactly the single entries the figure draws. Appends carry one
/// entry each so the test can deliver some and drop others.
///
/// (a) S1 leads term 2 and replicates index 2 (2:2) to S2 only.
/// (b) S1 crashes; S5 is elected for term 3 by S3, S4, S5 and writes 2:3 (only on S5).
/// (c) S5 crashes; S1 restarts, is elected for term 4 by S1, S2, S3, and replicates 2:2 to
///     S3: it is stored on a majority, yet not committed.
fn figure8_until_c() -> Cluster {
    let voters = [1, 2, 3, 4, 5];
    let mut c = Cluster::empty();
    for id in voters {
        let mut cfg = config(id);
        plain(&mut cfg);
        cfg.max_entries_per_append = 1;
        let restore = RestoreState {
            hard_state: HardState { term: 1, vote: 0, commit: 1, recovering: false },
            entries: log_of_terms(&[1]),
            initial_membership: Membership::with_voters(voters),
            ..Default::default()
        };
        c.add_restored(cfg, restore);
    }
    // (a) Term 2: S1 leads, reaching only S2 with 2:2.
    assert!(c.campaign_settle(1, 1));
    assert_eq!(c.raft(1).term(), 2);
    c.isolate(1);
    c.cut.remove(&(1, 2));
    c.cut.remove(&(2, 1));
    c.stabilize();
    assert_eq!(terms(c.raft(1)), vec![1, 2]);
    assert_eq!(terms(c.raft(2)), vec![1, 2]);
    assert_eq!(terms(c.raft(3)), vec![1]);
    assert_eq!(c.raft(1).log().committed(), 1, "2:2 is on 2 of 5");

    // (b) S1 crashes. S5 wins term 3 with S3, S4; its 2:3 stays on S5 only.
    c.crash(1);
    c.heal();
    c.cut_pair(5, 2); // S2 would refuse anyway (S5's log is behind); keep it out of the picture
    assert!(c.campaign_settle(5, 1));
    assert_eq!(c.raft(5).term(), 3);
    c.process(5); // its no-op 2:3 is durable on S5; the appends are lost with the crash
    c.clear_net();
    assert_eq!(terms(c.raft(5)), vec![1, 3]);
    c.crash(5);
    c.heal();

    // (c) S1 restarts and wins term 4 with S2, S3 (S4 would grant too; keep it out). Its
    // term-3 attempt fails: S3 already voted for S5 in term 3.
    c.restart(1);
    assert_eq!(terms(c.raft(1)), vec![1, 2], "S1 recovered its durable log");
    c.cut_pair(1, 4);
    assert!(c.campaign_settle(1, 3));
    assert_eq!(c.raft(1).term(), 4);
    assert_eq!(terms(c.raft(1)), vec![1, 2, 4], "S1 appended its no-op 3:4");
    // Deliver to S3 only, and only appends that do not carry index 3 (the term-4 entry).
    for _ in 0..20 {
        if c.raft(1).progress(3).expect("leader tracks S3").matched >= 2 {
            break;
        }
        c.tick_node(1, config(1).heartbeat_ticks);
        c.process_all();
        for m in c.take_msgs(|_| true) {
            if !c.would_store(&m, 3) && m.to != 2 && m.from != 2 {
                c.deliver(m);
            }
        }
    }
    assert_eq!(terms(c.raft(2)), vec![1, 2]);
    assert_eq!(terms(c.raft(3)), vec![1, 2]);
    assert_eq!(c.raft(1).progress(3).expect("leader tracks S3").matched, 2);
    // 2:2 is stored on S1, S2, S3 — a majority — but it is from an old term.
    assert_eq!(c.raft(1).log().committed(), 1, "Figure 8 (c): must not commit index 2");
    c.clear_net();
    c.check_safety();
    c
}

/// Figure 8 (d): S1 crashes before its term-4 entry reaches a majority; S5 (last term 3)
/// wins with S2, S3, S4 and overwrites index 2 everywhere. This is safe only because index
/// 2 was never committed (checked above): no node ever applied 2:2.
#[test]
fn figure8_d_uncommitted_old_term_entry_is_overwritten() {
    let mut c = figure8_until_c();
    c.crash(1);
    c.clear_net();
    c.cut.clear();
    c.restart(5);
    // S2 and S3 voted for S1 in term 4: S5 wins in term 5, with S2, S3, S4.
    assert!(c.campaign_settle(5, 3));
    assert_eq!(c.raft(5).term(), 5);
    c.stabilize();
    c.ticks(config(1).heartbeat_ticks);
    for id in [2, 3, 4, 5] {
        assert_eq!(&terms(c.raft(id))[..2], &[1, 3], "node {id}: index 2 now holds S5's term-3 entry");
    }
    assert_eq!(c.raft(5).log().committed(), 3, "2:3 committed indirectly with S5's no-op 3:5");
    for id in [2, 3, 4, 5] {
        assert_ne!(c.node(id).committed.get(&2).map(|c| c.0), Some(2), "2:2 must never be applied");
    }
    c.check_safety();
}

/// Figure 8 (e): S1 replicates its term-4 entry to a majority before crashing. Then index 2
/// (term 2) is committed indirectly, and S5 can no longer win: S2 and S3 hold a more
/// up-to-date log (§5.4.1), so the committed entries survive.
#[test]
fn figure8_e_entry_of_current_term_commits_prior_entries() {
    let mut c = figure8_until_c();
    c.heal();
    c.cut_pair(1, 4);
    c.stabilize();
    c.ticks(config(1).heartbeat_ticks);
    assert_eq!(terms(c.raft(3)), vec![1, 2, 4]);
    assert_eq!(c.raft(1).log().committed(), 3, "3:4 on S1, S2, S3 commits 2:2 with it");
    c.crash(1);
    c.clear_net();
    c.restart(5);
    c.heal();
    assert!(!c.campaign_settle(5, 3), "S5 (last term 3) cannot beat S2/S3 (last term 4)");
    for id in [2, 3] {
        assert_eq!(&terms(c.raft(id))[..3], &[1, 2, 4]);
    }
    // Someone with the committed entries leads eventually, and S5's 2:3 is overwritten.
    assert!(c.campaign_settle(2, 3));
    c.stabilize();
    c.ticks(config(1).heartbeat_ticks);
    c.assert_logs_match(2);
    assert_eq!(&terms(c.raft(5))[..3], &[1, 2, 4]);
    c.check_safety();
}

/// §5.3 receiver rule 5 on the leader's side: the commit index a leader tells a follower is
/// clamped to what that follower is known to hold, so a heartbeat never makes a follower
/// commit an entry of its own that differs from the leader's. Node 3 holds a stale,
/// uncommitted 2:1 while the leader's (committed) index 2 is its no-op 2:2.
#[test]
fn heartbeat_never_commits_a_followers_unverified_entries() {
    let mut c = Cluster::empty();
    c.add_with_log(1, &[1, 2, 3], 1, log_of_terms(&[1]), plain);
    c.add_with_log(2, &[1, 2, 3], 1, log_of_terms(&[1]), plain);
    c.add_with_log(3, &[1, 2, 3], 1, log_of_terms(&[1, 1]), plain);
    c.cut_pair(1, 3);
    c.elect(1);
    c.ticks(config(1).heartbeat_ticks);
    assert_eq!(terms(c.raft(1)), vec![1, 2]);
    assert_eq!(c.raft(1).log().committed(), 2);
    // Only heartbeats reach node 3; appends (which would fix its log) are dropped.
    c.heal();
    for _ in 0..3 * config(1).heartbeat_ticks {
        for id in c.ids() {
            c.tick_node(id, 1);
        }
        for _ in 0..10 {
            c.process_all();
            c.take_msgs(|m| m.to == 3 && kind(m) == "Append");
            c.deliver_queued();
        }
    }
    assert!(c.trace.iter().any(|m| m.to == 3 && kind(m) == "Heartbeat"));
    assert_eq!(terms(c.raft(3)), vec![1, 1]);
    assert!(c.raft(3).log().committed() <= 1, "node 3 committed its stale 2:1");
    c.stabilize();
    c.ticks(2 * config(1).heartbeat_ticks);
    assert_eq!(terms(c.raft(3)), vec![1, 2]);
    assert_eq!(c.raft(3).log().committed(), 2);
}

/// §5.3: "The leader keeps track of the highest index it knows to be committed, and it
/// includes that index in future AppendEntries RPCs (including heartbeats) so that the other
/// servers eventually find out." Every follower — including one whose acknowledgement
/// arrived after the entry was already committed — learns the commit index within one
/// heartbeat interval.
#[test]
fn followers_learn_commit_index_within_a_heartbeat() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], defaults);
    c.elect(1);
    let p = c.propose(1, "x").unwrap();
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), p.last_index);
    c.ticks(config(1).heartbeat_ticks);
    for id in c.ids() {
        assert_eq!(c.raft(id).log().committed(), p.last_index, "node {id}");
        assert_eq!(c.node(id).applied_strings(), vec!["x"], "node {id}");
    }
}
