//! The WAL writer of one shard: a task on the shard's executor that owns the log store and
//! makes Readies durable in order, while the shard loop goes on receiving, sending and
//! applying. Jobs queued behind a write in progress are merged into the next batch, so one
//! synchronous write (the WAL's segments are open `O_DSYNC`) covers every Ready produced
//! during the previous one (group commit). How jobs merge and in which steps a merged batch
//! becomes durable are pure functions shared with the simulator (`shard/write.rs`).
//!
//! Completions come back in job order; the shard then sends the messages that needed
//! durable state and acknowledges the Ready (`MultiRaft::advance`).
//!
//! Checkpoint snapshots are saved by a background task beside the writes, one save at a
//! time; their partitions' compactions wait for them (`shard/checkpoint_saves.rs`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Instant;

use phalanx_storage::{AnyStore, LogStore, StorageError, StoreStats, WriteBatch};

use super::snapshots::SnapshotStore;
use crate::Error;
use crate::raft::Snapshot;
use crate::shard::checkpoint_saves::CheckpointSaves;
pub(crate) use crate::shard::write::{Completion, WriteJob};
use crate::shard::write::{MAX_JOBS_PER_BATCH, Merged, WriteStep, merge_jobs, plan, strip};
use crate::state_machine::PartitionId;
use crate::stats::LatencyHistogram;

/// What the writer counts, shared with its shard's driver for `NodeHandle::stats` (one
/// executor: no lock).
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// The store's counters as of the last write.
    pub store: StoreStats,
    /// How long each log write took (`LogStore::write`: one batch, synced).
    pub write_latency: LatencyHistogram,
}

