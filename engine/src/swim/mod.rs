//! SWIM failure detection (Das, Gupta, Motivala, 2002), as a pure state machine that shard 0
//! runs: it reads no clock (the shard passes the time in), does no IO, and draws every
//! random choice from a seeded generator, so the simulator replays it exactly.
//!
//! **Probes.** Every `probe_interval_ms` the detector probes one member, taking them in a
//! shuffled round-robin order (every member is probed once per pass — a bounded time to
//! first detection, which a uniformly random pick does not give). The target answers a
//! `PING` with an `ACK` carrying its incarnation. No answer within `probe_timeout_ms`: up
//! to `indirect_probes` other alive members are asked to probe it (`PING_REQ`) and pass the
//! answer back, so one slow or cut link does not make a node suspect. No answer by the end
//! of the interval: the target becomes **suspect**. A suspect that does not refute within
//! the suspicion timeout (`suspicion_mult` × the interval × ⌈log10 members⌉, memberlist's
//! scaling) becomes **dead**. Dead members are still probed directly (not indirectly), so one
//! that comes back is seen again.
//!
//! **Refutation.** A node that hears itself suspected or dead at its incarnation or above
//! raises its incarnation past it and spreads `alive` at the new one, which wins everywhere
//! (`table.rs`: the higher incarnation wins). Every message carries the sender's view of the
//! recipient when it is not alive (and a `PING_REQ` its view of the target), so a wrongly
//! suspected node hears of it from the first probe that reaches it, directly or through a
//! relay, and answers at the refuted incarnation. A node starts at the wall clock's
//! milliseconds as its incarnation, above anything said about its previous run.
//!
//! **Dissemination.** Changes wait in a queue, one per member (newer news replaces older),
//! and ride on up to `MAX_UPDATES_PER_MESSAGE` per message — on the probes and on the frames
//! that carry shard 0's Raft traffic — each `retransmit_mult` × ⌈log10 members⌉ times, the
//! least sent first. Every message also carries the sender's roster version.
//!
//! **Awareness of its own stalls.** When the shard's loop stalled for longer than the probe
//! timeout, answers may wait unread in its sockets: the detector gives the probe in flight,
//! and the suspicions due, one more turn before judging.
//!
//! The detector only says who answers. It never changes a quorum: Raft's own safety does not
//! depend on it. What uses it: the events and the member list, reads forwarded to a node
//! (refused at once when it is dead), leadership hand-overs (never to a dead node), and the
//! optional eviction of members dead longer than a grace.

pub mod table;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use phalanx_proto::{Gossip, GossipKind, NodeLiveness};

pub use self::table::{Entry, Liveness, Table, View};
use crate::raft::{NodeId, SeededRng};

/// Most liveness updates one message carries: a message stays a few hundred bytes.
pub const MAX_UPDATES_PER_MESSAGE: usize = 16;
/// Most updates read from one received message; the rest are ignored (a peer's message is
/// bounded by the frame, its cost to us by this).
pub const MAX_UPDATES_READ: usize = 256;
/// Most probes relayed for others at once: each lives one probe interval, so this bounds
/// the relay table whatever the peers ask.
pub const MAX_RELAYS: usize = 64;

/// The detector's settings (`NodeConfig::swim`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwimConfig {
    /// How often, in ms, the node probes one member. 0 (the default): 200, or twice the
    /// probe timeout if that is more.
    pub probe_interval_ms: u64,
    /// How long, in ms, a direct probe may take before others are asked to probe too; below
    /// the interval (the rest of the interval is the indirect probes' time), and at least two
    /// ticks (timers fire on the shard's ticks). 0 (the default): 100, or two ticks if that
    /// is more.
    pub probe_timeout_ms: u64,
    /// How many members are asked to probe a member that did not answer directly.
    pub indirect_probes: usize,
    /// A suspicion times out (the member is dead) after this many probe intervals, times
    /// ⌈log10 members⌉.
    pub suspicion_mult: u32,
    /// An update is passed on this many times, times ⌈log10 members⌉.
    pub retransmit_mult: u32,
    /// Members dead for longer than this, in ms, are removed from the roster by partition 0's
    /// leader; 0 (the default) never evicts (a dead member is usually a restart or a
    /// repair, and removing it is an operator's decision).
    pub eviction_grace_ms: u64,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_interval_ms: 0,
            probe_timeout_ms: 0,
            indirect_probes: 3,
            suspicion_mult: 4,
            retransmit_mult: 4,
            eviction_grace_ms: 0,
        }
    }
}

