//! PXE awareness: recognise network-boot firmware from its options (60 vendor class, 93 arch, 77 user class)
//! and choose what it boots, so a bare NIC chainloads iPXE and iPXE fetches its per-MAC script over HTTP.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use super::config::{DhcpConfig, MAX_BOOT_FILE_LEN};
use super::lease::Mac;

const PXE_CLASS: &[u8] = b"PXEClient";
const IPXE_USER_CLASS: &[u8] = b"iPXE";

/// PXE 2.1 vendor sub-option 6, `PXE_DISCOVERY_CONTROL`.
const PXE_DISCOVERY_CONTROL: u8 = 6;
/// Bit 3 of `PXE_DISCOVERY_CONTROL`: with a boot file in the offer, download it; no prompt, menu or discovery.
const DISCOVERY_USE_BOOT_FILE: u8 = 1 << 3;
/// Ends the encapsulated vendor options.
const PXE_END: u8 = 255;

/// The PXE vendor options (DHCP option 43) sent with every `PXEClient` answer:
///
/// ```text
/// +------+-----+---------------------+------+
/// | 0x06 | 0x01| 0x08 (bit 3 set)    | 0xff |
/// +------+-----+---------------------+------+
///   tag    len   PXE_DISCOVERY_CONTROL  end
/// ```
///
/// An offer with option 60 `PXEClient` but no option 43 is, by PXE 2.1, a BINL offer: UEFI firmware (EDK2's
/// PxeBcDxe) then asks the boot server on UDP port 4011 for the boot file and ignores the one in the offer.
/// Discovery control bit 3 says "use the boot file named here", which is what dnsmasq sends for the same case.
pub fn pxe_vendor_options() -> Vec<u8> {
    vec![PXE_DISCOVERY_CONTROL, 1, DISCOVERY_USE_BOOT_FILE, PXE_END]
}

/// What a request tells about the client's boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootClient {
    /// Option 60 starts with `PXEClient`: a PXE ROM, UEFI PXE, or iPXE imitating one.
    pub pxe_class: bool,
    /// Option 93 (first entry), else the `Arch:NNNNN` field of the vendor class of pre-RFC 4578 ROMs.
    pub arch: Option<u16>,
    /// Option 77 says `iPXE`: the chainload already happened.
    pub ipxe: bool,
}

impl BootClient {
    pub fn from_request(request: &Message) -> Self {
        let opts = request.opts();
        let class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
            _ => &[],
        };
        let pxe_class = class.starts_with(PXE_CLASS);
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ if pxe_class => arch_from_vendor_class(class),
            _ => None,
        };
        let ipxe = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(u)) => is_ipxe_user_class(u),
            _ => false,
        };
        Self {
            pxe_class,
            arch,
            ipxe,
        }
    }

    /// Whether this client is network booting at all; other clients get no boot file.
    pub fn is_network_boot(&self) -> bool {
        self.pxe_class || self.ipxe
    }
}

/// `PXEClient:Arch:00007:UNDI:003016` -> 7.
fn arch_from_vendor_class(class: &[u8]) -> Option<u16> {
    let rest = class.strip_prefix(b"PXEClient:Arch:")?;
    let digits = rest.get(..5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// iPXE sends the bare string `iPXE`; RFC 3004 clients send length-prefixed class names. Accept both.
fn is_ipxe_user_class(data: &[u8]) -> bool {
    if data == IPXE_USER_CLASS {
        return true;
    }
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let Some(class) = tail.get(..usize::from(len)) else {
            return false;
        };
        if class == IPXE_USER_CLASS {
            return true;
        }
        rest = &tail[usize::from(len)..];
    }
    false
}

/// The boot instructions for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootAnswer {
    /// `file` / option 67.
    pub file: String,
    /// `siaddr` (next server) and, as text, `sname` / option 66.
    pub next_server: Ipv4Addr,
    /// Echo option 60 `PXEClient`: PXE ROMs ignore offers without it.
    pub pxe_class: bool,
    /// Option 43, sent with `pxe_class`: see [`pxe_vendor_options`].
    pub vendor_options: Option<Vec<u8>>,
}

