//! The simulated disk: what each node has made durable, per group. A write becomes durable
//! only when its simulated fsync completes; a crash loses every write still in flight.

use std::collections::BTreeMap;

use phalanx::raft::{GroupId, Membership, RestoreState, Snapshot};
use phalanx_proto::{HardState, LogEntry};

/// Durable state of one group on one node.
#[derive(Clone, Debug, Default)]
pub struct GroupDisk {
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// Compaction floor (index, term).
    pub floor: (u64, u64),
    /// Entries after the floor.
    pub entries: Vec<LogEntry>,
    /// Latest snapshot (meta + state machine image).
    pub snapshot: Option<Snapshot>,
    /// Whether anything was ever stored for the group (a store holds a record of it).
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
    /// received snapshot, entries, hard state, compaction.
    pub fn store(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[LogEntry],
        hard_state: Option<HardState>,
        compact_to: Option<u64>,
    ) {
        self.written |= snapshot.is_some() || !entries.is_empty() || hard_state.is_some();
        if let Some(s) = snapshot {
            self.install_snapshot(s);
        }
        self.append(entries);
        if let Some(hs) = hard_state {
            self.hard_state = hs;
        }
        if let Some(c) = compact_to {
            self.compact(c);
        }
    }

    /// Installs a received snapshot (keeping the suffix if the log holds its last entry).
    pub fn install_snapshot(&mut self, s: &Snapshot) {
        let (i, t) = (s.meta.index, s.meta.term);
        if self.term(i) == Some(t) && i >= self.floor.0 {
            let n = (i - self.floor.0) as usize;
            self.entries.drain(..n.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.floor = (i, t);
        self.snapshot = Some(s.clone());
    }

    /// Stores entries, replacing any at or after the first one's index.
    pub fn append(&mut self, entries: &[LogEntry]) {
        let Some(first) = entries.first() else { return };
        assert!(first.index > self.floor.0, "write below the floor");
        let keep = (first.index - self.floor.0 - 1) as usize;
        assert!(keep <= self.entries.len(), "gap in the stored log");
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Discards entries up to `index`.
    pub fn compact(&mut self, index: u64) {
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

    /// Whether the log store holds nothing at all (a new node, or a wiped disk).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.written
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

    /// What a restarting node recovers.
    #[must_use]
    pub fn restore_state(&self, initial: &Membership) -> RestoreState {
        RestoreState {
            hard_state: self.hard_state,
            floor: self.floor,
            entries: self.entries.clone(),
            snapshot: self.snapshot.clone(),
            initial_membership: initial.clone(),
        }
    }
}

/// One node's disk.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Per group.
    pub groups: BTreeMap<GroupId, GroupDisk>,
}
