//! The in-memory view of one group's replicated log.
//!
//! The log covers every entry above the compaction floor. It knows the term of each of them
//! through a run-length index (`runs`: terms change rarely, so a handful of runs describe
//! millions of entries), but holds only a suffix of the entries themselves (the cache,
//! from `cache_start`): entries that are applied, durable and no longer needed by followers
//! are dropped from memory and, when a lagging follower needs them after all, read back from
//! storage (`Ready::fetches`).
//!
//! It tracks four positions: `committed` (known committed), `persisted` (durable locally,
//! acknowledged by the shell), `unstable_from` (first entry not yet handed to storage in a
//! `Ready`), and the applied positions (`apply_handed` handed to the shell, `applied`
//! acknowledged).
//!
//! Invariants (checked by `debug_check`): floor ≤ applied ≤ apply_handed ≤ committed ≤
//! last_index; floor < cache_start ≤ min(applied, persisted) + 1; cached entries are
//! contiguous from cache_start to last_index.

use std::collections::VecDeque;

use phalanx_proto::LogEntry;

/// One group's log above the compaction floor.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    floor_index: u64,
    floor_term: u64,
    last_index: u64,
    /// (first index, term) of each run of equal terms above the floor, ascending.
    runs: Vec<(u64, u64)>,
    /// Index of `entries[0]`.
    cache_start: u64,
    entries: VecDeque<LogEntry>,
    committed: u64,
    persisted: u64,
    unstable_from: u64,
    apply_handed: u64,
    applied: u64,
    /// Payload and log type bytes of the entries above `committed` (all in the cache): what a
    /// leader's uncommitted tail holds in memory (`Config::max_uncommitted_bytes`).
    uncommitted_bytes: u64,
}

/// The bytes of an entry counted against the uncommitted tail: its payload and log type.
fn entry_bytes(e: &LogEntry) -> u64 {
    (e.payload.len() + e.log_type.len()) as u64
}

impl RaftLog {
    /// A log recovered from storage: everything given is already durable.
    #[must_use]
    pub fn restored(floor: (u64, u64), entries: Vec<LogEntry>, committed: u64, applied: u64) -> Self {
        let last = floor.0 + entries.len() as u64;
        let mut log = RaftLog {
            floor_index: floor.0,
            floor_term: floor.1,
            last_index: floor.0,
            runs: Vec::new(),
            cache_start: floor.0 + 1,
            entries: VecDeque::with_capacity(entries.len()),
            committed,
            persisted: last,
            unstable_from: last + 1,
            apply_handed: applied,
            applied,
            uncommitted_bytes: 0,
        };
        for e in entries {
            log.push(e);
        }
        log
    }

    fn push(&mut self, e: LogEntry) {
        if self.runs.last().is_none_or(|(_, t)| *t != e.term) {
            self.runs.push((e.index, e.term));
        }
        if e.index > self.committed {
            self.uncommitted_bytes += entry_bytes(&e);
        }
        self.last_index = e.index;
        self.entries.push_back(e);
    }

    /// Index of the last discarded entry (0 when nothing was compacted).
    #[must_use]
    pub fn floor_index(&self) -> u64 {
        self.floor_index
    }

    /// Index of the first entry above the floor (not necessarily held in memory).
    #[must_use]
    pub fn first_index(&self) -> u64 {
        self.floor_index + 1
    }

    /// Index of the first entry held in memory (`last_index + 1` when none is).
    #[must_use]
    pub fn cache_start(&self) -> u64 {
        self.cache_start
    }

    /// Entries held in memory.
    #[must_use]
    pub fn cached_len(&self) -> usize {
        self.entries.len()
    }

    /// Index of the last entry (the floor when the log is empty).
    #[must_use]
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Term of the last entry (the floor's term when the log is empty).
    #[must_use]
    pub fn last_term(&self) -> u64 {
        self.runs.last().map_or(self.floor_term, |(_, t)| *t)
    }

    /// Highest committed index.
    #[must_use]
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Payload and log type bytes of the uncommitted entries.
    #[must_use]
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// Highest index durable locally.
    #[must_use]
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Highest index whose application the shell acknowledged.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Highest committed index handed to the shell for applying.
    #[must_use]
    pub fn apply_handed(&self) -> u64 {
        self.apply_handed
    }

    /// Term of the entry at `index`: `None` when it is below the floor or past the end.
    #[must_use]
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor_index {
            return Some(self.floor_term);
        }
        if index < self.floor_index || index > self.last_index {
            return None;
        }
        let k = self.runs.partition_point(|(start, _)| *start <= index);
        self.runs.get(k.checked_sub(1)?).map(|(_, t)| *t)
    }

