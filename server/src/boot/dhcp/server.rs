//! The DHCP socket loop around the sans-IO engine.
//!
//! One task receives and decides (the lease table lives only here, so no locks); a writer task makes lease
//! changes durable in SQLite and only then sends the ACKs that depend on them. While the writer commits one
//! batch, the next batch queues up behind it: group commit without a timer, so one transaction carries every
//! ACK of the last few milliseconds under load, and a lone ACK goes out after a single small commit.
//! OFFERs and NAKs promise nothing durable and leave at once.
//!
//! Several servers may share one boot network (`leader`): only the active one answers, its lease writes are
//! fenced by its leadership epoch, and it reloads the lease table from the database each time it becomes
//! active, so it knows every lease the previous active acknowledged.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dhcproto::v4::MessageType;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::leader::{self, Leadership, Role, Timers};
use super::link::{self, CircuitCheck, CircuitPins, LinkSocket, SourceCheck};
use super::{
    Decision, Destination, DhcpConfig, Lease, LeaseChange, LeaseState, LeaseTable, Mac,
    ReservationMap, CLIENT_PORT,
};
use crate::boot::loglimit::LogLimit;
use crate::fleet::{Fleet, LeaderClaim, LeaseWrite};
use crate::store::{self, leases::LeaseRow, now_ms};

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub replies: AtomicU64,
    pub acks: AtomicU64,
    pub dropped: AtomicU64,
    /// Of `dropped`: undecodable datagrams and broken frames.
    pub malformed: AtomicU64,
    /// Of `dropped`: requests whose `chaddr` is not the address of the NIC that sent them.
    pub spoofed: AtomicU64,
    /// Of `dropped`: requests for a MAC pinned to a relay circuit-id that came another way.
    pub wrong_circuit: AtomicU64,
    pub batches: AtomicU64,
    pub leases_written: AtomicU64,
    pub write_failures: AtomicU64,
    /// Reservation snapshots loaded (at start and after each fleet change).
    pub reservation_loads: AtomicU64,
    /// The boot network this server's DHCP leadership is about (`leader`), e.g. `198.18.0.0/16`.
    pub network: std::sync::OnceLock<String>,
    /// This server is the active DHCP server of its boot network.
    pub active: AtomicBool,
    /// Times this server became the active one.
    pub takeovers: AtomicU64,
    /// The database has not answered the election for a TTL.
    pub database_unreachable: AtomicBool,
    /// Times the database became unreachable for the election.
    pub unreachable_periods: AtomicU64,
    /// Requests ignored because another server is active.
    pub standby_ignored: AtomicU64,
    /// Known MACs answered while the database was unreachable.
    pub answered_without_database: AtomicU64,
    /// Requests refused while the database was unreachable (unknown MAC, or an answer other than its address).
    pub refused_without_database: AtomicU64,
    /// Lease batches refused by the leadership fence (another server took over): their ACKs were withheld.
    pub fenced_batches: AtomicU64,
    /// Lease-table reloads from the database (each time this server becomes active, and while standby).
    pub table_reloads: AtomicU64,
}

