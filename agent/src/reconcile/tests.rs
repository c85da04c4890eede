//! Plan computation and apply tests against the recording applier.
#![allow(clippy::unwrap_used)]

use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};

use rand::Rng;

use std::collections::BTreeMap;

use super::plan::same_service;
use super::*;
use crate::ipvs::{DestKey, Destination, Forward, IpProto, Service, ServiceKey, SVC_F_PERSISTENT};

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        enabled: true,
    }
}

fn vs(vip: &str, port: u16, protocol: Protocol, real_servers: Vec<RealServer>) -> VirtualService {
    VirtualService {
        vip: vip.parse().unwrap(),
        port,
        protocol,
        scheduler: Scheduler::Wrr,
        forward: ForwardMethod::Nat,
        persistence_s: 0,
        persistence_prefix: None,
        check: HealthCheck::tcp(),
        real_servers,
    }
}

fn role(generation: u64, services: Vec<VirtualService>) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services,
    }
}

fn example() -> RoleDocument {
    role(
        1,
        vec![
            vs(
                "198.18.0.10",
                80,
                Protocol::Tcp,
                vec![rs("198.18.2.1", 8080, 1), rs("198.18.2.2", 8080, 2)],
            ),
            vs(
                "198.18.0.10",
                53,
                Protocol::Udp,
                vec![rs("198.18.2.3", 53, 1)],
            ),
        ],
    )
}

fn key(vip: &str, port: u16, protocol: IpProto) -> ServiceKey {
    ServiceKey::Addr {
        protocol,
        addr: vip.parse().unwrap(),
        port,
    }
}

fn dkey(addr: &str, port: u16) -> DestKey {
    DestKey {
        addr: addr.parse().unwrap(),
        port,
    }
}

fn desired(r: &RoleDocument) -> IpvsState {
    let (s, errors) = desired_state(r, &HealthResults::default());
    assert!(errors.is_empty(), "{errors:?}");
    s
}

