//! Where requests go: the embedded cluster's handles, or running nodes' client ports. Both
//! route each request to the partition's leader and retry while leadership moves (as any
//! real client does); latency includes those retries.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use phalanx::kv::KV_LOG_TYPE;
use phalanx::{NodeHandle, Status};
use phalanx_proto::{
    AppendRequest, CheckpointRequest, GetRequest, GetResponse, KvCommand, Message, PutRequest,
    client_request, kv_command,
};

use crate::remote::{CallError, RemotePool};

/// Log type of raw appends.
pub const APPEND_LOG_TYPE: &str = "bench";
/// How long an embedded request waits for a leader before it fails with `NoLeader`.
const EMBEDDED_NO_LEADER_TRIES: usize = 2_000;
/// Pause between leader look-ups while a partition has none.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(1);

/// One request's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A raw log append (`batch` entries in one proposal).
    Append,
    /// A key-value put (`batch` puts in one proposal).
    Put,
    /// A linearizable key-value get.
    Get,
    /// A checkpoint of the partition (an application's checkpoint policy; not timed).
    Checkpoint,
}

/// A request's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// A get of a missing key: a successful read that found nothing.
    NotFound,
    /// Failed with this status name.
    Failed(&'static str),
}

impl Outcome {
    /// Whether the request succeeded.
    #[must_use]
    pub fn success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NotFound)
    }

    /// Whether the node refused it as backpressure (`Busy`: try again shortly).
    #[must_use]
    pub fn busy(self) -> bool {
        matches!(self, Outcome::Failed("Busy" | "BUSY"))
    }
}

/// What a driver thread sends requests to.
#[derive(Clone)]
pub enum Target {
    /// The embedded nodes (handles of the running ones, and of those that joined since).
    Embedded(Arc<Vec<NodeHandle>>, crate::load::Joined),
    /// Running nodes' client ports.
    Remote(Rc<RemotePool>),
}

fn kv_put(key: &str, value: &Bytes) -> Bytes {
    KvCommand { op: Some(kv_command::Op::Put(PutRequest { key: key.to_string(), value: value.clone() })) }
        .encode_to_vec()
        .into()
}

impl Target {
    /// Runs one request on partition `p`. `keys` holds one key per entry of the batch (puts
    /// and gets; one key for a get).
    pub async fn exec(&self, kind: OpKind, p: u64, keys: &[String], value: &Bytes, batch: usize) -> Outcome {
        match self {
            Target::Embedded(handles, joined) => embedded(handles, joined, kind, p, keys, value, batch).await,
            Target::Remote(pool) => remote(pool, kind, p, keys, value, batch).await,
        }
    }
}

/// The node leading `p`: among the first nodes, else among those that joined since (a new
/// member gets leaderships from the balancer: without it, a join's "after" load starved on
/// them).
fn leader_of<'a>(
    handles: &'a [NodeHandle],
    joined: &crate::load::Joined,
    p: u64,
) -> Option<Cow<'a, NodeHandle>> {
    if let Some(h) = handles.iter().find(|h| h.am_i_leader_quick(p)) {
        return Some(Cow::Borrowed(h));
    }
    let joined = joined.lock().ok()?;
    joined.iter().find(|h| h.am_i_leader_quick(p)).cloned().map(Cow::Owned)
}

async fn embedded(
    handles: &[NodeHandle],
    joined: &crate::load::Joined,
    kind: OpKind,
    p: u64,
    keys: &[String],
    value: &Bytes,
    batch: usize,
) -> Outcome {
    for _ in 0..EMBEDDED_NO_LEADER_TRIES {
        let Some(h) = leader_of(handles, joined, p) else {
            crate::driver::sleep(NO_LEADER_PAUSE).await;
            continue;
        };
        let status = match kind {
            OpKind::Append => {
                h.replicate_batch(p, APPEND_LOG_TYPE, vec![value.clone(); batch.max(1)]).await.status
            }
            OpKind::Put => {
                let payloads = keys.iter().map(|k| kv_put(k, value)).collect();
                h.replicate_batch(p, KV_LOG_TYPE, payloads).await.status
            }
            OpKind::Checkpoint => h.replicate_checkpoint(p).await.status,
            OpKind::Get => {
                let q: Bytes =
                    GetRequest { key: keys.first().cloned().unwrap_or_default() }.encode_to_vec().into();
                match h.query(p, q).await {
                    Ok(answer) => {
                        return match GetResponse::decode(answer.as_ref()) {
                            Ok(g) if g.found => Outcome::Ok,
                            Ok(_) => Outcome::NotFound,
                            Err(_) => Outcome::Failed("UndecodableAnswer"),
                        };
                    }
                    Err(s) => s,
                }
            }
        };
        match status {
            Status::Success => return Outcome::Ok,
            // Leadership moved between the look-up and the proposal: look again.
            Status::NodeIsNotLeader => continue,
            s => return Outcome::Failed(s.name()),
        }
    }
    Outcome::Failed("NoLeader")
}

fn call_outcome(r: Result<phalanx_proto::client_response::Result, CallError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(CallError::NotFound) => Outcome::NotFound,
        Err(e) => Outcome::Failed(e.name()),
    }
}

async fn remote(
    pool: &RemotePool,
    kind: OpKind,
    p: u64,
    keys: &[String],
    value: &Bytes,
    batch: usize,
) -> Outcome {
    match kind {
        OpKind::Get => {
            let key = keys.first().cloned().unwrap_or_default();
            call_outcome(pool.call(p, client_request::Op::Get(GetRequest { key })).await)
        }
        OpKind::Checkpoint => call_outcome(
            pool.call(p, client_request::Op::Checkpoint(CheckpointRequest { partition: p })).await,
        ),
        OpKind::Put | OpKind::Append => {
            // The client port takes one entry per request: a batch is pipelined and counts as
            // one operation when its last entry is acknowledged.
            let ops: Vec<client_request::Op> = (0..batch.max(1))
                .map(|i| match kind {
                    OpKind::Put => client_request::Op::Put(PutRequest {
                        key: keys.get(i).or(keys.first()).cloned().unwrap_or_default(),
                        value: value.clone(),
                    }),
                    _ => client_request::Op::Append(AppendRequest {
                        partition: p,
                        key: String::new(),
                        log_type: APPEND_LOG_TYPE.into(),
                        payload: value.clone(),
                    }),
                })
                .collect();
            let futs = ops.into_iter().map(|op| pool.call(p, op));
            let mut outcome = Outcome::Ok;
            for r in join_all(futs).await {
                let o = call_outcome(r);
                if !o.success() {
                    outcome = o;
                }
            }
            outcome
        }
    }
}

/// Awaits every future concurrently (so a batch's requests are pipelined), in order.
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}
