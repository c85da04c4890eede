//! The VRRP instance at work: one tokio task per role owns the raw socket (`socket`), the two RFC timers and
//! the VIPs, and drives the sans-IO [`Instance`]: every received advert and every timer expiry becomes an
//! [`Input`], every [`Action`] is carried out here (send the advert, add/remove the VIPs over rtnetlink, send
//! gratuitous ARP, restart a timer) and each transition goes to whoever started it as a [`VrrpNotice`] (the
//! daemon loop turns it into its own event).
//! [`VrrpSupervisor`] starts, reconfigures and stops that task for the daemon. A role change that only changes
//! the priority keeps the instance and feeds it [`Input::SetPriority`], as does the health quorum through
//! [`QuorumPriority`] (the supervisor's `PrioritySink`).
//!
//! Two behaviours beyond the RFC: a graceful stop sends priority 0 and removes the VIPs before the task ends
//! (no VIP left behind), and an agent that starts while its VIPs are already on the interface (restarted while
//! MASTER) keeps them and keeps advertising at its priority until it hears another master or becomes master
//! again, so a quick restart moves no traffic.
//!
//! This file holds the supervisor; `worker` the task of one running instance.

mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_proto::VrrpConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::notice::VrrpNotice;
use super::{DropCounters, OWNER_PRIORITY};
use crate::health::PrioritySink;

/// How long a graceful stop may take before the task is abandoned.
pub use worker::instance_config;
use worker::{raise_to_realtime, run_instance, Priority};

const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Delay before a failed setup (missing interface or address) is tried again.
const SETUP_RETRY: Duration = Duration::from_secs(2);
const RECV_BUF: usize = 2048;

/// Adverts dropped: the decoder's and the state machine's reasons, and adverts from a source that is not
/// one of the configured unicast peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropStats {
    pub by_reason: DropCounters,
    pub not_a_peer: u64,
}

impl DropStats {
    /// Non-zero counters by name (`ttl`, `checksum`, ..., `not_a_peer`), for reports and `status`.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> = self
            .by_reason
            .nonzero()
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect();
        if self.not_a_peer > 0 {
            m.insert("not_a_peer".into(), self.not_a_peer);
        }
        m
    }
}

/// The priority the health quorum wants advertised (`None`: the role's own). The daemon hands it to the
/// health checks as their `PrioritySink`; the running instance turns each change into
/// [`Input::SetPriority`], and a new instance starts with it.
#[derive(Debug, Clone)]
pub struct QuorumPriority(Arc<watch::Sender<Option<u8>>>);

impl Default for QuorumPriority {
    fn default() -> Self {
        QuorumPriority(Arc::new(watch::channel(None).0))
    }
}

impl PrioritySink for QuorumPriority {
    fn set_priority(&self, priority: u8) {
        self.0.send_replace(Some(priority));
    }
}

/// What a new VRRP config means for the running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Nothing to do.
    Same,
    /// Only the priority differs: keep the instance (its state, its VIPs) and set the new priority.
    Priority(u8),
    /// Stop the running instance (if any) and start one for the new config (if any).
    Restart,
}

impl ConfigChange {
    pub fn between(running: Option<&VrrpConfig>, wanted: Option<&VrrpConfig>) -> ConfigChange {
        match (running, wanted) {
            (None, None) => ConfigChange::Same,
            (Some(r), Some(w)) if r == w => ConfigChange::Same,
            // The address owner (255) is a different kind of router (Master at once, ignores adverts): a change
            // to or from it restarts.
            (Some(r), Some(w))
                if r.priority != OWNER_PRIORITY
                    && w.priority != OWNER_PRIORITY
                    && VrrpConfig {
                        priority: w.priority,
                        ..r.clone()
                    } == *w =>
            {
                ConfigChange::Priority(w.priority)
            }
            _ => ConfigChange::Restart,
        }
    }
}

