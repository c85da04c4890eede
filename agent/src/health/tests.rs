//! The scheduler on tokio's paused clock with a fake prober: rise/fall to the millisecond, hung servers,
//! deduplication, bounded concurrency, quorum.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_proto::{
    CheckKind, ForwardMethod, HealthCheck, HealthState, Protocol, Quorum, RealServer, RoleDocument,
    Scheduler, VirtualService,
};
use tokio::time::Instant;

use super::monitor::{ProbeFn, ProbeKey, Prober};
use super::{HealthConfig, HealthMonitor, ProbeError, QuorumStatus};
use crate::ipvs::{DestKey, IpProto, ServiceKey};

/// How a fake real server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Up,
    Refuse,
    /// Accepts and never answers: the probe ends at its timeout.
    Hang,
}

#[derive(Debug, Default)]
struct Fake {
    behaviour: Mutex<HashMap<SocketAddr, Behaviour>>,
    probes: Mutex<HashMap<SocketAddr, usize>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Fake {
    fn set(&self, target: &str, b: Behaviour) {
        self.behaviour
            .lock()
            .unwrap()
            .insert(target.parse().unwrap(), b);
    }
    fn probes(&self, target: &str) -> usize {
        let t: SocketAddr = target.parse().unwrap();
        self.probes.lock().unwrap().get(&t).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct FakeProber(Arc<Fake>);

impl Prober for FakeProber {
    fn prepare(&self, key: &ProbeKey) -> ProbeFn {
        let fake = self.0.clone();
        let target = key.target;
        let timeout_ms = key.check.timeout_ms;
        Box::new(move || {
            let fake = fake.clone();
            Box::pin(async move {
                *fake.probes.lock().unwrap().entry(target).or_default() += 1;
                let b = fake
                    .behaviour
                    .lock()
                    .unwrap()
                    .get(&target)
                    .copied()
                    .unwrap_or(Behaviour::Up);
                let now = fake.running.fetch_add(1, Ordering::SeqCst) + 1;
                fake.most_running.fetch_max(now, Ordering::SeqCst);
                let r = match b {
                    Behaviour::Up => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Ok(Duration::from_millis(2))
                    }
                    Behaviour::Refuse => Err(ProbeError::Connect("refused".into())),
                    Behaviour::Hang => {
                        tokio::time::sleep(Duration::from_millis(u64::from(timeout_ms))).await;
                        Err(ProbeError::Timeout(timeout_ms))
                    }
                };
                fake.running.fetch_sub(1, Ordering::SeqCst);
                r
            })
        })
    }
}

fn check() -> HealthCheck {
    HealthCheck {
        jitter_ms: Some(0),
        ..HealthCheck::tcp()
    }
}

fn service(vip: &str, port: u16, check: HealthCheck, servers: &[(&str, u16)]) -> VirtualService {
    VirtualService {
        vip: vip.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Wrr,
        forward: ForwardMethod::Nat,
        persistence_s: 0,
        persistence_prefix: None,
        check,
        real_servers: servers
            .iter()
            .map(|(a, p)| RealServer {
                address: a.parse().unwrap(),
                port: *p,
                weight: 1,
                enabled: true,
            })
            .collect(),
    }
}

fn role(services: Vec<VirtualService>) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services,
    }
}

fn monitor(fake: &Arc<Fake>, max_in_flight: usize) -> HealthMonitor {
    HealthMonitor::with_prober(
        HealthConfig {
            max_in_flight,
            ..HealthConfig::default()
        },
        Arc::new(FakeProber(fake.clone())),
    )
}

fn skey(vip: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: vip.parse().unwrap(),
        port,
    }
}

fn dkey(a: &str, port: u16) -> DestKey {
    DestKey {
        addr: a.parse().unwrap(),
        port,
    }
}

fn state(m: &HealthMonitor, svc: ServiceKey, dest: DestKey) -> HealthState {
    m.snapshot()
        .health_of(&svc, &dest)
        .map_or(HealthState::NotChecked, |h| h.state)
}

