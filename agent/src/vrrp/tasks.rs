//! The VRRP instance at work: one tokio task per role owns the raw socket (`socket`), the two RFC timers and
//! the VIPs, and drives the sans-IO [`Instance`]: every received advert and every timer expiry becomes an
//! [`Input`], every [`Action`] is carried out here (send the advert, add/remove the VIPs over rtnetlink, send
//! gratuitous ARP, restart a timer) and each transition goes to the daemon loop as [`Event::VrrpTransition`].
//! [`VrrpSupervisor`] starts, reconfigures and stops that task for the daemon. A role change that only changes
//! the priority keeps the instance and feeds it [`Input::SetPriority`], as does the health quorum through
//! [`QuorumPriority`] (the supervisor's `PrioritySink`).
//!
//! Two behaviours beyond the RFC: a graceful stop sends priority 0 and removes the VIPs before the task ends
//! (no VIP left behind), and an agent that starts while its VIPs are already on the interface (restarted while
//! MASTER) keeps them and keeps advertising at its priority until it hears another master or becomes master
//! again, so a quick restart moves no traffic.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_proto::{VrrpConfig, VrrpState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::garp::ArpSocket;
use super::socket::VrrpSocket;
use super::vips::{self, Resolved, SetupError};
use super::{
    decode_ip_packet, encode_ip_packet, Action, Advertisement, Auth, DropCounters, DropReason,
    Input, Instance, InstanceConfig, Ipv4Header, State, TransitionReason, Version, OWNER_PRIORITY,
    VRRP_MULTICAST_V4,
};
use crate::daemon::{now_ms, Event, VrrpStatus};
use crate::health::PrioritySink;
use crate::rtnl::RouteSocket;

/// How long a graceful stop may take before the task is abandoned.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Delay before a failed setup (missing interface or address) is tried again.
const SETUP_RETRY: Duration = Duration::from_secs(2);
const RECV_BUF: usize = 2048;

/// Adverts dropped: the decoder's and the state machine's reasons, and adverts from a source that is not
/// one of the configured unicast peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropStats {
    pub by_reason: DropCounters,
    pub not_a_peer: u64,
}

impl DropStats {
    /// Non-zero counters by name (`ttl`, `checksum`, ..., `not_a_peer`), for reports and `status`.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> = self
            .by_reason
            .nonzero()
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect();
        if self.not_a_peer > 0 {
            m.insert("not_a_peer".into(), self.not_a_peer);
        }
        m
    }
}

/// The priority the health quorum wants advertised (`None`: the role's own). The daemon hands it to the
/// health checks as their `PrioritySink`; the running instance turns each change into
/// [`Input::SetPriority`], and a new instance starts with it.
#[derive(Debug, Clone)]
pub struct QuorumPriority(Arc<watch::Sender<Option<u8>>>);

impl Default for QuorumPriority {
    fn default() -> Self {
        QuorumPriority(Arc::new(watch::channel(None).0))
    }
}

impl PrioritySink for QuorumPriority {
    fn set_priority(&self, priority: u8) {
        self.0.send_replace(Some(priority));
    }
}

/// What a new VRRP config means for the running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Nothing to do.
    Same,
    /// Only the priority differs: keep the instance (its state, its VIPs) and set the new priority.
    Priority(u8),
    /// Stop the running instance (if any) and start one for the new config (if any).
    Restart,
}

impl ConfigChange {
    pub fn between(running: Option<&VrrpConfig>, wanted: Option<&VrrpConfig>) -> ConfigChange {
        match (running, wanted) {
            (None, None) => ConfigChange::Same,
            (Some(r), Some(w)) if r == w => ConfigChange::Same,
            // The address owner (255) is a different kind of router (Master at once, ignores adverts): a change
            // to or from it restarts.
            (Some(r), Some(w))
                if r.priority != OWNER_PRIORITY
                    && w.priority != OWNER_PRIORITY
                    && VrrpConfig {
                        priority: w.priority,
                        ..r.clone()
                    } == *w =>
            {
                ConfigChange::Priority(w.priority)
            }
            _ => ConfigChange::Restart,
        }
    }
}