#[test]
fn from_empty_adds_services_before_their_destinations() {
    let plan = plan(&desired(&example()), &IpvsState::default());
    let kinds: Vec<&str> = plan
        .ops
        .iter()
        .map(|op| match op {
            Op::AddService(_) => "svc",
            Op::AddDest(..) => "dest",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["svc", "svc", "dest", "dest", "dest"]);
}

#[test]
fn equal_state_is_an_empty_plan() {
    let want = desired(&example());
    assert!(plan(&want, &want).is_empty());
    // Also after a round trip through the fake kernel, whose flags and counters differ from the request.
    let mut k = RecordingApplier::new();
    let first = reconcile(&mut k, &want).unwrap();
    assert_eq!(first.planned, 5);
    assert_eq!(first.applied, 5);
    k.clear_log();
    let again = reconcile(&mut k, &want).unwrap();
    assert_eq!(again.planned, 0);
    assert!(k.log().is_empty());
}

#[test]
fn hashed_flag_from_the_kernel_is_not_a_difference() {
    let want = desired(&example());
    let mut have = want.clone();
    for s in have.services.values_mut() {
        let mut svc = s.service().clone();
        svc.flags |= crate::ipvs::SVC_F_HASHED;
        s.set_service(svc);
    }
    assert_ne!(want, have);
    assert!(plan(&want, &have).is_empty());
}

#[test]
fn one_weight_change_is_one_edit() {
    let before = desired(&example());
    let mut r = example();
    r.services[0].real_servers[1].weight = 5;
    let after = desired(&r);
    let p = plan(&after, &before);
    assert_eq!(
        p.ops,
        [Op::EditDest(
            key("198.18.0.10", 80, IpProto::Tcp),
            Destination::new("198.18.2.2".parse().unwrap(), 8080, Forward::Masq, 5)
        )]
    );
}

#[test]
fn drained_and_failed_real_servers_get_weight_zero() {
    let mut r = example();
    r.services[0].real_servers[0].enabled = false;
    let mut health = HealthResults::default();
    let svc = key("198.18.0.10", 80, IpProto::Tcp);
    health.mark_failed(svc, dkey("198.18.2.2", 8080));
    let (s, _) = desired_state(&r, &health);
    let st = &s.services[&svc];
    assert_eq!(st.dest(&dkey("198.18.2.1", 8080)).unwrap().weight, 0);
    assert_eq!(st.dest(&dkey("198.18.2.2", 8080)).unwrap().weight, 0);
    health.mark_healthy(svc, dkey("198.18.2.2", 8080));
    let (s, _) = desired_state(&r, &health);
    assert_eq!(
        s.services[&svc]
            .dest(&dkey("198.18.2.2", 8080))
            .unwrap()
            .weight,
        2
    );
}

#[test]
fn down_servers_are_removed_by_policy_and_the_sorry_server_takes_over_when_none_serves() {
    use lbfleet_proto::{DownAction, SorryServer};
    let mut r = example();
    r.services[0].check.on_down = DownAction::Remove;
    r.services[0].check.sorry_server = Some(SorryServer {
        address: "198.18.2.200".into(),
        port: 80,
    });
    let svc = key("198.18.0.10", 80, IpProto::Tcp);
    let sorry = dkey("198.18.2.200", 80);
    let mut health = HealthResults::default();
    let (s, _) = desired_state(&r, &health);
    assert_eq!(s.services[&svc].dests().len(), 2);
    assert!(s.services[&svc].dest(&sorry).is_none());
    // One down: removed, no sorry server yet.
    health.mark_failed(svc, dkey("198.18.2.1", 8080));
    let (s, _) = desired_state(&r, &health);
    assert!(s.services[&svc].dest(&dkey("198.18.2.1", 8080)).is_none());
    assert!(s.services[&svc].dest(&sorry).is_none());
    // The other drained by the API: nobody serves, the sorry server does (weight 1). The drained one stays
    // at weight 0 whatever its check says (the API wins).
    r.services[0].real_servers[1].enabled = false;
    let (s, _) = desired_state(&r, &health);
    let st = &s.services[&svc];
    assert_eq!(st.dest(&dkey("198.18.2.2", 8080)).unwrap().weight, 0);
    assert_eq!(st.dest(&sorry).unwrap().weight, 1);
    // Back up: the sorry server goes, the server returns with its weight.
    health.mark_healthy(svc, dkey("198.18.2.1", 8080));
    let (s, _) = desired_state(&r, &health);
    assert!(s.services[&svc].dest(&sorry).is_none());
    assert_eq!(
        s.services[&svc]
            .dest(&dkey("198.18.2.1", 8080))
            .unwrap()
            .weight,
        1
    );
    // The plan from "all down" to "one back" is two operations: add the server, delete the sorry server.
    health.mark_failed(svc, dkey("198.18.2.1", 8080));
    let (down, _) = desired_state(&r, &health);
    health.mark_healthy(svc, dkey("198.18.2.1", 8080));
    let (up, _) = desired_state(&r, &health);
    let p = plan(&up, &down);
    assert_eq!(
        p.ops,
        vec![
            Op::DelDest(svc, sorry),
            Op::AddDest(
                svc,
                Destination::new("198.18.2.1".parse().unwrap(), 8080, Forward::Masq, 1)
            ),
        ]
    );
}

#[test]
fn services_not_in_the_role_are_deleted_whole_and_first() {
    let before = desired(&example());
    let mut r = example();
    r.services.remove(1); // drop UDP 53
    r.services[0].real_servers.remove(0); // drop one destination of TCP 80
    r.services.push(vs(
        "198.18.0.11",
        443,
        Protocol::Tcp,
        vec![rs("198.18.2.9", 443, 1)],
    ));
    let p = plan(&desired(&r), &before);
    let tcp80 = key("198.18.0.10", 80, IpProto::Tcp);
    let new = key("198.18.0.11", 443, IpProto::Tcp);
    assert_eq!(p.ops.len(), 4, "{:?}", p.ops);
    assert_eq!(p.ops[0], Op::DelDest(tcp80, dkey("198.18.2.1", 8080)));
    assert_eq!(
        p.ops[1],
        Op::DelService(key("198.18.0.10", 53, IpProto::Udp))
    );
    assert!(matches!(&p.ops[2], Op::AddService(s) if s.key == new));
    assert!(matches!(&p.ops[3], Op::AddDest(k, _) if *k == new));
}

#[test]
fn scheduler_and_persistence_changes_edit_the_service_in_place() {
    let before = desired(&example());
    let mut r = example();
    r.services[0].scheduler = Scheduler::Mh;
    r.services[1].persistence_s = 300;
    r.services[1].persistence_prefix = Some(24);
    let p = plan(&desired(&r), &before);
    assert_eq!(p.ops.len(), 2);
    // Keys sort TCP before UDP.
    let Op::EditService(tcp) = &p.ops[0] else {
        panic!("{:?}", p.ops)
    };
    assert_eq!(tcp.scheduler, "mh");
    let Op::EditService(udp) = &p.ops[1] else {
        panic!("{:?}", p.ops)
    };
    assert!(udp.persistent());
    assert_eq!((udp.timeout_s, udp.netmask_prefix), (300, 24));
}

#[test]
fn forward_method_change_edits_each_destination() {
    let before = desired(&example());
    let mut r = example();
    r.services[0].forward = ForwardMethod::Dr;
    let p = plan(&desired(&r), &before);
    assert_eq!(p.ops.len(), 2);
    assert!(p
        .ops
        .iter()
        .all(|op| matches!(op, Op::EditDest(_, d) if d.forward == Forward::Route)));
}

#[test]
fn ipv6_services_and_bad_addresses() {
    let mut r = example();
    r.services.push(vs(
        "2001:db8::10",
        80,
        Protocol::Tcp,
        vec![rs("2001:db8::2:1", 80, 1)],
    ));
    // A sorry server is text (part of the health check): a bad one is skipped and named.
    let mut sorry = vs("198.18.0.11", 80, Protocol::Tcp, vec![]);
    sorry.check.sorry_server = Some(lbfleet_proto::SorryServer {
        address: "not-an-ip".into(),
        port: 80,
    });
    r.services.push(sorry);
    let (s, errors) = desired_state(&r, &HealthResults::default());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("bad sorry server address"), "{errors:?}");
    let v6 = &s.services[&key("2001:db8::10", 80, IpProto::Tcp)];
    assert_eq!(v6.service().netmask_prefix, 128);
    assert_eq!(v6.dests().len(), 1);
    // Real-server and VIP addresses are typed: a document with a bad one does not parse, and says where.
    let mut json = serde_json::to_value(&r).unwrap();
    json["services"][0]["real_servers"][0]["address"] = "not-an-ip".into();
    let e = serde_json::from_value::<RoleDocument>(json).unwrap_err();
    assert!(e.to_string().contains("invalid IP address syntax"), "{e}");
}

