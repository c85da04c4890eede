//! Where plans go: `NetlinkApplier` (the kernel over generic netlink) and `RecordingApplier` (an in-memory
//! kernel for tests and benchmarks that records every operation).

use std::sync::{Arc, Mutex};

use super::plan::Op;
use super::state::{IpvsState, ServiceState};
use crate::ipvs::codec::IpvsRequest;
use crate::ipvs::IpvsSocket;
use crate::ipvs::{DestEntry, IpvsTable, ServiceEntry, Stats};
use crate::netlink::NetlinkError;

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

/// Present only while the kernel has IPVS loaded.
const PROC_IP_VS: &str = "/proc/net/ip_vs";

impl Applier for NetlinkApplier {
    fn observe(&mut self) -> Result<IpvsTable, ApplyError> {
        // A kernel without ip_vs holds no virtual services: nothing to read, and no reason to open (and so
        // maybe load) IPVS. A role with no services therefore never touches it; VRRP works without ip_vs.
        if self.sock.is_none() && !std::path::Path::new(PROC_IP_VS).exists() {
            return Ok(IpvsTable::default());
        }
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

pub(super) fn apply_to(kernel: &mut IpvsState, op: &Op) -> Result<(), ApplyError> {
    let svcs = &mut kernel.services;
    match op {
        Op::AddService(s) => {
            if svcs.contains_key(&s.key) {
                return refused(op, "File exists");
            }
            svcs.insert(s.key, ServiceState::new(s.clone(), Vec::new()));
        }
        Op::EditService(s) => match svcs.get_mut(&s.key) {
            Some(have) => have.set_service(s.clone()),
            None => return refused(op, "No such process"),
        },
        Op::DelService(k) => {
            if svcs.remove(k).is_none() {
                return refused(op, "No such process");
            }
        }
        Op::AddDest(k, d) => match svcs.get_mut(k).map(|have| have.put_dest(*d, false)) {
            Some(true) => {}
            Some(false) => return refused(op, "File exists"),
            None => return refused(op, "No such process"),
        },
        Op::EditDest(k, d) => {
            if svcs.get_mut(k).map(|have| have.put_dest(*d, true)) != Some(true) {
                return refused(op, "No such file or directory");
            }
        }
        Op::DelDest(k, dk) => {
            if svcs.get_mut(k).and_then(|s| s.remove_dest(dk)).is_none() {
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
                            service: s.service().clone(),
                            stats: Stats::default(),
                        },
                        s.dests()
                            .iter()
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
