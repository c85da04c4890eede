//! `lbfleet-agent`: runs on each diskless load balancer. Thin binary: parses the command line, starts tracing
//! and calls the library (`daemon::run`, `daemon::apply_file`, `status`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lbfleet_agent::client::ServerClient;
use lbfleet_agent::daemon::{self, Endpoint, RunConfig};
use lbfleet_agent::health::HealthConfig;
use lbfleet_agent::reconcile::{Applier, NetlinkApplier};
use lbfleet_agent::state::{self, StateDir, DEFAULT_STATE_DIR};
use lbfleet_agent::status;
use lbfleet_proto::{EnrollRequest, Mac};

#[derive(Debug, Parser)]
#[command(
    name = "lbfleet-agent",
    version,
    about = "lbfleet node agent: pulls this node's role from lbfleet-server and programs IPVS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Server mode: enroll, long-poll the role, apply it to IPVS, resync periodically, report.
    /// Server, token and MAC default to lbfleet.server=, lbfleet.token= and BOOTIF= on /proc/cmdline.
    Run {
        /// Server URL, e.g. http://198.18.0.1:8080; several servers comma-separated, in order of preference
        /// (the agent moves to the next when one stops answering)
        #[arg(long, env = "LBFLEET_SERVER")]
        server: Option<String>,
        /// Trust only the server certificate with this SHA-256 (sha256:HEX); with several servers, one per
        /// server, comma-separated, `none` for a server without TLS (default: lbfleet.server_cert= on the
        /// kernel command line)
        #[arg(long, env = "LBFLEET_SERVER_CERT")]
        server_cert: Option<String>,
        /// One-time enrollment token
        #[arg(long, env = "LBFLEET_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// MAC of the boot interface (default: BOOTIF= on the kernel command line)
        #[arg(long, env = "LBFLEET_MAC")]
        mac: Option<String>,
        /// Node credential from an earlier enrollment (default: the one saved in the state directory)
        #[arg(long, env = "LBFLEET_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        /// Where the last role and the credential are kept
        #[arg(long, env = "LBFLEET_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// How often the kernel is re-read and out-of-band changes repaired (e.g. 10s, 500ms)
        #[arg(long, env = "LBFLEET_RESYNC", default_value = "10s", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// Kernel command line to read boot parameters from
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Version of the image this node booted, reported to the server (default: lbfleet.image= on the
        /// kernel command line, else the first line of /etc/lbfleet/image-version)
        #[arg(long, env = "LBFLEET_IMAGE_VERSION")]
        image_version: Option<String>,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Standalone: apply a role document from a file (no server). With --watch, keep it applied.
    Apply {
        #[arg(long)]
        role: PathBuf,
        /// Re-apply when the file changes and on every resync
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// Where the status file (`lbfleet-agent status`) is written with --watch
        #[arg(long, env = "LBFLEET_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Print the boot script's kernel arguments as shell assignments for /init (`eval "$(lbfleet-agent
    /// bootargs)"`): BOOTARG_MAC, BOOTARG_SERVER, BOOTARG_SERVER_CERT, BOOTARG_IMAGE, BOOTARG_TOKEN_GIVEN.
    /// The token itself is never printed.
    Bootargs {
        /// Kernel command line to read
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
    },
    /// Show the kernel's IPVS table like `ipvsadm -Ln`, and the running agent's VRRP state.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "LBFLEET_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Enroll with a one-time token (or use a credential) and print the node's current role document as JSON.
    FetchRole {
        /// Server URL, e.g. http://198.18.0.1:8080 (several comma-separated: the first that answers)
        #[arg(long, env = "LBFLEET_SERVER")]
        server: String,
        /// Trust only the server certificate with this SHA-256 (sha256:HEX; one per server, comma-separated)
        #[arg(long, env = "LBFLEET_SERVER_CERT")]
        server_cert: Option<String>,
        /// One-time enrollment token (from the boot script's lbfleet.token=)
        #[arg(
            long,
            env = "LBFLEET_TOKEN",
            hide_env_values = true,
            conflicts_with = "credential"
        )]
        token: Option<String>,
        /// MAC of the boot interface (required with --token)
        #[arg(long, env = "LBFLEET_MAC", requires = "token")]
        mac: Option<String>,
        /// Node credential from an earlier enrollment
        #[arg(long, env = "LBFLEET_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
    },
}

