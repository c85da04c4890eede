//! Command line and configuration. Every setting has a flag, an `LBFLEET_*` environment variable and a key in
//! the optional TOML file (`--config`); a flag or variable beats the file, the file beats the default.
//!
//! - [`cli`]: the command line (clap) for every subcommand;
//! - [`boot`]: the `[boot]` settings and the `BootConfig` they resolve to;
//! - this file: the TOML file, `ServerConfig` (the resolved settings of `serve`) and the database paths.

pub mod boot;
pub mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use boot::{BootArgs, BootConfig};
pub use cli::*;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite://lbfleet.db";

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
    pub traffic_max_rows: Option<i64>,
    pub traffic_max_bytes: Option<i64>,
    pub state_dir: Option<PathBuf>,
    pub server_name: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub heartbeat_misses: Option<u32>,
    pub node_heartbeat_interval: Option<String>,
    pub node_silent_after: Option<String>,
    pub server_retention: Option<String>,
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
    /// Bounds of the traffic history (`fleet::traffic`), enforced with the event retention.
    pub traffic: crate::retention::TrafficBounds,
    /// This server's own state (its id in the control plane's registry).
    pub state_dir: PathBuf,
    /// Name in the registry; `None`: the host name.
    pub server_name: Option<String>,
    pub heartbeat_interval: Duration,
    /// A server silent for this many of its heartbeat intervals counts as dead.
    pub heartbeat_misses: u32,
    /// How often agents heartbeat (`fleet::liveness`).
    pub node_heartbeat_interval: Duration,
    /// A node silent this long is unreachable.
    pub node_silent_after: Duration,
    /// Registry entries not heard from for this long are deleted.
    pub server_retention: Duration,
    /// This server's id in the registry; set at start-up from `state_dir`.
    pub server_id: Option<String>,
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
            .field("traffic", &self.traffic)
            .field("state_dir", &self.state_dir)
            .field("server_name", &self.server_name)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_misses", &self.heartbeat_misses)
            .field("node_heartbeat_interval", &self.node_heartbeat_interval)
            .field("node_silent_after", &self.node_silent_after)
            .field("server_retention", &self.server_retention)
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

pub(crate) fn duration(
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
        let heartbeat_interval = duration(
            "heartbeat_interval",
            args.heartbeat_interval.or(file.heartbeat_interval),
            "2s",
        )?;
        if heartbeat_interval < Duration::from_millis(10)
            || heartbeat_interval > Duration::from_secs(600)
        {
            return Err(ConfigError::Invalid {
                key: "heartbeat_interval",
                reason: "must be between 10ms and 10m".into(),
            });
        }
        let heartbeat_misses = args.heartbeat_misses.or(file.heartbeat_misses).unwrap_or(3);
        if heartbeat_misses == 0 {
            return Err(ConfigError::Invalid {
                key: "heartbeat_misses",
                reason: "must be at least 1".into(),
            });
        }
        let node_heartbeat_interval = duration(
            "node_heartbeat_interval",
            args.node_heartbeat_interval
                .or(file.node_heartbeat_interval),
            "1s",
        )?;
        if node_heartbeat_interval < Duration::from_millis(100)
            || node_heartbeat_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::Invalid {
                key: "node_heartbeat_interval",
                reason: "must be between 100ms and 60s".into(),
            });
        }
        let node_silent_after = duration(
            "node_silent_after",
            args.node_silent_after.or(file.node_silent_after),
            "3s",
        )?;
        if node_silent_after < node_heartbeat_interval * 2 {
            return Err(ConfigError::Invalid {
                key: "node_silent_after",
                reason: format!(
                    "must be at least twice node_heartbeat_interval ({} ms), or every late heartbeat makes a \
                     node unreachable",
                    node_heartbeat_interval.as_millis()
                ),
            });
        }
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| database_dir(&database));
        let server_name = args.server_name.or(file.server_name);
        let server_retention = duration(
            "server_retention",
            args.server_retention.or(file.server_retention),
            "7d",
        )?;
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
            state_dir,
            server_name,
            heartbeat_interval,
            heartbeat_misses,
            node_heartbeat_interval,
            node_silent_after,
            server_retention,
            server_id: None,
            traffic: crate::retention::TrafficBounds {
                max_rows: args
                    .traffic_max_rows
                    .or(file.traffic_max_rows)
                    .unwrap_or(crate::fleet::traffic::DEFAULT_MAX_ROWS)
                    .max(1),
                max_bytes: match args.traffic_max_bytes.or(file.traffic_max_bytes) {
                    None => crate::fleet::traffic::DEFAULT_MAX_BYTES,
                    Some(b) if b >= 64 * 1024 => b,
                    Some(_) => {
                        return Err(ConfigError::Invalid {
                            key: "traffic_max_bytes",
                            reason: "must be at least 65536".into(),
                        })
                    }
                },
            },
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
        let database = database.into();
        ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            boot_listen: None,
            state_dir: database_dir(&database),
            server_name: None,
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_misses: 3,
            node_heartbeat_interval: crate::fleet::liveness::DEFAULT_HEARTBEAT_INTERVAL,
            node_silent_after: crate::fleet::liveness::DEFAULT_SILENT_AFTER,
            server_retention: Duration::from_secs(7 * 24 * 3600),
            server_id: None,
            database,
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
            traffic: crate::retention::TrafficBounds::default(),
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
mod tests;
