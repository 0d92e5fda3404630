//! The simulated clients: proposals (auto-commit and two-step, with their commit or
//! rollback), checkpoints, roster changes, leadership transfers and step-downs,
//! heartbeat suspension, linearizable reads, and the post-heal liveness probes. They ask
//! each node's shard core as a `NodeHandle` would (`phalanx::shard::request::Op`) and learn
//! the outcome from its answers; only what the shell has no request for yet (forwarding a
//! write to the leader) goes to the groups directly. Membership changes go through the
//! roster, which every partition follows.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use phalanx::hlc::Ticket;
use phalanx::raft::{GroupId, NodeId, Proposal, ProposalKind, SeededRng, Status};
use phalanx::shard::request::{Answer, ControlOp, Op, Request};
use phalanx_proto::{EntryKind, LogEntry};

use super::checker::{Checker, entry_id};
use super::node::SimNode;

#[derive(Clone, Debug)]
enum What {
    /// An auto-commit write (or a liveness probe) of these payloads.
    Write { probe: bool, payloads: Vec<Bytes> },
    /// The first step of a two-step proposal of these payloads.
    TwoStep { payloads: Vec<Bytes> },
    /// A commit (true) or rollback (false) marker for the ticket's entries, and how often it
    /// was tried before.
    Marker { commit: bool, ids: Vec<u64>, tries: u32 },
    /// A checkpoint.
    Checkpoint,
    /// A read barrier; every write acknowledged before it had an index up to this.
    Read { acked_before: u64 },
    /// Anything whose answer the checks do not need.
    Other,
}

#[derive(Clone, Debug)]
struct Pending {
    node: NodeId,
    group: GroupId,
    /// The ticket of the two-step proposal a marker resolves (zero for the rest).
    ticket: Ticket,
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
    /// Requests asked and not answered, by request id.
    pending: HashMap<u64, Pending>,
    resolutions: Vec<Resolution>,
    leaders: HashSet<(GroupId, u64)>,
    /// Acknowledged writes.
    pub acked: u64,
    /// Writes refused after a ticket was assigned (held through a leadership transfer that
    /// moved the leadership, or over a leader's uncommitted limit), none of them appended.
    pub refused: u64,
    /// Distinct (group, term) leaders seen.
    pub leaders_seen: u64,
    /// When faults stopped.
    pub heal_at: Option<u64>,
    live: BTreeSet<GroupId>,
    /// Groups the clients leave alone until the given tick (so they go idle and quiesce).
    resting: std::collections::BTreeMap<GroupId, u64>,
}

/// Tries to resolve a two-step proposal at most this many times.
const MAX_RESOLUTION_TRIES: u32 = 50;
/// Chance per tick, in units of 1/1000, that a group starts resting.
const REST_PER_MILLE: u64 = 3;
/// Shortest and longest rest, in ticks: long enough for any seed's quiescence to set in and
/// last (`quiesce_after_ticks` is at most 40).
const REST_TICKS: (u64, u64) = (60, 400);
/// Ticks between liveness probes of a group.
const PROBE_EVERY: u64 = 20;
/// The log types of the simulated writes.
const LOG_TYPE: &str = "sim";
const TWO_STEP_LOG_TYPE: &str = "sim2";

/// The content ids of the entries a proposal of `payloads` made (see `entry_id`).
fn ids(kind: EntryKind, log_type: &str, payloads: &[Bytes], ticket: Ticket) -> Vec<u64> {
    payloads
        .iter()
        .map(|payload| {
            entry_id(&LogEntry {
                kind: kind as i32,
                log_type: Bytes::copy_from_slice(log_type.as_bytes()),
                payload: payload.clone(),
                ticket: Some(ticket.into()),
                ..Default::default()
            })
        })
        .collect()
}

