//! Boot images: the kernel, initrd and command line a node boots, and which one is the default.

use super::{rules, to_value, Actor, Fleet, FleetError, PutOutcome, Result};
use crate::audit::AuditAction;
use crate::store;

impl Fleet {
    pub async fn put_image(
        &self,
        actor: &Actor,
        img: store::images::ImageRow,
    ) -> Result<PutOutcome> {
        rules::image_name(&img.name)?;
        rules::image_file("kernel", &img.kernel)?;
        rules::image_file("initrd", &img.initrd)?;
        rules::image_cmdline(&img.cmdline)?;
        let mut tx = self.store.begin().await?;
        let before = store::images::get(&mut tx, &img.name).await?;
        if before.as_ref().is_some_and(|b| {
            store::images::ImageRow {
                created_at: 0,
                ..b.clone()
            } == store::images::ImageRow {
                created_at: 0,
                ..img.clone()
            }
        }) {
            return Ok(PutOutcome::Unchanged);
        }
        store::images::upsert(&mut tx, &img).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            if before.is_some() {
                AuditAction::ImageUpdate
            } else {
                AuditAction::ImageCreate
            },
            &format!("image:{}", img.name),
            before.as_ref().map(to_value).as_ref(),
            Some(&to_value(&img)),
        )
        .await?;
        store::commit(tx).await?;
        Ok(if before.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        })
    }

    pub async fn delete_image(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let before = store::images::get(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no image named {name:?}")))?;
        // A node that names no image boots the default one, so it uses the default too.
        let users = store::images::users_with_default(&mut tx, name).await?;
        if users > 0 {
            return Err(FleetError::Conflict(format!(
                "image {name:?} is used by {users} node(s){}; move them to another image first",
                if before.is_default {
                    " (it is the default image)"
                } else {
                    ""
                }
            )));
        }
        store::images::delete(&mut tx, name).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::ImageDelete,
            &format!("image:{name}"),
            Some(&to_value(&before)),
            None,
        )
        .await?;
        store::commit(tx).await?;
        Ok(())
    }

    /// One image's row (its manifest's digests included), if it exists.
    pub async fn image(&self, name: &str) -> Result<Option<store::images::ImageRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::images::get(&mut conn, name).await?)
    }

    pub async fn list_images(&self) -> Result<Vec<store::images::ImageRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::images::list(&mut conn).await?)
    }

    /// Every image with the number of nodes (not retired) that boot it, the default counting the nodes that
    /// name no image.
    pub async fn images_in_use(&self) -> Result<Vec<(store::images::ImageRow, i64)>> {
        let mut conn = self.store.read().await?;
        let mut out = Vec::new();
        for image in store::images::list(&mut conn).await? {
            let users = store::images::users_with_default(&mut conn, &image.name).await?;
            out.push((image, users));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, fleet};
    use super::*;
    use crate::store::nodes::NodeKey;

    fn image(name: &str, is_default: bool) -> store::images::ImageRow {
        store::images::ImageRow {
            name: name.into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            is_default,
            created_at: 0,
            kernel_version: None,
            agent_version: None,
            kernel_sha256: None,
            initrd_sha256: None,
        }
    }

    #[tokio::test]
    async fn images_are_validated_defaulted_and_kept_while_used() {
        let (f, _dir) = fleet().await;
        assert_eq!(
            f.put_image(&admin(), image("v1", true)).await.expect("put"),
            PutOutcome::Created
        );
        assert_eq!(
            f.put_image(&admin(), image("v1", true)).await.expect("put"),
            PutOutcome::Unchanged
        );
        assert!(matches!(
            f.put_image(&admin(), image("../x", false)).await,
            Err(FleetError::Invalid(_))
        ));
        let mut bad = image("v2", false);
        bad.cmdline = "a\nb".into();
        assert!(matches!(
            f.put_image(&admin(), bad).await,
            Err(FleetError::Invalid(_))
        ));
        let t = f.boot_target("52:54:00:00:00:01").await.expect("target");
        assert_eq!(t.image.map(|i| i.name).as_deref(), Some("v1"));
        f.approve(
            &admin(),
            &NodeKey::Id(t.node_id),
            None,
            Some("v1".into()),
            None,
        )
        .await
        .expect("approve");
        assert!(matches!(
            f.delete_image(&admin(), "v1").await,
            Err(FleetError::Conflict(_))
        ));
        f.retire(&admin(), &NodeKey::Id(t.node_id))
            .await
            .expect("retire");
        assert!(matches!(
            f.delete_image(&admin(), "v2").await,
            Err(FleetError::NotFound(_))
        ));
        assert_eq!(f.list_images().await.expect("list").len(), 1);
    }
}
