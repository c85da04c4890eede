//! Instances wired to each other through a simulated link: adverts go through the codec (encoded, put in an
//! IPv4 packet, decoded) with a fixed delay, timers are deadlines in an event queue, and the clock is the
//! queue's. Checks the properties VRRP exists for: one master in steady state, failover after
//! Master_Down_Interval, hand-over within Skew_Time on a graceful stop.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::lab;
use crate::vrrp::{
    decode_ip_packet, encode_ip_packet, Action, Auth, Input, Instance, InstanceConfig, Ipv4Header,
    State, TransitionReason, Version, VRRP_MULTICAST_V4,
};

const LINK_DELAY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
enum Event {
    MasterDown {
        node: usize,
        generation: u64,
    },
    AdvertTimer {
        node: usize,
        generation: u64,
    },
    /// An encoded IPv4 packet from `from` arriving at `to`.
    Deliver {
        to: usize,
        packet: Vec<u8>,
    },
}

struct Node {
    instance: Instance,
    /// Link up: adverts leave and arrive.
    link: bool,
    master_down_generation: u64,
    advert_generation: u64,
    /// (time, from, to, reason) of every transition.
    transitions: Vec<(Instant, State, State, TransitionReason)>,
    /// Times at which this node sent an advert that left the node.
    sent: Vec<(Instant, u8)>,
    /// Holds the VIPs (AddVips seen, RemoveVips not since).
    vips: bool,
}

struct Sim {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
}

fn node_config(version: Version, interval: Duration, address: u8, priority: u8) -> InstanceConfig {
    InstanceConfig {
        version,
        vrid: 51,
        priority,
        advert_interval: interval,
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: false,
        primary_address: lab(address),
        vips: vec![lab(10), IpAddr::V4(Ipv4Addr::new(198, 18, 2, 254))],
        auth: Auth::NONE,
    }
}

impl Sim {
    fn new(configs: Vec<InstanceConfig>) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            nodes: configs
                .into_iter()
                .map(|c| Node {
                    instance: Instance::new(c).expect("valid config"),
                    link: true,
                    master_down_generation: 0,
                    advert_generation: 0,
                    transitions: Vec::new(),
                    sent: Vec::new(),
                    vips: false,
                })
                .collect(),
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    fn at(&self, offset: Duration) -> Instant {
        self.t0 + offset
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn input(&mut self, node: usize, input: Input) {
        let now = self.now;
        let actions = self.nodes[node].instance.handle(input, now);
        for action in actions {
            match action {
                Action::Transition { from, to, reason } => {
                    self.nodes[node].transitions.push((now, from, to, reason))
                }
                Action::SendAdvert(advert) => {
                    let n = &mut self.nodes[node];
                    if !n.link {
                        continue;
                    }
                    n.sent.push((now, advert.priority));
                    let IpAddr::V4(src) = n.instance.config().primary_address else {
                        panic!("the simulated link is IPv4")
                    };
                    let header = Ipv4Header::advert(src, VRRP_MULTICAST_V4, n.sent.len() as u16);
                    let packet = encode_ip_packet(&header, &advert);
                    for to in (0..self.nodes.len()).filter(|to| *to != node) {
                        let packet = packet.clone();
                        self.schedule(now + LINK_DELAY, Event::Deliver { to, packet });
                    }
                }
                Action::AddVips => self.nodes[node].vips = true,
                Action::RemoveVips => self.nodes[node].vips = false,
                Action::SendGratuitousArp | Action::Dropped(_) => {}
                Action::StartMasterDownTimer(after) => {
                    let n = &mut self.nodes[node];
                    n.master_down_generation += 1;
                    let generation = n.master_down_generation;
                    self.schedule(now + after, Event::MasterDown { node, generation });
                }
                Action::StartAdvertTimer(after) => {
                    let n = &mut self.nodes[node];
                    n.advert_generation += 1;
                    let generation = n.advert_generation;
                    self.schedule(now + after, Event::AdvertTimer { node, generation });
                }
                Action::CancelMasterDownTimer => self.nodes[node].master_down_generation += 1,
                Action::CancelAdvertTimer => self.nodes[node].advert_generation += 1,
            }
        }
    }

    /// Runs events up to `until`; `check` sees the simulation after every event.
    fn run_until(&mut self, until: Instant, mut check: impl FnMut(&Sim)) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            match event {
                Event::MasterDown { node, generation } => {
                    if generation == self.nodes[node].master_down_generation {
                        self.input(node, Input::MasterDownTimerExpired);
                    }
                }
                Event::AdvertTimer { node, generation } => {
                    if generation == self.nodes[node].advert_generation {
                        self.input(node, Input::AdvertTimerExpired);
                    }
                }
                Event::Deliver { to, packet } => {
                    if self.nodes[to].link {
                        let (header, advert) =
                            decode_ip_packet(&packet).expect("own encoding decodes");
                        self.input(
                            to,
                            Input::AdvertReceived {
                                from: header.src.into(),
                                advert,
                            },
                        );
                    }
                }
            }
            check(self);
        }
        self.now = until;
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].instance.state() == State::Master)
            .collect()
    }

    /// Asserts one master, holding the VIPs, with nobody else holding them; returns it.
    fn one_master(&self) -> usize {
        let masters = self.masters();
        assert_eq!(
            masters.len(),
            1,
            "at {:?}: masters {masters:?}",
            self.now - self.t0
        );
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].vips)
            .collect();
        assert_eq!(holders, masters, "at {:?}: VIP holders", self.now - self.t0);
        masters[0]
    }

    fn last_transition(&self, node: usize) -> (Instant, State, State, TransitionReason) {
        *self.nodes[node].transitions.last().expect("a transition")
    }
}

