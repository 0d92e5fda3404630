//! The SQLite adapter (cargo feature `sqlite`, bundled SQLite): one database per shard, in
//! `DIR/phalanx.db`.
//!
//! A batch is one transaction. The database runs in WAL journal mode with
//! `synchronous = FULL` (each commit syncs the journal) when `sync_writes` is on, `OFF`
//! otherwise, and in exclusive locking mode (one store per directory; no shared memory).
//! Every call runs on the glommio executor's blocking thread pool. SQLite does not checksum
//! rows, so entries carry a CRC32C over (partition, index, term, body) checked on every read.
//!
//! Integers are stored as SQLite's signed 64-bit: partitions and indexes above `i64::MAX` are
//! refused; terms, votes and commit indexes round-trip bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use phalanx_proto::{HardState, LogEntry, Message};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::error::{Poison, Result, StorageError};
use crate::faults::{FaultInjector, injected};
use crate::kv::entry_crc;
use crate::limits::META_KEYS_MAX;
use crate::memory::{check_range, take_budget};
use crate::plan::plan_batch;
use crate::store::{LogStore, StoreOptions};
use crate::types::{LogPosition, PartitionId, PartitionState, StoreStats, WriteBatch};

/// The database file name inside the store directory.
pub const DB_FILE: &str = "phalanx.db";
/// Schema version, kept in `PRAGMA user_version`. Version 2 adds `parts.hs_flags` (bit 0:
/// the replica is recovering from lost state); a version-1 database is upgraded at open.
pub const SQLITE_FORMAT_VERSION: u32 = 2;

pub(crate) const SCHEMA: &str = "
CREATE TABLE entries (
    part INTEGER NOT NULL, idx INTEGER NOT NULL, term INTEGER NOT NULL,
    crc INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (part, idx)) WITHOUT ROWID;
CREATE TABLE parts (
    part INTEGER PRIMARY KEY, floor_idx INTEGER NOT NULL, floor_term INTEGER NOT NULL,
    last_idx INTEGER NOT NULL, last_term INTEGER NOT NULL,
    hs_term INTEGER NOT NULL, hs_vote INTEGER NOT NULL, hs_commit INTEGER NOT NULL,
    hs_flags INTEGER NOT NULL DEFAULT 0);
CREATE TABLE meta (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

fn map_err(db: &Path, e: rusqlite::Error) -> StorageError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => {
            StorageError::Corrupt { file: db.to_path_buf(), offset: None, reason: e.to_string() }
        }
        Some(ErrorCode::NotADatabase) => {
            StorageError::Foreign { file: db.to_path_buf(), reason: e.to_string() }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StorageError::Locked { dir: db.parent().unwrap_or(db).to_path_buf() }
        }
        _ => StorageError::Backend { backend: "sqlite", reason: e.to_string() },
    }
}

type Loaded = (BTreeMap<PartitionId, PartitionState>, BTreeMap<Bytes, Bytes>);

fn open_blocking(dir: &Path, sync: bool) -> Result<(Connection, Loaded)> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    for e in std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(DB_FILE) {
            return Err(StorageError::Foreign {
                file: e.path(),
                reason: "unexpected file in an SQLite store".into(),
            });
        }
    }
    let path = dir.join(DB_FILE);
    let err = |e| map_err(&path, e);
    let conn = Connection::open(&path).map_err(err)?;
    // Exclusive: a second store on the same directory fails instead of sharing it.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(err)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    if version > i64::from(SQLITE_FORMAT_VERSION) {
        return Err(StorageError::FormatTooNew {
            file: path.clone(),
            found: version as u32,
            supported: SQLITE_FORMAT_VERSION,
        });
    }
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Backend { backend: "sqlite", reason: format!("journal_mode is {mode}") });
    }
    conn.pragma_update(None, "synchronous", if sync { "FULL" } else { "OFF" }).map_err(err)?;
    if version == 0 {
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(err)?;
        if tables != 0 {
            return Err(StorageError::Foreign {
                file: path.clone(),
                reason: "SQLite database of another schema".into(),
            });
        }
        // Set before the first table exists, so removed partitions' pages can be returned.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(err)?;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version = {SQLITE_FORMAT_VERSION}; COMMIT;"
        ))
        .map_err(err)?;
    } else if version == 1 {
        conn.execute_batch(
            "BEGIN; ALTER TABLE parts ADD COLUMN hs_flags INTEGER NOT NULL DEFAULT 0; PRAGMA user_version = 2; COMMIT;",
        )
        .map_err(err)?;
    }
    let mut parts = BTreeMap::new();
    {
        let mut st = conn
            .prepare(
                "SELECT part, floor_idx, floor_term, last_idx, last_term, hs_term, hs_vote, hs_commit, hs_flags \
                 FROM parts",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    u(r.get(0)?),
                    PartitionState {
                        floor: LogPosition::new(u(r.get(1)?), u(r.get(2)?)),
                        last: LogPosition::new(u(r.get(3)?), u(r.get(4)?)),
                        hard_state: HardState {
                            term: u(r.get(5)?),
                            vote: u(r.get(6)?),
                            commit: u(r.get(7)?),
                            recovering: u(r.get(8)?) & 1 != 0,
                        },
                    },
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (p, s) = row.map_err(err)?;
            parts.insert(p, s);
        }
    }
    let mut meta = BTreeMap::new();
    {
        let mut st = conn.prepare("SELECT key, value FROM meta").map_err(err)?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(err)?;
        for row in rows {
            let (k, v) = row.map_err(err)?;
            meta.insert(Bytes::from(k), Bytes::from(v));
        }
    }
    Ok((conn, (parts, meta)))
}

