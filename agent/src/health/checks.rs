//! `HealthChecks`: what the daemon loop holds of health checking. It follows the role, turns the monitor's
//! state changes into the `HealthResults` the desired state is built from, and sends the quorum's VRRP
//! priority to the `PrioritySink` whenever it changes.

use std::sync::Arc;

use lbfleet_proto::{HealthTransition, RoleDocument};
use tokio::sync::watch;
use tracing::{info, warn};

use super::monitor::{HealthConfig, HealthMonitor, HealthSnapshot};
use super::quorum::{PrioritySink, QuorumStatus};
use crate::reconcile::HealthResults;

/// The health-check side of the daemon.
#[derive(Debug)]
pub struct HealthChecks {
    monitor: HealthMonitor,
    changes: watch::Receiver<u64>,
    results: HealthResults,
    priority_sink: Option<Arc<dyn PrioritySink>>,
    /// The last priority sent, so a sink only hears about changes.
    priority: Option<u8>,
}

impl HealthChecks {
    pub fn new(config: HealthConfig, priority_sink: Option<Arc<dyn PrioritySink>>) -> HealthChecks {
        HealthChecks::with_monitor(HealthMonitor::new(config), priority_sink)
    }

    pub fn with_monitor(
        monitor: HealthMonitor,
        priority_sink: Option<Arc<dyn PrioritySink>>,
    ) -> HealthChecks {
        let changes = monitor.subscribe();
        HealthChecks {
            monitor,
            changes,
            results: HealthResults::default(),
            priority_sink,
            priority: None,
        }
    }

    /// Follows a new role (probes added and removed; results of kept probes stay) and re-evaluates the
    /// results and the quorum. Returns whether the results changed.
    pub fn set_role(&mut self, role: &RoleDocument) -> bool {
        self.monitor.set_role(role);
        self.refresh(role)
    }

    /// Waits for the next state change of any probe. Cancel-safe; pending forever once the monitor is gone.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Pulls the monitor's current results and re-evaluates the quorum. Returns whether the results
    /// changed (then the desired state must be rebuilt, without reusing the previous one).
    pub fn refresh(&mut self, role: &RoleDocument) -> bool {
        self.changes.borrow_and_update();
        let results = self.monitor.snapshot().results;
        let changed = results != self.results;
        self.results = results;
        if let Some(vrrp) = &role.vrrp {
            let quorum = QuorumStatus::evaluate(role, &self.results);
            let priority = quorum.priority(vrrp.priority);
            if self.priority != Some(priority) {
                if quorum.drop > 0 {
                    warn!(base = vrrp.priority, priority, below = ?quorum.below, "services below quorum: VRRP priority lowered");
                } else if self.priority.is_some() {
                    info!(priority, "services back at quorum: VRRP priority restored");
                }
                self.priority = Some(priority);
                if let Some(sink) = &self.priority_sink {
                    sink.set_priority(priority);
                }
            }
        }
        changed
    }

    /// The results the desired state is built from.
    pub fn results(&self) -> &HealthResults {
        &self.results
    }

    /// Per-server health for a report or `status`.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.monitor.snapshot()
    }

    /// State changes since the last call.
    pub fn take_transitions(&self) -> Vec<HealthTransition> {
        self.monitor.take_transitions()
    }

    /// The priority last sent to the sink (`None` before the first role with VRRP).
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    pub fn monitor(&self) -> &HealthMonitor {
        &self.monitor
    }
}
