//! The virtual site with two lbfleet-servers on one PostgreSQL (`lab::fleet` with a second server, the site of
//! `make demo-ha`): cluster `web` with two PXE-booted QEMU balancers (lb-01 active, lb-02 backup), the real
//! servers behind them and a client sending a request every 50 ms through the VIP.
//!
//! Checks, in order, each on what a client, a console or the API observes:
//! 1. both balancers PXE-boot from the server that answers DHCP (the first `lbfleet.server=` of their kernel
//!    command line names it) and report `serving`; the boot script names both servers;
//! 2. `kill -9` of that server, then a power-cycle of lb-02 (its QEMU killed by PID and started again): it
//!    PXE-boots from the survivor (its new kernel command line names the survivor first), enrolls there and
//!    reports `serving` as the backup again; the client loses at most one request over the whole sequence;
//! 3. PostgreSQL stopped, then lb-02 power-cycled again: it boots from the survivor's boot cache (its kernel
//!    command line carries a boot credential, `lbf_boot_`), applies its last role (the IPVS table `/init`
//!    prints on the console holds the service and every real server), and serves it: with lb-01 powered off,
//!    the VIP answers through lb-02.
//!
//! Prints the timings (boot from the survivor, boot from the cache, the client's outages) for the docs.
//! Needs root, QEMU, Debian's kernel, ipxe, ipxe-qemu and postgresql (scripts/install-deps.sh); fails without
//! them. On a failure the site prints every console and both server logs, and everything is removed (Drop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lbfleet_tests::lab::fleet::{self, FleetOptions, BALANCERS, PEER_ADDRESS, REAL_SERVERS};
use lbfleet_tests::lab::traffic::{self, Background};
use lbfleet_tests::lab::{self, wait, ServerOptions, Site, SERVER_ADDRESS};

/// Two TCG machines booting at once on a shared two-core box.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
/// One TCG machine booting while the other runs.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The client's schedule: a request every 50 ms, each failed when not answered within 900 ms (below the
/// kernel's first SYN retransmission, so a SYN to a dead balancer counts as a failure).
const INTERVAL_MS: u64 = 50;
const REQUEST_TIMEOUT_MS: u64 = 900;
/// Bound of the client's run (it is stopped once the sequence is over): 15 minutes of requests.
const MAX_REQUESTS: u32 = 18_000;

/// The words of the last kernel command line on a console.
fn kernel_line(console: &str) -> Option<String> {
    console
        .lines()
        .rfind(|l| l.contains("Kernel command line:"))
        .map(str::to_owned)
}

