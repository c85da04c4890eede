//! Golden DHCPDISCOVER datagrams as real boot firmware sends them, spelled out field by field, plus small
//! builders for the follow-up messages of a conversation. Test-only.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType};

/// QEMU's default NIC address.
pub const QEMU_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

const ZERO_ADDR: &[u8] = &[0x00, 0x00, 0x00, 0x00];
const CHADDR_PAD: &[u8] = &[0x00; 10]; // chaddr is 16 bytes, an Ethernet MAC uses 6
const SNAME_EMPTY: &[u8] = &[0x00; 64];
const FILE_EMPTY: &[u8] = &[0x00; 128];
const COOKIE: &[u8] = &[0x63, 0x82, 0x53, 0x63]; // 99.130.83.99
const SMBIOS_UUID: &[u8] = &[
    0x00, // type 0: UUID
    0x8e, 0x3c, 0x1f, 0x7a, 0x52, 0x11, 0x4a, 0x6b, 0x9d, 0x07, 0x12, 0xc4, 0x55, 0x0e, 0xa1, 0x3f,
];

/// A 240-byte request header (BOOTREQUEST, Ethernet, broadcast flag, no addresses) for hand-made packets.
pub fn header(xid_low: u8, mac: [u8; 6]) -> Vec<u8> {
    [
        &[0x01, 0x01, 0x06, 0x00][..], // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        &[0x00, 0x00, 0x00, xid_low],  // xid
        &[0x00, 0x00, 0x80, 0x00],     // secs 0, flags: broadcast
        ZERO_ADDR,                     // ciaddr
        ZERO_ADDR,                     // yiaddr
        ZERO_ADDR,                     // siaddr
        ZERO_ADDR,                     // giaddr
        &mac,
        CHADDR_PAD,
        SNAME_EMPTY,
        FILE_EMPTY,
        COOKIE,
    ]
    .concat()
}

/// QEMU's iPXE option ROM (BIOS build, e1000) after it has taken over from the firmware.
pub fn ipxe_qemu_discover() -> Vec<u8> {
    [
        &[0x01][..],                     // op: BOOTREQUEST
        &[0x01],                         // htype: Ethernet
        &[0x06],                         // hlen: 6
        &[0x00],                         // hops
        &[0x5a, 0x2b, 0x3c, 0x4d],       // xid
        &[0x00, 0x00],                   // secs
        &[0x80, 0x00],                   // flags: broadcast (iPXE always asks for it)
        ZERO_ADDR,                       // ciaddr
        ZERO_ADDR,                       // yiaddr
        ZERO_ADDR,                       // siaddr
        ZERO_ADDR,                       // giaddr
        &QEMU_MAC,                       // chaddr 52:54:00:12:34:56
        CHADDR_PAD,                      //
        SNAME_EMPTY,                     // sname
        FILE_EMPTY,                      // file
        COOKIE,                          // magic cookie
        &[0x35, 0x01, 0x01],             // 53 message type: DISCOVER
        &[0x39, 0x02, 0x05, 0xc0],       // 57 max message size: 1472
        &[0x5d, 0x02, 0x00, 0x00],       // 93 client arch: 0 (x86 BIOS)
        &[0x5e, 0x03, 0x01, 0x02, 0x01], // 94 client NII: UNDI 2.1
        &[0x3c, 0x20],                   // 60 vendor class, 32 bytes:
        b"PXEClient:Arch:00000:UNDI:002001",
        &[0x4d, 0x04], // 77 user class, 4 bytes (iPXE sends it raw, not RFC 3004 framed):
        b"iPXE",
        &[0x37, 0x13], // 55 parameter request list, 19 codes:
        &[0x01, 0x03, 0x06, 0x07, 0x0c, 0x0f, 0x11, 0x1a, 0x2b, 0x3c], //   1 3 6 7 12 15 17 26 43 60
        &[0x42, 0x43, 0x77, 0x80, 0x81, 0x82, 0x87, 0xaf, 0xcb], //   66 67 119 128 129 130 135 175 203
        &[0xaf, 0x27], // 175 iPXE encapsulated options, 39 bytes:
        &[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e], //   bus id: PCI 8086:100e
        &[0xeb, 0x03, 0x01, 0x00, 0x00], //   version 1.0.0
        &[0x10, 0x01, 0x02], //   feature PXE extensions 2
        &[0x13, 0x01, 0x01], //   feature HTTP
        &[0x15, 0x01, 0x01], //   feature TFTP
        &[0x17, 0x01, 0x01], //   feature DNS
        &[0x18, 0x01, 0x01], //   feature bzImage
        &[0x19, 0x01, 0x01], //   feature Multiboot
        &[0x21, 0x01, 0x01], //   feature PXE
        &[0x22, 0x01, 0x01], //   feature ELF
        &[0x27, 0x01, 0x01], //   feature menu
        &[0x3d, 0x07, 0x01], // 61 client identifier: type 1 (Ethernet) +
        &QEMU_MAC,     //   the MAC
        &[0x61, 0x11], // 97 client machine identifier, 17 bytes:
        SMBIOS_UUID,
        &[0xff], // end
    ]
    .concat()
}

