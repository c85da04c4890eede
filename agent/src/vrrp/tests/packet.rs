//! The advert codec against keepalived 2.2.7's bytes and against malformed and spoofed packets.

use std::net::{IpAddr, Ipv4Addr};

use super::{lab, lab6};
use crate::vrrp::packet::{decode_ipv6, VRRP_MULTICAST_V6};
use crate::vrrp::{
    decode, decode_ip_packet, encode, encode_ip_packet, Advertisement, Auth, DecodeError,
    DropCounters, DropReason, Ipv4Header, Version, IPPROTO_VRRP, VRRP_MULTICAST_V4, VRRP_TTL,
};

/// Packets of one capture file: one IPv4 packet in hex per line.
fn packets(hex: &str) -> Vec<Vec<u8>> {
    hex.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim();
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex in test data"))
                .collect()
        })
        .collect()
}

/// Decodes every packet of a capture, checks the header and what `expect` says about each advert, and
/// re-encodes the whole IPv4 packet byte for byte. Returns the adverts.
fn golden(hex: &str, expect: Advertisement) -> Vec<Advertisement> {
    let packets = packets(hex);
    assert!(
        packets.len() >= 3,
        "capture has adverts and the stop advert"
    );
    let mut adverts = Vec::new();
    for (i, bytes) in packets.iter().enumerate() {
        let (header, advert) =
            decode_ip_packet(bytes).unwrap_or_else(|e| panic!("packet {i}: {e}"));
        assert_eq!(header.src, lab(2));
        assert_eq!(header.dst, VRRP_MULTICAST_V4);
        assert_eq!(header.ttl, VRRP_TTL);
        assert_eq!(header.protocol, IPPROTO_VRRP);
        assert_eq!(header.tos, 0xc0);
        // keepalived stops with one priority-0 advert; the others carry the configured priority.
        let priority = if i == packets.len() - 1 {
            0
        } else {
            expect.priority
        };
        assert_eq!(
            advert,
            Advertisement {
                priority,
                ..expect.clone()
            },
            "packet {i}"
        );
        assert_eq!(
            &encode_ip_packet(&header, &advert),
            bytes,
            "packet {i} re-encodes"
        );
        assert_eq!(
            encode(&advert, header.src.into(), header.dst.into()),
            bytes[20..],
            "packet {i}: VRRP message re-encodes"
        );
        adverts.push(advert);
    }
    adverts
}

#[test]
fn keepalived_v2_decodes_and_reencodes() {
    golden(
        include_str!("../testdata/keepalived_v2.hex"),
        Advertisement {
            version: Version::V2,
            vrid: 51,
            priority: 150,
            advert_interval: 1,
            auth: Auth::NONE,
            addresses: vec![lab(10)],
        },
    );
}

#[test]
fn keepalived_v2_with_password_decodes_and_reencodes() {
    let adverts = golden(
        include_str!("../testdata/keepalived_v2_auth.hex"),
        Advertisement {
            version: Version::V2,
            vrid: 52,
            priority: 100,
            advert_interval: 2,
            auth: Auth::simple_text(b"s3cr3t"),
            addresses: vec![lab(10), lab(11)],
        },
    );
    let shown = format!("{:?}", adverts[0]);
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("115, 51"),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn keepalived_v3_decodes_and_reencodes() {
    let adverts = golden(
        include_str!("../testdata/keepalived_v3.hex"),
        Advertisement {
            version: Version::V3,
            vrid: 53,
            priority: 200,
            advert_interval: 100,
            auth: Auth::NONE,
            addresses: vec![lab(10)],
        },
    );
    assert_eq!(adverts[0].interval(), std::time::Duration::from_secs(1));
}

/// An IPv6 packet's source, destination and hop limit, and its payload: what an IPv6 raw socket reports.
fn ipv6_parts(p: &[u8]) -> (std::net::Ipv6Addr, std::net::Ipv6Addr, u8, &[u8]) {
    let a = |r: std::ops::Range<usize>| {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&p[r]).expect("16 bytes"))
    };
    (a(8..24), a(24..40), p[7], &p[40..])
}

