//! DHCP hot standby (`boot::dhcp::leader`): two `lbfleet-server serve` processes on one database and one boot
//! segment (a bridge in a namespace of its own, joined by veth pairs to `s1`, `s2` and the client `c`). Only
//! one answers; `kill -9` of it during a bounded perfdhcp storm hands the segment to the other within a few
//! seconds (the takeover time is measured and printed: from the kill to the first lease the survivor gives a
//! NEW client), and no address is ever acknowledged to two MACs or lost.
//!
//! Clients are relayed (perfdhcp at 198.18.0.2 and lbfleet-dhcp-probe at 198.18.0.4 as relay agents, forwarding to the
//! segment's broadcast address, as a relay with both servers as helpers would), so relayed requests are the
//! path under test. Needs root, iproute2, curl and perfdhcp: a missing one fails the test
//! (`lbfleet_tests::netns::require`). The takeover runs on PostgreSQL (the configuration several servers are
//! for; a cluster the test starts, reached over its Unix socket from the servers' namespaces); the test of a
//! locked database on a SQLite file both servers share. `LBFLEET_TEST_DATABASE_URL` overrides the takeover's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lbfleet_tests::netns::{self, Netns};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_lbfleet-server");
const PROBE_BIN: &str = env!("CARGO_BIN_EXE_lbfleet-dhcp-probe");
const POLL: Duration = Duration::from_millis(50);

/// One server: its namespace, address, process and log.
struct Server {
    process: Option<Child>,
    ns: Netns,
    address: &'static str,
    log: std::path::PathBuf,
}

impl Server {
    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Field order is drop order: servers killed, then namespaces deleted, then the directory.
struct Lab {
    servers: Vec<Server>,
    token: String,
    c: Netns,
    p: Netns,
    _segment: Netns,
    db_url: String,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
    }
}

/// Which database the lab's servers share.
enum Backend {
    Postgres,
    Sqlite,
}

