//! Route netlink (`NETLINK_ROUTE`) for the VIPs: list links and IPv4 addresses, add and remove an address,
//! create and delete the VLAN links a role asks for; link events for the VRRP task's link tracking (`watch`).
//! Own code on `crate::netlink` rather than the `rtnetlink` crate: four messages over the framing the agent
//! already has, blocking like the rest of its netlink use, instead of an async stack (netlink-proto, futures,
//! netlink-packet-route) for the same four calls.

pub mod codec;
pub mod watch;

use crate::netlink::{NetlinkError, NetlinkSocket};

pub use codec::{InterfaceAddress, Link};

/// A route netlink socket.
#[derive(Debug)]
pub struct RouteSocket {
    sock: NetlinkSocket,
}

/// What `add_address` / `remove_address` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressChange {
    /// The kernel added (or removed) it.
    Done,
    /// It was already there (or already gone): nothing changed.
    Unchanged,
}

impl RouteSocket {
    pub fn open() -> Result<RouteSocket, NetlinkError> {
        Ok(RouteSocket {
            sock: NetlinkSocket::open(libc::NETLINK_ROUTE)?,
        })
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.sock
            .dump("dump links", codec::dump_links, codec::parse_link)
    }

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every IPv4 address on every interface.
    pub fn addresses(&mut self) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        self.sock.dump(
            "dump addresses",
            codec::dump_addresses,
            codec::parse_address,
        )
    }

    /// Creates VLAN `vid` on link `parent` as `name`, sets it up and marks it with `alias` (so the agent can
    /// tell the links it created from the ones it found); returns the new link.
    pub fn create_vlan(
        &mut self,
        name: &str,
        parent: u32,
        vid: u16,
        alias: &str,
    ) -> Result<Link, NetlinkError> {
        let op = format!("add vlan {vid} as {name} on interface {parent}");
        self.sock
            .execute(&op, |seq, pid| codec::new_vlan(name, parent, vid, seq, pid))?;
        let link = self
            .link(name)?
            .ok_or_else(|| NetlinkError::NoReply(op.clone()))?;
        let op = format!("set {name} up");
        self.sock.execute(&op, |seq, pid| {
            codec::set_up_with_alias(link.index, alias, seq, pid)
        })?;
        Ok(link)
    }

    /// Deletes a link; one already gone is not an error.
    pub fn delete_link(&mut self, index: u32) -> Result<AddressChange, NetlinkError> {
        let op = format!("delete interface {index}");
        match self
            .sock
            .execute(&op, |seq, pid| codec::del_link(index, seq, pid))
        {
            Ok(()) => Ok(AddressChange::Done),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(AddressChange::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// Adds the address; an address already present (an agent restarted while MASTER) is adopted.
    pub fn add_address(&mut self, a: &InterfaceAddress) -> Result<AddressChange, NetlinkError> {
        let op = format!("add {}/{} on interface {}", a.address, a.prefix, a.index);
        match self
            .sock
            .execute(&op, |seq, pid| codec::new_address(a, seq, pid))
        {
            Ok(()) => Ok(AddressChange::Done),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(AddressChange::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// Removes the address; one already gone is not an error.
    pub fn remove_address(&mut self, a: &InterfaceAddress) -> Result<AddressChange, NetlinkError> {
        let op = format!("delete {}/{} on interface {}", a.address, a.prefix, a.index);
        match self
            .sock
            .execute(&op, |seq, pid| codec::del_address(a, seq, pid))
        {
            Ok(()) => Ok(AddressChange::Done),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(AddressChange::Unchanged),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every host has a loopback link with 127.0.0.1 on it.
    #[test]
    fn reads_loopback() {
        let mut s = RouteSocket::open().unwrap_or_else(|e| panic!("{e}"));
        let lo = s.link("lo").unwrap_or_else(|e| panic!("{e}"));
        let lo = lo.unwrap_or_else(|| panic!("no lo"));
        assert!(lo.up);
        let addrs = s.addresses().unwrap_or_else(|e| panic!("{e}"));
        assert!(addrs.iter().any(|a| a.index == lo.index
            && a.address == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
            && a.prefix == 8));
    }
}
