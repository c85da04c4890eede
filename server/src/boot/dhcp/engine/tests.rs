//! The lease decision, case by case: DORA, renewals, reservations, PXE and iPXE boot files, relays, limits.

use std::time::Duration;

use dhcproto::Decodable;

use super::*;
use crate::boot::dhcp::config::{PoolRange, Subnet};
use crate::boot::dhcp::lease::ReservationMap;
use crate::boot::dhcp::testdata::{self, mac, request};

const NOW: UnixMillis = 1_700_000_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const POOL_START: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);

fn no_reservations() -> ReservationMap {
    ReservationMap::new()
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn dropped(d: Decision) -> DropReason {
    match d {
        Decision::Drop { reason } => reason,
        other => panic!("expected a drop, got {other:?}"),
    }
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn discover(mac: [u8; 6]) -> Message {
    request(MessageType::Discover, mac, vec![])
}

fn select(mac: [u8; 6], addr: Ipv4Addr) -> Message {
    request(
        MessageType::Request,
        mac,
        vec![
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::RequestedIpAddress(addr),
        ],
    )
}

/// DISCOVER + REQUEST; returns the bound address.
fn dora(
    mac: [u8; 6],
    now: UnixMillis,
    table: &mut LeaseTable,
    cfg: &DhcpConfig,
    r: &ReservationMap,
) -> Ipv4Addr {
    let offer = reply(handle(&discover(mac), now, table, cfg, r));
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    let addr = offer.message.yiaddr();
    let ack = reply(handle(&select(mac, addr), now, table, cfg, r));
    assert_eq!(
        ack.message_type(),
        Some(MessageType::Ack),
        "{:?}",
        opt(&ack.message, OptionCode::Message)
    );
    addr
}

#[test]
fn golden_pxe_clients_get_their_boot_files() {
    let cfg = DhcpConfig::lab();
    let url = "http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe";
    let cases = [
        ("ipxe-qemu", testdata::ipxe_qemu_discover(), url, true),
        (
            "bios-pxe",
            testdata::bios_pxe_discover(),
            "undionly.kpxe",
            true,
        ),
        ("uefi-x64", testdata::uefi_x64_discover(), "ipxe.efi", true),
        ("plain-ipxe", testdata::plain_ipxe_discover(), url, false),
    ];
    for (name, bytes, file, pxe_class) in cases {
        let mut table = LeaseTable::new();
        let r = reply(handle_datagram(
            &bytes,
            NOW,
            &mut table,
            &cfg,
            &no_reservations(),
        ));
        // Check what goes on the wire, not just the struct.
        let wire = reply_bytes(&r);
        let m = Message::from_bytes(&wire).expect("our reply reparses");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer), "{name}");
        assert_eq!(m.opcode(), Opcode::BootReply, "{name}");
        assert_eq!(
            m.xid(),
            u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            "{name}"
        );
        assert_eq!(m.siaddr(), SERVER, "{name}");
        assert_eq!(m.yiaddr(), POOL_START, "{name}");
        assert_eq!(m.chaddr(), &testdata::QEMU_MAC, "{name}");
        assert_eq!(nul_trimmed(m.fname()), file.as_bytes(), "{name}");
        assert_eq!(nul_trimmed(m.sname()), b"198.18.0.1", "{name}");
        assert_eq!(
            opt(&m, OptionCode::TFTPServerName),
            Some(&DhcpOption::TFTPServerName(b"198.18.0.1".to_vec()))
        );
        assert_eq!(
            opt(&m, OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(file.as_bytes().to_vec()))
        );
        let class = opt(&m, OptionCode::ClassIdentifier);
        if pxe_class {
            assert_eq!(
                class,
                Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
                "{name}"
            );
        } else {
            assert_eq!(class, None, "{name}");
        }
        // Option 43 on the wire, byte for byte: PXE_DISCOVERY_CONTROL (6) = 8, end. Without it EDK2's PXE
        // client takes the offer for a BINL offer and asks port 4011 for its boot file.
        let vendor = option_bytes(&wire, 43);
        if pxe_class {
            assert_eq!(vendor, Some(&[0x06, 0x01, 0x08, 0xff][..]), "{name}");
        } else {
            assert_eq!(vendor, None, "{name}");
        }
        assert_eq!(
            opt(&m, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            opt(&m, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        let expected_dest = if name == "plain-ipxe" {
            Destination::LinkUnicast {
                address: POOL_START,
                mac: Mac(testdata::QEMU_MAC),
            }
        } else {
            Destination::Broadcast
        };
        assert_eq!(r.destination, expected_dest, "{name}");
    }
}

fn reply_bytes(r: &Reply) -> Vec<u8> {
    match r.encode() {
        Ok(b) => b,
        Err(e) => panic!("encode: {e}"),
    }
}

/// dhcproto keeps the terminating NUL of sname/file.
fn nul_trimmed(field: Option<&[u8]>) -> &[u8] {
    let f = field.unwrap_or(&[]);
    f.split(|&b| b == 0).next().unwrap_or(&[])
}

#[test]
fn ipxe_reply_follows_the_parameter_request_list_order() {
    let cfg = DhcpConfig::lab();
    let r = reply(handle_datagram(
        &testdata::ipxe_qemu_discover(),
        NOW,
        &mut LeaseTable::new(),
        &cfg,
        &no_reservations(),
    ));
    let wire = reply_bytes(&r);
    let codes = option_codes(&wire);
    // 53 and 54 first, then iPXE's list (1 3 6 7 12 15 17 26 43 60 66 67 ...) as far as we have those,
    // then the unrequested essentials, then the echoed client identifier.
    assert_eq!(
        codes,
        vec![53, 54, 1, 3, 6, 15, 26, 43, 60, 66, 67, 51, 58, 59, 61]
    );
}

/// The value of option `code` as it appears in the encoded reply.
fn option_bytes(wire: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = codec::HEADER_LEN;
    while let Some(&c) = wire.get(i) {
        match c {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*wire.get(i + 1)?);
                if c == code {
                    return wire.get(i + 2..i + 2 + len);
                }
                i += 2 + len;
            }
        }
    }
    None
}

fn option_codes(wire: &[u8]) -> Vec<u8> {
    let mut codes = Vec::new();
    let mut i = codec::HEADER_LEN;
    while let Some(&c) = wire.get(i) {
        match c {
            0 => i += 1,
            255 => break,
            _ => {
                codes.push(c);
                i += 2 + usize::from(wire[i + 1]);
            }
        }
    }
    codes
}

#[test]
fn non_pxe_client_gets_no_boot_file_and_only_what_it_asked_for() {
    let cfg = DhcpConfig::lab();
    let r = reply(handle_datagram(
        &testdata::udhcpc_discover(),
        NOW,
        &mut LeaseTable::new(),
        &cfg,
        &no_reservations(),
    ));
    let m = &r.message;
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(m.fname().is_none() && m.sname().is_none());
    for absent in [
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
        OptionCode::ClassIdentifier,
        OptionCode::InterfaceMtu,
    ] {
        assert!(opt(m, absent).is_none(), "{absent:?}");
    }
    // udhcpc asked for 15 and 42 (optional) and 1 3 6 (essential).
    assert_eq!(
        opt(m, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.lbfleet".into()))
    );
    assert_eq!(
        opt(m, OptionCode::NtpServers),
        Some(&DhcpOption::NtpServers(vec![SERVER]))
    );
    assert_eq!(
        opt(m, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)))
    );
    assert_eq!(
        opt(m, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ROUTER]))
    );
    // RFC 6842: client identifier echoed.
    assert!(opt(m, OptionCode::ClientIdentifier).is_some());
    // No broadcast flag, no address yet: link-layer unicast of the offer.
    assert_eq!(
        r.destination,
        Destination::LinkUnicast {
            address: POOL_START,
            mac: Mac(testdata::QEMU_MAC)
        }
    );
    assert!(reply_bytes(&r).len() <= 576 - 28);
}

