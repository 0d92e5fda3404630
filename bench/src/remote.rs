//! Remote mode: an asynchronous client of running nodes' client ports (framed
//! `phalanx.v1.ClientRequest` / `ClientResponse` over TCP), for the bench's glommio driver
//! threads.
//!
//! - **Discovery** (blocking, before any load): every endpoint is asked for its status; an
//!   endpoint that does not answer is a clear error. The answers give the partition count
//!   (the highest partition id), each partition's leader and every node's client address.
//! - **Connections**: each driver thread opens its own connections (glommio sockets are
//!   thread-local), `connections` per endpoint, and pipelines its clients' requests over them
//!   (requests are tagged with ids and answered out of order).
//! - **Routing**: a request for partition `p` goes to the endpoint believed to lead `p`; a
//!   `NOT_LEADER` answer carries the leader's id and client address, which updates the
//!   driver's map, and the request is retried there.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use phalanx::client::{Client, MAX_CLIENT_FRAME_BYTES, REQUEST_KIND, RESPONSE_KIND};
use phalanx_net::frame::{FrameDecoder, FrameKind, encode_frame};
use phalanx_proto::{
    ClientErrorCode, ClientRequest, ClientResponse, StatusRequest, client_request, client_response,
};

/// What discovery learned, shared (read-only) by every driver.
#[derive(Clone, Debug)]
pub struct RemoteInfo {
    /// The endpoints given on the command line.
    pub endpoints: Vec<String>,
    /// User partitions (`1..=partitions`).
    pub partitions: u32,
    /// `leaders[p]`: client address of partition `p`'s leader, when known.
    pub leaders: Vec<Option<String>>,
    /// Node id → client address.
    pub addresses: HashMap<u64, String>,
}

/// Asks every endpoint for its status. Any endpoint that cannot be reached or answers
/// nonsense is an error naming it: remote mode measures the cluster it is pointed at, not
/// a part of it.
pub fn discover(endpoints: &[String]) -> Result<RemoteInfo, String> {
    if endpoints.is_empty() {
        return Err("--mode remote needs --endpoints HOST:PORT[,HOST:PORT...]".into());
    }
    let mut partitions = 0u32;
    let mut leader_ids: Vec<u64> = Vec::new();
    let mut addresses: HashMap<u64, String> = HashMap::new();
    for ep in endpoints {
        let mut c = Client::connect(ep).map_err(|e| format!("endpoint {ep} is unreachable: {e}"))?;
        let answer = c
            .call(client_request::Op::Status(StatusRequest {}))
            .map_err(|e| format!("endpoint {ep} did not answer a status request: {e}"))?;
        let client_response::Result::Status(s) = answer else {
            return Err(format!("endpoint {ep} answered a status request with something else"));
        };
        // The endpoint we reached is this node's client address, whatever it announced.
        addresses.insert(s.node_id, ep.clone());
        for n in &s.nodes {
            if !n.client_address.is_empty() {
                addresses.entry(n.id).or_insert_with(|| n.client_address.clone());
            }
        }
        let highest = s.partitions.iter().map(|p| p.id).max().unwrap_or(0);
        let highest = u32::try_from(highest).map_err(|_| format!("endpoint {ep}: partition id {highest}"))?;
        partitions = partitions.max(highest);
        if leader_ids.len() <= highest as usize {
            leader_ids.resize(highest as usize + 1, 0);
        }
        for p in &s.partitions {
            if p.leader != 0 && (leader_ids[p.id as usize] == 0 || p.leader == s.node_id) {
                leader_ids[p.id as usize] = p.leader;
            }
        }
    }
    if partitions == 0 {
        return Err("the endpoints report no user partition".into());
    }
    let leaders = leader_ids.iter().map(|id| addresses.get(id).cloned()).collect();
    Ok(RemoteInfo { endpoints: endpoints.to_vec(), partitions, leaders, addresses })
}

/// Why a remote call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with a typed error (its code name, e.g. `BUSY`).
    Server(&'static str),
    /// The key was not found (a `get` answer, not a failure of the system).
    NotFound,
    /// Connecting, sending or receiving failed.
    Io,
    /// No leader after the retries.
    NoLeader,
}

