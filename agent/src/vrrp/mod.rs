//! VRRP (RFC 5798 v3 for IPv4, RFC 3768 v2): the pure core the agent's VRRP tasks build on.
//!
//! - [`packet`]: the advert codec ([`decode`], [`encode`], [`decode_ip_packet`], [`encode_ip_packet`]),
//!   sans-IO, with the RFC diagrams.
//! - [`instance`]: one virtual router as a state machine ([`Instance::handle`] takes an [`Input`] and the
//!   caller's `now`, returns [`Action`]s), no sockets, no clock.
//! - [`error`]: [`DecodeError`], [`DropReason`] and the [`DropCounters`] the socket task keeps.
//! - [`tasks`]: the I/O around them: the instance's task (raw [`socket`], timers, [`vips`] over rtnetlink,
//!   [`garp`]) and the supervisor the daemon loop starts and stops it with; what they report is a
//!   [`notice::VrrpNotice`].
//!
//! A receive path, in short: `decode_ip_packet(bytes)` (drop and `counters.record(e.reason())` on error),
//! then `instance.handle(Input::AdvertReceived { from: header.src, advert }, now)`, which itself answers
//! [`Action::Dropped`] for adverts that fail the checks against the instance's config.

pub mod error;
pub mod garp;
pub mod instance;
pub mod notice;
pub mod packet;
pub mod socket;
pub mod tasks;
pub mod vips;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, DecodeError, DropCounters, DropReason};
pub use instance::{
    Action, Input, Instance, InstanceConfig, State, TransitionReason, OWNER_PRIORITY, STOP_PRIORITY,
};
pub use packet::{
    decode, decode_ip_packet, encode, encode_ip_packet, Advertisement, Auth, Ipv4Header, Version,
    IPPROTO_VRRP, VRRP_MULTICAST_V4, VRRP_TTL,
};