#[test]
fn out_of_band_flush_is_repaired_and_partial_failure_is_retried() {
    let want = desired(&example());
    let mut k = RecordingApplier::new();
    reconcile(&mut k, &want).unwrap();
    // Someone runs `ipvsadm -C`.
    k.tamper(|s| s.services.clear());
    k.clear_log();
    k.fail_next("Cannot allocate memory");
    let out = reconcile(&mut k, &want).unwrap();
    assert_eq!(out.planned, 5);
    // The refused add of TCP 80 makes its two destination adds fail too (no such service).
    assert_eq!(out.applied, 2);
    assert_eq!(out.errors.len(), 3);
    assert!(!out.converged());
    // The next pass adds what is missing only.
    assert_ne!(k.state(), want);
    let retry = reconcile(&mut k, &want).unwrap();
    assert!(retry.converged(), "{:?}", retry.errors);
    assert_eq!(retry.planned, 3);
    assert_eq!(k.state(), want);
    assert!(reconcile(&mut k, &want).unwrap().planned == 0);
}

#[test]
fn recording_applier_enforces_kernel_rules() {
    let mut k = RecordingApplier::new();
    let svc = Service::new(key("198.18.0.10", 80, IpProto::Tcp), "rr");
    let d = Destination::new("198.18.2.1".parse().unwrap(), 80, Forward::Route, 1);
    let r = k.apply(&[
        Op::AddDest(svc.key, d),
        Op::AddService(svc.clone()),
        Op::AddService(svc.clone()),
        Op::AddDest(svc.key, d),
        Op::DelDest(svc.key, dkey("198.18.2.2", 80)),
    ]);
    let ok: Vec<bool> = r.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [false, true, false, true, false]);
}

