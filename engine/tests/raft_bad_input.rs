//! Conformance: bad peer input (DESIGN "Errors in tiers": bad input from a peer is rejected
//! with a clear error and counted, never a panic), and the protocol violations the paper
//! rules out (§5.2 Election Safety: one leader per term).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use phalanx::raft::{RaftGroup, Status};
use phalanx_proto::raft_message::Body;
use phalanx_proto::{
    AppendEntriesResponse, ConfState, HeartbeatResponse, InstallSnapshotChunk, InstallSnapshotResponse,
    RaftMessage, ReadIndexRequest, ReadIndexResponse, TimeoutNow,
};

/// A follower of leader 1 in term 2 holding entries 1..=3 (terms 1, 2, 2), commit 1.
fn follower() -> RaftGroup {
    let mut r = solo_with_log(2, &[1, 2, 3], 2, log_of_terms(&[1, 2, 2]), 1, plain);
    r.step(msg(1, 2, heartbeat(2, 1))).expect("heartbeat from the leader");
    let _ = flush(&mut r);
    r
}

/// Messages not addressed to this group and node, or without a body, or claiming to come
/// from node 0 or from ourselves, are refused with `InvalidRequest` and counted.
#[test]
fn misaddressed_messages_rejected_and_counted() {
    let mut r = follower();
    let good = msg(1, 2, heartbeat(2, 1));
    let cases: Vec<(&str, RaftMessage)> = vec![
        ("wrong group", RaftMessage { group: 9, ..good.clone() }),
        ("wrong to", RaftMessage { to: 3, ..good.clone() }),
        ("from 0", RaftMessage { from: 0, ..good.clone() }),
        ("from self", RaftMessage { from: 2, ..good.clone() }),
        ("no body", RaftMessage { body: None, ..good.clone() }),
    ];
    let n = cases.len() as u64;
    for (what, m) in cases {
        assert_eq!(r.step(m), Err(Status::InvalidRequest), "{what}");
    }
    assert_eq!(r.stats().rejected_messages, n);
    assert_eq!((r.term(), r.leader()), (2, Some(1)), "nothing changed");
    r.step(good).unwrap();
}

/// A malformed AppendEntries batch (entries not contiguous from prev + 1, terms going down,
/// an entry of a term above the leader's) is refused whole: `InvalidRequest`, counted, log
/// untouched, no acknowledgement.
#[test]
fn malformed_append_batch_rejected_whole() {
    let cases = vec![
        ("gap", append(2, (3, 2), vec![entry(4, 2), entry(6, 2)], 1)),
        ("does not start after prev", append(2, (3, 2), vec![entry(5, 2)], 1)),
        ("terms go down", append(2, (3, 2), vec![entry(4, 2), entry(5, 1)], 1)),
        ("entry term below prev term", append(2, (3, 2), vec![entry(4, 1)], 1)),
        ("entry term above the leader's", append(2, (3, 2), vec![entry(4, 3)], 1)),
    ];
    for (what, body) in cases {
        let mut r = follower();
        assert_eq!(r.step(msg(1, 2, body)), Err(Status::InvalidRequest), "{what}");
        assert_eq!(r.stats().rejected_messages, 1, "{what}");
        assert_eq!(terms(&r), vec![1, 2, 2], "{what}: log untouched");
        let rd = flush(&mut r);
        assert!(rd.persisted_messages.is_empty() && rd.entries.is_empty(), "{what}");
    }
}

/// §5.2 Election Safety: "at most one leader can be elected in a given term". A follower
/// that knows its term's leader refuses appends from another node claiming the same term
/// (`LogsFromAnotherLeader`); a leader refuses them too (`LeaderAlreadyElected`). Both are
/// counted and change nothing.
#[test]
fn second_leader_in_same_term_rejected() {
    let mut r = follower();
    let err = r.step(msg(3, 2, append(2, (3, 2), vec![entry(4, 2)], 3))).unwrap_err();
    assert_eq!(err, Status::LogsFromAnotherLeader);
    assert_eq!(r.stats().rejected_messages, 1);
    assert_eq!(terms(&r), vec![1, 2, 2]);
    assert_eq!((r.leader(), r.log().committed()), (Some(1), 1));
    assert_eq!(r.step(msg(3, 2, heartbeat(2, 3))), Err(Status::LogsFromAnotherLeader));
    assert_eq!(r.log().committed(), 1);

    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    let before = terms(c.raft(1));
    assert_eq!(c.raft_mut(1).step(msg(2, 1, heartbeat(1, 5))), Err(Status::LeaderAlreadyElected));
    let snap = InstallSnapshotChunk { term: 1, conf_state: Some(ConfState::default()), ..Default::default() };
    assert_eq!(
        c.raft_mut(1).step(msg(3, 1, Body::Snapshot(Box::new(snap)))),
        Err(Status::LeaderAlreadyElected)
    );
    assert_eq!(c.raft(1).stats().rejected_messages, 2);
    assert!(c.raft(1).is_leader());
    assert_eq!(terms(c.raft(1)), before);
}

