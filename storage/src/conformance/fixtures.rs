//! Fixtures for the adapters of this crate, and the suite instantiated for each.

use std::path::Path;

use tempfile::TempDir;

use super::Fixture;
use crate::error::Result;
use crate::faults::FaultInjector;
use crate::memory::{MemDisk, MemoryStore};
use crate::store::{LogStore, StoreOptions};
use crate::types::WriteBatch;
use crate::wal::{WalOptions, WalStore};

/// Runs an async test on a fresh glommio executor, with a timeout.
pub(crate) fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    run_phased(&Phase::default(), f);
}

/// What a test is doing, reported if it times out.
pub(crate) type Phase = std::sync::Arc<std::sync::Mutex<&'static str>>;

/// Records the current phase.
pub(crate) fn set_phase(p: &Phase, what: &'static str) {
    *p.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = what;
}

/// [`run`], naming `phase` in the timeout report.
pub(crate) fn run_phased<F, Fut>(phase: &Phase, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = crate::run_local("conformance", f);
        let _ = tx.send(());
        r
    });
    // Every test is bounded; a hang is a failure, not a stuck CI job.
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        rx.recv_timeout(std::time::Duration::from_secs(300))
    {
        let at = *phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        panic!("test timed out after 300 s (phase: {at})");
    }
    match t.join() {
        Ok(r) => r.expect("executor"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The native WAL, with segments small enough that the suite rolls and collects them.
pub(crate) struct WalFixture {
    dir: TempDir,
    faults: FaultInjector,
    segment_bytes: u64,
    preload_bytes_max: u64,
}

impl WalFixture {
    pub(crate) fn new() -> Self {
        Self::with_segment_bytes(256 << 10)
    }

    pub(crate) fn with_segment_bytes(segment_bytes: u64) -> Self {
        WalFixture {
            dir: tempfile::tempdir().expect("tempdir"),
            faults: FaultInjector::new(),
            segment_bytes,
            preload_bytes_max: crate::wal::PRELOAD_BYTES_MAX,
        }
    }

    /// Opens decode at most `bytes` of entries for the bulk load; the rest is read (0: the
    /// load reads every entry, the path these tests are about).
    pub(crate) fn preloading(mut self, bytes: u64) -> Self {
        self.preload_bytes_max = bytes;
        self
    }

    pub(crate) fn options(&self, sync_writes: bool) -> WalOptions {
        WalOptions {
            store: StoreOptions { sync_writes, faults: Some(self.faults.clone()) },
            segment_bytes: self.segment_bytes,
            segments_soft_max: 4,
            gc_bytes_per_batch: 16 << 10,
            preload_bytes_max: self.preload_bytes_max,
            ..WalOptions::default()
        }
    }
}

impl Fixture for WalFixture {
    type Store = WalStore;

    async fn open(&self, sync_writes: bool) -> Result<WalStore> {
        WalStore::open(self.dir.path(), self.options(sync_writes)).await
    }

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    fn dir(&self) -> Option<&Path> {
        Some(self.dir.path())
    }

    async fn write_torn(&self, mut store: WalStore, batch: &WriteBatch) {
        self.faults.tear_next_write();
        let e = store.write(batch).await.expect_err("torn write must fail");
        assert!(e.is_fatal(), "{e}");
    }

    fn set_format_version(&self, version: u32) {
        for seg in crate::wal::inspect::segment_files(self.dir.path()).unwrap() {
            crate::wal::inspect::set_segment_format_version(&seg, version).unwrap();
        }
    }
}

/// The in-memory store on a shared [`MemDisk`].
pub(crate) struct MemFixture {
    disk: MemDisk,
    faults: FaultInjector,
}

impl MemFixture {
    pub(crate) fn new() -> Self {
        MemFixture { disk: MemDisk::new(), faults: FaultInjector::new() }
    }
}

impl Fixture for MemFixture {
    type Store = MemoryStore;

    async fn open(&self, sync_writes: bool) -> Result<MemoryStore> {
        MemoryStore::open(&self.disk, StoreOptions { sync_writes, faults: Some(self.faults.clone()) })
    }

    fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    fn dir(&self) -> Option<&Path> {
        None
    }

    async fn write_torn(&self, mut store: MemoryStore, batch: &WriteBatch) {
        // Memory has no partial writes: a torn write is one that did not happen.
        self.faults.tear_next_write();
        assert!(store.write(batch).await.expect_err("torn write must fail").is_fatal());
    }

    fn set_format_version(&self, version: u32) {
        self.disk.set_format_version(version);
    }
}

#[cfg(feature = "rocksdb")]
pub(crate) use rocks_fixture::RocksFixture;

#[cfg(feature = "rocksdb")]
mod rocks_fixture {
    use super::*;
    use crate::rocks::RocksStore;

    /// RocksDB.
    pub(crate) struct RocksFixture {
        dir: TempDir,
        faults: FaultInjector,
    }

    impl RocksFixture {
        pub(crate) fn new() -> Self {
            RocksFixture { dir: tempfile::tempdir().expect("tempdir"), faults: FaultInjector::new() }
        }
    }

    impl Fixture for RocksFixture {
        type Store = RocksStore;

        async fn open(&self, sync_writes: bool) -> Result<RocksStore> {
            RocksStore::open(self.dir.path(), StoreOptions { sync_writes, faults: Some(self.faults.clone()) })
                .await
        }

        fn faults(&self) -> &FaultInjector {
            &self.faults
        }

        fn dir(&self) -> Option<&Path> {
            Some(self.dir.path())
        }

        async fn write_torn(&self, mut store: RocksStore, batch: &WriteBatch) {
            // Write it whole, crash, then cut the end of RocksDB's newest log file, as a crash
            // during the append would have.
            store.write(batch).await.unwrap();
            drop(store);
            cut_short(&newest_with_extension(self.dir.path(), "log"));
        }

        fn set_format_version(&self, version: u32) {
            RocksStore::set_format_version(self.dir.path(), version).unwrap();
        }
    }
}

#[cfg(feature = "sqlite")]
pub(crate) use sqlite_fixture::SqliteFixture;

#[cfg(feature = "sqlite")]
mod sqlite_fixture {
    use super::*;
    use crate::sqlite::SqliteStore;

    /// SQLite.
    pub(crate) struct SqliteFixture {
        dir: TempDir,
        faults: FaultInjector,
    }

    impl SqliteFixture {
        pub(crate) fn new() -> Self {
            SqliteFixture { dir: tempfile::tempdir().expect("tempdir"), faults: FaultInjector::new() }
        }
    }

    impl Fixture for SqliteFixture {
        type Store = SqliteStore;

        async fn open(&self, sync_writes: bool) -> Result<SqliteStore> {
            SqliteStore::open(
                self.dir.path(),
                StoreOptions { sync_writes, faults: Some(self.faults.clone()) },
            )
            .await
        }

        fn faults(&self) -> &FaultInjector {
            &self.faults
        }

        fn dir(&self) -> Option<&Path> {
            Some(self.dir.path())
        }

        async fn write_torn(&self, mut store: SqliteStore, batch: &WriteBatch) {
            // Keep SQLite's write-ahead log at close (as a crash would), then cut its last
            // frame short: SQLite must drop that transaction and nothing else.
            store.keep_wal_on_close().await.unwrap();
            store.write(batch).await.unwrap();
            drop(store);
            cut_short(&self.dir.path().join(format!("{}-wal", crate::sqlite::DB_FILE)));
        }

        fn set_format_version(&self, version: u32) {
            SqliteStore::set_format_version(self.dir.path(), version).unwrap();
        }
    }
}

#[cfg(feature = "raft-engine")]
pub(crate) use raft_engine_fixture::RaftEngineFixture;

#[cfg(feature = "raft-engine")]
mod raft_engine_fixture {
    use super::*;
    use crate::raft_engine::{RaftEngineOptions, RaftEngineStore};

    /// raft-engine, with files small enough that the suite rotates them, and purges often
    /// enough that its rewrite of live entries (its garbage collection) runs too.
    pub(crate) struct RaftEngineFixture {
        dir: TempDir,
        faults: FaultInjector,
        prefill_bytes: u64,
    }

    impl RaftEngineFixture {
        pub(crate) fn new() -> Self {
            RaftEngineFixture {
                dir: tempfile::tempdir().expect("tempdir"),
                faults: FaultInjector::new(),
                prefill_bytes: 0,
            }
        }

        /// The same with prefilled files (up to three of 64 KiB), so that raft-engine's
        /// rotations write into files that were already written.
        pub(crate) fn prefilled() -> Self {
            RaftEngineFixture { prefill_bytes: 128 << 10, ..Self::new() }
        }

        pub(crate) fn options(&self, sync_writes: bool) -> RaftEngineOptions {
            RaftEngineOptions {
                store: StoreOptions { sync_writes, faults: Some(self.faults.clone()) },
                target_file_bytes: 64 << 10,
                purge_threshold_bytes: 256 << 10,
                purge_every_bytes: 32 << 10,
                prefill_bytes: self.prefill_bytes,
                ..RaftEngineOptions::default()
            }
        }
    }

    impl Fixture for RaftEngineFixture {
        type Store = RaftEngineStore;

        async fn open(&self, sync_writes: bool) -> Result<RaftEngineStore> {
            RaftEngineStore::open_with(self.dir.path(), self.options(sync_writes)).await
        }

        fn faults(&self) -> &FaultInjector {
            &self.faults
        }

        fn dir(&self) -> Option<&Path> {
            Some(self.dir.path())
        }

        async fn write_torn(&self, mut store: RaftEngineStore, batch: &WriteBatch) {
            // Write it whole, crash, then cut the end of raft-engine's newest append file, as a
            // crash during the append would have. (Dropping the engine trims the zeros it had
            // preallocated, so the file ends with the batch.)
            store.write(batch).await.unwrap();
            drop(store);
            cut_short(&newest_with_extension(self.dir.path(), "raftlog"));
        }

        fn set_format_version(&self, version: u32) {
            RaftEngineStore::set_format_version(self.dir.path(), version).unwrap();
        }
    }
}

/// The last (by name) file of `dir` whose extension is `ext`: a log store's newest log file.
#[cfg(any(feature = "rocksdb", feature = "raft-engine"))]
fn newest_with_extension(dir: &Path, ext: &str) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    logs.sort();
    logs.pop().unwrap_or_else(|| panic!("no .{ext} file in {}", dir.display()))
}

/// Cuts the last 7 bytes off `log`, as a crash in the middle of its last append would.
#[cfg(any(feature = "rocksdb", feature = "sqlite", feature = "raft-engine"))]
fn cut_short(log: &Path) {
    let len = std::fs::metadata(log).unwrap_or_else(|e| panic!("{}: {e}", log.display())).len();
    assert!(len > 100, "{} too short to tear: {len}", log.display());
    std::fs::OpenOptions::new().write(true).open(log).unwrap().set_len(len - 7).unwrap();
}

/// Instantiates every conformance check for one fixture.
macro_rules! conformance_suite {
    ($name:ident, $fixture:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use crate::conformance as c;

            #[test]
            fn round_trip() {
                run(|| async { c::round_trip(&$fixture).await });
            }
            #[test]
            fn same_index_many_partitions() {
                run(|| async { c::same_index_many_partitions(&$fixture).await });
            }
            #[test]
            fn truncate_and_reappend() {
                run(|| async { c::truncate_and_reappend(&$fixture).await });
            }
            #[test]
            fn compaction_and_snapshots() {
                run(|| async { c::compaction_and_snapshots(&$fixture).await });
            }
            #[test]
            fn remove_partition() {
                run(|| async { c::remove_partition(&$fixture).await });
            }
            #[test]
            fn bulk_load_matches_per_partition() {
                run(|| async { c::bulk_load_matches_per_partition(&$fixture).await });
            }
            #[test]
            fn reopen_intact() {
                run(|| async { c::reopen_intact(&$fixture, 400, true).await });
            }
            #[test]
            fn reopen_intact_without_sync() {
                run(|| async { c::reopen_intact(&$fixture, 200, false).await });
            }
            #[test]
            fn torn_tail_recovered() {
                run(|| async { c::torn_tail_recovered(&$fixture).await });
            }
            #[test]
            fn bit_flip_detected() {
                run(|| async { c::bit_flip_detected(&$fixture).await });
            }
            #[test]
            fn write_failure_is_fatal() {
                run(|| async { c::write_failure_is_fatal(&$fixture).await });
            }
            #[test]
            fn sync_failure_is_fatal() {
                run(|| async { c::sync_failure_is_fatal(&$fixture).await });
            }
            #[test]
            fn abandoned_write_poisons() {
                run(|| async { c::abandoned_write_poisons(&$fixture).await });
            }
            #[test]
            fn newer_format_refused() {
                run(|| async { c::newer_format_refused(&$fixture).await });
            }
            #[test]
            fn invalid_batches_refused() {
                run(|| async { c::invalid_batches_refused(&$fixture).await });
            }
        }
    };
}

