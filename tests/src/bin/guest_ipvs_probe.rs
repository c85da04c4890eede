//! Runs inside a QEMU guest: drives the agent's IPVS netlink layer directly through every kind of service
//! (each scheduler, NAT/DR/TUN, persistence with netmask, firewall marks, IPv4 and IPv6) and prints the table
//! it dumps back, normalized, so the host test can compare it with `ipvsadm -Ln` in the same guest.
//!
//! `setup`: program and print; `teardown`: delete what `setup` made and check the table is empty;
//! `time CMD ARGS..`: run a command and print its wall time (busybox has no sub-millisecond clock);
//! `change FROM TO`: bring the kernel to role file FROM with a full pass, then time the agent's fast pass to
//! role file TO (what the daemon does when a new role generation arrives), split into its parts, once cold and
//! once warm.

use std::net::IpAddr;
use std::process::ExitCode;

use lbfleet_agent::ipvs::codec::IpvsRequest;
use lbfleet_agent::ipvs::IpvsSocket;
use lbfleet_agent::ipvs::{
    Destination, Family, Forward, IpProto, Service, ServiceKey, SVC_F_PERSISTENT,
};
use lbfleet_agent::netlink::NetlinkError;
use lbfleet_proto::Scheduler;
use lbfleet_tests::ipvsadm::normalize_table;

fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn setup(sock: &mut IpvsSocket) -> Result<(), String> {
    let mut reqs = Vec::new();
    for (i, sched) in Scheduler::ALL.iter().enumerate() {
        let port = 1000 + i as u16;
        let key = ServiceKey::Addr {
            protocol: IpProto::Tcp,
            addr: ip("198.18.0.50")?,
            port,
        };
        reqs.push(IpvsRequest::NewService(Service::new(key, sched.as_str())));
        for (j, fwd) in [Forward::Masq, Forward::Route, Forward::Tunnel]
            .into_iter()
            .enumerate()
        {
            let addr = ip(&format!("198.18.2.{}", 10 + 3 * i + j))?;
            reqs.push(IpvsRequest::NewDest(
                key,
                Destination::new(addr, port, fwd, (j + 1) as u32),
            ));
        }
    }
    // Persistence with a /24 netmask.
    let persistent = ServiceKey::Addr {
        protocol: IpProto::Udp,
        addr: ip("198.18.0.51")?,
        port: 53,
    };
    let mut svc = Service::new(persistent, "sh");
    svc.flags = SVC_F_PERSISTENT;
    svc.timeout_s = 600;
    svc.netmask_prefix = 24;
    reqs.push(IpvsRequest::NewService(svc));
    reqs.push(IpvsRequest::NewDest(
        persistent,
        Destination::new(ip("198.18.2.60")?, 53, Forward::Masq, 4),
    ));
    // Firewall-mark services, IPv4 with a destination and IPv6 persistent with a prefix.
    let fwm4 = ServiceKey::Fwmark {
        family: Family::V4,
        mark: 1,
    };
    reqs.push(IpvsRequest::NewService(Service::new(fwm4, "wlc")));
    reqs.push(IpvsRequest::NewDest(
        fwm4,
        Destination::new(ip("198.18.2.70")?, 0, Forward::Route, 1),
    ));
    let fwm6 = ServiceKey::Fwmark {
        family: Family::V6,
        mark: 2,
    };
    let mut svc6 = Service::new(fwm6, "rr");
    svc6.flags = SVC_F_PERSISTENT;
    svc6.timeout_s = 60;
    svc6.netmask_prefix = 64;
    reqs.push(IpvsRequest::NewService(svc6));

    for (req, r) in reqs.iter().zip(sock.execute_batch(&reqs)) {
        r.map_err(|e| format!("{}: {e}", lbfleet_agent::ipvs::describe(req)))?;
    }

    // Edits and deletes: a weight, a scheduler, one extra destination added and removed.
    let first = ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: ip("198.18.0.50")?,
        port: 1000,
    };
    sock.execute(&IpvsRequest::SetDest(
        first,
        Destination::new(ip("198.18.2.10")?, 1000, Forward::Masq, 9),
    ))
    .map_err(|e| format!("set dest: {e}"))?;
    sock.execute(&IpvsRequest::SetService(Service::new(first, "lc")))
        .map_err(|e| format!("set service: {e}"))?;
    let extra = Destination::new(ip("198.18.2.99")?, 1000, Forward::Masq, 1);
    sock.execute(&IpvsRequest::NewDest(first, extra))
        .map_err(|e| format!("add extra dest: {e}"))?;
    sock.execute(&IpvsRequest::DelDest(first, extra.key))
        .map_err(|e| format!("del extra dest: {e}"))?;

    // The kernel's refusals come back as typed errors.
    match sock.execute(&IpvsRequest::NewService(Service::new(first, "rr"))) {
        Err(e @ NetlinkError::Kernel { .. }) if e.errno() == Some(17) => {
            println!("PROBE eexist ok: {e}")
        }
        other => {
            return Err(format!(
                "duplicate service add: expected EEXIST, got {other:?}"
            ))
        }
    }

    let table = sock.table().map_err(|e| format!("dump: {e}"))?;
    println!("PROBE services {}", table.services.len());
    for line in normalize_table(&table) {
        println!("{line}");
    }
    Ok(())
}

