//! The reconciler: desired IPVS state (role document + health results) against observed state (kernel dump)
//! gives a `ReconcilePlan` of minimal operations, applied through an `Applier`. It never flushes: equal state
//! is an empty plan, a weight change is one operation, and whatever is not in the role is deleted one by one.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use lbfleet_proto::{DownAction, RoleDocument};
use tracing::{debug, warn};

use crate::ipvs::codec::IpvsRequest;
use crate::ipvs::IpvsSocket;
use crate::ipvs::{
    DestEntry, DestKey, Destination, Forward, IpvsTable, Service, ServiceEntry, ServiceKey, Stats,
    SVC_F_PERSISTENT, SVC_F_USER_MASK,
};
use crate::netlink::NetlinkError;

/// One service and its destinations, as wanted or as found, with a fingerprint of what the planner compares.
///
/// The content is private so the fingerprint always matches it: it is computed when the state is built and
/// recomputed by every method that changes it. Destinations are kept in a vector sorted by key (cheaper to
/// build and walk than a map; a service has tens of them, not thousands). Cloning shares the content until
/// one side changes it, so cloning a whole table costs one reference count per service.
#[derive(Debug, Clone, Eq)]
pub struct ServiceState {
    /// Next to the shared content, so the planner's comparison reads no further.
    fingerprint: u64,
    inner: Arc<ServiceInner>,
}

#[derive(Debug, Clone, Eq, PartialEq)]
struct ServiceInner {
    service: Service,
    dests: Vec<Destination>,
}

impl PartialEq for ServiceState {
    /// Exact equality (kernel-only flags included). Equal states always have equal fingerprints, so differing
    /// fingerprints settle it without looking further.
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && (Arc::ptr_eq(&self.inner, &other.inner) || self.inner == other.inner)
    }
}

impl ServiceState {
    /// A service and its destinations, in any order; of two destinations with the same key the later wins.
    pub fn new(service: Service, mut dests: Vec<Destination>) -> ServiceState {
        if !dests.windows(2).all(|w| w[0].key < w[1].key) {
            // Stable, so equal keys keep their order; `dedup_by` hands (later, kept): keep the later value.
            dests.sort_by_key(|d| d.key);
            dests.dedup_by(|later, kept| {
                if later.key == kept.key {
                    *kept = *later;
                    true
                } else {
                    false
                }
            });
        }
        let fingerprint = fingerprint(&service, &dests);
        ServiceState {
            fingerprint,
            inner: Arc::new(ServiceInner { service, dests }),
        }
    }

    pub fn service(&self) -> &Service {
        &self.inner.service
    }

    /// The destinations, sorted by key, each key once.
    pub fn dests(&self) -> &[Destination] {
        &self.inner.dests
    }

    pub fn dest(&self, key: &DestKey) -> Option<&Destination> {
        let dests = &self.inner.dests;
        dests
            .binary_search_by_key(key, |d| d.key)
            .ok()
            .and_then(|i| dests.get(i))
    }

    /// A 64-bit digest of what decides whether the planner has anything to do for this service: the service
    /// as `same_service` compares it (kernel-only flags, and persistence settings of a non-persistent
    /// service, left out) and every destination exactly. Equal fingerprints mean no change (up to a 2^-64
    /// chance of a collision between the two states compared; it is not a cryptographic hash).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn set_service(&mut self, service: Service) {
        let inner = Arc::make_mut(&mut self.inner);
        inner.service = service;
        self.fingerprint = inner.fingerprint();
    }

    /// Adds or replaces a destination; returns the one it replaced.
    pub fn insert_dest(&mut self, dest: Destination) -> Option<Destination> {
        let old = self.dest(&dest.key).copied();
        self.put_dest(dest, old.is_some());
        old
    }

    /// Replaces the destination with `dest`'s key (`exists`) or adds it (`!exists`), with one search; does
    /// nothing and returns false when the destination's presence is not what `exists` says.
    fn put_dest(&mut self, dest: Destination, exists: bool) -> bool {
        match self.inner.dests.binary_search_by_key(&dest.key, |d| d.key) {
            Ok(i) if exists => Arc::make_mut(&mut self.inner).dests[i] = dest,
            Err(i) if !exists => Arc::make_mut(&mut self.inner).dests.insert(i, dest),
            _ => return false,
        }
        self.fingerprint = self.inner.fingerprint();
        true
    }

    pub fn remove_dest(&mut self, key: &DestKey) -> Option<Destination> {
        let i = self.inner.dests.binary_search_by_key(key, |d| d.key).ok()?;
        let inner = Arc::make_mut(&mut self.inner);
        let old = inner.dests.remove(i);
        self.fingerprint = inner.fingerprint();
        Some(old)
    }
}

