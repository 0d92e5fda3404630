//! Checks of mutual TLS on the Raft port: who is refused (a plaintext peer, a certificate
//! from another CA, expired, or not pinned), that refusals are counted on both sides, and
//! that a node's certificate is reloaded without a restart.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::fixtures::TcpFixture;
use super::{Delivered, TestNode, WAIT_LIMIT, wait_until};
use crate::tls::test_certs::{Issued, TestPki, Validity};
use crate::tls::{CertPin, TlsContext};

/// Node `id` with `tls` (`None`: plaintext).
fn start(
    fx: &mut TcpFixture,
    id: u64,
    tx: &flume::Sender<Delivered>,
    tls: Option<Arc<TlsContext>>,
) -> TestNode {
    TestNode::start(id, fx.factory_with(id, |c| c.tls = tls), 1, tx.clone()).unwrap()
}

fn ctx(pki: &TestPki, issued: &Issued, pins: Vec<CertPin>) -> Arc<TlsContext> {
    TlsContext::load(pki.files(issued, pins)).unwrap()
}

/// Sends from `node` to `to` until something from `node` arrives.
fn gets_through(node: &TestNode, to: u64, rx: &flume::Receiver<Delivered>) -> bool {
    wait_until(WAIT_LIMIT, || {
        node.send_seq(0, to, 1);
        rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == node.id)
    })
}

/// Sends from `node` to `to` for a while; true if nothing from `node` arrived.
fn never_gets_through(node: &TestNode, to: u64, rx: &flume::Receiver<Delivered>) -> bool {
    for _ in 0..20 {
        node.send_seq(0, to, 1);
        if rx.recv_timeout(Duration::from_millis(20)).is_ok_and(|d| d.inbound.from == node.id) {
            return false;
        }
    }
    true
}

#[test]
fn tls_nodes_talk_and_a_plaintext_peer_is_refused_both_ways_and_counted() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let mut pki = TestPki::new("ca").unwrap();
    let cert = pki.issue("node", Validity::Current).unwrap();
    let a = start(&mut fx, 1, &tx, Some(ctx(&pki, &cert, Vec::new())));
    let b = start(&mut fx, 2, &tx, Some(ctx(&pki, &cert, Vec::new())));
    assert!(gets_through(&a, 2, &rx), "{:?} {:?}", a.stats(0), b.stats(0));
    assert!(gets_through(&b, 1, &rx));
    // Checked before the plaintext node starts: it dials every node it knows, a included.
    assert_eq!(a.stats(0).tls_failures, 0, "{:?}", a.stats(0));
    // A plaintext node: its Hello is not a TLS record (refused by b), and its acceptor reads
    // b's ClientHello as a malformed frame (refused by c).
    let c = start(&mut fx, 3, &tx, None);
    assert!(never_gets_through(&c, 2, &rx));
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).tls_failures >= 1), "{:?}", b.stats(0));
    assert!(never_gets_through(&b, 3, &rx));
    assert!(wait_until(WAIT_LIMIT, || c.stats(0).handshakes_rejected >= 1), "{:?}", c.stats(0));
    // A raw plaintext Hello gets no answer but the close.
    let mut raw = TcpStream::connect(("127.0.0.1", fx.port(2).unwrap())).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    raw.write_all(&[0, 0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert!(super::closed_within(&mut raw, WAIT_LIMIT), "a TLS port must close a plaintext peer");
    assert!(a.shutdown() && b.shutdown() && c.shutdown());
}

#[test]
fn foreign_expired_and_unpinned_certificates_are_refused() {
    let mut fx = TcpFixture::new();
    let (tx, rx) = flume::unbounded();
    let mut pki = TestPki::new("ca").unwrap();
    let pinned = pki.issue("pinned", Validity::Current).unwrap();
    let other = pki.issue("other", Validity::Current).unwrap();
    let expired = pki.issue("expired", Validity::Expired).unwrap();
    let mut foreign_pki = TestPki::new("another ca").unwrap();
    let foreign = foreign_pki.issue("foreign", Validity::Current).unwrap();
    // b accepts only `pinned` (its own certificate is pinned too, so a trusts it).
    let b = start(&mut fx, 2, &tx, Some(ctx(&pki, &pinned, vec![pinned.pin])));
    let a = start(&mut fx, 1, &tx, Some(ctx(&pki, &pinned, vec![pinned.pin])));
    assert!(gets_through(&a, 2, &rx), "{:?} {:?}", a.stats(0), b.stats(0));
    // Same CA, not pinned.
    let c = start(&mut fx, 3, &tx, Some(ctx(&pki, &other, Vec::new())));
    assert!(never_gets_through(&c, 2, &rx));
    // Expired, same CA.
    let e = {
        let files = crate::tls::TlsFiles { pins: Vec::new(), ..pki.files(&expired, Vec::new()) };
        start(&mut fx, 4, &tx, Some(TlsContext::load(files).unwrap()))
    };
    assert!(never_gets_through(&e, 2, &rx));
    // Another CA's certificate, from a node that trusts ours (so only b's check refuses it).
    let f = {
        let files = crate::tls::TlsFiles { ca: pki.ca(), ..foreign_pki.files(&foreign, Vec::new()) };
        start(&mut fx, 5, &tx, Some(TlsContext::load(files).unwrap()))
    };
    assert!(never_gets_through(&f, 2, &rx));
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).tls_failures >= 3), "{:?}", b.stats(0));
    for n in [&c, &e, &f] {
        assert!(wait_until(WAIT_LIMIT, || n.stats(0).tls_failures >= 1), "node {}: {:?}", n.id, n.stats(0));
    }
    // The other way: b refuses to dial a node whose certificate it has not pinned.
    assert!(never_gets_through(&b, 3, &rx));
    assert!(a.shutdown() && b.shutdown() && c.shutdown() && e.shutdown() && f.shutdown());
}

