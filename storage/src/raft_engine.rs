//! The raft-engine adapter (cargo feature `raft-engine`): TiKV's multi-Raft log engine
//! (`raft-engine` on crates.io), one engine per shard, in the store directory.
//!
//! A partition is a raft-engine *region* (same id). What each region holds:
//! * its log: raft-engine's entries, each a protobuf-2 `BytesValue` whose value is
//!   `index u64 LE ‖ prost LogEntry` — raft-engine wants a `protobuf::Message` and asks for an
//!   entry's index on every append and read, which the prefix answers without decoding;
//! * key `s`: floor, last entry and hard state (`kv::encode_state`, CRC-checked), rewritten
//!   with every batch that touches the partition;
//!
//! and region [`META_REGION`] (`u64::MAX`, refused as a partition id) holds `v` → format
//! version (u32 LE) and `m` ‖ key → metadata value.
//!
//! A batch is one raft-engine `LogBatch` written with `sync = sync_writes`: atomic, and
//! durable when it returns (raft-engine appends it to the active file, then `fdatasync`s).
//! Within a partition the batch's steps become raft-engine items in contract order:
//! snapshot (a `Compact` to just after it when the log holds it, else `Clean`, which drops
//! the region), entries (raft-engine replaces a suffix when the first index is at or below
//! its last), `compact_to(i)` (a `Compact { index: i + 1 }` — the command `Engine::compact_to`
//! writes, here inside the batch so it is atomic and synced with the rest), then the state
//! key. Every raft-engine call runs on the glommio executor's blocking thread pool, so an
//! `fdatasync` never blocks the shard's event loop.
//!
//! raft-engine only reclaims space when asked: the store calls `purge_expired_files` (on the
//! blocking pool, after a write) every [`RaftEngineOptions::purge_every_bytes`] written, as
//! TiKV calls it on a timer. raft-engine rewrites or drops old files only once the log is
//! larger than [`RaftEngineOptions::purge_threshold_bytes`]; purged files are then recycled
//! (reused, already written). Until then it appends into freshly `fallocate`d files, whose
//! `fdatasync`s also commit extent metadata; [`RaftEngineOptions::prefill_bytes`] has it
//! prepare written files at open instead.
//!
//! # What raft-engine guarantees, and what it does not
//!
//! raft-engine checksums every batch (its entries block and its item footer) and checks the
//! entries block on every read, so damage in an entry is reported as
//! [`StorageError::Corrupt`] by the read that meets it. Its recovery mode is
//! `TolerateTailCorruption` (the only one that opens after a crash: the active file ends in
//! zeros preallocated by `fallocate`, which no batch header parses). In that mode a damaged
//! batch **in the newest file** is taken for a torn tail: the file is truncated there and
//! any valid batches after it are dropped without an error; damage in older files fails the
//! open. The native WAL tells the two apart; this adapter cannot (raft-engine truncates the
//! file before returning), so it never reports a [`crate::DamagedTail`].
//!
//! raft-engine panics where it meets some failures (a failed `fdatasync`, an entry whose
//! index disagrees with its index file). Every call into it is wrapped in `catch_unwind`: a
//! panic while writing poisons the store, one while reading or opening becomes
//! [`StorageError::Corrupt`]. (The panic message is still printed by the panic hook.)

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use phalanx_proto::{LogEntry, Message};
use protobuf::well_known_types::BytesValue;
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode, Version};

use crate::error::{Poison, Result, StorageError};
use crate::faults::{FaultInjector, injected};
use crate::kv::{decode_state, encode_state};
use crate::limits::META_KEYS_MAX;
use crate::memory::check_range;
use crate::plan::plan_batch;
use crate::store::{LogStore, StoreOptions};
use crate::types::{PartitionId, PartitionState, StoreStats, WriteBatch};

/// The format version of the layout above.
pub const RAFT_ENGINE_FORMAT_VERSION: u32 = 1;

/// The region holding the format version and the metadata keys. Not a usable partition id:
/// batches writing partition `u64::MAX` are refused.
pub const META_REGION: u64 = u64::MAX;

