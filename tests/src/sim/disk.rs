//! The simulated disk: what each node has made durable, per group — the log store's records
//! and the snapshot files. A write becomes durable only when its simulated sync completes; a
//! crash loses every write still in flight.

use std::collections::BTreeMap;

use phalanx::raft::{GroupId, Snapshot};
use phalanx::shard::write::WriteStep;
use phalanx_proto::{HardState, LogEntry};
use phalanx_storage::{PartitionWrite, RecoveredPartition};

/// Durable state of one group on one node.
#[derive(Clone, Debug, Default)]
pub struct GroupDisk {
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// Compaction floor (index, term).
    pub floor: (u64, u64),
    /// Entries after the floor.
    pub entries: Vec<LogEntry>,
    /// The snapshot file (meta + state machine image).
    pub snapshot: Option<Snapshot>,
    /// Whether the log store holds any record of the group.
    pub written: bool,
}

impl GroupDisk {
    fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor.0 {
            return Some(self.floor.1);
        }
        if index < self.floor.0 {
            return None;
        }
        self.entries.get((index - self.floor.0 - 1) as usize).map(|e| e.term)
    }

    /// Whether the stored log holds the entry at (`index`, `term`) (the floor counts).
    #[must_use]
    pub fn holds(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Stores one group's part of a log-store write, in the store's order: the floor of a
    /// snapshot install, entries, hard state, compaction. Entries that do not continue the
    /// stored log are refused, as the real store refuses them (`storage/src/plan.rs`): the
    /// whole part is dropped and the reason returned.
    pub fn store(&mut self, w: &PartitionWrite) -> Result<(), String> {
        let mut floor = self.floor;
        let mut held = self.entries.len() as u64;
        if let Some(at) = w.snapshot {
            if !(self.term(at.index) == Some(at.term) && at.index >= floor.0) {
                held = 0;
            } else {
                held -= (at.index - floor.0).min(held);
            }
            floor = (at.index, at.term);
        }
        if let Some(first) = w.entries.first()
            && (first.index <= floor.0 || first.index > floor.0 + held + 1)
        {
            return Err(format!(
                "partition {}: entries start at {} but must start in {}..={}",
                w.partition,
                first.index,
                floor.0 + 1,
                floor.0 + held + 1
            ));
        }
        self.written |= w.snapshot.is_some() || !w.entries.is_empty() || w.hard_state.is_some();
        if let Some(at) = w.snapshot {
            self.install_floor(at.index, at.term);
        }
        self.append(&w.entries);
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        if let Some(c) = w.compact_to {
            self.compact(c);
        }
        Ok(())
    }

    /// Moves the floor to a snapshot's last entry (keeping the suffix if the log holds it).
    fn install_floor(&mut self, i: u64, t: u64) {
        if self.term(i) == Some(t) && i >= self.floor.0 {
            let n = (i - self.floor.0) as usize;
            self.entries.drain(..n.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.floor = (i, t);
    }

    /// Stores entries (checked by `store` to continue the log), replacing any at or after the
    /// first one's index.
    fn append(&mut self, entries: &[LogEntry]) {
        let Some(first) = entries.first() else { return };
        let keep = (first.index - self.floor.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Discards entries up to `index`.
    fn compact(&mut self, index: u64) {
        if index <= self.floor.0 {
            return;
        }
        let term = self.term(index).expect("compacting a held entry");
        let n = (index - self.floor.0) as usize;
        self.entries.drain(..n);
        self.floor = (index, term);
    }

    /// Stored entries `lo..hi` (at least one, at most `max_bytes` beyond the first).
    #[must_use]
    pub fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> Vec<LogEntry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().filter(|e| e.index >= lo && e.index < hi) {
            bytes += e.approx_size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Loses the last `k` stored entries (a damaged last WAL batch, dropped at recovery) and,
    /// with them, the vote written beside them. The commit index is clamped to what remains.
    pub fn cut_tail(&mut self, k: usize) {
        let keep = self.entries.len().saturating_sub(k);
        self.entries.truncate(keep);
        let last = self.floor.0 + self.entries.len() as u64;
        self.hard_state.commit = self.hard_state.commit.min(last);
        self.hard_state.vote = 0;
    }

    /// What the log store loads for the group at a start (`None`: it holds nothing of it).
    #[must_use]
    pub fn recovered(&self) -> Option<RecoveredPartition> {
        self.written.then(|| RecoveredPartition {
            hard_state: self.hard_state,
            floor: self.floor,
            entries: self.entries.clone(),
        })
    }
}

/// One node's disk.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Per group.
    pub groups: BTreeMap<GroupId, GroupDisk>,
    /// Writes refused since the simulator last looked (a core broke the store's contract).
    pub refused: Vec<String>,
}

impl Disk {
    /// Carries out one durable step of a write.
    pub fn apply(&mut self, step: WriteStep) {
        match step {
            WriteStep::Snapshots(files) => {
                for (p, s) in files {
                    self.groups.entry(p).or_default().snapshot = Some(s);
                }
            }
            WriteStep::Batch(batch) => {
                for w in &batch.partitions {
                    if let Err(e) = self.groups.entry(w.partition).or_default().store(w) {
                        self.refused.push(e);
                    }
                }
            }
        }
    }
}