const V3_100MS: Duration = Duration::from_millis(100);

/// Runs two nodes until converged and checks one master at every event from 1 s to 20 s.
fn steady(
    version: Version,
    interval: Duration,
    a: (u8, u8),
    b: (u8, u8),
    b_starts: Duration,
) -> Sim {
    let mut sim = Sim::new(vec![
        node_config(version, interval, a.0, a.1),
        node_config(version, interval, b.0, b.1),
    ]);
    sim.input(0, Input::Startup);
    sim.run_until(sim.at(b_starts), |_| {});
    sim.input(1, Input::Startup);
    // Converged within one Master_Down_Interval of the second start.
    let settle = b_starts + interval * 4 + Duration::from_secs(1);
    sim.run_until(sim.at(settle), |_| {});
    let master = sim.one_master();
    let mut checked = 0;
    sim.run_until(sim.at(settle + Duration::from_secs(20)), |s| {
        assert_eq!(s.one_master(), master);
        checked += 1;
    });
    // At least one advert sent and received per interval.
    assert!(
        checked >= 2 * 20 * 1000 / interval.as_millis(),
        "{checked} events checked"
    );
    sim
}

#[test]
fn higher_priority_is_the_one_master_whoever_starts_first() {
    for (version, interval) in [
        (Version::V3, V3_100MS),
        (Version::V2, Duration::from_secs(1)),
    ] {
        for b_starts in [
            Duration::ZERO,
            Duration::from_millis(37),
            Duration::from_secs(10),
        ] {
            let sim = steady(version, interval, (2, 100), (3, 200), b_starts);
            assert_eq!(sim.one_master(), 1, "{version:?} b after {b_starts:?}");
            assert_eq!(sim.nodes[0].instance.master(), Some(lab(3)));
            assert_eq!(sim.nodes[1].instance.master(), Some(lab(3)));
        }
        // Reverse start order: the higher one starts first and stays.
        let sim = steady(
            version,
            interval,
            (2, 200),
            (3, 100),
            Duration::from_secs(5),
        );
        assert_eq!(sim.one_master(), 0);
    }
}

#[test]
fn equal_priorities_settle_on_the_higher_address_and_keep_a_running_master() {
    // Started together: both time out at once, the lower address yields to the higher.
    let sim = steady(Version::V3, V3_100MS, (2, 100), (3, 100), Duration::ZERO);
    assert_eq!(sim.one_master(), 1);
    assert!(sim.nodes[0]
        .transitions
        .iter()
        .any(|t| t.3 == TransitionReason::HigherAddress { from: lab(3) }));
    // Started later: an equal priority is no reason to preempt (RFC: priority >= local is accepted).
    let sim = steady(
        Version::V3,
        V3_100MS,
        (2, 100),
        (3, 100),
        Duration::from_secs(3),
    );
    assert_eq!(sim.one_master(), 0);
}

#[test]
fn no_preempt_keeps_the_running_master() {
    let mut sim = Sim::new(vec![
        node_config(Version::V3, V3_100MS, 2, 100),
        InstanceConfig {
            preempt: false,
            ..node_config(Version::V3, V3_100MS, 3, 200)
        },
    ]);
    sim.input(0, Input::Startup);
    sim.run_until(sim.at(Duration::from_secs(2)), |_| {});
    assert_eq!(sim.one_master(), 0);
    sim.input(1, Input::Startup);
    sim.run_until(sim.at(Duration::from_secs(20)), |s| {
        assert_eq!(s.one_master(), 0)
    });
}

#[test]
fn preempt_delay_defers_the_take_over() {
    let delay = Duration::from_secs(5);
    let mut sim = Sim::new(vec![
        node_config(Version::V3, V3_100MS, 2, 100),
        InstanceConfig {
            preempt_delay: delay,
            ..node_config(Version::V3, V3_100MS, 3, 200)
        },
    ]);
    sim.input(0, Input::Startup);
    sim.run_until(sim.at(Duration::from_secs(2)), |_| {});
    let b_start = sim.now;
    sim.input(1, Input::Startup);
    sim.run_until(b_start + delay, |s| assert_eq!(s.one_master(), 0));
    sim.run_until(b_start + delay + Duration::from_secs(1), |_| {});
    assert_eq!(sim.one_master(), 1);
    let (at, _, _, reason) = sim.last_transition(1);
    assert_eq!(reason, TransitionReason::MasterDown);
    let mdi = sim.nodes[1].instance.master_down_interval();
    assert!(
        at <= b_start + delay + mdi + LINK_DELAY,
        "took over {:?} after start",
        at - b_start
    );
}