#[test]
fn full_dora_binds_and_asks_to_persist() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let m = mac(1);
    let offer = reply(handle(&discover(m), NOW, &mut table, &cfg, &res));
    let addr = offer.message.yiaddr();
    assert_eq!(addr, POOL_START);
    assert!(offer.lease_changes.is_empty(), "offers are not persisted");
    assert_eq!(table.get(addr).map(|l| l.state), Some(LeaseState::Offered));
    assert_eq!(
        opt(&offer.message, OptionCode::Renewal),
        Some(&DhcpOption::Renewal(1800))
    );
    assert_eq!(
        opt(&offer.message, OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );

    let ack = reply(handle(&select(m, addr), NOW + 500, &mut table, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), addr);
    assert_eq!(ack.destination, Destination::Broadcast);
    let bound = Lease {
        address: addr,
        mac: Mac(m),
        state: LeaseState::Bound,
        expires_at: NOW + 500 + 3_600_000,
    };
    assert_eq!(ack.lease_changes, vec![LeaseChange::Upsert(bound.clone())]);
    assert_eq!(table.lease_of(Mac(m)), Some(&bound));

    // A second client gets the next address.
    assert_eq!(
        dora(mac(2), NOW, &mut table, &cfg, &res),
        Ipv4Addr::new(198, 18, 1, 1)
    );
    // Rediscovering inside the lease offers the same address and keeps the binding.
    let again = reply(handle(&discover(m), NOW + 1000, &mut table, &cfg, &res));
    assert_eq!(again.message.yiaddr(), addr);
    assert_eq!(table.get(addr).map(|l| l.state), Some(LeaseState::Bound));
}

