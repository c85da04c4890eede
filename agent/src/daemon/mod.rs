//! The agent's daemon: one loop that consumes typed [`Event`]s. Each subsystem is a task that sends events
//! (the role source in `server` or `file`, the resync ticker, the VRRP instance in `crate::vrrp::tasks`, and
//! the health checks' change notifier); the loop owns the reconciler, the health checks and the report, so
//! adding a subsystem means adding an `Event` variant and its arm in [`Daemon::handle`], never a new branch of
//! a string match. The health quorum's VRRP priority goes to the instance through [`VrrpSupervisor`].

pub mod delta;
pub mod file;
pub mod server;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lbfleet_proto::{AgentReport, HealthTransition, RoleDocument, VrrpState, VrrpTransition};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::client::ClientError;
use crate::health::{HealthChecks, HealthConfig, PrioritySink, PrioritySinks};
use crate::ipvs::codec::{SyncDaemon, SyncState};
use crate::ipvs::IpvsSocket;
use crate::reboot::{self, HandOver, Machine, RebootError, RebootWatch};
use crate::reconcile::{self, Applier, ApplyError, ReconcileOutcome, Reconciler};
use crate::state::{StateDir, StateError};
use crate::status;
use crate::vrrp::notice::VrrpNotice;
pub use crate::vrrp::notice::{now_ms, VrrpStatus};
use crate::vrrp::tasks::VrrpSupervisor;

pub use file::apply_file;
pub use server::{run, Backoff, Endpoint, RunConfig};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("enrollment refused: {0}")]
    EnrollRefused(ClientError),
    #[error("the server refused the node credential: {0}")]
    CredentialRefused(ClientError),
    #[error("no enrollment token and no saved credential: pass --token or lbfleet.token= on the kernel command line")]
    NoCredential,
    #[error("no server to talk to: pass --server or lbfleet.server= on the kernel command line")]
    NoServer,
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

/// Where a role document came from; decides how the first pass learns the kernel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleOrigin {
    /// The role saved in the state directory, served before the server answers.
    Saved,
    /// The server's long-poll.
    Server,
    /// The standalone role file.
    File,
}

/// Everything the daemon loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A role document to apply (server poll, saved role, role file).
    NewRole {
        role: Box<RoleDocument>,
        origin: RoleOrigin,
    },
    /// Periodic: re-read the kernel and repair out-of-band changes.
    Resync,
    /// A failed pass's retry timer expired.
    Retry,
    /// Fast passes are done and no newer role is waiting: read the counters and report.
    ReportDue,
    /// The VRRP instance changed state (a `VrrpNotice` from `crate::vrrp::tasks`).
    VrrpTransition {
        status: VrrpStatus,
        transition: VrrpTransition,
    },
    /// The master this node follows changed without a state change (a Backup heard a new master).
    VrrpMasterChanged(VrrpStatus),
    /// A real server's health changed (sent by the health checks' notifier): re-read the results, rebuild
    /// the desired state if they changed, report the transitions.
    HealthChange,
    /// A role source hit a refusal retrying cannot fix.
    Fatal(AgentError),
    /// Stop: release the VIPs, stop the sync daemon, return.
    Shutdown,
}

impl From<VrrpNotice> for Event {
    fn from(notice: VrrpNotice) -> Event {
        match notice {
            VrrpNotice::Transition { status, transition } => {
                Event::VrrpTransition { status, transition }
            }
            VrrpNotice::MasterChanged(status) => Event::VrrpMasterChanged(status),
        }
    }
}

/// Settings of one daemon loop.
#[derive(Debug)]
pub(crate) struct LoopConfig {
    pub state_dir: PathBuf,
    pub resync: Duration,
    pub image_version: Option<String>,
    /// Save each new server role in the state directory (server mode).
    pub save_roles: bool,
    /// Where reports go (server mode); `None` keeps them local (the status file only).
    pub report: Option<watch::Sender<Option<AgentReport>>>,
    /// Standalone mode: every applying pass logs "role file applied" (scripts wait for that line).
    pub log_file_passes: bool,
    /// Health-check settings (concurrency, script directory).
    pub health: HealthConfig,
    /// Also told the quorum's VRRP priority (besides the VRRP instance): for tests and embedders.
    pub priority_observer: Option<Arc<dyn PrioritySink>>,
    /// Health transitions waiting for the reporter (server mode).
    pub health_outbox: Option<HealthOutbox>,
    /// Remote reboot (server mode): the machine to reboot when the role's reboot generation rises; `None`
    /// ignores it.
    pub machine: Option<Arc<dyn Machine>>,
}

