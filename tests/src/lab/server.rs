//! lbfleet-server in the site namespace, with `[boot]` on the boot bridge: DHCP, TFTP (undionly.kpxe and
//! ipxe.efi from Debian's `ipxe`) and HTTP boot on 198.18.0.1. The API is reached with curl inside the
//! namespace, with an admin API token made by the server's own CLI before it starts.
//!
//! A site may run a second server (a *peer*, [`LabServer::start_peer`]) in a namespace of its own on the same
//! boot bridge and the same (PostgreSQL) database: the two-server site of `make demo-ha` and the HA site test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{io_err, wait, LabError, LabPrereqs, BOOT_BRIDGE, BOOT_POOL, BOOT_SUBNET, HTTP_PORT};
use super::{SERVER_ADDRESS, SERVER_ADDRESS as ROUTER};
use crate::netns::{run, Netns};

/// How the lab server is started.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--boot-answer-router-solicitations` (on by default, as in production).
    pub answer_router_solicitations: bool,
    /// More `serve` flags.
    pub extra_args: Vec<String>,
    /// The admin user made before the server starts (name, password); its API token is `LabServer::token`.
    pub admin: (String, String),
    /// The database URL; `None`: a SQLite file of its own in the lab directory.
    pub database: Option<String>,
    /// The server's address on the boot network (its HTTP listener, `next-server` and boot URL).
    pub address: String,
    /// The interface its DHCP answers on, in its namespace.
    pub boot_interface: String,
    /// Its name in the control plane's registry (`--server-name`); `None`: the host name.
    pub name: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            answer_router_solicitations: true,
            extra_args: Vec::new(),
            admin: ("lab".into(), "lab-password-not-secret".into()),
            database: None,
            address: SERVER_ADDRESS.into(),
            boot_interface: BOOT_BRIDGE.into(),
            name: None,
        }
    }
}

/// A running lbfleet-server, killed by PID on drop.
#[allow(missing_debug_implementations)] // owns a child process
pub struct LabServer {
    child: Child,
    ns_name: String,
    binary: PathBuf,
    database: String,
    log_path: PathBuf,
    pub boot_dir: PathBuf,
    pub token: String,
    opts: ServerOptions,
}

