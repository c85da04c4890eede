//! Gratuitous ARP for the VIPs a new master takes: an ARP request for the VIP from the VIP (RFC 5227 section
//! 3's ARP announcement, as keepalived sends it), broadcast so switches and neighbours learn the new MAC at
//! once instead of when their ARP cache expires. For an IPv6 VIP the same job is done by an unsolicited
//! neighbour advertisement (RFC 4861 section 7.2.6, as keepalived's `ndisc.c` sends it): from the VIP to
//! all-nodes ff02::1, hop limit 255, Override set (Router when the interface forwards), with the target
//! link-layer address option. The frame encoding is pure (`announcement`, `neighbour_advertisement`); the
//! socket is an `AF_PACKET` datagram socket, which lets the kernel build the Ethernet header.
//!
//! ```text
//!  ARP over Ethernet (28 bytes, big-endian)
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//! | htype 1| ptype  | hlen | plen | oper 1 | sender MAC| sender IP | target MAC| target IP |
//! |  u16   | 0x0800 | 6    | 4    | request| 6         | VIP       | ff..ff    | VIP       |
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//!
//!  IPv6 header (40) | ICMPv6 neighbour advertisement (24) | target link-layer address option (8)
//! +---------------------------------------------------------------------------------------+
//! | 6 | tc 0 | flow 0 | payload len 32 | next header 58 | hop limit 255 | src VIP | ff02::1 |
//! | type 136 | code 0 | checksum | R S O flags + reserved (32 bits) | target VIP (16)        |
//! | option type 2 | length 1 (8 bytes) | MAC (6)                                            |
//! +---------------------------------------------------------------------------------------+
//! ```

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETH_P_ARP`.
const ETH_P_ARP: u16 = 0x0806;
/// `ETH_P_IPV6`.
const ETH_P_IPV6: u16 = 0x86dd;
/// Length of the IPv6 neighbour advertisement frame (after the Ethernet header).
pub const NA_LEN: usize = 72;
/// ff02::1, all nodes.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet multicast address of ff02::1 (RFC 2464 section 7).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ARP_LEN: usize = 28;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The announcement of `vip` at `mac`.
pub fn announcement(mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&vip.octets());
    p[18..24].copy_from_slice(&BROADCAST);
    p[24..28].copy_from_slice(&vip.octets());
    p
}

/// The unsolicited neighbour advertisement of `vip` at `mac` (IPv6 packet, Ethernet header left to the
/// socket); `router` sets the Router flag (the interface forwards IPv6).
pub fn neighbour_advertisement(mac: [u8; 6], vip: Ipv6Addr, router: bool) -> [u8; NA_LEN] {
    let mut p = [0u8; NA_LEN];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&32u16.to_be_bytes());
    p[6] = 58; // ICMPv6
    p[7] = 255;
    p[8..24].copy_from_slice(&vip.octets());
    p[24..40].copy_from_slice(&ALL_NODES.octets());
    p[40] = 136;
    p[44] = NA_FLAG_OVERRIDE | if router { NA_FLAG_ROUTER } else { 0 };
    p[48..64].copy_from_slice(&vip.octets());
    p[64] = 2; // target link-layer address
    p[65] = 1;
    p[66..72].copy_from_slice(&mac);
    let mut pseudo = [0u8; 40];
    pseudo[..32].copy_from_slice(&p[8..40]);
    pseudo[32..36].copy_from_slice(&32u32.to_be_bytes());
    pseudo[39] = 58;
    let sum = super::packet::ones_complement_sum(
        super::packet::ones_complement_sum(0, &pseudo),
        &p[40..],
    );
    p[42..44].copy_from_slice(&(!sum).to_be_bytes());
    p
}

/// Whether `interface` forwards IPv6 (its NA then says Router, as keepalived's does).
pub fn forwards_ipv6(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"))
        .is_ok_and(|s| s.trim() == "1")
}

/// An `AF_PACKET` socket that sends ARP frames (and IPv6 neighbour advertisements) out of one interface.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl ArpSocket {
    pub fn open(ifindex: u32) -> io::Result<ArpSocket> {
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                // Protocol 0: this socket only sends, it receives nothing.
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(ArpSocket { fd, ifindex })
    }

    /// Broadcasts one announcement of `vip` from `mac`.
    pub fn announce(&self, mac: [u8; 6], vip: Ipv4Addr) -> io::Result<()> {
        self.send(&announcement(mac, vip), ETH_P_ARP, BROADCAST)
    }

    /// Sends one unsolicited neighbour advertisement of `vip` at `mac` to all nodes.
    pub fn advertise(&self, mac: [u8; 6], vip: Ipv6Addr, router: bool) -> io::Result<()> {
        self.send(
            &neighbour_advertisement(mac, vip, router),
            ETH_P_IPV6,
            ALL_NODES_MAC,
        )
    }

    fn send(&self, frame: &[u8], ethertype: u16, to: [u8; 6]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&to);
        // SAFETY: `frame` and `addr` are live for the call and their exact sizes are passed; the fd is owned.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout keepalived's `send_gratuitous_arp_immediate` builds (request, sender = target = VIP, target
    /// MAC broadcast), with a test MAC.
    #[test]
    fn announcement_bytes() {
        let got = announcement([0x02, 0, 0, 0, 0, 0x01], Ipv4Addr::new(198, 18, 0, 10));
        #[rustfmt::skip]
        let want = [
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0, 0, 0, 0, 0x01, 198, 18, 0, 10,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 198, 18, 0, 10,
        ];
        assert_eq!(got, want);
    }
}
