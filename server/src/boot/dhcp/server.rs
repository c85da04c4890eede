//! The DHCP socket loop around the sans-IO engine.
//!
//! One task receives and decides (the lease table lives only here, so no locks); a writer task makes lease
//! changes durable in SQLite and only then sends the ACKs that depend on them. While the writer commits one
//! batch, the next batch queues up behind it: group commit without a timer, so one transaction carries every
//! ACK of the last few milliseconds under load, and a lone ACK goes out after a single small commit.
//! OFFERs and NAKs promise nothing durable and leave at once.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dhcproto::v4::MessageType;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::{
    handle_datagram, Decision, Destination, DhcpConfig, Lease, LeaseChange, LeaseState, LeaseTable,
    MacAddr, ReservationMap, CLIENT_PORT,
};
use crate::fleet::Fleet;
use crate::store::{self, leases::LeaseRow, now_ms};

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub replies: AtomicU64,
    pub acks: AtomicU64,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
    pub leases_written: AtomicU64,
    pub write_failures: AtomicU64,
}

/// Lease changes to make durable, and the reply waiting for them.
#[derive(Debug)]
struct Pending {
    changes: Vec<LeaseChange>,
    reply: Option<(Vec<u8>, SocketAddr)>,
}

fn lease_row(l: &Lease) -> LeaseRow {
    LeaseRow {
        address: l.address.to_string(),
        mac: l.mac.to_string(),
        state: match l.state {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Declined => "declined",
        }
        .to_owned(),
        expires_at: i64::try_from(l.expires_at).unwrap_or(i64::MAX),
    }
}

fn parse_mac(text: &str) -> Option<MacAddr> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut bytes {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(MacAddr(bytes))
}

fn lease_from_row(r: &LeaseRow) -> Option<Lease> {
    Some(Lease {
        address: r.address.parse().ok()?,
        mac: parse_mac(&r.mac)?,
        state: match r.state.as_str() {
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            _ => return None,
        },
        expires_at: u64::try_from(r.expires_at).ok()?,
    })
}

/// Only bound and declined leases are written: an offer holds an address for a minute and is worth nothing
/// after a restart.
fn durable(changes: Vec<LeaseChange>) -> Vec<LeaseChange> {
    changes
        .into_iter()
        .filter(|c| !matches!(c, LeaseChange::Upsert(l) if l.state == LeaseState::Offered))
        .collect()
}

/// Registered nodes with fixed addresses, and MACs that must not be served.
async fn load_reservations(
    fleet: &Fleet,
) -> Result<(ReservationMap, HashSet<MacAddr>), store::StoreError> {
    let mut conn = fleet.store().read().await?;
    let mut map = ReservationMap::default();
    for (mac, address, hostname) in store::leases::reservations(&mut conn).await? {
        match (parse_mac(&mac), address.parse::<Ipv4Addr>()) {
            (Some(m), Ok(a)) => map.insert(m, a, hostname),
            _ => tracing::warn!(mac, address, "unusable reservation skipped"),
        }
    }
    for mac in store::leases::registered_macs(&mut conn).await? {
        if let Some(m) = parse_mac(&mac) {
            map.register(m);
        }
    }
    let refused = store::leases::refused_macs(&mut conn)
        .await?
        .iter()
        .filter_map(|m| parse_mac(m))
        .collect();
    Ok((map, refused))
}

fn destination(d: &Destination) -> SocketAddr {
    match d {
        Destination::Relay(a) | Destination::Unicast(a) => SocketAddr::V4(*a),
        // Without a raw socket we cannot address a frame to a MAC whose owner has no IP yet; broadcast reaches
        // it, and every PXE ROM, iPXE and Linux client accepts a broadcast reply.
        Destination::Broadcast | Destination::LinkUnicast { .. } => {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT))
        }
    }
}