#[test]
fn renew_is_acked_by_unicast_to_ciaddr() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
    let mut renew = request(MessageType::Request, mac(1), vec![]);
    renew.set_ciaddr(addr).set_flags(Flags::default());
    let later = NOW + 1_800_000;
    let ack = reply(handle(&renew, later, &mut table, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(
        ack.destination,
        Destination::Unicast(SocketAddrV4::new(addr, CLIENT_PORT))
    );
    assert_eq!(ack.message.ciaddr(), addr);
    assert_eq!(ack.message.yiaddr(), addr);
    assert_eq!(
        table.get(addr).map(|l| l.expires_at),
        Some(later + 3_600_000)
    );
    assert!(
        matches!(&ack.lease_changes[..], [LeaseChange::Upsert(l)] if l.expires_at == later + 3_600_000)
    );
}

#[test]
fn rebind_is_acked_even_after_expiry_while_the_address_is_free() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
    // REBINDING: broadcast, ciaddr set, no server id; arrives after T2 and even after the lease ran out.
    let mut rebind = request(MessageType::Request, mac(1), vec![]);
    rebind.set_ciaddr(addr);
    let ack = reply(handle(&rebind, NOW + 3_700_000, &mut table, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(
        ack.destination,
        Destination::Unicast(SocketAddrV4::new(addr, CLIENT_PORT))
    );
    // Another client's rebind for that address, now bound again, is refused.
    let mut thief = request(MessageType::Request, mac(9), vec![]);
    thief.set_ciaddr(addr);
    let nak = reply(handle(&thief, NOW + 3_700_001, &mut table, &cfg, &res));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
}

#[test]
fn requests_for_foreign_or_taken_addresses_are_nakked() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = dora(mac(1), NOW, &mut table, &cfg, &res);

    // INIT-REBOOT with an address from another network (a laptop back from elsewhere).
    let foreign = Ipv4Addr::new(198, 19, 0, 5);
    let init_reboot = request(
        MessageType::Request,
        mac(1),
        vec![DhcpOption::RequestedIpAddress(foreign)],
    );
    let nak = reply(handle(&init_reboot, NOW, &mut table, &cfg, &res));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(nak.destination, Destination::Broadcast);
    assert_eq!(nak.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&nak.message, OptionCode::AddressLeaseTime).is_none());
    assert_eq!(
        opt(&nak.message, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert!(nak.lease_changes.is_empty());
    // The client's binding is untouched.
    assert_eq!(table.lease_of(Mac(mac(1))).map(|l| l.address), Some(addr));

    // SELECTING an address that is another client's.
    let nak = reply(handle(&select(mac(2), addr), NOW, &mut table, &cfg, &res));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    // INIT-REBOOT of the infrastructure addresses.
    for a in [SERVER, ROUTER] {
        let m = request(
            MessageType::Request,
            mac(1),
            vec![DhcpOption::RequestedIpAddress(a)],
        );
        assert_eq!(
            reply(handle(&m, NOW, &mut table, &cfg, &res)).message_type(),
            Some(MessageType::Nak)
        );
    }
    // INIT-REBOOT on our network from a client we have no record of: RFC 2131 says stay silent.
    let stranger = request(
        MessageType::Request,
        mac(3),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            198, 18, 1, 77,
        ))],
    );
    assert!(matches!(
        dropped(handle(&stranger, NOW, &mut table, &cfg, &res)),
        DropReason::NoRecord
    ));
}

