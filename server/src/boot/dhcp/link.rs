//! The link layer under DHCP: which Ethernet address a request really came from.
//!
//! A UDP socket sees no Ethernet header, so a client could put any MAC in `chaddr` and get that MAC's lease
//! (issue 20 item 1: node takeover). On a directly attached boot network the DHCP loop therefore receives
//! through an `AF_PACKET` socket on the boot interface, filtered in the kernel to IPv4/UDP frames for port 67,
//! and refuses a request whose frame's source address is not its `chaddr`. A relayed request (`giaddr` set)
//! arrives from the relay's address and cannot be checked this way (docs/security.md).
//!
//! `parse_frame` and `check_source` are pure; `LinkSocket` is the thin I/O around them. Everything here is
//! safe code: `SOCK_RAW` hands us the whole frame, so the source address is read from the bytes, not from a
//! `sockaddr_ll`.

use std::io::{self, Read};
use std::net::Ipv4Addr;

use socket2::{Domain, Protocol, SockFilter, SockRef, Socket, Type};

use std::collections::HashMap;

use dhcproto::v4::relay::{RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, OptionCode};

use super::{Mac, SERVER_PORT};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETH_HEADER: usize = 14;
const UDP: u8 = 17;

/// One IPv4/UDP frame as it arrived on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFrame<'a> {
    /// The Ethernet source address.
    pub source: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    /// The UDP payload (the DHCP message).
    pub payload: &'a [u8],
}

/// Why a frame is not a DHCP datagram for us.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short")]
    Truncated(usize),
    #[error("not IPv4/UDP")]
    NotUdp,
    #[error("IP fragment")]
    Fragment,
    #[error("not for port 67")]
    OtherPort,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses an Ethernet II frame carrying IPv4/UDP to port 67 (RFC 791 and RFC 768 headers):
///
/// ```text
///  0       6       12   14            14+IHL*4     +8
///  | dst   | src   | type | IPv4 header | UDP header | DHCP message ...
/// ```
pub fn parse_frame(frame: &[u8]) -> Result<LinkFrame<'_>, FrameError> {
    let short = || FrameError::Truncated(frame.len());
    if frame.len() < ETH_HEADER + 20 + 8 {
        return Err(short());
    }
    if be16(frame, 12) != Some(ETHERTYPE_IPV4) {
        return Err(FrameError::NotUdp);
    }
    let ip = &frame[ETH_HEADER..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != UDP {
        return Err(FrameError::NotUdp);
    }
    // More-fragments flag or a fragment offset: DHCP is never fragmented, and a fragment is not a datagram.
    if be16(ip, 6).ok_or_else(short)? & 0x3fff != 0 {
        return Err(FrameError::Fragment);
    }
    let total = usize::from(be16(ip, 2).ok_or_else(short)?);
    if total < ihl + 8 || total > ip.len() {
        return Err(short());
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(be16(udp, 4).ok_or_else(short)?);
    if udp_len < 8 || udp_len > udp.len() {
        return Err(short());
    }
    if be16(udp, 2) != Some(SERVER_PORT) {
        return Err(FrameError::OtherPort);
    }
    let mut source = [0u8; 6];
    source.copy_from_slice(&frame[6..12]);
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    Ok(LinkFrame {
        source,
        src_ip: addr(12),
        dst_ip: addr(16),
        src_port: be16(udp, 0).ok_or_else(short)?,
        payload: &udp[8..udp_len],
    })
}

/// What the link layer says about a DHCP message's claimed client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCheck {
    /// Sent by the NIC it names (or too short to name one: the decoder refuses it).
    Matches,
    /// Forwarded by a relay agent (`giaddr` set): the frame is the relay's, nothing to compare.
    Relayed,
    /// `chaddr` names another NIC than the one that sent the frame: refused.
    Spoofed { chaddr: [u8; 6] },
}