/// The direct probe's timeout when not set, in ms: a loopback or LAN round trip is far below
/// it; what it must cover is a busy shard loop's turn on both sides.
const DEFAULT_PROBE_TIMEOUT_MS: u64 = 100;

impl SwimConfig {
    /// The settings with the derived ones filled in, for shards ticking every
    /// `tick_interval_ms` (so a slower tick never makes the defaults invalid).
    #[must_use]
    pub fn resolved(&self, tick_interval_ms: u64) -> SwimConfig {
        let mut c = self.clone();
        if c.probe_timeout_ms == 0 {
            c.probe_timeout_ms = DEFAULT_PROBE_TIMEOUT_MS.max(2 * tick_interval_ms);
        }
        if c.probe_interval_ms == 0 {
            c.probe_interval_ms = (2 * DEFAULT_PROBE_TIMEOUT_MS).max(2 * c.probe_timeout_ms);
        }
        c
    }

    /// The first bad setting, described (of the settings as [`Self::resolved`] fills them).
    /// Timers fire on the shard's ticks, so the direct probe's timeout must span two of them.
    pub fn check(&self, tick_interval_ms: u64) -> Result<(), String> {
        let r = self.resolved(tick_interval_ms);
        r.check_resolved(tick_interval_ms)
    }

    fn check_resolved(&self, tick_interval_ms: u64) -> Result<(), String> {
        if self.probe_timeout_ms < 2 * tick_interval_ms {
            return Err(format!(
                "swim.probe_timeout_ms ({}) must be at least two ticks ({} ms)",
                self.probe_timeout_ms,
                2 * tick_interval_ms
            ));
        }
        if self.probe_interval_ms <= self.probe_timeout_ms {
            return Err("swim.probe_interval_ms must be above swim.probe_timeout_ms".into());
        }
        if self.suspicion_mult == 0 || self.retransmit_mult == 0 {
            return Err("swim.suspicion_mult and swim.retransmit_mult must be at least 1".into());
        }
        Ok(())
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// How long a suspicion lasts among `members` (this node included).
    #[must_use]
    pub fn suspicion_timeout(&self, members: usize) -> Duration {
        self.interval() * self.suspicion_mult * log10_ceil(members)
    }

    /// How many times an update is passed on among `members`.
    fn retransmits(&self, members: usize) -> u32 {
        self.retransmit_mult * log10_ceil(members)
    }
}

/// ⌈log10 n⌉, at least 1: 1 up to 10 members, 2 up to 100, ….
fn log10_ceil(n: usize) -> u32 {
    let mut digits = 1;
    let mut cap = 10;
    while n > cap {
        digits += 1;
        cap = cap.saturating_mul(10);
    }
    digits
}

/// Counters of one detector, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Direct probes sent.
    pub probes: u64,
    /// Probes that failed directly and were handed to relays.
    pub indirect_rounds: u64,
    /// Probe rounds that failed (the target became suspect, or stayed dead).
    pub failed_rounds: u64,
    /// Probes relayed for others.
    pub relayed: u64,
    /// Relay requests refused (the relay table was full).
    pub relays_refused: u64,
    /// Times this node refuted news of its own suspicion or death.
    pub refutations: u64,
}

/// A probe round in flight.
struct Probe {
    target: NodeId,
    seq: u64,
    direct_deadline: Instant,
    round_end: Instant,
    indirect: bool,
}

/// A probe this node makes for another.
struct Relay {
    seq: u64,
    origin: NodeId,
    origin_seq: u64,
    target: NodeId,
    expires: Instant,
}

