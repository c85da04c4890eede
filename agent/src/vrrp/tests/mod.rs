//! Tests of the VRRP core: golden bytes captured from keepalived (`../testdata/capture.sh`), malformed
//! adverts, every RFC transition of the state machine, and instances wired together through a simulated link.

mod instance;
mod packet;
mod sim;

use std::net::Ipv4Addr;

/// `198.18.0.x`: the lab range.
fn lab(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, x)
}
