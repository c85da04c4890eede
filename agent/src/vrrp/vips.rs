//! The VIPs of one VRRP instance as kernel addresses: each VIP resolved to its interface (the role's VRRP
//! interface, or the one the VIP names) with that interface's MAC for gratuitous ARP. Adding an address that is
//! already there adopts it (an agent restarted while MASTER), removing one already gone is not an error.
//!
//! A VRRP interface named like a VLAN (`eth0.100`) that the node lacks is created on its parent over
//! rtnetlink and marked with the alias [`VLAN_ALIAS`]; [`remove_created_vlans`] deletes only links with that
//! mark. Such a VLAN may carry no address of its own: the adverts then go out from the parent's primary
//! address (as keepalived's `mcast_src_ip` allows).
//!
//! The instance runs over IPv4 when the role has an IPv4 VIP, else over IPv6 ([`election_is_ipv4`]); over
//! IPv6 the adverts' source is the interface's link-local address (a global one of its addresses when the
//! unicast peers are named by global addresses). VIPs of the other family (a dual-stack
//! cluster's IPv6 VIPs) are added and removed with the rest but not carried in the adverts, as keepalived
//! does with addresses of the other family in one `vrrp_instance`.

use std::net::{IpAddr, Ipv6Addr};

use lbfleet_proto::VrrpConfig;

use tracing::{info, warn};

use crate::netlink::NetlinkError;
use crate::rtnl::{AddressChange, InterfaceAddress, Link, RouteSocket};

/// One VIP on its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: InterfaceAddress,
    pub interface: String,
    /// The interface's MAC (empty when it has none: no gratuitous ARP there).
    pub mac: Option<[u8; 6]>,
}

/// The alias the agent gives the VLAN links it creates: the mark [`remove_created_vlans`] goes by.
pub const VLAN_ALIAS: &str = "lbfleet-agent vlan";

/// Why a role's VRRP settings cannot be run here.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("interface {name} does not exist, nor does {parent}, the parent of its VLAN")]
    NoVlanParent { name: String, parent: String },
    #[error("interface {0} has no {1} address to send adverts from (yet: an IPv6 link-local address may still be in duplicate address detection)")]
    NoPrimaryAddress(String, &'static str),
    #[error("VIP {0:?} is not an address/prefix")]
    BadVip(String),
    #[error("unicast peer {0:?} is not of the family VRRP runs over")]
    BadPeer(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(#[from] super::ConfigError),
}

/// The VRRP interface, its primary address and the resolved VIPs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub link: Link,
    /// The adverts' source: an IPv4 address of the interface, or its IPv6 link-local address.
    pub primary: IpAddr,
    /// Every VIP, both families.
    pub vips: Vec<Vip>,
    pub peers: Vec<IpAddr>,
    /// Interface indexes whose link the instance tracks: the VRRP interface (and a VLAN's parent).
    pub tracked: Vec<u32>,
}

fn parse_vip(text: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = text.split_once('/').unwrap_or((text, ""));
    let a: IpAddr = a.parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let p = if p.is_empty() {
        max
    } else {
        p.parse::<u8>().ok().filter(|p| *p <= max)?
    };
    Some((a, p))
}

/// Whether the election of `config` runs over IPv4: it does when the role has an IPv4 VIP.
pub fn election_is_ipv4(config: &VrrpConfig) -> bool {
    let family = |v4: bool| {
        config
            .vips
            .iter()
            .any(|v| parse_vip(&v.address).is_some_and(|(a, _)| a.is_ipv4() == v4))
    };
    family(true) || !family(false)
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

fn mac_of(link: &Link) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(link.mac.as_slice()).ok()
}

/// Resolves interfaces, the primary address and the VIPs of `config` against the running kernel.
pub fn resolve(rt: &mut RouteSocket, config: &VrrpConfig) -> Result<Resolved, SetupError> {
    let mut links = rt.links()?;
    if !links.iter().any(|l| l.name == config.interface) {
        if let Some((parent, vid)) = lbfleet_proto::vlan_of(&config.interface) {
            let p = links.iter().find(|l| l.name == parent).ok_or_else(|| {
                SetupError::NoVlanParent {
                    name: config.interface.clone(),
                    parent: parent.to_owned(),
                }
            })?;
            rt.create_vlan(&config.interface, p.index, vid, VLAN_ALIAS)?;
            info!(interface = %config.interface, parent, vlan = vid, "VLAN interface created");
            links = rt.links()?;
        }
    }
    let find = |name: &str| -> Result<Link, SetupError> {
        links
            .iter()
            .find(|l| l.name == name)
            .cloned()
            .ok_or_else(|| SetupError::NoInterface(name.to_owned()))
    };
    let link = find(&config.interface)?;
    let mut vips = Vec::new();
    for v in &config.vips {
        let (address, prefix) =
            parse_vip(&v.address).ok_or_else(|| SetupError::BadVip(v.address.clone()))?;
        let on = find(v.interface.as_deref().unwrap_or(&config.interface))?;
        vips.push(Vip {
            address: InterfaceAddress {
                index: on.index,
                address,
                prefix,
            },
            mac: mac_of(&on),
            interface: on.name,
        });
    }
    let v4 = election_is_ipv4(config);
    // Over IPv6 the adverts come from the link-local address (RFC 5798), except to unicast peers named by
    // global addresses: those see (and match against their own peer list) the interface's global address.
    let global_peers = config
        .unicast_peers
        .iter()
        .any(|p| matches!(p, IpAddr::V6(a) if !is_link_local(*a)));
    let addrs = rt.addresses()?;
    let primary_on = |index: u32| {
        addrs
            .iter()
            .filter(|a| a.index == index)
            .map(|a| a.address)
            .filter(|a| !vips.iter().any(|v| v.address.address == *a))
            .find(|a| match a {
                IpAddr::V4(_) => v4,
                IpAddr::V6(a) => !v4 && is_link_local(*a) != global_peers,
            })
    };
    // A VLAN without an address of its own advertises from its parent's.
    let primary = primary_on(link.index)
        .or_else(|| link.parent.and_then(primary_on))
        .ok_or_else(|| {
            SetupError::NoPrimaryAddress(
                config.interface.clone(),
                if v4 { "IPv4" } else { "IPv6 link-local" },
            )
        })?;
    let peers = config
        .unicast_peers
        .iter()
        .map(|p| {
            if p.is_ipv4() == v4 {
                Ok(*p)
            } else {
                Err(SetupError::BadPeer(p.to_string()))
            }
        })
        .collect::<Result<Vec<IpAddr>, _>>()?;
    // A VLAN follows its parent's carrier; the parent is tracked too, as keepalived does.
    let tracked = std::iter::once(link.index)
        .chain(link.parent.filter(|p| links.iter().any(|l| l.index == *p)))
        .collect();
    Ok(Resolved {
        link,
        primary,
        vips,
        peers,
        tracked,
    })
}

/// Whether every tracked link is up and running (`IFF_UP` and `IFF_RUNNING`: administratively up with a
/// carrier); `None` when one of them no longer exists.
pub fn links_up(links: &[Link], tracked: &[u32]) -> Option<bool> {
    let mut up = true;
    for index in tracked {
        let link = links.iter().find(|l| l.index == *index)?;
        up &= link.up && link.running;
    }
    Some(up)
}

/// Deletes the VLAN links this agent created ([`VLAN_ALIAS`]) except `keep`; returns how many went. Links
/// the agent found (no alias, or another) are never touched.
pub fn remove_created_vlans(
    rt: &mut RouteSocket,
    keep: Option<&str>,
) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    for link in rt.links()? {
        if link.alias.as_deref() != Some(VLAN_ALIAS) || Some(link.name.as_str()) == keep {
            continue;
        }
        match rt.delete_link(link.index) {
            Ok(_) => {
                info!(interface = %link.name, "VLAN interface removed (the role no longer uses it)");
                removed += 1;
            }
            Err(e) => warn!(interface = %link.name, error = %e, "cannot remove a VLAN interface"),
        }
    }
    Ok(removed)
}

