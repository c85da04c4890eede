//! Sans-IO rtnetlink codec for what the agent needs: IPv4 and IPv6 addresses (`RTM_NEWADDR`/`RTM_DELADDR`/
//! `RTM_GETADDR`; IPv6 VIPs are added with `IFA_F_NODAD`, usable at once, and deprecated, never picked as
//! the source of the node's own connections (`ip -6 addr add ... nodad preferred_lft 0`, as keepalived users
//! do): a health check of a DR real server from the VIP would get its answer on the real server's own `lo`), links (`RTM_GETLINK`), and the 802.1Q links it creates for a VLAN interface
//! (`RTM_NEWLINK` with `IFLA_LINKINFO` kind `vlan`, `RTM_DELLINK`). Layouts from linux `if_addr.h`,
//! `if_link.h` and `rtnetlink.h`:
//!
//! ```text
//!  nlmsghdr (16) | ifaddrmsg: family u8 | prefixlen u8 | flags u8 | scope u8 | index u32 | IFA_* attrs
//!  nlmsghdr (16) | ifinfomsg: family u8 | pad u8 | type u16 | index i32 | flags u32 | change u32 | IFLA_* attrs
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::{
    message, AttrWriter, Attrs, DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_LABEL: u16 = 3;
pub const IFA_CACHEINFO: u16 = 6;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_IFALIAS: u16 = 20;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_VLAN_ID: u16 = 1;

pub const IFF_UP: u32 = 0x1;
pub const IFF_RUNNING: u32 = 0x40;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// No duplicate address detection: a VIP that moves to a new master must answer at once, and a
/// tentative address cannot be an advert's or a neighbour advertisement's source.
pub const IFA_F_NODAD: u8 = 0x02;
/// Duplicate address detection is still running: not usable yet.
pub const IFA_F_TENTATIVE: u8 = 0x40;
const AF_UNSPEC: u8 = 0;
const IFADDRMSG_LEN: usize = 8;
const IFINFOMSG_LEN: usize = 16;

/// An IPv4 or IPv6 address with its prefix on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub index: u32,
    pub address: IpAddr,
    pub prefix: u8,
}

/// A network interface as `RTM_GETLINK` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address (6 bytes on Ethernet; empty on loopback-like links).
    pub mac: Vec<u8>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up (`IFF_RUNNING`: carrier and up).
    pub running: bool,
    /// The link this one sits on (`IFLA_LINK`: a VLAN's parent), when it has one.
    pub parent: Option<u32>,
    /// The link's alias (`IFLA_IFALIAS`): how the agent marks the VLAN links it created.
    pub alias: Option<String>,
}

fn ifaddrmsg(address: IpAddr, prefix: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut h = [0u8; IFADDRMSG_LEN];
    (h[0], h[2]) = match address {
        IpAddr::V4(_) => (AF_INET, 0),
        IpAddr::V6(_) => (AF_INET6, IFA_F_NODAD),
    };
    h[1] = prefix;
    // scope RT_SCOPE_UNIVERSE (0)
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_message(msg_type: u16, flags: u16, a: &InterfaceAddress, seq: u32, pid: u32) -> Vec<u8> {
    let mut w = AttrWriter::default();
    w.bytes(IFA_LOCAL, &octets(a.address));
    w.bytes(IFA_ADDRESS, &octets(a.address));
    if msg_type == RTM_NEWADDR && a.address.is_ipv6() {
        // struct ifa_cacheinfo: preferred 0 (deprecated), valid forever, two time stamps.
        let mut info = Vec::with_capacity(16);
        for v in [0u32, u32::MAX, 0, 0] {
            info.extend_from_slice(&v.to_ne_bytes());
        }
        w.bytes(IFA_CACHEINFO, &info);
    }
    let mut payload = ifaddrmsg(a.address, a.prefix, a.index).to_vec();
    payload.extend_from_slice(&w.into_bytes());
    message(msg_type, flags, seq, pid, &payload)
}

/// `ip addr add A/P dev IDX`: fails with EEXIST when the address is already there (the caller adopts it).
pub fn new_address(a: &InterfaceAddress, seq: u32, pid: u32) -> Vec<u8> {
    addr_message(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        a,
        seq,
        pid,
    )
}

/// `ip addr del A/P dev IDX`: fails with EADDRNOTAVAIL when it is not there.
pub fn del_address(a: &InterfaceAddress, seq: u32, pid: u32) -> Vec<u8> {
    addr_message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, a, seq, pid)
}

