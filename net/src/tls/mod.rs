//! TLS on the Raft and client ports (rustls, `ring` provider).
//!
//! - [`TlsFiles`] / [`TlsContext`]: a node's certificate, key and CA, loaded from PEM files
//!   and **reloaded without a restart**: each new connection (accepted or dialled) asks the
//!   context for its configuration, and at most every [`RELOAD_CHECK`] the context compares
//!   the files' size, modification time and inode with what it loaded; when one changed it
//!   builds the configuration anew and swaps it in. A reload that fails (a half-written
//!   file, a key that does not match) keeps the old configuration, is logged and counted, and
//!   is retried when the files change again. Connections already open keep their session.
//! - Between nodes TLS is always **mutual**: each side presents its certificate and verifies
//!   the other's against the CA (the dialer also checks the address it dialled against the
//!   certificate's names, as any TLS client does). Optionally both sides also require the
//!   peer's certificate to be one of a list of **SHA-256 pins** ([`CertPin`]): the SHA-256 of
//!   the whole DER certificate, what `openssl x509 -noout -fingerprint -sha256` prints.
//! - [`stream`]: the connection itself ([`TlsStream`], and [`Conn`], plain or TLS), whose
//!   session is also the write-through path of the Raft transport's queues, so every byte
//!   goes through the TLS session.
//!
//! Why not TLS 1.3 session resumption: connections are long-lived (one per shard and peer),
//! so servers send no tickets (`send_tls13_tickets = 0`) and keep no session cache.

pub mod stream;
#[cfg(any(test, feature = "test-certs"))]
pub mod test_certs;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// The rustls in use, for crates that build on these configurations (the client port's
/// blocking client) without naming a version of their own.
pub use rustls;
pub use stream::{Conn, TlsStream};

/// How often, at most, a context looks at its files for a change (one `stat` per file, on
/// the next connection after this): a renewed certificate is in use within this of the first
/// connection after it was written.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Largest PEM file read (certificate chain, key or CA bundle), in bytes: a bundle of a few
/// hundred CAs is well under it; a wrong path pointing at a huge file is refused, not read.
pub const MAX_PEM_FILE_BYTES: u64 = 4 << 20;

/// Most pins accepted.
pub const MAX_PINS: usize = 64;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (certificate, key, CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A pin is not a SHA-256 fingerprint.
    #[error(
        "bad certificate pin {0:?}: expected 64 hex digits (colons allowed), optionally prefixed sha256:"
    )]
    BadPin(String),
    /// Contradictory or incomplete settings.
    #[error("{0}")]
    Config(String),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertPin(pub [u8; 32]);

impl CertPin {
    /// Parses `sha256:<hex>` or `<hex>`, 64 hex digits, `:` separators allowed (the form
    /// openssl prints).
    pub fn parse(s: &str) -> Result<CertPin, TlsError> {
        let body = s.trim();
        let body = body.strip_prefix("sha256:").or_else(|| body.strip_prefix("SHA256:")).unwrap_or(body);
        let hex: Vec<u8> = body.bytes().filter(|b| *b != b':').collect();
        if hex.len() != 64 {
            return Err(TlsError::BadPin(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
                _ => return Err(TlsError::BadPin(s.to_string())),
            }
        }
        Ok(CertPin(out))
    }

    /// The pin of `cert`.
    #[must_use]
    pub fn of(cert: &[u8]) -> CertPin {
        CertPin(Sha256::digest(cert).into())
    }
}

impl fmt::Debug for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses a comma-separated pin list. An empty list is an error, not "trust everything".
pub fn parse_pins(spec: &str) -> Result<Vec<CertPin>, TlsError> {
    let pins = spec
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(CertPin::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if pins.is_empty() {
        return Err(TlsError::Config(
            "an empty pin list would trust no certificate (or, read loosely, every one); give at least one pin or none at all".into(),
        ));
    }
    if pins.len() > MAX_PINS {
        return Err(TlsError::Config(format!("{} pins given, at most {MAX_PINS}", pins.len())));
    }
    Ok(pins)
}

/// Where a node's TLS material is, and what it requires of peers.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// When not empty, a peer's certificate must also be one of these.
    pub pins: Vec<CertPin>,
}

/// Whether the client port asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Clients must present a certificate chaining to the CA (mutual TLS).
    Required,
    /// Clients are not asked for one (they authenticate otherwise, e.g. with a token).
    NotAsked,
}

