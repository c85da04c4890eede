//! `[boot]`: the PXE boot services' settings (flags, variables and the TOML table) and the `BootConfig` they
//! resolve to (addresses, pool, interface, checks).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::{duration, ConfigError};

/// `[boot]`: PXE boot services. Without a `[boot]` table (and no `--boot-*` flag) the server runs no DHCP or
/// TFTP and refuses HTTP boot requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootArgs {
    /// Interface DHCP listens on (SO_BINDTODEVICE); no DHCP without it
    #[arg(
        long = "boot-interface",
        env = "LBFLEET_BOOT_INTERFACE",
        value_name = "IFACE"
    )]
    pub interface: Option<String>,
    /// Address given to clients as next-server (siaddr), TFTP and HTTP boot server
    #[arg(
        long = "boot-server-address",
        env = "LBFLEET_BOOT_SERVER_ADDRESS",
        value_name = "IPV4"
    )]
    pub server_address: Option<std::net::Ipv4Addr>,
    /// Boot subnet, e.g. 198.18.0.0/15
    #[arg(long = "boot-subnet", env = "LBFLEET_BOOT_SUBNET", value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Discovery pool, e.g. 198.18.1.0-198.18.1.255
    #[arg(
        long = "boot-pool",
        env = "LBFLEET_BOOT_POOL",
        value_name = "FIRST-LAST"
    )]
    pub pool: Option<String>,
    /// Default gateway handed to clients
    #[arg(long = "boot-router", env = "LBFLEET_BOOT_ROUTER", value_name = "IPV4")]
    pub router: Option<std::net::Ipv4Addr>,
    /// DNS servers handed to clients (repeat or comma-separate)
    #[arg(
        long = "boot-dns",
        env = "LBFLEET_BOOT_DNS",
        value_name = "IPV4",
        value_delimiter = ','
    )]
    pub dns: Option<Vec<std::net::Ipv4Addr>>,
    /// DNS domain handed to clients
    #[arg(long = "boot-domain", env = "LBFLEET_BOOT_DOMAIN")]
    pub domain: Option<String>,
    /// Lease time [default: 1h]
    #[arg(
        long = "boot-lease-time",
        env = "LBFLEET_BOOT_LEASE_TIME",
        value_name = "DURATION"
    )]
    pub lease_time: Option<String>,
    /// TFTP root and image directory (images/<version>/<file>) [default: var/boot]
    #[arg(long = "boot-dir", env = "LBFLEET_BOOT_DIR", value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
    /// DHCP server port [default: 67]
    #[arg(long = "boot-dhcp-port", env = "LBFLEET_BOOT_DHCP_PORT")]
    pub dhcp_port: Option<u16>,
    /// TFTP port; 0 turns TFTP off [default: 69]
    #[arg(long = "boot-tftp-port", env = "LBFLEET_BOOT_TFTP_PORT")]
    pub tftp_port: Option<u16>,
    /// TFTP transfers at once [default: 64]
    #[arg(
        long = "boot-tftp-max-transfers",
        env = "LBFLEET_BOOT_TFTP_MAX_TRANSFERS"
    )]
    pub tftp_max_transfers: Option<usize>,
    /// Largest TFTP block size granted [default: 1468]
    #[arg(long = "boot-tftp-max-blksize", env = "LBFLEET_BOOT_TFTP_MAX_BLKSIZE")]
    pub tftp_max_blksize: Option<u16>,
    /// Largest TFTP window (RFC 7440) granted [default: 64]
    #[arg(
        long = "boot-tftp-max-windowsize",
        env = "LBFLEET_BOOT_TFTP_MAX_WINDOWSIZE"
    )]
    pub tftp_max_windowsize: Option<u16>,
    /// Most unknown MACs waiting in `discovered` at once [default: 1024]
    #[arg(long = "boot-max-discovered", env = "LBFLEET_BOOT_MAX_DISCOVERED")]
    pub max_discovered: Option<i64>,
    /// Answer IPv6 router solicitations on the DHCP interface (no router, no prefix), so iPXE does not wait
    /// ~16 s for IPv6; turn off where a real IPv6 router serves the boot network [default: true]
    #[arg(
        long = "boot-answer-router-solicitations",
        env = "LBFLEET_BOOT_ANSWER_ROUTER_SOLICITATIONS",
        value_name = "BOOL",
        action = clap::ArgAction::Set
    )]
    pub answer_router_solicitations: Option<bool>,
    /// INSECURE: put enrollment tokens in boot scripts requested from any address, not only from the MAC's
    /// lbfleet DHCP lease (for sites whose DHCP is not lbfleet's; anyone on the boot network can then take
    /// over a node) [default: false]
    #[arg(
        long = "boot-allow-token-without-lease",
        env = "LBFLEET_BOOT_ALLOW_TOKEN_WITHOUT_LEASE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub allow_token_without_lease: Option<bool>,
    /// Check the link-layer address of boot clients: a DHCP request whose Ethernet source is not its chaddr gets
    /// no lease (needs CAP_NET_RAW for a packet socket on boot.interface), and a boot script carries a token
    /// only when the server's neighbour entry for the requesting address names the MAC. Turn off only where
    /// boot clients reach the server through a router [default: true]
    #[arg(
        long = "boot-check-link-address",
        env = "LBFLEET_BOOT_CHECK_LINK_ADDRESS",
        value_name = "BOOL",
        action = clap::ArgAction::Set
    )]
    pub check_link_address: Option<bool>,
    /// A known (not `discovered`) node's boot script carries an enrollment token only while an operator has
    /// opened its enrollment window (POST /api/v1/nodes/{node}/expect-boot); outside one, no token and a
    /// `boot_not_expected` event [default: false]
    #[arg(
        long = "boot-require-armed-enrollment",
        env = "LBFLEET_BOOT_REQUIRE_ARMED_ENROLLMENT",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub require_armed_enrollment: Option<bool>,
    /// Answer DHCP requests forwarded by relay agents (giaddr set). Turn off where no relay serves the boot
    /// network: a client on it could otherwise set giaddr itself and get any MAC's lease, since a relayed
    /// request's chaddr cannot be checked against the sender [default: true]
    #[arg(
        long = "boot-accept-relayed",
        env = "LBFLEET_BOOT_ACCEPT_RELAYED",
        value_name = "BOOL",
        action = clap::ArgAction::Set
    )]
    pub accept_relayed: Option<bool>,
    /// DHCP hot standby: how often the server answering DHCP on the boot network renews its leadership in
    /// the database [default: 250ms]
    #[arg(
        long = "boot-dhcp-leader-renew",
        env = "LBFLEET_BOOT_DHCP_LEADER_RENEW",
        value_name = "DURATION"
    )]
    pub dhcp_leader_renew: Option<String>,
    /// DHCP hot standby: how long a standby waits, seeing the leadership unrenewed, before it takes the boot
    /// network over; the active stops answering after 3/4 of it without a renewal [default: 1s]
    #[arg(
        long = "boot-dhcp-leader-ttl",
        env = "LBFLEET_BOOT_DHCP_LEADER_TTL",
        value_name = "DURATION"
    )]
    pub dhcp_leader_ttl: Option<String>,
    /// State directory of the boot cache that boots known nodes while the database is unreachable (made 0700;
    /// must not be inside boot_dir, which TFTP serves) [default: the directory `state` beside boot_dir]
    #[arg(
        long = "boot-cache-dir",
        env = "LBFLEET_BOOT_CACHE_DIR",
        value_name = "DIR"
    )]
    pub cache_dir: Option<PathBuf>,
    /// How long a boot credential handed out while the database is unreachable stays valid (to read the node's
    /// last role, and to be exchanged once for a node credential when the database is back) [default: 24h]
    #[arg(
        long = "boot-credential-ttl",
        env = "LBFLEET_BOOT_CREDENTIAL_TTL",
        value_name = "DURATION"
    )]
    pub credential_ttl: Option<String>,
}

