//! `lbfleet-lab`: the virtual site of `make demo` (see `lab::fleet`), built on the test lab library and left
//! running in the background. `up` tears down what an earlier run left (from its state file), builds the site
//! under `var/demo/`, forwards a host port to the dashboard and prints how to use it; `down` removes every
//! process and namespace the state file names; `status` shows them and the nodes. `forward`/`connect` are the
//! host-port forwarder it starts (a host socket cannot be bound from inside the site's namespace). `probe` and
//! `get` are the client's side of the lab's traffic (`lab::traffic` runs them inside a client namespace):
//! requests on a fixed schedule, and one slow streaming response.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lbfleet_tests::lab::fleet::{self, FleetOptions, BALANCERS, CLIENT_ADDRESS, VIP};
use lbfleet_tests::lab::state::{ProcessRecord, SiteRecord};
use lbfleet_tests::lab::{self, LabError, ServerOptions, Site, HTTP_PORT, SERVER_ADDRESS};

const SUFFIX: &str = "demo";
const USAGE: &str = "usage: lbfleet-lab up [--var DIR] [--port PORT] [--no-wait]
       lbfleet-lab down [--var DIR]
       lbfleet-lab status [--var DIR]
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
            up(&var, port, !args.iter().any(|a| a == "--no-wait"))
        }
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

fn up(var: &Path, port: u16, wait_serving: bool) -> Result<(), LabError> {
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
    println!("demo: building the balancer image");
    let image = lab::image::balancer_image(&dir.join("images"))?;
    let password = random_password()?;
    let mut site = Site::named(prereqs, SUFFIX, &dir)?;
    let opts = FleetOptions {
        image_dir: image,
        cmdline: String::new(),
        server: ServerOptions {
            admin: ("admin".into(), password.clone()),
            ..ServerOptions::default()
        },
        discovered_machine: true,
    };
    println!("demo: starting lbfleet-server, real servers, client and three machines");
    let layout = fleet::build(&mut site, &opts)?;
    let token = site.server().token.clone();
    let site_ns = site.ns.name().to_owned();
    let client_ns = site.extra[layout.client].name().to_owned();
    let first_vm_started = site.vms.first().map(|v| v.started());
    let mut record = site.detach();

    // The dashboard on the host: the first free port from `port`.
    let (listen, forwarder) = start_forwarder(port, &site_ns, var)?;
    record
        .pids
        .push(ProcessRecord::new(forwarder, "dashboard forwarder"));
    let url = format!("http://{listen}/");
    record.notes.insert("url".into(), url.clone());
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
    println!("  dashboard:  {url}");
    println!("  login:      admin / {password}");
    println!("  server log: {}", dir.join("server.log").display());
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
    println!("  status: make demo-status    stop and remove everything: make demo-down");
    if wait_serving {
        wait_for_serving(&record, first_vm_started);
    }
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

fn api_get(record: &SiteRecord, path: &str) -> Option<serde_json::Value> {
    let ns = record.notes.get("site_ns")?;
    let token = record.notes.get("token")?;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-fsS", "-m", "5", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{SERVER_ADDRESS}:{HTTP_PORT}/api/v1{path}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
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
fn start_forwarder(port: u16, site_ns: &str, var: &Path) -> Result<(String, u32), LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        path: "current_exe".into(),
        source,
    })?;
    let target = format!("{SERVER_ADDRESS}:{HTTP_PORT}");
    for p in port..port.saturating_add(20) {
        let listen = format!("127.0.0.1:{p}");
        // Probe first: the forwarder itself reports a failed bind only through its exit.
        if TcpListener::bind(&listen).is_err() {
            continue;
        }
        let log_path = var.join("demo").join("forwarder.log");
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
