//! Which image a node boots: its own (`image` on the node) or, with none, the default. Changing it takes
//! effect at the node's next boot (its next boot script).

use super::{Actor, Fleet, FleetError, NodeView, Result};
use crate::store;
use crate::store::nodes::NodeKey;

impl Fleet {
    /// Sets (or, with `None`, clears: the node boots the default) a node's image. Refused for retired
    /// nodes and unknown images; audited as `node.image`.
    pub async fn set_node_image(
        &self,
        actor: &Actor,
        key: &NodeKey,
        image: Option<String>,
    ) -> Result<NodeView> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        if row.state == "retired" {
            return Err(FleetError::Conflict(format!(
                "node {} is retired; it boots nothing",
                row.name()
            )));
        }
        Self::check_image(&mut tx, image.as_deref()).await?;
        if row.image == image {
            drop(tx);
            return self.get_node(key).await;
        }
        store::nodes::set_identity(&mut tx, row.id, row.hostname.as_deref(), image.as_deref())
            .await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "node.image",
            &format!("node:{}", row.name()),
            Some(&serde_json::json!({ "image": row.image })),
            Some(&serde_json::json!({ "image": image })),
        )
        .await?;
        tx.commit().await?;
        self.notifier.fleet_changed();
        self.get_node(&NodeKey::Id(row.id)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::ServerConfig;

    #[tokio::test]
    async fn a_node_image_is_set_cleared_checked_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("f.db").display());
        let f = crate::open_fleet(&ServerConfig::with_database(url))
            .await
            .unwrap();
        let admin = Actor("test".into());
        for name in ["v1", "v2"] {
            f.put_image(
                &admin,
                store::images::ImageRow {
                    name: name.into(),
                    kernel: "vmlinuz".into(),
                    initrd: "initrd.img".into(),
                    cmdline: String::new(),
                    is_default: name == "v1",
                    created_at: 0,
                    kernel_version: None,
                    agent_version: None,
                    kernel_sha256: None,
                    initrd_sha256: None,
                },
            )
            .await
            .unwrap();
        }
        let node = f
            .register_node(&admin, "52:54:00:00:00:07", Some("lb-07"), None, None)
            .await
            .unwrap();
        let key = NodeKey::Id(node.id);
        assert_eq!(
            f.boot_target("52:54:00:00:00:07")
                .await
                .unwrap()
                .image
                .unwrap()
                .name,
            "v1"
        );
        let v = f
            .set_node_image(&admin, &key, Some("v2".into()))
            .await
            .unwrap();
        assert_eq!(v.image.as_deref(), Some("v2"));
        assert_eq!(
            f.boot_target("52:54:00:00:00:07")
                .await
                .unwrap()
                .image
                .unwrap()
                .name,
            "v2"
        );
        assert!(matches!(
            f.set_node_image(&admin, &key, Some("nope".into())).await,
            Err(FleetError::Invalid(_))
        ));
        // v2 is in use now; cleared, the node boots the default again and v2 can go.
        assert!(matches!(
            f.delete_image(&admin, "v2").await,
            Err(FleetError::Conflict(_))
        ));
        let v = f.set_node_image(&admin, &key, None).await.unwrap();
        assert_eq!(v.image, None);
        f.delete_image(&admin, "v2").await.unwrap();
        f.retire(&admin, &key).await.unwrap();
        assert!(matches!(
            f.set_node_image(&admin, &key, Some("v1".into())).await,
            Err(FleetError::Conflict(_))
        ));
    }
}