/// Dump of every address, IPv4 and IPv6 (family `AF_UNSPEC`).
pub fn dump_addresses(seq: u32, pid: u32) -> Vec<u8> {
    let mut h = [0u8; IFADDRMSG_LEN];
    h[0] = AF_UNSPEC;
    message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, pid, &h)
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = AF_UNSPEC;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `ip link add link PARENT name NAME type vlan id VID`: fails with EEXIST when `name` exists.
pub fn new_vlan(name: &str, parent: u32, vid: u16, seq: u32, pid: u32) -> Vec<u8> {
    let mut w = AttrWriter::default();
    w.u32(IFLA_LINK, parent);
    w.string(IFLA_IFNAME, name);
    let info = w.begin_nest(IFLA_LINKINFO);
    // Without a NUL, as iproute2 sends it.
    w.bytes(IFLA_INFO_KIND, b"vlan");
    let data = w.begin_nest(IFLA_INFO_DATA);
    w.u16(IFLA_VLAN_ID, vid);
    w.end_nest(data);
    w.end_nest(info);
    let mut payload = ifinfomsg(0, 0, 0).to_vec();
    payload.extend_from_slice(&w.into_bytes());
    message(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        pid,
        &payload,
    )
}

/// `ip link set dev IDX up alias ALIAS`.
pub fn set_up_with_alias(index: u32, alias: &str, seq: u32, pid: u32) -> Vec<u8> {
    let mut w = AttrWriter::default();
    // Without a NUL, as iproute2 sends it: the kernel stores exactly these bytes.
    w.bytes(IFLA_IFALIAS, alias.as_bytes());
    let mut payload = ifinfomsg(index, IFF_UP, IFF_UP).to_vec();
    payload.extend_from_slice(&w.into_bytes());
    message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, pid, &payload)
}

/// `ip link del dev IDX`.
pub fn del_link(index: u32, seq: u32, pid: u32) -> Vec<u8> {
    message(
        RTM_DELLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        pid,
        &ifinfomsg(index, 0, 0),
    )
}

/// Dump of every link.
pub fn dump_links(seq: u32, pid: u32) -> Vec<u8> {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = AF_UNSPEC;
    message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, pid, &h)
}

/// An address from an `RTM_NEWADDR` dump payload; `None` for other families and for IPv6 addresses still
/// in duplicate address detection (`IFA_F_TENTATIVE`: not usable as a source yet).
pub fn parse_address(
    msg_type: u16,
    payload: &[u8],
) -> Result<Option<InterfaceAddress>, DecodeError> {
    if msg_type != RTM_NEWADDR {
        return Ok(None);
    }
    let h = payload.get(..IFADDRMSG_LEN).ok_or(DecodeError::Truncated {
        what: "ifaddrmsg",
        need: IFADDRMSG_LEN,
        have: payload.len(),
    })?;
    if h[0] != AF_INET && h[0] != AF_INET6 {
        return Ok(None);
    }
    let attrs = Attrs::parse(&payload[IFADDRMSG_LEN..])?;
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let ty = if attrs.get(IFA_LOCAL).is_some() {
        IFA_LOCAL
    } else {
        IFA_ADDRESS
    };
    let address = if h[0] == AF_INET {
        let o: [u8; 4] = attrs.fixed(ty, "IFA_LOCAL")?;
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        if h[2] & IFA_F_TENTATIVE != 0 {
            return Ok(None);
        }
        let o: [u8; 16] = attrs.fixed(ty, "IFA_ADDRESS")?;
        IpAddr::V6(Ipv6Addr::from(o))
    };
    Ok(Some(InterfaceAddress {
        index: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        address,
        prefix: h[1],
    }))
}

