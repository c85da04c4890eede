//! TLS for the admin API, dashboard and agent API (rustls, no OpenSSL).
//!
//! Either the operator gives PEM files (`tls_cert`, `tls_key`), or the server creates a self-signed key and
//! certificate on first start and keeps them next to the database (`lbfleet-tls.crt`, `lbfleet-tls.key`, the key
//! mode 0600). Agents pin the certificate by its SHA-256 (`sha256:HEX` over the DER), which the boot script
//! passes as `lbfleet.server_cert=`, so a self-signed certificate is as good as one from a CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Where the certificate comes from (resolved configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetting {
    /// Plain HTTP only.
    Off,
    /// Create (once) and use a self-signed certificate kept in `dir`.
    SelfSigned { dir: PathBuf },
    /// PEM files the operator provides.
    Files { cert: PathBuf, key: PathBuf },
}

impl TlsSetting {
    pub fn is_on(&self) -> bool {
        !matches!(self, TlsSetting::Off)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("creating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded certificate and key, ready to serve.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server_config: Arc<rustls::ServerConfig>,
    /// `sha256:HEX` of the leaf certificate's DER (what agents pin).
    pub pin: String,
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("pin", &self.pin)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// `sha256:HEX` over a certificate's DER bytes.
pub fn pin_of(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The file names of the self-signed pair in `dir`.
pub fn self_signed_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("lbfleet-tls.crt"), dir.join("lbfleet-tls.key"))
}

/// Writes `contents` to a new file readable only by its owner.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates the self-signed pair in `dir` unless it exists; `names` become the subject alternative names.
fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = self_signed_paths(dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
    // Key first: a certificate without its key would be reused on the next start and fail to load.
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&cert);
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    write_private(&cert, generated.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate");
    Ok((cert, key))
}

/// Loads (creating if asked) the certificate; `None` when TLS is off.
pub fn load(setting: &TlsSetting, names: &[String]) -> Result<Option<TlsMaterial>, TlsError> {
    let (cert_path, key_path) = match setting {
        TlsSetting::Off => return Ok(None),
        TlsSetting::SelfSigned { dir } => ensure_self_signed(dir, names)?,
        TlsSetting::Files { cert, key } => (cert.clone(), key.clone()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            what: "certificate",
            reason: e.to_string(),
        })?;
    let leaf = certs.first().ok_or_else(|| TlsError::Pem {
        path: cert_path.clone(),
        what: "certificate",
        reason: "no certificate in the file".into(),
    })?;
    let pin = pin_of(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsMaterial {
        server_config: Arc::new(config),
        pin,
        cert_path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_created_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let setting = TlsSetting::SelfSigned {
            dir: dir.path().to_owned(),
        };
        let names = vec!["localhost".to_owned()];
        let first = load(&setting, &names).expect("load").expect("on");
        let (cert, key) = self_signed_paths(dir.path());
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(cert.exists());
        let again = load(&setting, &names).expect("load").expect("on");
        assert_eq!(first.pin, again.pin, "the pair is reused, not recreated");
        assert!(first.pin.starts_with("sha256:") && first.pin.len() == 7 + 64);
        assert!(load(&TlsSetting::Off, &names).expect("off").is_none());
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not pem").expect("write");
        let err = load(
            &TlsSetting::Files {
                cert: cert.clone(),
                key: dir.path().join("k.pem"),
            },
            &[],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("c.pem"), "{err}");
    }
}