/// One node's SWIM detector. See the [module docs](self).
pub struct Detector {
    me: NodeId,
    cfg: SwimConfig,
    incarnation: u64,
    table: Table,
    rng: SeededRng,
    /// The rest of the current pass over the members, in probe order.
    order: Vec<NodeId>,
    next_round: Instant,
    last_tick: Option<Instant>,
    next_eviction: Option<Instant>,
    probe: Option<Probe>,
    seq: u64,
    relays: VecDeque<Relay>,
    /// News to pass on: per member, its view and how often it was sent.
    broadcasts: BTreeMap<NodeId, (View, u32)>,
    roster_version: u64,
    /// Whether [`Detector::set_members`] was called yet.
    members_set: bool,
    /// The newest roster version a peer said does not list this node, and whether it was
    /// reported ([`Detector::take_unlisted`]).
    not_in_roster: Option<u64>,
    unlisted_reported: bool,
    /// Each member's roster version, as its last message said.
    peer_rosters: BTreeMap<NodeId, u64>,
    out: Vec<(NodeId, Gossip)>,
    changes: Vec<(NodeId, Liveness)>,
    /// Members heard alive at a higher incarnation while held alive: they restarted (or
    /// refuted a suspicion this node never held).
    reincarnated: Vec<NodeId>,
    stats: SwimStats,
}

impl Detector {
    /// A detector for node `me`, starting at `incarnation` (the wall clock's ms: above any
    /// incarnation of an earlier run), its random choices drawn from `seed`.
    #[must_use]
    pub fn new(me: NodeId, cfg: SwimConfig, incarnation: u64, seed: u64, now: Instant) -> Self {
        Detector {
            me,
            cfg,
            incarnation,
            table: Table::default(),
            rng: SeededRng::new(seed),
            order: Vec::new(),
            next_round: now,
            last_tick: None,
            next_eviction: None,
            probe: None,
            seq: 0,
            relays: VecDeque::new(),
            broadcasts: BTreeMap::new(),
            roster_version: 0,
            members_set: false,
            not_in_roster: None,
            unlisted_reported: true,
            peer_rosters: BTreeMap::new(),
            out: Vec::new(),
            changes: Vec::new(),
            reincarnated: Vec::new(),
            stats: SwimStats::default(),
        }
    }

