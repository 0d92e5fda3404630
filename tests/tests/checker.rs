//! The checker itself must reject violating histories: a checker that accepts everything
//! would make the simulator's "0 violations" meaningless. Each test hand-builds a small
//! history that breaks one property and expects exactly that violation; the clean history
//! must pass.

use bytes::Bytes;
use phalanx::hlc::Ticket;
use phalanx::raft::RaftLog;
use phalanx_proto::{EntryKind, HlcTimestamp, LogEntry};
use phalanx_tests::sim::checker::{Checker, Violation, entry_id};

fn entry(index: u64, term: u64, payload: &str) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: EntryKind::Normal as i32,
        log_type: "t".into(),
        payload: Bytes::from(payload.to_owned()),
        ticket: Some(HlcTimestamp { physical_ms: index * 100 + term, logical: 0, node_id: 1 }),
    }
}

fn log(entries: &[LogEntry]) -> RaftLog {
    RaftLog::restored((0, 0), entries.to_vec(), 0, 0)
}

#[test]
fn clean_history_passes() {
    let mut c = Checker::new();
    let (a, b) = (entry(1, 1, "a"), entry(2, 1, "b"));
    c.on_leader(1, 1, 1, &log(&[]));
    for node in [1, 2, 3] {
        c.on_append(1, node, &a, Some(0));
        c.on_append(1, node, &b, Some(1));
        c.on_positions(1, node, 0, 0, 0);
        c.on_committed(1, node, &a);
        c.on_committed(1, node, &b);
        c.on_delivery(1, node, 0, &a);
        c.on_delivery(1, node, 1, &b);
        c.on_positions(1, node, 0, 2, 2);
    }
    c.on_ack(1, Ticket::default(), &[entry_id(&a), entry_id(&b)], 2);
    c.on_read(1, 2, c.acked_floor(1));
    c.on_leader(1, 2, 2, &log(&[a, b]));
    c.finish();
    assert_eq!(c.violations, vec![]);
}

#[test]
fn two_leaders_in_one_term_break_election_safety() {
    let mut c = Checker::new();
    c.on_leader(1, 5, 1, &log(&[]));
    c.on_leader(1, 5, 2, &log(&[]));
    assert_eq!(c.violations, vec![Violation::ElectionSafety { group: 1, term: 5, leaders: (1, 2) }]);
}

#[test]
fn same_index_and_term_with_other_content_breaks_log_matching() {
    let mut c = Checker::new();
    c.on_append(1, 1, &entry(3, 2, "x"), Some(1));
    c.on_append(1, 2, &entry(3, 2, "y"), Some(1));
    assert_eq!(c.violations, vec![Violation::LogMatching { group: 1, index: 3, term: 2, node: 2 }]);
}

#[test]
fn same_entry_with_other_predecessor_breaks_log_matching() {
    let mut c = Checker::new();
    c.on_append(1, 1, &entry(3, 2, "x"), Some(1));
    c.on_append(1, 2, &entry(3, 2, "x"), Some(2));
    assert!(matches!(c.violations[..], [Violation::LogMatching { index: 3, .. }]));
}

#[test]
fn leader_missing_a_committed_entry_breaks_leader_completeness() {
    let mut c = Checker::new();
    let committed = entry(1, 1, "a");
    c.on_committed(1, 1, &committed);
    // A term-2 leader whose log holds another entry at index 1.
    c.on_leader(1, 2, 3, &log(&[entry(1, 2, "other")]));
    assert_eq!(c.violations, vec![Violation::LeaderCompleteness { group: 1, term: 2, node: 3, index: 1 }]);
}

#[test]
fn different_entries_applied_at_one_index_break_state_machine_safety() {
    let mut c = Checker::new();
    c.on_committed(1, 1, &entry(4, 2, "a"));
    c.on_committed(1, 2, &entry(4, 3, "b"));
    assert!(matches!(c.violations[..], [Violation::StateMachineSafety { group: 1, node: 2, .. }]));
}

