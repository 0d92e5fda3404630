//! The client port against clients that misbehave (issue 11, items 4 and 5): memory follows
//! what a connection sent, half-sent frames and idle connections are closed, connections
//! beyond the limit get a clear refusal, a port in use is an error, and each is counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use phalanx::client::server::{ClientServer, ServerLimits};
use phalanx::client::{Client, ClientFailure, MAX_CLIENT_FRAME_BYTES, RESPONSE_KIND};
use phalanx_net::conformance::closed_within;
use phalanx_net::frame::{FrameDecoder, FrameKind};
use phalanx_proto::{ClientErrorCode, ClientResponse, StatusRequest, client_request::Op};

mod client_support;
use client_support::{Server, WAIT};

fn serve(limits: ServerLimits) -> Server {
    client_support::serve_with(limits, Default::default(), 4)
}

/// A frame header announcing `len` bytes of a client request, and nothing else.
fn header_only(len: u32) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.push(phalanx::client::REQUEST_KIND);
    h
}

fn small_timeouts() -> ServerLimits {
    ServerLimits {
        idle_timeout: Duration::from_millis(300),
        frame_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    }
}

#[test]
fn a_half_sent_frame_is_closed_after_the_frame_timeout() {
    let srv = serve(small_timeouts());
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).expect("connects");
            let len = u32::try_from(MAX_CLIENT_FRAME_BYTES).expect("fits");
            s.write_all(&header_only(len)).expect("sends a header");
            // A trickle of payload bytes: activity, but the frame never completes.
            s.write_all(&[0u8; 100]).expect("sends a little");
            s
        })
        .collect();
    for s in &mut conns {
        assert!(closed_within(s, WAIT), "a half-sent frame stayed open");
    }
    srv.wait("all counted", |s| s.closed_frame_timeout == 50 && s.connections_open == 0);
    assert_eq!(srv.stats().closed_idle, 0);
}

#[test]
fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let srv = serve(small_timeouts());
    let mut idle = TcpStream::connect(srv.addr).expect("connects");
    let t0 = Instant::now();
    assert!(closed_within(&mut idle, WAIT));
    assert!(t0.elapsed() >= Duration::from_millis(250), "closed before the idle timeout");
    srv.wait("idle close counted", |s| s.closed_idle == 1);
    // A client that keeps asking stays connected well past the idle timeout.
    let timeouts = phalanx::client::ClientTimeouts::default();
    let mut c = Client::connect_with(&srv.addr.to_string(), timeouts).expect("connects");
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        c.call(Op::Status(StatusRequest {})).expect("answered on the same connection");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(srv.stats().closed_idle, 1);
}

