//! Conformance: two-step proposals (the reference's `autoCommit: false`, `CommitLogs`,
//! `RollbackLogs`). Their entries are replicated and committed like any other (Raft §5.3),
//! but reach the state machine only when a commit marker for their ticket commits, and
//! never if a rollback marker does — identically on every node (State Machine Safety, §5.4.3).

mod common;

use common::*;
use phalanx::raft::{ProposalKind, Status};

fn two_step(c: &mut Cluster, leader: u64, payloads: &[&str], t: u64) -> u64 {
    c.raft_mut(leader)
        .propose(proposal_n(ProposalKind::TwoStep, payloads, t))
        .expect("leader accepts")
        .last_index
}

/// The entries commit (durable on a quorum) without being delivered; once the commit marker
/// commits, every node delivers them, in order, at the marker's position.
#[test]
fn two_step_entries_delivered_only_when_commit_marker_commits() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    let last = two_step(&mut c, 1, &["a", "b"], 1);
    c.stabilize();
    c.ticks(2);
    for id in c.ids() {
        assert!(c.node(id).committed.contains_key(&last), "node {id}: the entries are committed");
        assert!(c.node(id).applied_strings().is_empty(), "node {id}: but not delivered");
    }
    c.propose(1, "auto").unwrap();
    c.stabilize();
    let m = c.raft_mut(1).commit_logs(ticket(1)).unwrap();
    c.stabilize();
    c.ticks(2);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings(), vec!["auto", "a", "b"], "node {id}");
        assert!(c.node(id).committed.contains_key(&m.last_index));
    }
}

/// A rollback marker discards the proposal: its entries are never delivered, and a commit
/// marker afterwards is refused (`ProposalNotFound`) — or, if already in the log, ignored.
#[test]
fn rollback_never_delivers() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    two_step(&mut c, 1, &["a"], 1);
    c.stabilize();
    c.raft_mut(1).rollback_logs(ticket(1)).unwrap();
    c.stabilize();
    c.ticks(2);
    assert_eq!(c.raft_mut(1).commit_logs(ticket(1)), Err(Status::ProposalNotFound));
    // Both markers in flight at once: the first to commit wins, everywhere.
    two_step(&mut c, 1, &["b"], 2);
    c.raft_mut(1).rollback_logs(ticket(2)).unwrap();
    c.raft_mut(1).commit_logs(ticket(2)).unwrap();
    c.propose(1, "end").unwrap();
    c.stabilize();
    c.ticks(2);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings(), vec!["end"], "node {id}");
    }
}

/// Markers for a ticket that names no pending two-step proposal are refused with
/// `ProposalNotFound`: unknown tickets, auto-commit tickets, resolved proposals.
#[test]
fn marker_for_unknown_ticket_is_proposal_not_found() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    assert_eq!(c.raft_mut(1).commit_logs(ticket(99)), Err(Status::ProposalNotFound));
    assert_eq!(c.raft_mut(1).rollback_logs(ticket(99)), Err(Status::ProposalNotFound));
    c.raft_mut(1).propose(proposal_n(ProposalKind::AutoCommit, &["x"], 5)).unwrap();
    c.stabilize();
    assert_eq!(c.raft_mut(1).commit_logs(ticket(5)), Err(Status::ProposalNotFound), "auto-commit ticket");
    two_step(&mut c, 1, &["y"], 6);
    c.stabilize();
    c.raft_mut(1).commit_logs(ticket(6)).unwrap();
    c.stabilize();
    assert_eq!(c.raft_mut(1).rollback_logs(ticket(6)), Err(Status::ProposalNotFound), "already resolved");
    assert_eq!(c.raft_mut(2).commit_logs(ticket(6)), Err(Status::NodeIsNotLeader));
}

/// A marker may be proposed while its proposal is still uncommitted (in flight): it is
/// accepted, and delivery happens once both are committed, in log order.
#[test]
fn marker_for_in_flight_proposal() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.isolate(1);
    two_step(&mut c, 1, &["a"], 1);
    c.raft_mut(1).commit_logs(ticket(1)).unwrap();
    c.stabilize();
    assert!(c.node(1).applied_strings().is_empty());
    c.heal();
    // Two heartbeat rounds: the first brings the followers' logs up to date, the second
    // their commit index (a follower whose ack arrives after the commit point moved learns
    // it from the next heartbeat).
    c.ticks(2 * config(1).heartbeat_ticks);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings(), vec!["a"], "node {id}");
    }
}

/// Pending two-step proposals survive a change of leader and a restart: every node tracks
/// them from the committed log, so a new leader accepts the marker, and a restarted node
/// (which re-applies its log) delivers the entries too.
#[test]
fn pending_two_step_survives_leader_change_and_restart() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    two_step(&mut c, 1, &["a", "b"], 1);
    c.stabilize();
    c.ticks(2);
    c.raft_mut(1).transfer_leadership(2).unwrap();
    c.stabilize();
    assert_eq!(c.leader(), Some(2));
    c.crash(3);
    c.restart(3);
    c.raft_mut(2).commit_logs(ticket(1)).unwrap();
    c.stabilize();
    c.ticks(2);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings(), vec!["a", "b"], "node {id}");
    }
}

/// A two-step proposal whose entries are overwritten before they commit (its leader lost
/// leadership) is gone: the marker of the new leader is refused, nothing is delivered.
#[test]
fn uncommitted_two_step_lost_with_its_leader() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.check_quorum = false);
    c.elect(1);
    c.isolate(1);
    two_step(&mut c, 1, &["lost"], 1);
    c.stabilize();
    for _ in 0..100 {
        if c.leader().is_some_and(|l| l != 1) {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().unwrap();
    assert_eq!(c.raft_mut(l).commit_logs(ticket(1)), Err(Status::ProposalNotFound));
    c.heal();
    c.ticks(5);
    c.assert_logs_match(l);
    for id in c.ids() {
        assert!(c.node(id).applied_strings().is_empty(), "node {id}");
    }
}
