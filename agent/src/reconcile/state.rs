//! A table as wanted or as found: one `ServiceState` per service (fingerprinted, shared on clone), the
//! `IpvsState` of them all, and the `HealthResults` the desired state is built with.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::ipvs::{DestKey, Destination, IpvsTable, Service, ServiceKey, SVC_F_USER_MASK};

/// One service and its destinations, as wanted or as found, with a fingerprint of what the planner compares.
///
/// The content is private so the fingerprint always matches it: it is computed when the state is built and
/// recomputed by every method that changes it. Destinations are kept in a vector sorted by key (cheaper to
/// build and walk than a map; a service has tens of them, not thousands). Cloning shares the content until
/// one side changes it, so cloning a whole table costs one reference count per service.
#[derive(Debug, Clone, Eq)]
pub struct ServiceState {
    /// Next to the shared content, so the planner's comparison reads no further.
    pub(super) fingerprint: u64,
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
    /// Whether both hold the same shared content (not merely equal content): a reused service.
    #[cfg(test)]
    pub(super) fn shares_content_with(&self, other: &ServiceState) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(super) fn put_dest(&mut self, dest: Destination, exists: bool) -> bool {
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
    pub(super) failed: HashSet<(ServiceKey, DestKey)>,
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
