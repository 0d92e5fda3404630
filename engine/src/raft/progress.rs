//! The leader's view of each follower's log (§5.3 nextIndex / matchIndex, extended with the
//! flow-control states of etcd's raft): probe while searching for the match point, replicate
//! (pipelined, bounded window) once found, snapshot while a snapshot is being sent.

use std::collections::VecDeque;

/// How the leader currently sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the last matching index: one append in flight at a time.
    Probe,
    /// Match point known: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs entries below the compaction floor: a snapshot is being sent.
    Snapshot,
}

/// Replication progress of one follower (or learner).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (durably) on the follower.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    /// Flow-control state.
    pub state: ProgressState,
    /// In probe state: an append is outstanding, wait for its answer (or a heartbeat answer).
    pub probe_sent: bool,
    /// Last index of each append in flight (replicate state), oldest first.
    pub inflight: VecDeque<u64>,
    /// In snapshot state: index of the snapshot being sent.
    pub snapshot_index: u64,
    /// In snapshot state: byte offset of the next chunk to send.
    pub snapshot_offset: u64,
    /// Tick at which the leader last heard from the follower (CheckQuorum, the lease).
    pub last_heard: u64,
    /// The commit index the follower was last told (to know when it needs telling again).
    pub commit_sent: u64,
    /// Highest ReadIndex context the follower has acknowledged in this term.
    pub read_ack: u64,
    /// Entries from this index were asked of storage for this follower (no longer in memory).
    pub fetch_pending: Option<u64>,
    /// The follower said (in its latest append answer) that it is recovering from lost state:
    /// it cannot take leadership.
    pub recovering: bool,
    /// The follower answered an append of this leader: `recovering` is its word, not the
    /// default, and `last_heard` a real answer, not the election's benefit of the doubt.
    pub answered: bool,
    /// The follower acknowledged the leader's quiescence (`quiesce.rs`).
    pub quiet_acked: bool,
}

impl Progress {
    /// A fresh progress for a leader whose last index is `last_index`: optimistic `next`,
    /// unknown match, probing.
    #[must_use]
    pub fn new(last_index: u64, now: u64) -> Self {
        Progress {
            matched: 0,
            next: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            snapshot_index: 0,
            snapshot_offset: 0,
            // A new leader was just elected by a quorum: count everyone as heard now, so
            // CheckQuorum allows a full election timeout before judging.
            last_heard: now,
            commit_sent: 0,
            read_ack: 0,
            fetch_pending: None,
            recovering: false,
            answered: false,
            quiet_acked: false,
        }
    }

