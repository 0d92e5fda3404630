//! Certificate pinning on top of the CA check, for both directions.
//!
//! A pinned peer must pass the CA check *and* present a certificate whose SHA-256 is in the
//! pin list: pinning narrows who the CA vouches for (e.g. one cluster's nodes out of a
//! company-wide CA), it never replaces the chain check.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::CertPin;

/// The handshake-signature checks and the schemes, left to `self.inner` (pinning is about
/// the certificate, not the signature).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

fn check_pin(pins: &[CertPin], cert: &CertificateDer<'_>) -> Result<(), Error> {
    if pins.is_empty() || pins.contains(&CertPin::of(cert)) {
        Ok(())
    } else {
        Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
    }
}

/// A server verifier that also checks pins (the dialing side of the Raft port, `ctl`).
#[derive(Debug)]
pub(super) struct PinnedServer {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<CertPin>,
}

impl PinnedServer {
    pub(super) fn wrap(inner: Arc<dyn ServerCertVerifier>, pins: &[CertPin]) -> Arc<dyn ServerCertVerifier> {
        if pins.is_empty() {
            return inner;
        }
        Arc::new(PinnedServer { inner, pins: pins.to_vec() })
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ok = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        check_pin(&self.pins, end_entity)?;
        Ok(ok)
    }

    delegate_signatures!();
}

/// A client verifier that also checks pins (the accepting side of the Raft port, and the
/// client port with client certificates).
#[derive(Debug)]
pub(super) struct PinnedClient {
    inner: Arc<dyn ClientCertVerifier>,
    pins: Vec<CertPin>,
}

impl PinnedClient {
    pub(super) fn wrap(inner: Arc<dyn ClientCertVerifier>, pins: &[CertPin]) -> Arc<dyn ClientCertVerifier> {
        if pins.is_empty() {
            return inner;
        }
        Arc::new(PinnedClient { inner, pins: pins.to_vec() })
    }
}

impl ClientCertVerifier for PinnedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_pin(&self.pins, end_entity)?;
        Ok(ok)
    }

    delegate_signatures!();
}
