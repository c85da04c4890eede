//! Issue 24, item 4, on real agents: two `lbfleet-agent run` processes (server mode, VRRP v3 at 100 ms on the
//! host kernel) in the VRRP lab's namespaces (`vrrp_lab`), talking to lbfleet-server in a third namespace. VRRP
//! runs on the lab's `eth0` network, the agents reach the server over the second (`int0`) network, so the
//! two can fail apart. The server runs in this process: its agent listener is bound inside its namespace, its
//! API listener on this process's loopback (`lbfleet_server::run_listeners`). In order:
//! 1. lb-01's VRRP port leaves the switch's bridge (its link stays up, so its agent sees no fault), its link to
//!    the server stays: both balancers are master and both keep reporting, a real split brain, alerted within
//!    seconds;
//! 2. the port is back: lb-02 yields to lb-01 again, nothing needs attention;
//! 3. both of lb-01's links are cut: within 5 s the alerts and the overview say lb-02 took over (the reason its
//!    agent gave) and lb-01 is unreachable, and no look at the alerts in between finds a split brain.
//!
//! Needs root and iproute2 (`vrrp_lab::require`); fails without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lbfleet_server::config::ServerConfig;
use lbfleet_tests::server::{db_url, seed, Tokens, PASSWORD};
use lbfleet_tests::vrrp_lab::{self, agent_bin, Lab, A, B};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The server's namespace's address on the VRRP network, and its agent port (on every address of the
/// namespace; agents use the `int0` one).
const SRV: &str = "198.18.0.5";
const PORT: u16 = 8080;
/// Two agents enrolling, taking their role and settling VRRP on a busy two-core host.
const SETTLE: Duration = Duration::from_secs(60);

/// The in-process server and a client for its API.
struct Server {
    rt: Runtime,
    base: String,
    http: reqwest::Client,
    tokens: Tokens,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start(lab: &Lab, ns: &str) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Bound inside the lab namespace: the socket stays there whichever thread uses it.
        let agents = lab
            .netns(ns)
            .run_inside(|| std::net::TcpListener::bind(("0.0.0.0", PORT)))
            .unwrap()
            .unwrap();
        agents.set_nonblocking(true).unwrap();
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        api.set_nonblocking(true).unwrap();
        let base = format!("http://{}", api.local_addr().unwrap());
        let db = lab.path("fleet.db");
        let tokens = rt.block_on(seed(&db));
        let mut config = ServerConfig::with_database(db_url(&db));
        config.state_dir = lab.path("server");
        std::fs::create_dir_all(&config.state_dir).unwrap();
        config.boot_listen = Some((SRV.parse::<std::net::IpAddr>().unwrap(), PORT).into());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = rt.spawn(async move {
            let listeners = lbfleet_server::Listeners {
                main: tokio::net::TcpListener::from_std(api).unwrap(),
                boot: Some(tokio::net::TcpListener::from_std(agents).unwrap()),
            };
            lbfleet_server::run_listeners(config, listeners, Default::default(), async move {
                let _ = rx.await;
            })
            .await
        });
        Server {
            rt,
            base,
            http: reqwest::Client::new(),
            tokens,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method, format!("{}/api/v1{path}", self.base))
                .bearer_auth(&self.tokens.admin);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body);
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    fn alerts(&self) -> Vec<Value> {
        self.ok(reqwest::Method::GET, "/alerts", None)["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn node(&self, name: &str) -> Value {
        self.ok(reqwest::Method::GET, &format!("/nodes/{name}"), None)
    }

    /// The overview page as the admin sees it.
    fn overview(&self) -> String {
        self.rt.block_on(async {
            let resp = self
                .http
                .post(format!("{}/api/v1/login", self.base))
                .json(&json!({"username": "admin", "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let cookie = resp.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            self.http
                .get(format!("{}/", self.base))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h);
        }
    }
}

fn kinds(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Registers `name` with `mac`, puts it in cluster `ext` as `role` and starts its agent in `ns`.
fn start_balancer(
    lab: &mut Lab,
    srv: &Server,
    server_url: &str,
    ns: &str,
    name: &str,
    mac: &str,
    role: &str,
) {
    use reqwest::Method;
    srv.ok(
        Method::POST,
        "/nodes",
        Some(json!({"mac": mac, "hostname": name})),
    );
    let token = srv.ok(
        Method::POST,
        &format!("/nodes/{name}/enrollment-token"),
        Some(json!({})),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    srv.ok(
        Method::POST,
        &format!("/nodes/{name}/assign"),
        Some(json!({"cluster": "ext", "role": role})),
    );
    let cmdline = lab.path(&format!("{name}.cmdline"));
    std::fs::write(&cmdline, "").unwrap();
    let state = lab.path(&format!("{name}.state"));
    let args = [
        "run",
        "--server",
        server_url,
        "--token",
        &token,
        "--mac",
        mac,
        "--state-dir",
        state.to_str().unwrap(),
        "--resync",
        "1s",
        "--cmdline",
        cmdline.to_str().unwrap(),
    ];
    lab.spawn(ns, name, &agent_bin(), &args);
}

/// Takes a switch port out of its bridge (the link stays up, frames go nowhere) or puts it back.
fn bridged(lab: &Lab, port: &str, bridge: &str, on: bool) {
    let master = if on {
        vec!["master", bridge]
    } else {
        vec!["nomaster"]
    };
    let mut args = vec!["-n", lab.switch.as_str(), "link", "set", port];
    args.extend(master);
    vrrp_lab::ip(&args);
}

/// Sets a switch port (`p<n>`: the VRRP network, `i<n>`: the server's) down or up.
fn link(lab: &Lab, port: &str, up: bool) {
    vrrp_lab::ip(&[
        "-n",
        &lab.switch,
        "link",
        "set",
        port,
        if up { "up" } else { "down" },
    ]);
}

/// The first IPv4 address of `dev` in namespace `ns`.
fn address_of(lab: &Lab, ns: &str, dev: &str) -> String {
    let out = lab
        .netns(ns)
        .ip_output(&["-4", "-o", "addr", "show", "dev", dev])
        .unwrap();
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on {dev} in {ns}: {out}"));
    cidr.split('/').next().unwrap().to_owned()
}

fn dump(lab: &Lab) -> String {
    format!(
        "--- lb-01 ---\n{}\n--- lb-02 ---\n{}",
        lab.log("lb-01"),
        lab.log("lb-02")
    )
}

#[test]
fn cutting_the_masters_link_names_the_takeover_and_a_real_split_brain_still_alerts() {
    if !vrrp_lab::require(false) {
        return;
    }
    let mut lab = Lab::new("live");
    let a = lab.host("a", A); // switch ports p1 (eth0, VRRP) and i1 (int0, to the server)
    let b = lab.host("b", B); // p2, i2
    let s = lab.host("srv", SRV); // p3, i3
    let srv = Server::start(&lab, &s);
    let server_url = format!("http://{}:{PORT}", address_of(&lab, &s, "int0"));
    srv.ok(
        reqwest::Method::PUT,
        "/clusters/ext",
        Some(
            json!({"vrid": 51, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": 100,
                    "vips": ["198.18.0.10/24"], "services": []}),
        ),
    );
    start_balancer(
        &mut lab,
        &srv,
        &server_url,
        &a,
        "lb-01",
        "52:54:00:24:04:01",
        "active",
    );
    start_balancer(
        &mut lab,
        &srv,
        &server_url,
        &b,
        "lb-02",
        "52:54:00:24:04:02",
        "backup",
    );

    let settled = |srv: &Server| {
        let (n1, n2) = (srv.node("lb-01"), srv.node("lb-02"));
        n1["vrrp_state"] == "master"
            && n2["vrrp_state"] == "backup"
            && n1["reporting"] == true
            && n2["reporting"] == true
            && srv.alerts().is_empty()
    };
    let r = lbfleet_tests::wait::until(
        "lb-01 master, lb-02 backup, no alerts",
        SETTLE,
        Duration::from_millis(200),
        || settled(&srv).then_some(()),
    );
    assert!(
        r.is_ok(),
        "{r:?}\nalerts: {:?}\n{}",
        srv.alerts(),
        dump(&lab)
    );

    // 1. A real split brain: VRRP cut between them, both links up, both still reporting.
    bridged(&lab, "p1", "br0", false);
    let blocked = Instant::now();
    let split = lbfleet_tests::wait::until(
        "a split-brain alert",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            srv.alerts()
                .into_iter()
                .find(|a| a["kind"] == "split_brain")
        },
    );
    let split = split.unwrap_or_else(|e| panic!("{e}\nalerts: {:?}\n{}", srv.alerts(), dump(&lab)));
    println!(
        "split brain alerted {} ms after VRRP was cut",
        blocked.elapsed().as_millis()
    );
    assert_eq!(split["message"], "cluster ext has 2 masters: lb-01, lb-02");
    assert_eq!(split["level"], "crit");

    // 2. VRRP passes again: lb-02 yields to the higher priority, nothing needs attention.
    bridged(&lab, "p1", "br0", true);
    let r = lbfleet_tests::wait::until(
        "the pair settled again",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || settled(&srv).then_some(()),
    );
    assert!(
        r.is_ok(),
        "{r:?}\nalerts: {:?}\n{}",
        srv.alerts(),
        dump(&lab)
    );

    // 3. Both of lb-01's links are cut at the switch (the server's first: its agent could report the VRRP
    // link's fault otherwise; the wording is the same either way).
    link(&lab, "i1", false);
    link(&lab, "p1", false);
    let cut = Instant::now();
    let mut seen: Vec<Vec<String>> = Vec::new();
    let named = loop {
        let got = srv.alerts();
        let k = kinds(&got);
        assert!(
            !k.iter().any(|k| k == "split_brain"),
            "a split brain {} ms after the cut: {got:?}\n{}",
            cut.elapsed().as_millis(),
            dump(&lab)
        );
        if seen.last() != Some(&k) {
            seen.push(k);
        }
        let takeover = got.iter().find(|a| {
            a["kind"] == "takeover"
                && a["message"].as_str().is_some_and(|m| {
                    m.starts_with("lb-02 took over: master down timer expired; lb-01 unreachable")
                })
        });
        if let Some(t) = takeover {
            break t.clone();
        }
        assert!(
            cut.elapsed() <= Duration::from_secs(5),
            "5 s after the cut the alerts do not name the takeover; alerts over time: {seen:?}, now: {got:?}\n{}",
            dump(&lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = cut.elapsed();
    println!(
        "{} ms after the cut: {} (alert kinds over time: {seen:?})",
        took.as_millis(),
        named["message"]
    );
    assert_eq!(named["level"], "warn");
    assert_eq!(srv.node("lb-01")["reporting"], false);
    assert_eq!(srv.node("lb-02")["reporting"], true);
    assert_eq!(srv.node("lb-02")["vrrp_state"], "master");
    let page = srv.overview();
    assert!(
        page.contains("lb-02 took over: master down timer expired; lb-01 unreachable"),
        "{page}"
    );
    assert!(page.contains(">unreachable</span>"), "{page}");
    assert!(!page.contains("Split brain"), "{page}");
}