    /// The entry at `index`, if held in memory.
    #[must_use]
    pub fn entry(&self, index: u64) -> Option<&LogEntry> {
        if index < self.cache_start {
            return None;
        }
        self.entries.get((index - self.cache_start) as usize)
    }

    /// Whether the entry at `index` has term `term` (the Log Matching check).
    #[must_use]
    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up-to-date as this
    /// one (§5.4.1: compare last terms, then lengths).
    #[must_use]
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index `j <= index` whose term is `<= term`, with that term; `(j, 0)` when
    /// the answer lies below the floor. Used on both sides of the conflict hint: the follower
    /// answers with it, the leader jumps with it, so backtracking takes one round per term
    /// instead of one per entry. Runs make it O(log n + terms skipped).
    #[must_use]
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let index = index.min(self.last_index);
        if index <= self.floor_index {
            return if self.floor_term <= term && index == self.floor_index {
                (index, self.floor_term)
            } else {
                (index, 0)
            };
        }
        // The run holding `index`, then earlier runs, until one's term is small enough.
        let mut k = self.runs.partition_point(|(start, _)| *start <= index);
        let mut candidate = index;
        while k > 0 {
            let (start, t) = self.runs[k - 1];
            if t <= term {
                return (candidate, t);
            }
            candidate = start - 1;
            k -= 1;
        }
        // Every run above the floor is newer than `term`: the floor itself, if it qualifies.
        if self.floor_term <= term { (self.floor_index, self.floor_term) } else { (self.floor_index, 0) }
    }

    /// Up to `max_entries` entries from `lo` (inclusive) on, stopping once `max_bytes` is
    /// reached (at least one entry is returned when `lo` is held). Empty when `lo` is not in
    /// memory (see `cache_start`).
    #[must_use]
    pub fn slice(&self, lo: u64, max_entries: usize, max_bytes: usize) -> Vec<LogEntry> {
        let mut out = Vec::new();
        if lo < self.cache_start {
            return out;
        }
        let mut bytes = 0usize;
        let start = (lo - self.cache_start) as usize;
        for e in self.entries.iter().skip(start).take(max_entries) {
            bytes += e.approx_size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Appends entries that continue the log (leader path). Panics if they do not: the leader
    /// assigns indexes itself, so a gap is a bug.
    pub fn append(&mut self, entries: impl IntoIterator<Item = LogEntry>) {
        for e in entries {
            assert_eq!(e.index, self.last_index + 1, "leader append must be contiguous");
            assert_eq!(
                self.cache_start + self.entries.len() as u64,
                e.index,
                "the cache holds the log's tail"
            );
            self.push(e);
        }
    }

    /// The index of the first of `entries` that is not already in the log with the same term,
    /// or `None` if every one is present.
    #[must_use]
    pub fn find_conflict(&self, entries: &[LogEntry]) -> Option<u64> {
        entries.iter().find(|e| !self.match_term(e.index, e.term)).map(|e| e.index)
    }

    /// Replaces everything from `entries[0].index` on with `entries` (follower path, after the
    /// caller checked that the first one continues or overwrites the log and is above commit).
    pub fn truncate_and_append(&mut self, entries: Vec<LogEntry>) {
        let Some(first) = entries.first() else { return };
        let from = first.index;
        assert!(from > self.floor_index && from <= self.last_index + 1, "append must continue the log");
        assert!(from > self.committed, "committed entries are never overwritten");
        // Entries above commit are never trimmed (the cache starts at or below applied + 1).
        assert!(from >= self.cache_start, "truncating below the cache");
        // Every dropped entry is above commit: it leaves the uncommitted tail.
        let dropped: u64 =
            self.entries.iter().skip((from - self.cache_start) as usize).map(entry_bytes).sum();
        self.uncommitted_bytes -= dropped;
        self.entries.truncate((from - self.cache_start) as usize);
        while self.runs.last().is_some_and(|(start, _)| *start >= from) {
            self.runs.pop();
        }
        self.last_index = from - 1;
        self.persisted = self.persisted.min(from - 1);
        self.unstable_from = self.unstable_from.min(from);
        for e in entries {
            self.push(e);
        }
    }

    /// Raises the commit index to `index` (never lowers it).
    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index, "commit {index} beyond last index {}", self.last_index);
            let newly: u64 =
                (self.committed + 1..=index).filter_map(|i| self.entry(i)).map(entry_bytes).sum();
            self.uncommitted_bytes -= newly;
            self.committed = index;
        }
    }

    /// Entries not yet handed to storage; marks them handed.
    pub fn take_unstable(&mut self) -> Vec<LogEntry> {
        if self.unstable_from > self.last_index {
            return Vec::new();
        }
        let start = (self.unstable_from - self.cache_start) as usize;
        let out: Vec<LogEntry> = self.entries.iter().skip(start).cloned().collect();
        self.unstable_from = self.last_index + 1;
        out
    }

    /// The last entry handed to storage (in a `Ready` taken so far): the highest index a
    /// write queued now may record as committed, as that write or an earlier one stores it.
    #[must_use]
    pub fn handed_last(&self) -> u64 {
        self.unstable_from - 1
    }

    /// Whether entries wait to be handed to storage.
    #[must_use]
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index
    }

    /// Storage acknowledged entries up to (`index`, `term`). Writes are identified by term and
    /// index: if the entry was overwritten since, the acknowledgement says nothing about the
    /// current log and is ignored.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if index > self.persisted && self.match_term(index, term) {
            self.persisted = index;
        }
    }

    /// Up to `max` committed entries not yet handed for applying; marks them handed.
    pub fn take_committed(&mut self, max: usize) -> Vec<LogEntry> {
        let lo = self.apply_handed + 1;
        if lo > self.committed {
            return Vec::new();
        }
        let n = ((self.committed - self.apply_handed) as usize).min(max);
        let start = (lo - self.cache_start) as usize;
        let out: Vec<LogEntry> = self.entries.iter().skip(start).take(n).cloned().collect();
        self.apply_handed += out.len() as u64;
        out
    }

    /// Whether committed entries wait to be handed for applying.
    #[must_use]
    pub fn has_committed_to_apply(&self) -> bool {
        self.apply_handed < self.committed
    }

    /// The shell acknowledged applying everything up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        debug_assert!(index <= self.apply_handed);
        self.applied = self.applied.max(index);
    }

    /// Drops entries up to `index` from memory (they stay in storage and keep their terms
    /// here). Only applied, durable entries may go; a request beyond that is clamped.
    pub fn trim_cache(&mut self, index: u64) {
        let to = index.min(self.applied).min(self.persisted);
        if to < self.cache_start {
            return;
        }
        let n = ((to - self.cache_start + 1) as usize).min(self.entries.len());
        self.entries.drain(..n);
        self.cache_start += n as u64;
    }

    /// Gives back spare capacity of the entry cache and the term runs (a quiescing group).
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
        self.runs.shrink_to_fit();
    }

    /// Discards entries up to and including `index` (which must be applied).
    pub fn compact(&mut self, index: u64) {
        if index <= self.floor_index {
            return;
        }
        assert!(index <= self.applied, "compacting unapplied entries");
        let term = self.term(index).expect("index between floor and applied is known");
        self.floor_index = index;
        self.floor_term = term;
        self.drop_runs_through(index);
        if self.cache_start <= index {
            let n = ((index - self.cache_start + 1) as usize).min(self.entries.len());
            self.entries.drain(..n);
            self.cache_start = index + 1;
        }
        self.unstable_from = self.unstable_from.max(index + 1);
    }

    /// Runs now start above `index`: the run holding `index + 1` starts there.
    fn drop_runs_through(&mut self, index: u64) {
        let k = self.runs.partition_point(|(start, _)| *start <= index);
        // runs[k-1] holds `index`; its remainder (if any) starts at index + 1.
        let carried = (k > 0).then(|| self.runs[k - 1].1);
        self.runs.drain(..k);
        if let Some(t) = carried
            && index < self.last_index
            && self.runs.first().is_none_or(|(start, _)| *start > index + 1)
        {
            self.runs.insert(0, (index + 1, t));
        }
    }

    /// Installs a snapshot covering up to (`index`, `term`): keeps the suffix if the log holds
    /// that entry (§7: "if existing log entry has same index and term as snapshot's last
    /// included entry, retain log entries following it"), else discards the whole log.
    pub fn restore_snapshot(&mut self, index: u64, term: u64) {
        if self.match_term(index, term) && index >= self.floor_index {
            self.drop_runs_through(index);
            if self.cache_start <= index {
                let n = ((index - self.cache_start + 1) as usize).min(self.entries.len());
                self.entries.drain(..n);
                self.cache_start = index + 1;
            }
        } else {
            self.entries.clear();
            self.runs.clear();
            self.last_index = index;
            self.cache_start = index + 1;
            self.persisted = self.persisted.min(index);
            // Nothing after the floor is left: an entry appended at `index + 1` on is new,
            // even where a discarded one was handed to storage (else a leader elected right
            // after the install never writes its first entry and writes the next past a gap).
            self.unstable_from = index + 1;
        }
        self.floor_index = index;
        self.floor_term = term;
        self.unstable_from = self.unstable_from.max(index + 1);
        self.committed = self.committed.max(index);
        self.apply_handed = self.apply_handed.max(index);
        // Rare (a snapshot install): count the uncommitted tail again.
        let committed = self.committed;
        self.uncommitted_bytes = self.entries.iter().filter(|e| e.index > committed).map(entry_bytes).sum();
    }

    /// Checks the position invariants; used by tests and debug builds.
    pub fn debug_check(&self) {
        debug_assert!(self.applied <= self.apply_handed, "applied > apply_handed");
        debug_assert!(self.apply_handed <= self.committed, "apply_handed > committed");
        debug_assert!(self.committed <= self.last_index, "committed > last");
        debug_assert!(self.floor_index <= self.apply_handed, "floor > apply_handed");
        debug_assert!(self.cache_start > self.floor_index, "cache below the floor");
        debug_assert_eq!(
            self.cache_start + self.entries.len() as u64,
            self.last_index + 1,
            "cache is the tail"
        );
        debug_assert!(
            self.runs.first().is_none_or(|(s, _)| *s == self.floor_index + 1),
            "runs start above the floor"
        );
        debug_assert_eq!(
            self.uncommitted_bytes,
            self.entries.iter().filter(|e| e.index > self.committed).map(entry_bytes).sum::<u64>(),
            "uncommitted bytes"
        );
    }

    /// All entries held in memory, oldest first (for tests and checkers).
    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> LogEntry {
        LogEntry { index, term, ..Default::default() }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| e(i as u64 + 1, *t)).collect();
        RaftLog::restored((0, 0), entries, 0, 0)
    }

    #[test]
    fn terms_and_bounds() {
        let l = log_with(&[1, 1, 2]);
        assert_eq!(l.last_index(), 3);
        assert_eq!(l.last_term(), 2);
        assert_eq!(l.term(0), Some(0));
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(4), None);
    }

    #[test]
    fn up_to_date_compares_term_then_length() {
        let l = log_with(&[1, 2]);
        assert!(l.is_up_to_date(1, 3));
        assert!(l.is_up_to_date(2, 2));
        assert!(!l.is_up_to_date(1, 2));
        assert!(!l.is_up_to_date(5, 1));
    }

    #[test]
    fn conflict_by_term_skips_whole_terms() {
        let l = log_with(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        assert_eq!(l.find_conflict_by_term(10, 3), (3, 1));
        assert_eq!(l.find_conflict_by_term(10, 5), (7, 5));
        assert_eq!(l.find_conflict_by_term(20, 6), (10, 6));
        assert_eq!(l.find_conflict_by_term(10, 0), (0, 0));
    }

    /// Found by the simulator (seed 325 with the `answer-before-commit` mutant, whose clients
    /// took another path): a follower held entries past a snapshot's index, already handed to
    /// storage, from an older term; the snapshot's term differed, so the whole log went; it
    /// was elected at once, and its no-op at the index of a discarded entry was never written.
    #[test]
    fn a_snapshot_that_discards_the_log_leaves_every_later_entry_to_write() {
        // Entries 1..=4 of term 5, stored.
        let mut l = log_with(&[5, 5, 5, 5]);
        assert!(!l.has_unstable());
        l.restore_snapshot(3, 6);
        assert_eq!((l.last_index(), l.persisted()), (3, 3));
        l.append([e(4, 8), e(5, 8)]);
        let unstable: Vec<(u64, u64)> = l.take_unstable().iter().map(|x| (x.index, x.term)).collect();
        assert_eq!(unstable, vec![(4, 8), (5, 8)]);
    }

    #[test]
    fn truncate_and_append_adjusts_positions() {
        let mut l = log_with(&[1, 1, 1]);
        l.stable_to(3, 1);
        assert_eq!(l.persisted(), 3);
        l.truncate_and_append(vec![e(2, 2), e(3, 2)]);
        assert_eq!(l.persisted(), 1);
        assert_eq!(l.take_unstable().len(), 2);
        assert_eq!(l.term(3), Some(2));
        // A stale acknowledgement for the overwritten entry must not count.
        l.stable_to(3, 1);
        assert_eq!(l.persisted(), 1);
        l.stable_to(3, 2);
        assert_eq!(l.persisted(), 3);
    }

    #[test]
    fn compaction_and_snapshot_restore() {
        let mut l = log_with(&[1, 1, 2, 2]);
        l.commit_to(3);
        let _ = l.take_committed(10);
        l.applied_to(3);
        l.compact(2);
        assert_eq!(l.first_index(), 3);
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(1), None);
        // Snapshot matching an entry keeps the suffix.
        l.restore_snapshot(3, 2);
        assert_eq!(l.last_index(), 4);
        // Snapshot not matching discards everything.
        l.restore_snapshot(9, 7);
        assert_eq!(l.last_index(), 9);
        assert_eq!(l.last_term(), 7);
        assert_eq!(l.committed(), 9);
    }

    #[test]
    fn slice_respects_byte_limit_but_returns_one() {
        let mut l = log_with(&[]);
        for i in 1..=5 {
            l.append([LogEntry { index: i, term: 1, payload: vec![0u8; 100].into(), ..Default::default() }]);
        }
        assert_eq!(l.slice(1, 10, 1).len(), 1);
        assert_eq!(l.slice(1, 10, 300).len(), 2);
        assert_eq!(l.slice(1, 3, usize::MAX).len(), 3);
        assert!(l.slice(6, 10, usize::MAX).is_empty());
    }

    #[test]
    fn trimmed_entries_keep_their_terms() {
        let mut l = log_with(&[1, 1, 2, 2, 2, 3]);
        l.commit_to(5);
        let _ = l.take_committed(10);
        l.applied_to(5);
        l.trim_cache(4);
        assert_eq!(l.cache_start(), 5);
        assert_eq!(l.cached_len(), 2);
        assert!(l.entry(4).is_none());
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(4), Some(2));
        assert!(l.match_term(3, 2));
        assert!(l.slice(3, 10, usize::MAX).is_empty(), "trimmed entries come from storage");
        assert_eq!(l.slice(5, 10, usize::MAX).len(), 2);
        // Never beyond what is applied and durable.
        l.trim_cache(100);
        assert_eq!(l.cache_start(), 6);
        assert_eq!(l.find_conflict_by_term(6, 2), (5, 2));
        assert_eq!(l.find_conflict_by_term(6, 1), (2, 1));
        // Compaction inside a run keeps the rest of the run.
        l.compact(4);
        assert_eq!(l.term(5), Some(2));
        assert_eq!(l.term(4), Some(2));
        assert_eq!(l.term(3), None);
        l.debug_check();
    }

    #[test]
    fn truncation_rewrites_runs() {
        let mut l = log_with(&[1, 1, 2, 2]);
        l.truncate_and_append(vec![e(3, 3), e(4, 3), e(5, 3)]);
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(3), Some(3));
        assert_eq!(l.last_term(), 3);
        assert_eq!(l.last_index(), 5);
        l.debug_check();
    }
}
