//! Conformance: log compaction and snapshots (Raft paper §7): the compaction floor below
//! the last applied checkpoint, InstallSnapshot in chunks for followers that need
//! discarded entries, and the state that must survive a snapshot (two-step proposals).

mod common;

use common::*;
use phalanx::raft::{ProposalKind, Status};
use phalanx_proto::raft_message::Body;

/// Proposes `n` payloads `{prefix}{i}` on `leader` and settles.
fn fill(c: &mut Cluster, leader: u64, prefix: &str, n: usize) {
    for i in 0..n {
        c.propose(leader, &format!("{prefix}{i}")).expect("leader accepts proposals");
    }
    c.stabilize();
}

/// Cuts node 3 off, then has leader 1 commit `before` entries, a checkpoint and `after`
/// entries: node 3 will need entries that a compaction can discard.
fn lag_node_3_behind_a_checkpoint(c: &mut Cluster, before: usize, after: usize) {
    c.isolate(3);
    fill(c, 1, "a", before);
    c.raft_mut(1).propose_checkpoint(ticket(1)).expect("the leader takes a checkpoint");
    fill(c, 1, "b", after);
}

fn chunks(c: &Cluster) -> Vec<(u64, u64, usize, bool)> {
    c.trace
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::Snapshot(s)) => Some((m.to, s.offset, s.data.len(), s.done)),
            _ => None,
        })
        .collect()
}

/// Kommander's compaction rule on top of §7: `compact` snapshots the applied state, but only
/// entries older than the last applied checkpoint are discarded — never the checkpoint
/// itself or anything after it, and nothing at all without a checkpoint.
#[test]
fn compact_only_below_last_applied_checkpoint() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    fill(&mut c, 1, "a", 5);
    assert_eq!(c.compact(1), Ok(0), "no checkpoint: nothing discarded");
    assert_eq!(c.raft(1).snapshot_meta().unwrap().index, c.raft(1).log().applied());
    let cp = c.raft_mut(1).propose_checkpoint(ticket(1)).unwrap().last_index;
    fill(&mut c, 1, "b", 5);
    c.ticks(2);
    assert_eq!(c.raft(1).last_checkpoint(), cp);
    let applied = c.raft(1).log().applied();
    assert!(applied > cp);
    assert_eq!(c.compact(1), Ok(cp - 1), "floor just below the checkpoint, not at applied");
    c.process(1);
    assert_eq!(c.raft(1).log().first_index(), cp);
    assert_eq!(c.node(1).store.floor.0, cp - 1, "compact_to reached storage");
    assert_eq!(c.raft(1).snapshot_meta().unwrap().index, applied);
    // Followers compact by the same rule, independently.
    assert_eq!(c.raft(2).last_checkpoint(), cp);
    assert_eq!(c.compact(2), Ok(cp - 1));
    // The cluster keeps working on top of the compacted logs.
    fill(&mut c, 1, "c", 3);
    assert_eq!(c.node(2).applied_strings().len(), 13);
}

/// `compact` describes one moment (image, applied index, pending two-step state): it is
/// refused with `Busy` while a Ready is outstanding or committed entries wait to be applied.
#[test]
fn compact_refused_while_work_is_outstanding() {
    let mut c = Cluster::new(&[1], defaults);
    c.elect(1);
    c.propose(1, "x").unwrap();
    let rd = c.nodes.get_mut(&1).unwrap().raft.ready().unwrap();
    assert_eq!(c.raft_mut(1).compact(bytes::Bytes::new()), Err(Status::Busy), "Ready outstanding");
    c.raft_mut(1).advance(rd.number);
    assert_eq!(c.raft_mut(1).compact(bytes::Bytes::new()), Err(Status::Busy), "committed, not applied");
    c.stabilize();
    assert!(c.raft_mut(1).compact(bytes::Bytes::new()).is_ok());
}

