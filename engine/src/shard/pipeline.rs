//! The Ready pipeline: every group's Ready becomes messages for the outbox, applied entries
//! and answers, and one write job for the log writer; a completed job releases the messages
//! that needed durable state and acknowledges the Ready.

use bytes::Bytes;
use phalanx_proto::LogEntry;
use phalanx_storage::{LogPosition, PartitionWrite, WriteBatch};

use super::ShardCore;
use super::request::Answer;
use super::waiters::ReadKind;
use super::write::{Completion, WriteJob};
use crate::Error;
use crate::events::Event;
use crate::raft::{LEADER_CHECKPOINT, LogFetch, Ready, Status};
use crate::state_machine::PartitionId;

/// Ready rounds per loop turn: each round may enable another (an acknowledgement that lets
/// the leader commit), but a turn must end so inputs and ticks are served.
const MAX_READY_ROUNDS_PER_TURN: usize = 8;
/// Write jobs handed out and not durable yet; beyond it the shard stops collecting Readies
/// (inputs still queue in the groups) until writes complete.
pub(crate) const MAX_WRITES_IN_FLIGHT: usize = 256;

impl<R> ShardCore<R> {
    /// Steps 3–4 of the loop for every Ready available now: messages to the outbox, entries
    /// applied and callers answered, the persistent part into write jobs; then the turn's
    /// messages are cut into frames.
    pub fn process_readies(&mut self) {
        self.release_held();
        for _ in 0..MAX_READY_ROUNDS_PER_TURN {
            if self.writes_in_flight >= MAX_WRITES_IN_FLIGHT {
                break;
            }
            let Some(mut mr) = self.multi.ready() else { break };
            if let Some(observe) = &mut self.observer {
                for (p, r) in &mr.groups {
                    if let Some(g) = self.multi.group(*p) {
                        observe(g, r);
                    }
                }
            }
            // Sent at the end of the turn, still before this Ready's write.
            for (_, r) in &mut mr.groups {
                self.outbox.append(&mut r.messages);
            }
            let mut job = WriteJob {
                number: mr.number,
                batch: WriteBatch::default(),
                snapshots: Vec::new(),
                // Checkpoint snapshots taken since the last job: this job's batch carries their
                // compaction, which the writer holds back until they are saved.
                checkpoints: std::mem::take(&mut self.snapshots_to_save),
                persisted_messages: Vec::new(),
                fetches: Vec::new(),
            };
            for (p, r) in &mut mr.groups {
                job.persisted_messages.append(&mut r.persisted_messages);
                job.fetches.extend(r.fetches.drain(..).map(|f| (*p, f)));
                if let Some(s) = &r.snapshot {
                    job.snapshots.push((*p, s.clone()));
                }
                let w = PartitionWrite {
                    partition: *p,
                    snapshot: r.snapshot.as_ref().map(|s| LogPosition::new(s.meta.index, s.meta.term)),
                    entries: std::mem::take(&mut r.entries),
                    hard_state: r.hard_state,
                    compact_to: r.compact_to,
                };
                if !w.is_empty() {
                    job.batch.partitions.push(w);
                }
            }
            let mut system_touched = false;
            for (p, r) in mr.groups {
                system_touched |= p == 0;
                self.apply_ready(p, r);
            }
            if system_touched {
                self.publish_system_state();
                let now = self.now;
                self.check_leader_waiters(now);
            }
            self.writes_in_flight += 1;
            if self.writes_in_flight == 1
                && job.batch.is_empty()
                && job.snapshots.is_empty()
                && job.fetches.is_empty()
            {
                // Nothing to make durable and nothing queued before it: done now.
                self.durable(job.number, job.persisted_messages, Vec::new());
                continue;
            }
            self.out.writes.push(job);
        }
        // Every message of the turn at once (see `outbox.rs`), with the failure detector's
        // news for peers the frames go to anyway.
        self.piggyback_gossip();
        let before = self.out.frames.len();
        self.outbox.flush(self.limits.peer_batch_bytes_max, &mut self.out.frames, self.now);
        let sent = &self.out.frames[before..];
        self.counters.batches_sent += sent.len() as u64;
        self.counters.messages_sent += sent.iter().map(|(_, b)| b.messages.len() as u64).sum::<u64>();
    }

