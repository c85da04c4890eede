//! One rustls `ServerCertVerifier` for the agent's two policies outside the web PKI: the pinned server
//! certificate (`pin`) and "any certificate" for an `https` check with `tls_verify: false` (`health::probe`).
//! Only the decision on the end-entity certificate differs; the handshake signatures are always checked with
//! the provider's algorithms, so a peer must still hold the key of the certificate it shows.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Decides on the server's end-entity certificate (names, issuers and dates are the policy's business).
pub trait EndEntityPolicy: std::fmt::Debug + Send + Sync {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error>;
}

/// Accepts every certificate.
#[derive(Debug)]
pub struct AnyCertificate;

impl EndEntityPolicy for AnyCertificate {
    fn check(&self, _end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        Ok(())
    }
}

/// A verifier that applies `P` to the end entity and checks the handshake signatures.
#[derive(Debug)]
pub struct PolicyVerifier<P> {
    policy: P,
    provider: Arc<CryptoProvider>,
}

impl<P: EndEntityPolicy> PolicyVerifier<P> {
    pub fn new(policy: P, provider: Arc<CryptoProvider>) -> PolicyVerifier<P> {
        PolicyVerifier { policy, provider }
    }
}

impl<P: EndEntityPolicy> ServerCertVerifier for PolicyVerifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.policy
            .check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
