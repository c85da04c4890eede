//! DHCP hot standby between lbfleet-servers on one database: which server answers DHCP on a boot network is
//! decided by one row per network in the database (`store::leases::leaders`), with no peer protocol.
//!
//! `Election` is the state machine, without I/O or clock: `next_step(now)` says which statement to run,
//! `apply(outcome)` takes its result, `role(now)` says how the DHCP loop answers. `run` is the thin task that
//! drives it against the database; `answer_known` is the decision while the database is unreachable.
//!
//! Clocks. No decision compares two hosts' clocks; each server measures only intervals on its own monotonic
//! clock (`Instant`):
//! - the active counts its validity from the *start* of its last successful renewal (the row changed at
//!   some point after that), and stops answering `ttl - ttl/4` later;
//! - a standby counts from the *end* of the read that first showed it the row's current `(holder, seq)` (the
//!   renewal behind it committed before that), and takes over only when the row stayed so for a whole `ttl`,
//!   with a compare-and-set on `(holder, seq)`.
//!
//! So the active has stopped answering before any standby may take over, as long as the two monotonic clocks'
//! rates differ by less than the `ttl/4` margin over one TTL (real clocks differ by parts per million; a VM
//! paused for longer than that margin is the case this does not cover, and the fence below still does for
//! leases). Lease writes are fenced in the database itself: each write transaction first proves
//! `(holder, epoch)` still holds the network (every takeover bumps the epoch), so a deposed server, however
//! late its writer runs, can never commit a lease, and an ACK is only sent after its lease committed.
//! Wall-clock time (`renewed_at`) is stored for people only.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType};
use tokio::sync::watch;

use super::config::DhcpConfig;
use super::engine::{handle, Decision, DropReason};
use super::lease::{LeaseState, LeaseTable, Mac, Reservations, UnixMillis};
use super::server::DhcpStats;
use crate::fleet::{Fleet, LeaderClaim, LeaseFence};

/// The election's two settings (`boot.dhcp_leader_renew`, `boot.dhcp_leader_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub renew: Duration,
    pub ttl: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            renew: Duration::from_millis(250),
            ttl: Duration::from_secs(1),
        }
    }
}

impl Timers {
    /// How long the active answers after the start of its last successful renewal: the TTL less a quarter.
    pub fn fence_after(&self) -> Duration {
        self.ttl.saturating_sub(self.ttl / 4)
    }
}

/// A leadership row as the election needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Empty after a graceful release.
    pub holder: String,
    pub seq: i64,
}

/// How the DHCP loop answers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Answers everything; lease writes carry `epoch` as their fence.
    Active { epoch: i64 },
    /// Another server is (or may still be) active: answer nothing.
    Standby,
    /// The database has not answered for a TTL, so nobody can be elected: answer only MACs known here
    /// (reservation or bound lease) with their known address, never from the pool.
    Unreachable,
}

/// The statement to run next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Renew our term.
    Renew { epoch: i64 },
    /// Read the row.
    Observe,
    /// Claim the network: vacant (`None`), or from the row exactly as last seen.
    Claim { expected: Option<Seen> },
}

/// What a step's statement returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The renewal committed; it started at `started`.
    Renewed { started: Instant },
    /// The renewal found the row taken over.
    Deposed,
    /// The row (`None`: no row yet), read by a statement that ended at `finished`.
    Observed {
        row: Option<Seen>,
        finished: Instant,
    },
    /// The claim committed; it started at `started`.
    Claimed { epoch: i64, started: Instant },
    /// The row moved on before the claim.
    ClaimLost,
    /// The database did not answer (error or timeout) at `at`.
    Failed { at: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Unknown,
    Vacant,
    Following { seen: Seen, since: Instant },
    Active { epoch: i64, valid_until: Instant },
}

/// One server's view of one boot network's leadership.
#[derive(Debug, Clone)]
pub struct Election {
    timers: Timers,
    state: State,
    /// When the database started failing (cleared by any answer).
    failing_since: Option<Instant>,
    /// Times this server became active.
    acquisitions: u64,
}

