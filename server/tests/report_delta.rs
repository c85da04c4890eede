//! Report deltas end to end (issue 25, item 2): a 30,000-real-server node's full report is accepted whole, a
//! delta changes only what it names, a delta on a base the server does not hold is answered "send a full
//! report" and changes nothing (also on a second server with a database of its own), an older agent's full
//! report still lands, and a steady-state delta is small on the wire. Runs on SQLite and, with
//! `LBFLEET_TEST_DATABASE=postgres`, on PostgreSQL. Prints the sizes and times it measures
//! (`cargo test --workspace --test report_delta -- --nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{cluster_spec, TestServer};
use lbfleet_agent::daemon::delta::{Outgoing, ReportDeltas, COUNTER_ROWS_PER_DELTA};
use lbfleet_proto::{
    AgentReport, HealthState, Protocol, RealServerHealth, RealServerReport, ReportDelta,
    ServiceDelta, ServiceReport,
};
use reqwest::StatusCode;
use serde_json::Value;

const SERVICES: usize = 300;
const PER_SERVICE: usize = 100;
/// What a steady-state delta of this site may weigh on the wire (its head: versions, uptime, VRRP state).
const STEADY_DELTA_MAX_BYTES: usize = 2 * 1024;

fn row(i: usize) -> RealServerReport {
    RealServerReport {
        address: format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
        port: 8080,
        healthy: true,
        weight: 1,
        active_conns: 0,
        inactive_conns: 0,
        connections: 0,
        packets_in: 0,
        packets_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        health: Some(RealServerHealth {
            state: HealthState::Up,
            since: Some(1_765_000_000),
            last_error: None,
            latency_us: Some(150),
            flaps: 0,
            check: Some("tcp connect :8080".into()),
        }),
    }
}

fn service(s: usize) -> ServiceReport {
    ServiceReport {
        vip: format!("198.18.0.{}", 10 + s / 100),
        port: 1000 + s as u16,
        protocol: Protocol::Tcp,
        connections: 0,
        packets_in: 0,
        packets_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        real_servers: (0..PER_SERVICE).map(|r| row(s * PER_SERVICE + r)).collect(),
    }
}

/// A 300 x 100 site's full report.
fn full_report(generation: u64) -> AgentReport {
    AgentReport {
        applied_generation: generation,
        vrrp_state: Some(lbfleet_proto::VrrpState::Master),
        agent_version: Some("0.1.0".into()),
        image_version: Some("site-1".into()),
        uptime_s: 100,
        services: (0..SERVICES).map(service).collect(),
        ..AgentReport::default()
    }
}

/// Posts `body` as JSON bytes; returns the status, the answer and how long the request took.
async fn post_bytes(
    srv: &TestServer,
    path: &str,
    credential: &str,
    body: Vec<u8>,
) -> (StatusCode, Value, std::time::Duration) {
    let started = Instant::now();
    let resp = srv
        .http
        .post(srv.url(path))
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let took = started.elapsed();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value, took)
}

/// The report the server stores for `node`, as every reader (pages, alerts, rollouts, drift) gets it.
async fn stored(srv: &TestServer, node: &str) -> AgentReport {
    let (s, v) = srv
        .get(&format!("/api/v1/nodes/{node}"), &srv.tokens.viewer)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v["last_report"].clone()).unwrap()
}

/// Cluster `ext` and its active node `name`: the node's credential and its role generation.
async fn active_node(srv: &TestServer, mac: &str, name: &str) -> (String, u64) {
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext",
            &srv.tokens.operator,
            cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cred = srv.assigned_node(mac, name, "ext", "active").await;
    let (_, role) = srv.get("/api/v1/agent/role", &cred).await;
    (cred, role["generation"].as_u64().unwrap())
}

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

