//! PXE boot services: DHCP (PXE-aware), TFTP and HTTP boot. Each protocol's logic is sans-IO; the socket
//! loops around it are thin and take already-bound sockets, so tests can use port 0.

pub mod cache;
pub mod dhcp;
pub mod http;
pub mod images;
pub mod loglimit;
pub mod ndp;
pub mod tftp;
pub mod trust;

use std::sync::Arc;

/// Counters of the boot services that run, shared with `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct BootStats {
    pub dhcp: Option<Arc<dhcp::server::DhcpStats>>,
    pub tftp: Option<Arc<tftp::TftpStats>>,
}