/// Runs the writer until the job channel closes, then closes the store.
///
/// A failed write is fatal: every later job completes with the error. A write the store
/// *refuses* (over a limit, or breaking the contract — nothing stored, the store usable,
/// which splitting makes an engine bug or a misconfiguration, never a client's doing) stops
/// only the partitions concerned: the refused batch is retried partition by partition, the
/// partitions refused alone are reported in the job's completion, and every later write,
/// message and fetch of theirs is dropped so nothing of them is stored past the gap. The
/// shard stops them; they recover from what is stored when the node restarts.
pub(crate) async fn run(
    shard: usize,
    mut store: AnyStore,
    snapshots: SnapshotStore,
    jobs: flume::Receiver<WriteJob>,
    done: flume::Sender<Completion>,
    stats: Rc<RefCell<WriterStats>>,
) {
    stats.borrow_mut().store = store.stats();
    let mut failed: Option<Error> = None;
    let mut refused: BTreeSet<PartitionId> = BTreeSet::new();
    let mut saves = CheckpointSaves::default();
    // The background save's result (at most one save runs).
    let (saved_tx, saved_rx) = flume::bounded::<Result<(), Error>>(1);
    loop {
        let first = if saves.is_saving() {
            let got = futures_lite::future::or(async { Some(jobs.recv_async().await) }, async {
                await_save(&saved_rx, &mut saves, &mut failed, &snapshots).await;
                None
            })
            .await;
            match got {
                Some(Ok(job)) => job,
                Some(Err(_)) => break,
                None => {
                    // The save ended with no job waiting: its compactions go now, alone.
                    write_released(
                        shard,
                        &mut store,
                        &snapshots,
                        &mut saves,
                        &mut refused,
                        &mut failed,
                        &stats,
                    )
                    .await;
                    start_save(&mut saves, &snapshots, &saved_tx);
                    continue;
                }
            }
        } else {
            match jobs.recv_async().await {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_JOBS_PER_BATCH {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        // Consecutive jobs merged into as few batches as possible; jobs complete in order.
        let merged = merge_jobs(&mut group);
        let mut jobs_iter = group.into_iter();
        for Merged { mut batch, snapshots: mut snaps, checkpoints, jobs: n } in merged {
            if saves.admit(&mut batch, checkpoints) {
                // An install of a partition whose checkpoint is being saved: that file first.
                await_save(&saved_rx, &mut saves, &mut failed, &snapshots).await;
            }
            strip(&mut batch, &refused);
            snaps.retain(|(p, _)| !refused.contains(p));
            let mut newly: Vec<(PartitionId, String)> = Vec::new();
            let result = match &failed {
                // A failed write is fatal: nothing after it is acknowledged.
                Some(e) => Err(e.clone()),
                None => {
                    let r = write(shard, &mut store, &snapshots, batch, snaps, &mut newly, &stats).await;
                    stats.borrow_mut().store = store.stats();
                    r
                }
            };
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
            }
            for (p, _) in &newly {
                saves.forget(*p);
            }
            refused.extend(newly.iter().map(|(p, _)| *p));
            let mut report = Some(newly);
            for job in jobs_iter.by_ref().take(n) {
                let mut result = result.clone();
                let mut fetched = Vec::new();
                let mut persisted_messages = job.persisted_messages;
                if !refused.is_empty() {
                    // An acknowledgement of a write that was not stored must not leave.
                    persisted_messages.retain(|m| !refused.contains(&m.group));
                }
                if result.is_ok() {
                    for (p, f) in job.fetches {
                        if refused.contains(&p) {
                            continue;
                        }
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
                                let what = format!("reading entries {}..{} of partition {p}", f.lo, f.hi);
                                let e = Error::storage(shard, what, e);
                                failed.get_or_insert_with(|| e.clone());
                                result = Err(e);
                                break;
                            }
                        }
                    }
                }
                let c = Completion {
                    number: job.number,
                    persisted_messages,
                    result,
                    fetched,
                    // Reported once, with the first job of the batch: the shard stops them
                    // before it acts on anything of the batch.
                    refused: report.take().unwrap_or_default(),
                };
                if done.send(c).is_err() {
                    break;
                }
            }
        }
        start_save(&mut saves, &snapshots, &saved_tx);
    }
    // A clean stop: the save under way ends, the queued ones are made, and the compactions
    // they held back are written.
    while failed.is_none() {
        if saves.is_saving() {
            await_save(&saved_rx, &mut saves, &mut failed, &snapshots).await;
        }
        write_released(shard, &mut store, &snapshots, &mut saves, &mut refused, &mut failed, &stats).await;
        if !start_save(&mut saves, &snapshots, &saved_tx) {
            break;
        }
    }
    if let Err(e) = store.close().await {
        tracing::warn!("closing the store: {e}");
    }
}

/// Starts saving the queued checkpoint snapshots in the background, when no save runs;
/// its result arrives on `done`. Returns whether a save started.
fn start_save(
    saves: &mut CheckpointSaves,
    snapshots: &SnapshotStore,
    done: &flume::Sender<Result<(), Error>>,
) -> bool {
    let Some(files) = saves.next_save() else { return false };
    let store = snapshots.clone();
    let done = done.clone();
    glommio::spawn_local(async move {
        let r = save(&store, files).await;
        // The channel holds one result and one save runs at a time: never full.
        let _ = done.send_async(r).await;
    })
    .detach();
    true
}

/// Saves snapshot files off the executor's thread (a blocking write and two syncs).
async fn save(store: &SnapshotStore, files: Vec<(PartitionId, Snapshot)>) -> Result<(), Error> {
    let ids: Vec<PartitionId> = files.iter().map(|(p, _)| *p).collect();
    let files_store = store.clone();
    glommio::executor()
        .spawn_blocking(move || files_store.save_all(files.iter().map(|(p, s)| (*p, s))))
        .await
        .map_err(|e| Error::Io {
            path: store.dir().to_path_buf(),
            source: std::sync::Arc::new(std::io::Error::new(
                e.kind(),
                format!("saving the snapshots of partitions {ids:?}: {e}"),
            )),
        })
}

