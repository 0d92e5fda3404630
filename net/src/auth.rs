//! Shared-secret node authentication on the Raft port's handshake (HMAC-SHA256).
//!
//! Both directions prove the secret. The dialer's Hello carries its wall clock, a random
//! nonce and a MAC over every Hello field; the acceptor checks the clock is within
//! [`MAX_CLOCK_SKEW_MS`] of its own, checks the MAC against each configured secret (the
//! current one and, while a secret rotates, the previous one; constant-time comparison), and
//! only then remembers the nonce, refusing it for as long as its timestamp could pass the
//! clock check ([`ReplayCache`]). The acceptor's ack carries its own clock, nonce and a MAC
//! that also covers the Hello's nonce: it answers that Hello only, so an old ack replayed to
//! a dialer fails. Everything signed is encoded with a domain tag and fixed-width or
//! length-prefixed fields, so no two different messages sign the same bytes.
//!
//! A node signs with its current secret and accepts its current or its previous one, so a
//! secret rotates through rolling restarts with no downtime, in two rounds: first every node
//! restarts with the old secret as current and the new one as previous (it still signs with
//! the old one, and now also accepts the new), then every node restarts with the new secret
//! as current and the old one as previous (everyone accepts the new one since the first
//! round); a third round may drop the previous.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use phalanx_proto::{Hello, HelloAck};
use sha2::Sha256;

/// Bytes of a MAC (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 16;
/// Shortest secret accepted, in bytes: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted, in bytes (HMAC hashes longer keys down anyway).
pub const MAX_SECRET_BYTES: usize = 1024;
/// How far a peer's handshake clock may be from ours, either way, in ms. Nodes of a cluster
/// run NTP; a minute of skew is a broken clock, and the replay cache holds each nonce for
/// twice this.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Most nonces the replay cache holds: at [`MAX_CLOCK_SKEW_MS`] × 2 of memory per nonce, far
/// more handshakes than a cluster's reconnects (one connection per peer and shard). Only
/// handshakes that proved the secret get in; when it is full of live nonces, handshakes are
/// refused (and counted) until the oldest expire, rather than forgetting a live nonce.
pub const REPLAY_CACHE_MAX: usize = 65_536;

const HELLO_TAG: &[u8] = b"phalanx/v1 hello";
const ACK_TAG: &[u8] = b"phalanx/v1 hello-ack";

/// Why a handshake failed authentication (each counted on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No MAC, while this node requires one.
    #[error("no authentication (this node requires a shared secret)")]
    Missing,
    /// MAC or nonce of the wrong length.
    #[error("malformed authentication fields")]
    Malformed,
    /// The timestamp is outside the clock-skew window.
    #[error("timestamp {skew_ms} ms away from this node's clock (at most {MAX_CLOCK_SKEW_MS})")]
    Expired {
        /// How far, either way.
        skew_ms: u64,
    },
    /// No configured secret gives this MAC (wrong secret, or a tampered field).
    #[error("MAC does not verify (wrong secret or tampered handshake)")]
    BadMac,
    /// The nonce was seen within the window: a replayed handshake.
    #[error("nonce already seen (replayed handshake)")]
    Replayed,
    /// The replay cache is full of live nonces.
    #[error("too many recent handshakes to remember; try again")]
    CacheFull,
}

/// A configuration error of the secrets.
#[derive(Debug, thiserror::Error)]
#[error("node shared secret: {0}")]
pub struct SecretError(String);

/// A shared secret, kept as HMAC's keyed state (never printed).
#[derive(Clone)]
struct Secret(Hmac<Sha256>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn new(bytes: &[u8], which: &str) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_BYTES || bytes.len() > MAX_SECRET_BYTES {
            return Err(SecretError(format!(
                "the {which} secret is {} bytes; it must be {MIN_SECRET_BYTES}..={MAX_SECRET_BYTES}",
                bytes.len()
            )));
        }
        Hmac::<Sha256>::new_from_slice(bytes)
            .map(Secret)
            .map_err(|e| SecretError(format!("the {which} secret: {e}")))
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = self.hmac();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    fn verifies(&self, data: &[u8], mac: &[u8]) -> bool {
        let mut m = self.hmac();
        m.update(data);
        // `verify_slice` compares in constant time.
        m.verify_slice(mac).is_ok()
    }

    fn hmac(&self) -> Hmac<Sha256> {
        self.0.clone()
    }
}

/// Nonces seen within the clock-skew window.
#[derive(Debug, Default)]
pub struct ReplayCache {
    /// (expiry in ms, nonce), in insertion order; expiries ascend with the clock.
    order: VecDeque<(u64, [u8; NONCE_BYTES])>,
    set: HashSet<[u8; NONCE_BYTES]>,
}