/// Every message kind with extreme field values (`u64::MAX` indexes, offsets, sizes,
/// contexts), delivered to a leader and to a follower, then the node keeps running (ticks,
/// proposals, campaigns). None may panic; each is either handled or rejected.
#[test]
fn hostile_field_values_never_panic() {
    const M: u64 = u64::MAX;
    let bodies: Vec<(&str, Body)> = vec![
        (
            "append response success match MAX",
            Body::AppendResponse(AppendEntriesResponse {
                term: 1,
                success: true,
                match_index: M,
                last_log_index: M,
                ..Default::default()
            }),
        ),
        (
            "append response reject with hint MAX",
            Body::AppendResponse(AppendEntriesResponse {
                term: 1,
                success: false,
                match_index: 1,
                conflict_index: M,
                conflict_term: 0,
                last_log_index: M,
                recovering: false,
            }),
        ),
        (
            "append response reject with term hint MAX",
            Body::AppendResponse(AppendEntriesResponse {
                term: 1,
                success: false,
                match_index: 1,
                conflict_index: M,
                conflict_term: M,
                last_log_index: M,
                recovering: false,
            }),
        ),
        (
            "heartbeat response ctx MAX",
            Body::HeartbeatResponse(HeartbeatResponse { term: 1, read_ctx: M, quiesced: false }),
        ),
        (
            "snapshot response MAX",
            Body::SnapshotResponse(InstallSnapshotResponse {
                term: 1,
                snapshot_index: M,
                next_offset: M,
                installed: true,
            }),
        ),
        ("heartbeat commit MAX", heartbeat(1, M)),
        ("append prev MAX", append(1, (M, 1), vec![], M)),
        ("append commit MAX", append(1, (1, 1), vec![], M)),
        ("vote request last MAX", vote_req(1, M, M, false)),
        ("prevote last MAX", vote_req(2, M, M, true)),
        (
            "snapshot chunk index MAX",
            Body::Snapshot(Box::new(InstallSnapshotChunk {
                term: 1,
                last_included_index: M,
                last_included_term: M,
                conf_state: Some(ConfState { voters: vec![1, 2, 3], learners: vec![] }),
                offset: 0,
                data: vec![1, 2, 3].into(),
                done: true,
                pending_two_step: vec![],
                total_size: 3,
            })),
        ),
        (
            "snapshot chunk offset MAX",
            Body::Snapshot(Box::new(InstallSnapshotChunk {
                term: 1,
                last_included_index: 50,
                last_included_term: 1,
                conf_state: Some(ConfState { voters: vec![1, 2, 3], learners: vec![] }),
                offset: M,
                data: vec![1].into(),
                done: true,
                pending_two_step: vec![],
                total_size: M,
            })),
        ),
        ("timeout now", Body::TimeoutNow(TimeoutNow { term: 1 })),
        ("read index request", Body::ReadIndexRequest(ReadIndexRequest { term: M, request_id: M })),
        (
            "read index response",
            Body::ReadIndexResponse(ReadIndexResponse { term: M, request_id: M, read_index: M, ok: true }),
        ),
    ];
    let mut panics = Vec::new();
    for (what, body) in &bodies {
        for target in [1u64, 2] {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let mut c = Cluster::new(&[1, 2, 3], defaults);
                c.elect(1);
                let from = if target == 1 { 2 } else { 1 };
                let _ = c.raft_mut(target).step(msg(from, target, body.clone()));
                c.stabilize();
                for _ in 0..50 {
                    c.tick_all();
                    if let Some(l) = c.leader() {
                        let _ = c.propose(l, "after");
                    }
                }
            }));
            if outcome.is_err() {
                panics.push(format!("{what} → node {target}"));
            }
        }
    }
    assert!(panics.is_empty(), "peer input panicked the core: {panics:#?}");
}

/// A peer that claims an absurd term (`u64::MAX`) must not make the node panic later when
/// it campaigns (term + 1).
#[test]
fn hostile_term_never_panics() {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = Cluster::new(&[1, 2, 3], defaults);
        let _ = c.raft_mut(2).step(msg(3, 2, heartbeat(u64::MAX, 0)));
        c.ticks(100);
    }));
    assert!(outcome.is_ok(), "a term of u64::MAX from a peer panicked the core");
}

/// A rejection whose conflict hint points past the end of the leader's log (a follower in
/// the probe state answering with `conflict_index = u64::MAX`) must not panic the leader,
/// and replication must still converge afterwards.
#[test]
fn hostile_conflict_hint_in_probe_state_never_panics() {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = Cluster::new(&[1, 2, 3], plain);
        assert!(c.campaign_settle(1, 1));
        // The leader's first probe to node 2 is at prev index 0: answer it with the hint.
        let resp = AppendEntriesResponse {
            term: 1,
            success: false,
            match_index: 0,
            conflict_index: u64::MAX,
            conflict_term: 0,
            last_log_index: u64::MAX,
            recovering: false,
        };
        let _ = c.raft_mut(1).step(msg(2, 1, Body::AppendResponse(resp)));
        c.stabilize();
        c.ticks(5);
        c.assert_logs_match(1);
    }));
    assert!(outcome.is_ok(), "a conflict hint of u64::MAX panicked the leader");
}
