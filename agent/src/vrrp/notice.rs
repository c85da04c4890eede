//! What the VRRP tasks tell the rest of the agent: the instance's state, the master it follows and each
//! transition. The daemon loop turns a [`VrrpNotice`] into its own event (`From`); nothing here knows the
//! daemon, so the dependency runs one way (daemon -> vrrp).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use lbfleet_proto::{VrrpState, VrrpTransition};

/// This node's VRRP state and the master it follows, as the VRRP task reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpStatus {
    pub state: VrrpState,
    /// The master's address as this node sees it.
    pub master: Option<IpAddr>,
}

/// A notice from the VRRP task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VrrpNotice {
    /// The instance changed state (or could not start: a transition to Fault with the reason).
    Transition {
        status: VrrpStatus,
        transition: VrrpTransition,
    },
    /// The master this node follows changed without a state change (a Backup heard a new master).
    MasterChanged(VrrpStatus),
}

/// Milliseconds since the Unix epoch, now (the time stamp of a transition).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