impl Lab {
    fn new(backend: Backend) -> Option<Lab> {
        if !netns::require(&["curl", "perfdhcp"]) {
            return None;
        }
        let segment = Netns::unique("lbhw").unwrap();
        segment
            .ip(&["link", "add", "br0", "type", "bridge"])
            .unwrap();
        segment.link_up("br0").unwrap();
        let join = |ns: &Netns, port: &str| {
            netns::veth(ns, "eth0", &segment, port).unwrap();
            segment.ip(&["link", "set", port, "master", "br0"]).unwrap();
            segment.link_up(port).unwrap();
            ns.link_up("eth0").unwrap();
        };
        let c = Netns::unique("lbhc").unwrap();
        join(&c, "pc");
        c.addr_add("198.18.0.2/16", "eth0").unwrap();
        // The probe is a relay of its own (port 67 is perfdhcp's in `c`).
        let p = Netns::unique("lbhp").unwrap();
        join(&p, "pp");
        p.addr_add("198.18.0.4/16", "eth0").unwrap();
        for ns in [&c, &p] {
            // A route for the limited broadcast the relays forward to.
            ns.default_route("198.18.0.254").unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let db_url = match backend {
            Backend::Postgres => std::env::var("LBFLEET_TEST_DATABASE_URL").unwrap_or_else(|_| {
                let cluster = lbfleet_tests::postgres::shared();
                let name = format!("dhcp_ha_{}", std::process::id());
                cluster.database(&name);
                cluster.socket_url(&name)
            }),
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("ha.db").display()),
        };
        let mut servers = Vec::new();
        for (i, address) in ["198.18.0.1", "198.18.0.3"].into_iter().enumerate() {
            let ns = Netns::unique(&format!("lbh{}", i + 1)).unwrap();
            join(&ns, &format!("p{}", i + 1));
            ns.addr_add(&format!("{address}/16"), "eth0").unwrap();
            servers.push(Server {
                process: None,
                ns,
                address,
                log: dir.path().join(format!("server{}.log", i + 1)),
            });
        }
        // An API token for /metrics (created before either server starts; both read the same database).
        let mut add = Command::new(SERVER_BIN);
        add.args([
            "user",
            "add",
            "tester",
            "--role",
            "admin",
            "--password-stdin",
            "--database",
            &db_url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        let mut child = add.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"tester-password-1\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        let out = netns::run(Command::new(SERVER_BIN).args([
            "token",
            "create",
            "--user",
            "tester",
            "--database",
            &db_url,
        ]))
        .unwrap();
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(Lab {
            servers,
            token,
            c,
            p,
            _segment: segment,
            db_url,
            dir,
        })
    }

    /// Starts server `i` and waits for its /healthz.
    fn start(&mut self, i: usize) {
        let boot_dir = self.dir.path().join(format!("boot{i}"));
        std::fs::create_dir_all(&boot_dir).unwrap();
        let s = &mut self.servers[i];
        let log = std::fs::File::create(&s.log).unwrap();
        let child =
            s.ns.command(SERVER_BIN)
                .args([
                    "serve",
                    "--database",
                    &self.db_url,
                    "--listen",
                    "127.0.0.1:18080",
                    "--boot-interface",
                    "eth0",
                    "--boot-server-address",
                    s.address,
                    "--boot-subnet",
                    "198.18.0.0/16",
                    "--boot-pool",
                    "198.18.1.0-198.18.255.254",
                    "--boot-lease-time",
                    "10m",
                    "--boot-tftp-port",
                    "0",
                    "--boot-max-discovered",
                    "30000",
                    "--boot-dir",
                ])
                .arg(&boot_dir)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
        s.process = Some(child);
        let up = lbfleet_tests::wait::until(
            "the server's /healthz",
            Duration::from_secs(30),
            POLL,
            || {
                self.curl(i, "/healthz")
                    .map(|_| ())
                    .filter(|_| self.servers[i].process.is_some())
            },
        );
        if let Err(e) = up {
            panic!("server {i} did not start ({e}): {}", self.servers[i].log());
        }
    }

    fn curl(&self, i: usize, path: &str) -> Option<String> {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("http://127.0.0.1:18080{path}");
        let out = self.servers[i]
            .ns
            .command("curl")
            .args(["-fsS", "-H", &auth, &url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A sample from server `i`'s /metrics whose line starts with `name` (0 if absent).
    fn metric(&self, i: usize, name: &str) -> u64 {
        self.curl(i, "/metrics")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// (address, mac, state) of every unexpired bound or declined lease, read from the shared database.
    fn leases(&self) -> Vec<(String, String, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = lbfleet_server::store::Store::open(&self.db_url)
                .await
                .unwrap();
            let mut conn = store.read().await.unwrap();
            let rows = lbfleet_server::store::leases::active(&mut conn, 0)
                .await
                .unwrap();
            drop(conn);
            store.close().await;
            rows.into_iter()
                .map(|r| (r.address, r.mac, r.state))
                .collect()
        })
    }

    /// Starts lbfleet-dhcp-probe in the client namespace as a relay forwarding to every server; its ACK lines
    /// are collected with the instant each arrived.
    fn probe(&self, first: u32, count: u32, rate: u32) -> Probe {
        let mut child = self
            .p
            .command(PROBE_BIN)
            .args([
                "--server",
                "255.255.255.255:67",
                "--giaddr",
                "198.18.0.4",
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
                "--rate",
                &rate.to_string(),
                "--timeout-ms",
                "1500",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let sink = acks.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut p = line.split(' ');
                if p.next() == Some("ACK") {
                    if let (Some(mac), Some(ip)) = (p.next(), p.next()) {
                        sink.lock()
                            .unwrap()
                            .push((Instant::now(), mac.to_owned(), ip.to_owned()));
                    }
                }
            }
        });
        Probe {
            child,
            reader: Some(reader),
            acks,
        }
    }
}