/// Starts, reconfigures and stops the VRRP task of the current role.
#[derive(Debug, Default)]
pub struct VrrpSupervisor {
    running: Option<Running>,
    drops: Arc<Mutex<DropStats>>,
    quorum: QuorumPriority,
}

#[derive(Debug)]
struct Running {
    config: VrrpConfig,
    stop: Option<oneshot::Sender<()>>,
    /// Completes when the instance's thread has finished (VIPs released).
    done: oneshot::Receiver<()>,
    /// The role's priority, changed in place by a priority-only role change.
    base_priority: watch::Sender<u8>,
}

impl VrrpSupervisor {
    pub fn new() -> VrrpSupervisor {
        VrrpSupervisor::default()
    }

    /// The sink the health quorum sends its priority to.
    pub fn quorum_priority(&self) -> QuorumPriority {
        self.quorum.clone()
    }

    /// Runs `config` (or nothing): an unchanged config keeps the running instance, one that changes only the
    /// priority keeps it too (`SetPriority`: no VIP moves, no state is lost), any other change stops it
    /// gracefully and starts the new one.
    pub async fn apply(&mut self, config: Option<&VrrpConfig>, events: &mpsc::Sender<Event>) {
        match ConfigChange::between(self.running.as_ref().map(|r| &r.config), config) {
            ConfigChange::Same => return,
            ConfigChange::Priority(priority) => {
                if let (Some(r), Some(c)) = (self.running.as_mut(), config) {
                    info!(
                        vrid = c.vrid,
                        from = r.config.priority,
                        to = priority,
                        "VRRP priority changed (instance kept)"
                    );
                    r.config = c.clone();
                    r.base_priority.send_replace(priority);
                    return;
                }
            }
            ConfigChange::Restart => {}
        }
        self.stop().await;
        if let Some(config) = config {
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done) = oneshot::channel();
            let (base_tx, base_rx) = watch::channel(config.priority);
            let priority = Priority {
                base: base_rx,
                quorum: self.quorum.0.subscribe(),
            };
            let (cfg, ev, drops) = (config.clone(), events.clone(), self.drops.clone());
            let vrid = config.vrid;
            // Its own thread, with a real-time priority when allowed: adverts must go out on time even when
            // the node's CPUs are saturated, or the backup takes over from a healthy master.
            let spawned = std::thread::Builder::new()
                .name(format!("vrrp-{vrid}"))
                .spawn(move || {
                    raise_to_realtime(vrid);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run_instance(cfg, ev, drops, priority, stop_rx)),
                        Err(e) => warn!(vrid, error = %e, "cannot start the VRRP runtime"),
                    }
                    let _ = done_tx.send(());
                });
            if let Err(e) = spawned {
                warn!(vrid, error = %e, "cannot start the VRRP thread");
                return;
            }
            info!(vrid = config.vrid, interface = %config.interface, priority = config.priority, "VRRP started");
            self.running = Some(Running {
                config: config.clone(),
                stop: Some(stop_tx),
                done,
                base_priority: base_tx,
            });
        }
    }

    /// Stops the instance gracefully: priority 0 advert, VIPs removed.
    pub async fn stop(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        if let Some(tx) = r.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut r.done).await {
            Ok(_) => info!(vrid = r.config.vrid, "VRRP stopped"),
            Err(_) => warn!(vrid = r.config.vrid, "VRRP did not stop in time"),
        }
    }

    /// Adverts dropped so far, by reason.
    pub fn drops(&self) -> DropStats {
        self.drops.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn config(&self) -> Option<&VrrpConfig> {
        self.running.as_ref().map(|r| &r.config)
    }
}

/// Real-time priority of the VRRP thread (SCHED_RR; busy user processes run at SCHED_OTHER below it).
const RT_PRIORITY: libc::c_int = 10;

