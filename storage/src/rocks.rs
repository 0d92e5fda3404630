//! The RocksDB adapter (cargo feature `rocksdb`): one RocksDB instance per shard.
//!
//! Keys, all big-endian so a partition's entries are contiguous and ordered:
//! * `e` ‖ partition ‖ index → `crc32c u32 ‖ term u64 ‖ protobuf LogEntry` (the CRC covers
//!   partition, index, term and body, so a value under the wrong key is caught too);
//! * `s` ‖ partition → floor, last entry and hard state (see `kv::encode_state`);
//! * `m` ‖ key → metadata value;
//! * `v` → format version (u32 LE).
//!
//! A batch is one RocksDB `WriteBatch` written with `sync = sync_writes`: atomic, and durable
//! when it returns. Every RocksDB call runs on the glommio executor's blocking thread pool, so
//! a compaction stall or an `fsync` never blocks the shard's event loop. The WAL recovery mode
//! is `TolerateCorruptedTailRecords`: a torn last record is dropped, a damaged record followed
//! by good ones fails the open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use phalanx_proto::{LogEntry, Message};
use rocksdb::{DB, DBCompressionType, DBRecoveryMode, ErrorKind, Options, WriteOptions};

use crate::error::{Poison, Result, StorageError};
use crate::faults::{FaultInjector, injected};
use crate::kv::{decode_state, encode_state, entry_crc};
use crate::limits::META_KEYS_MAX;
use crate::memory::{check_range, take_budget};
use crate::plan::plan_batch;
use crate::store::{LogStore, StoreOptions};
use crate::types::{PartitionId, PartitionState, StoreStats, WriteBatch};

/// The format version of the key layout above.
pub const ROCKS_FORMAT_VERSION: u32 = 1;

const VERSION_KEY: &[u8] = b"v";

fn entry_key(p: PartitionId, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'e';
    k[1..9].copy_from_slice(&p.to_be_bytes());
    k[9..17].copy_from_slice(&index.to_be_bytes());
    k
}

/// First key after every entry of partition `p`.
fn entries_end(p: PartitionId) -> Vec<u8> {
    match p.checked_add(1) {
        Some(n) => entry_key(n, 0).to_vec(),
        None => vec![b'e' + 1],
    }
}

fn state_key(p: PartitionId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b's';
    k[1..9].copy_from_slice(&p.to_be_bytes());
    k
}

fn meta_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(b'm');
    k.extend_from_slice(key);
    k
}

fn map_err(dir: &Path, e: rocksdb::Error) -> StorageError {
    match e.kind() {
        ErrorKind::Corruption => {
            StorageError::Corrupt { file: dir.to_path_buf(), offset: None, reason: e.into_string() }
        }
        _ if e.as_ref().contains("lock") => StorageError::Locked { dir: dir.to_path_buf() },
        _ => StorageError::Backend { backend: "rocksdb", reason: e.into_string() },
    }
}

/// Decodes an entry value, checking its CRC.
fn decode_entry(dir: &Path, p: PartitionId, index: u64, v: &[u8]) -> Result<LogEntry> {
    let bad = |reason: String| StorageError::Corrupt {
        file: dir.to_path_buf(),
        offset: None,
        reason: format!("partition {p} entry {index}: {reason}"),
    };
    if v.len() < 12 {
        return Err(bad(format!("value of {} bytes", v.len())));
    }
    let crc = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    let term = u64::from_le_bytes([v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]]);
    if entry_crc(p, index, term, &v[12..]) != crc {
        return Err(bad("checksum mismatch".into()));
    }
    let e = LogEntry::decode(&v[12..]).map_err(|err| bad(format!("does not decode: {err}")))?;
    if e.index != index || e.term != term {
        return Err(bad(format!("holds entry {}/{}", e.index, e.term)));
    }
    Ok(e)
}

fn encode_entry(p: PartitionId, e: &LogEntry) -> Vec<u8> {
    let proto = e.encode_to_vec();
    let mut v = Vec::with_capacity(12 + proto.len());
    v.extend_from_slice(&entry_crc(p, e.index, e.term, &proto).to_le_bytes());
    v.extend_from_slice(&e.term.to_le_bytes());
    v.extend_from_slice(&proto);
    v
}

fn term_at(db: &DB, dir: &Path, p: PartitionId, index: u64) -> Result<Option<u64>> {
    match db.get_pinned(entry_key(p, index)).map_err(|e| map_err(dir, e))? {
        Some(v) if v.len() >= 12 => {
            Ok(Some(u64::from_le_bytes([v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]])))
        }
        Some(_) => Err(StorageError::Corrupt {
            file: dir.to_path_buf(),
            offset: None,
            reason: format!("partition {p} entry {index}: short value"),
        }),
        None => Ok(None),
    }
}

/// Why a blocking write did not happen.
enum WriteError {
    /// Refused before writing: the store stays usable.
    Refused(StorageError),
    /// Failed while writing or syncing: poison the store.
    Failed(StorageError),
}

