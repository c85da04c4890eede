//! Command line and configuration. Every setting has a flag, an `LBFLEET_*` environment variable and a key in
//! the optional TOML file (`--config`); a flag or variable beats the file, the file beats the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lbfleet_proto::UserRole;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite://lbfleet.db";

#[derive(Debug, Parser)]
#[command(
    name = "lbfleet-server",
    version,
    about = "Runs a fleet of diskless, network-booted Linux load balancers",
    long_about = "lbfleet-server keeps every load-balancer node's role in SQLite, serves the admin REST API, \
                  the agent API and (with [boot] configured) PXE boot, and records every change in a \
                  hash-chained audit log.\n\nStart with `lbfleet-server serve`; on first start it creates the \
                  user `admin` and prints its password once."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (API, agent API, HTTP boot). Stops cleanly on SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Manage dashboard and API users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens for automation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage boot images (built by `make image`; see docs/images.md).
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// TOML configuration file (keys as in docs/configuration.md).
    #[arg(long, env = "LBFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://var/lbfleet.db; created if missing [default: sqlite://lbfleet.db]
    #[arg(long, env = "LBFLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address for the API, agent API and HTTP boot [default: 127.0.0.1:8080]
    #[arg(long, env = "LBFLEET_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// A second listener for the boot network: HTTP boot and the agent API move there, and --listen keeps only
    /// the admin API and dashboard [default: none, one listener serves everything]
    #[arg(long, env = "LBFLEET_BOOT_LISTEN", value_name = "ADDR:PORT")]
    pub boot_listen: Option<SocketAddr>,
    /// URL at which nodes reach this server (put in boot scripts); https:// also marks cookies Secure
    #[arg(long, env = "LBFLEET_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Longest time a role long-poll waits before answering 204 [default: 30s]
    #[arg(long, env = "LBFLEET_LONG_POLL_TIMEOUT", value_name = "DURATION")]
    pub long_poll_timeout: Option<String>,
    /// Lifetime of a dashboard login session [default: 12h]
    #[arg(long, env = "LBFLEET_SESSION_TTL", value_name = "DURATION")]
    pub session_ttl: Option<String>,
    /// Lifetime of a one-time enrollment token [default: 15m]
    #[arg(long, env = "LBFLEET_ENROLLMENT_TOKEN_TTL", value_name = "DURATION")]
    pub enrollment_token_ttl: Option<String>,
    /// On first start, also write the generated admin password to this file (mode 0600)
    #[arg(long, env = "LBFLEET_INITIAL_ADMIN_PASSWORD_FILE", value_name = "FILE")]
    pub initial_admin_password_file: Option<PathBuf>,
    /// Log line format [default: text]
    #[arg(long, env = "LBFLEET_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS
    #[arg(long, env = "LBFLEET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "LBFLEET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate created on first start next to the database [default: false]
    #[arg(long, env = "LBFLEET_TLS_SELF_SIGNED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls_self_signed: Option<bool>,
    /// Allow plain HTTP (no TLS) on a non-loopback address; passwords and credentials then cross the network
    /// in the clear [default: false]
    #[arg(long, env = "LBFLEET_ALLOW_INSECURE_HTTP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_insecure_http: Option<bool>,
    /// Open HTTP connections at most (also kept below the open-file limit) [default: 4096]
    #[arg(long, env = "LBFLEET_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Longest time a client may take to send a request head; also closes idle connections [default: 10s]
    #[arg(long, env = "LBFLEET_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Open HTTP connections at most on the boot network's listener (boot_listen) [default: max_connections]
    #[arg(long, env = "LBFLEET_BOOT_MAX_CONNECTIONS", value_name = "N")]
    pub boot_max_connections: Option<usize>,
    /// Open HTTP connections of one client address at most, on each listener [default: 256]
    #[arg(long, env = "LBFLEET_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// A response the client takes nothing of for this long is cut; also the grace before min_send_rate
    /// [default: 30s]
    #[arg(long, env = "LBFLEET_SEND_TIMEOUT", value_name = "DURATION")]
    pub send_timeout: Option<String>,
    /// Bytes per second a response must average after send_timeout, else it is cut (0: no minimum) [default: 8192]
    #[arg(long, env = "LBFLEET_MIN_SEND_RATE", value_name = "BYTES")]
    pub min_send_rate: Option<u64>,
    /// Events (enrollments, boot scripts, VRRP and health changes) older than this are pruned [default: 30d]
    #[arg(long, env = "LBFLEET_EVENT_RETENTION", value_name = "DURATION")]
    pub event_retention: Option<String>,
    /// At most this many events are kept (the newest) [default: 100000]
    #[arg(long, env = "LBFLEET_EVENT_MAX_ROWS", value_name = "N")]
    pub event_max_rows: Option<i64>,
    /// At most this many bytes of events are kept (the newest; messages plus 64 bytes a row)
    /// [default: 67108864 (64 MiB)]
    #[arg(long, env = "LBFLEET_EVENT_MAX_BYTES", value_name = "BYTES")]
    pub event_max_bytes: Option<i64>,
    #[command(flatten)]
    pub boot: BootArgs,
}

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
}

