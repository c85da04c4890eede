//! The scheduler: one task per distinct (target, check) of the role, probing every `interval_ms` after a
//! random first delay (jitter), with at most `max_in_flight` probes (and so sockets or scripts) at once.
//! Results feed each target's `Tracker`; a state change bumps a counter the daemon watches, and is kept as a
//! transition for the next report.
//!
//! Services that share a real server and an identical check share its probe: the probe key leaves out what
//! belongs to the service (`on_down`, sorry server, quorum, overrides) and uses the port actually probed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lbfleet_proto::{
    CheckKind, DownAction, HealthCheck, HealthState, HealthTransition, RealServerHealth,
    RoleDocument,
};
use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::probe::{Probe, ProbeError, DEFAULT_CHECKS_DIR};
use super::tracker::{Thresholds, Tracker};
use crate::ipvs::{DestKey, ServiceKey};
use crate::reconcile::HealthResults;

/// Most transitions kept between two reports (the oldest are dropped first).
const MAX_TRANSITIONS: usize = 1000;

/// Settings of the health monitor.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Most probes running at once.
    pub max_in_flight: usize,
    /// Where `script` checks are looked up.
    pub checks_dir: PathBuf,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_in_flight: 256,
            checks_dir: PathBuf::from(DEFAULT_CHECKS_DIR),
        }
    }
}

/// What identifies one probe: the address and port probed and the probe's part of the check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    pub target: SocketAddr,
    pub check: Arc<HealthCheck>,
}

impl ProbeKey {
    /// The probe of real server `addr:port` under `check` (the override already applied).
    pub fn new(addr: IpAddr, port: u16, check: &HealthCheck) -> ProbeKey {
        let mut probe = check.clone();
        let target = SocketAddr::new(addr, probe.port.take().unwrap_or(port));
        probe.on_down = DownAction::Drain;
        probe.sorry_server = None;
        probe.quorum = None;
        probe.overrides = Vec::new();
        ProbeKey {
            target,
            check: Arc::new(probe),
        }
    }
}

/// A probe's future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<Duration, ProbeError>> + Send>>;
/// Runs one probe each time it is called.
pub type ProbeFn = Box<dyn Fn() -> ProbeFuture + Send + Sync>;

/// Makes the probe function of a key: the real probes, or a fake in tests.
pub trait Prober: Send + Sync + fmt::Debug {
    fn prepare(&self, key: &ProbeKey) -> ProbeFn;
}

/// The real probes (`probe::Probe`).
#[derive(Debug, Clone)]
pub struct NetworkProber {
    pub checks_dir: PathBuf,
}

impl Prober for NetworkProber {
    fn prepare(&self, key: &ProbeKey) -> ProbeFn {
        match Probe::new(key.target, key.check.clone(), self.checks_dir.clone()) {
            Ok(probe) => {
                let probe = Arc::new(probe);
                Box::new(move || {
                    let probe = probe.clone();
                    Box::pin(async move { probe.run().await })
                })
            }
            Err(e) => Box::new(move || {
                let e = e.clone();
                Box::pin(async move { Err(e) })
            }),
        }
    }
}

/// A service and one of its real servers.
type Member = (ServiceKey, DestKey);

#[derive(Debug)]
struct Entry {
    tracker: Tracker,
    members: Vec<Member>,
    task: AbortHandle,
}

#[derive(Debug, Default)]
struct Board {
    probes: HashMap<ProbeKey, Entry>,
    drained: HashSet<Member>,
    unchecked: HashSet<Member>,
    transitions: VecDeque<HealthTransition>,
    version: u64,
}

impl Drop for Board {
    fn drop(&mut self) {
        for e in self.probes.values() {
            e.task.abort();
        }
    }
}

/// The health of every real server of the role, for reports and the desired state.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    pub results: HealthResults,
    pub servers: HashMap<Member, RealServerHealth>,
}

impl HealthSnapshot {
    pub fn health_of(&self, service: &ServiceKey, dest: &DestKey) -> Option<&RealServerHealth> {
        self.servers.get(&(*service, *dest))
    }
}