impl Election {
    pub fn new(timers: Timers) -> Self {
        Election {
            timers,
            state: State::Unknown,
            failing_since: None,
            acquisitions: 0,
        }
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    pub fn acquisitions(&self) -> u64 {
        self.acquisitions
    }

    /// The epoch this server holds (valid or not), for a graceful release.
    pub fn held_epoch(&self) -> Option<i64> {
        match self.state {
            State::Active { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    pub fn next_step(&self, now: Instant) -> Step {
        match &self.state {
            // Even after the validity lapsed: a renewal that still finds our epoch proves nobody took over.
            State::Active { epoch, .. } => Step::Renew { epoch: *epoch },
            State::Unknown => Step::Observe,
            State::Vacant => Step::Claim { expected: None },
            State::Following { seen, since } => {
                if seen.holder.is_empty()
                    || now.saturating_duration_since(*since) >= self.timers.ttl
                {
                    Step::Claim {
                        expected: Some(seen.clone()),
                    }
                } else {
                    Step::Observe
                }
            }
        }
    }

    pub fn apply(&mut self, outcome: Outcome) {
        if let Outcome::Failed { at } = outcome {
            self.failing_since.get_or_insert(at);
            return;
        }
        self.failing_since = None;
        match outcome {
            Outcome::Renewed { started } => {
                if let State::Active { valid_until, .. } = &mut self.state {
                    *valid_until = (*valid_until).max(started + self.timers.fence_after());
                }
            }
            Outcome::Deposed | Outcome::ClaimLost => self.state = State::Unknown,
            Outcome::Observed { row: None, .. } => self.state = State::Vacant,
            Outcome::Observed {
                row: Some(seen),
                finished,
            } => match &self.state {
                State::Following { seen: old, .. } if *old == seen => {}
                State::Active { .. } => {}
                _ => {
                    self.state = State::Following {
                        seen,
                        since: finished,
                    }
                }
            },
            Outcome::Claimed { epoch, started } => {
                self.acquisitions += 1;
                self.state = State::Active {
                    epoch,
                    valid_until: started + self.timers.fence_after(),
                };
            }
            Outcome::Failed { .. } => {}
        }
    }

    pub fn role(&self, now: Instant) -> Role {
        if let State::Active { epoch, valid_until } = self.state {
            if now < valid_until {
                return Role::Active { epoch };
            }
        }
        match self.failing_since {
            Some(t) if now.saturating_duration_since(t) >= self.timers.ttl => Role::Unreachable,
            _ => Role::Standby,
        }
    }
}

/// The election shared by its task (`run`) and the DHCP loop, which asks `role()` before every answer.
#[derive(Debug)]
pub struct Leadership {
    pub claim: LeaderClaim,
    election: Mutex<Election>,
}

impl Leadership {
    pub fn new(claim: LeaderClaim, timers: Timers) -> Self {
        Leadership {
            claim,
            election: Mutex::new(Election::new(timers)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Election) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the election's state is still consistent.
        let mut e = self.election.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut e)
    }

    pub fn role(&self) -> Role {
        self.with(|e| e.role(Instant::now()))
    }

    /// The fence lease writes decided under `epoch` carry.
    pub fn fence(&self, epoch: i64) -> LeaseFence {
        LeaseFence {
            network: self.claim.network.clone(),
            holder: self.claim.holder.clone(),
            epoch,
        }
    }

    /// Runs one step against the database and applies its outcome; returns the role after it.
    pub async fn step(&self, fleet: &Fleet) -> Role {
        let (step, timeout) = self.with(|e| (e.next_step(Instant::now()), e.timers().ttl));
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.run_step(fleet, &step)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::debug!(network = %self.claim.network, error = %e, ?step, "DHCP leadership step failed");
                Outcome::Failed { at: started }
            }
            Err(_) => Outcome::Failed { at: started },
        };
        self.with(|e| {
            e.apply(outcome);
            e.role(Instant::now())
        })
    }

    async fn run_step(
        &self,
        fleet: &Fleet,
        step: &Step,
    ) -> Result<Outcome, crate::store::StoreError> {
        let started = Instant::now();
        Ok(match step {
            Step::Renew { epoch } => {
                if fleet.renew_dhcp_leader(&self.fence(*epoch)).await? {
                    Outcome::Renewed { started }
                } else {
                    Outcome::Deposed
                }
            }
            Step::Observe => {
                let row = fleet.dhcp_leader(&self.claim.network).await?;
                Outcome::Observed {
                    row: row.map(|r| Seen {
                        holder: r.holder,
                        seq: r.seq,
                    }),
                    finished: Instant::now(),
                }
            }
            Step::Claim { expected } => {
                let expected = expected.as_ref().map(|s| (s.holder.as_str(), s.seq));
                match fleet.claim_dhcp_leader(&self.claim, expected).await? {
                    Some(epoch) => Outcome::Claimed { epoch, started },
                    None => Outcome::ClaimLost,
                }
            }
        })
    }

    /// Gives the network up if this server holds it (graceful shutdown, after the last lease write).
    pub async fn release(&self, fleet: &Fleet) {
        let Some(epoch) = self.with(|e| e.held_epoch()) else {
            return;
        };
        match fleet.release_dhcp_leader(&self.fence(epoch)).await {
            Ok(true) => tracing::info!(network = %self.claim.network, "DHCP leadership released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(network = %self.claim.network, error = %e, "DHCP leadership not released")
            }
        }
    }
}

/// Drives the election every `renew` (at once after a step that calls for a claim) until `shutdown`, keeping
/// `stats`' gauges current and logging each change of role.
pub async fn run(
    leadership: Arc<Leadership>,
    fleet: Arc<Fleet>,
    stats: Arc<DhcpStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let renew = leadership.with(|e| e.timers().renew);
    let mut last = leadership.role();
    loop {
        let role = leadership.step(&fleet).await;
        publish(&leadership, &stats, last, role);
        last = role;
        let claim_now = leadership.with(|e| {
            matches!(e.next_step(Instant::now()), Step::Claim { .. }) && e.failing_since.is_none()
        });
        let pause = if claim_now { Duration::ZERO } else { renew };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
}

fn publish(leadership: &Leadership, stats: &DhcpStats, before: Role, now: Role) {
    let network = &leadership.claim.network;
    stats
        .takeovers
        .store(leadership.with(|e| e.acquisitions()), Ordering::Relaxed);
    stats
        .active
        .store(matches!(now, Role::Active { .. }), Ordering::Relaxed);
    stats
        .database_unreachable
        .store(now == Role::Unreachable, Ordering::Relaxed);
    if before == now {
        return;
    }
    match now {
        Role::Active { epoch } => {
            tracing::info!(%network, epoch, "DHCP: this server is now the active one on the boot network")
        }
        Role::Standby => tracing::info!(%network, "DHCP: standby (another server answers, or may)"),
        Role::Unreachable => {
            stats.unreachable_periods.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%network,
                "DHCP: the database is unreachable; answering only known MACs with their known address")
        }
    }
}

/// The address a MAC is known to have without asking the database: its reservation, else its bound lease.
pub fn known_address(
    mac: Mac,
    now: UnixMillis,
    table: &LeaseTable,
    reservations: &impl Reservations,
) -> Option<Ipv4Addr> {
    if let Some(r) = reservations.by_mac(mac) {
        return Some(r.address);
    }
    table
        .lease_of(mac)
        .filter(|l| l.state == LeaseState::Bound && l.is_active(now))
        .map(|l| l.address)
}

/// The decision while the database is unreachable: DISCOVER and REQUEST from a known MAC, answered by the
/// engine only when the answer is an OFFER or ACK of the known address; everything else dropped (the engine
/// never runs for an unknown MAC, so nothing is taken from the pool). Two servers in this state give a client
/// the same address, which is harmless.
pub fn answer_known(
    request: &Message,
    now: UnixMillis,
    table: &mut LeaseTable,
    cfg: &DhcpConfig,
    reservations: &impl Reservations,
) -> Decision {
    let unknown = Decision::Drop {
        reason: DropReason::NoRecord,
    };
    let Some(mac) = Mac::from_unicast_bytes(request.chaddr()) else {
        return unknown;
    };
    let Some(known) = known_address(mac, now, table, reservations) else {
        return unknown;
    };
    if !matches!(
        request.opts().msg_type(),
        Some(MessageType::Discover | MessageType::Request)
    ) {
        return unknown;
    }
    match handle(request, now, table, cfg, reservations) {
        Decision::Reply(reply)
            if reply.message.yiaddr() == known
                && matches!(
                    reply.message_type(),
                    Some(MessageType::Offer | MessageType::Ack)
                ) =>
        {
            Decision::Reply(reply)
        }
        _ => unknown,
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