/// §7: "the leader must occasionally send snapshots to followers that lag behind" — when the
/// entries a follower needs are discarded, the leader sends its snapshot (InstallSnapshot),
/// in chunks of at most `snapshot_chunk_bytes`, one at a time at increasing offsets; the
/// follower installs it (state machine restored from it), then catches up through appends.
#[test]
fn lagging_follower_receives_snapshot_in_chunks_then_catches_up() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 8);
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 10, 3);
    let floor = c.compact(1).unwrap();
    assert!(floor > c.raft(3).log().last_index(), "node 3 needs discarded entries");
    let snap_index = c.raft(1).snapshot_meta().unwrap().index;
    let image_len = c.nodes[&1].store.snapshot.as_ref().unwrap().data.len();
    c.process(1);
    c.heal();
    c.ticks(2);
    assert_eq!(c.raft(1).stats().snapshots_sent, 1);
    let sent = chunks(&c);
    assert_eq!(sent.len(), image_len.div_ceil(8), "chunks: {sent:?}");
    let mut offset = 0;
    for (to, off, len, done) in &sent {
        assert_eq!(*to, 3);
        assert_eq!(*off, offset, "one chunk at a time, in order");
        assert!(*len <= 8);
        offset += *len as u64;
        assert_eq!(*done, offset == image_len as u64);
    }
    let installed = c.node(3).readies.iter().find_map(|r| r.snapshot.as_ref()).expect("installed");
    assert_eq!(installed.meta.index, snap_index);
    assert_eq!(c.node(3).store.floor.0, snap_index);
    fill(&mut c, 1, "c", 2);
    c.ticks(4);
    c.assert_logs_match(1);
    assert_eq!(c.node(3).applied_strings(), c.node(1).applied_strings());
    assert_eq!(c.node(3).applied_strings().len(), 15);
}

/// A leader reads entries back from storage for a lagging follower (a fetch) while a
/// checkpoint compacts them away. The runtime's writer merges the compacting Ready with the
/// one that asked, so the read finds the range gone and answers with nothing: the leader must
/// fall back to its snapshot at once. Regression: `phalanx-bench --checkpoint-every 1000`
/// with 256 clients on one partition stopped a shard ("entries … out of range"), and the
/// core ignored an answer whose preceding entry had been compacted.
#[test]
fn fetch_overtaken_by_compaction_falls_back_to_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.log_cache_entries = 2;
        cfg.max_entries_per_append = 3;
    });
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 10, 3);
    c.hold_fetches = true;
    c.heal();
    for _ in 0..10 {
        if !c.held_fetches.is_empty() {
            break;
        }
        c.tick_all();
    }
    let held = std::mem::take(&mut c.held_fetches);
    assert!(held.iter().any(|(id, f)| *id == 1 && f.to == 3), "the leader read entries back for node 3");
    let floor = c.compact(1).unwrap();
    c.process(1);
    assert!(held.iter().all(|(_, f)| f.lo <= floor), "the fetched range is compacted now");
    c.clear_net();
    for (_, f) in held {
        c.raft_mut(1).on_entries_fetched(f.to, f.lo, Vec::new());
    }
    c.hold_fetches = false;
    c.process(1);
    assert!(
        c.net.iter().any(|m| m.to == 3 && matches!(m.body, Some(Body::Snapshot(_)))),
        "the empty answer turns into a snapshot for node 3 without waiting for a tick: {:?}",
        c.net.iter().map(kind).collect::<Vec<_>>()
    );
    c.ticks(4);
    assert_eq!(c.node(3).applied_strings(), c.node(1).applied_strings());
}

/// §7 / Figure 13: the follower acknowledges a snapshot only once it is durable: the final
/// InstallSnapshot answer travels in `persisted_messages` of the Ready carrying the snapshot.
#[test]
fn snapshot_installation_acknowledged_after_persistence() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 3, 1);
    c.compact(1).unwrap();
    c.process(1);
    c.heal();
    c.ticks(2);
    let rd = c.node(3).readies.iter().find(|r| r.snapshot.is_some()).unwrap();
    let in_persisted = rd
        .persisted_messages
        .iter()
        .any(|m| matches!(&m.body, Some(Body::SnapshotResponse(r)) if r.installed));
    let in_immediate =
        rd.messages.iter().any(|m| matches!(&m.body, Some(Body::SnapshotResponse(r)) if r.installed));
    assert!(in_persisted && !in_immediate);
}

