//! Per-shard transport counters.
//!
//! Counters live in `Cell`s: a shard's transport is touched by its own thread only, so the
//! hot path pays no atomics.

use std::cell::Cell;

/// A snapshot of one shard's transport counters (cumulative since start, except the gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Batches handed to a connection (TCP: written to the socket; memory: put in the
    /// receiver's inbox).
    pub batches_sent: u64,
    /// Frame bytes handed to connections (headers included).
    pub bytes_sent: u64,
    /// Batches dropped because the peer's queue was full.
    pub batches_dropped_queue_full: u64,
    /// Batches dropped because the peer is unknown, is this node, or is unreachable (connection
    /// attempt failed, link cut, transport closed).
    pub batches_dropped_unreachable: u64,
    /// Batches dropped because their encoding exceeds `max_frame_bytes`.
    pub batches_dropped_oversize: u64,
    /// Batches dropped because they break the batch contract (wrong `from`/`to`).
    pub batches_dropped_invalid: u64,
    /// Batches received and handed to the sink.
    pub batches_received: u64,
    /// Frame bytes received (headers included).
    pub bytes_received: u64,
    /// Received batches dropped because the sink reported a full inbox.
    pub batches_dropped_inbox_full: u64,
    /// Outgoing connections established (handshake acknowledged).
    pub connects: u64,
    /// Outgoing connection attempts that failed (connect, timeout, broken handshake).
    pub connect_failures: u64,
    /// Backoff waits cut short because the peer had just connected to this node (it is up).
    pub redials: u64,
    /// Outgoing handshakes the peer refused (wrong cluster id, protocol version, node...).
    pub handshakes_refused_by_peer: u64,
    /// Established outgoing connections that ended (peer closed, write error, timeout).
    pub connections_lost: u64,
    /// Inbound connections whose handshake this node refused or that broke during it.
    pub handshakes_rejected: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused carrying no MAC while this node requires one.
    pub auth_missing: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused with malformed authentication fields.
    pub auth_malformed: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused with a timestamp outside the clock-skew window.
    pub auth_expired: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused whose MAC no configured secret gives (wrong secret, tampered).
    pub auth_bad_mac: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused replaying a nonce seen within the window.
    pub auth_replayed: u64,
    /// Handshakes (a peer's Hello, or the ack to ours) refused while the replay cache was full of live nonces.
    pub auth_cache_full: u64,
    /// TLS handshakes that failed, either side (a plaintext peer on a TLS port, a certificate
    /// that is expired, from another CA or not pinned, a peer that is not TLS).
    pub tls_failures: u64,
    /// Inbound connections closed for a malformed, oversized or unexpected frame or batch.
    pub protocol_errors: u64,
    /// Inbound connections closed because a frame begun did not arrive whole within
    /// `frame_timeout_ms`.
    pub frame_timeouts: u64,
    /// Inbound connections accepted and being read (cumulative).
    pub inbound_accepted: u64,
    /// Gauge: connections currently open (outgoing established + inbound being read).
    pub connections_open: u64,
}

impl TransportStats {
    /// Element-wise sum (gauges too): the counters of several shards or nodes together.
    #[must_use]
    pub fn plus(&self, b: &TransportStats) -> TransportStats {
        let a = self;
        TransportStats {
            batches_sent: a.batches_sent + b.batches_sent,
            bytes_sent: a.bytes_sent + b.bytes_sent,
            batches_dropped_queue_full: a.batches_dropped_queue_full + b.batches_dropped_queue_full,
            batches_dropped_unreachable: a.batches_dropped_unreachable + b.batches_dropped_unreachable,
            batches_dropped_oversize: a.batches_dropped_oversize + b.batches_dropped_oversize,
            batches_dropped_invalid: a.batches_dropped_invalid + b.batches_dropped_invalid,
            batches_received: a.batches_received + b.batches_received,
            bytes_received: a.bytes_received + b.bytes_received,
            batches_dropped_inbox_full: a.batches_dropped_inbox_full + b.batches_dropped_inbox_full,
            connects: a.connects + b.connects,
            connect_failures: a.connect_failures + b.connect_failures,
            redials: a.redials + b.redials,
            handshakes_refused_by_peer: a.handshakes_refused_by_peer + b.handshakes_refused_by_peer,
            connections_lost: a.connections_lost + b.connections_lost,
            handshakes_rejected: a.handshakes_rejected + b.handshakes_rejected,
            auth_missing: a.auth_missing + b.auth_missing,
            auth_malformed: a.auth_malformed + b.auth_malformed,
            auth_expired: a.auth_expired + b.auth_expired,
            auth_bad_mac: a.auth_bad_mac + b.auth_bad_mac,
            auth_replayed: a.auth_replayed + b.auth_replayed,
            auth_cache_full: a.auth_cache_full + b.auth_cache_full,
            tls_failures: a.tls_failures + b.tls_failures,
            protocol_errors: a.protocol_errors + b.protocol_errors,
            frame_timeouts: a.frame_timeouts + b.frame_timeouts,
            inbound_accepted: a.inbound_accepted + b.inbound_accepted,
            connections_open: a.connections_open + b.connections_open,
        }
    }
}

