//! The VRRP instance at work: one tokio task per role owns the raw socket (`socket`), the two RFC timers and
//! the VIPs, and drives the sans-IO [`Instance`]: every received advert and every timer expiry becomes an
//! [`Input`], every [`Action`] is carried out here (send the advert, add/remove the VIPs over rtnetlink, send
//! gratuitous ARP, restart a timer) and each transition goes to the daemon loop as [`Event::VrrpTransition`].
//! [`VrrpSupervisor`] starts, reconfigures and stops that task for the daemon.
//!
//! Two behaviours beyond the RFC: a graceful stop sends priority 0 and removes the VIPs before the task ends
//! (no VIP left behind), and an agent that starts while its VIPs are already on the interface (restarted while
//! MASTER) keeps them and keeps advertising at its priority until it hears another master or becomes master
//! again, so a quick restart moves no traffic.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_proto::{VrrpConfig, VrrpState};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::garp::ArpSocket;
use super::socket::VrrpSocket;
use super::vips::{self, Resolved, SetupError};
use super::{
    decode_ip_packet, encode_ip_packet, Action, Advertisement, Auth, DropCounters, DropReason,
    Input, Instance, InstanceConfig, Ipv4Header, State, TransitionReason, Version,
    VRRP_MULTICAST_V4,
};
use crate::daemon::{now_ms, Event, VrrpStatus};
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

/// Starts, reconfigures and stops the VRRP task of the current role.
#[derive(Debug, Default)]
pub struct VrrpSupervisor {
    running: Option<Running>,
    drops: Arc<Mutex<DropStats>>,
}

#[derive(Debug)]
struct Running {
    config: VrrpConfig,
    stop: Option<oneshot::Sender<()>>,
    /// A new priority for the running instance (see [`priority_change_in_place`]).
    priority: mpsc::UnboundedSender<u8>,
    /// Completes when the instance's thread has finished (VIPs released).
    done: oneshot::Receiver<()>,
}

impl VrrpSupervisor {
    pub fn new() -> VrrpSupervisor {
        VrrpSupervisor::default()
    }

    /// Runs `config` (or nothing): an unchanged config keeps the running instance; a change of priority
    /// alone that needs no handover (see [`priority_change_in_place`]) is applied to the running instance;
    /// any other change stops it gracefully and starts the new one. `master`: the instance is MASTER now.
    pub async fn apply(
        &mut self,
        config: Option<&VrrpConfig>,
        master: bool,
        events: &mpsc::Sender<Event>,
    ) {
        if self.running.as_ref().map(|r| &r.config) == config {
            return;
        }
        if let (Some(r), Some(new)) = (self.running.as_mut(), config) {
            if let Some(p) = priority_change_in_place(&r.config, new, master) {
                if r.priority.send(p).is_ok() {
                    info!(
                        vrid = new.vrid,
                        priority = p,
                        "VRRP priority changed in place"
                    );
                    r.config = new.clone();
                    return;
                }
            }
        }
        self.stop().await;
        if let Some(config) = config {
            let (priority_tx, priority_rx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done) = oneshot::channel();
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
                        Ok(rt) => rt.block_on(run_instance(cfg, ev, drops, stop_rx, priority_rx)),
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
                priority: priority_tx,
                done,
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

/// The priority to set on the running instance when `new` differs from `old` in the priority only and no
/// handover is due: a raise, or any change while not MASTER (a switchover raises the backup this way without
/// a restart, so it never sends priority 0 or flaps). A MASTER whose priority goes down restarts instead: its
/// priority-0 advert hands the VIPs over at once (Skew_Time), whether or not the backup preempts.
pub fn priority_change_in_place(old: &VrrpConfig, new: &VrrpConfig, master: bool) -> Option<u8> {
    let same_but_priority = VrrpConfig {
        priority: new.priority,
        ..old.clone()
    } == *new;
    (same_but_priority && new.priority != old.priority && (!master || new.priority > old.priority))
        .then_some(new.priority)
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

/// Runs one instance until `stop` (retrying setup while the interface or its address is missing).
async fn run_instance(
    config: VrrpConfig,
    events: mpsc::Sender<Event>,
    drops: Arc<Mutex<DropStats>>,
    mut stop: oneshot::Receiver<()>,
    mut priority: mpsc::UnboundedReceiver<u8>,
) {
    let mut last_fault: Option<String> = None;
    loop {
        // A priority change that came while setup kept failing is the configured priority of the next try.
        let mut config = config.clone();
        while let Ok(p) = priority.try_recv() {
            config.priority = p;
        }
        match Worker::setup(&config, &events, &drops) {
            Ok(worker) => {
                worker.run(stop, priority).await;
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
        })
    }

    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut priority: mpsc::UnboundedReceiver<u8>,
    ) {
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
                Some(p) = priority.recv() => Input::SetPriority(p),
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(priority: u8) -> VrrpConfig {
        VrrpConfig {
            version: 3,
            vrid: 10,
            interface: "eth0".into(),
            priority,
            advert_interval_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            vips: vec![],
            unicast_peers: vec![],
            garp: Default::default(),
            conn_sync: None,
        }
    }

    #[test]
    fn a_switchover_raises_the_backup_in_place_and_restarts_the_lowered_master() {
        // The backup being raised, and a master being raised: in place, no priority-0 advert.
        assert_eq!(
            priority_change_in_place(&config(100), &config(150), false),
            Some(150)
        );
        assert_eq!(
            priority_change_in_place(&config(100), &config(150), true),
            Some(150)
        );
        // A backup lowered: in place too.
        assert_eq!(
            priority_change_in_place(&config(150), &config(100), false),
            Some(100)
        );
        // The master lowered: restart, so its priority-0 advert hands over at once.
        assert_eq!(
            priority_change_in_place(&config(150), &config(100), true),
            None
        );
        // Anything else changed as well: restart.
        let mut other = config(150);
        other.advert_interval_ms = 200;
        assert_eq!(priority_change_in_place(&config(100), &other, false), None);
        // Nothing changed: nothing to do here (the caller keeps the instance).
        assert_eq!(
            priority_change_in_place(&config(100), &config(100), false),
            None
        );
    }
}
