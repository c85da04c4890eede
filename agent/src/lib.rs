//! lbfleet-agent as a library. Today it holds the server client; reconciling IPVS, VRRP and health checks
//! against the pulled role is the agent-core work that builds on it.

pub mod client;
