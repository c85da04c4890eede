//! PXE boot services: TFTP and HTTP boot (DHCP joins them). Each protocol's codec is pure; the socket loops
//! are thin and take already-bound sockets, so tests can use port 0.

pub mod http;
pub mod tftp;