/// keepalived's IPv6 VRRPv3 adverts (`capture6.sh`): link-local source, ff02::12, hop limit 255, next header
/// 112, traffic class 0xc0, a 16-byte address; the checksum covers the IPv6 pseudo-header.
#[test]
fn keepalived_v3_over_ipv6_decodes_and_reencodes() {
    let packets = packets(include_str!("../testdata/keepalived_v3_ipv6.hex"));
    assert_eq!(packets.len(), 2, "one advert and the stop advert");
    for (i, bytes) in packets.iter().enumerate() {
        assert_eq!(bytes[0], 0x6c, "version 6, traffic class 0xc0");
        assert_eq!(bytes[6], IPPROTO_VRRP);
        let (src, dst, hops, payload) = ipv6_parts(bytes);
        assert!(src.segments()[0] == 0xfe80, "link-local source {src}");
        assert_eq!(dst, VRRP_MULTICAST_V6);
        let advert = decode_ipv6(payload, src, dst, hops).unwrap_or_else(|e| panic!("{i}: {e}"));
        assert_eq!(
            advert,
            Advertisement {
                version: Version::V3,
                vrid: 51,
                priority: if i == 0 { 150 } else { 0 },
                advert_interval: 100,
                auth: Auth::NONE,
                addresses: vec![lab6(0x10)],
            }
        );
        assert_eq!(
            encode(&advert, src.into(), dst.into()),
            payload,
            "{i} re-encodes"
        );
        // Hop limit other than 255: off-link, dropped.
        assert_eq!(
            decode_ipv6(payload, src, dst, 254),
            Err(DecodeError::BadTtl(254))
        );
        // The checksum covers the IPv6 pseudo-header: another source does not verify.
        let other = "fe80::1".parse().expect("address");
        assert!(matches!(
            decode_ipv6(payload, other, dst, 255),
            Err(DecodeError::BadChecksum { .. })
        ));
        // Read as IPv4 (4-byte addresses), the length does not fit the count.
        assert!(decode(payload, lab(3), VRRP_MULTICAST_V4.into()).is_err());
    }
}

#[test]
fn ipv6_adverts_carry_only_ipv6_addresses_and_v2_is_ipv4_only() {
    let src: std::net::Ipv6Addr = "fe80::2".parse().expect("address");
    let advert = Advertisement {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        advert_interval: 10,
        auth: Auth::NONE,
        addresses: vec![lab6(0x10), lab(10), lab6(0x11)],
    };
    let bytes = encode(&advert, src.into(), VRRP_MULTICAST_V6.into());
    assert_eq!(bytes.len(), 8 + 2 * 16);
    assert_eq!(bytes.len(), advert.encoded_len(src.into()));
    let back = decode_ipv6(&bytes, src, VRRP_MULTICAST_V6, 255).expect("decodes");
    assert_eq!(back.addresses, vec![lab6(0x10), lab6(0x11)]);
    // Over IPv4 the same advert carries the IPv4 address alone.
    let v4 = encode(&advert, lab(2), VRRP_MULTICAST_V4.into());
    assert_eq!(v4.len(), 8 + 4);
    // VRRPv2 has no IPv6 form (RFC 3768).
    let mut v2 = bytes.clone();
    v2[0] = 0x21;
    assert_eq!(
        decode_ipv6(&v2, src, VRRP_MULTICAST_V6, 255),
        Err(DecodeError::BadVersion(2))
    );
    // Mixed families are a caller's mistake, reported, never a panic.
    assert_eq!(
        decode(&bytes, src.into(), VRRP_MULTICAST_V4.into()),
        Err(DecodeError::FamilyMismatch)
    );
}

/// keepalived's unsolicited neighbour advertisement for its IPv6 VIP, byte for byte.
#[test]
fn neighbour_advertisement_matches_keepalived() {
    let line = include_str!("../testdata/keepalived_ipv6_na.hex");
    let (eth, ip) = line
        .trim()
        .split_once(' ')
        .expect("ethernet and IPv6 parts");
    let eth = packets(eth).remove(0);
    let ip = packets(ip).remove(0);
    assert_eq!(&eth[..6], &[0x33, 0x33, 0, 0, 0, 1], "to all nodes");
    let mac: [u8; 6] = eth[6..12].try_into().expect("6 bytes");
    let IpAddr::V6(vip) = lab6(0x10) else {
        unreachable!()
    };
    assert_eq!(
        crate::vrrp::garp::neighbour_advertisement(mac, vip, false).as_slice(),
        ip.as_slice()
    );
    // With Router set only the flag and the checksum differ.
    let r = crate::vrrp::garp::neighbour_advertisement(mac, vip, true);
    assert_eq!(r[44], 0xa0);
    let diff: Vec<usize> = (0..ip.len()).filter(|i| r[*i] != ip[*i]).collect();
    assert!(diff.iter().all(|i| [42, 43, 44].contains(i)), "{diff:?}");
}