/// The live counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches_sent: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    pub batches_dropped_queue_full: Cell<u64>,
    pub batches_dropped_unreachable: Cell<u64>,
    pub batches_dropped_oversize: Cell<u64>,
    pub batches_dropped_invalid: Cell<u64>,
    pub batches_received: Cell<u64>,
    pub bytes_received: Cell<u64>,
    pub batches_dropped_inbox_full: Cell<u64>,
    pub connects: Cell<u64>,
    pub connect_failures: Cell<u64>,
    pub redials: Cell<u64>,
    pub handshakes_refused_by_peer: Cell<u64>,
    pub connections_lost: Cell<u64>,
    pub handshakes_rejected: Cell<u64>,
    pub auth_missing: Cell<u64>,
    pub auth_malformed: Cell<u64>,
    pub auth_expired: Cell<u64>,
    pub auth_bad_mac: Cell<u64>,
    pub auth_replayed: Cell<u64>,
    pub auth_cache_full: Cell<u64>,
    pub tls_failures: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub frame_timeouts: Cell<u64>,
    pub inbound_accepted: Cell<u64>,
    pub connections_open: Cell<u64>,
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_add(n));
}

/// Adds one to a counter.
pub(crate) fn inc(c: &Cell<u64>) {
    add(c, 1);
}

/// Subtracts one from a gauge.
pub(crate) fn dec(c: &Cell<u64>) {
    c.set(c.get().saturating_sub(1));
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        TransportStats {
            batches_sent: self.batches_sent.get(),
            bytes_sent: self.bytes_sent.get(),
            batches_dropped_queue_full: self.batches_dropped_queue_full.get(),
            batches_dropped_unreachable: self.batches_dropped_unreachable.get(),
            batches_dropped_oversize: self.batches_dropped_oversize.get(),
            batches_dropped_invalid: self.batches_dropped_invalid.get(),
            batches_received: self.batches_received.get(),
            bytes_received: self.bytes_received.get(),
            batches_dropped_inbox_full: self.batches_dropped_inbox_full.get(),
            connects: self.connects.get(),
            connect_failures: self.connect_failures.get(),
            redials: self.redials.get(),
            handshakes_refused_by_peer: self.handshakes_refused_by_peer.get(),
            connections_lost: self.connections_lost.get(),
            handshakes_rejected: self.handshakes_rejected.get(),
            auth_missing: self.auth_missing.get(),
            auth_malformed: self.auth_malformed.get(),
            auth_expired: self.auth_expired.get(),
            auth_bad_mac: self.auth_bad_mac.get(),
            auth_replayed: self.auth_replayed.get(),
            auth_cache_full: self.auth_cache_full.get(),
            tls_failures: self.tls_failures.get(),
            protocol_errors: self.protocol_errors.get(),
            frame_timeouts: self.frame_timeouts.get(),
            inbound_accepted: self.inbound_accepted.get(),
            connections_open: self.connections_open.get(),
        }
    }
}

/// Holds one unit of the `connections_open` gauge while alive, so every exit path of a
/// connection task (error, cancellation at shutdown) gives it back.
pub(crate) struct OpenConnection<'a>(&'a Counters);

impl<'a> OpenConnection<'a> {
    pub(crate) fn new(c: &'a Counters) -> Self {
        inc(&c.connections_open);
        OpenConnection(c)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        dec(&self.0.connections_open);
    }
}

/// Counts one authentication failure under its reason.
pub(crate) fn count_auth_failure(c: &Counters, f: crate::auth::AuthFailure) {
    use crate::auth::AuthFailure;
    inc(match f {
        AuthFailure::Missing => &c.auth_missing,
        AuthFailure::Malformed => &c.auth_malformed,
        AuthFailure::Expired { .. } => &c.auth_expired,
        AuthFailure::BadMac => &c.auth_bad_mac,
        AuthFailure::Replayed => &c.auth_replayed,
        AuthFailure::CacheFull => &c.auth_cache_full,
    });
}