/// A lost chunk is sent again (from the offset the follower expects) when the follower next
/// answers a heartbeat; the transfer completes.
#[test]
fn lost_snapshot_chunk_is_resent() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 4);
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 4, 1);
    c.compact(1).unwrap();
    c.process(1);
    c.heal();
    // Drop the second chunk once.
    let mut dropped = false;
    for _ in 0..200 {
        c.tick_node(1, 1);
        c.tick_node(2, 1);
        c.tick_node(3, 1);
        for _ in 0..50 {
            c.process_all();
            if c.net.is_empty() {
                break;
            }
            for m in c.take_msgs(|_| true) {
                let second = matches!(&m.body, Some(Body::Snapshot(s)) if s.offset == 4);
                if second && !dropped {
                    dropped = true;
                    continue;
                }
                c.deliver(m);
            }
        }
        if c.node(3).readies.iter().any(|r| r.snapshot.is_some()) {
            break;
        }
    }
    assert!(dropped);
    assert!(c.node(3).readies.iter().any(|r| r.snapshot.is_some()), "snapshot never installed");
    c.ticks(4);
    assert_eq!(c.node(3).applied_strings(), c.node(1).applied_strings());
}

/// Two-step proposals committed before the snapshot point but not yet resolved are part of
/// the snapshot (the state machine has not seen them): a follower restored from the
/// snapshot still delivers them when the commit marker commits.
#[test]
fn pending_two_step_entries_survive_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 16);
    c.elect(1);
    c.isolate(3);
    c.raft_mut(1).propose(proposal_n(ProposalKind::TwoStep, &["p1", "p2"], 7)).unwrap();
    fill(&mut c, 1, "a", 3);
    c.raft_mut(1).propose_checkpoint(ticket(1)).unwrap();
    fill(&mut c, 1, "b", 1);
    c.compact(1).unwrap();
    assert_eq!(c.raft(1).snapshot_meta().unwrap().pending_two_step.len(), 2);
    assert!(c.raft(1).log().first_index() > 3, "the two-step entries were compacted away");
    c.process(1);
    c.heal();
    c.ticks(4);
    let snap = c.node(3).readies.iter().find_map(|r| r.snapshot.clone()).expect("snapshot installed");
    assert_eq!(snap.meta.pending_two_step.len(), 2);
    assert!(!c.node(3).applied_strings().contains(&"p1".to_string()));
    c.raft_mut(1).commit_logs(ticket(7)).unwrap();
    c.stabilize();
    c.ticks(4);
    for id in c.ids() {
        let applied = c.node(id).applied_strings();
        assert_eq!(&applied[applied.len() - 2..], &["p1", "p2"], "node {id}: {applied:?}");
    }
    // The pending set also survives the follower's restart from its stored snapshot.
    c.crash(3);
    c.restart(3);
    c.ticks(4);
    assert_eq!(c.node(3).applied_strings(), c.node(1).applied_strings());
}

/// A node restarts from a compacted store (snapshot + floor + suffix); a restarted leader
/// can still bring an empty follower up to date with its stored snapshot.
#[test]
fn restart_from_compacted_store_and_send_stored_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 5, 2);
    c.compact(1).unwrap();
    c.compact(2).unwrap();
    c.stabilize();
    let before = c.node(1).applied_strings();
    c.crash(1);
    c.restart(1);
    assert!(c.raft(1).log().floor_index() > 0);
    assert_eq!(c.node(1).applied_strings(), before, "state machine restored from the snapshot");
    c.heal();
    for _ in 0..200 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all();
    }
    c.ticks(6);
    let l = c.leader().unwrap();
    fill(&mut c, l, "c", 1);
    c.ticks(4);
    c.assert_logs_match(l);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings().len(), 8, "node {id}");
    }
}

