//! Rate computation (counter resets, gaps, delta reports), bucketing and the history's bounds.

use lbfleet_proto::{AgentReport, Protocol, RealServerReport, ServiceReport};

use super::*;
use crate::fleet::testing;

fn key(service: &str, rs: &str) -> SeriesKey {
    (service.to_owned(), rs.to_owned())
}

fn c(connections: u64, bytes_in: u64, bytes_out: u64) -> Counters {
    Counters {
        connections,
        bytes_in,
        bytes_out,
    }
}

const SVC: &str = "tcp/198.18.0.10:80";

#[test]
fn first_report_sets_the_baseline_and_the_next_one_is_a_sample() {
    let mut b = NodeBaseline::new();
    assert!(take_samples(&mut b, 1_000, vec![(key(SVC, ""), c(100, 1_000, 2_000))]).is_empty());
    let s = take_samples(&mut b, 11_000, vec![(key(SVC, ""), c(150, 6_000, 2_500))]);
    assert_eq!(
        s,
        vec![Sample {
            key: key(SVC, ""),
            span_ms: 10_000,
            delta: c(50, 5_000, 500)
        }]
    );
}

#[test]
fn a_counter_that_went_down_was_reset_and_counts_from_zero() {
    let mut b = NodeBaseline::new();
    take_samples(
        &mut b,
        0,
        vec![(key(SVC, "198.18.2.1:80"), c(1_000, 90_000, 80_000))],
    );
    // The destination was re-added (or the node rebooted): counters restarted below the old values.
    let s = take_samples(
        &mut b,
        10_000,
        vec![(key(SVC, "198.18.2.1:80"), c(7, 700, 90_000))],
    );
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].delta,
        c(7, 700, 90_000),
        "counted from zero, never negative"
    );
    // And from there on, ordinary deltas again.
    let s = take_samples(
        &mut b,
        20_000,
        vec![(key(SVC, "198.18.2.1:80"), c(17, 900, 90_100))],
    );
    assert_eq!(s[0].delta, c(10, 200, 100));
}

#[test]
fn a_long_silence_is_a_gap_not_an_average() {
    let mut b = NodeBaseline::new();
    take_samples(&mut b, 0, vec![(key(SVC, ""), c(0, 0, 0))]);
    let later = MAX_SAMPLE_SPAN_MS + 1;
    assert!(take_samples(&mut b, later, vec![(key(SVC, ""), c(9_000, 9_000, 9_000))]).is_empty());
    let s = take_samples(
        &mut b,
        later + 5_000,
        vec![(key(SVC, ""), c(9_010, 9_000, 9_000))],
    );
    assert_eq!(s[0].span_ms, 5_000);
    assert_eq!(s[0].delta, c(10, 0, 0));
}

#[test]
fn a_report_in_the_same_millisecond_changes_nothing() {
    let mut b = NodeBaseline::new();
    take_samples(&mut b, 5_000, vec![(key(SVC, ""), c(1, 1, 1))]);
    assert!(take_samples(&mut b, 5_000, vec![(key(SVC, ""), c(5, 5, 5))]).is_empty());
    assert!(take_samples(&mut b, 4_000, vec![(key(SVC, ""), c(5, 5, 5))]).is_empty());
    let s = take_samples(&mut b, 6_000, vec![(key(SVC, ""), c(5, 5, 5))]);
    assert_eq!((s[0].span_ms, s[0].delta), (1_000, c(4, 4, 4)));
}

#[test]
fn a_series_left_out_of_a_delta_report_keeps_its_own_baseline() {
    let mut b = NodeBaseline::new();
    let rs = key(SVC, "198.18.2.1:80");
    take_samples(
        &mut b,
        0,
        vec![(key(SVC, ""), c(0, 0, 0)), (rs.clone(), c(0, 0, 0))],
    );
    // The next report carries only the service (the real server did not change)...
    take_samples(&mut b, 10_000, vec![(key(SVC, ""), c(10, 0, 0))]);
    // ...and when it comes back its sample covers the time since it was last seen, not since the last report.
    let s = take_samples(&mut b, 20_000, vec![(rs.clone(), c(40, 0, 0))]);
    assert_eq!((s[0].span_ms, s[0].delta.connections), (20_000, 40));
}

