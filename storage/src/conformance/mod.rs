//! The conformance suite every [`LogStore`] adapter must pass.
//!
//! Each check is a generic `async fn` taking a [`Fixture`] (how to open, crash and damage one
//! adapter's store). `cfg(test)` instantiates the whole suite for every adapter compiled in
//! (`cargo test -p phalanx-storage --features rocksdb,sqlite,raft-engine`); other crates can run it
//! against their own adapters with the `conformance` feature.

// Test-support code: an unwrap that fails is a failed check, reported with its location.
#![allow(clippy::unwrap_used)]

pub mod model;
pub mod workload;

#[cfg(test)]
mod crash;
#[cfg(test)]
mod fixtures;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use phalanx_proto::HardState;

use self::model::{Model, entries, entry, verify};
use self::workload::{Op, Workload};
use crate::error::{Result, StorageError};
use crate::faults::FaultInjector;
use crate::store::LogStore;
use crate::types::{LogPosition, MetaWrite, PartitionWrite, WriteBatch};

/// One adapter under test.
#[allow(async_fn_in_trait)] // Single-threaded tests.
pub trait Fixture {
    /// The store type.
    type Store: LogStore;

    /// Opens (or reopens) the store, with this fixture's fault injector attached.
    async fn open(&self, sync_writes: bool) -> Result<Self::Store>;

    /// The fault injector attached to every store opened.
    fn faults(&self) -> &FaultInjector;

    /// The directory holding the store's files (`None` for the in-memory store).
    fn dir(&self) -> Option<&Path>;

    /// Writes `batch` so that it ends up as a torn tail — partly on disk, as a crash in the
    /// middle of writing it would leave it — and crashes (consumes) the store.
    async fn write_torn(&self, store: Self::Store, batch: &WriteBatch);

    /// Marks the stored data as written by format `version` (store closed).
    fn set_format_version(&self, version: u32);
}

async fn open<F: Fixture>(f: &F) -> F::Store {
    match f.open(true).await {
        Ok(s) => s,
        Err(e) => panic!("open failed: {e}"),
    }
}

async fn check<S: LogStore>(s: &S, m: &Model, when: &str) {
    if let Err(e) = verify(s, m).await {
        panic!("{when}: store differs from the model: {e}");
    }
}

async fn write<S: LogStore>(s: &mut S, m: &mut Model, b: WriteBatch) {
    if let Err(e) = s.write(&b).await {
        panic!("write failed: {e}");
    }
    m.apply(&b);
}

fn pw(p: u64) -> PartitionWrite {
    PartitionWrite::new(p)
}

fn batch(parts: Vec<PartitionWrite>) -> WriteBatch {
    WriteBatch { partitions: parts, meta: Vec::new() }
}

fn hs(term: u64, vote: u64, commit: u64) -> Option<HardState> {
    Some(HardState { term, vote, commit, recovering: false })
}