/// One loaded set of configurations.
struct Loaded {
    stamps: Vec<FileStamp>,
    /// Raft port, accepting side: client certificates required.
    peer_server: Arc<ServerConfig>,
    /// Raft port, dialling side: presents the node's certificate.
    peer_client: Arc<ClientConfig>,
    /// Client port without client certificates (with them it is `peer_server`).
    client_port_plain: Arc<ServerConfig>,
}

/// What identifies one version of a file: a rewrite (or an atomic rename over it) changes
/// at least one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

/// The stamps of the certificate, key and CA files; `None` while one cannot be looked at.
fn stamps(files: &TlsFiles) -> Option<Vec<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some(FileStamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
        })
        .collect()
}

/// A node's TLS configuration, reloaded when its files change. Shared by every shard and the
/// client port (`Arc`); the lock is taken once per new connection, never per message.
pub struct TlsContext {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    /// When the files were last looked at, and the stamps of a version that failed to load
    /// (not retried until they change again).
    checked: Mutex<(Instant, Option<Vec<FileStamp>>)>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext").field("files", &self.files).finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Loads the files; any problem is an error here (a node must not start with TLS it
    /// cannot use).
    pub fn load(files: TlsFiles) -> Result<Arc<TlsContext>, TlsError> {
        let loaded = build(&files)?;
        Ok(Arc::new(TlsContext {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new((Instant::now(), None)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// The files in use.
    #[must_use]
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Successful reloads since start.
    #[must_use]
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed (the previous configuration stayed in force).
    #[must_use]
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Loaded> {
        self.maybe_reload();
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Looks at the files when [`RELOAD_CHECK`] has passed; reloads when they changed.
    fn maybe_reload(&self) {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if checked.0.elapsed() < RELOAD_CHECK {
            return;
        }
        checked.0 = Instant::now();
        let Some(now) = stamps(&self.files) else {
            return; // a file is missing mid-rename: look again later
        };
        let loaded_stamps = self.loaded.read().unwrap_or_else(PoisonError::into_inner).stamps.clone();
        if now == loaded_stamps || checked.1.as_ref() == Some(&now) {
            return;
        }
        match build(&self.files) {
            Ok(l) => {
                *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(l);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                checked.1 = None;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate, key or CA changed; reloaded");
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                checked.1 = Some(now);
                tracing::warn!(error = %e, "TLS files changed but do not load; the previous ones stay in use");
            }
        }
    }

    /// The Raft port's accepting configuration (peer certificate required).
    #[must_use]
    pub fn peer_server(&self) -> Arc<ServerConfig> {
        self.current().peer_server.clone()
    }

    /// The Raft port's dialling configuration.
    #[must_use]
    pub fn peer_client(&self) -> Arc<ClientConfig> {
        self.current().peer_client.clone()
    }

    /// The client port's configuration.
    #[must_use]
    pub fn client_port(&self, certs: ClientCerts) -> Arc<ServerConfig> {
        let l = self.current();
        match certs {
            ClientCerts::Required => l.peer_server.clone(),
            ClientCerts::NotAsked => l.client_port_plain.clone(),
        }
    }
}

/// The `ring` provider: X25519/P-256 key exchange, AES-GCM and ChaCha20-Poly1305. rustls
/// marks it deprecated for lacking the post-quantum hybrid key exchange, which only its
/// `aws-lc-rs` provider has; that one needs a C build (cmake or a long `cc` build) this
/// project's CI machine does not have. Moving to it changes only this function.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read { what, path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_PEM_FILE_BYTES {
        return Err(TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            reason: format!("{len} bytes, more than the {MAX_PEM_FILE_BYTES} a PEM file may have"),
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, path)?;
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in it".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        what: "key",
        path: path.to_path_buf(),
        reason: format!("no PEM private key in it: {e}"),
    })
}

/// A root store of every certificate of a CA file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("CA", path)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: "CA",
            path: path.to_path_buf(),
            reason: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration trusting `ca` (and, when given, only certificates among `pins`),
/// presenting `identity` (certificate and key files) when given. Used by the Raft port's
/// dialers and by `phalanx ctl`.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    pins: &[CertPin],
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = match identity {
        Some((cert, key)) => Some((load_certs("certificate", cert)?, load_key(key)?)),
        None => None,
    };
    Ok(Arc::new(client_config_from(load_roots(ca)?, ca, identity, pins)?))
}

/// A certificate chain and its key, as read.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// [`client_config`] from material already read (`ca` names the CA file in errors).
fn client_config_from(
    roots: Arc<RootCertStore>,
    ca: &Path,
    identity: Option<Identity>,
    pins: &[CertPin],
) -> Result<ClientConfig, TlsError> {
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("CA {}: {e}", ca.display())))?;
    let verifier = verify::PinnedServer::wrap(webpki, pins);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

fn server_config(
    files: &TlsFiles,
    roots: &Arc<RootCertStore>,
    (chain, key): &Identity,
    client_certs: ClientCerts,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_certs {
        ClientCerts::Required => {
            let v = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("CA {}: {e}", files.ca.display())))?;
            builder.with_client_cert_verifier(verify::PinnedClient::wrap(v, &files.pins))
        }
        ClientCerts::NotAsked => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain.clone(), key.clone_key())?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Every configuration from one reading of the files: each is read once, so the
