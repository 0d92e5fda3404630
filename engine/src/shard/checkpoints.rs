//! Checkpoints: once a checkpoint entry is applied, the state machine's snapshot covers the
//! log below it, which the core may then compact. The snapshot goes to the writer with the
//! next write job — the one whose batch compacts the log — and the writer saves the file
//! first: durable before the compaction, while the shard goes on (saving it in the loop
//! stalled the shard for two syncs per checkpoint).

use super::ShardCore;
use crate::raft::{Snapshot, Status};

impl<R> ShardCore<R> {
    /// Snapshots every partition that applied a checkpoint and lets its group compact the
    /// log below it; a group with work outstanding tries again after the next write.
    pub(super) fn compact_behind_checkpoints(&mut self) {
        let wanted = std::mem::take(&mut self.compact_wanted);
        for p in wanted {
            let Some(sm) = self.sms.get_mut(&p) else { continue };
            let image = sm.snapshot(p);
            // A snapshot larger than followers accept (`raft.max_snapshot_bytes`) would be
            // refused by every follower that needs it, which would then never catch up: keep
            // the log instead (it is what they can be sent), and say so.
            let limit = self.cfg.raft.max_snapshot_bytes;
            if image.len() > limit {
                self.counters.snapshots_too_large += 1;
                tracing::error!(
                    partition = p,
                    bytes = image.len(),
                    limit,
                    "checkpoint not compacted: the state machine's snapshot is larger than raft.max_snapshot_bytes \
                     (followers would refuse it); the log below the checkpoint is kept"
                );
                continue;
            }
            match self.multi.update(p, |g| g.compact(image.clone()).map(|_| g.snapshot_meta().cloned())) {
                Some(Ok(Some(meta))) => {
                    // An older snapshot of the partition not yet saved is superseded.
                    self.snapshots_to_save.retain(|(q, _)| *q != p);
                    self.snapshots_to_save.push((p, Snapshot { meta, data: image }));
                }
                // Work is still outstanding for this group: try again after the next Ready.
                Some(Err(Status::Busy)) => self.compact_wanted.push(p),
                _ => {}
            }
        }
    }
}
