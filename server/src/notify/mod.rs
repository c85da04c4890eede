//! Wakes long-polling agents the moment their role changes, and dashboards on any fleet change.
//!
//! One `watch` channel per node that has a poller waiting, holding the newest generation announced for it.
//! Writers announce after commit; a poller subscribes *before* reading the database, so a commit that lands
//! between its read and its wait still wakes it.
//!
//! With several servers on one database, what this server announces is also queued for `peers`, which tells
//! the other servers (PostgreSQL NOTIFY) and announces here what they tell (`announce_from_peer`), and re-reads
//! the generations from the database whenever a notice may have been lost.

pub mod peers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Notifier {
    nodes: Mutex<HashMap<i64, watch::Sender<u64>>>,
    /// The newest generation announced here for each node, and when (`recently_announced`).
    latest: Mutex<HashMap<i64, (u64, Instant)>>,
    /// Bumped on every committed fleet change (for dashboards and metrics).
    fleet: watch::Sender<u64>,
    /// The highest generation announced here, by this server or a peer.
    max_generation: AtomicU64,
    /// Whether `peers` forwards this server's announcements (set when it starts).
    publishing: AtomicBool,
    /// This server's announcements not yet sent to the peers, and the wake-up of the sender.
    outbound: Mutex<Outbound>,
    outbound_ready: tokio::sync::Notify,
}

/// Announcements waiting for `peers` to send them, merged: the newest generation per node, whether anything
/// else changed, and the nodes whose credentials were revoked or replaced (`fleet::credentials`).
#[derive(Debug, Default)]
pub struct Outbound {
    pub generations: HashMap<i64, u64>,
    pub fleet_changed: bool,
    pub credentials_revoked: std::collections::BTreeSet<i64>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            nodes: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            fleet: watch::channel(0).0,
            max_generation: AtomicU64::new(0),
            publishing: AtomicBool::new(false),
            outbound: Mutex::new(Outbound::default()),
            outbound_ready: tokio::sync::Notify::new(),
        }
    }
}

impl Notifier {
    /// A receiver that changes whenever a new generation is announced for `node_id`.
    pub fn subscribe(&self, node_id: i64) -> watch::Receiver<u64> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Announces committed generations (to this server's pollers, and to the peers). Channels nobody listens
    /// to any more are dropped here.
    pub fn announce(&self, changes: &[(i64, u64)]) {
        if self.publishing.load(Ordering::Relaxed) {
            let mut out = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
            for (node_id, generation) in changes {
                let g = out.generations.entry(*node_id).or_insert(0);
                *g = (*g).max(*generation);
            }
            out.fleet_changed = true;
            drop(out);
            self.outbound_ready.notify_one();
        }
        self.announce_here(changes, true);
    }

    /// Announces generations a peer committed (or this server re-read): to this server's pollers only.
    /// Dashboards wake only when something was new here (a re-read finds this server's own changes too).
    pub fn announce_from_peer(&self, changes: &[(i64, u64)]) {
        let before = self.max_generation();
        self.announce_here(changes, false);
        if self.max_generation() > before {
            self.fleet_changed_here();
        }
    }

    fn announce_here(&self, changes: &[(i64, u64)], wake_dashboards: bool) {
        if let Some(max) = changes.iter().map(|(_, g)| *g).max() {
            self.max_generation.fetch_max(max, Ordering::Relaxed);
        }
        {
            let now = Instant::now();
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            for (node_id, generation) in changes {
                let e = latest.entry(*node_id).or_insert((0, now));
                if *generation >= e.0 {
                    *e = (*generation, now);
                }
            }
        }
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            for (node_id, generation) in changes {
                if let Some(tx) = nodes.get(node_id) {
                    if tx.receiver_count() == 0 {
                        nodes.remove(node_id);
                    } else {
                        tx.send_if_modified(|g| {
                            let newer = *generation > *g;
                            if newer {
                                *g = *generation;
                            }
                            newer
                        });
                    }
                }
            }
        }
        if wake_dashboards {
            self.fleet_changed_here();
        }
    }

    /// Announces a change that affects no node's role (a report, an approval), here and to the peers.
    pub fn fleet_changed(&self) {
        if self.publishing.load(Ordering::Relaxed) {
            self.outbound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fleet_changed = true;
            self.outbound_ready.notify_one();
        }
        self.fleet_changed_here();
    }

    /// Queues for the peers that the credentials of `nodes` were revoked or replaced (this server's cache is
    /// the caller's: `fleet::credentials`).
    pub fn credentials_revoked(&self, nodes: &[i64]) {
        if self.publishing.load(Ordering::Relaxed) && !nodes.is_empty() {
            self.outbound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .credentials_revoked
                .extend(nodes.iter().copied());
            self.outbound_ready.notify_one();
        }
    }

    /// A peer's change that affects no node's role: dashboards here wake.
    pub fn fleet_changed_from_peer(&self) {
        self.fleet_changed_here();
    }

    fn fleet_changed_here(&self) {
        self.fleet.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The newest generation announced here for `node_id`, if that announcement is younger than `within`.
    /// Generations are fleet-wide and only grow, and writers announce after every commit, so an agent that
    /// polls again right after it got that generation can wait without reading the database; an older
    /// announcement proves less (a writer this server does not hear from), and the poll reads it.
    pub fn recently_announced(&self, node_id: i64, within: Duration) -> Option<u64> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .get(&node_id)
            .filter(|(_, at)| at.elapsed() < within)
            .map(|(g, _)| *g)
    }

    /// The highest generation announced here so far.
    pub fn max_generation(&self) -> u64 {
        self.max_generation.load(Ordering::Relaxed)
    }

    /// From now on, announcements are queued for the peers (`take_outbound`).
    pub fn start_publishing(&self) {
        self.publishing.store(true, Ordering::Relaxed);
    }

    /// Waits until announcements are queued for the peers, and takes them (merged).
    pub async fn take_outbound(&self) -> Outbound {
        loop {
            let notified = self.outbound_ready.notified();
            {
                let mut out = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
                if out.fleet_changed
                    || !out.generations.is_empty()
                    || !out.credentials_revoked.is_empty()
                {
                    return std::mem::take(&mut *out);
                }
            }
            notified.await;
        }
    }

    pub fn subscribe_fleet(&self) -> watch::Receiver<u64> {
        self.fleet.subscribe()
    }

    /// Number of nodes with a poller waiting (for metrics).
    pub fn waiting_nodes(&self) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.values().filter(|tx| tx.receiver_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announce_wakes_only_the_subscribed_node_and_only_forward() {
        let n = Notifier::default();
        let mut a = n.subscribe(1);
        let mut b = n.subscribe(2);
        n.announce(&[(1, 5)]);
        assert!(a.has_changed().unwrap_or(false));
        assert!(!b.has_changed().unwrap_or(true));
        assert_eq!(*a.borrow_and_update(), 5);
        n.announce(&[(1, 4)]);
        assert!(
            !a.has_changed().unwrap_or(true),
            "an older generation must not wake anyone"
        );
        drop(b);
        n.announce(&[(2, 9)]);
        assert_eq!(n.waiting_nodes(), 1);
        b = n.subscribe(2);
        assert!(!b.has_changed().unwrap_or(true));
    }
}
