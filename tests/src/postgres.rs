//! PostgreSQL clusters of the tests' own: `initdb` in a new temporary directory (as the `postgres` user when
//! run as root: PostgreSQL refuses to run as root), `postgres` on a free port of 127.0.0.1 with trust
//! authentication for the superuser `lbfleet`, durability settings off (a test cluster dies with its test).
//!
//! Each cluster has a watchdog: a shell holding the read end of a pipe whose write end only this process holds.
//! When the `Cluster` is dropped or this process exits in any way (a panic, `kill -9`), the pipe closes and the
//! watchdog stops the postmaster by the PID in its own data directory and removes the directory. Nothing is
//! ever stopped by name or pattern.
//!
//! `shared()` is one cluster per test process (each test takes a database of its own with `database`);
//! `Cluster::start()` is a cluster of its own for tests that stop and start PostgreSQL.
//!
//! The component tests run on PostgreSQL when `LBFLEET_TEST_DATABASE=postgres` (see `server::db_url`). Without
//! PostgreSQL's binaries (Debian's `postgresql` package) the test fails, as every privileged prerequisite does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The backend the component tests run on: `LBFLEET_TEST_DATABASE` (`sqlite`, the default, or `postgres`).
pub fn test_backend_is_postgres() -> bool {
    match std::env::var("LBFLEET_TEST_DATABASE").as_deref() {
        Ok("postgres") | Ok("postgresql") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("LBFLEET_TEST_DATABASE={other:?}: expected sqlite or postgres"),
    }
}

/// The directory of PostgreSQL's server binaries (`initdb`, `postgres`, `pg_isready`, `createdb`): the highest
/// version under /usr/lib/postgresql, or `LBFLEET_PG_BINDIR`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("LBFLEET_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install Debian's postgresql package)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        "no /usr/lib/postgresql/*/bin/initdb (install Debian's postgresql package)".into()
    })
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

/// A command run as the cluster's owner: `postgres` when we are root (through `setpriv`, which execs, so the
/// child's PID is the command's), ourselves otherwise.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running (or stopped) test cluster; removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    postmaster: Mutex<Option<Child>>,
    /// Closing it (drop, process exit) makes the watchdog stop the postmaster and remove `dir`.
    _watchdog: ChildStdin,
    databases: Mutex<HashSet<String>>,
}

impl Cluster {
    /// A new cluster of its own. Panics (fails the test) when PostgreSQL is not installed.
    pub fn start() -> Cluster {
        let bin = match bin_dir() {
            Ok(b) => b,
            Err(e) => {
                // A missing database server is a missing prerequisite like any other: fail, also in CI.
                panic!("PostgreSQL test cannot run: {e} (scripts/install-deps.sh installs it)");
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("lbfleet-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let data = dir.join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "chown of {} failed", dir.display());
        }
        let watchdog = Self::watchdog(&dir);
        let out = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "lbfleet",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            port: free_port(),
            dir,
            bin,
            postmaster: Mutex::new(None),
            _watchdog: watchdog,
            databases: Mutex::new(HashSet::new()),
        };
        cluster.resume();
        cluster
    }

    /// The shell that cleans up after this process (see the module docs).
    // The watchdog must outlive this process (it cleans up when the pipe closes at exit), so it is never waited
    // for here; init reaps it.
    #[allow(clippy::zombie_processes)]
    fn watchdog(dir: &Path) -> ChildStdin {
        let script = r#"trap '' INT TERM HUP
cat >/dev/null
pid=$(head -n1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
rm -rf "$1""#;
        let mut child = Command::new("sh")
            .args(["-c", script, "lbfleet-pg-watchdog"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap()
    }

    /// Starts the postmaster (again, after `stop`) on the cluster's port and waits until it accepts connections.
    pub fn resume(&self) {
        let mut guard = self.postmaster.lock().unwrap();
        assert!(guard.is_none(), "the test cluster is already running");
        let log = std::fs::File::create(self.dir.join("postgres.log")).unwrap();
        let child = as_owner(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        *guard = Some(child);
        drop(guard);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(status) = self
                .postmaster
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "postgres exited ({status}) at start: {}",
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not accept connections within 30 s: {}",
                std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the postmaster (fast shutdown: open connections are cut) and waits for it to exit. `resume` starts
    /// it again with the same data.
    pub fn stop(&self) {
        let Some(mut child) = self.postmaster.lock().unwrap().take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// The URL of database `name` (created by `database`).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://lbfleet@127.0.0.1:{}/{name}", self.port)
    }

    /// The URL of database `name` over the cluster's Unix socket: for servers in a network namespace of their
    /// own, which cannot reach 127.0.0.1 of the test's namespace (a socket is a file, seen from every one).
    pub fn socket_url(&self, name: &str) -> String {
        format!(
            "postgres://lbfleet@localhost/{name}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    /// Creates database `name` if this process has not yet, and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let mut made = self.databases.lock().unwrap();
        if !made.contains(name) {
            let out = Command::new(self.bin.join("createdb"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "lbfleet",
                    name,
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "createdb {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            made.insert(name.to_owned());
        }
        self.url(name)
    }

    /// Runs one SQL statement as the superuser on database `name` (tests that inspect or break the database).
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let mut child = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "lbfleet",
                "-d",
                name,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The watchdog removes the directory once its pipe closes (right after this); stop first so the
        // postmaster does not outlive the test by the watchdog's grace period.
        self.stop();
    }
}

/// The cluster shared by every test of this process, started on first use.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(Cluster::start)
}
