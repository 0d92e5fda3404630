//! The in-memory store, for tests and framework-mode benchmarks.
//!
//! Its "disk" is a [`MemDisk`] that outlives the store, so a test can close (or drop, like a
//! crash) a store and reopen the same data. Nothing survives the process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use phalanx_proto::{HardState, LogEntry};

use crate::chunked::ChunkedDeque;
use crate::error::{Poison, Result, StorageError};
use crate::faults::injected;
use crate::limits::META_KEYS_MAX;
use crate::plan::plan_batch;
use crate::store::{LogStore, StoreOptions};
use crate::types::{LogPosition, PartitionId, PartitionState, StoreStats, WriteBatch};

/// The format version of [`MemDisk`] this build understands (it only exists so the
/// conformance suite can check that every adapter refuses newer data).
pub const MEMORY_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default)]
struct MemPartition {
    floor: LogPosition,
    entries: ChunkedDeque<LogEntry>,
    hard_state: HardState,
}

impl MemPartition {
    fn state(&self) -> PartitionState {
        let last = self.entries.back().map_or(self.floor, |e| LogPosition::new(e.index, e.term));
        PartitionState { floor: self.floor, last, hard_state: self.hard_state }
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor.index {
            return Some(self.floor.term);
        }
        let i = index.checked_sub(self.floor.index + 1)?;
        self.entries.get(i as usize).map(|e| e.term)
    }
}

#[derive(Debug)]
struct DiskInner {
    format_version: u32,
    open: bool,
    partitions: BTreeMap<PartitionId, MemPartition>,
    meta: BTreeMap<Bytes, Bytes>,
}

/// The memory a [`MemoryStore`] persists into. Cloning shares it.
#[derive(Clone, Debug)]
pub struct MemDisk {
    inner: Rc<RefCell<DiskInner>>,
}

impl Default for MemDisk {
    fn default() -> Self {
        MemDisk {
            inner: Rc::new(RefCell::new(DiskInner {
                format_version: MEMORY_FORMAT_VERSION,
                open: false,
                partitions: BTreeMap::new(),
                meta: BTreeMap::new(),
            })),
        }
    }
}

impl MemDisk {
    /// An empty disk.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the disk as written by format `version` (tests of version checks).
    pub fn set_format_version(&self, version: u32) {
        self.inner.borrow_mut().format_version = version;
    }
}

/// The in-memory [`LogStore`].
#[derive(Debug)]
pub struct MemoryStore {
    disk: MemDisk,
    opts: StoreOptions,
    poison: Poison,
    stats: StoreStats,
}

impl MemoryStore {
    /// A store on a fresh, private [`MemDisk`].
    #[must_use]
    pub fn new(opts: StoreOptions) -> Self {
        let disk = MemDisk::new();
        disk.inner.borrow_mut().open = true;
        MemoryStore { disk, opts, poison: Poison::default(), stats: StoreStats::default() }
    }

    /// Opens `disk` (which must not be open in another store).
    pub fn open(disk: &MemDisk, opts: StoreOptions) -> Result<Self> {
        {
            let mut d = disk.inner.borrow_mut();
            if d.format_version > MEMORY_FORMAT_VERSION {
                return Err(StorageError::FormatTooNew {
                    file: PathBuf::from("<memory>"),
                    found: d.format_version,
                    supported: MEMORY_FORMAT_VERSION,
                });
            }
            if d.open {
                return Err(StorageError::Locked { dir: PathBuf::from("<memory>") });
            }
            d.open = true;
        }
        Ok(MemoryStore { disk: disk.clone(), opts, poison: Poison::default(), stats: StoreStats::default() })
    }