/// Most health transitions waiting for the server; the oldest are dropped first (the server refuses more
/// per report).
pub const HEALTH_OUTBOX_MAX: usize = 1000;

/// Health transitions on their way to the server. The daemon adds them as they happen; the reporter puts
/// all waiting ones into each report it sends and removes them once the server accepted it, so none is lost
/// when reports replace each other while the server is slow or down.
#[derive(Debug, Clone, Default)]
pub struct HealthOutbox(Arc<Mutex<OutboxInner>>);

#[derive(Debug, Default)]
struct OutboxInner {
    /// Sequence number of the front entry.
    first_seq: u64,
    waiting: VecDeque<HealthTransition>,
}

impl HealthOutbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, transitions: impl IntoIterator<Item = HealthTransition>) {
        let mut o = self.lock();
        for t in transitions {
            if o.waiting.len() >= HEALTH_OUTBOX_MAX {
                o.waiting.pop_front();
                o.first_seq += 1;
            }
            o.waiting.push_back(t);
        }
    }

    /// Everything waiting, and the mark to pass to [`HealthOutbox::sent`] once the server has it.
    pub fn waiting(&self) -> (Vec<HealthTransition>, u64) {
        let o = self.lock();
        (
            o.waiting.iter().cloned().collect(),
            o.first_seq + o.waiting.len() as u64,
        )
    }

    /// Removes what was sent up to `mark` (entries added since stay).
    pub fn sent(&self, mark: u64) {
        let mut o = self.lock();
        let n = mark.saturating_sub(o.first_seq).min(o.waiting.len() as u64);
        o.waiting.drain(..n as usize);
        o.first_seq += n;
    }
}

/// Aborts a task when dropped (a subsystem's task lives as long as its owner).
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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

/// First delay before a failed pass is retried.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Transitions kept for the next report and for `status` (older ones are dropped).
const TRANSITIONS_KEPT: usize = 32;

/// The loop's state: what the kernel should hold, what was applied, what the next report says.
struct Daemon {
    config: LoopConfig,
    state: StateDir,
    started: Instant,
    reconciler: Option<Reconciler>,
    /// The probes of the current role, their results and the quorum.
    checks: HealthChecks,
    role: Option<RoleDocument>,
    desired: reconcile::IpvsState,
    role_errors: Vec<String>,
    applied_generation: u64,
    /// A pass that failed (an operation refused, the table unreadable) is retried soon, with backoff capped
    /// at the resync interval, instead of waiting for the next resync.
    retry_at: Option<tokio::time::Instant>,
    retry_delay: Duration,
    /// After a role change the report needs the kernel's counters, which means reading the whole table (one
    /// dump per service). That read waits until no newer role is queued, so a burst of role changes is applied
    /// back to back and reported once.
    report_due: bool,
    pending_errors: Vec<String>,
    last_outcome: Option<ReconcileOutcome>,
    last_services: Vec<lbfleet_proto::ServiceReport>,
    vrrp: Option<VrrpStatus>,
    /// The most recent transitions, oldest first (reports and `status`).
    transitions: Vec<VrrpTransition>,
    /// The VRRP instance of the current role (VIPs, GARP).
    vrrp_task: VrrpSupervisor,
    /// The connection-sync daemon last put in place.
    sync_daemon: Option<SyncDaemon>,
    /// Handed to subsystems so they can send events.
    events_tx: mpsc::Sender<Event>,
    /// The next pass applies the role saved before a restart (logged as such).
    saved_pass: bool,
    /// Turns the health checks' change notifications into `Event::HealthChange`.
    _health_notifier: AbortOnDrop<()>,
    /// Whether a role's reboot generation asks for a reboot.
    reboot_watch: RebootWatch,
    /// Handed over and asked the machine to reboot: the loop ends.
    rebooting: bool,
}

