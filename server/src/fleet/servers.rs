//! The control plane (issue 21): every `lbfleet-server serve` process on one database registers itself
//! (`servers` table) at start, heartbeats, and says when it stops cleanly. Each live server also watches the
//! others: one that misses `misses` of its own heartbeat intervals is marked down by whichever server notices
//! first (the database decides), which raises a `server_down` alert and records an event; the alert closes
//! when the server heartbeats again. Entries not heard from for the retention are deleted; an admin may delete
//! one earlier (audited). The boot script names every live server (`live_servers`).

use std::path::Path;
use std::time::Duration;

use lbfleet_proto::wire_enum;
use serde::Serialize;
use tokio::sync::watch;

use super::{Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::{self, events::EventKind, now_ms, servers::ServerRow};

wire_enum!(
    /// Where a registered server stands, as seen now.
    ServerState { Up => "up", Down => "down", Stopped => "stopped" }
);

/// What this server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// Stable across restarts: kept in the state directory (`server_id`).
    pub id: String,
    pub name: String,
    pub version: String,
    /// Where people and automation reach its API and dashboard.
    pub management_url: String,
    /// The agent API's URL as nodes use it (what the boot script names).
    pub boot_url: Option<String>,
    /// `sha256:HEX` of its TLS certificate.
    pub tls_pin: Option<String>,
    /// Networks its DHCP answers on (`198.18.0.0/24`).
    pub dhcp_networks: Vec<String>,
    pub heartbeat_interval: Duration,
}

/// When a server counts as dead: silent for `misses` of its own heartbeat intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub misses: u32,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { misses: 3 }
    }
}

impl Liveness {
    /// The server's state at `now`.
    pub fn state(self, row: &ServerRow, now: i64) -> ServerState {
        if row.stopped_at.is_some() {
            ServerState::Stopped
        } else if row.down_since.is_some() || now - row.heartbeat_at > self.silence_ms(row) {
            ServerState::Down
        } else {
            ServerState::Up
        }
    }

    /// How long `row`'s server may stay silent before it counts as dead.
    fn silence_ms(self, row: &ServerRow) -> i64 {
        row.heartbeat_interval_ms
            .max(1)
            .saturating_mul(i64::from(self.misses.max(1)))
    }
}

/// A registered server as the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub management_url: String,
    pub boot_url: Option<String>,
    pub tls_pin: Option<String>,
    pub dhcp_networks: Vec<String>,
    pub state: ServerState,
    pub started_at: i64,
    /// Its last successful heartbeat: the last time it could write to the database.
    pub heartbeat_at: i64,
    pub heartbeat_age_ms: i64,
    pub heartbeat_interval_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<i64>,
}

impl ServerView {
    fn new(row: ServerRow, liveness: Liveness, now: i64) -> ServerView {
        let state = liveness.state(&row, now);
        ServerView {
            dhcp_networks: serde_json::from_str(&row.dhcp_networks).unwrap_or_default(),
            state,
            heartbeat_age_ms: now.saturating_sub(row.heartbeat_at).max(0),
            id: row.id,
            name: row.name,
            version: row.version,
            management_url: row.management_url,
            boot_url: row.boot_url,
            tls_pin: row.tls_pin,
            started_at: row.started_at,
            heartbeat_at: row.heartbeat_at,
            heartbeat_interval_ms: row.heartbeat_interval_ms,
            stopped_at: row.stopped_at,
            down_since: row.down_since,
        }
    }
}

/// Why the server id could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum ServerIdError {
    #[error("cannot read or write the server id {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a server id (32 hex digits)")]
    Bad { path: std::path::PathBuf },
}

/// File in the state directory that keeps the server's id.
pub const SERVER_ID_FILE: &str = "server-id";

/// This server's id: read from `state_dir/server-id`, created (random, 128 bits) on first start.
pub fn server_id(state_dir: &Path) -> std::result::Result<String, ServerIdError> {
    use std::io::Write;
    let path = state_dir.join(SERVER_ID_FILE);
    let io = |source| ServerIdError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_ascii_lowercase());
            }
            return Err(ServerIdError::Bad { path });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let id = hex::encode(rand::random::<[u8; 16]>());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(id)
        }
        // Another process created it first: use its id.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => server_id(state_dir),
        Err(e) => Err(io(e)),
    }
}

