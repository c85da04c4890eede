//! The agent's loops. Server mode (`run`): serve the saved role at once, enroll, long-poll the role with
//! capped exponential backoff and jitter, reconcile on every new role and on a periodic resync, report.
//! Standalone mode (`apply_file`): the same reconciler driven by a local role file.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lbfleet_proto::{AgentReport, EnrollRequest, RoleDocument};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::client::{ClientError, ServerClient};
use crate::reconcile::{self, Applier, ApplyError, HealthResults, ReconcileOutcome, Reconciler};
use crate::state::{StateDir, StateError};
use crate::status;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("enrollment refused: {0}")]
    EnrollRefused(ClientError),
    #[error("the server refused the node credential: {0}")]
    CredentialRefused(ClientError),
    #[error("no enrollment token and no saved credential: pass --token or lbfleet.token= on the kernel command line")]
    NoCredential,
    #[error("no MAC address for enrollment: no BOOTIF= on the kernel command line; pass --mac")]
    NoMac,
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(ClientError),
    #[error("cannot read the IPVS table: {0}")]
    Observe(ApplyError),
    #[error("the apply task failed: {0}")]
    Task(String),
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next wait: uniform in [current/2, current], then current doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = cur / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Server-mode settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub server: String,
    /// One-time enrollment token; used when no credential is saved.
    pub token: Option<String>,
    pub mac: Option<String>,
    /// A node credential from an earlier enrollment (overrides the saved one).
    pub credential: Option<String>,
    pub state_dir: PathBuf,
    /// How often the kernel is re-read and repaired.
    pub resync: Duration,
    /// Long-poll wait per request.
    pub poll_wait: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub image_version: Option<String>,
}

impl RunConfig {
    pub fn new(server: &str, state_dir: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            server: server.to_owned(),
            token: None,
            mac: None,
            credential: None,
            state_dir: state_dir.into(),
            resync: Duration::from_secs(10),
            poll_wait: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            image_version: None,
        }
    }
}

/// How a pass learns the kernel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Read the kernel first (start-up, resync).
    Full,
    /// Plan against what is known (a role change); nothing is read.
    Fast,
    /// Only read the table (counters for the report after fast passes).
    Read,
}

/// Runs a reconcile pass on a blocking thread (netlink calls block) and hands the reconciler back.
async fn reconcile_blocking(
    reconciler: Reconciler,
    desired: reconcile::IpvsState,
    pass: Pass,
) -> Result<(Reconciler, Result<ReconcileOutcome, ApplyError>), AgentError> {
    tokio::task::spawn_blocking(move || {
        let mut reconciler = reconciler;
        let r = match pass {
            Pass::Full => reconciler.full(&desired),
            Pass::Fast => reconciler.fast(&desired),
            Pass::Read => reconciler.observe().map(|table| ReconcileOutcome {
                table,
                ..Default::default()
            }),
        };
        (reconciler, r)
    })
    .await
    .map_err(|e| AgentError::Task(e.to_string()))
}

/// What the loop currently wants in the kernel.
struct Current {
    role: Option<RoleDocument>,
    desired: reconcile::IpvsState,
    role_errors: Vec<String>,
    applied_generation: u64,
}

impl Current {
    fn set_role(&mut self, role: RoleDocument, health: &HealthResults) {
        // Health results do not change between roles yet (no checker); once they do, a change of them must
        // rebuild without reuse.
        let previous = self.role.as_ref().map(|r| (r, &self.desired));
        let (desired, errors) = reconcile::desired_state_reusing(&role, health, previous);
        for e in &errors {
            warn!(generation = role.generation, error = %e, "role entry skipped");
        }
        self.desired = desired;
        self.role_errors = errors;
        self.role = Some(role);
    }
}