impl ReplayCache {
    /// Registers `nonce` at `now_ms`: `Err` if it is there already or the cache is full.
    fn register(&mut self, nonce: [u8; NONCE_BYTES], now_ms: u64) -> Result<(), AuthFailure> {
        while self.order.front().is_some_and(|(exp, _)| *exp <= now_ms) {
            if let Some((_, n)) = self.order.pop_front() {
                self.set.remove(&n);
            }
        }
        if self.set.contains(&nonce) {
            return Err(AuthFailure::Replayed);
        }
        if self.set.len() >= REPLAY_CACHE_MAX {
            return Err(AuthFailure::CacheFull);
        }
        // The Hello carrying it had a timestamp of at most `now + skew` (it passed the clock
        // check), so it passes that check again only at clocks up to `now + 2 skew`.
        self.order.push_back((now_ms.saturating_add(2 * MAX_CLOCK_SKEW_MS), nonce));
        self.set.insert(nonce);
        Ok(())
    }

    /// Nonces held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// This node's shared secrets and the nonces it has seen.
#[derive(Debug)]
pub struct NodeAuth {
    current: Secret,
    previous: Option<Secret>,
    seen: Mutex<ReplayCache>,
}

impl NodeAuth {
    /// Signs with `current`; accepts `current` or `previous`. Errors on a secret outside
    /// [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`].
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Result<Self, SecretError> {
        let current = Secret::new(&current, "current")?;
        let previous = previous.map(|p| Secret::new(&p, "previous")).transpose()?;
        Ok(NodeAuth { current, previous, seen: Mutex::new(ReplayCache::default()) })
    }

    /// Nonces the replay cache holds now.
    #[must_use]
    pub fn remembered_nonces(&self) -> usize {
        self.seen.lock().map_or(0, |c| c.len())
    }

    fn verifies(&self, data: &[u8], mac: &[u8]) -> bool {
        // Both are checked whatever the first gives, so timing does not say which matched.
        let a = self.current.verifies(data, mac);
        let b = self.previous.as_ref().is_some_and(|p| p.verifies(data, mac));
        a | b
    }

    /// Fills `h`'s authentication fields (timestamp `now_ms`, a fresh nonce, the MAC).
    /// Errors when the kernel gives no randomness.
    pub fn sign_hello(&self, h: &mut Hello, now_ms: u64) -> std::io::Result<()> {
        h.timestamp_ms = now_ms;
        h.nonce = fresh_nonce()?.to_vec().into();
        h.mac = self.current.mac(&hello_bytes(h)).to_vec().into();
        Ok(())
    }

    /// The acceptor's check of a Hello's authentication at `now_ms`; registers its nonce
    /// once everything else verified.
    pub fn verify_hello(&self, h: &Hello, now_ms: u64) -> Result<(), AuthFailure> {
        if h.mac.is_empty() {
            return Err(AuthFailure::Missing);
        }
        let nonce: [u8; NONCE_BYTES] = h.nonce.as_ref().try_into().map_err(|_| AuthFailure::Malformed)?;
        if h.mac.len() != MAC_BYTES {
            return Err(AuthFailure::Malformed);
        }
        check_skew(h.timestamp_ms, now_ms)?;
        if !self.verifies(&hello_bytes(h), &h.mac) {
            return Err(AuthFailure::BadMac);
        }
        match self.seen.lock() {
            Ok(mut c) => c.register(nonce, now_ms),
            // A panic elsewhere while holding the lock: refuse rather than skip the check.
            Err(_) => Err(AuthFailure::CacheFull),
        }
    }

    /// Fills `ack`'s authentication fields, answering `hello` from cluster `cluster_id`.
    /// Errors when the kernel gives no randomness.
    pub fn sign_ack(
        &self,
        ack: &mut HelloAck,
        hello: &Hello,
        cluster_id: &str,
        now_ms: u64,
    ) -> std::io::Result<()> {
        ack.timestamp_ms = now_ms;
        ack.nonce = fresh_nonce()?.to_vec().into();
        ack.mac = self.current.mac(&ack_bytes(ack, hello, cluster_id)).to_vec().into();
        Ok(())
    }