#[test]
fn reconciler_fast_path_plans_against_what_it_knows() {
    let k = RecordingApplier::new();
    let mut r = Reconciler::new(Box::new(k.clone()));
    let want = desired(&example());
    assert_eq!(r.full(&want).unwrap().applied, 5);
    k.clear_log();
    let mut changed = example();
    changed.services[0].real_servers[0].weight = 4;
    let out = r.fast(&desired(&changed)).unwrap();
    assert_eq!((out.planned, out.applied), (1, 1));
    assert_eq!(k.log().len(), 1);
    assert_eq!(k.state(), desired(&changed));

    // A change behind the agent's back is invisible to the fast path and repaired by the next full pass.
    k.tamper(|s| s.services.clear());
    assert_eq!(r.fast(&desired(&changed)).unwrap().planned, 0);
    assert_eq!(r.full(&desired(&changed)).unwrap().planned, 5);
    assert_eq!(k.state(), desired(&changed));

    // A refused change drops the knowledge: the next fast pass reads the kernel first.
    k.fail_next("Cannot allocate memory");
    let out = r.fast(&want).unwrap();
    assert_eq!(out.errors.len(), 1);
    let retry = r.fast(&want).unwrap();
    assert!(retry.converged());
    assert_eq!(k.state(), want);
}

/// The planner as it was before fingerprints and the side-by-side walk: a lookup per service and per
/// destination, and a full comparison of each kept service. The property tests below hold `plan` to it.
fn reference_plan(desired: &IpvsState, observed: &IpvsState) -> ReconcilePlan {
    let mut del_dests = Vec::new();
    let mut del_services = Vec::new();
    let mut edit_services = Vec::new();
    let mut add_services = Vec::new();
    let mut add_dests = Vec::new();
    let mut edit_dests = Vec::new();
    for key in observed.services.keys() {
        if !desired.services.contains_key(key) {
            del_services.push(Op::DelService(*key));
        }
    }
    for (key, want) in &desired.services {
        let empty = BTreeMap::new();
        let have_dests = match observed.services.get(key) {
            Some(have) => {
                if !same_service(want.service(), have.service()) {
                    edit_services.push(Op::EditService(want.service().clone()));
                }
                for d in have.dests() {
                    if want.dest(&d.key).is_none() {
                        del_dests.push(Op::DelDest(*key, d.key));
                    }
                }
                have.dests().iter().map(|d| (d.key, *d)).collect()
            }
            None => {
                add_services.push(Op::AddService(want.service().clone()));
                empty
            }
        };
        for d in want.dests() {
            let dk = &d.key;
            match have_dests.get(dk) {
                None => add_dests.push(Op::AddDest(*key, *d)),
                Some(h) if h != d => edit_dests.push(Op::EditDest(*key, *d)),
                Some(_) => {}
            }
        }
    }
    let mut ops = del_dests;
    ops.extend(del_services);
    ops.extend(edit_services);
    ops.extend(add_services);
    ops.extend(add_dests);
    ops.extend(edit_dests);
    ReconcilePlan { ops }
}

mod random {
    use rand::rngs::StdRng;
    use rand::Rng;

    use super::*;
    use crate::ipvs::{Family, SVC_F_HASHED, SVC_F_ONEPACKET};

