//! The whole chain in the netns lab: bare QEMU machines PXE-boot lbfleet's balancer image from lbfleet-server
//! and become serving load balancers.
//!
//! `bios_unknown_mac_to_serving_balancer`: an unknown MAC (SeaBIOS + QEMU's iPXE ROM, two NICs, booting from
//! the first) boots the default image and shows up as `discovered`; the test approves it and assigns it as the
//! active node of a NAT cluster through the API and reboots it: the agent enrolls with its new one-time token
//! (the same token is refused a second time), applies its role and the node is `serving`, with the agent's
//! report naming the service. Then a client namespace on the boot network sends HTTP requests to the VIP:
//! the VM forwards them by IPVS NAT to two real servers in namespaces on its second network (their default
//! gateway is the cluster's internal VIP, which the VM holds as VRRP master), and answers come from each.
//! The VM's own `ipvsadm -Ln` (which the image's `/init` prints on the serial console after every applied role
//! generation; typing on the console stalls under TCG) must show the service and both real servers (Masq).
//!
//! `uefi_two_nics_and_edk2_pxe_enroll_and_serve`: OVMF with QEMU's iPXE EFI ROM on a machine with two NICs
//! that boots from the second (it must enroll with that NIC's MAC), and OVMF with EDK2's own PXE client (no
//! option ROM); both pre-registered and assigned, both reach `serving`.
//!
//! Needs root, QEMU, OVMF, ipxe, ipxe-qemu, busybox-static (scripts/install-deps.sh); fails without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lbfleet_tests::lab::fleet;
use lbfleet_tests::lab::{self, traffic, wait, Firmware, Nic, ServerOptions, Site, VmSpec};

/// TCG boots to serving take 30-120 s here; several machines share two busy cores.
const SERVING_TIMEOUT: Duration = Duration::from_secs(420);

const VIP: &str = "198.18.0.10";
const REAL_SERVERS: [&str; 2] = ["198.18.2.1", "198.18.2.2"];

/// A NAT cluster on `vip`; with `internal_vip` the master also holds the real servers' gateway on eth1.
fn cluster_spec(vrid: u8, vip: &str, internal_vip: bool) -> serde_json::Value {
    let mut vips = vec![serde_json::json!(format!("{vip}/32"))];
    if internal_vip {
        vips.push(serde_json::json!({"address": format!("{}/24", fleet::INTERNAL_VIP), "interface": "eth1"}));
    }
    serde_json::json!({
        "vrid": vrid, "interface": "eth0", "vips": vips,
        "services": [ { "vip": vip, "port": 80, "protocol": "tcp", "scheduler": "rr", "forward": "nat",
                        "real_servers": [ { "address": REAL_SERVERS[0], "port": 80, "weight": 1 },
                                          { "address": REAL_SERVERS[1], "port": 80, "weight": 1 } ] } ]
    })
}

/// A site with the server and the balancer image as the default image. (No `lbfleet.console_shell=1`: the server
/// refuses `lbfleet.*` keys in an image's cmdline, and nothing here types on the console.)
fn site_with_image() -> Option<Site> {
    let prereqs = lab::require()?;
    let mut site = Site::new(prereqs).expect("lab site");
    site.start_server(ServerOptions::default())
        .expect("lbfleet-server in the lab");
    let image =
        lab::image::balancer_image(&site.dir.path().join("images")).expect("balancer image");
    site.server()
        .add_image_dir(&image, lab::KERNEL_ARGS, true)
        .expect("default image");
    Some(site)
}

