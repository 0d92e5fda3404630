//! Checkpoint snapshots saved beside the log writes, not in front of them. A checkpoint's
//! snapshot file gates one thing only: the compaction of its partition's log (a compacted
//! log with no snapshot below it would lose history). Saved in the writer before the batch
//! that carried its compaction, it held every other write of the shard back: a 16 MiB
//! snapshot took 100–180 ms to save, and a join that checkpointed its partitions stalled the
//! cluster's writes for seconds (`bench/README.md`, issue 13).
//!
//! So a writer saves checkpoint snapshots in the background, one save at a time and in the
//! order they were taken, and holds back each partition's compaction until a snapshot of it
//! at least as new is durable. The rules, as a pure state machine every writer shares
//! (`runtime/writer.rs` and the simulator's):
//!
//! - A compaction of a partition with a snapshot queued or being saved is withheld; once the
//!   save ends and no newer snapshot of it waits, it is released and goes with the next batch.
//! - A newer checkpoint of a partition supersedes one still queued (one file per partition
//!   is all that is kept).
//! - A received snapshot (an install, saved before its batch like today) supersedes the
//!   partition's queued checkpoint and withheld compaction; if one of its checkpoints is being
//!   saved, the writer waits for that save first, so the older file never lands last.
//!
//! A crash anywhere leaves either the old snapshot and an uncompacted log, or a snapshot ahead
//! of the log, which the start-up aligns — both states a restart already handles. Memory is
//! bounded by one snapshot per partition of the shard.

use std::collections::BTreeMap;

use phalanx_storage::{PartitionWrite, WriteBatch};

use crate::raft::Snapshot;
use crate::state_machine::PartitionId;

/// A writer's checkpoint snapshots not yet durable, and the compactions that wait for them.
#[derive(Debug, Default)]
pub struct CheckpointSaves {
    /// Waiting for the next save, in the order taken; one per partition.
    queued: Vec<(PartitionId, Snapshot)>,
    /// The partitions of the save in progress.
    saving: Vec<PartitionId>,
    /// Compactions (the index to compact to) waiting for their partition's snapshot.
    withheld: BTreeMap<PartitionId, u64>,
    /// Compactions whose snapshot is durable, for the next batch.
    released: BTreeMap<PartitionId, u64>,
}

impl CheckpointSaves {
    /// Takes the checkpoint snapshots taken up to `batch` (a merged batch about to be written)
    /// and applies the module's rules to it: withholds compactions whose snapshot is not
    /// durable, adds those released, drops what its installs supersede. Returns whether the
    /// writer must wait for the save in progress to end (`saved`) before it writes the batch.
    pub fn admit(&mut self, batch: &mut WriteBatch, checkpoints: Vec<(PartitionId, Snapshot)>) -> bool {
        // Almost every batch: no checkpoint anywhere, nothing to look at per partition.
        if checkpoints.is_empty() && self.is_idle() {
            return false;
        }
        for (p, s) in checkpoints {
            self.queued.retain(|(q, _)| *q != p);
            self.queued.push((p, s));
        }
        let mut wait = false;
        for w in &mut batch.partitions {
            let p = w.partition;
            if w.snapshot.is_some() {
                // Its file is newer than any checkpoint of the partition here.
                self.queued.retain(|(q, _)| *q != p);
                self.withheld.remove(&p);
                self.released.remove(&p);
                wait |= self.saving.contains(&p);
                continue;
            }
            if self.pending(p) {
                if let Some(c) = w.compact_to.take() {
                    let at = self.withheld.entry(p).or_default();
                    *at = (*at).max(c);
                }
            } else if let Some(c) = self.released.remove(&p) {
                w.compact_to = w.compact_to.max(Some(c));
            }
        }
        batch.partitions.extend(self.drain_released());
        wait
    }

    /// The snapshots to save next, when no save is in progress: every one queued (one file
    /// each, then one directory sync). The writer calls `saved` when they are durable.
    pub fn next_save(&mut self) -> Option<Vec<(PartitionId, Snapshot)>> {
        if !self.saving.is_empty() || self.queued.is_empty() {
            return None;
        }
        let files = std::mem::take(&mut self.queued);
        self.saving = files.iter().map(|(p, _)| *p).collect();
        Some(files)
    }

    /// Whether a save is in progress.
    #[must_use]
    pub fn is_saving(&self) -> bool {
        !self.saving.is_empty()
    }

    /// The save in progress is durable: the compactions it gated are released (unless a
    /// newer snapshot of their partition is queued: they wait for that one).
    pub fn saved(&mut self) {
        for p in std::mem::take(&mut self.saving) {
            if self.queued.iter().any(|(q, _)| *q == p) {
                continue;
            }
            if let Some(c) = self.withheld.remove(&p) {
                let at = self.released.entry(p).or_default();
                *at = (*at).max(c);
            }
        }
    }

