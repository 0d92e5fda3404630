//! One peer's outgoing connection: connect, handshake, write coalesced frames; on failure,
//! back off and start over.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::{debug, info, warn};

use super::peer_queue::{PeerQueue, Target, recycle};
use super::socket::{Jitter, configure, duplicate, resolve, timeout};
use super::{IDLE_GIVE_BACK_MS, IDLE_KEEP_BYTES, Shard};
use crate::handshake::{self, HandshakeError};
use crate::spare::Spare;
use crate::stats::{OpenConnection, add, count_auth_failure, inc};
use crate::tls::{Conn, TlsStream};
use crate::transport::NodeId;

/// Bytes read while watching an idle connection for the peer closing it.
const WATCH_READ_BYTES: usize = 64;

/// A request to cut a dialer's backoff short, made when its peer has just connected to us.
///
/// Why: connections are one-way, so a restarted node reaches its peers at once (its dialers
/// start fresh) but hears from them only when their dialers, backed off while it was down,
/// try again — up to `backoff_max_ms` later (1 s by default), during which it cannot learn
/// its leaders. A peer that completed a handshake with us is up: retrying now costs one
/// connect, and a peer reconnecting in a loop is paced by its own backoff.
#[derive(Default)]
pub(super) struct Redial {
    asked: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Redial {
    /// Ends the dialer's current (or next) backoff wait and resets its backoff.
    pub(super) fn ask(&self) {
        self.asked.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits until asked.
    async fn asked(&self) {
        poll_fn(|cx| {
            if self.asked.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }
}

/// The dialer task of `peer` (runs until cancelled by discovery changes or shutdown).
pub(super) async fn run(
    shard: Rc<Shard>,
    peer: NodeId,
    addr: String,
    queue: Rc<PeerQueue>,
    redial: Rc<Redial>,
) {
    let cfg = shard.cfg.clone();
    let mut backoff_ms = cfg.backoff_initial_ms;
    let mut jitter = Jitter::new(shard.local.node_id ^ peer.rotate_left(17) ^ u64::from(shard.shard) << 48);
    let mut failures_in_row: u64 = 0;
    let mut buf = Vec::new();
    let mut spare = Spare::new();
    loop {
        // A connect attempt answers any earlier request to redial.
        redial.asked.set(false);
        match connect(&shard, peer, &addr).await {
            Ok(mut stream) => {
                inc(&shard.counters.connects);
                info!(node = shard.local.node_id, shard = shard.shard, peer, addr, "connected");
                let since = Instant::now();
                let reason = {
                    let _open = OpenConnection::new(&shard.counters);
                    pump(&shard, &mut stream, &queue, &mut buf, &mut spare).await
                };
                inc(&shard.counters.connections_lost);
                // The peer connecting to us while we were connected says nothing about now.
                redial.asked.set(false);
                info!(node = shard.local.node_id, shard = shard.shard, peer, addr, %reason, "connection lost");
                // What was handed to the dead connection is gone; nothing is replayed.
                recycle(&mut buf, &mut spare);
                // Only a connection that lasted counts as recovery: a peer that accepts and
                // drops us at once keeps us backing off instead of reconnecting in a loop.
                if since.elapsed() >= Duration::from_millis(cfg.backoff_max_ms) {
                    failures_in_row = 0;
                    backoff_ms = cfg.backoff_initial_ms;
                } else {
                    failures_in_row += 1;
                }
            }
            Err(e) => {
                inc(&shard.counters.connect_failures);
                if let HandshakeError::Unauthenticated { failure, .. } = &e {
                    count_auth_failure(&shard.counters, *failure);
                }
                if matches!(e, HandshakeError::Tls(_)) {
                    inc(&shard.counters.tls_failures);
                }
                if matches!(e, HandshakeError::Refused { .. } | HandshakeError::WrongNode { .. }) {
                    inc(&shard.counters.handshakes_refused_by_peer);
                }
                // Messages for an unreachable peer are stale by the time it is back; Raft
                // resends what still matters.
                add(&shard.counters.batches_dropped_unreachable, queue.clear() as u64);
                failures_in_row += 1;
                let refused = matches!(e, HandshakeError::Refused { .. } | HandshakeError::WrongNode { .. });
                if refused && failures_in_row == 1 {
                    warn!(node = shard.local.node_id, shard = shard.shard, peer, addr, error = %e, "handshake refused");
                } else if failures_in_row == 1 {
                    info!(node = shard.local.node_id, shard = shard.shard, peer, addr, error = %e, "cannot connect");
                } else {
                    debug!(node = shard.local.node_id, shard = shard.shard, peer, addr, error = %e, failures_in_row, "cannot connect");
                }
            }
        }
        // Also after a lost connection, so that reconnecting is never a hot loop.
        let wait = glommio::timer::sleep(Duration::from_millis(jitter.delay_ms(backoff_ms)));
        let redialed = futures_lite::future::or(
            async {
                redial.asked().await;
                true
            },
            async {
                wait.await;
                false
            },
        )
        .await;
        if redialed {
            debug!(
                node = shard.local.node_id,
                shard = shard.shard,
                peer,
                "peer connected to us; redialing now"
            );
            inc(&shard.counters.redials);
            failures_in_row = 0;
            backoff_ms = cfg.backoff_initial_ms;
        } else if failures_in_row > 0 {
            backoff_ms = backoff_ms.saturating_mul(2).min(cfg.backoff_max_ms);
        }
    }
}

/// Connects to `addr` and completes the handshake with `peer` (TLS first, when configured).
async fn connect(shard: &Shard, peer: NodeId, addr: &str) -> Result<Conn, HandshakeError> {
    let cfg = &shard.cfg;
    let sa = resolve(addr).await?;
    let tcp = TcpStream::connect_timeout(sa, Duration::from_millis(cfg.connect_timeout_ms))
        .await
        .map_err(std::io::Error::from)?;
    configure(&tcp, cfg.write_timeout_ms, cfg.tcp_user_timeout_ms)?;
    let hello = handshake::hello(&shard.local, shard.shard, peer);
    let handshake = async {
        let mut stream = match &cfg.tls {
            None => Conn::Plain(tcp),
            Some(tls) => {
                let name = crate::tls::server_name(addr).map_err(|e| HandshakeError::Tls(e.to_string()))?;
                let t =
                    TlsStream::connect(tcp, tls.peer_client(), name).await.map_err(|e| match e.into() {
                        HandshakeError::Io(e) => HandshakeError::Tls(e.to_string()),
                        e => e,
                    })?;
                Conn::Tls(t)
            }
        };
        let ack = handshake::dial(&mut stream, &hello, shard.local.auth.as_deref()).await?;
        Ok::<_, HandshakeError>((stream, ack))
    };
    let (stream, ack) =
        timeout(cfg.handshake_timeout_ms, handshake).await.ok_or(HandshakeError::Timeout)??;
    debug!(
        node = shard.local.node_id,
        shard = shard.shard,
        peer,
        peer_shard = ack.shard,
        peer_shards = ack.shards,
        "handshake done"
    );
    Ok(stream)
}

/// Writes queued frames until the connection fails; returns why it ended.
async fn pump(
    shard: &Shard,
    stream: &mut Conn,
    queue: &PeerQueue,
    buf: &mut Vec<u8>,
    spare: &mut Spare,
) -> String {
    let fd = match duplicate(stream.tcp()) {
        Ok(fd) => fd,
        Err(e) => return format!("cannot duplicate the socket: {e}"),
    };
    let target = match stream.session() {
        None => Target::Plain(fd),
        Some(session) => Target::Tls(fd, session),
    };
    // Sends write through to this connection while it is idle (see `peer_queue`); the guard
    // detaches it on every exit path, cancellation included.
    let _attached = queue.attach(target);
    let mut watch = [0u8; WATCH_READ_BYTES];
    loop {
        // Idle: wait for frames, but notice the peer closing (restart, protocol error on its
        // side) at once instead of at the next failed write. Dropping the watch read when the
        // queue wins costs nothing: glommio reads with a non-blocking `recv` and keeps its
        // readiness poll on the stream, not in the future.
        //
        // Holding more than a quiet connection needs, it gives that back once nothing was
        // queued for two windows (`spare.rs`): otherwise the burst of a start-up stays with
        // a connection that carries nothing after it. Below that it waits without a timer.
        let woke = futures_lite::future::or(
            async {
                if buf.capacity() + queue.capacity() <= IDLE_KEEP_BYTES {
                    queue.ready().await;
                } else if timeout(IDLE_GIVE_BACK_MS, queue.ready()).await.is_none() {
                    spare.trim(buf, 0, Instant::now());
                    queue.give_back_spare();
                    queue.ready().await;
                }
                Ok(())
            },
            async {
                match stream.read(&mut watch).await {
                    Ok(0) => Err("peer closed the connection".to_string()),
                    Ok(_) => Err("peer sent data on a one-way connection".to_string()),
                    Err(e) => Err(format!("read error: {e}")),
                }
            },
        )
        .await;
        if let Err(reason) = woke {
            return reason;
        }
        let frames = queue.take(buf);
        // With TLS the flush also sends ciphertext a write-through left in the session.
        if let Err(e) = stream.write_all(buf).await {
            return format!("write error: {e}");
        }
        if let Err(e) = stream.flush().await {
            return format!("write error: {e}");
        }
        queue.written();
        add(&shard.counters.batches_sent, frames as u64);
        add(&shard.counters.bytes_sent, buf.len() as u64);
        recycle(buf, spare);
        // A flood of sends must not starve the shard's other tasks.
        glommio::yield_if_needed().await;
    }
}