impl Fleet {
    /// Registers this server (at start): its row renewed, an alert it left open closed, an event.
    pub async fn register_server(&self, me: &ServerIdentity) -> Result<()> {
        let now = now_ms();
        let networks = serde_json::to_string(&me.dhcp_networks).unwrap_or_else(|_| "[]".into());
        let mut tx = self.store.begin().await?;
        let before = store::servers::get(&mut tx, &me.id).await?;
        store::servers::register(
            &mut tx,
            &store::servers::Registration {
                id: &me.id,
                name: &me.name,
                version: &me.version,
                management_url: &me.management_url,
                boot_url: me.boot_url.as_deref(),
                tls_pin: me.tls_pin.as_deref(),
                dhcp_networks: &networks,
                heartbeat_interval_ms: duration_ms(me.heartbeat_interval),
            },
            now,
        )
        .await?;
        if let Some(alert) = before.as_ref().and_then(|b| b.alert_id) {
            store::servers::close_alert(&mut tx, alert, now).await?;
        }
        store::events::insert(
            &mut tx,
            EventKind::Server,
            None,
            None,
            &format!(
                "server {} joined the control plane ({}, version {})",
                me.name, me.management_url, me.version
            ),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }

    /// One heartbeat of this server. A server that was marked down is back (its alert closes, an event says
    /// so); one whose entry was deleted registers again.
    pub async fn server_heartbeat(&self, me: &ServerIdentity) -> Result<()> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let Some(before) = store::servers::heartbeat(&mut tx, &me.id, now).await? else {
            drop(tx);
            return self.register_server(me).await;
        };
        let came_back = before.down_since.is_some() || before.alert_id.is_some();
        if let Some(alert) = before.alert_id {
            store::servers::close_alert(&mut tx, alert, now).await?;
        }
        if came_back {
            store::events::insert(
                &mut tx,
                EventKind::Server,
                None,
                None,
                &format!("server {} is heartbeating again", me.name),
            )
            .await?;
        }
        store::commit(tx).await?;
        if came_back {
            self.notifier.fleet_changed();
        }
        Ok(())
    }

