//! Drift: which image (and agent version) each node should run against what its agent says it runs. The
//! desired image is the node's own or, with none, the default; the running one is what the agent reported
//! (`lbfleet.image=` on its kernel command line, else the image's version file), the agent version its own.
//! Served at `GET /api/v1/drift`, shown on the nodes list, node page and overview, and raised as an alert for
//! a reporting node that runs something other than it should.

use serde::Serialize;

use super::{alerts::reporting, Fleet, Result};
use crate::store::{self, images::ImageRow, nodes::NodeRow, now_ms};
use lbfleet_proto::NodeState;

/// How a node's running image compares with the one it should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    /// Runs the image (and agent version) it should.
    InSync,
    /// Runs another image or another agent version.
    Drifted,
    /// Not known: the agent has not said, it is not reporting, or no image is desired (no default).
    Unknown,
}

/// One node's desired and running image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeDrift {
    pub node_id: i64,
    pub node: String,
    pub cluster: Option<String>,
    pub desired_image: Option<String>,
    pub running_image: Option<String>,
    /// The agent version the desired image's manifest names (`None` for an image registered by hand).
    pub desired_agent_version: Option<String>,
    pub running_agent_version: Option<String>,
    pub state: DriftState,
}

/// The fleet's drift: every node that boots (not discovered, rejected or retired), and counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftReport {
    pub in_sync: usize,
    pub drifted: usize,
    pub unknown: usize,
    /// Nodes by the image they run (`"unknown"` when not reported), sorted by image name.
    pub running: Vec<(String, usize)>,
    pub nodes: Vec<NodeDrift>,
}

/// The drift of one node, given the images (`None` for nodes that boot nothing).
pub(super) fn node_drift(row: &NodeRow, images: &[ImageRow], now: i64) -> Option<NodeDrift> {
    if matches!(
        row.state,
        NodeState::Discovered | NodeState::Rejected | NodeState::Retired
    ) {
        return None;
    }
    let desired = match &row.image {
        Some(name) => images.iter().find(|i| &i.name == name),
        None => images.iter().find(|i| i.is_default),
    };
    let desired_image = desired
        .map(|i| i.name.clone())
        .or_else(|| row.image.clone());
    let desired_agent_version = desired.and_then(|i| i.agent_version.clone());
    let state = match (&desired_image, &row.image_version) {
        (Some(want), Some(have)) if reporting(now, row) => {
            let agent_differs = matches!(
                (&desired_agent_version, &row.agent_version),
                (Some(a), Some(b)) if a != b
            );
            if want != have || agent_differs {
                DriftState::Drifted
            } else {
                DriftState::InSync
            }
        }
        _ => DriftState::Unknown,
    };
    Some(NodeDrift {
        node_id: row.id,
        node: row.name().to_owned(),
        cluster: row.cluster.clone(),
        desired_image,
        running_image: row.image_version.clone(),
        desired_agent_version,
        running_agent_version: row.agent_version.clone(),
        state,
    })
}

impl NodeDrift {
    /// What is wrong, in words (for the alert).
    pub fn message(&self) -> String {
        let want = self.desired_image.as_deref().unwrap_or("-");
        let have = self.running_image.as_deref().unwrap_or("-");
        if want != have {
            format!("node {} runs image {have}, should run {want}", self.node)
        } else {
            format!(
                "node {} runs agent {}, image {want} has agent {}",
                self.node,
                self.running_agent_version.as_deref().unwrap_or("-"),
                self.desired_agent_version.as_deref().unwrap_or("-")
            )
        }
    }
}

