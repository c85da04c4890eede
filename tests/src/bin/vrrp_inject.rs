//! Sends crafted VRRP packets for the malformed/spoofed-advert test: each kind once, from SRC to 224.0.0.18 on
//! the namespace's default multicast route (raw socket with the IP header included, so TTL and checksums are
//! exactly as crafted). Prints one line per packet sent.
//!
//! Usage: vrrp-inject SRC VRID  (kinds: ttl, vrid, checksum, truncated, version)

use std::net::{Ipv4Addr, SocketAddrV4};

use lbfleet_agent::vrrp::{encode_ip_packet, Advertisement, Auth, Ipv4Header, Version};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(src), Some(vrid)) = (
        args.first().and_then(|a| a.parse::<Ipv4Addr>().ok()),
        args.get(1).and_then(|a| a.parse::<u8>().ok()),
    ) else {
        return Err("usage: vrrp-inject SRC VRID".into());
    };
    let dst = Ipv4Addr::new(224, 0, 0, 18);
    // Priority 254 from a spoofed source: accepted, it would preempt the agent; every kind below must be dropped.
    let advert = |vrid: u8| Advertisement {
        version: Version::V3,
        vrid,
        priority: 254,
        advert_interval: 10,
        auth: Auth::NONE,
        addresses: vec![std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10))],
    };
    let good = encode_ip_packet(&Ipv4Header::advert(src, dst, 1), &advert(vrid));
    let mut packets: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut ttl = encode_ip_packet(
        &Ipv4Header {
            ttl: 254,
            ..Ipv4Header::advert(src, dst, 2)
        },
        &advert(vrid),
    );
    // Keep the IP header checksum valid for the new TTL: only the TTL is wrong.
    ttl[10] = 0;
    ttl[11] = 0;
    let c = ip_checksum(&ttl[..20]);
    ttl[10..12].copy_from_slice(&c.to_be_bytes());
    packets.push(("ttl", ttl));
    packets.push((
        "vrid",
        encode_ip_packet(
            &Ipv4Header::advert(src, dst, 3),
            &advert(vrid.wrapping_add(1).max(1)),
        ),
    ));
    let mut checksum = good.clone();
    let last = checksum.len() - 1;
    checksum[last] ^= 0xff;
    packets.push(("checksum", checksum));
    // The IP header says the whole length; the VRRP message is cut after its 8-byte header.
    let mut truncated = good[..28].to_vec();
    truncated[2..4].copy_from_slice(&28u16.to_be_bytes());
    truncated[10] = 0;
    truncated[11] = 0;
    let c = ip_checksum(&truncated[..20]);
    truncated[10..12].copy_from_slice(&c.to_be_bytes());
    packets.push(("truncated", truncated));
    let v2 = Advertisement {
        version: Version::V2,
        advert_interval: 1,
        ..advert(vrid)
    };
    packets.push((
        "version",
        encode_ip_packet(&Ipv4Header::advert(src, dst, 5), &v2),
    ));

    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))
        .map_err(|e| format!("raw socket: {e}"))?;
    sock.set_header_included_v4(true)
        .map_err(|e| format!("IP_HDRINCL: {e}"))?;
    // No multicast route in a test namespace: send out of the interface that has SRC.
    sock.set_multicast_if_v4(&src)
        .map_err(|e| format!("IP_MULTICAST_IF: {e}"))?;
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    for (kind, p) in packets {
        sock.send_to(&p, &to)
            .map_err(|e| format!("send {kind}: {e}"))?;
        println!("sent {kind} ({} bytes)", p.len());
    }
    Ok(())
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
