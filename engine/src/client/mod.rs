//! The client port: framed protobuf (`phalanx.v1.ClientRequest` / `ClientResponse`) over
//! TCP, using the transport's frame format with the application kinds below. `server.rs`
//! serves it from a node; [`Client`] is a small blocking client (for `phalanx ctl`, tests
//! and tools).

pub mod server;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use phalanx_net::frame::{FrameDecoder, FrameKind, encode_frame};
use phalanx_proto::{
    ClientError, ClientErrorCode, ClientRequest, ClientResponse, client_request, client_response,
};

/// Frame kind of a client request.
pub const REQUEST_KIND: u8 = 64;
/// Frame kind of a client response.
pub const RESPONSE_KIND: u8 = 65;
/// Largest client frame (request or response).
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 << 20;
/// How long the blocking client waits for a connection or an answer.
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(15);

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

/// A blocking connection to one node's client port. Requests are sent one at a time.
pub struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u64,
    endpoint: String,
}

impl Client {
    /// Connects to `endpoint` ("host:port").
    pub fn connect(endpoint: &str) -> Result<Client, ClientFailure> {
        let addrs: Vec<_> =
            endpoint.to_socket_addrs().map_err(|e| ClientFailure::Io(format!("{endpoint}: {e}")))?.collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CLIENT_IO_TIMEOUT) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream
                        .set_read_timeout(Some(CLIENT_IO_TIMEOUT))
                        .and_then(|()| stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT)))
                        .map_err(|e| ClientFailure::Io(e.to_string()))?;
                    return Ok(Client {
                        stream,
                        decoder: FrameDecoder::new(MAX_CLIENT_FRAME_BYTES),
                        next_id: 1,
                        endpoint: endpoint.to_owned(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ClientFailure::Io(format!(
            "{endpoint}: {}",
            last.map_or_else(|| "no address".to_string(), |e| e.to_string())
        )))
    }

    /// The endpoint this client is connected to.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one request and waits for its answer; a typed error reply becomes
    /// `ClientFailure::Server`.
    pub fn call(&mut self, op: client_request::Op) -> Result<client_response::Result, ClientFailure> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ClientRequest { id, op: Some(op) };
        let mut buf = Vec::new();
        encode_frame(FrameKind::App(REQUEST_KIND), &req, MAX_CLIENT_FRAME_BYTES, &mut buf)
            .map_err(|e| ClientFailure::Protocol(e.to_string()))?;
        self.stream.write_all(&buf).map_err(|e| ClientFailure::Io(e.to_string()))?;
        let resp: ClientResponse = loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => {
                    if f.kind != FrameKind::App(RESPONSE_KIND) {
                        return Err(ClientFailure::Protocol(format!("unexpected frame kind {:?}", f.kind)));
                    }
                    break f.decode().map_err(|e| ClientFailure::Protocol(e.to_string()))?;
                }
                Ok(None) => {}
                Err(e) => return Err(ClientFailure::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).map_err(|e| ClientFailure::Io(e.to_string()))?;
            if n == 0 {
                return Err(ClientFailure::Io("connection closed by the server".into()));
            }
            self.decoder.push(&chunk[..n]);
        };
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
