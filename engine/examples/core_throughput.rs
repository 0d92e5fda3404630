//! The pure core's own cost, without IO, threads or a network: three nodes' `MultiRaft`s in
//! one thread, messages delivered at once, every Ready "persisted" instantly. Prints
//! committed entries per second of CPU — the ceiling the runtime works under.
//!
//! `cargo run --release -p phalanx --example core_throughput -- [groups] [entries_per_round] [rounds]`
//! (deterministic: run it under `valgrind --tool=callgrind` to count instructions per entry).

use std::time::Instant;

use bytes::Bytes;
use phalanx::hlc::Ticket;
use phalanx::raft::{Config, Membership, MultiRaft, Proposal, ProposalKind, RestoreState};
use phalanx_proto::RaftMessage;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let groups = args.first().copied().unwrap_or(64);
    let per_round = args.get(1).copied().unwrap_or(4) as usize;
    let rounds = args.get(2).copied().unwrap_or(2000);
    let nodes: Vec<u64> = vec![1, 2, 3];
    let mut multis: Vec<MultiRaft> = nodes.iter().map(|_| MultiRaft::new()).collect();
    for (i, &id) in nodes.iter().enumerate() {
        for g in 1..=groups {
            let mut cfg = Config::new(id, g);
            cfg.seed = g;
            cfg.log_cache_entries = 64;
            let restore = RestoreState {
                initial_membership: Membership::with_voters(nodes.clone()),
                ..Default::default()
            };
            multis[i].add_group(cfg, restore).expect("valid group");
        }
    }
    // Node 1 leads every group.
    for g in 1..=groups {
        multis[0].update(g, |r| r.campaign());
    }
    let mut net: Vec<RaftMessage> = Vec::new();
    let pump = |multis: &mut Vec<MultiRaft>, net: &mut Vec<RaftMessage>| -> u64 {
        let mut committed = 0;
        for _ in 0..64 {
            let mut any = false;
            for m in std::mem::take(net) {
                let _ = multis[(m.to - 1) as usize].step(m);
                any = true;
            }
            for multi in multis.iter_mut() {
                while let Some(mr) = multi.ready() {
                    any = true;
                    for (_, mut r) in mr.groups {
                        net.append(&mut r.messages);
                        net.append(&mut r.persisted_messages);
                        committed += r.committed_entries.len() as u64;
                    }
                    multi.advance(mr.number);
                }
            }
            if !any {
                break;
            }
        }
        committed
    };
    while multis[0].group_ids().any(|g| !multis[0].group(g).is_some_and(|r| r.is_leader())) {
        pump(&mut multis, &mut net);
        for multi in multis.iter_mut() {
            multi.tick();
        }
    }
    let payload = Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let mut total = 0;
    let mut t = 0u64;
    for _ in 0..rounds {
        for g in 1..=groups {
            t += 1;
            let p = Proposal {
                kind: ProposalKind::AutoCommit,
                log_type: "bench".into(),
                payloads: vec![payload.clone(); per_round],
                ticket: Ticket { physical_ms: t, logical: 0, node_id: 1 },
            };
            let _ = multis[0].update(g, |r| r.propose(p));
        }
        total += pump(&mut multis, &mut net);
    }
    let secs = start.elapsed().as_secs_f64();
    // Each entry commits on three nodes; count it once.
    let entries = total / 3;
    println!(
        "core: {groups} groups, {per_round} entries per proposal, {rounds} rounds: {entries} entries committed in {secs:.2}s = {:.0} entries/s (one thread, three nodes)",
        entries as f64 / secs
    );
}