/// Entries fetched from raft-engine per call while reading a range, in bytes of stored
/// entries: bounds the memory of one step of a read whose byte budget is large. raft-engine
/// always returns at least one entry, so reads progress whatever the entry size.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

const VERSION_KEY: &[u8] = b"v";
const STATE_KEY: &[u8] = b"s";
const META_PREFIX: u8 = b'm';

/// Bytes of the index prefix of every stored entry value.
const INDEX_PREFIX_BYTES: usize = 8;

/// Options of the raft-engine adapter.
#[derive(Clone, Debug)]
pub struct RaftEngineOptions {
    /// Options shared by every adapter.
    pub store: StoreOptions,
    /// Size at which raft-engine starts a new log file, in bytes (raft-engine's
    /// `target-file-size`; its default, 128 MiB).
    pub target_file_bytes: u64,
    /// Total log size above which raft-engine's purge rewrites live entries out of the oldest
    /// files and drops them, in bytes (raft-engine's `purge-threshold`; its default, 10 GiB;
    /// at least `target_file_bytes`).
    pub purge_threshold_bytes: u64,
    /// Bytes written between two calls of raft-engine's purge (default 128 MiB: purging frees
    /// whole files, so asking more often than a file fills finds nothing new).
    pub purge_every_bytes: u64,
    /// Batches larger than this many bytes of entries are LZ4-compressed by raft-engine
    /// (its `batch-compression-threshold`); 0 turns compression off, the default here: the
    /// other adapters store entries as they are, and compression only moves work from the
    /// disk to the shard's blocking thread. raft-engine's own default is 8 KiB.
    pub batch_compression_threshold_bytes: u64,
    /// Bytes of zero-filled log files raft-engine prepares at open for reuse (its
    /// `prefill-for-recycle` and `prefill-limit`); 0 turns it off, the default here and
    /// raft-engine's. With it, raft-engine appends into files already written, as it does
    /// once its purge recycles old files: appending into space freshly `fallocate`d (what it
    /// does otherwise) makes every `fdatasync` also commit the file system's extent
    /// metadata. raft-engine prepares up to 1.5 × this in files of `target_file_bytes`
    /// (capped by its recycling capacity), writing them at open; the adapter then syncs them
    /// so that their write-back does not land on the first batches.
    pub prefill_bytes: u64,
}

impl Default for RaftEngineOptions {
    fn default() -> Self {
        RaftEngineOptions {
            store: StoreOptions::default(),
            target_file_bytes: 128 << 20,
            purge_threshold_bytes: 10 << 30,
            purge_every_bytes: 128 << 20,
            batch_compression_threshold_bytes: 0,
            prefill_bytes: 0,
        }
    }
}

impl RaftEngineOptions {
    fn config(&self, dir: &Path) -> Result<Config> {
        let Some(dir) = dir.to_str() else {
            return Err(StorageError::Backend {
                backend: "raft-engine",
                reason: format!("directory {} is not valid UTF-8", dir.display()),
            });
        };
        Ok(Config {
            dir: dir.to_owned(),
            // The only mode that opens after a crash (see the module docs).
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            batch_compression_threshold: ReadableSize(self.batch_compression_threshold_bytes),
            // Version 2 signs each batch with its file's sequence number, which is what makes
            // reusing purged files safe; raft-engine's default, as is recycling itself.
            format_version: Version::V2,
            enable_log_recycle: true,
            target_file_size: ReadableSize(self.target_file_bytes),
            purge_threshold: ReadableSize(self.purge_threshold_bytes),
            prefill_for_recycle: self.prefill_bytes > 0,
            prefill_limit: (self.prefill_bytes > 0).then_some(ReadableSize(self.prefill_bytes)),
            ..Config::default()
        })
    }
}

/// Tells raft-engine how to read an entry's index: the first 8 bytes of the stored value.
struct StoredEntries;

impl MessageExt for StoredEntries {
    type Entry = BytesValue;

    fn index(e: &BytesValue) -> u64 {
        // Only a value this adapter did not write lacks the prefix; raft-engine then finds the
        // index wrong and panics, which the caller catches and reports as corruption.
        e.value.get(..INDEX_PREFIX_BYTES).and_then(|b| b.try_into().ok()).map_or(u64::MAX, u64::from_le_bytes)
    }
}