conformance_suite!(memory, MemFixture::new());
conformance_suite!(wal, WalFixture::new());
#[cfg(feature = "rocksdb")]
conformance_suite!(rocksdb, RocksFixture::new());
#[cfg(feature = "sqlite")]
conformance_suite!(sqlite, SqliteFixture::new());
#[cfg(feature = "raft-engine")]
conformance_suite!(raft_engine, RaftEngineFixture::new());
#[cfg(feature = "raft-engine")]
conformance_suite!(raft_engine_prefilled, RaftEngineFixture::prefilled());

/// Checks only the native WAL can make (its own format, files and counters).
mod wal_specific {
    use super::*;
    use crate::StorageError;
    use crate::conformance::model::{Model, entries, verify};
    use crate::types::PartitionWrite;

    /// Damages a file on disk: flips the bits of `mask` in the byte at `at`.
    fn flip(file: &Path, at: u64, mask: u8) {
        let mut data = std::fs::read(file).unwrap();
        data[at as usize] ^= mask;
        std::fs::write(file, &data).unwrap();
    }

    fn batch_of(p: u64, lo: u64, hi: u64, len: usize) -> WriteBatch {
        let mut w = PartitionWrite::new(p);
        w.entries = entries(p, lo, hi, 1, len);
        WriteBatch { partitions: vec![w], meta: vec![] }
    }