/// Compares `chaddr` (bytes 28..34 of every BOOTP message, whatever `htype` claims: leases are keyed by those
/// bytes) with the frame's source address, unless `giaddr` (bytes 24..28) says a relay sent it.
pub fn check_source(dhcp: &[u8], source: [u8; 6]) -> SourceCheck {
    let (Some(giaddr), Some(chaddr)) = (dhcp.get(24..28), dhcp.get(28..34)) else {
        return SourceCheck::Matches;
    };
    if giaddr != [0; 4] {
        return SourceCheck::Relayed;
    }
    if chaddr == source {
        SourceCheck::Matches
    } else {
        let mut c = [0u8; 6];
        c.copy_from_slice(chaddr);
        SourceCheck::Spoofed { chaddr: c }
    }
}

/// Relay circuit-id pins (option 82 sub-option 1, RFC 3046), by client MAC.
pub type CircuitPins = HashMap<Mac, Vec<u8>>;

/// Whether a request for a pinned MAC came through its relay circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitCheck {
    /// The MAC has no pin.
    Unpinned,
    /// Relayed with the pinned circuit-id.
    Matches,
    /// Not relayed, or relayed with another circuit-id or none: refused.
    Mismatch { got: Option<Vec<u8>> },
}

/// Checks a request against the pins. Decodes only requests for pinned MACs, so unpinned traffic costs a
/// hash lookup. A pinned MAC must arrive relayed (`giaddr` set): a client on the server's own segment could
/// write option 82 itself. Renewals unicast straight to the server therefore fail for pinned nodes, which
/// rebind through the relay at T2.
pub fn check_circuit(dhcp: &[u8], pins: &CircuitPins) -> CircuitCheck {
    if pins.is_empty() {
        return CircuitCheck::Unpinned;
    }
    let Some(pin) = dhcp
        .get(28..34)
        .and_then(Mac::from_unicast_bytes)
        .and_then(|mac| pins.get(&mac))
    else {
        return CircuitCheck::Unpinned;
    };
    let relayed = dhcp.get(24..28).is_some_and(|g| g != [0; 4]);
    let got = if relayed {
        super::decode(dhcp).ok().and_then(|m| {
            match m.opts().get(OptionCode::RelayAgentInformation) {
                Some(DhcpOption::RelayAgentInformation(info)) => {
                    match info.get(RelayCode::AgentCircuitId) {
                        Some(RelayInfo::AgentCircuitId(id)) => Some(id.clone()),
                        _ => None,
                    }
                }
                _ => None,
            }
        })
    } else {
        None
    };
    if relayed && got.as_ref() == Some(pin) {
        CircuitCheck::Matches
    } else {
        CircuitCheck::Mismatch { got }
    }
}

