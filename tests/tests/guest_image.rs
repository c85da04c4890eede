//! VM tier: the boot image itself. `lbfleet-images` builds an image (Debian's kernel, the initramfs with
//! busybox, modules, the agent and the real `/init`); QEMU boots it with two NICs on QEMU's user-mode
//! networks (isolated from the host): eth0 (198.18.7.0/24, nothing to reach) and eth1 (198.18.6.0/24,
//! whose only exit, 198.18.6.1:80, is piped to an lbfleet-server on the host's loopback). The kernel
//! command line is written by the boot contract's writer with `BOOTIF` = eth1's MAC.
//!
//! Checks: the build is reproducible and within budget; `/init` loads every module, picks the NIC by MAC
//! (not the first one), gets its address by DHCP, starts the agent, which enrolls with eth1's MAC and its
//! one-time token and reports the role applied (node `serving`, image version from `lbfleet.image=`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_tests::server as common;

use std::time::{Duration, Instant};

use lbfleet_images::{build_image, BuildOptions, INITRD_FILE, KERNEL_FILE, MAX_INITRD_BYTES};
use lbfleet_proto::KernelArgs;
use lbfleet_tests::guest::{self, RunningGuest};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// eth0: a NIC that is not the boot NIC (the old "first NIC by name" guess would pick it).
const OTHER_MAC: &str = "52:54:00:12:34:01";
/// eth1: the NIC the node "booted" from.
const BOOT_MAC: &str = "52:54:00:12:34:02";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_image_init_brings_up_the_bootif_nic_and_the_agent_enrolls_and_serves() {
    let Some(prereqs) = guest::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // The image, twice from the same inputs: byte-identical, and within the initrd budget.
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent").unwrap();
    let mut opts = BuildOptions::new(&agent, dir.path().join("images"));
    opts.version = Some("guest-image-1".into());
    let opts2 = opts.clone();
    let first = tokio::task::spawn_blocking(move || build_image(&opts2))
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "image built in {:?}: initrd {} bytes ({} unpacked)",
        first.elapsed, first.initrd_bytes, first.cpio_bytes
    );
    assert!(first.initrd_bytes < MAX_INITRD_BYTES);
    assert_eq!(first.manifest.kernel_version, prereqs.kernel_version);
    let opts2 = opts.clone();
    let second = tokio::task::spawn_blocking(move || build_image(&opts2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.manifest.files, second.manifest.files,
        "same inputs gave different images"
    );
    lbfleet_images::Manifest::read(&second.dir)
        .unwrap()
        .verify(&second.dir)
        .unwrap();

    // A server with a cluster, the node (by its boot MAC) assigned to it, and a one-time token.
    let srv = common::TestServer::start(dir.path()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv
        .put(
            "/api/v1/clusters/ext",
            &op,
            common::cluster_spec(51, "198.18.0.10"),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes",
            &op,
            json!({"mac": BOOT_MAC, "hostname": "lb-img"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-img/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = srv
        .post("/api/v1/nodes/lb-img/enrollment-token", &op, json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();

    let args = KernelArgs {
        bootif: Some(BOOT_MAC.parse().unwrap()),
        server: Some("http://198.18.6.1".into()),
        token: Some(token),
        image: Some(first.manifest.version.clone()),
        ..Default::default()
    };
    let append = format!(
        "{} panic=-1 {}",
        first.manifest.cmdline,
        args.to_cmdline().unwrap()
    );
    let port: u16 = srv.base.rsplit(':').next().unwrap().parse().unwrap();
    let qemu_args: Vec<String> = vec![
        "-netdev".into(),
        "user,id=n0,net=198.18.7.0/24,restrict=on".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={OTHER_MAC}"),
        "-netdev".into(),
        format!(
            "user,id=n1,net=198.18.6.0/24,restrict=on,guestfwd=tcp:198.18.6.1:80-cmd:{} nc 127.0.0.1 {port}",
            prereqs.busybox.display()
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=n1,mac={BOOT_MAC}"),
    ];
    let mut vm = RunningGuest::start(
        &prereqs,
        &first.dir.join(KERNEL_FILE),
        &first.dir.join(INITRD_FILE),
        &append,
        &qemu_args,
    )
    .unwrap();

    // The node reports serving (it enrolled with eth1's MAC: the token is bound to it).
    let start = Instant::now();
    let serving: Value = loop {
        let (_, n) = srv.get("/api/v1/nodes/lb-img", &op).await;
        if n["state"] == "serving" {
            break n;
        }
        if !vm.is_running() || start.elapsed() > Duration::from_secs(240) {
            panic!("node not serving: {n}\nconsole:\n{}", vm.console());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let console = vm.console();
    let _ = std::fs::write(
        std::env::temp_dir().join("lbfleet-guest-image-console.log"),
        &console,
    );
    assert_eq!(serving["mac"], BOOT_MAC, "{serving}");
    assert_eq!(serving["image_version"], "guest-image-1", "{serving}");
    assert_eq!(serving["address"], "198.18.6.15", "{serving}");
    for line in [
        "lbfleet-init: image guest-image-1".to_owned(),
        "modules loaded (0 failed)".to_owned(),
        format!("lbfleet-init: boot interface eth1 ({BOOT_MAC})"),
        // QEMU's restricted user network offers no router.
        "lbfleet-init: eth1: bound 198.18.6.15/24 router none".to_owned(),
        "lbfleet-init: interface eth0 up".to_owned(),
        "enrollment token given: yes".to_owned(),
        // The agent's log, without colour codes (NO_COLOR from /init).
        "INFO lbfleet_agent::daemon::server: enrolled node=lb-img".to_owned(),
    ] {
        assert!(
            console.contains(&line),
            "no {line:?} in console:\n{console}"
        );
    }
    // The token never reaches the console (`quiet` keeps the kernel from printing its command line).
    assert!(!console.contains("lbf_enr_"), "{console}");
    drop(vm);
}
