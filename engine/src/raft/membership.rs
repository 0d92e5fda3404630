//! Single-server membership changes (Raft thesis §4.1).
//!
//! A configuration takes effect on a node as soon as its entry is in the node's log,
//! committed or not; if the entry is overwritten, the node falls back to the previous
//! configuration. The leader proposes a change only after it has committed an entry of its
//! own term (the fix for the single-server bug found after the thesis) and only when no
//! other change is uncommitted, so any two configurations in use differ by one server and
//! their majorities overlap.

use std::sync::Arc;

use phalanx_proto::{ConfChange, ConfChangeType, EntryKind, LogEntry, Message};

use super::status::Status;
use super::types::{Membership, NodeId};

/// The configurations present in a log: the one in force at the floor plus one per
/// configuration entry above it.
#[derive(Clone, Debug, Default)]
pub struct ConfHistory {
    /// Shared with the other groups of a container that have the same one (`share_base`):
    /// most partitions of a cluster have the same members, and a copy per group was 150
    /// bytes of every idle replica.
    base: Arc<Membership>,
    changes: Vec<(u64, Membership)>,
}

impl ConfHistory {
    /// A history whose configuration at the floor is `base`.
    #[must_use]
    pub fn new(base: Membership) -> Self {
        ConfHistory { base: Arc::new(base), changes: Vec::new() }
    }

    /// Shares the base with other histories: takes `shared` when it is the same
    /// configuration, else offers this one's to the next history.
    pub fn share_base(&mut self, shared: &mut Option<Arc<Membership>>) {
        match shared {
            Some(s) if **s == *self.base => self.base = s.clone(),
            _ => *shared = Some(self.base.clone()),
        }
    }

    /// The configuration in force: the latest one in the log.
    #[must_use]
    pub fn current(&self) -> &Membership {
        self.changes.last().map_or(&*self.base, |(_, m)| m)
    }

    /// Index of the latest configuration entry (0 when the current one predates the log).
    #[must_use]
    pub fn last_change_index(&self) -> u64 {
        self.changes.last().map_or(0, |(i, _)| *i)
    }

    /// How many configuration entries lie above `index`.
    #[must_use]
    pub fn changes_after(&self, index: u64) -> usize {
        self.changes.len() - self.changes.partition_point(|(i, _)| *i <= index)
    }

    /// The configuration in force at `index` (after applying entries up to it).
    #[must_use]
    pub fn at(&self, index: u64) -> &Membership {
        self.changes.iter().rev().find(|(i, _)| *i <= index).map_or(&*self.base, |(_, m)| m)
    }

    /// Notes the configuration entries among `entries` (appended in index order). Entries
    /// whose change does not apply (malformed, or a no-op) leave the configuration as it is,
    /// identically on every node, so the history stays deterministic.
    pub fn on_append<'a>(&mut self, entries: impl IntoIterator<Item = &'a LogEntry>) {
        for e in entries.into_iter().filter(|e| e.kind == EntryKind::ConfChange as i32) {
            if let Ok(next) = decode(e).and_then(|cc| apply_change(self.current(), &cc)) {
                self.changes.push((e.index, next));
            }
        }
    }

    /// The log was truncated from `index` on: forget configurations that came from there.
    pub fn on_truncate(&mut self, index: u64) {
        self.changes.retain(|(i, _)| *i < index);
    }

    /// The log was compacted up to `index`: fold older changes into the base.
    pub fn on_compact(&mut self, index: u64) {
        let keep_from = self.changes.partition_point(|(i, _)| *i <= index);
        if keep_from > 0 {
            self.base = Arc::new(self.changes[keep_from - 1].1.clone());
            self.changes.drain(..keep_from);
        }
    }

    /// A snapshot replaced the log up to `index`: its membership is the new base, and
    /// changes at or below `index` are gone.
    pub fn on_snapshot(&mut self, index: u64, membership: Membership) {
        self.changes.retain(|(i, _)| *i > index);
        self.base = Arc::new(membership);
    }
}

