//! Service quorum: a service with fewer healthy real servers than its `quorum.min_healthy` lowers the node's
//! VRRP priority by its `priority_drop` (drops of several services add up), so the balancer that still has
//! healthy servers takes the VIP. The priority goes to the VRRP instance through a `PrioritySink`
//! (`crate::vrrp::tasks::QuorumPriority`, which the running instance turns into `Input::SetPriority`).

use std::fmt;

use lbfleet_proto::RoleDocument;
use tokio::sync::mpsc;

use crate::ipvs::{DestKey, ServiceKey};
use crate::reconcile::HealthResults;

/// Where the effective VRRP priority goes.
pub trait PrioritySink: Send + Sync + fmt::Debug {
    fn set_priority(&self, priority: u8);
}

/// Several sinks told the same priority (the VRRP instance, and an observer).
#[derive(Debug, Clone, Default)]
pub struct PrioritySinks(pub Vec<std::sync::Arc<dyn PrioritySink>>);

impl PrioritySink for PrioritySinks {
    fn set_priority(&self, priority: u8) {
        for s in &self.0 {
            s.set_priority(priority);
        }
    }
}

/// A sink that forwards priorities over a channel (to the VRRP task, or to a test).
#[derive(Debug, Clone)]
pub struct ChannelPrioritySink(pub mpsc::UnboundedSender<u8>);

impl PrioritySink for ChannelPrioritySink {
    fn set_priority(&self, priority: u8) {
        let _ = self.0.send(priority);
    }
}

/// The quorum outcome for one role and health state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuorumStatus {
    /// Services below quorum, as `vip:port/protocol`.
    pub below: Vec<String>,
    /// Sum of their priority drops.
    pub drop: u32,
}

impl QuorumStatus {
    /// Evaluates every service with a quorum. Healthy = enabled and not marked down.
    pub fn evaluate(role: &RoleDocument, health: &HealthResults) -> QuorumStatus {
        let mut status = QuorumStatus::default();
        for vs in &role.services {
            let Some(q) = &vs.check.quorum else { continue };
            let service = ServiceKey::Addr {
                protocol: vs.protocol.into(),
                addr: vs.vip,
                port: vs.port,
            };
            let healthy = vs
                .real_servers
                .iter()
                .filter(|rs| {
                    rs.enabled
                        && !health.is_failed(
                            &service,
                            &DestKey {
                                addr: rs.address,
                                port: rs.port,
                            },
                        )
                })
                .count();
            if (healthy as u64) < u64::from(q.min_healthy) {
                status
                    .below
                    .push(format!("{}:{}/{}", vs.vip, vs.port, vs.protocol));
                status.drop += u32::from(q.priority_drop);
            }
        }
        status
    }

    /// The priority to advertise: `base` lowered by the drop, never below 1 (0 means "stepping down").
    pub fn priority(&self, base: u8) -> u8 {
        let lowered = u32::from(base).saturating_sub(self.drop).max(1);
        u8::try_from(lowered).unwrap_or(base)
    }
}