#[test]
fn keepalived_v3_with_several_vips_decodes_and_reencodes() {
    let adverts = golden(
        include_str!("../testdata/keepalived_v3_multi.hex"),
        Advertisement {
            version: Version::V3,
            vrid: 54,
            priority: 120,
            advert_interval: 10,
            auth: Auth::NONE,
            addresses: vec![
                lab(10),
                lab(11),
                lab(12),
                IpAddr::V4(Ipv4Addr::new(198, 18, 2, 254)),
            ],
        },
    );
    assert_eq!(adverts[0].interval(), std::time::Duration::from_millis(100));
}

/// A valid v3 advert in a whole IPv4 packet, for the malformed-packet tests.
fn v3_packet() -> (Ipv4Header, Advertisement, Vec<u8>) {
    let bytes = packets(include_str!("../testdata/keepalived_v3_multi.hex")).remove(0);
    let (header, advert) = decode_ip_packet(&bytes).expect("golden packet");
    (header, advert, bytes)
}

/// Rewrites the IPv4 header checksum after a test changed a header byte.
fn fix_ip_checksum(bytes: &mut [u8], header_len: usize) {
    bytes[10] = 0;
    bytes[11] = 0;
    let mut sum = 0u32;
    for c in bytes[..header_len].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    bytes[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[test]
fn ttl_other_than_255_is_dropped() {
    let (header, advert, _) = v3_packet();
    for ttl in [0, 1, 64, 254] {
        let bytes = encode_ip_packet(&Ipv4Header { ttl, ..header }, &advert);
        assert_eq!(decode_ip_packet(&bytes), Err(DecodeError::BadTtl(ttl)));
    }
}

#[test]
fn other_ip_protocol_is_dropped() {
    let (header, advert, _) = v3_packet();
    let bytes = encode_ip_packet(
        &Ipv4Header {
            protocol: 17,
            ..header
        },
        &advert,
    );
    assert_eq!(decode_ip_packet(&bytes), Err(DecodeError::BadProtocol(17)));
}

#[test]
fn malformed_ip_headers_are_dropped() {
    let (_, _, good) = v3_packet();
    let mut bad = good.clone();
    bad[11] ^= 1;
    assert_eq!(decode_ip_packet(&bad), Err(DecodeError::BadIpChecksum));

    let mut v6 = good.clone();
    v6[0] = 0x65;
    assert_eq!(decode_ip_packet(&v6), Err(DecodeError::BadIpHeader));

    let mut short_ihl = good.clone();
    short_ihl[0] = 0x44;
    assert_eq!(decode_ip_packet(&short_ihl), Err(DecodeError::BadIpHeader));

    let mut fragment = good.clone();
    fragment[6] = 0x20; // More Fragments
    fix_ip_checksum(&mut fragment, 20);
    assert_eq!(decode_ip_packet(&fragment), Err(DecodeError::Fragmented));

    assert_eq!(
        decode_ip_packet(&good[..19]),
        Err(DecodeError::Truncated { len: 19, need: 20 })
    );
    // Total length says more than arrived.
    assert_eq!(
        decode_ip_packet(&good[..good.len() - 1]),
        Err(DecodeError::Truncated {
            len: good.len() - 1,
            need: good.len()
        })
    );
    // Bytes after the total length (Ethernet padding) are not part of the advert.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 6]);
    assert!(decode_ip_packet(&padded).is_ok());
}

#[test]
fn ip_options_are_skipped() {
    let (_, advert, good) = v3_packet();
    let mut with_options = good[..20].to_vec();
    with_options[0] = 0x46;
    with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    with_options.extend_from_slice(&good[20..]);
    let total = with_options.len() as u16;
    with_options[2..4].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut with_options, 24);
    assert_eq!(decode_ip_packet(&with_options).map(|(_, a)| a), Ok(advert));
}

#[test]
fn malformed_vrrp_messages_are_dropped_by_cause() {
    let (h, _, good) = v3_packet();
    let vrrp = &good[20..];
    let d = |b: &[u8]| decode(b, h.src.into(), h.dst.into());

    assert_eq!(
        d(&vrrp[..7]),
        Err(DecodeError::Truncated { len: 7, need: 8 })
    );
    // Four addresses announced, three present.
    assert_eq!(
        d(&vrrp[..vrrp.len() - 4]),
        Err(DecodeError::Truncated {
            len: vrrp.len() - 4,
            need: vrrp.len()
        })
    );

    let mut version = vrrp.to_vec();
    version[0] = 0x41;
    assert_eq!(d(&version), Err(DecodeError::BadVersion(4)));

    let mut kind = vrrp.to_vec();
    kind[0] = 0x32;
    assert_eq!(d(&kind), Err(DecodeError::BadType(2)));

    let mut longer = vrrp.to_vec();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        d(&longer),
        Err(DecodeError::CountMismatch {
            count: 4,
            len: vrrp.len() + 4
        })
    );

    let mut zero = vrrp[..8].to_vec();
    zero[3] = 0;
    assert_eq!(
        d(&zero),
        Err(DecodeError::CountMismatch { count: 0, len: 8 })
    );

    let want = u16::from_be_bytes([vrrp[6], vrrp[7]]);
    let mut checksum = vrrp.to_vec();
    checksum[7] ^= 0x10;
    assert_eq!(
        d(&checksum),
        Err(DecodeError::BadChecksum {
            got: want ^ 0x10,
            want
        })
    );
    // A changed priority without a new checksum.
    let mut priority = vrrp.to_vec();
    priority[2] = 255;
    assert!(matches!(d(&priority), Err(DecodeError::BadChecksum { .. })));
}