/// Runs the daemon loop until `shutdown` or a fatal event. Returns the last pass's outcome.
pub(crate) async fn run_loop(
    config: LoopConfig,
    applier: Box<dyn Applier>,
    events_tx: mpsc::Sender<Event>,
    mut events: mpsc::Receiver<Event>,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<ReconcileOutcome>, AgentError> {
    tokio::pin!(shutdown);
    let vrrp_task = VrrpSupervisor::new();
    let mut sinks: Vec<Arc<dyn PrioritySink>> = vec![Arc::new(vrrp_task.quorum_priority())];
    sinks.extend(config.priority_observer.clone());
    let checks = HealthChecks::new(config.health.clone(), Some(Arc::new(PrioritySinks(sinks))));
    let health_notifier = AbortOnDrop(tokio::spawn(notify_health_changes(
        checks.monitor().subscribe(),
        events_tx.clone(),
    )));
    let mut d = Daemon {
        state: StateDir::new(&config.state_dir),
        started: Instant::now(),
        reconciler: Some(Reconciler::new(applier)),
        checks,
        role: None,
        desired: Default::default(),
        role_errors: Vec::new(),
        applied_generation: 0,
        retry_at: None,
        retry_delay: RETRY_INITIAL,
        report_due: false,
        pending_errors: Vec::new(),
        last_outcome: None,
        last_services: Vec::new(),
        vrrp: None,
        transitions: Vec::new(),
        vrrp_task,
        sync_daemon: None,
        events_tx,
        saved_pass: false,
        _health_notifier: health_notifier,
        reboot_watch: RebootWatch::load(
            Some(config.state_dir.as_path()),
            RebootWatch::current_boot_id(),
        ),
        rebooting: false,
        config,
    };
    let resync_every = d.config.resync;
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = next_event(
            d.report_due,
            d.retry_at,
            &mut events,
            &mut resync,
            shutdown.as_mut(),
        )
        .await;
        match event {
            Event::Shutdown => break,
            Event::Fatal(e) => {
                d.shutdown().await;
                return Err(e);
            }
            event => {
                if let Err(e) = d.handle(event).await {
                    d.shutdown().await;
                    return Err(e);
                }
                if d.rebooting {
                    break;
                }
            }
        }
    }
    d.shutdown().await;
    Ok(d.last_outcome)
}

/// The health checks' notifier: one `Event::HealthChange` per burst of state changes (the watch coalesces
/// changes that happen while the loop is busy).
async fn notify_health_changes(mut changes: watch::Receiver<u64>, events: mpsc::Sender<Event>) {
    while changes.changed().await.is_ok() {
        if events.send(Event::HealthChange).await.is_err() {
            return;
        }
    }
}