#[tokio::test]
async fn a_30000_real_server_report_then_deltas_on_their_base_only() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (cred, generation) = active_node(&srv, "52:54:00:00:00:31", "lb-31").await;

    // The full report: 30,000 real servers in one body, under the server's bound, accepted and stored whole.
    let full = full_report(generation);
    let full_bytes = serde_json::to_vec(&full).unwrap();
    let (s, v, took) = post_bytes(
        &srv,
        "/api/v1/agent/report?deltas=1",
        &cred,
        full_bytes.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seq = seq_of(&v);
    println!(
        "full report, {} real servers: {} bytes, accepted in {} ms",
        SERVICES * PER_SERVICE,
        full_bytes.len(),
        took.as_millis()
    );
    assert!(
        full_bytes.len() > 4 * 1024 * 1024,
        "the old bound would have refused it"
    );
    assert!(full_bytes.len() <= lbfleet_proto::bounds::MAX_REPORT_BYTES);
    let held = stored(&srv, "lb-31").await;
    assert_eq!(held, full);

    // A steady state: nothing but the head moved (the probes' latency is a measurement, not a change), as the
    // agent's own delta builder sees it. Small on the wire, and merged.
    let mut deltas = ReportDeltas::default();
    let t0 = Instant::now();
    deltas.full_accepted(full.clone(), Some(seq), t0);
    let mut now = full.clone();
    now.uptime_s = 110;
    for r in now.services.iter_mut().flat_map(|s| &mut s.real_servers) {
        r.health.as_mut().unwrap().latency_us = Some(160);
    }
    let Outgoing::Delta(steady) = deltas.next(&now, t0) else {
        panic!("the agent would send a full report");
    };
    let steady = *steady;
    assert!(steady.services.is_empty(), "{:?}", steady.services);
    let steady_bytes = serde_json::to_vec(&steady).unwrap();
    println!("steady-state delta: {} bytes", steady_bytes.len());
    assert!(
        steady_bytes.len() <= STEADY_DELTA_MAX_BYTES,
        "{} bytes",
        steady_bytes.len()
    );
    let (s, v, took) = post_bytes(&srv, "/api/v1/agent/report/delta", &cred, steady_bytes).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seq2 = seq_of(&v);
    assert_eq!(seq2, seq + 1);
    println!(
        "steady-state delta merged in {} ms (round trip)",
        took.as_millis()
    );

    // A delta that changes one real server and one service's counters, and removes another real server.
    let mut down = row(12 * PER_SERVICE + 34);
    down.healthy = false;
    down.weight = 0;
    down.health = Some(RealServerHealth {
        state: HealthState::Down,
        since: Some(1_765_000_110),
        last_error: Some("connect: refused".into()),
        latency_us: None,
        flaps: 1,
        check: Some("tcp connect :8080".into()),
    });
    let gone = row(40 * PER_SERVICE + 1);
    let s12 = service(12);
    let transition = lbfleet_proto::HealthTransition {
        service: format!("{}:{}/tcp", s12.vip, s12.port),
        address: down.address.clone(),
        port: down.port,
        from: HealthState::Up,
        to: HealthState::Down,
        at: 1_765_000_110,
        reason: Some("connect: refused".into()),
    };
    let change = ReportDelta {
        base: seq2,
        head: AgentReport {
            services: Vec::new(),
            uptime_s: 120,
            health_events: vec![transition.clone()],
            ..full.clone()
        },
        services: vec![
            ServiceDelta {
                vip: s12.vip.clone(),
                port: s12.port,
                protocol: s12.protocol,
                connections: 777,
                packets_in: 0,
                packets_out: 0,
                bytes_in: 9_000,
                bytes_out: 0,
                real_servers: vec![down.clone()],
                removed: vec![],
            },
            ServiceDelta {
                removed: vec![lbfleet_proto::RealServerRef {
                    address: gone.address.clone(),
                    port: gone.port,
                }],
                ..ServiceDelta {
                    vip: service(40).vip,
                    port: service(40).port,
                    protocol: Protocol::Tcp,
                    connections: 0,
                    packets_in: 0,
                    packets_out: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    real_servers: vec![],
                    removed: vec![],
                }
            },
        ],
        removed_services: Vec::new(),
    };
    let change_bytes = serde_json::to_vec(&change).unwrap();
    println!(
        "delta of one failed and one removed real server: {} bytes",
        change_bytes.len()
    );
    assert!(change_bytes.len() <= STEADY_DELTA_MAX_BYTES + 1024);
    // It goes to a second server on the same database (an agent moved to the next server of a fleet): the
    // base is in the database, so that server merges it.
    let twin_state = dir.path().join("twin");
    std::fs::create_dir_all(&twin_state).unwrap();
    let twin = TestServer::start_with(srv.db_path.clone(), srv.tokens.clone(), |c| {
        c.state_dir = twin_state.clone();
    })
    .await;
    let (s, v, took) = post_bytes(&twin, "/api/v1/agent/report/delta", &cred, change_bytes).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seq3 = seq_of(&v);
    println!(
        "change delta merged in {} ms (round trip)",
        took.as_millis()
    );
    let merged = stored(&srv, "lb-31").await;
    let mut expect = full.clone();
    expect.uptime_s = 120;
    expect.health_events = vec![transition];
    expect.services[12].connections = 777;
    expect.services[12].bytes_in = 9_000;
    expect.services[12].real_servers[34] = down.clone();
    expect.services[40].real_servers.remove(1);
    assert_eq!(merged, expect, "only what the delta names changed");
    let total: usize = merged.services.iter().map(|s| s.real_servers.len()).sum();
    assert_eq!(total, SERVICES * PER_SERVICE - 1);
    // The failure is an event, as from a full report.
    let (_, events) = srv
        .get("/api/v1/events?node=lb-31&kind=health", &srv.tokens.viewer)
        .await;
    assert!(
        events
            .to_string()
            .contains(&format!("{}:8080", down.address)),
        "no health event for the failed real server: {events}"
    );

    // A stale base (an answer the agent missed) and an unknown one: 409 "send a full report", nothing merged.
    for base in [seq2, seq3 + 1000, 0] {
        let stale = ReportDelta {
            base,
            ..change.clone()
        };
        let (s, v, _) = post_bytes(
            &srv,
            "/api/v1/agent/report/delta",
            &cred,
            serde_json::to_vec(&stale).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "report_base_unknown", "{v}");
        assert_eq!(
            stored(&srv, "lb-31").await,
            expect,
            "a refused delta changed the report"
        );
    }
    // A delta that does not fit the base it names (removes a real server the report lacks): the same answer.
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report/delta",
        &cred,
        serde_json::to_vec(&ReportDelta {
            base: seq3,
            ..change.clone()
        })
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(stored(&srv, "lb-31").await, expect);

    // An older agent: a full report without `?deltas=1` gets 204 as before, is stored, and moves the number
    // on, so a delta on the previous base is refused.
    let old = full_report(generation);
    let (s, v) = srv
        .post(
            "/api/v1/agent/report",
            &cred,
            serde_json::to_value(&old).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(stored(&srv, "lb-31").await, old);
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report/delta",
        &cred,
        serde_json::to_vec(&ReportDelta {
            base: seq3,
            ..steady.clone()
        })
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(stored(&srv, "lb-31").await, old);

    // What this server took, as /metrics says: two full reports, one merged delta (the other went to the
    // twin), five deltas answered "send a full report".
    let (_, metrics) = srv.get("/metrics", &srv.tokens.viewer).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for line in [
        "lbfleet_agent_reports_total{kind=\"full\"} 2",
        "lbfleet_agent_reports_total{kind=\"delta\"} 1",
        "lbfleet_agent_reports_total{kind=\"delta_refused\"} 5",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }

    // A busy site: every real server's counters moved. The agent's delta carries one rotation's share of them
    // (and the services' counters); the server stores exactly those rows' new counters.
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report?deltas=1",
        &cred,
        serde_json::to_vec(&old).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut deltas = ReportDeltas::default();
    deltas.full_accepted(old.clone(), Some(seq_of(&v)), Instant::now());
    let mut busy = old.clone();
    for svc in &mut busy.services {
        svc.connections += 100 * PER_SERVICE as u64;
        svc.bytes_in += 1_000_000;
        for r in &mut svc.real_servers {
            r.active_conns = 12;
            r.connections += 100;
            r.packets_in += 1_000;
            r.packets_out += 900;
            r.bytes_in += 10_000;
            r.bytes_out += 400_000;
            r.health.as_mut().unwrap().latency_us = Some(180);
        }
    }
    let Outgoing::Delta(busy_delta) = deltas.next(&busy, Instant::now()) else {
        panic!("the agent would send a full report");
    };
    let rows: usize = busy_delta
        .services
        .iter()
        .map(|s| s.real_servers.len())
        .sum();
    assert_eq!(rows, COUNTER_ROWS_PER_DELTA);
    let busy_bytes = serde_json::to_vec(&busy_delta).unwrap();
    let busy_full = serde_json::to_vec(&busy).unwrap().len();
    println!(
        "busy site: full report {} bytes, delta ({} counter rows, {} services) {} bytes",
        busy_full,
        rows,
        busy_delta.services.len(),
        busy_bytes.len()
    );
    assert!(
        busy_bytes.len() * 10 < busy_full,
        "a busy delta is a tenth of the full report at most"
    );
    let (s, v, took) = post_bytes(&srv, "/api/v1/agent/report/delta", &cred, busy_bytes).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    println!("busy delta merged in {} ms (round trip)", took.as_millis());
    let merged = stored(&srv, "lb-31").await;
    assert_eq!(merged, busy_delta.apply(&old).unwrap());
    let moved = merged
        .services
        .iter()
        .flat_map(|s| &s.real_servers)
        .filter(|r| r.connections == 100)
        .count();
    assert_eq!(
        moved, COUNTER_ROWS_PER_DELTA,
        "only the rows the delta carried moved"
    );
    assert!(merged
        .services
        .iter()
        .all(|s| s.connections == 100 * PER_SERVICE as u64));

    // A second server with a database of its own never holds this base: "send a full report", nothing written.
    let dir2 = tempfile::tempdir().unwrap();
    let other = TestServer::start(dir2.path()).await;
    let (s, v) = other
        .put(
            "/api/v1/clusters/ext",
            &other.tokens.operator,
            cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cred2 = other
        .assigned_node("52:54:00:00:00:31", "lb-31", "ext", "active")
        .await;
    let (s, v, _) = post_bytes(
        &other,
        "/api/v1/agent/report/delta",
        &cred2,
        serde_json::to_vec(&ReportDelta {
            base: 1,
            ..steady.clone()
        })
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "report_base_unknown", "{v}");
    let (_, node) = other.get("/api/v1/nodes/lb-31", &other.tokens.viewer).await;
    assert!(node["last_report"].is_null(), "{node}");
}

#[tokio::test]
async fn a_delta_that_breaks_the_bounds_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let (cred, generation) = active_node(&srv, "52:54:00:00:00:32", "lb-32").await;
    let small = AgentReport {
        services: vec![service(0)],
        ..full_report(generation)
    };
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report?deltas=1",
        &cred,
        serde_json::to_vec(&small).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seq = seq_of(&v);
    // A real server whose error text breaks the text rule: 422 naming the field, nothing merged, base kept.
    let mut bad = row(5);
    bad.health.as_mut().unwrap().last_error = Some("line\nbreak".into());
    let s0 = service(0);
    let delta = ReportDelta {
        base: seq,
        head: AgentReport {
            services: Vec::new(),
            ..small.clone()
        },
        services: vec![ServiceDelta {
            vip: s0.vip,
            port: s0.port,
            protocol: s0.protocol,
            connections: 1,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            real_servers: vec![bad],
            removed: vec![],
        }],
        removed_services: Vec::new(),
    };
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report/delta",
        &cred,
        serde_json::to_vec(&delta).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("last_error"), "{v}");
    assert_eq!(stored(&srv, "lb-32").await, small);
    // The base is still the one held: a good delta on it is merged.
    let good = ReportDelta {
        base: seq,
        services: Vec::new(),
        ..delta
    };
    let (s, v, _) = post_bytes(
        &srv,
        "/api/v1/agent/report/delta",
        &cred,
        serde_json::to_vec(&good).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(seq_of(&v), seq + 1);
}
