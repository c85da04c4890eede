//! Rollouts on the virtual site of `make demo` (`lab::fleet`: one lbfleet-server on SQLite, cluster `web` with
//! two PXE-booted QEMU balancers, lb-01 active and lb-02 backup), with a client sending a request every 50 ms
//! through the VIP all along. Images: the default one (v1, as built), `v2` (the same files under another
//! name, so the running image shows which boot a node is in), and `v3-broken` (v1's initramfs with an overlay
//! whose `lbfleet-agent run` exits at start and whose `/init` reboots after 3 failed starts).
//!
//! Checks, in order, each on what a client, a console or the API observes:
//! 1. A rollout of the broken image: the canary (lb-02, the backup) is rebooted into it, its agent never
//!    starts, it fails its gate, the rollout fails saying so, and lb-02 is put back on v1 and serves again
//!    (after `/init`'s reboot, since a dead agent cannot be asked). lb-01 is never touched (no new boot on its
//!    console, still master). The client loses at most 2 requests.
//! 2. A rollout of v2 over the pair, with lbfleet-server killed (`kill -9`) while lb-02 waits for its gate and
//!    started again: the rollout resumes where it was (the audit log holds each step once: upgrade, passed,
//!    switchover, upgrade, passed, finished), both balancers end on v2, lb-02 active. The client loses at most
//!    2 requests over the whole rollout.
//!
//! Prints the timings (each node's upgrade against its boot-to-serving time, the failed gate, the client).
//! Needs root, QEMU, Debian's kernel, ipxe and ipxe-qemu (scripts/install-deps.sh); fails without them. On a
//! failure the site prints every console and the server log, and everything is removed (Drop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lbfleet_tests::lab::fleet::{self, FleetOptions};
use lbfleet_tests::lab::traffic::{self, Background};
use lbfleet_tests::lab::{self, wait, LabServer, Site};
use serde_json::{json, Value};

/// Two TCG machines booting at once on a shared two-core box.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
/// A whole rollout (two reboots under TCG, or a failed gate and the rollback's boot).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// The broken canary's gate: long enough for a good image to boot and serve under TCG, short for the test.
const BROKEN_GATE: &str = "45s";
/// The client's schedule: a request every 50 ms, each failed when not answered within 900 ms.
const INTERVAL_MS: u64 = 50;
const REQUEST_TIMEOUT_MS: u64 = 900;
/// Bound of each client run (stopped once its phase is over): 15 minutes of requests.
const MAX_REQUESTS: u32 = 18_000;

fn rollout(server: &LabServer, id: i64) -> Option<Value> {
    server.api_ok("GET", &format!("/rollouts/{id}"), None).ok()
}

/// How many times a machine booted (kernel command lines on its console) and the last one's image.
fn boots(console: &str) -> (usize, Option<String>) {
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("Kernel command line:"))
        .collect();
    let image = lines.last().and_then(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("lbfleet.image="))
            .map(str::to_owned)
    });
    (lines.len(), image)
}

/// Starts the client and waits for its first 20 requests.
fn start_client(site: &Site, client: usize, name: &str) -> Background {
    let probe = Background::probe(
        &site.extra[client],
        &fleet::vip_addr(),
        "/",
        INTERVAL_MS,
        MAX_REQUESTS,
        REQUEST_TIMEOUT_MS,
        &site.dir.path().join(name),
    )
    .expect("client");
    wait::until("20 client requests", Duration::from_secs(30), || {
        (probe.done() >= 20).then_some(())
    })
    .expect("client running");
    probe
}

/// Lets the client run 40 more requests, stops it and checks it lost at most 2.
fn finish_client(probe: Background, what: &str) {
    let n = probe.done();
    wait::until("40 more client requests", Duration::from_secs(30), || {
        (probe.done() >= n + 40).then_some(())
    })
    .expect("client running");
    let results = traffic::parse_probe(&probe.stop());
    let failed = traffic::failures(&results);
    eprintln!(
        "client over {what}: {} requests, {} failed, longest outage {:?}",
        results.len(),
        failed.len(),
        traffic::longest_outage(&results)
            .map(|(at, slots)| format!("{} ms at {at} ms", slots as u64 * INTERVAL_MS))
    );
    assert!(failed.len() <= 2, "{what}: {}", traffic::summary(&results));
    assert!(
        results.len() >= 100,
        "{what}: {}",
        traffic::summary(&results)
    );
}

