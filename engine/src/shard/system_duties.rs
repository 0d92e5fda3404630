//! Shard 0's duties for the node: announcing the node on the system partition until the
//! announcement is applied, publishing the directory the system partition holds, and running
//! the failure detector (`swim/`; optionally evicting members dead past a grace). Every shard
//! hears the detector's verdicts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_proto::RaftMessage;
use phalanx_proto::raft_message::Body;

use super::ShardCore;
use crate::events::Event;
use crate::raft::NodeId;
use crate::roster::Change;
use crate::state_machine::PartitionId;
use crate::swim::Liveness;
use crate::system::{announcement, roster_change};

/// The reserved log type of the system partition's own entries.
pub const SYSTEM_LOG_TYPE: &str = "_RaftSystem";

/// How often a node re-announces itself on the system partition until the announcement is
/// applied (the first attempts fail while partition 0 has no leader).
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

impl<R> ShardCore<R> {
    /// Shard 0: proposes (or forwards to the leader) this node's announcement until the
    /// system partition has applied it.
    pub(super) fn announce_if_needed(&mut self, now: Instant) {
        if now < self.next_announce {
            return;
        }
        self.next_announce = now + ANNOUNCE_RETRY;
        let me = phalanx_proto::NodeAnnouncement {
            node_id: self.cfg.node_id,
            raft_address: format!("{}:{}", self.cfg.raft_host, self.cfg.raft_port),
            client_address: self.cfg.client_address.clone().unwrap_or_default(),
            shards: self.shards as u32,
        };
        if self.directory.nodes.get(&me.node_id) == Some(&me) {
            return;
        }
        self.propose_system_command(announcement(me));
    }

    /// Shard 0, while it leads the system partition: seeds the roster with the initial
    /// cluster (every member a voter) until the seed is applied (asked at every membership
    /// round). Only the leader proposes it (a follower's copy would be refused as stale
    /// anyway); the seed is an entry like any change, so a replica that replays the log, or a
    /// node that joins later, learns the same first roster.
    pub(super) fn seed_roster_if_needed(&mut self) {
        let Some(view) = &self.system else { return };
        if self.cfg.joining
            || view.borrow().directory.roster.version != 0
            || !self.multi.group(0).is_some_and(|g| g.is_leader())
        {
            return;
        }
        let own = format!("{}:{}", self.cfg.raft_host, self.cfg.raft_port);
        let members: Vec<(NodeId, String, String)> = if self.cfg.initial_cluster.is_empty() {
            vec![(self.cfg.node_id, own, self.cfg.client_address.clone().unwrap_or_default())]
        } else {
            self.cfg
                .initial_cluster
                .iter()
                .map(|(id, addr)| {
                    let client = if *id == self.cfg.node_id { self.cfg.client_address.clone() } else { None };
                    (*id, addr.clone(), client.unwrap_or_default())
                })
                .collect()
        };
        let partitions = self.cfg.initial_partitions;
        self.propose_system_command(roster_change(0, &Change::Seed { members, partitions }));
    }

    /// Shard 0: the failure detector's turn (`swim/`): it watches the roster's members (the
    /// initial cluster before the roster is seeded), probes, and times out suspicions; what
    /// it sends joins the turn's frames, what it decides reaches every shard and handle.
    pub(super) fn run_detector(&mut self, now: Instant) {
        let Some(swim) = &mut self.swim else { return };
        let roster = &self.directory.roster;
        // The members change only with the roster's version (the initial cluster before it).
        if swim.members_version() != Some(roster.version) {
            let members: Vec<NodeId> = if roster.version > 0 {
                roster.members.keys().copied().collect()
            } else {
                self.cfg.initial_voters()
            };
            swim.set_members(&members, roster.version, now);
        }
        swim.tick(now);
        self.detector_output();
    }

    /// Shard 0: a gossip message from `from` for the failure detector.
    pub(super) fn on_gossip(&mut self, from: NodeId, m: RaftMessage) {
        let (Some(swim), Some(Body::Gossip(g))) = (&mut self.swim, m.body) else {
            // Gossip goes shard 0 to shard 0 (`group` 0); anything else is a confused peer.
            self.counters.messages_refused += 1;
            return;
        };
        if m.group != 0 || m.to != self.cfg.node_id {
            self.counters.messages_refused += 1;
            return;
        }
        swim.on_gossip(from, g, self.now);
        self.detector_output();
    }