impl Workload {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Leaves every group alone until `until` (liveness probes still go out).
    pub fn rest_all(&mut self, groups: &[GroupId], until: u64) {
        for &g in groups {
            let t = self.resting.entry(g).or_default();
            *t = (*t).max(until);
        }
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
        if rng.range(0, 1000) < REST_PER_MILLE {
            let g = groups[rng.range(0, groups.len() as u64) as usize];
            self.resting.insert(g, now + rng.range(REST_TICKS.0, REST_TICKS.1));
        }
        self.resting.retain(|_, until| *until > now);
        let g = groups[rng.range(0, groups.len() as u64) as usize];
        // A resting group gets nothing from the clients (the roster, membership and
        // liveness probes still reach it): its leader quiesces it, and the next write or
        // read after the rest wakes it.
        let resting = self.resting.contains_key(&g);
        // After the heal the load drops, so a group whose configuration has little
        // throughput (one append in flight of one entry) drains its backlog: liveness is
        // about making progress, not about keeping up with an overload.
        let roll = if calm { rng.range(0, 1000) + rng.range(0, 2) * 200 } else { rng.range(0, 1000) };
        match roll {
            _ if resting && roll < 430 => {}
            0..300 => self.write(nodes, g, rng, false),
            300..330 => self.two_step(nodes, g, rng),
            330..340 => self.checkpoint(nodes, g, rng),
            340..400 => self.read(nodes, g, rng, checker),
            405..410 if !calm => {
                let target = rng.range(1, nodes.len() as u64 + 1);
                self.control(nodes, g, rng, ControlOp::Transfer(target));
            }
            410..412 if !calm => self.control(nodes, g, rng, ControlOp::StepDown),
            412..415 if !calm => self.control(nodes, g, rng, ControlOp::SuspendHeartbeats),
            415..430 => self.control(nodes, g, rng, ControlOp::ResumeHeartbeats),
            430..445 if !calm => self.roster_change(nodes, rng),
            _ => {}
        }
        self.resolve_two_step(nodes, rng, now);
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
            .filter(|(_, n)| n.up && n.multi().group(g).is_some_and(|grp| grp.is_leader()))
            .map(|(i, _)| i)
            .collect();
        if leaders.is_empty() {
            return None;
        }
        Some(leaders[rng.range(0, leaders.len() as u64) as usize])
    }

    /// Asks node `i`'s core, as a handle would.
    fn ask(&mut self, nodes: &mut [SimNode], i: usize, g: GroupId, op: Op, what: What) {
        let reply = self.id();
        let node = nodes[i].id;
        let ticket = match &op {
            Op::Marker { ticket, .. } => *ticket,
            _ => Ticket::default(),
        };
        if let Some(core) = nodes[i].core() {
            self.pending.insert(reply, Pending { node, group: g, ticket, what });
            core.on_request(Request { op, reply });
        }
    }

    fn control(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng, op: ControlOp) {
        if let Some(i) = Self::leader_of(nodes, g, rng) {
            self.ask(nodes, i, g, Op::Control { partition: g, op }, What::Other);
        }
    }

    fn write(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng, probe: bool) {
        if !probe && rng.range(0, 10) == 0 {
            // Now and then through a random node: a follower forwards it to its leader (fire
            // and forget, so it is not tracked as acknowledged; the safety checks still see
            // every entry it produces). The shell has no forwarding request: straight to the
            // group.
            let i = rng.range(0, nodes.len() as u64) as usize;
            let id = self.id();
            let ticket = Ticket { physical_ms: id, logical: 0, node_id: nodes[i].id };
            let payloads = vec![Bytes::from(format!("f{id}").into_bytes())];
            let p = Proposal { kind: ProposalKind::AutoCommit, log_type: LOG_TYPE.into(), payloads, ticket };
            if let Some(core) = nodes[i].core() {
                core.multi_mut().update(g, |grp| {
                    let _ = grp.propose_or_forward(p);
                });
            }
            return;
        }
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let id = self.id();
        let n = rng.range(1, 4);
        let payloads: Vec<Bytes> = (0..n).map(|k| Bytes::from(format!("w{id}-{k}").into_bytes())).collect();
        let op = Op::Replicate {
            partition: g,
            log_type: LOG_TYPE.into(),
            payloads: payloads.clone(),
            auto_commit: true,
            system: false,
        };
        self.ask(nodes, i, g, op, What::Write { probe, payloads });
    }

    /// A roster change through the system partition's leader: add a member (a node of the
    /// run, or one that never comes), promote one by hand, or remove one — mostly against the
    /// roster's version, sometimes a stale one. Every partition follows the roster
    /// (`shard/membership.rs`); the checker holds every replica to the same roster at the same
    /// applied index, and every partition to it.
    fn roster_change(&mut self, nodes: &mut [SimNode], rng: &mut SeededRng) {
        use phalanx::roster::{Change, Role};
        let Some(i) = Self::leader_of(nodes, 0, rng) else { return };
        let Some((_, roster)) = nodes[i].roster() else { return };
        let id = rng.range(1, nodes.len() as u64 + 2);
        let change = match rng.range(0, 5) {
            0 | 1 => Change::Add(id, format!("sim-{id}:1"), String::new()),
            2 => Change::Promote(id),
            _ => Change::Remove(id),
        };
        // Like an operator: do not remove a voter while a replica that lost its disk
        // recovers and fewer than three voters would remain (it does not vote until it caught
        // up, so two could elect no leader to catch up from).
        if let Change::Remove(id) = change
            && roster.members.get(&id).is_some_and(|m| m.role == Role::Voter)
            && roster.voters().count() <= 3
            && nodes.iter().any(SimNode::has_lost_state)
        {
            return;
        }
        let expected = if rng.range(0, 5) == 0 { roster.version.saturating_sub(1) } else { roster.version };
        let op = Op::Replicate {
            partition: 0,
            log_type: Bytes::from_static(phalanx::shard::SYSTEM_LOG_TYPE.as_bytes()),
            payloads: vec![phalanx::system::roster_change(expected, &change)],
            auto_commit: true,
            system: true,
        };
        self.ask(nodes, i, 0, op, What::Other);
    }