/// `lbfleet.<key>=` of the last kernel command line on a console.
fn kernel_arg(console: &str, key: &str) -> Option<String> {
    let prefix = format!("lbfleet.{key}=");
    kernel_line(console)?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

/// The server that served the last boot script on a console: the first URL of `lbfleet.server=` (the boot
/// script names the server that answered first).
fn boot_server(console: &str) -> Option<String> {
    kernel_arg(console, "server")?
        .split(',')
        .next()
        .map(str::to_owned)
}

/// The last `ipvsadm -Ln` table `/init` printed on a console (its `lbfleet-ipvs: ` lines).
fn console_ipvs_table(console: &str) -> Option<String> {
    let start = console.rfind("ipvsadm -Ln after role generation")?;
    let lines: Vec<&str> = console[start..]
        .lines()
        .skip(1)
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("lbfleet-ipvs: "))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[test]
fn balancer_boots_from_the_surviving_server_and_from_its_cache_without_the_database() {
    let Some(prereqs) = lab::require() else {
        return;
    };
    let test_started = Instant::now();
    // A cluster of this test's own: it is stopped half-way.
    let pg = lbfleet_tests::postgres::Cluster::start();
    pg.database("site_ha");
    let mut site = Site::new(prereqs).expect("lab site");
    let image = lab::image::balancer_image(&site.dir.path().join("images")).expect("image");
    let opts = FleetOptions {
        image_dir: image,
        cmdline: String::new(),
        server: ServerOptions {
            // The servers run in namespaces of their own: the cluster's Unix socket reaches them.
            database: Some(pg.socket_url("site_ha")),
            name: Some("server-1".into()),
            ..ServerOptions::default()
        },
        discovered_machine: false,
        second_server: true,
    };
    let layout = fleet::build(&mut site, &opts).expect("fleet site with two servers");
    assert_eq!(layout.vms.len(), 2);
    let started = Instant::now();
    let client = layout.client;
    let (lb01, lb02) = (layout.vms[0], layout.vms[1]);

    // 1. Both balancers boot and serve; the server that answered DHCP served their boot scripts.
    for b in BALANCERS.iter().filter(|b| b.role.is_some()) {
        wait::until(
            &format!("{} serving", b.hostname),
            wait::scaled(BOOT_TIMEOUT),
            || (site.server().node(b.hostname)?["state"] == "serving").then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; node: {:?}", site.server().node(b.hostname)));
    }
    eprintln!(
        "lb-01 and lb-02 serving {:.1} s after the machines started",
        started.elapsed().as_secs_f64()
    );
    for (host, state) in [("lb-01", "master"), ("lb-02", "backup")] {
        wait::until(
            &format!("{host} reporting VRRP {state}"),
            wait::scaled(Duration::from_secs(60)),
            || (site.server().node(host)?["vrrp_state"] == state).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; node: {:?}", site.server().node(host)));
    }
    let urls = [
        format!("http://{SERVER_ADDRESS}:{}", lab::HTTP_PORT),
        format!("http://{PEER_ADDRESS}:{}", lab::HTTP_PORT),
    ];
    let console = site.vms[lb02].console();
    let booted_by = boot_server(&console).expect("lbfleet.server= on lb-02's kernel command line");
    assert_eq!(
        boot_server(&site.vms[lb01].console()).as_deref(),
        Some(booted_by.as_str()),
        "both balancers booted from the DHCP server"
    );
    let named = kernel_arg(&console, "server").unwrap_or_default();
    for u in &urls {
        assert!(
            named.split(',').any(|n| n == u),
            "the boot script names every server: {named}"
        );
    }
    let booter = urls
        .iter()
        .position(|u| *u == booted_by)
        .unwrap_or_else(|| panic!("{booted_by} is neither server"));
    let survivor = 1 - booter;
    // The other server is the DHCP standby: it did not answer.
    let active = |i: usize| {
        let s = if i == 0 {
            site.server()
        } else {
            &site.peers[0]
        };
        s.metric("lbfleet_dhcp_active")
    };
    assert_eq!(
        active(booter),
        Some(1.0),
        "the booting server is DHCP active"
    );
    assert_eq!(active(survivor), Some(0.0), "the other one is standby");
    eprintln!("the balancers booted from {booted_by}; killing it");

    // 2. The client runs; kill -9 the booting server; power-cycle lb-02.
    traffic::until_answered(
        &site.extra[client],
        &fleet::vip_addr(),
        Duration::from_secs(60),
    )
    .expect("the VIP answers");
    let probe = Background::probe(
        &site.extra[client],
        &fleet::vip_addr(),
        "/",
        INTERVAL_MS,
        MAX_REQUESTS,
        REQUEST_TIMEOUT_MS,
        &site.dir.path().join("probe-ha.txt"),
    )
    .expect("client");
    wait::until("20 client requests", Duration::from_secs(30), || {
        (probe.done() >= 20).then_some(())
    })
    .expect("client running");

    let killed_at = Instant::now();
    if booter == 0 {
        site.server.as_mut().expect("server").kill_hard();
    } else {
        site.peers[0].kill_hard();
    }
    let (survivor_server, survivor_url) = if survivor == 0 {
        (site.server.as_ref().expect("server"), &urls[0])
    } else {
        (&site.peers[0], &urls[1])
    };
    // The survivor takes the boot network over (its DHCP leadership after the TTL).
    let takeover = wait::until(
        "the survivor answering DHCP",
        wait::scaled(Duration::from_secs(30)),
        || (survivor_server.metric("lbfleet_dhcp_active")? == 1.0).then(|| killed_at.elapsed()),
    )
    .expect("DHCP takeover");
    eprintln!(
        "survivor {survivor_url} DHCP active {:.1} s after kill -9",
        takeover.as_secs_f64()
    );

    let cycled_at_ms = wait::now_ms();
    site.vms[lb02]
        .restart(&site.ns, site.dir.path(), &site.prereqs)
        .expect("power-cycle lb-02");
    let on = Instant::now();
    let kernel_at = wait::until(
        "lb-02's new kernel command line",
        wait::scaled(REBOOT_TIMEOUT),
        || {
            boot_server(&site.vms[lb02].console())
                .is_some()
                .then(|| on.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", site.report()));
    let console = site.vms[lb02].console();
    assert_eq!(
        boot_server(&console).as_deref(),
        Some(survivor_url.as_str()),
        "lb-02 PXE-booted from the survivor: {:?}",
        kernel_line(&console)
    );
    let serving_at = wait::until(
        "lb-02 serving again (a report after the power-cycle, as backup)",
        wait::scaled(REBOOT_TIMEOUT),
        || {
            let n = survivor_server.node("lb-02")?;
            let fresh = n["last_seen_at"].as_i64()? > cycled_at_ms;
            (fresh
                && n["state"] == "serving"
                && n["vrrp_state"] == "backup"
                && n["applied_generation"] == n["role_generation"])
                .then(|| on.elapsed())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; node: {:?}\n{}",
            survivor_server.node("lb-02"),
            site.report()
        )
    });
    eprintln!(
        "lb-02 power-cycled: kernel from {survivor_url} after {:.1} s, serving again after {:.1} s",
        kernel_at.as_secs_f64(),
        serving_at.as_secs_f64()
    );
    // lb-01's agent moved to the survivor too: it reports there.
    let moved_ms = wait::now_ms();
    wait::until(
        "lb-01 reporting to the survivor",
        wait::scaled(Duration::from_secs(60)),
        || (survivor_server.node("lb-01")?["last_seen_at"].as_i64()? > moved_ms).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; node: {:?}", survivor_server.node("lb-01")));

    // The client's view of the whole sequence: a few more requests after lb-02 is back, then stop it.
    let n = probe.done();
    wait::until("40 more client requests", Duration::from_secs(30), || {
        (probe.done() >= n + 40).then_some(())
    })
    .expect("client running");
    let results = traffic::parse_probe(&probe.stop());
    let failed = traffic::failures(&results);
    let outage = traffic::longest_outage(&results);
    eprintln!(
        "client over kill -9 + power-cycle ({:.1} s): {} requests, {} failed, longest outage {:?}",
        killed_at.elapsed().as_secs_f64(),
        results.len(),
        failed.len(),
        outage.map(|(at, slots)| format!("{} ms at {at} ms", slots as u64 * INTERVAL_MS))
    );
    assert!(failed.len() <= 1, "{}", traffic::summary(&results));
    assert!(results.len() >= 100, "{}", traffic::summary(&results));

    // 3. PostgreSQL down; lb-02 power-cycled again boots from the survivor's cache.
    // (Its /metrics needs the database to check the token: the log says it.)
    const UNREACHABLE: &str = "DHCP: the database is unreachable; answering only known MACs";
    let seen = survivor_server.log().matches(UNREACHABLE).count();
    pg.stop();
    let stopped = Instant::now();
    let unreachable = wait::until(
        "the survivor noticing the database is down",
        wait::scaled(Duration::from_secs(30)),
        || (survivor_server.log().matches(UNREACHABLE).count() > seen).then(|| stopped.elapsed()),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", survivor_server.log()));
    eprintln!(
        "PostgreSQL stopped; the survivor answers from its cache after {:.1} s",
        unreachable.as_secs_f64()
    );
    site.vms[lb02]
        .restart(&site.ns, site.dir.path(), &site.prereqs)
        .expect("power-cycle lb-02 again");
    let on = Instant::now();
    let kernel_at = wait::until(
        "lb-02's kernel command line, booted without the database",
        wait::scaled(REBOOT_TIMEOUT),
        || {
            kernel_arg(&site.vms[lb02].console(), "token")
                .is_some()
                .then(|| on.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", site.report()));
    let console = site.vms[lb02].console();
    assert_eq!(
        boot_server(&console).as_deref(),
        Some(survivor_url.as_str()),
        "{:?}",
        kernel_line(&console)
    );
    let token = kernel_arg(&console, "token").unwrap_or_default();
    assert!(
        token.starts_with("lbf_boot_"),
        "a boot credential from the cache, not an enrollment token: {token}"
    );
    let table = wait::until(
        "lb-02 applying its last role (ipvsadm -Ln on the console)",
        wait::scaled(REBOOT_TIMEOUT),
        || {
            let t = console_ipvs_table(&site.vms[lb02].console())?;
            REAL_SERVERS
                .iter()
                .all(|(_, a, _)| t.contains(a))
                .then_some(t)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", site.report()));
    let applied_at = on.elapsed();
    assert!(table.contains(fleet::VIP), "{table}");
    eprintln!(
        "lb-02 booted from the cache: kernel after {:.1} s, role applied after {:.1} s:\n{table}",
        kernel_at.as_secs_f64(),
        applied_at.as_secs_f64()
    );
    // It serves that role: lb-01 powered off, the VIP answers through lb-02.
    let off = Instant::now();
    site.vms[lb01].kill();
    let answered = wait::until(
        "the VIP answering through lb-02",
        wait::scaled(Duration::from_secs(60)),
        || {
            let r = traffic::probe(&site.extra[client], &fleet::vip_addr(), "/", 0, 1, 900).ok()?;
            r.first()?.answer.is_ok().then(|| off.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", site.report()));
    eprintln!(
        "lb-01 powered off with the database down: the VIP answers through lb-02 after {:.1} s",
        answered.as_secs_f64()
    );
    eprintln!(
        "site_ha done in {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}