impl BootArgs {
    fn is_empty(&self) -> bool {
        *self == BootArgs::default()
    }

    /// Fields set here win over `other`'s.
    fn over(self, other: BootArgs) -> BootArgs {
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
    fn resolve(args: BootArgs) -> Result<BootConfig, ConfigError> {
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
        Ok(BootConfig {
            interface: args.interface,
            server_address,
            subnet,
            pool,
            router: args.router,
            dns: args.dns.unwrap_or_default(),
            domain: args.domain,
            lease_time: duration("boot.lease_time", args.lease_time, "1h")?,
            boot_dir: args.boot_dir.unwrap_or_else(|| PathBuf::from("var/boot")),
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
        })
    }

    /// Defaults for tests: HTTP boot and TFTP over `boot_dir`, no DHCP.
    pub fn for_dir(boot_dir: impl Into<PathBuf>) -> BootConfig {
        BootConfig {
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
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from stdin with --password-stdin, else generated and printed once.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Set a new password (ends the user's sessions).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete a user (not the last admin).
    Delete {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for UserRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => UserRole::Viewer,
            RoleArg::Operator => UserRole::Operator,
            RoleArg::Admin => UserRole::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user; it acts with that user's role. Printed once.
    Create {
        #[arg(long)]
        user: String,
        /// A label to recognise the token by
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime such as 90d; default: no expiry
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List API tokens (never their values).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by id.
    Revoke {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Database and boot directory, for commands that touch image files.
#[derive(Debug, Clone, Args)]
pub struct BootDirArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Boot directory; images live in DIR/images/<version>/ [default: boot_dir of the config file's [boot],
    /// else var/boot]
    #[arg(long = "boot-dir", env = "LBFLEET_BOOT_DIR", value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy a built image (a directory with manifest.json, e.g. target/images/<version>) into the boot
    /// directory and register it; every file is checked against the manifest first. The first image added
    /// becomes the default.
    Add {
        dir: PathBuf,
        /// Make it the default image (what discovered and unassigned nodes boot)
        #[arg(long)]
        default: bool,
        /// Kernel arguments the boot script adds (default: the manifest's cmdline)
        #[arg(long)]
        cmdline: Option<String>,
        #[command(flatten)]
        args: BootDirArgs,
    },
    /// List registered images, the nodes that boot each, and whether its files are in the boot directory.
    List {
        #[command(flatten)]
        args: BootDirArgs,
    },
    /// Unregister an image and delete its files; refused while a node boots it (by name, or as the default).
    Remove {
        name: String,
        #[command(flatten)]
        args: BootDirArgs,
    },
    /// Make a registered image the default.
    Default {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; exits 1 if it was tampered with.
    Verify {
        #[command(flatten)]
        db: DbArgs,
    },
}

/// The TOML file. Unknown keys are errors, so a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub boot_listen: Option<SocketAddr>,
    pub database: Option<String>,
    pub public_url: Option<String>,
    pub long_poll_timeout: Option<String>,
    pub session_ttl: Option<String>,
    pub enrollment_token_ttl: Option<String>,
    pub initial_admin_password_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub allow_insecure_http: Option<bool>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub boot_max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub send_timeout: Option<String>,
    pub min_send_rate: Option<u64>,
    pub event_retention: Option<String>,
    pub event_max_rows: Option<i64>,
    pub event_max_bytes: Option<i64>,
    pub boot: Option<BootArgs>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{key}: {value:?} is not a duration ({reason}); use e.g. 30s, 15m, 12h")]
    Duration {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The server's resolved settings.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The boot network's own listener (HTTP boot and agent API); `None`: `listen` serves everything.
    pub boot_listen: Option<SocketAddr>,
    pub database: String,
    pub public_url: Option<String>,
    pub long_poll_timeout: Duration,
    pub session_ttl: Duration,
    pub enrollment_token_ttl: Duration,
    pub initial_admin_password_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub boot: Option<BootConfig>,
    pub tls: crate::tls::TlsSetting,
    pub allow_insecure_http: bool,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Open connections at most on `boot_listen`'s listener.
    pub boot_max_connections: usize,
    /// Open connections of one client address at most, on each listener.
    pub max_connections_per_address: usize,
    /// A response body without progress for this long is cut (also the grace before `min_send_rate`).
    pub send_timeout: Duration,
    /// Bytes per second a response body must average after `send_timeout` (0: no minimum).
    pub min_send_rate: u64,
    /// `sha256:HEX` of the certificate being served; set at start-up once TLS is loaded, `None` without TLS.
    pub tls_pin: Option<String>,
    pub retention: crate::retention::Retention,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("boot_listen", &self.boot_listen)
            .field("database", &redact_url(&self.database))
            .field("public_url", &self.public_url)
            .field("long_poll_timeout", &self.long_poll_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("enrollment_token_ttl", &self.enrollment_token_ttl)
            .field(
                "initial_admin_password_file",
                &self.initial_admin_password_file,
            )
            .field("log_format", &self.log_format)
            .field("boot", &self.boot)
            .field("tls", &self.tls)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("boot_max_connections", &self.boot_max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("send_timeout", &self.send_timeout)
            .field("min_send_rate", &self.min_send_rate)
            .field("retention", &self.retention)
            .finish()
    }
}

/// Hides a password in `scheme://user:password@host` URLs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(&text).map_err(|e| ConfigError::Duration {
        key,
        value: text,
        reason: e.to_string(),
    })
}

impl ServerConfig {
    /// Merges flags and environment (already in `args`) over the file over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<ServerConfig, ConfigError> {
        let file = FileConfig::load(args.db.config.as_deref())?;
        let default_listen: SocketAddr =
            DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
                key: "listen",
                reason: "bad built-in default".into(),
            })?;
        let public_url = args.public_url.or(file.public_url);
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "public_url",
                    reason: format!("{u:?} must start with http:// or https://"),
                });
            }
        }
        let long_poll_timeout = duration(
            "long_poll_timeout",
            args.long_poll_timeout.or(file.long_poll_timeout),
            "30s",
        )?;
        if long_poll_timeout.is_zero() || long_poll_timeout > Duration::from_secs(300) {
            return Err(ConfigError::Invalid {
                key: "long_poll_timeout",
                reason: "must be between 1s and 5m".into(),
            });
        }
        let listen = args.listen.or(file.listen).unwrap_or(default_listen);
        let database = args
            .db
            .database
            .or(file.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_self_signed
                .or(file.tls_self_signed)
                .unwrap_or(false),
        ) {
            (Some(cert), Some(key), _) => crate::tls::TlsSetting::Files { cert, key },
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    reason: "tls_cert and tls_key go together".into(),
                })
            }
            (None, None, true) => crate::tls::TlsSetting::SelfSigned {
                dir: database_dir(&database),
            },
            (None, None, false) => crate::tls::TlsSetting::Off,
        };
        let allow_insecure_http = args
            .allow_insecure_http
            .or(file.allow_insecure_http)
            .unwrap_or(false);
        let boot_listen = args.boot_listen.or(file.boot_listen);
        for (key, addr) in [("listen", Some(listen)), ("boot_listen", boot_listen)] {
            match addr {
                Some(addr) if !tls.is_on() && !addr.ip().is_loopback() && !allow_insecure_http => {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!(
                            "{addr} is not a loopback address and TLS is off: set tls_cert and tls_key or \
                             tls_self_signed, or pass --allow-insecure-http to accept passwords and node \
                             credentials in the clear"
                        ),
                    });
                }
                _ => {}
            }
        }
        // Port 0 (any free port) never clashes.
        if boot_listen.is_some_and(|b| {
            b.port() == listen.port()
                && b.port() != 0
                && (b.ip() == listen.ip()
                    || b.ip().is_unspecified()
                    || listen.ip().is_unspecified())
        }) {
            return Err(ConfigError::Invalid {
                key: "boot_listen",
                reason: format!(
                    "{} overlaps listen ({listen}); the boot network's listener needs an address or port of its own",
                    boot_listen.map(|b| b.to_string()).unwrap_or_default()
                ),
            });
        }
        let header_read_timeout = duration(
            "header_read_timeout",
            args.header_read_timeout.or(file.header_read_timeout),
            "10s",
        )?;
        if header_read_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "header_read_timeout",
                reason: "must be more than 0".into(),
            });
        }
        let send_timeout = duration(
            "send_timeout",
            args.send_timeout.or(file.send_timeout),
            "30s",
        )?;
        if send_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "send_timeout",
                reason: "must be more than 0".into(),
            });
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(4096)
            .max(1);
        Ok(ServerConfig {
            listen,
            boot_listen,
            database,
            tls,
            allow_insecure_http,
            max_connections,
            header_read_timeout,
            boot_max_connections: args
                .boot_max_connections
                .or(file.boot_max_connections)
                .unwrap_or(max_connections)
                .max(1),
            max_connections_per_address: args
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(256)
                .max(1),
            send_timeout,
            min_send_rate: args.min_send_rate.or(file.min_send_rate).unwrap_or(8192),
            tls_pin: None,
            retention: crate::retention::Retention {
                max_age: duration(
                    "event_retention",
                    args.event_retention.or(file.event_retention),
                    "30d",
                )?,
                max_rows: args
                    .event_max_rows
                    .or(file.event_max_rows)
                    .unwrap_or(100_000)
                    .max(1),
                max_bytes: match args.event_max_bytes.or(file.event_max_bytes) {
                    None => crate::retention::DEFAULT_MAX_BYTES,
                    Some(b) if b >= 64 * 1024 => b,
                    Some(_) => {
                        return Err(ConfigError::Invalid {
                            key: "event_max_bytes",
                            reason: "must be at least 65536".into(),
                        })
                    }
                },
            },
            public_url,
            long_poll_timeout,
            session_ttl: duration("session_ttl", args.session_ttl.or(file.session_ttl), "12h")?,
            enrollment_token_ttl: duration(
                "enrollment_token_ttl",
                args.enrollment_token_ttl.or(file.enrollment_token_ttl),
                "15m",
            )?,
            initial_admin_password_file: args
                .initial_admin_password_file
                .or(file.initial_admin_password_file),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            boot: {
                let from_file = file.boot.is_some();
                let merged = args.boot.over(file.boot.unwrap_or_default());
                if from_file || !merged.is_empty() {
                    Some(BootConfig::resolve(merged)?)
                } else {
                    None
                }
            },
        })
    }

    /// A config for tests and embedding: defaults, with the given database.
    pub fn with_database(database: impl Into<String>) -> ServerConfig {
        ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            boot_listen: None,
            database: database.into(),
            public_url: None,
            long_poll_timeout: Duration::from_secs(30),
            session_ttl: Duration::from_secs(12 * 3600),
            enrollment_token_ttl: Duration::from_secs(15 * 60),
            initial_admin_password_file: None,
            log_format: LogFormat::Text,
            boot: None,
            tls: crate::tls::TlsSetting::Off,
            allow_insecure_http: false,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            boot_max_connections: 4096,
            max_connections_per_address: 256,
            send_timeout: Duration::from_secs(30),
            min_send_rate: 8192,
            tls_pin: None,
            retention: crate::retention::Retention::default(),
        }
    }

    /// Session cookies are `Secure` when the server speaks HTTPS (or sits behind an HTTPS public URL).
    pub fn secure_cookies(&self) -> bool {
        self.tls.is_on()
            || self
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
    }
}

