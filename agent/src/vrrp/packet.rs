//! VRRP advertisement codec, sans-IO: VRRPv3 for IPv4 and IPv6 (RFC 5798) and VRRPv2 (RFC 3768, IPv4 only).
//!
//! [`decode`] and [`encode`] work on the IP payload (what a raw `IPPROTO_VRRP` socket sends); the IP
//! source and destination are inputs because the v3 checksum covers a pseudo-header, and their family says
//! how wide the addresses in the message are (4 or 16 bytes). An IPv6 raw socket never hands over the IPv6
//! header: [`decode_ipv6`] takes the payload with the source, destination and hop limit the socket
//! reports (`IPV6_RECVPKTINFO`, `IPV6_RECVHOPLIMIT`). [`decode_ip_packet`]
//! takes a whole IPv4 packet (what a raw socket receives) and checks the header fields VRRP relies on:
//! protocol 112 and TTL 255 (an advert that crossed a router is spoofed or misrouted).
//!
//! VRRPv3 (RFC 5798 section 5.1), IPv4:
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    IPv4 Fields or IPv6 Fields                 |
//! ...                                                             ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                       IPvX Address(es)                        |
//! +                                                               +
//! +                                                               +
//! +                                                               +
//! +                                                               +
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! Max Adver Int is in centiseconds (12 bits). The checksum is the 16-bit one's complement of the one's
//! complement sum of the VRRP message *and* the IP pseudo-header, as for UDP: IPv4 (source, destination,
//! zero, protocol 112, 16-bit VRRP length) or IPv6 (RFC 8200 section 8.1: source, destination, 32-bit VRRP
//! length, three zero bytes, next header 112). Over IPv6 the source is the sender's link-local address, the
//! destination ff02::12, the hop limit 255 (RFC 5798 section 5.1.2).
//!
//! VRRPv2 (RFC 3768 section 5.1):
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Adver Int   |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         IP Address (1)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            .                                  |
//! |                            .                                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         IP Address (n)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Authentication Data (1)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Authentication Data (2)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! Adver Int is in seconds (8 bits). The checksum covers the VRRP message only. Authentication types 1
//! (simple text password) and 2 (IP AH) were removed by RFC 3768 but keepalived still sends type 1
//! (`auth_type PASS`), so the codec carries the type and the 8 bytes as they are.
//!
//! IPv4 header (RFC 791) as [`decode_ip_packet`] reads it:
//! ```text
//! |Version|  IHL  |Type of Service|          Total Length         |
//! |         Identification        |Flags|      Fragment Offset    |
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |                    Options                    |    Padding    |
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::error::DecodeError;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// Multicast group adverts go to (RFC 5798 section 5.1.1.2).
pub const VRRP_MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 group (RFC 5798 section 5.1.2.2).
pub const VRRP_MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The only TTL a sender uses and a receiver accepts.
pub const VRRP_TTL: u8 = 255;
/// The only VRRP packet type: ADVERTISEMENT.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Most addresses one advert carries (the count is one byte).
pub const MAX_ADDRESSES: usize = 255;
/// Fixed VRRP header length, both versions.
pub const HEADER_LEN: usize = 8;
/// v2 authentication data length.
pub const AUTH_LEN: usize = 8;
/// IPv4 header length without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Type of service keepalived (and lbfleet) set on adverts: precedence "internetwork control".
pub const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// VRRP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: advert interval in seconds, optional (deprecated) authentication, checksum over the message.
    V2,
    /// RFC 5798: advert interval in centiseconds, checksum with the IPv4 pseudo-header.
    V3,
}

impl Version {
    /// The number in the version field.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    /// Version from the number in a role document or a packet.
    pub fn from_number(n: u8) -> Option<Version> {
        match n {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }
}

/// VRRPv2 authentication: the type byte and the 8 bytes of data after the addresses. Zero on v3 adverts.
///
/// `Debug` never prints the data (type 1 carries a password in clear).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0: none, 1: simple text password (keepalived `auth_type PASS`), 2: IP AH.
    pub kind: u8,
    /// The password, zero-padded, for type 1; zero otherwise.
    pub data: [u8; AUTH_LEN],
}

