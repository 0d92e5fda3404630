//! The simulated clients: proposals (auto-commit and two-step, with their commit or
//! rollback), checkpoints and compaction, membership changes, leadership transfers and
//! step-downs, heartbeat suspension, linearizable reads, and the post-heal liveness probes.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use phalanx::hlc::Ticket;
use phalanx::raft::{GroupId, NodeId, Proposal, ProposalKind, SeededRng, Snapshot};
use phalanx_proto::{ConfChange, ConfChangeType, LogEntry};

use super::checker::{Checker, entry_id};
use super::node::SimNode;

#[derive(Clone, Debug)]
enum What {
    /// An auto-commit write (or a liveness probe).
    Write { probe: bool },
    /// The first step of a two-step proposal.
    TwoStep,
    /// A commit (true) or rollback (false) marker for the ticket's entries.
    Marker { commit: bool, ids: Vec<u64> },
    /// A checkpoint.
    Checkpoint,
}

#[derive(Clone, Debug)]
struct Pending {
    term: u64,
    ticket: Ticket,
    ids: Vec<u64>,
    what: What,
}

#[derive(Clone, Debug)]
struct Resolution {
    group: GroupId,
    ticket: Ticket,
    due: u64,
    commit: bool,
    tries: u32,
    ids: Vec<u64>,
}

/// Client state of one run.
#[derive(Default)]
pub struct Workload {
    next_id: u64,
    pending: HashMap<(NodeId, GroupId, u64), Pending>,
    resolutions: Vec<Resolution>,
    reads: HashMap<(NodeId, GroupId, u64), u64>,
    leaders: HashSet<(GroupId, u64)>,
    /// Acknowledged writes.
    pub acked: u64,
    /// Distinct (group, term) leaders seen.
    pub leaders_seen: u64,
    /// When faults stopped.
    pub heal_at: Option<u64>,
    live: BTreeSet<GroupId>,
}

/// Tries to resolve a two-step proposal at most this many times.
const MAX_RESOLUTION_TRIES: u32 = 50;
/// Ticks between liveness probes of a group.
const PROBE_EVERY: u64 = 20;

impl Workload {
    fn ticket(&mut self, node: NodeId) -> Ticket {
        self.next_id += 1;
        Ticket { physical_ms: self.next_id, logical: 0, node_id: node }
    }

    /// Notes a leader (for the report).
    pub fn note_leader(&mut self, g: GroupId, term: u64) {
        if self.leaders.insert((g, term)) {
            self.leaders_seen += 1;
        }
    }

    /// One tick of client activity. `calm` disables membership changes and leadership
    /// moves (after the heal).
    pub fn run(
        &mut self,
        nodes: &mut [SimNode],
        groups: &[GroupId],
        checker: &mut Checker,
        rng: &mut SeededRng,
        now: u64,
        calm: bool,
    ) {
        let g = groups[rng.range(0, groups.len() as u64) as usize];
        // After the heal the load drops, so a group whose configuration has little
        // throughput (one append in flight of one entry) drains its backlog: liveness is
        // about making progress, not about keeping up with an overload.
        let roll = if calm { rng.range(0, 1000) + rng.range(0, 2) * 200 } else { rng.range(0, 1000) };
        match roll {
            0..300 => self.write(nodes, g, rng, false),
            300..330 => self.two_step(nodes, g, rng),
            330..340 => self.checkpoint(nodes, g, rng),
            340..400 => self.read(nodes, g, rng, checker),
            400..405 if !calm => self.conf_change(nodes, g, rng),
            405..410 if !calm => self.transfer(nodes, g, rng),
            410..412 if !calm => self.with_leader(nodes, g, rng, |grp| {
                let _ = grp.step_down();
            }),
            412..415 if !calm => self.with_leader(nodes, g, rng, |grp| {
                let _ = grp.suspend_heartbeats();
            }),
            415..430 => self.with_leader(nodes, g, rng, |grp| {
                let _ = grp.resume_heartbeats();
            }),
            _ => {}
        }
        self.resolve_two_step(nodes, rng, now);
        self.compact(nodes, groups, rng);
        if let Some(h) = self.heal_at
            && (now - h) % PROBE_EVERY == 0
        {
            for &g in groups {
                if !self.live.contains(&g) {
                    self.write(nodes, g, rng, true);
                }
            }
        }
    }

