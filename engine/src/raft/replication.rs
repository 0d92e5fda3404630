//! The leader's sending side of replication (§5.3): appends with flow control, commitment by
//! quorum of the current term (§5.4.2), and the entry it appends on election.

use phalanx_proto::{AppendEntriesRequest, EntryKind, LogEntry, raft_message::Body};

use super::group::RaftGroup;
use super::progress::ProgressState;
use super::quorum::committed_value;
use super::types::{NodeId, Role};

/// Appends' worth of entries (by count) one storage read fetches, at most, for a follower
/// behind the log cache; the read's bytes stay within one append's `max_bytes_per_append`,
/// so a fetch holds no more memory than before. Reading one append per fetch made a follower
/// far behind wait for a read — queued behind the writer's batches — per append: with small
/// appends, catching up 150 entries took ~6 ticks an entry (a simulator seed missed its
/// liveness window that way).
const FETCH_APPENDS_MAX: u64 = 8;

/// What [`RaftGroup::send_append`] does when it has no entries to send (in probe state an
/// append always goes out: it is the probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IfEmpty {
    /// Send nothing.
    Skip,
    /// Send an empty append, to be answered (it carries the commit index, or restarts a
    /// stalled replication).
    Send,
    /// Send an empty append only to carry the commit index: a follower in replicate state
    /// need not answer it (`commit_only`).
    CommitOnly,
}

