//! Conformance: log replication (Raft paper §5.3) — the Log Matching check, truncation of
//! conflicting suffixes, fast backtracking with the conflict hint, Leader Append-Only, and
//! flow control.

mod common;

use common::*;
use phalanx::raft::{ProgressState, Proposal, ProposalKind, Status};
use phalanx_proto::RaftMessage;
use phalanx_proto::raft_message::Body;

fn append_answers(rd: &phalanx::raft::Ready) -> Vec<(bool, u64)> {
    all_msgs(rd)
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::AppendResponse(r)) => Some((r.success, r.match_index)),
            _ => None,
        })
        .collect()
}

/// §5.3 consistency check: "If the follower does not find an entry in its log with the same
/// index and term [as prevLogIndex/prevLogTerm], then it refuses the new entries."
#[test]
fn log_matching_rejects_append_without_matching_prev() {
    let mut r = solo_with_log(2, &[1, 2, 3], 2, log_of_terms(&[1, 1]), 0, plain);
    // prev term differs.
    r.step(msg(1, 2, append(2, (2, 2), vec![entry(3, 2)], 0))).unwrap();
    assert_eq!(append_answers(&flush(&mut r)), vec![(false, 2)]);
    // prev past the end of the log.
    r.step(msg(1, 2, append(2, (3, 1), vec![entry(4, 2)], 0))).unwrap();
    assert_eq!(append_answers(&flush(&mut r)), vec![(false, 3)]);
    assert_eq!(terms(&r), vec![1, 1], "refused appends leave the log alone");
    // prev matches.
    r.step(msg(1, 2, append(2, (2, 1), vec![entry(3, 2)], 0))).unwrap();
    assert_eq!(append_answers(&flush(&mut r)), vec![(true, 3)]);
    assert_eq!(terms(&r), vec![1, 1, 2]);
}

/// §5.3 receiver rule 3: "If an existing entry conflicts with a new one (same index but
/// different terms), delete the existing entry and all that follow it" — and only then: a
/// stale (shorter) append whose entries all match must not truncate anything.
#[test]
fn log_matching_truncates_only_conflicting_suffix() {
    let mut r = solo_with_log(2, &[1, 2, 3], 2, log_of_terms(&[1, 1, 2, 2]), 0, plain);
    r.step(msg(1, 2, append(3, (2, 1), vec![entry(3, 3)], 0))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(terms(&r), vec![1, 1, 3]);
    assert_eq!(rd.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(3, 3)]);

    let mut r = solo_with_log(2, &[1, 2, 3], 1, log_of_terms(&[1, 1, 1]), 0, plain);
    r.step(msg(1, 2, append(1, (0, 0), vec![entry(1, 1)], 0))).unwrap();
    let rd = flush(&mut r);
    assert_eq!(terms(&r), vec![1, 1, 1], "a matching, shorter append must not truncate");
    assert!(rd.entries.is_empty());
    assert_eq!(append_answers(&rd), vec![(true, 1)], "acknowledges only what the append covered");
}

/// §5.3 receiver rule 5: "If leaderCommit > commitIndex, set commitIndex =
/// min(leaderCommit, index of last new entry)" — a follower never commits entries of its
/// own that the append did not vouch for.
#[test]
fn follower_commit_is_bounded_by_last_new_entry() {
    let mut r = solo_with_log(2, &[1, 2, 3], 2, log_of_terms(&[1, 1, 2, 2]), 0, plain);
    r.step(msg(1, 2, append(3, (1, 1), vec![], 4))).unwrap();
    assert_eq!(r.log().committed(), 1, "entries 2..4 may differ from the leader's");
    r.step(msg(1, 2, append(3, (2, 1), vec![entry(3, 3)], 4))).unwrap();
    assert_eq!(r.log().committed(), 3);
    assert_eq!(terms(&r), vec![1, 1, 3]);
}