    /// Whether the leader must hold back appends to this follower now.
    #[must_use]
    pub fn is_paused(&self, window: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= window,
            ProgressState::Snapshot => true,
        }
    }

    /// Switches to probing from just after the match point.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            // Resume right after the snapshot (or the match, if it is further along).
            self.next = self.matched.max(self.snapshot_index) + 1;
        } else {
            self.next = self.matched + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_index = 0;
        self.snapshot_offset = 0;
    }

    /// The follower lost entries it had acknowledged (its disk was wiped or its log tail
    /// damaged): forget the match point and probe again from the leader's end, so it is
    /// served from what it really holds and counts only for entries it holds again.
    pub fn restart_after_loss(&mut self, last_index: u64) {
        self.matched = 0;
        self.commit_sent = 0;
        self.state = ProgressState::Probe;
        self.next = last_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_index = 0;
        self.snapshot_offset = 0;
    }

    /// Switches to pipelined replication after the match point.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Switches to sending snapshot `index` from its first byte.
    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot;
        self.snapshot_index = index;
        self.snapshot_offset = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records that an append ending at `last` was sent.
    pub fn sent_append(&mut self, last: u64, had_entries: bool) {
        match self.state {
            ProgressState::Replicate if had_entries => {
                self.next = last + 1;
                self.inflight.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            _ => {}
        }
    }

    /// The follower acknowledged entries up to `index`. Returns whether that was news.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// The follower rejected an append at `rejected` (its prev index), and the leader computed
    /// `probe_hint` as the next index to probe at. Returns false when the rejection is stale
    /// (answers an append sent before a later success or probe).
    pub fn maybe_decrease_to(&mut self, rejected: u64, probe_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.become_probe();
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(probe_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_and_frees() {
        let mut p = Progress::new(10, 0);
        p.matched = 10;
        p.become_replicate();
        p.sent_append(12, true);
        p.sent_append(14, true);
        assert!(p.is_paused(2));
        assert!(p.maybe_update(12));
        assert!(!p.is_paused(2));
        assert_eq!(p.next, 15);
    }

    #[test]
    fn probe_rejection_uses_hint_and_ignores_stale() {
        let mut p = Progress::new(10, 0);
        assert_eq!(p.next, 11);
        p.sent_append(10, true);
        assert!(p.is_paused(8));
        assert!(!p.maybe_decrease_to(7, 3), "stale: we probed at 10, not 7");
        assert!(p.maybe_decrease_to(10, 3));
        assert_eq!(p.next, 4);
        assert!(!p.is_paused(8));
    }

    #[test]
    fn replicate_rejection_falls_back_to_probe() {
        let mut p = Progress::new(10, 0);
        p.matched = 5;
        p.become_replicate();
        p.sent_append(9, true);
        assert!(!p.maybe_decrease_to(5, 0), "rejection at or below match is stale");
        assert!(p.maybe_decrease_to(9, 0));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next, 6);
    }
}

/// Every other member's progress, by node id: a vector kept sorted by id. A group has a
/// handful of members; the `BTreeMap` this replaces allocated a node with room for eleven
/// (1.5 KiB per leader for two followers — a quarter of an idle replica's memory, heaptrack).
/// The methods mirror the map's, so the code reads the same.
#[derive(Clone, Debug, Default)]
pub struct ProgressMap(Vec<(u64, Progress)>);

impl ProgressMap {
    /// An empty map with room for `n` members (a leader knows how many it tracks: a growing
    /// vector would keep room for four).
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        ProgressMap(Vec::with_capacity(n))
    }

    fn position(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(k, _)| *k)
    }

    /// The progress of member `id`.
    #[must_use]
    pub fn get(&self, id: &u64) -> Option<&Progress> {
        self.position(*id).ok().map(|i| &self.0[i].1)
    }

    /// The progress of member `id`, to change.
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut Progress> {
        self.position(*id).ok().map(|i| &mut self.0[i].1)
    }

    /// Whether member `id` is tracked.
    #[must_use]
    pub fn contains_key(&self, id: &u64) -> bool {
        self.position(*id).is_ok()
    }

    /// Sets member `id`'s progress, returning the one it replaces.
    pub fn insert(&mut self, id: u64, p: Progress) -> Option<Progress> {
        match self.position(id) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, p)),
            Err(i) => {
                self.0.insert(i, (id, p));
                None
            }
        }
    }

    /// Member `id`'s progress, made with `f` if it is not tracked yet.
    pub fn get_or_insert_with(&mut self, id: u64, f: impl FnOnce() -> Progress) -> &mut Progress {
        let i = match self.position(id) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (id, f()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Keeps the members for which `f` holds.
    pub fn retain(&mut self, mut f: impl FnMut(&u64, &mut Progress) -> bool) {
        self.0.retain_mut(|(id, p)| f(id, p));
    }

    /// Forgets every member, and the memory.
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    /// Member ids, ascending.
    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.0.iter().map(|(id, _)| id)
    }

    /// Progresses, by ascending id.
    pub fn values(&self) -> impl Iterator<Item = &Progress> {
        self.0.iter().map(|(_, p)| p)
    }

    /// Progresses to change, by ascending id.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Progress> {
        self.0.iter_mut().map(|(_, p)| p)
    }

    /// (id, progress) pairs, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Progress)> {
        self.0.iter().map(|(id, p)| (id, p))
    }

    /// Members tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no member is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
