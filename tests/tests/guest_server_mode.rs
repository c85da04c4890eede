//! VM tier: `lbfleet-agent run` (server mode) in a QEMU guest against a real lbfleet-server on the host's
//! loopback. The guest gets a virtio NIC on QEMU's user-mode network (198.18.6.0/24, isolated from the host);
//! its only way out is 198.18.6.1:80, piped to the server's loopback port. The kernel command line carries
//! what the boot script would (`lbfleet.server=`, a one-time `lbfleet.token=`, `lbfleet.image=`, `BOOTIF=`).
//!
//! Checks: the agent enrolls with the token, programs the cluster's services into the guest's IPVS, reports
//! (node `serving`, address and image version filled in, counters from the kernel); a weight change made
//! through the API reaches the guest's kernel; a restarted agent uses its saved credential (the token is
//! spent) and changes nothing in the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_tests::server as common;

use std::time::{Duration, Instant};

use lbfleet_tests::guest::{self, BootOptions, GuestOutput, Initramfs};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:12:34:56";
const GUEST_ADDR: &str = "198.18.6.15";

const SCRIPT: &str = r#"
. /lib/guest-lib.sh
export RUST_LOG=info
ip link set eth0 up
ip addr add 198.18.6.15/24 dev eth0
run net ip addr show dev eth0

lbfleet-agent run --resync 2s > /tmp/agent1.log 2>&1 &
APID=$!
waitfor /tmp/agent1.log "IPVS reconciled"
run ipvsadm1 ipvsadm -Ln
# The host raises 198.18.2.2's weight to 7 once the node reports serving.
i=0
while ! ipvsadm -Ln | grep -q "198.18.2.2:8080 *Masq *7 "; do
  i=$((i+1))
  if [ $i -gt 1200 ]; then echo "TIMEOUT waiting for weight 7"; break; fi
  sleep 0.1
done
run ipvsadm2 ipvsadm -Ln
kill $APID
wait $APID
run saved ls /run/lbfleet

# Restart: the token is spent; the saved credential and role carry the agent.
RUST_LOG=info,lbfleet_agent::daemon=debug lbfleet-agent run --resync 2s > /tmp/agent2.log 2>&1 &
APID=$!
waitfor /tmp/agent2.log "saved role applied"
waitfor /tmp/agent2.log "new role"
# A resync pass ran (and found nothing to repair) and a report went out after it.
waitfor /tmp/agent2.log "reconcile pass.*resync=true"
waitfor /tmp/agent2.log "report sent"
kill $APID
wait $APID
run ipvsadm3 ipvsadm -Ln
run agent_logs sh -c 'echo "--- agent1"; cat /tmp/agent1.log; echo "--- agent2"; cat /tmp/agent2.log'
"#;

fn section(out: &GuestOutput, name: &str) -> String {
    out.require_section(name).text
}

