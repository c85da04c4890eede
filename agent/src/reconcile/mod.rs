//! The reconciler: desired IPVS state (role document + health results) against observed state (kernel dump)
//! gives a `ReconcilePlan` of minimal operations, applied through an `Applier`. It never flushes: equal state
//! is an empty plan, a weight change is one operation, and whatever is not in the role is deleted one by one.
//!
//! - [`state`]: `ServiceState` and `IpvsState` (a table as wanted or as found, fingerprinted), `HealthResults`;
//! - [`desired`]: the state a role document and the health results ask for;
//! - [`plan`]: the minimal operations from observed to desired state;
//! - [`apply`]: where plans go (`NetlinkApplier` for the kernel, `RecordingApplier` for tests and benchmarks);
//! - this file: one reconcile pass and the `Reconciler` that remembers what the kernel holds.

pub mod apply;
pub mod desired;
pub mod plan;
pub mod state;

use tracing::{debug, warn};

use crate::ipvs::IpvsTable;

pub use apply::{Applier, ApplyError, NetlinkApplier, RecordingApplier};
pub use desired::{desired_state, desired_state_reusing};
pub use plan::{plan, plan_exact, Op, ReconcilePlan};
pub use state::{HealthResults, IpvsState, ServiceState};

use apply::apply_to;

/// What one reconcile pass did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOutcome {
    /// Operations planned (0 = the kernel already matched).
    pub planned: usize,
    /// Operations the kernel accepted.
    pub applied: usize,
    /// Failed operations and role entries that could not be applied.
    pub errors: Vec<String>,
    /// The table as read after the pass (with counters).
    pub table: IpvsTable,
    /// Reading the kernel before planning.
    pub observe_time: std::time::Duration,
    /// Sending the plan and collecting every ACK.
    pub apply_time: std::time::Duration,
    /// Diffing desired against observed (or known) state.
    pub plan_time: std::time::Duration,
    /// Recording the acknowledged changes in what the reconciler knows of the kernel (fast pass only).
    pub bookkeeping_time: std::time::Duration,
}

impl ReconcileOutcome {
    /// True when the kernel now holds exactly the desired state.
    pub fn converged(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One pass: read the kernel, diff, apply, read again. The belief about the kernel always comes from a fresh
/// read, so a failed operation is never assumed applied; the next pass retries it.
pub fn reconcile(
    applier: &mut dyn Applier,
    desired: &IpvsState,
) -> Result<ReconcileOutcome, ApplyError> {
    let started = std::time::Instant::now();
    let before = applier.observe()?;
    let observe_time = started.elapsed();
    let planning = std::time::Instant::now();
    let plan = plan_exact(desired, &IpvsState::from(&before));
    let plan_time = planning.elapsed();
    if plan.is_empty() {
        return Ok(ReconcileOutcome {
            table: before,
            observe_time,
            plan_time,
            ..Default::default()
        });
    }
    let applying = std::time::Instant::now();
    let results = applier.apply(&plan.ops);
    let mut outcome = ReconcileOutcome {
        planned: plan.len(),
        observe_time,
        apply_time: applying.elapsed(),
        plan_time,
        ..Default::default()
    };
    for (op, r) in plan.ops.iter().zip(results) {
        match r {
            Ok(()) => {
                outcome.applied += 1;
                debug!(op = %op, "applied");
            }
            Err(e) => {
                warn!(op = %op, error = %e, "IPVS change failed");
                outcome.errors.push(e.to_string());
            }
        }
    }
    outcome.table = applier.observe()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests;

/// Owns the applier and what the agent knows the kernel holds: the last table it read plus the changes the
/// kernel acknowledged since. A role change is planned against that knowledge (no full read first, so a
/// one-destination change costs one netlink round trip); a failed change drops the knowledge, and the
/// periodic resync reads the kernel again and repairs whatever changed behind the agent's back.
pub struct Reconciler {
    applier: Box<dyn Applier>,
    known: Option<IpvsState>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field(
                "known_services",
                &self.known.as_ref().map(|k| k.services.len()),
            )
            .finish()
    }
}

impl Reconciler {
    pub fn new(applier: Box<dyn Applier>) -> Reconciler {
        Reconciler {
            applier,
            known: None,
        }
    }

    /// The kernel's table, read now.
    pub fn observe(&mut self) -> Result<IpvsTable, ApplyError> {
        self.applier.observe()
    }

    /// Reads the kernel, applies the difference, reads again (start-up and every resync).
    pub fn full(&mut self, desired: &IpvsState) -> Result<ReconcileOutcome, ApplyError> {
        self.known = None;
        let out = reconcile(self.applier.as_mut(), desired)?;
        self.known = Some(IpvsState::from(&out.table));
        Ok(out)
    }

    /// Applies `desired` against what is known; falls back to `full` when nothing is. The outcome's table
    /// is left empty: read it with `observe` when counters are needed.
    pub fn fast(&mut self, desired: &IpvsState) -> Result<ReconcileOutcome, ApplyError> {
        let Some(known) = self.known.as_mut() else {
            return self.full(desired);
        };
        let planning = std::time::Instant::now();
        let plan = plan(desired, known);
        let mut outcome = ReconcileOutcome {
            planned: plan.len(),
            plan_time: planning.elapsed(),
            ..Default::default()
        };
        if plan.is_empty() {
            return Ok(outcome);
        }
        let applying = std::time::Instant::now();
        let results = self.applier.apply(&plan.ops);
        outcome.apply_time = applying.elapsed();
        let bookkeeping = std::time::Instant::now();
        let mut failed = false;
        for (op, r) in plan.ops.iter().zip(results) {
            match r {
                Ok(()) => {
                    outcome.applied += 1;
                    // Mirrors what the kernel just acknowledged; cannot fail for a plan made from `known`.
                    if apply_to(known, op).is_err() {
                        failed = true;
                    }
                    debug!(op = %op, "applied");
                }
                Err(e) => {
                    warn!(op = %op, error = %e, "IPVS change failed");
                    outcome.errors.push(e.to_string());
                    failed = true;
                }
            }
        }
        if failed {
            self.known = None;
        }
        outcome.bookkeeping_time = bookkeeping.elapsed();
        Ok(outcome)
    }
}
