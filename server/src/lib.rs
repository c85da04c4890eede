//! lbfleet-server as a library: the binary parses the command line and calls into here, tests and benchmarks
//! start the same server on a port-0 listener.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use state::AppState;

mod api;
pub mod audit;
pub mod audit_export;
pub mod auth;
pub mod boot;
pub mod clock;
pub mod config;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod health;
pub mod keepalived;
pub mod listeners;
pub mod notify;
pub mod retention;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod store;
pub mod tls;
pub mod web;

pub use config::ServerConfig;

/// Largest request body accepted (a cluster spec with thousands of real servers fits easily).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Every route of the server: the API, the dashboard and HTTP boot, behind the common layers (body limits and
/// request time bounds, security headers, request tracing). `run_with` adds the HTTPS-only redirect.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::router())
        .merge(boot::http::router())
        .merge(web::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
        .layer(axum::middleware::from_fn(auth::limits::bound_request))
}

/// Opens the store (running migrations) and builds the fleet service.
pub async fn open_fleet(config: &ServerConfig) -> Result<fleet::Fleet, store::StoreError> {
    let store = store::Store::open(&config.database).await?;
    let fleet = fleet::Fleet::new(store, config.enrollment_token_ttl)
        .with_heartbeats(config.node_heartbeat_interval, config.node_silent_after);
    Ok(match &config.boot {
        Some(b) => fleet.with_discovery_cap(b.max_discovered),
        None => fleet,
    })
}

/// The fleet over a database that cannot be reached now: it connects on first use (`store::Store::open_lazy`).
async fn open_fleet_lazy(config: &ServerConfig) -> Result<fleet::Fleet, store::StoreError> {
    let store = store::Store::open_lazy(&config.database).await?;
    let fleet = fleet::Fleet::new(store, config.enrollment_token_ttl)
        .with_heartbeats(config.node_heartbeat_interval, config.node_silent_after);
    Ok(match &config.boot {
        Some(b) => fleet.with_discovery_cap(b.max_discovered),
        None => fleet,
    })
}

/// The boot cache, when `[boot]` names a state directory for it.
fn open_boot_cache(
    config: &ServerConfig,
) -> anyhow::Result<Option<std::sync::Arc<boot::cache::BootCache>>> {
    let Some((dir, ttl)) = config
        .boot
        .as_ref()
        .and_then(|b| b.cache_dir.as_ref().map(|d| (d, b.credential_ttl)))
    else {
        return Ok(None);
    };
    let cache = boot::cache::BootCache::open(dir, ttl)
        .with_context(|| format!("cannot open the boot cache in {}", dir.display()))?;
    Ok(Some(std::sync::Arc::new(cache)))
}

/// Sockets of the boot services, bound before the server starts (tests bind port 0).
#[derive(Debug, Default)]
pub struct BootSockets {
    pub tftp: Option<tokio::net::UdpSocket>,
    pub dhcp: Option<tokio::net::UdpSocket>,
    /// Packet socket on the DHCP interface: requests are read from it so their Ethernet source can be checked
    /// against `chaddr` (`boot.check_link_address`).
    pub dhcp_link: Option<boot::dhcp::link::LinkSocket>,
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
                socket2::SockRef::from(&sock)
                    .set_recv_buffer_size(boot::dhcp::link::RECV_BUFFER)
                    .context("cannot size the DHCP socket's receive buffer")?;
                sockets.dhcp = Some(sock);
                if b.check_link_address {
                    let link = boot::dhcp::link::LinkSocket::open(iface).with_context(|| {
                        format!(
                            "cannot open a packet socket on {iface} to check DHCP clients' Ethernet \
                             addresses (needs root or CAP_NET_RAW; boot.check_link_address = false turns \
                             the check off)"
                        )
                    })?;
                    sockets.dhcp_link = Some(link);
                }
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

/// Serves the API on `listener` (and on `boot_listen` and the boot services, as configured) until `shutdown`
/// completes, then drains in-flight requests (waiting long-polls answer at once) and closes the database.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sockets = BootSockets::bind(&config).await?;
    let listeners = Listeners {
        main: listener,
        boot: Listeners::bind_boot(&config).await?,
    };
    run_listeners(config, listeners, sockets, shutdown).await
}

