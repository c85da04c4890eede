//! lbfleet-agent as a library: the server client, the IPVS codec and netlink socket, the reconciler that
//! turns a role document into minimal IPVS changes, and the run loops behind the CLI.

pub mod client;
pub mod ipvs;
pub mod netlink;
pub mod reconcile;
pub mod run;
pub mod state;
pub mod status;
pub mod vrrp;
