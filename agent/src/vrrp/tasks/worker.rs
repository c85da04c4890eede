//! The task of one running VRRP instance: raw socket, the two RFC timers, the VIPs and gratuitous ARP around
//! the sans-IO `Instance`, and the notices it sends. It also tracks the link of the VRRP interface (and of a
//! VLAN's parent): link events (`rtnl::watch`) wake it, a fresh link dump decides, and the instance hears
//! [`Input::LinkDown`] / [`Input::LinkUp`]. A tracked link that disappears ends the worker; the supervisor's
//! retry loop sets it up again when the interface is back.
//!
//! Over IPv6 (a role whose VIPs are all IPv6) the same task runs on a [`Vrrp6Socket`] from the link-local
//! address; a dual-stack role elects over IPv4 and its IPv6 VIPs move with the IPv4 ones, each announced
//! the way its family needs (gratuitous ARP, unsolicited neighbour advertisement).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_proto::{VrrpConfig, VrrpState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::super::garp::ArpSocket;
use super::super::notice::{now_ms, VrrpNotice, VrrpStatus};
use super::super::packet::{decode_ipv6, VRRP_MULTICAST_V6};
use super::super::socket::{Received6, Vrrp6Socket, VrrpSocket};
use super::super::vips::{self, Resolved, SetupError};
use super::super::{
    decode_ip_packet, encode, encode_ip_packet, Action, Advertisement, Auth, DropReason, Input,
    Instance, InstanceConfig, Ipv4Header, State, TransitionReason, Version, VRRP_MULTICAST_V4,
};
use crate::rtnl::watch::LinkWatch;
use crate::rtnl::RouteSocket;

use super::{DropStats, RECV_BUF, SETUP_RETRY};

/// How often the links are read when the link-event socket could not be opened.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Why a worker's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Stopped by the supervisor (priority 0 sent, VIPs released).
    Stopped,
    /// A tracked link disappeared: set the instance up again when it is back.
    LinkGone,
}

/// Real-time priority of the VRRP thread (SCHED_RR; busy user processes run at SCHED_OTHER below it).
const RT_PRIORITY: libc::c_int = 10;

/// Puts the calling thread in SCHED_RR, so a saturated CPU cannot delay adverts past Master_Down_Interval.
/// Without CAP_SYS_NICE it stays where it is (logged).
pub(super) fn raise_to_realtime(vrid: u8) {
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
        TransitionReason::LinkDown => "link down".into(),
        TransitionReason::LinkUp => "link up".into(),
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
        // The adverts carry the VIPs of the family they travel in; the others follow the state.
        vips: r
            .vips
            .iter()
            .map(|v| v.address.address)
            .filter(|a| a.is_ipv4() == r.primary.is_ipv4())
            .collect(),
        auth: Auth::NONE,
    })
}

/// The priority an instance should run at: the quorum's when it set one, else the role's.
#[derive(Debug)]
pub(super) struct Priority {
    pub(super) base: watch::Receiver<u8>,
    pub(super) quorum: watch::Receiver<Option<u8>>,
}

impl Priority {
    pub(super) fn wanted(&self) -> u8 {
        (*self.quorum.borrow()).unwrap_or(*self.base.borrow())
    }

    /// Completes when either changed (marking both seen); pending forever once both senders are gone.
    pub(super) async fn changed(&mut self) {
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
pub(super) async fn run_instance<E: From<VrrpNotice> + Send + 'static>(
    config: VrrpConfig,
    events: mpsc::Sender<E>,
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
                let ended = worker.run(&mut stop).await;
                match (ended, worker.priority.take()) {
                    (Ended::LinkGone, Some(p)) => {
                        priority = p;
                        last_fault = None;
                    }
                    _ => return,
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_fault.as_deref() != Some(text.as_str()) {
                    warn!(vrid = config.vrid, error = %text, "VRRP cannot start; retrying");
                    let notice = VrrpNotice::Transition {
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
                    };
                    let _ = events.send(E::from(notice)).await;
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

/// The VRRP socket of the family the instance runs over.
#[derive(Debug)]
enum Socket {
    V4(VrrpSocket),
    V6(Vrrp6Socket),
}

/// A packet one of the sockets received (its bytes are in the caller's buffer).
#[derive(Debug, Clone, Copy)]
enum Packet {
    V4(usize),
    V6(Received6),
}

async fn recv_any(socket: &Socket, buf: &mut [u8]) -> std::io::Result<Packet> {
    match socket {
        Socket::V4(s) => s.recv(buf).await.map(Packet::V4),
        Socket::V6(s) => s.recv(buf).await.map(Packet::V6),
    }
}

/// The running instance and everything it owns; `E` is what its notices are sent as.
struct Worker<E> {
    vrid: u8,
    instance: Instance,
    socket: Socket,
    route: RouteSocket,
    resolved: Resolved,
    garp: lbfleet_proto::GarpSpec,
    events: mpsc::Sender<E>,
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
    reported_master: Option<IpAddr>,
    /// Where priority changes come from (role and quorum).
    priority: Option<Priority>,
    /// Wakes on link changes; `None` when it could not be opened (the links are polled instead).
    link_watch: Option<LinkWatch>,
    link_poll_at: Option<Instant>,
}

impl<E: From<VrrpNotice> + Send + 'static> Worker<E> {
    fn setup(
        config: &VrrpConfig,
        events: &mpsc::Sender<E>,
        drops: &Arc<Mutex<DropStats>>,
    ) -> Result<Worker<E>, SetupError> {
        let mut route = RouteSocket::open()?;
        let resolved = vips::resolve(&mut route, config)?;
        let instance = Instance::new(instance_config(config, &resolved)?)?;
        let (name, index, multicast) = (
            &resolved.link.name,
            resolved.link.index,
            resolved.peers.is_empty(),
        );
        let socket = if resolved.primary.is_ipv4() {
            Socket::V4(VrrpSocket::open(name, index, multicast)?)
        } else {
            Socket::V6(Vrrp6Socket::open(name, index, multicast)?)
        };
        let resumed = vips::all_present(&mut route, &resolved.vips)?;
        let link_watch = match LinkWatch::open() {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(vrid = config.vrid, error = %e, "no link events; polling the links");
                None
            }
        };
        let link_poll_at = link_watch.is_none().then(|| Instant::now() + LINK_POLL);
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
            link_watch,
            link_poll_at,
        })
    }