impl Auth {
    /// Authentication type 0, no data: what RFC 3768 requires.
    pub const NONE: Auth = Auth {
        kind: 0,
        data: [0; AUTH_LEN],
    };
    /// Type 1 (simple text password).
    pub const SIMPLE_TEXT: u8 = 1;

    /// Type 1 with `password` (at most 8 bytes kept, zero-padded, as keepalived does).
    pub fn simple_text(password: &[u8]) -> Auth {
        let mut data = [0; AUTH_LEN];
        let n = password.len().min(AUTH_LEN);
        data[..n].copy_from_slice(&password[..n]);
        Auth {
            kind: Self::SIMPLE_TEXT,
            data,
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = if self.data == [0; AUTH_LEN] {
            "zero"
        } else {
            "<redacted>"
        };
        f.debug_struct("Auth")
            .field("kind", &self.kind)
            .field("data", &data)
            .finish()
    }
}

/// One VRRP ADVERTISEMENT, either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub version: Version,
    /// Virtual router ID (1-255; 0 is decoded as sent, the instance rejects it as a VRID mismatch).
    pub vrid: u8,
    /// Sender's priority: 255 the address owner, 0 a master that stops, 1-254 the others.
    pub priority: u8,
    /// v3: Max Adver Int in centiseconds (12 bits, higher values are masked on encode);
    /// v2: Adver Int in seconds (8 bits, higher values saturate to 255 on encode). See [`Self::interval`].
    pub advert_interval: u16,
    /// v2 authentication; always [`Auth::NONE`] for v3 (not on the wire).
    pub auth: Auth,
    /// The virtual addresses, all of the family the advert travels in (at most [`MAX_ADDRESSES`]; `encode`
    /// drops the rest, and addresses of the other family).
    pub addresses: Vec<IpAddr>,
}

impl Advertisement {
    /// The advert interval as a duration, whatever the version's unit.
    pub fn interval(&self) -> Duration {
        match self.version {
            Version::V2 => Duration::from_secs(u64::from(self.advert_interval)),
            Version::V3 => Duration::from_millis(u64::from(self.advert_interval) * 10),
        }
    }

    /// Length of the encoded VRRP message when sent over `family` (an address of it: only the kind counts).
    pub fn encoded_len(&self, family: IpAddr) -> usize {
        let n = self.addresses_of(family).count();
        HEADER_LEN
            + address_len(family) * n
            + match self.version {
                Version::V2 => AUTH_LEN,
                Version::V3 => 0,
            }
    }

    /// The addresses an advert over `family` carries: those of that family, at most [`MAX_ADDRESSES`].
    fn addresses_of(&self, family: IpAddr) -> impl Iterator<Item = &IpAddr> {
        self.addresses
            .iter()
            .filter(move |a| a.is_ipv4() == family.is_ipv4())
            .take(MAX_ADDRESSES)
    }
}

/// Bytes per address in a message sent over `family`'s IP.
fn address_len(family: IpAddr) -> usize {
    if family.is_ipv4() {
        4
    } else {
        16
    }
}

