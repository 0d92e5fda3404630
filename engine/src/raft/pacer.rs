//! Pacing a shard's start: its groups come up dormant and wake a bounded number at a time.
//!
//! A node that starts with 100,000 partitions and lets every group's election timer run
//! starts 100,000 elections within one election timeout, and every new leader heartbeats
//! until its partition quiesces: millions of messages a second, more than the cores can
//! handle, so answers arrive late, timers fire again, leaders step down (CheckQuorum) and
//! the start never settles (a 100,000-partition bench run had no full set of leaders after
//! eight minutes). A paced container keeps that work proportional to what it can do.
//!
//! **Dormant.** A group added to a paced container starts as a follower with neither a
//! leader nor an election timer (quiesced, with no leader to be quiesced under). It answers
//! every message as usual: it grants votes as any follower without a leader does (it holds no
//! lease), and a leader's append or heartbeat makes it that leader's follower, awake — or
//! quiesced under it when the heartbeat says so.
//!
//! **Waking.** On each tick the container wakes dormant groups while fewer than
//! `max_waking` groups it woke are unsettled. A group whose preferred leader is this node
//! (voter `group % voters`, the leader balancer's choice, so leadership starts balanced)
//! campaigns at once: its peers are dormant (no lease to refuse it) or follow a live leader
//! (and refuse it in its lease — no disruption); a timer would only add an election timeout
//! to the start. Every other group gets its election timer, so a group whose preferred
//! node is down still elects. Preferred groups wake first; most others are woken by their
//! leader's first append before their turn comes. A woken group settles once it follows a
//! leader, or leads, has committed in its term and quiesced — or is busy with proposals or
//! reads, or quiescence is off; it also stops counting after `HOLD_ELECTION_TIMEOUTS`
//! whatever it does, so a group that cannot elect (its quorum is down) does not hold a
//! place for good.
//!
//! **Why it is safe.** Pacing moves timers only, as quiescence does: every vote, append and
//! commit follows the same rules as in an awake group. A dormant group waits for its turn or
//! a message, and every turn comes: the queue only shrinks, and places free up within
//! `HOLD_ELECTION_TIMEOUTS`.

use std::collections::VecDeque;

use super::group::RaftGroup;
use super::quiesce::Quiet;
use super::types::{GroupId, NodeId, Role};

/// Groups a paced container keeps woken and unsettled at once, per shard. Bounds the burst
/// of a start: each woken group sends a few vote requests and appends per peer and then
/// heartbeats each peer every heartbeat interval until it quiesces, so 1,024 groups are a
/// few thousand messages per tick — a small share of the 4,096 inputs a shard takes per turn
/// (`ShardConfig::max_inputs_per_turn`), leaving room for everything else it does.
pub const MAX_WAKING_GROUPS: usize = 1024;

/// Longest a woken group holds a place, in election timeouts (the longest ones): an election
/// and a quiescence take a few; a group that cannot elect (its quorum is down) must not hold
/// a place for good, and one slow under load must not give it up too soon — freed places
/// wake more groups, which is how a start overloads itself.
pub const HOLD_ELECTION_TIMEOUTS: u64 = 10;

/// Leader preferred for `group` among `voters` (ascending): voter `group % voters`. Spreads
/// leadership evenly over the nodes; the leader balancer and the start share it.
#[must_use]
pub fn preferred_leader(group: GroupId, mut voters: impl ExactSizeIterator<Item = NodeId>) -> Option<NodeId> {
    let n = voters.len() as u64;
    if n == 0 {
        return None;
    }
    voters.nth((group % n) as usize)
}

/// Where `id` stands in `group`'s order of preference among `voters` (ascending): 0 for the
/// preferred leader, then the voters after it in turn, wrapping around. `None` if `id` is not
/// a voter. Of two replicas that campaign at the same moment, the one earlier in this order
/// wins (`election.rs`, `wins_tie_with`).
pub(super) fn preference_rank(
    group: GroupId,
    mut voters: impl ExactSizeIterator<Item = NodeId>,
    id: NodeId,
) -> Option<u64> {
    let n = voters.len() as u64;
    let at = voters.position(|v| v == id)? as u64;
    Some((at + n - group % n) % n)
}

