//! `MultiRaft`: the groups of one shard, driven together.
//!
//! It routes messages to groups, keeps time for all of them while touching only those with
//! a deadline due (a timer heap keyed by each group's `next_deadline`), and merges the
//! Readies of every group that has work into one `MultiReady` — one WAL batch and one frame
//! per peer for the whole shard.
//!
//! A quiesced group (`quiesce.rs`) has no deadline and leaves the heap; the container keeps
//! the failure detector's verdicts so a group quiesced under a leader the detector doubts
//! wakes at once, whenever the two meet.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use phalanx_proto::RaftMessage;

use super::config::Config;
use super::group::RaftGroup;
use super::pacer::Pacer;
use super::ready::Ready;
use super::status::Status;
use super::types::{GroupId, NodeId, RestoreState};
use crate::id_hash::IdHashMap;

struct Slot {
    /// Boxed: the map's spare buckets (up to half of them past a doubling) then cost a
    /// pointer each, not a whole group (1.3 KiB) — a third of an idle replica's memory.
    group: Box<RaftGroup>,
    /// The deadline this group has in the timer heap (`u64::MAX`: none).
    scheduled: u64,
    /// Touched since its last Ready: may have output, and its deadline may have moved.
    dirty: bool,
}

/// The merged output of every group with work.
#[derive(Debug, Default)]
pub struct MultiReady {
    /// Sequence number for `MultiRaft::advance`.
    pub number: u64,
    /// Each group's Ready.
    pub groups: Vec<(GroupId, Ready)>,
}

/// Every group of one shard.
#[derive(Default)]
pub struct MultiRaft {
    groups: IdHashMap<GroupId, Slot>,
    now: u64,
    timers: BinaryHeap<Reverse<(u64, GroupId)>>,
    dirty: Vec<GroupId>,
    next_number: u64,
    outstanding: VecDeque<(u64, Vec<(GroupId, u64)>)>,
    unknown_group_messages: u64,
    /// Peers the failure detector does not hold alive (suspect or dead).
    unreachable: BTreeSet<NodeId>,
    /// Dormant groups and their waking order, when paced (`pacer.rs`).
    pacer: Pacer,
    /// The configuration the latest group added shares with the groups before it.
    shared_config: Option<std::sync::Arc<Config>>,
    /// The membership the latest group added shares with the groups before it.
    shared_membership: Option<std::sync::Arc<super::types::Membership>>,
}

impl MultiRaft {
    /// An empty container at tick 0.
    #[must_use]
    pub fn new() -> Self {
        MultiRaft { next_number: 1, ..Default::default() }
    }

    /// An empty container whose groups start dormant and wake at most `max_waking` at a time
    /// (`pacer.rs`; 0: not paced, as `new`).
    #[must_use]
    pub fn paced(max_waking: usize) -> Self {
        MultiRaft { pacer: Pacer::new(max_waking), ..Self::new() }
    }

    /// Dormant groups waiting for their turn to wake (`pacer.rs`).
    #[must_use]
    pub fn dormant_queued(&self) -> usize {
        self.pacer.queued()
    }

    /// Current time in ticks.
    #[must_use]
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of groups.
    #[must_use]
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Messages dropped because they named a group this shard does not hold.
    #[must_use]
    pub fn unknown_group_messages(&self) -> u64 {
        self.unknown_group_messages
    }

    /// Adds (or restarts) a group. Fails if the group exists or the restore state is
    /// inconsistent.
    pub fn add_group(&mut self, cfg: Config, restore: RestoreState) -> Result<(), String> {
        let gid = cfg.group;
        if self.groups.contains_key(&gid) {
            return Err(format!("group {gid} already exists"));
        }
        let shared = match &self.shared_config {
            Some(c) if c.same_tuning(&cfg) => c.clone(),
            _ => std::sync::Arc::new(cfg.clone()),
        };
        self.shared_config = Some(shared.clone());
        let mut group = RaftGroup::with_shared_config(shared, gid, cfg.seed, restore)?;
        group.conf.share_base(&mut self.shared_membership);
        // The group's clock starts now: its deadlines are relative to the join. Setting the
        // clock, not ticking to it, so deadlines drawn relative to tick 0 do not fire (a
        // group joining a container past its election timeout would campaign at once).
        group.now = self.now;
        group.reset_timers_from_now();
        if self.pacer.is_on() {
            group.start_dormant();
            self.pacer.add(&group);
        }
        self.groups.insert(gid, Slot { group: Box::new(group), scheduled: u64::MAX, dirty: false });
        self.touch(gid);
        Ok(())
    }

    /// Removes a group, returning it.
    pub fn remove_group(&mut self, gid: GroupId) -> Option<RaftGroup> {
        self.dirty.retain(|g| *g != gid);
        self.groups.remove(&gid).map(|s| *s.group)
    }

    /// A group, read-only.
    #[must_use]
    pub fn group(&self, gid: GroupId) -> Option<&RaftGroup> {
        self.groups.get(&gid).map(|s| &*s.group)
    }

    /// Ids of every group (in no particular but deterministic order).
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Runs `f` on a group (brought up to the current time first) and schedules whatever it
    /// changed. `None` if the group does not exist.
    pub fn update<R>(&mut self, gid: GroupId, f: impl FnOnce(&mut RaftGroup) -> R) -> Option<R> {
        let now = self.now;
        let slot = self.groups.get_mut(&gid)?;
        slot.group.tick_to_with(now, &self.unreachable);
        let r = f(&mut slot.group);
        // Quiesced (again) under a leader the detector already doubts: no timer would notice.
        if let Some(leader) = slot.group.quiesced_leader()
            && self.unreachable.contains(&leader)
        {
            slot.group.leader_suspected(leader);
        }
        self.touch(gid);
        Some(r)
    }

