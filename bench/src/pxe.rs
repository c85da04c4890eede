//! PXE boot time of a QEMU machine (TCG) from lbfleet-server against dnsmasq, in the netns lab
//! (`lbfleet_tests::lab`): every case builds its own site namespace, bridge and tap, so both servers see the
//! same machine, firmware, kernel and initrd.
//!
//! - `lbfleet`: DHCP (with the IPv6 router-advertisement answer and PXE vendor options), iPXE script over
//!   HTTP, kernel and initrd over HTTP. Timed from QEMU's start to "serving" in the API when `--image` is a
//!   built lbfleet image with the agent (the node is pre-registered and assigned to a cluster, so its agent
//!   enrolls, applies the role and reports it), and always to the kernel's `Run /init`.
//! - `lbfleet-no-ra`: the same with the router-advertisement answer off (the server before this change),
//!   to `Run /init`: what iPXE's IPv6 wait costs.
//! - `dnsmasq`: dnsmasq 2.90 DHCP + TFTP (`--enable-tftp`), the firmware's iPXE gets a TFTP script that loads
//!   the same kernel and initrd by TFTP; timed to `Run /init`.
//! - storm: `--storm N` machines at once from lbfleet (BIOS), each to serving (or `/init`).
//!
//! Firmware: BIOS (SeaBIOS + QEMU's iPXE ROM) and UEFI (OVMF + QEMU's iPXE EFI ROM). Each case runs `--runs`
//! times; the median is printed with the ratio lbfleet-to-serving / dnsmasq-to-init (goal <= 0.6).
//! Bounds: every boot has a deadline (`--deadline-secs`); everything is removed on exit and on failure.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lbfleet_tests::lab::initrd::marker_initrd;
use lbfleet_tests::lab::{self, wait, Firmware, Nic, ServerOptions, Site, VmSpec};

/// The kernel's line when it starts the initramfs' `/init`: the end point of the dnsmasq cases.
const RUN_INIT: &str = "Run /init as init process";

#[derive(Debug, Parser)]
#[command(
    about = "PXE boot to serving with lbfleet vs dnsmasq DHCP+TFTP to /init, QEMU TCG in a netns lab"
)]
struct Args {
    /// A built lbfleet image directory (vmlinuz, initrd.img, manifest.json; `make image`). Without it a
    /// minimal marker initrd is booted and every case is timed to `/init` only.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Runs per case; the median is reported
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Machines in the boot storm (0: no storm)
    #[arg(long, default_value_t = 4)]
    storm: usize,
    /// Firmware to measure: bios, uefi (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "bios,uefi")]
    firmware: Vec<String>,
    /// Deadline of one boot, seconds
    #[arg(long, default_value_t = 300)]
    deadline_secs: u64,
}

/// One boot's milestones, seconds since QEMU started.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    init: f64,
    serving: Option<f64>,
}

fn mac(n: usize) -> String {
    format!("52:54:00:be:00:{n:02x}")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The kernel and initrd every case boots.
struct BootFiles {
    kernel: PathBuf,
    initrd: PathBuf,
    /// Whether the initrd runs the agent (then lbfleet cases also wait for "serving").
    with_agent: bool,
    size_bytes: u64,
    _scratch: tempfile::TempDir,
}

fn boot_files(args: &Args, prereqs: &lab::LabPrereqs) -> anyhow::Result<BootFiles> {
    let scratch = tempfile::tempdir()?;
    let (kernel, initrd, with_agent) = match &args.image {
        Some(dir) => (dir.join("vmlinuz"), dir.join("initrd.img"), true),
        None => (
            prereqs.kernel.clone(),
            marker_initrd(prereqs, scratch.path())?,
            false,
        ),
    };
    let size_bytes = std::fs::metadata(&kernel)
        .with_context(|| kernel.display().to_string())?
        .len()
        + std::fs::metadata(&initrd)
            .with_context(|| initrd.display().to_string())?
            .len();
    Ok(BootFiles {
        kernel,
        initrd,
        with_agent,
        size_bytes,
        _scratch: scratch,
    })
}

/// A cluster for the benchmark's nodes: one NAT service whose real server need not exist (the agent programs
/// IPVS regardless; reaching it is the test's business, not the benchmark's).
fn cluster_spec() -> serde_json::Value {
    serde_json::json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/32"],
        "services": [ { "vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                        "forward": "nat",
                        "real_servers": [ { "address": "198.18.2.1", "port": 80, "weight": 1 } ] } ]
    })
}