    /// Keys from small pools, so two random tables share most services and destinations.
    pub fn service_key(rng: &mut StdRng) -> ServiceKey {
        match rng.gen_range(0..8) {
            0 => ServiceKey::Fwmark {
                family: if rng.gen() { Family::V4 } else { Family::V6 },
                mark: rng.gen_range(1..4),
            },
            1 => ServiceKey::Addr {
                protocol: IpProto::Udp,
                addr: format!("2001:db8::{}", rng.gen_range(1..4))
                    .parse()
                    .unwrap(),
                port: 53,
            },
            _ => ServiceKey::Addr {
                protocol: if rng.gen_bool(0.8) {
                    IpProto::Tcp
                } else {
                    IpProto::Udp
                },
                addr: format!("198.18.0.{}", rng.gen_range(1..6)).parse().unwrap(),
                port: rng.gen_range(80..84),
            },
        }
    }

    pub fn service(rng: &mut StdRng, key: ServiceKey) -> Service {
        let mut s = Service::new(key, ["rr", "wrr", "mh"][rng.gen_range(0..3)]);
        if rng.gen_bool(0.3) {
            s.flags |= SVC_F_PERSISTENT;
        }
        if rng.gen_bool(0.1) {
            s.flags |= SVC_F_ONEPACKET;
        }
        if rng.gen_bool(0.2) {
            s.flags |= SVC_F_HASHED;
        }
        // Persistence settings also on non-persistent services: they must not count there.
        s.timeout_s = [0, 300, 600][rng.gen_range(0..3)];
        s.netmask_prefix = [24, key.family().max_prefix()][rng.gen_range(0..2)];
        if rng.gen_bool(0.05) {
            s.pe_name = Some("sip".into());
        }
        s
    }

    pub fn dest(rng: &mut StdRng, family: Family) -> Destination {
        let addr = match family {
            Family::V4 => format!("198.18.2.{}", rng.gen_range(1..8)),
            Family::V6 => format!("2001:db8::2:{}", rng.gen_range(1..8)),
        };
        let forward = [Forward::Masq, Forward::Route, Forward::Tunnel][rng.gen_range(0..3)];
        let mut d = Destination::new(
            addr.parse().unwrap(),
            rng.gen_range(8080..8083),
            forward,
            rng.gen_range(0..4),
        );
        if rng.gen_bool(0.05) {
            d.u_threshold = rng.gen_range(1..3);
        }
        if rng.gen_bool(0.05) {
            d.l_threshold = rng.gen_range(1..3);
        }
        d
    }

    pub fn state(rng: &mut StdRng) -> IpvsState {
        let mut st = IpvsState::default();
        for _ in 0..rng.gen_range(0..12) {
            let key = service_key(rng);
            let dests = (0..rng.gen_range(0..6))
                .map(|_| dest(rng, key.family()))
                .collect();
            st.services
                .insert(key, ServiceState::new(service(rng, key), dests));
        }
        st
    }

    /// A few random edits of `st`: the kind of difference a new role generation or a tamperer makes.
    pub fn mutate(rng: &mut StdRng, st: &IpvsState) -> IpvsState {
        let mut out = st.clone();
        for _ in 0..rng.gen_range(0..4) {
            let keys: Vec<ServiceKey> = out.services.keys().copied().collect();
            let pick = (!keys.is_empty()).then(|| keys[rng.gen_range(0..keys.len())]);
            match (rng.gen_range(0..7), pick) {
                (0, Some(k)) => {
                    out.services.remove(&k);
                }
                (1, Some(k)) => {
                    let s = service(rng, k);
                    if let Some(have) = out.services.get_mut(&k) {
                        have.set_service(s);
                    }
                }
                (2, Some(k)) => {
                    let d = dest(rng, k.family());
                    if let Some(have) = out.services.get_mut(&k) {
                        have.insert_dest(d);
                    }
                }
                (3 | 4, Some(k)) => {
                    if let Some(have) = out.services.get_mut(&k) {
                        let dks: Vec<DestKey> = have.dests().iter().map(|d| d.key).collect();
                        if !dks.is_empty() {
                            let dk = dks[rng.gen_range(0..dks.len())];
                            if rng.gen() {
                                have.remove_dest(&dk);
                            } else if let Some(mut d) = have.dest(&dk).copied() {
                                d.weight = rng.gen_range(0..4);
                                have.insert_dest(d);
                            }
                        }
                    }
                }
                _ => {
                    let k = service_key(rng);
                    let s = ServiceState::new(service(rng, k), Vec::new());
                    out.services.insert(k, s);
                }
            }
        }
        out
    }
}

