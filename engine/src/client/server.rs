//! Serving the client port: one glommio executor thread accepts connections and answers
//! requests through a [`NodeHandle`] (which routes each to the shard that owns its
//! partition). Requests on one connection may be pipelined: each is answered as soon as it
//! completes, tagged with its id.
//!
//! A non-leader answers writes with `NOT_LEADER` and the leader's id and client address
//! when known; reads (`get`) are served by any node through the read barrier, which asks the
//! leader for the read index. Malformed input gets a typed `INVALID` answer or, if the frame
//! itself is broken, the connection is closed with a logged reason.

use crate::Error;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use phalanx_net::frame::{Frame, FrameDecoder, FrameError, FrameKind, encode_frame};
use phalanx_proto::{
    AppendResponse, AppendValueResponse, CasResponse, CheckpointResponse, ClientAuth, ClientError,
    ClientErrorCode, ClientPortStats, ClientRequest, ClientResponse, DeleteResponse, GetRequest, GetResponse,
    KvCommand, MemberChangeResponse, MemberInfo, MemberListResponse, Message, NodeInfo, PartitionInfo,
    PutResponse, StatusResponse, TransferLeaderResponse, client_request, client_response, kv_command,
};

use super::security::ClientPortSecurity;
use super::{AUTH_KIND, MAX_CLIENT_FRAME_BYTES, REQUEST_KIND, RESPONSE_KIND};
use crate::handle::NodeHandle;
use crate::kv::{KV_LOG_TYPE, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::raft::{NodeId, Status};
use crate::runtime::ReplicationResult;
use phalanx_net::tls::{Conn, TlsStream};

/// Requests one connection may have in flight; reading pauses beyond it.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 4096;
/// Concurrent client connections; more are refused with a `BUSY` answer and closed.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Bytes of requests one connection may have in flight (their answers pending); reading
/// pauses beyond it. At least one request of the largest size must fit.
pub const MAX_INFLIGHT_BYTES_PER_CONNECTION: usize = 2 * MAX_CLIENT_FRAME_BYTES;
/// Bytes of requests all connections together may have in flight.
pub const MAX_INFLIGHT_BYTES: usize = 32 * MAX_CLIENT_FRAME_BYTES;
/// A connection with nothing in flight that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A frame must arrive whole within this long of its first byte (16 MiB in 30 s is about
/// 0.5 MiB/s): a half-sent frame does not hold its buffer forever.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How far past the node's own request timeout (`NodeConfig::request_timeout_ms`, after
/// which every request has an answer) stopping the port waits for requests in flight before
/// it closes their connections anyway: the shard answers an expired request at its next tick,
/// and the answer still has to reach the port and be written.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// How long stopping the port waits for requests in flight to be answered: the request
/// timeout and [`DRAIN_MARGIN`]. A fixed 15 s used to cut off requests of a node configured
/// with a request timeout above it.
#[must_use]
pub fn drain_timeout(request_timeout_ms: u64) -> Duration {
    Duration::from_millis(request_timeout_ms).saturating_add(DRAIN_MARGIN)
}
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a connection told to go elsewhere waits for its client to close, reading what it
/// sends (a close with unread bytes would reset the connection and discard that answer).
const GOAWAY_LINGER: Duration = Duration::from_secs(2);
/// How often a draining port looks for connections it can close.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long a stopping port, refusing new handshakes, waits for those it already answered to
/// complete before it takes in its backlog and closes: one trip of the client's last handshake
/// segment, with room for a WAN client (a LAN's is under a millisecond). A client whose
/// segment comes later (it needed a retransmission) is reset when the listener closes.
const HANDSHAKE_GRACE: Duration = Duration::from_millis(100);
/// Bytes read from a socket at most per read.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The client port's limits, each with its unit. The defaults are the constants above;
/// tests shrink them.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Concurrent connections.
    pub max_connections: usize,
    /// Requests in flight per connection.
    pub max_inflight_per_connection: usize,
    /// Bytes of requests in flight per connection (at least one largest frame).
    pub max_inflight_bytes_per_connection: usize,
    /// Bytes of requests in flight on all connections (at least one largest frame).
    pub max_inflight_bytes: usize,
    /// Idle connections (nothing in flight, nothing received) are closed after this.
    pub idle_timeout: Duration,
    /// A frame begun must complete within this.
    pub frame_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            max_inflight_per_connection: MAX_INFLIGHT_PER_CONNECTION,
            max_inflight_bytes_per_connection: MAX_INFLIGHT_BYTES_PER_CONNECTION,
            max_inflight_bytes: MAX_INFLIGHT_BYTES,
            idle_timeout: IDLE_TIMEOUT,
            frame_timeout: FRAME_TIMEOUT,
        }
    }
}

