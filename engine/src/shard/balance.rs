//! Leader balancing: each partition this node leads goes to its preferred leader (voter
//! `p % voters`, of the voters the roster does not have leaving) when that node is up and
//! fully caught up, so leadership spreads evenly over the nodes and returns to a node after
//! it restarts. A leaving member is never preferred: the roster's reconciler hands its
//! leaderships away, and balancing them back to it made the two fight (a leave that took
//! up to 30 s in `embedders_add_join_and_leave_through_the_handle`).

use super::ShardCore;
use crate::raft::NodeId;
use crate::state_machine::PartitionId;

impl<R> ShardCore<R> {
    pub(super) fn balance_leaders(&mut self) {
        let roster = &self.directory.roster;
        let leaving =
            |n: &NodeId| roster.members.get(n).is_some_and(|m| m.role == crate::roster::Role::Leaving);
        // Read-only first: touching a group schedules it for the next Ready, and a round
        // that touched all of them cost ten thousand quiesced partitions a Ready walk each.
        let moves: Vec<(PartitionId, NodeId)> = self
            .multi
            .group_ids()
            .filter_map(|p| {
                let g = self.multi.group(p).filter(|g| g.is_leader())?;
                let voters: Vec<NodeId> =
                    g.membership().voters.iter().copied().filter(|v| !leaving(v)).collect();
                let preferred = *voters.get((p % voters.len().max(1) as u64) as usize)?;
                let caught_up = g.progress(preferred).is_some_and(|pr| pr.matched == g.log().last_index());
                (preferred != g.id() && caught_up && !self.down.contains(&preferred))
                    .then_some((p, preferred))
            })
            .collect();
        for (p, to) in moves {
            let _ = self.multi.update(p, |g| g.transfer_leadership(to));
        }
    }
}