    /// The dialer's check of the ack to its `hello` at `now_ms`.
    pub fn verify_ack(
        &self,
        ack: &HelloAck,
        hello: &Hello,
        cluster_id: &str,
        now_ms: u64,
    ) -> Result<(), AuthFailure> {
        if ack.mac.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if ack.mac.len() != MAC_BYTES || ack.nonce.len() != NONCE_BYTES {
            return Err(AuthFailure::Malformed);
        }
        check_skew(ack.timestamp_ms, now_ms)?;
        if self.verifies(&ack_bytes(ack, hello, cluster_id), &ack.mac) {
            Ok(())
        } else {
            Err(AuthFailure::BadMac)
        }
    }
}

fn check_skew(ts_ms: u64, now_ms: u64) -> Result<(), AuthFailure> {
    let skew_ms = ts_ms.abs_diff(now_ms);
    if skew_ms > MAX_CLOCK_SKEW_MS { Err(AuthFailure::Expired { skew_ms }) } else { Ok(()) }
}

/// What a Hello's MAC covers.
fn hello_bytes(h: &Hello) -> Vec<u8> {
    let mut b = Vec::with_capacity(HELLO_TAG.len() + 64 + h.cluster_id.len() + NONCE_BYTES);
    put_bytes(&mut b, HELLO_TAG);
    b.extend_from_slice(&h.protocol_version.to_be_bytes());
    put_bytes(&mut b, h.cluster_id.as_bytes());
    b.extend_from_slice(&h.node_id.to_be_bytes());
    b.extend_from_slice(&h.shard.to_be_bytes());
    b.extend_from_slice(&h.shards.to_be_bytes());
    b.extend_from_slice(&h.target_node_id.to_be_bytes());
    b.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    put_bytes(&mut b, &h.nonce);
    b
}

/// What an ack's MAC covers: its fields, the cluster, and the Hello it answers.
fn ack_bytes(a: &HelloAck, hello: &Hello, cluster_id: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(ACK_TAG.len() + 80 + cluster_id.len() + 2 * NONCE_BYTES);
    put_bytes(&mut b, ACK_TAG);
    put_bytes(&mut b, cluster_id.as_bytes());
    b.extend_from_slice(&a.node_id.to_be_bytes());
    b.extend_from_slice(&a.shards.to_be_bytes());
    b.extend_from_slice(&a.shard.to_be_bytes());
    b.extend_from_slice(&a.timestamp_ms.to_be_bytes());
    put_bytes(&mut b, &a.nonce);
    b.extend_from_slice(&hello.node_id.to_be_bytes());
    b.extend_from_slice(&hello.shard.to_be_bytes());
    put_bytes(&mut b, &hello.nonce);
    b
}

fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u64).to_be_bytes());
    b.extend_from_slice(s);
}

/// A nonce from the kernel's CSPRNG (`getrandom(2)`; never a predictable fallback).
fn fresh_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    let mut filled = 0;
    while filled < NONCE_BYTES {
        // SAFETY: writes at most the rest of `n`, which it points into.
        let r = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), NONCE_BYTES - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(n)
}

