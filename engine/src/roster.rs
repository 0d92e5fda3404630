//! The roster: who belongs to the cluster, replicated on the system partition (issue 13,
//! item 1). A versioned record of members — id, Raft and client addresses, role (learner,
//! voter, leaving), the version that added each — that every partition's membership will
//! follow. Deterministic: every replica applies the same changes to the same roster and
//! reaches the same decision, so a change's outcome is part of the replicated state.
//!
//! Rules (what an operator of etcd or CockroachDB expects, and what keeps partitions able to
//! follow one change at a time):
//! - every change names the version it expects; another version is refused (`StaleVersion`),
//!   so two operators cannot both act on what they read;
//! - the first roster (`Seed`, version 0 → 1) is the initial cluster, every member a voter,
//!   and the number of partitions that follow it;
//! - one member at a time is in transition (a learner not yet promoted, or a voter leaving):
//!   a second join or removal is refused (`ChangeInFlight`) until the first finishes (a
//!   learner may be removed at any time), so partitions converge through one single-server
//!   change at a time;
//! - a transition completes by itself once every partition reported it done
//!   ([`Roster::note_progress`]): a learner caught up everywhere becomes a voter, a leaving
//!   voter dropped everywhere leaves the roster. So no partition ever has voters that left
//!   the roster in a majority, and a second removal cannot start before the first is done;
//! - ids and addresses are unique; re-adding a member as it is, promoting a voter, removing an
//!   absent id, or leaving twice change nothing (idempotent retries after a lost answer);
//! - no change may leave the roster without a voter (`InsufficientVoters`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use phalanx_proto::{MemberRole, RosterMember, roster_change};

use crate::raft::{NodeId, Status};

/// Most members a roster holds: the transport's bound on a cluster's nodes.
pub const MAX_MEMBERS: usize = phalanx_net::discovery::MAX_NODES;
/// Longest address (Raft or client) a member may have, in bytes: a DNS name and a port.
pub const MAX_ADDRESS_BYTES: usize = phalanx_net::discovery::MAX_HOST_BYTES + 6;

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Receives every partition's log; votes in none until promoted.
    Learner,
    /// Votes in every partition.
    Voter,
    /// Hands its leaderships over and is removed from every partition, then from the roster.
    Leaving,
}

impl Role {
    /// The name used in reports and JSON (`learner`, `voter`, `leaving`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Learner => "learner",
            Role::Voter => "voter",
            Role::Leaving => "leaving",
        }
    }

    fn from_proto(r: i32) -> Option<Role> {
        match MemberRole::try_from(r).ok()? {
            MemberRole::Learner => Some(Role::Learner),
            MemberRole::Voter => Some(Role::Voter),
            MemberRole::Leaving => Some(Role::Leaving),
            MemberRole::Unspecified => None,
        }
    }

    fn to_proto(self) -> MemberRole {
        match self {
            Role::Learner => MemberRole::Learner,
            Role::Voter => MemberRole::Voter,
            Role::Leaving => MemberRole::Leaving,
        }
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id (non-zero).
    pub id: NodeId,
    /// "host:port" of its Raft listener.
    pub raft_address: String,
    /// "host:port" of its client port ("" when it serves none or has not said).
    pub client_address: String,
    /// Its role.
    pub role: Role,
    /// The roster version that added it.
    pub joined_version: u64,
}

/// A change of the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The first roster (at version 0 only): these members, every one a voter, and the user
    /// partitions that follow it.
    Seed {
        /// The members: id, Raft address, client address.
        members: Vec<(NodeId, String, String)>,
        /// The user partitions (`1..=partitions`; partition 0 follows too).
        partitions: u32,
    },
    /// A new member (id, Raft address, client address), as a learner.
    Add(NodeId, String, String),
    /// A learner becomes a voter: only once every partition reported it caught up (which
    /// the roster does by itself, so an operator's promote confirms or says what is missing).
    Promote(NodeId),
    /// A member is removed: a learner at once (it votes nowhere); a voter becomes `Leaving`,
    /// hands its leaderships over and leaves the roster once every partition dropped it.
    Remove(NodeId),
}

