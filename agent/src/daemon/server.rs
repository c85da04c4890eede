//! Server mode: the role source (enroll, then long-poll the role with capped exponential backoff and jitter)
//! and the reporter (posts the newest report, only the latest while the server is down). The daemon loop
//! (`super`) does the rest.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::boot::BOOT_CREDENTIAL_PREFIX;
use lbfleet_proto::{AgentReport, EnrollRequest};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::delta::{Outgoing, ReportDeltas};
use super::{AgentError, Event, HealthOutbox, LoopConfig, RoleOrigin};
use crate::client::{ClientError, DeltaAnswer, ServerClient};
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

/// One lbfleet-server the agent may talk to: its URL and the pin of its certificate (`lbfleet.server=` and
/// `lbfleet.server_cert=`, position by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// Trust only this certificate over HTTPS; `None`: the server speaks plain HTTP (or is trusted as is).
    pub pin: Option<crate::pin::CertPin>,
}

/// Why `--server`/`--server-cert` (or `lbfleet.server=`/`lbfleet.server_cert=`) do not make a list of servers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    #[error("an empty entry in the list of servers {0:?}")]
    EmptyServer(String),
    #[error("{pins} certificate pin(s) for {servers} server(s): give one per server (none for a server without TLS)")]
    NotAligned { servers: usize, pins: usize },
    #[error(transparent)]
    BadPin(#[from] crate::pin::BadPin),
}

impl Endpoint {
    pub fn new(url: &str, pin: Option<crate::pin::CertPin>) -> Endpoint {
        Endpoint {
            url: url.to_owned(),
            pin,
        }
    }