/// Round trips: entries, hard states, terms, read budgets, range errors, metadata.
pub async fn round_trip<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    check(&s, &m, "empty store").await;
    assert!(s.partition(1).unwrap().is_none());
    s.write(&WriteBatch::default()).await.unwrap();
    let mut w = pw(1);
    w.entries = entries(1, 1, 10, 1, 100);
    w.hard_state = hs(1, 2, 5);
    write(&mut s, &mut m, batch(vec![w])).await;
    check(&s, &m, "after one batch").await;
    let st = s.partition(1).unwrap().unwrap();
    assert_eq!((st.first_index(), st.last, st.hard_state.commit), (1, LogPosition::new(10, 1), 5));
    assert_eq!(s.entries(1, 3, 6, u64::MAX).await.unwrap(), entries(1, 3, 5, 1, 100));
    // A budget smaller than one entry still returns one; a larger one stops at the budget.
    assert_eq!(s.entries(1, 1, 11, 1).await.unwrap().len(), 1);
    let one = entry(1, 1, 1, 100).approx_size() as u64;
    assert_eq!(s.entries(1, 1, 11, 3 * one).await.unwrap().len(), 3);
    assert!(s.entries(1, 1, 1, u64::MAX).await.unwrap().is_empty());
    assert!(matches!(s.entries(1, 0, 3, u64::MAX).await, Err(StorageError::OutOfRange { .. })));
    assert!(matches!(s.entries(1, 5, 12, u64::MAX).await, Err(StorageError::OutOfRange { .. })));
    assert!(matches!(s.entries(9, 1, 2, u64::MAX).await, Err(StorageError::OutOfRange { .. })));
    // Appends continue the log; hard state alone is a valid write.
    let mut w = pw(1);
    w.entries = entries(1, 11, 12, 2, 3000);
    write(&mut s, &mut m, batch(vec![w])).await;
    let mut w = pw(1);
    w.hard_state = hs(2, 0, 12);
    write(&mut s, &mut m, batch(vec![w])).await;
    // Metadata.
    s.set_meta(b"node-id", Some(b"7")).await.unwrap();
    s.set_meta(b"gone", Some(b"x")).await.unwrap();
    s.set_meta(b"gone", None).await.unwrap();
    m.meta_keys.extend([Bytes::from_static(b"node-id"), Bytes::from_static(b"gone")]);
    m.meta.insert(Bytes::from_static(b"node-id"), Bytes::from_static(b"7"));
    check(&s, &m, "after appends and metadata").await;
    let stats = s.stats();
    assert_eq!(stats.batches, 6, "{stats:?}");
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "after reopen").await;
    s.close().await.unwrap();
}

/// The same indexes in many partitions stay apart.
pub async fn same_index_many_partitions<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    for round in 0..3u64 {
        let parts = (0..40u64)
            .map(|p| {
                let mut w = pw(p);
                w.entries = entries(p, round * 5 + 1, round * 5 + 5, 1, 20 + p as usize);
                w.hard_state = hs(1, p, round * 5 + 5);
                w
            })
            .collect();
        write(&mut s, &mut m, batch(parts)).await;
    }
    check(&s, &m, "40 partitions").await;
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "40 partitions after reopen").await;
    s.close().await.unwrap();
}

/// A conflicting suffix is replaced, then the log grows again.
pub async fn truncate_and_reappend<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(3);
    w.entries = entries(3, 1, 10, 1, 64);
    write(&mut s, &mut m, batch(vec![w])).await;
    let mut w = pw(3);
    w.entries = entries(3, 6, 8, 2, 80);
    w.hard_state = hs(2, 1, 5);
    write(&mut s, &mut m, batch(vec![w])).await;
    check(&s, &m, "after truncation").await;
    assert_eq!(s.partition(3).unwrap().unwrap().last, LogPosition::new(8, 2));
    assert_eq!(s.term(3, 9).await.unwrap(), None);
    let mut w = pw(3);
    w.entries = entries(3, 9, 12, 2, 80);
    write(&mut s, &mut m, batch(vec![w])).await;
    // Replacing from the very first entry.
    let mut w = pw(3);
    w.entries = entries(3, 1, 2, 3, 10);
    write(&mut s, &mut m, batch(vec![w])).await;
    check(&s, &m, "after re-append").await;
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "after reopen").await;
    s.close().await.unwrap();
}

