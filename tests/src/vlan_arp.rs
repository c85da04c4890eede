//! "Who has this address on VLAN N?" from a namespace on the host, whose kernel has no 8021q module (so no
//! `eth0.100` there), no bridge VLAN filtering and no tc `vlan` action: an 802.1Q-tagged ARP request written
//! on an `AF_PACKET` socket, and the replies read back with the VLAN tag the kernel moved into the packet's
//! auxiliary data. A reply to a tagged request can only come from a machine whose VLAN interface exists and
//! holds the address (a machine without the VLAN interface drops the tagged frame), and its sender MAC says
//! which machine that is.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
/// `TP_STATUS_VLAN_VALID` in `tpacket_auxdata.tp_status`.
const TP_STATUS_VLAN_VALID: u32 = 0x10;

/// An ARP reply seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpReply {
    /// The MAC the address resolved to.
    pub mac: [u8; 6],
    /// The VLAN it came on (`None`: untagged).
    pub vlan: Option<u16>,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The tagged ARP request frame (Ethernet header with an 802.1Q tag, then the ARP request for `target`).
pub fn request_frame(src_mac: [u8; 6], vlan: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(46);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The reply for `target` in `frame` (as a packet socket hands it over: the tag either still in the frame or
/// given as `aux_vlan`).
pub fn parse_reply(frame: &[u8], aux_vlan: Option<u16>, target: Ipv4Addr) -> Option<ArpReply> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (vlan, arp) = if ethertype == ETH_P_8021Q {
        let tci = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
        let inner = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        (
            Some(tci & 0x0fff),
            (inner == ETH_P_ARP).then(|| frame.get(18..))??,
        )
    } else if ethertype == ETH_P_ARP {
        (aux_vlan, frame.get(14..)?)
    } else {
        return None;
    };
    // An IPv4-over-Ethernet reply whose sender is `target`.
    if arp.get(..8)? != [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]
        || arp.get(14..18)? != target.octets()
    {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(arp.get(8..14)?);
    Some(ArpReply { mac, vlan })
}

/// Asks on `ifname` (in the calling thread's network namespace; see `Netns::run_inside`) who has `target` on
/// VLAN `vlan`, once every 50 ms, until a tagged reply arrives or `timeout` passes (`None`).
pub fn who_has(
    ifname: &str,
    src_mac: [u8; 6],
    vlan: u16,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
) -> io::Result<Option<ArpReply>> {
    let sock = PacketSocket::open(ifname)?;
    let frame = request_frame(src_mac, vlan, sender, target);
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            sock.send(&frame)?;
            next_send = Instant::now() + Duration::from_millis(50);
        }
        if let Some((data, aux_vlan)) = sock.recv()? {
            if let Some(r) = parse_reply(&data, aux_vlan, target) {
                if r.vlan == Some(vlan) {
                    return Ok(Some(r));
                }
            }
        }
    }
    Ok(None)
}

/// A raw packet socket bound to one interface, receiving every protocol with the VLAN auxiliary data.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

#[allow(unsafe_code)]
impl PacketSocket {
    fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the whole call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface index"))?;
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Reads wake at least every 20 ms, so the sender keeps its schedule.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: as above, a live timeval and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is live for the call and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `frame` and `addr` are live for the call and their exact sizes are passed.
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

    /// One frame and its VLAN from the auxiliary data, or `None` when none came within the read timeout.
    fn recv(&self) -> io::Result<Option<(Vec<u8>, Option<u16>)>> {
        let mut buf = vec![0u8; 2048];
        // Room for one `tpacket_auxdata` control message (and some).
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is valid before the fields are set.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = std::ptr::addr_of_mut!(iov);
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, all live and sized for the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        let mut vlan = None;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled, within `msg_controllen`.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points into `control` (CMSG_FIRSTHDR/CMSG_NXTHDR checked bounds).
            let hdr = unsafe { &*cmsg };
            if hdr.cmsg_level == libc::SOL_PACKET && hdr.cmsg_type == libc::PACKET_AUXDATA {
                // SAFETY: a PACKET_AUXDATA message carries one tpacket_auxdata; read unaligned to be safe.
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Ok(Some((buf, vlan)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_request_and_replies_tagged_or_not() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let (me, vip) = (
            Ipv4Addr::new(198, 18, 100, 200),
            Ipv4Addr::new(198, 18, 100, 10),
        );
        let req = request_frame(mac, 100, me, vip);
        assert_eq!(req.len(), 46);
        assert_eq!(&req[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x06]);
        assert_eq!(&req[42..46], &vip.octets());

        // A reply from 52:54:00:00:00:02 as the wire carries it (tag in the frame), then as a packet socket
        // hands it over after the kernel took the tag out.
        let owner = [0x52, 0x54, 0, 0, 0, 2];
        let mut arp = vec![0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02];
        arp.extend_from_slice(&owner);
        arp.extend_from_slice(&vip.octets());
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&me.octets());
        let mut tagged = Vec::new();
        tagged.extend_from_slice(&mac);
        tagged.extend_from_slice(&owner);
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 100, 0x08, 0x06]);
        tagged.extend_from_slice(&arp);
        let want = ArpReply {
            mac: owner,
            vlan: Some(100),
        };
        assert_eq!(parse_reply(&tagged, None, vip), Some(want));
        let mut untagged = tagged[..12].to_vec();
        untagged.extend_from_slice(&[0x08, 0x06]);
        untagged.extend_from_slice(&arp);
        assert_eq!(parse_reply(&untagged, Some(100), vip), Some(want));
        assert_eq!(
            parse_reply(&untagged, None, vip),
            Some(ArpReply {
                mac: owner,
                vlan: None
            })
        );
        // Not a reply for this address, or not ARP at all.
        assert_eq!(parse_reply(&untagged, Some(100), me), None);
        assert_eq!(parse_reply(&req, None, vip), None);
        assert_eq!(parse_reply(&untagged[..20], Some(100), vip), None);
        assert_eq!(mac_string(owner), "52:54:00:00:00:02");
        assert_eq!(parse_mac("52:54:00:00:00:02"), Some(owner));
        assert_eq!(parse_mac("52:54:00:00:00"), None);
    }
}