    fn leader_of(nodes: &[SimNode], g: GroupId, rng: &mut SeededRng) -> Option<usize> {
        let leaders: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up && n.multi.group(g).is_some_and(|grp| grp.is_leader()))
            .map(|(i, _)| i)
            .collect();
        if leaders.is_empty() {
            return None;
        }
        Some(leaders[rng.range(0, leaders.len() as u64) as usize])
    }

    fn with_leader(
        &mut self,
        nodes: &mut [SimNode],
        g: GroupId,
        rng: &mut SeededRng,
        f: impl FnOnce(&mut phalanx::raft::RaftGroup),
    ) {
        if let Some(i) = Self::leader_of(nodes, g, rng) {
            nodes[i].multi.update(g, f);
        }
    }

    fn write(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng, probe: bool) {
        if !probe && rng.range(0, 10) == 0 {
            // Now and then through a random node: a follower forwards it to its leader (fire
            // and forget, so it is not tracked as acknowledged; the safety checks still see
            // every entry it produces).
            let i = rng.range(0, nodes.len() as u64) as usize;
            if nodes[i].up {
                let ticket = self.ticket(nodes[i].id);
                let payloads = vec![Bytes::from(format!("f{}", ticket.physical_ms).into_bytes())];
                let p = Proposal { kind: ProposalKind::AutoCommit, log_type: "sim".into(), payloads, ticket };
                nodes[i].multi.update(g, |grp| {
                    let _ = grp.propose_or_forward(p);
                });
            }
            return;
        }
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let node = nodes[i].id;
        let ticket = self.ticket(node);
        let n = rng.range(1, 4);
        let payloads: Vec<Bytes> =
            (0..n).map(|k| Bytes::from(format!("w{}-{k}", ticket.physical_ms).into_bytes())).collect();
        let p = Proposal { kind: ProposalKind::AutoCommit, log_type: "sim".into(), payloads, ticket };
        self.propose(nodes, i, g, p, What::Write { probe });
    }

    fn two_step(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let ticket = self.ticket(nodes[i].id);
        let n = rng.range(1, 3);
        let payloads: Vec<Bytes> =
            (0..n).map(|k| Bytes::from(format!("t{}-{k}", ticket.physical_ms).into_bytes())).collect();
        let p = Proposal { kind: ProposalKind::TwoStep, log_type: "sim2".into(), payloads, ticket };
        self.propose(nodes, i, g, p, What::TwoStep);
    }

    fn propose(&mut self, nodes: &mut [SimNode], i: usize, g: GroupId, p: Proposal, what: What) {
        let ticket = p.ticket;
        let kind = p.kind;
        let log_type = p.log_type.clone();
        let payloads = p.payloads.clone();
        let node = nodes[i].id;
        let Some(Ok(at)) = nodes[i].multi.update(g, |grp| grp.propose(p)) else { return };
        let entry_kind = match kind {
            ProposalKind::TwoStep => phalanx_proto::EntryKind::Proposed,
            _ => phalanx_proto::EntryKind::Normal,
        };
        let ids = payloads
            .into_iter()
            .enumerate()
            .map(|(k, payload)| {
                entry_id(&LogEntry {
                    term: at.term,
                    index: at.first_index + k as u64,
                    kind: entry_kind as i32,
                    log_type: log_type.clone(),
                    payload,
                    ticket: Some(ticket.into()),
                })
            })
            .collect();
        self.pending.insert((node, g, at.last_index), Pending { term: at.term, ticket, ids, what });
    }

    fn checkpoint(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let ticket = self.ticket(nodes[i].id);
        let node = nodes[i].id;
        if let Some(Ok(at)) = nodes[i].multi.update(g, |grp| grp.propose_checkpoint(ticket)) {
            self.pending.insert(
                (node, g, at.last_index),
                Pending { term: at.term, ticket, ids: vec![], what: What::Checkpoint },
            );
        }
    }

    fn read(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng, checker: &Checker) {
        let i = rng.range(0, nodes.len() as u64) as usize;
        if !nodes[i].up {
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        if let Some(Ok(())) = nodes[i].multi.update(g, |grp| grp.read_index(id)) {
            self.reads.insert((nodes[i].id, g, id), checker.acked_floor(g));
        }
    }

    /// Checks the read answers a node received.
    pub fn check_reads(&mut self, node: &mut SimNode, checker: &mut Checker) {
        for (g, rs) in node.reads.drain(..) {
            if let Some(floor) = self.reads.remove(&(node.id, g, rs.request_id))
                && let Ok(index) = rs.result
            {
                checker.on_read(g, index, floor);
            }
        }
    }

    fn conf_change(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let all: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let target = all[rng.range(0, all.len() as u64) as usize];
        let change = match rng.range(0, 3) {
            0 => ConfChangeType::AddLearner,
            1 => ConfChangeType::AddVoter,
            _ => ConfChangeType::Remove,
        };
        // Like an operator (and as the roster will, issue 13), do not make a voter of a member
        // far behind where every majority needs it (a group of two): it would hold every
        // commit until it caught up, an append round trip per `max_entries_per_append`
        // entries. Larger groups commit without it meanwhile.
        if change == ConfChangeType::AddVoter
            && let Some(grp) = nodes[i].multi.group(g)
            && !grp.membership().voters.contains(&target)
            && grp.membership().voters.len() + 1 < 3
            && grp.follower_lag(target).is_none_or(|lag| lag > grp.config().max_uncommitted_entries as u64)
        {
            return;
        }
        // A replica that lost its disk does not vote until it caught up: like an operator,
        // do not shrink a group below 3 voters while one recovers (it could then elect no
        // leader to catch up from).
        if nodes.iter().any(SimNode::has_lost_state)
            && let Some(grp) = nodes[i].multi.group(g)
        {
            let mut voters = grp.membership().voters.clone();
            match change {
                ConfChangeType::AddVoter => {
                    voters.insert(target);
                }
                _ => {
                    voters.remove(&target);
                }
            }
            if voters.len() < 3 {
                return;
            }
        }
        let cc = ConfChange { change: change as i32, node_id: target };
        nodes[i].multi.update(g, |grp| {
            let _ = grp.propose_conf_change(cc);
        });
    }

    fn transfer(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let target = rng.range(1, nodes.len() as u64 + 1);
        nodes[i].multi.update(g, |grp| {
            let _ = grp.transfer_leadership(target);
        });
    }

    fn resolve_two_step(&mut self, nodes: &mut [SimNode], rng: &mut SeededRng, now: u64) {
        let mut keep = Vec::new();
        for mut r in std::mem::take(&mut self.resolutions) {
            if r.due > now {
                keep.push(r);
                continue;
            }
            let Some(i) = Self::leader_of(nodes, r.group, rng) else {
                r.due = now + 5;
                keep.push(r);
                continue;
            };
            let node = nodes[i].id;
            let ticket = r.ticket;
            let res = nodes[i].multi.update(r.group, |grp| {
                if r.commit { grp.commit_logs(ticket) } else { grp.rollback_logs(ticket) }
            });
            match res {
                Some(Ok(at)) => {
                    let what = What::Marker { commit: r.commit, ids: r.ids.clone() };
                    self.pending.insert(
                        (node, r.group, at.last_index),
                        Pending { term: at.term, ticket, ids: vec![], what },
                    );
                }
                _ if r.tries < MAX_RESOLUTION_TRIES => {
                    r.tries += 1;
                    r.due = now + 5;
                    keep.push(r);
                }
                _ => {}
            }
        }
        self.resolutions = keep;
    }

    fn compact(&mut self, nodes: &mut [SimNode], groups: &[GroupId], rng: &mut SeededRng) {
        for n in nodes.iter_mut() {
            if !n.up || !n.pending.is_empty() {
                continue;
            }
            for &g in groups {
                let Some(grp) = n.multi.group(g) else { continue };
                if grp.last_checkpoint() <= grp.log().floor_index() + 1 || rng.range(0, 100) >= 10 {
                    continue;
                }
                let Some(sm) = n.sms.get(&g) else { continue };
                let data = sm.encode();
                let snap = n.multi.update(g, |grp| match grp.compact(data.clone()) {
                    Ok(_) => grp.snapshot_meta().cloned(),
                    Err(_) => None,
                });
                if let Some(Some(meta)) = snap {
                    n.local_snapshots.insert(g, Snapshot { meta, data });
                }
            }
        }
    }

    /// A committed entry was applied on `node`: acknowledge the proposal it completes.
    pub fn on_committed(&mut self, node: NodeId, g: GroupId, e: &LogEntry, checker: &mut Checker) {
        let Some(p) = self.pending.remove(&(node, g, e.index)) else { return };
        if p.term != e.term {
            return; // overwritten by another leader: the proposal failed
        }
        match p.what {
            What::Write { probe } => {
                self.acked += 1;
                checker.on_ack(g, p.ticket, &p.ids, e.index);
                if probe && self.heal_at.is_some() {
                    self.live.insert(g);
                }
            }
            What::TwoStep => {
                let commit = self.next_id % 10 < 7;
                self.next_id += 1;
                self.resolutions.push(Resolution {
                    group: g,
                    ticket: p.ticket,
                    due: 0,
                    commit,
                    tries: 0,
                    ids: p.ids,
                });
            }
            What::Marker { commit, ids } => {
                if commit {
                    self.acked += 1;
                    checker.on_ack(g, p.ticket, &ids, e.index);
                }
            }
            What::Checkpoint => {}
        }
    }

    /// Forgets the in-flight requests of a crashed node (its clients lost the connection).
    pub fn forget_node(&mut self, node: NodeId) {
        self.pending.retain(|(n, _, _), _| *n != node);
        self.reads.retain(|(n, _, _), _| *n != node);
    }

    /// After the run: every group must have committed a probe written after the heal.
    pub fn check_liveness(&self, groups: &[GroupId], checker: &mut Checker) {
        for &g in groups {
            if !self.live.contains(&g) {
                checker.on_liveness_failure(
                    g,
                    format!("no write committed within {} ticks after the heal", super::LIVENESS_TICKS),
                );
            }
        }
    }
}
