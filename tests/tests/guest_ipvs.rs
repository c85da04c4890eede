//! VM tier: real IPVS in a QEMU guest (Debian kernel, TCG). One guest boot runs every scenario and prints
//! marked sections on the serial console; each test checks its sections. Needs QEMU, the Debian kernel,
//! busybox-static and ipvsadm (`make deps`); fails without them (see `guest::require`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use lbfleet_agent::reconcile::{desired_state, HealthResults};
use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};
use lbfleet_tests::guest::{self, GuestOutput, Initramfs, Section};
use lbfleet_tests::ipvsadm::{normalize_ipvsadm, normalize_state};

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.into(),
        port,
        weight,
        enabled: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn vs(
    vip: &str,
    port: u16,
    protocol: Protocol,
    scheduler: Scheduler,
    forward: ForwardMethod,
    persistence: Option<(u32, u8)>,
    real_servers: Vec<RealServer>,
) -> VirtualService {
    VirtualService {
        vip: vip.into(),
        port,
        protocol,
        scheduler,
        forward,
        persistence_s: persistence.map_or(0, |p| p.0),
        persistence_prefix: persistence.map(|p| p.1),
        check: HealthCheck::tcp(),
        real_servers,
    }
}

/// Several services: NAT and DR, rr/wrr/mh/sh, persistence with a netmask, a tunnel.
fn role1() -> RoleDocument {
    RoleDocument {
        generation: 1,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services: vec![
            vs(
                "198.18.0.10",
                80,
                Protocol::Tcp,
                Scheduler::Wrr,
                ForwardMethod::Nat,
                None,
                vec![
                    rs("198.18.2.1", 8080, 1),
                    rs("198.18.2.2", 8080, 2),
                    rs("198.18.2.3", 8080, 3),
                ],
            ),
            vs(
                "198.18.0.10",
                53,
                Protocol::Udp,
                Scheduler::Rr,
                ForwardMethod::Dr,
                None,
                vec![rs("198.18.2.4", 53, 1), rs("198.18.2.5", 53, 1)],
            ),
            vs(
                "198.18.0.11",
                443,
                Protocol::Tcp,
                Scheduler::Mh,
                ForwardMethod::Dr,
                Some((300, 24)),
                vec![rs("198.18.2.6", 443, 1), rs("198.18.2.7", 443, 1)],
            ),
            vs(
                "198.18.0.12",
                8443,
                Protocol::Tcp,
                Scheduler::Sh,
                ForwardMethod::Tun,
                None,
                vec![rs("198.18.2.8", 8443, 5)],
            ),
        ],
    }
}

/// role1 with one weight changed.
fn role2() -> RoleDocument {
    let mut r = role1();
    r.generation = 2;
    r.services[0].real_servers[1].weight = 7;
    r
}

const SCRIPT: &str = r#"
run() { name=$1; shift; echo "=== BEGIN $name ==="; "$@" 2>&1; echo "=== END $name rc=$? ==="; }
export RUST_LOG=info
run empty ipvsadm -Ln
run apply1 lbfleet-agent apply --role /role1.json
run ipvsadm1 ipvsadm -Ln
run status1 lbfleet-agent status
run reapply1 lbfleet-agent apply --role /role1.json
run apply2 lbfleet-agent apply --role /role2.json
run ipvsadm2 ipvsadm -Ln
lbfleet-agent apply --role /role2.json --watch --resync 2s > /tmp/watch.log 2>&1 &
WPID=$!
sleep 3
ipvsadm -C
run flushed ipvsadm -Ln
sleep 3
run repaired ipvsadm -Ln
kill $WPID
wait $WPID
run watchlog cat /tmp/watch.log
ipvsadm -C
run probe_setup guest-ipvs-probe setup
run probe_ipvsadm ipvsadm -Ln
run probe_teardown guest-ipvs-probe teardown
run probe_after ipvsadm -Ln
"#;

static GUEST: OnceLock<Option<Result<GuestOutput, String>>> = OnceLock::new();

/// Boots the guest once for all tests in this file; `None` when skipped explicitly.
fn guest_run() -> Option<&'static Result<GuestOutput, String>> {
    GUEST
        .get_or_init(|| {
            let prereqs = guest::require()?;
            let result = (|| -> Result<GuestOutput, String> {
                let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")
                    .map_err(|e| e.to_string())?;
                let probe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-ipvs-probe"));
                let mut img = Initramfs::new(&prereqs).map_err(|e| e.to_string())?;
                img.binary(&agent, "/usr/bin/lbfleet-agent")
                    .map_err(|e| e.to_string())?;
                img.binary(&probe, "/usr/bin/guest-ipvs-probe")
                    .map_err(|e| e.to_string())?;
                img.file("/role1.json", &serde_json::to_vec(&role1()).unwrap());
                img.file("/role2.json", &serde_json::to_vec(&role2()).unwrap());
                img.script(SCRIPT);
                let (initrd, _scratch) = img.write().map_err(|e| e.to_string())?;
                let out = guest::boot(&prereqs, &initrd, Duration::from_secs(300))
                    .map_err(|e| e.to_string())?;
                eprintln!("guest finished in {:?}", out.elapsed);
                // Kept for diagnosis after a failure.
                let log = std::env::temp_dir().join("lbfleet-guest-ipvs-console.log");
                let _ = std::fs::write(&log, &out.console);
                Ok(out)
            })();
            Some(result)
        })
        .as_ref()
}

