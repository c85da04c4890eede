//! IPVS over generic netlink: the kernel's view of virtual services and destinations as plain Rust types
//! (this file), the sans-IO message codec (`codec`) and the family on a netlink socket (`socket`). Framing and
//! the socket itself live in `crate::netlink`.

pub mod codec;
pub mod socket;

pub use socket::{describe, IpvsSocket};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a service or destination (`AF_INET` / `AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;

    pub fn to_raw(self) -> u16 {
        match self {
            Family::V4 => Self::AF_INET,
            Family::V6 => Self::AF_INET6,
        }
    }

    pub fn from_raw(raw: u16) -> Option<Family> {
        match raw {
            Self::AF_INET => Some(Family::V4),
            Self::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Longest prefix for this family (the default persistence netmask).
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The unspecified address of this family.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// Transport protocol of an address-based service (IP protocol numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProto {
    Tcp,
    Udp,
    Sctp,
}

impl IpProto {
    pub fn to_raw(self) -> u16 {
        match self {
            IpProto::Tcp => 6,
            IpProto::Udp => 17,
            IpProto::Sctp => 132,
        }
    }

    pub fn from_raw(raw: u16) -> Option<IpProto> {
        match raw {
            6 => Some(IpProto::Tcp),
            17 => Some(IpProto::Udp),
            132 => Some(IpProto::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpProto::Tcp => "TCP",
            IpProto::Udp => "UDP",
            IpProto::Sctp => "SCTP",
        }
    }
}

impl From<lbfleet_proto::Protocol> for IpProto {
    fn from(p: lbfleet_proto::Protocol) -> Self {
        match p {
            lbfleet_proto::Protocol::Tcp => IpProto::Tcp,
            lbfleet_proto::Protocol::Udp => IpProto::Udp,
        }
    }
}

/// What identifies a virtual service in the kernel: (protocol, VIP, port) or a firewall mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    Addr {
        protocol: IpProto,
        addr: IpAddr,
        port: u16,
    },
    Fwmark {
        family: Family,
        mark: u32,
    },
}

impl ServiceKey {
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr: IpAddr::V6(a),
                port,
            } => write!(f, "{} [{a}]:{port}", protocol.as_str()),
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => write!(f, "{} {addr}:{port}", protocol.as_str()),
            ServiceKey::Fwmark {
                family: Family::V6,
                mark,
            } => write!(f, "FWM {mark} IPv6"),
            ServiceKey::Fwmark { mark, .. } => write!(f, "FWM {mark}"),
        }
    }
}

/// `IP_VS_SVC_F_PERSISTENT`: the service keeps a client on the same destination for `timeout_s`.
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: kernel-internal, reported on dumps, never requested.
pub const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling (UDP).
pub const SVC_F_ONEPACKET: u32 = 0x0004;
/// Flags userspace may set; the rest are kernel state.
pub const SVC_F_USER_MASK: u32 = !SVC_F_HASHED;

/// A virtual service as the kernel holds it (without statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// Scheduler module name without the `ip_vs_` prefix: `rr`, `wrr`, `mh`, ...
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `SVC_F_PERSISTENT`).
    pub timeout_s: u32,
    /// Persistence granularity as a prefix length (IPv4 sends it as a mask, IPv6 as the length).
    pub netmask_prefix: u8,
    /// Persistence engine (`sip`), rarely used.
    pub pe_name: Option<String>,
}

impl Service {
    /// A non-persistent service with the family's full netmask.
    pub fn new(key: ServiceKey, scheduler: &str) -> Service {
        Service {
            key,
            scheduler: scheduler.to_owned(),
            flags: 0,
            timeout_s: 0,
            netmask_prefix: key.family().max_prefix(),
            pe_name: None,
        }
    }

    pub fn persistent(&self) -> bool {
        self.flags & SVC_F_PERSISTENT != 0
    }
}

/// Packet-forwarding method of a destination (`IP_VS_CONN_F_*` in the low three bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT (`IP_VS_CONN_F_MASQ`).
    Masq,
    /// Local node (`IP_VS_CONN_F_LOCALNODE`).
    Local,
    /// IP-in-IP tunnel (`IP_VS_CONN_F_TUNNEL`).
    Tunnel,
    /// Direct routing (`IP_VS_CONN_F_DROUTE`).
    Route,
    /// Bypass (`IP_VS_CONN_F_BYPASS`).
    Bypass,
}

impl Forward {
    pub fn to_raw(self) -> u32 {
        match self {
            Forward::Masq => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::Route => 3,
            Forward::Bypass => 4,
        }
    }

    pub fn from_raw(raw: u32) -> Option<Forward> {
        match raw & 0x7 {
            0 => Some(Forward::Masq),
            1 => Some(Forward::Local),
            2 => Some(Forward::Tunnel),
            3 => Some(Forward::Route),
            4 => Some(Forward::Bypass),
            _ => None,
        }
    }

    /// The name `ipvsadm -Ln` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Masq => "Masq",
            Forward::Local => "Local",
            Forward::Tunnel => "Tunnel",
            Forward::Route => "Route",
            Forward::Bypass => "Bypass",
        }
    }
}

impl From<lbfleet_proto::ForwardMethod> for Forward {
    fn from(f: lbfleet_proto::ForwardMethod) -> Self {
        match f {
            lbfleet_proto::ForwardMethod::Nat => Forward::Masq,
            lbfleet_proto::ForwardMethod::Dr => Forward::Route,
            lbfleet_proto::ForwardMethod::Tun => Forward::Tunnel,
        }
    }
}

/// What identifies a destination inside its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
        }
    }
}

/// A destination (real server) as the kernel holds it (without counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub key: DestKey,
    pub forward: Forward,
    pub weight: u32,
    /// Connection upper threshold (0 = none).
    pub u_threshold: u32,
    /// Connection lower threshold (0 = none).
    pub l_threshold: u32,
}

impl Destination {
    pub fn new(addr: IpAddr, port: u16, forward: Forward, weight: u32) -> Destination {
        Destination {
            key: DestKey { addr, port },
            forward,
            weight,
            u_threshold: 0,
            l_threshold: 0,
        }
    }
}

/// Traffic counters of a service or destination (`IPVS_STATS_ATTR_*`; the 64-bit set when the kernel sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

/// A service from a dump: configuration plus counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub service: Service,
    pub stats: Stats,
}

/// A destination from a dump: configuration plus connection counts and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestEntry {
    pub dest: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persist_conns: u32,
    pub stats: Stats,
}

/// The whole IPVS table of one kernel (or of a fake one in tests), ordered for stable output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsTable {
    pub services: Vec<(ServiceEntry, Vec<DestEntry>)>,
}