/// Puts the calling thread in SCHED_RR, so a saturated CPU cannot delay adverts past Master_Down_Interval.
/// Without CAP_SYS_NICE it stays where it is (logged).
fn raise_to_realtime(vrid: u8) {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: `param` is a live, initialised sched_param; pid 0 is the calling thread on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc != 0 {
        warn!(vrid, error = %std::io::Error::last_os_error(), "VRRP thread keeps normal scheduling");
    } else {
        debug!(vrid, priority = RT_PRIORITY, "VRRP thread on SCHED_RR");
    }
}

fn reason_text(r: &TransitionReason) -> String {
    match r {
        TransitionReason::Startup => "startup".into(),
        TransitionReason::Owner => "address owner (priority 255)".into(),
        TransitionReason::MasterDown => "master down timer expired".into(),
        TransitionReason::MasterStopped => "master stopped (priority 0 advert)".into(),
        TransitionReason::HigherPriority { from, priority } => {
            format!("higher priority advert from {from} (priority {priority})")
        }
        TransitionReason::HigherAddress { from } => {
            format!("same priority advert from higher address {from}")
        }
        TransitionReason::Shutdown => "shutdown".into(),
    }
}

/// The instance's config from the role's VRRP settings and the resolved interface.
pub fn instance_config(config: &VrrpConfig, r: &Resolved) -> Result<InstanceConfig, SetupError> {
    Ok(InstanceConfig {
        version: if config.version == 2 {
            Version::V2
        } else {
            Version::V3
        },
        vrid: config.vrid,
        priority: config.priority,
        advert_interval: Duration::from_millis(u64::from(config.advert_interval_ms)),
        preempt: config.preempt,
        preempt_delay: Duration::from_millis(u64::from(config.preempt_delay_ms)),
        accept: false,
        primary_address: r.primary,
        vips: r.vips.iter().map(|v| v.address.address).collect(),
        auth: Auth::NONE,
    })
}

/// The priority an instance should run at: the quorum's when it set one, else the role's.
#[derive(Debug)]
struct Priority {
    base: watch::Receiver<u8>,
    quorum: watch::Receiver<Option<u8>>,
}

impl Priority {
    fn wanted(&self) -> u8 {
        (*self.quorum.borrow()).unwrap_or(*self.base.borrow())
    }

    /// Completes when either changed (marking both seen); pending forever once both senders are gone.
    async fn changed(&mut self) {
        let (base, quorum) = (&mut self.base, &mut self.quorum);
        let mut base_open = true;
        let mut quorum_open = true;
        loop {
            tokio::select! {
                r = base.changed(), if base_open => match r {
                    Ok(()) => break,
                    Err(_) => base_open = false,
                },
                r = quorum.changed(), if quorum_open => match r {
                    Ok(()) => break,
                    Err(_) => quorum_open = false,
                },
                else => std::future::pending::<()>().await,
            }
        }
        base.borrow_and_update();
        quorum.borrow_and_update();
    }
}

/// Runs one instance until `stop` (retrying setup while the interface or its address is missing).
async fn run_instance(
    config: VrrpConfig,
    events: mpsc::Sender<Event>,
    drops: Arc<Mutex<DropStats>>,
    mut priority: Priority,
    mut stop: oneshot::Receiver<()>,
) {
    let mut last_fault: Option<String> = None;
    loop {
        match Worker::setup(&config, &events, &drops) {
            Ok(mut worker) => {
                // Before Startup: a node below quorum must not start (or resume) at the role's priority.
                priority.base.borrow_and_update();
                priority.quorum.borrow_and_update();
                let wanted = priority.wanted();
                if wanted != worker.instance.priority() {
                    worker
                        .instance
                        .handle(Input::SetPriority(wanted), std::time::Instant::now());
                }
                worker.priority = Some(priority);
                worker.run(stop).await;
                return;
            }
            Err(e) => {
                let text = e.to_string();
                if last_fault.as_deref() != Some(text.as_str()) {
                    warn!(vrid = config.vrid, error = %text, "VRRP cannot start; retrying");
                    let _ = events
                        .send(Event::VrrpTransition {
                            status: VrrpStatus {
                                state: VrrpState::Fault,
                                master: None,
                            },
                            transition: lbfleet_proto::VrrpTransition {
                                from: VrrpState::Init,
                                to: VrrpState::Fault,
                                reason: text.clone(),
                                at_ms: now_ms(),
                            },
                        })
                        .await;
                    last_fault = Some(text);
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(SETUP_RETRY) => {}
                }
            }
        }
    }
}

