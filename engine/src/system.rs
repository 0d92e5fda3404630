//! The system partition (0): its state machine and the cluster state it replicates.
//!
//! Entries of the reserved `_RaftSystem` log type carry `SystemCommand`s: today, node
//! announcements (where each node's Raft and client ports are). They are applied by the
//! engine itself; every other entry of partition 0 goes to the application's state machine,
//! so applications may co-locate state with the system partition. When the system state
//! changes, the owning shard (0) broadcasts it to every shard over the bus and publishes it to
//! handles.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use phalanx_proto::{
    LogEntry, Message, NodeAnnouncement, RosterOutcome, SystemCommand, SystemSnapshot, SystemState,
    system_command,
};

use crate::raft::{NodeId, Status};
use crate::roster::{Change, Refusal, Roster};
use crate::runtime::SYSTEM_LOG_TYPE;
use crate::state_machine::{PartitionId, StateMachine};

/// The cluster as the system partition knows it: the latest announcement of each node, and
/// the roster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDirectory {
    /// node id → its announcement.
    pub nodes: BTreeMap<NodeId, NodeAnnouncement>,
    /// Who belongs to the cluster (version 0 until seeded).
    pub roster: Roster,
}

impl ClusterDirectory {
    /// The client address `node` announced, if any.
    #[must_use]
    pub fn client_address(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.client_address.as_str()).filter(|a| !a.is_empty())
    }

    fn to_proto(&self) -> SystemState {
        SystemState { nodes: self.nodes.values().cloned().collect(), roster: Some(self.roster.to_proto()) }
    }

    fn from_proto(s: SystemState) -> Self {
        ClusterDirectory {
            nodes: s.nodes.into_iter().map(|n| (n.node_id, n)).collect(),
            roster: s.roster.as_ref().map(Roster::from_proto).unwrap_or_default(),
        }
    }
}

/// The system state as the shard owning partition 0 sees it, shared with its state machine.
#[derive(Debug, Default)]
pub(crate) struct SystemView {
    pub directory: ClusterDirectory,
    /// Changed since the shard last broadcast it.
    pub changed: bool,
    /// Roster changes applied since the shard last published events, in order: (the
    /// roster's version after each, the change).
    pub roster_changes: Vec<(u64, Change)>,
}

/// Partition 0's state machine: system commands here, everything else to the application's.
pub(crate) struct SystemStateMachine {
    user: Box<dyn StateMachine>,
    view: Rc<RefCell<SystemView>>,
}

impl SystemStateMachine {
    pub(crate) fn new(user: Box<dyn StateMachine>, view: Rc<RefCell<SystemView>>) -> Self {
        SystemStateMachine { user, view }
    }

    /// Applies one system command; answers what a roster change decided (empty for the
    /// rest).
    fn apply_system(&mut self, entry: &LogEntry) -> Bytes {
        // Every replica decodes the same bytes: a malformed command is ignored everywhere.
        let Ok(cmd) = SystemCommand::decode(entry.payload.as_ref()) else {
            tracing::warn!(index = entry.index, "undecodable system command ignored");
            return Bytes::new();
        };
        let mut v = self.view.borrow_mut();
        match cmd.cmd {
            Some(system_command::Cmd::Announce(a)) if a.node_id != 0 => {
                if v.directory.roster.note_client_address(a.node_id, &a.raft_address, &a.client_address) {
                    v.changed = true;
                }
                if v.directory.nodes.get(&a.node_id) != Some(&a) {
                    v.directory.nodes.insert(a.node_id, a);
                    v.changed = true;
                }
                Bytes::new()
            }
            Some(system_command::Cmd::RosterChange(c)) => {
                let Some((expected, change)) = Change::from_proto(&c) else {
                    let invalid = Refusal::Invalid("a roster change with no change in it".into());
                    return outcome(&v.directory.roster, Err(&invalid));
                };
                let decided = v.directory.roster.apply(expected, &change);
                if decided == Ok(true) {
                    let version = v.directory.roster.version;
                    v.roster_changes.push((version, change));
                    v.changed = true;
                }
                outcome(&v.directory.roster, decided.as_ref().map(|c| *c))
            }
            Some(system_command::Cmd::MemberProgress(p)) => {
                let roster = &mut v.directory.roster;
                let before = roster.progress.len();
                let completed = roster.note_progress(p.version, p.member, &p.partitions);
                let version = roster.version;
                // Published when it grew too, so reporters stop repeating what is recorded.
                v.changed |= completed.is_some() || v.directory.roster.progress.len() != before;
                if let Some(change) = completed {
                    v.roster_changes.push((version, change));
                }
                Bytes::new()
            }
            _ => Bytes::new(),
        }
    }
}

