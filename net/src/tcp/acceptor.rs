//! Inbound side: shard 0's accept loop and handshake, and every shard's handoff receiver.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

use crate::tls::{Conn, TlsStream};
use phalanx_proto::{Hello, HelloReject, RejectCode};
use tracing::{debug, warn};

use super::socket::{adopt, configure, detach, timeout};
use super::{AUTH_WARNED_MAX, Handoff, Shard, reader};
use crate::error::NetError;
use crate::handshake::{self, HandshakeError, unavailable};
use crate::stats::{count_auth_failure, inc};
use crate::transport::peer_shard;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Starts shard 0's accept loop on the pre-bound listener.
pub(super) fn start_listener(shard: &Rc<Shard>, listener: std::net::TcpListener) -> Result<(), NetError> {
    // SAFETY: the fd comes from a bound, listening std listener whose ownership is moved here.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(listener.into_raw_fd()) };
    let s = shard.clone();
    shard.tasks.spawn(accept_loop(s, listener));
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if shard.pending_handshakes.get() >= shard.cfg.max_pending_handshakes {
                    inc(&shard.counters.handshakes_rejected);
                    warn!(node = shard.local.node_id, "too many handshakes in progress; connection closed");
                    continue;
                }
                shard.pending_handshakes.set(shard.pending_handshakes.get() + 1);
                let s = shard.clone();
                shard.tasks.spawn(async move {
                    let _pending = Pending(&s);
                    handshake_inbound(&s, stream).await;
                });
            }
            Err(e) => {
                warn!(node = shard.local.node_id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            }
        }
    }
}

/// Gives back a pending-handshake slot on every exit path.
struct Pending<'a>(&'a Shard);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending_handshakes.set(self.0.pending_handshakes.get().saturating_sub(1));
    }
}

/// Reads and checks the Hello, then serves the connection here or hands it over.
async fn handshake_inbound(shard: &Rc<Shard>, stream: TcpStream) {
    let peer_addr = stream.peer_addr().ok();
    let refused = |e: &dyn std::fmt::Display| {
        inc(&shard.counters.handshakes_rejected);
        warn!(node = shard.local.node_id, peer_addr = ?peer_addr, reason = %e, "inbound connection refused");
    };
    if let Err(e) = configure(&stream, shard.cfg.write_timeout_ms, shard.cfg.tcp_user_timeout_ms) {
        return refused(&e);
    }
    // One deadline for the TLS handshake and the Hello together.
    let deadline = std::time::Instant::now() + Duration::from_millis(shard.cfg.handshake_timeout_ms);
    let left = || deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as u64;
    let mut stream = match &shard.cfg.tls {
        None => Conn::Plain(stream),
        Some(tls) => match timeout(left(), TlsStream::accept(stream, tls.peer_server())).await {
            Some(Ok(t)) => Conn::Tls(t),
            Some(Err(e)) => {
                inc(&shard.counters.tls_failures);
                return refused(&format!("TLS handshake failed: {e}"));
            }
            None => {
                inc(&shard.counters.tls_failures);
                return refused(&HandshakeError::Timeout);
            }
        },
    };
    let hello = match timeout(left().max(1), handshake::accept_hello(&mut stream, &shard.local))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
    {
        Ok(h) => h,
        Err(HandshakeError::Unauthenticated { node, failure }) => {
            inc(&shard.counters.handshakes_rejected);
            count_auth_failure(&shard.counters, failure);
            let mut warned = shard.auth_warned.borrow_mut();
            if warned.len() >= AUTH_WARNED_MAX {
                warned.clear();
            }
            if warned.insert(node) {
                warn!(node = shard.local.node_id, peer = node, peer_addr = ?peer_addr, reason = %failure,
                        "inbound connection refused: authentication failed (further failures of this node log at debug)");
            } else {
                debug!(node = shard.local.node_id, peer = node, peer_addr = ?peer_addr, reason = %failure,
                        "inbound connection refused: authentication failed");
            }
            return;
        }
        Err(e) => return refused(&e),
    };
    let (hello, leftover) = hello;
    if shard.local.auth.is_some() {
        shard.auth_warned.borrow_mut().remove(&hello.node_id);
    }
    // A node id the cluster does not know is a stranger (or a misconfigured node): its
    // messages would be dropped one by one as from an unknown peer; refuse it once, here.
    if shard.discovery.address(hello.node_id).is_none() {
        let r = HelloReject {
            code: RejectCode::UnknownNode as i32,
            reason: format!("node {} is not a member of this cluster", hello.node_id),
        };
        handshake::send_reject(&mut stream, &r).await;
        return refused(&HandshakeError::Rejected(r));
    }
    let target = peer_shard(hello.shard as usize, shard.local.shards as usize);
    if target == shard.shard as usize {
        serve(shard, stream, hello, leftover, peer_addr).await;
        return;
    }
    let Some(tx) = shard.registry.handoff_sender(target).filter(|tx| !tx.is_full()) else {
        let r = unavailable(format!("shard {target} is not running or is busy"));
        handshake::send_reject(&mut stream, &r).await;
        return refused(&HandshakeError::Rejected(r));
    };
    let (fd, tls) = match detach(stream) {
        Ok(parts) => parts,
        Err(e) => return refused(&e),
    };
    // Only this thread sends into handoff channels and nothing awaited since the check, so
    // the channel still has room; if the target shard stopped meanwhile, the fd is dropped
    // (closed) with the message and the dialer reconnects.
    if tx.try_send(Handoff { fd, tls, hello, leftover, peer_addr }).is_err() {
        refused(&format!("shard {target} stopped during the handoff"));
    } else {
        debug!(node = shard.local.node_id, target, "connection handed over");
    }
}

