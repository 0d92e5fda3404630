//! Every partition follows the roster (issue 13, item 2). The roster on the system partition
//! is the desired state; each shard, for the partitions it leads, compares the group's
//! configuration with it and proposes the next single-server change, one at a time per
//! partition (the group refuses a second while one is uncommitted):
//!
//! 1. learners the roster no longer has are dropped (they vote nowhere);
//! 2. members the partition lacks join as learners — at most
//!    `membership.max_catch_ups_per_shard` partitions of a shard bring members up to date at
//!    once (checkpointing for one, sending it a snapshot, or entries while it lags), so a join
//!    does not take every partition's bandwidth; a partition whose log above
//!    its snapshot is longer than `membership.catch_up_max_log_entries`, or not all in the
//!    leader's memory, is checkpointed first (the member then gets a snapshot and a short
//!    tail, not the log read back from disk);
//! 3. learners the roster made voters become voters once they keep up (lag within
//!    `membership.promote_max_lag_entries`); voters the roster has as learners stop voting;
//! 4. members that left the roster (or are leaving) are removed; a leader that is one hands
//!    its leadership to the voter furthest along first. The system partition removes a
//!    leaving member last (a voter, or a learner it has not promoted yet), so the member
//!    learns the roster until it has handed over everything.
//!
//! A change of voters waits until the configuration it makes has a quorum of active members
//! (`RaftGroup::quorum_active_in`), so following the roster never strands a partition that
//! could still commit: a removal waits while another voter is down or recovering its disk.
//!
//! The roster completes a transition itself once every partition has reported it done
//! (`Roster::note_progress`): the partition leaders here report the member in transition
//! caught up (kept up for `membership.promote_window_ms`) or dropped. Reports go to the
//! system partition, through shard 0 (`Output::system_commands`), every
//! `membership.reconcile_interval_ms` while there is news.
//!
//! Nothing here needs to survive a crash: the roster and every group's configuration are
//! replicated, and the comparison resumes from them after any restart or leader change.

use std::time::{Duration, Instant};

use bytes::Bytes;
use phalanx_proto::{ConfChange, ConfChangeType};

use super::ShardCore;
use super::system_duties::SYSTEM_LOG_TYPE;
use crate::id_hash::IdHashMap;
use crate::raft::{Membership, NodeId, Proposal, ProposalKind, RaftGroup, apply_change};
use crate::roster::{Role, Roster};
use crate::state_machine::PartitionId;

/// The next step that brings a partition toward the roster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add the member as a learner (or make a voter a learner).
    AddLearner(NodeId),
    /// Make the learner a voter.
    AddVoter(NodeId),
    /// Remove the member.
    Remove(NodeId),
    /// The leader leaves: hand leadership to this voter first.
    HandOver(NodeId),
}

/// The next single-server change that brings configuration `conf` of `partition`, led by
/// `me`, toward `roster`, in the order of the module's list; `lag(m)` is how many entries
/// member `m` lags the leader's log (`None`: unknown). `None`: nothing to do now.
#[must_use]
pub fn next_step(
    partition: PartitionId,
    conf: &Membership,
    me: NodeId,
    roster: &Roster,
    lag: &dyn Fn(NodeId) -> Option<u64>,
    max_lag: u64,
) -> Option<Step> {
    let role = |id: NodeId| roster.members.get(&id).map(|m| m.role);
    let kept = |id: NodeId| matches!(role(id), Some(Role::Voter | Role::Learner));
    // The system partition drops a leaving member last, voter or still a learner there (a
    // partition may not have promoted it yet when it is asked to leave): until then the
    // member still learns the roster there, and so hands over the other partitions it leads.
    // Dropped first, it never learns it is leaving, and leads on where it votes.
    let others_done = || roster.partition_ids().skip(1).all(|p| roster.progress.contains(&p));
    let drop_now =
        |id: NodeId| !kept(id) && (partition != 0 || role(id) != Some(Role::Leaving) || others_done());
    if let Some(l) = conf.learners.iter().find(|l| drop_now(**l)) {
        return Some(Step::Remove(*l));
    }
    if let Some(m) = roster.members.values().find(|m| m.role != Role::Leaving && !conf.contains(m.id)) {
        return Some(Step::AddLearner(m.id));
    }
    for m in roster.members.values() {
        match m.role {
            Role::Voter if conf.learners.contains(&m.id) && lag(m.id).is_some_and(|l| l <= max_lag) => {
                return Some(Step::AddVoter(m.id));
            }
            Role::Learner if m.id != me && conf.voters.contains(&m.id) => {
                return Some(Step::AddLearner(m.id));
            }
            _ => {}
        }
    }
    if role(me) != Some(Role::Voter) {
        // A leader the roster no longer has vote here hands over before anything else: once
        // it is not the leader, the new one removes it.
        return conf
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me && role(*v) == Some(Role::Voter))
            .min_by_key(|v| lag(*v).unwrap_or(u64::MAX))
            .map(Step::HandOver);
    }
    conf.voters.iter().copied().find(|v| drop_now(*v)).map(Step::Remove)
}