async fn at(start: Instant, ms: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn fall_and_rise_to_the_probe() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 16);
    let start = Instant::now();
    m.set_role(&role(vec![service(
        "198.18.0.10",
        80,
        check(),
        &[("198.18.2.1", 8080)],
    )]));
    let (svc, rs) = (skey("198.18.0.10", 80), dkey("198.18.2.1", 8080));
    let mut changes = m.subscribe();
    at(start, 100).await;
    assert_eq!(state(&m, svc, rs), HealthState::Up);
    // Refusing from 10.5 s: probes at 11, 12, 13 s fail; fall = 3 marks it down at the third.
    at(start, 10_500).await;
    fake.set("198.18.2.1:8080", Behaviour::Refuse);
    changes.borrow_and_update();
    at(start, 12_999).await;
    assert_eq!(state(&m, svc, rs), HealthState::Up);
    assert!(!changes.has_changed().unwrap());
    at(start, 13_001).await;
    assert_eq!(state(&m, svc, rs), HealthState::Down);
    assert!(changes.has_changed().unwrap());
    let snap = m.snapshot();
    assert!(snap.results.is_failed(&svc, &rs));
    let h = snap.health_of(&svc, &rs).unwrap();
    assert_eq!(h.last_error.as_deref(), Some("connect: refused"));
    assert_eq!(h.flaps, 1);
    assert_eq!(h.check.as_deref(), Some("TCP connect"));
    // Back at 20.5 s: rise = 2 successes, at 21 and 22 s.
    at(start, 20_500).await;
    fake.set("198.18.2.1:8080", Behaviour::Up);
    at(start, 21_999).await;
    assert_eq!(state(&m, svc, rs), HealthState::Down);
    at(start, 22_010).await;
    assert_eq!(state(&m, svc, rs), HealthState::Up);
    let t = m.take_transitions();
    let seen: Vec<(HealthState, HealthState)> = t.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        seen,
        vec![
            (HealthState::NotChecked, HealthState::Up),
            (HealthState::Up, HealthState::Down),
            (HealthState::Down, HealthState::Up)
        ]
    );
    assert_eq!(t[1].reason.as_deref(), Some("connect: refused"));
    assert_eq!(t[1].service, "198.18.0.10:80/tcp");
    assert!(m.take_transitions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hung_server_is_caught_by_the_timeout_within_interval_times_fall_plus_timeout() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 16);
    let start = Instant::now();
    m.set_role(&role(vec![service(
        "198.18.0.10",
        80,
        check(),
        &[("198.18.2.1", 80)],
    )]));
    let (svc, rs) = (skey("198.18.0.10", 80), dkey("198.18.2.1", 80));
    at(start, 5_000).await;
    // Hangs from just after the probe at 5 s: probes at 6, 7, 8 s time out at 6.5, 7.5, 8.5 s.
    at(start, 5_010).await;
    fake.set("198.18.2.1:80", Behaviour::Hang);
    at(start, 8_499).await;
    assert_eq!(state(&m, svc, rs), HealthState::Up);
    at(start, 8_501).await;
    assert_eq!(state(&m, svc, rs), HealthState::Down);
    // Within interval x fall + timeout = 3.5 s of the failure.
    let h = m.snapshot().health_of(&svc, &rs).cloned().unwrap();
    assert_eq!(h.last_error.as_deref(), Some("timeout after 500 ms"));
}

