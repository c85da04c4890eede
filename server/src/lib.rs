//! lbfleet-server as a library: the binary parses the command line and calls into here, tests and benchmarks
//! start the same server on a port-0 listener.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

pub mod api;
pub mod audit;
pub mod boot;
pub mod config;
pub mod fleet;
pub mod limits;
pub mod login_gate;
pub mod notify;
pub mod retention;
pub mod secrets;
pub mod serve;
pub mod session_watch;
pub mod store;
pub mod tls;
pub mod token_use;
pub mod web;

pub use config::ServerConfig;

/// Opens the store (running migrations) and builds the fleet service.
pub async fn open_fleet(config: &ServerConfig) -> Result<fleet::Fleet, store::StoreError> {
    let store = store::Store::open(&config.database).await?;
    let fleet = fleet::Fleet::new(store, config.enrollment_token_ttl);
    Ok(match &config.boot {
        Some(b) => fleet.with_discovery_cap(b.max_discovered),
        None => fleet,
    })
}

/// Sockets of the boot services, bound before the server starts (tests bind port 0).
#[derive(Debug, Default)]
pub struct BootSockets {
    pub tftp: Option<tokio::net::UdpSocket>,
    pub dhcp: Option<tokio::net::UdpSocket>,
    /// Raw ICMPv6 socket on the DHCP interface and its index, for `boot::ndp`.
    pub ndp: Option<(socket2::Socket, u32)>,
}

impl BootSockets {
    /// Binds what `config.boot` asks for: TFTP on `server_address:tftp_port` unless the port is 0.
    pub async fn bind(config: &ServerConfig) -> anyhow::Result<BootSockets> {
        let mut sockets = BootSockets::default();
        if let Some(b) = &config.boot {
            if b.tftp_port != 0 {
                let addr = SocketAddr::from((b.server_address, b.tftp_port));
                let sock = tokio::net::UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind TFTP to {addr}"))?;
                sockets.tftp = Some(sock);
            }
            if let Some(iface) = &b.interface {
                // DHCP must see broadcasts, so it binds the wildcard address, restricted to one interface.
                let addr = SocketAddr::from(([0, 0, 0, 0], b.dhcp_port));
                let sock = tokio::net::UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind DHCP to {addr}"))?;
                sock.bind_device(Some(iface.as_bytes())).with_context(|| {
                    format!("cannot bind DHCP to interface {iface} (needs root or CAP_NET_RAW)")
                })?;
                sock.set_broadcast(true)?;
                sockets.dhcp = Some(sock);
                if b.answer_router_solicitations {
                    // Optional: without IPv6 on the interface iPXE merely waits longer.
                    match boot::ndp::open(iface) {
                        Ok(s) => sockets.ndp = Some(s),
                        Err(e) => tracing::warn!(interface = %iface, error = %e,
                            "cannot answer IPv6 router solicitations; iPXE will wait ~16 s for IPv6"),
                    }
                }
            }
        }
        Ok(sockets)
    }
}

/// Serves the API on `listener` (and the boot services configured) until `shutdown` completes, then drains
/// in-flight requests (waiting long-polls answer at once) and closes the database.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sockets = BootSockets::bind(&config).await?;
    run_with(config, listener, sockets, shutdown).await
}

