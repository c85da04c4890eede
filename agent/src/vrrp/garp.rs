//! Gratuitous ARP for the VIPs a new master takes: an ARP request for the VIP from the VIP (RFC 5227 section
//! 3's ARP announcement, as keepalived sends it), broadcast so switches and neighbours learn the new MAC at
//! once instead of when their ARP cache expires. The frame encoding is pure (`announcement`); the socket is an
//! `AF_PACKET` datagram socket, which lets the kernel build the Ethernet header.
//!
//! ```text
//!  ARP over Ethernet (28 bytes, big-endian)
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//! | htype 1| ptype  | hlen | plen | oper 1 | sender MAC| sender IP | target MAC| target IP |
//! |  u16   | 0x0800 | 6    | 4    | request| 6         | VIP       | ff..ff    | VIP       |
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//! ```

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETH_P_ARP`.
const ETH_P_ARP: u16 = 0x0806;
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

/// An `AF_PACKET` socket that sends ARP frames out of one interface.
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
        let frame = announcement(mac, vip);
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&BROADCAST);
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
