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
}

impl WalFixture {
    pub(crate) fn new() -> Self {
        Self::with_segment_bytes(256 << 10)
    }

    pub(crate) fn with_segment_bytes(segment_bytes: u64) -> Self {
        WalFixture { dir: tempfile::tempdir().expect("tempdir"), faults: FaultInjector::new(), segment_bytes }
    }

    pub(crate) fn options(&self, sync_writes: bool) -> WalOptions {
        WalOptions {
            store: StoreOptions { sync_writes, faults: Some(self.faults.clone()) },
            segment_bytes: self.segment_bytes,
            segments_soft_max: 4,
            gc_bytes_per_batch: 16 << 10,
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
            let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            let log = logs.last().expect("a RocksDB log file");
            let len = std::fs::metadata(log).unwrap().len();
            assert!(len > 100, "log too short to tear: {len}");
            std::fs::OpenOptions::new().write(true).open(log).unwrap().set_len(len - 7).unwrap();
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
            let wal = self.dir.path().join(format!("{}-wal", crate::sqlite::DB_FILE));
            let len = std::fs::metadata(&wal).expect("SQLite kept its WAL").len();
            assert!(len > 100, "WAL too short to tear: {len}");
            std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 7).unwrap();
        }

        fn set_format_version(&self, version: u32) {
            SqliteStore::set_format_version(self.dir.path(), version).unwrap();
        }
    }
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

/// Checks only the native WAL can make (its own format, files and counters).
mod wal_specific {
    use super::*;
    use crate::StorageError;
    use crate::conformance::model::{Model, entries, verify};
    use crate::types::PartitionWrite;

    fn batch_of(p: u64, lo: u64, hi: u64, len: usize) -> WriteBatch {
        let mut w = PartitionWrite::new(p);
        w.entries = entries(p, lo, hi, 1, len);
        WriteBatch { partitions: vec![w], meta: vec![] }
    }

    #[test]
    fn exactly_one_fdatasync_per_batch() {
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

    #[test]
    fn no_descriptor_leak_across_reopens() {
        // glommio only queues a dropped file for closing; a store must close its files
        // itself or every open/close cycle leaks descriptors (seen as EMFILE after ~3000
        // reopens in the crash test).
        let dir = tempfile::tempdir().unwrap();
        let open_fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
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
        // Other tests run in parallel in this process: allow for their descriptors.
        assert!(after < before + 150, "descriptors went from {before} to {after} over 120 reopens");
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
            let mut data = std::fs::read(&victim.segment).unwrap();
            data[(victim.offset + 60) as usize] ^= 1;
            std::fs::write(&victim.segment, &data).unwrap();
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
            let mut data = std::fs::read(&victim.segment).unwrap();
            data[(victim.offset + 100) as usize] ^= 1;
            std::fs::write(&victim.segment, &data).unwrap();
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