/// Compaction and snapshot installs move the floor; the floor's term is remembered.
pub async fn compaction_and_snapshots<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(1);
    w.entries = entries(1, 1, 20, 1, 50);
    write(&mut s, &mut m, batch(vec![w])).await;
    let mut w = pw(1);
    w.compact_to = Some(10);
    write(&mut s, &mut m, batch(vec![w])).await;
    let st = s.partition(1).unwrap().unwrap();
    assert_eq!((st.floor, st.first_index()), (LogPosition::new(10, 1), 11));
    assert!(matches!(s.entries(1, 5, 12, u64::MAX).await, Err(StorageError::OutOfRange { .. })));
    assert_eq!(s.term(1, 10).await.unwrap(), Some(1));
    assert_eq!(s.term(1, 9).await.unwrap(), None);
    // Compaction at or below the floor does nothing; past the last entry it is refused.
    let mut w = pw(1);
    w.compact_to = Some(4);
    write(&mut s, &mut m, batch(vec![w])).await;
    let mut w = pw(1);
    w.compact_to = Some(21);
    assert!(matches!(s.write(&batch(vec![w])).await, Err(StorageError::InvalidBatch { .. })));
    // Entries and a compaction into them, in one batch.
    let mut w = pw(1);
    w.entries = entries(1, 21, 25, 2, 50);
    w.compact_to = Some(23);
    write(&mut s, &mut m, batch(vec![w])).await;
    assert_eq!(s.partition(1).unwrap().unwrap().floor, LogPosition::new(23, 2));
    // A snapshot matching the log keeps the suffix…
    let mut w = pw(1);
    w.snapshot = Some(LogPosition::new(24, 2));
    write(&mut s, &mut m, batch(vec![w])).await;
    assert_eq!(s.partition(1).unwrap().unwrap().last, LogPosition::new(25, 2));
    // …one that does not match drops everything, and entries can follow it in the batch.
    let mut w = pw(1);
    w.snapshot = Some(LogPosition::new(40, 5));
    w.entries = entries(1, 41, 42, 5, 50);
    w.hard_state = hs(5, 0, 41);
    write(&mut s, &mut m, batch(vec![w])).await;
    let st = s.partition(1).unwrap().unwrap();
    assert_eq!((st.floor, st.last), (LogPosition::new(40, 5), LogPosition::new(42, 5)));
    // Entries below the floor are refused.
    let mut w = pw(1);
    w.entries = entries(1, 40, 40, 5, 50);
    assert!(matches!(s.write(&batch(vec![w])).await, Err(StorageError::InvalidBatch { .. })));
    check(&s, &m, "after compactions").await;
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "after reopen").await;
    s.close().await.unwrap();
}

/// A removed partition is gone, durably, and can start over.
pub async fn remove_partition<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    for p in [1u64, 2] {
        let mut w = pw(p);
        w.entries = entries(p, 1, 30, 1, 200);
        w.hard_state = hs(1, 1, 30);
        write(&mut s, &mut m, batch(vec![w])).await;
    }
    s.remove_partition(1).await.unwrap();
    s.remove_partition(77).await.unwrap();
    m.remove(1);
    check(&s, &m, "after removal").await;
    s.close().await.unwrap();
    let mut s = open(f).await;
    check(&s, &m, "after removal and reopen").await;
    let mut w = pw(1);
    w.entries = entries(1, 1, 2, 9, 10);
    write(&mut s, &mut m, batch(vec![w])).await;
    check(&s, &m, "after re-creation").await;
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "after re-creation and reopen").await;
    s.close().await.unwrap();
}

/// A long random workload (conflicts, snapshots, compactions, removals, metadata), checked
/// after every reopen. With `sync_writes` off, a clean close must still keep everything.
pub async fn reopen_intact<F: Fixture>(f: &F, ops: u64, sync_writes: bool) {
    let w = Workload { seed: 42, partitions: 6, compact_above: 300, payload_max: 6000 };
    let mut m = Model::default();
    let mut k = 0;
    for round in 0..3 {
        let mut s = f.open(sync_writes).await.unwrap();
        check(&s, &m, &format!("reopen {round}")).await;
        for _ in 0..ops {
            k += 1;
            match w.advance(k, &mut m) {
                Op::Batch(b) => s.write(&b).await.unwrap(),
                Op::Remove(p) => s.remove_partition(p).await.unwrap(),
            }
        }
        check(&s, &m, &format!("before close {round}")).await;
        s.close().await.unwrap();
    }
}

