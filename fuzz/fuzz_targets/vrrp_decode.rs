//! VRRP decoder: any bytes are an advert or a `DecodeError`, never a panic, as a whole IPv4 packet and as a
//! bare VRRP message; what decodes re-encodes to bytes that decode to the same advert; a decoded advert fed
//! to a running instance (v2 and v3, Backup and Master) never panics and leaves it in a valid state.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lbfleet_agent::vrrp::{
    decode, decode_ip_packet, encode, encode_ip_packet, Advertisement, Auth, Input, Instance,
    InstanceConfig, State, Version,
};
use libfuzzer_sys::fuzz_target;

fn instance(version: Version, now: Instant, master: bool) -> Instance {
    let mut i = Instance::new(InstanceConfig {
        version,
        vrid: 51,
        priority: 100,
        advert_interval: Duration::from_secs(1),
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: false,
        primary_address: Ipv4Addr::new(198, 18, 0, 2),
        vips: vec![Ipv4Addr::new(198, 18, 0, 10)],
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

fn feed(src: Ipv4Addr, advert: &Advertisement) {
    let now = Instant::now();
    for master in [false, true] {
        let mut i = instance(advert.version, now, master);
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
        feed(header.src, &advert);
    }
    // The same bytes as a bare VRRP message, the first 8 bytes giving source and destination.
    if data.len() >= 8 {
        let src = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let dst = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
        if let Ok(advert) = decode(&data[8..], src, dst) {
            let bytes = encode(&advert, src, dst);
            assert_eq!(bytes.len(), advert.encoded_len());
            assert_eq!(
                decode(&bytes, src, dst),
                Ok(advert.clone()),
                "VRRP round trip"
            );
            feed(src, &advert);
        }
    }
});