/// Decodes the VRRP message `ip_payload` received from `src` to `dst` (the IP header's addresses, which the
/// v3 checksum covers; both of one family, else [`DecodeError::FamilyMismatch`]). Checks the version (v2
/// only over IPv4), type, length against the address count, and the checksum.
pub fn decode(ip_payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advertisement, DecodeError> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(DecodeError::FamilyMismatch);
    }
    let width = address_len(src);
    let len = ip_payload.len();
    let Some(header) = ip_payload.get(..HEADER_LEN) else {
        return Err(DecodeError::Truncated {
            len,
            need: HEADER_LEN,
        });
    };
    let version = match Version::from_number(header[0] >> 4) {
        Some(Version::V2) if src.is_ipv6() => return Err(DecodeError::BadVersion(2)),
        Some(v) => v,
        None => return Err(DecodeError::BadVersion(header[0] >> 4)),
    };
    let kind = header[0] & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(DecodeError::BadType(kind));
    }
    let vrid = header[1];
    let priority = header[2];
    let count = header[3];
    let trailer = match version {
        Version::V2 => AUTH_LEN,
        Version::V3 => 0,
    };
    let need = HEADER_LEN + width * usize::from(count) + trailer;
    if len < need {
        return Err(DecodeError::Truncated { len, need });
    }
    if len > need || count == 0 {
        return Err(DecodeError::CountMismatch { count, len });
    }
    let got = u16::from_be_bytes([header[6], header[7]]);
    let sum = match version {
        Version::V2 => ones_complement_sum(0, ip_payload),
        Version::V3 => ones_complement_sum(pseudo_header_sum(src, dst, len), ip_payload),
    };
    if sum != 0xffff {
        // What the sender should have put there: the checksum of the message with the field zeroed.
        let without = ones_complement_sub(sum, got);
        return Err(DecodeError::BadChecksum {
            got,
            want: !without,
        });
    }
    let (advert_interval, auth) = match version {
        Version::V2 => {
            let mut data = [0; AUTH_LEN];
            data.copy_from_slice(&ip_payload[len - AUTH_LEN..]);
            (
                u16::from(header[5]),
                Auth {
                    kind: header[4],
                    data,
                },
            )
        }
        Version::V3 => (
            u16::from_be_bytes([header[4], header[5]]) & 0x0fff,
            Auth::NONE,
        ),
    };
    let addresses = ip_payload[HEADER_LEN..len - trailer]
        .chunks_exact(width)
        .map(|c| match <[u8; 16]>::try_from(c) {
            Ok(o) => IpAddr::V6(Ipv6Addr::from(o)),
            Err(_) => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
        })
        .collect();
    Ok(Advertisement {
        version,
        vrid,
        priority,
        advert_interval,
        auth,
        addresses,
    })
}