/// Checks that `load_partitions` answers exactly what `load_partition` answers, id by id:
/// for every partition, a subset in another order, unknown ids, ids given twice, none.
async fn bulk_load_agrees<S: LogStore>(s: &S, when: &str) {
    let all = s.partitions().unwrap();
    assert!(all.len() >= 3, "{when}: the workload left only {all:?}");
    let unknown: Vec<u64> = [0u64, 99, 1 << 40].into_iter().filter(|p| !all.contains(p)).collect();
    let subset: Vec<u64> = all.iter().rev().step_by(2).copied().collect();
    let mixed = vec![unknown[0], all[1], all[0], unknown[1], all[1], *all.last().unwrap()];
    for (what, ids) in
        [("all", all), ("subset", subset), ("unknown", unknown), ("mixed", mixed), ("none", vec![])]
    {
        let got = s.load_partitions(&ids).await.unwrap_or_else(|e| panic!("{when}: {what}: {e}"));
        assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), ids, "{when}: {what}: ids answered");
        for (p, r) in &got {
            let one = s.load_partition(*p).await.unwrap();
            if *r != one {
                let len = |r: &Option<crate::RecoveredPartition>| r.as_ref().map(|r| r.entries.len());
                panic!(
                    "{when}: {what}: partition {p}: bulk load differs from load_partition ({:?} vs {:?} entries)",
                    len(r),
                    len(&one)
                );
            }
        }
    }
}

/// The bulk load (`load_partitions`) returns exactly what `load_partition` returns for each
/// partition, after a random workload with truncations, compactions, snapshot installs and
/// removals: in the running store, after a reopen, and after writing on top of the reopened
/// store.
pub async fn bulk_load_matches_per_partition<F: Fixture>(f: &F) {
    let w = Workload { seed: 7, partitions: 12, compact_above: 60, payload_max: 6000 };
    let mut m = Model::default();
    let mut s = open(f).await;
    let mut k = 0;
    let mut run = async |s: &mut F::Store, m: &mut Model, ops: u64| {
        for _ in 0..ops {
            k += 1;
            match w.advance(k, m) {
                Op::Batch(b) => s.write(&b).await.unwrap(),
                Op::Remove(p) => s.remove_partition(p).await.unwrap(),
            }
        }
    };
    run(&mut s, &mut m, 600).await;
    if s.name() == "wal" {
        // The check is meant to cover entries relocated by the WAL's garbage collection.
        assert!(s.stats().entries_relocated > 0, "{:?}", s.stats());
    }
    check(&s, &m, "bulk load, before reopen").await;
    bulk_load_agrees(&s, "before reopen").await;
    s.close().await.unwrap();
    let mut s = open(f).await;
    check(&s, &m, "bulk load, after reopen").await;
    bulk_load_agrees(&s, "after reopen").await;
    run(&mut s, &mut m, 200).await;
    check(&s, &m, "bulk load, after more writes").await;
    bulk_load_agrees(&s, "after more writes").await;
    s.close().await.unwrap();
}

/// A batch torn by a crash disappears entirely; everything before it is intact; the store
/// keeps working after recovery.
pub async fn torn_tail_recovered<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    for i in 0..5u64 {
        let parts = (1..=3u64)
            .map(|p| {
                let mut w = pw(p);
                w.entries = entries(p, i * 4 + 1, i * 4 + 4, 1, 700);
                w.hard_state = hs(1, 1, i * 4 + 4);
                w
            })
            .collect();
        write(&mut s, &mut m, batch(parts)).await;
    }
    // The torn batch touches every partition, with entries, hard states and metadata.
    let mut torn = batch(
        (1..=3u64)
            .map(|p| {
                let mut w = pw(p);
                w.entries = entries(p, 21, 30, 1, 900);
                w.hard_state = hs(2, 2, 30);
                w
            })
            .collect(),
    );
    torn.meta.push(MetaWrite { key: Bytes::from_static(b"torn"), value: Some(Bytes::from_static(b"yes")) });
    m.meta_keys.insert(Bytes::from_static(b"torn"));
    f.write_torn(s, &torn).await;
    let mut s = open(f).await;
    check(&s, &m, "after recovering a torn tail").await;
    let mut w = pw(2);
    w.entries = entries(2, 21, 22, 3, 100);
    write(&mut s, &mut m, batch(vec![w])).await;
    s.close().await.unwrap();
    let s = open(f).await;
    check(&s, &m, "after writing past a recovered tail").await;
    s.close().await.unwrap();
}