#[test]
fn selecting_another_server_frees_our_offer() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res))
        .message
        .yiaddr();
    let other = request(
        MessageType::Request,
        mac(1),
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 18, 0, 2)),
            DhcpOption::RequestedIpAddress(addr),
        ],
    );
    assert!(matches!(
        dropped(handle(&other, NOW, &mut table, &cfg, &res)),
        DropReason::ForOtherServer(_)
    ));
    assert!(table.get(addr).is_none());
}

#[test]
fn release_frees_the_address() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
    let mut release = request(
        MessageType::Release,
        mac(1),
        vec![DhcpOption::ServerIdentifier(SERVER)],
    );
    release.set_ciaddr(addr);
    // Someone else cannot release it.
    let mut forged = release.clone();
    forged.set_chaddr(&mac(2));
    assert!(matches!(
        dropped(handle(&forged, NOW, &mut table, &cfg, &res)),
        DropReason::NoLease(_)
    ));
    match handle(&release, NOW, &mut table, &cfg, &res) {
        Decision::Record { lease_changes } => {
            assert_eq!(
                lease_changes,
                vec![LeaseChange::Remove {
                    address: addr,
                    mac: Mac(mac(1))
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(table.is_empty());
    // The freed address is the first free one again.
    assert_eq!(dora(mac(2), NOW, &mut table, &cfg, &res), addr);
}

#[test]
fn decline_quarantines_the_address() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
    let decline = request(
        MessageType::Decline,
        mac(1),
        vec![
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::RequestedIpAddress(addr),
        ],
    );
    let until = NOW + 600_000;
    match handle(&decline, NOW, &mut table, &cfg, &res) {
        Decision::Record { lease_changes } => assert!(matches!(
            &lease_changes[..],
            [LeaseChange::Upsert(Lease { state: LeaseState::Declined, expires_at, .. })] if *expires_at == until
        )),
        other => panic!("{other:?}"),
    }
    // Neither the decliner nor anyone else gets it while quarantined; a request for it is refused.
    assert_ne!(dora(mac(1), NOW + 1, &mut table, &cfg, &res), addr);
    assert_ne!(dora(mac(2), NOW + 1, &mut table, &cfg, &res), addr);
    let nak = reply(handle(
        &select(mac(3), addr),
        NOW + 1,
        &mut table,
        &cfg,
        &res,
    ));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    // After the quarantine it can be leased again.
    let ack = reply(handle(&select(mac(3), addr), until, &mut table, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), addr);
}

fn tiny_pool_config(size: u8, cap: usize) -> DhcpConfig {
    let mut cfg = DhcpConfig::lab();
    cfg.pools = vec![PoolRange::new(
        POOL_START,
        Ipv4Addr::new(198, 18, 1, size - 1),
    )];
    cfg.discovery_cap = cap;
    cfg
}

#[test]
fn reservation_always_gets_its_address() {
    let cfg = tiny_pool_config(2, 1);
    let reserved_in_pool = Ipv4Addr::new(198, 18, 1, 1);
    let node_addr = Ipv4Addr::new(198, 18, 0, 50); // outside the pool, as registered nodes are
    let mut res = ReservationMap::new();
    res.insert(Mac(mac(10)), node_addr, Some("lb-01".into()));
    res.insert(Mac(mac(11)), reserved_in_pool, None);
    let mut table = LeaseTable::new();
    // Unknown clients fill the pool and the cap; the reserved pool address is not theirs to take.
    assert_eq!(dora(mac(1), NOW, &mut table, &cfg, &res), POOL_START);
    assert!(matches!(
        dropped(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res)),
        DropReason::DiscoveryCapReached { .. }
    ));
    let mut roomier = cfg.clone();
    roomier.discovery_cap = 10;
    assert!(matches!(
        dropped(handle(&discover(mac(2)), NOW, &mut table, &roomier, &res)),
        DropReason::PoolExhausted
    ));
    // Registered nodes get theirs regardless.
    let mut with_prl = discover(mac(10));
    with_prl
        .opts_mut()
        .insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Hostname,
        ]));
    let offer = reply(handle(&with_prl, NOW, &mut table, &cfg, &res));
    assert_eq!(offer.message.yiaddr(), node_addr);
    assert_eq!(
        opt(&offer.message, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("lb-01".into()))
    );
    assert_eq!(dora(mac(10), NOW, &mut table, &cfg, &res), node_addr);
    assert_eq!(dora(mac(11), NOW, &mut table, &cfg, &res), reserved_in_pool);
    // Reserved clients are not counted against the discovery cap.
    assert_eq!(table.iter().filter(|l| l.is_held(NOW)).count(), 3);
    // A reserved node asking for some other address is told no.
    let nak = reply(handle(
        &select(mac(10), POOL_START),
        NOW,
        &mut table,
        &cfg,
        &res,
    ));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
}

