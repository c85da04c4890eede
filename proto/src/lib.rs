//! Wire types shared by `lbfleet-server` and `lbfleet-agent`.
//!
//! Everything here is plain data with serde derives: the cluster spec an operator PUTs, the role document a node
//! pulls, and the agent's enrollment and report messages. No I/O and no validation live here; the server's
//! `fleet` module owns the rules, so the agent can decode any document the server is able to produce. The one
//! exception is `bounds`: the numbers a report must stay within, which both ends must agree on.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod boot;
pub mod bounds;
pub mod delta;

pub use agent::*;
pub use boot::{KernelArgs, KernelArgsError, Mac};
pub use delta::{DeltaError, RealServerRef, ReportAck, ReportDelta, ServiceDelta, ServiceRef};

/// Declares a closed string enum with its wire spelling, `Display` and `FromStr` (exported: the server declares
/// its domain enums with it too).
#[macro_export]
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as $crate::__serde::Deserialize>::deserialize(d)?;
                match text.as_ref() {
                    $($text => Ok($name::$variant),)+
                    other => Err(<D::Error as $crate::__serde::de::Error>::unknown_variant(other, &[$($text),+])),
                }
            }
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::UnknownValue;
            fn try_from(s: String) -> ::std::result::Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownValue;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// serde, for `wire_enum!` used outside this crate.
#[doc(hidden)]
pub use serde as __serde;

/// A string that is not one of an enum's wire spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?} (expected one of: {})",
            self.kind,
            self.value,
            self.allowed.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

// After the macro, which it uses.
pub mod health;

pub use health::*;

wire_enum!(
    /// Transport protocol of a virtual service.
    Protocol { Tcp => "tcp", Udp => "udp" }
);

wire_enum!(
    /// IPVS scheduler, by the kernel's names (`ip_vs_<name>.ko`).
    Scheduler {
        Rr => "rr", Wrr => "wrr", Lc => "lc", Wlc => "wlc", Lblc => "lblc", Lblcr => "lblcr", Dh => "dh",
        Sh => "sh", Sed => "sed", Nq => "nq", Fo => "fo", Ovf => "ovf", Mh => "mh",
    }
);

wire_enum!(
    /// IPVS packet-forwarding method: masquerading, direct routing (DSR), or IP-in-IP tunnelling.
    ForwardMethod { Nat => "nat", Dr => "dr", Tun => "tun" }
);

wire_enum!(
    /// The part a node plays in its cluster's VRRP group.
    Role { Active => "active", Backup => "backup" }
);

wire_enum!(
    /// Where a node is in its lifecycle (see ARCHITECTURE.md, "Node lifecycle").
    NodeState {
        Discovered => "discovered", Rejected => "rejected", Ready => "ready", Assigned => "assigned",
        Serving => "serving", Retired => "retired",
    }
);

wire_enum!(
    /// Access level of a user or API token.
    UserRole { Viewer => "viewer", Operator => "operator", Admin => "admin" }
);

wire_enum!(
    /// VRRP state as the agent reports it.
    VrrpState { Init => "init", Backup => "backup", Master => "master", Fault => "fault" }
);

/// A real server behind a virtual service, as an operator declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServerSpec {
    pub address: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `false` means drained (weight 0 in the kernel, existing connections finish). Omitted in a cluster PUT:
    /// keep the server's current state (new servers start enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

fn default_weight() -> u32 {
    1
}

/// A virtual service (VIP, port, protocol) and its real servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub vip: String,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forward: ForwardMethod,
    /// Persistence timeout in seconds; 0 = no persistence.
    #[serde(default)]
    pub persistence_s: u32,
    /// Prefix length that groups clients for persistence (IPv4 default 32, IPv6 default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_prefix: Option<u8>,
    #[serde(default)]
    pub check: HealthCheck,
    #[serde(default)]
    pub real_servers: Vec<RealServerSpec>,
}

/// The declarative spec of a cluster: one VRRP group, its VIPs and the services on them.
/// `PUT /api/v1/clusters/{name}` replaces the whole spec with this document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub vrid: u32,
    pub interface: String,
    #[serde(default = "default_vrrp_version")]
    pub vrrp_version: u8,
    #[serde(default = "default_advert_interval_ms")]
    pub advert_interval_ms: u32,
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// With `preempt`: how long a higher-priority backup waits before taking over from a running master
    /// (lets a rebooted node settle first). 0 = at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preempt_delay_ms: u32,
    pub vips: Vec<VipSpec>,
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    /// Gratuitous ARP sent by a new master.
    #[serde(default, skip_serializing_if = "GarpSpec::is_default")]
    pub garp: GarpSpec,
    /// The kernel's IPVS connection sync between the cluster's nodes; `None` = no sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_sync: Option<ConnSyncSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A VIP the VRRP master holds. On the wire either a plain `"198.18.0.10/32"` (on the cluster's interface) or
