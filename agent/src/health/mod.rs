//! Health checks of the real servers: the probes (`probe`: tcp, http, https, dns, script), their sans-IO
//! codecs (`http`, `dns`), the rise/fall state machine (`tracker`), the scheduler that runs one probe per
//! distinct (target, check) with bounded concurrency (`monitor`), and the service quorum that lowers the
//! node's VRRP priority (`quorum`).

pub mod checks;
pub mod dns;
pub mod http;
pub mod monitor;
pub mod probe;
pub mod quorum;
pub mod tracker;

pub use checks::HealthChecks;
pub use monitor::{HealthConfig, HealthMonitor, HealthSnapshot, ProbeKey, Prober};
pub use probe::{Probe, ProbeError};
pub use quorum::{ChannelPrioritySink, PrioritySink, PrioritySinks, QuorumStatus};

#[cfg(test)]
mod tests;