/// Why a change was refused (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The roster is at another version than the change expected: read it again.
    StaleVersion {
        /// The version the change expected.
        expected: u64,
        /// The roster's version.
        current: u64,
    },
    /// Another member is in transition (joining as a learner, or leaving).
    ChangeInFlight {
        /// That member.
        member: NodeId,
    },
    /// No member has this id.
    UnknownMember(NodeId),
    /// The change would leave the roster without a voter.
    InsufficientVoters,
    /// The change is malformed or not allowed as it is (said why).
    Invalid(String),
}

impl Refusal {
    /// The refusal as the system partition answers it.
    #[must_use]
    pub fn to_proto(&self) -> phalanx_proto::RosterRefusal {
        use phalanx_proto::RosterRefusal as P;
        match self {
            Refusal::StaleVersion { .. } => P::StaleVersion,
            Refusal::ChangeInFlight { .. } => P::ChangeInFlight,
            Refusal::UnknownMember(_) => P::UnknownMember,
            Refusal::InsufficientVoters => P::InsufficientVoters,
            Refusal::Invalid(_) => P::Invalid,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::StaleVersion { expected, current } => {
                write!(f, "the roster is at version {current}, not {expected}: read it again")
            }
            Refusal::ChangeInFlight { member } => {
                write!(f, "member {member} is still joining or leaving: one change at a time")
            }
            Refusal::UnknownMember(id) => write!(f, "no member has id {id}"),
            Refusal::InsufficientVoters => f.write_str("the change would leave no voter"),
            Refusal::Invalid(why) => f.write_str(why),
        }
    }
}

/// The status a caller gets for a refusal (as the system partition answered it).
#[must_use]
pub fn refusal_status(r: phalanx_proto::RosterRefusal) -> Status {
    use phalanx_proto::RosterRefusal as P;
    match r {
        P::None => Status::Success,
        P::StaleVersion => Status::StaleMembership,
        P::ChangeInFlight => Status::ConcurrentMembershipChange,
        P::UnknownMember => Status::MemberNotFound,
        P::InsufficientVoters => Status::InsufficientVoters,
        P::Invalid => Status::InvalidRequest,
    }
}

/// What a roster change came to (`NodeHandle::change_roster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterResult {
    /// `Success` (applied, or already as asked), the refusal's status (`StaleMembership`,
    /// `ConcurrentMembershipChange`, `MemberNotFound`, `InsufficientVoters`,
    /// `InvalidRequest`), or why the change never reached the roster (`NodeIsNotLeader`,
    /// `ProposalTimeout`, ...).
    pub status: Status,
    /// The roster's version after the change (0 when it never reached the roster).
    pub version: u64,
    /// Whether the roster changed.
    pub changed: bool,
    /// Why it was refused, for people (empty on success).
    pub reason: String,
}

impl RosterResult {
    /// The result the system partition's answer `outcome` stands for.
    #[must_use]
    pub fn from_outcome(o: &phalanx_proto::RosterOutcome) -> RosterResult {
        let refusal = phalanx_proto::RosterRefusal::try_from(o.refusal)
            .unwrap_or(phalanx_proto::RosterRefusal::Invalid);
        RosterResult {
            status: refusal_status(refusal),
            version: o.version,
            changed: o.changed,
            reason: o.reason.clone(),
        }
    }

    /// A change that never reached the roster.
    #[must_use]
    pub fn failed(status: Status) -> RosterResult {
        RosterResult { status, version: 0, changed: false, reason: status.name().to_string() }
    }
}

/// The roster at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Its version: 0 before the seed, then one more per applied change.
    pub version: u64,
    /// Its members, by id.
    pub members: BTreeMap<NodeId, Member>,
    /// The user partitions that follow it (`1..=partitions`, and partition 0).
    pub partitions: u32,
    /// The partitions that reported the member in transition done (cleared at every version).
    pub progress: BTreeSet<u32>,
}