    /// Marks this server stopped (a clean stop: no alert), with an event.
    pub async fn server_stopped(&self, me: &ServerIdentity) -> Result<()> {
        let mut tx = self.store.begin().await?;
        store::servers::stopped(&mut tx, &me.id, now_ms()).await?;
        store::events::insert(
            &mut tx,
            EventKind::Server,
            None,
            None,
            &format!("server {} left the control plane (clean stop)", me.name),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }

    /// Looks at every other server: one silent for too long is marked down (once, by whichever server gets
    /// there first), with a `server_down` alert and an event. The names of the servers this call marked.
    pub async fn check_servers(&self, me: &str, liveness: Liveness) -> Result<Vec<String>> {
        let rows = {
            let mut conn = self.store.read().await?;
            store::servers::list(&mut conn).await?
        };
        let now = now_ms();
        let mut marked = Vec::new();
        for row in rows.iter().filter(|r| r.id != me) {
            if row.down_since.is_some() || liveness.state(row, now) != ServerState::Down {
                continue;
            }
            let silent_before = now - liveness.silence_ms(row);
            let mut tx = self.store.begin().await?;
            if !store::servers::mark_down(&mut tx, &row.id, silent_before, now).await? {
                continue;
            }
            let message = format!(
                "server {} ({}) stopped heartbeating: last heartbeat {} s ago",
                row.name,
                row.management_url,
                (now - row.heartbeat_at) / 1000
            );
            store::servers::raise_down_alert(&mut tx, &row.id, &message, now).await?;
            store::events::insert(&mut tx, EventKind::Server, None, None, &message).await?;
            store::commit(tx).await?;
            tracing::warn!(
                server = row.name,
                id = row.id,
                last_heartbeat_ms = now - row.heartbeat_at,
                "server stopped heartbeating"
            );
            marked.push(row.name.clone());
        }
        if !marked.is_empty() {
            self.notifier.fleet_changed();
        }
        Ok(marked)
    }

    /// Every registered server with its state now.
    pub async fn servers(&self, liveness: Liveness) -> Result<Vec<ServerView>> {
        let mut conn = self.store.read().await?;
        let rows = store::servers::list(&mut conn).await?;
        let now = now_ms();
        Ok(rows
            .into_iter()
            .map(|r| ServerView::new(r, liveness, now))
            .collect())
    }

    /// The servers that are up now, for the boot script.
    pub async fn live_servers(&self, liveness: Liveness) -> Result<Vec<ServerView>> {
        Ok(self
            .servers(liveness)
            .await?
            .into_iter()
            .filter(|s| s.state == ServerState::Up)
            .collect())
    }

    /// Deletes a server's entry (an admin cleaning up one that will not come back); its open alert closes.
    /// Refused while it is up: it would register again at its next heartbeat.
    pub async fn remove_server(&self, actor: &Actor, id: &str, liveness: Liveness) -> Result<()> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let Some(row) = store::servers::get(&mut tx, id).await? else {
            return Err(FleetError::NotFound(format!("no server with id {id}")));
        };
        if liveness.state(&row, now) == ServerState::Up {
            return Err(FleetError::Conflict(format!(
                "server {} is up (last heartbeat {} ms ago); stop it first",
                row.name,
                now - row.heartbeat_at
            )));
        }
        store::servers::delete(&mut tx, id).await?;
        if let Some(alert) = row.alert_id {
            store::servers::close_alert(&mut tx, alert, now).await?;
        }
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::ServerRemove,
            &format!("server:{}", row.name),
            Some(&serde_json::json!({"id": row.id, "name": row.name,
                "management_url": row.management_url, "heartbeat_at": row.heartbeat_at})),
            None,
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }

    /// Deletes the entries of servers not heard from since `before` (and closes their alerts); how many.
    pub async fn prune_servers(&self, before: i64) -> Result<usize> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let gone = store::servers::prune(&mut tx, before).await?;
        for row in &gone {
            if let Some(alert) = row.alert_id {
                store::servers::close_alert(&mut tx, alert, now).await?;
            }
            store::events::insert(
                &mut tx,
                EventKind::Server,
                None,
                None,
                &format!(
                    "server {} removed from the registry: not heard from since {}",
                    row.name, row.heartbeat_at
                ),
            )
            .await?;
        }
        store::commit(tx).await?;
        if !gone.is_empty() {
            self.notifier.fleet_changed();
        }
        Ok(gone.len())
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Settings of the registry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrySettings {
    pub liveness: Liveness,
    /// Entries not heard from for this long are deleted.
    pub retention: Duration,
}

/// Registers `me`, then heartbeats every interval, watches the other servers and prunes old entries, until
/// `stop` turns true; then marks `me` stopped. A failed heartbeat (database unreachable) is logged and retried
/// at the next tick: the server keeps serving what it can.
pub async fn run_registry(
    fleet: std::sync::Arc<Fleet>,
    me: ServerIdentity,
    settings: RegistrySettings,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut registered = match fleet.register_server(&me).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register this server; retrying with the heartbeats");
            false
        }
    };
    let mut tick = tokio::time::interval(me.heartbeat_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<std::time::Instant> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let beat = if registered {
            fleet.server_heartbeat(&me).await
        } else {
            fleet.register_server(&me).await
        };
        match beat {
            Ok(()) => {
                registered = true;
                if failing {
                    tracing::info!("heartbeat written again: the database is reachable");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat failed: the database is unreachable");
                    failing = true;
                }
                continue;
            }
        }
        if let Err(e) = fleet.check_servers(&me.id, settings.liveness).await {
            tracing::warn!(error = %e, "cannot check the other servers");
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let before = now_ms().saturating_sub(duration_ms(settings.retention));
            match fleet.prune_servers(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "old server entries removed"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old server entries"),
            }
        }
    }
    if let Err(e) = fleet.server_stopped(&me).await {
        tracing::warn!(error = %e, "cannot record this server's stop");
    }
    Ok(())
}

