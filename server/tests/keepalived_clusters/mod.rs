//! The test clusters of the keepalived export (shared by the round trip in `keepalived_import.rs` and the
//! `keepalived -t` check in `keepalived_export_netns.rs`): between them every setting the exporter writes.
//! Each is created on a test server with two members, so each node's part can be exported.

#![allow(dead_code, clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::TestServer;

/// A member: (node, MAC, role, priority).
pub type Member = (&'static str, &'static str, &'static str, u32);

/// (cluster name, spec, members).
pub fn clusters() -> Vec<(&'static str, Value, Vec<Member>)> {
    vec![
        (
            // NAT, VRRPv3 at 100 ms, preemption after a delay, an internal VIP on its own interface, connection
            // sync; HTTP with a status list, Host, quorum, sorry server, drain, persistence with a prefix, a
            // per-server TCP override; a UDP DNS service that removes failed servers.
            "web",
            spec(
                r#"{
                "vrid": 61, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": 100,
                "preempt": true, "preempt_delay_ms": 2000,
                "vips": ["198.18.0.40/32", {"address": "198.18.2.254/24", "interface": "eth1"}],
                "conn_sync": {"interface": "eth1", "sync_id": 5},
                "services": [
                    {"vip": "198.18.0.40", "port": 80, "protocol": "tcp", "scheduler": "rr", "forward": "nat",
                     "persistence_s": 60, "persistence_prefix": 24,
                     "check": {"kind": "http", "path": "/healthz", "expect_status": 200, "expect_codes": [204],
                               "host": "www.example", "interval_ms": 5000, "timeout_ms": 2000, "rise": 1,
                               "fall": 3, "on_down": "drain",
                               "sorry_server": {"address": "198.18.2.9", "port": 80},
                               "quorum": {"min_healthy": 2, "priority_drop": 60},
                               "overrides": [{"address": "198.18.2.3", "port": 8080,
                                              "check": {"kind": "tcp", "port": 8081, "interval_ms": 5000,
                                                        "timeout_ms": 1000, "rise": 1, "fall": 2}}]},
                     "real_servers": [{"address": "198.18.2.1", "port": 8080, "weight": 1},
                                      {"address": "198.18.2.2", "port": 8080, "weight": 1},
                                      {"address": "198.18.2.3", "port": 8080, "weight": 1}]},
                    {"vip": "198.18.0.40", "port": 53, "protocol": "udp", "scheduler": "wlc", "forward": "nat",
                     "check": {"kind": "dns", "dns_type": "A", "dns_name": "example.", "interval_ms": 2000,
                               "timeout_ms": 1000, "rise": 1, "fall": 2, "on_down": "remove"},
                     "real_servers": [{"address": "198.18.2.1", "port": 53, "weight": 1},
                                      {"address": "198.18.2.2", "port": 53, "weight": 1}]}
                ]
            }"#,
            ),
            vec![
                ("lb-web-a", "52:54:00:00:61:01", "active", 150),
                ("lb-web-b", "52:54:00:00:61:02", "backup", 100),
            ],
        ),
        (
            // DR, VRRPv2 at 1 s, no preemption, unicast peers, GARP settings; HTTPS with weights, a script
            // check with jitter.
            "dr",
            spec(
                r#"{
                "vrid": 62, "interface": "eth0", "vrrp_version": 2, "advert_interval_ms": 1000,
                "preempt": false,
                "vips": ["198.18.0.50/32"],
                "unicast_peers": ["198.18.0.2", "198.18.0.3"],
                "garp": {"count": 5, "spacing_ms": 200, "refresh_ms": 60000},
                "services": [
                    {"vip": "198.18.0.50", "port": 443, "protocol": "tcp", "scheduler": "wrr", "forward": "dr",
                     "check": {"kind": "https", "path": "/", "interval_ms": 3000, "timeout_ms": 3000,
                               "rise": 1, "fall": 2, "on_down": "remove"},
                     "real_servers": [{"address": "198.18.2.11", "port": 443, "weight": 1},
                                      {"address": "198.18.2.12", "port": 443, "weight": 2},
                                      {"address": "198.18.2.13", "port": 443, "weight": 3}]},
                    {"vip": "198.18.0.50", "port": 25, "protocol": "tcp", "scheduler": "sh", "forward": "dr",
                     "check": {"kind": "script", "script": "smtp-check", "interval_ms": 10000,
                               "timeout_ms": 3000, "rise": 1, "fall": 1, "jitter_ms": 500, "on_down": "drain"},
                     "real_servers": [{"address": "198.18.2.11", "port": 25, "weight": 1}]}
                ]
            }"#,
            ),
            vec![
                ("lb-dr-a", "52:54:00:00:62:01", "active", 200),
                ("lb-dr-b", "52:54:00:00:62:02", "backup", 190),
            ],
        ),
        (
            // TUN on another interface, no check at all (keepalived without a checker).
            "tun",
            spec(
                r#"{
                "vrid": 63, "interface": "eth2", "vrrp_version": 3, "advert_interval_ms": 500,
                "vips": ["198.18.0.60/32"],
                "services": [
                    {"vip": "198.18.0.60", "port": 8443, "protocol": "tcp", "scheduler": "lc", "forward": "tun",
                     "check": {"kind": "none", "interval_ms": 60000, "timeout_ms": 5000, "rise": 1, "fall": 3,
                               "on_down": "remove"},
                     "real_servers": [{"address": "198.18.3.1", "port": 8443, "weight": 4}]}
                ]
            }"#,
            ),
            vec![("lb-tun-a", "52:54:00:00:63:01", "active", 120)],
        ),
    ]
}

fn spec(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

/// Creates every test cluster (its services in the order an import gives them) and assigns its members.
pub async fn create_all(srv: &TestServer) {
    let op = srv.tokens.operator.clone();
    for (name, spec, members) in clusters() {
        let (s, v) = srv
            .put(&format!("/api/v1/clusters/{name}"), &op, comparable(spec))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{name}: {v}");
        for (node, mac, role, priority) in members {
            srv.enrolled_node(mac, node).await;
            let (s, v) = srv
                .post(
                    &format!("/api/v1/nodes/{node}/assign"),
                    &op,
                    json!({"cluster": name, "role": role, "priority": priority}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{name} {node}: {v}");
        }
    }
}

/// A stored spec as an import would give it: real servers' admin state is not part of a keepalived.conf, and
/// the import orders services by VIP, port and protocol.
pub fn comparable(mut spec: Value) -> Value {
    if let Some(services) = spec["services"].as_array_mut() {
        services.sort_by_key(|s| {
            (
                s["vip"].as_str().unwrap_or_default().to_owned(),
                s["port"].as_u64(),
                s["protocol"].as_str().unwrap_or_default().to_owned(),
            )
        });
    }
    for svc in spec["services"].as_array_mut().into_iter().flatten() {
        for rs in svc["real_servers"].as_array_mut().into_iter().flatten() {
            if let Some(o) = rs.as_object_mut() {
                o.remove("enabled");
            }
        }
    }
    spec
}