    /// This node's incarnation.
    #[must_use]
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What this node believes about `node` (`None`: not a member, or this node).
    #[must_use]
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.table.get(node).map(|e| e.view.state)
    }

    /// The liveness table.
    #[must_use]
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// `node`'s roster version, as its last message said.
    #[must_use]
    pub fn peer_roster_version(&self, node: NodeId) -> Option<u64> {
        self.peer_rosters.get(&node).copied()
    }

    /// The newest roster version, above this node's own, that a peer said does not list this
    /// node. For a node that was a member: it left or was removed (the system partition no
    /// longer replicates to it, so its own roster may never show it). A node not added yet
    /// hears the same until its roster catches up.
    #[must_use]
    pub fn unlisted_at(&self) -> Option<u64> {
        self.not_in_roster.filter(|v| *v > self.roster_version)
    }

    /// [`Self::unlisted_at`] when it is news since the last call.
    pub fn take_unlisted(&mut self) -> Option<u64> {
        if self.unlisted_reported {
            return None;
        }
        self.unlisted_reported = true;
        self.unlisted_at()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// Members dead since before `now - grace`, in id order.
    #[must_use]
    pub fn dead_longer_than(&self, grace: Duration, now: Instant) -> Vec<NodeId> {
        self.table
            .iter()
            .filter(|(_, e)| {
                e.view.state == Liveness::Dead && now.saturating_duration_since(e.since) >= grace
            })
            .map(|(n, _)| n)
            .collect()
    }

    /// A member dead for longer than `grace` to evict, at most one per probe interval (the
    /// removal takes a round of the system partition to show in the roster).
    pub fn eviction_candidate(&mut self, grace: Duration, now: Instant) -> Option<NodeId> {
        if self.next_eviction.is_some_and(|t| now < t) {
            return None;
        }
        let node = self.dead_longer_than(grace, now).into_iter().next()?;
        self.next_eviction = Some(now + self.cfg.interval());
        Some(node)
    }

    /// The roster version of the members last given to [`Self::set_members`] (`None`: never).
    #[must_use]
    pub fn members_version(&self) -> Option<u64> {
        self.members_set.then_some(self.roster_version)
    }

    /// The members to watch (this node is left out), at roster `version`. A new member starts
    /// alive; a member that left is forgotten, and reported alive if it was not (its verdict
    /// is withdrawn).
    ///
    /// The first roster a detector gets is its start: it tells every member at once that it
    /// is alive at its incarnation (one message each). A node restarted faster than it could
    /// be suspected is then known restarted everywhere within a round trip — partitions that
    /// members lead quiesced wake for it (`MultiRaft::wake_leaders_of`) — instead of as each
    /// member's probe order comes round to it (up to a probe interval per member: with 2
    /// peers, 0.2–0.8 s before every partition of a restarted node knew its leader).
    pub fn set_members(&mut self, members: &[NodeId], version: u64, now: Instant) {
        self.roster_version = version;
        let first = !std::mem::replace(&mut self.members_set, true);
        let others: Vec<NodeId> = members.iter().copied().filter(|n| *n != self.me).collect();
        let was_down: Vec<NodeId> =
            self.table.iter().filter(|(_, e)| e.view.state != Liveness::Alive).map(|(n, _)| n).collect();
        for gone in self.table.set_members(&others, now) {
            self.broadcasts.remove(&gone);
            self.peer_rosters.remove(&gone);
            if was_down.contains(&gone) {
                self.changes.push((gone, Liveness::Alive));
            }
            if self.probe.as_ref().is_some_and(|p| p.target == gone) {
                self.probe = None;
            }
        }
        if first {
            // Only the news of this node: the greeting is no place for queued news, which
            // rides on probes as usual.
            let hello = Gossip {
                kind: GossipKind::GossipOnly as i32,
                roster_version: version,
                updates: vec![update(
                    self.me,
                    View { incarnation: self.incarnation, state: Liveness::Alive },
                )],
                ..Gossip::default()
            };
            self.out.extend(others.into_iter().map(|to| (to, hello.clone())));
        }
    }

    /// Messages to send, per peer (drains them).
    pub fn take_messages(&mut self) -> Vec<(NodeId, Gossip)> {
        std::mem::take(&mut self.out)
    }

    /// Members heard alive at a higher incarnation while held alive, in order (drains them):
    /// a node restarted faster than it could be suspected (or refuted a suspicion this node
    /// did not hold). What they did before — leading a quiesced partition — is over.
    pub fn take_reincarnations(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.reincarnated)
    }

    /// Members whose state changed, in order (drains them).
    pub fn take_changes(&mut self) -> Vec<(NodeId, Liveness)> {
        std::mem::take(&mut self.changes)
    }

    /// Whether news waits to be passed on.
    #[must_use]
    pub fn has_news(&self) -> bool {
        !self.broadcasts.is_empty()
    }

    /// News for `to`, for a frame that goes to it anyway (`None` when there is none).
    pub fn piggyback(&mut self, to: NodeId) -> Option<Gossip> {
        if self.broadcasts.is_empty() || self.table.get(to).is_none() {
            return None;
        }
        Some(self.message(to, GossipKind::GossipOnly, 0, 0, 0, None))
    }

    /// Advances the detector's timers to `now`: relays expire, suspicions time out, the probe
    /// in flight goes indirect or fails, the next probe starts.
    pub fn tick(&mut self, now: Instant) {
        let stalled = self.last_tick.is_some_and(|t| {
            now.saturating_duration_since(t) > Duration::from_millis(self.cfg.probe_timeout_ms)
        });
        self.last_tick = Some(now);
        while self.relays.front().is_some_and(|r| r.expires <= now) {
            self.relays.pop_front();
        }
        if stalled {
            // Our own loop was late: answers may be waiting unread. Judge at the next tick.
            let grace = now + Duration::from_millis(self.cfg.probe_timeout_ms);
            if let Some(p) = &mut self.probe {
                p.direct_deadline = p.direct_deadline.max(grace);
                p.round_end = p.round_end.max(grace);
            }
        } else {
            self.expire_suspicions(now);
        }
        self.advance_probe(now);
        if self.probe.is_none() && now >= self.next_round {
            self.next_round = now + self.cfg.interval();
            self.start_probe(now);
        }
    }

    /// A gossip message from `from`.
    pub fn on_gossip(&mut self, from: NodeId, g: Gossip, now: Instant) {
        if self.table.get(from).is_some() {
            self.peer_rosters.insert(from, g.roster_version);
        }
        if g.not_in_roster > self.roster_version && Some(g.not_in_roster) > self.not_in_roster {
            self.not_in_roster = Some(g.not_in_roster);
            self.unlisted_reported = false;
        }
        for u in g.updates.iter().take(MAX_UPDATES_READ) {
            let Some(state) = Liveness::from_proto(u.state) else { continue };
            self.hear(u.node, View { incarnation: u.incarnation, state }, now);
        }
        match GossipKind::try_from(g.kind) {
            Ok(GossipKind::Ping) => {
                let inc = self.incarnation;
                let ack = self.message(from, GossipKind::Ack, g.seq, self.me, inc, None);
                self.out.push((from, ack));
            }
            Ok(GossipKind::PingReq) => self.relay(from, g.seq, g.target, now),
            Ok(GossipKind::Ack) => self.on_ack(g, now),
            Ok(GossipKind::GossipOnly) | Err(_) => {}
        }
    }

    /// News about `node`: refuted if it is about this node, merged otherwise.
    fn hear(&mut self, node: NodeId, news: View, now: Instant) {
        if node == self.me {
            self.refute(news);
            return;
        }
        if let Some(before) = self.table.merge(node, news, now) {
            self.spread(node, news);
            if before != news.state {
                self.changes.push((node, news.state));
            } else if news.state == Liveness::Alive {
                self.reincarnated.push(node);
            }
        }
    }

    /// News of this node: a suspicion or a death at our incarnation or above is refuted by
    /// an incarnation past it; any news of a higher incarnation (a previous run's) too.
    fn refute(&mut self, news: View) {
        let wrong = news.state != Liveness::Alive && news.incarnation >= self.incarnation;
        if wrong || news.incarnation > self.incarnation {
            self.incarnation = news.incarnation.saturating_add(1);
            self.stats.refutations += 1;
            let me = self.me;
            self.spread(me, View { incarnation: self.incarnation, state: Liveness::Alive });
        }
    }

    /// Queues news to pass on (replacing older news of the same member).
    fn spread(&mut self, node: NodeId, view: View) {
        self.broadcasts.insert(node, (view, 0));
    }

    fn on_ack(&mut self, g: Gossip, now: Instant) {
        // First-hand news (or a relay's): the target answered at its incarnation.
        self.hear(g.target, View { incarnation: g.incarnation, state: Liveness::Alive }, now);
        if self.probe.as_ref().is_some_and(|p| p.seq == g.seq && p.target == g.target) {
            self.probe = None;
            return;
        }
        if let Some(i) = self.relays.iter().position(|r| r.seq == g.seq && r.target == g.target) {
            let Some(r) = self.relays.remove(i) else { return };
            let ack = self.message(r.origin, GossipKind::Ack, r.origin_seq, g.target, g.incarnation, None);
            self.out.push((r.origin, ack));
        }
    }

    /// Probes `target` for `origin`.
    fn relay(&mut self, origin: NodeId, origin_seq: u64, target: NodeId, now: Instant) {
        if target == self.me {
            let inc = self.incarnation;
            let ack = self.message(origin, GossipKind::Ack, origin_seq, self.me, inc, None);
            self.out.push((origin, ack));
            return;
        }
        if self.table.get(target).is_none() || target == origin {
            return;
        }
        if self.relays.len() >= MAX_RELAYS {
            self.stats.relays_refused += 1;
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        self.relays.push_back(Relay { seq, origin, origin_seq, target, expires: now + self.cfg.interval() });
        self.stats.relayed += 1;
        let ping = self.message(target, GossipKind::Ping, seq, 0, 0, None);
        self.out.push((target, ping));
    }

    fn expire_suspicions(&mut self, now: Instant) {
        let timeout = self.cfg.suspicion_timeout(self.table.len() + 1);
        let due: Vec<(NodeId, u64)> = self
            .table
            .iter()
            .filter(|(_, e)| {
                e.view.state == Liveness::Suspect && now.saturating_duration_since(e.since) >= timeout
            })
            .map(|(n, e)| (n, e.view.incarnation))
            .collect();
        for (n, incarnation) in due {
            self.hear(n, View { incarnation, state: Liveness::Dead }, now);
        }
    }

    fn advance_probe(&mut self, now: Instant) {
        let Some(p) = &self.probe else { return };
        let (target, seq) = (p.target, p.seq);
        if !p.indirect && now >= p.direct_deadline {
            let dead = self.liveness(target) == Some(Liveness::Dead);
            if let Some(p) = &mut self.probe {
                p.indirect = true;
            }
            if !dead {
                self.stats.indirect_rounds += 1;
                for relay in self.pick_relays(target) {
                    let req = self.message(relay, GossipKind::PingReq, seq, target, 0, Some(target));
                    self.out.push((relay, req));
                }
            }
            return;
        }
        if now < p.round_end {
            return;
        }
        self.probe = None;
        self.stats.failed_rounds += 1;
        if let Some(e) = self.table.get(target)
            && e.view.state == Liveness::Alive
        {
            let incarnation = e.view.incarnation;
            self.hear(target, View { incarnation, state: Liveness::Suspect }, now);
        }
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_target() else { return };
        self.seq += 1;
        let seq = self.seq;
        self.probe = Some(Probe {
            target,
            seq,
            direct_deadline: now + Duration::from_millis(self.cfg.probe_timeout_ms),
            round_end: now + self.cfg.interval(),
            indirect: false,
        });
        self.stats.probes += 1;
        let ping = self.message(target, GossipKind::Ping, seq, 0, 0, None);
        self.out.push((target, ping));
    }

    /// The next member of the pass; a new pass, shuffled, when this one is done.
    fn next_target(&mut self) -> Option<NodeId> {
        loop {
            if self.order.is_empty() {
                self.order = self.table.members().collect();
                self.shuffle_order();
                if self.order.is_empty() {
                    return None;
                }
            }
            let n = self.order.pop()?;
            if self.table.get(n).is_some() {
                return Some(n);
            }
        }
    }

    fn shuffle_order(&mut self) {
        for i in (1..self.order.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
    }

    /// Up to `indirect_probes` alive members other than `target`, at random.
    fn pick_relays(&mut self, target: NodeId) -> Vec<NodeId> {
        let mut alive: Vec<NodeId> = self
            .table
            .iter()
            .filter(|(n, e)| *n != target && e.view.state == Liveness::Alive)
            .map(|(n, _)| n)
            .collect();
        let k = self.cfg.indirect_probes.min(alive.len());
        for i in 0..k {
            let j = self.rng.range(i as u64, alive.len() as u64) as usize;
            alive.swap(i, j);
        }
        alive.truncate(k);
        alive
    }

    /// A message to `to`: the sender's view of `to` (and of `about`) when not alive, then
    /// the news least passed on so far.
    fn message(
        &mut self,
        to: NodeId,
        kind: GossipKind,
        seq: u64,
        target: NodeId,
        incarnation: u64,
        about: Option<NodeId>,
    ) -> Gossip {
        let mut updates = Vec::new();
        for n in std::iter::once(to).chain(about) {
            if let Some(e) = self.table.get(n)
                && e.view.state != Liveness::Alive
            {
                updates.push(update(n, e.view));
            }
        }
        let limit = self.cfg.retransmits(self.table.len() + 1);
        let mut news: Vec<(u32, NodeId)> = self.broadcasts.iter().map(|(n, (_, sent))| (*sent, *n)).collect();
        news.sort_unstable();
        for (_, n) in news {
            if updates.len() >= MAX_UPDATES_PER_MESSAGE {
                break;
            }
            if updates.iter().any(|u| u.node == n) {
                continue;
            }
            let Some((view, sent)) = self.broadcasts.get_mut(&n) else { continue };
            updates.push(update(n, *view));
            *sent += 1;
            if *sent >= limit {
                self.broadcasts.remove(&n);
            }
        }
        // A stranger to our roster (a node that left, one not added yet) hears it from us.
        let not_in_roster =
            if self.roster_version > 0 && self.table.get(to).is_none() { self.roster_version } else { 0 };
        Gossip {
            kind: kind as i32,
            seq,
            target,
            incarnation,
            roster_version: self.roster_version,
            updates,
            not_in_roster,
        }
    }
}

fn update(node: NodeId, v: View) -> NodeLiveness {
    NodeLiveness { node, incarnation: v.incarnation, state: v.state.to_proto() as i32 }
}

#[cfg(test)]
mod tests;