impl ServerLimits {
    /// Checks the limits against each other: [`Error::Config`] naming the first that cannot
    /// work.
    pub fn validate(&self) -> Result<(), Error> {
        self.first_problem().map_err(|e| Error::Config(format!("client port limits: {e}")))
    }

    fn first_problem(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_inflight_per_connection == 0 {
            return Err("max_connections and max_inflight_per_connection must be at least 1".into());
        }
        if self.max_inflight_bytes_per_connection < MAX_CLIENT_FRAME_BYTES
            || self.max_inflight_bytes < self.max_inflight_bytes_per_connection
        {
            return Err(format!(
                "in-flight byte limits must hold one largest request ({MAX_CLIENT_FRAME_BYTES} bytes), \
                 the node's at least the connection's"
            ));
        }
        if self.idle_timeout.is_zero() || self.frame_timeout.is_zero() {
            return Err("idle_timeout and frame_timeout must be positive".into());
        }
        Ok(())
    }

    /// How often the sweeper looks for connections past a deadline: a quarter of the
    /// shorter timeout, so a connection outlives its deadline by at most that.
    fn sweep_interval(&self) -> Duration {
        (self.idle_timeout.min(self.frame_timeout) / 4).max(Duration::from_millis(10))
    }
}

/// The client port's counters (see `phalanx.v1.ClientPortStats`), readable from any thread.
#[derive(Debug, Default)]
pub struct ServerCounters {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    closed_idle: AtomicU64,
    closed_frame_timeout: AtomicU64,
    closed_bad_input: AtomicU64,
    requests: AtomicU64,
    inflight_request_bytes: AtomicU64,
    closed_unauthenticated: AtomicU64,
    tls_failures: AtomicU64,
}

impl ServerCounters {
    /// A snapshot of the counters.
    #[must_use]
    pub fn snapshot(&self) -> ClientPortStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientPortStats {
            connections_open: g(&self.connections_open),
            connections_accepted: g(&self.connections_accepted),
            connections_refused: g(&self.connections_refused),
            closed_idle: g(&self.closed_idle),
            closed_frame_timeout: g(&self.closed_frame_timeout),
            closed_bad_input: g(&self.closed_bad_input),
            requests: g(&self.requests),
            inflight_request_bytes: g(&self.inflight_request_bytes),
            closed_unauthenticated: g(&self.closed_unauthenticated),
            tls_failures: g(&self.tls_failures),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

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
    counters: Arc<ServerCounters>,
}

impl ClientServer {
    /// Binds `addr` and serves it on a new executor thread, with the default limits. Fails
    /// (with the OS error) when the port is in use.
    pub fn start(handle: NodeHandle, addr: SocketAddr, directory: Directory) -> Result<ClientServer, Error> {
        ClientServer::start_with(handle, addr, directory, ServerLimits::default())
    }

    /// [`ClientServer::start`] with explicit limits.
    pub fn start_with(
        handle: NodeHandle,
        addr: SocketAddr,
        directory: Directory,
        limits: ServerLimits,
    ) -> Result<ClientServer, Error> {
        ClientServer::serve(handle, ClientServer::bind(addr)?, directory, limits)
    }

    /// Binds the client port without serving it yet, so a port in use stops a node before
    /// it starts anything else. std's listener, not glommio's `bind`: that sets SO_REUSEPORT,
    /// which let a second node bind the same port silently and take half the connections.
    pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
        phalanx_net::listen::listen(addr)
            .map_err(|e| Error::ClientPort { addr: addr.to_string(), source: Arc::new(e) })
    }

    /// Serves a listener from [`ClientServer::bind`] on a new executor thread, open to
    /// anyone who reaches it (see [`ClientServer::serve_secure`]).
    pub fn serve(
        handle: NodeHandle,
        listener: std::net::TcpListener,
        directory: Directory,
        limits: ServerLimits,
    ) -> Result<ClientServer, Error> {
        ClientServer::serve_secure(handle, listener, directory, limits, ClientPortSecurity::default())
    }

