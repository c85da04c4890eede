//! Wake-ups across servers on one database.
//!
//! A change committed through one server must wake the agents long-polling, and the dashboards watching, every
//! other server. Two mechanisms, one fast and one sure:
//!
//! - **Notices** (PostgreSQL `NOTIFY`/`LISTEN` on the channel `lbfleet_changes`): each server sends what it
//!   announced (the nodes whose role generation moved, merged while a notice is on its way) and announces here
//!   what the others send. Sub-millisecond on a healthy database, but a notice can be lost: the sender dies
//!   between its commit and its `NOTIFY`, or a listener's connection drops (PostgreSQL does not replay).
//! - **Re-reads**: every `POLL` and after every listener reconnect, the server reads the fleet generation; when
//!   it moved past what this server saw, the nodes whose role generation is newer are read and announced.
//!   Pollers compare generations, never count notices, so a change announced twice or late wakes exactly the
//!   pollers it concerns, and a lost notice costs at most `POLL`. On SQLite (one server, or several processes
//!   on one file) the re-read is the only mechanism.
//!
//! Payload: `<instance> g <node>:<generation>,...`, `<instance> f` (a change no role depends on: a report, an
//! approval) or `<instance> r` (too many nodes for one notice: re-read). A server skips its own notices.
//! Revoked or replaced node credentials travel in a notice of their own, `<instance> c <node>,...` (or
//! `<instance> C`, too many nodes: forget every cached credential): the receiver forgets them at once
//! (`fleet::credentials`). A lost one is bounded by the credential cache's lifetime, and a listener that
//! reconnects forgets every cached credential (notices may have been lost meanwhile).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::store::Backend;

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "lbfleet_changes";

/// How often the fleet generation is re-read (the bound on a lost notice's delay).
pub const POLL: Duration = Duration::from_secs(1);

/// PostgreSQL refuses payloads of 8000 bytes and more.
const MAX_PAYLOAD: usize = 7900;

/// What a peer's notice says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Notice {
    Generations(Vec<(i64, u64)>),
    FleetChanged,
    Reread,
    CredentialsRevoked(Vec<i64>),
    AllCredentialsRevoked,
}

/// The notice of revoked credentials (`None` when there are none).
fn encode_revoked(instance: &str, out: &super::Outbound) -> Option<String> {
    if out.credentials_revoked.is_empty() {
        return None;
    }
    let mut text = format!("{instance} c ");
    let mut first = true;
    for node in &out.credentials_revoked {
        if !first {
            text.push(',');
        }
        first = false;
        text.push_str(&node.to_string());
        if text.len() > MAX_PAYLOAD {
            return Some(format!("{instance} C"));
        }
    }
    Some(text)
}

fn encode(instance: &str, out: &super::Outbound) -> String {
    if out.generations.is_empty() {
        return format!("{instance} f");
    }
    let mut text = format!("{instance} g ");
    let mut first = true;
    for (node, generation) in &out.generations {
        if !first {
            text.push(',');
        }
        first = false;
        text.push_str(&format!("{node}:{generation}"));
        if text.len() > MAX_PAYLOAD {
            return format!("{instance} r");
        }
    }
    text
}

