//! lbfleet-agent as a library: the server client, netlink (framing, IPVS, route), the reconciler that turns a
//! role document into minimal IPVS changes, VRRP, and the daemon loop behind the CLI.

pub mod client;
pub mod daemon;
pub mod health;
pub mod ipvs;
pub mod netlink;
pub mod pin;
pub mod reboot;
pub mod reconcile;
pub mod rtnl;
pub mod state;
pub mod status;
pub mod tls_verify;
pub mod vrrp;
