//! Boot trust: whether a boot script may carry an enrollment token.
//!
//! PXE is unauthenticated, so anyone on the boot network can ask for `/boot/<mac>.ipxe` of any MAC. A token in
//! that script becomes the node's credential, so a script carries one only when it is requested from the
//! address lbfleet's own DHCP leased (or reserved) to that MAC, while the lease is bound. Everyone else still gets
//! the image the MAC would boot, without a token: a real node that booted through another path reports that
//! it cannot enroll, an impostor gets nothing of value. Sites whose DHCP is not lbfleet's can turn the check
//! off (`boot.allow_token_without_lease`), which restores the old, takeover-prone behaviour.

use std::net::IpAddr;

use crate::store::{self, Store, StoreError};

/// Why a script carries a token or not (logged with every script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecision {
    /// The request came from the MAC's bound lease address.
    LeaseMatches,
    /// The check is turned off by configuration.
    CheckDisabled,
    /// No bound lease of this MAC on the requesting address: no token.
    NoLease,
}

impl TokenDecision {
    pub fn carries_token(self) -> bool {
        !matches!(self, TokenDecision::NoLease)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenDecision::LeaseMatches => "lease matches",
            TokenDecision::CheckDisabled => "lease check disabled",
            TokenDecision::NoLease => "no lease for this MAC at the requesting address",
        }
    }
}

/// Decides for a script request for `mac` (normalised `aa:bb:..`) from `peer`.
pub async fn token_decision(
    store: &Store,
    allow_without_lease: bool,
    mac: &str,
    peer: IpAddr,
) -> Result<TokenDecision, StoreError> {
    if allow_without_lease {
        return Ok(TokenDecision::CheckDisabled);
    }
    // DHCP leases are IPv4; an IPv4-mapped IPv6 peer (dual-stack listener) is the same client.
    let v4 = match peer {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => a,
            None => return Ok(TokenDecision::NoLease),
        },
    };
    let mut conn = store.read().await?;
    let bound = store::leases::bound_to(&mut conn, mac, &v4.to_string(), store::now_ms()).await?;
    Ok(if bound {
        TokenDecision::LeaseMatches
    } else {
        TokenDecision::NoLease
    })
}
