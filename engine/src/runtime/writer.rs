//! The WAL writer of one shard: a task on the shard's executor that owns the log store and
//! makes Readies durable in order, while the shard loop goes on receiving, sending and
//! applying. Jobs queued behind a write in progress are merged into the next batch, so one
//! `fdatasync` covers every Ready produced during the previous one (group commit).
//!
//! Completions come back in job order; the shard then sends the messages that needed
//! durable state and acknowledges the Ready (`MultiRaft::advance`).

use std::collections::{BTreeMap, BTreeSet};

use phalanx_proto::{HardState, LogEntry, RaftMessage};
use phalanx_storage::limits::{
    BATCH_PARTITIONS_MAX, PARTITION_RECORDS_BYTES, batch_cost, batch_cost_bound, entry_cost,
};
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
    /// Partitions whose writes the store refused in this job (a limit or the contract:
    /// nothing of that write was stored, the store stays usable), with the store's reason.
    /// The writer drops everything later of theirs; the shard stops them (see `run`).
    pub refused: Vec<(PartitionId, String)>,
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
/// then refuses it and the partition is stopped (`run`).
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
fn strip(batch: &mut WriteBatch, refused: &BTreeSet<PartitionId>) {
    if !refused.is_empty() {
        batch.partitions.retain(|w| !refused.contains(&w.partition));
    }
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
    mut store: AnyStore,
    snapshots: SnapshotStore,
    jobs: flume::Receiver<WriteJob>,
    done: flume::Sender<Completion>,
) {
    let mut failed: Option<String> = None;
    let mut refused: BTreeSet<PartitionId> = BTreeSet::new();
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
        for (mut batch, mut snaps, n) in batches {
            strip(&mut batch, &refused);
            snaps.retain(|(p, _)| !refused.contains(p));
            let mut newly: Vec<(PartitionId, String)> = Vec::new();
            let result = match &failed {
                // A failed write is fatal: nothing after it is acknowledged.
                Some(e) => Err(e.clone()),
                None => write(&mut store, &snapshots, batch, snaps, &mut newly).await,
            };
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
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
    refused: &mut Vec<(PartitionId, String)>,
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
    let fatal = |e: StorageError| format!("WAL write failed: {e}");
    let mut stopped: BTreeSet<PartitionId> = BTreeSet::new();
    for mut chunk in split(batch, store.max_batch_cost()) {
        strip(&mut chunk, &stopped);
        match store.write(&chunk).await {
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