/// What `client` (with Ethernet address `mac`) should boot, or `None` for clients that are not network
/// booting or whose architecture has no boot file configured.
pub fn boot_answer(client: &BootClient, mac: Mac, cfg: &DhcpConfig) -> Option<BootAnswer> {
    if !client.is_network_boot() {
        return None;
    }
    // iPXE gets its script, not iPXE again: that is what ends the chainload loop.
    let file = if client.ipxe {
        format!("{}/boot/{mac}.ipxe", cfg.http_boot_base)
    } else {
        // No option 93 and no parsable vendor class: RFC 4578 predates such ROMs, which were all BIOS.
        cfg.boot_files.get(client.arch.unwrap_or(0))?.to_owned()
    };
    if file.len() > MAX_BOOT_FILE_LEN {
        // validate() rules this out; an unvalidated config must still not make dhcproto's setters panic.
        return None;
    }
    Some(BootAnswer {
        file,
        next_server: cfg.server_address,
        pxe_class: client.pxe_class,
        vendor_options: client.pxe_class.then(pxe_vendor_options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::{codec, testdata};

    fn client_of(bytes: &[u8]) -> BootClient {
        BootClient::from_request(&codec::decode(bytes).expect("golden packet decodes"))
    }

    #[test]
    fn recognises_golden_clients() {
        assert_eq!(
            client_of(&testdata::ipxe_qemu_discover()),
            BootClient {
                pxe_class: true,
                arch: Some(0),
                ipxe: true
            }
        );
        assert_eq!(
            client_of(&testdata::bios_pxe_discover()),
            BootClient {
                pxe_class: true,
                arch: Some(0),
                ipxe: false
            }
        );
        assert_eq!(
            client_of(&testdata::uefi_x64_discover()),
            BootClient {
                pxe_class: true,
                arch: Some(7),
                ipxe: false
            }
        );
        assert_eq!(
            client_of(&testdata::plain_ipxe_discover()),
            BootClient {
                pxe_class: false,
                arch: None,
                ipxe: true
            }
        );
        let udhcpc = client_of(&testdata::udhcpc_discover());
        assert!(!udhcpc.is_network_boot());
    }

    #[test]
    fn vendor_options_golden_bytes() {
        // What dnsmasq sends a PXEClient that gets a boot file and no PXE menu: discovery control = 8.
        assert_eq!(pxe_vendor_options(), [0x06, 0x01, 0x08, 0xff]);
        let cfg = DhcpConfig::lab();
        let mac = Mac(testdata::QEMU_MAC);
        let uefi = boot_answer(&client_of(&testdata::uefi_x64_discover()), mac, &cfg);
        assert_eq!(
            uefi.and_then(|a| a.vendor_options),
            Some(vec![0x06, 0x01, 0x08, 0xff])
        );
        // Not a PXE client (iPXE without the PXEClient class): no vendor options.
        let plain = boot_answer(&client_of(&testdata::plain_ipxe_discover()), mac, &cfg);
        assert_eq!(plain.map(|a| a.vendor_options), Some(None));
    }

    #[test]
    fn user_class_forms() {
        assert!(is_ipxe_user_class(b"iPXE"));
        assert!(is_ipxe_user_class(b"\x03foo\x04iPXE"));
        assert!(!is_ipxe_user_class(b"\x09iPXE"));
        assert!(!is_ipxe_user_class(b"gPXE"));
        assert!(!is_ipxe_user_class(b""));
    }

    #[test]
    fn arch_from_old_vendor_class() {
        assert_eq!(
            arch_from_vendor_class(b"PXEClient:Arch:00009:UNDI:003016"),
            Some(9)
        );
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:0"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:xyzzy"), None);
    }

    #[test]
    fn boot_files_by_client() {
        let cfg = DhcpConfig::lab();
        let mac = Mac(testdata::QEMU_MAC);
        let file = |c: BootClient| boot_answer(&c, mac, &cfg).map(|a| a.file);
        let pxe = |arch| BootClient {
            pxe_class: true,
            arch: Some(arch),
            ipxe: false,
        };
        assert_eq!(file(pxe(0)).as_deref(), Some("undionly.kpxe"));
        assert_eq!(file(pxe(7)).as_deref(), Some("ipxe.efi"));
        assert_eq!(file(pxe(9)).as_deref(), Some("ipxe.efi"));
        assert_eq!(file(pxe(11)), None, "no ARM64 build configured");
        assert_eq!(
            file(BootClient {
                pxe_class: true,
                arch: Some(7),
                ipxe: true
            })
            .as_deref(),
            Some("http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe")
        );
        assert_eq!(file(BootClient::default()), None);
    }
}
