//! What the shard core hands its log writer and what comes back: one Ready's persistent
//! part, and the word that it is durable. And how a writer makes jobs durable, as pure
//! functions every writer shares (`runtime/writer.rs` and the simulator's): the jobs queued
//! behind a write in progress are merged into as few batches as possible ([`merge_jobs`],
//! group commit), and each merged batch becomes durable steps in a fixed order ([`plan`]):
//! received snapshot files first, then the batch cut into pieces the store takes
//! ([`split`]). Checkpoint snapshots taken here are saved beside the writes, and hold back
//! only their partitions' compactions (`checkpoint_saves.rs`). Jobs complete in order.

use std::collections::{BTreeMap, BTreeSet};

use phalanx_proto::{HardState, LogEntry, RaftMessage};
use phalanx_storage::limits::{
    BATCH_PARTITIONS_MAX, PARTITION_RECORDS_BYTES, batch_cost, batch_cost_bound, entry_cost,
};
use phalanx_storage::{PartitionWrite, WriteBatch};

use crate::Error;
use crate::raft::{LogFetch, Snapshot};
use crate::state_machine::PartitionId;

/// One Ready's persistent part.
pub struct WriteJob {
    /// The MultiReady number to acknowledge when durable.
    pub number: u64,
    /// Per partition writes (at most one per partition).
    pub batch: WriteBatch,
    /// Snapshots received from leaders, to make durable before the batch (which installs
    /// them).
    pub snapshots: Vec<(PartitionId, Snapshot)>,
    /// Snapshots taken here at a checkpoint (the batch then compacts the WAL below them):
    /// saved in the background, the compaction held back until they are durable
    /// (`checkpoint_saves.rs`).
    pub checkpoints: Vec<(PartitionId, Snapshot)>,
    /// Messages to send once durable.
    pub persisted_messages: Vec<RaftMessage>,
    /// Entries to read back for lagging followers, after the write (so they see it).
    pub fetches: Vec<(PartitionId, LogFetch)>,
}

/// A job is durable (or the store failed: fatal for the shard).
pub struct Completion {
    /// The job's number.
    pub number: u64,
    /// The job's messages that needed its write durable.
    pub persisted_messages: Vec<RaftMessage>,
    /// Whether the write is durable (`Err`: the store failed).
    pub result: Result<(), Error>,
    /// What the job's fetches read.
    pub fetched: Vec<(PartitionId, LogFetch, Vec<LogEntry>)>,
    /// Partitions whose writes the store refused in this job (a limit or the contract:
    /// nothing of that write was stored, the store stays usable), with the store's reason.
    /// The writer drops everything later of theirs; the shard stops them
    /// (`shard/stopping.rs`).
    pub refused: Vec<(PartitionId, String)>,
}

/// Jobs merged into one batch at most (bounds a batch's size and the latency of the first
/// job in it).
pub const MAX_JOBS_PER_BATCH: usize = 64;

/// Consecutive jobs merged into one batch.
pub struct Merged {
    /// Their writes, merged.
    pub batch: WriteBatch,
    /// Received snapshot files to make durable before the batch.
    pub snapshots: Vec<(PartitionId, Snapshot)>,
    /// Checkpoint snapshots taken up to the batch, in order.
    pub checkpoints: Vec<(PartitionId, Snapshot)>,
    /// How many jobs (consecutive, in order) it covers.
    pub jobs: usize,
}

/// Takes the batches and snapshots out of `jobs` (consecutive jobs, in order) and merges
/// them into as few batches as possible: a job with received snapshot files, and a snapshot
/// install (whose floor reset does not merge), start a new one.
pub fn merge_jobs(jobs: &mut [WriteJob]) -> Vec<Merged> {
    let mut out: Vec<Merged> = Vec::new();
    for job in jobs {
        let batch = std::mem::take(&mut job.batch);
        let snapshots = std::mem::take(&mut job.snapshots);
        let mut checkpoints = std::mem::take(&mut job.checkpoints);
        match out.last_mut() {
            Some(m) if snapshots.is_empty() && m.snapshots.is_empty() => match merge(&mut m.batch, batch) {
                Ok(()) => {
                    m.jobs += 1;
                    m.checkpoints.append(&mut checkpoints);
                }
                Err(batch) => out.push(Merged { batch, snapshots, checkpoints, jobs: 1 }),
            },
            _ => out.push(Merged { batch, snapshots, checkpoints, jobs: 1 }),
        }
    }
    out
}