fn report(real_servers: usize) -> AgentReport {
    AgentReport {
        services: vec![ServiceReport {
            vip: "198.18.0.10".into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections: 5,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 6,
            bytes_out: 7,
            real_servers: (0..real_servers)
                .map(|i| RealServerReport {
                    address: format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
                    port: 80,
                    healthy: true,
                    weight: 1,
                    active_conns: 0,
                    inactive_conns: 0,
                    connections: i as u64,
                    packets_in: 0,
                    packets_out: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    health: None,
                })
                .collect(),
        }],
        ..AgentReport::default()
    }
}

#[test]
fn a_report_yields_its_services_and_at_most_the_cap_of_real_servers() {
    let s = report(2);
    let series = report_series(&s);
    assert_eq!(series[0], (key(SVC, ""), c(5, 6, 7)));
    assert_eq!(series[2].0, key(SVC, "198.18.2.2:80"));
    let big = report_series(&report(MAX_REAL_SERVER_SERIES + 500));
    assert_eq!(big.len(), 1 + MAX_REAL_SERVER_SERIES);
    let v6 = service_key("udp", "2001:2::10", 53);
    assert_eq!(v6, "udp/[2001:2::10]:53");
}

#[test]
fn samples_land_in_their_10_s_bucket_and_rates_add_up_across_nodes() {
    let sample = Sample {
        key: key(SVC, ""),
        span_ms: 10_000,
        delta: c(100, 1_000, 0),
    };
    let p = points("ext", 1, 601_234, std::slice::from_ref(&sample));
    assert_eq!(
        p.len(),
        1,
        "one row a sample: retention folds them into 5 min buckets"
    );
    assert_eq!((p[0].step_s, p[0].bucket_ms), (10, 600_000));
    // Two nodes in the same bucket (a failover inside it): their rates add, each over its own span.
    let mut rows = p;
    rows.extend(points(
        "ext",
        2,
        605_000,
        &[Sample {
            span_ms: 5_000,
            ..sample
        }],
    ));
    let fine: Vec<_> = rows.into_iter().filter(|r| r.step_s == 10).collect();
    let s = series_of(&fine, false);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].points.len(), 1);
    let pt = &s[0].points[0];
    assert_eq!(pt.connections, 200);
    assert!(
        (pt.connections_per_s - (10.0 + 20.0)).abs() < 1e-9,
        "{pt:?}"
    );
    assert!((pt.bytes_in_per_s - (100.0 + 200.0)).abs() < 1e-9, "{pt:?}");
}

fn row(step_s: i64, bucket_ms: i64, node_id: i64, rs: &str) -> TrafficPoint {
    TrafficPoint {
        cluster: "ext".into(),
        node_id,
        service: SVC.into(),
        real_server: rs.into(),
        step_s,
        bucket_ms,
        span_ms: 10_000,
        connections: 10,
        bytes_in: 100,
        bytes_out: 50,
    }
}