/// Lease changes to make durable, and the reply waiting for them.
#[derive(Debug)]
struct Pending {
    changes: Vec<LeaseChange>,
    reply: Option<(Vec<u8>, SocketAddr)>,
    /// The leadership epoch the decision was made under: the write commits only while it still holds.
    epoch: i64,
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

fn parse_mac(text: &str) -> Option<Mac> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut bytes {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(bytes))
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

/// What the DHCP loop knows about registered nodes, reloaded after each fleet change.
#[derive(Debug, Default)]
struct Snapshot {
    reservations: ReservationMap,
    /// Retired and rejected nodes: no answer.
    refused: HashSet<Mac>,
    circuit_pins: CircuitPins,
}

/// Registered nodes with fixed addresses, MACs that must not be served, relay circuit pins.
async fn load_reservations(fleet: &Fleet) -> Result<Snapshot, store::StoreError> {
    let stored = fleet.dhcp_reservations().await?;
    let mut map = ReservationMap::default();
    for (mac, address, hostname) in stored.fixed {
        match (parse_mac(&mac), address.parse::<Ipv4Addr>()) {
            (Some(m), Ok(a)) => map.insert(m, a, hostname),
            _ => tracing::warn!(mac, address, "unusable reservation skipped"),
        }
    }
    for mac in &stored.registered {
        if let Some(m) = parse_mac(mac) {
            map.register(m);
        }
    }
    let refused = stored.refused.iter().filter_map(|m| parse_mac(m)).collect();
    let circuit_pins = stored
        .circuit_pins
        .into_iter()
        .filter_map(|(m, c)| Some((parse_mac(&m)?, c)))
        .collect();
    Ok(Snapshot {
        reservations: map,
        refused,
        circuit_pins,
    })
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

/// Receives the next request: a frame from the packet socket when there is one, else a datagram.
async fn receive(
    socket: &UdpSocket,
    link: Option<&LinkSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match link {
        Some(l) => Ok((
            l.recv(buf).await?,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        )),
        None => socket.recv_from(buf).await,
    }
}

/// Formats a MAC for the log.
fn mac_text(m: [u8; 6]) -> String {
    Mac(m).to_string()
}

/// Serves DHCP on `socket` (bound to port 67 on the boot interface, broadcast enabled) until `shutdown`. With
/// `link` (a packet socket on the same interface), requests are read from it instead, so each one's Ethernet
/// source can be checked against its `chaddr`; `socket` then only sends.
pub async fn run(
    socket: UdpSocket,
    link: Option<LinkSocket>,
    cfg: DhcpConfig,
    fleet: Arc<Fleet>,
    stats: Arc<DhcpStats>,
    timers: Timers,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("DHCP config: {e}")))?;
    let to_io = |e: store::StoreError| io::Error::other(e.to_string());
    let mut table = load_table(&fleet).await.map_err(to_io)?;
    let network = format!("{}/{}", cfg.subnet.network, cfg.subnet.prefix_len);
    let _ = stats.network.set(network.clone());
    let leadership = Arc::new(Leadership::new(
        LeaderClaim {
            holder: format!(
                "{}/{}/{:08x}",
                cfg.server_address,
                std::process::id(),
                rand::random::<u32>()
            ),
            holder_address: cfg.server_address.to_string(),
            network,
            ttl_ms: i64::try_from(timers.ttl.as_millis()).unwrap_or(i64::MAX),
        },
        timers,
    ));
    // The first round before the first request: on a network nobody holds (a new database, or after a
    // graceful release) this server is active at once.
    for _ in 0..2 {
        if matches!(leadership.step(&fleet).await, Role::Active { .. }) {
            break;
        }
    }
    // The table just loaded is this epoch's if the first round made us active.
    let mut serving_epoch = match leadership.role() {
        Role::Active { epoch } => Some(epoch),
        _ => None,
    };
    let election = tokio::spawn(leader::run(
        leadership.clone(),
        fleet.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let Snapshot {
        mut reservations,
        mut refused,
        mut circuit_pins,
    } = load_reservations(&fleet).await.map_err(to_io)?;
    stats.reservation_loads.fetch_add(1, Ordering::Relaxed);
    if link.is_some() {
        link::discard_received(&socket)?;
    }
    tracing::info!(local = %socket.local_addr()?, leases = table.len(),
        link_check = link.as_ref().map(LinkSocket::interface), "DHCP listening");

    let socket = Arc::new(socket);
    let (write_tx, write_rx) = mpsc::channel::<Pending>(8192);
    let writer = tokio::spawn(writer(
        write_rx,
        fleet.clone(),
        leadership.clone(),
        socket.clone(),
        stats.clone(),
    ));
    // Unknown MACs become discovered nodes off the hot path; a full queue drops the record (the node is
    // recorded on its next DISCOVER or when it fetches its boot script).
    let (discover_tx, mut discover_rx) = mpsc::channel::<Mac>(64);
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
    let mut discovery = Discovery {
        known: HashSet::new(),
        budget: RateLimit::new(DISCOVERY_PER_SECOND),
        tx: discover_tx,
    };
    let mut fleet_changes = fleet.notifier().subscribe_fleet();
    // While standby, the lease table follows the database, so that this server knows the bound MACs if the
    // database becomes unreachable (`leader::answer_known`).
    let mut standby_refresh = tokio::time::interval(STANDBY_REFRESH);
    standby_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut gate = Gate::default();
    let mut receive_log = LogLimit::default();

    loop {
        let (len, peer) = tokio::select! {
            r = receive(&socket, link.as_ref(), &mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    if let Some(suppressed) = receive_log.allow(std::time::Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "DHCP receive failed");
                    }
                    continue;
                }
            },
            Ok(()) = fleet_changes.changed() => {
                // A node was registered, approved, retired...: refresh the reservation snapshot.
                match load_reservations(&fleet).await {
                    Ok(snap) => {
                        (reservations, refused, circuit_pins) =
                            (snap.reservations, snap.refused, snap.circuit_pins);
                        stats.reservation_loads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot reload DHCP reservations"),
                }
                continue;
            }
            _ = standby_refresh.tick() => {
                if leadership.role() == Role::Standby {
                    if let Ok(t) = load_table(&fleet).await {
                        table = t;
                        stats.table_reloads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let Some((bytes, peer)) = gate.admit(
            &buf[..len],
            peer,
            link.is_some(),
            &cfg,
            &refused,
            &circuit_pins,
            &stats,
        ) else {
            continue;
        };
        let role = leadership.role();
        let epoch = match role {
            Role::Standby => {
                stats.standby_ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Role::Active { epoch } if serving_epoch != Some(epoch) => {
                // Newly active: the previous active's leases are in the database (written before each ACK, and
                // fenced, so none can land after this read), not in our table.
                match load_table(&fleet).await {
                    Ok(t) => {
                        table = t;
                        serving_epoch = Some(epoch);
                        stats.table_reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            epoch,
                            leases = table.len(),
                            "DHCP lease table reloaded as the active server"
                        );
                    }
                    Err(e) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "lease table not reloaded; request dropped");
                        continue;
                    }
                }
                Some(epoch)
            }
            Role::Active { epoch } => Some(epoch),
            Role::Unreachable => None,
        };
        let now = now_ms().max(0) as u64;
        let decision = match (epoch, super::decode(bytes)) {
            (_, Err(e)) => Decision::Drop { reason: e.into() },
            (Some(_), Ok(request)) => super::handle(&request, now, &mut table, &cfg, &reservations),
            (None, Ok(request)) => {
                match leader::answer_known(&request, now, &mut table, &cfg, &reservations) {
                    Decision::Reply(mut reply) => {
                        stats
                            .answered_without_database
                            .fetch_add(1, Ordering::Relaxed);
                        // Nothing can be made durable: the answer leaves at once.
                        reply.lease_changes.clear();
                        Decision::Reply(reply)
                    }
                    _ => {
                        stats
                            .refused_without_database
                            .fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) =
                            gate.unreachable_log.allow(std::time::Instant::now())
                        {
                            tracing::warn!(%peer, suppressed,
                                "DHCP request refused: database unreachable and the MAC is not known here");
                        }
                        continue;
                    }
                }
            }
        };
        let epoch = epoch.unwrap_or(0);
        match decision {
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
                let mac = Mac::from_unicast_bytes(
                    &reply.message.chaddr()[..6.min(reply.message.chaddr().len())],
                );
                let changes = durable(reply.lease_changes);
                if kind == Some(MessageType::Ack) && !changes.is_empty() {
                    if write_tx
                        .send(Pending {
                            changes,
                            reply: Some((encoded, dest)),
                            epoch,
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
                                epoch,
                            })
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                if let (Some(MessageType::Offer), Some(mac)) = (kind, mac) {
                    discovery.offered(mac, &reservations);
                }
            }
            Decision::Record { lease_changes } => {
                let changes = durable(lease_changes);
                if !changes.is_empty()
                    && write_tx
                        .send(Pending {
                            changes,
                            reply: None,
                            epoch,
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
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = gate.malformed_log.allow(std::time::Instant::now()) {
                        tracing::warn!(%peer, %reason, len, suppressed, "malformed DHCP packet dropped");
                    }
                } else {
                    tracing::debug!(%peer, %reason, "DHCP request dropped");
                }
            }
        }
    }
    drop(write_tx);
    drop(discovery);
    // Let the writer flush what is queued: those ACKs were promised to clients that are waiting.
    let _ = writer.await;
    discoverer.abort();
    let _ = election.await;
    // After the last lease write: a standby takes over without waiting for the TTL.
    leadership.release(&fleet).await;
    Ok(())
}

/// How often a standby reloads its lease table from the database.
const STANDBY_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// The lease table as the database has it.
async fn load_table(fleet: &Fleet) -> Result<LeaseTable, store::StoreError> {
    let rows = fleet.active_leases(now_ms()).await?;
    Ok(LeaseTable::restore(rows.iter().filter_map(lease_from_row)))
}

/// The checks a received request passes before the lease decision, with their rate-limited warnings: a frame
/// from the packet socket must parse, be addressed to us and come from the NIC its `chaddr` names; retired or
/// rejected MACs are ignored; a MAC pinned to a relay circuit must arrive through it.
#[derive(Debug, Default)]
struct Gate {
    malformed_log: LogLimit,
    unreachable_log: LogLimit,
    spoofed_log: LogLimit,
    circuit_log: LogLimit,
}

impl Gate {
    /// The BOOTP bytes and the sender of an admitted request (`received` is a frame when `from_link`, else the
    /// UDP payload from `peer`); `None`, counted and (rate-limited) logged, for anything refused.
    #[allow(clippy::too_many_arguments)]
    fn admit<'a>(
        &mut self,
        received: &'a [u8],
        peer: SocketAddr,
        from_link: bool,
        cfg: &DhcpConfig,
        refused: &HashSet<Mac>,
        circuit_pins: &CircuitPins,
        stats: &DhcpStats,
    ) -> Option<(&'a [u8], SocketAddr)> {
        let len = received.len();
        let (bytes, peer) = if from_link {
            let frame = match link::parse_frame(received) {
                Ok(f) => f,
                Err(e) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.malformed_log.allow(std::time::Instant::now()) {
                        tracing::warn!(error = %e, len, suppressed, "malformed DHCP frame dropped");
                    }
                    return None;
                }
            };
            if !addressed_to_us(cfg, frame.dst_ip) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(dst = %frame.dst_ip, "DHCP request for another address ignored");
                return None;
            }
            let peer = SocketAddr::from((frame.src_ip, frame.src_port));
            if let SourceCheck::Spoofed { chaddr } = link::check_source(frame.payload, frame.source)
            {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                stats.spoofed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.spoofed_log.allow(std::time::Instant::now()) {
                    tracing::warn!(%peer, chaddr = mac_text(chaddr), source = mac_text(frame.source),
                        suppressed, "DHCP request refused: chaddr is not the address of the NIC that sent it");
                }
                return None;
            }
            (frame.payload, peer)
        } else {
            (received, peer)
        };
        // chaddr lives at bytes 28..34 of every BOOTP packet; refuse retired/rejected nodes before deciding.
        if let Some(mac) = bytes.get(28..34).and_then(Mac::from_unicast_bytes) {
            if refused.contains(&mac) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%mac, "DHCP request from a retired or rejected node ignored");
                return None;
            }
        }
        if let CircuitCheck::Mismatch { got } = link::check_circuit(bytes, circuit_pins) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            stats.wrong_circuit.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.circuit_log.allow(std::time::Instant::now()) {
                let chaddr = bytes.get(28..34).and_then(Mac::from_unicast_bytes);
                tracing::warn!(%peer, chaddr = ?chaddr.map(|m| m.to_string()),
                    circuit_id = ?got.as_ref().map(hex::encode), suppressed,
                    "DHCP request refused: the MAC is pinned to another relay circuit-id");
            }
            return None;
        }
        Some((bytes, peer))
    }
}