impl CallError {
    /// Name used in "errors by status".
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            CallError::Server(s) => s,
            CallError::NotFound => "NOT_FOUND",
            CallError::Io => "IO",
            CallError::NoLeader => "NO_LEADER",
        }
    }
}

type Pending = Rc<RefCell<HashMap<u64, oneshot::Sender<ClientResponse>>>>;

/// One pipelined connection (on the driver's thread).
struct Conn {
    out: flume::Sender<Vec<u8>>,
    pending: Pending,
    next_id: Cell<u64>,
    broken: Rc<Cell<bool>>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Rc<Conn>, CallError> {
        // Clients retry a node that went away every few milliseconds: say so once per
        // address until it answers again (the failures are counted as IO errors anyway).
        thread_local! {
            static UNREACHABLE: RefCell<std::collections::HashSet<String>> = RefCell::default();
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            if UNREACHABLE.with(|u| u.borrow_mut().insert(addr.to_string())) {
                tracing::warn!("connecting to {addr}: {e} (repeated failures there are counted, not logged)");
            }
            CallError::Io
        })?;
        UNREACHABLE.with(|u| u.borrow_mut().remove(addr));
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (tx, rx) = flume::unbounded::<Vec<u8>>();
        let pending: Pending = Rc::new(RefCell::new(HashMap::new()));
        let broken = Rc::new(Cell::new(false));
        let b = broken.clone();
        glommio::spawn_local(async move {
            // Coalesce every request queued by the time the previous write finished.
            let mut buf = Vec::new();
            while let Ok(first) = rx.recv_async().await {
                buf.clear();
                buf.extend_from_slice(&first);
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(&more);
                }
                if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                    b.set(true);
                    break;
                }
            }
        })
        .detach();
        let (p, b) = (pending.clone(), broken.clone());
        glommio::spawn_local(async move {
            let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
            'conn: loop {
                loop {
                    match decoder.next_frame() {
                        Ok(Some(f)) if f.kind == FrameKind::App(RESPONSE_KIND) => {
                            let Ok(resp) = f.decode::<ClientResponse>() else { break 'conn };
                            if let Some(waiter) = p.borrow_mut().remove(&resp.id) {
                                let _ = waiter.send(resp);
                            }
                        }
                        Ok(Some(_)) | Err(_) => break 'conn,
                        Ok(None) => break,
                    }
                }
                match decoder.read_from(&mut reader, 64 << 10).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            b.set(true);
            // Dropping the senders fails every request still waiting.
            p.borrow_mut().clear();
        })
        .detach();
        Ok(Rc::new(Conn { out: tx, pending, next_id: Cell::new(1), broken }))
    }

    async fn call(&self, op: client_request::Op) -> Result<ClientResponse, CallError> {
        if self.broken.get() {
            return Err(CallError::Io);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut frame = Vec::new();
        encode_frame(
            FrameKind::App(REQUEST_KIND),
            &ClientRequest { id, op: Some(op) },
            MAX_CLIENT_FRAME_BYTES,
            &mut frame,
        )
        .map_err(|_| CallError::Server("INVALID"))?;
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        if self.out.try_send(frame).is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(CallError::Io);
        }
        rx.await.map_err(|_| CallError::Io)
    }
}

/// How often a request follows `NOT_LEADER` hints (or waits for an election) before it
/// fails with `NO_LEADER`.
const MAX_ROUTING_TRIES: usize = 200;
/// Pause before retrying when no leader is known (an election is under way).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(5);

/// One driver thread's connections and leader map.
pub struct RemotePool {
    info: std::sync::Arc<RemoteInfo>,
    connections: usize,
    conns: RefCell<HashMap<String, Vec<Rc<Conn>>>>,
    /// Addresses with a connection being opened.
    opening: RefCell<std::collections::HashSet<String>>,
    leaders: RefCell<Vec<Option<String>>>,
    rr: Cell<usize>,
}

impl RemotePool {
    /// A pool on the calling (driver) thread; connections open on first use.
    #[must_use]
    pub fn new(info: std::sync::Arc<RemoteInfo>, connections: usize) -> Self {
        let leaders = RefCell::new(info.leaders.clone());
        RemotePool {
            info,
            connections: connections.max(1),
            conns: RefCell::new(HashMap::new()),
            opening: RefCell::new(std::collections::HashSet::new()),
            leaders,
            rr: Cell::new(0),
        }
    }