impl StateMachine for SystemStateMachine {
    fn apply(&mut self, partition: PartitionId, entry: &LogEntry) -> Bytes {
        if entry.log_type == SYSTEM_LOG_TYPE {
            return self.apply_system(entry);
        }
        self.user.apply(partition, entry)
    }

    fn restore_entry(&mut self, partition: PartitionId, entry: &LogEntry) {
        if entry.log_type == SYSTEM_LOG_TYPE {
            let _ = self.apply_system(entry);
        } else {
            self.user.restore_entry(partition, entry);
        }
    }

    fn restore_started(&mut self, partition: PartitionId) {
        self.user.restore_started(partition);
    }

    fn restore_finished(&mut self, partition: PartitionId) {
        self.user.restore_finished(partition);
    }

    fn replication_error(&mut self, partition: PartitionId, status: Status) {
        self.user.replication_error(partition, status);
    }

    fn leader_changed(&mut self, partition: PartitionId, leader: Option<NodeId>) {
        self.user.leader_changed(partition, leader);
    }

    fn snapshot(&mut self, partition: PartitionId) -> Bytes {
        let system = Some(self.view.borrow().directory.to_proto());
        SystemSnapshot { system, application: self.user.snapshot(partition) }.encode_to_vec().into()
    }

    fn restore(&mut self, partition: PartitionId, image: &[u8]) {
        match SystemSnapshot::decode(image) {
            Ok(s) => {
                let mut v = self.view.borrow_mut();
                v.directory = ClusterDirectory::from_proto(s.system.unwrap_or_default());
                v.changed = true;
                drop(v);
                self.user.restore(partition, &s.application);
            }
            Err(e) => tracing::error!("undecodable system partition snapshot: {e}"),
        }
    }

    fn query(&self, partition: PartitionId, query: &[u8]) -> Result<Bytes, Status> {
        self.user.query(partition, query)
    }
}

/// What a roster change decided, as the system partition answers it.
fn outcome(roster: &Roster, decided: Result<bool, &Refusal>) -> Bytes {
    let o = match decided {
        Ok(changed) => RosterOutcome { version: roster.version, changed, ..Default::default() },
        Err(r) => RosterOutcome {
            refusal: r.to_proto() as i32,
            version: roster.version,
            changed: false,
            reason: r.to_string(),
        },
    };
    o.encode_to_vec().into()
}

/// The `_RaftSystem` payload of a roster change against `expected_version`.
#[must_use]
pub fn roster_change(expected_version: u64, change: &Change) -> Bytes {
    let c = change.to_proto(expected_version);
    SystemCommand { cmd: Some(system_command::Cmd::RosterChange(c)) }.encode_to_vec().into()
}

/// The `_RaftSystem` payload reporting `member`'s progress on `partitions` as of
/// roster `version` (see [`Roster::note_progress`]).
#[must_use]
pub fn member_progress(version: u64, member: NodeId, partitions: Vec<u32>) -> Bytes {
    let p = phalanx_proto::MemberProgress { version, member, partitions };
    SystemCommand { cmd: Some(system_command::Cmd::MemberProgress(p)) }.encode_to_vec().into()
}

