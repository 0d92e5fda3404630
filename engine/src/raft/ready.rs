//! The output side of the core: numbered `Ready`s and their acknowledgement.
//!
//! A `Ready` says what the shell must do:
//! 1. send `messages` at once, even before persisting (the leader's appends, heartbeats);
//! 2. apply: restore the state machine from `snapshot` if any, apply `deliveries`, and use
//!    `committed_entries` (every committed entry) to complete callers' proposals. Committed
//!    entries are durable on a quorum, so this need not wait for step 3;
//! 3. persist, in order with earlier Readies: `snapshot` (install it), then `entries`
//!    (replacing any stored entries at or after the first one's index), then `hard_state`,
//!    then `compact_to`;
//! 4. once that is durable, send `persisted_messages` (vote grants, append acknowledgements —
//!    §5: a node answers only from durable state) and call `advance(number)`.
//!
//! Acknowledging Ready *n* acknowledges every Ready before it, so a shell may pipeline
//! several and acknowledge them in order as their writes complete.

use std::collections::VecDeque;

use phalanx_proto::{EntryKind, HardState, LogEntry, RaftMessage};

use super::group::RaftGroup;
use super::types::{LogFetch, ReadState, Role, Snapshot, SoftState};

/// Everything the shell must act on after feeding the core some input.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Sequence number; pass it to `advance` once the Ready is handled.
    pub number: u64,
    /// Role, leader or term changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// Term or vote changed, or the commit index changed and this Ready persists something
    /// else too: persist atomically with `entries`. The commit index is volatile in Raft (a
    /// restarted node relearns it from the leader), so a change of it alone is not written
    /// on its own — it rides with the group's next Ready that writes (etcd's `MustSync`):
    /// a synchronous write per commit was half of a single client's writes.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: persist it (discarding stored entries up to its
    /// index, or all of them if the stored log does not hold its last entry) and restore the
    /// state machine from it before applying anything else.
    pub snapshot: Option<Snapshot>,
    /// Entries to persist. Stored entries at or after `entries[0].index` are replaced.
    pub entries: Vec<LogEntry>,
    /// Discard stored entries up to and including this index (after the snapshot that covers
    /// them is durable).
    pub compact_to: Option<u64>,
    /// Messages that may be sent immediately.
    pub messages: Vec<RaftMessage>,
    /// Messages that may be sent only after this Ready's state is durable.
    pub persisted_messages: Vec<RaftMessage>,
    /// Newly committed entries, in log order (every kind, for completing proposals).
    pub committed_entries: Vec<LogEntry>,
    /// What the state machine must see, in order: committed user entries, two-step entries
    /// released by their commit marker, checkpoints. No-ops, membership changes and markers
    /// are consumed by the core.
    pub deliveries: Vec<LogEntry>,
    /// Answers to `read_index` calls.
    pub read_states: Vec<ReadState>,
    /// Entries to read from storage for followers (answer with `on_entries_fetched`).
    pub fetches: Vec<LogFetch>,
}

impl Ready {
    /// Whether there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.compact_to.is_none()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.fetches.is_empty()
    }
}

/// What an unacknowledged Ready asked the shell to persist.
#[derive(Clone, Debug)]
struct Record {
    number: u64,
    last_entry: Option<(u64, u64)>,
    snapshot: Option<(u64, u64)>,
    hard_state: Option<HardState>,
    applied_to: u64,
}

/// Numbering of Readies and what the last ones carried.
#[derive(Clone, Debug)]
pub struct ReadyTracker {
    next_number: u64,
    last_hard_state: HardState,
    last_soft_state: Option<SoftState>,
}

impl ReadyTracker {
    pub(super) fn new(persisted: HardState) -> Self {
        ReadyTracker { next_number: 1, last_hard_state: persisted, last_soft_state: None }
    }
}

/// What a working group holds for the shell: the next Ready's messages, storage reads,
/// prefix compaction and snapshot to install, and the Readies handed out and not
/// acknowledged yet. Boxed and made by the first use; a quiesced group with none of it drops
/// it (`shed_memory`): its empty queues were 120 bytes of every idle replica.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    pub(super) msgs: Vec<RaftMessage>,
    /// Messages that may leave only once this Ready is durable.
    pub(super) msgs_after_persist: Vec<RaftMessage>,
    /// Storage reads the shell must do for followers (entries no longer in memory).
    pub(super) fetches: Vec<LogFetch>,
    /// Prefix compaction to hand to storage in the next Ready.
    pub(super) compact_to: Option<u64>,
    /// Follower: a snapshot received from the leader, to hand to the shell in the next Ready.
    pub(super) snapshot_to_install: Option<Box<Snapshot>>,
    outstanding: VecDeque<Record>,
}

impl Pipeline {
    /// The oldest unacknowledged Ready's record if `number` acknowledges it.
    fn pop_acknowledged(&mut self, number: u64) -> Option<Record> {
        if self.outstanding.front()?.number <= number { self.outstanding.pop_front() } else { None }
    }

    /// Whether the next Ready has something of this.
    fn has_output(&self) -> bool {
        self.snapshot_to_install.is_some()
            || self.compact_to.is_some()
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || !self.fetches.is_empty()
    }
}

