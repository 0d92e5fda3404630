//! Stopping: one partition the store refused, and the whole shard's clean stop.

use phalanx_storage::{PartitionWrite, WriteBatch};

use super::ShardCore;
use super::write::WriteJob;
use crate::events::Event;
use crate::raft::Status;
use crate::state_machine::PartitionId;

impl<R> ShardCore<R> {
    /// The store refused a write of partition `p` (a limit or the contract: nothing of it was
    /// stored, the store is usable). With writes split to the store's limits and requests
    /// checked at the door this is an engine bug or a misconfiguration, never a client's
    /// doing — but it must not stop the node: only this partition stops here, as if its
    /// replica had crashed. Its callers are answered `Errored` (their entries may still
    /// commit through the other replicas), later requests are refused, its leadership is
    /// dropped, and the writer stores nothing more of it. The other replicas carry on; this
    /// one recovers from what it stored when the node restarts.
    pub(super) fn stop_partition(&mut self, p: PartitionId, reason: String) {
        tracing::error!(
            shard = self.id,
            partition = p,
            "partition stopped on this node: the store refused its write ({reason}); restart the node to \
             recover it from its log"
        );
        let term = self.multi.group(p).map_or(0, |g| g.term());
        self.multi.remove_group(p);
        self.sms.remove(&p);
        self.waiters.fail_partition(p, Status::Errored);
        self.fail_held(Some(p), Status::Errored);
        self.fail_leader_waiters(Some(p), Status::Errored);
        self.replay_until.remove(&p);
        self.compact_wanted.retain(|q| *q != p);
        self.snapshots_to_save.retain(|(q, _)| *q != p);
        self.outbox.forget_group(p);
        self.out.leaders.push((p, None, term));
        self.out.events.push(Event::PartitionStopped { partition: p, reason: reason.clone() });
        self.stopped.insert(p, reason);
    }

    /// The shard stops: every caller is answered `Errored`, every partition loses its leader
    /// here (routing must not send requests to a shard that answers nothing), and the last
    /// write job is returned — commit indexes no Ready carried yet (a change of it alone
    /// waits for the next write: `Ready::hard_state`), with the checkpoint snapshots not
    /// saved yet, so a restart after a clean stop replays every entry this node applied.
    /// The job acknowledges nothing (number 0): nothing acts on its completion.
    pub fn shut_down(&mut self) -> Option<WriteJob> {
        self.waiters.fail_all(Status::Errored);
        self.fail_held(None, Status::Errored);
        self.fail_leader_waiters(None, Status::Errored);
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        let mut partitions = Vec::new();
        for p in groups {
            let Some(g) = self.multi.group(p) else { continue };
            self.out.leaders.push((p, None, g.term()));
            if let Some(hs) = g.unsaved_hard_state() {
                partitions.push(PartitionWrite { partition: p, hard_state: Some(hs), ..Default::default() });
            }
        }
        let checkpoints = std::mem::take(&mut self.snapshots_to_save);
        (!partitions.is_empty() || !checkpoints.is_empty()).then(|| WriteJob {
            number: 0,
            batch: WriteBatch { partitions, ..Default::default() },
            snapshots: Vec::new(),
            checkpoints,
            persisted_messages: Vec::new(),
            fetches: Vec::new(),
        })
    }
}