/// configurations cannot mix two versions of a file being replaced.
fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    // Stamped before reading: a change after the stamp is seen by the next check.
    let stamps = stamps(files);
    // Read first, so that a missing file is named by the error.
    let roots = load_roots(&files.ca)?;
    let identity = (load_certs("certificate", &files.cert)?, load_key(&files.key)?);
    let stamps = stamps.ok_or_else(|| TlsError::Config("a TLS file changed while it was read".into()))?;
    let mut peer_client = client_config_from(
        roots.clone(),
        &files.ca,
        Some((identity.0.clone(), identity.1.clone_key())),
        &files.pins,
    )?;
    peer_client.resumption = rustls::client::Resumption::disabled();
    Ok(Loaded {
        stamps,
        peer_server: Arc::new(server_config(files, &roots, &identity, ClientCerts::Required)?),
        peer_client: Arc::new(peer_client),
        client_port_plain: Arc::new(server_config(files, &roots, &identity, ClientCerts::NotAsked)?),
    })
}

/// The name a dialer checks the peer's certificate against: the host part of `addr`
/// (`host:port`, `[v6]:port`), an IP address or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{addr:?} has no host usable as a TLS server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_the_forms_tools_print() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(CertPin::parse(&hex).unwrap(), CertPin([0xab; 32]));
        assert_eq!(CertPin::parse(&format!("sha256:{hex}")).unwrap(), CertPin([0xab; 32]));
        assert_eq!(CertPin::parse(&colons).unwrap(), CertPin([0xab; 32]));
        assert!(CertPin::parse("abcd").is_err());
        assert!(CertPin::parse(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{}", CertPin([1; 32])), format!("sha256:{}", "01".repeat(32)));
    }

    #[test]
    fn an_empty_pin_list_is_an_error_not_trust_in_everything() {
        assert!(matches!(parse_pins(""), Err(TlsError::Config(_))));
        assert!(matches!(parse_pins(" , "), Err(TlsError::Config(_))));
        assert_eq!(parse_pins(&format!("{},{}", "00".repeat(32), "11".repeat(32))).unwrap().len(), 2);
    }

    #[test]
    fn server_names_come_from_the_dialled_address() {
        assert!(matches!(server_name("127.0.0.1:7000").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:7000").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("node-1.example:7000").unwrap(), ServerName::DnsName(_)));
    }
}
