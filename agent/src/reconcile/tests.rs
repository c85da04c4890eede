//! Plan computation and apply tests against the recording applier.
#![allow(clippy::unwrap_used)]

use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};

use super::*;
use crate::ipvs::IpProto;

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.into(),
        port,
        weight,
        enabled: true,
    }
}

fn vs(vip: &str, port: u16, protocol: Protocol, real_servers: Vec<RealServer>) -> VirtualService {
    VirtualService {
        vip: vip.into(),
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
        s.service.flags |= crate::ipvs::SVC_F_HASHED;
    }
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
    let dests = &s.services[&svc].dests;
    assert_eq!(dests[&dkey("198.18.2.1", 8080)].weight, 0);
    assert_eq!(dests[&dkey("198.18.2.2", 8080)].weight, 0);
    health.mark_healthy(svc, dkey("198.18.2.2", 8080));
    let (s, _) = desired_state(&r, &health);
    assert_eq!(s.services[&svc].dests[&dkey("198.18.2.2", 8080)].weight, 2);
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
        vec![rs("2001:db8::2:1", 80, 1), rs("not-an-ip", 80, 1)],
    ));
    r.services.push(vs("bad-vip", 80, Protocol::Tcp, vec![]));
    let (s, errors) = desired_state(&r, &HealthResults::default());
    assert_eq!(errors.len(), 2, "{errors:?}");
    let v6 = &s.services[&key("2001:db8::10", 80, IpProto::Tcp)];
    assert_eq!(v6.service.netmask_prefix, 128);
    assert_eq!(v6.dests.len(), 1);
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