/// Serves DHCP on `socket` (bound to port 67 on the boot interface, broadcast enabled) until `shutdown`.
pub async fn run(
    socket: UdpSocket,
    cfg: DhcpConfig,
    fleet: Arc<Fleet>,
    stats: Arc<DhcpStats>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("DHCP config: {e}")))?;
    let to_io = |e: store::StoreError| io::Error::other(e.to_string());
    let rows = {
        let mut conn = fleet.store().read().await.map_err(to_io)?;
        store::leases::active(&mut conn, now_ms())
            .await
            .map_err(to_io)?
    };
    let mut table = LeaseTable::restore(rows.iter().filter_map(lease_from_row));
    let (mut reservations, mut refused) = load_reservations(&fleet).await.map_err(to_io)?;
    tracing::info!(local = %socket.local_addr()?, leases = table.len(), "DHCP listening");

    let socket = Arc::new(socket);
    let (write_tx, write_rx) = mpsc::channel::<Pending>(8192);
    let writer = tokio::spawn(writer(
        write_rx,
        fleet.clone(),
        socket.clone(),
        stats.clone(),
    ));
    // Unknown MACs become discovered nodes off the hot path; a full queue drops the record (the node is
    // recorded on its next DISCOVER or when it fetches its boot script).
    let (discover_tx, mut discover_rx) = mpsc::channel::<MacAddr>(64);
    let discoverer = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            while let Some(mac) = discover_rx.recv().await {
                if let Err(e) = fleet.discover(&mac.to_string()).await {
                    tracing::debug!(%mac, error = %e, "not recorded as discovered");
                }
            }
        })
    };
    let mut known: HashSet<MacAddr> = HashSet::new();
    let mut discovery_budget = RateLimit::new(DISCOVERY_PER_SECOND);
    let mut fleet_changes = fleet.notifier().subscribe_fleet();
    let mut buf = vec![0u8; 1500];

    loop {
        let (len, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "DHCP receive failed");
                    continue;
                }
            },
            Ok(()) = fleet_changes.changed() => {
                // A node was registered, approved, retired...: refresh the reservation snapshot.
                match load_reservations(&fleet).await {
                    Ok((r, x)) => (reservations, refused) = (r, x),
                    Err(e) => tracing::error!(error = %e, "cannot reload DHCP reservations"),
                }
                continue;
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let bytes = &buf[..len];
        // chaddr lives at bytes 28..34 of every BOOTP packet; refuse retired/rejected nodes before deciding.
        if let Some(mac) = bytes.get(28..34).and_then(MacAddr::from_chaddr) {
            if refused.contains(&mac) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%mac, "DHCP request from a retired or rejected node ignored");
                continue;
            }
        }
        match handle_datagram(
            bytes,
            now_ms().max(0) as u64,
            &mut table,
            &cfg,
            &reservations,
        ) {
            Decision::Reply(reply) => {
                let kind = reply.message_type();
                let dest = destination(&reply.destination);
                let encoded = match reply.encode() {
                    Ok(b) => b,
                    Err(e) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, error = %e, "DHCP reply could not be encoded");
                        continue;
                    }
                };
                let mac = MacAddr::from_chaddr(
                    &reply.message.chaddr()[..6.min(reply.message.chaddr().len())],
                );
                let changes = durable(reply.lease_changes);
                if kind == Some(MessageType::Ack) && !changes.is_empty() {
                    if write_tx
                        .send(Pending {
                            changes,
                            reply: Some((encoded, dest)),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                } else {
                    if let Err(e) = socket.send_to(&encoded, dest).await {
                        tracing::warn!(%dest, error = %e, "DHCP send failed");
                    }
                    stats.replies.fetch_add(1, Ordering::Relaxed);
                    if !changes.is_empty()
                        && write_tx
                            .send(Pending {
                                changes,
                                reply: None,
                            })
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                if kind == Some(MessageType::Offer) {
                    if let Some(mac) = mac {
                        if reservations_lacks(&reservations, mac)
                            && !known.contains(&mac)
                            && known.len() < 1_000_000
                            && discovery_budget.take()
                        {
                            known.insert(mac);
                            let _ = discover_tx.try_send(mac);
                        }
                    }
                }
            }
            Decision::Record { lease_changes } => {
                let changes = durable(lease_changes);
                if !changes.is_empty()
                    && write_tx
                        .send(Pending {
                            changes,
                            reply: None,
                        })
                        .await
                        .is_err()
                {
                    break;
                }
            }
            Decision::Drop { reason } => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                // Malformed packets are worth a warning; the other reasons (a request for another server, the
                // discovery cap) are ordinary on a shared segment and stay at debug.
                if matches!(reason, super::DropReason::Decode(_)) {
                    tracing::warn!(%peer, %reason, len, "malformed DHCP packet dropped");
                } else {
                    tracing::debug!(%peer, %reason, "DHCP request dropped");
                }
            }
        }
    }
    drop(write_tx);
    drop(discover_tx);
    // Let the writer flush what is queued: those ACKs were promised to clients that are waiting.
    let _ = writer.await;
    discoverer.abort();
    Ok(())
}