fn encode_entry(e: &LogEntry) -> Result<BytesValue> {
    let mut value = Vec::with_capacity(INDEX_PREFIX_BYTES + e.encoded_len());
    value.extend_from_slice(&e.index.to_le_bytes());
    // Encoding into a Vec only fails for want of capacity, which a Vec grows.
    e.encode(&mut value)
        .map_err(|err| StorageError::Backend { backend: "raft-engine", reason: err.to_string() })?;
    Ok(BytesValue { value, ..BytesValue::default() })
}

/// Decodes a stored entry, checking that it is the entry at `index`.
fn decode_entry(dir: &Path, p: PartitionId, index: u64, v: &BytesValue) -> Result<LogEntry> {
    let bad = |reason: String| StorageError::Corrupt {
        file: dir.to_path_buf(),
        offset: None,
        reason: format!("partition {p} entry {index}: {reason}"),
    };
    let Some((head, body)) = v.value.split_at_checked(INDEX_PREFIX_BYTES) else {
        return Err(bad(format!("value of {} bytes", v.value.len())));
    };
    let stored = head.try_into().map(u64::from_le_bytes).map_err(|_| bad("short index prefix".into()))?;
    if stored != index {
        return Err(bad(format!("stored under index {stored}")));
    }
    let e = LogEntry::decode(body).map_err(|err| bad(format!("does not decode: {err}")))?;
    if e.index != index {
        return Err(bad(format!("holds entry {}", e.index)));
    }
    Ok(e)
}

fn map_err(dir: &Path, e: raft_engine::Error) -> StorageError {
    use raft_engine::Error as E;
    let corrupt = |reason: String| StorageError::Corrupt { file: dir.to_path_buf(), offset: None, reason };
    match e {
        E::Corruption(reason) => corrupt(reason),
        // Decoding failures of stored bytes.
        E::Codec(err) => corrupt(err.to_string()),
        E::Protobuf(err) => corrupt(err.to_string()),
        // The store's own state says these entries exist.
        E::EntryCompacted | E::EntryNotFound => corrupt(format!("raft-engine: {e}")),
        E::Io(source) => StorageError::Io { op: "raft-engine", path: dir.to_path_buf(), source },
        E::Other(err) if err.to_string().contains("Failed to lock file") => {
            StorageError::Locked { dir: dir.to_path_buf() }
        }
        other => StorageError::Backend { backend: "raft-engine", reason: other.to_string() },
    }
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs a raft-engine read (or open), turning a panic into a corruption error: raft-engine
/// panics on some inconsistencies of the data it reads.
fn guard_read<T>(dir: &Path, what: &str, f: impl FnOnce() -> raft_engine::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| map_err(dir, e)),
        Err(p) => Err(StorageError::Corrupt {
            file: dir.to_path_buf(),
            offset: None,
            reason: format!("raft-engine panicked while {what}: {}", panic_message(&*p)),
        }),
    }
}

/// Runs a raft-engine write, turning a panic (raft-engine panics when `fdatasync` fails)
/// into an error that poisons the store.
fn guard_write<T>(dir: &Path, f: impl FnOnce() -> raft_engine::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| map_err(dir, e)),
        Err(p) => Err(StorageError::Backend {
            backend: "raft-engine",
            reason: format!("panicked while writing: {}", panic_message(&*p)),
        }),
    }
}

fn term_at(engine: &Engine, dir: &Path, p: PartitionId, index: u64) -> Result<Option<u64>> {
    let v = guard_read(dir, "reading an entry", || engine.get_entry::<StoredEntries>(p, index))?;
    v.map(|v| decode_entry(dir, p, index, &v).map(|e| e.term)).transpose()
}

