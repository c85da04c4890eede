//! Wakes long-polling agents the moment their role changes.
//!
//! One `watch` channel per node that has a poller waiting, holding the newest generation announced for it.
//! Writers announce after commit; a poller subscribes *before* reading the database, so a commit that lands
//! between its read and its wait still wakes it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Notifier {
    nodes: Mutex<HashMap<i64, watch::Sender<u64>>>,
    /// Bumped on every committed fleet change (for dashboards and metrics).
    fleet: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            nodes: Mutex::new(HashMap::new()),
            fleet: watch::channel(0).0,
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

    /// Announces committed generations. Channels nobody listens to any more are dropped here.
    pub fn announce(&self, changes: &[(i64, u64)]) {
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
        self.fleet_changed();
    }

    /// Announces a change that affects no node's role (a report, an approval).
    pub fn fleet_changed(&self) {
        self.fleet.send_modify(|v| *v = v.wrapping_add(1));
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