    /// The detector's messages into the outbox; its verdicts into events, the shared views
    /// and this shard's own state.
    fn detector_output(&mut self) {
        let Some(swim) = &mut self.swim else { return };
        let me = self.cfg.node_id;
        let messages = swim.take_messages();
        let changes = swim.take_changes();
        let reincarnated = swim.take_reincarnations();
        if let Some(version) = swim.take_unlisted() {
            tracing::warn!(
                version,
                "a peer's roster no longer lists this node: it left the cluster or was removed"
            );
            self.out.unlisted_at = Some(version);
            self.out.events.push(Event::NotInRoster { version });
            let now = self.now;
            self.check_leader_waiters(now);
        }
        self.outbox.extend(messages.into_iter().map(|(to, g)| gossip_message(me, to, g)));
        for (node, state) in changes {
            self.out.peer_status.push((node, state));
            self.out.events.push(match state {
                Liveness::Alive => Event::NodeUp { node },
                Liveness::Suspect => Event::NodeSuspect { node },
                Liveness::Dead => Event::NodeDown { node },
            });
            self.on_peer_status(node, state);
        }
        for node in reincarnated {
            self.out.peer_reincarnations.push(node);
            self.on_peer_reincarnated(node);
        }
    }

    /// Shard 0: news for peers the turn's frames go to anyway (`swim/`: dissemination rides
    /// on the Raft traffic).
    pub(super) fn piggyback_gossip(&mut self) {
        let Some(swim) = &mut self.swim else { return };
        if !swim.has_news() {
            return;
        }
        let me = self.cfg.node_id;
        for to in self.outbox.peers_without_gossip() {
            if let Some(g) = swim.piggyback(to) {
                self.outbox.extend([gossip_message(me, to, g)]);
            }
        }
    }

    /// Shard 0, while it leads the system partition: removes from the roster a member dead
    /// for longer than `swim.eviction_grace_ms` (off when 0), one at a time, never while
    /// another member is in transition.
    pub(super) fn evict_dead_if_due(&mut self, now: Instant) {
        let grace = self.cfg.swim.eviction_grace_ms;
        if grace == 0 || !self.multi.group(0).is_some_and(|g| g.is_leader()) {
            return;
        }
        let roster = self.directory.roster.clone();
        if roster.version == 0 || roster.in_transition().is_some() {
            return;
        }
        let Some(swim) = &mut self.swim else { return };
        let Some(node) = swim.eviction_candidate(Duration::from_millis(grace), now) else { return };
        if !roster.members.contains_key(&node) {
            return;
        }
        tracing::warn!(node, grace_ms = grace, "evicting a member dead for longer than the grace");
        self.propose_system_command(roster_change(roster.version, &Change::Remove(node)));
    }

    /// The failure detector's verdict on a peer (shard 0's own, or heard on the bus): groups
    /// quiesced under a peer no longer alive wake and campaign (`raft/quiesce.rs`), reads
    /// forwarded to a dead peer fail at once, and leadership is not handed to it.
    pub fn on_peer_status(&mut self, node: NodeId, state: Liveness) {
        self.multi.set_peer_alive(node, state == Liveness::Alive);
        if state != Liveness::Dead {
            self.down.remove(&node);
            return;
        }
        self.down.insert(node);
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        for p in groups {
            self.multi.update(p, |g| g.peer_unreachable(node));
        }
    }

    /// The failure detector heard `node` alive at a higher incarnation (shard 0's own, or
    /// heard on the bus): it restarted, so partitions quiesced under it as their leader wake
    /// and elect (`raft/quiesce.rs`) — a node back faster than a suspicion still leads nothing.
    pub fn on_peer_reincarnated(&mut self, node: NodeId) {
        self.multi.wake_quiesced_under(node);
        // And the partitions it follows hear their leaders at once, not after its election
        // timeouts (`MultiRaft::wake_leaders_of`).
        self.multi.wake_leaders_of(node);
    }

    /// Shard 0: the failure detector's view of `node` (`None`: not a member, or this node).
    #[must_use]
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.swim.as_ref()?.liveness(node)
    }

    /// Shard 0: the failure detector, for observers (simulators, tests).
    #[must_use]
    pub fn detector(&self) -> Option<&crate::swim::Detector> {
        self.swim.as_ref()
    }

    /// Shard 0: after applying partition 0, publish a changed directory.
    pub(super) fn publish_system_state(&mut self) {
        let Some(view) = &self.system else { return };
        let mut v = view.borrow_mut();
        if !v.changed {
            return;
        }
        v.changed = false;
        let d = Arc::new(v.directory.clone());
        let roster_changes = std::mem::take(&mut v.roster_changes);
        drop(v);
        self.directory = d.clone();
        self.out.directory = Some(d);
        self.out.events.extend(
            roster_changes.into_iter().map(|(version, change)| Event::RosterChanged { version, change }),
        );
        self.out.events.push(Event::DirectoryChanged);
    }
}

/// A failure detector's message as the transport carries it: a `RaftMessage` of group 0, so
/// it reaches the peer's shard 0 whatever its core count.
fn gossip_message(from: NodeId, to: NodeId, g: phalanx_proto::Gossip) -> RaftMessage {
    RaftMessage { group: 0, from, to, body: Some(Body::Gossip(g)) }
}
