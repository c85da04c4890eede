//! Traffic graphs end to end: agent reports through the real agent API become the traffic history, served as
//! JSON (`/api/v1/clusters/{name}/traffic`, `/api/v1/nodes/{node}/traffic`), drawn as SVG on the cluster and
//! node pages, and exported in `/metrics`. Runs on SQLite and, with `LBFLEET_TEST_DATABASE=postgres`, on
//! PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use common::{cluster_spec, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Milliseconds since the epoch.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Waits for the clock to pass the millisecond of the last report (two reports in one millisecond are no
/// sample: no time passed to divide by).
async fn next_millisecond() {
    let start = now_ms();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while now_ms() <= start {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A report with these counters: the service's (connections, bytes in, bytes out) and each real server's
/// connections and whether it is healthy.
fn report(generation: &Value, vrrp: &str, svc: (u64, u64, u64), rs: [(u64, bool); 2]) -> Value {
    json!({
        "applied_generation": generation,
        "vrrp_state": vrrp,
        "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp",
            "connections": svc.0, "bytes_in": svc.1, "bytes_out": svc.2,
            "real_servers": [
                {"address": "198.18.2.1", "port": 8080, "healthy": rs[0].1, "weight": 1,
                 "connections": rs[0].0, "bytes_in": rs[0].0 * 10, "bytes_out": rs[0].0 * 40},
                {"address": "198.18.2.2", "port": 8080, "healthy": rs[1].1, "weight": 2,
                 "connections": rs[1].0, "bytes_in": rs[1].0 * 10, "bytes_out": rs[1].0 * 40}]}]
    })
}

fn total(series: &Value, field: &str) -> i64 {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_i64().unwrap())
        .sum()
}

fn series_of<'a>(t: &'a Value, real_server: &str) -> &'a Value {
    t["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["real_server"] == real_server)
        .unwrap_or_else(|| panic!("no series for {real_server}: {t}"))
}