    /// Step 5: the writer finished a job. `Err` is fatal for the shard: the store failed
    /// (never retry a failed sync), so nothing more may be acknowledged.
    pub fn on_durable(&mut self, c: Completion) -> Result<(), Error> {
        for (p, reason) in c.refused {
            self.stop_partition(p, reason);
        }
        c.result?;
        self.durable(c.number, c.persisted_messages, c.fetched);
        // Sent with the turn's other messages (`process_readies` flushes the outbox).
        Ok(())
    }

    /// The job numbered `number` is durable.
    fn durable(
        &mut self,
        number: u64,
        persisted_messages: Vec<phalanx_proto::RaftMessage>,
        fetched: Vec<(PartitionId, LogFetch, Vec<LogEntry>)>,
    ) {
        self.writes_in_flight -= 1;
        self.outbox.extend(persisted_messages);
        self.multi.advance(number);
        for (p, f, entries) in fetched {
            self.multi.update(p, |g| g.on_entries_fetched(f.to, f.lo, entries));
        }
        self.serve_reads();
        if self.writes_in_flight == 0 {
            self.compact_behind_checkpoints();
        }
    }

    /// One group's Ready, applied: leader changes, a received snapshot, committed entries,
    /// read answers.
    fn apply_ready(&mut self, p: PartitionId, r: Ready) {
        let replay_limit = self.replay_limit(p);
        let Some(sm) = self.sms.get_mut(&p) else { return };
        if r.soft_state.is_some()
            || r.committed_entries.iter().any(|e| e.kind == phalanx_proto::EntryKind::ConfChange as i32)
        {
            // The roster's rounds look at the partitions again (`membership.rs`), and so
            // does the leader balancer at this one (`balance.rs`).
            self.membership.changed = true;
            self.balance.changed(p);
        }
        if let Some(ss) = r.soft_state {
            self.out.leaders.push((p, ss.leader, ss.term));
            self.out.events.push(Event::LeaderChanged { partition: p, leader: ss.leader, term: ss.term });
            sm.leader_changed(p, ss.leader);
        }
        if let Some(s) = &r.snapshot {
            sm.restore(p, &s.data);
        }
        let mut outputs: Vec<(u64, Bytes)> = Vec::new();
        for e in &r.deliveries {
            if e.index <= replay_limit {
                sm.restore_entry(p, e);
            } else {
                let out = sm.apply(p, e);
                if self.waiters.wants(p, e.index) {
                    outputs.push((e.index, out));
                }
            }
            if e.kind == phalanx_proto::EntryKind::Checkpoint as i32
                && !self.compact_wanted.contains(&p)
                // A leader's checkpoint: only by the leader that proposed it (of its term);
                // a later leader proposes its own if it needs one.
                && (e.payload.as_ref() != LEADER_CHECKPOINT
                    || self.multi.group(p).is_some_and(|g| g.is_leader() && g.term() == e.term))
            {
                self.compact_wanted.push(p);
            }
        }
        // Both lists are in log order, except that entries a commit marker releases come
        // with lower indexes than the marker and so match no committed entry after it: one
        // merge pass finds each entry's output (a search per entry was quadratic in a turn).
        let mut outputs = outputs.into_iter().peekable();
        let mut last_committed = 0;
        for e in &r.committed_entries {
            while outputs.next_if(|(i, _)| *i < e.index).is_some() {}
            let response = outputs.next_if(|(i, _)| *i == e.index).map_or_else(Bytes::new, |(_, out)| out);
            if let Some(status) = self.waiters.on_applied(p, e.index, e.term, response) {
                sm.replication_error(p, status);
                self.out.events.push(Event::ReplicationError { partition: p, status });
            }
            last_committed = e.index;
        }
        self.replayed(p, last_committed, replay_limit);
        for rs in r.read_states {
            match rs.result {
                Ok(index) => {
                    self.waiters.read_index_known(rs.request_id, index);
                }
                Err(status) => self.waiters.read_failed(rs.request_id, status),
            }
        }
    }

    /// Serves reads whose read index is now applied.
    fn serve_reads(&mut self) {
        for p in self.waiters.partitions_with_reads() {
            let Some(applied) = self.multi.group(p).map(|g| g.log().applied()) else { continue };
            for read in self.waiters.take_servable(p, applied) {
                let answer = match read.kind {
                    ReadKind::Barrier => Answer::ReadIndex(Ok(read.index)),
                    ReadKind::Query(q) => Answer::Query(
                        self.sms.get(&p).map_or(Err(Status::InvalidRequest), |sm| sm.query(p, &q)),
                    ),
                };
                self.waiters.answers.push((read.reply, answer));
            }
        }
    }
}
