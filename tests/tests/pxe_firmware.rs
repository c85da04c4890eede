//! Firmware interop in the netns lab: QEMU machines with unknown MACs PXE-boot from lbfleet-server (DHCP,
//! TFTP, HTTP boot on the lab bridge) with SeaBIOS + QEMU's iPXE ROM, OVMF + QEMU's iPXE EFI ROM, and OVMF
//! with EDK2's own PXE client (no option ROM), into a minimal initramfs whose `/init` prints a marker. Each
//! must reach `/init` with the boot script's kernel arguments and show up as a `discovered` node.
//!
//! Needs root, QEMU, OVMF, Debian's ipxe and ipxe-qemu (scripts/install-deps.sh); fails without them.

use std::time::Duration;

use lbfleet_tests::lab::initrd::{marker_initrd, INIT_DONE, INIT_MARKER};
use lbfleet_tests::lab::{self, Firmware, Nic, ServerOptions, Site, VmSpec};

/// TCG boots take 10-40 s each here; three at once on two busy cores take longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn mac(n: u8) -> String {
    format!("52:54:00:14:00:{n:02x}")
}

#[test]
fn bios_uefi_ipxe_and_edk2_pxe_reach_init_and_are_discovered() {
    let Some(prereqs) = lab::require() else {
        return;
    };
    let mut site = Site::new(prereqs).expect("lab site");
    site.start_server(ServerOptions::default())
        .expect("lbfleet-server in the lab");
    let initrd = marker_initrd(&site.prereqs, site.dir.path()).expect("marker initrd");
    let kernel = site.prereqs.kernel.clone();
    site.server()
        .add_image("marker", &kernel, &initrd, lab::KERNEL_ARGS, true)
        .expect("default image");

    let firmwares = [
        Firmware::BiosIpxe,
        Firmware::UefiIpxe,
        Firmware::UefiEdk2Pxe,
    ];
    for (i, fw) in firmwares.iter().enumerate() {
        let tap = site.tap(lab::BOOT_BRIDGE).expect("tap");
        let nic = Nic {
            tap,
            mac: mac(i as u8 + 1),
            boot: true,
        };
        site.start_vm(VmSpec::new(fw.label(), *fw, vec![nic]))
            .expect("qemu");
    }
    for i in 0..firmwares.len() {
        let vm = &mut site.vms[i];
        let elapsed = vm
            .wait_console(INIT_MARKER, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
        eprintln!("{}: /init after {:.1} s", vm.name(), elapsed.as_secs_f64());
        vm.wait_console(INIT_DONE, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
        let console = vm.console();
        let cmdline = console
            .lines()
            .find(|l| l.starts_with("cmdline:"))
            .unwrap_or_else(|| panic!("{}: no cmdline line", vm.name()));
        assert!(cmdline.contains("lbfleet.token="), "{cmdline}");
        assert!(cmdline.contains("initrd=initrd.img"), "{cmdline}");
        assert!(cmdline.contains("lbfleet.image=marker"), "{cmdline}");
    }
    // EDK2 took the offer as a PXE offer with a boot file (without option 43 it asked port 4011 and fell to
    // the shell), and iPXE's IPv6 configuration was answered instead of timing out.
    let edk2 = site.vms[2].console();
    assert!(edk2.contains("NBP filename is ipxe.efi"), "{edk2}");
    let log = site.server().log();
    assert!(log.contains("router advertisement sent"), "{log}");
    for i in 0..firmwares.len() {
        let node = site
            .server()
            .node_by_mac(&mac(i as u8 + 1))
            .expect("nodes API")
            .unwrap_or_else(|| panic!("no node for {}", mac(i as u8 + 1)));
        assert_eq!(node["state"], "discovered", "{node}");
    }
}