/// Health-check settings shared by `run` and `apply --watch`.
#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Most health probes (sockets or scripts) open at once
    #[arg(long, env = "LBFLEET_HEALTH_MAX_IN_FLIGHT", default_value_t = 256)]
    health_max_in_flight: usize,
    /// Directory of the executables `script` checks may name
    #[arg(long, env = "LBFLEET_CHECKS_DIR", default_value = lbfleet_agent::health::probe::DEFAULT_CHECKS_DIR)]
    checks_dir: PathBuf,
}

impl HealthArgs {
    fn config(self) -> HealthConfig {
        HealthConfig {
            max_in_flight: self.health_max_in_flight,
            checks_dir: self.checks_dir,
        }
    }
}

async fn fetch_role(
    server: String,
    server_cert: Option<String>,
    token: Option<String>,
    mac: Option<String>,
    credential: Option<String>,
) -> anyhow::Result<()> {
    let endpoints = Endpoint::list(&server, server_cert.as_deref())?;
    let mut last_error = None;
    for endpoint in endpoints {
        match fetch_role_from(&endpoint, token.clone(), mac.clone(), credential.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("{}: {e:#}", endpoint.url);
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no server")))
}

async fn fetch_role_from(
    endpoint: &Endpoint,
    token: Option<String>,
    mac: Option<String>,
    credential: Option<String>,
) -> anyhow::Result<()> {
    let mut client = ServerClient::pinned(&endpoint.url, credential, endpoint.pin)?;
    if let Some(token) = token {
        let mac = mac.ok_or_else(|| anyhow::anyhow!("--mac is required with --token"))?;
        let enrolled = client
            .enroll(&EnrollRequest {
                token,
                mac,
                agent_version: Some(env!("CARGO_PKG_VERSION").into()),
                image_version: None,
            })
            .await?;
        eprintln!(
            "enrolled as node {} (id {})",
            enrolled.node, enrolled.node_id
        );
    }
    anyhow::ensure!(
        client.credential().is_some(),
        "give --token and --mac, or --credential"
    );
    let role = client
        .poll_role(0, Duration::from_secs(5))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server returned no role document"))?;
    println!("{}", serde_json::to_string_pretty(&role)?);
    Ok(())
}

/// Written into the netboot image by its builder.
const IMAGE_VERSION_FILE: &str = "/etc/lbfleet/image-version";

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c().await,
    };
    tokio::select! {
        _ = ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_server_mode(
    server: Option<String>,
    server_cert: Option<String>,
    token: Option<String>,
    mac: Option<String>,
    credential: Option<String>,
    state_dir: PathBuf,
    resync: Duration,
    cmdline: &Path,
    image_version: Option<String>,
    health: HealthConfig,
) -> anyhow::Result<()> {
    let boot = state::read_kernel_args(cmdline)?;
    let server = server.or(boot.server).ok_or_else(|| {
        anyhow::anyhow!("no server: pass --server or lbfleet.server= on the kernel command line")
    })?;
    // The pins pair with the servers position by position (Endpoint::list refuses a list that does not).
    let server_cert = server_cert.or(boot.server_cert);
    let mut config =
        RunConfig::with_servers(Endpoint::list(&server, server_cert.as_deref())?, state_dir);
    config.token = token.or(boot.token);
    // The MAC the token is bound to is the boot NIC's (BOOTIF), never a guess such as the first NIC by name:
    // on a two-NIC balancer that guess fails the server's MAC check and burns the one-time token.
    let mac = match mac {
        Some(m) => Some(m.parse::<Mac>()?),
        None => boot.bootif,
    };
    if let Some(mac) = mac {
        match state::interface_with_mac(Path::new("/sys/class/net"), mac) {
            Some(interface) => tracing::info!(%mac, interface, "boot interface"),
            None => tracing::warn!(%mac, "no interface has the boot MAC"),
        }
    }
    config.mac = mac.map(|m| m.to_string());
    config.credential = credential;
    config.resync = resync;
    config.health = health;
    config.image_version = image_version.or(boot.image).or_else(|| {
        std::fs::read_to_string(IMAGE_VERSION_FILE)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .filter(|v| !v.is_empty())
    });
    config.machine = Some(std::sync::Arc::new(lbfleet_agent::reboot::SystemMachine));
    let applier: Box<dyn Applier> = Box::new(NetlinkApplier::new());
    daemon::run(config, applier, async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c().await,
            };
        tokio::select! {
            _ = ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    Ok(())
}

async fn apply(
    role: PathBuf,
    watch: bool,
    resync: Duration,
    state_dir: PathBuf,
    health: HealthConfig,
) -> anyhow::Result<()> {
    let out = daemon::apply_file(
        role,
        Box::new(NetlinkApplier::new()),
        watch,
        resync,
        state_dir,
        health,
        shutdown_signal(),
    )
    .await?;
    eprintln!(
        "applied: {} change(s) planned, {} applied, {} failed (read {:.3} ms, apply {:.3} ms)",
        out.planned,
        out.applied,
        out.errors.len(),
        out.observe_time.as_secs_f64() * 1e3,
        out.apply_time.as_secs_f64() * 1e3
    );
    for e in &out.errors {
        eprintln!("  error: {e}");
    }
    anyhow::ensure!(out.errors.is_empty(), "the role was not fully applied");
    Ok(())
}

fn show_status(json: bool, state_dir: &Path) -> anyhow::Result<()> {
    let table = NetlinkApplier::new().observe()?;
    let dir = StateDir::new(state_dir);
    let generation = dir.load_role().ok().flatten().map(|r| r.generation);
    // Written by the running daemon (server mode or apply --watch) with every report; without one there is
    // no VRRP state and no health to show.
    let report = dir.load_status().ok().flatten();
    let health = report
        .as_ref()
        .map(status::health_by_dest)
        .unwrap_or_default();
    if json {
        let mut v = serde_json::to_value(status::status(&table, generation, &health))?;
        if let (Some(obj), Some(r)) = (v.as_object_mut(), &report) {
            obj.insert("vrrp".into(), serde_json::to_value(status::vrrp_status(r))?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(g) = generation {
            println!("role generation {g}");
        }
        if let Some(r) = &report {
            print!("{}", status::render_vrrp(&status::vrrp_status(r)));
        }
        print!("{}", status::render_table(&table, &health));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A node's /init sets NO_COLOR: its console is a serial line read by people and tests, not a terminal
        // that renders colours.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run {
            server,
            server_cert,
            token,
            mac,
            credential,
            state_dir,
            resync,
            cmdline,
            image_version,
            health,
        } => runtime.block_on(run_server_mode(
            server,
            server_cert,
            token,
            mac,
            credential,
            state_dir,
            resync,
            &cmdline,
            image_version,
            health.config(),
        )),
        Command::Apply {
            role,
            watch,
            resync,
            state_dir,
            health,
        } => runtime.block_on(apply(role, watch, resync, state_dir, health.config())),
        Command::Status { json, state_dir } => show_status(json, &state_dir),
        Command::Bootargs { cmdline } => state::read_kernel_args(&cmdline)
            .map(|args| print!("{}", args.shell_assignments()))
            .map_err(Into::into),
        Command::FetchRole {
            server,
            server_cert,
            token,
            mac,
            credential,
        } => runtime.block_on(fetch_role(server, server_cert, token, mac, credential)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