#[tokio::test]
async fn reported_counters_become_rates_in_the_api_the_pages_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let viewer = srv.tokens.viewer.clone();
    let (s, v) = srv
        .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cred = srv
        .assigned_node("52:54:00:00:00:01", "lb-01", "ext", "active")
        .await;
    let (_, role) = srv.get("/api/v1/agent/role", &cred).await;
    let g = &role["generation"];

    // Before any report: empty series, and the pages say so.
    let (s, t) = srv.get("/api/v1/clusters/ext/traffic", &viewer).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["series"], json!([]), "{t}");
    let html = srv.page_as("oper", "/clusters/ext").await;
    assert!(html.contains("traffic-empty"), "no empty-state text");

    // Three reports: a baseline; +500 connections as the node becomes MASTER and 198.18.2.2 fails; then
    // 198.18.2.1's counters reset (the destination was re-added) to 50.
    let reports = [
        report(
            g,
            "backup",
            (1_000, 10_000, 40_000),
            [(600, true), (400, true)],
        ),
        report(
            g,
            "master",
            (1_500, 15_000, 60_000),
            [(900, true), (600, false)],
        ),
        report(
            g,
            "master",
            (1_600, 16_000, 64_000),
            [(50, true), (650, false)],
        ),
    ];
    for r in reports {
        next_millisecond().await;
        let (s, v) = srv.post("/api/v1/agent/report", &cred, r).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }

    for range in ["1h", "24h", "7d"] {
        let (s, t) = srv
            .get(
                &format!("/api/v1/clusters/ext/traffic?range={range}"),
                &viewer,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{t}");
        assert_eq!(t["range"], range);
        assert_eq!(t["step_s"], if range == "1h" { 10 } else { 300 }, "{t}");
        let series = t["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "one reported service: {t}");
        assert_eq!(series[0]["service"], "tcp/198.18.0.10:80");
        assert_eq!(total(&series[0], "connections"), 600, "{t}");
        assert_eq!(total(&series[0], "bytes_in"), 6_000, "{t}");
        assert_eq!(total(&series[0], "bytes_out"), 24_000, "{t}");
        let rates = series[0]["points"].as_array().unwrap();
        assert!(
            rates
                .iter()
                .all(|p| p["connections_per_s"].as_f64().unwrap() > 0.0),
            "{t}"
        );
        let marks = t["marks"].as_array().unwrap();
        assert!(
            marks
                .iter()
                .any(|m| m["kind"] == "vrrp"
                    && m["text"].as_str().unwrap().contains("backup -> master")),
            "{t}"
        );
        assert!(
            marks.iter().any(
                |m| m["kind"] == "health" && m["text"].as_str().unwrap().contains("198.18.2.2")
            ),
            "{t}"
        );
    }

    // Per real server on the node: the reset counts from zero (300 + 50), never negative.
    let (s, t) = srv.get("/api/v1/nodes/lb-01/traffic", &viewer).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["series"].as_array().unwrap().len(), 2, "{t}");
    let rs1 = series_of(&t, "198.18.2.1:8080");
    assert_eq!(total(rs1, "connections"), 350, "{t}");
    assert_eq!(total(rs1, "bytes_out"), 350 * 40, "{t}");
    assert_eq!(total(series_of(&t, "198.18.2.2:8080"), "connections"), 250);
    for p in rs1["points"].as_array().unwrap() {
        assert!(p["connections_per_s"].as_f64().unwrap() >= 0.0, "{t}");
    }

    // A range that is not one: 400, naming the choices; an unknown cluster: 404.
    let (s, v) = srv
        .get("/api/v1/clusters/ext/traffic?range=2y", &viewer)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("1h, 24h or 7d"), "{v}");
    let (s, _) = srv.get("/api/v1/clusters/nope/traffic", &viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The cluster page draws the service; the node page its two real servers; both mark the VRRP change.
    let html = srv.page_as("oper", "/clusters/ext").await;
    assert!(
        html.contains("<div id=\"cluster-traffic\" data-live>"),
        "no live region"
    );
    for id in ["cluster-traffic-conns", "cluster-traffic-bytes"] {
        let chart = html
            .split(&format!("<figure class=\"chart\" id=\"{id}\""))
            .nth(1)
            .and_then(|c| c.split("</figure>").next())
            .unwrap_or_else(|| panic!("no chart {id}: {html}"));
        assert!(chart.contains("role=\"img\""), "{chart}");
        assert!(
            chart.contains(&format!("<title id=\"{id}-title\">")),
            "{chart}"
        );
        assert!(chart.contains("<path class=\"series s0"), "{chart}");
        assert!(chart.contains("d=\"M"), "{chart}");
        assert!(chart.contains("class=\"mark m-vrrp\""), "{chart}");
        assert!(chart.contains("tcp/198.18.0.10:80"), "no legend: {chart}");
    }
    assert!(html.contains("data-lines=\"1\""), "one line of connections");
    assert!(html.contains("data-lines=\"2\""), "bytes in and out");
    assert!(html.contains("New connections per second per service, services of ext, last hour"));
    let html = srv.page_as("oper", "/nodes/lb-01?range=7d").await;
    let chart = html
        .split("<figure class=\"chart\" id=\"node-traffic-conns\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no node chart: {html}"));
    assert!(
        chart.starts_with(" data-lines=\"2\""),
        "two real servers: {chart}"
    );
    assert!(
        chart.contains("198.18.2.1:8080 (tcp/198.18.0.10:80)"),
        "{chart}"
    );
    assert!(chart.contains("last 7 days"), "{chart}");

    // /metrics: the same service series, labelled by cluster and service.
    let (s, body) = srv.get("/metrics", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    let text = body.as_str().unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(
                "lbfleet_service_connections_per_second{cluster=\"ext\",service=\"tcp/198.18.0.10:80\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no traffic series: {text}"));
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v > 0.0, "{line}");
    assert!(text.contains("# TYPE lbfleet_service_bytes_out_per_second gauge"));
}