    /// Pairs a comma-separated list of server URLs with a comma-separated list of pins (`sha256:HEX` or
    /// `none`), position by position; without pins, no server is pinned.
    pub fn list(servers: &str, pins: Option<&str>) -> Result<Vec<Endpoint>, EndpointsError> {
        let urls: Vec<&str> = servers.split(',').map(str::trim).collect();
        if urls.iter().any(|u| u.is_empty()) {
            return Err(EndpointsError::EmptyServer(servers.to_owned()));
        }
        let pins: Vec<Option<crate::pin::CertPin>> = match pins {
            None => vec![None; urls.len()],
            Some(p) => p
                .split(',')
                .map(str::trim)
                .map(|p| {
                    if p == lbfleet_proto::boot::NO_PIN {
                        Ok(None)
                    } else {
                        p.parse().map(Some)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        if pins.len() != urls.len() {
            return Err(EndpointsError::NotAligned {
                servers: urls.len(),
                pins: pins.len(),
            });
        }
        Ok(urls
            .into_iter()
            .zip(pins)
            .map(|(u, p)| Endpoint::new(u, p))
            .collect())
    }
}

/// Server-mode settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The servers, in order of preference (the one that wrote the boot script first). Enrollment, the role
    /// long-poll and reports go to one of them at a time and move to the next when it stops answering.
    pub servers: Vec<Endpoint>,
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
    /// Health-check settings (concurrency, script directory).
    pub health: HealthConfig,
    /// Also told the health quorum's VRRP priority (the VRRP instance always is): tests, embedders.
    pub priority_observer: Option<Arc<dyn PrioritySink>>,
    /// What reboots when the server asks (`reboot_generation`): the binary sets the real machine; `None`
    /// (the default, for tests and embedders) ignores reboot requests.
    pub machine: Option<Arc<dyn crate::reboot::Machine>>,
}

impl RunConfig {
    /// Settings for one server without a pin.
    pub fn new(server: &str, state_dir: impl Into<PathBuf>) -> RunConfig {
        Self::with_servers(vec![Endpoint::new(server, None)], state_dir)
    }

    /// Settings for several servers, each with its own pin.
    pub fn with_servers(servers: Vec<Endpoint>, state_dir: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            servers,
            token: None,
            mac: None,
            credential: None,
            state_dir: state_dir.into(),
            resync: Duration::from_secs(10),
            poll_wait: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            image_version: None,
            health: HealthConfig::default(),
            priority_observer: None,
            machine: None,
        }
    }
}

/// Every server the agent may use, one client each (each with its own pin), and which one answers now. The
/// role poller moves `current` on; the reporter starts from it.
#[derive(Debug, Clone)]
struct ServerSet {
    clients: Vec<ServerClient>,
    current: Arc<AtomicUsize>,
}

/// What one round over every server came to.
enum RoundEnd {
    /// Some server did not answer: wait (backoff) and go round again.
    Retry,
    /// Every server refused to be trusted (certificate not its pin): retrying cannot help.
    AllRefused(ClientError),
}

impl ServerSet {
    fn new(config: &RunConfig, credential: Option<String>) -> Result<ServerSet, AgentError> {
        if config.servers.is_empty() {
            return Err(AgentError::NoServer);
        }
        let clients = config
            .servers
            .iter()
            .map(|e| ServerClient::pinned(&e.url, credential.clone(), e.pin))
            .collect::<Result<Vec<_>, _>>()
            .map_err(AgentError::Client)?;
        Ok(ServerSet {
            clients,
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn len(&self) -> usize {
        self.clients.len()
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.len()
    }

    /// Moves on from server `from` to the next (unless someone already moved on); the new index.
    fn advance(&self, from: usize) -> usize {
        let next = (from + 1) % self.len();
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
        self.current()
    }

    fn set_credential(&mut self, credential: &str) {
        for c in &mut self.clients {
            c.set_credential(credential.to_owned());
        }
    }
}

/// Counts the failures of one round over the servers: once every server failed, the round ends.
#[derive(Debug, Default)]
struct Round {
    failed: usize,
    refused: usize,
}

impl Round {
    /// Records a failure of one server; `Some` when that completed a round over `servers`.
    fn failed(&mut self, servers: usize, e: ClientError) -> Option<RoundEnd> {
        self.failed += 1;
        if matches!(e, ClientError::CertificateMismatch { .. }) {
            self.refused += 1;
        }
        if self.failed < servers {
            return None;
        }
        let all_refused = self.refused == self.failed;
        *self = Round::default();
        Some(if all_refused {
            RoundEnd::AllRefused(e)
        } else {
            RoundEnd::Retry
        })
    }
}

/// Enrolls if needed (with whichever server answers) and returns the servers holding a credential. With a boot
/// credential (`lbf_boot_`, handed out while the database is down) that no server can exchange yet (503), the
/// servers hold the boot credential itself, which reads the role only, and the enrollment request to retry
/// comes back too.
async fn connect(
    config: &RunConfig,
    state: &StateDir,
) -> Result<(ServerSet, Option<EnrollRequest>), AgentError> {
    let saved = match config.credential.clone() {
        Some(c) => Some(c),
        None => state.load_credential()?,
    };
    let mut set = ServerSet::new(config, saved)?;
    if set.clients[0].credential().is_some() {
        return Ok((set, None));
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
    let mut round = Round::default();
    loop {
        let i = set.current();
        let mut client = set.clients[i].clone();
        match client.enroll(&req).await {
            Ok(enrolled) => {
                info!(node = %enrolled.node, node_id = enrolled.node_id, mac = %mac,
                    server = client.base(), "enrolled");
                state.save_credential(&enrolled.credential)?;
                set.set_credential(&enrolled.credential);
                return Ok((set, None));
            }
            Err(ClientError::Refused { status, .. })
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && req.token.starts_with(BOOT_CREDENTIAL_PREFIX) =>
            {
                warn!(
                    server = client.base(),
                    "server's database unreachable: reading the role with the boot \
                    credential until it can be exchanged"
                );
                set.set_credential(&req.token);
                return Ok((set, Some(req)));
            }
            Err(e) if e.is_server_failure() => {
                warn!(error = %e, server = client.base(), "enrollment failed; trying the next server");
                set.advance(i);
                match round.failed(set.len(), e) {
                    None => {}
                    Some(RoundEnd::Retry) => {
                        let delay = backoff.next_delay();
                        warn!(
                            retry_ms = delay.as_millis() as u64,
                            "no server enrolled us, retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Some(RoundEnd::AllRefused(e)) => return Err(AgentError::EnrollRefused(e)),
                }
            }
            Err(e) => return Err(AgentError::EnrollRefused(e)),
        }
    }
}

/// Long-polls the role forever, from whichever server answers; sends each newer document. When the server in
/// use stops answering (connect error, timeout, 5xx, a certificate that is not its pin) the next one is asked
/// at once; once every server failed, it backs off and goes round again. A refusal ends the agent
/// (`fatal_on_refusal`) or, for a boot credential, only the polling: the node keeps the role it has while the
/// credential's exchange goes on.
async fn poll_roles(
    servers: ServerSet,
    mut after: u64,
    wait: Duration,
    mut backoff: Backoff,
    tx: mpsc::Sender<Event>,
    fatal_on_refusal: bool,
) {
    let mut was_down = false;
    let mut round = Round::default();
    let mut last_ok: Option<usize> = None;
    loop {
        let i = servers.current();
        let client = &servers.clients[i];
        match client.poll_role(after, wait).await {
            Ok(role) => {
                if was_down || last_ok != Some(i) {
                    info!(
                        after,
                        server = client.base(),
                        "polling the role from this server"
                    );
                    was_down = false;
                }
                last_ok = Some(i);
                round = Round::default();
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
            Err(e) if e.is_server_failure() => {
                warn!(error = %e, server = client.base(), "server not answering; trying the next one");
                servers.advance(i);
                match round.failed(servers.len(), e) {
                    None => {}
                    Some(RoundEnd::Retry) => {
                        let delay = backoff.next_delay();
                        if !was_down {
                            warn!("no server reachable; keeping the current role");
                            was_down = true;
                        }
                        debug!(retry_ms = delay.as_millis() as u64, "role poll backoff");
                        tokio::time::sleep(delay).await;
                    }
                    Some(RoundEnd::AllRefused(e)) => {
                        let _ = tx
                            .send(Event::Fatal(AgentError::CredentialRefused(e)))
                            .await;
                        return;
                    }
                }
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

/// Posts the newest report to the server in use, else to the next that takes it; while none does, retries
/// with backoff and sends only the latest. Each report carries every health transition still waiting in
/// `outbox`; they leave it once a server took them. A report goes as a delta against the one the server
/// acknowledged when it can (`super::delta`), else whole; a server that does not hold the delta's base gets
/// the full report at once.
async fn send_reports(
    servers: ServerSet,
    mut rx: watch::Receiver<Option<AgentReport>>,
    outbox: HealthOutbox,
    mut backoff: Backoff,
) {
    let mut deltas = ReportDeltas::default();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let mut tried = 0;
        loop {
            let Some(mut report) = rx.borrow_and_update().clone() else {
                break;
            };
            let i = servers.current();
            let client = &servers.clients[i];
            // Here, not in the reconcile loop: resolving the server's name may be slow.
            report.address = local_address_towards(client.base()).await;
            let (events, mark) = outbox.waiting();
            outgoing(&mut report, events);
            let now = std::time::Instant::now();
            let sent = match deltas.next(&report, now) {
                Outgoing::Delta(delta) => match client.report_delta(&delta).await {
                    Ok(DeltaAnswer::Merged { seq }) => {
                        deltas.delta_accepted(&delta, seq);
                        debug!(seq, services = delta.services.len(), "report delta sent");
                        Ok(())
                    }
                    Ok(DeltaAnswer::SendFull) => {
                        info!(server = client.base(), "the server asks for a full report");
                        deltas.send_full();
                        // At once, not after a backoff: nothing failed.
                        continue;
                    }
                    Err(e) => Err(e),
                },
                Outgoing::Full => {
                    fit_size(&mut report);
                    match client.report_full(&report).await {
                        Ok(seq) => {
                            debug!(seq, "full report sent");
                            deltas.full_accepted(report.clone(), seq, now);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match sent {
                Ok(()) => {
                    outbox.sent(mark);
                    debug!(
                        generation = report.applied_generation,
                        server = client.base(),
                        "report sent"
                    );
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    debug!(error = %e, server = client.base(), "report failed");
                    tried += 1;
                    if e.is_server_failure() {
                        servers.advance(i);
                    }
                    if tried < servers.len() && e.is_server_failure() {
                        continue;
                    }
                    tried = 0;
                    let delay = backoff.next_delay();
                    debug!(retry_ms = delay.as_millis() as u64, "report backoff");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// Shortest and longest heartbeat interval the agent accepts from a server.
const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
const HEARTBEAT_MAX: Duration = Duration::from_secs(60);
/// Interval before the first answer says otherwise (the server's default).
const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(1);

/// Says "alive" to the server in use every interval the server asks for (1 s by default), so the server knows
/// within seconds when this node goes silent (`fleet::liveness` on the server). Each beat waits at most one
/// interval: a late answer is as good as none. A beat that fails moves the next one (and the reports) to the
/// next server; a refusal (a server that predates heartbeats answers 404) slows the beats down to the longest
/// interval instead of ending anything.
async fn send_heartbeats(servers: ServerSet) {
    let mut interval = HEARTBEAT_DEFAULT;
    let mut failing = false;
    loop {
        let started = tokio::time::Instant::now();
        let i = servers.current();
        let client = &servers.clients[i];
        match client.heartbeat(interval.max(Duration::from_secs(1))).await {
            Ok(answer) => {
                let asked =
                    Duration::from_millis(answer.interval_ms).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX);
                if asked != interval {
                    debug!(
                        interval_ms = asked.as_millis() as u64,
                        "heartbeat interval set by the server"
                    );
                    interval = asked;
                }
                if failing {
                    info!(server = client.base(), "heartbeats answered again");
                    failing = false;
                }
            }
            Err(e) if e.is_server_failure() => {
                if !failing {
                    warn!(error = %e, server = client.base(), "heartbeat failed; trying the next server");
                    failing = true;
                }
                servers.advance(i);
            }
            Err(e) => {
                debug!(error = %e, server = client.base(), "heartbeat refused");
                interval = HEARTBEAT_MAX;
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Completes a report for the wire: the waiting health transitions, then everything cut to the bounds the
/// server enforces (`lbfleet_proto::bounds`), so a busy or failing node is never refused: many errors become a
/// count, long or multi-line texts are cut.
fn outgoing(report: &mut AgentReport, health_events: Vec<lbfleet_proto::HealthTransition>) {
    report.health_events = health_events;
    lbfleet_proto::bounds::fit_report(report);
}

/// A full report over the server's body bound loses row texts, then rows (`fit_report_size` serialises the
/// report to know, so only full reports pay for it; a delta carries at most half the rows of one).
fn fit_size(report: &mut AgentReport) {
    // A little under the bound: leave room.
    let max = lbfleet_proto::bounds::MAX_REPORT_BYTES - 64 * 1024;
    if lbfleet_proto::bounds::fit_report_size(report, max) {
        warn!("report over the body bound: row texts shortened or rows left out");
    }
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
            machine: config.machine.clone(),
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
    let (mut servers, mut pending) = match connect(&config, &state).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Event::Fatal(e)).await;
            return;
        }
    };
    let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    loop {
        let _reporter = super::AbortOnDrop(tokio::spawn(send_reports(
            servers.clone(),
            report_rx.clone(),
            outbox.clone(),
            backoff.clone(),
        )));
        let _heartbeats = super::AbortOnDrop(tokio::spawn(send_heartbeats(servers.clone())));
        // Ask from 0: the server answers at once with the current document, which may be newer than the saved
        // one or (after a server-side restore) the same.
        let Some(req) = pending.take() else {
            poll_roles(servers, 0, config.poll_wait, backoff, tx, true).await;
            return;
        };
        // Booted while the database was down: read the role with the boot credential, and trade the credential
        // for a node credential as soon as a server can (then start over with it).
        let poller = super::AbortOnDrop(tokio::spawn(poll_roles(
            servers.clone(),
            0,
            config.poll_wait,
            backoff.clone(),
            tx.clone(),
            false,
        )));
        match exchange(&mut servers, &req, &state, backoff.clone()).await {
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

/// Retries the enrollment with a boot credential, server after server (backing off while they answer 503 or
/// cannot be reached), until one gives a node credential, saved and kept in `servers`.
async fn exchange(
    servers: &mut ServerSet,
    req: &EnrollRequest,
    state: &StateDir,
    mut backoff: Backoff,
) -> Result<(), AgentError> {
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let i = servers.current();
        let mut client = servers.clients[i].clone();
        match client.enroll(req).await {
            Ok(enrolled) => {
                info!(node = %enrolled.node, node_id = enrolled.node_id, server = client.base(),
                    "boot credential exchanged: enrolled");
                state.save_credential(&enrolled.credential)?;
                servers.set_credential(&enrolled.credential);
                return Ok(());
            }
            Err(e) if e.is_server_failure() => {
                debug!(error = %e, server = client.base(), "boot credential exchange: retrying");
                servers.advance(i);
            }
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
    fn servers_pair_with_their_pins() {
        let a = format!("sha256:{}", "ab".repeat(32));
        let b = format!("sha256:{}", "cd".repeat(32));
        let list = Endpoint::list(
            "https://198.18.0.1:8443,https://198.18.0.2:8443,http://198.18.0.3",
            Some(&format!("{a},{b},none")),
        )
        .unwrap();
        assert_eq!(
            list,
            [
                Endpoint::new("https://198.18.0.1:8443", Some(a.parse().unwrap())),
                Endpoint::new("https://198.18.0.2:8443", Some(b.parse().unwrap())),
                Endpoint::new("http://198.18.0.3", None),
            ]
        );
        // The single form of older images.
        assert_eq!(
            Endpoint::list("https://198.18.0.1", Some(&a)).unwrap(),
            [Endpoint::new(
                "https://198.18.0.1",
                Some(a.parse().unwrap())
            )]
        );
        assert_eq!(
            Endpoint::list("http://x", None).unwrap(),
            [Endpoint::new("http://x", None)]
        );
        assert_eq!(
            Endpoint::list("http://x,http://y", Some(&a)),
            Err(EndpointsError::NotAligned {
                servers: 2,
                pins: 1
            })
        );
        assert!(matches!(
            Endpoint::list("http://x,", None),
            Err(EndpointsError::EmptyServer(_))
        ));
        assert!(matches!(
            Endpoint::list("http://x", Some("sha256:00")),
            Err(EndpointsError::BadPin(_))
        ));
    }

    #[test]
    fn a_round_ends_when_every_server_failed_and_says_whether_all_refused() {
        let mismatch = || ClientError::CertificateMismatch {
            expected: crate::pin::CertPin::of(b"a"),
            got: crate::pin::CertPin::of(b"b"),
        };
        let down = || ClientError::NotEnrolled;
        let mut r = Round::default();
        assert!(r.failed(2, mismatch()).is_none());
        assert!(matches!(
            r.failed(2, mismatch()),
            Some(RoundEnd::AllRefused(_))
        ));
        // One server refused, the other is merely down: retry later.
        assert!(r.failed(2, mismatch()).is_none());
        assert!(matches!(r.failed(2, down()), Some(RoundEnd::Retry)));
        // One server: each failure ends a round.
        assert!(matches!(r.failed(1, down()), Some(RoundEnd::Retry)));
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
