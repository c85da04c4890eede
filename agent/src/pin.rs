//! Certificate pinning: the agent trusts exactly the server certificate whose SHA-256 the boot script named
//! (`lbfleet.server_cert=sha256:HEX`), whoever issued it. A self-signed server certificate is therefore as good
//! as a CA-issued one, and a machine on the boot network that answers in the server's place is refused.

use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::tls_verify::{EndEntityPolicy, PolicyVerifier};

/// A parsed `sha256:HEX` pin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CertPin([u8; 32]);

impl std::fmt::Debug for CertPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for CertPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a certificate pin (sha256: and 64 hex digits)")]
pub struct BadPin(pub String);

impl std::str::FromStr for CertPin {
    type Err = BadPin;

    fn from_str(s: &str) -> Result<Self, BadPin> {
        let bad = || BadPin(s.chars().take(80).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(CertPin(arr))
    }
}

impl CertPin {
    pub fn of(der: &[u8]) -> CertPin {
        CertPin(Sha256::digest(der).into())
    }
}

/// The pin as a verifier policy: the certificate's hash alone decides (names and issuers do not matter); the
/// last certificate refused is remembered so the caller can say which one it got.
#[derive(Debug)]
struct Pinned {
    pin: CertPin,
    refused: RefusedSlot,
}

impl EndEntityPolicy for Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = CertPin::of(end_entity.as_ref());
        if got == self.pin {
            return Ok(());
        }
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
        Err(rustls::Error::General(format!(
            "server certificate {got} is not the pinned {}",
            self.pin
        )))
    }
}

/// Where the verifier puts the pin of a certificate it refused.
pub type RefusedSlot = Arc<Mutex<Option<CertPin>>>;

/// A rustls client configuration that trusts only `pin`, and the slot where a refused certificate's pin lands.
pub fn pinned_config(pin: CertPin) -> Result<(rustls::ClientConfig, RefusedSlot), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let refused = Arc::new(Mutex::new(None));
    let verifier = Arc::new(PolicyVerifier::new(
        Pinned {
            pin,
            refused: refused.clone(),
        },
        provider.clone(),
    ));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let pin: CertPin = text.parse().expect("pin");
        assert_eq!(pin.to_string(), text);
        for bad in [
            "",
            "sha256:",
            "sha1:ab",
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(bad.parse::<CertPin>().is_err(), "{bad}");
        }
        assert_eq!(CertPin::of(b"x"), CertPin::of(b"x"));
        assert_ne!(CertPin::of(b"x"), CertPin::of(b"y"));
    }
}
