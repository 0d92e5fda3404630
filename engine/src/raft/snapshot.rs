//! Compaction and snapshots (§7). Entries below the last committed checkpoint may be
//! discarded once the state machine has a snapshot covering them; a follower that needs
//! discarded entries (`SnapshotRequired`) receives the snapshot in chunks, one in flight at
//! a time, each answered with the offset the follower expects next.

use bytes::Bytes;
use phalanx_proto::{InstallSnapshotChunk, InstallSnapshotResponse, raft_message::Body};

use super::group::RaftGroup;
use super::progress::ProgressState;
use super::replication::IfEmpty;
use super::status::Status;
use super::two_step::TwoStep;
use super::types::{Membership, NodeId, Snapshot, SnapshotMeta};

/// A snapshot being received chunk by chunk.
#[derive(Clone, Debug)]
pub struct IncomingSnapshot {
    index: u64,
    term: u64,
    total: u64,
    data: Vec<u8>,
}

impl RaftGroup {
    /// Takes a state machine snapshot at the applied index and compacts the log below the
    /// last applied checkpoint. `data` is the state machine image as of `log().applied()`.
    ///
    /// Call it only between `advance` and the next `ready` (no Ready outstanding), so the
    /// image, the applied index and the pending two-step proposals describe one moment;
    /// otherwise it answers `Busy`. Returns the new compaction floor. The shell must make the
    /// snapshot durable before it applies the `compact_to` of the next Ready.
    pub fn compact(&mut self, data: Bytes) -> Result<u64, Status> {
        if self.has_outstanding_ready() || self.log.has_committed_to_apply() {
            return Err(Status::Busy);
        }
        let applied = self.log.applied();
        let Some(term) = self.log.term(applied) else {
            return Err(Status::Errored);
        };
        let meta = SnapshotMeta {
            index: applied,
            term,
            membership: self.conf.at(applied).clone(),
            pending_two_step: self.two_step.pending_entries(),
        };
        self.snapshot = Some(Box::new(Snapshot { meta, data }));
        // Kommander's rule: only history older than the last committed checkpoint goes.
        let floor = self.last_checkpoint.saturating_sub(1).min(applied);
        if floor > self.log.floor_index() {
            self.log.compact(floor);
            self.conf.on_compact(floor);
            self.pipe().compact_to = Some(floor);
        }
        Ok(self.log.floor_index())
    }

    /// Leader: the follower needs entries below the floor; start sending the snapshot.
    pub(super) fn start_snapshot(&mut self, to: NodeId) {
        let index = self
            .snapshot
            .as_ref()
            .map(|s| s.meta.index)
            .expect("a compacted log always has a snapshot (compact() stores it first)");
        let Some(pr) = self.progress.get_mut(&to) else { return };
        pr.become_snapshot(index);
        self.stats_mut().snapshots_sent += 1;
        self.send_snapshot_chunk(to);
    }