/// Starts, reconfigures and stops the VRRP task of the current role.
#[derive(Debug, Default)]
pub struct VrrpSupervisor {
    running: Option<Running>,
    drops: Arc<Mutex<DropStats>>,
    quorum: QuorumPriority,
}

#[derive(Debug)]
struct Running {
    config: VrrpConfig,
    stop: Option<oneshot::Sender<()>>,
    /// Completes when the instance's thread has finished (VIPs released).
    done: oneshot::Receiver<()>,
    /// The role's priority, changed in place by a priority-only role change.
    base_priority: watch::Sender<u8>,
}

impl VrrpSupervisor {
    pub fn new() -> VrrpSupervisor {
        VrrpSupervisor::default()
    }

    /// The sink the health quorum sends its priority to.
    pub fn quorum_priority(&self) -> QuorumPriority {
        self.quorum.clone()
    }

    /// Runs `config` (or nothing): an unchanged config keeps the running instance, one that changes only the
    /// priority keeps it too (`SetPriority`: no VIP moves, no state is lost), any other change stops it
    /// gracefully and starts the new one.
    pub async fn apply<E: From<VrrpNotice> + Send + 'static>(
        &mut self,
        config: Option<&VrrpConfig>,
        events: &mpsc::Sender<E>,
    ) {
        match ConfigChange::between(self.running.as_ref().map(|r| &r.config), config) {
            ConfigChange::Same => return,
            ConfigChange::Priority(priority) => {
                if let (Some(r), Some(c)) = (self.running.as_mut(), config) {
                    info!(
                        vrid = c.vrid,
                        from = r.config.priority,
                        to = priority,
                        "VRRP priority changed (instance kept)"
                    );
                    r.config = c.clone();
                    r.base_priority.send_replace(priority);
                    return;
                }
            }
            ConfigChange::Restart => {}
        }
        self.stop().await;
        // VLAN links an earlier role made this agent create and the new one does not use.
        let keep = config.map(|c| c.interface.clone());
        match crate::rtnl::RouteSocket::open()
            .and_then(|mut rt| super::vips::remove_created_vlans(&mut rt, keep.as_deref()))
        {
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot check for VLAN interfaces to remove"),
        }
        if let Some(config) = config {
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done) = oneshot::channel();
            let (base_tx, base_rx) = watch::channel(config.priority);
            let priority = Priority {
                base: base_rx,
                quorum: self.quorum.0.subscribe(),
            };
            let (cfg, ev, drops) = (config.clone(), events.clone(), self.drops.clone());
            let vrid = config.vrid;
            // Its own thread, with a real-time priority when allowed: adverts must go out on time even when
            // the node's CPUs are saturated, or the backup takes over from a healthy master.
            let spawned = std::thread::Builder::new()
                .name(format!("vrrp-{vrid}"))
                .spawn(move || {
                    raise_to_realtime(vrid);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run_instance(cfg, ev, drops, priority, stop_rx)),
                        Err(e) => warn!(vrid, error = %e, "cannot start the VRRP runtime"),
                    }
                    let _ = done_tx.send(());
                });
            if let Err(e) = spawned {
                warn!(vrid, error = %e, "cannot start the VRRP thread");
                return;
            }
            info!(vrid = config.vrid, interface = %config.interface, priority = config.priority, "VRRP started");
            self.running = Some(Running {
                config: config.clone(),
                stop: Some(stop_tx),
                done,
                base_priority: base_tx,
            });
        }
    }

    /// Stops the instance gracefully: priority 0 advert, VIPs removed.
    pub async fn stop(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        if let Some(tx) = r.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut r.done).await {
            Ok(_) => info!(vrid = r.config.vrid, "VRRP stopped"),
            Err(_) => warn!(vrid = r.config.vrid, "VRRP did not stop in time"),
        }
    }

    /// Adverts dropped so far, by reason.
    pub fn drops(&self) -> DropStats {
        self.drops.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn config(&self) -> Option<&VrrpConfig> {
        self.running.as_ref().map(|r| &r.config)
    }
}

#[cfg(test)]
mod tests;