#[test]
fn discovery_cap_limits_unknown_macs_until_offers_expire() {
    let cfg = tiny_pool_config(200, 2);
    let res = no_reservations();
    let mut table = LeaseTable::new();
    reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res));
    reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
    let reason = dropped(handle(&discover(mac(3)), NOW, &mut table, &cfg, &res));
    assert!(matches!(reason, DropReason::DiscoveryCapReached { cap: 2 }));
    // A holder rediscovering is not a new holder.
    reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
    // A REQUEST cannot sidestep the cap either (silently ignored, not NAKed).
    let sneaky = select(mac(3), Ipv4Addr::new(198, 18, 1, 99));
    assert!(matches!(
        dropped(handle(&sneaky, NOW, &mut table, &cfg, &res)),
        DropReason::DiscoveryCapReached { .. }
    ));
    // Offers lapse after the offer timeout and make room.
    let later = NOW + 60_000;
    assert_eq!(
        reply(handle(&discover(mac(3)), later, &mut table, &cfg, &res)).message_type(),
        Some(MessageType::Offer)
    );
}

#[test]
fn registered_nodes_boot_outside_the_discovery_budget() {
    // Issue 13: unknown MACs used up the discovery budget; a registered node (no reservation) still gets
    // an address and a lease, and does not count against the budget itself.
    let cfg = tiny_pool_config(200, 2);
    let mut res = no_reservations();
    res.register(Mac(mac(9)));
    let mut table = LeaseTable::new();
    reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res));
    reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
    assert!(matches!(
        dropped(handle(&discover(mac(3)), NOW, &mut table, &cfg, &res)),
        DropReason::DiscoveryCapReached { cap: 2 }
    ));
    let offer = reply(handle(&discover(mac(9)), NOW, &mut table, &cfg, &res));
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    let ack = reply(handle(
        &select(mac(9), offer.message.yiaddr()),
        NOW,
        &mut table,
        &cfg,
        &res,
    ));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    // The registered node's lease does not use up room of unknown MACs either.
    let later = NOW + 60_000;
    reply(handle(&discover(mac(4)), later, &mut table, &cfg, &res));
    reply(handle(&discover(mac(5)), later, &mut table, &cfg, &res));
}

#[test]
fn relayed_requests_are_answered_through_the_relay() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let relay = Ipv4Addr::new(198, 18, 0, 253);
    let mut m = discover(mac(1));
    m.set_giaddr(relay).set_hops(1);
    let offer = reply(handle(&m, NOW, &mut table, &cfg, &res));
    assert_eq!(
        offer.destination,
        Destination::Relay(SocketAddrV4::new(relay, SERVER_PORT))
    );
    assert_eq!(offer.message.giaddr(), relay);
    // A NAK through a relay asks the relay to broadcast it.
    let mut bad = request(
        MessageType::Request,
        mac(1),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(198, 19, 9, 9))],
    );
    bad.set_giaddr(relay).set_flags(Flags::default());
    let nak = reply(handle(&bad, NOW, &mut table, &cfg, &res));
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(
        nak.destination,
        Destination::Relay(SocketAddrV4::new(relay, SERVER_PORT))
    );
    assert!(nak.message.flags().broadcast());
    // A relay on a subnet we do not serve is ignored.
    let mut elsewhere = discover(mac(2));
    elsewhere.set_giaddr(Ipv4Addr::new(198, 19, 0, 1));
    assert!(matches!(
        dropped(handle(&elsewhere, NOW, &mut table, &cfg, &res)),
        DropReason::RelayOutsideSubnet(_)
    ));
    // A site without relays refuses them all: a client on the segment cannot pose as one.
    let no_relays = DhcpConfig {
        accept_relayed: false,
        ..DhcpConfig::lab()
    };
    assert!(matches!(
        dropped(handle(&m, NOW, &mut table, &no_relays, &res)),
        DropReason::RelayRefused(_)
    ));
}

