//! The safety checker: Raft's properties (Figure 3 of the paper) plus the client-visible
//! guarantees, checked incrementally as the simulation produces events.
//!
//! It is deliberately independent of the engine's internals: it sees only what a shell sees
//! (Readies, the group's public accessors) and keeps its own registries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};

use phalanx::hlc::{Ticket, ticket_of};
use phalanx::raft::{GroupId, NodeId, RaftLog};
use phalanx_proto::{EntryKind, LogEntry};

/// A broken property, with enough context to debug it from the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two leaders in one term of one group (§5.2 Election Safety).
    ElectionSafety {
        /// Group.
        group: GroupId,
        /// Term.
        term: u64,
        /// The leaders.
        leaders: (NodeId, NodeId),
    },
    /// Two logs hold an entry with the same index and term but different contents or
    /// different predecessors (§5.3 Log Matching).
    LogMatching {
        /// Group.
        group: GroupId,
        /// Index.
        index: u64,
        /// Term.
        term: u64,
        /// Node whose entry disagreed with the first one seen.
        node: NodeId,
    },
    /// A new leader lacks an entry committed in an earlier term (§5.4 Leader Completeness).
    LeaderCompleteness {
        /// Group.
        group: GroupId,
        /// The leader's term.
        term: u64,
        /// The leader.
        node: NodeId,
        /// The committed index it lacks (or holds with another term).
        index: u64,
    },
    /// Two nodes applied different entries at one index, or delivered different entries at
    /// one position of the state machine's input (§5.4.3 State Machine Safety).
    StateMachineSafety {
        /// Group.
        group: GroupId,
        /// Node.
        node: NodeId,
        /// What disagreed.
        detail: String,
    },
    /// A commit or applied index went backwards within one incarnation of a node.
    NonMonotonic {
        /// Group.
        group: GroupId,
        /// Node.
        node: NodeId,
        /// What went back.
        detail: String,
    },
    /// An acknowledged proposal is missing from the state machine input.
    LostAck {
        /// Group.
        group: GroupId,
        /// The proposal's ticket.
        ticket: String,
    },
    /// A proposal its client was told was never appended (refused as `NodeIsNotLeader` or
    /// `Busy`: retry elsewhere or later, nothing happened) is in a log: a retry would apply it
    /// twice.
    RefusedAppended {
        /// Group.
        group: GroupId,
        /// The proposal's ticket.
        ticket: String,
    },
    /// One entry delivered twice to one state machine.
    DuplicateApply {
        /// Group.
        group: GroupId,
        /// Node.
        node: NodeId,
        /// The entry's id.
        id: u64,
    },
    /// An entry given to a state machine as a replay (`restore_entry`) past the commit index
    /// the node recovered at its restart: only what was committed before the crash replays.
    ReplayPastCommit {
        /// Group.
        group: GroupId,
        /// Node.
        node: NodeId,
        /// The entry's index.
        index: u64,
        /// The commit index recovered at the restart.
        recovered_commit: u64,
    },
    /// A two-step entry delivered without a committed commit marker, or after a rollback.
    TwoStep {
        /// Group.
        group: GroupId,
        /// Node.
        node: NodeId,
        /// The ticket.
        ticket: String,
    },
    /// A linearizable read returned a point below a write acknowledged before it started.
    StaleRead {
        /// Group.
        group: GroupId,
        /// Index returned.
        read_index: u64,
        /// Index of an earlier acknowledged write.
        acked_before: u64,
    },
    /// Two replicas of the system partition hold different rosters after applying the same
    /// prefix of its log: a roster change was not decided deterministically (or not
    /// replayed, or not restored) on one of them.
    RosterDivergence {
        /// Node.
        node: NodeId,
        /// The system partition's applied index.
        applied: u64,
        /// The two rosters.
        detail: String,
    },
    /// A leader's log holds more than one uncommitted configuration change: two
    /// configurations whose majorities need not overlap could be in use at once.
    ConcurrentConfChanges {
        /// Group.
        group: GroupId,
        /// The leader.
        node: NodeId,
        /// Uncommitted changes in its log.
        pending: usize,
    },
    /// A group's committed configuration has a majority of voters the roster no longer has:
    /// the roster let members go faster than the group could drop them.
    VotersOutsideRoster {
        /// Group.
        group: GroupId,
        /// Its voters.
        voters: Vec<NodeId>,
        /// The roster's version.
        roster_version: u64,
    },
    /// A node sent more messages in one tick than any run needs: traffic that feeds on itself
    /// (each answer causing more than one message) grows without bound.
    MessageStorm {
        /// Node.
        node: NodeId,
        /// Messages it sent in the tick.
        messages: usize,
    },
    /// A node's core asked its store for a write the store refuses (entries that do not
    /// continue the stored log): the real store would stop the partition.
    StoreRefused {
        /// Node.
        node: NodeId,
        /// What the store said.
        detail: String,
    },
    /// A node could not restart from what its disk holds (the stored state breaks an
    /// invariant the core checks at restore, e.g. a commit index past the stored log).
    Unrecoverable {
        /// Node.
        node: NodeId,
        /// What the engine refused (naming the partition).
        detail: String,
    },
    /// After faults healed, a group did not elect a leader and commit in time.
    Liveness {
        /// Group.
        group: GroupId,
        /// What did not happen.
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A stable id of an entry's content (the checker never trusts two entries to be equal
/// because they have the same index).
#[must_use]
pub fn entry_id(e: &LogEntry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.kind.hash(&mut h);
    e.log_type.hash(&mut h);
    e.payload.hash(&mut h);
    ticket_of(e).hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct GroupRegistry {
    leaders: HashMap<u64, NodeId>,
    /// (index, term) → (content id, previous entry's term)
    entries: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// index → (term, content id) of committed entries
    committed: BTreeMap<u64, (u64, u64)>,
    /// The state machine input, in order: content ids.
    deliveries: Vec<u64>,
    /// First resolving marker seen committed per ticket: true = commit, false = rollback.
    resolution: HashMap<Ticket, bool>,
    /// Content ids of acknowledged entries, with their ticket.
    acked: Vec<(u64, Ticket)>,
    /// Content ids of entries whose proposal was refused as never appended, with its ticket.
    refused: Vec<(u64, Ticket)>,
    /// Highest index of an acknowledged write.
    max_acked_index: u64,
}

/// Per (node, group, incarnation) positions for the monotonicity check.
#[derive(Default, Clone, Copy)]
struct Positions {
    incarnation: u64,
    commit: u64,
    applied: u64,
}

/// The checker.
#[derive(Default)]
pub struct Checker {
    groups: BTreeMap<GroupId, GroupRegistry>,
    positions: HashMap<(NodeId, GroupId), Positions>,
    /// The roster seen at each applied index of the system partition (one per index the
    /// replicas were observed at: bounded by the system partition's log).
    rosters: BTreeMap<u64, phalanx::roster::Roster>,
    /// The roster of the highest version seen.
    latest_roster: Option<phalanx::roster::Roster>,
    /// Groups or nodes already reported for a violation reported once per id and kind (0
    /// concurrent changes, 1 voters outside the roster, 2 message storm, 3 store refused).
    flagged: BTreeSet<(GroupId, u8)>,
    /// Violations found so far.
    pub violations: Vec<Violation>,
}

impl Checker {
    /// A checker with empty registries.
    #[must_use]
    pub fn new() -> Self {
        Checker::default()
    }

    fn g(&mut self, group: GroupId) -> &mut GroupRegistry {
        self.groups.entry(group).or_default()
    }

    /// `node` is leader of `group` in `term`, with `log`. Checks Election Safety and Leader
    /// Completeness.
    pub fn on_leader(&mut self, group: GroupId, term: u64, node: NodeId, log: &RaftLog) {
        let reg = self.g(group);
        match reg.leaders.get(&term) {
            Some(&other) if other != node => {
                self.violations.push(Violation::ElectionSafety { group, term, leaders: (other, node) });
                return;
            }
            Some(_) => return,
            None => {
                reg.leaders.insert(term, node);
            }
        }
        let mut missing = None;
        for (&index, &(t, _)) in reg.committed.range(log.first_index()..) {
            if t < term && log.term(index) != Some(t) {
                missing = Some(index);
                break;
            }
        }
        if let Some(index) = missing {
            self.violations.push(Violation::LeaderCompleteness { group, term, node, index });
        }
    }

    /// `node` is about to persist `e`, whose predecessor in its log has term `prev_term`
    /// (`None` when below its floor). Checks Log Matching.
    pub fn on_append(&mut self, group: GroupId, node: NodeId, e: &LogEntry, prev_term: Option<u64>) {
        let id = entry_id(e);
        let reg = self.g(group);
        match reg.entries.get_mut(&(e.index, e.term)) {
            None => {
                reg.entries.insert((e.index, e.term), (id, prev_term));
            }
            Some((seen_id, seen_prev)) => {
                let prev_conflict = matches!((*seen_prev, prev_term), (Some(a), Some(b)) if a != b);
                if *seen_id != id || prev_conflict {
                    self.violations.push(Violation::LogMatching {
                        group,
                        index: e.index,
                        term: e.term,
                        node,
                    });
                } else if seen_prev.is_none() {
                    *seen_prev = prev_term;
                }
            }
        }
    }

    /// `node` applies committed entry `e`. Checks State Machine Safety at the log level and
    /// records markers.
    pub fn on_committed(&mut self, group: GroupId, node: NodeId, e: &LogEntry) {
        let id = entry_id(e);
        let reg = self.g(group);
        match reg.committed.get(&e.index) {
            Some(&(t, seen)) if t != e.term || seen != id => {
                let detail = format!("index {} applied with term {} but term {t} elsewhere", e.index, e.term);
                self.violations.push(Violation::StateMachineSafety { group, node, detail });
                return;
            }
            Some(_) => {}
            None => {
                reg.committed.insert(e.index, (e.term, id));
            }
        }
        let kind = EntryKind::try_from(e.kind).ok();
        if matches!(kind, Some(EntryKind::CommitMarker | EntryKind::RollbackMarker)) {
            reg.resolution.entry(ticket_of(e)).or_insert(kind == Some(EntryKind::CommitMarker));
        }
    }

    /// `node`'s state machine receives `e` as its `position`-th input (0-based). Checks that
    /// every state machine sees the same input sequence and two-step rules.
    pub fn on_delivery(&mut self, group: GroupId, node: NodeId, position: usize, e: &LogEntry) {
        let id = entry_id(e);
        let reg = self.g(group);
        if position < reg.deliveries.len() {
            if reg.deliveries[position] != id {
                let detail = format!("delivery #{position} differs (entry index {})", e.index);
                self.violations.push(Violation::StateMachineSafety { group, node, detail });
                return;
            }
        } else if position == reg.deliveries.len() {
            reg.deliveries.push(id);
        } else {
            let detail = format!("delivery #{position} skips ahead of {}", reg.deliveries.len());
            self.violations.push(Violation::StateMachineSafety { group, node, detail });
            return;
        }
        if e.kind == EntryKind::Proposed as i32 {
            let t = ticket_of(e);
            if reg.resolution.get(&t) != Some(&true) {
                self.violations.push(Violation::TwoStep { group, node, ticket: t.to_string() });
            }
        }
    }

    /// A state machine saw the same entry twice in one incarnation.
    pub fn on_duplicate(&mut self, group: GroupId, node: NodeId, id: u64) {
        self.violations.push(Violation::DuplicateApply { group, node, id });
    }

    /// A state machine was given the entry at `index` as a replay; the node recovered
    /// `recovered_commit` at its restart.
    pub fn on_replay(&mut self, group: GroupId, node: NodeId, index: u64, recovered_commit: u64) {
        if index > recovered_commit {
            self.violations.push(Violation::ReplayPastCommit { group, node, index, recovered_commit });
        }
    }

    /// Observes `node`'s commit and applied indexes in `incarnation`.
    pub fn on_positions(
        &mut self,
        group: GroupId,
        node: NodeId,
        incarnation: u64,
        commit: u64,
        applied: u64,
    ) {
        let p = self.positions.entry((node, group)).or_default();
        if p.incarnation == incarnation && (commit < p.commit || applied < p.applied) {
            let detail = format!("commit {}→{commit}, applied {}→{applied}", p.commit, p.applied);
            self.violations.push(Violation::NonMonotonic { group, node, detail });
        }
        *p = Positions { incarnation, commit, applied };
    }

    /// A client was told its write (entries with `ids`) committed at `index`.
    pub fn on_ack(&mut self, group: GroupId, ticket: Ticket, ids: &[u64], index: u64) {
        let reg = self.g(group);
        reg.acked.extend(ids.iter().map(|&i| (i, ticket)));
        reg.max_acked_index = reg.max_acked_index.max(index);
    }

    /// A client was told its proposal (entries with `ids`, ticket `ticket`) was never
    /// appended and never will be.
    pub fn on_refused(&mut self, group: GroupId, ticket: Ticket, ids: &[u64]) {
        self.g(group).refused.extend(ids.iter().map(|&i| (i, ticket)));
    }

    /// The highest index any replica of `group` was seen to commit.
    #[must_use]
    pub fn highest_commit(&self, group: GroupId) -> u64 {
        self.groups.get(&group).and_then(|g| g.committed.last_key_value()).map_or(0, |(i, _)| *i)
    }

    /// The highest acknowledged write index so far (a read started now must see it).
    #[must_use]
    pub fn acked_floor(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, |g| g.max_acked_index)
    }

    /// A read started when `acked_before` was the highest acknowledged write returned
    /// `read_index`.
    pub fn on_read(&mut self, group: GroupId, read_index: u64, acked_before: u64) {
        if read_index < acked_before {
            self.violations.push(Violation::StaleRead { group, read_index, acked_before });
        }
    }

    /// `node`'s system partition state machine, holding the log up to `applied`, holds
    /// `roster`: every replica at that index must hold the same one.
    pub fn on_roster(&mut self, node: NodeId, applied: u64, roster: &phalanx::roster::Roster) {
        match self.rosters.get(&applied) {
            Some(seen) if seen != roster => {
                let detail = format!("{roster:?} here, {seen:?} elsewhere");
                self.violations.push(Violation::RosterDivergence { node, applied, detail });
            }
            Some(_) => {}
            None => {
                self.rosters.insert(applied, roster.clone());
            }
        }
        if roster.version > self.latest_roster.as_ref().map_or(0, |r| r.version) {
            self.latest_roster = Some(roster.clone());
        }
    }

    /// A leader of `group` on `node` holds `pending` uncommitted configuration changes.
    pub fn on_leader_conf_changes(&mut self, group: GroupId, node: NodeId, pending: usize) {
        if pending > 1 && self.flagged.insert((group, 0)) {
            self.violations.push(Violation::ConcurrentConfChanges { group, node, pending });
        }
    }

    /// `voters` is `group`'s committed configuration: a majority of them must still be in
    /// the latest roster any replica applied.
    pub fn on_committed_voters(&mut self, group: GroupId, voters: &BTreeSet<NodeId>) {
        let Some(roster) = &self.latest_roster else { return };
        let absent = voters.iter().filter(|v| !roster.members.contains_key(v)).count();
        if absent * 2 > voters.len() && self.flagged.insert((group, 1)) {
            let roster_version = roster.version;
            let voters = voters.iter().copied().collect();
            self.violations.push(Violation::VotersOutsideRoster { group, voters, roster_version });
        }
    }

    /// The roster of the highest version any replica applied (`None` before the seed).
    #[must_use]
    pub fn latest_roster(&self) -> Option<&phalanx::roster::Roster> {
        self.latest_roster.as_ref()
    }

    /// The highest roster version any replica held.
    #[must_use]
    pub fn roster_versions(&self) -> u64 {
        self.rosters.values().map(|r| r.version).max().unwrap_or(0)
    }

    /// Records a node that sent `messages` in one round, beyond any run's need.
    pub fn on_message_storm(&mut self, node: NodeId, messages: usize) {
        if self.flagged.insert((node, 2)) {
            self.violations.push(Violation::MessageStorm { node, messages });
        }
    }

    /// Records a write the store refused.
    pub fn on_store_refused(&mut self, node: NodeId, detail: String) {
        if self.flagged.insert((node, 3)) {
            self.violations.push(Violation::StoreRefused { node, detail });
        }
    }

    /// Records a restart the engine refused.
    pub fn on_unrecoverable(&mut self, node: NodeId, detail: String) {
        self.violations.push(Violation::Unrecoverable { node, detail });
    }

    /// Records a liveness failure.
    pub fn on_liveness_failure(&mut self, group: GroupId, detail: String) {
        self.violations.push(Violation::Liveness { group, detail });
    }

    /// End of run: every acknowledged write is in the state machine input exactly once, no
    /// rolled-back two-step entry is, and no refused proposal is in any log.
    pub fn finish(&mut self) {
        for (&group, reg) in &self.groups {
            if !reg.refused.is_empty() {
                let appended: std::collections::HashSet<u64> =
                    reg.entries.values().map(|(id, _)| *id).collect();
                let mut reported = BTreeSet::new();
                for (id, ticket) in &reg.refused {
                    if appended.contains(id) && reported.insert(*ticket) {
                        self.violations
                            .push(Violation::RefusedAppended { group, ticket: ticket.to_string() });
                    }
                }
            }
            let mut count: HashMap<u64, usize> = HashMap::new();
            for id in &reg.deliveries {
                *count.entry(*id).or_default() += 1;
            }
            let mut reported = BTreeSet::new();
            for (id, ticket) in &reg.acked {
                let n = count.get(id).copied().unwrap_or(0);
                if n != 1 && reported.insert(*ticket) {
                    self.violations
                        .push(Violation::LostAck { group, ticket: format!("{ticket} delivered {n} times") });
                }
            }
        }
    }
}