impl RaftGroup {
    /// Sends `to` the next append if flow control allows; `if_empty` says what to do when
    /// there are no entries to send. Returns whether entries were sent in replicate state,
    /// so callers can loop to fill the pipelining window.
    pub(super) fn send_append(&mut self, to: NodeId, if_empty: IfEmpty) -> bool {
        let window = self.cfg.max_inflight_appends;
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused(window) {
            return false;
        }
        if pr.next <= self.log.floor_index() {
            // The entries it needs are compacted away: SnapshotRequired.
            self.start_snapshot(to);
            return false;
        }
        if pr.next < self.log.cache_start() {
            // Applied and dropped from memory: ask the shell to read them from storage.
            if pr.fetch_pending.is_none() {
                let lo = pr.next;
                let appends = FETCH_APPENDS_MAX.min(window as u64).max(1);
                let hi = (lo + appends * self.cfg.max_entries_per_append as u64).min(self.log.cache_start());
                let fetch = super::types::LogFetch { to, lo, hi, max_bytes: self.cfg.max_bytes_per_append };
                if let Some(pr) = self.progress.get_mut(&to) {
                    pr.fetch_pending = Some(lo);
                }
                self.pipe().fetches.push(fetch);
            }
            return false;
        }
        let next = pr.next;
        let prev = next - 1;
        let Some(prev_term) = self.log.term(prev) else {
            // `next` is past our log (a stale optimistic guess): probe from our end.
            let last = self.log.last_index();
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.next = last + 1;
            }
            return false;
        };
        let is_probe = pr.state == ProgressState::Probe;
        let is_replicate = pr.state == ProgressState::Replicate;
        let entries = self.log.slice(next, self.cfg.max_entries_per_append, self.cfg.max_bytes_per_append);
        if entries.is_empty() && !is_probe && if_empty == IfEmpty::Skip {
            return false;
        }
        let had_entries = !entries.is_empty();
        let last = prev + entries.len() as u64;
        let req = AppendEntriesRequest {
            term: self.term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: self.log.committed(),
            commit_only: if_empty == IfEmpty::CommitOnly && !had_entries && is_replicate,
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent_append(last, had_entries);
            pr.commit_sent = pr.commit_sent.max(req.leader_commit.min(last));
        }
        self.send(to, Body::AppendRequest(req));
        had_entries && !is_probe
    }

    /// The shell read entries a follower needs from storage (`Ready::fetches`): send them.
    /// Answers that no longer fit the follower's progress (it moved on, leadership changed,
    /// the entries do not match this log) are dropped; the next send asks again if needed.
    pub fn on_entries_fetched(&mut self, to: NodeId, lo: u64, entries: Vec<LogEntry>) {
        let window = self.cfg.max_inflight_appends;
        let Some(pr) = self.progress.get_mut(&to) else { return };
        if pr.fetch_pending != Some(lo) {
            return;
        }
        pr.fetch_pending = None;
        let fits = pr.next == lo && !pr.is_paused(window);
        let well_formed = entries.first().is_some_and(|e| e.index == lo)
            && entries.iter().zip(lo..).all(|(e, i)| e.index == i && self.log.term(i) == Some(e.term));
        let usable = fits && well_formed && self.role == Role::Leader;
        // The entry before them may have been compacted since the fetch was asked (a
        // checkpoint): then the follower needs a snapshot, which the next send decides.
        let Some(prev_term) = self.log.term(lo - 1).filter(|_| usable) else {
            if self.role == Role::Leader {
                self.send_appends(to, IfEmpty::Skip);
            }
            return;
        };
        // Several appends' worth may have come back: send them as appends of at most
        // `max_entries_per_append` entries and `max_bytes_per_append` bytes each, while the
        // pipelining window allows (the rest is read again when the window opens).
        let (max_entries, max_bytes) = (self.cfg.max_entries_per_append, self.cfg.max_bytes_per_append);
        let mut prev = (lo - 1, prev_term);
        let mut rest = entries.into_iter().peekable();
        while rest.peek().is_some() {
            if self.progress.get(&to).is_none_or(|pr| pr.is_paused(window)) {
                break;
            }
            let mut chunk = Vec::new();
            let mut bytes = 0usize;
            while let Some(e) = rest.next_if(|e| {
                chunk.is_empty() || (chunk.len() < max_entries && bytes + e.approx_size() <= max_bytes)
            }) {
                bytes += e.approx_size();
                chunk.push(e);
            }
            let Some(end) = chunk.last().map(|e| (e.index, e.term)) else { break };
            let req = AppendEntriesRequest {
                term: self.term,
                prev_log_index: prev.0,
                prev_log_term: prev.1,
                entries: chunk,
                leader_commit: self.log.committed(),
                commit_only: false,
            };
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.sent_append(end.0, true);
                pr.commit_sent = pr.commit_sent.max(req.leader_commit.min(end.0));
            }
            self.send(to, Body::AppendRequest(req));
            prev = end;
        }
        self.send_appends(to, IfEmpty::Skip);
    }

    /// Drops applied, durable entries from memory, keeping the last `log_cache_entries`
    /// below the applied index for followers that lag a little (older ones are read back from
    /// storage when a follower needs them).
    pub(super) fn trim_log_cache(&mut self) {
        let keep_from = self.log.applied().saturating_sub(self.cfg.log_cache_entries as u64);
        self.log.trim_cache(keep_from);
    }

    /// Sends `to` everything it is missing, filling its pipelining window; `if_empty` applies
    /// to the first append only.
    pub(super) fn send_appends(&mut self, to: NodeId, if_empty: IfEmpty) {
        let mut first = if_empty;
        while self.send_append(to, first) {
            first = IfEmpty::Skip;
        }
    }

    /// The commit index advanced: followers learn it from the next append each gets. A
    /// follower that gets none before the Ready is collected gets an empty one then
    /// (`flush_commit`). Deferring it to the Ready costs a follower one append per round
    /// however many acknowledgements advanced the commit, and none when new entries carry
    /// it anyway: under load, commit-only appends and their answers were half of all
    /// messages (measured: 8.6 messages per replicated entry on 3 nodes).
    pub(super) fn commit_advanced(&mut self) {
        self.commit_unsent = true;
    }

    /// Sends an empty append to every follower that could learn a higher commit index
    /// than it was last sent (up to the entries it was sent). Called when a Ready is
    /// collected.
    pub(super) fn flush_commit(&mut self) {
        if !std::mem::take(&mut self.commit_unsent) || self.role != Role::Leader {
            return;
        }
        let committed = self.log.committed();
        let targets: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.commit_sent < committed.min(p.next.saturating_sub(1)))
            .map(|(id, _)| *id)
            .collect();
        for to in targets {
            // Entries waiting for this follower carry the commit index; without any, an
            // empty append does.
            self.send_appends(to, IfEmpty::CommitOnly);
        }
    }

    /// Sends the entries appended since the last Ready to every follower (called when a
    /// Ready is collected). One append per follower carries every proposal of a loop turn:
    /// sent at each proposal, they went out one message per proposal until the pipelining
    /// window filled (1.33 messages per entry with 256 clients on one partition), every one
    /// of them stepped, persisted and answered on its own by each follower.
    pub(super) fn flush_appends(&mut self) {
        if std::mem::take(&mut self.appends_unsent) && self.role == Role::Leader {
            self.bcast_append();
        }
    }

    /// Sends every follower what it is missing, or at least the new commit index.
    pub(super) fn bcast_append(&mut self) {
        let targets: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in targets {
            self.send_appends(to, IfEmpty::Send);
        }
    }

    /// Advances the commit index to the highest index a majority of voters holds, if that
    /// entry is from the current term (§5.4.2: earlier terms' entries are committed only
    /// indirectly). Returns whether it advanced.
    pub(super) fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let me = self.cfg.id;
        let persisted = self.log.persisted();
        let quorum = committed_value(&self.conf.current().voters, |v| {
            if v == me { persisted } else { self.progress.get(&v).map_or(0, |p| p.matched) }
        })
        .min(self.log.last_index());
        if quorum <= self.log.committed() || self.log.term(quorum) != Some(self.term) {
            return false;
        }
        self.log.commit_to(quorum);
        self.on_leader_commit_advanced();
        true
    }

    /// Follow-ups of a commit advance on the leader: reads that waited for the first commit
    /// of the term, and stepping down once a configuration removing us is committed.
    fn on_leader_commit_advanced(&mut self) {
        self.reads.on_commit_in_term();
        self.release_waiting_reads();
        let removed = !self.conf.current().voters.contains(&self.cfg.id);
        if removed && self.log.committed() >= self.conf.last_change_index() {
            // §4.2.2: a leader not in the new configuration steps down once it is committed.
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// The empty entry of a new term (§8), so the leader can commit and serve reads.
    pub(super) fn append_noop(&mut self) {
        let e = LogEntry {
            term: self.term,
            index: self.log.last_index() + 1,
            kind: EntryKind::Noop as i32,
            ..Default::default()
        };
        self.append_entries(vec![e]);
    }

    /// Appends entries as leader; they are replicated when the next Ready is collected.
    pub(super) fn append_entries(&mut self, entries: Vec<LogEntry>) {
        let conf_change = entries.iter().any(|e| e.kind == EntryKind::ConfChange as i32);
        if conf_change {
            self.conf.on_append(&entries);
        }
        self.log.append(entries);
        self.appends_unsent = true;
        if conf_change {
            // A configuration takes effect when appended (§4.1): track new members, drop
            // gone ones.
            let last = self.log.last_index();
            let (me, now) = (self.cfg.id, self.now);
            let conf = self.conf.current();
            for m in conf.members().filter(|&m| m != me) {
                self.progress
                    .get_or_insert_with(m, || super::progress::Progress::new(last.saturating_sub(1), now));
            }
            self.progress.retain(|id, _| conf.contains(*id));
        }
    }
}