/// Finds `marker` in the files under `dir` (the first file, in name order, that holds it)
/// and flips one bit in the middle of it — in every copy in that file, since a backend may
/// keep stale copies in free pages, where damage is harmless. Returns the file.
pub(crate) fn flip_bit_in(dir: &Path, marker: &[u8]) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    for path in files {
        let Ok(mut data) = std::fs::read(&path) else { continue };
        let hits: Vec<usize> =
            data.windows(marker.len()).enumerate().filter(|(_, w)| *w == marker).map(|(i, _)| i).collect();
        if !hits.is_empty() {
            for at in hits {
                data[at + marker.len() / 2] ^= 0x10;
            }
            std::fs::write(&path, &data).ok()?;
            return Some(path);
        }
    }
    None
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A bit flipped in a record in the middle of the log is reported — by `open` or by the read
/// that meets it — as corruption naming the file; never silently dropped, never a panic.
pub async fn bit_flip_detected<F: Fixture>(f: &F) {
    let Some(dir) = f.dir() else { return };
    let mut s = open(f).await;
    let marker = b"#MARKER-0123456789abcdef-MARKER#";
    for i in 1..=12u64 {
        let mut w = pw(1);
        w.entries = entries(1, i * 3 - 2, i * 3, 1, 300);
        if i == 3 {
            let mut e = entry(1, 8, 1, 300);
            let mut p = e.payload.to_vec();
            p[100..100 + marker.len()].copy_from_slice(marker);
            e.payload = p.into();
            w.entries[1] = e;
        }
        s.write(&batch(vec![w])).await.unwrap();
    }
    s.close().await.unwrap();
    let flipped = flip_bit_in(dir, marker).expect("marker not found in any file");
    let err = match f.open(true).await {
        Err(e) => e,
        Ok(s) => match s.entries(1, 1, 37, u64::MAX).await {
            Err(e) => e,
            Ok(got) => {
                panic!("flipped bit in {} went unnoticed ({} entries read)", flipped.display(), got.len())
            }
        },
    };
    match &err {
        StorageError::Corrupt { file, .. } => {
            assert!(file.starts_with(dir), "corruption names {} outside {}", file.display(), dir.display());
        }
        other => panic!("expected a corruption error, got {other}"),
    }
}

/// An injected write failure poisons the store; after reopening, the batch is absent.
pub async fn write_failure_is_fatal<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(1);
    w.entries = entries(1, 1, 5, 1, 100);
    write(&mut s, &mut m, batch(vec![w])).await;
    f.faults().fail_next_write();
    let mut w = pw(1);
    w.entries = entries(1, 6, 9, 1, 100);
    w.hard_state = hs(1, 1, 9);
    let err = s.write(&batch(vec![w.clone()])).await.expect_err("injected failure");
    assert!(err.is_fatal(), "{err}");
    // Poisoned: every later call fails, nothing is retried.
    assert!(s.write(&batch(vec![w])).await.expect_err("poisoned").is_fatal());
    assert!(s.partition(1).expect_err("poisoned").is_fatal());
    assert!(s.entries(1, 1, 2, u64::MAX).await.expect_err("poisoned").is_fatal());
    assert!(s.remove_partition(1).await.expect_err("poisoned").is_fatal());
    assert!(s.get_meta(b"x").expect_err("poisoned").is_fatal());
    assert!(s.close().await.is_err());
    let s = open(f).await;
    check(&s, &m, "after a failed write").await;
    s.close().await.unwrap();
}

/// An injected sync failure poisons the store; after reopening, the batch is either wholly
/// present or wholly absent.
pub async fn sync_failure_is_fatal<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(1);
    w.entries = entries(1, 1, 5, 1, 100);
    write(&mut s, &mut m, batch(vec![w])).await;
    f.faults().fail_next_sync();
    let mut w = pw(1);
    w.entries = entries(1, 3, 9, 2, 100);
    w.hard_state = hs(2, 1, 9);
    let b = batch(vec![w]);
    assert!(s.write(&b).await.expect_err("injected failure").is_fatal());
    assert!(s.term(1, 1).await.expect_err("poisoned").is_fatal());
    assert!(s.partitions().expect_err("poisoned").is_fatal());
    drop(s);
    let s = open(f).await;
    let before = verify(&s, &m).await;
    let mut after = m.clone();
    after.apply(&b);
    let with = verify(&s, &after).await;
    assert!(before.is_ok() || with.is_ok(), "neither all nor nothing: {before:?} / {with:?}");
    s.close().await.unwrap();
}

