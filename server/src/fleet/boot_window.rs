//! Enrollment windows (`boot.require_armed_enrollment`): on a network where the link layer cannot be checked
//! (relayed DHCP, or a NIC that changed its MAC to a switched-off node's), a known node's boot script carries an
//! enrollment token only while an operator expects that node to boot. Arming is audited; a boot outside a
//! window is an event (`boot_not_expected`) and a warning, and its script carries no token.

use lbfleet_proto::NodeState;

use super::{Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::nodes::NodeKey;
use crate::store::{self, now_ms};

/// The longest window an operator can open at once.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;

impl Fleet {
    /// Opens (or, with `for_ms` 0, closes) the node's enrollment window for `for_ms` from now; the window's end.
    /// Refused for retired and rejected nodes and for windows over [`MAX_WINDOW_MS`]; audited as
    /// `node.expect_boot`.
    pub async fn expect_boot(&self, actor: &Actor, key: &NodeKey, for_ms: i64) -> Result<i64> {
        if !(0..=MAX_WINDOW_MS).contains(&for_ms) {
            return Err(super::FieldError::new("for", "must be between 0 s and 24 h").into());
        }
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        if matches!(row.state, NodeState::Retired | NodeState::Rejected) {
            return Err(FleetError::Conflict(format!(
                "node {} is {}; it gets no boot image",
                row.name(),
                row.state
            )));
        }
        let before = store::boot_trust::expected_until(&mut tx, row.id).await?;
        let until = now_ms().saturating_add(for_ms);
        store::boot_trust::set_expected(&mut tx, row.id, until, &actor.0).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::NodeExpectBoot,
            &format!("node:{}", row.name()),
            Some(&serde_json::json!({ "until_ms": before })),
            Some(&serde_json::json!({ "until_ms": until })),
        )
        .await?;
        store::commit(tx).await?;
        Ok(until)
    }

    /// True when a boot script of `node_id` may carry a token under `boot.require_armed_enrollment`: the node
    /// is new (`discovered`: it has nothing to take over yet) or its window is open. Otherwise records the
    /// `boot_not_expected` event.
    pub async fn boot_expected(&self, node_id: i64, client: &str) -> Result<bool> {
        // Read first: the common answers need no write transaction.
        let row = {
            let mut conn = self.store.read().await?;
            let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
            if row.state == NodeState::Discovered {
                return Ok(true);
            }
            let until = store::boot_trust::expected_until(&mut conn, node_id).await?;
            if until.is_some_and(|u| now_ms() < u) {
                return Ok(true);
            }
            row
        };
        let mut tx = self.store.begin().await?;
        store::events::insert(
            &mut tx,
            EventKind::BootNotExpected,
            Some(row.id),
            row.cluster.as_deref(),
            &format!(
                "node {} asked for its boot script from {client} while no operator expected it to boot: no \
                 enrollment token (POST /api/v1/nodes/{}/expect-boot opens a window)",
                row.name(),
                row.name()
            ),
        )
        .await?;
        store::commit(tx).await?;
        tracing::warn!(
            node = row.name(),
            client,
            "boot outside its enrollment window: no token"
        );
        Ok(false)
    }
}

/// Longest circuit-id a relay can send (RFC 3046: a sub-option holds 255 bytes).
pub const MAX_CIRCUIT_ID: usize = 255;

impl Fleet {
    /// Pins (or with `None` unpins) the node's DHCP requests to a relay circuit-id (option 82 sub-option 1): a
    /// request for its MAC that arrives with another circuit-id, or none, gets no lease. Audited as
    /// `node.circuit_pin`; the DHCP loop reloads its reservations.
    pub async fn pin_circuit_id(
        &self,
        actor: &Actor,
        key: &NodeKey,
        circuit_id: Option<Vec<u8>>,
    ) -> Result<()> {
        if circuit_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > MAX_CIRCUIT_ID)
        {
            return Err(super::FieldError::new("circuit_id", "must be 1 to 255 bytes").into());
        }
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        let before = store::boot_trust::circuit_pin(&mut tx, row.id).await?;
        store::boot_trust::set_circuit_pin(&mut tx, row.id, circuit_id.as_deref()).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::NodeCircuitPin,
            &format!("node:{}", row.name()),
            Some(&serde_json::json!({ "circuit_id_hex": before.map(hex::encode) })),
            Some(&serde_json::json!({ "circuit_id_hex": circuit_id.as_ref().map(hex::encode) })),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::testing::{admin, fleet};
    use super::*;

    #[tokio::test]
    async fn a_known_node_gets_a_token_only_inside_an_audited_window() {
        let (f, _dir) = fleet().await;
        let mac = "52:54:00:00:00:31";
        let new = f.discover(mac).await.unwrap();
        // Discovered: nothing to take over, always allowed.
        assert!(f.boot_expected(new, "198.18.0.9").await.unwrap());
        f.register_node(&admin(), "52:54:00:00:00:32", Some("lb-32"), None, None)
            .await
            .unwrap();
        let key = NodeKey::Mac("52:54:00:00:00:32".into());
        let id = f.get_node(&key).await.unwrap().id;
        assert!(!f.boot_expected(id, "198.18.0.9").await.unwrap());
        let until = f.expect_boot(&admin(), &key, 60_000).await.unwrap();
        assert!(until > now_ms());
        assert!(f.boot_expected(id, "198.18.0.9").await.unwrap());
        // Closed again.
        f.expect_boot(&admin(), &key, 0).await.unwrap();
        assert!(!f.boot_expected(id, "198.18.0.9").await.unwrap());
        assert!(f
            .expect_boot(&admin(), &key, MAX_WINDOW_MS + 1)
            .await
            .is_err());
        let mut conn = f.store.read().await.unwrap();
        let events = store::events::list(
            &mut conn,
            &store::events::EventFilter {
                kind: Some(EventKind::BootNotExpected),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        let audit: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'node.expect_boot'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(audit, 2);
    }
}