impl Step {
    /// The configuration change the step proposes (`None`: a hand-over).
    fn conf_change(self) -> Option<ConfChange> {
        let (change, node_id) = match self {
            Step::AddLearner(m) => (ConfChangeType::AddLearner, m),
            Step::AddVoter(m) => (ConfChangeType::AddVoter, m),
            Step::Remove(m) => (ConfChangeType::Remove, m),
            Step::HandOver(_) => return None,
        };
        Some(ConfChange { change: change as i32, node_id })
    }
}

/// How many entries member `m` lags the leader's log, known only while it answers: a member
/// that never did has matched nothing, and lags a short log by little.
fn answering_lag(g: &RaftGroup, m: NodeId) -> Option<u64> {
    g.follower_lag(m).filter(|_| g.is_active(m))
}

/// A shard's memory of its last rounds (none of it needs to survive a restart).
#[derive(Default)]
pub(crate) struct Reconciler {
    /// When the next round is due.
    next_round: Option<Instant>,
    /// Partitions led here where the learner in transition keeps up: the learner, and
    /// since when.
    keeping_up: IdHashMap<PartitionId, (NodeId, Instant)>,
    /// Partitions checkpointed here before a member joins them: the member, and the index and
    /// term of the checkpoint (the member is added once the log is compacted up to it).
    checkpointed: IdHashMap<PartitionId, (NodeId, u64, u64)>,
    /// The roster version at which the last round found nothing to do, anywhere.
    settled_at: Option<u64>,
    /// A partition of the shard changed leader or configuration since that round.
    pub(super) changed: bool,
    /// Rounds skipped since the last that looked at every partition.
    skipped: u32,
}

/// A shard whose partitions all follow the roster skips its rounds until the roster, a leader
/// or a configuration changes — a round walks every partition the shard leads (with ten
/// thousand idle ones, most of an idle node's time) — but looks anyway every this many
/// rounds (5 s at the default 200 ms), should anything else have moved.
const SETTLED_ROUNDS_SKIPPED: u32 = 24;