/// The RocksDB [`LogStore`].
pub struct RocksStore {
    db: Option<Arc<DB>>,
    dir: PathBuf,
    opts: StoreOptions,
    /// Mirror of every partition's state, so `partition` never touches RocksDB.
    parts: BTreeMap<PartitionId, PartitionState>,
    meta: BTreeMap<Bytes, Bytes>,
    poison: Poison,
    stats: StoreStats,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("dir", &self.dir).field("partitions", &self.parts.len()).finish()
    }
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    // A torn final record is a crash artefact and is dropped; damage in the middle fails.
    o.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    o.set_paranoid_checks(true);
    // Built without compression libraries (default-features = false).
    o.set_compression_type(DBCompressionType::None);
    o
}

/// Refuses a directory holding files that are not RocksDB's (another adapter's data).
fn check_foreign(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    let mut names = Vec::new();
    for e in rd.flatten() {
        names.push(e.path());
    }
    if names.is_empty() || dir.join("CURRENT").exists() {
        return Ok(());
    }
    names.sort();
    Err(StorageError::Foreign { file: names.swap_remove(0), reason: "not a RocksDB directory".into() })
}

type Loaded = (Arc<DB>, BTreeMap<PartitionId, PartitionState>, BTreeMap<Bytes, Bytes>);

fn open_blocking(dir: &Path) -> Result<Loaded> {
    check_foreign(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    let db = DB::open(&db_options(), dir).map_err(|e| map_err(dir, e))?;
    match db.get(VERSION_KEY).map_err(|e| map_err(dir, e))? {
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_le_bytes).map_err(|_| {
                StorageError::Corrupt {
                    file: dir.to_path_buf(),
                    offset: None,
                    reason: "bad format version value".into(),
                }
            })?;
            if found > ROCKS_FORMAT_VERSION {
                return Err(StorageError::FormatTooNew {
                    file: dir.to_path_buf(),
                    found,
                    supported: ROCKS_FORMAT_VERSION,
                });
            }
        }
        None => {
            let mut it = db.raw_iterator();
            it.seek_to_first();
            if it.valid() {
                return Err(StorageError::Foreign {
                    file: dir.to_path_buf(),
                    reason: "RocksDB database without a Phalanx format version".into(),
                });
            }
            let mut w = WriteOptions::default();
            w.set_sync(true);
            db.put_opt(VERSION_KEY, ROCKS_FORMAT_VERSION.to_le_bytes(), &w).map_err(|e| map_err(dir, e))?;
        }
    }
    let mut parts = BTreeMap::new();
    let mut meta = BTreeMap::new();
    let mut it = db.raw_iterator();
    it.seek(b"m");
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        match k.first() {
            Some(b'm') => {
                meta.insert(Bytes::copy_from_slice(&k[1..]), Bytes::copy_from_slice(v));
            }
            Some(b's') => {
                let p = <[u8; 8]>::try_from(&k[1..]).map(u64::from_be_bytes).map_err(|_| {
                    StorageError::Corrupt {
                        file: dir.to_path_buf(),
                        offset: None,
                        reason: "bad partition state key".into(),
                    }
                })?;
                let st = decode_state(v).map_err(|reason| StorageError::Corrupt {
                    file: dir.to_path_buf(),
                    offset: None,
                    reason: format!("partition {p}: {reason}"),
                })?;
                parts.insert(p, st);
            }
            _ => break,
        }
        it.next();
    }
    it.status().map_err(|e| map_err(dir, e))?;
    drop(it);
    Ok((Arc::new(db), parts, meta))
}

impl RocksStore {
    /// Opens (creating if needed) the RocksDB store in `dir`. Must run inside a glommio
    /// executor; the work runs on its blocking pool.
    pub async fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<RocksStore> {
        let dir = dir.as_ref().to_path_buf();
        let d = dir.clone();
        let (db, parts, meta) = glommio::executor().spawn_blocking(move || open_blocking(&d)).await?;
        Ok(RocksStore {
            db: Some(db),
            dir,
            opts,
            parts,
            meta,
            poison: Poison::default(),
            stats: StoreStats::default(),
        })
    }

    /// Marks a closed store directory as written by format `version` (tests of version
    /// refusal). Blocking.
    pub fn set_format_version(dir: &Path, version: u32) -> Result<()> {
        let db = DB::open(&db_options(), dir).map_err(|e| map_err(dir, e))?;
        db.put(VERSION_KEY, version.to_le_bytes()).map_err(|e| map_err(dir, e))?;
        db.flush().map_err(|e| map_err(dir, e))
    }

    fn db(&self) -> Result<Arc<DB>> {
        self.db.clone().ok_or_else(|| StorageError::Backend { backend: "rocksdb", reason: "closed".into() })
    }