    fn apply(&mut self, batch: &WriteBatch) -> Result<()> {
        let plan = {
            let d = self.disk.inner.borrow();
            plan_batch(
                batch,
                |p| Ok(d.partitions.get(&p).map(MemPartition::state)),
                |p, i| Ok(d.partitions.get(&p).and_then(|mp| mp.term(i))),
            )?
        };
        {
            let d = self.disk.inner.borrow();
            let new_keys =
                batch.meta.iter().filter(|m| m.value.is_some() && !d.meta.contains_key(&m.key)).count();
            if d.meta.len() + new_keys > META_KEYS_MAX {
                return Err(StorageError::LimitExceeded {
                    what: "metadata keys",
                    value: (d.meta.len() + new_keys) as u64,
                    max: META_KEYS_MAX as u64,
                });
            }
        }
        if let Some(f) = &self.opts.faults
            && f.take_write_fault().is_some()
        {
            return Err(self.poison.poison(StorageError::io("write", "<memory>", injected("write"))));
        }
        let mut d = self.disk.inner.borrow_mut();
        for (pw, plan) in batch.partitions.iter().zip(&plan.partitions) {
            if pw.is_empty() {
                continue;
            }
            let mp = d.partitions.entry(pw.partition).or_default();
            if let Some((snap, keep)) = plan.snapshot {
                if keep {
                    let drop = snap.index.saturating_sub(mp.floor.index) as usize;
                    mp.entries.drain_front(drop);
                } else {
                    mp.entries.clear();
                }
                mp.floor = snap;
            }
            if let Some(first) = pw.entries.first() {
                let keep = (first.index - mp.floor.index - 1) as usize;
                mp.entries.truncate(keep);
                mp.entries.extend(pw.entries.iter().cloned());
            }
            if let Some(hs) = pw.hard_state {
                mp.hard_state = hs;
            }
            if let Some(c) = plan.compact {
                let drop = (c.index - mp.floor.index) as usize;
                mp.entries.drain_front(drop);
                mp.floor = c;
            }
            self.stats.entries_written += pw.entries.len() as u64;
        }
        self.stats.bytes_written += plan.entry_bytes;
        for m in &batch.meta {
            match &m.value {
                Some(v) => d.meta.insert(m.key.clone(), v.clone()),
                None => d.meta.remove(&m.key),
            };
        }
        drop(d);
        self.stats.batches += 1;
        if self.opts.sync_writes {
            if let Some(f) = &self.opts.faults
                && f.take_sync_fault()
            {
                return Err(self.poison.poison(StorageError::io("sync", "<memory>", injected("sync"))));
            }
            self.stats.write_syncs += 1;
        }
        Ok(())
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.disk.inner.borrow_mut().open = false;
    }
}

impl LogStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.poison.check()?;
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(e) = self.opts.faults.as_ref().and_then(|f| f.refusal(batch)) {
            return Err(e);
        }
        self.apply(batch)
    }

    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>> {
        self.poison.check()?;
        let d = self.disk.inner.borrow();
        let state = d.partitions.get(&partition).map(MemPartition::state).unwrap_or_default();
        check_range(partition, lo, hi, &state)?;
        let Some(mp) = d.partitions.get(&partition) else { return Ok(Vec::new()) };
        let start = (lo - mp.floor.index - 1) as usize;
        Ok(take_budget(mp.entries.range(start..start + (hi - lo) as usize).cloned(), max_bytes))
    }

    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>> {
        self.poison.check()?;
        Ok(self.disk.inner.borrow().partitions.get(&partition).and_then(|mp| mp.term(index)))
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionState>> {
        self.poison.check()?;
        Ok(self.disk.inner.borrow().partitions.get(&partition).map(MemPartition::state))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        self.poison.check()?;
        Ok(self.disk.inner.borrow().partitions.keys().copied().collect())
    }

    async fn remove_partition(&mut self, partition: PartitionId) -> Result<()> {
        self.poison.check()?;
        if let Some(f) = &self.opts.faults
            && f.take_write_fault().is_some()
        {
            return Err(self.poison.poison(StorageError::io("write", "<memory>", injected("write"))));
        }
        self.disk.inner.borrow_mut().partitions.remove(&partition);
        self.stats.batches += 1;
        if self.opts.sync_writes {
            self.stats.write_syncs += 1;
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.poison.check()?;
        Ok(self.disk.inner.borrow().meta.get(key).cloned())
    }

    fn stats(&self) -> StoreStats {
        self.stats
    }

    fn sync_writes(&self) -> bool {
        self.opts.sync_writes
    }

    async fn close(self) -> Result<()> {
        self.poison.check()
    }
}

/// Checks a read range against a partition's state (shared by the adapters).
pub(crate) fn check_range(partition: PartitionId, lo: u64, hi: u64, state: &PartitionState) -> Result<()> {
    if lo > hi || lo < state.first_index() || hi > state.last.index + 1 {
        return Err(StorageError::OutOfRange {
            partition,
            lo,
            hi,
            first: state.first_index(),
            last: state.last.index,
        });
    }
    Ok(())
}

/// Collects entries until `max_bytes` would be exceeded, always keeping the first one.
pub(crate) fn take_budget(entries: impl Iterator<Item = LogEntry>, max_bytes: u64) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut used = 0u64;
    for e in entries {
        let size = e.approx_size() as u64;
        if !out.is_empty() && used.saturating_add(size) > max_bytes {
            break;
        }
        used = used.saturating_add(size);
        out.push(e);
    }
    out
}