/// `{"address": "198.18.2.254/24", "interface": "eth1"}` (an internal VIP, the NAT real servers' default
/// gateway, moved together with the external ones). In text forms (the dashboard) `198.18.2.254/24 dev eth1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipSpec {
    /// `address/prefix` (a bare address is accepted and normalized by the server).
    pub address: String,
    /// Interface to hold it on; `None` = the cluster's VRRP interface.
    pub interface: Option<String>,
}

impl VipSpec {
    /// A VIP on the cluster's interface.
    pub fn new(address: impl Into<String>) -> VipSpec {
        VipSpec {
            address: address.into(),
            interface: None,
        }
    }

    /// The address without its prefix.
    pub fn addr(&self) -> &str {
        self.address.split('/').next().unwrap_or(&self.address)
    }
}

impl From<&str> for VipSpec {
    fn from(s: &str) -> VipSpec {
        VipSpec::new(s)
    }
}

/// A plain VIP (no interface of its own) equals its address text.
impl PartialEq<&str> for VipSpec {
    fn eq(&self, other: &&str) -> bool {
        self.interface.is_none() && self.address == *other
    }
}

impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.interface {
            Some(i) => write!(f, "{} dev {i}", self.address),
            None => f.write_str(&self.address),
        }
    }
}

impl FromStr for VipSpec {
    type Err = String;
    /// `ADDRESS[/PREFIX] [dev INTERFACE]`.
    fn from_str(s: &str) -> Result<VipSpec, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [a] => Ok(VipSpec::new(*a)),
            [a, "dev", i] => Ok(VipSpec {
                address: (*a).to_owned(),
                interface: Some((*i).to_owned()),
            }),
            _ => Err(format!(
                "{s:?} is not ADDRESS/PREFIX or ADDRESS/PREFIX dev INTERFACE"
            )),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum VipWire {
    Plain(String),
    Detailed(VipObject),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipObject {
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
}

impl Serialize for VipSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.interface {
            None => s.serialize_str(&self.address),
            Some(i) => VipObject {
                address: self.address.clone(),
                interface: Some(i.clone()),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for VipSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VipSpec, D::Error> {
        match VipWire::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a VIP is \"ADDRESS/PREFIX\" or {\"address\": \"ADDRESS/PREFIX\", \"interface\": \"NAME\"}",
            )
        })? {
            VipWire::Plain(address) => Ok(VipSpec::new(address)),
            VipWire::Detailed(o) => Ok(VipSpec {
                address: o.address,
                interface: o.interface,
            }),
        }
    }
}

/// Gratuitous ARP of a new master: `count` ARPs per VIP, `spacing_ms` apart, and again every `refresh_ms`
/// while master (0 = no refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GarpSpec {
    #[serde(default = "GarpSpec::default_count")]
    pub count: u32,
    #[serde(default = "GarpSpec::default_spacing_ms")]
    pub spacing_ms: u32,
    #[serde(default)]
    pub refresh_ms: u32,
}

impl GarpSpec {
    fn default_count() -> u32 {
        3
    }
    fn default_spacing_ms() -> u32 {
        100
    }
    fn is_default(&self) -> bool {
        *self == GarpSpec::default()
    }
}

impl Default for GarpSpec {
    fn default() -> Self {
        GarpSpec {
            count: Self::default_count(),
            spacing_ms: Self::default_spacing_ms(),
            refresh_ms: 0,
        }
    }
}

/// IPVS connection synchronisation: the MASTER runs the kernel's sync daemon as master, the BACKUP as
/// backup, on `interface` with `sync_id`, so connections survive a failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnSyncSpec {
    pub interface: String,
    #[serde(default)]
    pub sync_id: u8,
}

fn default_vrrp_version() -> u8 {
    3
}
/// The default profile fails over in well under 0.4 s: Master_Down_Interval = 3 x 100 ms + Skew_Time (61 ms
/// for the default backup priority 100). See docs/benchmarks.md, VRRP.
fn default_advert_interval_ms() -> u32 {
    100
}
fn default_true() -> bool {
    true
}