/// §5.3 Log Matching property across a cluster: after replication every log is identical
/// to the leader's, entry by entry.
#[test]
fn log_matching_after_replication() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], plain);
    c.elect(1);
    for i in 0..20 {
        c.propose(1, &format!("v{i}")).unwrap();
    }
    c.stabilize();
    c.assert_logs_match(1);
    for id in c.ids() {
        assert_eq!(c.raft(id).log().committed(), 21, "node {id}");
        assert_eq!(c.node(id).applied_strings().len(), 20, "node {id}");
    }
}

/// The followers of Raft paper Figure 7 (leader's log terms 1,1,1,4,4,5,5,6,6,6, elected in
/// term 8). With the conflict hint the leader finds each follower's match point in at most
/// one rejected round — naive decrement would take up to 7 rounds (follower f) — and every
/// log ends up identical to the leader's.
#[test]
fn backtracking_figure7_converges_in_one_round_per_follower() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(u64, &[u64]); 6] = [
        (2, &[1, 1, 1, 4, 4, 5, 5, 6, 6]),          // (a) missing one entry
        (3, &[1, 1, 1, 4]),                         // (b) missing many
        (4, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),    // (c) one extra uncommitted entry
        (5, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]), // (d) extra entries of term 7
        (6, &[1, 1, 1, 4, 4, 4, 4]),                // (e) extra entries of term 4
        (7, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),    // (f) leader of terms 2 and 3
    ];
    let voters = [1, 2, 3, 4, 5, 6, 7];
    let mut c = Cluster::empty();
    c.add_with_log(1, &voters, 7, log_of_terms(&leader_log), plain);
    for (id, log) in followers {
        let term = *log.iter().max().unwrap();
        c.add_with_log(id, &voters, term, log_of_terms(log), plain);
    }
    c.elect(1);
    assert_eq!(c.raft(1).term(), 8);
    // Refused by (c) and (d), whose logs are more up-to-date (§5.4.1); granted by the rest.
    let mut want = leader_log.to_vec();
    want.push(8); // the new leader's no-op
    assert_eq!(terms(c.raft(1)), want, "Leader Append-Only: the leader's log only grew");
    c.assert_logs_match(1);
    for (id, _) in followers {
        assert!(c.rejections_from(id) <= 1, "follower {id} needed {} rounds", c.rejections_from(id));
    }
    assert_eq!(c.rejections_from(2), 1, "(a)");
    assert_eq!(c.rejections_from(7), 1, "(f): 7 rounds without the hint");
    let total: usize = followers.iter().map(|(id, _)| c.rejections_from(*id)).sum();
    assert_eq!(c.raft(1).stats().log_mismatches, total as u64);
    assert_eq!(c.raft(1).log().committed(), 11);
}

/// §5.3 optimization ("the follower can include the term of the conflicting entry and the
/// first index it stores for that term"): backtracking takes O(terms) rounds, not
/// O(entries) — 500 conflicting entries of one term cost one round, and a suffix with two
/// conflicting terms costs at most two.
#[test]
fn backtracking_rounds_bounded_by_conflicting_terms() {
    // 500 conflicting entries, one term.
    let mut leader = vec![1];
    leader.extend(std::iter::repeat_n(3, 500));
    let mut follower = vec![1];
    follower.extend(std::iter::repeat_n(2, 500));
    let mut c = Cluster::empty();
    c.add_with_log(1, &[1, 2, 3], 3, log_of_terms(&leader), plain);
    c.add_with_log(2, &[1, 2, 3], 2, log_of_terms(&follower), plain);
    c.add_with_log(3, &[1, 2, 3], 3, log_of_terms(&leader), plain);
    c.elect(1);
    c.assert_logs_match(1);
    assert_eq!(c.rejections_from(2), 1, "one round for one conflicting term");

    // Alternating terms: leader 1,3,3,5,5 vs follower 1,2,2,4,4,4,4 (conflicting terms 2, 4).
    let mut c = Cluster::empty();
    c.add_with_log(1, &[1, 2, 3], 5, log_of_terms(&[1, 3, 3, 5, 5]), plain);
    c.add_with_log(2, &[1, 2, 3], 4, log_of_terms(&[1, 2, 2, 4, 4, 4, 4]), plain);
    c.add_with_log(3, &[1, 2, 3], 5, log_of_terms(&[1, 3, 3, 5, 5]), plain);
    c.elect(1);
    c.assert_logs_match(1);
    let rounds = c.rejections_from(2);
    assert!((1..=2).contains(&rounds), "{rounds} rounds; naive decrement needs 4");
}