/// The directory of an SQLite database URL (`sqlite://var/lbfleet.db` -> `var`), where the self-signed TLS pair
/// is kept; the current directory for in-memory or other databases.
pub fn database_dir(database: &str) -> PathBuf {
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.starts_with(':'));
    match path.and_then(|p| Path::new(p).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The database URL for the maintenance subcommands: flag or env, else the file, else the default.
/// The boot directory for image commands: the flag or variable, else the config file's `[boot] boot_dir`,
/// else `var/boot` (as for `serve`).
pub fn boot_dir(args: &BootDirArgs) -> Result<PathBuf, ConfigError> {
    if let Some(d) = &args.boot_dir {
        return Ok(d.clone());
    }
    let file = FileConfig::load(args.db.config.as_deref())?;
    Ok(file
        .boot
        .and_then(|b| b.boot_dir)
        .unwrap_or_else(|| PathBuf::from("var/boot")))
}

pub fn database_url(db: &DbArgs) -> Result<String, ConfigError> {
    if let Some(d) = &db.database {
        return Ok(d.clone());
    }
    let file = FileConfig::load(db.config.as_deref())?;
    Ok(file.database.unwrap_or_else(|| DEFAULT_DATABASE.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["lbfleet-server", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).map(|c| c.command) {
            Ok(Command::Serve(a)) => *a,
            other => panic!("unexpected parse: {other:?}"),
        }
    }

    #[test]
    fn defaults_file_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lbfleet.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nsession_ttl = \"1h\"\ndatabase = \"sqlite://file.db\"\n",
        )
        .expect("write");
        let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(cfg.database, DEFAULT_DATABASE);
        assert_eq!(cfg.long_poll_timeout, Duration::from_secs(30));

        let p = path.to_str().expect("utf-8 path");
        let cfg = ServerConfig::resolve(serve_args(&[
            "--config",
            p,
            "--database",
            "sqlite://flag.db",
        ]))
        .expect("file");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.session_ttl, Duration::from_secs(3600));
        assert_eq!(cfg.database, "sqlite://flag.db");
    }

    #[test]
    fn bad_files_and_values_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:9000\"\n").expect("write");
        let p = path.to_str().expect("utf-8 path");
        let err = ServerConfig::resolve(serve_args(&["--config", p]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `listn`"), "{err}");
        let err = ServerConfig::resolve(serve_args(&["--session-ttl", "soon"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("session_ttl: \"soon\" is not a duration"),
            "{err}"
        );
        let err = ServerConfig::resolve(serve_args(&["--public-url", "lb.example"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("must start with http"), "{err}");
    }

    #[test]
    fn plain_http_off_loopback_needs_tls_or_the_explicit_flag() {
        let err = ServerConfig::resolve(serve_args(&["--listen", "0.0.0.0:8080"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("listen: 0.0.0.0:8080 is not a loopback address and TLS is off")
                && err.contains("--allow-insecure-http"),
            "{err}"
        );
        let cfg = ServerConfig::resolve(serve_args(&[
            "--listen",
            "0.0.0.0:8080",
            "--allow-insecure-http",
        ]))
        .expect("explicitly allowed");
        assert!(!cfg.tls.is_on() && !cfg.secure_cookies());
        let cfg = ServerConfig::resolve(serve_args(&[
            "--listen",
            "0.0.0.0:8080",
            "--tls-self-signed",
            "--database",
            "sqlite://var/x/lbfleet.db",
        ]))
        .expect("TLS");
        assert_eq!(
            cfg.tls,
            crate::tls::TlsSetting::SelfSigned {
                dir: PathBuf::from("var/x")
            }
        );
        assert!(cfg.secure_cookies());
        // Loopback stays plain by default (make demo).
        let cfg = ServerConfig::resolve(serve_args(&[])).expect("defaults");
        assert!(!cfg.tls.is_on());
        let err = ServerConfig::resolve(serve_args(&["--tls-cert", "c.pem"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("tls_cert and tls_key go together"), "{err}");
    }

    #[test]
    fn boot_listen_is_optional_secured_like_listen_and_apart_from_it() {
        assert_eq!(
            ServerConfig::resolve(serve_args(&[]))
                .expect("defaults")
                .boot_listen,
            None
        );
        let cfg =
            ServerConfig::resolve(serve_args(&["--boot-listen", "127.0.0.1:8081"])).expect("split");
        assert_eq!(
            cfg.boot_listen,
            Some("127.0.0.1:8081".parse().expect("addr"))
        );
        let err = ServerConfig::resolve(serve_args(&["--boot-listen", "198.18.0.1:8081"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "boot_listen: 198.18.0.1:8081 is not a loopback address and TLS is off"
            ),
            "{err}"
        );
        assert!(ServerConfig::resolve(serve_args(&[
            "--boot-listen",
            "198.18.0.1:8081",
            "--allow-insecure-http"
        ]))
        .is_ok());
        let cfg = ServerConfig::resolve(serve_args(&[
            "--listen",
            "127.0.0.1:0",
            "--boot-listen",
            "127.0.0.1:0",
        ]))
        .expect("two free ports");
        assert_eq!(cfg.boot_listen.map(|b| b.port()), Some(0));
        for clash in ["127.0.0.1:8080", "0.0.0.0:8080"] {
            let err = ServerConfig::resolve(serve_args(&[
                "--boot-listen",
                clash,
                "--allow-insecure-http",
            ]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(err.starts_with("boot_listen: "), "{clash}: {err}");
            assert!(err.contains("overlaps listen"), "{clash}: {err}");
        }
    }

    #[test]
    fn max_discovered_must_leave_pool_addresses_for_registered_nodes() {
        let boot = [
            "--boot-server-address",
            "198.18.0.1",
            "--boot-subnet",
            "198.18.0.0/16",
            "--boot-pool",
            "198.18.1.0-198.18.1.255",
        ];
        let mut args = boot.to_vec();
        args.extend(["--boot-max-discovered", "256"]);
        let err = ServerConfig::resolve(serve_args(&args))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "boot.max_discovered: 256 leaves no address of boot.pool (256 addresses)"
            ),
            "{err}"
        );
        let mut args = boot.to_vec();
        args.extend(["--boot-max-discovered", "255"]);
        let cfg = ServerConfig::resolve(serve_args(&args)).expect("one address left");
        assert_eq!(cfg.boot.map(|b| b.max_discovered), Some(255));
        // Unset: half the pool.
        let cfg = ServerConfig::resolve(serve_args(&boot)).expect("default");
        assert_eq!(cfg.boot.map(|b| b.max_discovered), Some(128));
    }

    #[test]
    fn link_checks_default_on_and_enrollment_windows_off_file_and_flags_override() {
        let boot = [
            "--boot-server-address",
            "198.18.0.1",
            "--boot-subnet",
            "198.18.0.0/16",
            "--boot-pool",
            "198.18.1.0-198.18.1.255",
        ];
        let cfg = ServerConfig::resolve(serve_args(&boot)).expect("defaults");
        let b = cfg.boot.expect("boot");
        assert!(b.check_link_address && !b.require_armed_enrollment);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lbfleet.toml");
        std::fs::write(
            &path,
            "[boot]\ncheck_link_address = false\nrequire_armed_enrollment = true\n",
        )
        .expect("write");
        let mut args = boot.to_vec();
        args.extend(["--config", path.to_str().expect("utf-8 path")]);
        let b = ServerConfig::resolve(serve_args(&args))
            .expect("file")
            .boot
            .expect("boot");
        assert!(!b.check_link_address && b.require_armed_enrollment);
        args.extend(["--boot-check-link-address", "true"]);
        let b = ServerConfig::resolve(serve_args(&args))
            .expect("flag")
            .boot
            .expect("boot");
        assert!(b.check_link_address);
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://lb:s3cret@db/lbfleet"),
            "postgres://lb:<redacted>@db/lbfleet"
        );
        assert_eq!(
            redact_url("sqlite://var/lbfleet.db"),
            "sqlite://var/lbfleet.db"
        );
        let cfg = ServerConfig::with_database("postgres://lb:s3cret@db/lbfleet");
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