/// The history's pruning on this backend (the statements differ little, but PostgreSQL is stricter): by age
/// per step, then the oldest whole buckets past the row and the byte bound.
#[tokio::test]
async fn the_history_is_pruned_within_its_bounds_on_this_backend() {
    use lbfleet_server::fleet::traffic::{COARSE_KEEP_MS, FINE_KEEP_MS};
    use lbfleet_server::store::traffic::{add, TrafficPoint};
    use lbfleet_server::store::{self, Store};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let store = Store::open(&common::db_url(&db)).await.unwrap();
    let fleet =
        lbfleet_server::fleet::Fleet::new(store.clone(), std::time::Duration::from_secs(600));
    let now: i64 = 40 * 24 * 3600 * 1000;
    let row = |step_s: i64, bucket_ms: i64, rs: String| TrafficPoint {
        cluster: "ext".into(),
        node_id: 1,
        service: "tcp/198.18.0.10:80".into(),
        real_server: rs,
        step_s,
        bucket_ms,
        span_ms: 10_000,
        connections: 1,
        bytes_in: 2,
        bytes_out: 3,
    };
    let mut rows = vec![
        row(10, now - FINE_KEEP_MS - 10_000, String::new()),
        row(300, now - COARSE_KEEP_MS - 300_000, String::new()),
    ];
    // 100 five-minute buckets of 8 real servers each within the week.
    for b in 0..100 {
        for i in 0..8 {
            rows.push(row(
                300,
                now - 2 * 24 * 3600 * 1000 + b * 300_000,
                format!("198.18.2.{i}:80"),
            ));
        }
    }
    let mut tx = store.begin().await.unwrap();
    add(&mut tx, &rows).await.unwrap();
    // Adding to an existing bucket sums into it (one row per series and bucket).
    add(&mut tx, &rows[2..3]).await.unwrap();
    store::commit(tx).await.unwrap();
    assert_eq!(fleet.traffic_totals().await.unwrap().0, 802);

    assert_eq!(
        fleet.prune_traffic(now, i64::MAX, i64::MAX).await.unwrap(),
        2,
        "the two too old"
    );
    fleet.prune_traffic(now, 404, i64::MAX).await.unwrap();
    let (rows_left, bytes_left) = fleet.traffic_totals().await.unwrap();
    assert_eq!(rows_left, 400, "50 whole buckets of 8 stay");
    fleet
        .prune_traffic(now, i64::MAX, bytes_left / 2)
        .await
        .unwrap();
    let (rows_left, bytes_now) = fleet.traffic_totals().await.unwrap();
    assert!(
        bytes_now <= bytes_left / 2,
        "{bytes_now} > {}",
        bytes_left / 2
    );
    assert_eq!(rows_left, 200, "the newest 25 buckets stay");
    let mut conn = store.read().await.unwrap();
    let pts = lbfleet_server::store::traffic::node_real_servers(&mut conn, 1, 300, 0)
        .await
        .unwrap();
    let oldest = pts.iter().map(|p| p.bucket_ms).min().unwrap();
    assert_eq!(oldest, now - 2 * 24 * 3600 * 1000 + 75 * 300_000);
    let summed = pts.iter().find(|p| p.bucket_ms == rows[2].bucket_ms);
    assert!(summed.is_none(), "that bucket was among the oldest");
    drop(conn);

    // Downsampling on this backend: three 10 s buckets of a complete 5 min bucket become one 5 min row with
    // their sums, the same after a second run.
    let fine: Vec<_> = (0..3)
        .map(|i| {
            row(
                10,
                now - 20 * 60 * 1000 + i * 10_000,
                "198.18.2.9:80".into(),
            )
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    add(&mut tx, &fine).await.unwrap();
    store::commit(tx).await.unwrap();
    for _ in 0..2 {
        fleet.prune_traffic(now, i64::MAX, i64::MAX).await.unwrap();
    }
    let mut conn = store.read().await.unwrap();
    let coarse: Vec<_> =
        lbfleet_server::store::traffic::node_real_servers(&mut conn, 1, 300, now - 3600 * 1000)
            .await
            .unwrap();
    assert_eq!(coarse.len(), 1, "{coarse:?}");
    assert_eq!(coarse[0].bucket_ms, now - 20 * 60 * 1000);
    assert_eq!(
        (
            coarse[0].connections,
            coarse[0].bytes_out,
            coarse[0].span_ms
        ),
        (3, 9, 30_000)
    );
    drop(conn);
    fleet.close().await;
}
