//! IPv6 router advertisements on the boot network, so iPXE does not idle ~16 s after its DHCP ACK.
//!
//! iPXE's `ifconf` (autoboot) starts every network configurator at once, DHCPv4 and IPv6, and goes on only when
//! all of them have finished. The IPv6 one sends router solicitations with doubling intervals (0.25 s up to
//! 8 s) and gives up after about 16 s; on a boot network without an IPv6 router every node waits that long.
//! iPXE ends its IPv6 configuration on the first router advertisement it gets while soliciting (ndp.c,
//! `ipv6conf_rx_router_advertisement`); if the advertisement has neither the M nor the O flag, it starts no
//! DHCPv6 either. So the boot service answers each solicitation with the smallest advertisement that says
//! "no router, no prefixes, no DHCPv6": router lifetime 0 (RFC 4861 6.2.3: not a default router), no
//! options. Linux hosts on the link learn nothing from it.
//!
//! ```text
//! Router Solicitation (RFC 4861 4.1)          Router Advertisement (RFC 4861 4.2), as we send it
//!  0       8       16              31          0       8       16              31
//! +-------+-------+---------------+           +-------+-------+---------------+
//! | 133   | code 0| checksum      |           | 134   | 0     | checksum      |
//! +-------+-------+---------------+           +-------+-------+---------------+
//! |           reserved            |           | hop 0 |M0 O0 0| lifetime 0    |
//! +-------------------------------+           +-------------------------------+
//! | options (8-byte units) ...                |       reachable time 0        |
//!                                             +-------------------------------+
//!                                             |       retrans timer 0         |
//!                                             +-------------------------------+
//! ```
//!
//! The codec is pure; [`run`] is the socket loop (a raw ICMPv6 socket bound to the boot interface; the kernel
//! fills in the checksum and the link-local source). A site with a real IPv6 router on the boot network turns
//! this off (`boot.answer_router_solicitations = false`): iPXE acts on the first advertisement it sees.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// ICMPv6 header plus the 4 reserved bytes.
const SOLICITATION_LEN: usize = 8;
/// RFC 4861: every option length is in units of 8 bytes.
const OPTION_UNIT: usize = 8;
/// All-routers, where solicitations go.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// All-nodes, where our advertisement goes: one answer serves every node soliciting at that moment.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// RFC 4861 6.1.2: hop limit 255 proves the packet was not forwarded; receivers drop anything else.
const NDP_HOP_LIMIT: u32 = 255;
/// At most one advertisement per this interval; solicitations in between share the next one. RFC 4861
/// asks routers for 3 s (MIN_DELAY_BETWEEN_RAS); a boot network wants its nodes answered sooner, and a flood
/// of solicitations still gets at most 10 small multicasts a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why a received ICMPv6 message is not a router solicitation we answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NdpError {
    #[error("ICMPv6 message of {0} bytes is shorter than a router solicitation")]
    Truncated(usize),
    #[error("ICMPv6 type {0} is not a router solicitation")]
    NotSolicitation(u8),
    #[error("router solicitation with code {0} (must be 0)")]
    BadCode(u8),
    #[error("router solicitation option at offset {0} has length 0 or runs past the end")]
    BadOption(usize),
}

/// A validated router solicitation (RFC 4861 6.1.1, the parts visible above the IP layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSolicitation {
    /// The source link-layer address option, when present (iPXE always sends one).
    pub source_link_layer: Option<Vec<u8>>,
}

/// Parses an ICMPv6 message (as a raw ICMPv6 socket delivers it, without the IPv6 header).
pub fn parse_solicitation(bytes: &[u8]) -> Result<RouterSolicitation, NdpError> {
    let (&kind, rest) = bytes.split_first().ok_or(NdpError::Truncated(0))?;
    if kind != ROUTER_SOLICITATION {
        return Err(NdpError::NotSolicitation(kind));
    }
    if bytes.len() < SOLICITATION_LEN {
        return Err(NdpError::Truncated(bytes.len()));
    }
    let code = rest[0];
    if code != 0 {
        return Err(NdpError::BadCode(code));
    }
    let mut source_link_layer = None;
    let mut offset = SOLICITATION_LEN;
    while offset < bytes.len() {
        let units = bytes
            .get(offset + 1)
            .copied()
            .ok_or(NdpError::BadOption(offset))?;
        let len = usize::from(units) * OPTION_UNIT;
        let option = bytes
            .get(offset..offset + len)
            .filter(|_| len > 0)
            .ok_or(NdpError::BadOption(offset))?;
        // Type 1: source link-layer address.
        if option[0] == 1 {
            source_link_layer = Some(option[2..].to_vec());
        }
        offset += len;
    }
    Ok(RouterSolicitation { source_link_layer })
}