impl Roster {
    /// The voters' ids.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.values().filter(|m| m.role == Role::Voter).map(|m| m.id)
    }

    /// The member in transition (a learner or a leaving member), if any.
    #[must_use]
    pub fn in_transition(&self) -> Option<&Member> {
        self.members.values().find(|m| m.role != Role::Voter)
    }

    /// Applies `change` if the roster is at `expected_version`: `Ok(true)` when it changed
    /// (the version went up by one), `Ok(false)` when it already was as asked (idempotent),
    /// `Err` when refused (nothing changed).
    pub fn apply(&mut self, expected_version: u64, change: &Change) -> Result<bool, Refusal> {
        if expected_version != self.version {
            return Err(Refusal::StaleVersion { expected: expected_version, current: self.version });
        }
        let next = self.version + 1;
        let changed = self.decide(next, change)?;
        if changed {
            self.progress.clear();
        }
        Ok(changed)
    }

    fn decide(&mut self, next: u64, change: &Change) -> Result<bool, Refusal> {
        if self.version == 0 && !matches!(change, Change::Seed { .. }) {
            // Before the seed there is no cluster to change: a member added now would be the
            // only one, and every partition would follow it away from its real voters.
            return Err(Refusal::Invalid("the roster is not seeded yet: try again shortly".into()));
        }
        match change {
            Change::Seed { members, partitions } => {
                if self.version != 0 {
                    return Err(Refusal::Invalid(format!(
                        "the roster is already seeded (version {})",
                        self.version
                    )));
                }
                if members.is_empty() {
                    return Err(Refusal::InsufficientVoters);
                }
                let mut seeded = Roster {
                    version: next,
                    members: BTreeMap::new(),
                    partitions: *partitions,
                    progress: BTreeSet::new(),
                };
                for (id, raft, client) in members {
                    seeded.check_new(*id, raft, client)?;
                    seeded.members.insert(*id, member(*id, raft, client, Role::Voter, next));
                }
                *self = seeded;
                Ok(true)
            }
            Change::Add(id, raft, client) => {
                if let Some(m) = self.members.get(id)
                    && m.raft_address == *raft
                    && m.client_address == *client
                {
                    return Ok(false);
                }
                self.check_new(*id, raft, client)?;
                if let Some(m) = self.in_transition() {
                    return Err(Refusal::ChangeInFlight { member: m.id });
                }
                self.members.insert(*id, member(*id, raft, client, Role::Learner, next));
                self.version = next;
                Ok(true)
            }
            Change::Promote(id) => {
                let m = self.members.get(id).ok_or(Refusal::UnknownMember(*id))?;
                match m.role {
                    Role::Voter => Ok(false),
                    Role::Leaving => {
                        Err(Refusal::Invalid(format!("member {id} is leaving: it cannot be promoted")))
                    }
                    // Like etcd, only a learner that has caught up: a voter that never did (or
                    // never came) would count toward every partition's quorum while holding
                    // none of its log.
                    Role::Learner if self.progress.len() as u64 > u64::from(self.partitions) => {
                        self.set_role(*id, Role::Voter, next);
                        Ok(true)
                    }
                    Role::Learner => {
                        let missing: Vec<u32> =
                            self.partition_ids().filter(|p| !self.progress.contains(p)).collect();
                        Err(Refusal::Invalid(format!(
                            "member {id} has not caught up yet on partitions {missing:?}: the roster promotes it \
                             once every partition reports it caught up"
                        )))
                    }
                }
            }
            Change::Remove(id) => {
                let Some(m) = self.members.get(id) else { return Ok(false) };
                match m.role {
                    // Already on its way out.
                    Role::Leaving => Ok(false),
                    // It votes in no partition: gone at once (a stuck join is undone so).
                    Role::Learner => {
                        self.members.remove(id);
                        self.version = next;
                        Ok(true)
                    }
                    // Partitions drop it one single-server change at a time; the roster lets
                    // it go when all did, and starts no other transition meanwhile.
                    Role::Voter => {
                        if let Some(other) = self.in_transition() {
                            return Err(Refusal::ChangeInFlight { member: other.id });
                        }
                        if self.voters().all(|v| v == *id) {
                            return Err(Refusal::InsufficientVoters);
                        }
                        self.set_role(*id, Role::Leaving, next);
                        Ok(true)
                    }
                }
            }
        }
    }

    /// A member announced its client address (the seed and an operator's add may not know
    /// it): recorded when the member is at that Raft address and no other member has the
    /// address. Not a change of membership: the version stays. Returns whether it changed.
    pub fn note_client_address(&mut self, id: NodeId, raft: &str, client: &str) -> bool {
        if client.is_empty()
            || client.len() > MAX_ADDRESS_BYTES
            || self
                .members
                .values()
                .any(|m| m.id != id && (m.client_address == client || m.raft_address == client))
        {
            return false;
        }
        match self.members.get_mut(&id) {
            Some(m) if m.raft_address == raft && m.client_address != client => {
                m.client_address = client.to_string();
                true
            }
            _ => false,
        }
    }

    /// The partitions that follow the roster: 0 and the user partitions.
    pub fn partition_ids(&self) -> impl Iterator<Item = u32> + use<> {
        0..=self.partitions
    }

    /// Partition leaders report that the member in transition is done on `partitions` (a
    /// learner caught up, a leaving member dropped), as of roster `version`. A report for
    /// another version or member, or of partitions the roster does not have, changes
    /// nothing. When every partition has reported, the transition completes: the change
    /// that did it (`Promote` or `Remove`, the version one more) is returned.
    pub fn note_progress(&mut self, version: u64, member: NodeId, partitions: &[u32]) -> Option<Change> {
        let m = self.in_transition().filter(|m| m.id == member && version == self.version)?;
        let role = m.role;
        self.progress.extend(partitions.iter().copied().filter(|p| *p <= self.partitions));
        if self.progress.len() as u64 <= u64::from(self.partitions) {
            return None;
        }
        let next = self.version + 1;
        self.progress.clear();
        if role == Role::Learner {
            self.set_role(member, Role::Voter, next);
            Some(Change::Promote(member))
        } else {
            self.members.remove(&member);
            self.version = next;
            Some(Change::Remove(member))
        }
    }

    fn set_role(&mut self, id: NodeId, role: Role, next: u64) {
        if let Some(m) = self.members.get_mut(&id) {
            m.role = role;
            self.version = next;
        }
    }

    /// A new member's id and addresses: well formed, and used by no member yet.
    fn check_new(&self, id: NodeId, raft: &str, client: &str) -> Result<(), Refusal> {
        if id == 0 {
            return Err(Refusal::Invalid("node id 0 means 'no node'".into()));
        }
        if raft.is_empty() || raft.len() > MAX_ADDRESS_BYTES || client.len() > MAX_ADDRESS_BYTES {
            return Err(Refusal::Invalid(format!(
                "member {id}: a Raft address of 1..={MAX_ADDRESS_BYTES} bytes and a client address of at most as many"
            )));
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(Refusal::Invalid(format!("the roster holds at most {MAX_MEMBERS} members")));
        }
        if self.members.contains_key(&id) {
            return Err(Refusal::Invalid(format!("node id {id} is already a member (with other addresses)")));
        }
        for a in [raft, client].into_iter().filter(|a| !a.is_empty()) {
            if let Some(owner) = self.members.values().find(|m| m.raft_address == a || m.client_address == a)
            {
                return Err(Refusal::Invalid(format!("address {a} is already member {}'s", owner.id)));
            }
        }
        Ok(())
    }

    /// The roster as it is carried in partition 0's snapshot.
    #[must_use]
    pub fn to_proto(&self) -> phalanx_proto::Roster {
        phalanx_proto::Roster {
            version: self.version,
            members: self.members.values().map(member_to_proto).collect(),
            partitions: self.partitions,
            progress: self.progress.iter().copied().collect(),
        }
    }

    /// The roster from partition 0's snapshot; members with an unknown role or id 0 are
    /// dropped (a snapshot this code did not write), never a panic.
    #[must_use]
    pub fn from_proto(r: &phalanx_proto::Roster) -> Roster {
        let members = r
            .members
            .iter()
            .filter(|m| m.node_id != 0)
            .filter_map(|m| {
                Some((
                    m.node_id,
                    Member {
                        id: m.node_id,
                        raft_address: m.raft_address.clone(),
                        client_address: m.client_address.clone(),
                        role: Role::from_proto(m.role)?,
                        joined_version: m.joined_version,
                    },
                ))
            })
            .collect();
        let progress = r.progress.iter().copied().filter(|p| *p <= r.partitions).collect();
        Roster { version: r.version, members, partitions: r.partitions, progress }
    }
}