fn version_bytes(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Why a blocking write did not happen.
enum WriteError {
    /// Refused before writing: the store stays usable.
    Refused(StorageError),
    /// Failed while writing or syncing: poison the store.
    Failed(StorageError),
}

/// What a blocking write did.
struct Written {
    after: Vec<(PartitionId, PartitionState)>,
    /// Bytes raft-engine appended.
    bytes: u64,
}

/// The raft-engine [`LogStore`].
pub struct RaftEngineStore {
    engine: Option<Arc<Engine>>,
    dir: PathBuf,
    opts: RaftEngineOptions,
    /// Mirror of every partition's state, so `partition` never calls raft-engine.
    parts: BTreeMap<PartitionId, PartitionState>,
    meta: BTreeMap<Bytes, Bytes>,
    /// Bytes written since raft-engine's purge last ran.
    since_purge: u64,
    poison: Poison,
    stats: StoreStats,
}

impl std::fmt::Debug for RaftEngineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngineStore")
            .field("dir", &self.dir)
            .field("partitions", &self.parts.len())
            .finish()
    }
}

/// Refuses a directory holding files that are not raft-engine's (another adapter's data):
/// raft-engine would otherwise truncate a newest "log file" it cannot parse, and it panics on
/// a file name that is not UTF-8.
fn check_foreign(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    let mut foreign = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let ok = name.to_str().is_some_and(|n| {
            n == "LOCK"
                || n.ends_with(".raftlog")
                || n.ends_with(".rewrite")
                || n.ends_with(".raftlog.reserved")
        });
        if !ok {
            foreign.push(e.path());
        }
    }
    foreign.sort();
    match foreign.into_iter().next() {
        Some(file) => Err(StorageError::Foreign { file, reason: "not a raft-engine directory".into() }),
        None => Ok(()),
    }
}

type Loaded = (Arc<Engine>, BTreeMap<PartitionId, PartitionState>, BTreeMap<Bytes, Bytes>);

fn open_engine(dir: &Path, opts: &RaftEngineOptions) -> Result<Engine> {
    let cfg = opts.config(dir)?;
    // raft-engine's lock is an flock on its `LOCK` file, which a store just closed can still
    // hold for a moment: a process forked meanwhile (a test spawning a child) holds a copy of
    // every descriptor until it execs. Waited for as the native WAL waits for its own
    // (`wal::LOCK_WAIT`, 500 ms; on the blocking pool, so sleeping blocks no executor).
    let deadline = std::time::Instant::now() + crate::wal::LOCK_WAIT;
    let engine = loop {
        match guard_read(dir, "recovering", || Engine::open(cfg.clone())) {
            Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => break r?,
        }
    };
    if opts.prefill_bytes > 0 {
        sync_prefilled(dir)?;
    }
    Ok(engine)
}

/// Syncs the files raft-engine prefilled for reuse (it writes them without syncing): their
/// write-back would otherwise hit the first batches written into them. Files already synced
/// cost a no-op `fdatasync` each; there are at most raft-engine's recycling capacity of them.
fn sync_prefilled(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for e in rd.flatten() {
        let path = e.path();
        if path.to_str().is_some_and(|n| n.ends_with(".raftlog.reserved")) {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| StorageError::io("sync prefilled file", &path, e))?;
        }
    }
    Ok(())
}