    fn two_step(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        let id = self.id();
        let n = rng.range(1, 3);
        let payloads: Vec<Bytes> = (0..n).map(|k| Bytes::from(format!("t{id}-{k}").into_bytes())).collect();
        let op = Op::Replicate {
            partition: g,
            log_type: TWO_STEP_LOG_TYPE.into(),
            payloads: payloads.clone(),
            auto_commit: false,
            system: false,
        };
        self.ask(nodes, i, g, op, What::TwoStep { payloads });
    }

    fn checkpoint(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng) {
        let Some(i) = Self::leader_of(nodes, g, rng) else { return };
        self.ask(nodes, i, g, Op::Checkpoint { partition: g }, What::Checkpoint);
    }

    fn read(&mut self, nodes: &mut [SimNode], g: GroupId, rng: &mut SeededRng, checker: &Checker) {
        let i = rng.range(0, nodes.len() as u64) as usize;
        let acked_before = checker.acked_floor(g);
        self.ask(nodes, i, g, Op::ReadBarrier { partition: g }, What::Read { acked_before });
    }

    fn resolve_two_step(&mut self, nodes: &mut [SimNode], rng: &mut SeededRng, now: u64) {
        let mut keep = Vec::new();
        for mut r in std::mem::take(&mut self.resolutions) {
            if r.due > now {
                keep.push(r);
                continue;
            }
            match Self::leader_of(nodes, r.group, rng) {
                Some(i) => {
                    let op = Op::Marker { partition: r.group, ticket: r.ticket, commit: r.commit };
                    let what = What::Marker { commit: r.commit, ids: r.ids.clone(), tries: r.tries };
                    self.ask(nodes, i, r.group, op, what);
                }
                None => {
                    r.due = now + 5;
                    keep.push(r);
                }
            }
        }
        self.resolutions = keep;
    }

    /// Takes the answers node `i` gave its clients.
    pub fn take_answers(&mut self, node: &mut SimNode, checker: &mut Checker, now: u64) {
        for (reply, answer) in node.answers.drain(..) {
            let Some(p) = self.pending.remove(&reply) else { continue };
            match (p.what, answer) {
                (What::Write { probe, payloads }, Answer::Replication(r)) if r.success() => {
                    self.acked += 1;
                    let ids = ids(EntryKind::Normal, LOG_TYPE, &payloads, r.ticket);
                    checker.on_ack(p.group, r.ticket, &ids, r.log_index);
                    if probe && self.heal_at.is_some() {
                        self.live.insert(p.group);
                    }
                }
                // Refused before anything was appended: none of it may ever be in a log. (A
                // refusal at the door carries the zero ticket, an id no entry has.)
                (What::Write { payloads, .. }, Answer::Replication(r))
                    if matches!(r.status, Status::NodeIsNotLeader | Status::Busy) =>
                {
                    self.refused += u64::from(!r.ticket.is_zero());
                    checker.on_refused(
                        p.group,
                        r.ticket,
                        &ids(EntryKind::Normal, LOG_TYPE, &payloads, r.ticket),
                    );
                }
                (What::TwoStep { payloads }, Answer::Replication(r)) if r.success() => {
                    let commit = self.next_id % 10 < 7;
                    self.next_id += 1;
                    let ids = ids(EntryKind::Proposed, TWO_STEP_LOG_TYPE, &payloads, r.ticket);
                    self.resolutions.push(Resolution {
                        group: p.group,
                        ticket: r.ticket,
                        due: 0,
                        commit,
                        tries: 0,
                        ids,
                    });
                }
                (What::Marker { commit, ids, tries }, Answer::Replication(r)) => {
                    if r.success() {
                        if commit {
                            self.acked += 1;
                            checker.on_ack(p.group, r.ticket, &ids, r.log_index);
                        }
                    } else if tries + 1 < MAX_RESOLUTION_TRIES {
                        // No leader, or leadership moved: try again later, a bounded number
                        // of times. (A refusal answers the zero ticket: keep the proposal's.)
                        let ticket = p.ticket;
                        self.resolutions.push(Resolution {
                            group: p.group,
                            ticket,
                            due: now + 5,
                            commit,
                            tries: tries + 1,
                            ids,
                        });
                    }
                }
                (What::Read { acked_before }, Answer::ReadIndex(Ok(index))) => {
                    checker.on_read(p.group, index, acked_before);
                }
                _ => {}
            }
        }
    }

    /// Forgets the in-flight requests of a crashed node (its clients lost the connection).
    pub fn forget_node(&mut self, node: NodeId) {
        self.pending.retain(|_, p| p.node != node);
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