/// A BIOS PXE ROM (Intel Boot Agent style): arch 0, UNDI 2.1, no user class.
pub fn bios_pxe_discover() -> Vec<u8> {
    [
        &[0x01, 0x01, 0x06, 0x00][..], // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        &[0x0b, 0xad, 0xf0, 0x0d],     // xid
        &[0x00, 0x04],                 // secs: 4
        &[0x80, 0x00],                 // flags: broadcast (PXE spec requires it)
        ZERO_ADDR,                     // ciaddr
        ZERO_ADDR,                     // yiaddr
        ZERO_ADDR,                     // siaddr
        ZERO_ADDR,                     // giaddr
        &QEMU_MAC,                     // chaddr
        CHADDR_PAD,                    //
        SNAME_EMPTY,                   // sname
        FILE_EMPTY,                    // file
        COOKIE,                        // magic cookie
        &[0x35, 0x01, 0x01],           // 53 message type: DISCOVER
        &[0x39, 0x02, 0x05, 0xb8],     // 57 max message size: 1464
        &[0x37, 0x24],                 // 55 parameter request list, 36 codes:
        &[
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0b, 0x0c, 0x0d, 0x0f, 0x10, 0x11,
        ], // 1-6 11 12 13 15 16 17
        &[
            0x12, 0x16, 0x17, 0x1c, 0x28, 0x29, 0x2a, 0x2b, 0x32, 0x33, 0x36, 0x3a,
        ], // 18 22 23 28 40-43 50 51 54 58
        &[
            0x3b, 0x3c, 0x42, 0x43, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        ], // 59 60 66 67 128-135
        &[0x61, 0x11],                 // 97 client machine identifier, 17 bytes:
        SMBIOS_UUID,
        &[0x5d, 0x02, 0x00, 0x00],       // 93 client arch: 0 (x86 BIOS)
        &[0x5e, 0x03, 0x01, 0x02, 0x01], // 94 client NII: UNDI 2.1
        &[0x3c, 0x20],                   // 60 vendor class, 32 bytes:
        b"PXEClient:Arch:00000:UNDI:002001",
        &[0xff], // end
    ]
    .concat()
}

/// x86-64 UEFI firmware (EDK II / OVMF network stack): arch 7, UNDI 3.16.
pub fn uefi_x64_discover() -> Vec<u8> {
    [
        &[0x01, 0x01, 0x06, 0x00][..], // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        &[0x7e, 0x1f, 0x00, 0x01],     // xid
        &[0x00, 0x00],                 // secs
        &[0x80, 0x00],                 // flags: broadcast
        ZERO_ADDR,                     // ciaddr
        ZERO_ADDR,                     // yiaddr
        ZERO_ADDR,                     // siaddr
        ZERO_ADDR,                     // giaddr
        &QEMU_MAC,                     // chaddr
        CHADDR_PAD,                    //
        SNAME_EMPTY,                   // sname
        FILE_EMPTY,                    // file
        COOKIE,                        // magic cookie
        &[0x35, 0x01, 0x01],           // 53 message type: DISCOVER
        &[0x39, 0x02, 0x05, 0xc0],     // 57 max message size: 1472
        &[0x37, 0x23],                 // 55 parameter request list, 35 codes:
        &[
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x0d, 0x0f, 0x11, 0x12, 0x16,
        ], // 1-6 12 13 15 17 18 22
        &[
            0x17, 0x1c, 0x28, 0x29, 0x2a, 0x2b, 0x32, 0x33, 0x36, 0x3a, 0x3b, 0x3c,
        ], // 23 28 40-43 50 51 54 58-60
        &[
            0x42, 0x43, 0x61, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        ], // 66 67 97 128-135
        &[0x61, 0x11],                 // 97 client machine identifier, 17 bytes:
        SMBIOS_UUID,
        &[0x5e, 0x03, 0x01, 0x03, 0x10], // 94 client NII: UNDI 3.16
        &[0x5d, 0x02, 0x00, 0x07],       // 93 client arch: 7 (x86-64 UEFI)
        &[0x3c, 0x20],                   // 60 vendor class, 32 bytes:
        b"PXEClient:Arch:00007:UNDI:003016",
        &[0xff], // end
    ]
    .concat()
}