impl BootArgs {
    pub(super) fn is_empty(&self) -> bool {
        *self == BootArgs::default()
    }

    /// Fields set here win over `other`'s.
    pub(super) fn over(self, other: BootArgs) -> BootArgs {
        BootArgs {
            interface: self.interface.or(other.interface),
            server_address: self.server_address.or(other.server_address),
            subnet: self.subnet.or(other.subnet),
            pool: self.pool.or(other.pool),
            router: self.router.or(other.router),
            dns: self.dns.or(other.dns),
            domain: self.domain.or(other.domain),
            lease_time: self.lease_time.or(other.lease_time),
            boot_dir: self.boot_dir.or(other.boot_dir),
            dhcp_port: self.dhcp_port.or(other.dhcp_port),
            tftp_port: self.tftp_port.or(other.tftp_port),
            tftp_max_transfers: self.tftp_max_transfers.or(other.tftp_max_transfers),
            tftp_max_blksize: self.tftp_max_blksize.or(other.tftp_max_blksize),
            tftp_max_windowsize: self.tftp_max_windowsize.or(other.tftp_max_windowsize),
            max_discovered: self.max_discovered.or(other.max_discovered),
            answer_router_solicitations: self
                .answer_router_solicitations
                .or(other.answer_router_solicitations),
            allow_token_without_lease: self
                .allow_token_without_lease
                .or(other.allow_token_without_lease),
            check_link_address: self.check_link_address.or(other.check_link_address),
            require_armed_enrollment: self
                .require_armed_enrollment
                .or(other.require_armed_enrollment),
            accept_relayed: self.accept_relayed.or(other.accept_relayed),
            dhcp_leader_renew: self.dhcp_leader_renew.or(other.dhcp_leader_renew),
            dhcp_leader_ttl: self.dhcp_leader_ttl.or(other.dhcp_leader_ttl),
            cache_dir: self.cache_dir.or(other.cache_dir),
            credential_ttl: self.credential_ttl.or(other.credential_ttl),
        }
    }
}

