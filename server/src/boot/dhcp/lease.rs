//! The in-memory lease table the engine decides against, the changes it asks the caller to persist, and the
//! reservations (registered nodes' fixed addresses) the caller supplies.
//!
//! Leases are keyed by the Ethernet address, not by client identifier (option 61): one node boots through a
//! PXE ROM, iPXE and the initramfs's udhcpc, which use different client identifiers or none, and all three
//! must land on the same address.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// An Ethernet address: the one MAC type of the workspace (`lbfleet_proto::Mac`); `Display` is the lowercase
/// colon form used in boot URLs and the store.
pub use lbfleet_proto::Mac;

/// Milliseconds since the Unix epoch: the engine's only notion of time, supplied by the caller.
pub type UnixMillis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held for the client between OFFER and REQUEST; never persisted.
    Offered,
    /// Acknowledged; must be durable before the ACK leaves.
    Bound,
    /// A client reported the address in use by someone else; out of the pool until `expires_at`.
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub mac: Mac,
    pub state: LeaseState,
    /// End of the offer hold, of the lease, or of the quarantine, by state.
    pub expires_at: UnixMillis,
}

impl Lease {
    pub fn is_active(&self, now: UnixMillis) -> bool {
        now < self.expires_at
    }

    /// An offer or binding that still reserves its address for its MAC.
    pub fn is_held(&self, now: UnixMillis) -> bool {
        self.state != LeaseState::Declined && self.is_active(now)
    }
}

/// What the caller must write to the store (before sending the reply, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// Insert or replace the lease row for `lease.address`.
    Upsert(Lease),
    /// Delete the lease row for `address`.
    Remove { address: Ipv4Addr, mac: Mac },
}

/// Leases by address, with an index from MAC to the address it holds (offered or bound, possibly expired,
/// so a returning client gets its old address back while it is still free).
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    by_address: BTreeMap<Ipv4Addr, Lease>,
    by_mac: HashMap<Mac, Ipv4Addr>,
    /// Allocation hint: every pool address below this one was in the table when the allocator last looked,
    /// so the search for a never-used address resumes here instead of rescanning the whole pool (which made
    /// each new client O(leases)). Only a hint: addresses freed below it are still found by the fallback
    /// search over expired and free addresses.
    fresh_hint: std::cell::Cell<u32>,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the table from persisted leases at start-up. Should the store hold two rows for one MAC, the
    /// one that runs longest wins and the other is dropped from the index (it stays as a plain row).
    pub fn restore(leases: impl IntoIterator<Item = Lease>) -> Self {
        let mut table = Self::new();
        let mut leases: Vec<Lease> = leases.into_iter().collect();
        leases.sort_by_key(|l| l.expires_at);
        for lease in leases {
            table.insert(lease);
        }
        table
    }

    /// Where the search for a never-used pool address may start.
    pub fn fresh_hint(&self) -> u32 {
        self.fresh_hint.get()
    }

    /// Records that every pool address below `next` is taken.
    pub fn set_fresh_hint(&self, next: u32) {
        self.fresh_hint.set(next);
    }

    pub fn get(&self, address: Ipv4Addr) -> Option<&Lease> {
        self.by_address.get(&address)
    }

    /// The offer or binding (possibly expired) of `mac`.
    pub fn lease_of(&self, mac: Mac) -> Option<&Lease> {
        self.by_mac.get(&mac).and_then(|a| self.by_address.get(a))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_address.values()
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// Applies a change made elsewhere (e.g. another server sharing the store) to this table.
    pub fn apply(&mut self, change: &LeaseChange) {
        match change {
            LeaseChange::Upsert(lease) => {
                self.insert(lease.clone());
            }
            LeaseChange::Remove { address, .. } => {
                self.remove(*address);
            }
        }
    }

    /// Puts `lease` at its address, replacing whatever was there, and drops any other address indexed for
    /// the MAC (one MAC, one address). Returns the leases dropped at other addresses, whose rows the caller
    /// must delete.
    pub(crate) fn insert(&mut self, lease: Lease) -> Vec<Lease> {
        let mut evicted = Vec::new();
        self.remove(lease.address);
        if lease.state != LeaseState::Declined {
            if let Some(other) = self.by_mac.get(&lease.mac).copied() {
                if let Some(old) = self.remove(other) {
                    evicted.push(old);
                }
            }
            self.by_mac.insert(lease.mac, lease.address);
        }
        self.by_address.insert(lease.address, lease);
        evicted
    }

    pub(crate) fn remove(&mut self, address: Ipv4Addr) -> Option<Lease> {
        let lease = self.by_address.remove(&address)?;
        if self.by_mac.get(&lease.mac) == Some(&address) {
            self.by_mac.remove(&lease.mac);
        }
        Some(lease)
    }
}

