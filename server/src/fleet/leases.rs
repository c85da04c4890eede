//! The durable side of DHCP: restoring the lease table at start, fixed addresses of registered nodes, MACs that
//! must not be served, and group commits of lease changes. The lease decisions themselves live in `boot::dhcp`.

use super::Fleet;
use crate::store::leases::{leaders, leaders::LeaderRow, LeaseRow};
use crate::store::{self, StoreError};

/// One durable change to the lease table, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWrite {
    Upsert(LeaseRow),
    Remove { address: String, mac: String },
}

/// Fixed addresses of registered nodes and the MACs that get no answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpReservations {
    /// (MAC, address, hostname) of nodes with a reserved address.
    pub fixed: Vec<(String, String, Option<String>)>,
    /// MACs of registered (approved) nodes: they boot outside the DHCP discovery budget.
    pub registered: Vec<String>,
    /// MACs of retired and rejected nodes.
    pub refused: Vec<String>,
    /// (MAC, relay circuit-id) of nodes whose requests must arrive through that relay circuit (option 82).
    pub circuit_pins: Vec<(String, Vec<u8>)>,
}

impl Fleet {
    /// Leases still worth restoring (bound or declined, not expired at `now_ms`).
    pub async fn active_leases(&self, now_ms: i64) -> Result<Vec<LeaseRow>, StoreError> {
        let mut conn = self.store.read().await?;
        store::leases::active(&mut conn, now_ms).await
    }

    /// What DHCP must know about registered nodes.
    pub async fn dhcp_reservations(&self) -> Result<DhcpReservations, StoreError> {
        let mut conn = self.store.read().await?;
        Ok(DhcpReservations {
            fixed: store::leases::reservations(&mut conn).await?,
            registered: store::leases::registered_macs(&mut conn).await?,
            refused: store::leases::refused_macs(&mut conn).await?,
            circuit_pins: store::boot_trust::circuit_pins(&mut conn).await?,
        })
    }

    /// True when `mac` holds a bound, unexpired lease on `address` (the boot-trust check for enrollment tokens).
    pub async fn lease_bound_to(&self, mac: &str, address: &str) -> Result<bool, StoreError> {
        let mut conn = self.store.read().await?;
        store::leases::bound_to(&mut conn, mac, address, store::now_ms()).await
    }

    /// Writes lease changes in one transaction, in order. Runs of upserts go out as multi-row statements (a
    /// statement is a round trip to SQLite's thread); a removal ends the run.
    pub async fn write_leases(&self, changes: Vec<LeaseWrite>) -> Result<(), StoreError> {
        self.write_leases_fenced(None, changes).await.map(|_| ())
    }

    /// `write_leases`, in a transaction that first proves `fence` still holds its boot network
    /// (`store::leases::leaders::fence`): `Ok(false)`, and nothing written, when another server took it over.
    pub async fn write_leases_fenced(
        &self,
        fence: Option<&LeaseFence>,
        changes: Vec<LeaseWrite>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        if let Some(f) = fence {
            if !leaders::fence(&mut tx, &f.network, &f.holder, f.epoch).await? {
                return Ok(false);
            }
        }
        let mut run: Vec<LeaseRow> = Vec::new();
        for change in changes {
            match change {
                LeaseWrite::Upsert(row) => run.push(row),
                LeaseWrite::Remove { address, mac } => {
                    store::leases::upsert_many(&mut tx, &run).await?;
                    run.clear();
                    store::leases::remove(&mut tx, &address, &mac).await?;
                }
            }
        }
        store::leases::upsert_many(&mut tx, &run).await?;
        store::commit(tx).await?;
        Ok(true)
    }

    /// The DHCP leadership row of `network` (`boot::dhcp::leader`).
    pub async fn dhcp_leader(&self, network: &str) -> Result<Option<LeaderRow>, StoreError> {
        let mut conn = self.store.read().await?;
        leaders::get(&mut conn, network).await
    }