#[tokio::test]
async fn the_coarse_bucket_sums_the_fine_ones_written_into_it() {
    let (f, _dir) = testing::fleet().await;
    let mut tx = f.store.begin().await.expect("tx");
    // Thirty reports 10 s apart: thirty fine buckets, one coarse bucket holding all of them, and two in the
    // next 5 min bucket (not complete yet at `now`).
    for i in 0..30 {
        let now = 3_000_000 + i * 10_000;
        let s = Sample {
            key: key(SVC, ""),
            span_ms: 10_000,
            delta: c(10, 100, 50),
        };
        store::traffic::add(&mut tx, &points("ext", 1, now, &[s]))
            .await
            .expect("add");
    }
    let late = Sample {
        key: key(SVC, ""),
        span_ms: 10_000,
        delta: c(7, 0, 0),
    };
    for now in [3_300_000, 3_310_000] {
        store::traffic::add(&mut tx, &points("ext", 1, now, std::slice::from_ref(&late)))
            .await
            .expect("add");
    }
    store::commit(tx).await.expect("commit");
    // Five seconds into the 5 min bucket of the two late ones.
    let now = 3_305_000;
    // What a reader sees before any downsampling: the coarse view folds the 10 s rows.
    let fine = {
        let mut conn = f.store.read().await.expect("read");
        store::traffic::cluster_services(&mut conn, "ext", 10, 0, None)
            .await
            .expect("fine")
    };
    assert_eq!(fine.len(), 32);
    let view = coarse_view(Vec::new(), &fine, now);
    assert_eq!(view.len(), 2, "{view:?}");
    assert_eq!((view[0].connections, view[0].span_ms), (300, 300_000));
    assert_eq!(
        view[1].connections, 14,
        "the bucket still filling is seen too"
    );
    // Retention writes the complete bucket, the same sums, however often it runs.
    for _ in 0..2 {
        f.prune_traffic(now, DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)
            .await
            .expect("prune");
    }
    let mut conn = f.store.read().await.expect("read");
    let coarse = store::traffic::cluster_services(&mut conn, "ext", 300, 0, None)
        .await
        .expect("coarse");
    assert_eq!(coarse.len(), 1, "{coarse:?}");
    assert_eq!(
        (
            coarse[0].bucket_ms,
            coarse[0].connections,
            coarse[0].span_ms
        ),
        (3_000_000, 300, 300_000)
    );
    let rate = &series_of(&coarse, false)[0].points[0];
    assert!((rate.connections_per_s - 1.0).abs() < 1e-9, "{rate:?}");
    // Once its 10 s rows are gone, the view reads the stored row.
    let later = 3_000_000 + 2 * FINE_KEEP_MS;
    let view = coarse_view(coarse.clone(), &[], later);
    assert_eq!(view, coarse);
    // And before `fine_floor`, a stored row is what counts even if a few 10 s rows of it remain.
    assert_eq!(coarse_view(coarse.clone(), &fine, later), coarse);
}

