//! Boot trust: whether a boot script may carry an enrollment token.
//!
//! PXE is unauthenticated, so anyone on the boot network can ask for `/boot/<mac>.ipxe` of any MAC. A token in
//! that script becomes the node's credential, so a script carries one only when
//! 1. it is requested from the address lbfleet's own DHCP leased (or reserved) to that MAC, while the lease is
//!    bound, and
//! 2. the server's neighbour (ARP) entry for that address names that MAC right now: the script, token included,
//!    goes to the NIC the entry names, so another NIC that merely put the address on its interface gets none
//!    (issue 20 item 1; the DHCP side refuses requests whose `chaddr` is not the sending NIC's, `dhcp::link`).
//!
//! Everyone else still gets the image the MAC would boot, without a token: a real node that booted through
//! another path reports that it cannot enroll, an impostor gets nothing of value. Sites whose DHCP is not
//! lbfleet's can turn the lease check off (`boot.allow_token_without_lease`), which restores the old,
//! takeover-prone behaviour; `boot.check_link_address = false` turns the neighbour check off (for clients that
//! reach the server through a router, whose neighbour entry is the router's).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::fleet::Fleet;
use crate::store::StoreError;

/// Why a script carries a token or not (logged with every script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecision {
    /// The request came from the MAC's bound lease address, and the neighbour entry names the MAC.
    LeaseMatches,
    /// The check is turned off by configuration.
    CheckDisabled,
    /// No bound lease of this MAC on the requesting address: no token.
    NoLease,
    /// The lease matches, but the server's neighbour entry for the requesting address names another MAC (or
    /// there is none): another NIC uses the node's address. No token.
    OtherLinkAddress,
    /// Everything matches, but the node is known and no operator opened its enrollment window
    /// (`boot.require_armed_enrollment`). No token.
    NotExpected,
}

impl TokenDecision {
    pub fn carries_token(self) -> bool {
        matches!(
            self,
            TokenDecision::LeaseMatches | TokenDecision::CheckDisabled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenDecision::LeaseMatches => "lease matches",
            TokenDecision::CheckDisabled => "lease check disabled",
            TokenDecision::NoLease => "no lease for this MAC at the requesting address",
            TokenDecision::OtherLinkAddress => {
                "the requesting address's neighbour entry does not name this MAC"
            }
            TokenDecision::NotExpected => "no enrollment window open for this node",
        }
    }
}

/// The server's neighbour table: which link-layer address an IPv4 neighbour has now.
pub trait Neighbours: Send + Sync + fmt::Debug {
    /// Every complete entry for `ip` (normally one), as lowercase `aa:bb:..` MACs.
    fn link_addresses(&self, ip: Ipv4Addr) -> Vec<String>;
}

/// The kernel's ARP table of the server's network namespace, read from `/proc/net/arp` per request (a boot
/// script request is rare and rate-limited; the table is small).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelNeighbours;

impl Neighbours for KernelNeighbours {
    fn link_addresses(&self, ip: Ipv4Addr) -> Vec<String> {
        match std::fs::read_to_string("/proc/net/arp") {
            Ok(text) => arp_entries(&text, ip),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/net/arp: boot scripts carry no tokens");
                Vec::new()
            }
        }
    }
}

/// `ATF_COM`: the entry is complete (its hardware address is known).
const ATF_COM: u32 = 0x2;

/// The complete entries for `ip` in `/proc/net/arp` text:
/// `IP address  HW type  Flags  HW address  Mask  Device`, one line per entry after a header.
pub fn arp_entries(text: &str, ip: Ipv4Addr) -> Vec<String> {
    let want = ip.to_string();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (addr, _hw_type, flags, hw) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            (addr == want && flags & ATF_COM != 0).then(|| hw.to_ascii_lowercase())
        })
        .collect()
}

/// The two checks and whether each is on.
#[derive(Debug, Clone, Copy)]
pub struct TrustPolicy {
    /// `boot.allow_token_without_lease`: no check at all.
    pub allow_without_lease: bool,
    /// `boot.check_link_address`: the neighbour check on top of the lease check.
    pub check_link_address: bool,
}

