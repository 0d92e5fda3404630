//! Who the client port lets in (issue 15): TLS with client certificates refuses a client
//! without one, with one from another CA or expired, and a plaintext client; a token port
//! refuses a connection without the token or with the wrong one. Each refusal is counted.

use std::time::{Duration, Instant};

use phalanx::client::security::{ClientPortSecurity, ClientToken};
use phalanx::client::server::ServerLimits;
use phalanx::client::{Client, ClientFailure, ClientSecurity, ClientTimeouts};
use phalanx_net::tls::test_certs::{TestPki, Validity};
use phalanx_net::tls::{ClientCerts, TlsContext, client_config};
use phalanx_proto::{ClientErrorCode, PutRequest, client_request::Op};

mod client_support;
use client_support::{Server, WAIT};

fn serve(security: ClientPortSecurity) -> Server {
    client_support::serve_with(ServerLimits::default(), security, 2)
}

/// One put to `srv` through a fresh connection with `security`, retried while the
/// partition has no leader yet.
fn put(srv: &Server, security: &ClientSecurity) -> Result<(), ClientFailure> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = Client::connect_secure(&srv.addr.to_string(), ClientTimeouts::default(), security)
            .and_then(|mut c| c.call(Op::Put(PutRequest { key: "k".into(), value: b"v".to_vec().into() })));
        match r {
            Err(ClientFailure::Server(e))
                if e.code == ClientErrorCode::NotLeader as i32 && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.map(|_| ()),
        }
    }
}

fn unauthenticated(r: &Result<(), ClientFailure>) -> bool {
    matches!(r, Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::Unauthenticated as i32)
}

#[test]
fn tls_with_client_certificates_refuses_clients_without_a_good_one() {
    let mut pki = TestPki::new("ca").unwrap();
    let node = pki.issue("node", Validity::Current).unwrap();
    let client = pki.issue("client", Validity::Current).unwrap();
    let expired = pki.issue("old-client", Validity::Expired).unwrap();
    let mut other_pki = TestPki::new("another ca").unwrap();
    let stranger = other_pki.issue("stranger", Validity::Current).unwrap();
    let ctx = TlsContext::load(pki.files(&node, Vec::new())).unwrap();
    let srv = serve(ClientPortSecurity { tls: Some((ctx, ClientCerts::Required)), token: None });
    let with = |id: Option<(&std::path::Path, &std::path::Path)>| ClientSecurity {
        tls: Some(client_config(&pki.ca(), id, &[]).unwrap()),
        token: None,
    };
    put(&srv, &with(Some((&client.cert, &client.key))))
        .expect("a client with a certificate from the CA writes");
    let refused = [
        put(&srv, &with(None)),
        put(&srv, &with(Some((&expired.cert, &expired.key)))),
        put(&srv, &with(Some((&stranger.cert, &stranger.key)))),
        put(&srv, &ClientSecurity::default()),
    ];
    for (i, r) in refused.iter().enumerate() {
        assert!(r.is_err(), "case {i} must be refused: {r:?}");
    }
    srv.wait("four TLS failures counted", |s| s.tls_failures >= 4);
    // A client that does not trust the node's CA refuses the node.
    let wrong_ca = ClientSecurity {
        tls: Some(client_config(&other_pki.ca(), Some((&stranger.cert, &stranger.key)), &[]).unwrap()),
        token: None,
    };
    assert!(put(&srv, &wrong_ca).is_err());
}

#[test]
fn a_token_port_refuses_a_missing_or_wrong_token_and_counts_it() {
    let token = b"a-token-of-sufficient-length".to_vec();
    let srv = serve(ClientPortSecurity { tls: None, token: Some(ClientToken::new(&token).unwrap()) });
    let with = |t: Option<&[u8]>| ClientSecurity { tls: None, token: t.map(<[u8]>::to_vec) };
    put(&srv, &with(Some(&token))).expect("the token lets a client write");
    assert!(unauthenticated(&put(&srv, &with(None))));
    assert!(unauthenticated(&put(&srv, &with(Some(b"a-token-of-sufficient-lengtH")))));
    srv.wait("two refusals counted", |s| s.closed_unauthenticated == 2);
    // TLS and a token together (client certificates not asked).
    let mut pki = TestPki::new("ca").unwrap();
    let node = pki.issue("node", Validity::Current).unwrap();
    let ctx = TlsContext::load(pki.files(&node, Vec::new())).unwrap();
    let srv = serve(ClientPortSecurity {
        tls: Some((ctx, ClientCerts::NotAsked)),
        token: Some(ClientToken::new(&token).unwrap()),
    });
    let tls = Some(client_config(&pki.ca(), None, &[]).unwrap());
    put(&srv, &ClientSecurity { tls: tls.clone(), token: Some(token.clone()) }).expect("TLS and the token");
    assert!(unauthenticated(&put(&srv, &ClientSecurity { tls, token: None })));
}