fn member(id: NodeId, raft: &str, client: &str, role: Role, joined_version: u64) -> Member {
    Member { id, raft_address: raft.to_string(), client_address: client.to_string(), role, joined_version }
}

fn member_to_proto(m: &Member) -> RosterMember {
    RosterMember {
        node_id: m.id,
        raft_address: m.raft_address.clone(),
        client_address: m.client_address.clone(),
        role: m.role.to_proto() as i32,
        joined_version: m.joined_version,
    }
}

impl Change {
    /// The change as a system command's payload part, against `expected_version`.
    #[must_use]
    pub fn to_proto(&self, expected_version: u64) -> phalanx_proto::RosterChange {
        use roster_change::Change as C;
        let new = |id: NodeId, raft: &str, client: &str| RosterMember {
            node_id: id,
            raft_address: raft.into(),
            client_address: client.into(),
            ..Default::default()
        };
        let change = match self {
            Change::Seed { members, partitions } => C::Seed(phalanx_proto::RosterSeed {
                members: members.iter().map(|(id, r, c)| new(*id, r, c)).collect(),
                partitions: *partitions,
            }),
            Change::Add(id, r, c) => C::Add(new(*id, r, c)),
            Change::Promote(id) => C::Promote(*id),
            Change::Remove(id) => C::Remove(*id),
        };
        phalanx_proto::RosterChange { expected_version, change: Some(change) }
    }

