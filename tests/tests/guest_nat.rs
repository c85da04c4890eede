//! VM tier: traffic through an IPVS NAT service in a QEMU guest survives agent restarts and role changes.
//!
//! The guest builds a classic LVS-NAT lab with network namespaces: a client namespace (198.18.3.1), the
//! guest's root namespace as the balancer (VIP 198.18.0.10 on `lo`, forwarding on), and a real-server
//! namespace (198.18.2.1 and .2, an echo server on port 8080). One TCP connection is held open through the
//! VIP while the agent is stopped with SIGTERM and restarted, killed with SIGKILL and restarted, and handed a
//! new role generation; a line is echoed after each step. The service's connection counter must never reset
//! (a flush-and-re-add would replace the service and zero it), and each restarted agent must plan nothing.
//! A negative control then does what a flushing agent would (`ipvsadm -C`) and checks the same probes see it:
//! the held connection breaks, and the re-added service's counter starts from zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};

fn role(generation: u64, w1: u32, second_enabled: bool) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services: vec![VirtualService {
            vip: "198.18.0.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wrr,
            forward: ForwardMethod::Nat,
            persistence_s: 0,
            persistence_prefix: None,
            // No probes: these real servers are not what this test is about (health checks: guest_health.rs).
            check: HealthCheck::of_kind(lbfleet_proto::CheckKind::None),
            real_servers: vec![
                RealServer {
                    address: "198.18.2.1".parse().unwrap(),
                    port: 8080,
                    weight: w1,
                    enabled: true,
                },
                // Drained at first, so the held connection lands on .1; enabled by the role change.
                RealServer {
                    address: "198.18.2.2".parse().unwrap(),
                    port: 8080,
                    weight: 1,
                    enabled: second_enabled,
                },
            ],
        }],
    }
}

const SCRIPT: &str = r#"
# Busybox's shell runs its own applets before anything on PATH; iproute2's ip by path.
ip() { /usr/local/sbin/ip "$@"; }
. /lib/guest-lib.sh
start_agent() {
  lbfleet-agent apply --role /tmp/role.json --watch --resync 1s > "$1" 2>&1 &
  APID=$!
  waitfor "$1" "role file applied"
}
# IPVS folds its per-CPU counters into the totals every 2 s (kernel 6.1's estimator): wait (bounded, 8 s) until
# the service's connection counter reaches $2, then record the table (the test asserts on the recorded value).
stats() {
  i=0
  while c=$(ipvsadm -Ln --stats | awk '$1 == "TCP" { print $3; exit }'); [ "${c:-0}" -lt "$2" ]; do
    i=$((i+1))
    if [ $i -gt 80 ]; then echo "TIMEOUT waiting for $2 connection(s) in the IPVS counters"; break; fi
    sleep 0.1
  done
  run "$1" ipvsadm -Ln --stats
}
export RUST_LOG=info
mount -t tmpfs tmpfs /run

# Lab: cl (198.18.3.1) -- vcl | balancer (VIP on lo) | vrs -- rs (198.18.2.1, .2)
ip netns add cl
ip netns add rs
ip link add vcl type veth peer name eth0 netns cl
ip link add vrs type veth peer name eth0 netns rs
ip addr add 198.18.3.254/24 dev vcl
ip addr add 198.18.2.254/24 dev vrs
ip addr add 198.18.0.10/32 dev lo
ip link set vcl up
ip link set vrs up
ip -n cl link set lo up
ip -n cl link set eth0 up
ip -n cl addr add 198.18.3.1/24 dev eth0
ip -n cl route add default via 198.18.3.254
ip -n rs link set lo up
ip -n rs link set eth0 up
ip -n rs addr add 198.18.2.1/24 dev eth0
ip -n rs addr add 198.18.2.2/24 dev eth0
ip -n rs route add default via 198.18.2.254
sysctl -w net.ipv4.ip_forward=1 > /dev/null
run lab ip -br addr
ip netns exec rs guest-tcp echo-server 0.0.0.0:8080 > /tmp/echo.log 2>&1 &
EPID=$!
waitfor /tmp/echo.log listening

cp /role1.json /tmp/role.json
start_agent /tmp/agent1.log
run ipvsadm1 ipvsadm -Ln
ip netns exec cl guest-tcp hold 198.18.0.10:80 /tmp/go1 /tmp/go2 /tmp/go3 /tmp/go4 > /tmp/hold.log 2>&1 &
HPID=$!
waitfor /tmp/hold.log "exchange 0"
run conn_before ipvsadm -Lnc
stats stats_before 1

# 1: SIGTERM, restart.
kill $APID
wait $APID
start_agent /tmp/agent2.log
touch /tmp/go1
waitfor /tmp/hold.log "exchange 1"

# 2: SIGKILL, restart.
kill -9 $APID
wait $APID
start_agent /tmp/agent3.log
touch /tmp/go2
waitfor /tmp/hold.log "exchange 2"

# 3: a new role generation for the running agent (weights change, the drained server comes back).
cp /role2.json /tmp/role.next
mv /tmp/role.next /tmp/role.json
waitfor /tmp/agent3.log "generation=2"
run ipvsadm2 ipvsadm -Ln
touch /tmp/go3
waitfor /tmp/hold.log "exchange 3"
run conn_after ipvsadm -Lnc
stats stats_after 1
kill $APID
wait $APID