impl RaftGroup {
    /// Whether `ready` would return something.
    #[must_use]
    pub fn has_ready(&self) -> bool {
        Some(self.soft_state()) != self.ready.last_soft_state
            || self.hard_state_must_persist()
            || self.pipe.as_deref().is_some_and(Pipeline::has_output)
            || self.log.has_unstable()
            || self.log.has_committed_to_apply()
            || self.reads.has_answers()
            || self.reads.needs_broadcast()
            || self.commit_unsent
            || self.appends_unsent
    }

    /// The Ready pipeline, made if the group had none.
    pub(super) fn pipe(&mut self) -> &mut Pipeline {
        self.pipe.get_or_insert_with(Box::default)
    }

    /// Whether a Ready was handed out and not acknowledged yet.
    pub(super) fn has_outstanding_ready(&self) -> bool {
        self.pipe.as_ref().is_some_and(|p| !p.outstanding.is_empty())
    }

    /// Drops the pipeline if it holds nothing (an idle group).
    pub(super) fn drop_empty_pipeline(&mut self) {
        if self.pipe.as_ref().is_some_and(|p| !p.has_output() && p.outstanding.is_empty()) {
            self.pipe = None;
        }
    }

    /// Whether term, vote or recovery changed since the last hard state a Ready carried
    /// (§5.1: they are durable before the node acts on them; the end of a recovery before
    /// the node votes again).
    fn hard_state_must_persist(&self) -> bool {
        let last = self.ready.last_hard_state;
        self.term != last.term || self.vote != last.vote || self.recovery.is_some() != last.recovering
    }

    /// The hard state, if it differs from the last one a Ready carried (only in the commit
    /// index, unless a Ready is being collected): what a clean stop writes so that a restart
    /// knows every commit index this node knew. Its commit index covers only what storage
    /// was handed: a clean stop comes after the turn's inputs but before their Ready, so
    /// entries, or a snapshot, they brought and the commit index may cover are not stored,
    /// and a commit index past the stored log refuses the restart ("commit index is past the
    /// last entry").
    #[must_use]
    pub fn unsaved_hard_state(&self) -> Option<HardState> {
        let mut hs = self.hard_state();
        hs.commit = if self.pipe.as_ref().is_some_and(|p| p.snapshot_to_install.is_some()) {
            // The install replaced the log in memory only: the stored log is the one before
            // it, whose commit index is the last one stored.
            self.ready.last_hard_state.commit
        } else {
            hs.commit.min(self.log.handed_last())
        };
        (hs != self.ready.last_hard_state).then_some(hs)
    }

    /// Collects everything to persist, send and apply since the last Ready, or `None`.
    pub fn ready(&mut self) -> Option<Ready> {
        self.flush_read_broadcast();
        self.flush_appends();
        self.flush_commit();
        if !self.has_ready() {
            return None;
        }
        let soft = self.soft_state();
        let soft_state = (Some(soft) != self.ready.last_soft_state).then_some(soft);
        self.ready.last_soft_state = Some(soft);
        let pipe = self.pipe();
        let snapshot = pipe.snapshot_to_install.take();
        let compact_to = pipe.compact_to.take();
        let messages = std::mem::take(&mut pipe.msgs);
        let persisted_messages = std::mem::take(&mut pipe.msgs_after_persist);
        let fetches = std::mem::take(&mut pipe.fetches);
        let entries = self.log.take_unstable();
        let committed_entries = self.log.take_committed(self.cfg.max_apply_entries_per_ready);
        let mut deliveries = Vec::with_capacity(committed_entries.len());
        for e in &committed_entries {
            if e.kind == EntryKind::Checkpoint as i32 {
                self.last_checkpoint = e.index;
            }
            self.two_step.on_committed(e, &mut deliveries);
        }
        // Every entry up to the commit index is in the log and so is persisted with this
        // Ready or an earlier one: recording the commit index now never points past the
        // durable log after a crash.
        let writes = !entries.is_empty() || snapshot.is_some() || compact_to.is_some();
        let hard_state =
            if self.hard_state_must_persist() || writes { self.unsaved_hard_state() } else { None };
        if let Some(hs) = hard_state {
            self.ready.last_hard_state = hs;
        }
        let number = self.ready.next_number;
        self.ready.next_number += 1;
        let record = Record {
            number,
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot: snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
            hard_state,
            applied_to: self.log.apply_handed(),
        };
        self.pipe().outstanding.push_back(record);
        Some(Ready {
            number,
            soft_state,
            hard_state,
            snapshot: snapshot.map(|s| *s),
            entries,
            compact_to,
            messages,
            persisted_messages,
            committed_entries,
            deliveries,
            read_states: self.reads.take_answers(),
            fetches,
        })
    }

    /// The shell persisted, sent and applied everything in Readies up to `number`.
    pub fn advance(&mut self, number: u64) {
        let mut self_vote = false;
        while let Some(r) = self.pipe.as_mut().and_then(|p| p.pop_acknowledged(number)) {
            if let Some((i, t)) = r.snapshot {
                self.log.stable_to(i, t);
            }
            if let Some((i, t)) = r.last_entry {
                self.log.stable_to(i, t);
            }
            self.log.applied_to(r.applied_to);
            if let Some(hs) = r.hard_state {
                self_vote |= hs.term == self.term && hs.vote == self.cfg.id;
            }
        }
        if self_vote {
            self.on_self_vote_persisted();
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.commit_advanced();
        }
        if self.is_quiesced() {
            // Idle, it needs none of it.
            self.drop_empty_pipeline();
        }
        self.trim_log_cache();
        self.log.debug_check();
    }
}
