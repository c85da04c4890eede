//! Server mode: the role source (enroll, then long-poll the role with capped exponential backoff and jitter)
//! and the reporter (posts the newest report, only the latest while the server is down). The daemon loop
//! (`super`) does the rest.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::boot::BOOT_CREDENTIAL_PREFIX;
use lbfleet_proto::{AgentReport, EnrollRequest};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{AgentError, Event, HealthOutbox, LoopConfig, RoleOrigin};
use crate::client::{ClientError, ServerClient};
use crate::health::{HealthConfig, PrioritySink};
use crate::reconcile::Applier;
use crate::state::StateDir;

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
    /// Trust only this server certificate over HTTPS (`lbfleet.server_cert=`).
    pub server_cert: Option<crate::pin::CertPin>,
    /// Health-check settings (concurrency, script directory).
    pub health: HealthConfig,
    /// Also told the health quorum's VRRP priority (the VRRP instance always is): tests, embedders.
    pub priority_observer: Option<Arc<dyn PrioritySink>>,
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
            server_cert: None,
            health: HealthConfig::default(),
            priority_observer: None,
        }
    }
}

/// Enrolls if needed and returns a client holding a credential. With a boot credential (`lbf_boot_`, handed out
/// while the server's database is down) that the server cannot exchange yet (503), the client holds the boot
/// credential itself, which reads the role only, and the enrollment request to retry comes back too.
async fn connect(
    config: &RunConfig,
    state: &StateDir,
) -> Result<(ServerClient, Option<EnrollRequest>), AgentError> {
    let saved = match config.credential.clone() {
        Some(c) => Some(c),
        None => state.load_credential()?,
    };
    let mut client = ServerClient::pinned(&config.server, saved, config.server_cert)
        .map_err(AgentError::Client)?;
    if client.credential().is_some() {
        return Ok((client, None));
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
                return Ok((client, None));
            }
            Err(ClientError::Refused { status, .. })
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && req.token.starts_with(BOOT_CREDENTIAL_PREFIX) =>
            {
                warn!("server's database unreachable: reading the role with the boot credential until it can be exchanged");
                let degraded = ServerClient::pinned(
                    &config.server,
                    Some(req.token.clone()),
                    config.server_cert,
                )
                .map_err(AgentError::Client)?;
                return Ok((degraded, Some(req)));
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

/// Long-polls the role forever; sends each newer document. Backs off while the server is unreachable. A
/// refusal ends the agent (`fatal_on_refusal`) or, for a boot credential, only the polling: the node keeps the
/// role it has while the credential's exchange goes on.
async fn poll_roles(
    client: ServerClient,
    mut after: u64,
    wait: Duration,
    mut backoff: Backoff,
    tx: mpsc::Sender<Event>,
    fatal_on_refusal: bool,
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
                        if tx
                            .send(Event::NewRole {
                                role: Box::new(role),
                                origin: RoleOrigin::Server,
                            })
                            .await
                            .is_err()
                        {
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
            Err(e) if !fatal_on_refusal => {
                warn!(error = %e, "boot credential refused; keeping the current role");
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(Event::Fatal(AgentError::CredentialRefused(e)))
                    .await;
                return;
            }
        }
    }
}

/// Posts the newest report; while the server is down, retries with backoff and sends only the latest. Each
/// report carries every health transition still waiting in `outbox`; they leave it once the server took them.
async fn send_reports(
    client: ServerClient,
    server: String,
    mut rx: watch::Receiver<Option<AgentReport>>,
    outbox: HealthOutbox,
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
            let (events, mark) = outbox.waiting();
            outgoing(&mut report, events);
            match client.report(&report).await {
                Ok(()) => {
                    outbox.sent(mark);
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

/// Completes a report for the wire: the waiting health transitions, then everything cut to the bounds the
/// server enforces (`lbfleet_proto::bounds`), so a busy or failing node is never refused: many errors become a
/// count, long or multi-line texts are cut.
fn outgoing(report: &mut AgentReport, health_events: Vec<lbfleet_proto::HealthTransition>) {
    report.health_events = health_events;
    lbfleet_proto::bounds::fit_report(report);
}

/// Server mode. Returns when `shutdown` completes (Ok) or on a refusal that retrying cannot fix.
pub async fn run(
    config: RunConfig,
    applier: Box<dyn Applier>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let state = StateDir::new(&config.state_dir);
    let (events_tx, events_rx) = mpsc::channel(16);
    // Serve the last role before talking to the server: the server may be down.
    match state.load_role() {
        Ok(Some(role)) => {
            info!(generation = role.generation, "serving the saved role");
            let _ = events_tx
                .send(Event::NewRole {
                    role: Box::new(role),
                    origin: RoleOrigin::Saved,
                })
                .await;
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "ignoring the saved role"),
    }
    let (report_tx, report_rx) = watch::channel(None);
    let outbox = HealthOutbox::default();
    let source = tokio::spawn(role_source(
        config.clone(),
        state,
        events_tx.clone(),
        report_rx,
        outbox.clone(),
    ));
    let result = super::run_loop(
        LoopConfig {
            state_dir: config.state_dir.clone(),
            resync: config.resync,
            image_version: config.image_version.clone(),
            save_roles: true,
            report: Some(report_tx),
            log_file_passes: false,
            health: config.health.clone(),
            priority_observer: config.priority_observer.clone(),
            health_outbox: Some(outbox),
        },
        applier,
        events_tx,
        events_rx,
        shutdown,
    )
    .await
    .map(|_| ());
    source.abort();
    result
}

/// Enrolls (retrying transient failures), then runs the role poller and the reporter until aborted.
async fn role_source(
    config: RunConfig,
    state: StateDir,
    tx: mpsc::Sender<Event>,
    report_rx: watch::Receiver<Option<AgentReport>>,
    outbox: HealthOutbox,
) {
    let (mut client, mut pending) = match connect(&config, &state).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Event::Fatal(e)).await;
            return;
        }
    };
    let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    loop {
        let _reporter = super::AbortOnDrop(tokio::spawn(send_reports(
            client.clone(),
            config.server.clone(),
            report_rx.clone(),
            outbox.clone(),
            backoff.clone(),
        )));
        // Ask from 0: the server answers at once with the current document, which may be newer than the saved
        // one or (after a server-side restore) the same.
        let Some(req) = pending.take() else {
            poll_roles(client, 0, config.poll_wait, backoff, tx, true).await;
            return;
        };
        // Booted while the server's database was down: read the role with the boot credential, and trade the
        // credential for a node credential as soon as the server can (then start over with it).
        let poller = super::AbortOnDrop(tokio::spawn(poll_roles(
            client.clone(),
            0,
            config.poll_wait,
            backoff.clone(),
            tx.clone(),
            false,
        )));
        match exchange(&mut client, &req, &state, backoff.clone()).await {
            Ok(()) => drop(poller),
            Err(e) => {
                warn!(error = %e, "cannot exchange the boot credential; keeping the role from the server's boot cache");
                let mut poller = poller;
                let _ = (&mut poller.0).await;
                return;
            }
        }
    }
}

/// Retries the enrollment with a boot credential (backing off while the server answers 503 or cannot be
/// reached) until it gives a node credential, saved and kept in `client`.
async fn exchange(
    client: &mut ServerClient,
    req: &EnrollRequest,
    state: &StateDir,
    mut backoff: Backoff,
) -> Result<(), AgentError> {
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        match client.enroll(req).await {
            Ok(enrolled) => {
                info!(node = %enrolled.node, node_id = enrolled.node_id, "boot credential exchanged: enrolled");
                state.save_credential(&enrolled.credential)?;
                return Ok(());
            }
            Err(e) if e.is_transient() => debug!(error = %e, "boot credential exchange: retrying"),
            Err(e) => return Err(AgentError::EnrollRefused(e)),
        }
    }
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
    fn outgoing_reports_stay_within_the_servers_bounds() {
        use lbfleet_proto::bounds::{self, text_ok};
        use lbfleet_proto::{HealthState, HealthTransition, VrrpState, VrrpTransition};
        // A node that has been failing for a while: far more errors than a report may carry, a netlink error
        // text with a newline, VRRP flapping, a long health reason.
        let mut report = AgentReport {
            errors: (0..500)
                .map(|i| format!("ipvs: add destination {i} failed:\n{}", "x".repeat(900)))
                .collect(),
            vrrp_transitions: (0..100)
                .map(|i| VrrpTransition {
                    from: VrrpState::Backup,
                    to: VrrpState::Master,
                    reason: format!("higher priority advert\tfrom 198.18.0.{i}"),
                    at_ms: i,
                })
                .collect(),
            ..AgentReport::default()
        };
        let events = vec![
            HealthTransition {
                service: "198.18.0.10:80/tcp".into(),
                address: "198.18.2.1".into(),
                port: 80,
                from: HealthState::Up,
                to: HealthState::Down,
                at: 1,
                reason: Some("é".repeat(2000)),
            };
            1500
        ];
        outgoing(&mut report, events);
        assert_eq!(report.errors.len(), bounds::MAX_ERRORS);
        assert!(report.errors.iter().all(|e| text_ok(e, bounds::MAX_TEXT)));
        assert_eq!(report.vrrp_transitions.len(), bounds::MAX_VRRP_TRANSITIONS);
        assert_eq!(report.vrrp_transitions.last().map(|t| t.at_ms), Some(99));
        assert!(report
            .vrrp_transitions
            .iter()
            .all(|t| text_ok(&t.reason, bounds::MAX_TEXT)));
        assert_eq!(report.health_events.len(), bounds::MAX_HEALTH_EVENTS);
        assert!(report.health_events.iter().all(|e| e
            .reason
            .as_deref()
            .is_some_and(|r| text_ok(r, bounds::MAX_TEXT))));
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
