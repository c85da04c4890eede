//! `lbfleet-lab`: the virtual site of `make demo` (see `lab::fleet`), built on the test lab library and left
//! running in the background. `up` tears down what an earlier run left (from its state file), builds the site
//! under `var/demo/`, forwards a host port to the dashboard and prints how to use it; `down` removes every
//! process and namespace the state file names; `status` shows them and the nodes. `forward`/`connect` are the
//! host-port forwarder it starts (a host socket cannot be bound from inside the site's namespace). `probe` and
//! `get` are the client's side of the lab's traffic (`lab::traffic` runs them inside a client namespace):
//! requests on a fixed schedule, and one slow streaming response.
//!
//! `up --ha` (`make demo-ha`) builds the same site with two servers on a PostgreSQL cluster of the site's own
//! (`lab::database`), each with a dashboard forwarder; `power-cycle HOST` kills a balancer's QEMU by its PID
//! and starts the same machine again (it PXE-boots from whichever server answers).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lbfleet_tests::lab::fleet::{self, FleetOptions, BALANCERS, CLIENT_ADDRESS, PEER_ADDRESS, VIP};
use lbfleet_tests::lab::state::{ProcessRecord, SiteRecord};
use lbfleet_tests::lab::{self, LabError, ServerOptions, Site, HTTP_PORT, SERVER_ADDRESS};