/// What the pacer needs to know of a group.
#[derive(Clone, Copy, Debug)]
pub(super) struct PaceView {
    /// Still dormant.
    pub dormant: bool,
    /// Woken and settled: no longer needs its place.
    pub settled: bool,
    /// Longest a woken group holds a place, in ticks.
    pub hold_ticks: u64,
}

/// The waking order of a paced container's dormant groups and the places of the woken ones.
#[derive(Debug, Default)]
pub(super) struct Pacer {
    /// Woken groups not yet settled at once (0: not paced; groups start awake).
    max_waking: usize,
    /// Dormant groups this node is the preferred leader of, in the order they were added.
    preferred: VecDeque<GroupId>,
    /// The other dormant groups.
    others: VecDeque<GroupId>,
    /// Woken and not yet settled: (group, tick it woke).
    waking: Vec<(GroupId, u64)>,
}

impl Pacer {
    pub(super) fn new(max_waking: usize) -> Self {
        Pacer { max_waking, ..Default::default() }
    }

    /// Whether groups start dormant.
    pub(super) fn is_on(&self) -> bool {
        self.max_waking > 0
    }

    /// Queues a group that starts dormant.
    pub(super) fn add(&mut self, group: &RaftGroup) {
        if group.prefers_itself() {
            self.preferred.push_back(group.group);
        } else {
            self.others.push_back(group.group);
        }
    }

    /// Frees the places of woken groups that settled (or held one long enough), then returns
    /// the groups to wake now, in order. `view` looks a group up (`None` once removed).
    pub(super) fn due(&mut self, now: u64, view: impl Fn(GroupId) -> Option<PaceView>) -> Vec<GroupId> {
        self.waking.retain(|&(gid, at)| {
            view(gid).is_some_and(|v| !v.settled && now < at.saturating_add(v.hold_ticks))
        });
        let mut wake = Vec::new();
        while self.waking.len() < self.max_waking {
            let Some(gid) = self.preferred.pop_front().or_else(|| self.others.pop_front()) else { break };
            // Woken by a message since it was queued, or removed: nothing to do.
            if !view(gid).is_some_and(|v| v.dormant) {
                continue;
            }
            self.waking.push((gid, now));
            wake.push(gid);
        }
        wake
    }

    /// Dormant groups not woken yet (some may have been woken by a message meanwhile).
    pub(super) fn queued(&self) -> usize {
        self.preferred.len() + self.others.len()
    }
}

impl RaftGroup {
    /// Starts dormant (see the module): a follower with no leader and no election timer.
    /// Does nothing to a group that leads or knows a leader.
    pub(super) fn start_dormant(&mut self) {
        if self.role == Role::Follower && self.leader.is_none() {
            self.quiet = Quiet::Quiesced;
        }
    }

    /// Whether the group is dormant: no leader, no election timer.
    #[must_use]
    pub fn is_dormant(&self) -> bool {
        self.role != Role::Leader && self.leader.is_none() && self.quiet == Quiet::Quiesced
    }

    /// Wakes a dormant group: it campaigns at once when this node is its preferred leader,
    /// otherwise its election timer starts. Does nothing to a group that is not dormant.
    pub(super) fn wake_dormant(&mut self) {
        if !self.is_dormant() {
            return;
        }
        self.quiet = Quiet::Awake;
        self.reset_election_deadline();
        if self.prefers_itself() && self.promotable() {
            self.hup(false);
        }
    }

    /// Whether this node is the group's preferred leader.
    fn prefers_itself(&self) -> bool {
        preferred_leader(self.group, self.conf.current().voters.iter().copied()) == Some(self.cfg.id)
    }

    /// What the pacer needs to know of this group (see the module).
    pub(super) fn pace_view(&self) -> PaceView {
        let settled = match self.role {
            // Quiesced, or busy with proposals or reads (then it would not quiesce soon
            // anyway, and its cost is the work's, not the start's), or never quiescing.
            Role::Leader => {
                self.log.committed() >= self.log.last_index()
                    && (self.quiet == Quiet::Quiesced
                        || self.cfg.quiesce_after_ticks == 0
                        || self.last_activity.is_some_and(|t| self.now < t + self.cfg.quiesce_after_ticks))
            }
            _ => self.leader.is_some(),
        };
        PaceView {
            dormant: self.is_dormant(),
            settled,
            hold_ticks: HOLD_ELECTION_TIMEOUTS * self.cfg.election_ticks_max,
        }
    }
}
