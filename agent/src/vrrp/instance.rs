//! One VRRP virtual router as a sans-IO, clock-free state machine (RFC 5798 section 6.4, RFC 3768 section
//! 6.4): Initialize, Backup and Master as an enum, driven by [`Input`]s and answering with [`Action`]s.
//!
//! The caller owns the sockets, the timers and the clock: it passes `now` with every input, starts and
//! cancels the two timers the actions name (at `now + duration`), and sends what [`Action::SendAdvert`]
//! carries. A timer expiry that arrives after the timer was restarted or cancelled (a race in the caller's
//! event queue) is recognised from the deadlines this instance records, and ignored.
//!
//! Timing (v3; v2 uses seconds and the configured interval throughout):
//! - `Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256`
//! - `Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time`
//! - a Backup learns `Master_Adver_Interval` from the master's adverts.
//!
//! Beyond the RFC, as keepalived: `preempt_delay` keeps a Backup from preempting a lower-priority master for
//! that long after startup, and [`Input::SetPriority`] lets health quorum lower (and restore) the priority.
//! The preempt delay needs no timer of its own: it is decided from `now` when a lower-priority advert
//! arrives, and once it has passed the Backup stops resetting its master-down timer for such adverts.
//!
//! Also as keepalived: the link of the VRRP interface is tracked ([`Input::LinkDown`], [`Input::LinkUp`]). A
//! lost link puts the instance in Fault (timers stopped, no adverts, the VIPs released); its return goes
//! through Backup, so the router becomes Master again only by the election, announcing the VIPs (gratuitous
//! ARP) as on every transition to Master. A Master that stayed Master on a dead link would, on the link's
//! return, leave the hosts' ARP caches pointing at the router that took over meanwhile.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::error::{ConfigError, DropReason};
use super::packet::{Advertisement, Auth, Version, MAX_ADDRESSES};

/// Priority of the router that owns the virtual addresses: it is Master at once and ignores adverts.
pub const OWNER_PRIORITY: u8 = 255;
/// Priority a Master sends when it stops, so a Backup takes over after Skew_Time.
pub const STOP_PRIORITY: u8 = 0;

/// What one VRRP instance runs with. Check it with [`InstanceConfig::validate`] (done by [`Instance::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub version: Version,
    /// Virtual router ID, 1-255.
    pub vrid: u8,
    /// 1-254, or 255 for the address owner.
    pub priority: u8,
    /// Advertisement_Interval. v2: whole seconds, 1-255 s. v3: multiple of 10 ms, 10 ms-40.95 s.
    pub advert_interval: Duration,
    /// Preempt_Mode: a Backup with a higher priority than the master takes over.
    pub preempt: bool,
    /// After startup, do not preempt for this long (zero: preempt at once). Ignored when `preempt` is false.
    pub preempt_delay: Duration,
    /// v3 Accept_Mode: a non-owner Master accepts packets addressed to the virtual addresses. The state
    /// machine does not use it; the I/O layer does.
    pub accept: bool,
    /// This router's primary address on the VRRP interface (IPv6: its link-local address): the advert source,
    /// the family the instance runs over, and the tie-break between equal priorities (the higher address
    /// wins).
    pub primary_address: IpAddr,
    /// The virtual addresses the adverts carry (1-255), in the order they are sent.
    pub vips: Vec<IpAddr>,
    /// v2 authentication sent and required on receive ([`Auth::NONE`] unless the peer uses a password).
    /// Ignored for v3.
    pub auth: Auth,
}