/// Starts the task adopting connections handed to this shard.
pub(super) fn start_handoff_receiver(shard: &Rc<Shard>, rx: flume::Receiver<Handoff>) {
    let s = shard.clone();
    shard.tasks.spawn(async move {
        while let Ok(h) = rx.recv_async().await {
            let stream = adopt(h.fd, h.tls);
            let s2 = s.clone();
            s.tasks.spawn(async move { serve(&s2, stream, h.hello, h.leftover, h.peer_addr).await });
        }
    });
}

/// Acknowledges and reads an inbound connection on this shard.
async fn serve(
    shard: &Rc<Shard>,
    mut stream: Conn,
    hello: Hello,
    leftover: Vec<u8>,
    peer_addr: Option<SocketAddr>,
) {
    let key = (hello.node_id, hello.shard);
    let replaces = shard.inbound.borrow().contains_key(&key);
    if !replaces && shard.inbound.borrow().len() >= shard.cfg.max_inbound_connections {
        let r = unavailable("too many inbound connections");
        handshake::send_reject(&mut stream, &r).await;
        inc(&shard.counters.handshakes_rejected);
        warn!(
            node = shard.local.node_id,
            shard = shard.shard,
            peer = hello.node_id,
            "too many inbound connections; refused"
        );
        return;
    }
    if let Err(e) = handshake::send_ack(&mut stream, &shard.local, shard.shard, &hello).await {
        inc(&shard.counters.handshakes_rejected);
        debug!(node = shard.local.node_id, peer = hello.node_id, error = %e, "ack failed");
        return;
    }
    // The peer is up: a dialer of ours backing off from it retries now (`dialer::Redial`).
    if let Some(p) = shard.peers.borrow().get(&hello.node_id) {
        p.redial.ask();
    }
    // The serial tells a reader whether its map entry is still its own when it ends.
    let serial = shard.next_conn.get();
    shard.next_conn.set(serial + 1);
    let s = shard.clone();
    let Some(task) = shard.tasks.spawn(async move {
        reader::run(&s, stream, key, leftover, peer_addr).await;
        let mut inbound = s.inbound.borrow_mut();
        if inbound.get(&key).is_some_and(|(sr, _)| *sr == serial) {
            inbound.remove(&key);
        }
    }) else {
        return;
    };
    // A dialer reconnecting while its old connection still looks alive here (a half-open
    // socket after a crash): the new one wins, the old reader is cancelled.
    let old = shard.inbound.borrow_mut().insert(key, (serial, task));
    if let Some((_, old_task)) = old {
        debug!(node = shard.local.node_id, peer = key.0, peer_shard = key.1, "replacing an older connection");
        shard.tasks.cancel(old_task);
    }
}