/// `run` with boot sockets the caller bound.
pub async fn run_with(
    config: ServerConfig,
    listener: TcpListener,
    sockets: BootSockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        main: listener,
        boot: None,
    };
    run_listeners(config, listeners, sockets, shutdown).await
}

/// The server's TCP listeners, bound before it starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// Serves everything, or with `boot` set, the admin API and dashboard (the management network).
    pub main: TcpListener,
    /// `boot_listen`: HTTP boot and the agent API only (the boot network); see `listeners`.
    pub boot: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.listen` and, if set, `config.boot_listen`.
    pub async fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
        let main = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Listeners {
            main,
            boot: Self::bind_boot(config).await?,
        })
    }

    /// Binds `config.boot_listen` if it is set.
    pub async fn bind_boot(config: &ServerConfig) -> anyhow::Result<Option<TcpListener>> {
        let Some(addr) = config.boot_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (boot_listen)"))?;
        Ok(Some(listener))
    }
}

/// `run_with` on one or two listeners (`Listeners`).
pub async fn run_listeners(
    mut config: ServerConfig,
    listeners: Listeners,
    sockets: BootSockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    warn_insecure_settings(&config);
    let tls = tls::load(&config.tls, &tls_names(&config))?;
    if let Some(t) = &tls {
        tracing::info!(cert = %t.cert_path.display(), pin = t.pin, "serving HTTPS (and plain HTTP for iPXE)");
        config.tls_pin = Some(t.pin.clone());
    }
    let boot_cache = open_boot_cache(&config)?;
    let (fleet, started_degraded) = match open_fleet(&config).await {
        Ok(f) => (f, false),
        Err(e) if e.is_unreachable() && boot_cache.is_some() => {
            tracing::error!(error = %e, "database unreachable at start: serving known nodes from the boot \
                cache, refusing changes, until it answers");
            (open_fleet_lazy(&config).await?, true)
        }
        Err(e) => return Err(e.into()),
    };
    if !started_degraded {
        if let Some(password) = fleet.bootstrap_admin().await? {
            announce_initial_admin(&config, &password)?;
        }
    }
    let fleet = std::sync::Arc::new(fleet);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(cache) = &boot_cache {
        if started_degraded {
            cache.set_db_reachable(false);
        }
        let (cache, fleet, stop) = (cache.clone(), fleet.clone(), stop_rx.clone());
        tasks.spawn(async move {
            boot::cache::run(cache, fleet, started_degraded, stop).await;
            Ok(())
        });
    }
    let boot_stats =
        spawn_boot_services(&config, &listeners, sockets, &fleet, &stop_rx, &mut tasks)?;
    tasks.spawn(retention::run(
        fleet.clone(),
        config.retention,
        config.traffic,
        stop_rx.clone(),
    ));
    tasks.spawn(fleet::liveness::run(fleet.clone(), stop_rx.clone()));
    tasks.spawn(notify::peers::run(
        fleet.clone(),
        config.database.clone(),
        stop_rx.clone(),
    ));
    let addr = listeners.main.local_addr()?;
    let boot_addr = listeners
        .boot
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let server_id = fleet::servers::server_id(&config.state_dir)?;
    let identity = server_identity(&config, server_id.clone(), addr, boot_addr);
    tracing::info!(id = identity.id, name = identity.name, management_url = identity.management_url,
        boot_url = ?identity.boot_url, "registering in the control plane");
    tasks.spawn(fleet::rollouts_engine::run(
        fleet.clone(),
        server_id.clone(),
        stop_rx.clone(),
    ));
    config.server_id = Some(server_id);
    tasks.spawn(fleet::servers::run_registry(
        fleet.clone(),
        identity,
        fleet::servers::RegistrySettings {
            liveness: fleet::servers::Liveness {
                misses: config.heartbeat_misses,
            },
            retention: config.server_retention,
        },
        stop_rx.clone(),
    ));
    let (limits, connections, boot_limits, boot_connections) =
        listener_limits(&config, listeners.boot.is_some());
    let tls_on = tls.is_some();
    let app = router(AppState::new(
        fleet.clone(),
        config,
        boot_stats,
        boot_cache,
        stop_rx.clone(),
    ))
    .layer(axum::middleware::from_fn(move |req, next| {
        serve::https_only(tls_on, req, next)
    }));
    let on = |surface: listeners::Surface| {
        app.clone()
            .layer(axum::middleware::from_fn(move |req, next| {
                listeners::restrict(surface, req, next)
            }))
    };
    let main_surface = if listeners.boot.is_some() {
        listeners::Surface::Management
    } else {
        listeners::Surface::Everything
    };
    tracing::info!(%addr, boot_listen = ?boot_addr, tls = tls_on, max_connections = connections.cap(),
        boot_max_connections = boot_addr.map(|_| boot_connections.cap()),
        max_connections_per_address = connections.per_address(), "lbfleet-server listening");
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tls_config = tls.map(|t| t.server_config);
    let main = serve::serve(
        listeners.main,
        on(main_surface),
        tls_config.clone(),
        limits.clone(),
        connections.clone(),
        stopped(stop_rx.clone()),
    );
    let boot = async {
        match listeners.boot {
            Some(l) => {
                serve::serve(
                    l,
                    on(listeners::Surface::Boot),
                    tls_config.clone(),
                    boot_limits.clone(),
                    boot_connections.clone(),
                    stopped(stop_rx.clone()),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let (main, boot, ()) = tokio::join!(main, boot, signal);
    main?;
    boot?;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %e, "boot service failed");
        }
    }
    fleet.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The host's name (for the registry), if it has one.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// `scheme://ip:port`, the host name for an unspecified address, IPv6 bracketed.