/// The named section, or a failure naming what is missing (with the console for diagnosis).
fn section(name: &str) -> Option<Section> {
    let out = match guest_run()? {
        Ok(out) => out,
        Err(e) => panic!("guest failed: {e}"),
    };
    Some(
        out.section(name)
            .unwrap_or_else(|| panic!("no section {name} in guest console:\n{}", out.console)),
    )
}

fn expected(role: &RoleDocument) -> Vec<String> {
    let (state, errors) = desired_state(role, &HealthResults::default());
    assert!(errors.is_empty(), "{errors:?}");
    normalize_state(&state)
}

#[test]
fn apply_programs_exactly_the_role() {
    let Some(empty) = section("empty") else {
        return;
    };
    assert_eq!(normalize_ipvsadm(&empty.text), Vec::<String>::new());
    let apply = section("apply1").unwrap();
    assert_eq!(apply.rc, 0, "{}", apply.text);
    let got = section("ipvsadm1").unwrap();
    assert_eq!(
        normalize_ipvsadm(&got.text),
        expected(&role1()),
        "{}",
        got.text
    );
    // `status` reads the same table back over netlink.
    let status = section("status1").unwrap();
    assert_eq!(status.rc, 0, "{}", status.text);
    assert!(
        status
            .text
            .contains("TCP 198.18.0.11:443 mh persistent 300 mask /24"),
        "{}",
        status.text
    );
}

#[test]
fn reapplying_the_same_role_changes_nothing() {
    let Some(again) = section("reapply1") else {
        return;
    };
    assert_eq!(again.rc, 0, "{}", again.text);
    assert!(
        again.text.contains("applied: 0 change(s) planned"),
        "{}",
        again.text
    );
}

#[test]
fn one_weight_change_touches_one_destination() {
    let Some(apply) = section("apply2") else {
        return;
    };
    assert_eq!(apply.rc, 0, "{}", apply.text);
    assert!(
        apply
            .text
            .contains("applied: 1 change(s) planned, 1 applied, 0 failed"),
        "{}",
        apply.text
    );
    let before = normalize_ipvsadm(&section("ipvsadm1").unwrap().text);
    let after = normalize_ipvsadm(&section("ipvsadm2").unwrap().text);
    assert_eq!(after, expected(&role2()));
    let removed: Vec<_> = before.iter().filter(|l| !after.contains(l)).collect();
    let added: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(
        removed,
        ["D TCP 198.18.0.10:80 wrr -> 198.18.2.2:8080 Masq 2"]
    );
    assert_eq!(
        added,
        ["D TCP 198.18.0.10:80 wrr -> 198.18.2.2:8080 Masq 7"]
    );
}

#[test]
fn ipvsadm_flush_is_repaired_within_one_resync() {
    let Some(flushed) = section("flushed") else {
        return;
    };
    assert_eq!(
        normalize_ipvsadm(&flushed.text),
        Vec::<String>::new(),
        "flush did not happen"
    );
    let repaired = section("repaired").unwrap();
    assert_eq!(
        normalize_ipvsadm(&repaired.text),
        expected(&role2()),
        "not repaired 3 s after the flush (resync 2 s); agent log:\n{}",
        section("watchlog").unwrap().text
    );
}

#[test]
fn netlink_codec_matches_ipvsadm_for_every_kind_of_service() {
    let Some(setup) = section("probe_setup") else {
        return;
    };
    assert_eq!(setup.rc, 0, "{}", setup.text);
    assert!(setup.text.contains("PROBE eexist ok"), "{}", setup.text);
    let ours: Vec<String> = setup
        .text
        .lines()
        .filter(|l| l.starts_with("S ") || l.starts_with("D "))
        .map(str::to_owned)
        .collect();
    let theirs = normalize_ipvsadm(&section("probe_ipvsadm").unwrap().text);
    assert_eq!(ours, theirs);
    // Every scheduler, plus the persistent UDP and two firewall-mark services.
    assert_eq!(
        ours.iter().filter(|l| l.starts_with("S ")).count(),
        Scheduler::ALL.len() + 3
    );
    for needle in [
        "Masq",
        "Route",
        "Tunnel",
        "FWM 1 wlc",
        "FWM 2 IPv6 rr persistent 60 mask 64",
        "persistent 600 mask 255.255.255.0",
        "TCP 198.18.0.50:1000 lc",
    ] {
        assert!(
            ours.iter().any(|l| l.contains(needle)),
            "{needle} missing: {ours:#?}"
        );
    }
    let teardown = section("probe_teardown").unwrap();
    assert_eq!(teardown.rc, 0, "{}", teardown.text);
    assert_eq!(
        normalize_ipvsadm(&section("probe_after").unwrap().text),
        Vec::<String>::new()
    );
}