/// §5.3 Leader Append-Only: "a leader never overwrites or deletes entries in its log; it
/// only appends new entries". An append from a would-be second leader of the same term is
/// refused and counted, and the leader's log is untouched.
#[test]
fn leader_append_only() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.propose(1, "a").unwrap();
    c.stabilize();
    let before = terms(c.raft(1));
    let t = c.raft(1).term();
    let bogus = append(t, (1, t), vec![entry(2, t), entry(3, t)], 0);
    let err = c.raft_mut(1).step(msg(2, 1, bogus)).unwrap_err();
    assert_eq!(err, Status::LeaderAlreadyElected);
    assert_eq!(c.raft(1).stats().rejected_messages, 1);
    assert_eq!(terms(c.raft(1)), before);
    assert!(c.raft(1).is_leader());
    // Replicating to followers with longer divergent logs never shortens the leader's log.
    for _ in 0..5 {
        c.propose(1, "b").unwrap();
    }
    c.stabilize();
    let after = terms(c.raft(1));
    assert_eq!(&after[..before.len()], &before[..]);
}

/// Pipelining is bounded: a follower in the replicate state has at most
/// `max_inflight_appends` appends outstanding, and the window reopens as they are
/// acknowledged.
#[test]
fn replication_inflight_window_is_bounded() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        plain(cfg);
        cfg.max_inflight_appends = 2;
        cfg.max_entries_per_append = 1;
    });
    c.elect(1);
    assert_eq!(c.raft(1).progress(2).unwrap().state, ProgressState::Replicate);
    for i in 0..10 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.process(1);
    let to2 = c.net.iter().filter(|m| m.to == 2 && kind(m) == "Append").count();
    assert_eq!(to2, 2, "window of 2 appends");
    assert_eq!(c.raft(1).progress(2).unwrap().inflight.len(), 2);
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), 11);
    c.assert_logs_match(1);
}

/// §5.3: "If followers crash or run slowly, or if network packets are lost, the leader
/// retries AppendEntries indefinitely" — a follower cut off during proposals catches up
/// through heartbeat-driven retries once the link heals.
#[test]
fn lagging_follower_catches_up_after_heal() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    c.cut_pair(1, 3);
    for i in 0..30 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), 31);
    assert_eq!(c.raft(3).log().last_index(), 1);
    assert_eq!(c.raft(1).follower_lag(3), Some(30));
    c.heal();
    c.ticks(config(1).heartbeat_ticks);
    c.assert_logs_match(1);
    assert_eq!(c.raft(3).log().committed(), 31);
    assert_eq!(c.raft(1).follower_lag(3), Some(0));
}

/// Duplicated and reordered messages (the network may do both) are harmless: delivering
/// every message twice, in reverse order, still leaves identical logs and commit indexes.
#[test]
fn duplicated_and_reordered_messages_are_harmless() {
    let mut c = Cluster::new(&[1, 2, 3], defaults);
    c.elect(1);
    for round in 0..20 {
        if round % 3 == 0 {
            c.propose(1, &format!("v{round}")).unwrap();
        }
        c.process_all();
        let mut batch: Vec<_> = c.net.drain(..).collect();
        batch.reverse();
        let dup = batch.clone();
        for m in batch.into_iter().chain(dup) {
            c.deliver(m);
        }
        c.tick_all();
    }
    c.ticks(4);
    c.assert_logs_match(1);
    for id in c.ids() {
        assert_eq!(c.node(id).applied_strings().len(), 7, "node {id}");
        assert_eq!(c.raft(id).log().committed(), c.raft(1).log().committed());
    }
}

