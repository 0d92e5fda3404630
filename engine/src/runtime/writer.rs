//! The WAL writer of one shard: a task on the shard's executor that owns the log store and
//! makes Readies durable in order, while the shard loop goes on receiving, sending and
//! applying. Jobs queued behind a write in progress are merged into the next batch, so one
//! `fdatasync` covers every Ready produced during the previous one (group commit).
//!
//! Completions come back in job order; the shard then sends the messages that needed
//! durable state and acknowledges the Ready (`MultiRaft::advance`).

use std::collections::BTreeMap;

use phalanx_proto::{LogEntry, RaftMessage};
use phalanx_storage::{AnyStore, LogStore, PartitionWrite, StorageError, WriteBatch};

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
    /// Snapshots to make durable before the batch: received from leaders, or taken here at a
    /// checkpoint (the batch then compacts the WAL below them).
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
                            // A later Ready merged into this batch compacted the range (a
                            // checkpoint was applied meanwhile): nothing to send. The core
                            // takes an empty answer as "ask again", and the follower now
                            // needs a snapshot.
                            Err(StorageError::OutOfRange { first, .. }) if f.lo < first => {
                                fetched.push((p, f, Vec::new()));
                            }
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
    // A snapshot's file is durable before the WAL moves the partition's floor.
    if !snaps.is_empty() {
        let ids: Vec<PartitionId> = snaps.iter().map(|(p, _)| *p).collect();
        let files = snapshots.clone();
        glommio::executor()
            .spawn_blocking(move || files.save_all(snaps.iter().map(|(p, s)| (*p, s))))
            .await
            .map_err(|e| format!("saving the snapshots of partitions {ids:?}: {e}"))?;
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

    /// Regression: a fetch asked in one Ready and a compaction decided in a later one are
    /// merged into one batch; the fetch, read after the batch, finds its range compacted. That
    /// is no storage failure: the answer is empty (the core then sends a snapshot), and the
    /// jobs after it still complete.
    #[test]
    fn fetch_overtaken_by_a_merged_compaction_answers_empty() {
        use phalanx_storage::memory::MemoryStore;
        let ex = glommio::LocalExecutorBuilder::default().make().expect("an executor");
        let done = ex.run(async {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let snapshots = SnapshotStore::open(dir.path()).expect("a snapshot directory");
            let store = AnyStore::Memory(MemoryStore::new(phalanx_storage::StoreOptions::default()));
            let job = |number, partitions, fetches| WriteJob {
                number,
                batch: WriteBatch { partitions, meta: vec![] },
                snapshots: vec![],
                persisted_messages: vec![],
                fetches,
            };
            let (jobs, rx) = flume::unbounded();
            let (tx, done) = flume::unbounded();
            let write = |entries: Vec<LogEntry>, compact_to| PartitionWrite {
                partition: 1,
                entries,
                compact_to,
                ..Default::default()
            };
            let fetch = LogFetch { to: 2, lo: 2, hi: 5, max_bytes: 1 << 20 };
            // Queued before the writer runs, so all three merge into one batch.
            jobs.send(job(1, vec![write((1..=10).map(e).collect(), None)], vec![(1, fetch)])).unwrap();
            jobs.send(job(2, vec![write(vec![], Some(8))], vec![])).unwrap();
            jobs.send(job(3, vec![write(vec![e(11)], None)], vec![(1, LogFetch { lo: 9, hi: 12, ..fetch })]))
                .unwrap();
            drop(jobs);
            run(store, snapshots, rx, tx).await;
            done.drain().collect::<Vec<Completion>>()
        });
        assert_eq!(done.iter().map(|c| c.number).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(
            done.iter().all(|c| c.result.is_ok()),
            "{:?}",
            done.iter().map(|c| &c.result).collect::<Vec<_>>()
        );
        assert!(done[0].fetched[0].2.is_empty(), "the compacted range reads as nothing");
        let later: Vec<u64> = done[2].fetched[0].2.iter().map(|e| e.index).collect();
        assert_eq!(later, vec![9, 10, 11], "ranges above the floor still read back");
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