/// Milliseconds of the wall clock (0 before 1970): the handshake's timestamps, and the
/// shards' physical clock (`phalanx_net::wall_ms`).
#[must_use]
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn secret(b: u8) -> Vec<u8> {
        vec![b; 32]
    }

    fn hello() -> Hello {
        Hello {
            protocol_version: phalanx_proto::PROTOCOL_VERSION,
            cluster_id: "c".into(),
            node_id: 1,
            shard: 0,
            shards: 2,
            target_node_id: 2,
            ..Default::default()
        }
    }

    fn signed(auth: &NodeAuth, now: u64) -> Hello {
        let mut h = hello();
        auth.sign_hello(&mut h, now).unwrap();
        h
    }

    #[test]
    fn a_signed_hello_verifies_once() {
        let a = NodeAuth::new(secret(1), None).unwrap();
        let b = NodeAuth::new(secret(1), None).unwrap();
        let h = signed(&a, NOW);
        assert_eq!(b.verify_hello(&h, NOW + 10), Ok(()));
        assert_eq!(b.verify_hello(&h, NOW + 20), Err(AuthFailure::Replayed));
        assert_eq!(b.remembered_nonces(), 1);
    }

    #[test]
    fn refusals() {
        let a = NodeAuth::new(secret(1), None).unwrap();
        let b = NodeAuth::new(secret(1), None).unwrap();
        let wrong = NodeAuth::new(secret(2), None).unwrap();
        assert_eq!(b.verify_hello(&hello(), NOW), Err(AuthFailure::Missing));
        assert_eq!(b.verify_hello(&signed(&wrong, NOW), NOW), Err(AuthFailure::BadMac));
        let late = signed(&a, NOW - MAX_CLOCK_SKEW_MS - 1);
        assert!(matches!(b.verify_hello(&late, NOW), Err(AuthFailure::Expired { .. })));
        let early = signed(&a, NOW + MAX_CLOCK_SKEW_MS + 1);
        assert!(matches!(b.verify_hello(&early, NOW), Err(AuthFailure::Expired { .. })));
        // Every covered field, tampered after signing.
        let tampered: Vec<Hello> = vec![
            Hello { cluster_id: "d".into(), ..signed(&a, NOW) },
            Hello { node_id: 3, ..signed(&a, NOW) },
            Hello { shard: 1, ..signed(&a, NOW) },
            Hello { shards: 3, ..signed(&a, NOW) },
            Hello { target_node_id: 4, ..signed(&a, NOW) },
            Hello { protocol_version: 99, ..signed(&a, NOW) },
            Hello { timestamp_ms: NOW + 1, ..signed(&a, NOW) },
            Hello { nonce: vec![7u8; NONCE_BYTES].into(), ..signed(&a, NOW) },
        ];
        for (i, h) in tampered.iter().enumerate() {
            assert_eq!(b.verify_hello(h, NOW), Err(AuthFailure::BadMac), "field {i}");
        }
        let mut short = signed(&a, NOW);
        short.mac = short.mac.slice(..31);
        assert_eq!(b.verify_hello(&short, NOW), Err(AuthFailure::Malformed));
        let mut no_nonce = signed(&a, NOW);
        no_nonce.nonce = Default::default();
        assert_eq!(b.verify_hello(&no_nonce, NOW), Err(AuthFailure::Malformed));
        // A refused Hello's nonce is not remembered: only verified ones are.
        assert_eq!(b.remembered_nonces(), 0);
    }

    #[test]
    fn rotation_accepts_the_previous_secret_and_signs_with_the_current() {
        let old = NodeAuth::new(secret(1), None).unwrap();
        let rotated = NodeAuth::new(secret(2), Some(secret(1))).unwrap();
        let new = NodeAuth::new(secret(2), None).unwrap();
        assert_eq!(rotated.verify_hello(&signed(&old, NOW), NOW), Ok(()));
        assert_eq!(new.verify_hello(&signed(&rotated, NOW), NOW), Ok(()));
        assert_eq!(old.verify_hello(&signed(&new, NOW), NOW), Err(AuthFailure::BadMac));
    }

    #[test]
    fn an_ack_answers_its_hello_only() {
        let a = NodeAuth::new(secret(1), None).unwrap();
        let b = NodeAuth::new(secret(1), None).unwrap();
        let h = signed(&a, NOW);
        let mut ack = HelloAck { node_id: 2, shards: 4, shard: 1, ..Default::default() };
        b.sign_ack(&mut ack, &h, "c", NOW).unwrap();
        assert_eq!(a.verify_ack(&ack, &h, "c", NOW), Ok(()));
        let other = signed(&a, NOW);
        assert_eq!(a.verify_ack(&ack, &other, "c", NOW), Err(AuthFailure::BadMac), "another Hello");
        assert_eq!(a.verify_ack(&ack, &h, "d", NOW), Err(AuthFailure::BadMac), "another cluster");
        let forged = HelloAck { shard: 2, ..ack.clone() };
        assert_eq!(a.verify_ack(&forged, &h, "c", NOW), Err(AuthFailure::BadMac));
        let unsigned = HelloAck { node_id: 2, shards: 4, shard: 1, ..Default::default() };
        assert_eq!(a.verify_ack(&unsigned, &h, "c", NOW), Err(AuthFailure::Missing));
        let wrong = NodeAuth::new(secret(3), None).unwrap();
        let mut ack2 = HelloAck { node_id: 2, shards: 4, shard: 1, ..Default::default() };
        wrong.sign_ack(&mut ack2, &h, "c", NOW).unwrap();
        assert_eq!(a.verify_ack(&ack2, &h, "c", NOW), Err(AuthFailure::BadMac));
    }

    #[test]
    fn the_replay_cache_forgets_after_the_window_and_is_bounded() {
        let mut c = ReplayCache::default();
        c.register([1; NONCE_BYTES], NOW).unwrap();
        assert_eq!(c.register([1; NONCE_BYTES], NOW + 2 * MAX_CLOCK_SKEW_MS - 1), Err(AuthFailure::Replayed));
        // Forgotten only once a Hello carrying it could no longer pass the clock check.
        assert_eq!(c.register([1; NONCE_BYTES], NOW + 2 * MAX_CLOCK_SKEW_MS), Ok(()));
        let mut c = ReplayCache::default();
        for i in 0..REPLAY_CACHE_MAX as u32 {
            let mut n = [0u8; NONCE_BYTES];
            n[..4].copy_from_slice(&i.to_be_bytes());
            c.register(n, NOW).unwrap();
        }
        assert_eq!(c.register([0xff; NONCE_BYTES], NOW + 1), Err(AuthFailure::CacheFull));
        assert_eq!(c.register([0xff; NONCE_BYTES], NOW + 2 * MAX_CLOCK_SKEW_MS), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn secrets_are_bounded_and_never_printed() {
        assert!(NodeAuth::new(vec![1; MIN_SECRET_BYTES - 1], None).is_err());
        assert!(NodeAuth::new(secret(1), Some(vec![])).is_err());
        assert!(NodeAuth::new(vec![1; MAX_SECRET_BYTES + 1], None).is_err());
        let a = NodeAuth::new(b"a very secret string!".to_vec(), None).unwrap();
        assert!(!format!("{a:?}").contains("secret string"));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }
}