/// Limits on everything (DESIGN): an append carries at most `max_entries_per_append`
/// entries and about `max_bytes_per_append` bytes, but always at least one entry, so
/// replication progresses whatever the limits.
#[test]
fn append_batches_respect_limits_but_always_progress() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.max_entries_per_append = 3;
        cfg.max_bytes_per_append = 1;
    });
    c.elect(1);
    for i in 0..10 {
        c.propose(1, &format!("payload-{i}")).unwrap();
    }
    c.stabilize();
    c.assert_logs_match(1);
    for m in &c.trace {
        if let Some(Body::AppendRequest(a)) = &m.body {
            assert!(a.entries.len() <= 1, "byte limit 1: one entry per append, got {}", a.entries.len());
        }
    }
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.max_entries_per_append = 3);
    c.elect(1);
    c.isolate(3);
    for i in 0..10 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.stabilize();
    c.heal();
    c.ticks(4);
    c.assert_logs_match(1);
    assert!(
        c.trace.iter().all(|m| !matches!(&m.body, Some(Body::AppendRequest(a)) if a.entries.len() > 3)),
        "entry limit 3"
    );
}

/// Back-pressure is explicit (DESIGN): a leader with `max_uncommitted_entries` uncommitted
/// entries answers `Busy`; proposals to a non-leader get `NodeIsNotLeader`; an empty
/// proposal is `InvalidRequest`.
#[test]
fn proposal_admission() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.max_uncommitted_entries = 3);
    c.elect(1);
    assert_eq!(c.propose(2, "x"), Err(Status::NodeIsNotLeader));
    let mut empty = proposal("x");
    empty.payloads.clear();
    assert_eq!(c.raft_mut(1).propose(empty), Err(Status::InvalidRequest));
    c.isolate(1);
    for i in 0..3 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    assert_eq!(c.propose(1, "one too many"), Err(Status::Busy));
    c.heal();
    c.ticks(2);
    c.propose(1, "accepted again").unwrap();
}

/// A follower catching up over a slow network (one hop per tick, many heartbeats during the
/// catch-up) receives each entry about once: heartbeat-driven retries add at most one
/// append per heartbeat, they do not start extra append streams.
#[test]
fn slow_catch_up_does_not_multiply_appends() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.max_entries_per_append = 2;
        cfg.max_inflight_appends = 1;
    });
    c.elect(1);
    c.isolate(3);
    for i in 0..40 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.stabilize();
    let start = c.trace.len();
    c.heal();
    let mut ticks = 0;
    for _ in 0..400 {
        for id in c.ids() {
            c.tick_node(id, 1);
        }
        ticks += 1;
        c.process_all();
        c.deliver_queued();
        if c.raft(3).log().last_index() == c.raft(1).log().last_index() {
            break;
        }
    }
    assert_eq!(c.raft(3).log().last_index(), c.raft(1).log().last_index(), "never caught up");
    let carried: usize = c.trace[start..]
        .iter()
        .filter(|m| m.to == 3)
        .filter_map(|m| match &m.body {
            Some(Body::AppendRequest(a)) => Some(a.entries.len()),
            _ => None,
        })
        .sum();
    let heartbeats = ticks / config(1).heartbeat_ticks as usize;
    assert!(
        carried <= 41 + 2 * heartbeats,
        "{carried} entries sent for 41 missing over {heartbeats} heartbeats"
    );
}

