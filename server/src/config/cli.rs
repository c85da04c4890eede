//! The command line: `lbfleet-server` and its subcommands (clap derive). Every `serve` flag has an
//! `LBFLEET_*` variable; `config::ServerConfig::resolve` merges them over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::BootArgs;

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
    /// Print what the real servers of a cluster's DR and TUN services need (the VIPs on the loopback with
    /// ARP suppressed, the ipip tunnel): a shell script to run as is on each of them (`up`, or `down` to
    /// undo), or JSON. See docs/data-path.md.
    Realserver(RealServerArgs),
    /// Import another tool's configuration (docs/keepalived-import.md).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Database maintenance (docs/high-availability.md#moving-from-sqlite).
    #[command(subcommand)]
    Db(DbCommand),
    /// Write another tool's configuration from the fleet's (docs/keepalived-import.md).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Rolling image upgrades (docs/rollouts.md): start, list, show, pause, resume, abort. A running
    /// lbfleet-server on the same database carries them out.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of IMAGE over clusters and/or nodes; prints it (its plan) as JSON.
    Start {
        /// The image to roll out (registered with `image add`).
        image: String,
        /// Every member of this cluster (repeat for several).
        #[arg(long = "cluster", value_name = "NAME")]
        clusters: Vec<String>,
        /// This node (name, MAC or id; repeat for several).
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
        /// The node upgraded first (default: the first backup).
        #[arg(long, value_name = "NODE")]
        canary: Option<String>,
        /// Pause once the canary passed its gate.
        #[arg(long)]
        pause_after_canary: bool,
        /// How long each node has, from its reboot, to pass its gate (e.g. 90s, 10m).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        gate_timeout: std::time::Duration,
        /// Do not require every health check up.
        #[arg(long)]
        no_checks_up: bool,
        /// Do not require the role in sync.
        #[arg(long)]
        no_in_sync: bool,
        /// Wait until the rollout ends, printing each node's progress; exit 0 only when it succeeded.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the newest rollouts.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one rollout as JSON.
    Show {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Pause a running rollout (a node being upgraded finishes its gate).
    Pause {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Resume a paused rollout.
    Resume {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Abort a rollout: nothing more is done.
    Abort {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy a whole fleet (users, sessions, tokens, images, nodes, clusters, leases, credentials, the audit
    /// log, events, alerts) from one database to another, e.g. from the embedded SQLite file to PostgreSQL.
    /// Stop every lbfleet-server using the source first. The source is migrated to this version first (as
    /// `serve` would); the destination must be new or empty and is created and migrated here. Everything is
    /// copied in one transaction: on any error the destination is left as it was. The audit chain is verified
    /// on the destination before the commit. Server registrations and DHCP leadership are not copied (servers
    /// register again).
    Copy {
        /// Source database URL, e.g. sqlite:///var/lib/lbfleet/lbfleet.db
        #[arg(long, value_name = "URL")]
        from: String,
        /// Destination database URL, e.g. postgres://lbfleet@db1/lbfleet (password: PGPASSWORD or ~/.pgpass)
        #[arg(long, value_name = "URL")]
        to: String,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Write the keepalived.conf that does what NODE's role in CLUSTER does (its VRRP instance, VIPs,
    /// services, real servers and checks). Exits 0 when everything is carried, 2 when some settings have no
    /// keepalived counterpart (named in comments at the top of the file), 1 on an error.
    Keepalived {
        /// The cluster's name.
        cluster: String,
        /// The member node whose part is written (its state and priority).
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RealServerArgs {
    /// The cluster's name.
    pub cluster: String,
    /// Output: a POSIX shell script, or the same as JSON.
    #[arg(long, value_enum, default_value_t = RealServerFormat::Sh)]
    pub format: RealServerFormat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RealServerFormat {
    Sh,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Read keepalived.conf files (one per machine, or one with @id lines) and create their clusters in one
    /// audited change. Prints the plan and every directive not imported; exits 0 when lossless, 2 when
    /// something was not imported, 1 on an error.
    Keepalived {
        /// keepalived.conf of each machine (includes are followed)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Config id deciding @id lines, as keepalived's -i; repeat for one file read as several machines
        /// [default: the host name]
        #[arg(long = "config-id", value_name = "ID")]
        config_ids: Vec<String>,
        /// Check everything against the database and print the plan, write nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
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
    /// At most this many rows of traffic history are kept (the newest buckets) [default: 2000000]
    #[arg(long, env = "LBFLEET_TRAFFIC_MAX_ROWS", value_name = "N")]
    pub traffic_max_rows: Option<i64>,
    /// At most this many bytes of traffic history are kept (the newest buckets; names plus 96 bytes a row)
    /// [default: 268435456 (256 MiB)]
    #[arg(long, env = "LBFLEET_TRAFFIC_MAX_BYTES", value_name = "BYTES")]
    pub traffic_max_bytes: Option<i64>,
    /// Directory of this server's own state (its server id, kept across restarts) [default: the SQLite
    /// database's directory, else the current directory]
    #[arg(long, env = "LBFLEET_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// This server's name in the control plane's registry [default: the host name]
    #[arg(long, env = "LBFLEET_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// How often this server writes its heartbeat to the database [default: 2s]
    #[arg(long, env = "LBFLEET_HEARTBEAT_INTERVAL", value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// A server that misses this many of its heartbeats counts as dead (alert, left out of boot scripts)
    /// [default: 3]
    #[arg(long, env = "LBFLEET_HEARTBEAT_MISSES", value_name = "N")]
    pub heartbeat_misses: Option<u32>,
    /// How often agents send a heartbeat (told to them in each answer) [default: 1s]
    #[arg(long, env = "LBFLEET_NODE_HEARTBEAT_INTERVAL", value_name = "DURATION")]
    pub node_heartbeat_interval: Option<String>,
    /// A node not heard from (heartbeat or report) for this long is unreachable: alerts, the overview's
    /// takeover wording [default: 3s; at least twice node_heartbeat_interval]
    #[arg(long, env = "LBFLEET_NODE_SILENT_AFTER", value_name = "DURATION")]
    pub node_silent_after: Option<String>,
    /// Entries of servers not heard from for this long are removed from the registry [default: 7d]
    #[arg(long, env = "LBFLEET_SERVER_RETENTION", value_name = "DURATION")]
    pub server_retention: Option<String>,
    #[command(flatten)]
    pub boot: BootArgs,
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