impl<R> ShardCore<R> {
    /// A round of following the roster, when one is due (see the module's comment).
    pub(super) fn follow_roster_if_due(&mut self) {
        let now = self.now;
        if self.stopping || self.membership.next_round.is_some_and(|t| now < t) {
            return;
        }
        let cfg = &self.cfg.membership;
        self.membership.next_round = Some(now + Duration::from_millis(cfg.reconcile_interval_ms));
        let dir = self.directory.clone();
        let roster = &dir.roster;
        if roster.version == 0 {
            self.seed_roster_if_needed();
            return;
        }
        let m = &mut self.membership;
        if m.settled_at == Some(roster.version) && !m.changed && m.skipped < SETTLED_ROUNDS_SKIPPED {
            m.skipped += 1;
            return;
        }
        m.skipped = 0;
        m.changed = false;
        let mut busy = false;
        let me = self.cfg.node_id;
        let max_lag = cfg.max_lag(&self.cfg.raft);
        let catch_up_log = cfg.catch_up_max_log(&self.cfg.raft);
        let window = Duration::from_millis(cfg.promote_window_ms);
        let led: Vec<PartitionId> = self
            .multi
            .group_ids()
            .filter(|p| !self.stopped.contains_key(p) && self.multi.group(*p).is_some_and(|g| g.is_leader()))
            .collect();
        // Partitions busy bringing a member of the roster up to date: sending it a snapshot,
        // or entries while it lags (one that does not answer takes no bandwidth, and must not
        // hold the others' joins back). A learner receiving a snapshot has not answered an
        // append yet: counted by its lag alone, every partition of a 1 GiB join sent its
        // snapshot at once, 37 chunks of 1 MiB in one frame.
        let catching_up = led
            .iter()
            .filter_map(|p| self.multi.group(*p))
            .filter(|g| {
                g.membership().learners.iter().any(|l| {
                    roster.members.contains_key(l)
                        && (g.is_receiving_snapshot(*l)
                            || answering_lag(g, *l).is_some_and(|lag| lag > max_lag))
                })
            })
            .count();
        // Partitions checkpointing for a member before adding it hold a place as well: each
        // checkpoint makes every replica snapshot and save its state machine, and a join that
        // checkpointed every partition at once stalled the cluster's writes for seconds.
        let checkpointing = led.iter().filter(|p| self.membership.checkpointed.contains_key(p)).count();
        let mut room = cfg.max_catch_ups_per_shard.saturating_sub(catching_up + checkpointing);
        let transition = roster.in_transition().map(|m| (m.id, m.role));
        let mut keeping_up = IdHashMap::default();
        let mut done = Vec::new();
        let mut wake = Vec::new();
        for p in led {
            let Some(g) = self.multi.group(p) else { continue };
            let conf = g.membership();
            let lag = |m: NodeId| answering_lag(g, m);
            // A quiesced partition has heard from no follower lately, so none counts as
            // active: one the roster wants changed (or a transition to report on) is woken
            // first and looked at again next round, with fresh answers (`raft/quiesce.rs`).
            // Its member's keeping-up window carries over: it was caught up to quiesce. (What
            // the roster wants is judged by lag alone here: by the answers, nobody is active.)
            let pending =
                transition.is_some() && u32::try_from(p).is_ok_and(|p32| !roster.progress.contains(&p32));
            let quiet_lag = |m: NodeId| g.follower_lag(m);
            if g.is_quiesced() && (pending || next_step(p, conf, me, roster, &quiet_lag, max_lag).is_some()) {
                if let Some(&entry) = self.membership.keeping_up.get(&p) {
                    keeping_up.insert(p, entry);
                }
                wake.push(p);
                continue;
            }
            busy |= pending;
            if let Some((member, role)) = transition
                && let Ok(p32) = u32::try_from(p)
                && !roster.progress.contains(&p32)
            {
                match role {
                    Role::Learner => {
                        if conf.contains(member) && lag(member).is_some_and(|l| l <= max_lag) {
                            let since = match self.membership.keeping_up.get(&p) {
                                Some(&(m, since)) if m == member => since,
                                _ => now,
                            };
                            keeping_up.insert(p, (member, since));
                            if now.saturating_duration_since(since) >= window {
                                done.push(p32);
                            }
                        }
                    }
                    Role::Leaving => {
                        if !conf.contains(member) && !g.conf_change_pending() {
                            done.push(p32);
                        }
                    }
                    Role::Voter => {}
                }
            }
            let Some(step) = next_step(p, conf, me, roster, &lag, max_lag) else { continue };
            busy = true;
            if let Step::AddLearner(m) = step
                && !conf.contains(m)
            {
                // A partition checkpointed for this member already holds its place.
                let holds_place =
                    self.membership.checkpointed.get(&p).is_some_and(|&(member, ..)| member == m);
                if room == 0 && !holds_place {
                    continue;
                }
                // A log that is long, or not all in the leader's memory, is checkpointed
                // first: the member then gets a snapshot and a short tail instead of the log
                // read back from disk — by the writer the leader's own writes wait on, one
                // small read per append (a log of a few hundred 64 KiB entries, short by the
                // count, stalled every write of a 1 GiB join for tens of seconds).
                let (floor, last) = (g.log().floor_index(), g.log().last_index());
                let uncached = g.log().cache_start() > floor + 1;
                match self.membership.checkpointed.get(&p) {
                    // Until it is applied (then compacted behind at once, unless its snapshot
                    // is too large to send: then the log is what the member gets).
                    Some(&(member, at, _)) if member == m && floor < at && g.last_checkpoint() < at => {
                        continue;
                    }
                    Some(&(member, ..)) if member == m => {}
                    _ if last - floor > catch_up_log || uncached => {
                        let ticket = self.hlc.now(self.wall_ms);
                        let proposed = self.multi.update(p, |g| g.propose_leader_checkpoint(ticket));
                        if let Some(Ok(at)) = proposed {
                            self.membership.checkpointed.insert(p, (m, at.last_index, at.term));
                            room -= 1;
                        }
                        continue;
                    }
                    _ => room -= 1,
                }
            }
            // A change of voters waits until the new configuration has a quorum of active
            // members: removing a voter while another is down or recovering its lost disk
            // would leave the partition unable to commit.
            let cc = step.conf_change();
            if let Some(next) = cc.as_ref().and_then(|cc| apply_change(conf, cc).ok())
                && next.voters != conf.voters
                && !g.quorum_active_in(&next.voters)
            {
                continue;
            }
            // Refusals are expected and harmless: a change still uncommitted, no entry of the
            // leader's term committed yet, a transfer under way. The next round asks again.
            self.multi.update(p, |g| match (cc, step) {
                (Some(cc), _) => drop(g.propose_conf_change(cc)),
                (None, Step::HandOver(v)) => drop(g.transfer_leadership(v)),
                (None, _) => {}
            });
        }
        busy |= !wake.is_empty() || !keeping_up.is_empty() || catching_up > 0 || checkpointing > 0;
        for p in wake {
            self.multi.update(p, RaftGroup::wake);
        }
        self.membership.keeping_up = keeping_up;
        // Forget checkpoints for members already in their partition, or no longer led here
        // in the term that proposed them (a leader that lost its term and won another may
        // have lost the entry: waiting for it held the partition's place for good, and hung a
        // join). A checkpoint holds its place only while the roster still adds its member.
        let multi = &self.multi;
        let wanted = |m: &NodeId| roster.members.get(m).is_some_and(|r| r.role != Role::Leaving);
        self.membership.checkpointed.retain(|p, (m, _, term)| {
            wanted(m)
                && multi
                    .group(*p)
                    .is_some_and(|g| g.is_leader() && g.term() == *term && !g.membership().contains(*m))
        });
        busy |= transition.is_some() || !self.membership.checkpointed.is_empty();
        self.membership.settled_at = (!busy).then_some(roster.version);
        if let Some((member, _)) = transition
            && !done.is_empty()
        {
            self.propose_system_command(crate::system::member_progress(roster.version, member, done));
        }
    }

