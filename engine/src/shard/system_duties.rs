//! Shard 0's duties for the node: announcing the node on the system partition until the
//! announcement is applied, publishing the directory the system partition holds, and the
//! failure detector. Every shard hears the detector's verdicts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ShardCore;
use crate::events::Event;
use crate::raft::NodeId;
use crate::roster::Change;
use crate::state_machine::PartitionId;
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

    /// Shard 0: the failure detector. A peer not heard from (by any shard) within an election
    /// timeout is down; heard again, it is up. Changes become events and go to every shard.
    pub(super) fn detect_failures(&mut self, now: Instant, last_heard: &dyn Fn(NodeId) -> Option<Instant>) {
        let timeout = self.tick * self.cfg.raft.election_ticks_max as u32;
        // The roster's members once it is seeded (members join and leave), the initial cluster
        // before; a member that left is forgotten (its verdict is withdrawn as up).
        let mut peers: std::collections::BTreeSet<NodeId> = if self.directory.roster.version > 0 {
            self.directory.roster.members.keys().copied().collect()
        } else {
            self.cfg.initial_voters().into_iter().collect()
        };
        peers.remove(&self.cfg.node_id);
        let gone: Vec<NodeId> = self.down.iter().copied().filter(|n| !peers.contains(n)).collect();
        for peer in gone {
            self.out.peer_status.push((peer, true));
            self.on_peer_status(peer, true);
        }
        for peer in peers {
            let last = last_heard(peer).unwrap_or(self.started);
            let down = now.saturating_duration_since(last) > timeout;
            if down == self.down.contains(&peer) {
                continue;
            }
            self.out.peer_status.push((peer, !down));
            self.out.events.push(if down {
                Event::NodeDown { node: peer }
            } else {
                Event::NodeUp { node: peer }
            });
            self.on_peer_status(peer, !down);
        }
    }

    /// The failure detector's verdict on a peer (shard 0's own, or heard on the bus): reads
    /// forwarded to a peer that is down fail at once, and leadership is not handed to it.
    pub fn on_peer_status(&mut self, node: NodeId, up: bool) {
        if up {
            self.down.remove(&node);
            return;
        }
        self.down.insert(node);
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        for p in groups {
            self.multi.update(p, |g| g.peer_unreachable(node));
        }
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