fn open_blocking(dir: &Path, opts: &RaftEngineOptions) -> Result<Loaded> {
    check_foreign(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    let engine = open_engine(dir, opts)?;
    let corrupt = |reason: String| StorageError::Corrupt { file: dir.to_path_buf(), offset: None, reason };
    match engine.get(META_REGION, VERSION_KEY) {
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_le_bytes)
                .map_err(|_| corrupt(format!("format version value of {} bytes", v.len())))?;
            if found > RAFT_ENGINE_FORMAT_VERSION {
                return Err(StorageError::FormatTooNew {
                    file: dir.to_path_buf(),
                    found,
                    supported: RAFT_ENGINE_FORMAT_VERSION,
                });
            }
        }
        None => {
            if !engine.is_empty() {
                return Err(StorageError::Foreign {
                    file: dir.to_path_buf(),
                    reason: "raft-engine directory without a Phalanx format version".into(),
                });
            }
            let mut lb = LogBatch::default();
            lb.put(META_REGION, VERSION_KEY.to_vec(), version_bytes(RAFT_ENGINE_FORMAT_VERSION))
                .map_err(|e| map_err(dir, e))?;
            guard_write(dir, || engine.write(&mut lb, true))?;
        }
    }
    let mut parts = BTreeMap::new();
    let mut meta = BTreeMap::new();
    let mut regions = engine.raft_groups();
    regions.sort_unstable();
    for region in regions {
        if region == META_REGION {
            guard_read(dir, "scanning metadata", || {
                let (from, to) = ([META_PREFIX], [META_PREFIX + 1]);
                engine.scan_raw_messages(META_REGION, Some(&from[..]), Some(&to[..]), false, |k, v| {
                    let key = k.get(1..).unwrap_or_default();
                    meta.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(v));
                    true
                })
            })?;
            continue;
        }
        let (first, last) = (engine.first_index(region), engine.last_index(region));
        let Some(v) = engine.get(region, STATE_KEY) else {
            // A region emptied by raft-engine (nothing in it) is no partition; one holding
            // entries without the state written with them is not what this adapter writes.
            if first.is_none() {
                continue;
            }
            return Err(corrupt(format!("region {region} holds entries but no partition state")));
        };
        let st = decode_state(&v).map_err(|reason| corrupt(format!("partition {region}: {reason}")))?;
        // raft-engine's log must hold exactly the entries the state says: floor + 1 ..= last.
        let expect = (!st.is_empty()).then_some((st.first_index(), st.last.index));
        if first.zip(last) != expect {
            return Err(corrupt(format!(
                "partition {region}: raft-engine holds entries {first:?}..={last:?}, the partition state says {expect:?}"
            )));
        }
        parts.insert(region, st);
    }
    Ok((Arc::new(engine), parts, meta))
}

/// Appends one partition's planned effect to `lb`, in contract order.
fn add_partition(
    lb: &mut LogBatch,
    pw: &crate::types::PartitionWrite,
    plan: &crate::plan::PartitionPlan,
) -> Result<()> {
    let p = pw.partition;
    let backend =
        |e: raft_engine::Error| StorageError::Backend { backend: "raft-engine", reason: e.to_string() };
    if let Some((pos, keep)) = plan.snapshot {
        if keep {
            lb.add_command(p, Command::Compact { index: pos.index + 1 });
        } else {
            // Drops the region, state key included; the state is written again below.
            lb.add_command(p, Command::Clean);
        }
    }
    if !pw.entries.is_empty() {
        let stored = pw.entries.iter().map(encode_entry).collect::<Result<Vec<_>>>()?;
        lb.add_entries::<StoredEntries>(p, &stored).map_err(backend)?;
    }
    if let Some(c) = plan.compact {
        lb.add_command(p, Command::Compact { index: c.index + 1 });
    }
    lb.put(p, STATE_KEY.to_vec(), encode_state(&plan.after).to_vec()).map_err(backend)
}

impl RaftEngineStore {
    /// Opens (creating if needed) the store in `dir` with default raft-engine options. Must
    /// run inside a glommio executor; the work runs on its blocking pool.
    pub async fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<RaftEngineStore> {
        Self::open_with(dir, RaftEngineOptions { store: opts, ..RaftEngineOptions::default() }).await
    }

    /// Opens (creating if needed) the store in `dir` with `opts`.
    pub async fn open_with(dir: impl AsRef<Path>, opts: RaftEngineOptions) -> Result<RaftEngineStore> {
        if opts.purge_threshold_bytes < opts.target_file_bytes {
            return Err(StorageError::invalid(0, "purge_threshold_bytes must be at least target_file_bytes"));
        }
        let dir = dir.as_ref().to_path_buf();
        let (d, o) = (dir.clone(), opts.clone());
        let (engine, parts, meta) = glommio::executor().spawn_blocking(move || open_blocking(&d, &o)).await?;
        Ok(RaftEngineStore {
            engine: Some(engine),
            dir,
            opts,
            parts,
            meta,
            since_purge: 0,
            poison: Poison::default(),
            stats: StoreStats::default(),
        })
    }