/// The tagged VLAN an interface name asks for: `eth0.100` is VLAN 100 on `eth0` (the parent not empty, the
/// VLAN ID 1-4094), the name iproute2 and the kernel's `vconfig` scheme give it.
pub fn vlan_of(name: &str) -> Option<(&str, u16)> {
    let (parent, vid) = name.rsplit_once('.')?;
    if parent.is_empty() || vid.is_empty() || !vid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let vid: u16 = vid.parse().ok()?;
    (1..=4094).contains(&vid).then_some((parent, vid))
}

/// A role document's VRRP interface: a name (`"eth0"`, `"eth0.100"`) or a tagged VLAN on a parent
/// (`{"parent": "eth0", "vlan": 100}`), which is read as its name, `eth0.100` (see [`vlan_of`]).
fn interface_from_wire<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Name(String),
        Vlan { parent: String, vlan: u16 },
    }
    match Wire::deserialize(d)? {
        Wire::Name(n) => Ok(n),
        Wire::Vlan { parent, vlan } => {
            let name = format!("{parent}.{vlan}");
            if vlan_of(&name) != Some((parent.as_str(), vlan)) {
                return Err(serde::de::Error::custom(format!(
                    "vlan {vlan} on {parent:?}: the VLAN ID must be 1 to 4094 on a named parent"
                )));
            }
            Ok(name)
        }
    }
}

/// VRRP settings inside a role document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpConfig {
    pub version: u8,
    pub vrid: u8,
    /// The VRRP interface, also where VIPs without their own interface go. A VLAN name the node lacks
    /// (`eth0.100` when `eth0` exists) is created by the agent; `{"parent": "eth0", "vlan": 100}` on the wire
    /// is the same as `"eth0.100"`.
    #[serde(deserialize_with = "interface_from_wire")]
    pub interface: String,
    pub priority: u8,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay_ms: u32,
    pub vips: Vec<VipSpec>,
    /// Peers' addresses for unicast adverts (empty: multicast).
    pub unicast_peers: Vec<IpAddr>,
    #[serde(default)]
    pub garp: GarpSpec,
    #[serde(default)]
    pub conn_sync: Option<ConnSyncSpec>,
}

/// A real server inside a role document: what the kernel should hold, before health results. Addresses are
/// typed here (the server validated the spec's text), and written as before (`"198.18.2.1"`): see the golden
/// JSON in `proto/tests/golden/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub enabled: bool,
}

/// A virtual service inside a role document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forward: ForwardMethod,
    pub persistence_s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_prefix: Option<u8>,
    pub check: HealthCheck,
    pub real_servers: Vec<RealServer>,
}