/// `lbfleet-server serve` in namespace `ns` with `[boot]` on the boot bridge, output to `log_path`.
fn spawn_serve(
    ns: &str,
    binary: &Path,
    database: &str,
    boot_dir: &Path,
    log_path: &Path,
    opts: &ServerOptions,
    append: bool,
) -> Result<Child, LabError> {
    // Its own state (server id; the boot cache defaults to `state/` beside the boot directory): the server's
    // lab directory, which holds the boot directory. Two servers on one database must not share it.
    let state_dir = boot_dir.parent().unwrap_or(boot_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log_path)
        .map_err(io_err(log_path))?;
    let log2 = log.try_clone().map_err(io_err(log_path))?;
    let listen = format!("{}:{HTTP_PORT}", opts.address);
    let boot_dir_text = boot_dir.display().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(binary);
    // The lab's boot network is a bridge in a namespace of its own: plain HTTP there is what the test wants.
    cmd.args(["serve", "--database", database, "--listen", &listen])
        .arg("--allow-insecure-http")
        .args(["--boot-interface", &opts.boot_interface])
        .args(["--boot-server-address", &opts.address])
        .args(["--boot-subnet", BOOT_SUBNET, "--boot-pool", BOOT_POOL])
        .args(["--boot-router", ROUTER, "--boot-dir", &boot_dir_text])
        .args([
            "--boot-answer-router-solicitations",
            if opts.answer_router_solicitations {
                "true"
            } else {
                "false"
            },
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .args(opts.name.iter().flat_map(|n| ["--server-name", n.as_str()]))
        .args(&opts.extra_args)
        .env("RUST_LOG", "info,lbfleet_server=debug")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    cmd.spawn().map_err(io_err(binary))
}

impl LabServer {
    /// Starts the site's first server: its admin user and API token are made through the CLI first (on a
    /// SQLite file of its own in `dir`, or on `opts.database`).
    pub fn start(
        ns: &Netns,
        dir: &Path,
        prereqs: &LabPrereqs,
        opts: ServerOptions,
    ) -> Result<LabServer, LabError> {
        let binary = crate::guest::workspace_binary("lbfleet-server", "lbfleet-server")
            .map_err(|e| LabError::Other(e.to_string()))?;
        let database = opts
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("lbfleet.db").display()));
        // An admin user and API token, made through the CLI (the server is not running yet).
        let mut add = Command::new(&binary)
            .args([
                "user",
                "add",
                &opts.admin.0,
                "--role",
                "admin",
                "--password-stdin",
            ])
            .args(["--database", &database])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(&binary))?;
        if let Some(mut stdin) = add.stdin.take() {
            let _ = stdin.write_all(format!("{}\n", opts.admin.1).as_bytes());
        }
        let out = add.wait_with_output().map_err(io_err(&binary))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("lbfleet-server user add {}", opts.admin.0),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let out = run(Command::new(&binary)
            .args(["token", "create", "--user", &opts.admin.0, "--name", "lab"])
            .args(["--database", &database]))?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        LabServer::spawn(ns, dir, prereqs, opts, binary, database, token)
    }

    /// Starts another server on `first`'s database (which must be one several servers can share, i.e.
    /// PostgreSQL), with its files in `dir` and the same admin token; `opts` give its address, interface and
    /// name.
    pub fn start_peer(
        ns: &Netns,
        dir: &Path,
        prereqs: &LabPrereqs,
        first: &LabServer,
        mut opts: ServerOptions,
    ) -> Result<LabServer, LabError> {
        opts.database = Some(first.database.clone());
        opts.admin = first.opts.admin.clone();
        LabServer::spawn(
            ns,
            dir,
            prereqs,
            opts,
            first.binary.clone(),
            first.database.clone(),
            first.token.clone(),
        )
    }

    fn spawn(
        ns: &Netns,
        dir: &Path,
        prereqs: &LabPrereqs,
        opts: ServerOptions,
        binary: PathBuf,
        database: String,
        token: String,
    ) -> Result<LabServer, LabError> {
        let boot_dir = dir.join("boot");
        std::fs::create_dir_all(boot_dir.join("images")).map_err(io_err(&boot_dir))?;
        for f in ["undionly.kpxe", "ipxe.efi"] {
            let from = prereqs.ipxe_dir.join(f);
            std::fs::copy(&from, boot_dir.join(f)).map_err(io_err(&from))?;
        }
        let log_path = dir.join("server.log");
        let child = spawn_serve(
            ns.name(),
            &binary,
            &database,
            &boot_dir,
            &log_path,
            &opts,
            false,
        )?;
        let server = LabServer {
            child,
            ns_name: ns.name().to_owned(),
            binary,
            database,
            log_path,
            boot_dir,
            token,
            opts,
        };
        server.wait_healthy()?;
        Ok(server)
    }

    fn wait_healthy(&self) -> Result<(), LabError> {
        wait::until("lbfleet-server /healthz", Duration::from_secs(30), || {
            self.get_raw("/healthz")
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .map(|_| ())
        .map_err(|e| LabError::Other(format!("{e}\nserver log:\n{}", self.log())))
    }

    /// Stops the server (SIGTERM, as an operator's restart; SIGKILL after 10 s) and starts it again on the
    /// same database and boot directory; returns once it answers `/healthz`. The log is appended to.
    /// A server already dead (`kill_hard`) is only started.
    pub fn restart(&mut self) -> Result<(), LabError> {
        if self.running() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let stopped = wait::until("lbfleet-server to stop", Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
        });
        if stopped.is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.child = spawn_serve(
            &self.ns_name,
            &self.binary,
            &self.database,
            &self.boot_dir,
            &self.log_path,
            &self.opts,
            true,
        )?;
        self.wait_healthy()
    }

    /// The lab admin's user name (the actor the audit log names for the lab's API calls).
    pub fn admin_name(&self) -> &str {
        &self.opts.admin.0
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn base_url(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.opts.address)
    }

    /// Its address on the boot network.
    pub fn address(&self) -> &str {
        &self.opts.address
    }

    /// `kill -9`: the server dies at once, as in a crash (nothing released, no clean stop in the registry).
    pub fn kill_hard(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A metric of its `/metrics` (the first sample whose line starts with `name`, labels included), or
    /// `None` when the server does not answer or has no such sample.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let auth = format!("Authorization: Bearer {}", self.token);
        let (status, text) = self
            .curl(&["-H", &auth, &format!("{}/metrics", self.base_url())])
            .ok()?;
        if status != 200 {
            return None;
        }
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse().ok())
    }

    /// `lbfleet-server image add DIR --boot-dir <its boot dir>`: copies a built image (with its
    /// `manifest.json`) into this server's boot directory, checked against the manifest, and registers it
    /// with the manifest's digests (which booting from the boot cache needs). On a shared database the second
    /// server's call finds the image registered already and only installs the files.
    pub fn install_image(&self, dir: &Path, cmdline: &str, default: bool) -> Result<(), LabError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["image", "add"])
            .arg(dir)
            .args(["--cmdline", cmdline, "--database", &self.database])
            .arg("--boot-dir")
            .arg(&self.boot_dir);
        if default {
            cmd.arg("--default");
        }
        run(&mut cmd)?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn curl(&self, args: &[&str]) -> Result<(u16, String), LabError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "curl", "-s", "-m", "10"])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(Path::new("curl")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code.trim().parse().unwrap_or(0);
        if status == 0 {
            return Err(LabError::Command {
                command: format!("curl {args:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok((status, body.to_owned()))
    }

    /// GET without credentials (boot scripts, health).
    pub fn get_raw(&self, path: &str) -> Result<(u16, String), LabError> {
        self.curl(&[&format!("{}{path}", self.base_url())])
    }

    /// A dashboard page as a person sees it: logs in through `/login` as the lab admin (the form's CSRF
    /// token from its cookie and hidden field, then user name and password), then GETs `path` with the
    /// session cookie. `(status, HTML)`; a refused login is an error naming the answer.
    pub fn dashboard_page(&self, path: &str) -> Result<(u16, String), LabError> {
        let jar = self
            .log_path
            .with_extension(format!("cookies.{}", std::process::id()));
        let jar_s = jar.to_string_lossy().into_owned();
        let base = self.base_url();
        let result = (|| {
            let (_, form) = self.curl(&["-c", &jar_s, &format!("{base}/login")])?;
            let csrf = form
                .split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .ok_or_else(|| LabError::Other("no csrf field on /login".into()))?
                .to_owned();
            let (status, body) = self.curl(&[
                "-b",
                &jar_s,
                "-c",
                &jar_s,
                "--data-urlencode",
                &format!("csrf={csrf}"),
                "--data-urlencode",
                &format!("username={}", self.opts.admin.0),
                "--data-urlencode",
                &format!("password={}", self.opts.admin.1),
                &format!("{base}/login"),
            ])?;
            // A good login redirects (303) and sets the session cookie; a refused one shows the form again.
            if !(300..400).contains(&status) {
                return Err(LabError::Other(format!(
                    "dashboard login answered {status}: {body}"
                )));
            }
            self.curl(&["-b", &jar_s, &format!("{base}{path}")])
        })();
        let _ = std::fs::remove_file(&jar);
        result
    }

    /// An API call as the lab admin: `(status, JSON body or Null)`.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), LabError> {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{}/api/v1{path}", self.base_url());
        let data = body.map(|b| b.to_string());
        let mut args = vec![
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
        ];
        if let Some(d) = &data {
            args.extend(["--data-binary", d]);
        }
        args.push(&url);
        let (status, text) = self.curl(&args)?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }

    /// Like `api`, but a status outside 2xx is an error naming the body.
    pub fn api_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, LabError> {
        let (status, json) = self.api(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            Err(LabError::Other(format!(
                "{method} {path} answered {status}: {json}"
            )))
        }
    }

    /// Places `kernel` and `initrd` in `boot_dir/images/<name>/` and registers the image through the API.
    pub fn add_image(
        &self,
        name: &str,
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
        default: bool,
    ) -> Result<(), LabError> {
        let dir = self.boot_dir.join("images").join(name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        std::fs::copy(kernel, dir.join("vmlinuz")).map_err(io_err(kernel))?;
        std::fs::copy(initrd, dir.join("initrd.img")).map_err(io_err(initrd))?;
        self.api_ok(
            "PUT",
            &format!("/images/{name}"),
            Some(&serde_json::json!({
                "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline, "default": default
            })),
        )
        .map(|_| ())
    }

    /// Registers a built image directory (`vmlinuz`, `initrd.img`, as `lbfleet-images` writes them) under its
    /// directory name.
    pub fn add_image_dir(
        &self,
        dir: &Path,
        cmdline: &str,
        default: bool,
    ) -> Result<String, LabError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| LabError::Other(format!("{} has no name", dir.display())))?;
        self.add_image(
            &name,
            &dir.join("vmlinuz"),
            &dir.join("initrd.img"),
            cmdline,
            default,
        )?;
        Ok(name)
    }

    /// `GET /api/v1/nodes/{name}` (with its last report), or `None` when it does not answer 2xx.
    pub fn node(&self, name: &str) -> Option<serde_json::Value> {
        self.api_ok("GET", &format!("/nodes/{name}"), None).ok()
    }

    /// The node record with `mac`, if the server knows one.
    pub fn node_by_mac(&self, mac: &str) -> Result<Option<serde_json::Value>, LabError> {
        let nodes = self.api_ok("GET", "/nodes", None)?;
        let list = nodes
            .get("nodes")
            .and_then(|n| n.as_array())
            .cloned()
            .or_else(|| nodes.as_array().cloned())
            .unwrap_or_default();
        Ok(list.into_iter().find(|n| {
            n.get("mac")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.eq_ignore_ascii_case(mac))
        }))
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