#[test]
fn different_state_machine_inputs_break_state_machine_safety() {
    let mut c = Checker::new();
    c.on_delivery(1, 1, 0, &entry(1, 1, "a"));
    c.on_delivery(1, 2, 0, &entry(2, 1, "b"));
    assert!(matches!(c.violations[..], [Violation::StateMachineSafety { node: 2, .. }]));
    let mut c = Checker::new();
    c.on_delivery(1, 1, 1, &entry(1, 1, "a"));
    assert!(matches!(c.violations[..], [Violation::StateMachineSafety { .. }]), "a gap in the input");
}

#[test]
fn commit_going_back_within_an_incarnation_is_caught() {
    let mut c = Checker::new();
    c.on_positions(1, 1, 0, 5, 5);
    c.on_positions(1, 1, 1, 3, 0); // restarted: going back is allowed
    assert!(c.violations.is_empty());
    c.on_positions(1, 1, 1, 2, 0);
    assert!(matches!(c.violations[..], [Violation::NonMonotonic { group: 1, node: 1, .. }]));
}

#[test]
fn acknowledged_write_never_delivered_is_lost() {
    let mut c = Checker::new();
    let e = entry(1, 1, "a");
    c.on_ack(1, Ticket::default(), &[entry_id(&e)], 1);
    c.finish();
    assert!(matches!(c.violations[..], [Violation::LostAck { group: 1, .. }]));
}

#[test]
fn refused_proposal_in_a_log_is_caught() {
    let mut c = Checker::new();
    let (e, other) = (entry(1, 1, "a"), entry(2, 1, "b"));
    c.on_append(1, 1, &e, Some(0));
    c.on_refused(1, Ticket::default(), &[entry_id(&other)]);
    c.finish();
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.on_refused(1, Ticket::default(), &[entry_id(&e)]);
    c.finish();
    assert!(matches!(c.violations[..], [Violation::RefusedAppended { group: 1, .. }]));
}

#[test]
fn acknowledged_write_delivered_twice_is_caught() {
    let mut c = Checker::new();
    let e = entry(1, 1, "a");
    c.on_delivery(1, 1, 0, &e);
    c.on_delivery(1, 1, 1, &e);
    c.on_ack(1, Ticket::default(), &[entry_id(&e)], 1);
    c.finish();
    assert!(matches!(c.violations[..], [Violation::LostAck { .. }]));
    let mut c = Checker::new();
    c.on_duplicate(1, 2, 7);
    assert_eq!(c.violations, vec![Violation::DuplicateApply { group: 1, node: 2, id: 7 }]);
}

#[test]
fn two_step_entry_delivered_without_commit_marker_is_caught() {
    let mut c = Checker::new();
    let mut p = entry(1, 1, "p");
    p.kind = EntryKind::Proposed as i32;
    c.on_committed(1, 1, &p);
    c.on_delivery(1, 1, 0, &p);
    assert!(matches!(c.violations[..], [Violation::TwoStep { .. }]));
    // After a rollback it must never be delivered either.
    let mut c = Checker::new();
    let mut rb = entry(2, 1, "");
    rb.kind = EntryKind::RollbackMarker as i32;
    rb.ticket = p.ticket;
    c.on_committed(1, 1, &p);
    c.on_committed(1, 1, &rb);
    c.on_delivery(1, 1, 0, &p);
    assert!(matches!(c.violations[..], [Violation::TwoStep { .. }]));
    // With a committed commit marker it is fine.
    let mut c = Checker::new();
    let mut cm = rb.clone();
    cm.kind = EntryKind::CommitMarker as i32;
    c.on_committed(1, 1, &p);
    c.on_committed(1, 1, &cm);
    c.on_delivery(1, 1, 0, &p);
    assert!(c.violations.is_empty());
}

#[test]
fn read_below_an_earlier_acknowledged_write_is_stale() {
    let mut c = Checker::new();
    c.on_ack(1, Ticket::default(), &[], 9);
    let floor = c.acked_floor(1);
    c.on_read(1, 8, floor);
    assert_eq!(c.violations, vec![Violation::StaleRead { group: 1, read_index: 8, acked_before: 9 }]);
}