#[tokio::test]
async fn pruning_keeps_each_step_for_its_time_and_the_table_within_rows_and_bytes() {
    let (f, _dir) = testing::fleet().await;
    let now = 30 * 24 * 3600 * 1000;
    let mut tx = f.store.begin().await.expect("tx");
    // An old fine bucket, a fine bucket within the hour, an old coarse bucket, one within the week.
    let rows = vec![
        row(10, now - FINE_KEEP_MS - 10_000, 1, ""),
        // (older than the first 5 min bucket retention folds, so nothing is written from it)
        row(10, now - FINE_KEEP_MS + 60_000, 1, ""),
        row(300, now - COARSE_KEEP_MS - 300_000, 1, ""),
        row(300, now - 3 * 3600 * 1000, 1, ""),
    ];
    store::traffic::add(&mut tx, &rows).await.expect("add");
    store::commit(tx).await.expect("commit");
    assert_eq!(
        f.prune_traffic(now, DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)
            .await
            .expect("prune"),
        2
    );
    assert_eq!(f.traffic_totals().await.expect("totals").0, 2);

    // 2,000 rows over 200 five-minute buckets (10 real servers each), then bounds well below.
    let mut tx = f.store.begin().await.expect("tx");
    let many: Vec<_> = (0..200)
        .flat_map(|b| {
            (0..10).map(move |i| {
                row(
                    300,
                    now - 3 * 24 * 3600 * 1000 + b * 300_000,
                    1,
                    &format!("198.18.2.{i}:80"),
                )
            })
        })
        .collect();
    store::traffic::add(&mut tx, &many).await.expect("add");
    store::commit(tx).await.expect("commit");
    let (rows_before, bytes_before) = f.traffic_totals().await.expect("totals");
    assert_eq!(rows_before, 2_002);
    f.prune_traffic(now, 555, i64::MAX)
        .await
        .expect("prune by rows");
    let (rows_after, _) = f.traffic_totals().await.expect("totals");
    assert!(
        (545..=555).contains(&rows_after),
        "whole buckets go: {rows_after} rows left"
    );
    let byte_bound = bytes_before / 10;
    f.prune_traffic(now, i64::MAX, byte_bound)
        .await
        .expect("prune by bytes");
    let (rows_left, bytes_left) = f.traffic_totals().await.expect("totals");
    assert!(bytes_left <= byte_bound, "{bytes_left} > {byte_bound}");
    // Whole buckets of 10 rows (~130 bytes each) go, the oldest first: less than one bucket below the bound.
    assert!(
        bytes_left > byte_bound - 1_500,
        "only the oldest buckets went: {rows_left} rows, {bytes_left} bytes"
    );
    // The newest bucket (the service's 10 s one, 59 minutes ago) is one that stays.
    let mut conn = f.store.read().await.expect("read");
    let newest = store::traffic::cluster_services(&mut conn, "ext", 10, 0, None)
        .await
        .expect("rows");
    assert_eq!(newest.len(), 1, "{newest:?}");
    assert_eq!(newest[0].bucket_ms, now - FINE_KEEP_MS + 60_000);
}

#[tokio::test]
async fn reports_through_the_fleet_write_one_row_per_series_and_step() {
    let (f, _dir) = testing::fleet().await;
    f.put_cluster(&testing::admin(), "ext", &testing::spec(51, "198.18.0.10"))
        .await
        .expect("cluster");
    let node = testing::member(&f, 1, "ext", lbfleet_proto::Role::Active).await;
    let id = f.get_node(&node).await.expect("node").id;
    let mut r = report(2);
    f.report(id, &r).await.expect("first report");
    assert_eq!(
        f.traffic_totals().await.expect("totals").0,
        0,
        "a first report is a baseline only"
    );
    // Wait for the clock to move on (a report in the same millisecond is no sample).
    let start = store::now_ms();
    while store::now_ms() == start {
        tokio::task::yield_now().await;
    }
    r.services[0].connections += 30;
    r.services[0].real_servers[1].connections += 30;
    f.report(id, &r).await.expect("second report");
    assert_eq!(
        f.traffic_totals().await.expect("totals").0,
        3,
        "service + 2 real servers, one 10 s row each"
    );
    let t = f
        .cluster_traffic("ext", TrafficRange::Hour, None)
        .await
        .expect("traffic");
    assert_eq!(t.series.len(), 1);
    assert_eq!(
        t.series[0]
            .points
            .iter()
            .map(|p| p.connections)
            .sum::<i64>(),
        30
    );
    let n = f
        .node_traffic(&node, TrafficRange::Hour)
        .await
        .expect("node traffic");
    assert_eq!(n.series.len(), 2);
    assert_eq!(n.series[1].real_server.as_deref(), Some("198.18.2.2:80"));
    // The week's 5 min view sees the same before retention ever ran.
    let w = f
        .node_traffic(&node, TrafficRange::Week)
        .await
        .expect("week");
    assert_eq!((w.step_s, w.series.len()), (300, 2));
    assert_eq!(
        w.series[1]
            .points
            .iter()
            .map(|p| p.connections)
            .sum::<i64>(),
        30
    );
}

