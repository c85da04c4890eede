//! PXE boot services: DHCP (PXE-aware), TFTP and HTTP boot. Each protocol's logic is sans-IO; the socket
//! loops around it are thin and take already-bound sockets, so tests can use port 0.

pub mod dhcp;
pub mod http;
pub mod tftp;