impl InstanceConfig {
    /// Checks every field against the ranges the protocol can carry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::VridZero);
        }
        if self.priority == STOP_PRIORITY {
            return Err(ConfigError::PriorityZero);
        }
        let i = self.advert_interval;
        match self.version {
            Version::V2 => {
                if i.subsec_nanos() != 0 || i.as_secs() == 0 || i.as_secs() > 255 {
                    return Err(ConfigError::V2Interval(i));
                }
            }
            Version::V3 => {
                let ms = i.as_millis();
                if !i.as_nanos().is_multiple_of(10_000_000) || !(10..=40_950).contains(&ms) {
                    return Err(ConfigError::V3Interval(i));
                }
            }
        }
        if self.vips.is_empty() {
            return Err(ConfigError::NoVips);
        }
        if let Some(v) = self
            .vips
            .iter()
            .find(|v| v.is_ipv4() != self.primary_address.is_ipv4())
        {
            return Err(ConfigError::VipFamily(*v));
        }
        if self.version == Version::V2 && self.primary_address.is_ipv6() {
            return Err(ConfigError::V2OverIpv6);
        }
        if self.vips.len() > MAX_ADDRESSES {
            return Err(ConfigError::TooManyVips {
                got: self.vips.len(),
                max: MAX_ADDRESSES,
            });
        }
        Ok(())
    }

    /// The advert interval in the version's wire unit (v2 seconds, v3 centiseconds).
    fn wire_interval(&self) -> u16 {
        match self.version {
            Version::V2 => self.advert_interval.as_secs().min(255) as u16,
            Version::V3 => (self.advert_interval.as_millis() / 10).min(4095) as u16,
        }
    }
}

/// RFC state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running (before [`Input::Startup`], after [`Input::Shutdown`]).
    Initialize,
    /// Listening for the master's adverts; holds no virtual address.
    Backup,
    /// Sends adverts and holds the virtual addresses.
    Master,
    /// The tracked link is down: no adverts, no timers, no virtual address, until [`Input::LinkUp`].
    Fault,
}

impl From<State> for lbfleet_proto::VrrpState {
    fn from(s: State) -> Self {
        match s {
            State::Initialize => lbfleet_proto::VrrpState::Init,
            State::Backup => lbfleet_proto::VrrpState::Backup,
            State::Master => lbfleet_proto::VrrpState::Master,
            State::Fault => lbfleet_proto::VrrpState::Fault,
        }
    }
}

/// What happened, fed to [`Instance::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start the instance (Initialize only; ignored otherwise).
    Startup,
    /// Stop it: a Master sends priority 0 and releases the addresses.
    Shutdown,
    /// A decoded advert from `from` (the IPv4 source). The instance validates it against its config first:
    /// see [`Instance::validate`].
    AdvertReceived { from: IpAddr, advert: Advertisement },
    /// The timer from [`Action::StartMasterDownTimer`] fired.
    MasterDownTimerExpired,
    /// The timer from [`Action::StartAdvertTimer`] fired.
    AdvertTimerExpired,
    /// Change the running priority (health quorum). 0 becomes 1; 255 only when configured as owner.
    SetPriority(u8),
    /// The tracked link lost its carrier or went down: Backup and Master go to Fault; before Startup it is
    /// remembered, so Startup goes to Fault.
    LinkDown,
    /// The tracked link is up again: Fault goes to Backup (or, for the owner, Master), as at startup.
    LinkUp,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The state changed (log it, report it).
    Transition {
        from: State,
        to: State,
        reason: TransitionReason,
    },
    /// Send this advert (to the multicast group or the unicast peers), with [`packet::encode`](super::encode).
    SendAdvert(Advertisement),
    /// Add the virtual addresses to their interfaces.
    AddVips,
    /// Remove the virtual addresses.
    RemoveVips,
    /// Announce the virtual addresses with gratuitous ARP.
    SendGratuitousArp,
    /// (Re)start the master-down timer to fire after this long; replaces a running one.
    StartMasterDownTimer(Duration),
    /// (Re)start the advert timer to fire after this long; replaces a running one.
    StartAdvertTimer(Duration),
    CancelMasterDownTimer,
    CancelAdvertTimer,
    /// The advert was not accepted; count it ([`DropCounters::record`](super::DropCounters::record)).
    /// [`DropReason::VridMismatch`] is another group's traffic: count it, do not log it.
    Dropped(DropReason),
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionReason {
    /// Initialize to Backup at startup.
    Startup,
    /// Initialize to Master at startup: priority 255, the address owner.
    Owner,
    /// Backup to Master: no advert for Master_Down_Interval.
    MasterDown,
    /// Backup to Master: the master sent priority 0 (it stopped) and Skew_Time passed.
    MasterStopped,
    /// Master to Backup: an advert with a higher priority.
    HigherPriority { from: IpAddr, priority: u8 },
    /// Master to Backup: an advert with the same priority from a higher primary address.
    HigherAddress { from: IpAddr },
    /// To Initialize on [`Input::Shutdown`].
    Shutdown,
    /// To Fault: the tracked link is down.
    LinkDown,
    /// Out of Fault: the tracked link is up again.
    LinkUp,
}