const SUFFIX: &str = "demo";
const USAGE: &str = "usage: lbfleet-lab up [--var DIR] [--port PORT] [--no-wait] [--ha]
       lbfleet-lab down [--var DIR]
       lbfleet-lab status [--var DIR]
       lbfleet-lab power-cycle HOST [--var DIR]
       lbfleet-lab forward LISTEN_ADDR NETNS TARGET_ADDR
       lbfleet-lab connect TARGET_ADDR
       lbfleet-lab probe ADDR PATH INTERVAL_MS COUNT [TIMEOUT_MS]
       lbfleet-lab get ADDR PATH";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let var = PathBuf::from(flag("--var").unwrap_or_else(|| "var".into()));
    let result = match args.first().map(String::as_str) {
        Some("up") => {
            let port = flag("--port")
                .and_then(|p| p.parse().ok())
                .unwrap_or(8080u16);
            up(
                &var,
                port,
                !args.iter().any(|a| a == "--no-wait"),
                args.iter().any(|a| a == "--ha"),
            )
        }
        Some("power-cycle") if args.len() >= 2 => power_cycle(&var, &args[1]),
        Some("down") => down(&var),
        Some("status") => status(&var),
        Some("forward") if args.len() == 4 => forward(&args[1], &args[2], &args[3]),
        Some("connect") if args.len() == 2 => connect(&args[1]),
        Some("probe") if args.len() == 5 || args.len() == 6 => {
            let timeout = args.get(5).map_or(Ok(1000), |t| t.parse());
            match (args[3].parse(), args[4].parse(), timeout) {
                (Ok(interval), Ok(count), Ok(timeout)) => {
                    probe(&args[1], &args[2], interval, count, timeout)
                }
                _ => Err(LabError::Other(USAGE.into())),
            }
        }
        Some("get") if args.len() == 3 => get(&args[1], &args[2]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbfleet-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn state_path(var: &Path) -> PathBuf {
    var.join("demo.json")
}

fn site_dir(var: &Path) -> PathBuf {
    var.join("demo")
}

/// The namespaces `up` creates, known before it creates any (so a crash half-way is still torn down).
fn planned_namespaces() -> Vec<String> {
    fleet::REAL_SERVERS
        .iter()
        .map(|(name, _, _)| Site::extra_namespace_name(name, SUFFIX))
        .chain([Site::extra_namespace_name("client", SUFFIX)])
        .chain([Site::extra_namespace_name("idhcp", SUFFIX)])
        .chain([Site::extra_namespace_name(
            fleet::PEER_NAMESPACE_ROLE,
            SUFFIX,
        )])
        .chain([Site::namespace_name(SUFFIX)])
        .collect()
}

fn down(var: &Path) -> Result<(), LabError> {
    let path = state_path(var);
    let mut record = SiteRecord::load(&path)?.unwrap_or_default();
    // Names this tool owns, also when a crash came before the state file held them.
    for ns in planned_namespaces() {
        if !record.namespaces.contains(&ns) {
            record.namespaces.push(ns);
        }
    }
    for line in record.teardown(Duration::from_secs(5)) {
        println!("demo-down: {line}");
    }
    // The database of `up --ha` (its postmaster was in the record: stopped above).
    if let Some(dir) = record.notes.get("database_dir") {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => println!("demo-down: removed the database in {dir}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LabError::Io {
                    path: dir.into(),
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::Io { path, source: e }),
    }
}

fn random_password() -> Result<String, LabError> {
    let mut bytes = [0u8; 9];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| LabError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn up(var: &Path, port: u16, wait_serving: bool, ha: bool) -> Result<(), LabError> {
    down(var)?;
    let dir = site_dir(var);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let dir = std::path::absolute(&dir).map_err(|source| LabError::Io {
        path: dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        path: dir.clone(),
        source,
    })?;
    // The planned names first: a crash from here on leaves something `down` can find.
    let state = state_path(var);
    SiteRecord {
        suffix: SUFFIX.into(),
        dir: dir.clone(),
        namespaces: planned_namespaces(),
        ..Default::default()
    }
    .save(&state)?;

    let prereqs = lab::prereqs()?;
    let database = if ha {
        println!(
            "demo: starting PostgreSQL (initdb in {})",
            dir.join("pg").display()
        );
        let db = lab::database::start(&dir.join("pg"))?;
        // Recorded at once: a failure from here on still stops and removes it.
        let mut record = SiteRecord::load(&state)?.unwrap_or_default();
        record
            .pids
            .push(ProcessRecord::new(db.pid, "postgres").with_stop_signal("INT"));
        record
            .notes
            .insert("database_dir".into(), db.dir.display().to_string());
        record.save(&state)?;
        Some(db)
    } else {
        None
    };
    println!("demo: building the balancer image");
    let image = lab::image::balancer_image(&dir.join("images"))?;
    let password = random_password()?;
    let mut site = Site::named(prereqs, SUFFIX, &dir)?;
    let opts = FleetOptions {
        image_dir: image,
        cmdline: String::new(),
        server: ServerOptions {
            admin: ("admin".into(), password.clone()),
            database: database.as_ref().map(|d| d.url.clone()),
            name: ha.then(|| "server-1".to_owned()),
            ..ServerOptions::default()
        },
        discovered_machine: true,
        second_server: ha,
    };
    if ha {
        println!("demo: starting two lbfleet-servers, real servers, client and three machines");
    } else {
        println!("demo: starting lbfleet-server, real servers, client and three machines");
    }
    let layout = fleet::build(&mut site, &opts)?;
    let token = site.server().token.clone();
    let site_ns = site.ns.name().to_owned();
    let client_ns = site.extra[layout.client].name().to_owned();
    let first_vm_started = site.vms.first().map(|v| v.started());
    let server_pids: Vec<u32> = site
        .server
        .iter()
        .chain(&site.peers)
        .map(|s| s.pid())
        .collect();
    let peer_ns = layout.peer.map(|(ns, _)| site.extra[ns].name().to_owned());
    let mut record = site.detach();
    if let Some(db) = &database {
        record
            .pids
            .push(ProcessRecord::new(db.pid, "postgres").with_stop_signal("INT"));
        record
            .notes
            .insert("database_dir".into(), db.dir.display().to_string());
    }
    record
        .notes
        .insert("server_1".into(), format!("{site_ns} {SERVER_ADDRESS}"));
    if let Some(ns) = &peer_ns {
        record
            .notes
            .insert("server_2".into(), format!("{ns} {PEER_ADDRESS}"));
    }
    record.save(&state)?;

    // The dashboard on the host: the first free port from `port`.
    let (listen, forwarder) = start_forwarder(port, &site_ns, SERVER_ADDRESS, var, "forwarder")?;
    record
        .pids
        .push(ProcessRecord::new(forwarder, "dashboard forwarder"));
    let url = format!("http://{listen}/");
    record.notes.insert("url".into(), url.clone());
    // With two servers, a second forwarder to the second one's dashboard (the first may be killed).
    let mut url2 = None;
    if let Some(ns) = &peer_ns {
        let next = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .map_or(port, |p| p.saturating_add(1));
        let (listen2, forwarder2) = start_forwarder(next, ns, PEER_ADDRESS, var, "forwarder-2")?;
        record
            .pids
            .push(ProcessRecord::new(forwarder2, "dashboard forwarder 2"));
        let u = format!("http://{listen2}/");
        record.notes.insert("url_2".into(), u.clone());
        url2 = Some(u);
    }
    record.notes.insert("token".into(), token.clone());
    record.notes.insert("site_ns".into(), site_ns.clone());
    record.notes.insert("client_ns".into(), client_ns.clone());
    record.save(&state)?;
    let password_file = dir.join("admin-password");
    std::fs::write(&password_file, format!("{password}\n")).map_err(|source| LabError::Io {
        path: password_file.clone(),
        source,
    })?;

    println!();
    println!(
        "lbfleet demo site is up (state: {}, logs: {}/)",
        state.display(),
        dir.display()
    );
    match &url2 {
        Some(u2) => {
            println!("  dashboard:  {url} (server-1, {SERVER_ADDRESS})");
            println!("              {u2} (server-2, {PEER_ADDRESS}; same fleet, same login)");
        }
        None => println!("  dashboard:  {url}"),
    }
    println!("  login:      admin / {password}");
    println!("  server log: {}", dir.join("server.log").display());
    if url2.is_some() {
        println!(
            "              {}",
            dir.join(fleet::PEER_DIR).join("server.log").display()
        );
        if let Some(db) = &database {
            println!(
                "  database:   PostgreSQL in {} (socket only; psql -h {} -U lbfleet lbfleet)",
                db.dir.display(),
                db.dir.display()
            );
        }
    }
    println!(
        "  consoles:   {}/lb-01.console, lb-02.console, unknown-2.console",
        dir.display()
    );
    println!("  the VIP from the client namespace ({CLIENT_ADDRESS}):");
    println!("      ip netns exec {client_ns} curl -s http://{VIP}/");
    println!(
        "  watch a failover: cut the active balancer's (lb-01) link on the boot/external bridge:"
    );
    println!("      ip -n {site_ns} link set tap0 down     # and back: ... tap0 up");
    println!(
        "  the machine with MAC {} is not registered: approve it on the dashboard's nodes page",
        BALANCERS[2].mac
    );
    if url2.is_some() {
        print_ha_help(&record, &server_pids, var);
    }
    println!("  status: make demo-status    stop and remove everything: make demo-down");
    if wait_serving {
        wait_for_serving(&record, first_vm_started);
        if url2.is_some() {
            let active = dhcp_active(&record);
            println!(
                "demo: DHCP and boot answered by {}",
                active
                    .as_deref()
                    .unwrap_or("(neither server says it is active)")
            );
        }
    }
    Ok(())
}

/// What to try on the two-server site: kill a server, power-cycle a balancer, watch it boot from the other.
fn print_ha_help(record: &SiteRecord, server_pids: &[u32], var: &Path) {
    let lab = std::env::current_exe()
        .ok()
        .and_then(|p| std::path::absolute(p).ok())
        .map_or_else(|| "lbfleet-lab".to_owned(), |p| p.display().to_string());
    let var_text = var.display();
    println!("  two servers, one fleet (DHCP hot standby; boot scripts name both):");
    for (i, pid) in server_pids.iter().enumerate() {
        println!(
            "      server-{}  pid {pid:<8} {}",
            i + 1,
            if i == 0 { SERVER_ADDRESS } else { PEER_ADDRESS }
        );
    }
    println!("    1. kill the server that answers DHCP (server-1 unless `make demo-status` says otherwise):");
    println!(
        "      kill -9 {}",
        server_pids.first().copied().unwrap_or_default()
    );
    println!(
        "       the balancers keep serving; their agents move to the other server within seconds."
    );
    println!("    2. power-cycle a balancer (its QEMU is killed by PID and started again):");
    println!("      {lab} power-cycle lb-02 --var {var_text}");
    println!(
        "       it PXE-boots from the survivor: its console ({}/lb-02.console) shows",
        record.dir.display()
    );
    println!(
        "       `lbfleet.server=http://<survivor>:8080,...` on the kernel line; make demo-status shows it serving."
    );
    println!("    3. stop the database and power-cycle it again: it boots from the survivor's boot cache:");
    if let Some(pid) = record
        .pids
        .iter()
        .find(|p| p.what == "postgres")
        .map(|p| p.pid)
    {
        println!("      kill -INT {pid}     # PostgreSQL's fast shutdown (make demo-down removes it all)");
    }
    println!("      {lab} power-cycle lb-02 --var {var_text}");
}

/// The server (name and address) whose `/metrics` says it answers DHCP, if one does.
fn dhcp_active(record: &SiteRecord) -> Option<String> {
    servers(record).into_iter().find_map(|(i, ns, addr)| {
        let text = http_get_in(record, &ns, &addr, "/metrics")?;
        text.lines()
            .any(|l| l.starts_with("lbfleet_dhcp_active") && l.trim_end().ends_with(" 1"))
            .then(|| format!("server-{i} ({addr})"))
    })
}

/// `(number, namespace, address)` of every server the record names (the single server of `make demo`).
fn servers(record: &SiteRecord) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for i in 1..=2 {
        if let Some((ns, addr)) = record
            .notes
            .get(&format!("server_{i}"))
            .and_then(|v| v.split_once(' '))
        {
            out.push((i, ns.to_owned(), addr.to_owned()));
        }
    }
    if out.is_empty() {
        if let Some(ns) = record.notes.get("site_ns") {
            out.push((1, ns.clone(), SERVER_ADDRESS.to_owned()));
        }
    }
    out
}

/// What `/healthz` says of a server whose `/metrics` did not answer (it needs the database for the token).
fn healthz_state(ns: &str, addr: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-m", "5"])
        .arg(format!("http://{addr}:{HTTP_PORT}/healthz"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let body: Option<serde_json::Value> = out
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    match body {
        None => "not answering".to_owned(),
        Some(v) => format!(
            "answering, {}: {}",
            v["status"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("-")
        ),
    }
}

/// Kills the QEMU of balancer `host` by its recorded PID and starts the same machine again (same command
/// line, same taps, same MACs), as pulling the power and plugging it back in; updates the state file.
fn power_cycle(var: &Path, host: &str) -> Result<(), LabError> {
    let path = state_path(var);
    let Some(mut record) = SiteRecord::load(&path)? else {
        return Err(LabError::Other(format!(
            "no demo site ({} is missing); start one with make demo-ha",
            path.display()
        )));
    };
    let ns = record
        .notes
        .get("site_ns")
        .cloned()
        .ok_or_else(|| LabError::Other("the state file names no site namespace".into()))?;
    let Some(index) = record.pids.iter().position(|p| p.what == host) else {
        let machines: Vec<&str> = record
            .pids
            .iter()
            .filter(|p| p.what.starts_with("lb-") || p.what.starts_with("unknown-"))
            .map(|p| p.what.as_str())
            .collect();
        return Err(LabError::Other(format!(
            "no machine {host} in the demo (machines: {})",
            machines.join(", ")
        )));
    };
    let old = record.pids[index].clone();
    if !old.alive() {
        return Err(LabError::Other(format!(
            "{host}'s QEMU (pid {}) is not running",
            old.pid
        )));
    }
    let cmdline_path = PathBuf::from(format!("/proc/{}/cmdline", old.pid));
    let argv: Vec<String> = std::fs::read(&cmdline_path)
        .map_err(|source| LabError::Io {
            path: cmdline_path.clone(),
            source,
        })?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if argv.is_empty() {
        return Err(LabError::Other(format!("{host}: empty command line")));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &old.pid.to_string()])
        .status();
    lab::wait::until(
        &format!("{host}'s QEMU to exit"),
        Duration::from_secs(10),
        || (!old.alive()).then_some(()),
    )?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns])
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group (a Ctrl-C here does not reach it); left running on purpose, init reaps it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().map_err(|source| LabError::Io {
        path: "ip netns exec".into(),
        source,
    })?;
    record.pids[index] = ProcessRecord::new(child.id(), host);
    record.save(&path)?;
    println!(
        "power-cycle: {host} off (QEMU pid {} killed) and on again (pid {}); console: {}/{host}.console",
        old.pid,
        child.id(),
        record.dir.display()
    );
    Ok(())
}

/// Waits (bounded) until both registered balancers report `serving`, printing each change; the site keeps
/// running whatever happens here.
fn wait_for_serving(record: &SiteRecord, started: Option<Instant>) {
    let started = started.unwrap_or_else(Instant::now);
    let limit = lab::wait::scaled(Duration::from_secs(600));
    let mut last = String::new();
    println!(
        "demo: waiting for lb-01 and lb-02 to boot and report serving (TCG: a few minutes)..."
    );
    while started.elapsed() < limit {
        let states: Vec<String> = ["lb-01", "lb-02"]
            .iter()
            .map(|h| {
                format!(
                    "{h}={}",
                    node_state(record, h).unwrap_or_else(|| "?".into())
                )
            })
            .collect();
        let line = states.join(" ");
        if line != last {
            println!("demo: {:>5.1} s  {line}", started.elapsed().as_secs_f64());
            last = line.clone();
        }
        if states.iter().all(|s| s.ends_with("=serving")) {
            println!(
                "demo: both balancers serving {:.1} s after the first machine started",
                started.elapsed().as_secs_f64()
            );
            wait_for_vip(record, started, limit);
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "demo: still not serving; the site keeps running, see `make demo-status` and the consoles"
    );
}

/// Waits (bounded) for the VIP to answer the client, the way the printed `curl` line asks it.
fn wait_for_vip(record: &SiteRecord, started: Instant, limit: Duration) {
    let Some(client_ns) = record.notes.get("client_ns") else {
        return;
    };
    while started.elapsed() < limit {
        let answer = Command::new("ip")
            .args(["netns", "exec", client_ns, "curl", "-fsS", "-m", "2"])
            .arg(format!("http://{VIP}/"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Some(name) = answer {
            println!(
                "demo: the VIP answers ({name}) {:.1} s after the first machine started",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("demo: the VIP does not answer yet; see `make demo-status` and the consoles");
}

/// An API GET as the demo's admin, from the first server that answers.
fn api_get(record: &SiteRecord, path: &str) -> Option<serde_json::Value> {
    servers(record).into_iter().find_map(|(_, ns, addr)| {
        let text = http_get_in(record, &ns, &addr, &format!("/api/v1{path}"))?;
        serde_json::from_str(&text).ok()
    })
}

/// A GET with the admin's token to the server at `addr` in namespace `ns`: the body of a 2xx answer.
fn http_get_in(record: &SiteRecord, ns: &str, addr: &str, path: &str) -> Option<String> {
    let token = record.notes.get("token")?;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-fsS", "-m", "5", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{addr}:{HTTP_PORT}{path}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn node_state(record: &SiteRecord, hostname: &str) -> Option<String> {
    let node = api_get(record, &format!("/nodes/{hostname}"))?;
    node.get("state")?.as_str().map(str::to_owned)
}

fn status(var: &Path) -> Result<(), LabError> {
    let mut out = String::new();
    let Some(record) = SiteRecord::load(&state_path(var))? else {
        let _ = writeln!(out, "demo: not running (no {})", state_path(var).display());
        return print_out(&out);
    };
    for p in &record.pids {
        let _ = writeln!(
            out,
            "{:<22} pid {:>7}  {}",
            p.what,
            p.pid,
            if p.alive() { "running" } else { "gone" }
        );
    }
    for ns in &record.namespaces {
        let here = Path::new("/run/netns").join(ns).exists();
        let _ = writeln!(
            out,
            "namespace {ns:<16} {}",
            if here { "present" } else { "gone" }
        );
    }
    if let Some(url) = record.notes.get("url") {
        let _ = writeln!(out, "dashboard {url}");
    }
    if let Some(url) = record.notes.get("url_2") {
        let _ = writeln!(out, "dashboard {url} (server-2)");
    }
    if record.notes.contains_key("server_2") {
        for (i, ns, addr) in servers(&record) {
            let state = match http_get_in(&record, &ns, &addr, "/metrics") {
                None => healthz_state(&ns, &addr),
                Some(text) => {
                    let active = text.lines().any(|l| {
                        l.starts_with("lbfleet_dhcp_active") && l.trim_end().ends_with(" 1")
                    });
                    format!(
                        "answering{}",
                        if active {
                            ", DHCP active"
                        } else {
                            ", DHCP standby"
                        }
                    )
                }
            };
            let _ = writeln!(out, "server-{i} {addr:<12} {state}");
        }
    }
    match api_get(&record, "/nodes") {
        Some(v) => {
            let list = v
                .get("nodes")
                .and_then(|n| n.as_array())
                .or_else(|| v.as_array())
                .cloned()
                .unwrap_or_default();
            for n in list {
                let _ = writeln!(
                    out,
                    "node {:<8} {:<18} {:<11} cluster={} role={}",
                    n["hostname"].as_str().unwrap_or("-"),
                    n["mac"].as_str().unwrap_or("-"),
                    n["state"].as_str().unwrap_or("-"),
                    n["cluster"].as_str().unwrap_or("-"),
                    n["role"].as_str().unwrap_or("-"),
                );
            }
        }
        None => {
            let _ = writeln!(out, "the API does not answer (is lbfleet-server running?)");
        }
    }
    print_out(&out)
}

/// Writes `text` to stdout; a reader that went away (`lbfleet-lab status | head`) is not an error.
fn print_out(text: &str) -> Result<(), LabError> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(LabError::Io {
            path: "stdout".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Starts `lbfleet-lab forward` on the first free port from `port` on 127.0.0.1; returns the address and PID.
fn start_forwarder(
    port: u16,
    site_ns: &str,
    address: &str,
    var: &Path,
    log_name: &str,
) -> Result<(String, u32), LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        path: "current_exe".into(),
        source,
    })?;
    let target = format!("{address}:{HTTP_PORT}");
    for p in port..port.saturating_add(20) {
        let listen = format!("127.0.0.1:{p}");
        // Probe first: the forwarder itself reports a failed bind only through its exit.
        if TcpListener::bind(&listen).is_err() {
            continue;
        }
        let log_path = var.join("demo").join(format!("{log_name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|source| LabError::Io {
            path: log_path.clone(),
            source,
        })?;
        let mut child = Command::new(&exe)
            .args(["forward", &listen, site_ns, &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Io {
                path: exe.clone(),
                source,
            })?;
        let ready = lab::wait::until("the dashboard forwarder", Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            TcpStream::connect(&listen).ok().map(|_| true)
        })?;
        if ready {
            return Ok((listen, child.id()));
        }
    }
    Err(LabError::Other(format!(
        "no free port in 127.0.0.1:{port}..{}",
        port.saturating_add(20)
    )))
}

/// Accepts on `listen` (host) and relays each connection to `target` inside `netns` through a
/// `lbfleet-lab connect` started there.
fn forward(listen: &str, netns: &str, target: &str) -> Result<(), LabError> {
    let listener = TcpListener::bind(listen).map_err(|source| LabError::Io {
        path: listen.into(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        path: "current_exe".into(),
        source,
    })?;
    for stream in listener.incoming() {
        let Ok(client) = stream else { continue };
        let exe = exe.clone();
        let (netns, target) = (netns.to_owned(), target.to_owned());
        std::thread::spawn(move || {
            let child = Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(&exe)
                .args(["connect", &target])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { return };
            let (Some(mut to_child), Some(mut from_child)) =
                (child.stdin.take(), child.stdout.take())
            else {
                let _ = child.kill();
                let _ = child.wait();
                return;
            };
            let Ok(mut client_read) = client.try_clone() else {
                let _ = child.kill();
                let _ = child.wait();
                return;
            };
            // A client that goes away ends the relay (the server side may keep the connection alive).
            // The child is reaped only after this thread is joined, so its PID is still its own here.
            let pid = child.id().to_string();
            let upstream = std::thread::spawn(move || {
                pump(&mut client_read, &mut to_child);
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            });
            let mut client_write = client;
            pump(&mut from_child, &mut client_write);
            let _ = client_write.shutdown(Shutdown::Both);
            let _ = upstream.join();
            let _ = child.kill();
            let _ = child.wait();
        });
    }
    Ok(())
}

/// Copies until end of input or an error, with plain reads and writes (each chunk is passed on at once).
fn pump(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Relays stdin to a TCP connection to `target` and the connection to stdout (half-closes both ways).
fn connect(target: &str) -> Result<(), LabError> {
    let stream = TcpStream::connect(target).map_err(|source| LabError::Io {
        path: target.into(),
        source,
    })?;
    let mut up = stream.try_clone().map_err(|source| LabError::Io {
        path: target.into(),
        source,
    })?;
    // No half-close when stdin ends: hyper closes a connection whose read side ended, answered or not.
    let writer = std::thread::spawn(move || pump(&mut std::io::stdin(), &mut up));
    let mut down = stream;
    pump(&mut down, &mut std::io::stdout());
    drop(writer);
    Ok(())
}

/// One HTTP/1.0 GET, all of it (connect, send, read to the end) before `deadline`: the body, or why it failed.
fn http_get(
    addr: &str,
    path: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timeout after {} bytes", data.len()));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&data);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header in {} bytes", data.len()))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.trim().to_owned())
}

/// `COUNT` GETs, one every `INTERVAL_MS`, each on its own thread started at its slot (so a request that hangs
/// never delays the next) and failed when not answered within `TIMEOUT_MS`. One line per request as it ends:
/// `<slot ms> ok <latency ms> <body>` or `<slot ms> err <latency ms> <why>` (see `lab::traffic`).
fn probe(
    addr: &str,
    path: &str,
    interval_ms: u64,
    count: u32,
    timeout_ms: u64,
) -> Result<(), LabError> {
    let start = Instant::now();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let mut threads = Vec::new();
    for i in 0..count {
        let due = Duration::from_millis(interval_ms * u64::from(i));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let (addr, path, out) = (addr.to_owned(), path.to_owned(), out.clone());
        threads.push(std::thread::spawn(move || {
            let sent = Instant::now();
            let slot = due.as_millis();
            let result = http_get(&addr, &path, timeout, sent + timeout);
            let latency = sent.elapsed().as_millis();
            let line = match result {
                Ok(body) => format!("{slot} ok {latency} {}", body.replace('\n', " ")),
                Err(e) => format!("{slot} err {latency} {e}"),
            };
            if let Ok(mut o) = out.lock() {
                let _ = writeln!(o, "{line}").and_then(|_| o.flush());
            }
        }));
        // Bounded: finished threads are joined as the run goes, so at most timeout/interval are alive.
        threads.retain(|t| !t.is_finished());
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A streaming GET: each chunk of the body as it arrives, prefixed by ms since start; `done` or `err` last.
fn get(addr: &str, path: &str) -> Result<(), LabError> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|source| LabError::Io {
        path: addr.into(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|source| LabError::Io {
            path: addr.into(),
            source,
        })?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|source| LabError::Io {
            path: addr.into(),
            source,
        })?;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        let at = start.elapsed().as_millis();
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = writeln!(out, "{at} done");
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).replace(['\r', '\n'], " ");
                let _ = writeln!(out, "{at} data {text}");
            }
            Err(e) => {
                let _ = writeln!(out, "{at} err {e}");
                break;
            }
        }
        let _ = out.flush();
    }
    Ok(())
}