/// Why a blocking write did not happen.
enum WriteError {
    Refused(StorageError),
    Failed(StorageError),
}

/// The SQLite [`LogStore`].
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    opts: StoreOptions,
    parts: BTreeMap<PartitionId, PartitionState>,
    meta: BTreeMap<Bytes, Bytes>,
    poison: Poison,
    stats: StoreStats,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("partitions", &self.parts.len())
            .finish()
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave the connection half-changed (SQLite rolls
    // back an unfinished transaction), so a poisoned mutex is still usable.
    conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn term_at(conn: &Connection, path: &Path, p: PartitionId, index: u64) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT term FROM entries WHERE part = ?1 AND idx = ?2")
        .and_then(|mut st| st.query_row(params![i(p), i(index)], |r| r.get::<_, i64>(0)).optional())
        .map(|t| t.map(u))
        .map_err(|e| map_err(path, e))
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite store in `dir`. Must run inside a glommio
    /// executor; the work runs on its blocking pool.
    pub async fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<SqliteStore> {
        let dir = dir.as_ref().to_path_buf();
        let sync = opts.sync_writes;
        let d = dir.clone();
        let (conn, (parts, meta)) =
            glommio::executor().spawn_blocking(move || open_blocking(&d, sync)).await?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: dir.join(DB_FILE),
            opts,
            parts,
            meta,
            poison: Poison::default(),
            stats: StoreStats::default(),
        })
    }

    /// Keeps SQLite's write-ahead log file at close instead of checkpointing it into the
    /// database — what a crash leaves behind (tests of torn tails).
    pub async fn keep_wal_on_close(&self) -> Result<()> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || {
                lock(&conn)
                    .set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                    .map(|_| ())
                    .map_err(|e| map_err(&path, e))
            })
            .await
    }

    /// Marks a closed store directory as written by format `version` (tests of version
    /// refusal). Blocking.
    pub fn set_format_version(dir: &Path, version: u32) -> Result<()> {
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| map_err(&path, e))?;
        conn.pragma_update(None, "user_version", i64::from(version)).map_err(|e| map_err(&path, e))
    }

    async fn blocking_write(
        &mut self,
        batch: WriteBatch,
        states: BTreeMap<PartitionId, PartitionState>,
        remove: Option<PartitionId>,
    ) -> Result<Vec<(PartitionId, PartitionState)>> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let sync = self.opts.sync_writes;
        let faults: Option<FaultInjector> = self.opts.faults.clone();
        self.poison.begin()?;
        let r = glommio::executor()
            .spawn_blocking(move || {
                let mut conn = lock(&conn);
                for pw in &batch.partitions {
                    let too_big = pw.partition > i64::MAX as u64 || pw.entries.last().is_some_and(|e| e.index > i64::MAX as u64);
                    if too_big {
                        return Err(WriteError::Refused(StorageError::invalid(pw.partition, "id or index above i64::MAX")));
                    }
                }
                let plan = plan_batch(&batch, |p| Ok(states.get(&p).copied()), |p, ix| term_at(&conn, &path, p, ix))
                    .map_err(WriteError::Refused)?;
                let fail = |e| WriteError::Failed(map_err(&path, e));
                if faults.as_ref().and_then(FaultInjector::take_write_fault).is_some() {
                    return Err(WriteError::Failed(StorageError::io("write", &path, injected("write"))));
                }
                let tx = conn.transaction().map_err(fail)?;
                let mut after = Vec::with_capacity(plan.partitions.len());
                for (pw, plan) in batch.partitions.iter().zip(&plan.partitions) {
                    if pw.is_empty() {
                        continue;
                    }
                    let p = i(pw.partition);
                    if let Some((pos, keep)) = plan.snapshot {
                        let upto = if keep { i(pos.index) } else { i64::MAX };
                        tx.prepare_cached("DELETE FROM entries WHERE part = ?1 AND idx <= ?2")
                            .and_then(|mut s| s.execute(params![p, upto]))
                            .map_err(fail)?;
                    }
                    if let Some(from) = plan.truncate_from {
                        tx.prepare_cached("DELETE FROM entries WHERE part = ?1 AND idx >= ?2")
                            .and_then(|mut s| s.execute(params![p, i(from)]))
                            .map_err(fail)?;
                    }
                    if !pw.entries.is_empty() {
                        let mut ins = tx
                            .prepare_cached("INSERT INTO entries (part, idx, term, crc, body) VALUES (?1, ?2, ?3, ?4, ?5)")
                            .map_err(fail)?;
                        for e in &pw.entries {
                            let body = e.encode_to_vec();
                            let crc = entry_crc(pw.partition, e.index, e.term, &body);
                            ins.execute(params![p, i(e.index), i(e.term), i64::from(crc), body]).map_err(fail)?;
                        }
                    }
                    if let Some(c) = plan.compact {
                        tx.prepare_cached("DELETE FROM entries WHERE part = ?1 AND idx <= ?2")
                            .and_then(|mut s| s.execute(params![p, i(c.index)]))
                            .map_err(fail)?;
                    }
                    let s = plan.after;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO parts (part, floor_idx, floor_term, last_idx, last_term, hs_term, \
                         hs_vote, hs_commit, hs_flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            p,
                            i(s.floor.index),
                            i(s.floor.term),
                            i(s.last.index),
                            i(s.last.term),
                            i(s.hard_state.term),
                            i(s.hard_state.vote),
                            i(s.hard_state.commit),
                            i(u64::from(s.hard_state.recovering))
                        ])
                    })
                    .map_err(fail)?;
                    after.push((pw.partition, s));
                }
                for m in &batch.meta {
                    match &m.value {
                        Some(v) => tx
                            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                            .and_then(|mut s| s.execute(params![&m.key[..], &v[..]])),
                        None => tx
                            .prepare_cached("DELETE FROM meta WHERE key = ?1")
                            .and_then(|mut s| s.execute(params![&m.key[..]])),
                    }
                    .map_err(fail)?;
                }
                if let Some(p) = remove {
                    tx.execute("DELETE FROM entries WHERE part = ?1", params![i(p)]).map_err(fail)?;
                    tx.execute("DELETE FROM parts WHERE part = ?1", params![i(p)]).map_err(fail)?;
                }
                tx.commit().map_err(fail)?;
                if sync && faults.as_ref().is_some_and(FaultInjector::take_sync_fault) {
                    return Err(WriteError::Failed(StorageError::io("sync", &path, injected("sync"))));
                }
                if remove.is_some() {
                    // Return the removed partition's pages to the file system.
                    conn.execute_batch("PRAGMA incremental_vacuum;").map_err(fail)?;
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

impl LogStore for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
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
        let conn = self.conn.clone();
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let conn = lock(&conn);
                let err = |e| map_err(&path, e);
                let mut st = conn
                    .prepare_cached(
                        "SELECT idx, term, crc, body FROM entries WHERE part = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
                    )
                    .map_err(err)?;
                let mut rows = st.query(params![i(partition), i(lo), i(hi)]).map_err(err)?;
                let mut out = Vec::new();
                let mut used = 0u64;
                let mut expect = lo;
                let mut full = false;
                while let Some(row) = rows.next().map_err(err)? {
                    let (idx, term, crc, body): (i64, i64, i64, Vec<u8>) =
                        (row.get(0).map_err(err)?, row.get(1).map_err(err)?, row.get(2).map_err(err)?, row.get(3).map_err(err)?);
                    let (idx, term) = (u(idx), u(term));
                    let bad = |reason: String| StorageError::Corrupt {
                        file: path.clone(),
                        offset: None,
                        reason: format!("partition {partition} entry {expect}: {reason}"),
                    };
                    if idx != expect {
                        return Err(bad(format!("missing (next row is {idx})")));
                    }
                    if i64::from(entry_crc(partition, idx, term, &body)) != crc {
                        return Err(bad("checksum mismatch".into()));
                    }
                    let e = LogEntry::decode(&body[..]).map_err(|e| bad(format!("does not decode: {e}")))?;
                    if e.index != idx || e.term != term {
                        return Err(bad(format!("holds entry {}/{}", e.index, e.term)));
                    }
                    let size = e.approx_size() as u64;
                    if !out.is_empty() && used.saturating_add(size) > max_bytes {
                        full = true;
                        break;
                    }
                    used = used.saturating_add(size);
                    out.push(e);
                    expect += 1;
                }
                if !full && expect < hi {
                    return Err(StorageError::Corrupt {
                        file: path.clone(),
                        offset: None,
                        reason: format!("partition {partition}: entry {expect} is missing"),
                    });
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
        let conn = self.conn.clone();
        let path = self.path.clone();
        glommio::executor().spawn_blocking(move || term_at(&lock(&conn), &path, partition, index)).await
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

    async fn close(self) -> Result<()> {
        // Closing checkpoints the journal into the database: blocking work.
        let conn = self.conn.clone();
        drop(self.conn);
        glommio::executor().spawn_blocking(move || drop(conn)).await;
        self.poison.check()
    }
}