#[test]
fn infrastructure_and_edge_addresses_are_never_offered() {
    let mut cfg = DhcpConfig::lab();
    cfg.subnet = Subnet::new(Ipv4Addr::new(198, 18, 0, 0), 22);
    cfg.router = Some(Ipv4Addr::new(198, 18, 0, 2));
    cfg.dns = vec![];
    cfg.ntp = vec![];
    // Pools deliberately overlapping the network address, server, router and broadcast address.
    cfg.pools = vec![
        PoolRange::new(Ipv4Addr::new(198, 18, 0, 0), Ipv4Addr::new(198, 18, 0, 3)),
        PoolRange::new(
            Ipv4Addr::new(198, 18, 3, 254),
            Ipv4Addr::new(198, 18, 3, 255),
        ),
    ];
    cfg.discovery_cap = 100;
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let mut got = Vec::new();
    for i in 1..10 {
        match handle(&discover(mac(i)), NOW, &mut table, &cfg, &res) {
            Decision::Reply(r) => got.push(r.message.yiaddr()),
            Decision::Drop {
                reason: DropReason::PoolExhausted,
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![Ipv4Addr::new(198, 18, 0, 3), Ipv4Addr::new(198, 18, 3, 254)]
    );
    // Asking for them does not help either.
    let mut ask = discover(mac(20));
    ask.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(SERVER));
    assert!(matches!(
        dropped(handle(&ask, NOW, &mut table, &cfg, &res)),
        DropReason::PoolExhausted
    ));
}

#[test]
fn inform_gets_configuration_without_a_lease() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let client = Ipv4Addr::new(198, 18, 2, 7);
    let mut inform = request(MessageType::Inform, mac(1), vec![]);
    inform.set_ciaddr(client);
    let ack = reply(handle(&inform, NOW, &mut table, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.message.ciaddr(), client);
    assert!(opt(&ack.message, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&ack.message, OptionCode::Renewal).is_none());
    assert!(opt(&ack.message, OptionCode::Router).is_some());
    assert_eq!(
        ack.destination,
        Destination::Unicast(SocketAddrV4::new(client, CLIENT_PORT))
    );
    assert!(ack.lease_changes.is_empty() && table.is_empty());
    inform.set_ciaddr(Ipv4Addr::UNSPECIFIED);
    assert!(matches!(
        dropped(handle(&inform, NOW, &mut table, &cfg, &res)),
        DropReason::MissingAddress
    ));
}

#[test]
fn moving_to_a_reservation_removes_the_old_pool_lease() {
    let cfg = DhcpConfig::lab();
    let mut res = no_reservations();
    let mut table = LeaseTable::new();
    let old = dora(mac(1), NOW, &mut table, &cfg, &res);
    // The node gets approved and a fixed address while it still holds its discovery lease.
    let fixed = Ipv4Addr::new(198, 18, 0, 40);
    res.insert(Mac(mac(1)), fixed, None);
    let offer = reply(handle(&discover(mac(1)), NOW + 10, &mut table, &cfg, &res));
    assert_eq!(offer.message.yiaddr(), fixed);
    assert_eq!(
        offer.lease_changes,
        vec![LeaseChange::Remove {
            address: old,
            mac: Mac(mac(1))
        }]
    );
    // And a renewal of the old address is refused so the node moves over.
    let mut renew = request(MessageType::Request, mac(1), vec![]);
    renew.set_ciaddr(old);
    assert_eq!(
        reply(handle(&renew, NOW + 20, &mut table, &cfg, &res)).message_type(),
        Some(MessageType::Nak)
    );
}

#[test]
fn non_server_messages_and_bad_macs_are_dropped() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let offer_from_client = request(MessageType::Offer, mac(1), vec![]);
    assert!(matches!(
        dropped(handle(&offer_from_client, NOW, &mut table, &cfg, &res)),
        DropReason::UnsupportedMessageType(MessageType::Offer)
    ));
    let broadcast_mac = discover([0xff; 6]);
    assert!(matches!(
        dropped(handle(&broadcast_mac, NOW, &mut table, &cfg, &res)),
        DropReason::InvalidClientMac
    ));
    let mut reply_op = discover(mac(1));
    reply_op.set_opcode(Opcode::BootReply);
    assert!(matches!(
        dropped(handle(&reply_op, NOW, &mut table, &cfg, &res)),
        DropReason::NotEthernetRequest
    ));
    let truncated = &testdata::bios_pxe_discover()[..100];
    assert!(matches!(
        dropped(handle_datagram(truncated, NOW, &mut table, &cfg, &res)),
        DropReason::Decode(DecodeError::Truncated(100))
    ));
    assert!(table.is_empty());
    // Nothing here changed the table; the lease time config is still what the replies carry.
    assert_eq!(cfg.lease_time, Duration::from_secs(3600));
}