/// Waits for the next event from any source. Roles and subsystem events come first; a due report waits until
/// none is queued.
async fn next_event(
    report_due: bool,
    retry_at: Option<tokio::time::Instant>,
    events: &mut mpsc::Receiver<Event>,
    resync: &mut tokio::time::Interval,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Event {
    tokio::select! {
            biased;
            _ = shutdown => Event::Shutdown,
            ev = events.recv() => ev.unwrap_or(Event::Shutdown),
            _ = std::future::ready(()), if report_due => Event::ReportDue,
            _ = resync.tick() => Event::Resync,
            _ = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => Event::Retry,
    }
}

impl Daemon {
    async fn handle(&mut self, event: Event) -> Result<(), AgentError> {
        let is_resync = matches!(event, Event::Resync);
        let pass = match event {
            Event::NewRole { role, origin } => {
                if let Some(machine) = self.config.machine.clone() {
                    let g = role.reboot_generation;
                    if self.reboot_watch.asks_reboot(g) {
                        info!(
                            reboot_generation = g,
                            "the server asks for a reboot: handing over first"
                        );
                        match self.hand_over_and_reboot(machine.as_ref()).await {
                            Ok(()) => {
                                self.rebooting = true;
                                return Ok(());
                            }
                            Err(e) => {
                                // Not retried in a loop: the role is applied again (VRRP restarts).
                                warn!(error = %e, reboot_generation = g, "cannot reboot");
                                self.reboot_watch.set_baseline(g);
                                self.pending_errors.push(e.to_string());
                            }
                        }
                    }
                }
                let first = self.role.is_none();
                info!(
                    generation = role.generation,
                    services = role.services.len(),
                    ?origin,
                    "new role"
                );
                if origin == RoleOrigin::Server && self.config.save_roles {
                    if let Err(e) = self.state.save_role(&role) {
                        warn!(error = %e, "cannot save the role");
                    }
                }
                self.set_role(*role, true);
                self.saved_pass = origin == RoleOrigin::Saved;
                let vrrp = self.role.as_ref().and_then(|r| r.vrrp.clone());
                if vrrp.is_none() && self.vrrp.is_some() {
                    self.vrrp = None;
                }
                self.vrrp_task.apply(vrrp.as_ref(), &self.events_tx).await;
                if vrrp.is_none() {
                    self.set_sync_daemon(None).await;
                }
                if first || origin == RoleOrigin::Saved {
                    Pass::Full
                } else {
                    Pass::Fast
                }
            }
            Event::HealthChange => {
                let Some(role) = self.role.take() else {
                    return Ok(());
                };
                if self.checks.refresh(&role) {
                    // Health changed: rebuild without reuse (reused entries carry the old weights).
                    self.rebuild(role, false);
                    Pass::Fast
                } else {
                    // Nothing for the kernel (a first success, say): the transition goes out in a report.
                    self.role = Some(role);
                    self.report_due = true;
                    return Ok(());
                }
            }
            Event::VrrpTransition { status, transition } => {
                info!(
                    from = %transition.from,
                    to = %transition.to,
                    reason = %transition.reason,
                    master = ?status.master,
                    "VRRP transition"
                );
                let want = self
                    .role
                    .as_ref()
                    .and_then(|r| r.vrrp.as_ref())
                    .and_then(|v| {
                        let state = match status.state {
                            VrrpState::Master => SyncState::Master,
                            VrrpState::Backup => SyncState::Backup,
                            _ => return None,
                        };
                        v.conn_sync.as_ref().map(|c| SyncDaemon {
                            state,
                            interface: c.interface.clone(),
                            sync_id: c.sync_id,
                        })
                    });
                self.vrrp = Some(status);
                self.transitions.push(transition);
                self.set_sync_daemon(want).await;
                let excess = self.transitions.len().saturating_sub(TRANSITIONS_KEPT);
                self.transitions.drain(..excess);
                self.publish(self.last_services.clone());
                return Ok(());
            }
            Event::VrrpMasterChanged(status) => {
                info!(master = ?status.master, state = %status.state, "VRRP master");
                self.vrrp = Some(status);
                self.publish(self.last_services.clone());
                return Ok(());
            }
            Event::ReportDue => Pass::Read,
            Event::Resync | Event::Retry => Pass::Full,
            Event::Shutdown | Event::Fatal(_) => return Ok(()),
        };
        if pass != Pass::Read {
            self.retry_at = None;
        }
        if self.role.is_none() {
            self.report_due = false;
            return Ok(());
        }
        self.pass(pass, is_resync).await
    }

    /// Remote reboot: the hand-over in `reboot::steps` order (VRRP stopped gracefully, priority 0 when
    /// MASTER, VIPs removed; the sync daemon stopped), then the machine reboots.
    async fn hand_over_and_reboot(&mut self, machine: &dyn Machine) -> Result<(), RebootError> {
        let was = self
            .vrrp_task
            .config()
            .map(|_| self.vrrp.as_ref().map_or(VrrpState::Init, |v| v.state));
        for step in reboot::steps(was) {
            match step {
                reboot::Step::StopVrrp { .. } => self.vrrp_task.stop().await,
                reboot::Step::StopSync => self.set_sync_daemon(None).await,
                reboot::Step::Reboot => {
                    let handed_over = HandOver {
                        vrrp_was: was,
                        vrrp_stopped: self.vrrp_task.config().is_none(),
                        sync_stopped: self.sync_daemon.is_none(),
                    };
                    info!(?handed_over, "handed over: rebooting");
                    return machine.reboot(&handed_over);
                }
            }
        }
        Ok(())
    }

    /// Graceful stop: VRRP hands over (priority 0) and removes the VIPs; the sync daemon stops.
    async fn shutdown(&mut self) {
        self.vrrp_task.stop().await;
        self.set_sync_daemon(None).await;
    }

    /// Runs the kernel's IPVS connection-sync daemon as `want` says (none: stop ours). Only touches IPVS when
    /// a sync daemon is or was wanted, so VRRP alone never needs ip_vs.
    async fn set_sync_daemon(&mut self, want: Option<SyncDaemon>) {
        if want == self.sync_daemon {
            return;
        }
        let w = want.clone();
        let r = tokio::task::spawn_blocking(move || {
            IpvsSocket::open().and_then(|mut s| s.ensure_sync_daemon(w.as_ref()))
        })
        .await;
        match r {
            Ok(Ok(_)) => {
                info!(sync_daemon = ?want, "IPVS connection sync set");
                self.sync_daemon = want;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot set the IPVS connection sync daemon");
                self.pending_errors
                    .push(format!("cannot set the IPVS connection sync daemon: {e}"));
            }
            Err(e) => warn!(error = %e, "sync daemon task failed"),
        }
    }

    /// A new role: the health checks follow it first (probes added and removed, the quorum's priority
    /// re-evaluated and sent before the VRRP instance is reconfigured), then the desired state is built,
    /// reusing the previous one's unchanged services unless the health results changed with the role.
    fn set_role(&mut self, role: RoleDocument, reuse: bool) {
        let health_changed = self.checks.set_role(&role);
        self.rebuild(role, reuse && !health_changed);
    }

    /// Builds the desired state of `role` from the current health results.
    fn rebuild(&mut self, role: RoleDocument, reuse: bool) {
        let previous = if reuse {
            self.role.as_ref().map(|r| (r, &self.desired))
        } else {
            None
        };
        let (desired, errors) =
            reconcile::desired_state_reusing(&role, self.checks.results(), previous);
        for e in &errors {
            warn!(generation = role.generation, error = %e, "role entry skipped");
        }
        self.desired = desired;
        self.role_errors = errors;
        self.role = Some(role);
    }

    async fn pass(&mut self, pass: Pass, resync: bool) -> Result<(), AgentError> {
        let Some(reconciler) = self.reconciler.take() else {
            return Err(AgentError::Task("reconciler lost".into()));
        };
        let (rec, r) = reconcile_blocking(reconciler, self.desired.clone(), pass).await?;
        self.reconciler = Some(rec);
        let generation = self.role.as_ref().map_or(0, |r| r.generation);
        let services = match r {
            Ok(out) => {
                // Every pass, also the ones that change nothing (a test proves a resync ran from this line).
                debug!(
                    ?pass,
                    resync,
                    generation,
                    planned = out.planned,
                    "reconcile pass"
                );
                if std::mem::take(&mut self.saved_pass) {
                    info!(
                        generation,
                        planned = out.planned,
                        applied = out.applied,
                        failed = out.errors.len(),
                        "saved role applied"
                    );
                } else if out.planned > 0 {
                    info!(
                        ?pass,
                        generation,
                        planned = out.planned,
                        applied = out.applied,
                        failed = out.errors.len(),
                        "IPVS reconciled"
                    );
                }
                if resync && out.planned > 0 {
                    warn!(
                        generation,
                        repaired = out.applied,
                        "resync repaired out-of-band IPVS changes"
                    );
                    self.pending_errors.push(format!(
                        "resync repaired {} out-of-band IPVS change(s) ({} failed)",
                        out.applied,
                        out.errors.len()
                    ));
                }
                if pass != Pass::Read && self.config.log_file_passes {
                    info!(
                        generation,
                        planned = out.planned,
                        applied = out.applied,
                        failed = out.errors.len() + self.role_errors.len(),
                        "role file applied"
                    );
                }
                if pass != Pass::Read {
                    if out.converged() && self.role_errors.is_empty() {
                        self.applied_generation = generation;
                    }
                    if out.converged() {
                        self.retry_delay = RETRY_INITIAL;
                    } else {
                        self.arm_retry();
                    }
                }
                self.pending_errors.extend(out.errors.iter().cloned());
                let fast = pass == Pass::Fast;
                let services = status::service_reports(&out.table, &self.checks.snapshot());
                self.last_outcome = Some(out);
                if fast {
                    // Counters come from the read that follows once no newer role is waiting.
                    self.report_due = true;
                    return Ok(());
                }
                services
            }
            Err(e) => {
                self.arm_retry();
                warn!(error = %e, "cannot read the IPVS table");
                self.pending_errors
                    .push(format!("cannot read the IPVS table: {e}"));
                Vec::new()
            }
        };
        self.report_due = false;
        self.last_services = services.clone();
        self.publish(services);
        Ok(())
    }

    fn arm_retry(&mut self) {
        self.retry_at = Some(tokio::time::Instant::now() + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(self.config.resync.max(RETRY_INITIAL));
    }

    /// Builds the report: hands it to the reporter (server mode; it sends only the latest) and writes the
    /// status file `lbfleet-agent status` reads.
    fn publish(&mut self, services: Vec<lbfleet_proto::ServiceReport>) {
        let transitions = self.checks.take_transitions();
        if let Some(outbox) = &self.config.health_outbox {
            outbox.push(transitions);
        }
        let mut errors = std::mem::take(&mut self.pending_errors);
        errors.extend(self.role_errors.iter().cloned());
        let report = AgentReport {
            applied_generation: self.applied_generation,
            vrrp_state: self.vrrp.as_ref().map(|v| v.state),
            vrrp_master: self
                .vrrp
                .as_ref()
                .and_then(|v| v.master)
                .map(|m| m.to_string()),
            vrrp_transitions: self.transitions.clone(),
            vrrp_dropped: self.vrrp_task.drops().to_map(),
            services,
            errors,
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            image_version: self.config.image_version.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            // Filled in by the reporter.
            address: None,
            health_events: Vec::new(),
        };
        if let Err(e) = self.state.save_status(&report) {
            warn!(error = %e, "cannot write the status file");
        }
        if let Some(tx) = &self.config.report {
            // The reporter sends only the latest; transitions ride along until a newer report replaces it.
            let _ = tx.send(Some(report));
        }
    }
}