/// The `_RaftSystem` payload announcing a node.
#[must_use]
pub fn announcement(a: NodeAnnouncement) -> Bytes {
    SystemCommand { cmd: Some(system_command::Cmd::Announce(a)) }.encode_to_vec().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::NoopStateMachine;

    #[test]
    fn announcements_update_the_directory_and_survive_snapshots() {
        let view = Rc::new(RefCell::new(SystemView::default()));
        let mut sm = SystemStateMachine::new(Box::new(NoopStateMachine), view.clone());
        let a = NodeAnnouncement {
            node_id: 3,
            raft_address: "h:1".into(),
            client_address: "h:2".into(),
            shards: 2,
        };
        let e = LogEntry {
            log_type: SYSTEM_LOG_TYPE.into(),
            payload: announcement(a.clone()),
            ..Default::default()
        };
        sm.apply(0, &e);
        assert!(view.borrow().changed);
        assert_eq!(view.borrow().directory.client_address(3), Some("h:2"));
        let image = sm.snapshot(0);
        let view2 = Rc::new(RefCell::new(SystemView::default()));
        let mut sm2 = SystemStateMachine::new(Box::new(NoopStateMachine), view2.clone());
        sm2.restore(0, &image);
        assert_eq!(view2.borrow().directory, view.borrow().directory);
        // Garbage is ignored, not a crash.
        let bad = LogEntry {
            log_type: SYSTEM_LOG_TYPE.into(),
            payload: Bytes::from_static(b"\xff\xff"),
            ..Default::default()
        };
        sm2.apply(0, &bad);
    }

    fn system_entry(payload: Bytes) -> LogEntry {
        LogEntry { log_type: SYSTEM_LOG_TYPE.into(), payload, ..Default::default() }
    }

    fn decided(answer: &Bytes) -> RosterOutcome {
        RosterOutcome::decode(answer.as_ref()).expect("an outcome")
    }

    /// Issue 13, item 1: roster changes are system commands; every replica decides the same,
    /// answers the proposer with the outcome, queues one event per applied change, and a
    /// snapshot carries the roster, so a compacted log still restores it.
    #[test]
    fn roster_changes_are_decided_by_every_replica_and_survive_snapshots() {
        use phalanx_proto::RosterRefusal;
        let view = Rc::new(RefCell::new(SystemView::default()));
        let mut sm = SystemStateMachine::new(Box::new(NoopStateMachine), view.clone());
        let members = (1..=3).map(|i| (i, format!("h:{i}"), String::new())).collect();
        let seed = Change::Seed { members, partitions: 1 };
        let o = decided(&sm.apply(0, &system_entry(roster_change(0, &seed))));
        assert_eq!((o.refusal, o.version, o.changed), (0, 1, true));
        let add = Change::Add(4, "h:4".into(), "c:4".into());
        // Against a stale version: refused, nothing changes, no event.
        let o = decided(&sm.apply(0, &system_entry(roster_change(0, &add))));
        assert_eq!(o.refusal, RosterRefusal::StaleVersion as i32);
        assert!(o.reason.contains("version 1"), "{}", o.reason);
        let o = decided(&sm.apply(0, &system_entry(roster_change(1, &add))));
        assert_eq!((o.refusal, o.version, o.changed), (0, 2, true));
        let o = decided(
            &sm.apply(0, &system_entry(roster_change(2, &Change::Add(5, "h:5".into(), String::new())))),
        );
        assert_eq!(o.refusal, RosterRefusal::ChangeInFlight as i32);
        // A command with no change in it is refused as invalid, not a crash.
        let empty = SystemCommand {
            cmd: Some(system_command::Cmd::RosterChange(phalanx_proto::RosterChange::default())),
        };
        let o = decided(&sm.apply(0, &system_entry(empty.encode_to_vec().into())));
        assert_eq!(o.refusal, RosterRefusal::Invalid as i32);
        let v = view.borrow();
        assert_eq!(v.roster_changes, vec![(1, seed), (2, add)]);
        assert_eq!(v.directory.roster.members[&4].role, crate::roster::Role::Learner);
        drop(v);
        let image = sm.snapshot(0);
        let view2 = Rc::new(RefCell::new(SystemView::default()));
        let mut sm2 = SystemStateMachine::new(Box::new(NoopStateMachine), view2.clone());
        sm2.restore(0, &image);
        assert_eq!(view2.borrow().directory.roster, view.borrow().directory.roster);
        // The restored replica decides the next change as the others do.
        let o = decided(&sm2.apply(0, &system_entry(roster_change(2, &Change::Promote(4)))));
        assert_eq!((o.refusal, o.version), (RosterRefusal::Invalid as i32, 2), "not caught up yet");
        // Partition leaders report it caught up: once every partition did, it is a voter.
        sm2.apply(0, &system_entry(member_progress(2, 4, vec![1])));
        assert_eq!(view2.borrow().directory.roster.progress.len(), 1);
        sm2.apply(0, &system_entry(member_progress(2, 4, vec![0])));
        let v = view2.borrow();
        assert_eq!(
            (v.directory.roster.version, v.directory.roster.members[&4].role),
            (3, crate::roster::Role::Voter)
        );
        assert_eq!(v.roster_changes.last(), Some(&(3, Change::Promote(4))));
    }
}