struct Probe {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
    acks: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

impl Probe {
    fn acks(&self) -> Vec<(Instant, String, String)> {
        self.acks.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<(Instant, String, String)> {
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.acks()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every (mac, address) in `acks` is unique both ways: no address acknowledged to two MACs.
fn assert_no_address_twice(acks: &[(Instant, String, String)]) {
    let mut by_ip: HashMap<&str, &str> = HashMap::new();
    for (_, mac, ip) in acks {
        if let Some(other) = by_ip.insert(ip, mac) {
            assert_eq!(other, mac, "{ip} acknowledged to {other} and to {mac}");
        }
    }
}

#[test]
fn only_the_active_answers_and_the_standby_takes_over_after_kill_9_without_a_collision() {
    let Some(mut lab) = Lab::new(Backend::Postgres) else {
        return;
    };
    lab.start(0);
    lbfleet_tests::wait::wait_for("server 1 active", Duration::from_secs(10), POLL, || {
        lab.metric(0, "lbfleet_dhcp_active{") == 1
    });
    lab.start(1);
    // Server 2 follows the row server 1 renews: standby, and stays so.
    lbfleet_tests::wait::wait_for(
        "server 2's election running",
        Duration::from_secs(10),
        POLL,
        || {
            lab.curl(1, "/metrics")
                .is_some_and(|m| m.contains("lbfleet_dhcp_active{"))
        },
    );

    // Only one answers: 40 new clients, all acknowledged by server 1; server 2 saw them and kept quiet.
    let before = lab.probe(1, 40, 100).finish();
    assert_eq!(before.len(), 40, "every client got a lease");
    assert_eq!(lab.metric(1, "lbfleet_dhcp_active{"), 0);
    assert_eq!(
        lab.metric(1, "lbfleet_dhcp_packets_total{outcome=\"replied\"}"),
        0
    );
    assert!(lab.metric(1, "lbfleet_dhcp_standby_packets_total{network=\"198.18.0.0/16\",outcome=\"ignored_as_standby\"}") >= 40);
    assert!(lab.metric(0, "lbfleet_dhcp_packets_total{outcome=\"acked\"}") >= 40);

    // A storm of random MACs, bounded in count and time, relayed to both servers.
    let storm = lab
        .c
        .command("timeout")
        .args([
            "30", "perfdhcp", "-4", "-l", "eth0", "-r", "300", "-R", "20000", "-n", "4500", "-p",
            "15", "all",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // New clients every 20 ms, through the kill.
    let during = lab.probe(1000, 400, 50);
    lbfleet_tests::wait::wait_for(
        "leases acknowledged during the storm",
        Duration::from_secs(10),
        POLL,
        || during.acks().len() >= 20,
    );
    lab.servers[0].kill();
    let killed = Instant::now();
    let first_new = lbfleet_tests::wait::until(
        "a lease from the survivor for a new client",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            during
                .acks()
                .iter()
                .find(|(at, _, _)| *at > killed)
                .map(|(at, _, _)| *at)
        },
    );
    let first_new = match first_new {
        Ok(t) => t,
        Err(e) => panic!("{e}\nserver 2's log:\n{}", lab.servers[1].log()),
    };
    let takeover = first_new - killed;
    println!(
        "takeover: {} ms from kill -9 of the active to the survivor's first lease for a new client",
        takeover.as_millis()
    );
    assert!(takeover < Duration::from_secs(5), "took {takeover:?}");
    assert_eq!(lab.metric(1, "lbfleet_dhcp_active{"), 1);
    assert!(lab.metric(1, "lbfleet_dhcp_takeovers_total{") >= 1);

    let during = during.finish();
    let storm = storm.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&storm.stdout).contains("sent packets"),
        "perfdhcp did not run: {}",
        String::from_utf8_lossy(&storm.stderr)
    );
    let after_kill = during.iter().filter(|(at, _, _)| *at > killed).count();
    assert!(
        after_kill >= 10,
        "the survivor answered only {after_kill} probe clients"
    );

    // No address acknowledged to two MACs, and every acknowledged lease is in the database with its MAC:
    // the survivor neither handed out nor overwrote an address the dead server had acknowledged.
    let all: Vec<_> = before.iter().chain(during.iter()).cloned().collect();
    assert_no_address_twice(&all);
    let leases: HashMap<String, (String, String)> = lab
        .leases()
        .into_iter()
        .map(|(ip, mac, state)| (ip, (mac, state)))
        .collect();
    for (_, mac, ip) in &all {
        assert_eq!(
            leases.get(ip),
            Some(&(mac.clone(), "bound".to_owned())),
            "ACKed {mac} {ip} is not bound to it in the database"
        );
    }
    // Clients of the dead server renew with the survivor and keep their addresses.
    let again = lab.probe(1, 40, 100).finish();
    assert_eq!(again.len(), 40);
    for (_, mac, ip) in &again {
        let (_, _, was) = before.iter().find(|(_, m, _)| m == mac).unwrap();
        assert_eq!(
            ip, was,
            "{mac} moved from {was} to {ip} across the takeover"
        );
    }
}

/// Holds the SQLite database's write lock from the test (as a stuck or unreachable database looks to the
/// servers: every election write times out), until dropped.
struct DatabaseLock {
    rt: tokio::runtime::Runtime,
    conn: Option<sqlx::SqliteConnection>,
}

impl DatabaseLock {
    fn take(url: &str) -> DatabaseLock {
        use sqlx::Connection;
        assert!(
            url.starts_with("sqlite:"),
            "this test makes the database unreachable by holding SQLite's write lock; {url} needs its own way"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(async {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut c)
                .await
                .unwrap();
            c
        });
        DatabaseLock {
            rt,
            conn: Some(conn),
        }
    }
}

impl Drop for DatabaseLock {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            self.rt.block_on(async {
                let _ = sqlx::query("ROLLBACK").execute(&mut c).await;
            });
        }
    }
}

#[test]
fn without_the_database_every_server_answers_only_the_macs_it_knows() {
    // The lock below is SQLite's.
    let Some(mut lab) = Lab::new(Backend::Sqlite) else {
        return;
    };
    lab.start(0);
    lbfleet_tests::wait::wait_for("server 1 active", Duration::from_secs(10), POLL, || {
        lab.metric(0, "lbfleet_dhcp_active{") == 1
    });
    lab.start(1);
    let known = lab.probe(1, 10, 100).finish();
    assert_eq!(known.len(), 10);
    // Server 2, standby, reloads its table from the database every 2 s: wait for a reload after the leases.
    let reloads = lab.metric(1, "lbfleet_dhcp_table_reloads_total{");
    lbfleet_tests::wait::wait_for(
        "server 2 reloaded its lease table",
        Duration::from_secs(10),
        POLL,
        || lab.metric(1, "lbfleet_dhcp_table_reloads_total{") > reloads,
    );

    let lock = DatabaseLock::take(&lab.db_url);
    for i in 0..2 {
        lbfleet_tests::wait::wait_for(
            &format!("server {} sees the database unreachable", i + 1),
            Duration::from_secs(15),
            POLL,
            || lab.metric(i, "lbfleet_dhcp_database_unreachable{") == 1,
        );
        assert_eq!(lab.metric(i, "lbfleet_dhcp_active{"), 0);
        assert!(lab.servers[i].log().contains("the database is unreachable"));
    }
    // Known MACs get their known address; new MACs get nothing, from either server.
    let again = lab.probe(1, 10, 100).finish();
    assert_eq!(again.len(), 10, "every known MAC answered");
    for (_, mac, ip) in &again {
        let (_, _, was) = known.iter().find(|(_, m, _)| m == mac).unwrap();
        assert_eq!(ip, was, "{mac} got another address without the database");
    }
    let strangers = lab.probe(5000, 10, 100).finish();
    assert!(
        strangers.is_empty(),
        "pool addresses handed out without the database: {strangers:?}"
    );
    let answered = |i| {
        lab.metric(
            i,
            "lbfleet_dhcp_standby_packets_total{network=\"198.18.0.0/16\",outcome=\"answered_without_database\"}",
        )
    };
    let refused = |i| {
        lab.metric(
            i,
            "lbfleet_dhcp_standby_packets_total{network=\"198.18.0.0/16\",outcome=\"refused_without_database\"}",
        )
    };
    // Both servers answered known MACs (each client takes the first OFFER); both refused the strangers.
    assert!(
        answered(0) >= 1 && answered(1) >= 1,
        "{} {}",
        answered(0),
        answered(1)
    );
    assert!(
        refused(0) >= 10 && refused(1) >= 10,
        "{} {}",
        refused(0),
        refused(1)
    );

    // The database is back: one server is elected again and new MACs get leases.
    drop(lock);
    lbfleet_tests::wait::wait_for(
        "one server active again",
        Duration::from_secs(15),
        POLL,
        || lab.metric(0, "lbfleet_dhcp_active{") + lab.metric(1, "lbfleet_dhcp_active{") == 1,
    );
    let after = lab.probe(6000, 5, 100).finish();
    assert_eq!(after.len(), 5);
    let all: Vec<_> = known.iter().chain(after.iter()).cloned().collect();
    assert_no_address_twice(&all);
}
