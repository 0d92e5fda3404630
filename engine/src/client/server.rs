//! Serving the client port: one glommio executor thread accepts connections and answers
//! requests through a [`NodeHandle`] (which routes each to the shard that owns its
//! partition). Requests on one connection may be pipelined: each is answered as soon as it
//! completes, tagged with its id.
//!
//! A non-leader answers writes with `NOT_LEADER` and the leader's id and client address
//! when known; reads (`get`) are served by any node through the read barrier, which asks the
//! leader for the read index. Malformed input gets a typed `INVALID` answer or, if the frame
//! itself is broken, the connection is closed with a logged reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use phalanx_net::frame::{FrameDecoder, FrameKind, encode_frame};
use phalanx_proto::{
    AppendResponse, AppendValueResponse, CasResponse, CheckpointResponse, ClientError, ClientErrorCode,
    ClientRequest, ClientResponse, DeleteResponse, GetRequest, GetResponse, KvCommand, Message, NodeInfo,
    PartitionInfo, PutResponse, StatusResponse, TransferLeaderResponse, client_request, client_response,
    kv_command,
};

use super::{MAX_CLIENT_FRAME_BYTES, REQUEST_KIND, RESPONSE_KIND};
use crate::handle::NodeHandle;
use crate::kv::{KV_LOG_TYPE, MAX_KEY_BYTES};
use crate::raft::{NodeId, Status};
use crate::runtime::ReplicationResult;

/// Requests one connection may have in flight; reading pauses beyond it.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 4096;
/// Concurrent client connections; more are refused (closed at once).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Addresses of the cluster's nodes, for status answers and leader hints.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// node id → Raft address.
    pub raft: HashMap<NodeId, String>,
    /// node id → client address (when known).
    pub client: HashMap<NodeId, String>,
}

/// A running client port.
pub struct ClientServer {
    stop: flume::Sender<()>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
    addr: SocketAddr,
}

impl ClientServer {
    /// Binds `addr` and serves it on a new executor thread. Fails (with the OS error) when
    /// the port is in use.
    pub fn start(handle: NodeHandle, addr: SocketAddr, directory: Directory) -> Result<ClientServer, String> {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let dir = Arc::new(directory);
        let join = LocalExecutorBuilder::new(Placement::Unbound)
            .name("phalanx-client")
            .io_memory(1 << 20)
            .spawn(move || async move {
                let listener = match TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!("client port {addr}: {e}")));
                        return;
                    }
                };
                let local = listener.local_addr().unwrap_or(addr);
                let _ = bound_tx.send(Ok(local));
                let ctx = Rc::new(Ctx { handle, dir, connections: std::cell::Cell::new(0) });
                loop {
                    let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
                        let _ = stop_rx.recv_async().await;
                        None
                    })
                    .await;
                    match accepted {
                        None => break,
                        Some(Ok(stream)) => {
                            if ctx.connections.get() >= MAX_CONNECTIONS {
                                tracing::warn!("client port: connection limit reached, refusing");
                                continue;
                            }
                            ctx.connections.set(ctx.connections.get() + 1);
                            let ctx = ctx.clone();
                            glommio::spawn_local(async move {
                                serve_connection(stream, ctx.clone()).await;
                                ctx.connections.set(ctx.connections.get() - 1);
                            })
                            .detach();
                        }
                        Some(Err(e)) => tracing::warn!("client port accept: {e}"),
                    }
                }
            })
            .map_err(|e| format!("client port executor: {e}"))?;
        match bound_rx.recv() {
            Ok(Ok(addr)) => Ok(ClientServer { stop: stop_tx, join: Some(join), addr }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => Err("client port executor exited".into()),
        }
    }

    /// The bound address (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; open connections end with the executor.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

struct Ctx {
    handle: NodeHandle,
    dir: Arc<Directory>,
    connections: std::cell::Cell<usize>,
}