/// Runs the probes of the current role. Dropping it stops them.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    board: Arc<Mutex<Board>>,
    changed: Arc<watch::Sender<u64>>,
    in_flight: Arc<Semaphore>,
    prober: Arc<dyn Prober>,
    /// Where the slot grid of every probe's schedule starts (`first_start`).
    epoch: Instant,
}

/// The probes of one interval start at most at this many distinct instants.
const SLOTS_PER_INTERVAL: u32 = 8;
/// The widest slot, whatever the interval.
const MAX_SLOT: Duration = Duration::from_millis(100);

/// The slot of an interval: an eighth of it, from 1 ms to `MAX_SLOT`.
pub(super) fn slot_of(interval: Duration) -> Duration {
    (interval / SLOTS_PER_INTERVAL).clamp(Duration::from_millis(1), MAX_SLOT)
}

/// When a new probe first runs: `delay` (its random jitter) from `now`, moved on to the next boundary of its
/// interval's slot grid, counted from `epoch`. The probes due in one slot then share one timer expiry and the
/// runtime wakes once for all of them, not once per probe (spread at random over the interval, 200 probes a
/// second woke an emulated guest ~160 times a second, where keepalived's checker woke 11 times; on the grid, 34
/// times, and CPU per check fell by a third); the load is still spread over the interval's slots. Later ticks keep the grid (`MissedTickBehavior::Skip`).
pub(super) fn first_start(
    epoch: Instant,
    now: Instant,
    delay: Duration,
    interval: Duration,
) -> Instant {
    let slot = slot_of(interval).as_nanos().max(1);
    let target = now.saturating_duration_since(epoch) + delay;
    let slots = target.as_nanos().div_ceil(slot);
    let offset = u64::try_from(slots * slot).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    board.lock().unwrap_or_else(|p| p.into_inner())
}

fn service_text(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => format!(
            "{}/{}",
            SocketAddr::new(*addr, *port),
            protocol.as_str().to_ascii_lowercase()
        ),
        other => other.to_string(),
    }
}

impl HealthMonitor {
    pub fn new(config: HealthConfig) -> HealthMonitor {
        let prober = Arc::new(NetworkProber {
            checks_dir: config.checks_dir.clone(),
        });
        HealthMonitor::with_prober(config, prober)
    }

    pub fn with_prober(config: HealthConfig, prober: Arc<dyn Prober>) -> HealthMonitor {
        HealthMonitor {
            board: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            prober,
            epoch: Instant::now(),
        }
    }

    /// A receiver that sees a new value after every state change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Number of distinct probes running.
    pub fn probe_count(&self) -> usize {
        lock(&self.board).probes.len()
    }

    /// Follows a new role: starts the probes it adds, stops the ones it no longer has, keeps the state of
    /// the others. Must be called inside a tokio runtime.
    pub fn set_role(&self, role: &RoleDocument) {
        let mut wanted: HashMap<ProbeKey, Vec<Member>> = HashMap::new();
        let mut drained = HashSet::new();
        let mut unchecked = HashSet::new();
        for vs in &role.services {
            let service = ServiceKey::Addr {
                protocol: vs.protocol.into(),
                addr: vs.vip,
                port: vs.port,
            };
            for rs in &vs.real_servers {
                let addr = rs.address;
                let dest = DestKey {
                    addr,
                    port: rs.port,
                };
                if !rs.enabled {
                    drained.insert((service, dest));
                    continue;
                }
                // Overrides by address value, so `2001:db8::1` and `2001:db8:0::1` are the same server.
                let check = vs
                    .check
                    .overrides
                    .iter()
                    .find(|o| o.port == rs.port && o.address.parse::<IpAddr>().ok() == Some(addr))
                    .map_or(&vs.check, |o| &o.check);
                if check.kind == CheckKind::None {
                    unchecked.insert((service, dest));
                    continue;
                }
                wanted
                    .entry(ProbeKey::new(addr, rs.port, check))
                    .or_default()
                    .push((service, dest));
            }
        }
        let now = Instant::now();
        let mut board = lock(&self.board);
        board.probes.retain(|key, entry| {
            let keep = wanted.contains_key(key);
            if !keep {
                entry.task.abort();
            }
            keep
        });
        for (key, members) in wanted {
            if let Some(entry) = board.probes.get_mut(&key) {
                entry.members = members;
                continue;
            }
            let check = &key.check;
            let thresholds = Thresholds {
                rise: check.rise.max(1),
                fall: check.fall.max(1),
                warmup: Duration::from_millis(u64::from(check.warmup_ms)),
            };
            let interval = Duration::from_millis(u64::from(check.interval_ms.max(10)));
            let jitter = u64::from(
                check
                    .jitter_ms
                    .unwrap_or(check.interval_ms)
                    .min(check.interval_ms),
            );
            // `jitter_ms: 0` asks for the first probe at once: no grid either.
            let first = if jitter == 0 {
                now
            } else {
                let delay = Duration::from_millis(rand::thread_rng().gen_range(0..=jitter));
                first_start(self.epoch, now, delay, interval)
            };
            let task = tokio::spawn(probe_loop(
                key.clone(),
                self.prober.prepare(&key),
                Arc::downgrade(&self.board),
                self.in_flight.clone(),
                self.changed.clone(),
                first,
                interval,
            ))
            .abort_handle();
            board.probes.insert(
                key,
                Entry {
                    tracker: Tracker::new(Instant::now(), thresholds),
                    members,
                    task,
                },
            );
        }
        board.drained = drained;
        board.unchecked = unchecked;
    }

