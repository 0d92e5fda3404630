//! The client port: framed protobuf (`phalanx.v1.ClientRequest` / `ClientResponse`) over
//! TCP, using the transport's frame format with the application kinds below. `server.rs`
//! serves it from a node; [`Client`] is a small blocking client (for `phalanx ctl`, tests
//! and tools).

pub mod security;
pub mod server;

pub use security::ClientSecurity;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use phalanx_net::frame::{FrameDecoder, FrameKind, encode_frame};
use phalanx_net::tls::rustls::{ClientConnection, StreamOwned};
use phalanx_proto::{
    ClientAuth, ClientError, ClientErrorCode, ClientRequest, ClientResponse, client_request, client_response,
};

/// Frame kind of a client request.
pub const REQUEST_KIND: u8 = 64;
/// Frame kind of a client response.
pub const RESPONSE_KIND: u8 = 65;
/// Frame kind of a connection's token (`phalanx.v1.ClientAuth`), sent first.
pub const AUTH_KIND: u8 = 66;
/// Largest client frame (request or response).
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 << 20;
/// Bytes a request or an answer adds at most to the value it carries: its id, the
/// operation's tags and lengths, a partition and log index, and a key of at most
/// `MAX_KEY_BYTES`.
const CLIENT_FRAME_ENVELOPE_BYTES: usize = crate::kv::MAX_KEY_BYTES + 128;
// Every answer fits in one frame: the largest carries one value (a get's, or the current value
// of a compare-and-set). A request is a value within one entry payload (a compare-and-set's
// two values together), so the largest the node accepts fits too; larger ones are read
// whole, up to the frame, and refused `TOO_LARGE`.
const _: () = assert!(crate::kv::MAX_VALUE_BYTES + CLIENT_FRAME_ENVELOPE_BYTES <= MAX_CLIENT_FRAME_BYTES);
/// How long the blocking client waits for a connection, by default. Well below
/// [`CLIENT_REQUEST_TIMEOUT`]: a dead or paused endpoint must leave time to try the others.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the blocking client waits for one answer (sending the request included), by
/// default (etcdctl's command timeout). A node answers a request it cannot complete with
/// `TIMEOUT` after its own `request_timeout_ms`; callers that wait longer raise this.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a [`Client`] waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// For the TCP connection to be established (per address the endpoint resolves to).
    pub connect: Duration,
    /// For one request: sending it and receiving its answer.
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts { connect: CLIENT_CONNECT_TIMEOUT, request: CLIENT_REQUEST_TIMEOUT }
    }
}

/// A client-side failure: IO, a protocol violation by the server, or a typed error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFailure {
    /// Could not connect, send or receive.
    Io(String),
    /// The server broke the protocol.
    Protocol(String),
    /// The server answered with a typed error.
    Server(ClientError),
}

impl std::fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientFailure::Io(e) => write!(f, "io error: {e}"),
            ClientFailure::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientFailure::Server(e) => {
                let code = ClientErrorCode::try_from(e.code)
                    .map_or("UNKNOWN", |c| c.as_str_name().trim_start_matches("CLIENT_ERROR_CODE_"));
                write!(f, "{code}: {}", e.message)?;
                if e.leader_id != 0 {
                    write!(f, " (leader: node {}", e.leader_id)?;
                    if !e.leader_address.is_empty() {
                        write!(f, " at {}", e.leader_address)?;
                    }
                    write!(f, ")")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ClientFailure {}

/// The socket of a [`Client`], plain or through TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn sock(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A blocking connection to one node's client port. Requests are sent one at a time.
pub struct Client {
    stream: Stream,
    decoder: FrameDecoder,
    next_id: u64,
    endpoint: String,
    timeouts: ClientTimeouts,
}

/// What an IO error means for the person reading it: "timed out" rather than the errno
/// text of a socket timeout ("Resource temporarily unavailable").
fn describe_io(e: &std::io::Error, what: &str, after: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("{what} timed out after {:.1} s", after.as_secs_f64())
        }
        std::io::ErrorKind::ConnectionRefused => {
            format!("{what}: connection refused (nothing listens there)")
        }
        _ => format!("{what}: {e}"),
    }
}

/// Completes a TLS handshake with `endpoint` within `limit`.
fn tls_handshake(
    endpoint: &str,
    cfg: &std::sync::Arc<phalanx_net::tls::rustls::ClientConfig>,
    mut sock: TcpStream,
    limit: Duration,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientFailure> {
    let name = phalanx_net::tls::server_name(endpoint).map_err(|e| ClientFailure::Io(e.to_string()))?;
    let mut conn = ClientConnection::new(cfg.clone(), name)
        .map_err(|e| ClientFailure::Io(format!("{endpoint}: TLS: {e}")))?;
    let _ = sock.set_read_timeout(Some(limit));
    let _ = sock.set_write_timeout(Some(limit));
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| ClientFailure::Io(describe_io(&e, &format!("{endpoint}: TLS handshake"), limit)))?;
    }
    Ok(StreamOwned::new(conn, sock))
}

impl Client {
    /// Connects to `endpoint` ("host:port") with the default timeouts.
    pub fn connect(endpoint: &str) -> Result<Client, ClientFailure> {
        Client::connect_with(endpoint, ClientTimeouts::default())
    }

