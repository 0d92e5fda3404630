//! Leader balancing: each partition this node leads goes to its preferred leader (voter
//! `p % voters`) when that node is up and fully caught up, so leadership spreads evenly over
//! the nodes and returns to a node after it restarts.

use super::ShardCore;
use crate::raft::NodeId;
use crate::state_machine::PartitionId;

impl<R> ShardCore<R> {
    pub(super) fn balance_leaders(&mut self) {
        let groups: Vec<PartitionId> = self.multi.group_ids().collect();
        for p in groups {
            let down = &self.down;
            let _ = self.multi.update(p, |g| {
                if !g.is_leader() {
                    return;
                }
                let voters: Vec<NodeId> = g.membership().voters.iter().copied().collect();
                if voters.is_empty() {
                    return;
                }
                let preferred = voters[(p % voters.len() as u64) as usize];
                let caught_up = g.progress(preferred).is_some_and(|pr| pr.matched == g.log().last_index());
                if preferred != g.id() && caught_up && !down.contains(&preferred) {
                    let _ = g.transfer_leadership(preferred);
                }
            });
        }
    }
}