/// A write whose future is dropped before it completes leaves the store failed: what reached
/// the disk is unknown. After reopening, the batch is wholly present or wholly absent.
#[cfg(test)]
pub async fn abandoned_write_poisons<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(1);
    w.entries = entries(1, 1, 5, 1, 100);
    write(&mut s, &mut m, batch(vec![w])).await;
    let mut w = pw(1);
    w.entries = entries(1, 6, 40, 1, 1000);
    let b = batch(vec![w]);
    let completed = {
        let fut = s.write(&b);
        futures_lite::future::poll_once(fut).await.is_some()
    };
    if completed {
        // The adapter finished in one poll (in memory): nothing was abandoned.
        m.apply(&b);
        check(&s, &m, "write completed in one poll").await;
        return;
    }
    assert!(s.partition(1).expect_err("abandoned write must poison").is_fatal());
    assert!(s.write(&b).await.expect_err("abandoned write must poison").is_fatal());
    drop(s);
    // Background work of the abandoned write may still be finishing.
    glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
    let s = open(f).await;
    let before = verify(&s, &m).await;
    let mut after = m.clone();
    after.apply(&b);
    let with = verify(&s, &after).await;
    assert!(before.is_ok() || with.is_ok(), "neither all nor nothing: {before:?} / {with:?}");
    s.close().await.unwrap();
}

/// Data written by a newer format version is refused, not misread.
pub async fn newer_format_refused<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut w = pw(1);
    w.entries = entries(1, 1, 3, 1, 10);
    s.write(&batch(vec![w])).await.unwrap();
    s.close().await.unwrap();
    f.set_format_version(99);
    match f.open(true).await {
        Err(StorageError::FormatTooNew { found: 99, .. }) => {}
        Err(e) => panic!("expected FormatTooNew, got {e}"),
        Ok(_) => panic!("a newer format was opened"),
    }
}

/// Invalid batches are refused without writing anything and without poisoning the store.
pub async fn invalid_batches_refused<F: Fixture>(f: &F) {
    let mut s = open(f).await;
    let mut m = Model::default();
    let mut w = pw(1);
    w.entries = entries(1, 1, 3, 2, 10);
    write(&mut s, &mut m, batch(vec![w])).await;
    let bad = [
        {
            let mut w = pw(1);
            w.entries = entries(1, 5, 6, 2, 10); // gap
            batch(vec![w])
        },
        {
            let mut w = pw(1);
            w.entries = vec![entry(1, 4, 2, 10), entry(1, 6, 2, 10)]; // not contiguous
            batch(vec![w])
        },
        {
            let mut w = pw(2);
            w.entries = entries(2, 2, 3, 1, 10); // must start at 1
            batch(vec![w])
        },
        {
            let mut w = pw(1);
            w.entries = vec![entry(1, 4, 0, 10)]; // term 0
            batch(vec![w])
        },
        {
            let mut w = pw(1);
            w.hard_state = hs(2, 0, 3);
            batch(vec![w.clone(), w]) // twice
        },
        WriteBatch {
            partitions: vec![],
            meta: vec![MetaWrite { key: Bytes::from(vec![0u8; 5000]), value: Some(Bytes::new()) }],
        },
    ];
    for b in &bad {
        let e = s.write(b).await.expect_err("invalid batch accepted");
        assert!(!e.is_fatal(), "{e}");
    }
    check(&s, &m, "after refused batches").await;
    let mut w = pw(1);
    w.entries = entries(1, 4, 4, 2, 10);
    write(&mut s, &mut m, batch(vec![w])).await;
    check(&s, &m, "still usable").await;
    s.close().await.unwrap();
}