/// A snapshot larger than the follower's `max_snapshot_bytes` is refused as bad input
/// (counted), without buffering it.
#[test]
fn oversized_snapshot_refused() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        if cfg.id == 3 {
            cfg.max_snapshot_bytes = 8;
        }
    });
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 5, 1);
    c.compact(1).unwrap();
    c.process(1);
    c.heal();
    c.ticks(2);
    assert!(c.raft(3).stats().rejected_messages >= 1);
    assert!(
        c.step_errors.iter().any(|(to, k, e)| *to == 3 && *k == "Snapshot" && *e == Status::InvalidRequest)
    );
    assert!(c.node(3).readies.iter().all(|r| r.snapshot.is_none()));
}

/// §7: the snapshot carries "the latest configuration as of the last included index". A
/// server added after the log was compacted learns its membership (and everything else)
/// from the snapshot, then follows the log.
#[test]
fn new_member_joins_from_snapshot_with_its_membership() {
    use phalanx::raft::Membership;
    use phalanx_proto::ConfChangeType;
    let mut c = Cluster::with_membership(Membership::with_voters([1, 2, 3]), &[4], |cfg| {
        cfg.snapshot_chunk_bytes = 16;
    });
    c.isolate(4);
    c.elect(1);
    fill(&mut c, 1, "a", 4);
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddLearner, 4)).unwrap();
    c.stabilize();
    c.raft_mut(1).propose_checkpoint(ticket(1)).unwrap();
    fill(&mut c, 1, "b", 2);
    c.compact(1).unwrap();
    c.process(1);
    assert!(c.raft(1).log().floor_index() > 5, "the configuration entry was compacted away");
    assert_eq!(c.raft(1).snapshot_meta().unwrap().membership.learners, [4].into());
    c.heal();
    c.ticks(6);
    assert_eq!(c.raft(4).membership().learners, [4].into());
    assert!(!c.raft(4).promotable());
    assert_eq!(c.node(4).applied_strings(), c.node(1).applied_strings());
    c.raft_mut(1).propose_conf_change(conf_change(ConfChangeType::AddVoter, 4)).unwrap();
    c.stabilize();
    c.ticks(2);
    assert!(c.raft(4).promotable());
    c.assert_logs_match(1);
}

/// A snapshot transfer that spans many heartbeats (one network hop per tick) must not
/// multiply chunk streams. A heartbeat answer resends the current chunk (it may be lost),
/// so each heartbeat may add one duplicate chunk; but a duplicate's answer must not start a
/// second stream that lives for the rest of the transfer (and another one per heartbeat,
/// quadratic traffic).
#[test]
fn slow_snapshot_transfer_does_not_multiply_chunks() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 4);
    c.elect(1);
    lag_node_3_behind_a_checkpoint(&mut c, 10, 1);
    c.compact(1).unwrap();
    c.process(1);
    let image_len = c.nodes[&1].store.snapshot.as_ref().unwrap().data.len();
    let needed = image_len.div_ceil(4);
    c.heal();
    // One hop per tick: tick everyone, process, deliver what was queued before the tick.
    let mut ticks = 0;
    for _ in 0..(4 * needed) {
        for id in c.ids() {
            c.tick_node(id, 1);
        }
        ticks += 1;
        c.process_all();
        c.deliver_queued();
        if c.node(3).readies.iter().any(|r| r.snapshot.is_some()) {
            break;
        }
    }
    assert!(c.node(3).readies.iter().any(|r| r.snapshot.is_some()), "not installed");
    let sent = chunks(&c).len();
    let heartbeats = ticks / config(1).heartbeat_ticks as usize;
    assert!(
        sent <= needed + heartbeats + 1,
        "{sent} chunk messages for {needed} chunks over {heartbeats} heartbeats"
    );
}