/// One VRRP virtual router. See the module documentation.
#[derive(Debug, Clone)]
pub struct Instance {
    config: InstanceConfig,
    state: State,
    priority: u8,
    master_adver_interval: Duration,
    master: Option<IpAddr>,
    master_priority: Option<u8>,
    master_down_at: Option<Instant>,
    advert_at: Option<Instant>,
    preempt_after: Option<Instant>,
    master_released: bool,
    /// The tracked link, as last reported (up until told otherwise).
    link_up: bool,
}

impl Instance {
    /// A new instance in Initialize; feed it [`Input::Startup`] to run.
    pub fn new(config: InstanceConfig) -> Result<Instance, ConfigError> {
        config.validate()?;
        Ok(Instance {
            state: State::Initialize,
            priority: config.priority,
            master_adver_interval: config.advert_interval,
            master: None,
            master_priority: None,
            master_down_at: None,
            advert_at: None,
            preempt_after: None,
            master_released: false,
            link_up: true,
            config,
        })
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The running priority (the configured one unless [`Input::SetPriority`] changed it).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The current master's address, for reports: this router's primary address in Master, the sender of
    /// the adverts heard in Backup, `None` when unknown (Initialize, no advert yet, or the master stopped).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// The current master's advertised priority while Backup, if one was heard.
    pub fn master_priority(&self) -> Option<u8> {
        self.master_priority
    }

    /// Master_Adver_Interval: the configured interval, or (v3, Backup) the one learned from the master.
    pub fn master_advert_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time for the running priority.
    pub fn skew_time(&self) -> Duration {
        let base = match self.config.version {
            Version::V2 => Duration::from_secs(1),
            Version::V3 => self.master_adver_interval,
        };
        let nanos = base.as_nanos() * (256 - u128::from(self.priority)) / 256;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Master_Down_Interval: three master advert intervals plus Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        let interval = match self.config.version {
            Version::V2 => self.config.advert_interval,
            Version::V3 => self.master_adver_interval,
        };
        interval * 3 + self.skew_time()
    }

    /// When the master-down timer fires, if it runs.
    pub fn master_down_deadline(&self) -> Option<Instant> {
        self.master_down_at
    }

    /// When the advert timer fires, if it runs.
    pub fn advert_deadline(&self) -> Option<Instant> {
        self.advert_at
    }

    /// The advert this router sends now with `priority`.
    pub fn advert(&self, priority: u8) -> Advertisement {
        Advertisement {
            version: self.config.version,
            vrid: self.config.vrid,
            priority,
            advert_interval: self.config.wire_interval(),
            auth: match self.config.version {
                Version::V2 => self.config.auth,
                Version::V3 => Auth::NONE,
            },
            addresses: self.config.vips.clone(),
        }
    }

    /// Checks a decoded advert from `from` against this instance (RFC 5798 and RFC 3768 section 7.1; the
    /// TTL, checksum and length checks are [`decode_ip_packet`](super::decode_ip_packet)'s).
    /// [`Instance::handle`] runs it on every [`Input::AdvertReceived`].
    pub fn validate(&self, from: IpAddr, advert: &Advertisement) -> Result<(), DropReason> {
        let c = &self.config;
        if advert.vrid != c.vrid {
            return Err(DropReason::VridMismatch);
        }
        if advert.version != c.version {
            return Err(DropReason::VersionMismatch);
        }
        if from == c.primary_address {
            return Err(DropReason::OwnAdvert);
        }
        if self.priority == OWNER_PRIORITY {
            return Err(DropReason::LocalOwner);
        }
        match c.version {
            Version::V2 => {
                if advert.auth != c.auth {
                    return Err(DropReason::AuthMismatch);
                }
                if advert.advert_interval != c.wire_interval() {
                    return Err(DropReason::IntervalMismatch);
                }
                if advert.priority != OWNER_PRIORITY && !same_addresses(&advert.addresses, &c.vips)
                {
                    return Err(DropReason::AddressMismatch);
                }
            }
            Version::V3 => {
                // A zero interval would make Master_Down_Interval zero: the Backup would preempt at once.
                if advert.advert_interval == 0 {
                    return Err(DropReason::IntervalMismatch);
                }
            }
        }
        Ok(())
    }

    /// Feeds one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Startup => {
                if self.state == State::Initialize {
                    self.startup(now, &mut out);
                }
            }
            Input::Shutdown => self.shutdown(&mut out),
            Input::MasterDownTimerExpired => {
                let due = self.master_down_at.is_some_and(|at| now >= at);
                if self.state == State::Backup && due {
                    let reason = if self.master_released {
                        TransitionReason::MasterStopped
                    } else {
                        TransitionReason::MasterDown
                    };
                    self.become_master(reason, now, &mut out);
                }
            }
            Input::AdvertTimerExpired => {
                let due = self.advert_at.is_some_and(|at| now >= at);
                if self.state == State::Master && due {
                    self.send_advert(now, &mut out);
                }
            }
            Input::AdvertReceived { from, advert } => match self.validate(from, &advert) {
                Err(reason) => out.push(Action::Dropped(reason)),
                Ok(()) => match self.state {
                    State::Initialize | State::Fault => {}
                    State::Backup => self.backup_receive(from, &advert, now, &mut out),
                    State::Master => self.master_receive(from, &advert, now, &mut out),
                },
            },
            Input::SetPriority(p) => self.set_priority(p, now, &mut out),
            Input::LinkDown => self.link_down(&mut out),
            Input::LinkUp => {
                self.link_up = true;
                if self.state == State::Fault {
                    self.elect(TransitionReason::LinkUp, now, &mut out);
                }
            }
        }
        out
    }

    /// The link is gone: stop everything (nothing can be sent) and release the VIPs, so that the router that
    /// takes over meanwhile is the only holder and this one comes back through the election.
    fn link_down(&mut self, out: &mut Vec<Action>) {
        self.link_up = false;
        match self.state {
            State::Initialize | State::Fault => return,
            State::Backup => {
                self.master_down_at = None;
                out.push(Action::CancelMasterDownTimer);
            }
            State::Master => {
                self.advert_at = None;
                out.push(Action::CancelAdvertTimer);
                out.push(Action::RemoveVips);
            }
        }
        self.transition(State::Fault, TransitionReason::LinkDown, out);
        self.master = None;
        self.master_priority = None;
        self.master_released = false;
    }

    fn startup(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.preempt_after = (self.config.preempt && !self.config.preempt_delay.is_zero())
            .then(|| now + self.config.preempt_delay);
        if self.link_up {
            self.elect(TransitionReason::Startup, now, out);
        } else {
            self.transition(State::Fault, TransitionReason::LinkDown, out);
        }
    }

    /// Into the election from Initialize or Fault: the owner is Master at once, any other router Backup until
    /// the master-down timer says otherwise.
    fn elect(&mut self, reason: TransitionReason, now: Instant, out: &mut Vec<Action>) {
        if self.priority == OWNER_PRIORITY {
            let reason = if reason == TransitionReason::Startup {
                TransitionReason::Owner
            } else {
                reason
            };
            self.become_master(reason, now, out);
        } else {
            self.master_adver_interval = self.config.advert_interval;
            self.transition(State::Backup, reason, out);
            self.start_master_down(self.master_down_interval(), now, out);
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Initialize => return,
            State::Fault => {}
            State::Backup => {
                self.master_down_at = None;
                out.push(Action::CancelMasterDownTimer);
            }
            State::Master => {
                self.advert_at = None;
                out.push(Action::CancelAdvertTimer);
                out.push(Action::SendAdvert(self.advert(STOP_PRIORITY)));
                out.push(Action::RemoveVips);
            }
        }
        self.transition(State::Initialize, TransitionReason::Shutdown, out);
        self.master = None;
        self.master_priority = None;
        self.master_released = false;
    }

    fn backup_receive(
        &mut self,
        from: IpAddr,
        advert: &Advertisement,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == STOP_PRIORITY {
            // The master stopped: take over after Skew_Time, so the highest-priority Backup goes first.
            self.master = None;
            self.master_priority = None;
            self.master_released = true;
            self.start_master_down(self.skew_time(), now, out);
            return;
        }
        let in_preempt_delay = self.preempt_after.is_some_and(|at| now < at);
        if !self.config.preempt || advert.priority >= self.priority || in_preempt_delay {
            self.learn_interval(advert);
            self.master = Some(from);
            self.master_priority = Some(advert.priority);
            self.master_released = false;
            self.start_master_down(self.master_down_interval(), now, out);
        } else {
            // A lower-priority master while we preempt: discard, so the master-down timer runs out.
            self.master = Some(from);
            self.master_priority = Some(advert.priority);
        }
    }

    fn master_receive(
        &mut self,
        from: IpAddr,
        advert: &Advertisement,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == STOP_PRIORITY {
            // Another router left the Master state: assert ours at once.
            self.send_advert(now, out);
            return;
        }
        let reason = if advert.priority > self.priority {
            TransitionReason::HigherPriority {
                from,
                priority: advert.priority,
            }
        } else if advert.priority == self.priority && from > self.config.primary_address {
            TransitionReason::HigherAddress { from }
        } else {
            return;
        };
        // Two masters at once (a link between them was down): the hosts' ARP caches point at us, the one
        // that yields, and the other master may never have heard us. One last advert at our own priority
        // tells it a lower-priority router was master, so it announces the VIPs again (gratuitous ARP), as
        // this agent and keepalived do on a lower-priority advert; RFC routers just discard it.
        out.push(Action::SendAdvert(self.advert(self.priority)));
        self.advert_at = None;
        out.push(Action::CancelAdvertTimer);
        self.learn_interval(advert);
        self.transition(State::Backup, reason, out);
        out.push(Action::RemoveVips);
        self.master = Some(from);
        self.master_priority = Some(advert.priority);
        self.master_released = false;
        self.start_master_down(self.master_down_interval(), now, out);
    }

    fn set_priority(&mut self, p: u8, now: Instant, out: &mut Vec<Action>) {
        let ceiling = if self.config.priority == OWNER_PRIORITY {
            OWNER_PRIORITY
        } else {
            OWNER_PRIORITY - 1
        };
        let p = p.clamp(1, ceiling);
        if p == self.priority {
            return;
        }
        self.priority = p;
        if self.state == State::Master {
            // Tell the Backups now: one with a higher priority and preempt takes over sooner.
            self.send_advert(now, out);
        }
    }

    fn become_master(&mut self, reason: TransitionReason, now: Instant, out: &mut Vec<Action>) {
        let from = self.state;
        self.transition(State::Master, reason, out);
        if from == State::Backup {
            self.master_down_at = None;
            out.push(Action::CancelMasterDownTimer);
        }
        self.master = Some(self.config.primary_address);
        self.master_priority = None;
        self.master_released = false;
        self.master_adver_interval = self.config.advert_interval;
        out.push(Action::SendAdvert(self.advert(self.priority)));
        out.push(Action::AddVips);
        out.push(Action::SendGratuitousArp);
        self.advert_at = Some(now + self.config.advert_interval);
        out.push(Action::StartAdvertTimer(self.config.advert_interval));
    }

    fn send_advert(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert(self.advert(self.priority)));
        self.advert_at = Some(now + self.config.advert_interval);
        out.push(Action::StartAdvertTimer(self.config.advert_interval));
    }

    fn start_master_down(&mut self, after: Duration, now: Instant, out: &mut Vec<Action>) {
        self.master_down_at = Some(now + after);
        out.push(Action::StartMasterDownTimer(after));
    }

    fn learn_interval(&mut self, advert: &Advertisement) {
        if self.config.version == Version::V3 {
            self.master_adver_interval = advert.interval();
        }
    }

    fn transition(&mut self, to: State, reason: TransitionReason, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::Transition { from, to, reason });
    }
}

/// Same set of addresses, in any order.
fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}
