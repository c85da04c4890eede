//! Helpers for the fleet's unit tests: a `Fleet` on a fresh SQLite file in a temporary directory.

use std::time::Duration;

use lbfleet_proto::{ClusterSpec, Role};

use super::{Actor, Fleet};
use crate::store::nodes::NodeKey;
use crate::store::Store;

/// A fleet on an empty database; keep the directory alive as long as the fleet.
pub async fn fleet() -> (Fleet, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fleet.db");
    let store = Store::open(&path.to_string_lossy())
        .await
        .expect("open store");
    (Fleet::new(store, Duration::from_secs(600)), dir)
}

pub fn admin() -> Actor {
    Actor("admin".into())
}

/// A cluster on `eth0` with one VIP and one TCP service on port 80 with two real servers.
pub fn spec(vrid: u32, vip: &str) -> ClusterSpec {
    serde_json::from_value(serde_json::json!({
        "vrid": vrid,
        "interface": "eth0",
        "vips": [format!("{vip}/32")],
        "services": [{
            "vip": vip, "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
            "real_servers": [
                {"address": "198.18.2.1", "port": 80, "weight": 1},
                {"address": "198.18.2.2", "port": 80, "weight": 1}
            ]
        }]
    }))
    .expect("cluster spec")
}

/// Registers a ready node with MAC `52:54:00:00:00:NN` and hostname `lb-NN`.
pub async fn ready_node(f: &Fleet, n: u8) -> NodeKey {
    let mac = format!("52:54:00:00:00:{n:02x}");
    f.register_node(&admin(), &mac, Some(&format!("lb-{n:02}")), None, None)
        .await
        .expect("register");
    NodeKey::Mac(mac)
}

/// Registers a node and assigns it to `cluster` in `role`.
pub async fn member(f: &Fleet, n: u8, cluster: &str, role: Role) -> NodeKey {
    let key = ready_node(f, n).await;
    f.assign(&admin(), &key, cluster, role, None)
        .await
        .expect("assign");
    key
}