/// Whether every VIP is on its interface now.
pub fn all_present(rt: &mut RouteSocket, vips: &[Vip]) -> Result<bool, NetlinkError> {
    let addrs = rt.addresses()?;
    Ok(vips.iter().all(|v| addrs.contains(&v.address)))
}

/// Adds every VIP; returns how many were new (the others were adopted).
pub fn add_all(rt: &mut RouteSocket, vips: &[Vip]) -> Result<usize, NetlinkError> {
    let mut added = 0;
    for v in vips {
        if rt.add_address(&v.address)? == AddressChange::Done {
            added += 1;
        }
    }
    Ok(added)
}

/// Removes every VIP (all are tried even when one fails; the first error is returned).
pub fn remove_all(rt: &mut RouteSocket, vips: &[Vip]) -> Result<(), NetlinkError> {
    let mut first = None;
    for v in vips {
        if let Err(e) = rt.remove_address(&v.address) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vip_text() {
        let v4 = |a, b, c, d| IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
        assert_eq!(parse_vip("198.18.0.10/32"), Some((v4(198, 18, 0, 10), 32)));
        assert_eq!(
            parse_vip("198.18.2.254/24"),
            Some((v4(198, 18, 2, 254), 24))
        );
        assert_eq!(parse_vip("198.18.0.10"), Some((v4(198, 18, 0, 10), 32)));
        assert_eq!(parse_vip("198.18.0.10/33"), None);
        let v6: IpAddr = "2001:2::1".parse().unwrap();
        assert_eq!(parse_vip("2001:2::1/128"), Some((v6, 128)));
        assert_eq!(parse_vip("2001:2::1/64"), Some((v6, 64)));
        assert_eq!(parse_vip("2001:2::1"), Some((v6, 128)));
        assert_eq!(parse_vip("2001:2::1/129"), None);
        assert_eq!(parse_vip("x/1"), None);
    }

    #[test]
    fn the_election_runs_over_ipv4_when_there_is_an_ipv4_vip() {
        let mut c: VrrpConfig = serde_json::from_value(
            serde_json::json!({"version": 3, "vrid": 51, "interface": "eth0",
                "priority": 100, "advert_interval_ms": 100, "preempt": true,
                "vips": [{"address": "2001:2::10/128"}], "unicast_peers": []}),
        )
        .unwrap();
        assert!(!election_is_ipv4(&c));
        c.vips.push(lbfleet_proto::VipSpec::new("198.18.0.10/32"));
        assert!(election_is_ipv4(&c));
    }

    fn link(index: u32, up: bool, running: bool) -> Link {
        Link {
            index,
            name: format!("eth{index}"),
            mac: vec![2, 0, 0, 0, 0, index as u8],
            up,
            running,
            parent: None,
            alias: None,
        }
    }

    #[test]
    fn tracked_links() {
        let links = [
            link(2, true, true),
            link(3, true, false),
            link(4, false, false),
        ];
        assert_eq!(links_up(&links, &[2]), Some(true));
        // No carrier, or administratively down: down.
        assert_eq!(links_up(&links, &[2, 3]), Some(false));
        assert_eq!(links_up(&links, &[4]), Some(false));
        // Gone.
        assert_eq!(links_up(&links, &[2, 9]), None);
    }
}