fn teardown(sock: &mut IpvsSocket) -> Result<(), String> {
    let services = sock.services().map_err(|e| format!("dump: {e}"))?;
    let reqs: Vec<IpvsRequest> = services
        .iter()
        .map(|s| IpvsRequest::DelService(s.service.key))
        .collect();
    for (req, r) in reqs.iter().zip(sock.execute_batch(&reqs)) {
        r.map_err(|e| format!("{}: {e}", lbfleet_agent::ipvs::describe(req)))?;
    }
    let left = sock.services().map_err(|e| format!("dump: {e}"))?;
    if !left.is_empty() {
        return Err(format!("{} services left after teardown", left.len()));
    }
    println!("PROBE teardown ok: deleted {}", reqs.len());
    Ok(())
}

/// Runs a command and prints `BENCH ms=<wall time>`; exits with the command's status.
fn time(args: &[String]) -> ExitCode {
    let Some((cmd, rest)) = args.split_first() else {
        println!("PROBE error: time needs a command");
        return ExitCode::FAILURE;
    };
    let start = std::time::Instant::now();
    let status = std::process::Command::new(cmd).args(rest).status();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!("BENCH ms={ms:.3}");
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            println!("PROBE error: {cmd} exited with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("PROBE error: {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_role(path: &str) -> Result<lbfleet_proto::RoleDocument, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// One role change the way the daemon makes it: build the desired state from the (already parsed) role
/// document, clone it (the daemon keeps one copy and hands one to the blocking pass), then
/// `Reconciler::fast`. Prints one line `LABEL: ...` with the split; returns (fast pass ms, total ms).
/// The role and desired state the daemon holds from its previous pass (it builds the next one reusing them).
type Previous<'a> = (
    &'a lbfleet_proto::RoleDocument,
    &'a lbfleet_agent::reconcile::IpvsState,
);

fn timed_pass(
    r: &mut lbfleet_agent::reconcile::Reconciler,
    role: &lbfleet_proto::RoleDocument,
    health: &lbfleet_agent::reconcile::HealthResults,
    previous: Previous<'_>,
    label: &str,
) -> Result<(f64, f64, lbfleet_agent::reconcile::IpvsState), String> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let building = std::time::Instant::now();
    let (kept, _) = lbfleet_agent::reconcile::desired_state_reusing(role, health, Some(previous));
    let desired_ms = ms(building.elapsed());
    let cloning = std::time::Instant::now();
    let desired = kept.clone();
    let clone_ms = ms(cloning.elapsed());
    let start = std::time::Instant::now();
    let out = r.fast(&desired).map_err(|e| e.to_string())?;
    let fast_ms = ms(start.elapsed());
    let total = desired_ms + clone_ms + fast_ms;
    println!(
        "{label}: {} change(s) planned, {} applied, {} failed (netlink {:.3} ms of {fast_ms:.3} ms; plan {:.3} ms, bookkeeping {:.3} ms; desired_state {desired_ms:.3} ms, clone {clone_ms:.3} ms before it; total with them {total:.3} ms)",
        out.planned,
        out.applied,
        out.errors.len(),
        ms(out.apply_time),
        ms(out.plan_time),
        ms(out.bookkeeping_time),
    );
    if out.converged() {
        Ok((fast_ms, total, kept))
    } else {
        Err(format!("{label}: {:?}", out.errors))
    }
}

/// Brings the kernel to role FROM with a full pass, then times the daemon's path to role TO (`timed_pass`):
/// prints `BENCH ms=` (the fast pass alone) and `BENCH with_desired_ms=` (with building the desired state
/// from the role, reusing the previous one for unchanged services as the daemon does, and cloning it). That first change runs code the process has not run before; a daemon that has applied
/// role changes before runs it warm, so the change is then made back to FROM and to TO again ("warm pass").
fn change(from: &str, to: &str) -> Result<(), String> {
    use lbfleet_agent::reconcile::{desired_state, HealthResults, NetlinkApplier, Reconciler};
    let health = HealthResults::default();
    let from_role = load_role(from)?;
    let to_role = load_role(to)?;
    let (from, _) = desired_state(&from_role, &health);
    let mut r = Reconciler::new(Box::new(NetlinkApplier::new()));
    let full = r.full(&from).map_err(|e| e.to_string())?;
    if !full.converged() {
        return Err(format!("full pass failed: {:?}", full.errors));
    }
    let (ms, total, to) = timed_pass(&mut r, &to_role, &health, (&from_role, &from), "fast pass")?;
    println!("BENCH ms={ms:.3}");
    println!("BENCH with_desired_ms={total:.3}");
    let (_, _, back) = timed_pass(&mut r, &from_role, &health, (&to_role, &to), "back")?;
    timed_pass(&mut r, &to_role, &health, (&from_role, &back), "warm pass")?;
    Ok(())
}

/// `sync master|backup|none`: puts the connection-sync daemon on `lo` (sync id 7) in that state the way the
/// agent's daemon does (`IpvsSocket::ensure_sync_daemon`).
fn sync(state: &str) -> Result<(), String> {
    use lbfleet_agent::ipvs::codec::{SyncDaemon, SyncState};
    let want = match state {
        "master" => Some(SyncState::Master),
        "backup" => Some(SyncState::Backup),
        "none" => None,
        other => return Err(format!("sync master|backup|none, not {other:?}")),
    }
    .map(|state| SyncDaemon {
        state,
        interface: "lo".into(),
        sync_id: 7,
    });
    let mut sock = IpvsSocket::open().map_err(|e| format!("open: {e}"))?;
    let changed = sock
        .ensure_sync_daemon(want.as_ref())
        .map_err(|e| e.to_string())?;
    let running = sock.sync_daemons().map_err(|e| e.to_string())?;
    println!("PROBE sync changed={changed} running={running:?}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sync") if args.len() == 3 => {
            return match sync(&args[2]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("PROBE error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("time") => return time(&args[2..]),
        Some("change") if args.len() == 4 => {
            return match change(&args[2], &args[3]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("PROBE error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {}
    }
    let mode = args.get(1).cloned().unwrap_or_default();
    let result = IpvsSocket::open()
        .map_err(|e| format!("open: {e}"))
        .and_then(|mut sock| match mode.as_str() {
            "setup" => setup(&mut sock),
            "teardown" => teardown(&mut sock),
            other => Err(format!(
                "usage: guest-ipvs-probe setup|teardown (got {other:?})"
            )),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("PROBE error: {e}");
            ExitCode::FAILURE
        }
    }
}