#[tokio::test(start_paused = true)]
async fn services_sharing_a_server_and_a_check_share_one_probe() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 16);
    let start = Instant::now();
    // Two services on the same real server with the same check (one names the port in the check), and a
    // third with a different check.
    let mut via_port = check();
    via_port.port = Some(8080);
    let mut other = check();
    other.kind = CheckKind::Http;
    other.path = Some("/healthz".into());
    m.set_role(&role(vec![
        service("198.18.0.10", 80, check(), &[("198.18.2.1", 8080)]),
        service("198.18.0.11", 80, via_port, &[("198.18.2.1", 9999)]),
        service("198.18.0.12", 80, other, &[("198.18.2.2", 8080)]),
    ]));
    assert_eq!(m.probe_count(), 2);
    at(start, 9_500).await;
    // Probes at 0..=9 s: ten, not twenty.
    assert_eq!(fake.probes("198.18.2.1:8080"), 10);
    fake.set("198.18.2.1:8080", Behaviour::Refuse);
    at(start, 12_500).await;
    // Both services see the shared result.
    let snap = m.snapshot();
    assert!(snap
        .results
        .is_failed(&skey("198.18.0.10", 80), &dkey("198.18.2.1", 8080)));
    assert!(snap
        .results
        .is_failed(&skey("198.18.0.11", 80), &dkey("198.18.2.1", 9999)));
    assert_eq!(
        m.take_transitions()
            .iter()
            .filter(|t| t.to == HealthState::Down)
            .count(),
        2
    );
    // A new role that drops one of the services keeps the probe (and its state) for the other.
    m.set_role(&role(vec![service(
        "198.18.0.10",
        80,
        check(),
        &[("198.18.2.1", 8080)],
    )]));
    assert_eq!(m.probe_count(), 1);
    assert_eq!(
        state(&m, skey("198.18.0.10", 80), dkey("198.18.2.1", 8080)),
        HealthState::Down
    );
    // An empty role stops every probe.
    m.set_role(&role(vec![]));
    assert_eq!(m.probe_count(), 0);
    let before = fake.probes("198.18.2.1:8080");
    at(start, 20_000).await;
    assert_eq!(fake.probes("198.18.2.1:8080"), before);
}

#[tokio::test(start_paused = true)]
async fn probes_in_flight_are_bounded() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 4);
    let start = Instant::now();
    let servers: Vec<(String, u16)> = (1..=40).map(|i| (format!("198.18.2.{i}"), 80)).collect();
    for (a, p) in &servers {
        fake.set(&format!("{a}:{p}"), Behaviour::Hang);
    }
    let refs: Vec<(&str, u16)> = servers.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    let mut c = check();
    c.timeout_ms = 100;
    m.set_role(&role(vec![service("198.18.0.10", 80, c, &refs)]));
    at(start, 5_000).await;
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 4);
    // 4 slots x 100 ms probes: 40 probes a second, each target still probed.
    assert!(servers
        .iter()
        .all(|(a, p)| fake.probes(&format!("{a}:{p}")) >= 3));
}

#[tokio::test(start_paused = true)]
async fn drained_and_unchecked_servers_are_not_probed() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 4);
    let mut s = service(
        "198.18.0.10",
        80,
        check(),
        &[("198.18.2.1", 80), ("198.18.2.2", 80)],
    );
    s.real_servers[1].enabled = false;
    let none = service(
        "198.18.0.11",
        80,
        HealthCheck::of_kind(CheckKind::None),
        &[("198.18.2.3", 80)],
    );
    m.set_role(&role(vec![s, none]));
    assert_eq!(m.probe_count(), 1);
    assert_eq!(
        state(&m, skey("198.18.0.10", 80), dkey("198.18.2.2", 80)),
        HealthState::AdminDrained
    );
    assert_eq!(
        m.snapshot()
            .health_of(&skey("198.18.0.11", 80), &dkey("198.18.2.3", 80))
            .map(|h| h.state),
        Some(HealthState::NotChecked)
    );
}