/// The pin of the certificate the TLS port at `port` presents to a client with `identity`.
fn presented_pin(pki: &TestPki, identity: &Issued, port: u16) -> Option<CertPin> {
    crate::tls::test_certs::presented_pin(&format!("127.0.0.1:{port}"), pki.client(identity).ok()?)
}

#[test]
fn a_renewed_certificate_is_used_without_a_restart_and_a_broken_one_is_not() {
    let mut fx = TcpFixture::new();
    let (tx, _rx) = flume::unbounded();
    let mut pki = TestPki::new("ca").unwrap();
    let first = pki.issue("first", Validity::Current).unwrap();
    let renewed = pki.issue("renewed", Validity::Current).unwrap();
    // The node's files are copies, rewritten in place as a renewal would.
    let (cert, key) = (pki.dir().join("node.pem"), pki.dir().join("node-key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let ctx = TlsContext::load(crate::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: pki.ca(),
        pins: Vec::new(),
    })
    .unwrap();
    let b = start(&mut fx, 2, &tx, Some(ctx.clone()));
    let port = fx.port(2).unwrap();
    assert_eq!(presented_pin(&pki, &first, port), Some(first.pin));
    // A half-done renewal (the new certificate with the old key) does not load: the old
    // configuration stays, and the failure is counted.
    std::fs::copy(&renewed.cert, &cert).unwrap();
    assert!(wait_until(WAIT_LIMIT, || {
        let _ = presented_pin(&pki, &first, port);
        ctx.reload_failures() >= 1
    }));
    assert_eq!(presented_pin(&pki, &first, port), Some(first.pin));
    std::fs::copy(&renewed.key, &key).unwrap();
    assert!(wait_until(WAIT_LIMIT, || presented_pin(&pki, &first, port) == Some(renewed.pin)));
    assert!(ctx.reloads() >= 1);
    assert!(b.shutdown());
}