    /// Connects to `endpoint` ("host:port"). Every failure names the endpoint and the cause.
    pub fn connect_with(endpoint: &str, timeouts: ClientTimeouts) -> Result<Client, ClientFailure> {
        Client::connect_secure(endpoint, timeouts, &ClientSecurity::default())
    }

    /// Connects to `endpoint` with TLS and/or a token. The TLS handshake (and so a refused
    /// certificate) completes here, within the connect timeout; the token is sent first and
    /// judged by the server's answer to the first request.
    pub fn connect_secure(
        endpoint: &str,
        timeouts: ClientTimeouts,
        security: &ClientSecurity,
    ) -> Result<Client, ClientFailure> {
        let addrs: Vec<_> = endpoint
            .to_socket_addrs()
            .map_err(|e| ClientFailure::Io(format!("{endpoint}: not a reachable address: {e}")))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeouts.connect) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let mut stream = match &security.tls {
                        None => Stream::Plain(stream),
                        Some(cfg) => {
                            Stream::Tls(Box::new(tls_handshake(endpoint, cfg, stream, timeouts.connect)?))
                        }
                    };
                    if let Some(token) = &security.token {
                        let mut buf = Vec::new();
                        let auth = ClientAuth { token: token.clone().into() };
                        encode_frame(FrameKind::App(AUTH_KIND), &auth, MAX_CLIENT_FRAME_BYTES, &mut buf)
                            .map_err(|e| ClientFailure::Protocol(e.to_string()))?;
                        let _ = stream.sock().set_write_timeout(Some(timeouts.connect));
                        stream.write_all(&buf).and_then(|()| stream.flush()).map_err(|e| {
                            ClientFailure::Io(describe_io(
                                &e,
                                &format!("{endpoint}: sending the token"),
                                timeouts.connect,
                            ))
                        })?;
                    }
                    return Ok(Client {
                        stream,
                        decoder: FrameDecoder::new(MAX_CLIENT_FRAME_BYTES),
                        next_id: 1,
                        endpoint: endpoint.to_owned(),
                        timeouts,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ClientFailure::Io(match last {
            Some(e) => describe_io(&e, &format!("{endpoint}: connecting"), timeouts.connect),
            None => format!("{endpoint}: resolves to no address"),
        }))
    }

    /// The endpoint this client is connected to.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one request and waits for its answer (at most the request timeout); a typed
    /// error reply becomes `ClientFailure::Server`.
    pub fn call(&mut self, op: client_request::Op) -> Result<client_response::Result, ClientFailure> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ClientRequest { id, op: Some(op) };
        let mut buf = Vec::new();
        encode_frame(FrameKind::App(REQUEST_KIND), &req, MAX_CLIENT_FRAME_BYTES, &mut buf)
            .map_err(|e| ClientFailure::Protocol(e.to_string()))?;
        let limit = self.timeouts.request;
        let deadline = std::time::Instant::now() + limit;
        let ep = self.endpoint.clone();
        // The time left, or a timeout failure naming what was being waited for.
        let left = |what: &str| {
            deadline.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()).ok_or_else(
                || ClientFailure::Io(format!("{ep}: {what} timed out after {:.1} s", limit.as_secs_f64())),
            )
        };
        let io = |e: std::io::Error, what: &str| {
            ClientFailure::Io(describe_io(&e, &format!("{ep}: {what}"), limit))
        };
        self.stream
            .sock()
            .set_write_timeout(Some(left("sending the request")?))
            .map_err(|e| io(e, "socket"))?;
        self.stream
            .write_all(&buf)
            .and_then(|()| self.stream.flush())
            .map_err(|e| io(e, "sending the request"))?;
        let resp: ClientResponse = loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => {
                    if f.kind != FrameKind::App(RESPONSE_KIND) {
                        return Err(ClientFailure::Protocol(format!(
                            "{ep}: unexpected frame kind {:?}",
                            f.kind
                        )));
                    }
                    break f.decode().map_err(|e| ClientFailure::Protocol(format!("{ep}: {e}")))?;
                }
                Ok(None) => {}
                Err(e) => return Err(ClientFailure::Protocol(format!("{ep}: {e}"))),
            }
            self.stream
                .sock()
                .set_read_timeout(Some(left("waiting for the answer")?))
                .map_err(|e| io(e, "socket"))?;
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).map_err(|e| io(e, "waiting for the answer"))?;
            if n == 0 {
                return Err(ClientFailure::Io(format!("{ep}: connection closed by the server")));
            }
            self.decoder.push(&chunk[..n]);
        };
        // Id 0 answers the connection, not a request: why it is refused (connection limit,
        // missing token), sent just before the server closes it.
        if resp.id == 0
            && let Some(client_response::Result::Error(e)) = resp.result
        {
            return Err(ClientFailure::Server(e));
        }
        if resp.id != id {
            return Err(ClientFailure::Protocol(format!(
                "answer for request {} while waiting for {id}",
                resp.id
            )));
        }
        match resp.result {
            Some(client_response::Result::Error(e)) => Err(ClientFailure::Server(e)),
            Some(r) => Ok(r),
            None => Err(ClientFailure::Protocol("empty response".into())),
        }
    }
}