fn url_of(scheme: &str, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        host_name().unwrap_or_else(|| "localhost".into())
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// What this server tells the control plane's registry about itself: where people reach it (the main
/// listener), where nodes reach its agent API (`public_url`, else the boot address and the boot listener's
/// port, else the main listener), its certificate pin and the networks its DHCP answers.
fn server_identity(
    config: &ServerConfig,
    id: String,
    main: SocketAddr,
    boot: Option<SocketAddr>,
) -> fleet::servers::ServerIdentity {
    let scheme = if config.tls_pin.is_some() {
        "https"
    } else {
        "http"
    };
    let management_url = url_of(scheme, main);
    let boot_url = match (&config.public_url, &config.boot) {
        (Some(u), _) => {
            let rest = u
                .trim_end_matches('/')
                .split_once("://")
                .map_or(u.as_str(), |(_, r)| r)
                .to_owned();
            format!("{scheme}://{rest}")
        }
        (None, Some(b)) => url_of(
            scheme,
            SocketAddr::from((b.server_address, boot.unwrap_or(main).port())),
        ),
        (None, None) => url_of(scheme, boot.unwrap_or(main)),
    };
    let dhcp_networks = match &config.boot {
        Some(b) if b.interface.is_some() => b
            .subnet
            .map(|(net, prefix)| vec![format!("{net}/{prefix}")])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    fleet::servers::ServerIdentity {
        id,
        name: config
            .server_name
            .clone()
            .or_else(host_name)
            .unwrap_or_else(|| "lbfleet-server".into()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        management_url,
        boot_url: Some(boot_url),
        tls_pin: config.tls_pin.clone(),
        dhcp_networks,
        heartbeat_interval: config.heartbeat_interval,
    }
}

/// Starts the boot network's services the configuration asks for (DHCP, the router-advertisement answer,
/// TFTP) as tasks that end when `stop` turns true, and returns their counters for `/metrics`.
fn spawn_boot_services(
    config: &ServerConfig,
    listeners: &Listeners,
    sockets: BootSockets,
    fleet: &std::sync::Arc<fleet::Fleet>,
    stop: &tokio::sync::watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
) -> anyhow::Result<boot::BootStats> {
    let mut boot_stats = boot::BootStats::default();
    if let (Some(boot), Some(sock)) = (&config.boot, sockets.dhcp) {
        let http_base = config.public_url.clone().unwrap_or_else(|| {
            // Nodes fetch their boot scripts from the boot network's listener when there is one.
            let port = listeners
                .boot
                .as_ref()
                .unwrap_or(&listeners.main)
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(80);
            format!("http://{}:{port}", boot.server_address)
        });
        let dhcp = dhcp_config(boot, http_base)?;
        let stats = std::sync::Arc::new(boot::dhcp::server::DhcpStats::default());
        boot_stats.dhcp = Some(stats.clone());
        tasks.spawn(boot::dhcp::server::run(
            sock,
            sockets.dhcp_link,
            dhcp,
            fleet.clone(),
            stats,
            boot::dhcp::leader::Timers {
                renew: boot.dhcp_leader_renew,
                ttl: boot.dhcp_leader_ttl,
            },
            stop.clone(),
        ));
    }
    if let Some((sock, ifindex)) = sockets.ndp {
        let stats = std::sync::Arc::new(boot::ndp::NdpStats::default());
        tasks.spawn(boot::ndp::run(sock, ifindex, stats, stop.clone()));
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
        tasks.spawn(boot::tftp::run(sock, tftp_config, stats, stop.clone()));
    }
    Ok(boot_stats)
}

/// The connection limits of the main listener and of the boot listener: each listener has connections of its
/// own, so one network cannot take the other's (with one listener, the boot pair is unused).
fn listener_limits(
    config: &ServerConfig,
    has_boot_listener: bool,
) -> (
    serve::ServeLimits,
    std::sync::Arc<serve::Connections>,
    serve::ServeLimits,
    std::sync::Arc<serve::Connections>,
) {
    let limits = serve::ServeLimits {
        max_connections: config.max_connections,
        max_per_address: config.max_connections_per_address,
        header_read_timeout: config.header_read_timeout,
        send_timeout: config.send_timeout,
        min_send_rate: config.min_send_rate,
        ..Default::default()
    };
    let listener_count = if has_boot_listener { 2 } else { 1 };
    let connections = serve::Connections::for_listener(
        limits.max_connections,
        limits.max_per_address,
        listener_count,
    );
    let boot_limits = serve::ServeLimits {
        max_connections: config.boot_max_connections,
        ..limits.clone()
    };
    let boot_connections = serve::Connections::for_listener(
        boot_limits.max_connections,
        boot_limits.max_per_address,
        listener_count,
    );
    (limits, connections, boot_limits, boot_connections)
}

/// Names the self-signed certificate is made out to (agents pin it by hash, so these matter only to browsers).
fn tls_names(config: &ServerConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    for addr in std::iter::once(config.listen).chain(config.boot_listen) {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
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
    for addr in std::iter::once(config.listen).chain(config.boot_listen) {
        if !config.tls.is_on() && !addr.ip().is_loopback() {
            tracing::warn!(
                listen = %addr,
                "plain HTTP on a non-loopback address (--allow-insecure-http): passwords and node \
                 credentials cross the network in the clear"
            );
        }
    }
    if let Some(boot) = &config.boot {
        if boot.allow_token_without_lease {
            tracing::warn!(
                "boot.allow_token_without_lease is on: boot scripts carry enrollment tokens for any requester, \
                 so anyone on the boot network can take over a node (docs/security.md)"
            );
        } else if !boot.check_link_address {
            tracing::warn!(
                "boot.check_link_address is off: a client on the boot network can claim another node's MAC \
                 in DHCP and take over that node (docs/security.md)"
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
        accept_relayed: boot.accept_relayed,
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