    /// The released compactions as a batch of their own, for a writer with no job to carry
    /// them.
    pub fn take_released(&mut self) -> Option<WriteBatch> {
        (!self.released.is_empty())
            .then(|| WriteBatch { partitions: self.drain_released().collect(), meta: Vec::new() })
    }

    /// The released compactions, as writes of their own, forgotten here.
    fn drain_released(&mut self) -> impl Iterator<Item = PartitionWrite> + use<> {
        std::mem::take(&mut self.released).into_iter().map(|(partition, c)| PartitionWrite {
            partition,
            compact_to: Some(c),
            ..Default::default()
        })
    }

    /// Whether nothing is queued, being saved, withheld or released.
    fn is_idle(&self) -> bool {
        self.queued.is_empty()
            && self.saving.is_empty()
            && self.withheld.is_empty()
            && self.released.is_empty()
    }

    /// Forgets a partition the writer stopped (its store refused a write): nothing more of it
    /// is written. A save of it in progress ends harmlessly.
    pub fn forget(&mut self, p: PartitionId) {
        self.queued.retain(|(q, _)| *q != p);
        self.withheld.remove(&p);
        self.released.remove(&p);
    }

    fn pending(&self, p: PartitionId) -> bool {
        self.saving.contains(&p) || self.queued.iter().any(|(q, _)| *q == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::SnapshotMeta;
    use phalanx_storage::LogPosition;

    fn snap(index: u64) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index,
                term: 1,
                membership: Default::default(),
                pending_two_step: Vec::new(),
            },
            data: Default::default(),
        }
    }

    fn compaction(p: PartitionId, c: u64) -> PartitionWrite {
        PartitionWrite { partition: p, compact_to: Some(c), ..Default::default() }
    }

    fn compactions(b: &WriteBatch) -> Vec<(PartitionId, Option<u64>)> {
        b.partitions.iter().map(|w| (w.partition, w.compact_to)).collect()
    }

    #[test]
    fn a_compaction_waits_for_its_snapshot_file_and_goes_with_the_next_batch() {
        let mut s = CheckpointSaves::default();
        let mut b = WriteBatch { partitions: vec![compaction(1, 9), compaction(2, 4)], meta: vec![] };
        assert!(!s.admit(&mut b, vec![(1, snap(10))]));
        assert_eq!(compactions(&b), vec![(1, None), (2, Some(4))], "2's snapshot is durable already");
        let files = s.next_save().expect("a save");
        assert_eq!(files.len(), 1);
        assert!(s.next_save().is_none(), "one save at a time");
        let mut b = WriteBatch { partitions: vec![compaction(1, 9)], meta: vec![] };
        assert!(!s.admit(&mut b, vec![]));
        assert_eq!(compactions(&b), vec![(1, None)], "still not durable");
        s.saved();
        let mut b = WriteBatch::default();
        assert!(!s.admit(&mut b, vec![]));
        assert_eq!(compactions(&b), vec![(1, Some(9))]);
        assert!(s.take_released().is_none());
    }

    #[test]
    fn a_newer_checkpoint_holds_back_every_compaction_of_its_partition() {
        let mut s = CheckpointSaves::default();
        let mut b = WriteBatch { partitions: vec![compaction(1, 9)], meta: vec![] };
        s.admit(&mut b, vec![(1, snap(10))]);
        assert!(s.next_save().is_some());
        let mut b = WriteBatch { partitions: vec![compaction(1, 19)], meta: vec![] };
        s.admit(&mut b, vec![(1, snap(20))]);
        s.saved();
        assert!(s.take_released().is_none(), "19 is not covered by the file saved (10)");
        let files = s.next_save().expect("the newer save");
        assert_eq!(files[0].1.meta.index, 20);
        s.saved();
        assert_eq!(s.take_released().map(|b| compactions(&b)), Some(vec![(1, Some(19))]));
    }

    #[test]
    fn an_install_supersedes_queued_checkpoints_and_waits_for_one_being_saved() {
        let mut s = CheckpointSaves::default();
        s.admit(
            &mut WriteBatch { partitions: vec![compaction(1, 9), compaction(2, 9)], meta: vec![] },
            vec![(1, snap(10))],
        );
        assert!(s.next_save().is_some());
        s.admit(&mut WriteBatch { partitions: vec![compaction(2, 9)], meta: vec![] }, vec![(2, snap(10))]);
        let install = |p| PartitionWrite {
            partition: p,
            snapshot: Some(LogPosition::new(30, 2)),
            ..Default::default()
        };
        let mut b = WriteBatch { partitions: vec![install(2)], meta: vec![] };
        assert!(!s.admit(&mut b, vec![]), "2's checkpoint was only queued: dropped, no wait");
        let mut b = WriteBatch { partitions: vec![install(1)], meta: vec![] };
        assert!(s.admit(&mut b, vec![]), "1's checkpoint is being saved: the install waits for it");
        s.saved();
        assert!(s.take_released().is_none(), "the installs superseded both compactions");
        assert!(s.next_save().is_none(), "and 2's queued file");
    }
}