/// Encodes `advert` as the IP payload sent from `src` to `dst` (v3 puts them in the checksum; v2 ignores
/// them; their family picks the addresses carried). Out-of-range fields are bounded, never a panic: see
/// [`Advertisement`].
pub fn encode(advert: &Advertisement, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let addresses: Vec<&IpAddr> = advert.addresses_of(src).collect();
    let mut out = Vec::with_capacity(advert.encoded_len(src));
    out.push((advert.version.number() << 4) | TYPE_ADVERTISEMENT);
    out.push(advert.vrid);
    out.push(advert.priority);
    out.push(addresses.len() as u8);
    match advert.version {
        Version::V2 => {
            out.push(advert.auth.kind);
            out.push(u8::try_from(advert.advert_interval).unwrap_or(u8::MAX));
        }
        Version::V3 => out.extend_from_slice(&(advert.advert_interval & 0x0fff).to_be_bytes()),
    }
    out.extend_from_slice(&[0, 0]);
    for a in addresses {
        match a {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    let initial = match advert.version {
        Version::V2 => {
            out.extend_from_slice(&advert.auth.data);
            0
        }
        Version::V3 => pseudo_header_sum(src, dst, out.len()),
    };
    let checksum = !ones_complement_sum(initial, &out);
    out[6..8].copy_from_slice(&checksum.to_be_bytes());
    out
}

/// The IPv4 header fields of a received advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub tos: u8,
    pub identification: u16,
    /// Don't Fragment bit.
    pub dont_fragment: bool,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ipv4Header {
    /// A header for an advert from `src` to `dst` as keepalived builds one: TOS 0xc0, TTL 255, protocol 112.
    pub fn advert(src: Ipv4Addr, dst: Ipv4Addr, identification: u16) -> Ipv4Header {
        Ipv4Header {
            tos: TOS_INTERNETWORK_CONTROL,
            identification,
            dont_fragment: false,
            ttl: VRRP_TTL,
            protocol: IPPROTO_VRRP,
            src,
            dst,
        }
    }
}

/// Decodes a whole IPv4 packet carrying an advert (as a raw socket receives it): the header must be a
/// well-formed, unfragmented IPv4 header with a valid checksum, protocol 112 and TTL 255; the payload (up to
/// the header's total length) is then [`decode`]d. Options are skipped.
pub fn decode_ip_packet(bytes: &[u8]) -> Result<(Ipv4Header, Advertisement), DecodeError> {
    let Some(h) = bytes.get(..IPV4_HEADER_LEN) else {
        return Err(DecodeError::Truncated {
            len: bytes.len(),
            need: IPV4_HEADER_LEN,
        });
    };
    if h[0] >> 4 != 4 {
        return Err(DecodeError::BadIpHeader);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if header_len < IPV4_HEADER_LEN || total_len < header_len {
        return Err(DecodeError::BadIpHeader);
    }
    if bytes.len() < total_len {
        return Err(DecodeError::Truncated {
            len: bytes.len(),
            need: total_len,
        });
    }
    if ones_complement_sum(0, &bytes[..header_len]) != 0xffff {
        return Err(DecodeError::BadIpChecksum);
    }
    let flags_fragment = u16::from_be_bytes([h[6], h[7]]);
    if flags_fragment & 0x3fff != 0 {
        // More Fragments set, or a non-zero fragment offset.
        return Err(DecodeError::Fragmented);
    }
    let header = Ipv4Header {
        tos: h[1],
        identification: u16::from_be_bytes([h[4], h[5]]),
        dont_fragment: flags_fragment & 0x4000 != 0,
        ttl: h[8],
        protocol: h[9],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
    };
    if header.protocol != IPPROTO_VRRP {
        return Err(DecodeError::BadProtocol(header.protocol));
    }
    if header.ttl != VRRP_TTL {
        return Err(DecodeError::BadTtl(header.ttl));
    }
    let advert = decode(
        &bytes[header_len..total_len],
        header.src.into(),
        header.dst.into(),
    )?;
    Ok((header, advert))
}

/// Encodes `advert` in a whole IPv4 packet with `header` (no options; total length and header checksum
/// computed), for a socket with `IP_HDRINCL` or a packet test.
pub fn encode_ip_packet(header: &Ipv4Header, advert: &Advertisement) -> Vec<u8> {
    let payload = encode(advert, header.src.into(), header.dst.into());
    let total = (IPV4_HEADER_LEN + payload.len()) as u16;
    let mut out = Vec::with_capacity(usize::from(total));
    out.push(0x45);
    out.push(header.tos);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&header.identification.to_be_bytes());
    out.extend_from_slice(&(if header.dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
    out.push(header.ttl);
    out.push(header.protocol);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&header.src.octets());
    out.extend_from_slice(&header.dst.octets());
    let checksum = !ones_complement_sum(0, &out);
    out[10..12].copy_from_slice(&checksum.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes an advert an IPv6 raw socket received: the VRRP message `payload`, from `src` to `dst` with
/// `hop_limit` (what the socket reports next to it). The hop limit must be 255 (RFC 5798 section 7.1).
pub fn decode_ipv6(
    payload: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
) -> Result<Advertisement, DecodeError> {
    if hop_limit != VRRP_TTL {
        return Err(DecodeError::BadTtl(hop_limit));
    }
    decode(payload, src.into(), dst.into())
}

/// One's complement sum of the IP pseudo-header for a `len`-byte VRRP message from `src` to `dst`.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, len: usize) -> u16 {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = [0u8; 40];
            pseudo[..16].copy_from_slice(&s.octets());
            pseudo[16..32].copy_from_slice(&d.octets());
            pseudo[32..36].copy_from_slice(&(len.min(u32::MAX as usize) as u32).to_be_bytes());
            pseudo[39] = IPPROTO_VRRP;
            ones_complement_sum(0, &pseudo)
        }
        _ => {
            let mut pseudo = [0u8; 12];
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
                pseudo[..4].copy_from_slice(&s.octets());
                pseudo[4..8].copy_from_slice(&d.octets());
            }
            pseudo[9] = IPPROTO_VRRP;
            // A VRRP message is at most 8 + 4 * 255 + 8 bytes; anything longer was rejected before.
            pseudo[10..12].copy_from_slice(&(len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
            ones_complement_sum(0, &pseudo)
        }
    }
}

/// RFC 1071 one's complement sum of `data` (odd length padded with a zero byte), starting from `initial`.
pub(crate) fn ones_complement_sum(initial: u16, data: &[u8]) -> u16 {
    let mut sum = u32::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's complement subtraction: the sum without the word `w`.
fn ones_complement_sub(sum: u16, w: u16) -> u16 {
    let mut s = u32::from(sum) + u32::from(!w);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}