/// A registered node's fixed address, and the hostname it is told (option 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Lookup of reservations in both directions: by MAC to answer a node, by address so a pool lease never
/// hands out an address that belongs to a registered node.
pub trait Reservations {
    fn by_mac(&self, mac: Mac) -> Option<Reservation>;
    fn holder_of(&self, address: Ipv4Addr) -> Option<Mac>;
    /// A registered (approved) node: it boots outside the discovery budget, so a flood of unknown MACs never
    /// blocks it. Reserved MACs are registered too.
    fn is_registered(&self, mac: Mac) -> bool {
        self.by_mac(mac).is_some()
    }
}

/// An in-memory reservation set, e.g. a snapshot of the registered nodes refreshed by the socket loop.
#[derive(Debug, Default, Clone)]
pub struct ReservationMap {
    by_mac: HashMap<Mac, Reservation>,
    by_address: HashMap<Ipv4Addr, Mac>,
    /// Registered nodes without a fixed address (they take pool addresses, outside the discovery budget).
    registered: std::collections::HashSet<Mac>,
}

impl ReservationMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `mac` as a registered node (see `Reservations::is_registered`).
    pub fn register(&mut self, mac: Mac) {
        self.registered.insert(mac);
    }

    /// Reserves `address` for `mac`, replacing an earlier reservation of either.
    pub fn insert(&mut self, mac: Mac, address: Ipv4Addr, hostname: Option<String>) {
        if let Some(old) = self.by_mac.remove(&mac) {
            self.by_address.remove(&old.address);
        }
        if let Some(old_mac) = self.by_address.insert(address, mac) {
            self.by_mac.remove(&old_mac);
        }
        self.by_mac.insert(mac, Reservation { address, hostname });
    }
}

impl Reservations for ReservationMap {
    fn by_mac(&self, mac: Mac) -> Option<Reservation> {
        self.by_mac.get(&mac).cloned()
    }

    fn holder_of(&self, address: Ipv4Addr) -> Option<Mac> {
        self.by_address.get(&address).copied()
    }

    fn is_registered(&self, mac: Mac) -> bool {
        self.by_mac.contains_key(&mac) || self.registered.contains(&mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);

    fn lease(address: Ipv4Addr, mac: u8, state: LeaseState, expires_at: u64) -> Lease {
        Lease {
            address,
            mac: Mac([2, 0, 0, 0, 0, mac]),
            state,
            expires_at,
        }
    }

    #[test]
    fn mac_display_and_validation() {
        assert_eq!(
            Mac([0x52, 0x54, 0, 0xAB, 0x3c, 0x0f]).to_string(),
            "52:54:00:ab:3c:0f"
        );
        assert!(Mac::from_unicast_bytes(&[0; 6]).is_none());
        assert!(Mac::from_unicast_bytes(&[0xff; 6]).is_none());
        assert!(Mac::from_unicast_bytes(&[1, 0, 0x5e, 0, 0, 1]).is_none());
        assert!(Mac::from_unicast_bytes(&[2, 0, 0, 0, 0]).is_none());
        assert_eq!(
            Mac::from_unicast_bytes(&[2, 0, 0, 0, 0, 1]),
            Some(Mac([2, 0, 0, 0, 0, 1]))
        );
    }

    #[test]
    fn one_address_per_mac() {
        let mut t = LeaseTable::new();
        t.insert(lease(A, 1, LeaseState::Bound, 10));
        let evicted = t.insert(lease(B, 1, LeaseState::Offered, 20));
        assert_eq!(evicted, vec![lease(A, 1, LeaseState::Bound, 10)]);
        assert!(t.get(A).is_none());
        assert_eq!(
            t.lease_of(Mac([2, 0, 0, 0, 0, 1])).map(|l| l.address),
            Some(B)
        );
    }

    #[test]
    fn declined_leases_are_not_indexed_by_mac() {
        let mut t = LeaseTable::new();
        t.insert(lease(A, 1, LeaseState::Declined, 10));
        assert!(t.lease_of(Mac([2, 0, 0, 0, 0, 1])).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn restore_keeps_the_longest_lease_per_mac() {
        let t = LeaseTable::restore([
            lease(B, 1, LeaseState::Bound, 50),
            lease(A, 1, LeaseState::Bound, 10),
        ]);
        assert_eq!(
            t.lease_of(Mac([2, 0, 0, 0, 0, 1])).map(|l| l.address),
            Some(B)
        );
    }

    #[test]
    fn reservation_map_is_one_to_one() {
        let mut r = ReservationMap::new();
        let m1 = Mac([2, 0, 0, 0, 0, 1]);
        let m2 = Mac([2, 0, 0, 0, 0, 2]);
        r.insert(m1, A, None);
        r.insert(m2, A, Some("lb-02".into()));
        assert!(r.by_mac(m1).is_none());
        assert_eq!(r.holder_of(A), Some(m2));
        r.insert(m2, B, None);
        assert_eq!(r.holder_of(A), None);
        assert_eq!(r.holder_of(B), Some(m2));
    }
}