fn node_state(site: &Site, mac: &str) -> Option<String> {
    site.server()
        .node_by_mac(mac)
        .ok()
        .flatten()
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

fn wait_state(site: &Site, mac: &str, state: &str, timeout: Duration) {
    let r = wait::until(
        &format!("node {mac} {state}"),
        wait::scaled(timeout),
        || (node_state(site, mac).as_deref() == Some(state)).then_some(()),
    );
    if let Err(e) = r {
        panic!("{e} (state now {:?})", node_state(site, mac));
    }
}

/// The last `ipvsadm -Ln` table `/init` printed on a console (its `lbfleet-ipvs: ` lines, prefix removed).
fn console_ipvs_table(console: &str) -> Option<String> {
    let start = console.rfind("ipvsadm -Ln after role generation")?;
    let lines: Vec<&str> = console[start..]
        .lines()
        .skip(1)
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("lbfleet-ipvs: "))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The `lbfleet.token=` of the last kernel command line on a console.
fn last_token(console: &str) -> Option<String> {
    console
        .lines()
        .rfind(|l| l.contains("Kernel command line:"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lbfleet.token="))
        .map(str::to_owned)
}

#[test]
fn bios_unknown_mac_to_serving_balancer() {
    let Some(mut site) = site_with_image() else {
        return;
    };
    // A second network for the balancer (the real servers' side), without DHCP: the machine boots from
    // the first NIC and must enroll with that NIC's MAC.
    site.bridge("br1").expect("internal bridge");

    let boot_mac = "52:54:00:14:20:01";
    let inner_mac = "52:54:00:14:20:02";
    let tap0 = site.tap(lab::BOOT_BRIDGE).expect("tap");
    let tap1 = site.tap("br1").expect("tap");
    let nics = vec![
        Nic {
            tap: tap0,
            mac: boot_mac.into(),
            boot: true,
        },
        Nic {
            tap: tap1,
            mac: inner_mac.into(),
            boot: false,
        },
    ];
    let vm = site
        .start_vm(VmSpec::new("lb-bios", Firmware::BiosIpxe, nics))
        .expect("qemu");

    // 1. Unknown MAC: boots the default image and is discovered with its MAC.
    wait_state(&site, boot_mac, "discovered", SERVING_TIMEOUT);
    let first_token = wait::until("first boot's kernel command line", SERVING_TIMEOUT, || {
        last_token(&site.vms[vm].console())
    })
    .expect("token on the first kernel line");

    // 2. Approve and assign through the API, then reboot the machine.
    let server = site.server();
    server
        .api_ok("PUT", "/clusters/ext", Some(&cluster_spec(51, VIP, true)))
        .expect("cluster");
    server
        .api_ok(
            "POST",
            &format!("/nodes/{boot_mac}/approve"),
            Some(&serde_json::json!({"hostname": "lb-01"})),
        )
        .expect("approve");
    server
        .api_ok(
            "POST",
            "/nodes/lb-01/assign",
            Some(&serde_json::json!({"cluster": "ext", "role": "active"})),
        )
        .expect("assign");
    let before_reboot = site.vms[vm]
        .console()
        .matches("Kernel command line:")
        .count();
    {
        let Site {
            vms,
            ns,
            dir,
            prereqs,
            ..
        } = &mut site;
        vms[vm].restart(ns, dir.path(), prereqs).expect("reboot");
    }

    // 3. The agent enrolls with the new one-time token, applies its role: serving.
    wait_state(&site, boot_mac, "serving", SERVING_TIMEOUT);
    let token = last_token(&site.vms[vm].console()).expect("token on the second kernel line");
    assert!(before_reboot >= 1);
    assert_ne!(token, first_token, "every boot script mints a new token");
    // A second use of the same token is refused.
    let (status, body) = site
        .server()
        .api(
            "POST",
            "/agent/enroll",
            Some(&serde_json::json!({"token": token, "mac": boot_mac})),
        )
        .expect("enroll call");
    assert!(
        (400..500).contains(&status),
        "reused token answered {status}: {body}"
    );
    let node = site.server().node_by_mac(boot_mac).unwrap().unwrap();
    assert_eq!(node["mac"], boot_mac, "{node}");

    // 4. The kernel holds the service: the agent's report names it (applied generation, no errors).
    let shown = site
        .server()
        .api_ok("GET", "/nodes/lb-01", None)
        .expect("node");
    let report = shown["last_report"].to_string();
    assert!(report.contains(VIP), "report names the VIP: {report}");
    // ... and `ipvsadm -Ln` in the VM, which `/init` prints on the console after each applied generation,
    // shows the service with both real servers forwarded by NAT (Masq).
    let table = wait::until(
        "ipvsadm -Ln on the console with the service and its real servers",
        wait::scaled(Duration::from_secs(30)),
        || {
            let table = console_ipvs_table(&site.vms[vm].console())?;
            let service = table
                .lines()
                .any(|l| l.starts_with(&format!("TCP  {VIP}:80 ")));
            let masq = REAL_SERVERS.iter().all(|rs| {
                table
                    .lines()
                    .any(|l| l.contains(&format!("-> {rs}:80")) && l.contains("Masq"))
            });
            (service && masq).then_some(table)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; console:\n{}", site.vms[vm].console()));
    eprintln!("ipvsadm -Ln on the console:\n{table}");

    // 5. Client traffic through the VIP: NAT through the VM to the real servers behind its second NIC.
    for (i, address) in REAL_SERVERS.iter().enumerate() {
        fleet::add_real_server(&mut site, &format!("rs{}", i + 1), address, "br1")
            .expect("real server");
    }
    let client = site
        .attach_namespace(
            "client",
            lab::BOOT_BRIDGE,
            &format!("{}/15", fleet::CLIENT_ADDRESS),
            None,
        )
        .expect("client namespace");
    let addr = format!("{VIP}:80");
    // The first answer once the VM holds the VIPs and its checks found the real servers healthy.
    traffic::until_answered(&site.extra[client], &addr, Duration::from_secs(90)).unwrap_or_else(
        |e| {
            panic!(
                "{e}; node: {}",
                site.server().api_ok("GET", "/nodes/lb-01", None).unwrap()
            )
        },
    );
    let results = traffic::probe(&site.extra[client], &addr, "/", 50, 20, 2000).expect("probe");
    let by = traffic::answers_by_body(&results);
    assert!(traffic::failures(&results).is_empty(), "{results:?}");
    // rr over two equal real servers: half each (a health-check flap may shift one).
    for name in ["rs1", "rs2"] {
        let got = by.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(10) <= 1, "{name} answered {got} of 20: {by:?}");
    }
}

#[test]
fn uefi_two_nics_and_edk2_pxe_enroll_and_serve() {
    let Some(mut site) = site_with_image() else {
        return;
    };
    let server = site.server();
    server
        .api_ok(
            "PUT",
            "/clusters/uefi",
            Some(&cluster_spec(52, "198.18.0.11", false)),
        )
        .expect("cluster");
    // Machine A: two NICs, boots from the second. Machine B: EDK2's own PXE.
    let a_first = "52:54:00:14:30:01";
    let a_boot = "52:54:00:14:30:02";
    let b_boot = "52:54:00:14:30:03";
    for (mac, name, role, prio) in [
        (a_boot, "lb-a", "active", 150),
        (b_boot, "lb-b", "backup", 100),
    ] {
        server
            .api_ok(
                "POST",
                "/nodes",
                Some(&serde_json::json!({"mac": mac, "hostname": name})),
            )
            .expect("pre-register");
        server
            .api_ok(
                "POST",
                &format!("/nodes/{name}/assign"),
                Some(&serde_json::json!({"cluster": "uefi", "role": role, "priority": prio})),
            )
            .expect("assign");
    }
    // A's first NIC sits on another network (no DHCP there), as a balancer's second network would.
    site.bridge("br1").expect("second network");
    let taps = [
        site.tap("br1").expect("tap"),
        site.tap(lab::BOOT_BRIDGE).expect("tap"),
        site.tap(lab::BOOT_BRIDGE).expect("tap"),
    ];
    site.start_vm(VmSpec::new(
        "lb-a-uefi-ipxe",
        Firmware::UefiIpxe,
        vec![
            Nic {
                tap: taps[0].clone(),
                mac: a_first.into(),
                boot: false,
            },
            Nic {
                tap: taps[1].clone(),
                mac: a_boot.into(),
                boot: true,
            },
        ],
    ))
    .expect("qemu A");
    site.start_vm(VmSpec::new(
        "lb-b-uefi-edk2",
        Firmware::UefiEdk2Pxe,
        vec![Nic {
            tap: taps[2].clone(),
            mac: b_boot.into(),
            boot: true,
        }],
    ))
    .expect("qemu B");
    wait_state(&site, a_boot, "serving", SERVING_TIMEOUT);
    wait_state(&site, b_boot, "serving", SERVING_TIMEOUT);
    // A enrolled with its boot NIC's MAC; its first NIC never became a node.
    assert_eq!(
        site.server().node_by_mac(a_boot).unwrap().unwrap()["hostname"],
        "lb-a"
    );
    assert!(site.server().node_by_mac(a_first).unwrap().is_none());
}