#[test]
fn plan_matches_the_reference_planner_on_random_tables() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1b5f_1ee7);
    let mut nonempty = 0;
    for _ in 0..5000 {
        let a = random::state(&mut rng);
        let b = if rng.gen_bool(0.8) {
            random::mutate(&mut rng, &a)
        } else {
            random::state(&mut rng)
        };
        for (want, have) in [(&a, &b), (&b, &a)] {
            let p = plan(want, have);
            assert_eq!(
                p,
                reference_plan(want, have),
                "want {want:?}\nhave {have:?}"
            );
            assert_eq!(p, plan_exact(want, have));
            nonempty += usize::from(!p.is_empty());
            // Applied to the observed table, the plan converges: nothing left to do, and what the kernel
            // would hold equals the desired table up to what `same_service` ignores.
            let mut kernel = have.clone();
            for op in &p.ops {
                apply_to(&mut kernel, op).unwrap();
            }
            assert!(plan(want, &kernel).is_empty());
            assert_eq!(
                kernel.services.keys().collect::<Vec<_>>(),
                want.services.keys().collect::<Vec<_>>()
            );
            for (k, s) in &kernel.services {
                assert_eq!(s.fingerprint(), want.services[k].fingerprint());
                assert_eq!(s.dests(), want.services[k].dests());
            }
        }
    }
    assert!(nonempty > 5000, "the generator makes too few differences");
}

#[test]
fn fingerprint_follows_every_change_the_planner_cares_about() {
    let svc = Service::new(key("198.18.0.10", 80, IpProto::Tcp), "wrr");
    let d1 = Destination::new("198.18.2.1".parse().unwrap(), 8080, Forward::Masq, 1);
    let d2 = Destination::new("198.18.2.2".parse().unwrap(), 8080, Forward::Masq, 1);
    let base = ServiceState::new(svc.clone(), vec![d1, d2]);
    let fp = base.fingerprint();
    assert_eq!(
        fp,
        ServiceState::new(svc.clone(), vec![d2, d1]).fingerprint()
    );

    let with_service = |f: &dyn Fn(&mut Service)| {
        let mut s = base.clone();
        let mut changed = svc.clone();
        f(&mut changed);
        s.set_service(changed);
        s.fingerprint()
    };
    assert_ne!(fp, with_service(&|s| s.scheduler = "rr".into()));
    assert_ne!(fp, with_service(&|s| s.scheduler = "wr".into()));
    assert_ne!(fp, with_service(&|s| s.flags |= SVC_F_PERSISTENT));
    assert_ne!(
        fp,
        with_service(&|s| s.flags |= crate::ipvs::SVC_F_ONEPACKET)
    );
    assert_ne!(fp, with_service(&|s| s.pe_name = Some("sip".into())));
    // What `same_service` ignores, the fingerprint ignores too.
    assert_eq!(fp, with_service(&|s| s.flags |= crate::ipvs::SVC_F_HASHED));
    assert_eq!(fp, with_service(&|s| s.timeout_s = 300));
    assert_eq!(fp, with_service(&|s| s.netmask_prefix = 24));
    let persistent = with_service(&|s| s.flags |= SVC_F_PERSISTENT);
    let p_timeout = with_service(&|s| {
        s.flags |= SVC_F_PERSISTENT;
        s.timeout_s = 300;
    });
    let p_mask = with_service(&|s| {
        s.flags |= SVC_F_PERSISTENT;
        s.netmask_prefix = 24;
    });
    assert_ne!(persistent, p_timeout);
    assert_ne!(persistent, p_mask);
    assert_ne!(p_timeout, p_mask);

    let with_dest = |f: &dyn Fn(&mut Destination)| {
        let mut s = base.clone();
        let mut d = d2;
        f(&mut d);
        s.remove_dest(&d2.key);
        s.insert_dest(d);
        s.fingerprint()
    };
    assert_eq!(fp, with_dest(&|_| {}));
    assert_ne!(fp, with_dest(&|d| d.weight = 2));
    assert_ne!(fp, with_dest(&|d| d.forward = Forward::Route));
    assert_ne!(fp, with_dest(&|d| d.u_threshold = 5));
    assert_ne!(fp, with_dest(&|d| d.l_threshold = 5));
    assert_ne!(fp, with_dest(&|d| d.key.port = 8081));
    assert_ne!(
        fp,
        with_dest(&|d| d.key.addr = "198.18.2.3".parse().unwrap())
    );

    let mut fewer = base.clone();
    assert_eq!(fewer.remove_dest(&d2.key), Some(d2));
    assert_ne!(fp, fewer.fingerprint());
    assert_eq!(fewer.remove_dest(&d2.key), None);
    assert_eq!(
        fewer.fingerprint(),
        ServiceState::new(svc.clone(), vec![d1]).fingerprint()
    );
    assert_ne!(fp, ServiceState::new(svc.clone(), Vec::new()).fingerprint());
    // Built from an unsorted list with a duplicate key: sorted, and the later duplicate wins.
    let mut heavy = d1;
    heavy.weight = 7;
    let dup = ServiceState::new(svc.clone(), vec![d2, d1, heavy]);
    assert_eq!(dup.dests(), [heavy, d2]);
    let mut expected = base.clone();
    expected.insert_dest(heavy);
    assert_eq!(dup, expected);
    assert_eq!(dup.fingerprint(), expected.fingerprint());
    assert_eq!(base.dests(), [d1, d2]);
    assert_eq!(base.fingerprint(), fp);
}

