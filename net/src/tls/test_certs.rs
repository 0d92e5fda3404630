//! A throwaway certificate authority and the certificates tests (and `phalanx-bench --tls`)
//! need: node certificates for 127.0.0.1/localhost, expired ones, ones from another CA.
//! Keys are generated fresh each time and live in a temporary directory that is removed
//! when the [`TestPki`] is dropped. Never for production material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::{CertPin, TlsContext, TlsFiles};

/// A CA in a temporary directory, issuing certificates as files beside it.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    serial: u32,
}

/// One issued certificate: its files and its pin.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// Its SHA-256 pin.
    pub pin: CertPin,
}

/// The pin of the certificate the TLS port at `addr` ("host:port") presents to a client with
/// `cfg`; `None` when the handshake fails.
#[must_use]
pub fn presented_pin(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Option<CertPin> {
    let mut conn = rustls::ClientConnection::new(cfg, super::server_name(addr).ok()?).ok()?;
    let mut sock = std::net::TcpStream::connect(addr).ok()?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    conn.peer_certificates().and_then(|c| c.first()).map(|c| CertPin::of(c))
}

/// How an issued certificate's validity relates to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid from a year ago for ten years.
    Current,
    /// Expired a year ago.
    Expired,
}

fn fail(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl TestPki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> std::io::Result<TestPki> {
        let dir = tempfile::Builder::new().prefix("phalanx-pki-").tempdir()?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().map_err(fail)?;
        let ca_cert = p.self_signed(&ca_key).map_err(fail)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        Ok(TestPki { dir, ca_cert, ca_key, serial: 0 })
    }

    /// The CA certificate file.
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory the files are in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate for 127.0.0.1 and localhost (server and client use alike).
    pub fn issue(&mut self, name: &str, validity: Validity) -> std::io::Result<Issued> {
        self.serial += 1;
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).map_err(fail)?;
        p.distinguished_name.push(DnType::CommonName, name);
        let year = 2026;
        let (from, to) = match validity {
            Validity::Current => ((year - 1, 1, 1), (year + 9, 1, 1)),
            Validity::Expired => ((year - 3, 1, 1), (year - 1, 1, 1)),
        };
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = KeyPair::generate().map_err(fail)?;
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).map_err(fail)?;
        let base = format!("{name}-{}", self.serial);
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{base}.pem")), self.dir.path().join(format!("{base}-key.pem")));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Issued { cert: cert_path, key: key_path, pin: CertPin::of(cert.der()) })
    }

    /// The files of a node presenting `issued`, trusting this CA, requiring `pins`.
    #[must_use]
    pub fn files(&self, issued: &Issued, pins: Vec<CertPin>) -> TlsFiles {
        TlsFiles { cert: issued.cert.clone(), key: issued.key.clone(), ca: self.ca(), pins }
    }

    /// A client configuration trusting this CA and presenting `identity`.
    pub fn client(&self, identity: &Issued) -> std::io::Result<Arc<rustls::ClientConfig>> {
        super::client_config(&self.ca(), Some((&identity.cert, &identity.key)), &[]).map_err(fail)
    }

    /// A context for a node presenting a fresh current certificate, no pins.
    pub fn node_context(&mut self, name: &str) -> std::io::Result<Arc<TlsContext>> {
        let issued = self.issue(name, Validity::Current)?;
        TlsContext::load(self.files(&issued, Vec::new())).map_err(fail)
    }
}