#[test]
fn persisted_changes_rebuild_the_table_after_a_restart() {
    let cfg = DhcpConfig::lab();
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let mut store: Vec<LeaseChange> = Vec::new();
    for i in 1..=3 {
        let offer = reply(handle(&discover(mac(i)), NOW, &mut table, &cfg, &res));
        store.extend(offer.lease_changes);
        let ack = reply(handle(
            &select(mac(i), offer.message.yiaddr()),
            NOW,
            &mut table,
            &cfg,
            &res,
        ));
        store.extend(ack.lease_changes);
    }
    let mut release = request(
        MessageType::Release,
        mac(2),
        vec![DhcpOption::ServerIdentifier(SERVER)],
    );
    release.set_ciaddr(Ipv4Addr::new(198, 18, 1, 1));
    store.extend(
        handle(&release, NOW, &mut table, &cfg, &res)
            .lease_changes()
            .to_vec(),
    );

    // Replaying what the caller persisted gives the same table the engine had.
    let mut rebuilt = LeaseTable::new();
    for change in &store {
        rebuilt.apply(change);
    }
    let leases = |t: &LeaseTable| t.iter().cloned().collect::<Vec<_>>();
    assert_eq!(leases(&rebuilt), leases(&table));
    assert_eq!(rebuilt.len(), 2);
    // A client renews against the rebuilt table without noticing the restart.
    let mut renew = request(MessageType::Request, mac(3), vec![]);
    renew.set_ciaddr(Ipv4Addr::new(198, 18, 1, 2));
    let ack = reply(handle(&renew, NOW + 10, &mut rebuilt, &cfg, &res));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
}

/// Deterministic xorshift so the corpus is the same on every run.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_and_random_datagrams_never_panic() {
    let cfg = tiny_pool_config(16, 8);
    let res = no_reservations();
    let mut table = LeaseTable::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let goldens: Vec<Vec<u8>> = testdata::golden_discovers()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let mut handled = 0usize;
    for i in 0..20_000u64 {
        let mut p = goldens[(i as usize) % goldens.len()].clone();
        // Flip a few bytes, mostly in the options where the parsing risk is.
        for _ in 0..(1 + rng.next() % 4) {
            let at = if rng.next().is_multiple_of(4) {
                rng.next() as usize % p.len()
            } else {
                240 + rng.next() as usize % (p.len() - 240)
            };
            p[at] = rng.next() as u8;
        }
        if rng.next().is_multiple_of(8) {
            p.truncate(rng.next() as usize % p.len());
        }
        if rng.next().is_multiple_of(16) {
            p = (0..(rng.next() % 700)).map(|_| rng.next() as u8).collect();
        }
        let d = handle_datagram(&p, NOW + i, &mut table, &cfg, &res);
        if let Decision::Reply(r) = d {
            handled += 1;
            let _ = r.encode();
        }
    }
    // The corpus must exercise the engine, not just the decoder's first check.
    assert!(
        handled > 1000,
        "only {handled} mutated packets reached a reply"
    );
}