# Negative control: what a flushing agent does. The held connection must break ...
ipvsadm -C
touch /tmp/go4
wait $HPID
echo "hold exited rc=$?"
run hold cat /tmp/hold.log
# ... and a re-added service starts counting from zero.
start_agent /tmp/agent4.log
kill $APID
wait $APID
stats stats_control 0
run agent_logs sh -c 'for f in /tmp/agent1.log /tmp/agent2.log /tmp/agent3.log /tmp/agent4.log; do echo "--- $f"; cat $f; done'
kill $EPID
ipvsadm -C
"#;

static GUEST: SharedGuest = SharedGuest::new();

/// The named section of the one guest run of this file; `None` when guest tests are skipped explicitly.
fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let tcp = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
            let mut img = Initramfs::with_modules(prereqs, &["veth"])?;
            img.iproute2()?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&tcp, "/usr/bin/guest-tcp")?;
            img.file(
                "/role1.json",
                &serde_json::to_vec(&role(1, 1, false)).unwrap(),
            );
            img.file(
                "/role2.json",
                &serde_json::to_vec(&role(2, 3, true)).unwrap(),
            );
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-nat-console.log",
    )?;
    Some(out.require_section(name))
}

/// The service line's `Conns` column of `ipvsadm -Ln --stats` for 198.18.0.10:80.
fn service_conns(stats: &str) -> u64 {
    let line = stats
        .lines()
        .find(|l| l.starts_with("TCP") && l.contains("198.18.0.10:80"))
        .unwrap_or_else(|| panic!("no service line in:\n{stats}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no Conns column in {line:?}"))
}

/// The client's source port of the ESTABLISHED entry through the VIP in `ipvsadm -Lnc`.
fn established_client(conns: &str) -> String {
    let line = conns
        .lines()
        .find(|l| l.contains("ESTABLISHED") && l.contains("198.18.0.10:80"))
        .unwrap_or_else(|| panic!("no ESTABLISHED entry through the VIP in:\n{conns}"));
    assert!(
        line.contains("198.18.2.1:8080"),
        "the held connection is not on 198.18.2.1: {line}"
    );
    line.split_whitespace()
        .find(|w| w.starts_with("198.18.3.1:"))
        .unwrap_or_else(|| panic!("no client address in {line:?}"))
        .to_owned()
}

#[test]
fn held_connection_survives_sigterm_sigkill_restarts_and_a_role_change() {
    let Some(hold) = section("hold") else { return };
    for n in 0..=3 {
        assert!(
            hold.text.contains(&format!("exchange {n}: ok")),
            "exchange {n} through the VIP failed:\n{}",
            hold.text
        );
    }
    let before = established_client(&section("conn_before").unwrap().text);
    let after = established_client(&section("conn_after").unwrap().text);
    assert_eq!(before, after, "the IPVS connection entry changed");
}

#[test]
fn negative_control_a_flush_breaks_the_held_connection() {
    let Some(hold) = section("hold") else { return };
    assert!(
        hold.text.contains("exchange 4: FAILED"),
        "after ipvsadm -C the held connection still worked, so the survival check proves nothing:\n{}",
        hold.text
    );
}

#[test]
fn service_counters_are_never_reset_by_the_agent() {
    let Some(before) = section("stats_before") else {
        return;
    };
    assert_eq!(service_conns(&before.text), 1, "{}", before.text);
    let after = section("stats_after").unwrap();
    assert_eq!(
        service_conns(&after.text),
        1,
        "the service was replaced (counter reset) during restarts or the role change:\n{}",
        after.text
    );
    // The control: a flushed and re-added service counts from zero, so the check above can fail.
    let control = section("stats_control").unwrap();
    assert_eq!(service_conns(&control.text), 0, "{}", control.text);
}

#[test]
fn a_restarted_agent_plans_nothing_and_the_running_agent_applies_the_new_generation() {
    let Some(logs) = section("agent_logs") else {
        return;
    };
    let first_pass = |file: &str| -> String {
        let start = logs
            .text
            .find(&format!("--- {file}"))
            .unwrap_or_else(|| panic!("no {file} in:\n{}", logs.text));
        logs.text[start..]
            .lines()
            .find(|l| l.contains("role file applied"))
            .unwrap_or_else(|| panic!("{file}: no pass logged:\n{}", logs.text))
            .to_owned()
    };
    let first = first_pass("/tmp/agent1.log");
    assert!(first.contains("planned=3"), "{first}");
    for f in ["/tmp/agent2.log", "/tmp/agent3.log"] {
        let line = first_pass(f);
        assert!(
            line.contains("generation=1") && line.contains("planned=0"),
            "{f}: a restarted agent changed the kernel: {line}"
        );
    }
    let change = logs
        .text
        .lines()
        .find(|l| l.contains("role file applied") && l.contains("generation=2"))
        .unwrap_or_else(|| panic!("generation 2 never applied:\n{}", logs.text));
    assert!(
        change.contains("planned=2") && change.contains("failed=0"),
        "{change}"
    );
    let table = section("ipvsadm2").unwrap().text;
    let weight = |rs: &str| -> String {
        table
            .lines()
            .find(|l| l.contains(rs))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or_else(|| panic!("no {rs} in:\n{table}"))
            .to_owned()
    };
    assert_eq!(weight("198.18.2.1:8080"), "3", "{table}");
    assert_eq!(weight("198.18.2.2:8080"), "1", "{table}");
}