    /// [`ClientServer::serve`] with TLS and/or a token required of every connection.
    pub fn serve_secure(
        handle: NodeHandle,
        listener: std::net::TcpListener,
        directory: Directory,
        limits: ServerLimits,
        security: ClientPortSecurity,
    ) -> Result<ClientServer, Error> {
        limits.validate()?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::ClientPort { addr: "(unknown)".into(), source: Arc::new(e) })?;
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let dir = Arc::new(directory);
        let counters = Arc::new(ServerCounters::default());
        let shared_counters = counters.clone();
        let join = LocalExecutorBuilder::new(Placement::Unbound)
            .name("phalanx-client")
            .io_memory(1 << 20)
            .spawn(move || async move {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // Kept for `accept_pending`: glommio's listener does not expose its fd.
                let listen_fd = listener.into_raw_fd();
                // SAFETY: the fd comes from a bound, listening std listener whose ownership is
                // moved here.
                let listener = unsafe { TcpListener::from_raw_fd(listen_fd) };
                let ctx = Rc::new(Ctx {
                    handle,
                    dir,
                    security,
                    global_bytes: Rc::new(Semaphore::new(limits.max_inflight_bytes as u64)),
                    limits,
                    counters: shared_counters,
                    conns: RefCell::new(HashMap::new()),
                    next_conn: Cell::new(0),
                    admitted: Cell::new(0),
                });
                let sweeper = glommio::spawn_local(sweep(ctx.clone()));
                accept_until_stopped(&ctx, &listener, local, stop_rx).await;
                // The backlog is taken in before the listener closes: a connection left in it
                // would be reset, after its client may have sent a request (an unknown
                // outcome); one taken in is told to go elsewhere like the others. New
                // handshakes are refused first, and those under way get a grace to complete,
                // so none completes between the last accept and the close: a client whose
                // SYN is dropped retries it after the close and is refused at connect,
                // before it sent anything.
                match refuse_new_handshakes(listen_fd) {
                    Ok(()) => glommio::timer::sleep(HANDSHAKE_GRACE).await,
                    Err(e) => tracing::warn!("client port: cannot refuse new handshakes while stopping: {e}"),
                }
                accept_pending(&ctx, listen_fd).await;
                drop(listener);
                drain(&ctx).await;
                drop(sweeper);
            })
            .map_err(|e| Error::Executor { thread: "client port".into(), reason: e.to_string() })?;
        Ok(ClientServer { stop: stop_tx, join: Some(join), addr: local, counters })
    }

    /// The bound address (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port's counters.
    #[must_use]
    pub fn stats(&self) -> ClientPortStats {
        self.counters.snapshot()
    }

    /// The counters, shared (status answers read them).
    #[must_use]
    pub fn counters(&self) -> Arc<ServerCounters> {
        self.counters.clone()
    }

    /// Stops accepting, then drains: every connection is closed once it has no request in
    /// flight (at most [`drain_timeout`] after this call), after a last answer (id 0,
    /// `NOT_LEADER` with no leader named) that tells its client that no request it sent
    /// after its last answer was or will be executed, so it can retry elsewhere.
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
    security: ClientPortSecurity,
    limits: ServerLimits,
    counters: Arc<ServerCounters>,
    /// Request bytes in flight on all connections.
    global_bytes: Rc<Semaphore>,
    /// Open connections, for the sweeper.
    conns: RefCell<HashMap<u64, Rc<ConnState>>>,
    next_conn: Cell<u64>,
    /// Connections accepted whose task has not ended (registered in `conns` or about to be).
    admitted: Cell<usize>,
}

/// Why this side closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    Idle,
    FrameTimeout,
}

/// What the sweeper needs to know of one connection.
struct ConnState {
    fd: RawFd,
    peer: String,
    /// Last byte received or answer sent.
    last_activity: Cell<Instant>,
    /// When the frame being received began (`None` between frames).
    frame_started: Cell<Option<Instant>>,
    /// Requests whose answers are not sent yet.
    inflight: Cell<usize>,
    closed: Cell<Option<Closed>>,
    /// Waiting for bytes with every complete request handed on: a draining port may close
    /// the connection now without cutting off a request it read.
    reading: Cell<bool>,
    /// The port is draining and chose this connection to close: what is read after is not
    /// executed.
    goaway: Cell<bool>,
    /// Wakes the connection's pending read when it is chosen (taken when fired).
    wake_goaway: RefCell<Option<futures_channel::oneshot::Sender<()>>>,
}

