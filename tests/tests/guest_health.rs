//! VM tier: health checks against real IPVS. In a QEMU guest, two HTTP real servers (`guest-http` on
//! 198.18.2.1 and .2, port 8080, on the guest's loopback) sit behind two services run by
//! `lbfleet-agent apply --watch`. When .1's check fails (HTTP 503), its kernel weight goes to 0 in the drain
//! service and it is removed from the `on_down: remove` service, whose sorry server (.2) takes over; when the
//! check passes again, both come back. Read with `ipvsadm -Ln`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_proto::{
    CheckKind, DownAction, ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument,
    Scheduler, SorryServer, VirtualService,
};
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};

fn check() -> HealthCheck {
    HealthCheck {
        path: Some("/healthz".into()),
        expect_status: Some(200),
        interval_ms: 500,
        timeout_ms: 250,
        rise: 2,
        fall: 2,
        ..HealthCheck::of_kind(CheckKind::Http)
    }
}

fn service(port: u16, check: HealthCheck, servers: &[(&str, u32)]) -> VirtualService {
    VirtualService {
        vip: "198.18.0.10".parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Wrr,
        forward: ForwardMethod::Nat,
        persistence_s: 0,
        persistence_prefix: None,
        check,
        real_servers: servers
            .iter()
            .map(|(a, w)| RealServer {
                address: a.parse().unwrap(),
                port: 8080,
                weight: *w,
                enabled: true,
            })
            .collect(),
    }
}

fn role() -> RoleDocument {
    let removing = HealthCheck {
        on_down: DownAction::Remove,
        sorry_server: Some(SorryServer {
            address: "198.18.2.2".into(),
            port: 8080,
        }),
        ..check()
    };
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services: vec![
            service(80, check(), &[("198.18.2.1", 3), ("198.18.2.2", 2)]),
            // Same server, same check: shares the probe of port 80's .1.
            service(81, removing, &[("198.18.2.1", 1)]),
        ],
    }
}

const SCRIPT: &str = r#"
. /lib/guest-lib.sh
export RUST_LOG=info
mount -t tmpfs tmpfs /run
ip link set lo up
ip addr add 198.18.2.1/32 dev lo
ip addr add 198.18.2.2/32 dev lo
touch /tmp/ok1 /tmp/ok2
guest-http /tmp/ok1 198.18.2.1:8080 > /tmp/http1.log 2>&1 &
H1=$!
guest-http /tmp/ok2 198.18.2.2:8080 > /tmp/http2.log 2>&1 &
H2=$!
waitfor /tmp/http1.log listening
waitfor /tmp/http2.log listening
# Waits (at most 60 s) until `ipvsadm -Ln` matches the extended regular expression $1.
waitipvs() {
  i=0
  while ! ipvsadm -Ln | grep -Eq "$1"; do
    i=$((i+1))
    if [ $i -gt 600 ]; then echo "TIMEOUT waiting for /$1/"; ipvsadm -Ln; return 1; fi
    sleep 0.1
  done
  echo "matched /$1/ after $i polls"
}
lbfleet-agent apply --role /role.json --watch --resync 2s > /tmp/agent.log 2>&1 &
APID=$!
waitfor /tmp/agent.log "role file applied"
run up ipvsadm -Ln
rm /tmp/ok1
run drained waitipvs "198.18.2.1:8080 +Masq +0 "
run down ipvsadm -Ln
touch /tmp/ok1
run restored waitipvs "198.18.2.1:8080 +Masq +3 "
run back ipvsadm -Ln
kill $APID
wait $APID
run agentlog cat /tmp/agent.log
kill $H1 $H2
ipvsadm -C
"#;

static GUEST: SharedGuest = SharedGuest::new();

fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let http = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-http"));
            let mut img = Initramfs::new(prereqs)?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&http, "/usr/bin/guest-http")?;
            img.file("/role.json", &serde_json::to_vec(&role()).unwrap());
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-health-console.log",
    )?;
    Some(out.require_section(name))
}

/// The destination lines (`address:port weight`) of service `TCP 198.18.0.10:PORT` in `ipvsadm -Ln` text.
fn dests(table: &str, port: u16) -> Vec<(String, u32)> {
    let head = format!("TCP  198.18.0.10:{port} ");
    let mut lines = table.lines().skip_while(|l| !l.starts_with(&head));
    if lines.next().is_none() {
        panic!("no service {head:?} in:\n{table}");
    }
    lines
        .take_while(|l| l.trim_start().starts_with("->"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_owned(), f[3].parse().unwrap())
        })
        .collect()
}

fn pairs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
    v.iter().map(|(a, w)| ((*a).to_owned(), *w)).collect()
}

#[test]
fn a_failing_check_sets_the_kernel_weight_to_zero_and_a_passing_one_restores_it() {
    let Some(up) = section("up") else { return };
    assert_eq!(
        dests(&up.text, 80),
        pairs(&[("198.18.2.1:8080", 3), ("198.18.2.2:8080", 2)]),
        "{}",
        up.text
    );
    let drained = section("drained").unwrap();
    assert_eq!(drained.rc, 0, "{}", drained.text);
    let down = section("down").unwrap();
    assert_eq!(
        dests(&down.text, 80),
        pairs(&[("198.18.2.1:8080", 0), ("198.18.2.2:8080", 2)]),
        "{}",
        down.text
    );
    let restored = section("restored").unwrap();
    assert_eq!(restored.rc, 0, "{}", restored.text);
    let back = section("back").unwrap();
    assert_eq!(
        dests(&back.text, 80),
        pairs(&[("198.18.2.1:8080", 3), ("198.18.2.2:8080", 2)]),
        "{}",
        back.text
    );
}

#[test]
fn remove_policy_and_sorry_server_in_the_kernel() {
    let Some(up) = section("up") else { return };
    assert_eq!(dests(&up.text, 81), pairs(&[("198.18.2.1:8080", 1)]));
    // The down server is gone from the removing service; the sorry server serves it meanwhile.
    let down = section("down").unwrap();
    assert_eq!(
        dests(&down.text, 81),
        pairs(&[("198.18.2.2:8080", 1)]),
        "{}",
        down.text
    );
    let back = section("back").unwrap();
    assert_eq!(
        dests(&back.text, 81),
        pairs(&[("198.18.2.1:8080", 1)]),
        "{}",
        back.text
    );
}

#[test]
fn the_agent_logs_why_a_server_went_down() {
    let Some(log) = section("agentlog") else {
        return;
    };
    assert!(
        log.text.contains("real server down") && log.text.contains("HTTP 503 from /healthz"),
        "{}",
        log.text
    );
}