/// One durable step of a write.
pub enum WriteStep {
    /// Save these snapshot files (each written under a temporary name, synced, renamed; then
    /// one directory sync).
    Snapshots(Vec<(PartitionId, Snapshot)>),
    /// One write of the log store.
    Batch(WriteBatch),
}

/// The durable steps of one merged batch, in the order a writer must take them: the
/// received snapshot files before the batch that moves their partitions' floors (a crash between
/// them leaves a snapshot ahead of the log, which the start-up aligns; the other order would
/// leave a compacted log with no snapshot below it), then the batch cut into pieces of at
/// most `max_cost` ([`split`]).
pub fn plan(batch: WriteBatch, snapshots: Vec<(PartitionId, Snapshot)>, max_cost: u64) -> Vec<WriteStep> {
    let mut steps = Vec::new();
    if !snapshots.is_empty() {
        steps.push(WriteStep::Snapshots(snapshots));
    }
    if !batch.is_empty() {
        steps.extend(split(batch, max_cost).into_iter().map(WriteStep::Batch));
    }
    steps
}

/// Appends `next` (a later Ready) to `into`, keeping per-partition order: later entries
/// replace earlier ones from their first index on, the later hard state wins, compaction
/// takes the furthest point. Refuses (returns `next` back) when either carries a snapshot
/// install, whose floor reset does not merge.
fn merge(into: &mut WriteBatch, next: WriteBatch) -> Result<(), WriteBatch> {
    if next.partitions.iter().any(|p| p.snapshot.is_some())
        || into.partitions.iter().any(|p| p.snapshot.is_some())
    {
        return Err(next);
    }
    let mut pos: BTreeMap<PartitionId, usize> =
        into.partitions.iter().enumerate().map(|(i, p)| (p.partition, i)).collect();
    for w in next.partitions {
        let Some(&i) = pos.get(&w.partition) else {
            pos.insert(w.partition, into.partitions.len());
            into.partitions.push(w);
            continue;
        };
        let cur: &mut PartitionWrite = &mut into.partitions[i];
        if let Some(first) = w.entries.first() {
            let keep = cur.entries.iter().take_while(|e| e.index < first.index).count();
            cur.entries.truncate(keep);
            cur.entries.extend(w.entries);
        }
        if w.hard_state.is_some() {
            cur.hard_state = w.hard_state;
        }
        cur.compact_to = cur.compact_to.max(w.compact_to);
    }
    into.meta.extend(next.meta);
    Ok(())
}