/// The running instance and everything it owns.
struct Worker {
    vrid: u8,
    instance: Instance,
    socket: VrrpSocket,
    route: RouteSocket,
    resolved: Resolved,
    garp: lbfleet_proto::GarpSpec,
    events: mpsc::Sender<Event>,
    drops: Arc<Mutex<DropStats>>,
    master_down_at: Option<Instant>,
    advert_at: Option<Instant>,
    garp_refresh_at: Option<Instant>,
    garp_task: Option<tokio::task::JoinHandle<()>>,
    /// The VIPs were on the interface when this instance started and no other master was heard yet.
    resumed: bool,
    resume_advert_at: Option<Instant>,
    ip_id: u16,
    /// The master last reported to the daemon.
    reported_master: Option<Ipv4Addr>,
    /// Where priority changes come from (role and quorum).
    priority: Option<Priority>,
}

impl Worker {
    fn setup(
        config: &VrrpConfig,
        events: &mpsc::Sender<Event>,
        drops: &Arc<Mutex<DropStats>>,
    ) -> Result<Worker, SetupError> {
        let mut route = RouteSocket::open()?;
        let resolved = vips::resolve(&mut route, config)?;
        let instance = Instance::new(instance_config(config, &resolved)?)?;
        let socket = VrrpSocket::open(
            &resolved.link.name,
            resolved.link.index,
            resolved.peers.is_empty(),
        )?;
        let resumed = vips::all_present(&mut route, &resolved.vips)?;
        Ok(Worker {
            vrid: config.vrid,
            instance,
            socket,
            route,
            garp: config.garp,
            events: events.clone(),
            drops: drops.clone(),
            master_down_at: None,
            advert_at: None,
            garp_refresh_at: None,
            garp_task: None,
            resumed,
            resume_advert_at: resumed.then(Instant::now),
            resolved,
            ip_id: 0,
            reported_master: None,
            priority: None,
        })
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        if self.resumed {
            info!(
                vrid = self.vrid,
                "VIPs already present: resuming as the master they belong to"
            );
        }
        let actions = self
            .instance
            .handle(Input::Startup, std::time::Instant::now());
        self.execute(actions).await;
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let input = tokio::select! {
                biased;
                _ = &mut stop => Input::Shutdown,
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => match self.received(&buf[..n]) {
                        Some(input) => input,
                        None => continue,
                    },
                    Err(e) => {
                        warn!(vrid = self.vrid, error = %e, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = sleep_until(self.master_down_at) => {
                    self.master_down_at = None;
                    Input::MasterDownTimerExpired
                }
                _ = sleep_until(self.advert_at) => {
                    self.advert_at = None;
                    Input::AdvertTimerExpired
                }
                _ = sleep_until(self.resume_advert_at) => {
                    self.resume_advert().await;
                    continue;
                }
                _ = sleep_until(self.garp_refresh_at) => {
                    self.start_garp();
                    continue;
                }
                Some(p) = priority_changed(self.priority.as_mut()) => {
                    info!(vrid = self.vrid, from = self.instance.priority(), to = p, "VRRP priority set");
                    Input::SetPriority(p)
                }
            };
            let shutdown = input == Input::Shutdown;
            let was_master_known = self.instance.master();
            // Another router advertising a lower priority while we are Master (it took over while our adverts
            // were late, or its link came back): it yields on our next advert, but the clients' ARP caches
            // point at it. Answer at once and announce the VIPs again, as keepalived does.
            let lower = match &input {
                Input::AdvertReceived { from, advert } => {
                    self.instance.state() == State::Master
                        && *from != self.resolved.primary
                        && advert.priority != 0
                        && advert.priority < self.instance.priority()
                }
                _ => false,
            };
            let actions = self.instance.handle(input, std::time::Instant::now());
            let accepted = !actions.iter().any(|a| matches!(a, Action::Dropped(_)));
            self.execute(actions).await;
            if lower && accepted && self.instance.state() == State::Master {
                info!(
                    vrid = self.vrid,
                    "a lower-priority router claims master: re-asserting"
                );
                let advert = self.instance.advert(self.instance.priority());
                self.send_advert(&advert).await;
                self.start_garp();
            }
            if self.resumed && self.instance.state() == State::Backup {
                if let Some(m) = self.instance.master() {
                    if m != self.resolved.primary && was_master_known != Some(m) {
                        // Another router is master: the VIPs we kept from before the restart are not ours.
                        info!(vrid = self.vrid, master = %m, "another master is running: releasing the kept VIPs");
                        self.release_resumed();
                    }
                }
            }
            if shutdown {
                if self.resumed {
                    self.release_resumed();
                }
                return;
            }
        }
    }

    fn release_resumed(&mut self) {
        self.resumed = false;
        self.resume_advert_at = None;
        if let Err(e) = vips::remove_all(&mut self.route, &self.resolved.vips) {
            warn!(vrid = self.vrid, error = %e, "cannot remove the VIPs");
        }
    }

    /// While resuming: advertise at the configured priority so the peers keep following this node.
    async fn resume_advert(&mut self) {
        let advert = self.instance.advert(self.instance.priority());
        self.send_advert(&advert).await;
        self.resume_advert_at = Some(Instant::now() + self.instance.config().advert_interval);
    }

    /// Decodes a received packet; drops (and counts) what is not a valid advert for us.
    fn received(&mut self, bytes: &[u8]) -> Option<Input> {
        match decode_ip_packet(bytes) {
            Ok((header, advert)) => {
                if !self.resolved.peers.is_empty() && !self.resolved.peers.contains(&header.src) {
                    if let Ok(mut d) = self.drops.lock() {
                        d.not_a_peer = d.not_a_peer.saturating_add(1);
                    }
                    debug!(vrid = self.vrid, from = %header.src, "VRRP advert from a non-peer dropped");
                    return None;
                }
                Some(Input::AdvertReceived {
                    from: header.src,
                    advert,
                })
            }
            Err(e) => {
                let src = bytes
                    .get(12..16)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from);
                self.count_drop(e.reason(), src);
                None
            }
        }
    }