#[test]
fn v3_checksum_covers_the_pseudo_header_and_v2_does_not() {
    let (h, _, good) = v3_packet();
    let spoofed = decode(&good[20..], lab(3), h.dst.into());
    assert!(
        matches!(spoofed, Err(DecodeError::BadChecksum { .. })),
        "{spoofed:?}"
    );

    let v2 = packets(include_str!("../testdata/keepalived_v2.hex")).remove(0);
    assert!(decode(&v2[20..], lab(3), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))).is_ok());
}

#[test]
fn encode_bounds_out_of_range_fields() {
    let advert = Advertisement {
        version: Version::V2,
        vrid: 1,
        priority: 100,
        advert_interval: 1000,
        auth: Auth::NONE,
        addresses: vec![lab(10); 300],
    };
    let bytes = encode(&advert, lab(2), VRRP_MULTICAST_V4.into());
    let back = decode(&bytes, lab(2), VRRP_MULTICAST_V4.into()).expect("bounded encode decodes");
    assert_eq!(back.advert_interval, 255);
    assert_eq!(back.addresses.len(), 255);

    let v3 = Advertisement {
        version: Version::V3,
        advert_interval: 0x1abc,
        ..advert
    };
    let back = decode(
        &encode(&v3, lab(2), VRRP_MULTICAST_V4.into()),
        lab(2),
        VRRP_MULTICAST_V4.into(),
    )
    .expect("bounded encode decodes");
    assert_eq!(back.advert_interval, 0x0abc);
}

#[test]
fn every_decode_error_has_its_own_counter() {
    let errors = [
        DecodeError::Truncated { len: 0, need: 8 },
        DecodeError::BadVersion(4),
        DecodeError::BadType(2),
        DecodeError::BadChecksum { got: 0, want: 1 },
        DecodeError::CountMismatch { count: 0, len: 8 },
        DecodeError::BadIpHeader,
        DecodeError::BadIpChecksum,
        DecodeError::BadProtocol(6),
        DecodeError::BadTtl(64),
        DecodeError::Fragmented,
    ];
    let mut counters = DropCounters::default();
    for (i, e) in errors.iter().enumerate() {
        for _ in 0..=i {
            counters.record(e.reason());
        }
    }
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(counters.get(e.reason()), i as u64 + 1, "{e}");
    }
    assert_eq!(counters.total(), 55);
    assert_eq!(counters.nonzero().count(), errors.len());
    assert_eq!(counters.get(DropReason::VridMismatch), 0);

    let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DropReason::ALL.len(), "names are distinct");
}