async fn serve_connection(stream: TcpStream, ctx: Rc<Ctx>) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = flume::bounded::<ClientResponse>(MAX_INFLIGHT_PER_CONNECTION);
    let writer_task = glommio::spawn_local(async move {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv_async().await {
            buf.clear();
            // Coalesce every answer ready now into one write.
            for resp in std::iter::once(first).chain(rx.try_iter()) {
                if let Err(e) =
                    encode_frame(FrameKind::App(RESPONSE_KIND), &resp, MAX_CLIENT_FRAME_BYTES, &mut buf)
                {
                    tracing::warn!("client answer not sent: {e}");
                }
            }
            if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    'conn: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if frame.kind != FrameKind::App(REQUEST_KIND) {
                        tracing::info!(%peer, kind = ?frame.kind, "client port: unexpected frame, closing");
                        break 'conn;
                    }
                    let req: ClientRequest = match frame.decode() {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::info!(%peer, "client port: undecodable request, closing: {e}");
                            break 'conn;
                        }
                    };
                    // Back-pressure: wait for room before taking more work.
                    while tx.len() >= MAX_INFLIGHT_PER_CONNECTION {
                        glommio::yield_if_needed().await;
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    let ctx = ctx.clone();
                    let tx = tx.clone();
                    glommio::spawn_local(async move {
                        let resp = handle_request(&ctx, req).await;
                        let _ = tx.send_async(resp).await;
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, "client port: bad frame, closing: {e}");
                    break 'conn;
                }
            }
        }
        match decoder.read_from(&mut reader, 64 << 10).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(tx);
    writer_task.await;
}

fn error(code: ClientErrorCode, message: impl Into<String>) -> client_response::Result {
    client_response::Result::Error(ClientError {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    })
}

fn status_error(ctx: &Ctx, partition: u64, status: Status) -> client_response::Result {
    let code = match status {
        Status::NodeIsNotLeader => ClientErrorCode::NotLeader,
        Status::Busy => ClientErrorCode::Busy,
        Status::ProposalTimeout => ClientErrorCode::Timeout,
        Status::InvalidRequest | Status::ProposalNotFound | Status::InsufficientVoters => {
            ClientErrorCode::Invalid
        }
        _ => ClientErrorCode::Internal,
    };
    let mut e = ClientError { code: code as i32, message: status.name().to_string(), ..Default::default() };
    if status == Status::NodeIsNotLeader
        && let Some((leader, _)) = ctx.handle.leader_of(partition)
    {
        e.leader_id = leader;
        // Prefer what the leader announced through the system partition; fall back to the
        // addresses this server was configured with.
        e.leader_address = ctx
            .handle
            .cluster_directory()
            .client_address(leader)
            .map(str::to_string)
            .or_else(|| ctx.dir.client.get(&leader).cloned())
            .unwrap_or_default();
    }
    client_response::Result::Error(e)
}