    /// Leader: sends the next chunk of the snapshot to `to` (from its recorded offset).
    pub(super) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(snap) = self.snapshot.as_ref() else { return };
        let Some(pr) = self.progress.get_mut(&to) else { return };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if pr.snapshot_index != snap.meta.index {
            // We compacted again since: send the newer snapshot from the start.
            pr.become_snapshot(snap.meta.index);
        }
        let total = snap.data.len() as u64;
        let offset = pr.snapshot_offset.min(total);
        let end = (offset + self.cfg.snapshot_chunk_bytes as u64).min(total);
        let done = end == total;
        let chunk = InstallSnapshotChunk {
            term: self.term,
            last_included_index: snap.meta.index,
            last_included_term: snap.meta.term,
            conf_state: Some(snap.meta.membership.to_proto()),
            offset,
            data: snap.data.slice(offset as usize..end as usize),
            done,
            pending_two_step: if done { snap.meta.pending_two_step.clone() } else { Vec::new() },
            total_size: total,
        };
        self.send(to, Body::Snapshot(Box::new(chunk)));
    }

    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, resp: InstallSnapshotResponse) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_heard = self.now;
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if resp.installed {
            pr.matched = pr.matched.max(resp.snapshot_index);
            pr.snapshot_index = resp.snapshot_index;
            pr.become_probe();
            self.send_appends(from, IfEmpty::Skip);
        } else if resp.snapshot_index == pr.snapshot_index && resp.next_offset != pr.snapshot_offset {
            // An answer naming the offset we last sent from says the follower has not
            // received that chunk yet: it is in flight (its own answer will come) or lost
            // (the heartbeat answer resends it). Acting on it would send a second copy, and
            // every copy would be answered and sent on in turn: a duplicate chunk stream for
            // the rest of the transfer, one more per heartbeat.
            pr.snapshot_offset = resp.next_offset;
            self.send_snapshot_chunk(from);
        }
    }

    /// Follower: one chunk from the leader.
    pub(super) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        c: InstallSnapshotChunk,
    ) -> Result<(), Status> {
        let index = c.last_included_index;
        let reply = |next_offset: u64, installed: bool, term: u64| {
            Body::SnapshotResponse(InstallSnapshotResponse {
                term,
                snapshot_index: index,
                next_offset,
                installed,
            })
        };
        if index <= self.log.committed() {
            // We already hold everything it covers (committed entries match the leader's).
            self.incoming_snapshot = None;
            let r = reply(c.total_size, true, self.term);
            self.send_after_persist(from, r);
            return Ok(());
        }
        // The log continues at index + 1, which must be representable.
        if c.total_size > self.cfg.max_snapshot_bytes as u64 || c.conf_state.is_none() || index == u64::MAX {
            return self.reject(Status::InvalidRequest);
        }
        let same = |inc: &IncomingSnapshot| inc.index == index && inc.term == c.last_included_term;
        if c.offset == 0 && !self.incoming_snapshot.as_deref().is_some_and(same) {
            let cap = (c.total_size as usize).min(self.cfg.snapshot_chunk_bytes.saturating_mul(4));
            self.incoming_snapshot = Some(Box::new(IncomingSnapshot {
                index,
                term: c.last_included_term,
                total: c.total_size,
                data: Vec::with_capacity(cap),
            }));
        }
        let term = self.term;
        let Some(inc) = self.incoming_snapshot.as_mut() else {
            self.send(from, reply(0, false, term));
            return Ok(());
        };
        if inc.index != index || inc.term != c.last_included_term || inc.total != c.total_size {
            self.send(from, reply(0, false, term));
            return Ok(());
        }
        if c.offset != inc.data.len() as u64 {
            let have = inc.data.len() as u64;
            self.send(from, reply(have, false, term));
            return Ok(());
        }
        if inc.data.len() as u64 + c.data.len() as u64 > inc.total {
            self.incoming_snapshot = None;
            return self.reject(Status::InvalidRequest);
        }
        inc.data.extend_from_slice(&c.data);
        if !c.done {
            let have = inc.data.len() as u64;
            self.send(from, reply(have, false, term));
            return Ok(());
        }
        let Some(inc) = self.incoming_snapshot.take() else { return Ok(()) };
        if inc.data.len() as u64 != inc.total {
            return self.reject(Status::InvalidRequest);
        }
        let membership = Membership::from_proto(c.conf_state.as_ref().expect("checked above"));
        if membership.voters.is_empty() {
            return self.reject(Status::InvalidRequest);
        }
        let snap = Snapshot {
            meta: SnapshotMeta { index, term: inc.term, membership, pending_two_step: c.pending_two_step },
            data: Bytes::from(inc.data),
        };
        self.install_snapshot(snap);
        self.send_after_persist(from, reply(inc.total, true, term));
        Ok(())
    }

    /// Replaces log, membership and two-step state with a received snapshot; the shell gets
    /// it in the next Ready to persist and to restore its state machine from.
    fn install_snapshot(&mut self, snap: Snapshot) {
        let SnapshotMeta { index, term, .. } = snap.meta;
        self.log.restore_snapshot(index, term);
        self.conf.on_snapshot(index, snap.meta.membership.clone());
        // If the log did not hold the snapshot's last entry it was discarded whole, and with it
        // any configuration entries above the snapshot.
        self.conf.on_truncate(self.log.last_index() + 1);
        self.two_step = TwoStep::from_entries(&snap.meta.pending_two_step);
        self.last_checkpoint = 0;
        self.snapshot = Some(Box::new(snap.clone()));
        self.pipe().snapshot_to_install = Some(Box::new(snap));
    }
}