/// The `rollout.step` names of rollout `id` in the audit log, oldest first.
fn audited_steps(server: &LabServer, id: i64) -> Vec<String> {
    let audit = server
        .api_ok(
            "GET",
            &format!("/audit?target=rollout:{id}&limit=200"),
            None,
        )
        .expect("audit");
    let entries = audit
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .or_else(|| audit.as_array().cloned())
        .unwrap_or_default();
    let mut steps: Vec<(i64, String)> = entries
        .iter()
        .filter(|e| e["action"] == "rollout.step")
        .map(|e| {
            (
                e["seq"].as_i64().unwrap_or(0),
                e["after"]["step"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    steps.sort();
    steps.into_iter().map(|(_, s)| s).collect()
}

/// Milliseconds from a step's start to its end.
fn step_ms(step: &Value) -> Option<i64> {
    Some(step["finished_at"].as_i64()? - step["since"].as_i64()?)
}

#[test]
fn a_broken_canary_is_rolled_back_and_a_pair_is_upgraded_across_a_server_crash() {
    let Some(prereqs) = lab::require() else {
        return;
    };
    let test_started = Instant::now();
    let mut site = Site::new(prereqs).expect("lab site");
    let image = lab::image::balancer_image(&site.dir.path().join("images")).expect("image");
    let opts = FleetOptions::new(image.clone());
    let layout = fleet::build(&mut site, &opts).expect("fleet site");
    let started = Instant::now();
    let client = layout.client;
    let (lb01, lb02) = (layout.vms[0], layout.vms[1]);
    let v1 = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .expect("image name");

    for (host, vrrp) in [("lb-01", "master"), ("lb-02", "backup")] {
        wait::until(
            &format!("{host} serving as VRRP {vrrp} on {v1}"),
            wait::scaled(BOOT_TIMEOUT),
            || {
                let n = site.server().node(host)?;
                (n["state"] == "serving"
                    && n["vrrp_state"] == vrrp
                    && n["image_version"] == v1.as_str())
                .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}; node: {:?}", site.server().node(host)));
    }
    eprintln!(
        "lb-01 and lb-02 serving {:.1} s after the machines started",
        started.elapsed().as_secs_f64()
    );
    let server = site.server();
    server
        .add_image(
            "v2",
            &image.join("vmlinuz"),
            &image.join("initrd.img"),
            "console=ttyS0",
            false,
        )
        .expect("image v2");
    let broken = site.dir.path().join("broken-initrd.img");
    lab::image::broken_agent_initrd(&image.join("initrd.img"), &broken, 3).expect("broken initrd");
    server
        .add_image(
            "v3-broken",
            &image.join("vmlinuz"),
            &broken,
            "console=ttyS0",
            false,
        )
        .expect("image v3-broken");
    traffic::until_answered(
        &site.extra[client],
        &fleet::vip_addr(),
        Duration::from_secs(60),
    )
    .expect("the VIP answers");

    // 1. The broken image: the canary fails its gate and is put back; lb-01 is never touched.
    let probe = start_client(&site, client, "probe-broken.txt");
    let (lb01_boots, _) = boots(&site.vms[lb01].console());
    let (lb02_boots, _) = boots(&site.vms[lb02].console());
    let r = site
        .server()
        .api_ok(
            "POST",
            "/rollouts",
            Some(&json!({"image": "v3-broken", "clusters": ["web"],
                         "gate": {"timeout": BROKEN_GATE}})),
        )
        .expect("rollout of v3-broken");
    let id = r["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("rollout id: {r}"));
    let requested = Instant::now();
    let failed = wait::until(
        "the broken rollout failing",
        wait::scaled(ROLLOUT_TIMEOUT),
        || {
            let r = rollout(site.server(), id)?;
            (r["state"] != "running").then_some(r)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", site.report()));
    let failed_after = requested.elapsed();
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("lb-02 failed its gate") && reason.contains("put back on image"),
        "{reason}"
    );
    let steps = failed["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 2, "{failed}");
    assert_eq!(steps[0]["node"], "lb-02", "the canary is the backup");
    assert_eq!(steps[0]["phase"], "rolled_back", "{failed}");
    assert_eq!(steps[1]["phase"], "pending", "lb-01 is not touched");
    // lb-02 booted the broken image and its /init gave up on the agent.
    let console = site.vms[lb02].console();
    assert!(
        console.contains("lbfleet.image=v3-broken")
            && console.contains("lbfleet-agent (broken test image): exiting at start"),
        "lb-02 booted v3-broken: {}",
        site.report()
    );
    // It reboots by itself (after 3 failed starts) and comes back on v1, serving as the backup.
    let back = wait::until(
        "lb-02 serving again on v1",
        wait::scaled(ROLLOUT_TIMEOUT),
        || {
            let n = site.server().node("lb-02")?;
            (n["state"] == "serving"
                && n["vrrp_state"] == "backup"
                && n["image_version"] == v1.as_str()
                && n["applied_generation"] == n["role_generation"])
                .then(|| requested.elapsed())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; node: {:?}\n{}",
            site.server().node("lb-02"),
            site.report()
        )
    });
    let console = site.vms[lb02].console();
    assert!(
        console.contains("failed to start 3 times in a row"),
        "/init rebooted the broken image: {}",
        site.report()
    );
    let (n, last) = boots(&console);
    assert!(
        n >= lb02_boots + 2,
        "lb-02 booted the broken image, then v1"
    );
    assert_eq!(last.as_deref(), Some(v1.as_str()));
    assert_eq!(
        boots(&site.vms[lb01].console()).0,
        lb01_boots,
        "lb-01 never rebooted"
    );
    let lb01_node = site.server().node("lb-01").expect("lb-01");
    assert_eq!(lb01_node["vrrp_state"], "master", "{lb01_node}");
    assert_eq!(lb01_node["image_version"], v1.as_str(), "{lb01_node}");
    eprintln!(
        "broken canary: rollout failed {:.1} s after it started ({reason}); lb-02 serving on {v1} again after {:.1} s",
        failed_after.as_secs_f64(),
        back.as_secs_f64()
    );
    finish_client(probe, "the broken image's rollout");

    // 2. v2 over the pair; the server is killed while lb-02 waits for its gate, and started again.
    let probe = start_client(&site, client, "probe-v2.txt");
    let r = site
        .server()
        .api_ok(
            "POST",
            "/rollouts",
            Some(&json!({"image": "v2", "clusters": ["web"], "gate": {"timeout": "5m"}})),
        )
        .expect("rollout of v2");
    let id = r["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("rollout id: {r}"));
    let rollout_started = Instant::now();
    wait::until(
        "lb-02 upgrading",
        wait::scaled(Duration::from_secs(60)),
        || {
            let r = rollout(site.server(), id)?;
            (r["steps"][0]["node"] == "lb-02" && r["steps"][0]["phase"] == "upgrading")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", rollout(site.server(), id)));
    let server = site.server.as_mut().expect("server");
    server.kill_hard();
    let killed_at_ms = wait::now_ms();
    server.restart().expect("server started again");
    eprintln!(
        "server killed during lb-02's upgrade, {:.1} s into the rollout, and started again",
        rollout_started.elapsed().as_secs_f64()
    );
    let done = wait::until(
        "the v2 rollout finishing",
        wait::scaled(ROLLOUT_TIMEOUT),
        || {
            let r = rollout(site.server(), id)?;
            (r["state"] != "running").then_some(r)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", rollout(site.server(), id), site.report()));
    let took = rollout_started.elapsed();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        audited_steps(site.server(), id),
        [
            "upgrade",
            "passed",
            "switchover",
            "upgrade",
            "passed",
            "finished"
        ],
        "each step once, across the restart"
    );
    let steps = done["steps"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = steps.iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(names, ["lb-02", "lb-01"], "backup first");
    for host in ["lb-01", "lb-02"] {
        wait::until(
            &format!("{host} serving on v2"),
            wait::scaled(Duration::from_secs(60)),
            || {
                let n = site.server().node(host)?;
                (n["state"] == "serving"
                    && n["image_version"] == "v2"
                    && n["last_seen_at"].as_i64()? > killed_at_ms)
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}; node: {:?}", site.server().node(host)));
    }
    let drift = site.server().api_ok("GET", "/drift", None).expect("drift");
    assert_eq!(drift["running"], json!([["v2", 2]]), "{drift}");
    assert_eq!(
        site.server().node("lb-02").expect("lb-02")["vrrp_state"],
        "master",
        "the upgraded backup became active"
    );
    eprintln!(
        "v2 rollout over the pair in {:.1} s: lb-02 {:?} ms (server killed during it), lb-01 {:?} ms",
        took.as_secs_f64(),
        step_ms(&steps[0]),
        step_ms(&steps[1])
    );
    finish_client(probe, "the v2 rollout with a server crash");
    eprintln!(
        "site_rollout done in {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}