    /// Issue 16: the next segment's spare is zero-filled gently (leaving the device to the
    /// log's writes) until the active segment is half full, then at full speed.
    #[test]
    fn the_next_segment_hurries_once_the_active_one_is_half_full() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(1 << 20);
            let mut s = f.open(true).await.unwrap();
            s.write(&batch_of(1, 1, 2, 1000)).await.unwrap();
            assert!(!s.next_is_urgent(), "the segment in use is nearly empty");
            // 12 batches of 9 entries of 6,000 bytes: about 650 KB of the 1 MiB segment.
            for k in 0..12u64 {
                s.write(&batch_of(1, 3 + k * 9, 3 + k * 9 + 8, 6000)).await.unwrap();
            }
            assert!(s.next_is_urgent(), "past half of the segment in use");
            s.close().await.unwrap();
        });
    }

    /// Issue 11, item 3: a damaged *last* batch looks like a torn write and is dropped, but
    /// it may have been acknowledged: the store says which file, offset, partitions and
    /// entries, instead of nothing.
    #[test]
    fn a_damaged_last_batch_is_reported_with_file_offset_and_entries() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(1 << 20);
            let mut s = f.open(true).await.unwrap();
            for i in 0..4u64 {
                s.write(&batch_of(1, i * 2 + 1, i * 2 + 2, 300)).await.unwrap();
            }
            let mut last = batch_of(2, 1, 3, 300);
            last.partitions.extend(batch_of(3, 1, 1, 300).partitions);
            s.write(&last).await.unwrap();
            s.close().await.unwrap();
            let clean = f.open(true).await.unwrap();
            assert_eq!(clean.damaged_tail(), None, "a clean log reports nothing");
            clean.close().await.unwrap();
            // One byte of the last batch's body, in the middle of an entry's payload.
            let seg = f.dir().unwrap().join(crate::wal::segment::segment_name(1));
            let marker = b"p3/i1/t1/";
            let data = std::fs::read(&seg).unwrap();
            let at =
                data.windows(marker.len()).rposition(|w| w == marker).expect("the last batch") as u64 + 50;
            flip(&seg, at, 0x01);
            let s = f.open(true).await.unwrap();
            let d = s.damaged_tail().cloned().expect("the damaged batch is reported");
            assert_eq!(d.file, seg);
            assert!(d.offset > 0 && d.offset < at as u64, "offset {} vs damage at {at}", d.offset);
            // Records before the damaged one are read; the damaged one is not: any partition
            // may be concerned.
            assert_eq!(d.partitions.get(&2), Some(&Some((1, 3))), "{d}");
            assert!(!d.partitions.contains_key(&3) && !d.complete, "{d}");
            assert!(d.to_string().contains("partition 2 entries 1..=3"), "{d}");
            // The batch is gone (what the engine must treat as lost), the rest intact.
            assert!(s.partition(2).unwrap().is_none());
            assert_eq!(s.partition(1).unwrap().map(|st| st.last.index), Some(8));
            s.close().await.unwrap();
        });
    }

    /// A last batch whose header is damaged but still names the batch that came next is
    /// reported too (nothing of it readable); a batch of another life of a recycled file is
    /// not.
    #[test]
    fn a_damaged_header_naming_the_next_batch_is_reported() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(1 << 20);
            let mut s = f.open(true).await.unwrap();
            s.write(&batch_of(1, 1, 2, 300)).await.unwrap();
            s.write(&batch_of(4, 1, 3, 200)).await.unwrap();
            s.close().await.unwrap();
            let batches = crate::wal::inspect::list_batches(f.dir().unwrap()).unwrap();
            let second = &batches[1];
            // Its body length (offset 24 of the header): the header checksum fails.
            flip(&second.segment, second.offset + 24, 0x04);
            let s = f.open(true).await.unwrap();
            let d = s.damaged_tail().cloned().expect("reported");
            assert_eq!(d.offset, second.offset);
            assert!(d.partitions.is_empty() && !d.complete, "{d}");
            assert!(d.to_string().contains("any partition"), "{d}");
            s.close().await.unwrap();
        });
    }

    #[test]
    fn exactly_one_synchronous_write_per_batch() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(1 << 20);
            let mut s = f.open(true).await.unwrap();
            for i in 0..200u64 {
                s.write(&batch_of(1 + i % 7, i / 7 + 1, i / 7 + 1, 2000)).await.unwrap();
            }
            let st = s.stats();
            assert_eq!(st.batches, 200);
            assert_eq!(st.write_syncs, 200, "{st:?}");
            s.close().await.unwrap();
        });
    }

    #[test]
    fn segments_roll_and_are_collected() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(128 << 10);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            // Partition 1 stays idle with a few entries in the first segment; partition 2
            // writes and compacts a lot. The idle entries must be relocated so old segments
            // can be recycled, and survive reopening.
            let b = batch_of(1, 1, 3, 100);
            s.write(&b).await.unwrap();
            m.apply(&b);
            for i in 0..400u64 {
                let mut w = PartitionWrite::new(2);
                w.entries = entries(2, i * 4 + 1, i * 4 + 4, 1, 1000);
                if i > 5 {
                    w.compact_to = Some(i * 4 - 8);
                }
                let b = WriteBatch { partitions: vec![w], meta: vec![] };
                s.write(&b).await.unwrap();
                m.apply(&b);
            }
            let segs = s.segment_seqs();
            assert!(segs.len() <= 6, "segments not collected: {segs:?}");
            assert!(segs[0] > 1, "first segment never recycled: {segs:?}");
            assert!(s.stats().entries_relocated >= 3, "{:?}", s.stats());
            verify(&s, &m).await.unwrap();
            // Segments were recycled, not created anew for every roll, and the directory
            // stays bounded.
            let st = s.stats();
            assert!(st.segments_recycled >= 5, "{st:?}");
            s.close().await.unwrap();
            let s = f.open(true).await.unwrap();
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
            let files = std::fs::read_dir(f.dir().unwrap()).unwrap().count();
            assert!(files <= 10, "{files} files left");
        });
    }

    #[test]
    fn relocation_keeps_younger_entries() {
        run(|| async {
            // Partition 1's entries 1..=10 sit in the first segment, 11..=20 in a later one;
            // partition 2 churns through segments. Relocating 1..=10 must not truncate
            // 11..=20 — neither in the running store nor after reopening.
            let f = WalFixture::with_segment_bytes(128 << 10);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            let b = batch_of(1, 1, 10, 50);
            s.write(&b).await.unwrap();
            m.apply(&b);
            for i in 0..300u64 {
                let mut w = PartitionWrite::new(2);
                w.entries = entries(2, i * 4 + 1, i * 4 + 4, 1, 1000);
                if i > 3 {
                    w.compact_to = Some(i * 4 - 8);
                }
                let mut b = WriteBatch { partitions: vec![w], meta: vec![] };
                if i == 40 {
                    let mut w1 = PartitionWrite::new(1);
                    w1.entries = entries(1, 11, 20, 1, 50);
                    b.partitions.push(w1);
                }
                s.write(&b).await.unwrap();
                m.apply(&b);
                if i % 50 == 0 {
                    verify(&s, &m).await.unwrap();
                }
            }
            assert!(s.stats().entries_relocated >= 10, "{:?}", s.stats());
            assert!(s.segment_seqs()[0] > 1, "first segment never recycled: {:?}", s.segment_seqs());
            verify(&s, &m).await.unwrap();
            drop(s); // crash
            let s = f.open(true).await.unwrap();
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// A store dropped (not closed) at different points of preparing its next segment, then
    /// reopened at once, 200 times: every reopen finds the directory whole. (It guards the
    /// drop path; it did not reproduce, with or without the fix, the rare race it is written
    /// against — `relocation_keeps_younger_entries` failing with `open spare-….seg: not
    /// found`, which a cancelled preparation's in-flight rename explains; the fix, in
    /// `segment::prepare_next`, is tested directly by `a_vanished_spare_is_skipped`.)
    #[test]
    fn a_store_dropped_while_preparing_a_segment_reopens_whole() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(128 << 10);
            let mut m = Model::default();
            let mut next = 1;
            for i in 0..200u64 {
                let mut s = f.open(true).await.unwrap();
                verify(&s, &m).await.unwrap();
                // ~100 KiB: the active segment fills and the next one starts being prepared.
                let b = batch_of(1, next, next + 9, 10_000);
                s.write(&b).await.unwrap();
                m.apply(&b);
                next += 10;
                let mut c = PartitionWrite::new(1);
                c.compact_to = Some(next - 6);
                let b = WriteBatch { partitions: vec![c], meta: vec![] };
                s.write(&b).await.unwrap();
                m.apply(&b);
                // Drop at a different point of the preparation each time (it runs while this
                // task waits): a crash, mid-preparation.
                glommio::timer::sleep(std::time::Duration::from_micros((i % 40) * 100)).await;
                drop(s);
            }
            let s = f.open(true).await.unwrap();
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// A spare listed at open that is gone when the store activates it (renamed by a
    /// cancelled preparation of a store dropped in this process) is skipped: the next spare is
    /// used, or a new one made, instead of failing the open.
    #[test]
    fn a_vanished_spare_is_skipped() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let bytes = 128 << 10;
            let gone = dir.path().join(crate::wal::segment::spare_name(9));
            let shape = crate::wal::segment::SegmentShape { bytes, spares_max: 2, dsync: true };
            let p = crate::wal::segment::prepare_next(
                dir.path().to_path_buf(),
                1,
                shape,
                Vec::new(),
                vec![gone],
                crate::wal::segment::Urgency::default(),
            )
            .await
            .expect("a vanished spare is no failure");
            assert!(p.created, "a new spare was made in its place");
            assert_eq!(p.segment.seq, 1);
            assert!(dir.path().join(crate::wal::segment::segment_name(1)).exists());
        });
    }

    #[test]
    fn no_descriptor_leak_across_reopens() {
        // glommio only queues a dropped file for closing; a store must close its files
        // itself or every open/close cycle leaks descriptors (seen as EMFILE after ~3000
        // reopens in the crash test).
        let dir = tempfile::tempdir().unwrap();
        // Only descriptors of files in this test's directory: other tests of this process
        // open and close theirs meanwhile.
        let open_fds = || {
            let fds = std::fs::read_dir("/proc/self/fd").unwrap();
            fds.flatten()
                .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir.path())))
                .count()
        };
        let cycle = |i: u64, path: std::path::PathBuf| {
            run(move || async move {
                let opts = WalOptions { segment_bytes: 128 << 10, ..WalOptions::default() };
                let mut s = WalStore::open(&path, opts).await.unwrap();
                s.write(&batch_of(1, i + 1, i + 1, 20_000)).await.unwrap();
                s.close().await.unwrap();
            });
        };
        cycle(0, dir.path().to_path_buf());
        let before = open_fds();
        for i in 1..=120 {
            cycle(i, dir.path().to_path_buf());
        }
        let after = open_fds();
        assert_eq!(after, before, "descriptors of the store's files left open over 120 reopens");
    }

    #[test]
    fn corruption_names_file_and_offset() {
        run(|| async {
            let f = WalFixture::new();
            let mut s = f.open(true).await.unwrap();
            for i in 0..10u64 {
                s.write(&batch_of(1, i * 2 + 1, i * 2 + 2, 300)).await.unwrap();
            }
            s.close().await.unwrap();
            let batches = crate::wal::inspect::list_batches(f.dir().unwrap()).unwrap();
            assert_eq!(batches.len(), 10);
            let victim = &batches[4];
            flip(&victim.segment, victim.offset + 60, 1);
            match f.open(true).await {
                Err(StorageError::Corrupt { file, offset, .. }) => {
                    assert_eq!(file, victim.segment);
                    assert_eq!(offset, Some(victim.offset));
                }
                other => panic!("expected corruption, got {other:?}"),
            }
        });
    }

    #[test]
    fn damaged_last_batch_of_a_segment_is_detected() {
        run(|| async {
            // Damage at the end of a full segment, with the log continuing in the next one,
            // is a hole, not a torn tail.
            let f = WalFixture::with_segment_bytes(128 << 10);
            let mut s = f.open(true).await.unwrap();
            for i in 0..120u64 {
                s.write(&batch_of(1, i + 1, i + 1, 2000)).await.unwrap();
            }
            s.close().await.unwrap();
            let batches = crate::wal::inspect::list_batches(f.dir().unwrap()).unwrap();
            let k = batches.windows(2).position(|w| w[0].segment != w[1].segment).expect("two segments");
            let victim = &batches[k];
            flip(&victim.segment, victim.offset + 100, 1);
            match f.open(true).await {
                Err(StorageError::Corrupt { file, offset, .. }) => {
                    assert_eq!((file, offset), (victim.segment.clone(), Some(victim.offset)));
                }
                other => panic!("expected corruption, got {other:?}"),
            }
        });
    }

    #[test]
    fn foreign_and_locked_directories_refused() {
        run(|| async {
            let f = WalFixture::new();
            let s = f.open(true).await.unwrap();
            assert!(matches!(f.open(true).await, Err(StorageError::Locked { .. })));
            s.close().await.unwrap();
            let stray = f.dir().unwrap().join("CURRENT");
            std::fs::write(&stray, b"MANIFEST-000001\n").unwrap();
            match f.open(true).await {
                Err(StorageError::Foreign { file, .. }) => assert_eq!(file, stray),
                other => panic!("expected Foreign, got {other:?}"),
            }
            std::fs::remove_file(&stray).unwrap();
            let fake = f.dir().unwrap().join(crate::wal::segment::segment_name(9));
            std::fs::write(&fake, vec![7u8; 8192]).unwrap();
            match f.open(true).await {
                Err(StorageError::Foreign { file, .. }) => assert_eq!(file, fake),
                other => panic!("expected Foreign, got {other:?}"),
            }
        });
    }

    /// Writes `batches` batches holding one `len`-byte entry of each of `parts` partitions
    /// (the layout a busy shard leaves: partitions interleaved record by record).
    async fn write_interleaved(s: &mut WalStore, m: &mut Model, parts: u64, batches: u64, len: usize) {
        for i in 1..=batches {
            let b = WriteBatch {
                partitions: (1..=parts)
                    .map(|p| {
                        let mut w = PartitionWrite::new(p);
                        w.entries = entries(p, i, i, 1, len);
                        w
                    })
                    .collect(),
                meta: vec![],
            };
            s.write(&b).await.unwrap();
            m.apply(&b);
        }
    }

    #[test]
    fn bulk_load_reads_each_segment_sequentially() {
        run(|| async {
            // 64 interleaved partitions: reading one partition at a time costs a read per
            // entry; the bulk load reads each segment once in large reads.
            let f = WalFixture::with_segment_bytes(4 << 20).preloading(0);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            let (parts, batches) = (64u64, 150u64);
            write_interleaved(&mut s, &mut m, parts, batches, 256).await;
            s.close().await.unwrap();
            let s = f.open(true).await.unwrap();
            let n = parts * batches;
            let ids = s.partitions().unwrap();
            let r0 = s.stats().entry_reads;
            let mut one_by_one = Vec::new();
            for &p in &ids {
                one_by_one.push((p, s.load_partition(p).await.unwrap()));
            }
            let r1 = s.stats().entry_reads;
            let bulk = s.load_partitions(&ids).await.unwrap();
            let r2 = s.stats().entry_reads;
            assert!(bulk == one_by_one, "bulk load differs from load_partition");
            assert_eq!(bulk.iter().map(|(_, r)| r.as_ref().unwrap().entries.len() as u64).sum::<u64>(), n);
            let (per_partition, bulk_reads) = (r1 - r0, r2 - r1);
            assert!(per_partition >= n, "{per_partition} reads one partition at a time for {n} entries");
            // ~3.3 MB of records: a few 1 MiB reads (plus one per segment boundary).
            let bytes = s.segment_seqs().len() as u64 * (4 << 20);
            assert!(
                bulk_reads <= bytes / crate::wal::BULK_READ_BYTES + 2,
                "{bulk_reads} reads to bulk-load {n} entries"
            );
            assert!(bulk_reads * 100 < n, "{bulk_reads} reads to bulk-load {n} entries");
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// A log whose entries span several segments, with a suffix overwritten at a higher term
    /// and a compaction, written, closed and reopened.
    async fn reopened_log_with_overwrites(f: &WalFixture) -> (WalStore, Model) {
        let mut s = f.open(true).await.unwrap();
        let mut m = Model::default();
        write_interleaved(&mut s, &mut m, 16, 200, 256).await;
        let mut w5 = PartitionWrite::new(5);
        w5.entries = entries(5, 150, 170, 2, 300);
        let mut w7 = PartitionWrite::new(7);
        w7.compact_to = Some(120);
        let b = WriteBatch { partitions: vec![w5, w7], meta: vec![] };
        s.write(&b).await.unwrap();
        m.apply(&b);
        // More batches after them: partition 5 goes on from its new end, at its new term.
        for i in 201..=220u64 {
            let b = WriteBatch {
                partitions: (1..=16)
                    .map(|p| {
                        let mut w = PartitionWrite::new(p);
                        w.entries = if p == 5 {
                            entries(p, i - 30, i - 30, 2, 256)
                        } else {
                            entries(p, i, i, 1, 256)
                        };
                        w
                    })
                    .collect(),
                meta: vec![],
            };
            s.write(&b).await.unwrap();
            m.apply(&b);
        }
        assert!(s.segment_seqs().len() >= 3, "the test wants several segments");
        s.close().await.unwrap();
        (f.open(true).await.unwrap(), m)
    }

    #[test]
    fn bulk_load_takes_the_entries_the_replay_decoded() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(512 << 10);
            let (s, m) = reopened_log_with_overwrites(&f).await;
            let ids = s.partitions().unwrap();
            let r0 = s.stats().entry_reads;
            let bulk = s.load_partitions(&ids).await.unwrap();
            assert_eq!(s.stats().entry_reads, r0, "a restart's bulk load reads nothing again");
            // The same as reading each partition (which reads and checks every record).
            let mut one_by_one = Vec::new();
            for &p in &ids {
                one_by_one.push((p, s.load_partition(p).await.unwrap()));
            }
            assert!(bulk == one_by_one, "bulk load from the replay differs from load_partition");
            // A second bulk load has nothing decoded left: it reads, and gets the same.
            assert!(s.load_partitions(&ids).await.unwrap() == one_by_one);
            assert!(s.stats().entry_reads > r0);
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    #[test]
    fn bulk_load_reads_what_the_replay_did_not_decode() {
        run(|| async {
            // Room for less than a segment's entries: the segments already handed to the
            // decoder when the limit is reached are decoded, the later ones read.
            let f = WalFixture::with_segment_bytes(512 << 10).preloading(64 << 10);
            let (s, m) = reopened_log_with_overwrites(&f).await;
            let ids = s.partitions().unwrap();
            let r0 = s.stats().entry_reads;
            let bulk = s.load_partitions(&ids).await.unwrap();
            assert!(
                s.stats().entry_reads > r0,
                "the entries past the limit are read: {:?}",
                s.segment_seqs()
            );
            let mut one_by_one = Vec::new();
            for &p in &ids {
                one_by_one.push((p, s.load_partition(p).await.unwrap()));
            }
            assert!(bulk == one_by_one, "bulk load differs from load_partition");
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    #[test]
    fn bulk_load_skips_dead_stretches() {
        run(|| async {
            // Partition 1's few entries lie ~2 MiB apart, between partition 2's entries,
            // which are then compacted away: a mostly dead segment. The load reads around
            // each live record instead of the whole segment.
            let f = WalFixture::with_segment_bytes(16 << 20).preloading(0);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            let mut p2_last = 0;
            for i in 1..=5u64 {
                let mut w1 = PartitionWrite::new(1);
                w1.entries = entries(1, i, i, 1, 200);
                let mut w2 = PartitionWrite::new(2);
                w2.entries = entries(2, p2_last + 1, p2_last + 100, 1, 20_000);
                p2_last += 100;
                let b = WriteBatch { partitions: vec![w1, w2], meta: vec![] };
                s.write(&b).await.unwrap();
                m.apply(&b);
            }
            let mut w2 = PartitionWrite::new(2);
            w2.compact_to = Some(p2_last - 1);
            let b = WriteBatch { partitions: vec![w2], meta: vec![] };
            s.write(&b).await.unwrap();
            m.apply(&b);
            assert_eq!(s.segment_seqs().len(), 1, "the test wants one segment");
            s.close().await.unwrap();
            let s = f.open(true).await.unwrap();
            let r0 = s.stats().entry_reads;
            let bulk = s.load_partitions(&[1, 2]).await.unwrap();
            let reads = s.stats().entry_reads - r0;
            // Six live records (partition 1's five, partition 2's last), each ~2 MiB from the
            // next: six reads, where reading the ~10 MiB through would take ten.
            assert_eq!(reads, 6, "reads for 6 live records ~2 MiB apart");
            assert_eq!(bulk[0].1.as_ref().unwrap().entries, entries(1, 1, 5, 1, 200));
            assert_eq!(bulk[1].1.as_ref().unwrap().entries, entries(2, p2_last, p2_last, 1, 20_000));
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    #[test]
    fn bulk_load_reports_damage_like_entries() {
        run(|| async {
            // A record damaged after open (recovery checked it): the bulk load fails with
            // the same `Corrupt` error, naming the same file and offset, as `entries`.
            let f = WalFixture::new().preloading(0);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            write_interleaved(&mut s, &mut m, 3, 20, 300).await;
            s.close().await.unwrap();
            let s = f.open(true).await.unwrap();
            let segs = crate::wal::inspect::segment_files(f.dir().unwrap()).unwrap();
            // Partition 2's entry 7: find its payload's start in the segment, flip a bit.
            let needle = b"p2/i7/t1/";
            let (seg, at) = segs
                .iter()
                .find_map(|seg| {
                    let data = std::fs::read(seg).unwrap();
                    data.windows(needle.len()).position(|w| w == needle).map(|at| (seg.clone(), at))
                })
                .expect("entry 7 of partition 2 on disk");
            {
                use std::os::unix::fs::FileExt;
                let file = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, at as u64 + 20).unwrap();
                b[0] ^= 0x08;
                file.write_all_at(&b, at as u64 + 20).unwrap();
                file.sync_data().unwrap();
            }
            let one = s.entries(2, 1, 21, u64::MAX).await.expect_err("damage unnoticed by entries");
            let bulk = s.load_partitions(&[1, 2, 3]).await.expect_err("damage unnoticed by the bulk load");
            match (&one, &bulk) {
                (
                    StorageError::Corrupt { file: f1, offset: Some(o1), reason: r1 },
                    StorageError::Corrupt { file: f2, offset: Some(o2), reason: r2 },
                ) => {
                    assert_eq!((f1, o1), (&seg, o2), "{one} / {bulk}");
                    assert_eq!(f2, &seg);
                    assert!(*o2 < at as u64 && at as u64 - *o2 < 100, "offset {o2}, payload at {at}");
                    assert_eq!(r1, r2);
                }
                _ => panic!("expected Corrupt errors with offsets, got {one} / {bulk}"),
            }
            // Undamaged partitions still load.
            assert!(s.load_partitions(&[1, 3]).await.is_ok());
            s.close().await.unwrap();
        });
    }

    #[test]
    fn large_entries_and_reads_across_segments() {
        run(|| async {
            let f = WalFixture::with_segment_bytes(128 << 10);
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            for i in 0..30u64 {
                let b = batch_of(5, i * 2 + 1, i * 2 + 2, 20_000);
                s.write(&b).await.unwrap();
                m.apply(&b);
            }
            // A batch bigger than a segment is refused without poisoning.
            let e = s.write(&batch_of(5, 61, 70, 20_000)).await.expect_err("too big");
            assert!(matches!(e, StorageError::LimitExceeded { .. }), "{e}");
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }
}

/// Checks of the SQLite store's own schema.
#[cfg(feature = "sqlite")]
mod sqlite_specific {
    use phalanx_proto::HardState;
    use rusqlite::Connection;

    use super::run;
    use crate::sqlite::{DB_FILE, SCHEMA, SqliteStore};
    use crate::{LogStore, StoreOptions, WriteBatch};

    /// A database written before `hs_flags` existed (schema version 1) opens, reads every
    /// partition as not recovering, and stores the flag from then on.
    #[test]
    fn a_version_1_database_is_upgraded_at_open() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("sqlite");
            let v1 = SCHEMA.replace(",\n    hs_flags INTEGER NOT NULL DEFAULT 0", "");
            assert!(!v1.contains("hs_flags"));
            conn.execute_batch(&format!("BEGIN; {v1} PRAGMA user_version = 1; COMMIT;")).expect("v1 schema");
            conn.execute(
                "INSERT INTO parts (part, floor_idx, floor_term, last_idx, last_term, hs_term, hs_vote, hs_commit) \
                 VALUES (5, 0, 0, 0, 0, 3, 2, 0)",
                [],
            )
            .expect("a v1 row");
        }
        let path = dir.path().to_path_buf();
        run(move || async move {
            let mut s = SqliteStore::open(&path, StoreOptions::default()).await.expect("opens");
            let st = s.partition(5).expect("readable").expect("present");
            assert_eq!(st.hard_state, HardState { term: 3, vote: 2, commit: 0, recovering: false });
            let hs = HardState { term: 4, vote: 0, commit: 0, recovering: true };
            let w = crate::types::PartitionWrite { partition: 5, hard_state: Some(hs), ..Default::default() };
            s.write(&WriteBatch { partitions: vec![w], meta: vec![] }).await.expect("writes");
            s.close().await.expect("closes");
            let s = SqliteStore::open(&path, StoreOptions::default()).await.expect("reopens");
            assert_eq!(s.partition(5).expect("readable").map(|st| st.hard_state), Some(hs));
            s.close().await.expect("closes");
        });
    }
}

/// Checks of the raft-engine adapter's own behaviour (its files, purge, reserved region).
#[cfg(feature = "raft-engine")]
mod raft_engine_specific {
    use bytes::Bytes;

    use super::*;
    use crate::StorageError;
    use crate::conformance::model::{Model, entries, verify};
    use crate::conformance::workload::{Op, Workload};
    use crate::raft_engine::{META_REGION, RaftEngineStore};
    use crate::types::{MetaWrite, PartitionWrite};

    const MARKER: &[u8] = b"#MARKER-0123456789abcdef-MARKER#";

    /// raft-engine's files of one kind (`.raftlog`, `.rewrite`), in sequence order.
    fn files(dir: &Path, ext: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(ext))
            .collect();
        v.sort();
        v
    }

    /// Writes `n` batches of three 300-byte entries to partition 1; batch `marked` also sets
    /// a metadata value holding [`MARKER`] (metadata lives in a batch's item footer, not in
    /// its entries block).
    async fn write_marked(s: &mut crate::raft_engine::RaftEngineStore, n: u64, marked: u64) {
        for i in 1..=n {
            let mut w = PartitionWrite::new(1);
            w.entries = entries(1, i * 3 - 2, i * 3, 1, 300);
            let mut b = WriteBatch { partitions: vec![w], meta: vec![] };
            if i == marked {
                b.meta.push(MetaWrite {
                    key: Bytes::from_static(b"k"),
                    value: Some(Bytes::from_static(MARKER)),
                });
            }
            s.write(&b).await.unwrap();
        }
    }

    /// **Not what the contract asks** (a damaged record followed by valid ones must be
    /// reported as corruption): raft-engine takes a damaged batch in its newest file for a
    /// torn tail, truncates the file there and opens without an error, losing the
    /// acknowledged batches after it. Its recovery leaves no way to tell (see the adapter's
    /// docs); pinned here so the limitation stays known and a change in raft-engine shows.
    #[test]
    fn damage_in_the_newest_file_drops_the_batches_after_it() {
        run(|| async {
            let f = RaftEngineFixture::new();
            let mut s = f.open(true).await.unwrap();
            write_marked(&mut s, 12, 3).await;
            s.close().await.unwrap();
            let dir = f.dir().unwrap();
            assert_eq!(files(dir, ".raftlog").len(), 1, "everything in one (the newest) file");
            crate::conformance::flip_bit_in(dir, MARKER).expect("marker found");
            let s = f.open(true).await.expect("raft-engine opens");
            // Batches 3..=12 are gone: the log ends with batch 2.
            assert_eq!(s.partition(1).unwrap().unwrap().last.index, 6);
            assert_eq!(s.get_meta(b"k").unwrap(), None);
            s.close().await.unwrap();
        });
    }

    /// Damage in a file other than the newest one fails the open with a corruption error.
    #[test]
    fn damage_in_an_older_file_fails_the_open() {
        run(|| async {
            let f = RaftEngineFixture::new();
            let mut s = f.open(true).await.unwrap();
            // 64 KiB files: about 60 batches of ~1 KiB fill several.
            write_marked(&mut s, 200, 3).await;
            s.close().await.unwrap();
            let dir = f.dir().unwrap();
            assert!(files(dir, ".raftlog").len() > 2, "{:?}", files(dir, ""));
            let flipped = crate::conformance::flip_bit_in(dir, MARKER).expect("marker found");
            assert!(flipped.ends_with("0000000000000001.raftlog"), "{}", flipped.display());
            match f.open(true).await {
                Err(StorageError::Corrupt { file, .. }) => assert!(file.starts_with(dir)),
                Err(e) => panic!("expected a corruption error, got {e}"),
                Ok(_) => panic!("a damaged older file was opened"),
            }
        });
    }

    /// raft-engine's purge runs from the write path: past the purge threshold it rewrites the
    /// live entries of the oldest files (here, a partition written once and never again)
    /// into its rewrite queue and recycles or deletes those files; everything reads back the
    /// same, before and after a reopen.
    #[test]
    fn purge_rewrites_live_entries_and_reclaims_files() {
        run(|| async {
            let f = RaftEngineFixture::new();
            let dir = f.dir().unwrap().to_path_buf();
            let mut s = f.open(true).await.unwrap();
            let mut m = Model::default();
            let mut w = PartitionWrite::new(100);
            w.entries = entries(100, 1, 20, 1, 500);
            let b = WriteBatch { partitions: vec![w], meta: vec![] };
            s.write(&b).await.unwrap();
            m.apply(&b);
            let rewrite_before = std::fs::metadata(dir.join("0000000000000001.rewrite")).unwrap().len();
            let w = Workload { seed: 11, partitions: 8, compact_above: 60, payload_max: 3000 };
            for k in 1..=800 {
                match w.advance(k, &mut m) {
                    Op::Batch(b) => s.write(&b).await.unwrap(),
                    Op::Remove(p) => s.remove_partition(p).await.unwrap(),
                }
            }
            verify(&s, &m).await.unwrap();
            let logs = files(&dir, ".raftlog");
            assert_ne!(logs.first().map(String::as_str), Some("0000000000000001.raftlog"), "nothing purged");
            let rewrite_after: u64 =
                files(&dir, ".rewrite").iter().map(|n| std::fs::metadata(dir.join(n)).unwrap().len()).sum();
            assert!(
                rewrite_after > rewrite_before,
                "nothing rewritten ({rewrite_before} -> {rewrite_after} bytes)"
            );
            s.close().await.unwrap();
            let s = f.open(true).await.unwrap();
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// With prefilling on, raft-engine prepares zero-filled files at open and rotates into
    /// them (what its recycling does in the long run); the log reads back the same, before and
    /// after a reopen, with the zeros after its end taken for what they are.
    #[test]
    fn prefilled_files_are_written_into() {
        run(|| async {
            let f = RaftEngineFixture::prefilled();
            let dir = f.dir().unwrap().to_path_buf();
            let opts = f.options(true);
            let mut s = RaftEngineStore::open_with(&dir, opts.clone()).await.unwrap();
            let prepared = files(&dir, ".raftlog.reserved").len();
            assert_eq!(prepared, 3, "{:?}", files(&dir, ""));
            let mut m = Model::default();
            for i in 0..150u64 {
                let mut w = PartitionWrite::new(1 + i % 3);
                let first = m.partitions.get(&(1 + i % 3)).map_or(1, |p| p.last().index + 1);
                w.entries = entries(1 + i % 3, first, first + 2, 1, 300);
                let b = WriteBatch { partitions: vec![w], meta: vec![] };
                s.write(&b).await.unwrap();
                m.apply(&b);
            }
            assert!(files(&dir, ".raftlog.reserved").len() < prepared, "no prefilled file used");
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
            let s = RaftEngineStore::open_with(&dir, opts).await.unwrap();
            verify(&s, &m).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// The metadata region's id is refused as a partition, without poisoning the store.
    #[test]
    fn the_metadata_region_is_not_a_partition() {
        run(|| async {
            let f = RaftEngineFixture::new();
            let mut s = f.open(true).await.unwrap();
            let mut w = PartitionWrite::new(META_REGION);
            w.entries = entries(META_REGION, 1, 1, 1, 10);
            let e = s.write(&WriteBatch { partitions: vec![w], meta: vec![] }).await.expect_err("refused");
            assert!(matches!(e, StorageError::InvalidBatch { .. }), "{e}");
            let mut w = PartitionWrite::new(1);
            w.entries = entries(1, 1, 1, 1, 10);
            s.write(&WriteBatch { partitions: vec![w], meta: vec![] }).await.unwrap();
            s.close().await.unwrap();
        });
    }

    /// Another adapter's directory is refused before raft-engine touches it.
    #[test]
    fn a_foreign_directory_is_refused() {
        run(|| async {
            let f = RaftEngineFixture::new();
            let dir = f.dir().unwrap();
            std::fs::write(dir.join("wal-0000000000000001.seg"), b"not raft-engine").unwrap();
            match f.open(true).await {
                Err(StorageError::Foreign { .. }) => {}
                Err(e) => panic!("expected Foreign, got {e}"),
                Ok(_) => panic!("a foreign directory was opened"),
            }
            assert_eq!(std::fs::read(dir.join("wal-0000000000000001.seg")).unwrap(), b"not raft-engine");
        });
    }
}
