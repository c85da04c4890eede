//! Wire types shared by `lbfleet-server` and `lbfleet-agent`.
//!
//! Everything here is plain data with serde derives: the cluster spec an operator PUTs, the role document a node
//! pulls, and the agent's enrollment and report messages. No I/O and no validation live here; the server's
//! `fleet` module owns the rules, so the agent can decode any document the server is able to produce.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod boot;

pub use agent::*;
pub use boot::{KernelArgs, KernelArgsError, Mac};

/// Declares a closed string enum with its wire spelling, `Display` and `FromStr`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

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
    /// What a real-server health check does.
    CheckKind { None => "none", Tcp => "tcp", Http => "http" }
);

wire_enum!(
    /// Access level of a user or API token.
    UserRole { Viewer => "viewer", Operator => "operator", Admin => "admin" }
);

wire_enum!(
    /// VRRP state as the agent reports it.
    VrrpState { Init => "init", Backup => "backup", Master => "master", Fault => "fault" }
);

/// Health check of the real servers of one virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP path, `kind = "http"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Expected HTTP status, `kind = "http"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// Port to probe instead of the real server's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "HealthCheck::default_interval_ms")]
    pub interval_ms: u32,
    #[serde(default = "HealthCheck::default_timeout_ms")]
    pub timeout_ms: u32,
    /// Consecutive successes before a failed server is put back.
    #[serde(default = "HealthCheck::default_rise")]
    pub rise: u32,
    /// Consecutive failures before a server is taken out.
    #[serde(default = "HealthCheck::default_fall")]
    pub fall: u32,
}

impl HealthCheck {
    fn default_interval_ms() -> u32 {
        1000
    }
    fn default_timeout_ms() -> u32 {
        500
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
    }

    /// A TCP connect check with the default timings.
    pub fn tcp() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            path: None,
            expect_status: None,
            port: None,
            interval_ms: Self::default_interval_ms(),
            timeout_ms: Self::default_timeout_ms(),
            rise: Self::default_rise(),
            fall: Self::default_fall(),
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self::tcp()
    }
}

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
    pub vips: Vec<String>,
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

fn default_vrrp_version() -> u8 {
    3
}
fn default_advert_interval_ms() -> u32 {
    1000
}
fn default_true() -> bool {
    true
}

/// VRRP settings inside a role document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpConfig {
    pub version: u8,
    pub vrid: u8,
    pub interface: String,
    pub priority: u8,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    pub vips: Vec<String>,
    pub unicast_peers: Vec<String>,
}

/// A real server inside a role document: what the kernel should hold, before health results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub enabled: bool,
}

/// A virtual service inside a role document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    pub vip: String,
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
    fn cluster_spec_defaults_and_unknown_fields() {
        let spec: ClusterSpec = serde_json::from_str(
            r#"{"vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/32"],
                "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                              "forward": "nat", "real_servers": [{"address": "198.18.2.1", "port": 80}]}]}"#,
        )
        .expect("valid spec");
        assert_eq!(spec.vrrp_version, 3);
        assert_eq!(spec.advert_interval_ms, 1000);
        assert!(spec.preempt);
        assert_eq!(spec.services[0].check, HealthCheck::tcp());
        assert_eq!(spec.services[0].real_servers[0].weight, 1);
        assert_eq!(spec.services[0].real_servers[0].enabled, None);

        let typo = serde_json::from_str::<ClusterSpec>(
            r#"{"vrid": 1, "interface": "eth0", "vips": [], "vipz": []}"#,
        );
        assert!(typo.is_err_and(|e| e.to_string().contains("unknown field `vipz`")));
    }
}
