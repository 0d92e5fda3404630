//! The event stream: what happens to a node's partitions, for applications that watch
//! rather than poll. Subscribers get a bounded channel each; a subscriber that does not keep
//! up loses events (counted) rather than slowing the shards down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raft::{NodeId, Status};
use crate::state_machine::PartitionId;

/// Something that happened to a partition on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The partition's leader changed (`None`: no leader known), with the new term.
    LeaderChanged {
        /// Partition.
        partition: PartitionId,
        /// The leader.
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// The partition started replaying its log after a restart.
    RestoreStarted {
        /// Partition.
        partition: PartitionId,
    },
    /// The partition finished replaying its log.
    RestoreFinished {
        /// Partition.
        partition: PartitionId,
    },
    /// A proposal failed.
    ReplicationError {
        /// Partition.
        partition: PartitionId,
        /// Why.
        status: Status,
    },
    /// The failure detector (SWIM) holds a peer dead: suspected, and no refutation within
    /// the suspicion timeout.
    NodeDown {
        /// The peer.
        node: NodeId,
    },
    /// The failure detector suspects a peer: it answered no probe, direct or indirect, for
    /// a probe round.
    NodeSuspect {
        /// The peer.
        node: NodeId,
    },
    /// A peer's roster, at `version` (newer than this node's), does not list this node: it
    /// left the cluster or was removed, and the system partition no longer replicates to it.
    NotInRoster {
        /// The peer's roster version.
        version: u64,
    },
    /// A peer the failure detector suspected or held dead is alive again (it refuted).
    NodeUp {
        /// The peer.
        node: NodeId,
    },
    /// The system partition's cluster directory changed (a node announced itself, or the
    /// roster changed).
    DirectoryChanged,
    /// The roster changed (each node's replica of the system partition applied the change):
    /// its version after the change, and the change. In commit order, including changes
    /// replayed when the node starts.
    RosterChanged {
        /// The roster's version after the change.
        version: u64,
        /// The change.
        change: crate::roster::Change,
    },
    /// A partition stopped on this node because the store refused its write (see
    /// `shard/stopping.rs`); it recovers when the node restarts.
    PartitionStopped {
        /// The partition.
        partition: PartitionId,
        /// The store's reason.
        reason: String,
    },
    /// A shard stopped because its storage failed (fatal, see the storage contract).
    ShardFailed {
        /// The shard.
        shard: usize,
        /// The storage error.
        reason: String,
    },
}

/// Events a subscriber may hold before newer ones are dropped for it.
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

/// Fan-out of events to subscribers.
#[derive(Debug, Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<flume::Sender<Event>>>,
    dropped: AtomicU64,
}

impl EventHub {
    /// A new subscription.
    pub fn subscribe(&self) -> flume::Receiver<Event> {
        let (tx, rx) = flume::bounded(EVENT_QUEUE_CAPACITY);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    /// Publishes to every live subscriber.
    pub fn publish(&self, e: Event) {
        let Ok(mut subs) = self.subscribers.lock() else { return };
        if subs.is_empty() {
            return;
        }
        subs.retain(|s| match s.try_send(e.clone()) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        });
    }

    /// Events dropped because a subscriber was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