#[test]
fn backup_takes_over_after_master_down_interval_when_the_master_link_fails() {
    for (version, interval) in [
        (Version::V3, V3_100MS),
        (Version::V2, Duration::from_secs(1)),
    ] {
        let mut sim = steady(version, interval, (2, 200), (3, 100), Duration::ZERO);
        assert_eq!(sim.one_master(), 0);
        let cut = sim.now + Duration::from_millis(13);
        sim.run_until(cut, |_| {});
        sim.nodes[0].link = false;
        let last_heard = sim.nodes[0].sent.last().expect("master advertised").0 + LINK_DELAY;
        let mdi = sim.nodes[1].instance.master_down_interval();
        sim.run_until(cut + mdi * 2, |_| {});
        let (at, from, to, reason) = sim.last_transition(1);
        assert_eq!(
            (from, to, reason),
            (State::Backup, State::Master, TransitionReason::MasterDown)
        );
        // Exactly Master_Down_Interval after the last advert it heard.
        assert_eq!(at - last_heard, mdi, "{version:?}");
        assert!(sim.nodes[1].vips);

        // The link comes back: the higher priority preempts again, one master.
        sim.nodes[0].link = true;
        let back = sim.now;
        sim.run_until(back + interval * 2, |_| {});
        assert_eq!(sim.one_master(), 0, "{version:?}");
        sim.run_until(back + Duration::from_secs(10), |s| {
            assert_eq!(s.one_master(), 0)
        });
    }
}

#[test]
fn graceful_stop_hands_over_within_skew_time() {
    for (version, interval) in [
        (Version::V3, V3_100MS),
        (Version::V2, Duration::from_secs(1)),
    ] {
        let mut sim = steady(version, interval, (2, 200), (3, 100), Duration::ZERO);
        let stop = sim.now + Duration::from_millis(29);
        sim.run_until(stop, |_| {});
        sim.input(0, Input::Shutdown);
        assert_eq!(
            sim.nodes[0].sent.last(),
            Some(&(stop, 0)),
            "priority 0 on stop"
        );
        assert!(!sim.nodes[0].vips);
        let skew = sim.nodes[1].instance.skew_time();
        sim.run_until(stop + interval, |_| {});
        let (at, from, to, reason) = sim.last_transition(1);
        assert_eq!(
            (from, to, reason),
            (
                State::Backup,
                State::Master,
                TransitionReason::MasterStopped
            )
        );
        assert_eq!(at - stop, LINK_DELAY + skew, "{version:?}");
        assert!(at - stop < interval, "within one advert interval");
        sim.run_until(stop + Duration::from_secs(10), |s| {
            assert_eq!(s.one_master(), 1)
        });
    }
}

#[test]
fn lowered_priority_hands_over_to_the_backup() {
    let mut sim = steady(Version::V3, V3_100MS, (2, 200), (3, 150), Duration::ZERO);
    sim.input(0, Input::SetPriority(100));
    let lowered = sim.now;
    sim.run_until(lowered + Duration::from_secs(2), |_| {});
    assert_eq!(sim.one_master(), 1);
    let (at, ..) = sim.last_transition(1);
    assert!(at - lowered <= sim.nodes[1].instance.master_down_interval() + LINK_DELAY);
    sim.run_until(lowered + Duration::from_secs(10), |s| {
        assert_eq!(s.one_master(), 1)
    });
}

#[test]
fn three_routers_one_master_and_ordered_failover() {
    let mut sim = Sim::new(vec![
        node_config(Version::V3, V3_100MS, 2, 100),
        node_config(Version::V3, V3_100MS, 3, 200),
        node_config(Version::V3, V3_100MS, 4, 150),
    ]);
    for i in 0..3 {
        sim.input(i, Input::Startup);
    }
    sim.run_until(sim.at(Duration::from_secs(2)), |_| {});
    sim.run_until(sim.at(Duration::from_secs(10)), |s| {
        assert_eq!(s.one_master(), 1)
    });
    // The master stops: the next priority (150) wins thanks to its shorter Skew_Time, nobody flaps.
    sim.input(1, Input::Shutdown);
    sim.run_until(sim.at(Duration::from_secs(11)), |_| {});
    assert_eq!(sim.one_master(), 2);
    assert_eq!(
        sim.nodes[0].transitions.len(),
        1,
        "the lowest never became master"
    );
    sim.run_until(sim.at(Duration::from_secs(20)), |s| {
        assert_eq!(s.one_master(), 2)
    });
}