#[tokio::test]
async fn a_page_reads_only_the_busiest_services() {
    let (f, _dir) = testing::fleet().await;
    f.put_cluster(&testing::admin(), "ext", &testing::spec(51, "198.18.0.10"))
        .await
        .expect("cluster");
    let now = store::now_ms();
    let rows: Vec<_> = (0..3)
        .map(|i| TrafficPoint {
            service: format!("tcp/198.18.0.10:{}", 80 + i),
            connections: 10 * (i + 1),
            ..row(10, now - 60_000, 1, "")
        })
        .collect();
    let mut tx = f.store.begin().await.expect("tx");
    store::traffic::add(&mut tx, &rows).await.expect("add");
    store::commit(tx).await.expect("commit");
    for range in [TrafficRange::Hour, TrafficRange::Week] {
        let all = f.cluster_traffic("ext", range, None).await.expect("all");
        assert_eq!(all.series.len(), 3);
        let two = f.cluster_traffic("ext", range, Some(2)).await.expect("two");
        let names: Vec<_> = two.series.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(
            names,
            ["tcp/198.18.0.10:81", "tcp/198.18.0.10:82"],
            "{range:?}"
        );
    }
}

/// A report delta samples only the series it carries: a real server whose counters the agent held back keeps
/// its baseline (no zero sample), and its next sample covers the whole time since it last travelled.
#[tokio::test]
async fn a_delta_samples_only_the_series_it_carries() {
    use crate::fleet::DeltaOutcome;
    use lbfleet_proto::{ReportDelta, ServiceDelta};
    let (f, _dir) = testing::fleet().await;
    f.put_cluster(&testing::admin(), "ext", &testing::spec(51, "198.18.0.10"))
        .await
        .expect("cluster");
    let node = testing::member(&f, 1, "ext", lbfleet_proto::Role::Active).await;
    let id = f.get_node(&node).await.expect("node").id;
    let full = report(2);
    let mut seq = f.report(id, &full).await.expect("full report");
    let next_ms = || async {
        let start = store::now_ms();
        while store::now_ms() == start {
            tokio::task::yield_now().await;
        }
    };
    let delta = |base: u64, connections: u64, rows: Vec<RealServerReport>| ReportDelta {
        base,
        head: AgentReport {
            services: Vec::new(),
            ..full.clone()
        },
        services: vec![ServiceDelta {
            vip: "198.18.0.10".into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            real_servers: rows,
            removed: Vec::new(),
        }],
        removed_services: Vec::new(),
    };
    let row = |i: usize, connections: u64| RealServerReport {
        connections,
        ..full.services[0].real_servers[i].clone()
    };
    next_ms().await;
    // The service and 198.18.2.2 moved by 30 and travel; 198.18.2.1 moved too but was held back.
    let base_conns = full.services[0].connections;
    let rs1 = full.services[0].real_servers[1].connections;
    let rs0 = full.services[0].real_servers[0].connections;
    let d = delta(seq, base_conns + 80, vec![row(1, rs1 + 30)]);
    let DeltaOutcome::Applied { seq: s } = f.report_delta(id, &d).await.expect("delta") else {
        panic!("not merged");
    };
    seq = s;
    assert_eq!(
        f.traffic_totals().await.expect("totals").0,
        2,
        "the service and the one real server carried, no zero sample for the other"
    );
    next_ms().await;
    let d = delta(seq, base_conns + 80, vec![row(0, rs0 + 50)]);
    assert!(matches!(
        f.report_delta(id, &d).await.expect("delta"),
        DeltaOutcome::Applied { .. }
    ));
    let n = f
        .node_traffic(&node, TrafficRange::Hour)
        .await
        .expect("node traffic");
    let sum = |rs: &str| -> i64 {
        n.series
            .iter()
            .filter(|s| s.real_server.as_deref() == Some(rs))
            .flat_map(|s| &s.points)
            .map(|p| p.connections)
            .sum()
    };
    assert_eq!(sum("198.18.2.1:80"), 50, "the held-back counters, whole");
    assert_eq!(sum("198.18.2.2:80"), 30);
}