/// Accepts connections until `until` completes.
/// How long stopping waits to connect to its own listener (loopback: at once, unless the
/// backlog is full).
const SENTINEL_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Accepts connections until `stop`. The accept in flight is not dropped (glommio would
/// cancel it, and a connection the kernel accepted meanwhile would be lost with its fd, then
/// reset at exit after its client sent a request): the port connects to itself instead, and
/// the loop ends when it accepts that connection.
async fn accept_until_stopped(
    ctx: &Rc<Ctx>,
    listener: &TcpListener,
    local: SocketAddr,
    stop: flume::Receiver<()>,
) {
    let sentinel: Rc<RefCell<Option<std::net::TcpStream>>> = Rc::new(RefCell::new(None));
    let s2 = sentinel.clone();
    let (cut_tx, cut_rx) = futures_channel::oneshot::channel::<()>();
    let stopper = glommio::spawn_local(async move {
        let _ = stop.recv_async().await;
        match std::net::TcpStream::connect_timeout(&local, SENTINEL_CONNECT_TIMEOUT) {
            Ok(s) => *s2.borrow_mut() = Some(s),
            // No way to end the accept cleanly: drop it (the rare loss above).
            Err(_) => {
                let _ = cut_tx.send(());
            }
        }
    });
    let accept = async {
        loop {
            let accepted = listener.accept().await;
            if let Ok(stream) = &accepted {
                let ours = sentinel.borrow().as_ref().and_then(|s| s.local_addr().ok());
                if ours.is_some() && stream.peer_addr().ok() == ours {
                    return;
                }
            }
            admit(ctx, accepted).await;
        }
    };
    let cut_off = async {
        if cut_rx.await.is_err() {
            // The stopper ended without cutting (it connected): the accept loop ends.
            futures_lite::future::pending::<()>().await;
        }
    };
    futures_lite::future::or(accept, cut_off).await;
    drop(stopper);
}

/// Makes the listener drop every TCP segment with SYN set, so no new handshake starts, while
/// those already answered complete (their last segment is a plain ACK) and queue as usual.
/// A socket filter is used rather than closing the listener because closing resets what is
/// queued, and `shutdown(2)` on a listener does the same.
fn refuse_new_handshakes(listen_fd: RawFd) -> std::io::Result<()> {
    // A TCP socket's filter sees the segment from its TCP header: byte 13 holds the flags.
    const TCP_FLAGS_OFFSET: u32 = 13;
    const TCP_FLAG_SYN: u32 = 0x02;
    // `SO_ATTACH_FILTER` from <asm-generic/socket.h> (not exported by the libc crate here).
    const SO_ATTACH_FILTER: libc::c_int = 26;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: u16::try_from(code).unwrap_or(u16::MAX),
        jt,
        jf,
        k,
    };
    let mut program = [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, TCP_FLAGS_OFFSET),
        // SYN set: fall through to the drop; otherwise skip it.
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 1, TCP_FLAG_SYN),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let prog = libc::sock_fprog { len: program.len() as libc::c_ushort, filter: program.as_mut_ptr() };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            listen_fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Accepts every connection waiting in the listener's backlog, without waiting for more.
/// `listen_fd` is the listener's, open while this runs.
async fn accept_pending(ctx: &Rc<Ctx>, listen_fd: RawFd) {
    use std::os::fd::FromRawFd;
    // The listener is in blocking mode (glommio accepts through io_uring); an empty backlog
    // must end the loop, not block the executor.
    // SAFETY: plain fcntl calls on an fd open for their duration.
    unsafe {
        let flags = libc::fcntl(listen_fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(listen_fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return;
        }
    }
    loop {
        // SAFETY: the listener's fd is open for the call; null address arguments are allowed.
        let fd = unsafe {
            libc::accept4(
                listen_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            // EAGAIN: the backlog is empty. Any other error: nothing more to take in here.
            return;
        }
        // SAFETY: `fd` was just returned by accept4: an open, connected TCP socket we own.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        admit(ctx, Ok(stream)).await;
    }
}

/// Serves an accepted connection, or refuses it beyond the connection limit.
async fn admit(ctx: &Rc<Ctx>, accepted: glommio::Result<TcpStream, ()>) {
    let stream = match accepted {
        Ok(stream) => stream,
        Err(e) => {
            // Out of descriptors, say: the condition lasts, so do not spin on it.
            tracing::warn!("client port accept: {e}");
            glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
            return;
        }
    };
    // Counted from acceptance: a connection whose task has not run yet holds a slot too.
    if ctx.admitted.get() >= ctx.limits.max_connections {
        bump(&ctx.counters.connections_refused);
        tracing::warn!(limit = ctx.limits.max_connections, "client port: connection limit reached, refusing");
        // Over TLS a plaintext answer would be garbage to the client: just close.
        if ctx.security.tls.is_none() {
            glommio::spawn_local(refuse(stream, ctx.limits.max_connections)).detach();
        }
        return;
    }
    bump(&ctx.counters.connections_accepted);
    ctx.admitted.set(ctx.admitted.get() + 1);
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let _admitted = Admitted(ctx.clone());
        serve_connection(stream, ctx).await;
    })
    .detach();
}

