//! Standalone mode: the role comes from a local file instead of the server. Without `--watch` one pass is
//! applied; with it, the daemon loop runs (VRRP included) and a watcher task sends the file again as a new
//! role whenever it changes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lbfleet_proto::RoleDocument;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{AgentError, Event, LoopConfig, RoleOrigin};
use crate::health::HealthConfig;
use crate::reconcile::{self, Applier, HealthResults, ReconcileOutcome, Reconciler};
use crate::state::StateError;

/// How often the watcher looks at the file's modification time.
const WATCH_EVERY: Duration = Duration::from_millis(200);

fn load(path: &Path) -> Result<RoleDocument, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| {
        AgentError::State(StateError::Io {
            path: path.to_owned(),
            source,
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|source| {
        AgentError::State(StateError::BadRole {
            path: path.to_owned(),
            source,
        })
    })
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Applies `role_file` once, or with `watch` runs the daemon on it until `shutdown` (re-applying when the file
/// changes, when a real server's health changes and on every resync; VRRP and the health checks run as the
/// role says, only with `watch`). Returns the last pass's outcome.
pub async fn apply_file(
    role_file: PathBuf,
    applier: Box<dyn Applier>,
    watch: bool,
    resync: Duration,
    state_dir: PathBuf,
    health: HealthConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ReconcileOutcome, AgentError> {
    let role = load(&role_file)?;
    if !watch {
        if role.vrrp.is_some() {
            warn!("the role has VRRP settings: VRRP runs only with --watch (a one-shot apply cannot hold VIPs)");
        }
        let health = HealthResults::default();
        let (desired, role_errors) = reconcile::desired_state(&role, &health);
        let mut out = tokio::task::spawn_blocking(move || {
            let mut reconciler = Reconciler::new(applier);
            reconciler.full(&desired)
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
        .map_err(AgentError::Observe)?;
        out.errors.extend(role_errors);
        info!(
            generation = role.generation,
            planned = out.planned,
            applied = out.applied,
            failed = out.errors.len(),
            "role file applied"
        );
        return Ok(out);
    }
    let (events_tx, events_rx) = mpsc::channel(16);
    let _ = events_tx
        .send(Event::NewRole {
            role: Box::new(role),
            origin: RoleOrigin::File,
        })
        .await;
    let _watcher = super::AbortOnDrop(tokio::spawn(watch_file(role_file, events_tx.clone())));
    let last = super::run_loop(
        LoopConfig {
            state_dir,
            resync,
            image_version: None,
            save_roles: false,
            report: None,
            log_file_passes: true,
            health,
            priority_observer: None,
            health_outbox: None,
            machine: None,
        },
        applier,
        events_tx,
        events_rx,
        shutdown,
    )
    .await?;
    Ok(last.unwrap_or_default())
}

/// Sends the file as a new role whenever its modification time changes (an unreadable file keeps the
/// previous role).
async fn watch_file(path: PathBuf, tx: mpsc::Sender<Event>) {
    let mut last = mtime(&path);
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let m = mtime(&path);
        if m == last {
            continue;
        }
        last = m;
        match load(&path) {
            Ok(role) => {
                let ev = Event::NewRole {
                    role: Box::new(role),
                    origin: RoleOrigin::File,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Err(e) => warn!(error = %e, "role file unreadable; keeping the previous one"),
        }
    }
}
