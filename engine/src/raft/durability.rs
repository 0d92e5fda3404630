//! Which hard states a shell must make durable with a Ready, and which may wait.
//!
//! A Ready's hard state is `(term, vote, commit)`. Term and vote must be durable before the
//! node acts on them (§5.1: a vote is never granted twice in a term). The commit index is
//! volatile state in Raft: after a crash a node relearns it from the leader, and every entry
//! up to it is durable on a quorum already. Writing a hard state whose only change is the
//! commit index cost every node a synchronous write of its own per commit (a single client
//! waited for it: the next entry's write queued behind it). So, as etcd's `MustSync`, a
//! commit-only hard state is held back and written with the group's next write that must
//! be durable anyway (entries, a snapshot, a compaction, a term or vote change); until then
//! the stored commit index is older, which a restart tolerates: it replays less and learns
//! the rest from the leader.

use phalanx_proto::HardState;

use super::types::GroupId;
use crate::id_hash::IdHashMap;

/// Per group: the last hard state seen and a commit-only one held back.
#[derive(Debug, Default)]
pub struct CommitDeferral {
    last: IdHashMap<GroupId, HardState>,
    deferred: IdHashMap<GroupId, HardState>,
}

impl CommitDeferral {
    /// The hard state to write with `group`'s Ready now. `hs` is the Ready's hard state;
    /// `must_write` says whether the Ready writes anything else (entries, a snapshot, a
    /// compaction). Returns `None` when nothing about the hard state needs writing now.
    pub fn hard_state_to_write(
        &mut self,
        group: GroupId,
        hs: Option<HardState>,
        must_write: bool,
    ) -> Option<HardState> {
        let Some(hs) = hs else {
            // Nothing new; a held-back commit rides along with a write that happens anyway.
            return if must_write { self.deferred.remove(&group) } else { None };
        };
        let commit_only = self.last.get(&group).is_some_and(|l| l.term == hs.term && l.vote == hs.vote);
        self.last.insert(group, hs);
        if commit_only && !must_write {
            self.deferred.insert(group, hs);
            return None;
        }
        // The newer hard state carries the newest commit index.
        self.deferred.remove(&group);
        Some(hs)
    }

    /// Every held-back hard state, by group (for a clean stop to write them).
    pub fn take_all(&mut self) -> Vec<(GroupId, HardState)> {
        let mut all: Vec<(GroupId, HardState)> = self.deferred.drain().collect();
        all.sort_by_key(|(g, _)| *g);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: u64, commit: u64) -> Option<HardState> {
        Some(HardState { term, vote, commit })
    }

    #[test]
    fn commit_only_changes_wait_for_the_next_write() {
        let mut d = CommitDeferral::default();
        // The first hard state of a group is always written.
        assert_eq!(d.hard_state_to_write(1, hs(1, 2, 0), false), hs(1, 2, 0));
        // Commit moves alone: held back.
        assert_eq!(d.hard_state_to_write(1, hs(1, 2, 5), false), None);
        assert_eq!(d.hard_state_to_write(1, hs(1, 2, 7), false), None);
        // Another group is independent.
        assert_eq!(d.hard_state_to_write(2, hs(3, 0, 1), false), hs(3, 0, 1));
        // The next write of entries takes the latest held-back commit along.
        assert_eq!(d.hard_state_to_write(1, None, true), hs(1, 2, 7));
        assert_eq!(d.hard_state_to_write(1, None, true), None);
        // A commit change in a Ready that writes entries is written at once.
        assert_eq!(d.hard_state_to_write(1, hs(1, 2, 8), true), hs(1, 2, 8));
        // A clean stop takes what is held back.
        assert_eq!(d.hard_state_to_write(1, hs(1, 2, 9), false), None);
        assert_eq!(d.hard_state_to_write(2, hs(3, 0, 4), false), None);
        assert_eq!(
            d.take_all(),
            vec![
                (1, HardState { term: 1, vote: 2, commit: 9 }),
                (2, HardState { term: 3, vote: 0, commit: 4 })
            ]
        );
        assert!(d.take_all().is_empty());
    }

    #[test]
    fn term_and_vote_changes_are_written_at_once() {
        let mut d = CommitDeferral::default();
        assert_eq!(d.hard_state_to_write(1, hs(1, 0, 0), false), hs(1, 0, 0));
        assert_eq!(d.hard_state_to_write(1, hs(1, 0, 3), false), None);
        // A vote: written now, with the newest commit.
        assert_eq!(d.hard_state_to_write(1, hs(1, 3, 4), false), hs(1, 3, 4));
        assert_eq!(d.hard_state_to_write(1, None, true), None, "nothing left held back");
        assert_eq!(d.hard_state_to_write(1, hs(2, 0, 4), false), hs(2, 0, 4));
    }
}