    /// Every boot network's DHCP leadership row.
    pub async fn dhcp_leaders(&self) -> Result<Vec<LeaderRow>, StoreError> {
        let mut conn = self.store.read().await?;
        leaders::all(&mut conn).await
    }

    /// Claims `network`'s DHCP leadership: when `expected` is `None`, only if nobody ever held it; else only
    /// if the row is still `(holder, seq)` as last seen. The new epoch, or `None` when the claim lost.
    pub async fn claim_dhcp_leader(
        &self,
        claim: &LeaderClaim,
        expected: Option<(&str, i64)>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.store.begin().await?;
        let now = store::now_ms();
        let epoch = match expected {
            None => {
                leaders::claim_vacant(
                    &mut tx,
                    &claim.network,
                    &claim.holder,
                    &claim.holder_address,
                    claim.ttl_ms,
                    now,
                )
                .await?
            }
            Some((holder, seq)) => {
                leaders::take_over(
                    &mut tx,
                    &claim.network,
                    &claim.holder,
                    &claim.holder_address,
                    holder,
                    seq,
                    claim.ttl_ms,
                    now,
                )
                .await?
            }
        };
        store::commit(tx).await?;
        Ok(epoch)
    }

    /// Renews `fence`'s term: false when another server took the network over.
    pub async fn renew_dhcp_leader(&self, fence: &LeaseFence) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        let held = leaders::renew(
            &mut tx,
            &fence.network,
            &fence.holder,
            fence.epoch,
            store::now_ms(),
        )
        .await?;
        store::commit(tx).await?;
        Ok(held)
    }

    /// Gives the network up (graceful shutdown), so a standby need not wait for the TTL.
    pub async fn release_dhcp_leader(&self, fence: &LeaseFence) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        let released =
            leaders::release(&mut tx, &fence.network, &fence.holder, fence.epoch).await?;
        store::commit(tx).await?;
        Ok(released)
    }
}

/// The DHCP leadership a lease write must still hold: boot network, this server's holder id, its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFence {
    pub network: String,
    pub holder: String,
    pub epoch: i64,
}

/// Who claims a boot network's DHCP leadership, and the TTL it promises to renew within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderClaim {
    pub network: String,
    pub holder: String,
    pub holder_address: String,
    pub ttl_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, fleet};
    use super::*;

    fn row(address: &str, mac: &str, expires_at: i64) -> LeaseRow {
        LeaseRow {
            address: address.into(),
            mac: mac.into(),
            state: "bound".into(),
            expires_at,
        }
    }

    #[tokio::test]
    async fn lease_writes_apply_in_order_and_reservations_follow_nodes() {
        let (f, _dir) = fleet().await;
        let (a, b) = ("52:54:00:00:00:01", "52:54:00:00:00:02");
        f.write_leases(vec![
            LeaseWrite::Upsert(row("198.18.1.1", a, 10_000)),
            LeaseWrite::Remove {
                address: "198.18.1.1".into(),
                mac: a.into(),
            },
            LeaseWrite::Upsert(row("198.18.1.2", b, 10_000)),
            LeaseWrite::Upsert(row("198.18.1.3", a, 500)),
        ])
        .await
        .expect("write");
        let active = f.active_leases(1_000).await.expect("active");
        assert_eq!(active, vec![row("198.18.1.2", b, 10_000)]);

        f.register_node(&admin(), a, Some("lb-01"), None, Some("198.18.1.50"))
            .await
            .expect("register");
        f.discover(b).await.expect("discover");
        f.reject(&admin(), &crate::store::nodes::NodeKey::Mac(b.into()))
            .await
            .expect("reject");
        let r = f.dhcp_reservations().await.expect("reservations");
        assert_eq!(
            r.fixed,
            vec![(
                a.to_owned(),
                "198.18.1.50".to_owned(),
                Some("lb-01".to_owned())
            )]
        );
        assert_eq!(r.refused, vec![b.to_owned()]);
    }
}
