//! Tests of the VRRP core: golden bytes captured from keepalived (`../testdata/capture.sh`), malformed
//! adverts, every RFC transition of the state machine, and instances wired together through a simulated link.

mod instance;
mod packet;
mod sim;

use std::net::{IpAddr, Ipv4Addr};

/// `198.18.0.x`: the lab range.
fn lab(x: u8) -> IpAddr {
    IpAddr::V4(lab4(x))
}

/// `198.18.0.x` where an IPv4 header wants it.
fn lab4(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, x)
}

/// `2001:2::x`, and `fe80::x` (a link-local source): the IPv6 lab range.
fn lab6(x: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, x))
}
