//! Re-enrollment while the node's agent is alive: the sign of a takeover (someone else redeemed a token for
//! the node) or of a node that booted twice. Either way an operator should look, so it becomes an event of
//! kind `REENROLLED_ALIVE` (the feed) and an alert in its own row (`store::alerts`), open for `ALERT_FOR_MS`
//! or until acknowledged: event retention, which a flood of agent events drives, cannot erase it.

use super::AlertKind;
use crate::store::events::EventKind;
use crate::store::{self, nodes::NodeRow, now_ms, Conn, StoreError};

/// Event kind recorded (and alerted on) when a node re-enrolls while its previous credential was in use.
pub const REENROLLED_ALIVE: EventKind = EventKind::ReenrolledWhileAlive;

/// How recently the previous credential must have been used for a re-enrollment to be suspicious.
pub const ALIVE_WINDOW_MS: i64 = 2 * 60 * 1000;

/// How long after a reboot request (`fleet::reboot`) the node's re-enrollment is expected.
pub const REBOOT_GRACE_MS: i64 = 30 * 60 * 1000;

/// Records the event when `row` (the node, before its credential is replaced) still has a credential that was
/// used within `ALIVE_WINDOW_MS`. True when it did. The first re-enrollment within `REBOOT_GRACE_MS` of a
/// reboot the server asked for is expected: it clears that request and raises nothing.
pub async fn note_if_alive(conn: &mut Conn, row: &NodeRow) -> Result<bool, StoreError> {
    if row
        .reboot_requested_at
        .is_some_and(|t| now_ms().saturating_sub(t) <= REBOOT_GRACE_MS)
    {
        store::nodes::clear_reboot_request(conn, row.id).await?;
        return Ok(false);
    }
    let recently = row
        .last_seen_at
        .is_some_and(|t| now_ms().saturating_sub(t) <= ALIVE_WINDOW_MS);
    if !recently || !store::auth::has_node_credential(conn, row.id).await? {
        return Ok(false);
    }
    let now = now_ms();
    let message = format!(
        "node {} re-enrolled while its agent was alive (previous credential used {} s ago)",
        row.name(),
        row.last_seen_at.map_or(0, |t| now.saturating_sub(t) / 1000)
    );
    store::events::insert(
        conn,
        REENROLLED_ALIVE,
        Some(row.id),
        row.cluster.as_deref(),
        &message,
    )
    .await?;
    store::alerts::raise(
        conn,
        AlertKind::Reenrolled.as_str(),
        Some(row.id),
        row.cluster.as_deref(),
        &message,
        now,
        now.saturating_add(ALERT_FOR_MS),
    )
    .await?;
    tracing::warn!(
        node = row.name(),
        "node re-enrolled while its agent was alive"
    );
    Ok(true)
}

/// How long a re-enrollment stays an alert (unless acknowledged sooner).
pub const ALERT_FOR_MS: i64 = 24 * 3600 * 1000;