/// The sender and the notice of a payload; `None` for a payload this version cannot read.
fn decode(payload: &str) -> Option<(&str, Notice)> {
    let mut parts = payload.splitn(3, ' ');
    let instance = parts.next()?;
    let notice = match (parts.next()?, parts.next()) {
        ("f", None) => Notice::FleetChanged,
        ("r", None) => Notice::Reread,
        ("C", None) => Notice::AllCredentialsRevoked,
        ("c", Some(list)) => Notice::CredentialsRevoked(
            list.split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<_>>>()?,
        ),
        ("g", Some(list)) => Notice::Generations(
            list.split(',')
                .map(|pair| {
                    let (n, g) = pair.split_once(':')?;
                    Some((n.parse().ok()?, g.parse().ok()?))
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    Some((instance, notice))
}

/// Re-reads what moved since generation `seen` and announces it here; the generation now seen.
async fn reread(fleet: &Fleet, seen: u64) -> u64 {
    let now = match fleet.fleet_generation().await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(error = %e, "peer wake-ups: cannot read the fleet generation");
            return seen;
        }
    };
    if now <= seen {
        return seen;
    }
    match fleet.generations_after(seen).await {
        Ok(changes) => {
            if !changes.is_empty() {
                fleet.notifier().announce_from_peer(&changes);
            }
            now
        }
        Err(e) => {
            tracing::debug!(error = %e, "peer wake-ups: cannot read role generations");
            seen
        }
    }
}

/// Until the server stops (the guard of `wait_for` is not `Send`: dropped here).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Sends this server's announcements to the peers until `stop`.
async fn publish(fleet: Arc<Fleet>, instance: String, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let out = tokio::select! {
            out = fleet.notifier().take_outbound() => out,
            _ = stopped(&mut stop) => return,
        };
        let mut sent = Ok(());
        // Revocations first: a poll woken by the generation notice then already finds its credential gone.
        if let Some(revoked) = encode_revoked(&instance, &out) {
            sent = fleet.notify_peers(CHANNEL, &revoked).await;
        }
        if sent.is_ok() && (out.fleet_changed || !out.generations.is_empty()) {
            sent = fleet.notify_peers(CHANNEL, &encode(&instance, &out)).await;
        }
        match sent {
            Ok(()) if failing => {
                tracing::info!("peer wake-ups: notices go out again");
                failing = false;
            }
            Ok(()) => {}
            // The peers' re-reads pick the change up within POLL.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "peer wake-ups: cannot notify the other servers; they re-read within {:?}", POLL);
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Runs the wake-ups across servers until `stop` (see the module docs). `database_url` is the fleet's
/// database (a PostgreSQL one gets a listener connection of its own).
pub async fn run(
    fleet: Arc<Fleet>,
    database_url: String,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let postgres = fleet.backend() == Backend::Postgres;
    let instance = hex::encode(rand::random::<[u8; 8]>());
    let mut seen = fleet
        .fleet_generation()
        .await
        .unwrap_or_else(|_| fleet.notifier().max_generation());
    if postgres {
        fleet.notifier().start_publishing();
        // Ends with `stop`, like this loop.
        tokio::spawn(publish(fleet.clone(), instance.clone(), stop.clone()));
    }
    let mut listener: Option<PgListener> = None;
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped(&mut stop) => return Ok(()),
            r = received => match r {
                Ok(Some(n)) => match decode(n.payload()) {
                    Some((from, _)) if from == instance => {}
                    Some((_, Notice::Generations(changes))) => {
                        fleet.notifier().announce_from_peer(&changes);
                    }
                    Some((_, Notice::FleetChanged)) => fleet.notifier().fleet_changed_from_peer(),
                    Some((_, Notice::CredentialsRevoked(nodes))) => {
                        fleet.node_credentials().revoke(&nodes, crate::store::now_ms());
                    }
                    Some((_, Notice::AllCredentialsRevoked)) => fleet.node_credentials().revoke_all(),
                    Some((_, Notice::Reread)) => seen = reread(&fleet, seen).await,
                    None => {
                        tracing::debug!(payload = n.payload(), "peer wake-ups: unreadable notice; re-reading");
                        seen = reread(&fleet, seen).await;
                    }
                },
                // The connection dropped (try_recv reconnects on the next call): notices may be lost.
                Ok(None) => {
                    tracing::info!("peer wake-ups: listener reconnecting; re-reading the generations");
                    fleet.node_credentials().revoke_all();
                    seen = reread(&fleet, seen).await;
                    fleet.notifier().fleet_changed_from_peer();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer wake-ups: listener failed; re-reading every {:?} until it is back", POLL);
                    listener = None;
                }
            },
            _ = ticks.tick() => {
                if postgres && listener.is_none() {
                    match listen(&database_url).await {
                        Ok(l) => {
                            tracing::debug!(channel = CHANNEL, "peer wake-ups: listening");
                            listener = Some(l);
                            // Revocation notices sent while nobody listened are lost.
                            fleet.node_credentials().revoke_all();
                        }
                        Err(e) => tracing::debug!(error = %e, "peer wake-ups: cannot listen yet"),
                    }
                }
                seen = reread(&fleet, seen).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_stay_under_the_payload_limit() {
        let mut out = super::super::Outbound::default();
        assert_eq!(
            decode(&encode("a1", &out)),
            Some(("a1", Notice::FleetChanged))
        );
        out.generations.insert(7, 42);
        assert_eq!(
            decode(&encode("a1", &out)),
            Some(("a1", Notice::Generations(vec![(7, 42)])))
        );
        for n in 0..2000 {
            out.generations.insert(n, 1_000_000 + n as u64);
        }
        let big = encode("a1", &out);
        assert!(big.len() <= MAX_PAYLOAD);
        assert_eq!(decode(&big), Some(("a1", Notice::Reread)));
        let mut out = super::super::Outbound::default();
        assert_eq!(encode_revoked("a1", &out), None);
        out.credentials_revoked.extend([3, 9]);
        assert_eq!(
            decode(&encode_revoked("a1", &out).unwrap_or_default()),
            Some(("a1", Notice::CredentialsRevoked(vec![3, 9])))
        );
        out.credentials_revoked.extend(0..2000);
        let big = encode_revoked("a1", &out).unwrap_or_default();
        assert!(big.len() <= MAX_PAYLOAD);
        assert_eq!(decode(&big), Some(("a1", Notice::AllCredentialsRevoked)));
        for bad in [
            "",
            "a1",
            "a1 g",
            "a1 g 7",
            "a1 g x:1",
            "a1 f extra",
            "a1 z",
            "a1 c",
            "a1 c x",
            "a1 C 1",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