    async fn blocking_write(
        &mut self,
        batch: WriteBatch,
        states: BTreeMap<PartitionId, PartitionState>,
        remove: Option<PartitionId>,
    ) -> Result<Vec<(PartitionId, PartitionState)>> {
        let db = self.db()?;
        let dir = self.dir.clone();
        let sync = self.opts.sync_writes;
        let faults: Option<FaultInjector> = self.opts.faults.clone();
        self.poison.begin()?;
        let r = glommio::executor()
            .spawn_blocking(move || {
                let plan =
                    plan_batch(&batch, |p| Ok(states.get(&p).copied()), |p, i| term_at(&db, &dir, p, i))
                        .map_err(WriteError::Refused)?;
                let mut wb = rocksdb::WriteBatch::default();
                let mut after = Vec::with_capacity(plan.partitions.len());
                for (pw, plan) in batch.partitions.iter().zip(&plan.partitions) {
                    if pw.is_empty() {
                        continue;
                    }
                    let p = pw.partition;
                    if let Some((pos, keep)) = plan.snapshot {
                        let end = if keep { entry_key(p, pos.index).to_vec() } else { entries_end(p) };
                        wb.delete_range(entry_key(p, 0).to_vec(), end);
                        if keep {
                            wb.delete(entry_key(p, pos.index));
                        }
                    }
                    if let Some(from) = plan.truncate_from {
                        wb.delete_range(entry_key(p, from).to_vec(), entries_end(p));
                    }
                    for e in &pw.entries {
                        wb.put(entry_key(p, e.index), encode_entry(p, e));
                    }
                    if let Some(c) = plan.compact {
                        wb.delete_range(entry_key(p, 0).to_vec(), entry_key(p, c.index).to_vec());
                        wb.delete(entry_key(p, c.index));
                    }
                    wb.put(state_key(p), encode_state(&plan.after));
                    after.push((p, plan.after));
                }
                for m in &batch.meta {
                    match &m.value {
                        Some(v) => wb.put(meta_key(&m.key), v),
                        None => wb.delete(meta_key(&m.key)),
                    }
                }
                if let Some(p) = remove {
                    wb.delete_range(entry_key(p, 0).to_vec(), entries_end(p));
                    wb.delete(state_key(p));
                }
                if faults.as_ref().and_then(FaultInjector::take_write_fault).is_some() {
                    return Err(WriteError::Failed(StorageError::io("write", &dir, injected("write"))));
                }
                let mut wo = WriteOptions::default();
                wo.set_sync(sync);
                db.write_opt(wb, &wo).map_err(|e| WriteError::Failed(map_err(&dir, e)))?;
                if sync && faults.as_ref().is_some_and(FaultInjector::take_sync_fault) {
                    return Err(WriteError::Failed(StorageError::io("sync", &dir, injected("sync"))));
                }
                if let Some(p) = remove {
                    // Reclaim the partition's space now rather than at some later compaction.
                    db.compact_range(Some(entry_key(p, 0).to_vec()), Some(entries_end(p)));
                }
                Ok(after)
            })
            .await;
        self.poison.end();
        match r {
            Ok(after) => Ok(after),
            Err(WriteError::Refused(e)) => Err(e),
            Err(WriteError::Failed(e)) => Err(self.poison.poison(e)),
        }
    }
}

impl LogStore for RocksStore {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    async fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.poison.check()?;
        if batch.is_empty() {
            return Ok(());
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
        let after = self.blocking_write(batch.clone(), states, None).await?;
        for (p, s) in after {
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
        self.stats.bytes_written +=
            batch.partitions.iter().flat_map(|p| &p.entries).map(|e| e.encoded_len() as u64).sum::<u64>();
        if self.opts.sync_writes {
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
        let db = self.db()?;
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let mut out = Vec::new();
                let mut used = 0u64;
                let mut it = db.raw_iterator();
                it.seek(entry_key(partition, lo));
                let mut expect = lo;
                while expect < hi {
                    let key = entry_key(partition, expect);
                    match (it.key(), it.value()) {
                        (Some(k), Some(v)) if k == key => {
                            let e = decode_entry(&dir, partition, expect, v)?;
                            let size = e.approx_size() as u64;
                            if !out.is_empty() && used.saturating_add(size) > max_bytes {
                                break;
                            }
                            used = used.saturating_add(size);
                            out.push(e);
                        }
                        _ => {
                            it.status().map_err(|e| map_err(&dir, e))?;
                            return Err(StorageError::Corrupt {
                                file: dir.clone(),
                                offset: None,
                                reason: format!("partition {partition}: entry {expect} is missing"),
                            });
                        }
                    }
                    expect += 1;
                    it.next();
                }
                Ok(take_budget(out.into_iter(), max_bytes))
            })
            .await
    }

    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>> {
        self.poison.check()?;
        let Some(st) = self.parts.get(&partition).copied() else { return Ok(None) };
        if let Some(known) = st.known_term(index) {
            return Ok(known);
        }
        let db = self.db()?;
        let dir = self.dir.clone();
        glommio::executor().spawn_blocking(move || term_at(&db, &dir, partition, index)).await
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
        self.blocking_write(WriteBatch::default(), BTreeMap::new(), Some(partition)).await?;
        self.parts.remove(&partition);
        self.stats.batches += 1;
        if self.opts.sync_writes {
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
        self.opts.sync_writes
    }

    async fn close(mut self) -> Result<()> {
        // Closing RocksDB waits for its background work: do it off the executor thread.
        if let Some(db) = self.db.take() {
            glommio::executor().spawn_blocking(move || drop(db)).await;
        }
        self.poison.check()
    }
}