/// A link from an `RTM_NEWLINK` dump payload.
pub fn parse_link(msg_type: u16, payload: &[u8]) -> Result<Option<Link>, DecodeError> {
    if msg_type != RTM_NEWLINK {
        return Ok(None);
    }
    let h = payload.get(..IFINFOMSG_LEN).ok_or(DecodeError::Truncated {
        what: "ifinfomsg",
        need: IFINFOMSG_LEN,
        have: payload.len(),
    })?;
    let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let flags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    let attrs = Attrs::parse(&payload[IFINFOMSG_LEN..])?;
    Ok(Some(Link {
        index,
        name: attrs.string(IFLA_IFNAME, "IFLA_IFNAME")?,
        mac: attrs
            .get(IFLA_ADDRESS)
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        up: flags & IFF_UP != 0,
        running: flags & IFF_RUNNING != 0,
        parent: attrs
            .get(IFLA_LINK)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_ne_bytes)
            .filter(|i| *i != 0 && *i != index),
        alias: attrs
            .get(IFLA_IFALIAS)
            .map(|b| {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).into_owned()
            })
            .filter(|a| !a.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::netlink::decode_messages;

    /// What `ip addr add 198.18.0.10/32 dev <index 7>` sends (iproute2 6.1, strace), minus its
    /// IFA_FLAGS/IFA_CACHEINFO extras: ifaddrmsg then IFA_LOCAL and IFA_ADDRESS.
    #[test]
    fn new_address_bytes() {
        let a = InterfaceAddress {
            index: 7,
            address: "198.18.0.10".parse().unwrap(),
            prefix: 32,
        };
        let got = new_address(&a, 9, 0);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x28, 0, 0, 0, 20, 0, 0x05, 0x06, 9, 0, 0, 0, 0, 0, 0, 0][..], // len 40, NEWADDR, REQ|ACK|EXCL|CREATE
            &[2, 32, 0, 0, 7, 0, 0, 0],                                       // AF_INET /32, index 7
            &[8, 0, 2, 0, 198, 18, 0, 10],                                    // IFA_LOCAL
            &[8, 0, 1, 0, 198, 18, 0, 10],                                    // IFA_ADDRESS
        ]
        .concat();
        assert_eq!(got, want);
        let del = del_address(&a, 10, 0);
        assert_eq!(&del[4..8], &[21, 0, 0x05, 0]);
        // The kernel's dump entry has the same layout: it parses back.
        let m = &decode_messages(&got).unwrap()[0];
        let crate::netlink::Body::Data(payload) = m.body else {
            panic!()
        };
        assert_eq!(parse_address(RTM_NEWADDR, payload).unwrap(), Some(a));
        assert!(parse_address(RTM_NEWADDR, &payload[..6]).is_err());
        assert!(parse_address(RTM_NEWADDR, &payload[..12]).is_err());
    }

    /// What `ip -6 addr add 2001:2::10/128 dev <index 7> nodad preferred_lft 0` sends (iproute2 6.1, strace):
    /// AF_INET6, IFA_F_NODAD in ifa_flags, IFA_LOCAL and IFA_ADDRESS of 16 bytes each, IFA_CACHEINFO
    /// {ifa_prefered=0, ifa_valid=4294967295, cstamp=0, tstamp=0}.
    #[test]
    fn new_ipv6_address_bytes() {
        let a = InterfaceAddress {
            index: 7,
            address: "2001:2::10".parse().unwrap(),
            prefix: 128,
        };
        let got = new_address(&a, 9, 0);
        let v6 = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[84, 0, 0, 0, 20, 0, 0x05, 0x06, 9, 0, 0, 0, 0, 0, 0, 0][..], // len 84, NEWADDR
            &[10, 128, 0x02, 0, 7, 0, 0, 0],                               // AF_INET6 /128 NODAD, index 7
            &[20, 0, 2, 0], &v6,                                           // IFA_LOCAL
            &[20, 0, 1, 0], &v6,                                           // IFA_ADDRESS
            &[20, 0, 6, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0], // IFA_CACHEINFO
        ]
        .concat();
        assert_eq!(got, want);
        let m = &decode_messages(&got).unwrap()[0];
        let crate::netlink::Body::Data(payload) = m.body else {
            panic!()
        };
        assert_eq!(parse_address(RTM_NEWADDR, payload).unwrap(), Some(a));
        // A delete names the address only.
        assert_eq!(del_address(&a, 10, 0).len(), 64);
        // A tentative address (DAD running) is not reported.
        let mut tentative = payload.to_vec();
        tentative[2] = IFA_F_TENTATIVE;
        assert_eq!(parse_address(RTM_NEWADDR, &tentative).unwrap(), None);
        // A family the agent does not use.
        tentative[0] = 17;
        assert_eq!(parse_address(RTM_NEWADDR, &tentative).unwrap(), None);
    }

    #[test]
    fn parses_a_link() {
        #[rustfmt::skip]
        let payload: Vec<u8> = [
            &[0, 0, 1, 0, 3, 0, 0, 0][..], &[0x43, 0x10, 1, 0], &[0, 0, 0, 0], // ARPHRD_ETHER, index 3, UP|RUNNING|LOWER_UP
            &[9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0],                  // IFLA_IFNAME "eth0"
            &[10, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 0],                             // IFLA_ADDRESS 02:00:00:00:00:01
        ]
        .concat();
        let link = parse_link(RTM_NEWLINK, &payload).unwrap().unwrap();
        assert_eq!(link.index, 3);
        assert_eq!(link.name, "eth0");
        assert_eq!(link.mac, vec![2, 0, 0, 0, 0, 1]);
        assert!(link.up && link.running);
        assert_eq!((link.parent, link.alias), (None, None));
        assert_eq!(parse_link(RTM_GETADDR, &payload).unwrap(), None);
        assert!(parse_link(RTM_NEWLINK, &payload[..10]).is_err());
    }
}