#[test]
fn an_unchanged_large_table_plans_nothing_and_one_weight_is_one_edit() {
    let services: Vec<VirtualService> = (0..200u16)
        .map(|i| {
            vs(
                &format!("198.18.0.{}", 10 + i % 50),
                80 + i / 50,
                Protocol::Tcp,
                (0..10u8)
                    .map(|j| rs(&format!("198.18.2.{}", 1 + j), 10000 + i, 1 + u32::from(j)))
                    .collect(),
            )
        })
        .collect();
    let before = desired(&role(1, services.clone()));
    let mut after_role = role(2, services);
    after_role.services[137].real_servers[4].weight = 99;
    let after = desired(&after_role);
    assert!(plan(&before, &before.clone()).is_empty());
    let p = plan(&after, &before);
    assert_eq!(p.len(), 1);
    assert!(matches!(&p.ops[0], Op::EditDest(_, d) if d.weight == 99));
    assert_eq!(p, reference_plan(&after, &before));
}

#[test]
fn duplicate_role_entries_keep_the_last_one() {
    let mut r = example();
    // The same destination twice in a service, and the same service twice: the later entry wins, as it did
    // when the desired state was built by inserting entry after entry.
    r.services[0].real_servers.push(rs("198.18.2.1", 8080, 9));
    let mut again = r.services[1].clone();
    again.scheduler = Scheduler::Mh;
    again.real_servers = vec![rs("198.18.2.7", 53, 3)];
    r.services.push(again);
    let s = desired(&r);
    assert_eq!(s.services.len(), 2);
    let tcp = &s.services[&key("198.18.0.10", 80, IpProto::Tcp)];
    assert_eq!(tcp.dests().len(), 2);
    assert_eq!(tcp.dest(&dkey("198.18.2.1", 8080)).unwrap().weight, 9);
    let udp = &s.services[&key("198.18.0.10", 53, IpProto::Udp)];
    assert_eq!(udp.service().scheduler, "mh");
    assert_eq!(
        udp.dests().iter().map(|d| d.key).collect::<Vec<_>>(),
        [dkey("198.18.2.7", 53)]
    );
}