    /// The tracked links now: `Some(true)` all up and running, `Some(false)` one is down, `None` one is gone.
    fn tracked_links_up(&mut self) -> Option<bool> {
        match self.route.links() {
            Ok(links) => vips::links_up(&links, &self.resolved.tracked),
            Err(e) => {
                warn!(vrid = self.vrid, error = %e, "cannot read the links");
                Some(self.instance.state() != State::Fault)
            }
        }
    }

    async fn run(&mut self, stop: &mut oneshot::Receiver<()>) -> Ended {
        if self.resumed {
            info!(
                vrid = self.vrid,
                "VIPs already present: resuming as the master they belong to"
            );
        }
        if self.tracked_links_up() != Some(true) {
            info!(vrid = self.vrid, interface = %self.resolved.link.name, "VRRP interface link is down");
            self.instance
                .handle(Input::LinkDown, std::time::Instant::now());
        }
        let actions = self
            .instance
            .handle(Input::Startup, std::time::Instant::now());
        self.execute(actions).await;
        if self.resumed && self.instance.state() == State::Fault {
            self.release_resumed();
        }
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let mut link_gone = false;
            let input = tokio::select! {
                biased;
                _ = &mut *stop => Input::Shutdown,
                r = link_changed(self.link_watch.as_mut()) => {
                    if let Err(e) = r {
                        warn!(vrid = self.vrid, error = %e, "link events failed; polling the links");
                        self.link_watch = None;
                        self.link_poll_at = Some(Instant::now() + LINK_POLL);
                    }
                    self.link_input(&mut link_gone)
                }
                _ = sleep_until(self.link_poll_at) => {
                    self.link_poll_at = Some(Instant::now() + LINK_POLL);
                    self.link_input(&mut link_gone)
                }
                r = recv_any(&self.socket, &mut buf) => match r {
                    Ok(p) => match self.received(&buf, p) {
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
            if self.resumed && self.instance.state() == State::Fault {
                self.release_resumed();
            }
            if shutdown {
                if self.resumed {
                    self.release_resumed();
                }
                return Ended::Stopped;
            }
            if link_gone {
                warn!(vrid = self.vrid, interface = %self.resolved.link.name, "VRRP interface gone; waiting for it");
                return Ended::LinkGone;
            }
        }
    }

    /// The input a link change means (`LinkUp`/`LinkDown`; the instance ignores one that changes nothing);
    /// sets `gone` when a tracked link disappeared.
    fn link_input(&mut self, gone: &mut bool) -> Input {
        match self.tracked_links_up() {
            Some(true) => {
                if self.instance.state() == State::Fault {
                    info!(vrid = self.vrid, interface = %self.resolved.link.name, "VRRP interface link is up");
                }
                Input::LinkUp
            }
            Some(false) => {
                if self.instance.state() != State::Fault {
                    info!(vrid = self.vrid, interface = %self.resolved.link.name, "VRRP interface link is down");
                }
                Input::LinkDown
            }
            None => {
                *gone = true;
                Input::LinkDown
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
    fn received(&mut self, buf: &[u8], packet: Packet) -> Option<Input> {
        let decoded = match packet {
            Packet::V4(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                decode_ip_packet(bytes)
                    .map(|(h, a)| (IpAddr::V4(h.src), a))
                    .map_err(|e| {
                        let src = bytes
                            .get(12..16)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from);
                        (e, IpAddr::V4(src))
                    })
            }
            Packet::V6(r) => {
                let bytes = buf.get(..r.len).unwrap_or_default();
                decode_ipv6(bytes, r.src, r.dst, r.hop_limit)
                    .map(|a| (IpAddr::V6(r.src), a))
                    .map_err(|e| (e, IpAddr::V6(r.src)))
            }
        };
        match decoded {
            Ok((src, advert)) => {
                if !self.resolved.peers.is_empty() && !self.resolved.peers.contains(&src) {
                    if let Ok(mut d) = self.drops.lock() {
                        d.not_a_peer = d.not_a_peer.saturating_add(1);
                    }
                    debug!(vrid = self.vrid, from = %src, "VRRP advert from a non-peer dropped");
                    return None;
                }
                Some(Input::AdvertReceived { from: src, advert })
            }
            Err((e, src)) => {
                self.count_drop(e.reason(), src);
                None
            }
        }
    }

    fn count_drop(&self, reason: DropReason, from: IpAddr) {
        if let Ok(mut d) = self.drops.lock() {
            d.by_reason.record(reason);
        }
        if reason != DropReason::VridMismatch {
            debug!(vrid = self.vrid, %from, reason = %reason, "VRRP advert dropped");
        }
    }

    async fn send_advert(&mut self, advert: &Advertisement) {
        let targets: Vec<IpAddr> = if !self.resolved.peers.is_empty() {
            self.resolved.peers.clone()
        } else if self.resolved.primary.is_ipv4() {
            vec![VRRP_MULTICAST_V4.into()]
        } else {
            vec![VRRP_MULTICAST_V6.into()]
        };
        for dst in targets {
            let sent = match (&self.socket, self.resolved.primary, dst) {
                (Socket::V4(sock), IpAddr::V4(src), IpAddr::V4(dst)) => {
                    self.ip_id = self.ip_id.wrapping_add(1);
                    let header = Ipv4Header::advert(src, dst, self.ip_id);
                    sock.send(&encode_ip_packet(&header, advert), dst).await
                }
                (Socket::V6(sock), IpAddr::V6(src), IpAddr::V6(dst)) => {
                    let message = encode(advert, src.into(), dst.into());
                    sock.send(&message, src, dst).await
                }
                _ => Err(std::io::Error::other("peer of another address family")),
            };
            if let Err(e) = sent {
                debug!(vrid = self.vrid, %dst, error = %e, "VRRP advert not sent");
            }
        }
    }

    /// Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) burst for every VIP: `count`
    /// rounds, `spacing` apart, the first at once.
    fn start_garp(&mut self) {
        if let Some(t) = self.garp_task.take() {
            t.abort();
        }
        let count = self.garp.count.max(1);
        let spacing = Duration::from_millis(u64::from(self.garp.spacing_ms));
        let targets: Vec<(IpAddr, [u8; 6], u32, bool)> = self
            .resolved
            .vips
            .iter()
            .filter_map(|v| {
                let router =
                    v.address.address.is_ipv6() && super::super::garp::forwards_ipv6(&v.interface);
                v.mac
                    .map(|m| (v.address.address, m, v.address.index, router))
            })
            .collect();
        let vrid = self.vrid;
        self.garp_task = Some(tokio::spawn(async move {
            let sockets: Vec<Option<ArpSocket>> = targets
                .iter()
                .map(|(_, _, index, _)| ArpSocket::open(*index).ok())
                .collect();
            for round in 0..count {
                if round > 0 {
                    tokio::time::sleep(spacing).await;
                }
                for ((vip, mac, _, router), sock) in targets.iter().zip(&sockets) {
                    let r = match (sock, vip) {
                        (Some(s), IpAddr::V4(v)) => s.announce(*mac, *v),
                        (Some(s), IpAddr::V6(v)) => s.advertise(*mac, *v, *router),
                        (None, _) => Err(std::io::Error::other("no packet socket")),
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
                Action::Dropped(reason) => {
                    self.count_drop(reason, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
                }
                Action::Transition { from, to, reason } => transitions.push((from, to, reason)),
            }
        }
        // Reported after the kernel work, so a failover is never delayed by the daemon loop.
        let master = self.instance.master();
        if transitions.is_empty() && master != self.reported_master {
            let notice = VrrpNotice::MasterChanged(VrrpStatus {
                state: self.instance.state().into(),
                master,
            });
            let _ = self.events.send(E::from(notice)).await;
        }
        self.reported_master = master;
        for (from, to, reason) in transitions {
            let status = VrrpStatus {
                state: to.into(),
                master: self.instance.master(),
            };
            info!(vrid = self.vrid, from = ?from, to = ?to, reason = %reason_text(&reason), "VRRP transition");
            let notice = VrrpNotice::Transition {
                status,
                transition: lbfleet_proto::VrrpTransition {
                    from: from.into(),
                    to: to.into(),
                    reason: reason_text(&reason),
                    at_ms: now_ms(),
                },
            };
            let _ = self.events.send(E::from(notice)).await;
        }
    }
}

/// The next wanted priority; pending forever without a source.
pub(super) async fn priority_changed(p: Option<&mut Priority>) -> Option<u8> {
    match p {
        Some(p) => {
            p.changed().await;
            Some(p.wanted())
        }
        None => std::future::pending().await,
    }
}

/// The next link change; pending forever without a watch socket.
async fn link_changed(w: Option<&mut LinkWatch>) -> std::io::Result<()> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