/// Boots `count` machines at once from lbfleet and times each.
fn lbfleet_boot(
    prereqs: &lab::LabPrereqs,
    files: &BootFiles,
    firmware: Firmware,
    count: usize,
    answer_ra: bool,
    deadline: Duration,
) -> anyhow::Result<Vec<Timing>> {
    let mut site = Site::new(prereqs.clone())?;
    site.start_server(ServerOptions {
        answer_router_solicitations: answer_ra,
        ..Default::default()
    })?;
    let server = site.server();
    server.add_image(
        "bench",
        &files.kernel,
        &files.initrd,
        lab::KERNEL_ARGS,
        true,
    )?;
    if files.with_agent {
        server.api_ok("PUT", "/clusters/bench", Some(&cluster_spec()))?;
        for i in 0..count {
            // Pre-registered (allowlisted) and assigned: the first boot enrolls and serves.
            let hostname = format!("lb-{i:02}");
            server.api_ok(
                "POST",
                "/nodes",
                Some(&serde_json::json!({"mac": mac(i + 1), "hostname": hostname})),
            )?;
            let role = if i == 0 { "active" } else { "backup" };
            let priority = if i == 0 { 150 } else { 100 - i as u32 };
            server.api_ok(
                "POST",
                &format!("/nodes/{hostname}/assign"),
                Some(&serde_json::json!({"cluster": "bench", "role": role, "priority": priority})),
            )?;
        }
    }
    for i in 0..count {
        let tap = site.tap(lab::BOOT_BRIDGE)?;
        let nic = Nic {
            tap,
            mac: mac(i + 1),
            boot: true,
        };
        site.start_vm(VmSpec::new(&format!("vm{i}"), firmware, vec![nic]))?;
    }
    let start = Instant::now();
    let mut timings = vec![Timing::default(); count];
    let mut done = vec![false; count];
    let result = wait::until("every machine", deadline, || {
        for i in 0..count {
            if done[i] {
                continue;
            }
            let since = site.vms[i].started().elapsed().as_secs_f64();
            if timings[i].init == 0.0 && site.vms[i].console().contains(RUN_INIT) {
                timings[i].init = since;
            }
            if !files.with_agent {
                done[i] = timings[i].init > 0.0;
                continue;
            }
            let serving = site
                .server()
                .node_by_mac(&mac(i + 1))
                .ok()
                .flatten()
                .is_some_and(|n| n["state"] == "serving");
            if serving {
                timings[i].serving = Some(since);
                done[i] = true;
            }
        }
        done.iter().all(|d| *d).then_some(())
    });
    if let Err(e) = result {
        eprintln!("{}", site.report());
        bail!("{e} after {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(timings)
}

/// dnsmasq serving DHCP and TFTP in the site namespace; killed by PID on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq_boot(
    prereqs: &lab::LabPrereqs,
    files: &BootFiles,
    firmware: Firmware,
    deadline: Duration,
) -> anyhow::Result<Timing> {
    let mut site = Site::new(prereqs.clone())?;
    let root = site.dir.path().join("tftp");
    std::fs::create_dir_all(&root)?;
    std::fs::copy(&files.kernel, root.join("vmlinuz"))?;
    std::fs::copy(&files.initrd, root.join("initrd.img"))?;
    // QEMU's ROM is iPXE already: a script it fetches by TFTP, loading both files by TFTP.
    std::fs::write(
        root.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel tftp://198.18.0.1/vmlinuz initrd=initrd.img {}\n\
             initrd tftp://198.18.0.1/initrd.img\nboot\n",
            lab::KERNEL_ARGS
        ),
    )?;
    let log = site.dir.path().join("dnsmasq.log");
    let child = site
        .ns
        .command("dnsmasq")
        .args(["--no-daemon", "--conf-file=/dev/null", "--port=0"])
        .args(["--interface=br0", "--bind-interfaces"])
        .arg("--dhcp-range=198.18.1.0,198.18.1.255,255.254.0.0,1h")
        .arg("--dhcp-boot=boot.ipxe")
        .arg("--enable-tftp")
        .arg(format!("--tftp-root={}", root.display()))
        .arg(format!(
            "--dhcp-leasefile={}",
            site.dir.path().join("leases").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("dnsmasq (package dnsmasq-base)")?;
    let _dnsmasq = Dnsmasq(child);
    let tap = site.tap(lab::BOOT_BRIDGE)?;
    let nic = Nic {
        tap,
        mac: mac(0x80),
        boot: true,
    };
    let vm = site.start_vm(VmSpec::new("dnsmasq-vm", firmware, vec![nic]))?;
    match site.vms[vm].wait_console(RUN_INIT, deadline) {
        Ok(t) => Ok(Timing {
            init: t.as_secs_f64(),
            serving: None,
        }),
        Err(e) => {
            eprintln!(
                "{}\n===== dnsmasq log =====\n{}",
                site.report(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            bail!("{e}")
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lbfleet_bench::cleanup_on_signal("bench-pxe");
    let prereqs = lab::prereqs()?;
    let files = boot_files(&args, &prereqs)?;
    let deadline = Duration::from_secs(args.deadline_secs);
    println!(
        "bench-pxe: kernel + initrd {:.1} MiB ({}), agent {}, {} run(s) per case, load {}",
        files.size_bytes as f64 / 1048576.0,
        files.initrd.display(),
        if files.with_agent {
            "in the image: lbfleet timed to serving"
        } else {
            "absent (marker initrd): every case timed to /init"
        },
        args.runs,
        load()
    );
    let firmwares: Vec<Firmware> = args
        .firmware
        .iter()
        .map(|f| match f.as_str() {
            "bios" => Ok(Firmware::BiosIpxe),
            "uefi" => Ok(Firmware::UefiIpxe),
            "edk2" => Ok(Firmware::UefiEdk2Pxe),
            other => bail!("unknown firmware {other} (bios, uefi, edk2)"),
        })
        .collect::<anyhow::Result<_>>()?;
    for fw in firmwares {
        let (mut lb_init, mut lb_serving, mut nora_init, mut dm_init) =
            (vec![], vec![], vec![], vec![]);
        for run in 0..args.runs {
            // Interleaved, so load changes hit every case alike. A failed boot (printed with its console) is
            // reported and the run goes on; its figures are left out of the medians.
            let report = |case: &str, e: anyhow::Error| {
                println!("  {} run {}: {case} FAILED: {e:#}", fw.label(), run + 1);
            };
            let t = match lbfleet_boot(&prereqs, &files, fw, 1, true, deadline) {
                Ok(t) => Some(t[0]),
                Err(e) => {
                    report("lbfleet", e);
                    None
                }
            };
            let n = match lbfleet_boot(&prereqs, &files, fw, 1, false, deadline) {
                Ok(t) => Some(t[0]),
                Err(e) => {
                    report("lbfleet without RA", e);
                    None
                }
            };
            let d = match dnsmasq_boot(&prereqs, &files, fw, deadline) {
                Ok(t) => Some(t),
                Err(e) => {
                    report("dnsmasq", e);
                    None
                }
            };
            if let Some(t) = t {
                lb_init.push(t.init);
                if let Some(s) = t.serving {
                    lb_serving.push(s);
                }
            }
            if let Some(n) = n {
                nora_init.push(n.init);
            }
            if let Some(d) = d {
                dm_init.push(d.init);
            }
            let secs = |v: Option<f64>| v.map_or("failed".to_owned(), |v| format!("{v:.1} s"));
            println!(
                "  {} run {}: lbfleet /init {}{}, lbfleet without RA /init {}, dnsmasq /init {} (load {})",
                fw.label(),
                run + 1,
                secs(t.map(|t| t.init)),
                t.and_then(|t| t.serving)
                    .map(|s| format!(", serving {s:.1} s"))
                    .unwrap_or_default(),
                secs(n.map(|n| n.init)),
                secs(d.map(|d| d.init)),
                load()
            );
        }
        let dm = median(dm_init);
        let lb_end = if lb_serving.is_empty() {
            ("/init", median(lb_init.clone()))
        } else {
            ("serving", median(lb_serving))
        };
        println!(
            "{}: lbfleet to {} {:.1} s | lbfleet to /init {:.1} s | without RA answer to /init {:.1} s | dnsmasq DHCP+TFTP to /init {:.1} s | ratio lbfleet {} / dnsmasq /init = {:.2} (goal <= 0.6)",
            fw.label(),
            lb_end.0,
            lb_end.1,
            median(lb_init),
            median(nora_init),
            dm,
            lb_end.0,
            lb_end.1 / dm
        );
    }
    if args.storm > 0 {
        let start = Instant::now();
        let t = lbfleet_boot(
            &prereqs,
            &files,
            Firmware::BiosIpxe,
            args.storm,
            true,
            deadline * 2,
        )?;
        let inits: Vec<String> = t.iter().map(|t| format!("{:.1}", t.init)).collect();
        let serving: Vec<String> = t
            .iter()
            .filter_map(|t| t.serving.map(|s| format!("{s:.1}")))
            .collect();
        println!(
            "storm: {} BIOS machines at once: /init at [{}] s{}; all done {:.1} s after start (load {})",
            args.storm,
            inits.join(", "),
            if serving.is_empty() {
                String::new()
            } else {
                format!(", serving at [{}] s", serving.join(", "))
            },
            start.elapsed().as_secs_f64(),
            load()
        );
    }
    Ok(())
}
