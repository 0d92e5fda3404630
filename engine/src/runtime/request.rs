//! Requests from `NodeHandle`s (any thread, any async runtime) to the shard that owns the
//! partition: the shard core's [`Op`] with a one-shot reply channel of the matching kind. A
//! shard that stops drops the channel, which the caller sees as `Errored`.

use bytes::Bytes;
use futures_channel::oneshot;

use crate::raft::{NodeId, Status};
use crate::shard::request::Answer;
pub use crate::shard::request::{PartitionStatus, ReplicationResult};

/// Where a handle waits for its answer: one variant per kind of [`Answer`].
pub(crate) enum Responder {
    Replication(oneshot::Sender<ReplicationResult>),
    ReadIndex(oneshot::Sender<Result<u64, Status>>),
    Query(oneshot::Sender<Result<Bytes, Status>>),
    Control(oneshot::Sender<Result<(), Status>>),
    Lag(oneshot::Sender<Option<u64>>),
    Status(oneshot::Sender<Vec<PartitionStatus>>),
    Stats(oneshot::Sender<Option<Box<crate::stats::ShardStats>>>),
    Leader(oneshot::Sender<Result<NodeId, Status>>),
    Roster(oneshot::Sender<Box<crate::roster::Roster>>),
}

impl Responder {
    /// Sends `answer` (a caller that gave up is not an error). An answer of another kind
    /// than the question is an engine bug: the caller then sees its channel closed, as if
    /// the shard had stopped (`Errored`), rather than waiting forever.
    pub(crate) fn send(self, answer: Answer) {
        match (self, answer) {
            (Responder::Replication(tx), Answer::Replication(a)) => drop(tx.send(a)),
            (Responder::ReadIndex(tx), Answer::ReadIndex(a)) => drop(tx.send(a)),
            (Responder::Query(tx), Answer::Query(a)) => drop(tx.send(a)),
            (Responder::Control(tx), Answer::Control(a)) => drop(tx.send(a)),
            (Responder::Lag(tx), Answer::Lag(a)) => drop(tx.send(a)),
            (Responder::Status(tx), Answer::Status(a)) => drop(tx.send(a)),
            (Responder::Stats(tx), Answer::Stats(a)) => drop(tx.send(a)),
            (Responder::Leader(tx), Answer::Leader(a)) => drop(tx.send(a)),
            (Responder::Roster(tx), Answer::Roster(a)) => drop(tx.send(a)),
            (_, a) => debug_assert!(false, "an answer of another kind than its question: {a:?}"),
        }
    }
}

/// A handle's request as it travels on the bus.
pub(crate) type Request = crate::shard::request::Request<Responder>;

impl Request {
    /// Answers the request with a refusal.
    pub(crate) fn refuse(self, status: Status) {
        let answer = self.op.refusal(status);
        self.reply.send(answer);
    }
}
