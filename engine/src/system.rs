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
    LogEntry, Message, NodeAnnouncement, SystemCommand, SystemSnapshot, SystemState, system_command,
};

use crate::raft::{NodeId, Status};
use crate::runtime::SYSTEM_LOG_TYPE;
use crate::state_machine::{PartitionId, StateMachine};

/// The cluster as the system partition knows it: the latest announcement of each node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDirectory {
    /// node id → its announcement.
    pub nodes: BTreeMap<NodeId, NodeAnnouncement>,
}

impl ClusterDirectory {
    /// The client address `node` announced, if any.
    #[must_use]
    pub fn client_address(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.client_address.as_str()).filter(|a| !a.is_empty())
    }

    fn to_proto(&self) -> SystemState {
        SystemState { nodes: self.nodes.values().cloned().collect() }
    }

    fn from_proto(s: SystemState) -> Self {
        ClusterDirectory { nodes: s.nodes.into_iter().map(|n| (n.node_id, n)).collect() }
    }
}

/// The system state as the shard owning partition 0 sees it, shared with its state machine.
#[derive(Debug, Default)]
pub(crate) struct SystemView {
    pub directory: ClusterDirectory,
    /// Changed since the shard last broadcast it.
    pub changed: bool,
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

    fn apply_system(&mut self, entry: &LogEntry) {
        // Every replica decodes the same bytes: a malformed command is ignored everywhere.
        let Ok(cmd) = SystemCommand::decode(entry.payload.as_ref()) else {
            tracing::warn!(index = entry.index, "undecodable system command ignored");
            return;
        };
        match cmd.cmd {
            Some(system_command::Cmd::Announce(a)) if a.node_id != 0 => {
                let mut v = self.view.borrow_mut();
                if v.directory.nodes.get(&a.node_id) != Some(&a) {
                    v.directory.nodes.insert(a.node_id, a);
                    v.changed = true;
                }
            }
            _ => {}
        }
    }
}

impl StateMachine for SystemStateMachine {
    fn apply(&mut self, partition: PartitionId, entry: &LogEntry) -> Bytes {
        if entry.log_type == SYSTEM_LOG_TYPE {
            self.apply_system(entry);
            return Bytes::new();
        }
        self.user.apply(partition, entry)
    }

    fn restore_entry(&mut self, partition: PartitionId, entry: &LogEntry) {
        if entry.log_type == SYSTEM_LOG_TYPE {
            self.apply_system(entry);
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
}