/// New MACs recorded as discovered nodes per second at most: the database is not the place to absorb a flood.
const DISCOVERY_PER_SECOND: u32 = 20;

/// A per-second budget (fixed window): cheap, and precise enough for a flood guard.
#[derive(Debug)]
struct RateLimit {
    per_second: u32,
    used: u32,
    window: std::time::Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            used: 0,
            window: std::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        if self.window.elapsed() >= std::time::Duration::from_secs(1) {
            self.window = std::time::Instant::now();
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

fn reservations_lacks(r: &ReservationMap, mac: MacAddr) -> bool {
    use super::Reservations;
    r.by_mac(mac).is_none()
}

/// Writes queued lease changes in one transaction per batch, then sends the replies that waited for them.
async fn writer(
    mut rx: mpsc::Receiver<Pending>,
    fleet: Arc<Fleet>,
    socket: Arc<UdpSocket>,
    stats: Arc<DhcpStats>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let written: usize = batch.iter().map(|p| p.changes.len()).sum();
        match write_batch(&fleet, &batch).await {
            Ok(()) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .leases_written
                    .fetch_add(written as u64, Ordering::Relaxed);
                for p in batch.drain(..) {
                    if let Some((bytes, dest)) = p.reply {
                        if let Err(e) = socket.send_to(&bytes, dest).await {
                            tracing::warn!(%dest, error = %e, "DHCP send failed");
                        }
                        stats.replies.fetch_add(1, Ordering::Relaxed);
                        stats.acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                // Not durable, so not acknowledged: clients retry and the engine repeats the same change.
                stats.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, leases = written, "lease write failed; ACKs withheld");
                batch.clear();
            }
        }
    }
}

async fn write_batch(fleet: &Fleet, batch: &[Pending]) -> Result<(), store::StoreError> {
    let mut tx = fleet.store().begin().await?;
    // Runs of upserts go out as multi-row statements (a statement is a round trip to SQLite's thread); a
    // removal ends the run, so the changes still apply in order.
    let mut run: Vec<LeaseRow> = Vec::new();
    for change in batch.iter().flat_map(|p| &p.changes) {
        match change {
            LeaseChange::Upsert(l) => run.push(lease_row(l)),
            LeaseChange::Remove { address, mac } => {
                store::leases::upsert_many(&mut tx, &run).await?;
                run.clear();
                store::leases::remove(&mut tx, &address.to_string(), &mac.to_string()).await?
            }
        }
    }
    store::leases::upsert_many(&mut tx, &run).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rows_round_trip_and_offers_are_not_durable() {
        let l = Lease {
            address: Ipv4Addr::new(198, 18, 1, 7),
            mac: MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            state: LeaseState::Bound,
            expires_at: 1_000,
        };
        let row = lease_row(&l);
        assert_eq!(
            (row.mac.as_str(), row.state.as_str()),
            ("52:54:00:ab:cd:ef", "bound")
        );
        assert_eq!(lease_from_row(&row), Some(l.clone()));
        let offered = Lease {
            state: LeaseState::Offered,
            ..l.clone()
        };
        let kept = durable(vec![
            LeaseChange::Upsert(offered),
            LeaseChange::Upsert(l.clone()),
            LeaseChange::Remove {
                address: l.address,
                mac: l.mac,
            },
        ]);
        assert_eq!(kept.len(), 2);
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:zz"), None);
    }
}