    fn count_drop(&self, reason: DropReason, from: Ipv4Addr) {
        if let Ok(mut d) = self.drops.lock() {
            d.by_reason.record(reason);
        }
        if reason != DropReason::VridMismatch {
            debug!(vrid = self.vrid, %from, reason = %reason, "VRRP advert dropped");
        }
    }

    async fn send_advert(&mut self, advert: &Advertisement) {
        let targets: Vec<Ipv4Addr> = if self.resolved.peers.is_empty() {
            vec![VRRP_MULTICAST_V4]
        } else {
            self.resolved.peers.clone()
        };
        for dst in targets {
            self.ip_id = self.ip_id.wrapping_add(1);
            let header = Ipv4Header::advert(self.resolved.primary, dst, self.ip_id);
            let packet = encode_ip_packet(&header, advert);
            if let Err(e) = self.socket.send(&packet, dst).await {
                debug!(vrid = self.vrid, %dst, error = %e, "VRRP advert not sent");
            }
        }
    }

    /// Gratuitous ARP burst for every VIP: `count` rounds, `spacing` apart, the first at once.
    fn start_garp(&mut self) {
        if let Some(t) = self.garp_task.take() {
            t.abort();
        }
        let count = self.garp.count.max(1);
        let spacing = Duration::from_millis(u64::from(self.garp.spacing_ms));
        let targets: Vec<(Ipv4Addr, [u8; 6], u32)> = self
            .resolved
            .vips
            .iter()
            .filter_map(|v| v.mac.map(|m| (v.address.address, m, v.address.index)))
            .collect();
        let vrid = self.vrid;
        self.garp_task = Some(tokio::spawn(async move {
            let sockets: Vec<Option<ArpSocket>> = targets
                .iter()
                .map(|(_, _, index)| ArpSocket::open(*index).ok())
                .collect();
            for round in 0..count {
                if round > 0 {
                    tokio::time::sleep(spacing).await;
                }
                for ((vip, mac, _), sock) in targets.iter().zip(&sockets) {
                    let r = match sock {
                        Some(s) => s.announce(*mac, *vip),
                        None => Err(std::io::Error::other("no packet socket")),
                    };
                    if let Err(e) = r {
                        debug!(vrid, %vip, error = %e, "gratuitous ARP not sent");
                    }
                }
            }
        }));
        self.garp_refresh_at = (self.garp.refresh_ms > 0 && self.instance.state() == State::Master)
            .then(|| Instant::now() + Duration::from_millis(u64::from(self.garp.refresh_ms)));
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let mut transitions = Vec::new();
        for action in actions {
            match action {
                Action::SendAdvert(advert) => self.send_advert(&advert).await,
                Action::AddVips => {
                    self.resumed = false;
                    self.resume_advert_at = None;
                    match vips::add_all(&mut self.route, &self.resolved.vips) {
                        Ok(added) => debug!(vrid = self.vrid, added, "VIPs added"),
                        Err(e) => warn!(vrid = self.vrid, error = %e, "cannot add the VIPs"),
                    }
                }
                Action::RemoveVips => {
                    if let Some(t) = self.garp_task.take() {
                        t.abort();
                    }
                    self.garp_refresh_at = None;
                    if let Err(e) = vips::remove_all(&mut self.route, &self.resolved.vips) {
                        warn!(vrid = self.vrid, error = %e, "cannot remove the VIPs");
                    }
                }
                Action::SendGratuitousArp => self.start_garp(),
                Action::StartMasterDownTimer(d) => self.master_down_at = Some(Instant::now() + d),
                Action::StartAdvertTimer(d) => self.advert_at = Some(Instant::now() + d),
                Action::CancelMasterDownTimer => self.master_down_at = None,
                Action::CancelAdvertTimer => self.advert_at = None,
                Action::Dropped(reason) => self.count_drop(reason, Ipv4Addr::UNSPECIFIED),
                Action::Transition { from, to, reason } => transitions.push((from, to, reason)),
            }
        }
        // Reported after the kernel work, so a failover is never delayed by the daemon loop.
        let master = self.instance.master();
        if transitions.is_empty() && master != self.reported_master {
            let _ = self
                .events
                .send(Event::VrrpMasterChanged(VrrpStatus {
                    state: self.instance.state().into(),
                    master,
                }))
                .await;
        }
        self.reported_master = master;
        for (from, to, reason) in transitions {
            let status = VrrpStatus {
                state: to.into(),
                master: self.instance.master(),
            };
            info!(vrid = self.vrid, from = ?from, to = ?to, reason = %reason_text(&reason), "VRRP transition");
            let _ = self
                .events
                .send(Event::VrrpTransition {
                    status,
                    transition: lbfleet_proto::VrrpTransition {
                        from: from.into(),
                        to: to.into(),
                        reason: reason_text(&reason),
                        at_ms: now_ms(),
                    },
                })
                .await;
        }
    }
}