impl ServiceInner {
    fn fingerprint(&self) -> u64 {
        fingerprint(&self.service, &self.dests)
    }
}

/// A fast, deterministic 64-bit hasher for fingerprints (not a cryptographic one): each word is mixed in with
/// a multiply by an odd constant and a xor-shift, both bijective, so two word sequences of the same length
/// that differ in a single word never collide; otherwise two different contents collide with a chance of
/// about 2^-64. A collision would make the planner skip that service's change.
#[derive(Debug)]
struct FingerprintHasher(u64);

impl FingerprintHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        let h = (self.0 ^ w).wrapping_mul(Self::K);
        self.0 = h ^ (h >> 32);
    }
}

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The length first, so zero padding of the last chunk cannot make two inputs alike.
        self.word(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.word(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.word(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.word(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.word(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.word(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn fingerprint(service: &Service, dests: &[Destination]) -> u64 {
    let mut h = FingerprintHasher(0);
    // Exactly what `same_service` compares.
    service.scheduler.hash(&mut h);
    (service.flags & SVC_F_USER_MASK).hash(&mut h);
    service.pe_name.hash(&mut h);
    if service.persistent() {
        h.word(u64::from(service.timeout_s) | u64::from(service.netmask_prefix) << 32);
    }
    h.word(dests.len() as u64);
    // Every field of every destination, packed into few words. The first word of each says whether one or
    // two address words follow, so no two different lists give the same sequence of words.
    for d in dests {
        let v6 = matches!(d.key.addr, IpAddr::V6(_));
        h.word(
            u64::from(v6)
                | u64::from(d.forward.to_raw()) << 8
                | u64::from(d.key.port) << 16
                | u64::from(d.weight) << 32,
        );
        match d.key.addr {
            IpAddr::V4(a) => h.word(u64::from(u32::from(a))),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                h.word(a as u64);
                h.word((a >> 64) as u64);
            }
        }
        h.word(u64::from(d.u_threshold) | u64::from(d.l_threshold) << 32);
    }
    h.finish()
}

/// A whole IPVS table keyed for diffing. Each service is stored under its own key.
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
                        ServiceState::new(service, dests.iter().map(|d| d.dest).collect()),
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

/// `str::parse::<IpAddr>`, with a quicker path for the common case, a plain dotted quad (`198.18.2.1`). The
/// quick path accepts only what the standard parser accepts (1 to 3 digits per octet, no leading zero, at
/// most 255), with the same result; anything else goes to the standard parser.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.as_bytes().split(|&b| b == b'.') {
        let fits = n < 4
            && (1..=3).contains(&part.len())
            && part.iter().all(u8::is_ascii_digit)
            && (part.len() == 1 || part[0] != b'0');
        if !fits {
            return s.parse().ok();
        }
        let v = part.iter().fold(0u16, |v, &b| v * 10 + u16::from(b - b'0'));
        let Ok(v) = u8::try_from(v) else {
            return s.parse().ok();
        };
        octets[n] = v;
        n += 1;
    }
    if n != 4 {
        return s.parse().ok();
    }
    Some(IpAddr::from(octets))
}

/// The kernel state a role asks for. A drained (`enabled = false`) real server gets weight 0, so its existing
/// connections finish; so does one its check marked down, unless the service's `on_down` is `remove` (then it
/// is left out). While no real server has a weight above 0, the service's sorry server (if any) is added
/// with weight 1. Entries the kernel could not hold (bad addresses) are skipped and named
/// in the returned errors.
pub fn desired_state(role: &RoleDocument, health: &HealthResults) -> (IpvsState, Vec<String>) {
    desired_state_reusing(role, health, None)
}

/// `desired_state` for a new role generation, reusing the entries of `previous` (an earlier role and the state
/// built from it, with the same health results) for every service the role did not change: a role change
/// usually touches one service, and rebuilding the others (parsing every address again) was most of the
/// daemon's work for a one-destination change. A reused service is exactly what a rebuild would give: same
/// position in the role, equal `VirtualService`, built from that one service, and it had no skipped entries
/// (those are rebuilt, so their errors are reported again).
pub fn desired_state_reusing(
    role: &RoleDocument,
    health: &HealthResults,
    previous: Option<(&RoleDocument, &IpvsState)>,
) -> (IpvsState, Vec<String>) {
    // Collected into vectors and turned into the map at once (sorted, then built bottom-up), which is cheaper
    // than inserting one entry at a time; on a duplicate key the later entry wins, as with inserts.
    let mut services = Vec::with_capacity(role.services.len());
    let mut errors = Vec::new();
    let any_failed = !health.failed.is_empty();
    // Only from a previous state with one entry per service of its role: with a bad VIP or a duplicate key
    // there, an entry could not be traced back to the one service it was built from.
    let reusable = previous.filter(|(r, st)| st.services.len() == r.services.len());
    for (index, vs) in role.services.iter().enumerate() {
        let addr = match parse_ip(&vs.vip) {
            Some(a) => a,
            None => {
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
        if let Some((prev_role, prev_state)) = reusable {
            if prev_role.services.get(index) == Some(vs) {
                if let Some(kept) = prev_state.services.get(&key) {
                    if kept.dests().len() == vs.real_servers.len() {
                        services.push((key, kept.clone()));
                        continue;
                    }
                }
            }
        }
        let mut service = Service::new(key, vs.scheduler.as_str());
        if vs.persistence_s > 0 {
            service.flags |= SVC_F_PERSISTENT;
            service.timeout_s = vs.persistence_s;
            if let Some(p) = vs.persistence_prefix {
                service.netmask_prefix = p.min(key.family().max_prefix());
            }
        }
        let forward = Forward::from(vs.forward);
        let mut dests = Vec::with_capacity(vs.real_servers.len());
        let mut in_service = false;
        for rs in &vs.real_servers {
            let Some(raddr) = parse_ip(&rs.address) else {
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
            let failed = any_failed && health.is_failed(&key, &dk);
            if failed && vs.check.on_down == DownAction::Remove {
                continue;
            }
            let weight = if rs.enabled && !failed { rs.weight } else { 0 };
            in_service |= weight > 0;
            dests.push(Destination::new(raddr, rs.port, forward, weight));
        }
        // The sorry server takes the traffic while no real server can.
        if let (false, Some(sorry)) = (in_service, &vs.check.sorry_server) {
            match parse_ip(&sorry.address) {
                Some(addr) => dests.push(Destination::new(addr, sorry.port, forward, 1)),
                None => errors.push(format!(
                    "service {key}: bad sorry server address {:?}",
                    sorry.address
                )),
            }
        }
        services.push((key, ServiceState::new(service, dests)));
    }
    let services = services.into_iter().collect();
    (IpvsState { services }, errors)
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

fn apply_to(kernel: &mut IpvsState, op: &Op) -> Result<(), ApplyError> {
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