/// Closes every connection once it has nothing in flight and waits for a read (see
/// [`ClientServer::shutdown`]), until none is left or [`drain_timeout`] passed: its pending
/// read is woken, and its task sends the last answer and closes.
async fn drain(ctx: &Rc<Ctx>) {
    let deadline = Instant::now() + drain_timeout(ctx.handle.config().request_timeout_ms);
    while ctx.admitted.get() > 0 && Instant::now() < deadline {
        for c in ctx.conns.borrow().values() {
            if !c.goaway.get() && c.reading.get() && c.inflight.get() == 0 {
                c.goaway.set(true);
                if let Some(wake) = c.wake_goaway.borrow_mut().take() {
                    let _ = wake.send(());
                }
            }
        }
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    let left = ctx.admitted.get();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "client port: requests still in flight after the drain timeout; closing"
        );
    }
}

/// Tells a connection beyond the limit why it is closed: one `BUSY` answer (id 0), written
/// into the fresh socket's empty send buffer, then close.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let resp = ClientResponse {
        id: 0,
        result: Some(error(
            ClientErrorCode::Busy,
            format!("connection limit ({limit}) reached on this node; retry later or use another node"),
        )),
    };
    let mut buf = Vec::new();
    if encode_frame(FrameKind::App(RESPONSE_KIND), &resp, MAX_CLIENT_FRAME_BYTES, &mut buf).is_ok() {
        let _ = stream.write_all(&buf).await;
    }
    let _ = stream.close().await;
}

/// Closes connections past a deadline: a frame begun `frame_timeout` ago and still
/// incomplete, or nothing in flight and nothing received for `idle_timeout`. Closing is a
/// `shutdown(2)` of the socket, which ends the connection's pending read; its task then
/// cleans up. One task for all connections: a timer per connection would cost a wake-up
/// per connection.
async fn sweep(ctx: Rc<Ctx>) {
    loop {
        glommio::timer::sleep(ctx.limits.sweep_interval()).await;
        let now = Instant::now();
        for c in ctx.conns.borrow().values() {
            if c.closed.get().is_some() {
                continue;
            }
            let why =
                if c.frame_started.get().is_some_and(|t| now.duration_since(t) > ctx.limits.frame_timeout) {
                    Some(Closed::FrameTimeout)
                } else if c.inflight.get() == 0
                    && now.duration_since(c.last_activity.get()) > ctx.limits.idle_timeout
                {
                    Some(Closed::Idle)
                } else {
                    None
                };
            if let Some(why) = why {
                c.closed.set(Some(why));
                match why {
                    Closed::Idle => bump(&ctx.counters.closed_idle),
                    Closed::FrameTimeout => bump(&ctx.counters.closed_frame_timeout),
                }
                tracing::info!(peer = %c.peer, reason = ?why, "client port: closing connection");
                // SAFETY: `fd` is the socket of a connection still registered, so still open
                // (a connection leaves the registry before its socket is dropped).
                unsafe {
                    libc::shutdown(c.fd, libc::SHUT_RDWR);
                }
            }
        }
    }
}

/// Counts a connection from its acceptance until its task ends (or is dropped): the drain
/// waits for every one, including those whose task has not run yet.
struct Admitted(Rc<Ctx>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.set(self.0.admitted.get().saturating_sub(1));
    }
}

