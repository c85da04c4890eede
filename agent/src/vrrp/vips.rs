//! The VIPs of one VRRP instance as kernel addresses: each VIP resolved to its interface (the role's VRRP
//! interface, or the one the VIP names) with that interface's MAC for gratuitous ARP. Adding an address that is
//! already there adopts it (an agent restarted while MASTER), removing one already gone is not an error.
//!
//! A VRRP interface named like a VLAN (`eth0.100`) that the node lacks is created on its parent over
//! rtnetlink and marked with the alias [`VLAN_ALIAS`]; [`remove_created_vlans`] deletes only links with that
//! mark. Such a VLAN may carry no address of its own: the adverts then go out from the parent's primary
//! address (as keepalived's `mcast_src_ip` allows).

use std::net::Ipv4Addr;

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
    #[error("interface {0} has no IPv4 address to send adverts from")]
    NoPrimaryAddress(String),
    #[error("VIP {0:?} is not an IPv4 address/prefix (this agent runs VRRP for IPv4)")]
    BadVip(String),
    #[error("unicast peer {0:?} is not an IPv4 address")]
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
    pub primary: Ipv4Addr,
    pub vips: Vec<Vip>,
    pub peers: Vec<Ipv4Addr>,
    /// Interface indexes whose link the instance tracks: the VRRP interface (and a VLAN's parent).
    pub tracked: Vec<u32>,
}

fn parse_vip(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
        None => (text, 32),
    };
    Some((a.parse().ok()?, p))
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
    let addrs = rt.addresses()?;
    let primary_on = |index: u32| {
        addrs
            .iter()
            .filter(|a| a.index == index)
            .map(|a| a.address)
            .find(|a| !vips.iter().any(|v| v.address.address == *a))
    };
    // A VLAN without an address of its own advertises from its parent's.
    let primary = primary_on(link.index)
        .or_else(|| link.parent.and_then(primary_on))
        .ok_or_else(|| SetupError::NoPrimaryAddress(config.interface.clone()))?;
    let peers = config
        .unicast_peers
        .iter()
        .map(|p| match p {
            std::net::IpAddr::V4(a) => Ok(*a),
            other => Err(SetupError::BadPeer(other.to_string())),
        })
        .collect::<Result<Vec<Ipv4Addr>, _>>()?;
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
    use super::*;

    #[test]
    fn vip_text() {
        assert_eq!(
            parse_vip("198.18.0.10/32"),
            Some((Ipv4Addr::new(198, 18, 0, 10), 32))
        );
        assert_eq!(
            parse_vip("198.18.2.254/24"),
            Some((Ipv4Addr::new(198, 18, 2, 254), 24))
        );
        assert_eq!(
            parse_vip("198.18.0.10"),
            Some((Ipv4Addr::new(198, 18, 0, 10), 32))
        );
        assert_eq!(parse_vip("198.18.0.10/33"), None);
        assert_eq!(parse_vip("2001:db8::1/128"), None);
        assert_eq!(parse_vip("x/1"), None);
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