    /// A change read from a system command (`None`: no change in it).
    #[must_use]
    pub fn from_proto(c: &phalanx_proto::RosterChange) -> Option<(u64, Change)> {
        use roster_change::Change as C;
        let triple = |m: &RosterMember| (m.node_id, m.raft_address.clone(), m.client_address.clone());
        let change = match c.change.as_ref()? {
            C::Seed(s) => {
                Change::Seed { members: s.members.iter().map(triple).collect(), partitions: s.partitions }
            }
            C::Add(m) => {
                let (id, r, cl) = triple(m);
                Change::Add(id, r, cl)
            }
            C::Promote(id) => Change::Promote(*id),
            C::Remove(id) => Change::Remove(*id),
        };
        Some((c.expected_version, change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u64, partitions: u32) -> Change {
        let members = (1..=n).map(|i| (i, format!("h:{i}"), format!("c:{i}"))).collect();
        Change::Seed { members, partitions }
    }

    fn seeded(n: u64) -> Roster {
        let mut r = Roster::default();
        assert_eq!(r.apply(0, &seed(n, 2)), Ok(true));
        r
    }

    fn add(id: NodeId) -> Change {
        Change::Add(id, format!("h:{id}"), format!("c:{id}"))
    }

    #[test]
    fn the_seed_makes_version_one_with_every_member_a_voter() {
        let r = seeded(3);
        assert_eq!(r.version, 1);
        assert_eq!(r.partitions, 2);
        assert_eq!(r.partition_ids().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(r.voters().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(r.members.values().all(|m| m.joined_version == 1));
        let mut again = r.clone();
        assert!(matches!(again.apply(1, &seed(1, 2)), Err(Refusal::Invalid(_))));
        assert_eq!(again, r);
        // A seed that lists an id or an address twice is refused whole.
        let mut empty = Roster::default();
        let twice = vec![(1, "a:1".into(), String::new()), (2, "a:1".into(), String::new())];
        assert!(matches!(
            empty.apply(0, &Change::Seed { members: twice, partitions: 1 }),
            Err(Refusal::Invalid(_))
        ));
        assert_eq!(empty, Roster::default());
        // Nothing but the seed changes an unseeded roster.
        for c in [add(1), Change::Promote(1), Change::Remove(1)] {
            assert!(
                matches!(empty.apply(0, &c), Err(Refusal::Invalid(m)) if m.contains("not seeded")),
                "{c:?}"
            );
        }
        assert_eq!(empty, Roster::default());
        assert_eq!(
            empty.apply(0, &Change::Seed { members: Vec::new(), partitions: 1 }),
            Err(Refusal::InsufficientVoters)
        );
    }

    #[test]
    fn a_join_is_a_learner_then_a_voter_one_at_a_time() {
        let mut r = seeded(3);
        assert_eq!(r.apply(1, &add(4)), Ok(true));
        assert_eq!(r.members[&4].role, Role::Learner);
        assert_eq!(r.members[&4].joined_version, 2);
        // The same add again (a retry after a lost answer) changes nothing.
        assert_eq!(r.apply(2, &add(4)), Ok(false));
        // A second join waits for the first, and so does removing a voter.
        assert_eq!(r.apply(2, &add(5)), Err(Refusal::ChangeInFlight { member: 4 }));
        assert_eq!(r.apply(2, &Change::Remove(1)), Err(Refusal::ChangeInFlight { member: 4 }));
        // Not before it caught up on every partition.
        assert!(
            matches!(r.apply(2, &Change::Promote(4)), Err(Refusal::Invalid(m)) if m.contains("[0, 1, 2]"))
        );
        assert_eq!(r.note_progress(2, 4, &[0, 1, 2]), Some(Change::Promote(4)));
        assert_eq!(r.version, 3);
        assert_eq!(r.apply(3, &Change::Promote(4)), Ok(false));
        assert_eq!(r.apply(3, &add(5)), Ok(true));
        assert_eq!(r.voters().count(), 4);
    }

    #[test]
    fn a_learner_is_promoted_once_every_partition_reported_it_caught_up() {
        let mut r = seeded(3);
        r.apply(1, &add(4)).expect("joins");
        // Reports of another version, another member, or unknown partitions count for nothing.
        assert_eq!(r.note_progress(1, 4, &[0, 1, 2]), None);
        assert_eq!(r.note_progress(2, 3, &[0, 1, 2]), None);
        assert_eq!(r.note_progress(2, 4, &[0, 7]), None);
        assert_eq!(r.progress, BTreeSet::from([0]));
        assert_eq!(r.note_progress(2, 4, &[1, 0]), None);
        assert_eq!(r.members[&4].role, Role::Learner);
        assert_eq!(r.note_progress(2, 4, &[2]), Some(Change::Promote(4)));
        assert_eq!((r.version, r.members[&4].role), (3, Role::Voter));
        assert!(r.progress.is_empty());
        // Nothing is in transition: reports change nothing.
        let before = r.clone();
        assert_eq!(r.note_progress(3, 4, &[0, 1, 2]), None);
        assert_eq!(r, before);
    }

    #[test]
    fn a_removed_voter_leaves_once_every_partition_dropped_it() {
        let mut r = seeded(3);
        assert_eq!(r.apply(1, &Change::Remove(3)), Ok(true));
        assert_eq!(r.members[&3].role, Role::Leaving);
        assert_eq!(r.voters().collect::<Vec<_>>(), vec![1, 2]);
        // Removing it again changes nothing; no other transition starts meanwhile.
        assert_eq!(r.apply(2, &Change::Remove(3)), Ok(false));
        assert_eq!(r.apply(2, &Change::Remove(2)), Err(Refusal::ChangeInFlight { member: 3 }));
        assert_eq!(r.apply(2, &add(4)), Err(Refusal::ChangeInFlight { member: 3 }));
        // A leaving member cannot be promoted back.
        assert!(matches!(r.apply(2, &Change::Promote(3)), Err(Refusal::Invalid(_))));
        assert_eq!(r.note_progress(2, 3, &[0, 1]), None);
        assert_eq!(r.note_progress(2, 3, &[2]), Some(Change::Remove(3)));
        assert_eq!((r.version, r.members.contains_key(&3)), (3, false));
        assert_eq!(r.apply(3, &add(4)), Ok(true));
    }

    #[test]
    fn removing_never_leaves_the_roster_without_a_voter() {
        let mut r = seeded(2);
        assert_eq!(r.apply(1, &Change::Remove(1)), Ok(true));
        r.note_progress(2, 1, &[0, 1, 2]).expect("done");
        // Node 2 is now the only voter: it cannot be removed.
        assert_eq!(r.apply(3, &Change::Remove(2)), Err(Refusal::InsufficientVoters));
        // Removing an absent member changes nothing; promoting one is refused.
        assert_eq!(r.apply(3, &Change::Remove(1)), Ok(false));
        assert_eq!(r.apply(3, &Change::Promote(1)), Err(Refusal::UnknownMember(1)));
    }

    #[test]
    fn a_stuck_learner_is_removed_at_once() {
        let mut r = seeded(3);
        r.apply(1, &add(4)).expect("joins");
        r.note_progress(2, 4, &[0]);
        // The learner that never caught up is removed even though it is the one in transition.
        assert_eq!(r.apply(2, &Change::Remove(4)), Ok(true));
        assert_eq!(r.in_transition(), None);
        assert!(r.progress.is_empty());
    }

    #[test]
    fn an_announced_client_address_fills_the_member_without_a_version() {
        let mut r = Roster::default();
        let members = vec![(1, "h:1".into(), String::new()), (2, "h:2".into(), "c:2".into())];
        r.apply(0, &Change::Seed { members, partitions: 1 }).expect("seeds");
        assert!(r.note_client_address(1, "h:1", "c:1"));
        assert_eq!((r.version, r.members[&1].client_address.as_str()), (1, "c:1"));
        assert!(!r.note_client_address(1, "h:1", "c:1"), "already so");
        assert!(!r.note_client_address(1, "h:1", "c:2"), "member 2's");
        assert!(!r.note_client_address(1, "elsewhere:1", "c:9"), "another Raft address");
        assert!(!r.note_client_address(7, "h:7", "c:7"), "not a member");
        assert_eq!(r.members[&1].client_address, "c:1");
    }

    #[test]
    fn the_roster_and_its_changes_survive_their_encoding() {
        let mut r = seeded(3);
        r.apply(1, &add(4)).expect("joins");
        r.note_progress(2, 4, &[1]);
        assert_eq!(Roster::from_proto(&r.to_proto()), r);
        for c in [seed(1, 4), add(4), Change::Promote(4), Change::Remove(3)] {
            assert_eq!(Change::from_proto(&c.to_proto(7)), Some((7, c)));
        }
        // Members this code cannot read are dropped, not a panic.
        let mut p = r.to_proto();
        p.members[0].role = 99;
        p.members[1].node_id = 0;
        p.progress.push(1000);
        let read = Roster::from_proto(&p);
        assert_eq!(read.members.len(), 2);
        assert_eq!(read.progress, BTreeSet::from([1]));
    }
}