    /// Marks a closed store directory as written by format `version` (tests of version
    /// refusal). Blocking.
    pub fn set_format_version(dir: &Path, version: u32) -> Result<()> {
        let engine = open_engine(dir, &RaftEngineOptions::default())?;
        let mut lb = LogBatch::default();
        lb.put(META_REGION, VERSION_KEY.to_vec(), version_bytes(version)).map_err(|e| map_err(dir, e))?;
        guard_write(dir, || engine.write(&mut lb, true)).map(|_| ())
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine
            .clone()
            .ok_or_else(|| StorageError::Backend { backend: "raft-engine", reason: "closed".into() })
    }

    async fn blocking_write(
        &mut self,
        batch: WriteBatch,
        states: BTreeMap<PartitionId, PartitionState>,
        remove: Option<PartitionId>,
    ) -> Result<Written> {
        let engine = self.engine()?;
        let dir = self.dir.clone();
        let sync = self.opts.store.sync_writes;
        let faults: Option<FaultInjector> = self.opts.store.faults.clone();
        let purge = self.since_purge >= self.opts.purge_every_bytes;
        self.poison.begin()?;
        let r = glommio::executor()
            .spawn_blocking(move || {
                let plan =
                    plan_batch(&batch, |p| Ok(states.get(&p).copied()), |p, i| term_at(&engine, &dir, p, i))
                        .map_err(WriteError::Refused)?;
                let mut lb = LogBatch::default();
                let mut after = Vec::with_capacity(plan.partitions.len());
                for (pw, plan) in batch.partitions.iter().zip(&plan.partitions) {
                    if pw.is_empty() {
                        continue;
                    }
                    add_partition(&mut lb, pw, plan).map_err(WriteError::Refused)?;
                    after.push((pw.partition, plan.after));
                }
                let backend = |e: raft_engine::Error| StorageError::Backend {
                    backend: "raft-engine",
                    reason: e.to_string(),
                };
                for m in &batch.meta {
                    let mut key = Vec::with_capacity(m.key.len() + 1);
                    key.push(META_PREFIX);
                    key.extend_from_slice(&m.key);
                    match &m.value {
                        Some(v) => lb
                            .put(META_REGION, key, v.to_vec())
                            .map_err(|e| WriteError::Refused(backend(e)))?,
                        None => lb.delete(META_REGION, key),
                    }
                }
                if let Some(p) = remove {
                    lb.add_command(p, Command::Clean);
                }
                if faults.as_ref().and_then(FaultInjector::take_write_fault).is_some() {
                    return Err(WriteError::Failed(StorageError::io("write", &dir, injected("write"))));
                }
                let bytes = guard_write(&dir, || engine.write(&mut lb, sync)).map_err(WriteError::Failed)?;
                if sync && faults.as_ref().is_some_and(FaultInjector::take_sync_fault) {
                    return Err(WriteError::Failed(StorageError::io("sync", &dir, injected("sync"))));
                }
                if purge {
                    // The regions raft-engine would like compacted are the engine's to
                    // compact (it owns the logs' floors); raft-engine rewrites them itself
                    // if they stay behind.
                    let lagging =
                        guard_write(&dir, || engine.purge_expired_files()).map_err(WriteError::Failed)?;
                    if !lagging.is_empty() {
                        tracing::debug!(regions = lagging.len(), "raft-engine asks for compaction");
                    }
                }
                Ok(Written { after, bytes: bytes as u64 })
            })
            .await;
        self.poison.end();
        match r {
            Ok(w) => {
                self.since_purge = if purge { 0 } else { self.since_purge + w.bytes };
                self.stats.bytes_written += w.bytes;
                Ok(w)
            }
            Err(WriteError::Refused(e)) => Err(e),
            Err(WriteError::Failed(e)) => Err(self.poison.poison(e)),
        }
    }
}