/// Removes a connection from the registry and the open count on every exit path, before
/// its socket is dropped.
struct Registered<'a> {
    ctx: &'a Ctx,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ctx.conns.borrow_mut().remove(&self.id);
        self.ctx.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(stream: TcpStream, ctx: Rc<Ctx>) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    // A TLS handshake counts as a frame begun: the sweeper closes one that does not complete
    // within the frame timeout, and it holds a connection slot meanwhile.
    let (goaway_tx, mut goaway_rx) = futures_channel::oneshot::channel::<()>();
    let state = Rc::new(ConnState {
        fd: stream.as_raw_fd(),
        peer: peer.clone(),
        last_activity: Cell::new(Instant::now()),
        frame_started: Cell::new(ctx.security.tls.as_ref().map(|_| Instant::now())),
        inflight: Cell::new(0),
        closed: Cell::new(None),
        reading: Cell::new(false),
        goaway: Cell::new(false),
        wake_goaway: RefCell::new(Some(goaway_tx)),
    });
    let id = ctx.next_conn.get();
    ctx.next_conn.set(id + 1);
    ctx.conns.borrow_mut().insert(id, state.clone());
    ctx.counters.connections_open.fetch_add(1, Ordering::Relaxed);
    // Unregisters on every exit. The socket may close just before (the halves, declared
    // later, drop first; a failed TLS handshake drops it inside `accept`), but never with an
    // await in between: the sweeper, on this thread, cannot see a registered closed fd.
    let _registered = Registered { ctx: &ctx, id };
    let stream = match &ctx.security.tls {
        None => Conn::Plain(stream),
        Some((tls, certs)) => match TlsStream::accept(stream, tls.client_port(*certs)).await {
            Ok(t) => Conn::Tls(t),
            Err(e) => {
                bump(&ctx.counters.tls_failures);
                tracing::info!(%peer, "client port: TLS handshake failed, closing: {e}");
                return;
            }
        },
    };
    state.frame_started.set(None);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let limits = &ctx.limits;
    let (tx, rx) = flume::bounded::<ClientResponse>(limits.max_inflight_per_connection);
    let writer_state = state.clone();
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
            writer_state.last_activity.set(Instant::now());
        }
        // A FIN after the last answer (a TLS close_notify first): the client reads every
        // answer, then the end.
        let _ = writer.close().await;
    });
    let count = Rc::new(Semaphore::new(limits.max_inflight_per_connection as u64));
    let conn_bytes = Rc::new(Semaphore::new(limits.max_inflight_bytes_per_connection as u64));
    let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    let mut authenticated = ctx.security.token.is_none();
    'conn: loop {
        let mut completed_any = false;
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    bump(&ctx.counters.closed_bad_input);
                    tracing::info!(%peer, "client port: bad frame, closing: {e}");
                    break 'conn;
                }
            };
            if frame.kind == FrameKind::App(AUTH_KIND) || !authenticated {
                completed_any = true;
                match check_token(&ctx.security, &frame) {
                    Ok(()) => {
                        authenticated = true;
                        continue;
                    }
                    Err(why) => {
                        bump(&ctx.counters.closed_unauthenticated);
                        tracing::info!(%peer, "client port: {why}, closing");
                        let resp = ClientResponse {
                            id: 0,
                            result: Some(error(ClientErrorCode::Unauthenticated, why)),
                        };
                        let _ = tx.try_send(resp);
                        break 'conn;
                    }
                }
            }
            let req = match decode_request(&frame) {
                Ok(r) => r,
                Err(e) => {
                    bump(&ctx.counters.closed_bad_input);
                    tracing::info!(%peer, "client port: bad request, closing: {e}");
                    break 'conn;
                }
            };
            completed_any = true;
            let len = frame.payload.len() as u64;
            bump(&ctx.counters.requests);
            // Back-pressure: no more reading until this request fits in every budget. Each
            // permit is released when its answer is queued.
            let permits = async {
                let n = count.acquire_static_permit(1).await.ok()?;
                let b = conn_bytes.acquire_static_permit(len).await.ok()?;
                let g = ctx.global_bytes.acquire_static_permit(len).await.ok()?;
                Some((n, b, g))
            }
            .await;
            let Some(permits) = permits else { break 'conn };
            state.inflight.set(state.inflight.get() + 1);
            ctx.counters.inflight_request_bytes.fetch_add(len, Ordering::Relaxed);
            let ctx = ctx.clone();
            let tx = tx.clone();
            let st = state.clone();
            glommio::spawn_local(async move {
                let resp = handle_request(&ctx, req).await;
                let _ = tx.send_async(resp).await;
                st.inflight.set(st.inflight.get() - 1);
                ctx.counters.inflight_request_bytes.fetch_sub(len, Ordering::Relaxed);
                drop(permits);
            })
            .detach();
        }
        // Between frames nothing is pending. Within one, its deadline runs from its first
        // byte: the last read, when it also completed the frame before (or a wait for room
        // came between).
        if decoder.buffered() == 0 {
            state.frame_started.set(None);
        } else if completed_any {
            state.frame_started.set(Some(Instant::now()));
        }
        state.reading.set(true);
        // A read dropped unfinished loses nothing: glommio receives only when it is polled.
        let read = futures_lite::future::or(
            async { Some(decoder.read_from(&mut reader, READ_CHUNK_BYTES).await) },
            async {
                let _ = (&mut goaway_rx).await;
                None
            },
        )
        .await;
        state.reading.set(false);
        // Chosen while bytes arrived: what they hold is not executed (the last answer says so).
        let read = read.filter(|_| !state.goaway.get());
        let Some(read) = read else {
            let why = "this node is shutting down; nothing sent after its last answer was executed: retry on another node";
            let _ =
                tx.try_send(ClientResponse { id: 0, result: Some(error(ClientErrorCode::NotLeader, why)) });
            drop(tx);
            writer_task.await;
            // Closing with unread bytes would send a reset, and a reset discards what the
            // client has not read yet, the last answer included: read (and ignore) what it
            // sends until it closes, for a bounded time.
            let mut sink = [0u8; 4096];
            let _ = futures_lite::future::or(
                async {
                    while matches!(futures_lite::AsyncReadExt::read(&mut reader, &mut sink).await, Ok(n) if n > 0) {}
                },
                glommio::timer::sleep(GOAWAY_LINGER),
            )
            .await;
            return;
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let now = Instant::now();
                state.last_activity.set(now);
                if state.frame_started.get().is_none() {
                    state.frame_started.set(Some(now));
                }
            }
        }
    }
    drop(tx);
    writer_task.await;
}

