//! Rollouts, remote reboot and drift through the real HTTP API, with simulated agents: each polls its role
//! document with its node credential, "reboots" when the document's reboot generation rises above the one it
//! booted with (it goes silent for a moment, then comes back running the image the server now says it should
//! boot) and reports what it applied, its image and its health checks. An image named in `BadImages` boots
//! but its health checks fail (a broken build).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lbfleet_tests::wait::until_async;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// What a simulated machine did, for the assertions.
#[derive(Debug, Default, Clone)]
struct Machine {
    image: String,
    /// Reboots in order: (image it came up with, its role in the document that asked for the reboot).
    reboots: Vec<(String, String)>,
    /// The reboot generation it booted with.
    booted_with: Option<u64>,
}

/// Every simulated reboot of the site in order: (node, image it came up with, its role at the request).
type RebootLog = Arc<Mutex<Vec<(String, String, String)>>>;

struct SimAgent {
    machine: Arc<Mutex<Machine>>,
    base: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimAgent {
    fn start(
        srv: &TestServer,
        name: &str,
        credential: String,
        image: &str,
        bad: Arc<HashSet<String>>,
        log: RebootLog,
    ) -> SimAgent {
        let machine = Arc::new(Mutex::new(Machine {
            image: image.to_owned(),
            ..Machine::default()
        }));
        let base = Arc::new(Mutex::new(srv.base.clone()));
        let admin = srv.tokens.admin.clone();
        let (m, b, name) = (machine.clone(), base.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut after = 0u64;
            let mut doc: Option<Value> = None;
            loop {
                let base = b.lock().unwrap().clone();
                let got = http
                    .get(format!("{base}/api/v1/agent/role?after={after}&wait=1"))
                    .bearer_auth(&credential)
                    .send()
                    .await;
                let resp = match got {
                    Ok(r) => r,
                    Err(_) => {
                        // The server is restarting: try again shortly.
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                };
                if resp.status() == StatusCode::OK {
                    let Ok(d) = resp.json::<Value>().await else {
                        continue;
                    };
                    after = d["generation"].as_u64().unwrap_or(0);
                    let rg = d["reboot_generation"].as_u64().unwrap_or(0);
                    let booted = *m.lock().unwrap().booted_with.get_or_insert(rg);
                    if rg > booted {
                        // Reboot: silent while "booting", then up with what the server boots it with now.
                        let role = d["role"].as_str().unwrap_or("-").to_owned();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let image = desired_image(&http, &base, &admin, &name).await;
                        {
                            let mut mm = m.lock().unwrap();
                            mm.booted_with = Some(rg);
                            mm.image = image.clone();
                            mm.reboots.push((image.clone(), role.clone()));
                        }
                        log.lock().unwrap().push((name.clone(), image, role));
                        // A fresh boot reads its role from the start.
                        after = 0;
                        doc = None;
                        continue;
                    }
                    doc = Some(d);
                } else if resp.status() != StatusCode::NO_CONTENT {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                let Some(d) = &doc else { continue };
                let image = m.lock().unwrap().image.clone();
                let report = report_for(d, &image, !bad.contains(&image));
                let _ = http
                    .post(format!("{base}/api/v1/agent/report"))
                    .bearer_auth(&credential)
                    .json(&report)
                    .send()
                    .await;
            }
        });
        SimAgent {
            machine,
            base,
            task,
        }
    }

    fn machine(&self) -> Machine {
        self.machine.lock().unwrap().clone()
    }

    /// Points the agent at another server (a restarted one).
    fn follow(&self, srv: &TestServer) {
        *self.base.lock().unwrap() = srv.base.clone();
    }
}

/// The image the server boots `node` with: its own, else the default.
async fn desired_image(http: &reqwest::Client, base: &str, admin: &str, node: &str) -> String {
    loop {
        let n: Option<Value> = match http
            .get(format!("{base}/api/v1/nodes/{node}"))
            .bearer_auth(admin)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let images: Option<Value> = match http
            .get(format!("{base}/api/v1/images"))
            .bearer_auth(admin)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if let (Some(n), Some(images)) = (n, images) {
            if let Some(i) = n["image"].as_str() {
                return i.to_owned();
            }
            if let Some(d) = images["images"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["is_default"] == true))
            {
                return d["name"].as_str().unwrap_or("-").to_owned();
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The report of an agent that applied `doc`, runs `image`, and whose checks all pass (or all fail).
fn report_for(doc: &Value, image: &str, healthy: bool) -> Value {
    let services: Vec<Value> = doc["services"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|svc| {
                    json!({
                        "vip": svc["vip"], "port": svc["port"], "protocol": svc["protocol"],
                        "real_servers": svc["real_servers"].as_array().map(|rs| rs.iter().map(|r| json!({
                            "address": r["address"], "port": r["port"], "healthy": healthy,
                            "weight": r["weight"]})).collect::<Vec<_>>()).unwrap_or_default()
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let vrrp = if doc["role"] == "active" {
        "master"
    } else {
        "backup"
    };
    json!({
        "applied_generation": doc["generation"], "vrrp_state": vrrp, "services": services,
        "image_version": image, "agent_version": "test", "uptime_s": 0
    })
}

/// A site: images v1 (default), v2 and v2-bad; cluster `ext` with lb-01 active and lb-02 backup, both agents
/// simulated and serving v1.
struct Site {
    srv: TestServer,
    agents: Vec<(String, SimAgent)>,
    log: RebootLog,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let srv = TestServer::start(dir.path()).await;
        let op = srv.tokens.operator.clone();
        for (name, default) in [("v1", true), ("v2", false), ("v2-bad", false)] {
            let (s, v) = srv
                .put(
                    &format!("/api/v1/images/{name}"),
                    &op,
                    json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": default}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let (s, v) = srv
            .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
            .await;
        assert!(s.is_success(), "{v}");
        let bad: Arc<HashSet<String>> = Arc::new(["v2-bad".to_owned()].into());
        let log: RebootLog = Arc::default();
        let mut agents = Vec::new();
        for (i, (name, role)) in [("lb-01", "active"), ("lb-02", "backup")]
            .iter()
            .enumerate()
        {
            let cred = srv
                .assigned_node(&format!("52:54:00:00:24:0{}", i + 1), name, "ext", role)
                .await;
            agents.push((
                name.to_string(),
                SimAgent::start(&srv, name, cred, "v1", bad.clone(), log.clone()),
            ));
        }
        let site = Site {
            srv,
            agents,
            log,
            _dir: dir,
        };
        site.until("both nodes serving v1 in sync", |d| {
            (d["in_sync"] == 2 && d["drifted"] == 0).then_some(())
        })
        .await;
        site
    }

    fn agent(&self, name: &str) -> &SimAgent {
        &self.agents.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Waits until `check` holds on `GET /api/v1/drift`.
    async fn until<T>(&self, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
        until_async(what, WITHIN, POLL, || async {
            let (s, d) = self.srv.get("/api/v1/drift", &self.srv.tokens.viewer).await;
            (s == StatusCode::OK).then_some(()).and_then(|_| check(&d))
        })
        .await
        .unwrap()
    }

    /// Waits until rollout `id` is in `state`; returns it.
    async fn rollout_in(&self, id: i64, state: &str) -> Value {
        let r = until_async(&format!("rollout {id} {state}"), WITHIN, POLL, || {
            let srv = &self.srv;
            async move {
                let (_, r) = srv
                    .get(&format!("/api/v1/rollouts/{id}"), &srv.tokens.viewer)
                    .await;
                (r["state"] == state).then_some(r)
            }
        })
        .await;
        match r {
            Ok(r) => r,
            Err(e) => {
                let (_, now) = self
                    .srv
                    .get(&format!("/api/v1/rollouts/{id}"), &self.srv.tokens.viewer)
                    .await;
                panic!("{e}: {now:#}");
            }
        }
    }

    /// Stops the server and starts a new one on the same database and state directory (same server id); the
    /// agents follow it.
    async fn restart(&mut self) {
        let spare_dir = self._dir.path().join("spare");
        std::fs::create_dir_all(&spare_dir).unwrap();
        let spare = TestServer::start(&spare_dir).await;
        let (db, tokens) = std::mem::replace(&mut self.srv, spare).stop().await;
        let spare = std::mem::replace(
            &mut self.srv,
            TestServer::start_with(db, tokens, |_| {}).await,
        );
        spare.stop().await;
        for (_, a) in &self.agents {
            a.follow(&self.srv);
        }
    }

    async fn start_rollout(&self, body: Value) -> Value {
        let (s, r) = self
            .srv
            .post("/api/v1/rollouts", &self.srv.tokens.operator, body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        r
    }

    async fn node(&self, name: &str) -> Value {
        self.srv
            .get(&format!("/api/v1/nodes/{name}"), &self.srv.tokens.viewer)
            .await
            .1
    }

    async fn audit(&self) -> Vec<Value> {
        let (s, v) = self
            .srv
            .get("/api/v1/audit?limit=1000", &self.srv.tokens.admin)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["entries"].as_array().unwrap().clone()
    }
}

fn phases(r: &Value) -> Vec<(String, String)> {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_owned(),
                s["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_pair_rollout_goes_backup_first_switches_over_and_audits_every_step() {
    let site = Site::start().await;
    let r = site
        .start_rollout(json!({"image": "v2", "clusters": ["ext"], "gate": {"timeout": "30s"}}))
        .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(
        phases(&r),
        pairs(&[("lb-02", "pending"), ("lb-01", "pending")]),
        "backup first: {r}"
    );
    assert_eq!(r["steps"][0]["canary"], true);
    assert_eq!(r["created_by"], "oper");

    let done = site.rollout_in(id, "succeeded").await;
    assert_eq!(
        phases(&done),
        pairs(&[("lb-02", "done"), ("lb-01", "done")]),
        "{done}"
    );
    // The backup went first; the old active was rebooted only once it had been switched to backup.
    let log = site.log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            ("lb-02".into(), "v2".into(), "backup".into()),
            ("lb-01".into(), "v2".into(), "backup".into()),
        ]
    );
    assert_eq!(site.node("lb-02").await["role"], "active");
    assert_eq!(site.node("lb-01").await["role"], "backup");
    for n in ["lb-01", "lb-02"] {
        assert_eq!(
            site.agent(n).machine().reboots.len(),
            1,
            "{n} rebooted once"
        );
        assert_eq!(site.node(n).await["image"], "v2");
    }
    let d = site
        .until("both on v2 in sync", |d| {
            (d["in_sync"] == 2).then(|| d.clone())
        })
        .await;
    assert_eq!(d["running"], json!([["v2", 2]]), "{d}");

    // The audit log shows each step, and who started it.
    let audit = site.audit().await;
    let target = format!("rollout:{id}");
    let steps: Vec<String> = audit
        .iter()
        .rev()
        .filter(|e| e["target"] == target.as_str() && e["action"] == "rollout.step")
        .map(|e| e["after"]["step"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert_eq!(
        steps,
        [
            "upgrade",
            "passed",
            "switchover",
            "upgrade",
            "passed",
            "finished"
        ],
        "{audit:#?}"
    );
    assert!(audit.iter().any(|e| e["action"] == "rollout.create"
        && e["target"] == target.as_str()
        && e["actor"] == "oper"));
    let reboots: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "node.reboot")
        .collect();
    assert_eq!(reboots.len(), 2);
    assert!(reboots.iter().all(|e| e["actor"] == target.as_str()));
    assert!(audit
        .iter()
        .any(|e| e["action"] == "cluster.switchover" && e["actor"] == target.as_str()));
    let (_, events) = site
        .srv
        .get(
            "/api/v1/events?kind=rollout&limit=100",
            &site.srv.tokens.viewer,
        )
        .await;
    let text = events.to_string();
    assert!(
        text.contains("lb-02 passed its gate on image v2"),
        "{events}"
    );
    assert!(text.contains("succeeded"), "{events}");
}

#[tokio::test]
async fn a_canary_failing_its_gate_is_rolled_back_and_the_other_node_is_untouched() {
    let site = Site::start().await;
    let r = site
        .start_rollout(json!({"image": "v2-bad", "clusters": ["ext"], "gate": {"timeout": "3s"}}))
        .await;
    let id = r["id"].as_i64().unwrap();
    let failed = site.rollout_in(id, "failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("lb-02 failed its gate within 3s")
            && reason.contains("checks down")
            && reason.contains("put back on image v1"),
        "{reason}"
    );
    assert_eq!(
        phases(&failed),
        pairs(&[("lb-02", "rolled_back"), ("lb-01", "pending")])
    );
    // lb-02 rebooted into v2-bad, then back into v1, and serves again.
    site.until("lb-02 back on v1", |d| {
        (d["in_sync"] == 2 && d["running"] == json!([["v1", 2]])).then_some(())
    })
    .await;
    let images: Vec<String> = site
        .agent("lb-02")
        .machine()
        .reboots
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(images, ["v2-bad", "v1"]);
    assert_eq!(site.node("lb-02").await["image"], "v1");
    // The active was never touched: no reboot, no image, still active, no change in its audit trail.
    assert!(site.agent("lb-01").machine().reboots.is_empty());
    let a = site.node("lb-01").await;
    assert_eq!(
        (a["image"].clone(), a["role"].clone()),
        (Value::Null, json!("active"))
    );
    let touched: Vec<Value> = site
        .audit()
        .await
        .into_iter()
        .filter(|e| e["target"] == "node:lb-01")
        .filter(|e| {
            ![
                "node.register",
                "node.enrollment_token",
                "node.enroll",
                "node.assign",
                "node.serving",
            ]
            .contains(&e["action"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(touched.is_empty(), "{touched:#?}");
    // The stopped rollout frees its nodes for the next one.
    let again = site
        .start_rollout(json!({"image": "v2", "nodes": ["lb-02"], "gate": {"timeout": "30s"}}))
        .await;
    site.rollout_in(again["id"].as_i64().unwrap(), "succeeded")
        .await;
}

#[tokio::test]
async fn a_server_restarted_mid_rollout_carries_it_on() {
    let mut site = Site::start().await;
    let r = site
        .start_rollout(json!({"image": "v2", "clusters": ["ext"], "gate": {"timeout": "30s"}}))
        .await;
    let id = r["id"].as_i64().unwrap();
    until_async("the canary passed", WITHIN, POLL, || {
        let srv = &site.srv;
        async move {
            let (_, r) = srv
                .get(&format!("/api/v1/rollouts/{id}"), &srv.tokens.viewer)
                .await;
            (r["steps"][0]["phase"] == "done").then_some(())
        }
    })
    .await
    .unwrap();
    site.restart().await;
    let done = site.rollout_in(id, "succeeded").await;
    assert_eq!(
        phases(&done),
        pairs(&[("lb-02", "done"), ("lb-01", "done")])
    );
    // Resumed where it was: no node was rebooted twice.
    for n in ["lb-01", "lb-02"] {
        assert_eq!(site.agent(n).machine().reboots.len(), 1, "{n}");
    }
}

#[tokio::test]
async fn rollouts_pause_resume_and_abort_and_a_reboot_is_audited_with_who_asked() {
    let site = Site::start().await;
    let (srv, op) = (&site.srv, site.srv.tokens.operator.clone());

    // Bad requests name the field; viewers cannot start one.
    for (body, field) in [
        (json!({"image": "nope", "clusters": ["ext"]}), "image"),
        (json!({"image": "v2"}), "clusters"),
        (
            json!({"image": "v2", "clusters": ["ext"], "max_unavailable": 2}),
            "max_unavailable",
        ),
        (
            json!({"image": "v2", "clusters": ["ext"], "gate": {"timeout": "0s"}}),
            "gate.timeout",
        ),
    ] {
        let (s, v) = srv.post("/api/v1/rollouts", &op, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    let (s, _) = srv
        .post(
            "/api/v1/rollouts",
            &srv.tokens.viewer,
            json!({"image": "v2", "clusters": ["ext"]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Paused after the canary: the other node waits until resumed.
    let r = site
        .start_rollout(
            json!({"image": "v2", "clusters": ["ext"], "pause_after_canary": true,
            "gate": {"timeout": "30s"}}),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    let (s, v) = srv
        .post(
            "/api/v1/rollouts",
            &op,
            json!({"image": "v2", "nodes": ["lb-01"]}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a node in an unfinished rollout: {v}"
    );
    let paused = site.rollout_in(id, "paused").await;
    assert!(paused["reason"]
        .as_str()
        .unwrap()
        .contains("canary lb-02 passed"));
    assert_eq!(
        phases(&paused),
        pairs(&[("lb-02", "done"), ("lb-01", "pending")])
    );
    // Several engine ticks later it is still paused and lb-01 untouched.
    let before = site.agent("lb-02").machine();
    until_async("more reports from the agents", WITHIN, POLL, || async {
        let (_, n) = srv.get("/api/v1/nodes/lb-01", &srv.tokens.viewer).await;
        let seen = n["last_seen_at"].as_i64()?;
        (seen > paused["updated_at"].as_i64()? + 2000).then_some(())
    })
    .await
    .unwrap();
    let (_, still) = srv.get(&format!("/api/v1/rollouts/{id}"), &op).await;
    assert_eq!(still["state"], "paused");
    assert!(site.agent("lb-01").machine().reboots.is_empty());
    assert_eq!(site.agent("lb-02").machine().reboots, before.reboots);
    let (s, v) = srv
        .post(&format!("/api/v1/rollouts/{id}/resume"), &op, json!({}))
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{v}"
    );
    site.rollout_in(id, "succeeded").await;
    let (s, _) = srv
        .post(&format!("/api/v1/rollouts/{id}/pause"), &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a finished rollout cannot pause");

    // An operator's pause and abort; an aborted rollout does nothing more and cannot resume.
    let r = site
        .start_rollout(
            json!({"image": "v1", "nodes": ["lb-01", "lb-02"], "gate": {"timeout": "30s"}}),
        )
        .await;
    let id2 = r["id"].as_i64().unwrap();
    let (s, v) = srv
        .post(&format!("/api/v1/rollouts/{id2}/pause"), &op, json!({}))
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{v}"
    );
    let (s, v) = srv
        .post(&format!("/api/v1/rollouts/{id2}/abort"), &op, json!({}))
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("aborted")),
        "{v}"
    );
    assert_eq!(v["reason"], "aborted by oper");
    let (s, _) = srv
        .post(&format!("/api/v1/rollouts/{id2}/resume"), &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let audit = site.audit().await;
    for action in ["rollout.pause", "rollout.abort", "rollout.resume"] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "oper"),
            "{action}"
        );
    }
    let (_, list) = srv.get("/api/v1/rollouts", &srv.tokens.viewer).await;
    assert_eq!(list["rollouts"][0]["id"], id2);

    // A remote reboot by hand: 202, the agent reboots, the audit names who asked.
    let reboots = site.agent("lb-01").machine().reboots.len();
    let (s, v) = srv.post("/api/v1/nodes/lb-01/reboot", &op, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    until_async("lb-01 rebooted", WITHIN, POLL, || async {
        (site.agent("lb-01").machine().reboots.len() > reboots).then_some(())
    })
    .await
    .unwrap();
    assert!(site
        .audit()
        .await
        .iter()
        .any(|e| e["action"] == "node.reboot"
            && e["actor"] == "oper"
            && e["target"] == "node:lb-01"));
    let (s, _) = srv
        .post("/api/v1/nodes/lb-01/reboot", &srv.tokens.viewer, json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// The dashboard as `user`: its session cookie and a client that does not follow redirects.
struct Dashboard {
    cookie: String,
    http: reqwest::Client,
}

impl Dashboard {
    async fn login(srv: &TestServer, user: &str) -> Dashboard {
        Dashboard {
            cookie: srv.session_cookie(user).await,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn page(&self, srv: &TestServer, path: &str) -> String {
        let resp = self
            .http
            .get(srv.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.text().await.unwrap()
    }

    /// Posts a form with the CSRF token of `from`; the redirect's target.
    async fn post(
        &self,
        srv: &TestServer,
        from: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> String {
        let html = self.page(srv, from).await;
        let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
        let csrf = html[at..].split('"').next().unwrap().to_owned();
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend_from_slice(form);
        let resp = self
            .http
            .post(srv.url(path))
            .header("cookie", &self.cookie)
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{path}");
        resp.headers()["location"].to_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn the_dashboard_starts_watches_and_aborts_a_rollout_shows_drift_and_reboots_a_node() {
    let site = Site::start().await;
    let srv = &site.srv;
    let web = Dashboard::login(srv, "oper").await;
    let overview = web.page(srv, "/").await;
    assert!(
        overview.contains("<span class=\"num\">2</span> run what they should"),
        "{overview}"
    );
    assert!(web.page(srv, "/nodes").await.contains("runs v1"));

    let page = web.page(srv, "/rollouts").await;
    assert!(page.contains("id=\"rollout-start\""));
    let to = web
        .post(
            srv,
            "/rollouts",
            "/rollouts",
            &[
                ("image", "v2"),
                ("clusters", "ext"),
                ("timeout", "30s"),
                ("checks_up", "1"),
                ("in_sync", "1"),
                ("pause_after_canary", "1"),
            ],
        )
        .await;
    assert_eq!(to, "/rollouts/1");
    let paused = site.rollout_in(1, "paused").await;
    assert_eq!(paused["request"]["gate"]["timeout"], "30s");
    let page = web.page(srv, "/rollouts/1").await;
    assert!(
        page.contains("ro-paused")
            && page.contains("canary lb-02 passed its gate")
            && page.contains("action=\"/rollouts/1/resume\""),
        "{page}"
    );
    web.post(srv, "/rollouts/1", "/rollouts/1/abort", &[]).await;
    let aborted = site.rollout_in(1, "aborted").await;
    assert_eq!(aborted["reason"], "aborted by oper");
    assert!(web.page(srv, "/rollouts").await.contains("aborted by oper"));

    // lb-01 should boot v2 but still runs v1: drift on its page and the overview, and an alert.
    let (s, v) = srv
        .put(
            "/api/v1/nodes/lb-01/image",
            &srv.tokens.operator,
            json!({"image": "v2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let node = web.page(srv, "/nodes/lb-01").await;
    assert!(
        node.contains("boots v2, runs v1 <span class=\"badge warn\">drift</span>")
            && node.contains("id=\"node-reboot\""),
        "{node}"
    );
    assert!(web
        .page(srv, "/")
        .await
        .contains("<span class=\"num\">1</span> drifted"));
    let (_, alerts) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    assert!(
        alerts
            .to_string()
            .contains("node lb-01 runs image v1, should run v2"),
        "{alerts}"
    );
    // The reboot button: the node hands over, reboots into v2, the drift is gone.
    web.post(srv, "/nodes/lb-01", "/nodes/lb-01/reboot", &[])
        .await;
    site.until("lb-01 on v2", |d| {
        (d["in_sync"] == 2 && d["running"] == json!([["v2", 2]])).then_some(())
    })
    .await;
    // Viewers see rollouts but no start form.
    let viewer = Dashboard::login(srv, "view").await;
    assert!(!viewer
        .page(srv, "/rollouts")
        .await
        .contains("id=\"rollout-start\""));
}

#[tokio::test]
async fn the_cli_starts_a_rollout_waits_for_it_and_lists_it() {
    let site = Site::start().await;
    let db = db_url(&site.srv.db_path);
    let bin = env!("CARGO_BIN_EXE_lbfleet-server");
    let out = tokio::process::Command::new(bin)
        .args([
            "rollout",
            "start",
            "v2",
            "--cluster",
            "ext",
            "--gate-timeout",
            "30s",
            "--wait",
        ])
        .args(["--database", &db])
        .env("USER", "carol")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WITHIN, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["created_by"], "cli:carol");
    assert!(
        stderr.contains("succeeded | lb-02 done, lb-01 done"),
        "{stderr}"
    );
    // tokio's process API: a blocking wait would stall the server under test (same runtime), which may hold
    // a row lock the command waits for.
    let out = tokio::process::Command::new(bin)
        .args(["rollout", "list", "--database", &db])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WITHIN, out).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("succeeded") && text.contains("v2"),
        "{text}"
    );
    let out = tokio::process::Command::new(bin)
        .args(["rollout", "abort", "1", "--database", &db])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WITHIN, out).await.unwrap().unwrap();
    assert!(
        !out.status.success(),
        "a finished rollout cannot be aborted"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("succeeded"));
}

#[tokio::test]
async fn with_two_servers_on_one_database_one_drives_a_rollout_and_the_other_takes_over_when_it_stops(
) {
    let mut site = Site::start().await;
    // A second server on the same database, with a state directory (server id) of its own.
    let other_state = site._dir.path().join("second");
    std::fs::create_dir_all(&other_state).unwrap();
    let second = TestServer::start_with(site.srv.db_path.clone(), site.srv.tokens.clone(), |c| {
        c.state_dir = other_state.clone();
    })
    .await;
    let r = site
        .start_rollout(
            json!({"image": "v2", "clusters": ["ext"], "pause_after_canary": true,
            "gate": {"timeout": "60s"}}),
        )
        .await;
    let id = r["id"].as_i64().unwrap();
    let paused = site.rollout_in(id, "paused").await;
    let driver = paused["driven_by"].as_str().unwrap().to_owned();
    // Whichever server drives it, the other never did: every step so far has the same lease holder, and
    // the canary was rebooted once.
    assert_eq!(site.agent("lb-02").machine().reboots.len(), 1);
    // Stop the driver; the rollout goes on under the other once its lease expired.
    let first_id =
        lbfleet_server::fleet::servers::server_id(site.srv.db_path.parent().unwrap()).unwrap();
    let second_id = lbfleet_server::fleet::servers::server_id(&other_state).unwrap();
    assert!(driver == first_id || driver == second_id, "{driver}");
    let heir = if driver == first_id {
        let spare = std::mem::replace(&mut site.srv, second);
        spare.stop().await;
        second_id
    } else {
        second.stop().await;
        first_id
    };
    for (_, a) in &site.agents {
        a.follow(&site.srv);
    }
    let (s, v) = site
        .srv
        .post(
            &format!("/api/v1/rollouts/{id}/resume"),
            &site.srv.tokens.operator,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_async(
        "the other server takes the rollout over",
        WITHIN,
        POLL,
        || {
            let srv = &site.srv;
            let heir = heir.clone();
            async move {
                let (_, r) = srv
                    .get(&format!("/api/v1/rollouts/{id}"), &srv.tokens.viewer)
                    .await;
                (r["driven_by"].as_str() == Some(heir.as_str()) || r["state"] == "succeeded")
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    site.rollout_in(id, "succeeded").await;
    for n in ["lb-01", "lb-02"] {
        assert_eq!(
            site.agent(n).machine().reboots.len(),
            1,
            "{n} rebooted once"
        );
    }
}
