//! Conformance: linearizable reads with ReadIndex (Raft thesis §6.4; paper §8 "read-only
//! operations").

mod common;

use common::*;
use phalanx::raft::{ReadState, Status};
use phalanx_proto::raft_message::Body;

fn read_ctx(m: &phalanx_proto::RaftMessage) -> Option<u64> {
    match &m.body {
        Some(Body::Heartbeat(h)) => Some(h.read_ctx),
        _ => None,
    }
}

/// §6.4 steps 2–3: the leader records its commit index as the read index and "sends a new
/// round of heartbeats to confirm it is still leader; once a majority acknowledges, the
/// leader knows no other leader can exist". Before a majority answers, no ReadState.
#[test]
fn read_index_confirmed_by_quorum_heartbeat_round() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], defaults);
    c.elect(1);
    let commit = c.raft(1).log().committed();
    c.raft_mut(1).read_index(7).unwrap();
    let rd = c.process(1).unwrap();
    let hbs: Vec<_> = rd.messages.iter().filter_map(|m| read_ctx(m).map(|x| (m.to, x))).collect();
    assert_eq!(hbs.len(), 4, "one heartbeat per follower for the read");
    assert!(hbs.iter().all(|(_, ctx)| *ctx > 0));
    assert!(rd.read_states.is_empty());
    // Deliver heartbeats to node 2 only: 2 of 5 is no majority.
    let to2 = c.take_msgs(|m| m.to == 2);
    c.clear_net();
    for m in to2 {
        c.deliver(m);
    }
    c.process(2);
    c.deliver_queued();
    c.process(1);
    assert!(c.node(1).read_states.is_empty(), "confirmed by 2 of 5");
    // Node 3 answers a later heartbeat that carries the same context: 3 of 5.
    c.tick_node(1, config(1).heartbeat_ticks);
    c.process(1);
    let to3 = c.take_msgs(|m| m.to == 3);
    c.clear_net();
    for m in to3 {
        c.deliver(m);
    }
    c.process(3);
    c.deliver_queued();
    c.process(1);
    assert_eq!(c.node(1).read_states, vec![ReadState { request_id: 7, result: Ok(commit) }]);
}

/// §6.4 step 1: "If the leader has not yet marked an entry from its current term committed,
/// it waits until it has done so" — a new leader's commit index may lag entries committed
/// by its predecessor. No read is answered before the no-op of the term commits, and the
/// answer covers it.
#[test]
fn no_read_before_leader_commits_entry_of_its_term() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.raft_mut(1).transfer_leadership(2).unwrap();
    // Let node 2 win, but hold back everything after its win.
    for _ in 0..20 {
        if c.raft(2).is_leader() {
            break;
        }
        c.process_all();
        c.deliver_queued();
    }
    assert!(c.raft(2).is_leader());
    let noop = c.raft(2).log().last_index();
    assert!(c.raft(2).log().committed() < noop);
    c.raft_mut(2).read_index(1).unwrap();
    c.cut_pair(2, 1);
    c.cut_pair(2, 3);
    c.stabilize();
    c.ticks(3);
    assert!(c.node(2).read_states.is_empty(), "no read before the term's first commit");
    c.heal();
    c.ticks(config(1).heartbeat_ticks);
    assert_eq!(c.raft(2).log().committed(), noop);
    assert_eq!(c.node(2).read_states, vec![ReadState { request_id: 1, result: Ok(noop) }]);
}

/// §6.4 (reads from followers): "the follower ... requests the current read index from the
/// leader" and serves the read once it has applied up to it. The answer reaches the
/// follower's shell as a ReadState with the leader's confirmed commit index.
#[test]
fn follower_forwards_read_to_leader() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    let p = c.propose(1, "x").unwrap();
    c.stabilize();
    c.raft_mut(3).read_index(42).unwrap();
    c.stabilize();
    assert!(c.trace.iter().any(|m| kind(m) == "ReadIndex" && m.from == 3 && m.to == 1));
    assert_eq!(c.node(3).read_states, vec![ReadState { request_id: 42, result: Ok(p.last_index) }]);
    assert!(c.raft(3).log().applied() >= p.last_index);
}

/// A read needs a known leader: a node that knows none answers `NodeIsNotLeader` at once.
#[test]
fn read_without_known_leader_refused() {
    let mut r = solo(2, &[1, 2, 3], defaults);
    assert_eq!(r.read_index(1), Err(Status::NodeIsNotLeader));
}

/// Linearizability (§6.4 / paper §8): a read issued after a write completed returns a read
/// index at or past the write, wherever it is issued.
#[test]
fn read_after_write_sees_the_write() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    for (i, reader) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
        let p = c.propose(1, &format!("w{i}")).unwrap();
        c.stabilize();
        assert!(c.node(1).committed.contains_key(&p.last_index));
        c.raft_mut(reader).read_index(i as u64).unwrap();
        c.stabilize();
        let rs = c.node(reader).read_states.last().copied().unwrap();
        assert_eq!(rs.request_id, i as u64);
        assert!(rs.result.unwrap() >= p.last_index, "read {i} on node {reader} misses the write");
    }
}