/// The advertisement we answer with: no router, no prefixes, no DHCPv6 (M and O clear). The checksum
/// (bytes 2-3) is left 0 for the kernel, which computes it for every raw ICMPv6 socket (RFC 3542 3.1).
pub fn advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct NdpStats {
    pub solicitations: AtomicU64,
    pub advertisements: AtomicU64,
    pub ignored: AtomicU64,
}

/// Opens the raw ICMPv6 socket on `interface`: joined to all-routers, multicasting to the interface with hop
/// limit 255. Needs root or CAP_NET_RAW.
pub fn open(interface: &str) -> io::Result<(socket2::Socket, u32)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let index_path = format!("/sys/class/net/{interface}/ifindex");
    let ifindex: u32 = std::fs::read_to_string(&index_path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, index_path))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_hops_v6(NDP_HOP_LIMIT)?;
    socket.set_unicast_hops_v6(NDP_HOP_LIMIT)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_nonblocking(true)?;
    Ok((socket, ifindex))
}

/// Answers router solicitations on `socket` (from [`open`]) until `shutdown`, at most one advertisement per
/// [`MIN_INTERVAL`].
pub async fn run(
    socket: socket2::Socket,
    ifindex: u32,
    stats: Arc<NdpStats>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    // tokio's UdpSocket only needs readiness plus recv/sendto on the descriptor, which a raw socket has.
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    let dest = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    let mut buf = [0u8; 1500];
    let mut last_sent: Option<Instant> = None;
    let mut pending = false;
    tracing::info!(
        ifindex,
        "answering IPv6 router solicitations on the boot network"
    );
    loop {
        let due = last_sent.map_or_else(Instant::now, |t| t + MIN_INTERVAL);
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep_until(due), if pending => {
                send(&socket, dest, &stats).await;
                last_sent = Some(Instant::now());
                pending = false;
            }
            received = socket.recv(&mut buf) => {
                let n = received?;
                match parse_solicitation(&buf[..n]) {
                    Ok(_) => {
                        stats.solicitations.fetch_add(1, Ordering::Relaxed);
                        pending = true;
                    }
                    // Every other ICMPv6 message of the host arrives here too; most are not for us.
                    Err(NdpError::NotSolicitation(_)) => {}
                    Err(e) => {
                        stats.ignored.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "router solicitation ignored");
                    }
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, dest: SocketAddr, stats: &NdpStats) {
    match socket.send_to(&advertisement(), dest).await {
        Ok(_) => {
            stats.advertisements.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("router advertisement sent (lifetime 0, no prefixes)");
        }
        // E.g. the interface has no link-local address yet; the client solicits again.
        Err(e) => tracing::warn!(error = %e, "cannot send router advertisement"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router solicitation as iPXE sends it (ndp.c `ndp_tx_router_solicitation`): type 133, code 0, the
    /// checksum, 4 reserved bytes, then the source link-layer address option (type 1, one 8-byte unit).
    const IPXE_SOLICITATION: [u8; 16] = [
        0x85, 0x00, 0x3b, 0x41, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34,
        0x56,
    ];

    #[test]
    fn parses_ipxe_solicitation() {
        assert_eq!(
            parse_solicitation(&IPXE_SOLICITATION),
            Ok(RouterSolicitation {
                source_link_layer: Some(vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
            })
        );
        // Linux sends one without options when it has no address yet.
        assert_eq!(
            parse_solicitation(&IPXE_SOLICITATION[..8]),
            Ok(RouterSolicitation {
                source_link_layer: None
            })
        );
    }

    #[test]
    fn rejects_malformed_solicitations() {
        assert_eq!(parse_solicitation(&[]), Err(NdpError::Truncated(0)));
        assert_eq!(
            parse_solicitation(&IPXE_SOLICITATION[..7]),
            Err(NdpError::Truncated(7))
        );
        let mut bad = IPXE_SOLICITATION;
        bad[1] = 1;
        assert_eq!(parse_solicitation(&bad), Err(NdpError::BadCode(1)));
        let mut zero_len = IPXE_SOLICITATION;
        zero_len[9] = 0;
        assert_eq!(parse_solicitation(&zero_len), Err(NdpError::BadOption(8)));
        let mut overrun = IPXE_SOLICITATION;
        overrun[9] = 2;
        assert_eq!(parse_solicitation(&overrun), Err(NdpError::BadOption(8)));
        assert_eq!(
            parse_solicitation(&IPXE_SOLICITATION[..12]),
            Err(NdpError::BadOption(8))
        );
        // A neighbour solicitation (135) is someone else's business.
        assert_eq!(
            parse_solicitation(&[135, 0, 0, 0, 0, 0, 0, 0]),
            Err(NdpError::NotSolicitation(135))
        );
    }

    #[test]
    fn advertisement_golden_bytes() {
        // Type 134, code 0, checksum (kernel), cur hop limit 0, flags 0 (no M, no O: iPXE starts no DHCPv6),
        // router lifetime 0 (not a default router), reachable time 0, retrans timer 0, no options.
        assert_eq!(
            advertisement(),
            [0x86, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
