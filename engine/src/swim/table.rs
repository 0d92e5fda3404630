//! The liveness table and its merge rule: what one node believes about every other member,
//! and how a piece of news about a member changes that belief.
//!
//! The rule (SWIM, Das et al. 2002, §4.2; memberlist's): **the higher incarnation wins**; at
//! the same incarnation **the worse state wins** (alive < suspect < dead). Only a node
//! itself raises its incarnation — to refute a suspicion or a death it hears about — so news
//! of a higher incarnation is news the node gave out after anything said about the lower one.
//! The rule is a join on (incarnation, state): merging is commutative, associative and
//! idempotent, so every node that hears the same news, in any order, any number of times,
//! ends with the same view.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::raft::NodeId;

/// A member's liveness, in the merge order: at one incarnation a later state wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Answering probes.
    Alive,
    /// A probe round failed; dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Suspected for longer than the suspicion timeout (or declared dead by a peer).
    Dead,
}

impl Liveness {
    /// The name operators see (`phalanx ctl member list`: `up`, `suspect`, `down`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Alive => "up",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "down",
        }
    }

    pub(crate) fn to_proto(self) -> phalanx_proto::Liveness {
        match self {
            Liveness::Alive => phalanx_proto::Liveness::Alive,
            Liveness::Suspect => phalanx_proto::Liveness::Suspect,
            Liveness::Dead => phalanx_proto::Liveness::Dead,
        }
    }

    /// The state a peer sent; an unknown value is no news (`None`).
    pub(crate) fn from_proto(v: i32) -> Option<Liveness> {
        match phalanx_proto::Liveness::try_from(v).ok()? {
            phalanx_proto::Liveness::Alive => Some(Liveness::Alive),
            phalanx_proto::Liveness::Suspect => Some(Liveness::Suspect),
            phalanx_proto::Liveness::Dead => Some(Liveness::Dead),
        }
    }
}

/// A member's liveness at an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The member's incarnation, as far as this view knows.
    pub incarnation: u64,
    /// Its state at that incarnation.
    pub state: Liveness,
}

impl View {
    /// Whether `news` replaces this view (the merge rule of the module docs).
    #[must_use]
    pub fn overridden_by(self, news: View) -> bool {
        (news.incarnation, news.state) > (self.incarnation, self.state)
    }
}

/// One member's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What this node believes.
    pub view: View,
    /// When the state last changed (a suspicion's start, a death's).
    pub since: Instant,
}

/// What this node believes about every other member.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: BTreeMap<NodeId, Entry>,
}

impl Table {
    /// The entry of `node`, if it is a member.
    #[must_use]
    pub fn get(&self, node: NodeId) -> Option<&Entry> {
        self.entries.get(&node)
    }

    /// Every member and its entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Entry)> + '_ {
        self.entries.iter().map(|(n, e)| (*n, e))
    }

    /// The members, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.entries.keys().copied()
    }

    /// How many members the table holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no member.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes the members exactly `members`: a new one starts alive at incarnation 0 (any
    /// news of it wins), a member that left is forgotten. Returns the members forgotten.
    pub fn set_members(&mut self, members: &[NodeId], now: Instant) -> Vec<NodeId> {
        let gone: Vec<NodeId> = self.entries.keys().copied().filter(|n| !members.contains(n)).collect();
        for n in &gone {
            self.entries.remove(n);
        }
        for &n in members {
            self.entries
                .entry(n)
                .or_insert(Entry { view: View { incarnation: 0, state: Liveness::Alive }, since: now });
        }
        gone
    }

    /// Merges news about `node`. Returns the state before when the news changed the view
    /// (even at the same state: a higher incarnation is new news to pass on), `None` when
    /// it is old news or `node` is not a member.
    pub fn merge(&mut self, node: NodeId, news: View, now: Instant) -> Option<Liveness> {
        let e = self.entries.get_mut(&node)?;
        if !e.view.overridden_by(news) {
            return None;
        }
        let before = e.view.state;
        if before != news.state {
            e.since = now;
        }
        e.view = news;
        Some(before)
    }
}
