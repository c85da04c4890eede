//! VRRP decoder: any bytes are an advert or a `DecodeError`, never a panic, as a whole IPv4 packet, as a
//! bare VRRP message over IPv4 and as one over IPv6 (what an IPv6 raw socket hands over); what decodes re-encodes to bytes that decode to the same advert; a decoded advert fed
//! to a running instance (v2 and v3, Backup and Master) never panics and leaves it in a valid state.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use lbfleet_agent::vrrp::packet::decode_ipv6;
use lbfleet_agent::vrrp::{
    decode, decode_ip_packet, encode, encode_ip_packet, Advertisement, Auth, Input, Instance,
    InstanceConfig, State, Version,
};
use libfuzzer_sys::fuzz_target;

fn instance(version: Version, now: Instant, master: bool, v6: bool) -> Instance {
    let mut i = Instance::new(InstanceConfig {
        version,
        vrid: 51,
        priority: 100,
        advert_interval: Duration::from_secs(1),
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: false,
        primary_address: if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))
        },
        vips: vec![if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10))
        }],
        auth: Auth::NONE,
    })
    .expect("valid config");
    i.handle(Input::Startup, now);
    if master {
        let at = i.master_down_deadline().expect("armed");
        i.handle(Input::MasterDownTimerExpired, at);
    }
    i
}

fn feed(src: IpAddr, advert: &Advertisement) {
    let now = Instant::now();
    // VRRPv2 has no IPv6 instance (the decoder refuses v2 over IPv6 before this).
    let v6 = src.is_ipv6() && advert.version == Version::V3;
    for master in [false, true] {
        let mut i = instance(advert.version, now, master, v6);
        let _ = i.handle(
            Input::AdvertReceived {
                from: src,
                advert: advert.clone(),
            },
            now + Duration::from_millis(1),
        );
        assert_ne!(i.state(), State::Initialize);
        // Whatever it learned, the master-down interval stays bounded (a v3 interval is at most 40.95 s).
        assert!(i.master_down_interval() <= Duration::from_secs(4 * 41));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((header, advert)) = decode_ip_packet(data) {
        let again = encode_ip_packet(&header, &advert);
        assert_eq!(
            decode_ip_packet(&again),
            Ok((header, advert.clone())),
            "IP round trip"
        );
        feed(header.src.into(), &advert);
    }
    // The same bytes as a bare VRRP message, the first 8 bytes giving source and destination.
    if data.len() >= 8 {
        let src = IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        let dst = IpAddr::V4(Ipv4Addr::new(data[4], data[5], data[6], data[7]));
        round_trip(&data[8..], src, dst);
    }
    // And as an IPv6 advert: 16 + 16 bytes of addresses and a hop limit, then the message.
    if data.len() >= 33 {
        let a = |r: std::ops::Range<usize>| {
            Ipv6Addr::from(<[u8; 16]>::try_from(&data[r]).unwrap_or([0; 16]))
        };
        let (src, dst) = (a(0..16), a(16..32));
        if let Ok(advert) = decode_ipv6(&data[33..], src, dst, data[32]) {
            assert_eq!(data[32], 255);
            check(&advert, src.into(), dst.into());
        }
        round_trip(&data[33..], src.into(), dst.into());
    }
});

fn round_trip(message: &[u8], src: IpAddr, dst: IpAddr) {
    if let Ok(advert) = decode(message, src, dst) {
        check(&advert, src, dst);
    }
}

fn check(advert: &Advertisement, src: IpAddr, dst: IpAddr) {
    assert!(advert.addresses.iter().all(|a| a.is_ipv4() == src.is_ipv4()));
    let bytes = encode(advert, src, dst);
    assert_eq!(bytes.len(), advert.encoded_len(src));
    assert_eq!(decode(&bytes, src, dst), Ok(advert.clone()), "VRRP round trip");
    feed(src, advert);
}