#[cfg(test)]
mod vlan_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What `ip link add link <index 2> name eth0.100 type vlan id 100` sends (this host's iproute2 under
    /// strace; it named parent index 1): ifinfomsg, IFLA_LINK, IFLA_IFNAME, IFLA_LINKINFO { KIND "vlan",
    /// DATA { VLAN_ID } }, 80 bytes. One difference: iproute2 does not set NLA_F_NESTED on the two nests, this
    /// codec does (as for IPVS); the kernel accepts either.
    #[test]
    fn new_vlan_bytes() {
        let got = new_vlan("eth0.100", 2, 100, 7, 0);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x50, 0, 0, 0, 16, 0, 0x05, 0x06, 7, 0, 0, 0, 0, 0, 0, 0][..], // len 80, NEWLINK, REQ|ACK|EXCL|CREATE
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],                // ifinfomsg: AF_UNSPEC, index 0
            &[8, 0, 5, 0, 2, 0, 0, 0],                                        // IFLA_LINK 2
            &[13, 0, 3, 0, b'e', b't', b'h', b'0', b'.', b'1', b'0', b'0', 0, 0, 0, 0], // IFLA_IFNAME
            &[24, 0, 18, 0x80],                                               // IFLA_LINKINFO (nested)
            &[8, 0, 1, 0, b'v', b'l', b'a', b'n'],                            //   IFLA_INFO_KIND "vlan"
            &[12, 0, 2, 0x80],                                                //   IFLA_INFO_DATA (nested)
            &[6, 0, 1, 0, 100, 0, 0, 0],                                      //     IFLA_VLAN_ID 100
        ]
        .concat();
        assert_eq!(got, want);
    }

    #[test]
    /// `ip link set dev IDX up alias lbfleet` and `ip link del dev IDX` as this host's iproute2 sends them
    /// (strace): 44 and 32 bytes, the alias without a NUL.
    fn set_up_alias_and_delete_bytes() {
        let got = set_up_with_alias(9, "lbfleet", 3, 0);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x2c, 0, 0, 0, 16, 0, 0x05, 0, 3, 0, 0, 0, 0, 0, 0, 0][..], // len 44, NEWLINK, REQ|ACK
            &[0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],             // index 9, flags UP, change UP
            &[11, 0, 20, 0, b'l', b'b', b'f', b'l', b'e', b'e', b't', 0],  // IFLA_IFALIAS, no NUL
        ]
        .concat();
        assert_eq!(got, want);
        let del = del_link(9, 4, 0);
        assert_eq!(&del[..8], &[32, 0, 0, 0, 17, 0, 0x05, 0]);
        assert_eq!(&del[20..24], &[9, 0, 0, 0]);
    }

    #[test]
    fn parses_a_vlans_parent_and_alias() {
        #[rustfmt::skip]
        let payload: Vec<u8> = [
            &[0, 0, 1, 0, 9, 0, 0, 0][..], &[0x43, 0x10, 1, 0], &[0, 0, 0, 0],
            &[13, 0, 3, 0, b'e', b't', b'h', b'0', b'.', b'1', b'0', b'0', 0, 0, 0, 0],
            &[8, 0, 5, 0, 2, 0, 0, 0],                                     // IFLA_LINK 2
            &[11, 0, 20, 0, b'l', b'b', b'f', b'l', b'e', b'e', b't', 0], // IFLA_IFALIAS
        ]
        .concat();
        let link = parse_link(RTM_NEWLINK, &payload).unwrap().unwrap();
        assert_eq!(link.name, "eth0.100");
        assert_eq!(link.parent, Some(2));
        assert_eq!(link.alias.as_deref(), Some("lbfleet"));
    }
}