/// Where a request may be addressed: broadcast, or unicast to us (renewals, relays).
fn addressed_to_us(cfg: &DhcpConfig, ip: Ipv4Addr) -> bool {
    ip == Ipv4Addr::BROADCAST || ip == cfg.server_address || ip == cfg.subnet.broadcast()
}

/// Unknown MACs that were offered an address become discovered nodes, off the hot path: at most
/// `DISCOVERY_PER_SECOND`, each once per process (the set is bounded), through a queue that drops when full.
#[derive(Debug)]
struct Discovery {
    known: HashSet<Mac>,
    budget: RateLimit,
    tx: mpsc::Sender<Mac>,
}

impl Discovery {
    fn offered(&mut self, mac: Mac, reservations: &ReservationMap) {
        if reservations_lacks(reservations, mac)
            && !self.known.contains(&mac)
            && self.known.len() < 1_000_000
            && self.budget.take()
        {
            self.known.insert(mac);
            let _ = self.tx.try_send(mac);
        }
    }
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

fn reservations_lacks(r: &ReservationMap, mac: Mac) -> bool {
    use super::Reservations;
    r.by_mac(mac).is_none()
}

/// Writes queued lease changes in one transaction per batch, then sends the replies that waited for them.
async fn writer(
    mut rx: mpsc::Receiver<Pending>,
    fleet: Arc<Fleet>,
    leadership: Arc<Leadership>,
    socket: Arc<UdpSocket>,
    stats: Arc<DhcpStats>,
) {
    let mut received: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut received, 1024).await > 0 {
        // One transaction per epoch: nearly always the whole batch.
        while !received.is_empty() {
            let epoch = received[0].epoch;
            let same = received.iter().take_while(|p| p.epoch == epoch).count();
            let batch: Vec<Pending> = received.drain(..same).collect();
            write_and_send(&fleet, &leadership.fence(epoch), batch, &socket, &stats).await;
        }
    }
}