fn check_key(key: &str) -> Result<(), client_response::Result> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(error(ClientErrorCode::Invalid, format!("keys must be 1..={MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}

async fn replicate_kv(
    ctx: &Ctx,
    key: &str,
    op: kv_command::Op,
) -> Result<(u64, ReplicationResult), client_response::Result> {
    check_key(key)?;
    let p = ctx.handle.partition_key(key);
    let payload: Bytes = KvCommand { op: Some(op) }.encode_to_vec().into();
    let r = ctx.handle.replicate(p, KV_LOG_TYPE, payload).await;
    if r.success() { Ok((p, r)) } else { Err(status_error(ctx, p, r.status)) }
}

async fn handle_request(ctx: &Ctx, req: ClientRequest) -> ClientResponse {
    let result = match req.op {
        None => error(ClientErrorCode::Invalid, "empty request"),
        Some(op) => dispatch(ctx, op).await.unwrap_or_else(|e| e),
    };
    ClientResponse { id: req.id, result: Some(result) }
}

async fn dispatch(
    ctx: &Ctx,
    op: client_request::Op,
) -> Result<client_response::Result, client_response::Result> {
    use client_request::Op;
    use client_response::Result as R;
    Ok(match op {
        Op::Put(p) => {
            let key = p.key.clone();
            let (partition, r) = replicate_kv(ctx, &key, kv_command::Op::Put(p)).await?;
            R::Put(PutResponse { partition, log_index: r.log_index })
        }
        Op::Cas(c) => {
            let key = c.key.clone();
            let (partition, r) = replicate_kv(ctx, &key, kv_command::Op::Cas(c)).await?;
            let mut out = CasResponse::decode(r.response.as_ref())
                .map_err(|_| error(ClientErrorCode::Internal, "undecodable state machine answer"))?;
            out.partition = partition;
            out.log_index = r.log_index;
            R::Cas(out)
        }
        Op::AppendValue(a) => {
            let key = a.key.clone();
            let (partition, r) = replicate_kv(ctx, &key, kv_command::Op::AppendValue(a)).await?;
            let mut out = AppendValueResponse::decode(r.response.as_ref())
                .map_err(|_| error(ClientErrorCode::Internal, "undecodable state machine answer"))?;
            out.partition = partition;
            out.log_index = r.log_index;
            R::AppendValue(out)
        }
        Op::Delete(d) => {
            let key = d.key.clone();
            let (partition, r) = replicate_kv(ctx, &key, kv_command::Op::Delete(d)).await?;
            let mut out = DeleteResponse::decode(r.response.as_ref())
                .map_err(|_| error(ClientErrorCode::Internal, "undecodable state machine answer"))?;
            out.partition = partition;
            out.log_index = r.log_index;
            R::Delete(out)
        }
        Op::Get(g) => {
            check_key(&g.key)?;
            let p = ctx.handle.partition_key(&g.key);
            let q: Bytes = GetRequest { key: g.key.clone() }.encode_to_vec().into();
            let answer = ctx.handle.query(p, q).await.map_err(|s| status_error(ctx, p, s))?;
            let mut out = GetResponse::decode(answer.as_ref())
                .map_err(|_| error(ClientErrorCode::Internal, "undecodable state machine answer"))?;
            if !out.found {
                return Err(error(ClientErrorCode::NotFound, format!("key {:?} not found", g.key)));
            }
            out.partition = p;
            R::Get(out)
        }
        Op::Append(a) => {
            let p = if a.partition != 0 { a.partition } else { ctx.handle.partition_key(&a.key) };
            if a.partition == 0 && a.key.is_empty() {
                return Err(error(ClientErrorCode::Invalid, "append needs a partition or a key"));
            }
            if u64::from(ctx.handle.partitions()) < p {
                return Err(error(ClientErrorCode::Invalid, format!("no partition {p}")));
            }
            let log_type = if a.log_type.is_empty() { "append" } else { a.log_type.as_str() };
            let r = ctx.handle.replicate(p, log_type, a.payload).await;
            if !r.success() {
                return Err(status_error(ctx, p, r.status));
            }
            R::Append(AppendResponse { partition: p, log_index: r.log_index, ticket: Some(r.ticket.into()) })
        }
        Op::Checkpoint(c) => {
            if c.partition == 0 || u64::from(ctx.handle.partitions()) < c.partition {
                return Err(error(ClientErrorCode::Invalid, format!("no partition {}", c.partition)));
            }
            let r = ctx.handle.replicate_checkpoint(c.partition).await;
            if !r.success() {
                return Err(status_error(ctx, c.partition, r.status));
            }
            R::Checkpoint(CheckpointResponse { partition: c.partition, log_index: r.log_index })
        }
        Op::Status(_) => {
            // Nodes from the configuration, completed by what they announced through the
            // system partition.
            let announced = ctx.handle.cluster_directory();
            let mut ids: std::collections::BTreeSet<NodeId> = ctx.dir.raft.keys().copied().collect();
            ids.extend(announced.nodes.keys().copied());
            let mut nodes: Vec<NodeInfo> = ids
                .into_iter()
                .map(|id| {
                    let a = announced.nodes.get(&id);
                    NodeInfo {
                        id,
                        raft_address: ctx
                            .dir
                            .raft
                            .get(&id)
                            .cloned()
                            .or_else(|| a.map(|a| a.raft_address.clone()))
                            .unwrap_or_default(),
                        client_address: announced
                            .client_address(id)
                            .map(str::to_string)
                            .or_else(|| ctx.dir.client.get(&id).cloned())
                            .unwrap_or_default(),
                    }
                })
                .collect();
            nodes.sort_by_key(|n| n.id);
            let partitions = ctx
                .handle
                .status()
                .await
                .into_iter()
                .map(|s| PartitionInfo {
                    id: s.id,
                    leader: s.leader.unwrap_or(0),
                    term: s.term,
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    last_index: s.last_index,
                })
                .collect();
            R::Status(StatusResponse { node_id: ctx.handle.node_id(), nodes, partitions })
        }
        Op::TransferLeader(t) => {
            if u64::from(ctx.handle.partitions()) < t.partition {
                return Err(error(ClientErrorCode::Invalid, format!("no partition {}", t.partition)));
            }
            ctx.handle
                .transfer_leadership(t.partition, t.target)
                .await
                .map_err(|s| status_error(ctx, t.partition, s))?;
            R::TransferLeader(TransferLeaderResponse {})
        }
    })
}