#[test]
fn quorum_lowers_the_priority_by_the_drops_of_services_below_it() {
    let mut c = check();
    c.quorum = Some(Quorum {
        min_healthy: 2,
        priority_drop: 60,
    });
    let mut c2 = check();
    c2.quorum = Some(Quorum {
        min_healthy: 1,
        priority_drop: 100,
    });
    let r = role(vec![
        service(
            "198.18.0.10",
            80,
            c,
            &[("198.18.2.1", 80), ("198.18.2.2", 80), ("198.18.2.3", 80)],
        ),
        service("198.18.0.11", 80, c2, &[("198.18.2.4", 80)]),
    ]);
    let mut health = crate::reconcile::HealthResults::default();
    assert_eq!(QuorumStatus::evaluate(&r, &health).priority(150), 150);
    health.mark_failed(skey("198.18.0.10", 80), dkey("198.18.2.1", 80));
    assert_eq!(QuorumStatus::evaluate(&r, &health).drop, 0);
    health.mark_failed(skey("198.18.0.10", 80), dkey("198.18.2.2", 80));
    let q = QuorumStatus::evaluate(&r, &health);
    assert_eq!((q.drop, q.priority(150)), (60, 90));
    assert_eq!(q.below, vec!["198.18.0.10:80/tcp"]);
    health.mark_failed(skey("198.18.0.11", 80), dkey("198.18.2.4", 80));
    // 150 - 160 stays a valid priority.
    assert_eq!(QuorumStatus::evaluate(&r, &health).priority(150), 1);
}