// Classic BPF (linux/filter.h), for the kernel-side filter of the packet socket.
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_PKTTYPE` and `+ SKF_AD_IFINDEX`: ancillary loads of the packet type and device.
const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
const AD_IFINDEX: u32 = 0xffff_f000 + 8;
const PACKET_OTHERHOST: u32 = 3;
const PACKET_OUTGOING: u32 = 4;

/// The kernel keeps only what the DHCP loop wants: IPv4, UDP, unfragmented, to port 67, received on
/// `ifindex`, addressed to this host or broadcast (not another host's unicast, not our own replies). Everything
/// else never reaches user space, so the socket costs nothing for the boot network's other traffic.
fn dhcp_filter(ifindex: u32) -> [SockFilter; 16] {
    const FAIL: u8 = 15;
    // Jump offsets count from the next instruction.
    let to_fail = |at: u8| FAIL - at - 1;
    [
        SockFilter::new(LD_H_ABS, 0, 0, 12),
        SockFilter::new(JEQ_K, 0, to_fail(1), u32::from(ETHERTYPE_IPV4)),
        SockFilter::new(LD_B_ABS, 0, 0, 23),
        SockFilter::new(JEQ_K, 0, to_fail(3), u32::from(UDP)),
        SockFilter::new(LD_H_ABS, 0, 0, 20),
        SockFilter::new(JSET_K, to_fail(5), 0, 0x3fff),
        SockFilter::new(LDX_B_MSH, 0, 0, 14),
        SockFilter::new(LD_H_IND, 0, 0, 16),
        SockFilter::new(JEQ_K, 0, to_fail(8), u32::from(SERVER_PORT)),
        SockFilter::new(LD_W_ABS, 0, 0, AD_IFINDEX),
        SockFilter::new(JEQ_K, 0, to_fail(10), ifindex),
        SockFilter::new(LD_W_ABS, 0, 0, AD_PKTTYPE),
        SockFilter::new(JEQ_K, to_fail(12), 0, PACKET_OTHERHOST),
        SockFilter::new(JEQ_K, to_fail(13), 0, PACKET_OUTGOING),
        SockFilter::new(RET_K, 0, 0, 0xffff),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// A filter that keeps nothing: the UDP socket on port 67 still sends the replies (and keeps the port, so the
/// kernel sends no ICMP unreachable), but what it would receive is read from the packet socket instead.
pub fn discard_received(socket: &tokio::net::UdpSocket) -> io::Result<()> {
    SockRef::from(socket).attach_filter(&[SockFilter::new(RET_K, 0, 0, 0)])
}

/// The boot interface's index, from sysfs.
fn ifindex(interface: &str) -> io::Result<u32> {
    let path = format!("/sys/class/net/{interface}/ifindex");
    std::fs::read_to_string(&path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, path))
}

/// A packet socket receiving the DHCP frames of one interface. Needs root or CAP_NET_RAW.
#[derive(Debug)]
pub struct LinkSocket {
    // tokio's UdpSocket only needs readiness and recv(2) on the descriptor, which a packet socket has (as
    // `boot::ndp` does for its raw ICMPv6 socket); AsyncFd's registration is `unsafe` in this tokio.
    socket: tokio::net::UdpSocket,
    interface: String,
}

/// Receive buffer asked for the DHCP sockets (UDP and packet): a boot storm (a rack powered on at once) or a
/// flood arrives faster than one thread answers, and the kernel's default (`net.core.rmem_default`, 208 KiB:
/// ~90 small frames, counted with their overhead) drops the rest before the server sees them. The kernel caps
/// it at twice `net.core.rmem_max` (Debian's default 208 KiB; raise it for large sites).
pub const RECV_BUFFER: usize = 4 << 20;

impl LinkSocket {
    /// Opens the socket on `interface`. Must run inside a tokio runtime.
    pub fn open(interface: &str) -> io::Result<LinkSocket> {
        let index = ifindex(interface)?;
        // htons(ETH_P_IP): the protocol of a packet socket is in network byte order.
        let protocol = Protocol::from(i32::from(ETHERTYPE_IPV4.to_be()));
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(protocol))?;
        socket.attach_filter(&dhcp_filter(index))?;
        socket.set_nonblocking(true)?;
        socket.set_recv_buffer_size(RECV_BUFFER)?;
        // Frames of any interface may have queued between socket() and the filter: throw them away.
        let mut scratch = [0u8; 64];
        for _ in 0..100_000 {
            match (&socket).read(&mut scratch) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(LinkSocket {
            socket: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))?,
            interface: interface.to_owned(),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Receives one frame into `buf`; its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An Ethernet frame from `src` carrying `payload` over UDP 68 -> 67, broadcast.
    pub(crate) fn frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        let udp_len = (8 + payload.len()) as u16;
        f.extend_from_slice(&[0, 68, 0, 67, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
        f.extend_from_slice(payload);
        // Ethernet padding after the datagram must not become part of it.
        f.extend_from_slice(&[0xee; 4]);
        f
    }

    fn bootp(giaddr: [u8; 4], chaddr: [u8; 6]) -> Vec<u8> {
        let mut m = vec![0u8; 240];
        m[0] = 1;
        m[24..28].copy_from_slice(&giaddr);
        m[28..34].copy_from_slice(&chaddr);
        m
    }

    const NIC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];
    const VICTIM: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x02];

    #[test]
    fn frames_parse_to_their_datagram_and_source() {
        let msg = bootp([0; 4], NIC);
        let f = frame(NIC, &msg);
        let parsed = parse_frame(&f).unwrap();
        assert_eq!(parsed.source, NIC);
        assert_eq!(parsed.payload, &msg[..]);
        assert_eq!(parsed.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(parsed.src_port, 68);
    }

    #[test]
    fn broken_frames_are_refused_without_panicking() {
        let f = frame(NIC, &bootp([0; 4], NIC));
        for len in 0..f.len() - 4 - 240 {
            assert!(parse_frame(&f[..len]).is_err(), "{len}");
        }
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_frame(&frag), Err(FrameError::Fragment));
        let mut tcp = f.clone();
        tcp[14 + 9] = 6;
        assert_eq!(parse_frame(&tcp), Err(FrameError::NotUdp));
        let mut port = f.clone();
        port[14 + 20 + 3] = 68;
        assert_eq!(parse_frame(&port), Err(FrameError::OtherPort));
        let mut udp_len = f.clone();
        udp_len[14 + 20 + 4] = 0xff;
        assert!(matches!(
            parse_frame(&udp_len),
            Err(FrameError::Truncated(_))
        ));
        let mut ihl = f;
        ihl[14] = 0x4f;
        assert!(parse_frame(&ihl).is_err());
    }

    #[test]
    fn chaddr_must_name_the_sending_nic_unless_relayed() {
        assert_eq!(check_source(&bootp([0; 4], NIC), NIC), SourceCheck::Matches);
        assert_eq!(
            check_source(&bootp([0; 4], VICTIM), NIC),
            SourceCheck::Spoofed { chaddr: VICTIM }
        );
        assert_eq!(
            check_source(&bootp([198, 18, 0, 2], VICTIM), NIC),
            SourceCheck::Relayed
        );
        // Too short to carry chaddr: left to the decoder, which refuses it.
        assert_eq!(check_source(&[1, 2, 3], NIC), SourceCheck::Matches);
    }

    /// A DISCOVER for `mac`, relayed through `giaddr` with `circuit` in option 82 (if any).
    fn relayed(mac: [u8; 6], giaddr: [u8; 4], circuit: Option<&[u8]>) -> Vec<u8> {
        use dhcproto::v4::relay::RelayAgentInformation;
        use dhcproto::v4::{Message, MessageType};
        use dhcproto::{Encodable, Encoder};
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::from(giaddr),
            &mac,
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        if let Some(c) = circuit {
            let mut info = RelayAgentInformation::default();
            info.insert(RelayInfo::AgentCircuitId(c.to_vec()));
            m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    #[test]
    fn a_pinned_mac_must_come_through_its_relay_circuit() {
        let relay = [198, 18, 0, 2];
        let mut pins = CircuitPins::new();
        assert_eq!(
            check_circuit(&relayed(VICTIM, relay, None), &pins),
            CircuitCheck::Unpinned
        );
        pins.insert(Mac(VICTIM), b"sw1/0/7".to_vec());
        assert_eq!(
            check_circuit(&relayed(VICTIM, relay, Some(b"sw1/0/7")), &pins),
            CircuitCheck::Matches
        );
        assert_eq!(
            check_circuit(&relayed(VICTIM, relay, Some(b"sw1/0/8")), &pins),
            CircuitCheck::Mismatch {
                got: Some(b"sw1/0/8".to_vec())
            }
        );
        assert_eq!(
            check_circuit(&relayed(VICTIM, relay, None), &pins),
            CircuitCheck::Mismatch { got: None }
        );
        // Option 82 written by a client on the server's own segment (no giaddr) does not count.
        assert_eq!(
            check_circuit(&relayed(VICTIM, [0; 4], Some(b"sw1/0/7")), &pins),
            CircuitCheck::Mismatch { got: None }
        );
        // Other MACs are not affected.
        assert_eq!(
            check_circuit(&relayed(NIC, relay, None), &pins),
            CircuitCheck::Unpinned
        );
    }
}