/// Splits `batch` into batches the store takes whatever their size: each costs at most
/// `max_cost` (`limits::batch_cost`) and holds at most `BATCH_PARTITIONS_MAX` partitions.
/// Partitions go whole into a batch while they fit; one whose entries alone exceed a batch
/// is cut into pieces written in order, so a crash between them leaves a prefix of its
/// entries — as if the later ones had not been handed over yet, which Raft tolerates (they
/// were acknowledged to nobody). The pieces keep the Ready's order and durability rules:
/// the snapshot install and term and vote with the first piece (a stored entry never has a
/// term above the stored term), the commit index clamped to what is stored so far (a
/// stored commit index never points past the stored log), the full hard state and the
/// compaction with the last. An entry costing more than `max_cost` goes alone; the store
/// then refuses it and the partition is stopped (`runtime/writer.rs`).
pub fn split(batch: WriteBatch, max_cost: u64) -> Vec<WriteBatch> {
    // Most batches are far below the limit: a bound from lengths settles it without
    // encoding every entry once more.
    if batch.partitions.len() <= BATCH_PARTITIONS_MAX
        && (batch_cost_bound(&batch) <= max_cost || batch_cost(&batch) <= max_cost)
    {
        return vec![batch];
    }
    let WriteBatch { partitions, meta } = batch;
    let mut out = Vec::new();
    let mut cur = WriteBatch::default();
    let mut cost = 0u64;
    let full = |cur: &WriteBatch, cost: u64, more: u64| {
        !cur.partitions.is_empty() && (cost + more > max_cost || cur.partitions.len() >= BATCH_PARTITIONS_MAX)
    };
    for pw in partitions {
        let pieces = cut(pw, max_cost.saturating_sub(PARTITION_RECORDS_BYTES));
        for piece in pieces {
            let c = PARTITION_RECORDS_BYTES + piece.entries.iter().map(entry_cost).sum::<u64>();
            // Pieces of one partition (consecutive) never share a batch: a partition appears
            // once per batch.
            let same = cur.partitions.last().is_some_and(|w| w.partition == piece.partition);
            if same || full(&cur, cost, c) {
                out.push(std::mem::take(&mut cur));
                cost = 0;
            }
            cost += c;
            cur.partitions.push(piece);
        }
    }
    cur.meta = meta;
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// One partition's write as pieces whose entries cost at most `budget` each (at least one
/// entry per piece). See [`split`] for what each piece carries.
fn cut(pw: PartitionWrite, budget: u64) -> Vec<PartitionWrite> {
    let total: u64 = pw.entries.iter().map(entry_cost).sum();
    if total <= budget {
        return vec![pw];
    }
    let PartitionWrite { partition, snapshot, entries, hard_state, compact_to } = pw;
    let mut runs: Vec<Vec<LogEntry>> = Vec::new();
    let mut run_cost = 0u64;
    for e in entries {
        let c = entry_cost(&e);
        match runs.last_mut() {
            Some(run) if run_cost + c <= budget => {
                run_cost += c;
                run.push(e);
            }
            _ => {
                run_cost = c;
                runs.push(vec![e]);
            }
        }
    }
    let n = runs.len();
    runs.into_iter()
        .enumerate()
        .map(|(i, run)| {
            let last_index = run.last().map_or(0, |e| e.index);
            let hard_state = match (i, hard_state) {
                (_, None) => None,
                (k, hs) if k + 1 == n => hs,
                (0, Some(hs)) => Some(HardState { commit: hs.commit.min(last_index), ..hs }),
                _ => None,
            };
            PartitionWrite {
                partition,
                snapshot: if i == 0 { snapshot } else { None },
                entries: run,
                hard_state,
                compact_to: if i + 1 == n { compact_to } else { None },
            }
        })
        .collect()
}

/// Drops the writes of `refused` partitions from `batch`.
pub(crate) fn strip(batch: &mut WriteBatch, refused: &BTreeSet<PartitionId>) {
    if !refused.is_empty() {
        batch.partitions.retain(|w| !refused.contains(&w.partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64) -> LogEntry {
        LogEntry { index, term: 1, ..Default::default() }
    }

    #[test]
    fn merge_splices_entries_and_keeps_latest_state() {
        let mut a = WriteBatch {
            partitions: vec![PartitionWrite {
                partition: 1,
                entries: vec![e(1), e(2), e(3)],
                hard_state: Some(HardState { term: 1, vote: 0, commit: 1, recovering: false }),
                ..Default::default()
            }],
            meta: vec![],
        };
        let b = WriteBatch {
            partitions: vec![
                PartitionWrite {
                    partition: 1,
                    entries: vec![e(3), e(4)],
                    hard_state: Some(HardState { term: 1, vote: 0, commit: 3, recovering: false }),
                    compact_to: Some(1),
                    ..Default::default()
                },
                PartitionWrite { partition: 2, entries: vec![e(1)], ..Default::default() },
            ],
            meta: vec![],
        };
        assert!(merge(&mut a, b).is_ok());
        let p1 = &a.partitions[0];
        assert_eq!(p1.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(p1.hard_state.map(|h| h.commit), Some(3));
        assert_eq!(p1.compact_to, Some(1));
        assert_eq!(a.partitions.len(), 2);
    }

    fn sized(index: u64, bytes: usize) -> LogEntry {
        LogEntry { index, term: 2, payload: vec![0u8; bytes].into(), ..Default::default() }
    }

    /// Issue 11, item 1: a merged write larger than the store takes is split into batches it
    /// takes, keeping what a crash between them may leave valid.
    #[test]
    fn split_keeps_batches_within_the_store_limit_and_crash_points_valid() {
        let max = 10_000u64;
        let big = PartitionWrite {
            partition: 1,
            snapshot: Some(phalanx_storage::LogPosition::new(4, 1)),
            entries: (5..=24).map(|i| sized(i, 1_000)).collect(),
            hard_state: Some(HardState { term: 2, vote: 3, commit: 20, recovering: false }),
            compact_to: Some(3),
        };
        let small: Vec<PartitionWrite> = (2..=40)
            .map(|p| PartitionWrite { partition: p, entries: vec![sized(1, 500)], ..Default::default() })
            .collect();
        let mut partitions = vec![big.clone()];
        partitions.extend(small.clone());
        let batches = split(WriteBatch { partitions, meta: vec![] }, max);
        assert!(batches.len() > 1);
        for b in &batches {
            assert!(batch_cost(b) <= max, "a batch of cost {} over {max}", batch_cost(b));
            let mut seen = BTreeSet::new();
            assert!(b.partitions.iter().all(|w| seen.insert(w.partition)), "a partition twice in a batch");
        }
        // Partition 1's pieces, in order: the whole of its entries, once.
        let pieces: Vec<&PartitionWrite> =
            batches.iter().flat_map(|b| &b.partitions).filter(|w| w.partition == 1).collect();
        assert!(pieces.len() > 1);
        let indexes: Vec<u64> = pieces.iter().flat_map(|w| &w.entries).map(|e| e.index).collect();
        assert_eq!(indexes, (5..=24).collect::<Vec<_>>());
        // The first piece installs the snapshot and stores term and vote, with a commit index
        // no further than its own last entry; the last stores the whole hard state and the
        // compaction; none in between stores either.
        let first = pieces[0];
        let first_last = first.entries.last().map(|e| e.index).unwrap_or(0);
        assert_eq!(first.snapshot, big.snapshot);
        assert_eq!(
            first.hard_state,
            Some(HardState { term: 2, vote: 3, commit: 20.min(first_last), recovering: false })
        );
        assert_eq!(first.compact_to, None);
        let last = pieces[pieces.len() - 1];
        assert_eq!(last.hard_state, big.hard_state);
        assert_eq!(last.compact_to, Some(3));
        for mid in &pieces[1..pieces.len() - 1] {
            assert!(mid.snapshot.is_none() && mid.hard_state.is_none() && mid.compact_to.is_none());
        }
        // Every other partition whole, once.
        let others: Vec<u64> = batches
            .iter()
            .flat_map(|b| &b.partitions)
            .filter(|w| w.partition != 1)
            .map(|w| w.partition)
            .collect();
        assert_eq!(others, (2..=40).collect::<Vec<_>>());
        // A batch within the limit is left alone.
        let one = WriteBatch { partitions: small, meta: vec![] };
        assert_eq!(split(one, u64::MAX).len(), 1);
    }

    #[test]
    fn snapshot_installs_do_not_merge() {
        let mut a = WriteBatch::default();
        let b = WriteBatch {
            partitions: vec![PartitionWrite {
                partition: 1,
                snapshot: Some(phalanx_storage::LogPosition::new(5, 1)),
                ..Default::default()
            }],
            meta: vec![],
        };
        assert!(merge(&mut a, b).is_err());
    }
}