/// Checks a connection's first frame against the port's token (any `ClientAuth` passes when
/// the port has none, so a client may always send one).
///
/// Public, but not part of the API, for the fuzz targets (`tests/fuzz`), like
/// [`decode_request`].
#[doc(hidden)]
pub fn check_token(security: &ClientPortSecurity, frame: &Frame) -> Result<(), String> {
    if frame.kind != FrameKind::App(AUTH_KIND) {
        return Err("this client port requires a token, presented first (ctl --token)".into());
    }
    let auth: ClientAuth = frame.decode().map_err(|e| format!("undecodable token frame: {e}"))?;
    match &security.token {
        Some(t) if !t.matches(&auth.token) => Err("wrong token".into()),
        _ => Ok(()),
    }
}

/// The request a frame received on the client port carries: an error (the connection is
/// then closed) for a frame of another kind or an undecodable payload.
///
/// Public, but not part of the API, for the fuzz targets (`tests/fuzz`): they run the
/// port's decoding on arbitrary bytes without a socket or a node.
#[doc(hidden)]
pub fn decode_request(frame: &Frame) -> Result<ClientRequest, FrameError> {
    frame.expect_kind(FrameKind::App(REQUEST_KIND), "a client request")?;
    frame.decode()
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
        Status::InvalidRequest | Status::ProposalNotFound => ClientErrorCode::Invalid,
        Status::InsufficientVoters => ClientErrorCode::InsufficientVoters,
        Status::StaleMembership => ClientErrorCode::StaleMembership,
        Status::ConcurrentMembershipChange => ClientErrorCode::ConcurrentMembershipChange,
        Status::MemberNotFound => ClientErrorCode::MemberNotFound,
        Status::TooLarge => ClientErrorCode::TooLarge,
        _ => ClientErrorCode::Internal,
    };
    let message = if status == Status::TooLarge {
        format!(
            "TooLarge: an entry's payload may hold at most {} bytes, and a request's entries must fit in one \
             log write",
            ctx.handle.max_entry_bytes()
        )
    } else {
        status.name().to_string()
    };
    let mut e = ClientError { code: code as i32, message, ..Default::default() };
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
    if r.success() {
        return Ok((p, r));
    }
    if r.status == Status::ReplicationFailed {
        // One entry, overwritten by a new leader's: it was not applied and never will be.
        // Said as NOT_LEADER (with the new leader when known), which clients already retry
        // at the leader knowing nothing happened, not as an INTERNAL failure of unknown
        // outcome. (A proposal of several entries could have a prefix applied: not this one.)
        let mut e = status_error(ctx, p, Status::NodeIsNotLeader);
        if let client_response::Result::Error(err) = &mut e {
            err.message = "ReplicationFailed: a new leader overwrote the entry, which was not applied".into();
        }
        return Err(e);
    }
    Err(status_error(ctx, p, r.status))
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
            let append_len = a.value.len();
            let (partition, r) = replicate_kv(ctx, &key, kv_command::Op::AppendValue(a)).await?;
            let mut out = AppendValueResponse::decode(r.response.as_ref())
                .map_err(|_| error(ClientErrorCode::Internal, "undecodable state machine answer"))?;
            if out.too_large {
                return Err(error(
                    ClientErrorCode::TooLarge,
                    format!(
                        "TooLarge: a value may hold at most {MAX_VALUE_BYTES} bytes; it holds {} and the append \
                         adds {}",
                        out.length, append_len
                    ),
                ));
            }
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
        Op::MemberList(_) => {
            let roster = ctx.handle.roster();
            let me = ctx.handle.node_id();
            let mut lags: HashMap<NodeId, HashMap<u32, u64>> = HashMap::new();
            for st in ctx.handle.status().await.into_iter().filter(|st| st.is_leader) {
                let Ok(p) = u32::try_from(st.id) else { continue };
                for (m, lag) in st.follower_lags {
                    lags.entry(m).or_default().insert(p, lag);
                }
            }
            let members = roster
                .members
                .values()
                .map(|m| MemberInfo {
                    id: m.id,
                    raft_address: m.raft_address.clone(),
                    client_address: m.client_address.clone(),
                    role: m.role.name().to_string(),
                    liveness: if m.id == me { "up" } else { ctx.handle.liveness(m.id).name() }.to_string(),
                    partition_lag: lags.remove(&m.id).unwrap_or_default(),
                })
                .collect();
            R::MemberList(MemberListResponse {
                version: roster.version,
                members,
                partitions: roster.partitions,
            })
        }
        Op::MemberChange(c) => {
            use crate::roster::Change;
            use phalanx_proto::member_change_request::Change as C;
            let change = match c.change {
                Some(C::Add(a)) => Change::Add(a.id, a.raft_address, a.client_address),
                Some(C::Promote(id)) => Change::Promote(id),
                Some(C::Remove(id)) => Change::Remove(id),
                None => return Err(error(ClientErrorCode::Invalid, "a member change with no change in it")),
            };
            let expected =
                if c.expected_version == 0 { ctx.handle.roster().version } else { c.expected_version };
            let r = ctx.handle.change_roster(expected, change).await;
            if r.status != Status::Success {
                let mut e = status_error(ctx, 0, r.status);
                if let client_response::Result::Error(err) = &mut e
                    && !r.reason.is_empty()
                    && r.reason != r.status.name()
                {
                    err.message = format!("{}: {}", r.status.name(), r.reason);
                }
                return Err(e);
            }
            R::MemberChange(MemberChangeResponse { version: r.version, changed: r.changed })
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
                    voters: s.membership.voters.iter().copied().collect(),
                    learners: s.membership.learners.iter().copied().collect(),
                })
                .collect();
            R::Status(StatusResponse {
                node_id: ctx.handle.node_id(),
                nodes,
                partitions,
                client_port: Some(Box::new(ctx.counters.snapshot())),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_outlasts_the_request_timeout_whatever_it_is() {
        let default = crate::NodeConfig::new(1, "unused").request_timeout_ms;
        for ms in [1, default, 30_000, 600_000, u64::MAX] {
            let d = drain_timeout(ms);
            assert!(d > Duration::from_millis(ms) || ms == u64::MAX, "{ms} ms: drain {d:?}");
            assert!(d >= DRAIN_MARGIN);
        }
        assert_eq!(drain_timeout(default), Duration::from_millis(default) + DRAIN_MARGIN);
    }
}
