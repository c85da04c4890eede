//! DHCP datagrams through the whole sans-IO path (decode, lease decision, reply encoding) with a fixed lab
//! config and one reservation. The input is a sequence of records `[len_hi, len_lo, minutes, datagram...]`
//! fed to one lease table; before each datagram the clock moves forward by `minutes`, so offers and leases
//! expire and OFFER/REQUEST/RELEASE/DECLINE sequences reach the stateful paths.
#![no_main]

use std::net::Ipv4Addr;

use lbfleet_server::boot::dhcp::{
    handle_datagram, Decision, DhcpConfig, LeaseTable, Mac, ReservationMap,
};
use libfuzzer_sys::fuzz_target;

/// Datagrams per input: bounds the work of one run.
const MAX_DATAGRAMS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let config = DhcpConfig::lab();
    let mut reservations = ReservationMap::new();
    reservations.insert(
        Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        Ipv4Addr::new(198, 18, 0, 50),
        Some("lb-01".to_owned()),
    );
    let mut table = LeaseTable::new();
    let mut now: u64 = 1_800_000_000_000;
    let mut rest = data;
    for _ in 0..MAX_DATAGRAMS {
        if rest.len() < 3 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        now += u64::from(rest[2]) * 60_000;
        let body = &rest[3..];
        let (datagram, next) = body.split_at(len.min(body.len()));
        rest = next;
        if let Decision::Reply(reply) =
            handle_datagram(datagram, now, &mut table, &config, &reservations)
        {
            // A reply the engine built must always encode within the client's limit.
            let bytes = reply
                .encode()
                .expect("engine built a reply that does not encode");
            assert!(bytes.len() >= 240);
        }
        for lease in table.iter() {
            assert!(
                config.subnet.contains(lease.address),
                "lease outside the subnet: {lease:?}"
            );
        }
    }
});