/// §8 (client interaction), as etcd does with MsgProp: a follower passes a proposal to the
/// leader it knows, which appends it like its own; it commits and reaches every state
/// machine. Without a known leader the follower refuses; malformed forwards are rejected and
/// counted; a forward that reaches a non-leader is dropped (the proposer retries).
#[test]
fn forwarded_proposal_is_appended_by_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    let before = c.raft(1).log().last_index();
    let out = c.raft_mut(2).propose_or_forward(proposal("via-follower")).unwrap();
    assert!(out.is_none(), "a follower forwards, it does not append");
    assert_eq!(c.raft(2).log().last_index(), before);
    c.stabilize();
    let last = c.raft(1).log().last_index();
    assert_eq!(last, before + 1, "the leader appended the forwarded entry");
    for id in [1, 2, 3] {
        let e = c.raft(id).log().entry(last).expect("replicated").clone();
        assert_eq!(&e.payload[..], b"via-follower");
        assert!(c.raft(id).log().committed() >= last);
    }
    // On the leader it is an ordinary proposal.
    assert!(c.raft_mut(1).propose_or_forward(proposal("local")).unwrap().is_some());

    // No known leader: refused.
    let mut lone = solo_with_log(2, &[1, 2, 3], 1, vec![], 0, plain);
    assert_eq!(lone.propose_or_forward(proposal("x")).unwrap_err(), Status::NodeIsNotLeader);

    // Malformed forwards are bad peer input.
    let rejected = c.raft(1).stats().rejected_messages;
    let no_ticket = phalanx_proto::ForwardedProposal {
        kind: phalanx_proto::EntryKind::Normal as i32,
        ..Default::default()
    };
    assert!(c.raft_mut(1).step(msg(2, 1, Body::ForwardedProposal(Box::new(no_ticket)))).is_err());
    let bad_kind = phalanx_proto::ForwardedProposal {
        kind: phalanx_proto::EntryKind::ConfChange as i32,
        payloads: vec![bytes::Bytes::from_static(b"x")],
        ticket: Some(Default::default()),
        ..Default::default()
    };
    assert!(c.raft_mut(1).step(msg(2, 1, Body::ForwardedProposal(Box::new(bad_kind)))).is_err());
    assert_eq!(c.raft(1).stats().rejected_messages, rejected + 2);
    // A forward that reaches a follower is refused, not appended.
    let fwd = phalanx_proto::ForwardedProposal {
        kind: phalanx_proto::EntryKind::Normal as i32,
        payloads: vec![bytes::Bytes::from_static(b"late")],
        ticket: Some(Default::default()),
        ..Default::default()
    };
    let last = c.raft(3).log().last_index();
    assert_eq!(
        c.raft_mut(3).step(msg(2, 3, Body::ForwardedProposal(Box::new(fwd)))),
        Err(Status::NodeIsNotLeader)
    );
    assert_eq!(c.raft(3).log().last_index(), last);
}

/// A system command nobody waits on (a node's reports, repeated every membership round until
/// it sees them applied) is not appended again while an identical copy is the last system
/// entry of the leader's uncommitted tail, whether the leader proposes it or a follower
/// forwards it: a reporter lagging behind the system partition's log filled the uncommitted
/// window with copies of one report, and the clients' writes were refused (simulator seeds
/// 15877, 18214, 21641). A repeat is appended as before once another system command follows
/// the copy (one node's announcements A1, A2, A1 do not end where A1, A2 does), once the copy
/// is committed, and when a caller waits on it (`propose`: it waits on its own entry).
#[test]
fn a_repeated_system_command_lands_on_its_uncommitted_copy() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        plain(cfg);
        cfg.group = 0;
    });
    c.elect(1);
    c.stabilize();
    let system = |payload: &str, t: u64| Proposal {
        log_type: "_RaftSystem".into(),
        ..proposal_n(ProposalKind::System, &[payload], t)
    };
    let forwarded = |payload: &'static str, t: u64| {
        let f = phalanx_proto::ForwardedProposal {
            term: 1,
            kind: phalanx_proto::EntryKind::System as i32,
            log_type: bytes::Bytes::from_static(b"_RaftSystem"),
            payloads: vec![bytes::Bytes::from_static(payload.as_bytes())],
            ticket: Some(ticket(t).into()),
        };
        RaftMessage { group: 0, ..msg(2, 1, Body::ForwardedProposal(Box::new(f))) }
    };
    // The followers are cut off: nothing commits, as when the commit waits on a lagging one.
    c.isolate(2);
    c.isolate(3);
    let committed = c.raft(1).log().committed();
    let at = c.raft_mut(1).propose_or_forward(system("report", 1)).unwrap().expect("leads");
    let last = c.raft(1).log().last_index();
    assert_eq!(at.last_index, last);
    assert_eq!(c.raft(1).log().committed(), committed, "uncommitted");
    assert_eq!(c.raft_mut(1).propose_or_forward(system("report", 2)).unwrap(), Some(at), "lands on the copy");
    c.raft_mut(1).step(forwarded("report", 3)).unwrap();
    // Non-system entries between do not matter.
    c.propose(1, "client write").unwrap();
    assert_eq!(c.raft_mut(1).propose_or_forward(system("report", 4)).unwrap(), Some(at));
    c.raft_mut(1).step(forwarded("report", 5)).unwrap();
    assert_eq!(c.raft(1).log().last_index(), last + 1, "one copy of the report, one client write");

    // Another system command after the copy: the repeat is appended.
    let other = c.raft_mut(1).propose_or_forward(system("other", 6)).unwrap().expect("leads");
    assert_eq!(other.last_index, last + 2);
    c.raft_mut(1).step(forwarded("report", 7)).unwrap();
    assert_eq!(c.raft(1).log().last_index(), last + 3);
    // A proposal its caller waits on is appended whatever the tail holds.
    let answered = c.raft_mut(1).propose(system("report", 8)).unwrap();
    assert_eq!(answered.last_index, last + 4);

    // Committed, a copy is not looked at: the repeat is appended (its proposer will see it).
    c.heal();
    c.stabilize();
    assert_eq!(c.raft(1).log().committed(), last + 4);
    let again = c.raft_mut(1).propose_or_forward(system("report", 9)).unwrap().expect("leads");
    assert_eq!(again.last_index, last + 5);
    c.stabilize();
    for id in [1, 2, 3] {
        let payloads: Vec<Vec<u8>> = (last..=last + 5)
            .map(|i| c.raft(id).log().entry(i).expect("replicated").payload.to_vec())
            .collect();
        let expected: [&[u8]; 6] = [b"report", b"client write", b"other", b"report", b"report", b"report"];
        assert_eq!(payloads, expected.map(<[u8]>::to_vec), "node {id}");
    }
}