/// Weight column of a destination line in `ipvsadm -Ln`.
fn weight(table: &str, dest: &str) -> u32 {
    table
        .lines()
        .find(|l| l.contains(dest))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no {dest} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mode_in_a_guest_enrolls_applies_follows_and_reports() {
    let Some(prereqs) = guest::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let srv = common::TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext",
            &op,
            unchecked(common::cluster_spec(51, "198.18.0.10")),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes",
            &op,
            json!({"mac": MAC, "hostname": "lb-01"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = srv
        .post("/api/v1/nodes/lb-01/enrollment-token", &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();

    let port: u16 = srv.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut options =
        BootOptions::user_net_to_loopback(&prereqs, MAC, "198.18.6.0/24", "198.18.6.1", 80, port);
    options.append = format!(
        "lbfleet.server=http://198.18.6.1 lbfleet.token={token} lbfleet.image=guest-image BOOTIF=01-{}",
        MAC.replace(':', "-")
    );
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent").unwrap();
    let mut img = Initramfs::with_modules(&prereqs, &["virtio_pci", "virtio_net"]).unwrap();
    img.binary(&agent, "/usr/bin/lbfleet-agent").unwrap();
    img.script(SCRIPT);
    let mut guest = tokio::task::spawn_blocking(move || {
        guest::boot_image(
            img,
            &options,
            Duration::from_secs(300),
            "lbfleet-guest-server-mode-console.log",
        )
    });

    // Once the node reports `serving`, raise a weight through the API; the guest waits for it in its kernel.
    let start = Instant::now();
    let serving: Value = loop {
        let (_, n) = srv.get("/api/v1/nodes/lb-01", &op).await;
        if n["state"] == "serving" {
            break n;
        }
        if guest.is_finished() {
            let out = (&mut guest).await.unwrap();
            panic!("the guest stopped before the node was serving: {n}\n{out:?}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "node never serving: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut spec = unchecked(common::cluster_spec(51, "198.18.0.10"));
    spec["services"][0]["real_servers"][1]["weight"] = json!(7);
    let (s, v) = srv.put("/api/v1/clusters/ext", &op, spec).await;
    assert!(s.is_success(), "{s} {v}");

    let out = guest.await.unwrap().unwrap_or_else(|e| panic!("{e}"));

    // What the agent told the server.
    assert_eq!(serving["address"], GUEST_ADDR, "{serving}");
    assert_eq!(serving["image_version"], "guest-image", "{serving}");
    assert_eq!(serving["mac"], MAC, "{serving}");

    // The kernel held the cluster's services, then the new weight; the restart kept it.
    let first = section(&out, "ipvsadm1");
    assert!(
        first.contains("TCP  198.18.0.10:80 wrr") && first.contains("UDP  198.18.0.10:53 rr"),
        "{first}"
    );
    assert_eq!(weight(&first, "198.18.2.1:8080"), 1, "{first}");
    // 2 from the first role, or already 7 if the host's change (made once the node reported serving) was
    // applied before the guest's shell got to read the table.
    assert!(
        [2, 7].contains(&weight(&first, "198.18.2.2:8080")),
        "{first}"
    );
    let second = section(&out, "ipvsadm2");
    assert_eq!(
        weight(&second, "198.18.2.2:8080"),
        7,
        "the API change did not reach the guest's kernel:\n{second}"
    );
    assert_eq!(
        section(&out, "ipvsadm3"),
        second,
        "the restart changed the kernel"
    );
    let saved = section(&out, "saved");
    assert!(
        saved.contains("credential") && saved.contains("role.json"),
        "{saved}"
    );

    // The restarted agent used its saved credential and planned nothing.
    let logs = section(&out, "agent_logs");
    let (first_log, second_log) = logs.split_once("--- agent2").unwrap();
    assert!(first_log.contains("enrolled"), "{first_log}");
    // The first role is the whole cluster (2 services, 3 destinations); the API change is one operation.
    let passes: Vec<&str> = first_log
        .lines()
        .filter(|l| l.contains("IPVS reconciled"))
        .collect();
    assert_eq!(passes.len(), 2, "{first_log}");
    assert!(
        passes[0].contains("planned=5 applied=5 failed=0"),
        "{first_log}"
    );
    assert!(
        passes[1].contains("planned=1 applied=1 failed=0"),
        "{first_log}"
    );
    assert!(!second_log.contains("enrolled"), "{second_log}");
    let saved_pass = second_log
        .lines()
        .find(|l| l.contains("saved role applied"))
        .unwrap();
    assert!(saved_pass.contains("planned=0"), "{saved_pass}");
    // A resync pass ran and planned nothing (the test would pass vacuously if none had run).
    let resync = second_log
        .lines()
        .find(|l| l.contains("reconcile pass") && l.contains("resync=true"))
        .unwrap_or_else(|| panic!("no resync pass ran:\n{second_log}"));
    assert!(resync.contains("planned=0"), "{resync}");
    assert!(
        !second_log.contains("IPVS reconciled") && !second_log.contains("repaired"),
        "{second_log}"
    );
    assert!(!second_log.contains("ERROR"), "{second_log}");

    // Its reports arrive: the server holds the newest generation as applied, with the kernel's counters.
    let (_, n) = srv.get("/api/v1/nodes/lb-01", &op).await;
    assert_eq!(n["state"], "serving", "{n}");
    assert_eq!(n["applied_generation"], n["role_generation"], "{n}");
    let report = match &n["last_report"] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    assert!(
        report.contains("198.18.2.2") && report.contains("\"weight\":7"),
        "{report}"
    );
}

/// The common spec without health checks: its real servers do not exist, and probes must not leave the
/// test's own network (health checks have their own tests).
fn unchecked(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(services) = spec["services"].as_array_mut() {
        for s in services {
            s["check"] = serde_json::json!({"kind": "none"});
        }
    }
    spec
}