/// The hook end to end with the real VRRP state machine: a Master at 150 whose service drops below quorum
/// advertises 90 (150 - 60) and yields to a Backup advertising 120; back at quorum it advertises 150 again.
#[tokio::test(start_paused = true)]
async fn quorum_lowers_a_vrrp_masters_priority_until_it_yields() {
    use crate::health::{HealthChecks, PrioritySink};
    use crate::vrrp::instance::{Action, Input, Instance, InstanceConfig, State};
    use crate::vrrp::packet::{Advertisement, Auth, Version};
    use std::net::Ipv4Addr;

    /// Feeds priorities to the instance as `Input::SetPriority`, as the VRRP task does with its channel.
    #[derive(Debug)]
    struct ToInstance(Arc<Mutex<(Instance, Vec<Action>)>>);
    impl PrioritySink for ToInstance {
        fn set_priority(&self, priority: u8) {
            let mut g = self.0.lock().unwrap();
            let actions =
                g.0.handle(Input::SetPriority(priority), std::time::Instant::now());
            g.1.extend(actions);
        }
    }
    let lab = |n: u8| std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, n));
    let vips = vec![lab(10)];
    let mut instance = Instance::new(InstanceConfig {
        version: Version::V3,
        vrid: 51,
        priority: 150,
        advert_interval: Duration::from_secs(1),
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: false,
        primary_address: lab(2),
        vips: vips.clone(),
        auth: Auth::NONE,
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    instance.handle(Input::Startup, t0);
    let down = instance.master_down_deadline().unwrap();
    instance.handle(Input::MasterDownTimerExpired, down);
    assert_eq!(instance.state(), State::Master);
    let shared = Arc::new(Mutex::new((instance, Vec::new())));

    let fake = Arc::new(Fake::default());
    let mut c = check();
    c.quorum = Some(Quorum {
        min_healthy: 2,
        priority_drop: 60,
    });
    let mut r = role(vec![service(
        "198.18.0.10",
        80,
        c,
        &[("198.18.2.1", 80), ("198.18.2.2", 80)],
    )]);
    r.vrrp = Some(lbfleet_proto::VrrpConfig {
        version: 3,
        vrid: 51,
        interface: "eth0".into(),
        priority: 150,
        advert_interval_ms: 1000,
        preempt: true,
        preempt_delay_ms: 0,
        vips: vec!["198.18.0.10/32".into()],
        unicast_peers: vec![],
        garp: Default::default(),
        conn_sync: None,
    });
    let mut checks = HealthChecks::with_monitor(
        monitor(&fake, 16),
        Some(Arc::new(ToInstance(shared.clone()))),
    );
    let start = Instant::now();
    checks.set_role(&r);
    assert_eq!(checks.priority(), Some(150));
    at(start, 100).await;
    fake.set("198.18.2.2:80", Behaviour::Refuse);
    // fall = 3 failures one second apart; each change wakes the loop, which refreshes.
    while checks.priority() != Some(90) {
        tokio::time::timeout(Duration::from_secs(10), checks.changed())
            .await
            .unwrap();
        checks.refresh(&r);
    }
    assert_eq!(checks.priority(), Some(90));
    {
        let mut g = shared.lock().unwrap();
        assert!(
            g.1.iter()
                .any(|a| matches!(a, Action::SendAdvert(ad) if ad.priority == 90)),
            "{:?}",
            g.1
        );
        // A Backup at 120 now preempts this Master.
        let now = std::time::Instant::now();
        g.0.handle(
            Input::AdvertReceived {
                from: lab(3),
                advert: Advertisement {
                    version: Version::V3,
                    vrid: 51,
                    priority: 120,
                    advert_interval: 100,
                    auth: Auth::NONE,
                    addresses: vips.clone(),
                },
            },
            now,
        );
        assert_eq!(g.0.state(), State::Backup);
        g.1.clear();
    }
    fake.set("198.18.2.2:80", Behaviour::Up);
    while checks.priority() != Some(150) {
        tokio::time::timeout(Duration::from_secs(10), checks.changed())
            .await
            .unwrap();
        checks.refresh(&r);
    }
    assert_eq!(shared.lock().unwrap().0.priority(), 150);
}

/// DR and TUN (issue 23 item 1): a real server's check goes to its own address (and the check's port), never
/// through the VIP, which a DR/TUN real server holds too and the balancer would answer itself.
#[tokio::test(start_paused = true)]
async fn dr_and_tun_real_servers_are_probed_at_their_own_address() {
    let fake = Arc::new(Fake::default());
    let m = monitor(&fake, 16);
    let start = Instant::now();
    let mut dr = service("198.18.0.10", 80, check(), &[("198.18.0.51", 80)]);
    dr.forward = ForwardMethod::Dr;
    let mut c = check();
    c.port = Some(8080);
    let mut tun = service("198.18.0.11", 443, c, &[("198.18.3.7", 443)]);
    tun.forward = ForwardMethod::Tun;
    m.set_role(&role(vec![dr, tun]));
    at(start, 3_000).await;
    assert!(fake.probes("198.18.0.51:80") >= 2);
    assert!(fake.probes("198.18.3.7:8080") >= 2);
    assert_eq!(fake.probes("198.18.3.7:443"), 0);
    let seen: Vec<SocketAddr> = fake.probes.lock().unwrap().keys().copied().collect();
    assert!(
        seen.iter()
            .all(|t| !["198.18.0.10", "198.18.0.11"].contains(&t.ip().to_string().as_str())),
        "a probe went to a VIP: {seen:?}"
    );
}

/// Random first delays land on the slot grid: at most 10 distinct start instants per second (plus the one
/// that rounds up to the interval's end), each at or after the delay asked for and less than one slot after.
#[test]
fn first_probes_are_rounded_up_to_a_shared_slot() {
    use super::monitor::{first_start, slot_of};
    assert_eq!(slot_of(Duration::from_secs(1)), Duration::from_millis(100));
    assert_eq!(
        slot_of(Duration::from_millis(400)),
        Duration::from_millis(50)
    );
    assert_eq!(slot_of(Duration::from_secs(5)), Duration::from_millis(100));
    assert_eq!(slot_of(Duration::from_millis(4)), Duration::from_millis(1));
    let epoch = Instant::now();
    let now = epoch + Duration::from_millis(1_234);
    let interval = Duration::from_secs(1);
    let slot = slot_of(interval);
    let mut starts = std::collections::HashSet::new();
    for ms in 0..=1_000u64 {
        let delay = Duration::from_millis(ms);
        let start = first_start(epoch, now, delay, interval);
        assert!(start >= now + delay, "{ms}: before its delay");
        assert!(start < now + delay + slot, "{ms}: more than a slot late");
        let since = (start - epoch).as_nanos();
        assert_eq!(since % slot.as_nanos(), 0, "{ms}: off the grid");
        starts.insert(start);
    }
    assert!(starts.len() <= 11, "{} distinct starts", starts.len());
}