    /// The failure detector's verdict on `node`: followers quiesced under it wake and
    /// campaign when it is no longer alive (`quiesce.rs`).
    pub fn set_peer_alive(&mut self, node: NodeId, alive: bool) {
        if alive {
            if self.unreachable.remove(&node) {
                self.wake_leaders_of(node);
            }
            return;
        }
        if self.unreachable.insert(node) {
            self.wake_quiesced_under(node);
        }
    }

    /// Followers quiesced under `node` wake and campaign: the detector doubts it, or heard it
    /// restarted (at a higher incarnation) — then it leads nothing since, and a replica that
    /// lost its disk does not even tell every member (`quiesce.rs`).
    pub fn wake_quiesced_under(&mut self, node: NodeId) {
        let quiesced: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, s)| s.group.quiesced_leader() == Some(node))
            .map(|(gid, _)| *gid)
            .collect();
        for gid in quiesced {
            self.update(gid, |g| g.leader_suspected(node));
        }
    }

    /// Groups this node leads that are quiesced (or quiescing) with `node` among their
    /// members wake and heartbeat at once: `node` is back — alive again, or restarted at a
    /// higher incarnation. Its groups then hear their leader now rather than after an election
    /// timeout (a restarted replica's groups are awake and would each campaign; one the
    /// leader quiesced without, as dead, may lag and needs its appends).
    pub fn wake_leaders_of(&mut self, node: NodeId) {
        let led: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, s)| {
                let g = &s.group;
                g.is_leader() && g.quiet != super::quiesce::Quiet::Awake && g.progress(node).is_some()
            })
            .map(|(gid, _)| *gid)
            .collect();
        for gid in led {
            self.update(gid, RaftGroup::wake);
        }
    }

    /// Groups quiesced on this shard (a scan: for statistics).
    #[must_use]
    pub fn quiesced_groups(&self) -> usize {
        self.groups.values().filter(|s| s.group.is_quiesced()).count()
    }

    /// Routes a message to its group.
    pub fn step(&mut self, m: RaftMessage) -> Result<(), Status> {
        let gid = m.group;
        match self.update(gid, |g| g.step(m)) {
            Some(r) => r,
            None => {
                self.unknown_group_messages += 1;
                Err(Status::InvalidRequest)
            }
        }
    }

    fn touch(&mut self, gid: GroupId) {
        if let Some(slot) = self.groups.get_mut(&gid)
            && !slot.dirty
        {
            slot.dirty = true;
            self.dirty.push(gid);
        }
    }

    fn reschedule(timers: &mut BinaryHeap<Reverse<(u64, GroupId)>>, gid: GroupId, slot: &mut Slot) {
        let d = slot.group.next_deadline();
        if d < slot.scheduled {
            // A later deadline needs no new heap entry: the earlier one pops, finds nothing
            // due, and reschedules. Only an earlier one must be pushed.
            slot.scheduled = d;
            timers.push(Reverse((d, gid)));
        }
    }

    /// Advances time by one tick; only groups with a deadline due are touched.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        for gid in self.dirty.clone() {
            if let Some(slot) = self.groups.get_mut(&gid) {
                Self::reschedule(&mut self.timers, gid, slot);
            }
        }
        while let Some(Reverse((t, gid))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.groups.get_mut(&gid) else { continue };
            if slot.scheduled != t {
                continue; // superseded by an earlier entry already handled
            }
            slot.scheduled = u64::MAX;
            slot.group.tick_to_with(now, &self.unreachable);
            Self::reschedule(&mut self.timers, gid, slot);
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(gid);
            }
        }
        self.pace();
    }

    /// Wakes the dormant groups whose turn came (`pacer.rs`).
    fn pace(&mut self) {
        if !self.pacer.is_on() {
            return;
        }
        let groups = &self.groups;
        let wake = self.pacer.due(self.now, |gid| groups.get(&gid).map(|s| s.group.pace_view()));
        for gid in wake {
            self.update(gid, RaftGroup::wake_dormant);
        }
    }

    /// Collects the Readies of every group touched since the last call.
    pub fn ready(&mut self) -> Option<MultiReady> {
        let mut out = Vec::new();
        let mut numbers = Vec::new();
        let mut still_dirty = Vec::new();
        for gid in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.groups.get_mut(&gid) else { continue };
            Self::reschedule(&mut self.timers, gid, slot);
            if let Some(r) = slot.group.ready() {
                numbers.push((gid, r.number));
                out.push((gid, r));
            }
            // A Ready bounded by the apply limit leaves more behind.
            if slot.group.has_ready() {
                still_dirty.push(gid);
            } else {
                slot.dirty = false;
            }
        }
        self.dirty = still_dirty;
        if out.is_empty() {
            return None;
        }
        let number = self.next_number;
        self.next_number += 1;
        self.outstanding.push_back((number, numbers));
        Some(MultiReady { number, groups: out })
    }

    /// Acknowledges every MultiReady up to `number`.
    pub fn advance(&mut self, number: u64) {
        while self.outstanding.front().is_some_and(|(n, _)| *n <= number) {
            let Some((_, list)) = self.outstanding.pop_front() else { break };
            for (gid, rn) in list {
                if let Some(slot) = self.groups.get_mut(&gid) {
                    slot.group.advance(rn);
                    if !slot.dirty {
                        slot.dirty = true;
                        self.dirty.push(gid);
                    }
                }
            }
        }
    }
}