/// Enrolls if needed and returns a client holding a credential.
async fn connect(config: &RunConfig, state: &StateDir) -> Result<ServerClient, AgentError> {
    let saved = match config.credential.clone() {
        Some(c) => Some(c),
        None => state.load_credential()?,
    };
    let mut client = ServerClient::new(&config.server, saved).map_err(AgentError::Client)?;
    if client.credential().is_some() {
        return Ok(client);
    }
    let token = config.token.clone().ok_or(AgentError::NoCredential)?;
    let mac = config.mac.clone().ok_or(AgentError::NoMac)?;
    let req = EnrollRequest {
        token,
        mac: mac.clone(),
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        image_version: config.image_version.clone(),
    };
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    loop {
        match client.enroll(&req).await {
            Ok(enrolled) => {
                info!(node = %enrolled.node, node_id = enrolled.node_id, mac = %mac, "enrolled");
                state.save_credential(&enrolled.credential)?;
                return Ok(client);
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_ms = delay.as_millis() as u64, "enrollment failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(AgentError::EnrollRefused(e)),
        }
    }
}

enum PollEvent {
    Role(RoleDocument),
    Refused(ClientError),
}

/// Long-polls the role forever; sends each newer document. Backs off while the server is unreachable.
async fn poll_roles(
    client: ServerClient,
    mut after: u64,
    wait: Duration,
    mut backoff: Backoff,
    tx: mpsc::Sender<PollEvent>,
) {
    let mut was_down = false;
    loop {
        match client.poll_role(after, wait).await {
            Ok(role) => {
                if was_down {
                    info!(after, "server reachable again");
                    was_down = false;
                }
                backoff.reset();
                if let Some(role) = role {
                    if role.generation > after {
                        after = role.generation;
                        if tx.send(PollEvent::Role(role)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if !was_down {
                    warn!(error = %e, "server unreachable; keeping the current role");
                    was_down = true;
                }
                debug!(retry_ms = delay.as_millis() as u64, "role poll backoff");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                let _ = tx.send(PollEvent::Refused(e)).await;
                return;
            }
        }
    }
}

/// Posts the newest report; while the server is down, retries with backoff and sends only the latest.
async fn send_reports(
    client: ServerClient,
    server: String,
    mut rx: watch::Receiver<Option<AgentReport>>,
    mut backoff: Backoff,
) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        loop {
            let Some(mut report) = rx.borrow_and_update().clone() else {
                break;
            };
            // Here, not in the reconcile loop: resolving the server's name may be slow.
            report.address = local_address_towards(&server).await;
            match client.report(&report).await {
                Ok(()) => {
                    debug!(generation = report.applied_generation, "report sent");
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    debug!(error = %e, retry_ms = delay.as_millis() as u64, "report failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// First delay before a failed pass is retried.
const RETRY_INITIAL: Duration = Duration::from_millis(500);

/// Server mode. Returns when `shutdown` completes (Ok) or on a refusal that retrying cannot fix.
pub async fn run(
    config: RunConfig,
    applier: Box<dyn Applier>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let state = StateDir::new(&config.state_dir);
    let health = HealthResults::default();
    let mut reconciler = Reconciler::new(applier);
    let mut current = Current {
        role: None,
        desired: Default::default(),
        role_errors: Vec::new(),
        applied_generation: 0,
    };
    tokio::pin!(shutdown);

    // Serve the last role before talking to the server: the server may be down.
    match state.load_role() {
        Ok(Some(role)) => {
            info!(generation = role.generation, "serving the saved role");
            current.set_role(role, &health);
            let (rec, r) =
                reconcile_blocking(reconciler, current.desired.clone(), Pass::Full).await?;
            reconciler = rec;
            match &r {
                Ok(out) => info!(
                    generation = current.role.as_ref().map_or(0, |r| r.generation),
                    planned = out.planned,
                    applied = out.applied,
                    failed = out.errors.len(),
                    "saved role applied"
                ),
                Err(e) => warn!(error = %e, "cannot read the IPVS table"),
            }
            if let Ok(out) = &r {
                if out.converged() && current.role_errors.is_empty() {
                    current.applied_generation = current.role.as_ref().map_or(0, |r| r.generation);
                }
            }
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "ignoring the saved role"),
    }

    let client = tokio::select! {
        c = connect(&config, &state) => c?,
        _ = &mut shutdown => return Ok(()),
    };
    let (role_tx, mut role_rx) = mpsc::channel(4);
    let (report_tx, report_rx) = watch::channel(None);
    let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    // Ask from 0: the server answers at once with the current document, which may be newer than the saved one
    // or (after a server-side restore) the same.
    let poller = tokio::spawn(poll_roles(
        client.clone(),
        0,
        config.poll_wait,
        backoff.clone(),
        role_tx,
    ));
    let reporter = tokio::spawn(send_reports(
        client,
        config.server.clone(),
        report_rx,
        backoff,
    ));
    let mut resync = tokio::time::interval(config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // A pass that failed (an operation refused, the table unreadable) is retried soon, with backoff capped at
    // the resync interval, instead of waiting for the next resync.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut retry_delay = RETRY_INITIAL;

    // After a role change the report needs the kernel's counters, which means reading the whole table (one
    // dump per service). That read waits until no newer role is queued, so a burst of role changes is applied
    // back to back and reported once.
    let mut report_due = false;
    let mut pending_errors: Vec<String> = Vec::new();

    let result = loop {
        let reason = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            ev = role_rx.recv() => match ev {
                Some(PollEvent::Role(role)) => {
                    let generation = role.generation;
                    info!(generation, services = role.services.len(), "new role");
                    if let Err(e) = state.save_role(&role) {
                        warn!(error = %e, "cannot save the role");
                    }
                    current.set_role(role, &health);
                    "role"
                }
                Some(PollEvent::Refused(e)) => break Err(AgentError::CredentialRefused(e)),
                None => break Err(AgentError::Task("role poller stopped".into())),
            },
            _ = std::future::ready(()), if report_due => "report",
            _ = resync.tick() => "resync",
            _ = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => "retry",
        };
        if reason != "report" {
            retry_at = None;
        }
        if current.role.is_none() {
            report_due = false;
            continue;
        }
        let pass = match reason {
            "role" => Pass::Fast,
            "report" => Pass::Read,
            _ => Pass::Full,
        };
        let (rec, r) = reconcile_blocking(reconciler, current.desired.clone(), pass).await?;
        reconciler = rec;
        let generation = current.role.as_ref().map_or(0, |r| r.generation);
        let services = match r {
            Ok(out) => {
                if out.planned > 0 {
                    info!(
                        reason,
                        generation,
                        planned = out.planned,
                        applied = out.applied,
                        failed = out.errors.len(),
                        "IPVS reconciled"
                    );
                }
                if reason == "resync" && out.planned > 0 {
                    warn!(
                        generation,
                        repaired = out.applied,
                        "resync repaired out-of-band IPVS changes"
                    );
                    pending_errors.push(format!(
                        "resync repaired {} out-of-band IPVS change(s) ({} failed)",
                        out.applied,
                        out.errors.len()
                    ));
                }
                if pass != Pass::Read {
                    if out.converged() && current.role_errors.is_empty() {
                        current.applied_generation = generation;
                    }
                    if out.converged() {
                        retry_delay = RETRY_INITIAL;
                    } else {
                        retry_at = Some(tokio::time::Instant::now() + retry_delay);
                        retry_delay = (retry_delay * 2).min(config.resync.max(RETRY_INITIAL));
                    }
                }
                pending_errors.extend(out.errors.iter().cloned());
                if pass == Pass::Fast {
                    // Counters come from the read that follows once no newer role is waiting.
                    report_due = true;
                    continue;
                }
                status::service_reports(&out.table, &health)
            }
            Err(e) => {
                retry_at = Some(tokio::time::Instant::now() + retry_delay);
                retry_delay = (retry_delay * 2).min(config.resync.max(RETRY_INITIAL));
                warn!(error = %e, "cannot read the IPVS table");
                pending_errors.push(format!("cannot read the IPVS table: {e}"));
                Vec::new()
            }
        };
        report_due = false;
        let mut errors = std::mem::take(&mut pending_errors);
        errors.extend(current.role_errors.iter().cloned());
        let report = AgentReport {
            applied_generation: current.applied_generation,
            vrrp_state: None,
            services,
            errors,
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            image_version: config.image_version.clone(),
            uptime_s: started.elapsed().as_secs(),
            // Filled in by the reporter.
            address: None,
        };
        // The reporter sends only the latest report.
        let _ = report_tx.send(Some(report));
    };
    poller.abort();
    reporter.abort();
    result
}

/// The local address this node uses to reach the server: the source the kernel's routing picks for a UDP
/// socket connected to the server (connecting a UDP socket sends nothing). Looked up for every report, since a
/// DHCP renewal may change it; `None` (and the server keeps the last one) when the server's name does not
/// resolve or no route exists.
async fn local_address_towards(server: &str) -> Option<String> {
    let url = reqwest::Url::parse(server).ok()?;
    let port = url.port_or_known_default()?;
    let host = url.host_str()?;
    // IPv6 literals come bracketed ("[2001:db8::1]").
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let target: SocketAddr = match literal.parse::<IpAddr>() {
        Ok(ip) => (ip, port).into(),
        Err(_) => tokio::net::lookup_host((host, port)).await.ok()?.next()?,
    };
    let unspecified: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = std::net::UdpSocket::bind((unspecified, 0)).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Standalone mode: applies `role_file` once, or with `watch` again whenever the file changes and on every
/// resync tick, until `shutdown`. Returns the last pass's outcome.
pub async fn apply_file(
    role_file: PathBuf,
    applier: Box<dyn Applier>,
    watch: bool,
    resync: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<ReconcileOutcome, AgentError> {
    let health = HealthResults::default();
    let load = |path: &PathBuf| -> Result<RoleDocument, AgentError> {
        let bytes = std::fs::read(path).map_err(|source| {
            AgentError::State(StateError::Io {
                path: path.clone(),
                source,
            })
        })?;
        serde_json::from_slice(&bytes).map_err(|source| {
            AgentError::State(StateError::BadRole {
                path: path.clone(),
                source,
            })
        })
    };
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    tokio::pin!(shutdown);
    let mut reconciler = Reconciler::new(applier);
    let mut last_mtime = mtime(&role_file);
    let mut role = load(&role_file)?;
    let mut last_resync = Instant::now();
    let mut pass = Pass::Full;
    loop {
        let (desired, role_errors) = reconcile::desired_state(&role, &health);
        let (rec, r) = reconcile_blocking(reconciler, desired, pass).await?;
        reconciler = rec;
        let mut out = r.map_err(AgentError::Observe)?;
        out.errors.extend(role_errors);
        info!(
            generation = role.generation,
            planned = out.planned,
            applied = out.applied,
            failed = out.errors.len(),
            "role file applied"
        );
        if !watch {
            return Ok(out);
        }
        // Wait for a file change (fast pass) or the resync tick (full pass).
        pass = Pass::Full;
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(out),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let m = mtime(&role_file);
            if m != last_mtime {
                last_mtime = m;
                match load(&role_file) {
                    Ok(r) => {
                        role = r;
                        pass = Pass::Fast;
                        break;
                    }
                    Err(e) => warn!(error = %e, "role file unreadable; keeping the previous one"),
                }
            }
            if last_resync.elapsed() >= resync {
                break;
            }
        }
        if pass == Pass::Full {
            last_resync = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_address_is_the_source_towards_the_server() {
        assert_eq!(
            local_address_towards("http://127.0.0.1:8080")
                .await
                .as_deref(),
            Some("127.0.0.1")
        );
        // Without IPv6 on the host there is no route, and no address to report.
        let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
        assert_eq!(
            local_address_towards("http://[::1]:8080").await.as_deref(),
            v6.then_some("::1")
        );
        let by_name = local_address_towards("http://localhost:1").await;
        assert!(
            matches!(by_name.as_deref(), Some("127.0.0.1" | "::1")),
            "{by_name:?}"
        );
        assert_eq!(local_address_towards("not a url").await, None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
