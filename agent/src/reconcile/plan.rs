//! The plan: the minimal IPVS operations that turn observed state into desired state.

use super::state::IpvsState;
use crate::ipvs::codec::IpvsRequest;
use crate::ipvs::{DestKey, Destination, Service, ServiceKey, SVC_F_USER_MASK};

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
        f.write_str(&crate::ipvs::describe(&self.request()))
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
pub(super) fn same_service(a: &Service, b: &Service) -> bool {
    let persistent = a.persistent();
    a.scheduler == b.scheduler
        && (a.flags & SVC_F_USER_MASK) == (b.flags & SVC_F_USER_MASK)
        && a.pe_name == b.pe_name
        && (!persistent || (a.timeout_s == b.timeout_s && a.netmask_prefix == b.netmask_prefix))
}

/// Diffs desired against observed. Order: delete destinations of kept services, delete services (the kernel
/// removes a deleted service's destinations with it, so they are not listed one by one), edit and add
/// services, then add and edit destinations (a service always exists before its destinations).
///
/// Both tables are walked once, side by side in key order; a service whose fingerprint is unchanged is
/// skipped with one comparison, so a change to one service costs little more than that walk.
pub fn plan(desired: &IpvsState, observed: &IpvsState) -> ReconcilePlan {
    plan_with(desired, observed, false)
}

/// `plan`, except that a service is only skipped once its content has been compared in full, not on its
/// fingerprint alone. The same plan, barring a fingerprint collision; full passes (start-up and every
/// resync), which read the whole kernel table anyway, use it so that even a collision is repaired.
pub fn plan_exact(desired: &IpvsState, observed: &IpvsState) -> ReconcilePlan {
    plan_with(desired, observed, true)
}

fn plan_with(desired: &IpvsState, observed: &IpvsState, exact: bool) -> ReconcilePlan {
    use std::cmp::Ordering;

    let mut del_dests = Vec::new();
    let mut del_services = Vec::new();
    let mut edit_services = Vec::new();
    let mut add_services = Vec::new();
    let mut add_dests = Vec::new();
    let mut edit_dests = Vec::new();

    let mut wants = desired.services.iter().peekable();
    let mut haves = observed.services.iter().peekable();
    loop {
        let order = match (wants.peek(), haves.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((wk, _)), Some((hk, _))) => wk.cmp(hk),
        };
        match order {
            Ordering::Greater => {
                if let Some((key, _)) = haves.next() {
                    del_services.push(Op::DelService(*key));
                }
            }
            Ordering::Less => {
                if let Some((key, want)) = wants.next() {
                    add_services.push(Op::AddService(want.service().clone()));
                    add_dests.extend(want.dests().iter().map(|d| Op::AddDest(*key, *d)));
                }
            }
            Ordering::Equal => {
                let (Some((key, want)), Some((_, have))) = (wants.next(), haves.next()) else {
                    break;
                };
                // The common case on a role change: most services are untouched.
                if want.fingerprint() == have.fingerprint()
                    && (!exact
                        || (same_service(want.service(), have.service())
                            && want.dests() == have.dests()))
                {
                    continue;
                }
                if !same_service(want.service(), have.service()) {
                    edit_services.push(Op::EditService(want.service().clone()));
                }
                diff_dests(
                    *key,
                    want.dests(),
                    have.dests(),
                    &mut del_dests,
                    &mut add_dests,
                    &mut edit_dests,
                );
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

/// The destination changes of one kept service, walking both sorted lists side by side.
fn diff_dests(
    key: ServiceKey,
    want: &[Destination],
    have: &[Destination],
    del_dests: &mut Vec<Op>,
    add_dests: &mut Vec<Op>,
    edit_dests: &mut Vec<Op>,
) {
    use std::cmp::Ordering;

    let mut wants = want.iter().peekable();
    let mut haves = have.iter().peekable();
    loop {
        let order = match (wants.peek(), haves.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(w), Some(h)) => w.key.cmp(&h.key),
        };
        match order {
            Ordering::Greater => {
                if let Some(h) = haves.next() {
                    del_dests.push(Op::DelDest(key, h.key));
                }
            }
            Ordering::Less => {
                if let Some(w) = wants.next() {
                    add_dests.push(Op::AddDest(key, *w));
                }
            }
            Ordering::Equal => {
                if let (Some(w), Some(h)) = (wants.next(), haves.next()) {
                    if w != h {
                        edit_dests.push(Op::EditDest(key, *w));
                    }
                }
            }
        }
    }
}