/// The next wanted priority; pending forever without a source.
async fn priority_changed(p: Option<&mut Priority>) -> Option<u8> {
    match p {
        Some(p) => {
            p.changed().await;
            Some(p.wanted())
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(priority: u8) -> VrrpConfig {
        serde_json::from_value(serde_json::json!({
            "version": 3, "vrid": 51, "interface": "lbf-missing0", "priority": priority,
            "advert_interval_ms": 100, "preempt": true, "vips": ["198.18.0.10/32"],
            "unicast_peers": []
        }))
        .unwrap()
    }

    #[test]
    fn a_priority_only_change_keeps_the_instance() {
        let (a, b) = (config(150), config(120));
        assert_eq!(
            ConfigChange::between(Some(&a), Some(&a)),
            ConfigChange::Same
        );
        assert_eq!(ConfigChange::between(None, None), ConfigChange::Same);
        assert_eq!(
            ConfigChange::between(Some(&a), Some(&b)),
            ConfigChange::Priority(120)
        );
        let mut other_vrid = b.clone();
        other_vrid.vrid = 52;
        assert_eq!(
            ConfigChange::between(Some(&a), Some(&other_vrid)),
            ConfigChange::Restart
        );
        // To or from the address owner is another kind of router.
        assert_eq!(
            ConfigChange::between(Some(&a), Some(&config(255))),
            ConfigChange::Restart
        );
        assert_eq!(
            ConfigChange::between(Some(&config(255)), Some(&a)),
            ConfigChange::Restart
        );
        assert_eq!(ConfigChange::between(None, Some(&a)), ConfigChange::Restart);
        assert_eq!(ConfigChange::between(Some(&a), None), ConfigChange::Restart);
    }

    /// Waits for the next Fault transition the instance reports (its interface does not exist, so setup fails
    /// and each new instance reports Fault once).
    async fn next_fault(rx: &mut mpsc::Receiver<Event>, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::VrrpTransition { transition, .. })) => {
                    if transition.to == VrrpState::Fault {
                        return Some(transition.reason);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The supervisor keeps the running instance when only the priority changes (no restart: a restarted
    /// instance reports its Fault again), and restarts it for any other change.
    #[tokio::test]
    async fn the_supervisor_sets_the_priority_instead_of_restarting() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut sup = VrrpSupervisor::new();
        sup.apply(Some(&config(150)), &tx).await;
        assert!(next_fault(&mut rx, Duration::from_secs(10)).await.is_some());
        sup.apply(Some(&config(120)), &tx).await;
        assert_eq!(sup.config().map(|c| c.priority), Some(120));
        // Well past a setup retry (2 s): the kept instance reports no new fault.
        assert_eq!(next_fault(&mut rx, SETUP_RETRY * 2).await, None);
        let running = sup.running.as_ref().unwrap();
        assert_eq!(*running.base_priority.borrow(), 120);
        let mut moved = config(120);
        moved.vrid = 52;
        sup.apply(Some(&moved), &tx).await;
        assert!(next_fault(&mut rx, Duration::from_secs(10)).await.is_some());
        sup.stop().await;
    }

    /// The wanted priority is the quorum's when it set one, else the role's; a change of either wakes the
    /// instance.
    #[tokio::test]
    async fn the_quorum_priority_overrides_the_role_priority() {
        let sup = VrrpSupervisor::new();
        let (base_tx, base_rx) = watch::channel(150);
        let mut p = Priority {
            base: base_rx,
            quorum: sup.quorum.0.subscribe(),
        };
        assert_eq!(p.wanted(), 150);
        sup.quorum_priority().set_priority(90);
        tokio::time::timeout(Duration::from_secs(1), p.changed())
            .await
            .unwrap();
        assert_eq!(p.wanted(), 90);
        base_tx.send_replace(140);
        tokio::time::timeout(Duration::from_secs(1), p.changed())
            .await
            .unwrap();
        assert_eq!(p.wanted(), 90);
        // Without a source nothing ever changes.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), priority_changed(None))
                .await
                .is_err()
        );
    }
}