#[test]
fn connections_beyond_the_limit_are_refused_with_a_reason() {
    let srv = serve(ServerLimits { max_connections: 3, ..ServerLimits::default() });
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(srv.addr).expect("connects")).collect();
    srv.wait("three open", |s| s.connections_open == 3);
    let mut extra = TcpStream::connect(srv.addr).expect("the kernel accepts");
    extra.set_read_timeout(Some(WAIT)).expect("a socket option");
    let mut d = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    let frame = loop {
        if let Some(f) = d.next_frame().expect("a valid frame") {
            break f;
        }
        let mut buf = [0u8; 1024];
        let n = extra.read(&mut buf).expect("the refusal arrives");
        assert!(n > 0, "closed without a reason");
        d.push(&buf[..n]);
    };
    assert_eq!(frame.kind, FrameKind::App(RESPONSE_KIND));
    let resp: ClientResponse = frame.decode().expect("a response");
    match resp.result {
        Some(phalanx_proto::client_response::Result::Error(e)) => {
            assert_eq!(e.code, ClientErrorCode::Busy as i32);
            assert!(e.message.contains("connection limit"), "{}", e.message);
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert!(closed_within(&mut extra, WAIT));
    srv.wait("refusal counted", |s| s.connections_refused == 1);
    drop(held);
    srv.wait("the held ones close", |s| s.connections_open == 0);
    // Room again: a client gets served.
    let mut c = Client::connect(&srv.addr.to_string()).expect("connects");
    c.call(Op::Status(StatusRequest {})).expect("served");
}

#[test]
fn bad_frames_close_the_connection_and_are_counted() {
    let srv = serve(ServerLimits::default());
    let garbage: [&[u8]; 3] = [
        // A frame larger than the limit, refused from its header.
        &header_only(u32::MAX),
        // A kind that is not a client request.
        &[0, 0, 0, 1, 4, 0],
        // A request that does not decode.
        &[0, 0, 0, 2, phalanx::client::REQUEST_KIND, 0xFF, 0xFF],
    ];
    for g in garbage {
        let mut s = TcpStream::connect(srv.addr).expect("connects");
        s.write_all(g).expect("sends");
        assert!(closed_within(&mut s, WAIT), "{g:?} left the connection open");
    }
    srv.wait("counted", |s| s.closed_bad_input == 3);
    // The node still serves.
    Client::connect(&srv.addr.to_string())
        .and_then(|mut c| c.call(Op::Status(StatusRequest {})))
        .expect("served");
}

#[test]
fn a_client_port_in_use_is_an_error() {
    let srv = serve(ServerLimits::default());
    let e = ClientServer::bind(srv.addr).expect_err("the port is taken");
    assert!(
        matches!(&e, phalanx::Error::ClientPort { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
        "{e:?}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn the_blocking_client_names_the_endpoint_and_the_cause() {
    // Refused: nothing listens (a port just freed).
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let free = l.local_addr().expect("an address");
    drop(l);
    let t0 = Instant::now();
    let e = Client::connect(&free.to_string()).err().expect("refused");
    assert!(t0.elapsed() < Duration::from_secs(1), "a refusal is immediate");
    assert!(
        matches!(&e, ClientFailure::Io(m) if m.contains(&free.to_string()) && m.contains("refused")),
        "{e}"
    );
    // Accepts and never answers: the answer times out, named as such.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = silent.local_addr().expect("an address").to_string();
    let timeouts = phalanx::client::ClientTimeouts {
        connect: Duration::from_millis(200),
        request: Duration::from_millis(300),
    };
    let mut c = Client::connect_with(&addr, timeouts).expect("the kernel accepts");
    let t0 = Instant::now();
    let e = c.call(Op::Status(StatusRequest {})).expect_err("no answer");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(matches!(&e, ClientFailure::Io(m) if m.contains(&addr) && m.contains("timed out")), "{e}");
}

/// Issue 11, item 1, through the client port: four concurrent puts of 7 MiB values (each
/// legal, together beyond one WAL batch) once stopped the node. Issue 12, item 5: the largest
/// value a put of a given key can carry (its command is exactly the largest entry payload) is
/// stored and read back whole; one byte more gets TOO_LARGE naming the limit; appends that
/// would grow a value past `MAX_VALUE_BYTES` are refused (a value once grew without bound, and
/// its get answer no longer fitted a frame); the node serves on.
#[test]
fn large_values_at_the_limit_are_stored_and_beyond_it_refused() {
    let srv = serve(ServerLimits::default());
    let ep = srv.addr.to_string();
    let timeouts =
        phalanx::client::ClientTimeouts { connect: Duration::from_secs(1), request: Duration::from_secs(30) };
    let call = move |op: Op| {
        let mut c = Client::connect_with(&ep, timeouts).expect("connects");
        let deadline = Instant::now() + WAIT;
        loop {
            match c.call(op.clone()) {
                // The single node elects itself right after start.
                Err(ClientFailure::Server(e))
                    if e.code == ClientErrorCode::NotLeader as i32 && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    };
    let put = {
        let call = call.clone();
        move |key: &str, len: usize| {
            let value = bytes::Bytes::from(vec![b'v'; len]);
            call(Op::Put(phalanx_proto::PutRequest { key: key.into(), value }))
        }
    };
    let limit = phalanx::config::MAX_ENTRY_PAYLOAD_BYTES;
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let put = put.clone();
            std::thread::spawn(move || put(&format!("big-{i}"), 7 << 20).map(|_| ()))
        })
        .collect();
    for w in writers {
        w.join().expect("writer").expect("a 7 MiB put is stored");
    }
    let too_large = |r: Result<_, ClientFailure>, names: usize| match r {
        Err(ClientFailure::Server(e)) => {
            assert_eq!(e.code, ClientErrorCode::TooLarge as i32, "{}", e.message);
            assert!(e.message.contains(&names.to_string()), "{}", e.message);
        }
        other => panic!("not refused as too large: {other:?}"),
    };
    // The largest value of this key: its put command is exactly the largest entry payload.
    let key = "edge";
    let command_len = |len: usize| {
        let put = phalanx_proto::PutRequest { key: key.into(), value: vec![0u8; len].into() };
        prost::Message::encoded_len(&phalanx_proto::KvCommand {
            op: Some(phalanx_proto::kv_command::Op::Put(put)),
        })
    };
    let mut largest = limit;
    while command_len(largest) > limit {
        largest -= 1;
    }
    assert_eq!(command_len(largest), limit, "a value length makes the command exactly the limit");
    put(key, largest).expect("the largest value is stored");
    match call(Op::Get(phalanx_proto::GetRequest { key: key.into() })) {
        Ok(phalanx_proto::client_response::Result::Get(g)) => {
            assert_eq!(g.value.len(), largest, "read back whole");
            assert!(g.value.iter().all(|b| *b == b'v'));
        }
        other => panic!("get of the largest value: {other:?}"),
    }
    too_large(put(key, largest + 1), limit);
    // Appends: up to the largest value, not one byte beyond; a refused append changes nothing.
    let append = |len: usize| {
        let value = bytes::Bytes::from(vec![b'a'; len]);
        call(Op::AppendValue(phalanx_proto::AppendValueRequest { key: "grown".into(), value }))
    };
    let max_value = phalanx::kv::MAX_VALUE_BYTES;
    let half = max_value / 2;
    append(half).expect("half the largest value");
    too_large(append(max_value - half + 1), max_value);
    match append(max_value - half).expect("up to the largest value") {
        phalanx_proto::client_response::Result::AppendValue(a) => assert_eq!(a.length, max_value as u64),
        other => panic!("append answer: {other:?}"),
    }
    too_large(append(1), max_value);
    match call(Op::Get(phalanx_proto::GetRequest { key: "grown".into() })) {
        Ok(phalanx_proto::client_response::Result::Get(g)) => assert_eq!(g.value.len(), max_value),
        other => panic!("get of the grown value: {other:?}"),
    }
    assert!(srv.node.as_ref().expect("running").handle().failure().is_none());
    put("small", 10).expect("the node serves on");
}

/// Issue 15, a rolling restart with no failed write: stopping the port answers what is in
/// flight, then tells each client (an id-0 `NOT_LEADER` naming no leader) that nothing it
/// sent after its last answer was executed, so the client retries elsewhere knowing the
/// outcome, instead of seeing its connection cut.
#[test]
fn stopping_the_port_tells_idle_clients_to_go_elsewhere() {
    let mut srv = serve(ServerLimits::default());
    let ep = srv.addr.to_string();
    let mut c = Client::connect(&ep).expect("connects");
    let deadline = Instant::now() + WAIT;
    loop {
        match c.call(Op::Status(StatusRequest {})) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
    }
    let t0 = Instant::now();
    srv.server.take().expect("running").shutdown();
    assert!(t0.elapsed() < Duration::from_secs(5), "an idle connection does not hold the drain");
    match c.call(Op::Status(StatusRequest {})) {
        Err(ClientFailure::Server(e)) => {
            assert_eq!(e.code, ClientErrorCode::NotLeader as i32, "{e:?}");
            assert!(e.leader_address.is_empty() && e.message.contains("shutting down"), "{e:?}");
        }
        other => panic!("expected the drain's answer, got {other:?}"),
    }
}

/// Issue 15: clients that connect while the port stops never see their connection cut after
/// they sent a request. Each is refused at connect (nothing sent), or connects and gets an
/// answer: its request's, or the drain's go-elsewhere. A connection that completed its
/// handshake after the port took in its backlog for the last time was reset by the
/// listener's close, after its client sent a request (an unknown outcome).
#[test]
fn clients_connecting_while_the_port_stops_are_answered_or_refused_at_connect() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    /// Stops of the port, each with clients connecting throughout.
    const ROUNDS: usize = 10;
    /// Client threads connecting in a loop.
    const CONNECTORS: usize = 6;
    let timeouts = phalanx::client::ClientTimeouts {
        connect: Duration::from_millis(300),
        request: Duration::from_secs(5),
    };
    for round in 0..ROUNDS {
        let mut srv = serve(ServerLimits::default());
        let ep = srv.addr.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..CONNECTORS)
            .map(|_| {
                let (ep, stop, answered) = (ep.clone(), stop.clone(), answered.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = Client::connect_with(&ep, timeouts) else { continue };
                        match c.call(Op::Status(StatusRequest {})) {
                            Ok(_) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::NotLeader as i32 => {}
                            Err(e) => return Err(format!("a request sent on an accepted connection: {e}")),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        wait_for_answers(&answered, 200, &threads);
        srv.server.take().expect("running").shutdown();
        // Connect attempts go on against the closed port for a moment (refused at once).
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let outcome = t.join().expect("client thread");
            assert!(outcome.is_ok(), "round {round}: {}", outcome.unwrap_err());
        }
    }
}

/// Issue 15: clients sending on their connection without pause while the port stops never
/// see it cut. Each request gets its answer, or the connection gets the drain's go-elsewhere
/// (an id-0 `NOT_LEADER` naming no leader) as the answer to the next request: a request that
/// arrives just as the drain chose the connection is not executed, and the client is told.
/// Writes and reads alternate, so some are in flight through the drain.
#[test]
fn clients_sending_without_pause_while_the_port_stops_get_an_answer_or_the_go_elsewhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Stops of the port, each with every client sending throughout.
    const ROUNDS: usize = 10;
    /// Client threads, each on one connection.
    const SENDERS: usize = 8;
    let timeouts =
        phalanx::client::ClientTimeouts { connect: Duration::from_secs(2), request: Duration::from_secs(10) };
    for round in 0..ROUNDS {
        let mut srv = serve(ServerLimits::default());
        let ep = srv.addr.to_string();
        let answered = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..SENDERS)
            .map(|t| {
                let (ep, answered) = (ep.clone(), answered.clone());
                std::thread::spawn(move || -> Result<u64, String> {
                    let mut c = Client::connect_with(&ep, timeouts).map_err(|e| format!("connect: {e}"))?;
                    let mut started = false;
                    let mut n = 0u64;
                    loop {
                        let op = if n % 2 == 0 {
                            Op::Put(phalanx_proto::PutRequest {
                                key: format!("k{t}"),
                                value: bytes::Bytes::from(format!("{n}")),
                            })
                        } else {
                            Op::Status(StatusRequest {})
                        };
                        match c.call(op) {
                            Ok(_) => {
                                started |= n % 2 == 0;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ClientFailure::Server(e))
                                if e.code == ClientErrorCode::NotLeader as i32
                                    && e.message.contains("shutting down") =>
                            {
                                return Ok(n);
                            }
                            // Before its first write is answered, the node may not lead the key's
                            // partition yet (a status is answered either way).
                            Err(ClientFailure::Server(e))
                                if !started && e.code == ClientErrorCode::NotLeader as i32 =>
                            {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(e) => return Err(format!("request {n}: {e}")),
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        wait_for_answers(&answered, 400, &threads);
        srv.server.take().expect("running").shutdown();
        for t in threads {
            let outcome = t.join().expect("client thread");
            assert!(outcome.is_ok(), "round {round}: {}", outcome.unwrap_err());
        }
    }
}

/// Waits until the clients had `n` answers, or one of their threads ended early (the caller
/// reports its error when it joins them).
fn wait_for_answers<T>(
    answered: &std::sync::atomic::AtomicU64,
    n: u64,
    threads: &[std::thread::JoinHandle<T>],
) {
    let deadline = Instant::now() + WAIT;
    while answered.load(std::sync::atomic::Ordering::Relaxed) < n
        && !threads.iter().any(std::thread::JoinHandle::is_finished)
    {
        assert!(Instant::now() < deadline, "clients are answered");
        std::thread::sleep(Duration::from_millis(5));
    }
}