/// Decides for a script request for `mac` (normalised `aa:bb:..`) from `peer`.
pub async fn token_decision(
    fleet: &Fleet,
    policy: TrustPolicy,
    neighbours: &dyn Neighbours,
    mac: &str,
    peer: IpAddr,
) -> Result<TokenDecision, StoreError> {
    if policy.allow_without_lease {
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
    if !fleet.lease_bound_to(mac, &v4.to_string()).await? {
        return Ok(TokenDecision::NoLease);
    }
    Ok(link_decision(policy, neighbours, mac, v4))
}

/// The neighbour half of the decision, for a request whose lease matched. A loopback peer is the server host
/// itself, which has no link-layer address to check (and whoever runs code there owns the server anyway).
pub fn link_decision(
    policy: TrustPolicy,
    neighbours: &dyn Neighbours,
    mac: &str,
    peer: Ipv4Addr,
) -> TokenDecision {
    if !policy.check_link_address || peer.is_loopback() {
        return TokenDecision::LeaseMatches;
    }
    let entries = neighbours.link_addresses(peer);
    if !entries.is_empty() && entries.iter().all(|e| e == mac) {
        TokenDecision::LeaseMatches
    } else {
        tracing::warn!(mac, client = %peer, neighbour = ?entries,
            "boot script for a MAC requested from its lease address by another NIC: no token");
        TokenDecision::OtherLinkAddress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    struct Table(HashMap<Ipv4Addr, Vec<String>>);

    impl Neighbours for Table {
        fn link_addresses(&self, ip: Ipv4Addr) -> Vec<String> {
            self.0.get(&ip).cloned().unwrap_or_default()
        }
    }

    const ON: TrustPolicy = TrustPolicy {
        allow_without_lease: false,
        check_link_address: true,
    };
    const NODE: &str = "52:54:00:aa:00:01";
    const OTHER: &str = "52:54:00:aa:00:99";

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    #[test]
    fn a_token_only_when_the_neighbour_entry_names_the_mac() {
        let mut t = Table::default();
        t.0.insert(ip(50), vec![NODE.into()]);
        t.0.insert(ip(51), vec![OTHER.into()]);
        t.0.insert(ip(52), vec![NODE.into(), OTHER.into()]);
        assert_eq!(
            link_decision(ON, &t, NODE, ip(50)),
            TokenDecision::LeaseMatches
        );
        // Another NIC holds the address.
        assert_eq!(
            link_decision(ON, &t, NODE, ip(51)),
            TokenDecision::OtherLinkAddress
        );
        // Two interfaces disagree: not this MAC for sure.
        assert_eq!(
            link_decision(ON, &t, NODE, ip(52)),
            TokenDecision::OtherLinkAddress
        );
        // No entry (e.g. the client is behind a router): no token.
        assert_eq!(
            link_decision(ON, &t, NODE, ip(53)),
            TokenDecision::OtherLinkAddress
        );
        assert!(!TokenDecision::OtherLinkAddress.carries_token());
        // The server host itself, and the check turned off.
        assert_eq!(
            link_decision(ON, &t, NODE, Ipv4Addr::new(127, 0, 0, 31)),
            TokenDecision::LeaseMatches
        );
        let off = TrustPolicy {
            check_link_address: false,
            ..ON
        };
        assert_eq!(
            link_decision(off, &t, NODE, ip(51)),
            TokenDecision::LeaseMatches
        );
    }

    #[test]
    fn proc_net_arp_entries_are_parsed_and_incomplete_ones_ignored() {
        let text =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                    198.18.0.50      0x1         0x2         52:54:00:AA:00:01     *        lbs1\n\
                    198.18.0.51      0x1         0x0         00:00:00:00:00:00     *        lbs1\n\
                    198.18.0.5       0x1         0x6         52:54:00:aa:00:05     *        lbs1\n\
                    garbage\n";
        assert_eq!(arp_entries(text, ip(50)), vec![NODE.to_owned()]);
        assert!(arp_entries(text, ip(51)).is_empty());
        // 198.18.0.5 must not match 198.18.0.50's line or the other way round.
        assert_eq!(
            arp_entries(text, ip(5)),
            vec!["52:54:00:aa:00:05".to_owned()]
        );
        assert!(arp_entries(text, ip(52)).is_empty());
    }
}