/// Node 3 of a 3-node cluster misses `entries` proposals while the leader keeps only a two-entry
/// log cache and sends `per_append` entries per append; then it rejoins and catches up
/// (checked). Returns the storage reads the leader asked for while it caught up.
fn lagging_follower_catches_up(per_append: usize, entries: usize) -> usize {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        plain(cfg);
        cfg.log_cache_entries = 2;
        cfg.max_entries_per_append = per_append;
    });
    c.elect(1);
    c.isolate(3);
    for i in 0..entries {
        c.propose(1, &format!("e{i}")).expect("the leader takes the proposal");
        c.stabilize();
    }
    let last = c.raft(1).log().last_index();
    assert!(
        c.raft(1).log().cached_len() <= 3,
        "leader keeps only a short tail: {}",
        c.raft(1).log().cached_len()
    );
    assert!(c.raft(1).log().cache_start() > 10);
    assert_eq!(c.raft(1).log().term(2), Some(c.raft(1).term()), "terms of trimmed entries are still known");
    let fetches = |c: &Cluster| c.node(1).readies.iter().map(|r| r.fetches.len()).sum::<usize>();
    let before = fetches(&c);
    c.heal();
    c.stabilize();
    for _ in 0..20 {
        c.tick_all();
        c.stabilize();
    }
    assert_eq!(c.raft(3).log().last_index(), last, "the lagging follower caught up through fetches");
    assert_eq!(c.node(3).applied_strings(), c.node(1).applied_strings());
    fetches(&c) - before
}

/// Entries applied and durable leave memory (the log keeps their terms), so a group's memory
/// is bounded; a follower that needs them gets them read back from storage (`fetches`)
/// and catches up like any other — the log matching check still anchors every batch.
#[test]
fn trimmed_entries_are_fetched_from_storage_for_a_lagging_follower() {
    let reads = lagging_follower_catches_up(3, 30);
    assert!(reads > 0, "entries came back from storage");
}

/// A follower far behind the log cache catches up with few storage reads: one read fetches
/// several appends' worth of entries (within one append's bytes), sent as separate appends
/// while the pipelining window allows. One read per append made a catch-up with small appends
/// wait for a read per entry (38 reads here).
#[test]
fn catching_up_reads_several_appends_per_fetch() {
    let reads = lagging_follower_catches_up(1, 40);
    assert!((1..=40 / 8 + 3).contains(&reads), "{reads} storage reads to catch up 40 one-entry appends");
}