    async fn conn(&self, addr: &str) -> Result<Rc<Conn>, CallError> {
        let pick = self.rr.get();
        self.rr.set(pick.wrapping_add(1));
        loop {
            {
                let mut map = self.conns.borrow_mut();
                let list = map.entry(addr.to_string()).or_default();
                list.retain(|c| !c.broken.get());
                let opening = self.opening.borrow().contains(addr);
                // Every client of the driver starts at once: while one of them opens a
                // connection, the others use the ones there are, or wait for it.
                if list.len() >= self.connections || (opening && !list.is_empty()) {
                    return Ok(list[pick % list.len()].clone());
                }
                if !opening {
                    break;
                }
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.opening.borrow_mut().insert(addr.to_string());
        let opened = Conn::open(addr).await;
        self.opening.borrow_mut().remove(addr);
        let c = opened?;
        self.conns.borrow_mut().entry(addr.to_string()).or_default().push(c.clone());
        Ok(c)
    }

    fn target(&self, partition: u64, attempt: usize) -> String {
        if let Some(Some(a)) = self.leaders.borrow().get(partition as usize) {
            return a.clone();
        }
        let eps = &self.info.endpoints;
        eps[(partition as usize + attempt) % eps.len()].clone()
    }

    fn learn(&self, partition: u64, leader_id: u64, leader_address: &str) {
        let addr = if leader_address.is_empty() {
            self.info.addresses.get(&leader_id).cloned()
        } else {
            Some(leader_address.to_string())
        };
        if let Some(slot) = self.leaders.borrow_mut().get_mut(partition as usize) {
            *slot = addr;
        }
    }

    /// Sends `op` (about `partition`) to its leader, following `NOT_LEADER` hints; returns
    /// the successful result.
    pub async fn call(
        &self,
        partition: u64,
        op: client_request::Op,
    ) -> Result<client_response::Result, CallError> {
        for attempt in 0..MAX_ROUTING_TRIES {
            let addr = self.target(partition, attempt);
            let conn = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    // That node is down: forget it as leader and try another endpoint.
                    self.learn(partition, 0, "");
                    if attempt + 1 >= self.info.endpoints.len() * 2 {
                        return Err(e);
                    }
                    glommio::timer::sleep(NO_LEADER_PAUSE).await;
                    continue;
                }
            };
            let resp = match conn.call(op.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    self.learn(partition, 0, "");
                    return Err(e);
                }
            };
            match resp.result {
                Some(client_response::Result::Error(e)) => {
                    let code = ClientErrorCode::try_from(e.code).unwrap_or(ClientErrorCode::Unspecified);
                    match code {
                        ClientErrorCode::NotLeader => {
                            self.learn(partition, e.leader_id, &e.leader_address);
                            if e.leader_id == 0 {
                                glommio::timer::sleep(NO_LEADER_PAUSE).await;
                            }
                        }
                        ClientErrorCode::NotFound => return Err(CallError::NotFound),
                        other => {
                            let name = other.as_str_name().trim_start_matches("CLIENT_ERROR_CODE_");
                            return Err(CallError::Server(static_name(name)));
                        }
                    }
                }
                Some(r) => return Ok(r),
                None => return Err(CallError::Server("EMPTY")),
            }
        }
        Err(CallError::NoLeader)
    }
}

/// Error code names as `'static` strings (the set is closed).
fn static_name(name: &str) -> &'static str {
    match name {
        "BUSY" => "BUSY",
        "TIMEOUT" => "TIMEOUT",
        "INVALID" => "INVALID",
        "INTERNAL" => "INTERNAL",
        "NOT_LEADER" => "NOT_LEADER",
        "NOT_FOUND" => "NOT_FOUND",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_what_is_wrong() {
        assert!(discover(&[]).unwrap_err().contains("--endpoints"));
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let e = discover(&["127.0.0.1:1".to_string()]).unwrap_err();
        assert!(e.contains("127.0.0.1:1") && e.contains("unreachable"), "{e}");
    }

    #[test]
    fn error_names_are_the_client_port_codes() {
        assert_eq!(static_name("BUSY"), "BUSY");
        assert_eq!(static_name("something new"), "UNKNOWN");
        assert_eq!(CallError::NotFound.name(), "NOT_FOUND");
    }
}
