//! The application's side of the engine: what a replicated state machine must do.
//!
//! Each partition has its own state machine instance, created by the node's
//! [`StateMachineFactory`] on the shard that owns the partition. Every callback runs on that
//! shard's thread, in log order, one at a time: an implementation needs no locks for its own
//! state, and must not block (the shard's other partitions wait while it runs).

use bytes::Bytes;
use phalanx_proto::LogEntry;

use crate::raft::{NodeId, Status};

/// A partition id. 0 is the system partition.
pub type PartitionId = u64;

/// The contract between the engine and an application state machine.
///
/// Guarantees the engine gives: `apply` sees committed entries only, in log order, each
/// exactly once per process lifetime; after a restart, `restore` gets the last snapshot and
/// the entries after it up to the commit index the node recovered are replayed through
/// `restore_entry` (later ones reach `apply`); every replica's state machine sees the same
/// entries in the same order. Two-step proposals reach `apply` only after their commit marker
/// commits, and never after a rollback.
pub trait StateMachine {
    /// Applies one committed entry (a user entry, a released two-step entry, a checkpoint, or
    /// a non-reserved entry of the system partition). The returned bytes reach the proposer
    /// when this node is the leader that proposed it (e.g. the outcome of a compare-and-set);
    /// return empty bytes when there is nothing to say.
    fn apply(&mut self, partition: PartitionId, entry: &LogEntry) -> Bytes;

    /// Replays one committed entry while the partition is being restored after a restart
    /// (the reference's `OnLogRestored`). Defaults to `apply`.
    fn restore_entry(&mut self, partition: PartitionId, entry: &LogEntry) {
        let _ = self.apply(partition, entry);
    }

    /// The partition starts replaying its log after a restart.
    fn restore_started(&mut self, _partition: PartitionId) {}

    /// The partition finished replaying its log and is live.
    fn restore_finished(&mut self, _partition: PartitionId) {}

    /// A proposal of this node failed to replicate: its entry was overwritten by another
    /// leader's (`ReplicationFailed`).
    fn replication_error(&mut self, _partition: PartitionId, _status: Status) {}

    /// The partition's leader changed (`None`: no leader known).
    fn leader_changed(&mut self, _partition: PartitionId, _leader: Option<NodeId>) {}

    /// An image of the whole state, used as a snapshot: to compact the log below the last
    /// checkpoint and to catch up followers that need compacted entries.
    fn snapshot(&mut self, partition: PartitionId) -> Bytes;

    /// Replaces the whole state with an image made by `snapshot` (possibly on another node).
    fn restore(&mut self, partition: PartitionId, image: &[u8]);

    /// Answers a read-only query against the current state. The engine calls it only after a
    /// linearizable read barrier, so the answer reflects every write acknowledged before the
    /// query was issued. The default refuses queries (`InvalidRequest`): state machines that
    /// are read directly by the application need not implement it.
    fn query(&self, _partition: PartitionId, _query: &[u8]) -> Result<Bytes, Status> {
        Err(Status::InvalidRequest)
    }
}

/// Creates a state machine for each partition, on the shard that owns it.
pub type StateMachineFactory = std::sync::Arc<dyn Fn(PartitionId) -> Box<dyn StateMachine> + Send + Sync>;

/// A state machine that remembers nothing: for nodes whose application reads entries from
/// the event stream, and for benchmarks of the replication path alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopStateMachine;

impl StateMachine for NoopStateMachine {
    fn apply(&mut self, _partition: PartitionId, _entry: &LogEntry) -> Bytes {
        Bytes::new()
    }

    fn snapshot(&mut self, _partition: PartitionId) -> Bytes {
        Bytes::new()
    }

    fn restore(&mut self, _partition: PartitionId, _image: &[u8]) {}
}
