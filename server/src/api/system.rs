//! `/healthz` (unauthenticated liveness), `/metrics` (Prometheus text, needs a viewer) and `/api/v1/alerts`.
//! `/` is the dashboard.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lbfleet_proto::NodeState;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::fleet::AlertKind;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/alerts", get(alerts))
}

/// Liveness and readiness: answers 200 only if the database answers a read and takes a write
/// (`health::WriteProbe`), else 503 with the reason.
async fn healthz(State(s): State<AppState>) -> Response {
    let read = match tokio::time::timeout(crate::health::PROBE_TIMEOUT, s.fleet.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the database cannot read: {e}")),
        Err(_) => Err("the database did not answer a read in time".to_owned()),
    };
    let outcome = match read {
        Ok(()) => s.health.check(&s.fleet).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "unavailable", "reason": reason,
                "version": env!("CARGO_PKG_VERSION")}),
            ),
        )
            .into_response(),
    }
}

/// `GET /api/v1/alerts`: what needs attention now, most urgent first.
async fn alerts(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    Ok(Json(serde_json::json!({"alerts": s.fleet.alerts().await?})).into_response())
}

async fn metrics(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    let counts = s.fleet.counts().await?;
    let alerts = s.fleet.alerts().await?;
    let (by_state, clusters, audit_rows) =
        (counts.nodes_by_state, counts.clusters, counts.audit_rows);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP lbfleet_nodes Nodes by lifecycle state.\n# TYPE lbfleet_nodes gauge"
    );
    for state in NodeState::ALL {
        let n = by_state
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "lbfleet_nodes{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP lbfleet_clusters Clusters defined.\n# TYPE lbfleet_clusters gauge\nlbfleet_clusters {clusters}");
    let _ = writeln!(
        out,
        "# HELP lbfleet_audit_rows Rows in the audit log.\n# TYPE lbfleet_audit_rows gauge\nlbfleet_audit_rows {audit_rows}"
    );
    let _ = writeln!(
        out,
        "# HELP lbfleet_role_pollers Nodes with a role long-poll waiting.\n# TYPE lbfleet_role_pollers gauge\nlbfleet_role_pollers {}",
        s.fleet.notifier().waiting_nodes()
    );
    let _ = writeln!(
        out,
        "# HELP lbfleet_alerts Current alerts by kind and level (see GET /api/v1/alerts).\n# TYPE lbfleet_alerts gauge"
    );
    for kind in AlertKind::ALL {
        let n = alerts.iter().filter(|a| a.kind == *kind).count();
        let _ = writeln!(
            out,
            "lbfleet_alerts{{kind=\"{kind}\",level=\"{}\"}} {n}",
            kind.level()
        );
    }
    let reports = s.fleet.report_counts();
    let _ = writeln!(
        out,
        "# HELP lbfleet_agent_reports_total Agent reports this server took: full reports, merged deltas, deltas answered \"send a full report\".\n# TYPE lbfleet_agent_reports_total counter"
    );
    for (kind, n) in [
        ("full", &reports.full),
        ("delta", &reports.delta),
        ("delta_refused", &reports.delta_refused),
    ] {
        let _ = writeln!(
            out,
            "lbfleet_agent_reports_total{{kind=\"{kind}\"}} {}",
            n.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    server_metrics(&mut out, &s.fleet.servers(s.liveness()).await?);
    traffic_metrics(&mut out, &s.fleet.traffic_now().await?);
    boot_metrics(&mut out, &s.boot_stats);
    let _ = writeln!(
        out,
        "# HELP lbfleet_uptime_seconds Seconds since the server started.\n# TYPE lbfleet_uptime_seconds gauge\nlbfleet_uptime_seconds {}",
        s.started.elapsed().as_secs()
    );
    let _ = writeln!(
        out,
        "# HELP lbfleet_build_info Build version.\n# TYPE lbfleet_build_info gauge\nlbfleet_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// The traffic history's newest 10 s bucket per cluster and service (`fleet::traffic`; the same
/// series as `GET /api/v1/clusters/{name}/traffic`). One series per service: real servers stay in the API.
fn traffic_metrics(out: &mut String, series: &[(String, crate::fleet::traffic::TrafficSeries)]) {
    type Rate = fn(&crate::fleet::traffic::RatePoint) -> f64;
    let gauges: [(&str, &str, Rate); 3] = [
        (
            "lbfleet_service_connections_per_second",
            "New connections per second",
            |p| p.connections_per_s,
        ),
        (
            "lbfleet_service_bytes_in_per_second",
            "Bytes per second from clients",
            |p| p.bytes_in_per_s,
        ),
        (
            "lbfleet_service_bytes_out_per_second",
            "Bytes per second to clients",
            |p| p.bytes_out_per_s,
        ),
    ];
    for (name, help, rate) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help} of a virtual service in the newest 10 s bucket, summed over the cluster's nodes.\n# TYPE {name} gauge"
        );
        for (cluster, s) in series {
            if let Some(p) = s.points.last() {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",service=\"{}\"}} {}",
                    label(cluster),
                    label(&s.service),
                    rate(p)
                );
            }
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// DHCP hot standby (`boot::dhcp::leader`), labelled with the boot network.
fn dhcp_leadership_metrics(out: &mut String, d: &crate::boot::dhcp::server::DhcpStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let network = d.network.get().map(String::as_str).unwrap_or("");
    let gauge = |v: &std::sync::atomic::AtomicBool| u8::from(v.load(Relaxed));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_active 1 when this server is the one answering DHCP on the boot network.\n# TYPE lbfleet_dhcp_active gauge\nlbfleet_dhcp_active{{network=\"{network}\"}} {}", gauge(&d.active));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_takeovers_total Times this server became the active DHCP server of the boot network.\n# TYPE lbfleet_dhcp_takeovers_total counter\nlbfleet_dhcp_takeovers_total{{network=\"{network}\"}} {}", d.takeovers.load(Relaxed));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_database_unreachable 1 while the database has not answered the DHCP election for a TTL (only known MACs are answered).\n# TYPE lbfleet_dhcp_database_unreachable gauge\nlbfleet_dhcp_database_unreachable{{network=\"{network}\"}} {}", gauge(&d.database_unreachable));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_database_unreachable_periods_total Times the database became unreachable for the DHCP election.\n# TYPE lbfleet_dhcp_database_unreachable_periods_total counter\nlbfleet_dhcp_database_unreachable_periods_total{{network=\"{network}\"}} {}", d.unreachable_periods.load(Relaxed));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_standby_packets_total DHCP requests by outcome on a server that is not the active one.\n# TYPE lbfleet_dhcp_standby_packets_total counter");
    for (what, v) in [
        ("ignored_as_standby", &d.standby_ignored),
        ("answered_without_database", &d.answered_without_database),
        ("refused_without_database", &d.refused_without_database),
    ] {
        let _ = writeln!(
            out,
            "lbfleet_dhcp_standby_packets_total{{network=\"{network}\",outcome=\"{what}\"}} {}",
            v.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP lbfleet_dhcp_fenced_batches_total Lease batches refused because another server took the network over (their ACKs were withheld).\n# TYPE lbfleet_dhcp_fenced_batches_total counter\nlbfleet_dhcp_fenced_batches_total{{network=\"{network}\"}} {}", d.fenced_batches.load(Relaxed));
    let _ = writeln!(out, "# HELP lbfleet_dhcp_table_reloads_total Lease tables reloaded from the database (on becoming active, and while standby).\n# TYPE lbfleet_dhcp_table_reloads_total counter\nlbfleet_dhcp_table_reloads_total{{network=\"{network}\"}} {}", d.table_reloads.load(Relaxed));
}

/// The control plane as the registry says: each server up or not, and how old its last heartbeat is (its
/// last successful write to the database).
fn server_metrics(out: &mut String, servers: &[crate::fleet::servers::ServerView]) {
    use crate::fleet::servers::ServerState;
    let _ = writeln!(out, "# HELP lbfleet_server_up Whether each registered lbfleet-server heartbeats (1) or not (0).\n# TYPE lbfleet_server_up gauge");
    // Names and ids come from the database: quotes, backslashes and newlines are escaped as the text format
    // requires.
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    for sv in servers {
        let _ = writeln!(
            out,
            "lbfleet_server_up{{server=\"{}\",id=\"{}\",version=\"{}\"}} {}",
            esc(&sv.name),
            esc(&sv.id),
            esc(&sv.version),
            u8::from(sv.state == ServerState::Up)
        );
    }
    let _ = writeln!(out, "# HELP lbfleet_server_heartbeat_age_seconds Seconds since each registered lbfleet-server's last heartbeat.\n# TYPE lbfleet_server_heartbeat_age_seconds gauge");
    for sv in servers {
        let _ = writeln!(
            out,
            "lbfleet_server_heartbeat_age_seconds{{server=\"{}\",id=\"{}\"}} {:.3}",
            esc(&sv.name),
            esc(&sv.id),
            sv.heartbeat_age_ms as f64 / 1000.0
        );
    }
}

/// Counters of the DHCP and TFTP servers, when they run.
fn boot_metrics(out: &mut String, stats: &crate::boot::BootStats) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(d) = &stats.dhcp {
        let _ = writeln!(out, "# HELP lbfleet_dhcp_packets_total DHCP packets by outcome.\n# TYPE lbfleet_dhcp_packets_total counter");
        for (what, v) in [
            ("received", &d.received),
            ("replied", &d.replies),
            ("acked", &d.acks),
            ("dropped", &d.dropped),
            // Both also counted in "dropped": undecodable packets, and chaddr not the sending NIC's.
            ("malformed", &d.malformed),
            ("spoofed", &d.spoofed),
            ("wrong_circuit", &d.wrong_circuit),
        ] {
            let _ = writeln!(
                out,
                "lbfleet_dhcp_packets_total{{outcome=\"{what}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP lbfleet_dhcp_lease_writes_total Lease rows made durable.\n# TYPE lbfleet_dhcp_lease_writes_total counter\nlbfleet_dhcp_lease_writes_total {}", d.leases_written.load(Relaxed));
        let _ = writeln!(out, "# HELP lbfleet_dhcp_lease_batches_total Lease write transactions (group commits).\n# TYPE lbfleet_dhcp_lease_batches_total counter\nlbfleet_dhcp_lease_batches_total {}", d.batches.load(Relaxed));
        let _ = writeln!(out, "# HELP lbfleet_dhcp_reservation_loads_total Reservation snapshots loaded (at start and after fleet changes).\n# TYPE lbfleet_dhcp_reservation_loads_total counter\nlbfleet_dhcp_reservation_loads_total {}", d.reservation_loads.load(Relaxed));
        dhcp_leadership_metrics(out, d);
        let _ = writeln!(out, "# HELP lbfleet_dhcp_lease_write_failures_total Failed lease batches (their ACKs were withheld).\n# TYPE lbfleet_dhcp_lease_write_failures_total counter\nlbfleet_dhcp_lease_write_failures_total {}", d.write_failures.load(Relaxed));
    }
    if let Some(t) = &stats.tftp {
        let _ = writeln!(out, "# HELP lbfleet_tftp_requests_total TFTP requests by outcome.\n# TYPE lbfleet_tftp_requests_total counter");
        for (what, v) in [
            ("received", &t.requests),
            ("refused", &t.refused),
            ("malformed", &t.malformed),
            ("completed", &t.completed),
            ("failed", &t.failed),
        ] {
            let _ = writeln!(
                out,
                "lbfleet_tftp_requests_total{{outcome=\"{what}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP lbfleet_tftp_bytes_sent_total File bytes sent by TFTP.\n# TYPE lbfleet_tftp_bytes_sent_total counter\nlbfleet_tftp_bytes_sent_total {}", t.bytes_sent.load(Relaxed));
    }
}