/// `run` with boot sockets the caller bound.
pub async fn run_with(
    mut config: ServerConfig,
    listener: TcpListener,
    sockets: BootSockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    warn_insecure_settings(&config);
    let tls = tls::load(&config.tls, &tls_names(&config))?;
    if let Some(t) = &tls {
        tracing::info!(cert = %t.cert_path.display(), pin = t.pin, "serving HTTPS (and plain HTTP for iPXE)");
        config.tls_pin = Some(t.pin.clone());
    }
    let fleet = open_fleet(&config).await?;
    if let Some(password) = fleet.bootstrap_admin().await? {
        announce_initial_admin(&config, &password)?;
    }
    let fleet = std::sync::Arc::new(fleet);
    let store = fleet.store().clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut boot_stats = boot::BootStats::default();
    if let (Some(boot), Some(sock)) = (&config.boot, sockets.dhcp) {
        let http_base = config.public_url.clone().unwrap_or_else(|| {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
            format!("http://{}:{port}", boot.server_address)
        });
        let dhcp = dhcp_config(boot, http_base)?;
        let stats = std::sync::Arc::new(boot::dhcp::server::DhcpStats::default());
        boot_stats.dhcp = Some(stats.clone());
        tasks.spawn(boot::dhcp::server::run(
            sock,
            dhcp,
            fleet.clone(),
            stats,
            stop_rx.clone(),
        ));
    }
    if let Some((sock, ifindex)) = sockets.ndp {
        let stats = std::sync::Arc::new(boot::ndp::NdpStats::default());
        tasks.spawn(boot::ndp::run(sock, ifindex, stats, stop_rx.clone()));
    }
    if let (Some(boot), Some(sock)) = (&config.boot, sockets.tftp) {
        let tftp_config = boot::tftp::TftpConfig {
            root: boot.boot_dir.clone(),
            limits: boot::tftp::transfer::Limits {
                max_blksize: boot.tftp_max_blksize,
                max_windowsize: boot.tftp_max_windowsize,
                ..Default::default()
            },
            max_transfers: boot.tftp_max_transfers,
            max_per_client: boot::tftp::DEFAULT_MAX_PER_CLIENT,
        };
        let stats = std::sync::Arc::new(boot::tftp::TftpStats::default());
        boot_stats.tftp = Some(stats.clone());
        tasks.spawn(boot::tftp::run(sock, tftp_config, stats, stop_rx.clone()));
    }
    tasks.spawn(retention::run(
        store.clone(),
        config.retention,
        stop_rx.clone(),
    ));
    let addr = listener.local_addr()?;
    let limits = serve::ServeLimits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
        ..Default::default()
    };
    let connections = serve::Connections::new(limits.max_connections);
    let tls_on = tls.is_some();
    let app = api::router(api::AppState::new(fleet, config, boot_stats, stop_rx))
        .layer(axum::middleware::from_fn(limits::bound_request))
        .layer(axum::middleware::from_fn(move |req, next| {
            serve::https_only(tls_on, req, next)
        }));
    tracing::info!(%addr, tls = tls_on, max_connections = connections.cap(), "lbfleet-server listening");
    serve::serve(
        listener,
        app,
        tls.map(|t| t.server_config),
        limits,
        connections,
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        },
    )
    .await?;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %e, "boot service failed");
        }
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Names the self-signed certificate is made out to (agents pin it by hash, so these matter only to browsers).
fn tls_names(config: &ServerConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    if let Some(b) = &config.boot {
        names.push(b.server_address.to_string());
    }
    if let Some(host) = config
        .public_url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or(rest))
    {
        names.push(host.to_owned());
    }
    names.sort();
    names.dedup();
    names
}

/// Logs a warning for every setting that weakens the trust model (docs/security.md).
fn warn_insecure_settings(config: &ServerConfig) {
    if !config.tls.is_on() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "plain HTTP on a non-loopback address (--allow-insecure-http): passwords and node credentials \
             cross the network in the clear"
        );
    }
    if let Some(boot) = &config.boot {
        if boot.allow_token_without_lease {
            tracing::warn!(
                "boot.allow_token_without_lease is on: boot scripts carry enrollment tokens for any requester, \
                 so anyone on the boot network can take over a node (docs/security.md)"
            );
        } else if boot.interface.is_none() {
            tracing::warn!(
                "lbfleet runs no DHCP (boot.interface unset): boot scripts carry no enrollment tokens; give \
                 agents a token by hand or set boot.allow_token_without_lease (docs/security.md)"
            );
        }
    }
}

/// The DHCP engine's settings from `[boot]`.
fn dhcp_config(
    boot: &config::BootConfig,
    http_boot_base: String,
) -> anyhow::Result<boot::dhcp::DhcpConfig> {
    use boot::dhcp::{BootFileMap, DhcpConfig, PoolRange, Subnet};
    let (network, prefix) = boot.subnet.context("boot.subnet is required for DHCP")?;
    let (first, last) = boot.pool.context("boot.pool is required for DHCP")?;
    let cfg = DhcpConfig {
        server_address: boot.server_address,
        subnet: Subnet::new(network, prefix),
        pools: vec![PoolRange::new(first, last)],
        router: boot.router,
        dns: boot.dns.clone(),
        domain: boot.domain.clone(),
        mtu: None,
        ntp: vec![],
        lease_time: boot.lease_time,
        offer_timeout: std::time::Duration::from_secs(60),
        decline_quarantine: std::time::Duration::from_secs(600),
        boot_files: BootFileMap::default(),
        http_boot_base,
        discovery_cap: usize::try_from(boot.max_discovered).unwrap_or(0),
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("[boot]: {e}"))?;
    Ok(cfg)
}

/// Prints the first admin's password once (to stdout, never to the log) and optionally writes it to a file
/// only the owner can read.
fn announce_initial_admin(config: &ServerConfig, password: &str) -> anyhow::Result<()> {
    println!("Created the first user: admin / {password}\n(shown once; change it with `lbfleet-server user passwd admin`)");
    if let Some(path) = &config.initial_admin_password_file {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        writeln!(f, "{password}")?;
    }
    Ok(())
}