    /// Proposes a system command on the system partition: on shard 0 to its group (the
    /// leader's, or forwarded to it), elsewhere through shard 0. A command lost on the way
    /// (no leader, a full inbox) is not retried here: its sender repeats it while needed.
    pub fn propose_system_command(&mut self, payload: Bytes) {
        if self.system.is_none() {
            self.out.system_commands.push(payload);
            return;
        }
        let ticket = self.hlc.now(self.wall_ms);
        let p = Proposal {
            kind: ProposalKind::System,
            log_type: Bytes::from_static(SYSTEM_LOG_TYPE.as_bytes()),
            payloads: vec![payload],
            ticket,
        };
        let _ = self.multi.update(0, |g| g.propose_or_forward(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::Change;

    fn roster(voters: &[NodeId]) -> Roster {
        let mut r = Roster::default();
        let members = voters.iter().map(|i| (*i, format!("h:{i}"), String::new())).collect();
        r.apply(0, &Change::Seed { members, partitions: 1 }).expect("seeds");
        r
    }

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership { voters: voters.iter().copied().collect(), learners: learners.iter().copied().collect() }
    }

    const CAUGHT_UP: &dyn Fn(NodeId) -> Option<u64> = &|_| Some(0);

    #[test]
    fn a_partition_that_matches_the_roster_has_nothing_to_do() {
        let r = roster(&[1, 2, 3]);
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[]), 1, &r, CAUGHT_UP, 10), None);
    }

    #[test]
    fn a_new_member_joins_as_a_learner_and_votes_once_the_roster_says_so_and_it_keeps_up() {
        let mut r = roster(&[1, 2, 3]);
        r.apply(1, &Change::Add(4, "h:4".into(), String::new())).expect("adds");
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[]), 1, &r, CAUGHT_UP, 10), Some(Step::AddLearner(4)));
        // A learner of the roster stays a learner.
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[4]), 1, &r, CAUGHT_UP, 10), None);
        assert_eq!(r.note_progress(2, 4, &[0, 1]), Some(Change::Promote(4)));
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(next_step(1, &c, 1, &r, &|_| Some(11), 10), None, "it lags: not yet");
        assert_eq!(next_step(1, &c, 1, &r, &|_| None, 10), None, "its lag is unknown: not yet");
        assert_eq!(next_step(1, &c, 1, &r, &|_| Some(10), 10), Some(Step::AddVoter(4)));
    }

    #[test]
    fn members_that_left_are_removed_learners_first_and_a_leaving_leader_hands_over() {
        let mut r = roster(&[1, 2, 3]);
        // A learner the roster does not have goes before anything else.
        r.apply(1, &Change::Add(5, "h:5".into(), String::new())).expect("adds");
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[4]), 1, &r, CAUGHT_UP, 10), Some(Step::Remove(4)));
        r.apply(2, &Change::Remove(5)).expect("removes the learner");
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[5]), 1, &r, CAUGHT_UP, 10), Some(Step::Remove(5)));
        r.apply(3, &Change::Remove(3)).expect("3 leaves");
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[]), 1, &r, CAUGHT_UP, 10), Some(Step::Remove(3)));
        // Led by the leaving member: hand over to the remaining voter furthest along.
        let lag = |m: NodeId| Some(if m == 1 { 5 } else { 1 });
        assert_eq!(next_step(1, &conf(&[1, 2, 3], &[]), 3, &r, &lag, 10), Some(Step::HandOver(2)));
        assert_eq!(next_step(1, &conf(&[1, 2], &[]), 1, &r, CAUGHT_UP, 10), None);
    }

    #[test]
    fn the_system_partition_drops_a_leaving_voter_after_every_other_partition() {
        let mut r = roster(&[1, 2, 3]);
        r.apply(1, &Change::Remove(3)).expect("3 leaves");
        let c = conf(&[1, 2, 3], &[]);
        assert_eq!(next_step(0, &c, 1, &r, CAUGHT_UP, 10), None);
        assert_eq!(next_step(1, &c, 1, &r, CAUGHT_UP, 10), Some(Step::Remove(3)));
        // Led by the leaving member, it hands over at once all the same.
        assert_eq!(next_step(0, &c, 3, &r, CAUGHT_UP, 10), Some(Step::HandOver(1)));
        assert_eq!(r.note_progress(2, 3, &[1]), None);
        assert_eq!(next_step(0, &c, 1, &r, CAUGHT_UP, 10), Some(Step::Remove(3)));
    }

    #[test]
    fn the_system_partition_drops_a_leaving_member_it_has_not_promoted_yet_last_too() {
        // 4 joined and was promoted by the roster; partition 1 made it a voter, the system
        // partition not yet, when it was asked to leave. It leads partition 1, so it must go
        // on learning the roster to hand partition 1 over.
        let mut r = roster(&[1, 2, 3]);
        r.apply(1, &Change::Add(4, "h:4".into(), String::new())).expect("adds");
        assert_eq!(r.note_progress(2, 4, &[0, 1]), Some(Change::Promote(4)));
        r.apply(3, &Change::Remove(4)).expect("4 leaves");
        let system = conf(&[1, 2, 3], &[4]);
        assert_eq!(next_step(0, &system, 1, &r, CAUGHT_UP, 10), None);
        assert_eq!(next_step(1, &conf(&[1, 2, 3, 4], &[]), 4, &r, CAUGHT_UP, 10), Some(Step::HandOver(1)));
        assert_eq!(r.note_progress(4, 4, &[1]), None);
        assert_eq!(next_step(0, &system, 1, &r, CAUGHT_UP, 10), Some(Step::Remove(4)));
    }

    #[test]
    fn a_voter_the_roster_does_not_have_is_removed_and_a_sole_leaving_leader_waits() {
        let r = roster(&[1, 2]);
        assert_eq!(next_step(1, &conf(&[1, 2, 7], &[]), 1, &r, CAUGHT_UP, 10), Some(Step::Remove(7)));
        // The leader is not in the roster and no voter of the roster is here yet: it adds
        // them first, and hands over when one votes.
        assert_eq!(next_step(1, &conf(&[7], &[]), 7, &r, CAUGHT_UP, 10), Some(Step::AddLearner(1)));
        assert_eq!(next_step(1, &conf(&[7], &[1, 2]), 7, &r, CAUGHT_UP, 10), Some(Step::AddVoter(1)));
        assert_eq!(next_step(1, &conf(&[7, 1, 2], &[]), 7, &r, CAUGHT_UP, 10), Some(Step::HandOver(1)));
    }
}
