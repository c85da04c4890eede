//! Booting without the database, the fleet's half: what a server must keep to boot a known node while the
//! database is unreachable (`BootSnapshot`: per node its MAC, address, image with its manifest, last role
//! document), and the stateless boot credential that proves a booting node's identity with no database write.
//!
//! A boot credential is `lbf_boot_` + base64url of
//! `version (1) | MAC (6) | IPv4 address (4) | expiry, ms since the epoch (8, big endian) | nonce (16) | tag (32)`,
//! the tag an HMAC-SHA256 with the fleet's boot key (kept in the database, copied into every server's cache) over
//! a domain label and the fields before it. Any server verifies it without the database; it reads the node's
//! role and long-polls (read-only, `api::agent`), and is exchanged once (the nonce is recorded) for a node
//! credential when the database is back. The design and its limits: docs/high-availability.md, "Booting while
//! the database is down".

use std::net::Ipv4Addr;

use base64::Engine;
use hmac::{Hmac, Mac};
use lbfleet_proto::{NodeState, RoleDocument};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Fleet, Result};
use crate::store::{self, images::ImageRow, nodes::NodeFilter, StoreError};

pub use lbfleet_proto::boot::BOOT_CREDENTIAL_PREFIX;

/// Bytes of the fleet's boot key.
pub const BOOT_KEY_BYTES: usize = 32;

/// The fleet's boot-credential key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BootKey(pub [u8; BOOT_KEY_BYTES]);

impl std::fmt::Debug for BootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootKey(<redacted>)")
    }
}

impl BootKey {
    pub fn random() -> BootKey {
        let mut k = [0u8; BOOT_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut k);
        BootKey(k)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<BootKey> {
        let bytes = hex::decode(text).ok()?;
        Some(BootKey(bytes.try_into().ok()?))
    }
}

/// An image as the cache keeps it: what the boot script names and the manifest's digests of its two files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
}

impl CachedImage {
    /// The image as cached, or `None` for an image registered by hand without a manifest: the cache serves only
    /// files it can verify.
    fn of(row: &ImageRow) -> Option<CachedImage> {
        Some(CachedImage {
            name: row.name.clone(),
            kernel: row.kernel.clone(),
            initrd: row.initrd.clone(),
            cmdline: row.cmdline.clone(),
            kernel_sha256: row.kernel_sha256.clone()?,
            initrd_sha256: row.initrd_sha256.clone()?,
        })
    }

    /// The manifest's SHA-256 (hex) of `file`, if it is one of the image's files.
    pub fn sha256_of(&self, file: &str) -> Option<&str> {
        if file == self.kernel {
            Some(&self.kernel_sha256)
        } else if file == self.initrd {
            Some(&self.initrd_sha256)
        } else {
            None
        }
    }
}

/// A known node as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedNode {
    pub node_id: i64,
    /// Lowercase `aa:bb:..`.
    pub mac: String,
    pub name: String,
    pub hostname: Option<String>,
    pub state: NodeState,
    /// Its reserved address, if it has one.
    pub reserved_address: Option<String>,
    /// The address of its bound lease when the snapshot was taken.
    pub lease_address: Option<String>,
    pub image: Option<CachedImage>,
    /// Its last role document (with its generation), if it is assigned.
    pub role: Option<RoleDocument>,
}

impl CachedNode {
    /// Whether `addr` is an address lbfleet's DHCP gave this node (reserved, or its bound lease).
    pub fn holds(&self, addr: Ipv4Addr) -> bool {
        let a = addr.to_string();
        self.reserved_address.as_deref() == Some(a.as_str())
            || self.lease_address.as_deref() == Some(a.as_str())
    }
}

/// Everything the boot cache holds, as read from the database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSnapshot {
    /// The fleet's boot key, hex.
    pub boot_key: String,
    pub nodes: Vec<CachedNode>,
}

impl std::fmt::Debug for BootSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootSnapshot")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// Nodes in these states are "known": approved by an operator, so they may boot from the cache.
pub fn boots_from_cache(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Ready | NodeState::Assigned | NodeState::Serving
    )
}

/// What a verified boot credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClaim {
    pub mac: String,
    pub address: Ipv4Addr,
    pub expires_at_ms: i64,
    pub nonce: [u8; 16],
}

