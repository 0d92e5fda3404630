//! Leader balancing: each partition this node leads goes to its preferred leader (voter
//! `p % voters`, of the voters the roster does not have leaving) when that node is up and
//! fully caught up, so leadership spreads evenly over the nodes and returns to a node after
//! it restarts. A leaving member is never preferred: the roster's reconciler hands its
//! leaderships away, and balancing them back to it made the two fight (a leave that took
//! up to 30 s in `embedders_add_join_and_leave_through_the_handle`).

//!
//! A round looks only at the partitions whose leader or configuration changed since they were
//! last found settled (`Balance::pending`), and at every partition once after each roster
//! change (a member leaving changes who is preferred): an idle node's round costs nothing.
//! A walk over every group every two seconds was most of what 30,000 idle partitions cost
//! (perf: half of the idle process's samples, in `balance_leaders`, mostly cache misses).

use std::collections::BTreeSet;

use super::ShardCore;
use crate::raft::NodeId;
use crate::state_machine::PartitionId;

/// What the balancer still has to look at.
#[derive(Debug, Default)]
pub(super) struct Balance {
    /// Partitions whose leader or configuration changed and that may lead on the wrong node.
    pending: BTreeSet<PartitionId>,
    /// The roster version every partition was last queued for.
    roster_seen: Option<u64>,
}

impl Balance {
    /// Partition `p` changed leader or configuration: the next round looks at it.
    pub(super) fn changed(&mut self, p: PartitionId) {
        self.pending.insert(p);
    }
}

impl<R> ShardCore<R> {
    pub(super) fn balance_leaders(&mut self) {
        let roster = &self.directory.roster;
        if self.balance.roster_seen != Some(roster.version) {
            self.balance.roster_seen = Some(roster.version);
            self.balance.pending.extend(self.multi.group_ids());
        }
        let leaving =
            |n: &NodeId| roster.members.get(n).is_some_and(|m| m.role == crate::roster::Role::Leaving);
        // Read-only first: touching a group schedules it for the next Ready.
        let mut moves: Vec<(PartitionId, NodeId)> = Vec::new();
        let (multi, down) = (&self.multi, &self.down);
        self.balance.pending.retain(|&p| {
            // Not leading (any more): whoever leads balances it.
            let Some(g) = multi.group(p).filter(|g| g.is_leader()) else { return false };
            let voters: Vec<NodeId> = g.membership().voters.iter().copied().filter(|v| !leaving(v)).collect();
            let Some(preferred) = crate::raft::preferred_leader(p, voters.iter().copied()) else {
                return false;
            };
            if preferred == g.id() {
                return false;
            }
            let caught_up = g.progress(preferred).is_some_and(|pr| pr.matched == g.log().last_index());
            if caught_up && !down.contains(&preferred) {
                moves.push((p, preferred));
            }
            // Kept until the leadership moves (a transfer may fail; the next round retries).
            true
        });
        for (p, to) in moves {
            let _ = self.multi.update(p, |g| g.transfer_leadership(to));
        }
    }
}
