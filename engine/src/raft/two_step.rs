//! Two-step proposals (the reference's `autoCommit: false`, `CommitLogs`, `RollbackLogs`).
//!
//! A two-step proposal's entries are replicated and committed like any other (so the caller
//! knows they are durable on a quorum), but their payload reaches the state machine only
//! when a commit marker carrying the same ticket is committed, and never if a rollback marker
//! is. This module turns the stream of committed entries into the stream of deliveries. It
//! runs identically on every node, so every state machine sees the same deliveries in the
//! same order.

use std::collections::BTreeMap;

use phalanx_proto::{EntryKind, LogEntry};

use crate::hlc::{Ticket, ticket_of};

/// Committed entries of two-step proposals that wait for their marker.
#[derive(Clone, Debug, Default)]
pub struct TwoStep {
    /// `None` while nothing is pending (most groups, always): 16 bytes less per replica.
    #[allow(clippy::box_collection)] // 8 bytes in every replica, not an empty map's 24
    pending: Option<Box<BTreeMap<Ticket, Vec<LogEntry>>>>,
}

impl TwoStep {
    /// Restores the pending set carried by a snapshot.
    #[must_use]
    pub fn from_entries(entries: &[LogEntry]) -> Self {
        let mut t = TwoStep::default();
        for e in entries {
            t.map().entry(ticket_of(e)).or_default().push(e.clone());
        }
        t
    }

    fn map(&mut self) -> &mut BTreeMap<Ticket, Vec<LogEntry>> {
        self.pending.get_or_insert_with(Box::default)
    }

    /// Removes `ticket`'s entries; forgets the map once it is empty.
    fn remove(&mut self, ticket: &Ticket) -> Option<Vec<LogEntry>> {
        let map = self.pending.as_mut()?;
        let entries = map.remove(ticket);
        if map.is_empty() {
            self.pending = None;
        }
        entries
    }

    /// Whether a two-step proposal with `ticket` is committed and waits for its marker.
    #[must_use]
    pub fn is_pending(&self, ticket: &Ticket) -> bool {
        self.pending.as_ref().is_some_and(|m| m.contains_key(ticket))
    }

    /// Every pending entry, for a snapshot.
    #[must_use]
    pub fn pending_entries(&self) -> Vec<LogEntry> {
        self.pending.iter().flat_map(|m| m.values().flatten().cloned()).collect()
    }

    /// Number of pending proposals.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending.as_ref().map_or(0, |m| m.len())
    }

    /// Whether nothing is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_none()
    }

    /// Consumes one committed entry (in log order) and pushes what the state machine must
    /// see onto `out`.
    pub fn on_committed(&mut self, e: &LogEntry, out: &mut Vec<LogEntry>) {
        match EntryKind::try_from(e.kind) {
            Ok(EntryKind::Normal | EntryKind::System | EntryKind::Checkpoint) => out.push(e.clone()),
            Ok(EntryKind::Proposed) => self.map().entry(ticket_of(e)).or_default().push(e.clone()),
            Ok(EntryKind::CommitMarker) => {
                // A marker for an unknown or already resolved ticket changes nothing: the
                // first marker wins, identically everywhere.
                if let Some(entries) = self.remove(&ticket_of(e)) {
                    out.extend(entries);
                }
            }
            Ok(EntryKind::RollbackMarker) => {
                self.remove(&ticket_of(e));
            }
            // No-ops and membership changes are the core's own business.
            Ok(EntryKind::Noop | EntryKind::ConfChange | EntryKind::Unspecified) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_proto::HlcTimestamp;

    fn e(index: u64, kind: EntryKind, ticket: u64) -> LogEntry {
        LogEntry {
            index,
            term: 1,
            kind: kind as i32,
            ticket: Some(HlcTimestamp { physical_ms: ticket, logical: 0, node_id: 1 }),
            ..Default::default()
        }
    }

    #[test]
    fn proposed_entries_wait_for_commit_marker() {
        let mut t = TwoStep::default();
        let mut out = Vec::new();
        t.on_committed(&e(1, EntryKind::Proposed, 7), &mut out);
        t.on_committed(&e(2, EntryKind::Proposed, 7), &mut out);
        t.on_committed(&e(3, EntryKind::Normal, 8), &mut out);
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3]);
        t.on_committed(&e(4, EntryKind::CommitMarker, 7), &mut out);
        assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 1, 2]);
        // A second marker changes nothing.
        t.on_committed(&e(5, EntryKind::CommitMarker, 7), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn rollback_discards() {
        let mut t = TwoStep::default();
        let mut out = Vec::new();
        t.on_committed(&e(1, EntryKind::Proposed, 7), &mut out);
        t.on_committed(&e(2, EntryKind::RollbackMarker, 7), &mut out);
        t.on_committed(&e(3, EntryKind::CommitMarker, 7), &mut out);
        assert!(out.is_empty());
        assert!(t.is_empty());
    }
}