/// Decodes the change carried by a configuration entry.
pub fn decode(entry: &LogEntry) -> Result<ConfChange, Status> {
    ConfChange::decode(entry.payload.as_ref()).map_err(|_| Status::InvalidRequest)
}

/// The configuration that results from applying `cc` to `m`, or why it cannot apply:
/// `InsufficientVoters` when no voter would remain, `InvalidRequest` for a change that
/// changes nothing or names node 0.
pub fn apply_change(m: &Membership, cc: &ConfChange) -> Result<Membership, Status> {
    let node: NodeId = cc.node_id;
    if node == 0 {
        return Err(Status::InvalidRequest);
    }
    let mut next = m.clone();
    match ConfChangeType::try_from(cc.change) {
        Ok(ConfChangeType::AddVoter) => {
            if m.voters.contains(&node) {
                return Err(Status::InvalidRequest);
            }
            next.learners.remove(&node);
            next.voters.insert(node);
        }
        Ok(ConfChangeType::AddLearner) => {
            if m.learners.contains(&node) {
                return Err(Status::InvalidRequest);
            }
            next.voters.remove(&node);
            next.learners.insert(node);
        }
        Ok(ConfChangeType::Remove) => {
            if !m.contains(node) {
                return Err(Status::InvalidRequest);
            }
            next.voters.remove(&node);
            next.learners.remove(&node);
        }
        Ok(ConfChangeType::Unspecified) | Err(_) => return Err(Status::InvalidRequest),
    }
    if next.voters.is_empty() {
        return Err(Status::InsufficientVoters);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(change: ConfChangeType, node_id: u64) -> ConfChange {
        ConfChange { change: change as i32, node_id }
    }

    fn entry(index: u64, c: ConfChange) -> LogEntry {
        LogEntry {
            index,
            term: 1,
            kind: EntryKind::ConfChange as i32,
            payload: c.encode_to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_zero_voters() {
        let m = Membership::with_voters([1]);
        assert_eq!(apply_change(&m, &cc(ConfChangeType::Remove, 1)), Err(Status::InsufficientVoters));
        let m = Membership { voters: [1].into(), learners: [2].into() };
        assert_eq!(apply_change(&m, &cc(ConfChangeType::AddLearner, 1)), Err(Status::InsufficientVoters));
    }

    #[test]
    fn learner_promotion_and_removal() {
        let m = Membership::with_voters([1, 2]);
        let m = apply_change(&m, &cc(ConfChangeType::AddLearner, 3)).unwrap();
        assert!(m.learners.contains(&3));
        let m = apply_change(&m, &cc(ConfChangeType::AddVoter, 3)).unwrap();
        assert!(m.voters.contains(&3) && m.learners.is_empty());
        let m = apply_change(&m, &cc(ConfChangeType::Remove, 1)).unwrap();
        assert_eq!(m.voters, [2, 3].into());
        assert_eq!(apply_change(&m, &cc(ConfChangeType::Remove, 9)), Err(Status::InvalidRequest));
    }

    #[test]
    fn history_follows_append_truncate_compact() {
        let mut h = ConfHistory::new(Membership::with_voters([1, 2, 3]));
        h.on_append(&[entry(5, cc(ConfChangeType::AddVoter, 4)), entry(9, cc(ConfChangeType::Remove, 1))]);
        assert_eq!(h.current().voters, [2, 3, 4].into());
        assert_eq!(h.at(6).voters, [1, 2, 3, 4].into());
        assert_eq!(h.at(4).voters, [1, 2, 3].into());
        h.on_truncate(9);
        assert_eq!(h.current().voters, [1, 2, 3, 4].into());
        h.on_compact(7);
        assert_eq!(h.last_change_index(), 0);
        assert_eq!(h.current().voters, [1, 2, 3, 4].into());
    }
}