/// A leader that steps down fails every read it holds, so callers retry elsewhere: here
/// through CheckQuorum after losing its followers. Reads forwarded by a follower fail
/// when the follower's term changes.
#[test]
fn leader_step_down_fails_pending_reads() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.isolate(1);
    c.raft_mut(1).read_index(5).unwrap();
    c.raft_mut(1).read_index(6).unwrap();
    for _ in 0..100 {
        if !c.raft(1).is_leader() {
            break;
        }
        c.tick_all();
    }
    assert!(!c.raft(1).is_leader());
    c.process(1);
    let mut got = c.node(1).read_states.clone();
    got.sort_by_key(|r| r.request_id);
    assert_eq!(
        got,
        vec![
            ReadState { request_id: 5, result: Err(Status::NodeIsNotLeader) },
            ReadState { request_id: 6, result: Err(Status::NodeIsNotLeader) },
        ]
    );

    // Forwarded read: the follower's term changes (a new leader appears) before the old
    // leader answers; the late answer of the old leader is then ignored.
    let mut r = solo(3, &[1, 2, 3], defaults);
    r.step(msg(1, 3, heartbeat(1, 0))).unwrap();
    r.read_index(9).unwrap();
    let rd = flush(&mut r);
    assert_eq!(rd.messages.iter().map(kind).collect::<Vec<_>>(), vec!["HeartbeatResp", "ReadIndex"]);
    r.step(msg(2, 3, heartbeat(2, 0))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(rd.read_states, vec![ReadState { request_id: 9, result: Err(Status::NodeIsNotLeader) }]);
    let late = Body::ReadIndexResponse(phalanx_proto::ReadIndexResponse {
        term: 1,
        request_id: 9,
        read_index: 5,
        ok: true,
    });
    r.step(msg(1, 3, late)).unwrap();
    assert!(flush(&mut r).read_states.is_empty(), "a late answer for a failed read is dropped");
}

/// A stale leader (partitioned, unaware of the new term) can never confirm a read: its
/// heartbeat round reaches no majority in its term.
#[test]
fn stale_leader_cannot_confirm_read() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.check_quorum = false);
    c.elect(1);
    c.isolate(1);
    for _ in 0..100 {
        if c.leader().is_some_and(|l| l != 1) {
            break;
        }
        c.tick_all();
    }
    let l = c.leader().unwrap();
    let w = c.propose(l, "new").unwrap();
    c.stabilize();
    assert!(c.raft(1).is_leader(), "the old leader does not know yet");
    c.raft_mut(1).read_index(3).unwrap();
    c.ticks(5);
    assert!(c.node(1).read_states.is_empty());
    c.heal();
    c.ticks(5);
    for rs in &c.node(1).read_states {
        assert!(rs.result.is_err() || rs.result.unwrap() >= w.last_index, "stale read: {rs:?}");
    }
    assert!(!c.raft(1).is_leader());
    assert_eq!(
        c.node(1).read_states,
        vec![ReadState { request_id: 3, result: Err(Status::NodeIsNotLeader) }]
    );
}

/// Reads are bounded: beyond `max_pending_reads` waiting reads, `read_index` answers `Busy`
/// (DESIGN: back-pressure is explicit).
#[test]
fn read_queue_is_bounded() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.max_pending_reads = 2);
    c.elect(1);
    c.isolate(1);
    c.raft_mut(1).read_index(1).unwrap();
    c.raft_mut(1).read_index(2).unwrap();
    assert_eq!(c.raft_mut(1).read_index(3), Err(Status::Busy));
    c.raft_mut(2).read_index(1).unwrap();
    c.raft_mut(2).read_index(2).unwrap();
    assert_eq!(c.raft_mut(2).read_index(3), Err(Status::Busy), "forwarded reads are bounded too");
}

/// A single-voter group confirms its own reads at once (it is a majority of itself).
#[test]
fn single_voter_reads_immediately() {
    let mut c = Cluster::new(&[1], defaults);
    c.elect(1);
    c.raft_mut(1).read_index(1).unwrap();
    c.process(1);
    assert_eq!(c.node(1).read_states, vec![ReadState { request_id: 1, result: Ok(1) }]);
}

/// A forwarded read whose request (or answer) is lost must not hold its slot in the
/// follower's bounded queue forever: with a stable leader the term never changes, so
/// without a timeout the follower would answer `Busy` to every read from then on. After
/// an election timeout without an answer the read fails (the caller retries) and new
/// reads are accepted.
#[test]
fn lost_forwarded_reads_do_not_leak_queue_slots() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.max_pending_reads = 2);
    c.elect(1);
    c.raft_mut(2).read_index(1).unwrap();
    c.raft_mut(2).read_index(2).unwrap();
    c.process(2);
    let lost = c.take_msgs(|m| kind(m) == "ReadIndex");
    assert_eq!(lost.len(), 2);
    assert_eq!(c.raft_mut(2).read_index(3), Err(Status::Busy));
    c.ticks(2 * config(1).election_ticks_max);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.raft(2).term(), 1, "stable leader: no term change to clear the queue");
    let failed: Vec<u64> =
        c.node(2).read_states.iter().filter(|r| r.result.is_err()).map(|r| r.request_id).collect();
    assert_eq!(failed, vec![1, 2], "the lost reads fail");
    c.raft_mut(2).read_index(4).expect("the queue has room again");
    c.stabilize();
    assert!(c.node(2).read_states.iter().any(|r| r.request_id == 4 && r.result.is_ok()));
}