/// An iPXE that identifies itself only by user class: no vendor class, no arch.
pub fn plain_ipxe_discover() -> Vec<u8> {
    [
        &[0x01, 0x01, 0x06, 0x00][..], // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        &[0x00, 0x00, 0x1e, 0x01],     // xid
        &[0x00, 0x00],                 // secs
        &[0x00, 0x00],                 // flags: none (reply goes link-unicast to yiaddr)
        ZERO_ADDR,                     // ciaddr
        ZERO_ADDR,                     // yiaddr
        ZERO_ADDR,                     // siaddr
        ZERO_ADDR,                     // giaddr
        &QEMU_MAC,                     // chaddr
        CHADDR_PAD,                    //
        SNAME_EMPTY,                   // sname
        FILE_EMPTY,                    // file
        COOKIE,                        // magic cookie
        &[0x35, 0x01, 0x01],           // 53 message type: DISCOVER
        &[0x4d, 0x04],                 // 77 user class, 4 bytes:
        b"iPXE",
        &[0x37, 0x04, 0x01, 0x03, 0x06, 0x43], // 55 parameter request list: 1 3 6 67
        &[0xff],                               // end
    ]
    .concat()
}

/// busybox udhcpc in the initramfs: no PXE options at all.
pub fn udhcpc_discover() -> Vec<u8> {
    [
        &[0x01, 0x01, 0x06, 0x00][..], // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        &[0x11, 0x22, 0x33, 0x44],     // xid
        &[0x00, 0x00],                 // secs
        &[0x00, 0x00],                 // flags: none
        ZERO_ADDR,                     // ciaddr
        ZERO_ADDR,                     // yiaddr
        ZERO_ADDR,                     // siaddr
        ZERO_ADDR,                     // giaddr
        &QEMU_MAC,                     // chaddr
        CHADDR_PAD,                    //
        SNAME_EMPTY,                   // sname
        FILE_EMPTY,                    // file
        COOKIE,                        // magic cookie
        &[0x35, 0x01, 0x01],           // 53 message type: DISCOVER
        &[0x3d, 0x07, 0x01],           // 61 client identifier: type 1 +
        &QEMU_MAC,                     //   the MAC
        &[0x39, 0x02, 0x02, 0x40],     // 57 max message size: 576
        &[0x37, 0x07, 0x01, 0x03, 0x06, 0x0c, 0x0f, 0x1c, 0x2a], // 55 PRL: 1 3 6 12 15 28 42
        &[0x3c, 0x0c],                 // 60 vendor class, 12 bytes:
        b"udhcp 1.36.1",
        &[0xff], // end
    ]
    .concat()
}

pub fn golden_discovers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ipxe-qemu", ipxe_qemu_discover()),
        ("bios-pxe", bios_pxe_discover()),
        ("uefi-x64", uefi_x64_discover()),
        ("plain-ipxe", plain_ipxe_discover()),
        ("udhcpc", udhcpc_discover()),
    ]
}

/// A request message of `kind` from `mac`, broadcast, with the given options; addresses are set by the caller.
pub fn request(kind: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234_5678, z, z, z, z, &mac);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

pub fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xaa, 0x00, last]
}