/// Waits for the background save's outcome: its compactions released, or the writer failed
/// (also if its result never arrives: its task was dropped).
async fn await_save(
    saved: &flume::Receiver<Result<(), Error>>,
    saves: &mut CheckpointSaves,
    failed: &mut Option<Error>,
    snapshots: &SnapshotStore,
) {
    let lost = || Error::Io {
        path: snapshots.dir().to_path_buf(),
        source: std::sync::Arc::new(std::io::Error::other(
            "a checkpoint snapshot save ended without a result",
        )),
    };
    match saved.recv_async().await.unwrap_or_else(|_| Err(lost())) {
        Ok(()) => saves.saved(),
        Err(e) => {
            failed.get_or_insert(e);
        }
    }
}

/// Writes the compactions the saves released, alone (no job carries them), unless the
/// writer failed.
async fn write_released(
    shard: usize,
    store: &mut AnyStore,
    snapshots: &SnapshotStore,
    saves: &mut CheckpointSaves,
    refused: &mut BTreeSet<PartitionId>,
    failed: &mut Option<Error>,
    stats: &RefCell<WriterStats>,
) {
    if failed.is_some() {
        return;
    }
    let Some(mut batch) = saves.take_released() else { return };
    strip(&mut batch, refused);
    let mut newly = Vec::new();
    if let Err(e) = write(shard, store, snapshots, batch, Vec::new(), &mut newly, stats).await {
        failed.get_or_insert(e);
    }
    for (p, _) in &newly {
        saves.forget(*p);
    }
    refused.extend(newly.iter().map(|(p, _)| *p));
    stats.borrow_mut().store = store.stats();
}

async fn write(
    shard: usize,
    store: &mut AnyStore,
    snapshots: &SnapshotStore,
    batch: WriteBatch,
    snaps: Vec<(PartitionId, Snapshot)>,
    refused: &mut Vec<(PartitionId, String)>,
    stats: &RefCell<WriterStats>,
) -> Result<(), Error> {
    let fatal = |e: StorageError| Error::storage(shard, "writing the WAL", e);
    let mut stopped: BTreeSet<PartitionId> = BTreeSet::new();
    for step in plan(batch, snaps, store.max_batch_cost()) {
        let mut chunk = match step {
            WriteStep::Snapshots(snaps) => {
                save(snapshots, snaps).await?;
                continue;
            }
            WriteStep::Batch(chunk) => chunk,
        };
        strip(&mut chunk, &stopped);
        let started = Instant::now();
        let written = store.write(&chunk).await;
        if !chunk.partitions.is_empty() || !chunk.meta.is_empty() {
            stats.borrow_mut().write_latency.record(started.elapsed());
        }
        match written {
            Ok(()) => {}
            Err(e) if e.is_refusal() => {
                // Find which partitions the store refuses: each alone (nothing of the refused
                // batch was stored, so each is written whole, in order).
                for pw in chunk.partitions {
                    let p = pw.partition;
                    let alone = WriteBatch { partitions: vec![pw], meta: Vec::new() };
                    match store.write(&alone).await {
                        Ok(()) => {}
                        Err(e) if e.is_refusal() => {
                            stopped.insert(p);
                            refused.push((p, e.to_string()));
                        }
                        Err(e) => return Err(fatal(e)),
                    }
                }
                if !chunk.meta.is_empty() {
                    let meta = WriteBatch { partitions: Vec::new(), meta: chunk.meta };
                    store.write(&meta).await.map_err(fatal)?;
                }
            }
            Err(e) => return Err(fatal(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogFetch;
    use phalanx_proto::LogEntry;
    use phalanx_storage::PartitionWrite;

    fn e(index: u64) -> LogEntry {
        LogEntry { index, term: 1, ..Default::default() }
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
                checkpoints: vec![],
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
            let stats = Rc::new(RefCell::new(WriterStats::default()));
            run(0, store, snapshots, rx, tx, stats.clone()).await;
            (done.drain().collect::<Vec<Completion>>(), stats.take())
        });
        let (done, stats) = done;
        // The counters the driver reads for `NodeHandle::stats`: one merged write, timed.
        assert_eq!(stats.store.entries_written, 11);
        assert!(stats.write_latency.count >= 1 && stats.write_latency.count <= stats.store.batches);
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
}