    /// Current health of every watched real server.
    pub fn snapshot(&self) -> HealthSnapshot {
        let board = lock(&self.board);
        let mut snap = HealthSnapshot::default();
        for (key, entry) in &board.probes {
            let t = &entry.tracker;
            let health = RealServerHealth {
                state: t.state,
                since: Some(t.since),
                last_error: t.last_error.clone(),
                latency_us: t
                    .last_latency
                    .map(|d| d.as_micros().min(u128::from(u64::MAX)) as u64),
                flaps: t.flaps,
                check: Some(key.check.describe()),
            };
            for m in &entry.members {
                if t.state == HealthState::Down {
                    snap.results.mark_failed(m.0, m.1);
                }
                snap.servers.insert(*m, health.clone());
            }
        }
        for (set, state) in [
            (&board.drained, HealthState::AdminDrained),
            (&board.unchecked, HealthState::NotChecked),
        ] {
            for m in set {
                snap.servers.insert(
                    *m,
                    RealServerHealth {
                        state,
                        since: None,
                        last_error: None,
                        latency_us: None,
                        flaps: 0,
                        check: None,
                    },
                );
            }
        }
        snap
    }

    /// The transitions since the last call, oldest first.
    pub fn take_transitions(&self) -> Vec<HealthTransition> {
        lock(&self.board).transitions.drain(..).collect()
    }
}

/// Probes `key` forever: first at `first`, then every `interval` on the same grid (a probe that waited for an
/// in-flight slot or ran long skips the ticks it missed instead of bunching them, and the next one comes on
/// the grid again, so probes that share a slot keep sharing it).
async fn probe_loop(
    key: ProbeKey,
    probe: ProbeFn,
    board: std::sync::Weak<Mutex<Board>>,
    in_flight: Arc<Semaphore>,
    changed: Arc<watch::Sender<u64>>,
    first: Instant,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let outcome = {
            let Ok(_slot) = in_flight.acquire().await else {
                return;
            };
            probe().await
        };
        let Some(board) = board.upgrade() else { return };
        let mut board = lock(&board);
        let board = &mut *board;
        let Some(entry) = board.probes.get_mut(&key) else {
            return;
        };
        let Some(change) = entry
            .tracker
            .record(Instant::now(), outcome.map_err(|e| e.to_string()))
        else {
            continue;
        };
        if change.to == HealthState::Down {
            warn!(target = %key.target, check = %key.check.describe(), reason = change.reason.as_deref().unwrap_or(""), "real server down");
        } else {
            info!(target = %key.target, check = %key.check.describe(), from = %change.from, to = %change.to, "real server health changed");
        }
        for (service, dest) in &entry.members {
            if board.transitions.len() >= MAX_TRANSITIONS {
                board.transitions.pop_front();
            }
            board.transitions.push_back(HealthTransition {
                service: service_text(service),
                address: dest.addr.to_string(),
                port: dest.port,
                from: change.from,
                to: change.to,
                at: change.at,
                reason: change.reason.clone(),
            });
        }
        board.version += 1;
        changed.send_replace(board.version);
    }
}
