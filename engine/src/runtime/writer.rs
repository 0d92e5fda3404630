//! The WAL writer of one shard: a task on the shard's executor that owns the log store and
//! makes Readies durable in order, while the shard loop goes on receiving, sending and
//! applying. Jobs queued behind a write in progress are merged into the next batch, so one
//! `fdatasync` covers every Ready produced during the previous one (group commit).
//!
//! Completions come back in job order; the shard then sends the messages that needed
//! durable state and acknowledges the Ready (`MultiRaft::advance`).

use std::collections::BTreeMap;

use phalanx_proto::{LogEntry, RaftMessage};
use phalanx_storage::{AnyStore, LogStore, PartitionWrite, WriteBatch};

use super::snapshots::SnapshotStore;
use crate::raft::{LogFetch, Snapshot};
use crate::state_machine::PartitionId;

/// Jobs merged into one batch at most (bounds a batch's size and the latency of the first
/// job in it).
pub const MAX_JOBS_PER_BATCH: usize = 64;

/// One Ready's persistent part.
pub(crate) struct WriteJob {
    /// The MultiReady number to acknowledge when durable.
    pub number: u64,
    /// Per partition writes (at most one per partition).
    pub batch: WriteBatch,
    /// Snapshots received from leaders, to make durable before the batch.
    pub snapshots: Vec<(PartitionId, Snapshot)>,
    /// Messages to send once durable.
    pub persisted_messages: Vec<RaftMessage>,
    /// Entries to read back for lagging followers, after the write (so they see it).
    pub fetches: Vec<(PartitionId, LogFetch)>,
}

/// A job is durable (or the store failed: fatal for the shard).
pub(crate) struct Completion {
    pub number: u64,
    pub persisted_messages: Vec<RaftMessage>,
    pub result: Result<(), String>,
    /// What the job's fetches read.
    pub fetched: Vec<(PartitionId, LogFetch, Vec<LogEntry>)>,
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

/// Consecutive jobs merged into one batch: the batch, the snapshots to save before it, and
/// how many jobs it covers.
type Merged = (WriteBatch, Vec<(PartitionId, Snapshot)>, usize);

/// Runs the writer until the job channel closes, then closes the store.
pub(crate) async fn run(
    mut store: AnyStore,
    snapshots: SnapshotStore,
    jobs: flume::Receiver<WriteJob>,
    done: flume::Sender<Completion>,
) {
    let mut failed: Option<String> = None;
    while let Ok(first) = jobs.recv_async().await {
        let mut group = vec![first];
        while group.len() < MAX_JOBS_PER_BATCH {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        // Merge consecutive jobs into as few batches as possible (snapshot installs break a
        // run), then write each batch; jobs complete in order.
        let mut batches: Vec<Merged> = Vec::new();
        for job in &mut group {
            let batch = std::mem::take(&mut job.batch);
            let snaps = std::mem::take(&mut job.snapshots);
            match batches.last_mut() {
                Some((b, s, n)) if snaps.is_empty() && s.is_empty() => match merge(b, batch) {
                    Ok(()) => *n += 1,
                    Err(batch) => batches.push((batch, snaps, 1)),
                },
                _ => batches.push((batch, snaps, 1)),
            }
        }
        let mut jobs_iter = group.into_iter();
        for (batch, snaps, n) in batches {
            let result = match &failed {
                // A failed write is fatal: nothing after it is acknowledged.
                Some(e) => Err(e.clone()),
                None => write(&mut store, &snapshots, batch, snaps).await,
            };
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
            }
            for job in jobs_iter.by_ref().take(n) {
                let mut result = result.clone();
                let mut fetched = Vec::new();
                if result.is_ok() {
                    for (p, f) in job.fetches {
                        match store.entries(p, f.lo, f.hi, f.max_bytes as u64).await {
                            Ok(entries) => fetched.push((p, f, entries)),
                            Err(e) => {
                                // The entries are durable and above the floor: failing to read
                                // them back is a storage failure, fatal like a failed write.
                                let e = format!("reading entries {}..{} of partition {p}: {e}", f.lo, f.hi);
                                failed.get_or_insert_with(|| e.clone());
                                result = Err(e);
                                break;
                            }
                        }
                    }
                }
                let c = Completion {
                    number: job.number,
                    persisted_messages: job.persisted_messages,
                    result,
                    fetched,
                };
                if done.send(c).is_err() {
                    break;
                }
            }
        }
    }
    if let Err(e) = store.close().await {
        tracing::warn!("closing the store: {e}");
    }
}

async fn write(
    store: &mut AnyStore,
    snapshots: &SnapshotStore,
    batch: WriteBatch,
    snaps: Vec<(PartitionId, Snapshot)>,
) -> Result<(), String> {
    // A received snapshot's file is durable before the WAL moves the partition's floor.
    for (p, s) in snaps {
        let files = snapshots.clone();
        glommio::executor()
            .spawn_blocking(move || files.save(p, &s))
            .await
            .map_err(|e| format!("saving the snapshot of partition {p}: {e}"))?;
    }
    if batch.is_empty() {
        return Ok(());
    }
    store.write(&batch).await.map_err(|e| format!("WAL write failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_proto::{HardState, LogEntry};

    fn e(index: u64) -> LogEntry {
        LogEntry { index, term: 1, ..Default::default() }
    }

    #[test]
    fn merge_splices_entries_and_keeps_latest_state() {
        let mut a = WriteBatch {
            partitions: vec![PartitionWrite {
                partition: 1,
                entries: vec![e(1), e(2), e(3)],
                hard_state: Some(HardState { term: 1, vote: 0, commit: 1 }),
                ..Default::default()
            }],
            meta: vec![],
        };
        let b = WriteBatch {
            partitions: vec![
                PartitionWrite {
                    partition: 1,
                    entries: vec![e(3), e(4)],
                    hard_state: Some(HardState { term: 1, vote: 0, commit: 3 }),
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
