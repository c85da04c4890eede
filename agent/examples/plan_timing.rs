//! Native timing of the running agent's one-weight change without a kernel: building the desired state for
//! 1,000 services x 10 destinations (the table of `make bench-ipvs`), cloning it, and planning it against the
//! previous one. Prints the minimum of 300 runs of each.
//!
//! `cargo run --release -p lbfleet-agent --example plan_timing`

#![allow(clippy::unwrap_used)]
use lbfleet_agent::reconcile::*;
use lbfleet_proto::*;
use std::time::Instant;

fn role(services: usize, dests: usize, generation: u64) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation,
        node: "bench".into(),
        cluster: None,
        role: None,
        vrrp: None,
        services: (0..services)
            .map(|i| VirtualService {
                vip: format!("198.18.0.{}", 10 + i % 50).parse().unwrap(),
                port: 80 + (i / 50) as u16,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check: HealthCheck::tcp(),
                real_servers: (0..dests)
                    .map(|j| RealServer {
                        address: format!("198.18.2.{}", 1 + j).parse().unwrap(),
                        port: 10000 + i as u16,
                        weight: 1 + j as u32,
                        enabled: true,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn main() {
    let r1 = role(1000, 10, 1);
    let mut r2 = r1.clone();
    r2.services[0].real_servers[0].weight = 99;
    let h = HealthResults::default();
    let mut t = [f64::MAX; 5];
    for _ in 0..300 {
        let (from, _) = desired_state(&r1, &h);
        let s = Instant::now();
        let (to, _) = desired_state(&r2, &h);
        t[0] = t[0].min(s.elapsed().as_secs_f64());
        let s = Instant::now();
        let to2 = to.clone();
        t[1] = t[1].min(s.elapsed().as_secs_f64());
        let s = Instant::now();
        let p = plan(&to2, &from);
        t[2] = t[2].min(s.elapsed().as_secs_f64());
        assert_eq!(p.len(), 1);
        let s = Instant::now();
        let mut c = 0usize;
        for v in &r2.services {
            for rs in &v.real_servers {
                c += usize::from(rs.address.to_string().parse::<std::net::IpAddr>().is_ok());
            }
        }
        std::hint::black_box(c);
        t[3] = t[3].min(s.elapsed().as_secs_f64());
        let s = Instant::now();
        let (reused, _) = desired_state_reusing(&r2, &h, Some((&r1, &from)));
        t[4] = t[4].min(s.elapsed().as_secs_f64());
        assert_eq!(reused, to);
    }
    println!(
        "native, min of 300 (us): desired_state {:.0}, reusing the previous one {:.0}, clone {:.0}, plan {:.1}; reference: 10,000 std address parses {:.0}",
        t[0] * 1e6, t[4] * 1e6, t[1] * 1e6, t[2] * 1e6, t[3] * 1e6
    );
}
