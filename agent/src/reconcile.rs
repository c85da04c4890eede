//! The reconciler: desired IPVS state (role document + health results) against observed state (kernel dump)
//! gives a `ReconcilePlan` of minimal operations, applied through an `Applier`. It never flushes: equal state
//! is an empty plan, a weight change is one operation, and whatever is not in the role is deleted one by one.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use lbfleet_proto::RoleDocument;
use tracing::{debug, warn};

use crate::ipvs::codec::IpvsRequest;
use crate::ipvs::{
    DestEntry, DestKey, Destination, Forward, IpvsTable, Service, ServiceEntry, ServiceKey, Stats,
    SVC_F_PERSISTENT, SVC_F_USER_MASK,
};
use crate::netlink::{IpvsSocket, NetlinkError};

/// One service and its destinations, as wanted or as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub service: Service,
    pub dests: BTreeMap<DestKey, Destination>,
}

/// A whole IPVS table keyed for diffing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsState {
    pub services: BTreeMap<ServiceKey, ServiceState>,
}

impl From<&IpvsTable> for IpvsState {
    /// Kernel-only service flags (`HASHED`) are dropped, so an unchanged service compares equal to its
    /// desired state.
    fn from(t: &IpvsTable) -> Self {
        IpvsState {
            services: t
                .services
                .iter()
                .map(|(s, dests)| {
                    let mut service = s.service.clone();
                    service.flags &= SVC_F_USER_MASK;
                    (
                        s.service.key,
                        ServiceState {
                            service,
                            dests: dests.iter().map(|d| (d.dest.key, d.dest)).collect(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Real servers the health checker currently considers down, per service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthResults {
    failed: HashSet<(ServiceKey, DestKey)>,
}

impl HealthResults {
    pub fn mark_failed(&mut self, service: ServiceKey, dest: DestKey) {
        self.failed.insert((service, dest));
    }
    pub fn mark_healthy(&mut self, service: ServiceKey, dest: DestKey) {
        self.failed.remove(&(service, dest));
    }
    pub fn is_failed(&self, service: &ServiceKey, dest: &DestKey) -> bool {
        self.failed.contains(&(*service, *dest))
    }
}

/// The kernel state a role asks for. A drained (`enabled = false`) or failed real server gets weight 0, so
/// its existing connections finish. Entries the kernel could not hold (bad addresses) are skipped and named
/// in the returned errors.
pub fn desired_state(role: &RoleDocument, health: &HealthResults) -> (IpvsState, Vec<String>) {
    let mut state = IpvsState::default();
    let mut errors = Vec::new();
    for vs in &role.services {
        let addr: IpAddr = match vs.vip.parse() {
            Ok(a) => a,
            Err(_) => {
                errors.push(format!(
                    "service {}:{}: bad VIP {:?}",
                    vs.vip, vs.port, vs.vip
                ));
                continue;
            }
        };
        let key = ServiceKey::Addr {
            protocol: vs.protocol.into(),
            addr,
            port: vs.port,
        };
        let mut service = Service::new(key, vs.scheduler.as_str());
        if vs.persistence_s > 0 {
            service.flags |= SVC_F_PERSISTENT;
            service.timeout_s = vs.persistence_s;
            if let Some(p) = vs.persistence_prefix {
                service.netmask_prefix = p.min(key.family().max_prefix());
            }
        }
        let forward = Forward::from(vs.forward);
        let mut dests = BTreeMap::new();
        for rs in &vs.real_servers {
            let Ok(raddr) = rs.address.parse::<IpAddr>() else {
                errors.push(format!(
                    "service {key}: bad real server address {:?}",
                    rs.address
                ));
                continue;
            };
            let dk = DestKey {
                addr: raddr,
                port: rs.port,
            };
            let weight = if rs.enabled && !health.is_failed(&key, &dk) {
                rs.weight
            } else {
                0
            };
            dests.insert(dk, Destination::new(raddr, rs.port, forward, weight));
        }
        state.services.insert(key, ServiceState { service, dests });
    }
    (state, errors)
}

/// One IPVS change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(Service),
    EditService(Service),
    DelService(ServiceKey),
    AddDest(ServiceKey, Destination),
    EditDest(ServiceKey, Destination),
    DelDest(ServiceKey, DestKey),
}

impl Op {
    /// The generic netlink request that performs this change.
    pub fn request(&self) -> IpvsRequest {
        match self {
            Op::AddService(s) => IpvsRequest::NewService(s.clone()),
            Op::EditService(s) => IpvsRequest::SetService(s.clone()),
            Op::DelService(k) => IpvsRequest::DelService(*k),
            Op::AddDest(k, d) => IpvsRequest::NewDest(*k, *d),
            Op::EditDest(k, d) => IpvsRequest::SetDest(*k, *d),
            Op::DelDest(k, d) => IpvsRequest::DelDest(*k, *d),
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::netlink::describe(&self.request()))
    }
}

/// The minimal ordered list of changes from observed to desired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcilePlan {
    pub ops: Vec<Op>,
}

impl ReconcilePlan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Equal for the kernel's purposes: flags it sets itself and settings that only matter with persistence
/// are ignored.
fn same_service(a: &Service, b: &Service) -> bool {
    let persistent = a.persistent();
    a.scheduler == b.scheduler
        && (a.flags & SVC_F_USER_MASK) == (b.flags & SVC_F_USER_MASK)
        && a.pe_name == b.pe_name
        && (!persistent || (a.timeout_s == b.timeout_s && a.netmask_prefix == b.netmask_prefix))
}

/// Diffs desired against observed. Order: delete destinations of kept services, delete services (the kernel
/// removes a deleted service's destinations with it, so they are not listed one by one), edit and add
/// services, then add and edit destinations (a service always exists before its destinations).
pub fn plan(desired: &IpvsState, observed: &IpvsState) -> ReconcilePlan {
    let mut del_dests = Vec::new();
    let mut del_services = Vec::new();
    let mut edit_services = Vec::new();
    let mut add_services = Vec::new();
    let mut add_dests = Vec::new();
    let mut edit_dests = Vec::new();

    for key in observed.services.keys() {
        if !desired.services.contains_key(key) {
            del_services.push(Op::DelService(*key));
        }
    }
    for (key, want) in &desired.services {
        let empty = BTreeMap::new();
        let have_dests = match observed.services.get(key) {
            // The common case on a role change: most services are untouched. One ordered comparison
            // instead of a lookup per destination.
            Some(have) if have == want => continue,
            Some(have) => {
                if !same_service(&want.service, &have.service) {
                    edit_services.push(Op::EditService(want.service.clone()));
                }
                for dk in have.dests.keys() {
                    if !want.dests.contains_key(dk) {
                        del_dests.push(Op::DelDest(*key, *dk));
                    }
                }
                &have.dests
            }
            None => {
                add_services.push(Op::AddService(want.service.clone()));
                &empty
            }
        };
        for (dk, d) in &want.dests {
            match have_dests.get(dk) {
                None => add_dests.push(Op::AddDest(*key, *d)),
                Some(h) if h != d => edit_dests.push(Op::EditDest(*key, *d)),
                Some(_) => {}
            }
        }
    }
    let mut ops = del_dests;
    ops.extend(del_services);
    ops.extend(edit_services);
    ops.extend(add_services);
    ops.extend(add_dests);
    ops.extend(edit_dests);
    ReconcilePlan { ops }
}

/// Why a change or a read of the IPVS table failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{op}: {reason}")]
    Refused { op: String, reason: String },
}

/// Where plans go: the kernel over netlink, or a recorder in tests.
pub trait Applier: Send {
    /// The current table, with counters.
    fn observe(&mut self) -> Result<IpvsTable, ApplyError>;
    /// Applies the operations in order; one result per operation. A failed operation does not stop the rest.
    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), ApplyError>>;
}

/// Applies plans to the running kernel. Reopens its socket after an I/O error.
#[derive(Debug, Default)]
pub struct NetlinkApplier {
    sock: Option<IpvsSocket>,
}

impl NetlinkApplier {
    pub fn new() -> Self {
        Self::default()
    }

    fn socket(&mut self) -> Result<&mut IpvsSocket, ApplyError> {
        if self.sock.is_none() {
            self.sock = Some(IpvsSocket::open()?);
        }
        self.sock.as_mut().ok_or_else(|| ApplyError::Refused {
            op: "open netlink socket".into(),
            reason: "unavailable".into(),
        })
    }
}

impl Applier for NetlinkApplier {
    fn observe(&mut self) -> Result<IpvsTable, ApplyError> {
        let result = self.socket()?.table();
        if matches!(
            result,
            Err(NetlinkError::Io { .. } | NetlinkError::Decode(_))
        ) {
            self.sock = None;
        }
        Ok(result?)
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), ApplyError>> {
        let sock = match self.socket() {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                return ops
                    .iter()
                    .map(|op| {
                        Err(ApplyError::Refused {
                            op: op.to_string(),
                            reason: msg.clone(),
                        })
                    })
                    .collect();
            }
        };
        let reqs: Vec<IpvsRequest> = ops.iter().map(Op::request).collect();
        let results: Vec<_> = sock
            .execute_batch(&reqs)
            .into_iter()
            .map(|r| r.map_err(ApplyError::from))
            .collect();
        if results
            .iter()
            .any(|r| matches!(r, Err(ApplyError::Netlink(NetlinkError::Io { .. }))))
        {
            self.sock = None;
        }
        results
    }
}

#[derive(Debug, Default)]
struct Recorded {
    kernel: IpvsState,
    log: Vec<Op>,
    fail_next: Vec<String>,
}

/// A fake kernel for tests: keeps an IPVS table in memory with the kernel's rules (no duplicate service,
/// no destination without its service) and records every operation it was given. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct RecordingApplier {
    inner: Arc<Mutex<Recorded>>,
}

impl RecordingApplier {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Every operation applied so far, in order.
    pub fn log(&self) -> Vec<Op> {
        self.with(|r| r.log.clone())
    }

    pub fn clear_log(&self) {
        self.with(|r| r.log.clear())
    }

    /// The fake kernel's table.
    pub fn state(&self) -> IpvsState {
        self.with(|r| r.kernel.clone())
    }

    /// Changes the table behind the agent's back (like someone running ipvsadm).
    pub fn tamper(&self, f: impl FnOnce(&mut IpvsState)) {
        self.with(|r| f(&mut r.kernel))
    }

    /// Makes the next operation fail with `reason` (once).
    pub fn fail_next(&self, reason: &str) {
        self.with(|r| r.fail_next.push(reason.to_owned()))
    }
}

fn refused(op: &Op, reason: &str) -> Result<(), ApplyError> {
    Err(ApplyError::Refused {
        op: op.to_string(),
        reason: reason.to_owned(),
    })
}

fn apply_to(kernel: &mut IpvsState, op: &Op) -> Result<(), ApplyError> {
    let svcs = &mut kernel.services;
    match op {
        Op::AddService(s) => {
            if svcs.contains_key(&s.key) {
                return refused(op, "File exists");
            }
            svcs.insert(
                s.key,
                ServiceState {
                    service: s.clone(),
                    dests: BTreeMap::new(),
                },
            );
        }
        Op::EditService(s) => match svcs.get_mut(&s.key) {
            Some(have) => have.service = s.clone(),
            None => return refused(op, "No such process"),
        },
        Op::DelService(k) => {
            if svcs.remove(k).is_none() {
                return refused(op, "No such process");
            }
        }
        Op::AddDest(k, d) => match svcs.get_mut(k) {
            Some(have) if have.dests.contains_key(&d.key) => return refused(op, "File exists"),
            Some(have) => {
                have.dests.insert(d.key, *d);
            }
            None => return refused(op, "No such process"),
        },
        Op::EditDest(k, d) => match svcs.get_mut(k).and_then(|s| s.dests.get_mut(&d.key)) {
            Some(have) => *have = *d,
            None => return refused(op, "No such file or directory"),
        },
        Op::DelDest(k, dk) => {
            if svcs.get_mut(k).and_then(|s| s.dests.remove(dk)).is_none() {
                return refused(op, "No such file or directory");
            }
        }
    }
    Ok(())
}

impl Applier for RecordingApplier {
    fn observe(&mut self) -> Result<IpvsTable, ApplyError> {
        Ok(self.with(|r| IpvsTable {
            services: r
                .kernel
                .services
                .values()
                .map(|s| {
                    (
                        ServiceEntry {
                            service: s.service.clone(),
                            stats: Stats::default(),
                        },
                        s.dests
                            .values()
                            .map(|d| DestEntry {
                                dest: *d,
                                active_conns: 0,
                                inactive_conns: 0,
                                persist_conns: 0,
                                stats: Stats::default(),
                            })
                            .collect(),
                    )
                })
                .collect(),
        }))
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), ApplyError>> {
        self.with(|r| {
            ops.iter()
                .map(|op| {
                    r.log.push(op.clone());
                    if !r.fail_next.is_empty() {
                        let reason = r.fail_next.remove(0);
                        return refused(op, &reason);
                    }
                    apply_to(&mut r.kernel, op)
                })
                .collect()
        })
    }
}

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
    let plan = plan(desired, &IpvsState::from(&before));
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