/// Why a boot credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootCredentialError {
    #[error("not a boot credential")]
    Malformed,
    #[error("boot credential signature does not verify")]
    BadSignature,
    #[error("boot credential expired")]
    Expired,
}

const VERSION: u8 = 1;
const FIELDS: usize = 1 + 6 + 4 + 8 + 16;
const TAG: usize = 32;
const LABEL: &[u8] = b"lbfleet boot credential\0";

/// The HMAC over the label and `fields` (an HMAC takes a key of any length, so `None` never happens).
fn tag(key: &BootKey, fields: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).ok()?;
    mac.update(LABEL);
    mac.update(fields);
    Some(mac)
}

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Mints a boot credential for `mac` (normalised) at `address`, valid until `expires_at_ms`.
pub fn mint(key: &BootKey, mac: &str, address: Ipv4Addr, expires_at_ms: i64) -> Option<String> {
    let mut bytes = Vec::with_capacity(FIELDS + TAG);
    bytes.push(VERSION);
    bytes.extend_from_slice(&mac_bytes(mac)?);
    bytes.extend_from_slice(&address.octets());
    bytes.extend_from_slice(&expires_at_ms.to_be_bytes());
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    bytes.extend_from_slice(&nonce);
    let t = tag(key, &bytes)?.finalize().into_bytes();
    bytes.extend_from_slice(&t);
    Some(format!(
        "{BOOT_CREDENTIAL_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Verifies a boot credential (signature first, in constant time, then expiry at `now_ms`).
pub fn verify(
    key: &BootKey,
    text: &str,
    now_ms: i64,
) -> std::result::Result<BootClaim, BootCredentialError> {
    let body = text
        .strip_prefix(BOOT_CREDENTIAL_PREFIX)
        .ok_or(BootCredentialError::Malformed)?;
    if body.len() > 2 * (FIELDS + TAG) {
        return Err(BootCredentialError::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| BootCredentialError::Malformed)?;
    if bytes.len() != FIELDS + TAG || bytes[0] != VERSION {
        return Err(BootCredentialError::Malformed);
    }
    let (fields, sig) = bytes.split_at(FIELDS);
    tag(key, fields)
        .ok_or(BootCredentialError::BadSignature)?
        .verify_slice(sig)
        .map_err(|_| BootCredentialError::BadSignature)?;
    let mac = fields[1..7]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let address = Ipv4Addr::new(fields[7], fields[8], fields[9], fields[10]);
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&fields[11..19]);
    let expires_at_ms = i64::from_be_bytes(exp);
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&fields[19..35]);
    if now_ms >= expires_at_ms {
        return Err(BootCredentialError::Expired);
    }
    Ok(BootClaim {
        mac,
        address,
        expires_at_ms,
        nonce,
    })
}

impl Fleet {
    /// The fleet's boot-credential key, made (once, fleet-wide) if missing.
    pub async fn boot_key(&self) -> Result<BootKey> {
        {
            let mut conn = self.store.read().await?;
            if let Some(k) = store::boot_credentials::key(&mut conn).await? {
                return BootKey::from_hex(&k).ok_or_else(|| {
                    StoreError::Corrupt("boot_credential_key is not 32 bytes of hex".into()).into()
                });
            }
        }
        let mut tx = self.store.begin().await?;
        let k = store::boot_credentials::ensure_key(&mut tx, &BootKey::random().to_hex()).await?;
        store::commit(tx).await?;
        BootKey::from_hex(&k).ok_or_else(|| {
            StoreError::Corrupt("boot_credential_key is not 32 bytes of hex".into()).into()
        })
    }

    /// Reads what the boot cache must hold: every known node with its address, image and role document.
    pub async fn boot_snapshot(&self) -> Result<BootSnapshot> {
        let key = self.boot_key().await?;
        let mut conn = self.store.read().await?;
        let rows = store::nodes::list(&mut conn, &NodeFilter::default()).await?;
        let leases = store::leases::active(&mut conn, store::now_ms()).await?;
        let images = store::images::list(&mut conn).await?;
        let default = images.iter().find(|i| i.is_default);
        let mut nodes = Vec::new();
        for row in rows.iter().filter(|r| boots_from_cache(r.state)) {
            let image = match &row.image {
                Some(name) => images.iter().find(|i| &i.name == name),
                None => default,
            };
            let lease_address = leases
                .iter()
                .find(|l| l.mac == row.mac && l.state == "bound")
                .map(|l| l.address.clone());
            let role = if row.cluster.is_some() {
                Some(self.role_document_for(&mut conn, row).await?)
            } else {
                None
            };
            nodes.push(CachedNode {
                node_id: row.id,
                mac: row.mac.clone(),
                name: row.name().to_owned(),
                hostname: row.hostname.clone(),
                state: row.state,
                reserved_address: row.reserved_address.clone(),
                lease_address,
                image: image.and_then(CachedImage::of),
                role,
            });
        }
        Ok(BootSnapshot {
            boot_key: key.to_hex(),
            nodes,
        })
    }

    /// Checks a boot credential presented for enrollment and records its single exchange, in `conn`'s
    /// transaction. Returns the node it names, or `None` when it is invalid, expired, for another MAC than
    /// `mac`, for a node no longer known, or exchanged before.
    pub(super) async fn redeem_boot_credential(
        &self,
        conn: &mut store::Conn,
        text: &str,
        mac: &str,
    ) -> Result<Option<i64>> {
        let Some(k) = store::boot_credentials::key(conn).await? else {
            return Ok(None);
        };
        let key = BootKey::from_hex(&k)
            .ok_or_else(|| StoreError::Corrupt("boot_credential_key is not hex".into()))?;
        let claim = match verify(&key, text, store::now_ms()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(mac, reason = %e, "boot credential refused at enrollment");
                return Ok(None);
            }
        };
        if claim.mac != mac {
            tracing::warn!(
                mac,
                credential_mac = claim.mac,
                "boot credential presented for another MAC"
            );
            return Ok(None);
        }
        let Some(row) =
            store::nodes::get(conn, &store::nodes::NodeKey::Mac(claim.mac.clone())).await?
        else {
            return Ok(None);
        };
        if !boots_from_cache(row.state) {
            return Ok(None);
        }
        if !store::boot_credentials::redeem(
            conn,
            &hex::encode(claim.nonce),
            row.id,
            claim.expires_at_ms,
        )
        .await?
        {
            tracing::warn!(
                node = row.name(),
                "boot credential presented for enrollment a second time"
            );
            return Ok(None);
        }
        Ok(Some(row.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:aa:00:01";

    #[test]
    fn a_boot_credential_verifies_with_its_key_until_it_expires() {
        let key = BootKey::random();
        let addr = Ipv4Addr::new(198, 18, 0, 50);
        let c = mint(&key, MAC, addr, 2_000).expect("mint");
        assert!(c.starts_with(BOOT_CREDENTIAL_PREFIX));
        let claim = verify(&key, &c, 1_999).expect("verify");
        assert_eq!(
            (claim.mac.as_str(), claim.address, claim.expires_at_ms),
            (MAC, addr, 2_000)
        );
        assert_eq!(verify(&key, &c, 2_000), Err(BootCredentialError::Expired));
        assert_eq!(
            verify(&BootKey::random(), &c, 1_000),
            Err(BootCredentialError::BadSignature)
        );
        // Two credentials for the same node differ (the nonce): each exchanges once.
        let c2 = mint(&key, MAC, addr, 2_000).expect("mint");
        assert_ne!(c, c2);
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let key = BootKey::random();
        let c = mint(&key, MAC, Ipv4Addr::new(198, 18, 0, 50), i64::MAX).expect("mint");
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&c[BOOT_CREDENTIAL_PREFIX.len()..])
            .expect("b64");
        bytes[6] ^= 1; // the MAC's last byte
        let forged = format!(
            "{BOOT_CREDENTIAL_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
        );
        assert_eq!(
            verify(&key, &forged, 0),
            Err(BootCredentialError::BadSignature)
        );
        for bad in [
            "",
            "lbf_boot_",
            "lbf_boot_!!",
            "lbf_node_abc",
            &c[..c.len() - 2],
        ] {
            assert_eq!(
                verify(&key, bad, 0),
                Err(BootCredentialError::Malformed),
                "{bad}"
            );
        }
        assert!(mint(&key, "not a mac", Ipv4Addr::LOCALHOST, 0).is_none());
    }
}