/// Everything one node must do, versioned by `generation`, which only grows.
///
/// A node with no assignment gets a document with no cluster, no VRRP and no services: it must hold no VIPs
/// and no virtual services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDocument {
    pub generation: u64,
    pub node: String,
    pub cluster: Option<String>,
    pub role: Option<Role>,
    pub vrrp: Option<VrrpConfig>,
    pub services: Vec<VirtualService>,
    /// Remote reboot: an agent that sees this above the value it first saw since it booted hands over (as
    /// VRRP master: a priority-0 advert) and reboots the machine. Only grows; 0 (omitted) from servers that
    /// predate remote reboot.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub reboot_generation: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_their_wire_names() {
        for s in Scheduler::ALL {
            assert_eq!(s.as_str().parse::<Scheduler>(), Ok(*s));
            assert_eq!(serde_json::to_string(s).ok(), Some(format!("\"{s}\"")));
        }
        let err = "roundrobin"
            .parse::<Scheduler>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown Scheduler \"roundrobin\" (expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh)")
        );
    }

    #[test]
    fn a_vlan_interface_by_name_or_by_parent_and_id() {
        assert_eq!(vlan_of("eth0.100"), Some(("eth0", 100)));
        assert_eq!(vlan_of("bond0.4094"), Some(("bond0", 4094)));
        for not in [
            "eth0",
            "eth0.0",
            "eth0.4095",
            ".100",
            "eth0.",
            "eth0.1a",
            "eth0.+1",
        ] {
            assert_eq!(vlan_of(not), None, "{not}");
        }
        let vrrp = |interface: &str| {
            serde_json::from_str::<VrrpConfig>(&format!(
                r#"{{"version": 3, "vrid": 51, "interface": {interface}, "priority": 150,
                    "advert_interval_ms": 100, "preempt": true, "vips": ["198.18.0.10/32"],
                    "unicast_peers": []}}"#
            ))
        };
        assert_eq!(vrrp(r#""eth0.100""#).unwrap().interface, "eth0.100");
        let v = vrrp(r#"{"parent": "eth0", "vlan": 100}"#).unwrap();
        assert_eq!(v.interface, "eth0.100");
        // Written back as the name, which older agents read too.
        assert!(serde_json::to_string(&v)
            .unwrap()
            .contains(r#""interface":"eth0.100""#));
        assert!(vrrp(r#"{"parent": "eth0", "vlan": 0}"#).is_err());
        assert!(vrrp(r#"{"parent": "", "vlan": 100}"#).is_err());
        assert!(vrrp(r#"{"parent": "eth0"}"#).is_err());
    }

    #[test]
    fn cluster_spec_defaults_and_unknown_fields() {
        let spec: ClusterSpec = serde_json::from_str(
            r#"{"vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/32"],
                "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                              "forward": "nat", "real_servers": [{"address": "198.18.2.1", "port": 80}]}]}"#,
        )
        .expect("valid spec");
        assert_eq!(spec.vrrp_version, 3);
        assert_eq!(spec.advert_interval_ms, 100);
        assert!(spec.preempt);
        assert_eq!(spec.services[0].check, HealthCheck::tcp());
        assert_eq!(spec.services[0].real_servers[0].weight, 1);
        assert_eq!(spec.services[0].real_servers[0].enabled, None);

        assert_eq!(spec.garp, GarpSpec::default());
        assert_eq!(spec.conn_sync, None);
        // Defaults are not written back: a spec without the new knobs reads and writes as before.
        let back = serde_json::to_value(&spec).expect("serializes");
        assert!(back.get("garp").is_none() && back.get("preempt_delay_ms").is_none());
        assert_eq!(back["vips"], serde_json::json!(["198.18.0.10/32"]));

        let typo = serde_json::from_str::<ClusterSpec>(
            r#"{"vrid": 1, "interface": "eth0", "vips": [], "vipz": []}"#,
        );
        assert!(typo.is_err_and(|e| e.to_string().contains("unknown field `vipz`")));
    }

    #[test]
    fn vips_are_strings_or_objects_with_an_interface() {
        let spec: ClusterSpec = serde_json::from_str(
            r#"{"vrid": 51, "interface": "eth0",
                "vips": ["198.18.0.10/32", {"address": "198.18.2.254/24", "interface": "eth1"},
                         {"address": "198.18.0.11/32"}],
                "garp": {"count": 5, "refresh_ms": 10000},
                "conn_sync": {"interface": "eth1", "sync_id": 7}}"#,
        )
        .expect("valid spec");
        assert_eq!(spec.vips[0], VipSpec::new("198.18.0.10/32"));
        assert_eq!(spec.vips[1].interface.as_deref(), Some("eth1"));
        assert_eq!(spec.vips[1].addr(), "198.18.2.254");
        assert_eq!(spec.vips[2], VipSpec::new("198.18.0.11/32"));
        assert_eq!(spec.garp.count, 5);
        assert_eq!(spec.garp.spacing_ms, 100);
        assert_eq!(spec.conn_sync.as_ref().map(|c| c.sync_id), Some(7));
        let back = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(
            back["vips"],
            serde_json::json!(["198.18.0.10/32", {"address": "198.18.2.254/24", "interface": "eth1"},
                               "198.18.0.11/32"])
        );
        for bad in [
            r#"[1]"#,
            r#"[{"address": "198.18.0.10/32", "dev": "eth1"}]"#,
            r#"[{}]"#,
        ] {
            let doc = format!(r#"{{"vrid": 1, "interface": "eth0", "vips": {bad}}}"#);
            assert!(serde_json::from_str::<ClusterSpec>(&doc).is_err(), "{bad}");
        }
        assert_eq!(
            "198.18.2.254/24 dev eth1".parse::<VipSpec>(),
            Ok(spec.vips[1].clone())
        );
        assert_eq!(spec.vips[1].to_string(), "198.18.2.254/24 dev eth1");
        assert!("198.18.2.254/24 eth1".parse::<VipSpec>().is_err());
    }
}