/// How often the registry's retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::testing::fleet;
    use super::*;

    fn identity(id: &str, name: &str) -> ServerIdentity {
        ServerIdentity {
            id: id.into(),
            name: name.into(),
            version: "0.1.0".into(),
            management_url: format!("https://{name}:8443"),
            boot_url: Some(format!("https://{name}.boot:8443")),
            tls_pin: None,
            dhcp_networks: vec!["198.18.0.0/24".into()],
            heartbeat_interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_server_id_is_kept_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let id = server_id(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(server_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(server_id(other.path()).unwrap(), id);
        std::fs::write(dir.path().join(SERVER_ID_FILE), "not an id").unwrap();
        assert!(matches!(
            server_id(dir.path()),
            Err(ServerIdError::Bad { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_server_raises_one_alert_that_closes_when_it_heartbeats_again() {
        let (f, _dir) = fleet().await;
        let a = identity("0a", "a");
        // B says it heartbeats every millisecond: silent for 3 ms, it counts as dead.
        let b = ServerIdentity {
            heartbeat_interval: Duration::from_millis(1),
            ..identity("0b", "b")
        };
        f.register_server(&a).await.unwrap();
        let live = Liveness { misses: 3 };
        let states = |v: Vec<ServerView>| -> Vec<(String, ServerState)> {
            v.into_iter().map(|s| (s.name, s.state)).collect()
        };
        assert_eq!(
            states(f.servers(live).await.unwrap()),
            [("a".into(), ServerState::Up)]
        );
        f.register_server(&b).await.unwrap();

        // B goes silent while A heartbeats: A's look marks B down, within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let marked = loop {
            f.server_heartbeat(&a).await.unwrap();
            let marked = f.check_servers(&a.id, live).await.unwrap();
            if !marked.is_empty() {
                break marked;
            }
            assert!(std::time::Instant::now() < deadline, "B never marked down");
            tokio::task::yield_now().await;
        };
        assert_eq!(marked, ["b"]);
        assert_eq!(
            states(f.servers(live).await.unwrap()),
            [
                ("a".into(), ServerState::Up),
                ("b".into(), ServerState::Down)
            ]
        );
        // Marked once: a second look (by any server) raises nothing more.
        assert!(f.check_servers(&a.id, live).await.unwrap().is_empty());
        let down: Vec<Alert> = server_alerts(&f).await;
        assert_eq!(down.len(), 1, "{down:?}");
        assert!(down[0].message.contains("server b"), "{down:?}");
        assert_eq!(
            states(f.live_servers(live).await.unwrap()),
            [("a".into(), ServerState::Up)]
        );

        // B heartbeats again: the alert closes, B is down no more.
        f.server_heartbeat(&b).await.unwrap();
        assert!(server_alerts(&f).await.is_empty());
        assert!(f
            .servers(live)
            .await
            .unwrap()
            .iter()
            .all(|s| s.down_since.is_none()));

        // A clean stop is no alert; an admin may then remove the entry (audited), not while it is up.
        f.server_stopped(&b).await.unwrap();
        assert!(f.check_servers(&a.id, live).await.unwrap().is_empty());
        assert!(server_alerts(&f).await.is_empty());
        let admin = super::super::testing::admin();
        assert!(matches!(
            f.remove_server(&admin, &a.id, live).await,
            Err(FleetError::Conflict(_))
        ));
        f.remove_server(&admin, &b.id, live).await.unwrap();
        assert_eq!(f.servers(live).await.unwrap().len(), 1);
        // A's entry gone too (retention) re-registers at its next heartbeat.
        assert_eq!(f.prune_servers(now_ms() + 1).await.unwrap(), 1);
        f.server_heartbeat(&a).await.unwrap();
        assert_eq!(f.live_servers(live).await.unwrap().len(), 1);
    }

    use super::super::Alert;

    async fn server_alerts(f: &Fleet) -> Vec<Alert> {
        f.alerts()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == super::super::AlertKind::ServerDown)
            .collect()
    }
}
