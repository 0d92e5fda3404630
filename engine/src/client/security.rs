//! Who may use the client port: TLS (optionally with client certificates) and a token.
//!
//! The token is sent once per connection, as its first frame ([`AUTH_KIND`], a
//! `phalanx.v1.ClientAuth`), not with every request: a pipelined connection pays for it
//! once. Over plaintext it is readable by anyone on the path, so a node only binds the
//! client port beyond loopback with TLS (`phalanx node`'s fail-closed start).

use std::sync::Arc;

use phalanx_net::tls::rustls::ClientConfig;
use phalanx_net::tls::{ClientCerts, TlsContext};
use sha2::{Digest, Sha256};

pub use super::AUTH_KIND;

/// Shortest token accepted, in bytes: guessing it must be out of reach (128 bits of a
/// random token's entropy, hex-encoded, is 32 characters).
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted, in bytes (it must fit a small first frame).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// A token the client port requires, kept as its SHA-256 digest.
#[derive(Clone)]
pub struct ClientToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientToken(..)")
    }
}

impl ClientToken {
    /// A token from its bytes; refused when shorter than [`MIN_TOKEN_BYTES`] or longer
    /// than [`MAX_TOKEN_BYTES`].
    pub fn new(token: &[u8]) -> Result<ClientToken, String> {
        if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len()) {
            return Err(format!(
                "a client token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes, this one is {}",
                token.len()
            ));
        }
        Ok(ClientToken { digest: Sha256::digest(token).into() })
    }

    /// Whether `presented` is the token. Compares digests of equal length with no early
    /// exit, so the time taken says nothing about how much of it was right.
    #[must_use]
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        d.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// How the client port authenticates clients (the default: neither TLS nor a token).
#[derive(Clone, Debug, Default)]
pub struct ClientPortSecurity {
    /// TLS with the node's certificate, and whether clients must present one of theirs.
    pub tls: Option<(Arc<TlsContext>, ClientCerts)>,
    /// A token every connection must present first.
    pub token: Option<ClientToken>,
}

/// How a client reaches a secured client port.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// TLS: the CA to trust, and a client certificate when the port asks for one.
    pub tls: Option<Arc<ClientConfig>>,
    /// The token to present.
    pub token: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_short_ones_are_refused() {
        let t = ClientToken::new(b"0123456789abcdef0123").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert!(!t.matches(b""));
        assert!(ClientToken::new(b"short").is_err());
        assert!(ClientToken::new(&[b'x'; MAX_TOKEN_BYTES + 1]).is_err());
    }
}