/// The report over `rows`.
pub(super) fn drift_report(rows: &[NodeRow], images: &[ImageRow], now: i64) -> DriftReport {
    let mut r = DriftReport::default();
    let mut running = std::collections::BTreeMap::<String, usize>::new();
    for d in rows.iter().filter_map(|n| node_drift(n, images, now)) {
        match d.state {
            DriftState::InSync => r.in_sync += 1,
            DriftState::Drifted => r.drifted += 1,
            DriftState::Unknown => r.unknown += 1,
        }
        *running
            .entry(d.running_image.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        r.nodes.push(d);
    }
    r.running = running.into_iter().collect();
    r
}

impl Fleet {
    /// Every booting node's desired and running image, with fleet-wide counts.
    pub async fn drift(&self) -> Result<DriftReport> {
        let mut conn = self.store.read().await?;
        let nodes = store::nodes::list(&mut conn, &store::nodes::NodeFilter::default()).await?;
        let images = store::images::list(&mut conn).await?;
        Ok(drift_report(&nodes, &images, now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::{AgentReport, Role};

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;
    use crate::store::nodes::NodeKey;

    fn image(name: &str, default: bool, agent: Option<&str>) -> ImageRow {
        ImageRow {
            name: name.into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: String::new(),
            is_default: default,
            created_at: 0,
            kernel_version: None,
            agent_version: agent.map(Into::into),
            kernel_sha256: None,
            initrd_sha256: None,
        }
    }

    async fn report(f: &Fleet, key: &NodeKey, image: &str, agent: &str) {
        let n = f.get_node(key).await.expect("node");
        f.report(
            n.id,
            &AgentReport {
                applied_generation: n.role_generation as u64,
                image_version: Some(image.into()),
                agent_version: Some(agent.into()),
                ..AgentReport::default()
            },
        )
        .await
        .expect("report");
    }

    #[tokio::test]
    async fn drift_compares_desired_and_running_image_and_agent_and_raises_an_alert() {
        let (f, _dir) = fleet().await;
        f.put_image(&admin(), image("v1", true, Some("0.1.0")))
            .await
            .expect("v1");
        f.put_image(&admin(), image("v2", false, Some("0.2.0")))
            .await
            .expect("v2");
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let a = member(&f, 1, "ext", Role::Active).await;
        let b = member(&f, 2, "ext", Role::Backup).await;
        let d = f.drift().await.expect("drift");
        assert_eq!((d.in_sync, d.drifted, d.unknown), (0, 0, 2), "{d:?}");

        report(&f, &a, "v1", "0.1.0").await;
        report(&f, &b, "v1", "0.1.0").await;
        let d = f.drift().await.expect("drift");
        assert_eq!((d.in_sync, d.drifted, d.unknown), (2, 0, 0), "{d:?}");
        assert_eq!(d.running, vec![("v1".to_owned(), 2)]);

        // lb-02 should run v2 but still runs v1: drifted, and an alert names it.
        f.set_node_image(&admin(), &b, Some("v2".into()))
            .await
            .expect("image");
        let d = f.drift().await.expect("drift");
        assert_eq!((d.in_sync, d.drifted), (1, 1), "{d:?}");
        let lb2 = d.nodes.iter().find(|n| n.node == "lb-02").expect("lb-02");
        assert_eq!(
            (lb2.desired_image.as_deref(), lb2.running_image.as_deref()),
            (Some("v2"), Some("v1"))
        );
        let alerts = f.alerts().await.expect("alerts");
        let drift: Vec<_> = alerts
            .iter()
            .filter(|a| a.kind == super::super::AlertKind::ImageDrift)
            .collect();
        assert_eq!(drift.len(), 1, "{alerts:?}");
        assert_eq!(drift[0].node.as_deref(), Some("lb-02"));
        assert!(drift[0].message.contains("runs image v1, should run v2"));

        // The right image with another agent version is drift too.
        report(&f, &b, "v2", "0.1.9").await;
        let d = f.drift().await.expect("drift");
        assert_eq!(d.drifted, 1, "{d:?}");
        report(&f, &b, "v2", "0.2.0").await;
        let d = f.drift().await.expect("drift");
        assert_eq!((d.in_sync, d.drifted), (2, 0), "{d:?}");
        assert!(!f
            .alerts()
            .await
            .expect("alerts")
            .iter()
            .any(|a| a.kind == super::super::AlertKind::ImageDrift));
    }
}