impl LogStore for RaftEngineStore {
    fn name(&self) -> &'static str {
        "raft-engine"
    }

    async fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.poison.check()?;
        if batch.is_empty() {
            return Ok(());
        }
        if batch.partitions.iter().any(|pw| pw.partition == META_REGION) {
            return Err(StorageError::invalid(
                META_REGION,
                "partition id reserved for the adapter's metadata",
            ));
        }
        let new_keys =
            batch.meta.iter().filter(|m| m.value.is_some() && !self.meta.contains_key(&m.key)).count();
        if self.meta.len() + new_keys > META_KEYS_MAX {
            return Err(StorageError::LimitExceeded {
                what: "metadata keys",
                value: (self.meta.len() + new_keys) as u64,
                max: META_KEYS_MAX as u64,
            });
        }
        let states = batch
            .partitions
            .iter()
            .filter_map(|pw| self.parts.get(&pw.partition).map(|s| (pw.partition, *s)))
            .collect();
        let written = self.blocking_write(batch.clone(), states, None).await?;
        for (p, s) in written.after {
            self.parts.insert(p, s);
        }
        for m in &batch.meta {
            match &m.value {
                Some(v) => self.meta.insert(m.key.clone(), v.clone()),
                None => self.meta.remove(&m.key),
            };
        }
        self.stats.batches += 1;
        self.stats.entries_written += batch.entry_count() as u64;
        if self.opts.store.sync_writes {
            self.stats.write_syncs += 1;
        }
        Ok(())
    }

    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>> {
        self.poison.check()?;
        let state = self.parts.get(&partition).copied().unwrap_or_default();
        check_range(partition, lo, hi, &state)?;
        if lo == hi {
            return Ok(Vec::new());
        }
        let engine = self.engine()?;
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let mut out = Vec::new();
                let mut used = 0u64;
                let mut next = lo;
                let mut chunk = Vec::new();
                while next < hi {
                    chunk.clear();
                    let n = guard_read(&dir, "reading entries", || {
                        engine.fetch_entries_to::<StoredEntries>(
                            partition,
                            next,
                            hi,
                            Some(READ_CHUNK_BYTES),
                            &mut chunk,
                        )
                    })?;
                    if n == 0 {
                        return Err(StorageError::Corrupt {
                            file: dir.clone(),
                            offset: None,
                            reason: format!("partition {partition}: entry {next} is missing"),
                        });
                    }
                    for v in &chunk {
                        let e = decode_entry(&dir, partition, next, v)?;
                        let size = e.approx_size() as u64;
                        if !out.is_empty() && used.saturating_add(size) > max_bytes {
                            return Ok(out);
                        }
                        used = used.saturating_add(size);
                        out.push(e);
                        next += 1;
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>> {
        self.poison.check()?;
        let Some(st) = self.parts.get(&partition).copied() else { return Ok(None) };
        if let Some(known) = st.known_term(index) {
            return Ok(known);
        }
        let engine = self.engine()?;
        let dir = self.dir.clone();
        glommio::executor().spawn_blocking(move || term_at(&engine, &dir, partition, index)).await
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionState>> {
        self.poison.check()?;
        Ok(self.parts.get(&partition).copied())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        self.poison.check()?;
        Ok(self.parts.keys().copied().collect())
    }

    async fn remove_partition(&mut self, partition: PartitionId) -> Result<()> {
        self.poison.check()?;
        if !self.parts.contains_key(&partition) {
            return Ok(());
        }
        // `Clean` drops the region from raft-engine's index; its files are reclaimed by a
        // later purge.
        self.blocking_write(WriteBatch::default(), BTreeMap::new(), Some(partition)).await?;
        self.parts.remove(&partition);
        self.stats.batches += 1;
        if self.opts.store.sync_writes {
            self.stats.write_syncs += 1;
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.poison.check()?;
        Ok(self.meta.get(key).cloned())
    }

    fn stats(&self) -> StoreStats {
        self.stats
    }

    fn sync_writes(&self) -> bool {
        self.opts.store.sync_writes
    }

    async fn close(mut self) -> Result<()> {
        // Dropping the engine closes its active file (truncate and sync) and joins its
        // metrics thread: blocking work, off the executor thread.
        if let Some(engine) = self.engine.take() {
            glommio::executor().spawn_blocking(move || drop(engine)).await;
        }
        self.poison.check()
    }
}
