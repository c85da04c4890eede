//! DHCPv4 for PXE-booting nodes, as pure code: `codec` turns datagrams into requests and replies into bytes,
//! `engine::handle` decides on a request against the lease table, `pxe` picks boot files.
//!
//! The socket loop's part, per datagram received on port 67:
//! 1. `handle_datagram(bytes, now_ms, &mut table, &config, &reservations)`;
//! 2. on `Decision::Reply`, persist `reply.lease_changes`, then send `reply.encode()?` to `reply.destination`;
//!    on `Decision::Record`, persist the changes; on `Decision::Drop`, log the reason.
//!
//! With several servers on one boot network, `leader` decides which one answers (the database holds one
//! leadership row per network) and what a server answers while the database is unreachable.

pub mod codec;
pub mod config;
pub mod engine;
pub mod leader;
pub mod lease;
pub mod link;
pub mod pxe;
pub mod server;
#[cfg(test)]
mod testdata;

pub use codec::{decode, DecodeError, EncodeError};
pub use config::{BootFileMap, ConfigError, DhcpConfig, PoolRange, Subnet};
pub use engine::{
    handle, handle_datagram, Decision, Destination, DropReason, Reply, CLIENT_PORT, SERVER_PORT,
};
pub use lease::{
    Lease, LeaseChange, LeaseState, LeaseTable, Mac, Reservation, ReservationMap, Reservations,
    UnixMillis,
};
pub use pxe::{boot_answer, BootAnswer, BootClient};
