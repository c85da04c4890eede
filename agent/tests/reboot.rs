//! Component tests: remote reboot in server mode against a real lbfleet-server. The agent ignores the reboot
//! generation its first role carries, and on a higher one hands over first (its VRRP instance stopped: a
//! priority-0 advert when MASTER, VIPs removed; the sync daemon stopped) and only then asks the machine to
//! reboot, once; the recording machine stands in for `reboot(2)`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_agent::daemon::{self as run, RunConfig};
use lbfleet_agent::reboot::{HandOver, Machine, RebootError};
use lbfleet_agent::reconcile::RecordingApplier;
use lbfleet_tests::server::{cluster_spec, TestServer};
use lbfleet_tests::wait;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::oneshot;

const MAC: &str = "52:54:00:24:02:01";

/// Records each reboot and what had been handed over by then.
#[derive(Debug, Default, Clone)]
struct RecordingMachine(Arc<Mutex<Vec<HandOver>>>);

impl Machine for RecordingMachine {
    fn reboot(&self, handed_over: &HandOver) -> Result<(), RebootError> {
        self.0.lock().unwrap().push(handed_over.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_request_hands_over_first_then_reboots_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv
        .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    assert!(s.is_success(), "{v}");
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": MAC, "hostname": "lb-01"}),
    )
    .await;
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A reboot requested before the agent ever ran: the agent comes up with it, so it is no request to it.
    let (s, v) = srv.post("/api/v1/nodes/lb-01/reboot", &op, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (_, t) = srv
        .post("/api/v1/nodes/lb-01/enrollment-token", &op, json!({}))
        .await;

    let machine = RecordingMachine::default();
    let mut cfg = RunConfig::new(&srv.base, dir.path().join("state"));
    cfg.token = Some(t["token"].as_str().unwrap().to_owned());
    cfg.mac = Some(MAC.into());
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.machine = Some(Arc::new(machine.clone()));
    let kernel = RecordingApplier::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(run::run(cfg, Box::new(kernel.clone()), async move {
        let _ = stop_rx.await;
    }));

    wait::until_async(
        "lb-01 serving",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let (_, n) = srv.get("/api/v1/nodes/lb-01", &op).await;
            (n["state"] == "serving").then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        machine.0.lock().unwrap().is_empty(),
        "no reboot for the value it booted with"
    );
    assert!(!agent.is_finished());

    let (s, v) = srv.post("/api/v1/nodes/lb-01/reboot", &op, json!({})).await;
    assert_eq!(
        (s, v["reboot_generation"].as_i64()),
        (StatusCode::ACCEPTED, Some(2)),
        "{v}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("the agent loop ends once it asked for the reboot")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let reboots = machine.0.lock().unwrap().clone();
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    let h = &reboots[0];
    assert!(h.vrrp_was.is_some(), "the role runs VRRP: {h:?}");
    assert!(
        h.vrrp_stopped && h.sync_stopped,
        "handed over before the reboot: {h:?}"
    );
    drop(stop_tx);
    let (_, audit) = srv.get("/api/v1/audit?limit=100", &srv.tokens.admin).await;
    let asked: Vec<&serde_json::Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "node.reboot")
        .collect();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|e| e["actor"] == "oper"));
}