/// Resolved `[boot]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub interface: Option<String>,
    pub server_address: std::net::Ipv4Addr,
    /// (network, prefix length)
    pub subnet: Option<(std::net::Ipv4Addr, u8)>,
    /// (first, last)
    pub pool: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    pub router: Option<std::net::Ipv4Addr>,
    pub dns: Vec<std::net::Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
    pub boot_dir: PathBuf,
    pub dhcp_port: u16,
    pub tftp_port: u16,
    pub tftp_max_transfers: usize,
    pub tftp_max_blksize: u16,
    pub tftp_max_windowsize: u16,
    pub max_discovered: i64,
    /// Run the IPv6 router-advertisement responder on `interface` (`boot::ndp`).
    pub answer_router_solicitations: bool,
    /// Boot scripts carry enrollment tokens whatever address asks (see `boot::trust`).
    pub allow_token_without_lease: bool,
    /// Check DHCP frames' source against chaddr and the neighbour entry of boot-script clients (`boot::trust`).
    pub check_link_address: bool,
    /// Tokens for known nodes only inside an operator-opened enrollment window (`fleet::boot_window`).
    pub require_armed_enrollment: bool,
    /// DHCP answers relayed requests (`boot::dhcp::DhcpConfig::accept_relayed`).
    pub accept_relayed: bool,
    /// DHCP leadership renewal interval (`boot::dhcp::leader`).
    pub dhcp_leader_renew: Duration,
    /// DHCP leadership TTL: a standby takes over after seeing no renewal for this long.
    pub dhcp_leader_ttl: Duration,
    /// The boot cache's state directory (`boot::cache`); `None`: no cache, nothing boots while the database is
    /// unreachable (the test default).
    pub cache_dir: Option<PathBuf>,
    /// Validity of boot credentials handed out from the cache.
    pub credential_ttl: Duration,
}

/// The default state directory: `state` beside the boot directory (never inside it: TFTP serves that).
fn default_cache_dir(boot_dir: &std::path::Path) -> PathBuf {
    match boot_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("state"),
        _ => PathBuf::from("state"),
    }
}

fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), ConfigError> {
    let bad = || ConfigError::Invalid {
        key: "boot.subnet",
        reason: format!("{text:?} is not IPV4/PREFIX"),
    };
    let (a, p) = text.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok((std::net::Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

fn parse_range(text: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), ConfigError> {
    let bad = || ConfigError::Invalid {
        key: "boot.pool",
        reason: format!("{text:?} is not FIRST-LAST (two IPv4 addresses)"),
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let first: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let last: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    if u32::from(first) > u32::from(last) {
        return Err(ConfigError::Invalid {
            key: "boot.pool",
            reason: format!("{text:?}: first address is after the last"),
        });
    }
    Ok((first, last))
}

impl BootConfig {
    pub(super) fn resolve(args: BootArgs) -> Result<BootConfig, ConfigError> {
        let server_address = args.server_address.ok_or(ConfigError::Invalid {
            key: "boot.server_address",
            reason: "required when [boot] is configured".into(),
        })?;
        let subnet = args.subnet.as_deref().map(parse_cidr).transpose()?;
        let pool = args.pool.as_deref().map(parse_range).transpose()?;
        if args.interface.is_some() && (subnet.is_none() || pool.is_none()) {
            return Err(ConfigError::Invalid {
                key: "boot.interface",
                reason: "DHCP needs boot.subnet and boot.pool too".into(),
            });
        }
        if let (Some((net, prefix)), Some((first, last))) = (subnet, pool) {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            for a in [first, last] {
                if u32::from(a) & mask != u32::from(net) {
                    return Err(ConfigError::Invalid {
                        key: "boot.pool",
                        reason: format!("{a} is outside boot.subnet {net}/{prefix}"),
                    });
                }
            }
        }
        let pool_size = pool.map(|(first, last)| i64::from(u32::from(last) - u32::from(first)) + 1);
        let max_discovered = match (args.max_discovered, pool_size) {
            (Some(m), Some(size)) if m >= size => {
                return Err(ConfigError::Invalid {
                    key: "boot.max_discovered",
                    reason: format!(
                        "{m} leaves no address of boot.pool ({size} addresses) for registered nodes once \
                         unknown MACs took their share; set boot.max_discovered below {size} (e.g. {}) or \
                         widen boot.pool",
                        size / 2
                    ),
                })
            }
            (Some(m), _) => m.max(0),
            // Unset: at most half the pool goes to unknown MACs.
            (None, Some(size)) => crate::fleet::DEFAULT_MAX_DISCOVERED.min(size / 2),
            (None, None) => crate::fleet::DEFAULT_MAX_DISCOVERED,
        };
        let blksize = args.tftp_max_blksize.unwrap_or(1468);
        if !(512..=65464).contains(&blksize) {
            return Err(ConfigError::Invalid {
                key: "boot.tftp_max_blksize",
                reason: "must be 512 to 65464".into(),
            });
        }
        let dhcp_leader_renew =
            duration("boot.dhcp_leader_renew", args.dhcp_leader_renew, "250ms")?;
        let dhcp_leader_ttl = duration("boot.dhcp_leader_ttl", args.dhcp_leader_ttl, "1s")?;
        if dhcp_leader_renew.is_zero() || dhcp_leader_renew * 2 > dhcp_leader_ttl * 3 / 4 {
            return Err(ConfigError::Invalid {
                key: "boot.dhcp_leader_ttl",
                reason: format!(
                    "{} leaves no room for renewals every {}: the active stops answering after 3/4 of the \
                     TTL without one, so the TTL must be at least 8/3 of boot.dhcp_leader_renew (e.g. {})",
                    humantime::format_duration(dhcp_leader_ttl),
                    humantime::format_duration(dhcp_leader_renew),
                    humantime::format_duration(dhcp_leader_renew * 4)
                ),
            });
        }
        let boot_dir = args.boot_dir.unwrap_or_else(|| PathBuf::from("var/boot"));
        let cache_dir = args
            .cache_dir
            .unwrap_or_else(|| default_cache_dir(&boot_dir));
        if cache_dir.starts_with(&boot_dir) {
            return Err(ConfigError::Invalid {
                key: "boot.cache_dir",
                reason: "must not be inside boot.boot_dir: TFTP serves that directory to anyone"
                    .into(),
            });
        }
        Ok(BootConfig {
            cache_dir: Some(cache_dir),
            credential_ttl: duration("boot.credential_ttl", args.credential_ttl, "24h")?,
            interface: args.interface,
            server_address,
            subnet,
            pool,
            router: args.router,
            dns: args.dns.unwrap_or_default(),
            domain: args.domain,
            lease_time: duration("boot.lease_time", args.lease_time, "1h")?,
            boot_dir,
            dhcp_port: args.dhcp_port.unwrap_or(67),
            tftp_port: args.tftp_port.unwrap_or(69),
            tftp_max_transfers: args.tftp_max_transfers.unwrap_or(64).max(1),
            tftp_max_blksize: blksize,
            tftp_max_windowsize: args.tftp_max_windowsize.unwrap_or(64).clamp(1, 1024),
            answer_router_solicitations: args.answer_router_solicitations.unwrap_or(true),
            max_discovered,
            allow_token_without_lease: args.allow_token_without_lease.unwrap_or(false),
            check_link_address: args.check_link_address.unwrap_or(true),
            require_armed_enrollment: args.require_armed_enrollment.unwrap_or(false),
            accept_relayed: args.accept_relayed.unwrap_or(true),
            dhcp_leader_renew,
            dhcp_leader_ttl,
        })
    }

    /// Defaults for tests: HTTP boot and TFTP over `boot_dir`, no DHCP.
    pub fn for_dir(boot_dir: impl Into<PathBuf>) -> BootConfig {
        BootConfig {
            cache_dir: None,
            credential_ttl: Duration::from_secs(24 * 3600),
            interface: None,
            server_address: std::net::Ipv4Addr::LOCALHOST,
            subnet: None,
            pool: None,
            router: None,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
            boot_dir: boot_dir.into(),
            dhcp_port: 67,
            tftp_port: 0,
            tftp_max_transfers: 64,
            tftp_max_blksize: 1468,
            tftp_max_windowsize: 64,
            max_discovered: crate::fleet::DEFAULT_MAX_DISCOVERED,
            answer_router_solicitations: false,
            allow_token_without_lease: false,
            check_link_address: true,
            require_armed_enrollment: false,
            accept_relayed: true,
            dhcp_leader_renew: Duration::from_millis(250),
            dhcp_leader_ttl: Duration::from_secs(1),
        }
    }
}