#[test]
fn full_passes_do_not_trust_fingerprints_alone() {
    // Two services that differ but (as if by a collision) carry the same fingerprint: the fast planner skips
    // the service, the full passes' planner still finds the change.
    let want = desired(&example());
    let mut have = want.clone();
    let tcp80 = key("198.18.0.10", 80, IpProto::Tcp);
    let svc = have.services.get_mut(&tcp80).unwrap();
    let fp = svc.fingerprint();
    let mut d = *svc.dests().first().unwrap();
    d.weight += 1;
    svc.insert_dest(d);
    svc.fingerprint = fp;
    assert!(plan(&want, &have).is_empty());
    let exact = plan_exact(&want, &have);
    assert_eq!(exact.len(), 1);
    assert!(matches!(&exact.ops[0], Op::EditDest(k, _) if *k == tcp80));
}

/// A random role from small pools (so two of them share most services).
fn random_role(rng: &mut rand::rngs::StdRng, generation: u64) -> RoleDocument {
    let n = rng.gen_range(0..8);
    let services = (0..n)
        .map(|_| {
            let vip = format!("198.18.0.{}", rng.gen_range(10..14));
            let port = [80, 443, 53][rng.gen_range(0..3)];
            let protocol = if rng.gen_bool(0.8) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let real_servers = (0..rng.gen_range(0..5))
                .map(|_| {
                    let address = format!("198.18.2.{}", rng.gen_range(1..6)).parse().unwrap();
                    RealServer {
                        address,
                        port: 8080,
                        weight: rng.gen_range(0..4),
                        enabled: rng.gen_bool(0.9),
                    }
                })
                .collect();
            let mut v = vs(&vip, port, protocol, real_servers);
            if rng.gen_bool(0.2) {
                v.scheduler = Scheduler::Rr;
            }
            v
        })
        .collect();
    role(generation, services)
}

/// Small edits of `r`: a weight, a removed or added service, a swap of two services.
fn mutate_role(rng: &mut rand::rngs::StdRng, r: &RoleDocument) -> RoleDocument {
    let mut out = r.clone();
    out.generation += 1;
    for _ in 0..rng.gen_range(1..3) {
        let n = out.services.len();
        match rng.gen_range(0..4) {
            0 if n > 0 => {
                let s = rng.gen_range(0..n);
                if let Some(rs) = out.services[s].real_servers.first_mut() {
                    rs.weight += 1;
                }
            }
            1 if n > 0 => {
                out.services.remove(rng.gen_range(0..n));
            }
            2 if n > 1 => out.services.swap(0, n - 1),
            _ => {
                let extra = random_role(rng, 0);
                out.services.extend(extra.services.into_iter().take(1));
            }
        }
    }
    out
}

#[test]
fn reusing_the_previous_desired_state_gives_exactly_a_rebuild() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0004);
    let health = HealthResults::default();
    for i in 0..3_000 {
        let before = random_role(&mut rng, 1);
        let after = if i % 5 == 0 {
            random_role(&mut rng, 2)
        } else {
            mutate_role(&mut rng, &before)
        };
        let (prev, _) = desired_state(&before, &health);
        let fresh = desired_state(&after, &health);
        let reused = desired_state_reusing(&after, &health, Some((&before, &prev)));
        assert_eq!(reused, fresh, "before {before:?}\nafter {after:?}");
        // And the planner sees no difference between them.
        assert!(plan_exact(&reused.0, &fresh.0).is_empty());
    }
}

#[test]
fn reuse_shares_unchanged_services_and_rebuilds_the_changed_one() {
    let health = HealthResults::default();
    let before = example();
    let mut after = before.clone();
    after.generation += 1;
    after.services[0].real_servers[0].weight += 5;
    let (prev, _) = desired_state(&before, &health);
    let (reused, errors) = desired_state_reusing(&after, &health, Some((&before, &prev)));
    assert!(errors.is_empty());
    let k0 = reused.services.keys().copied().collect::<Vec<_>>();
    let changed = k0
        .iter()
        .find(|k| reused.services[k] != prev.services[k])
        .copied();
    assert!(changed.is_some(), "the weight change was not rebuilt");
    for k in &k0 {
        if Some(*k) != changed {
            // Shared, not rebuilt.
            assert!(reused.services[k].shares_content_with(&prev.services[k]));
        }
    }
}