/// Writes one batch under `fence`, then sends the replies that waited for it.
async fn write_and_send(
    fleet: &Fleet,
    fence: &crate::fleet::LeaseFence,
    mut batch: Vec<Pending>,
    socket: &UdpSocket,
    stats: &DhcpStats,
) {
    {
        let written: usize = batch.iter().map(|p| p.changes.len()).sum();
        match write_batch(fleet, fence, &batch).await {
            Ok(false) => {
                // Another server took the network over since these were decided: not durable here, so
                // not acknowledged; the clients retry and the new active answers.
                stats.fenced_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    leases = written,
                    epoch = fence.epoch,
                    "lease write refused: another server is active now; ACKs withheld"
                );
            }
            Ok(true) => {
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

async fn write_batch(
    fleet: &Fleet,
    fence: &crate::fleet::LeaseFence,
    batch: &[Pending],
) -> Result<bool, store::StoreError> {
    fleet
        .write_leases_fenced(
            Some(fence),
            batch
                .iter()
                .flat_map(|p| &p.changes)
                .map(|change| match change {
                    LeaseChange::Upsert(l) => LeaseWrite::Upsert(lease_row(l)),
                    LeaseChange::Remove { address, mac } => LeaseWrite::Remove {
                        address: address.to_string(),
                        mac: mac.to_string(),
                    },
                })
                .collect(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rows_round_trip_and_offers_are_not_durable() {
        let l = Lease {
            address: Ipv4Addr::new(198, 18, 1, 7),
            mac: Mac([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
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
