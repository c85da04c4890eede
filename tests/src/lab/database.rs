//! The PostgreSQL cluster of `make demo-ha`: a cluster of the site's own that outlives the process that made
//! it (unlike the tests' `crate::postgres::Cluster`, which dies with its test). `initdb` as the `postgres`
//! user in `<site dir>/pg/` (in a directory under /tmp when that user cannot reach the site's directory, or
//! its path is too long for a Unix socket), the postmaster listening on its Unix socket only (no TCP port, so
//! it collides with nothing on the host: servers in the site's namespaces reach a socket as a file), trust
//! authentication for the superuser `lbfleet`. Its PID goes into the site's state file; `lbfleet-lab down`
//! stops it (fast shutdown) and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, LabError};
use crate::postgres::{as_owner, bin_dir, is_root};

/// The socket's "port" (it only names the socket file: `.s.PGSQL.5432` in the cluster's directory).
const SOCKET_PORT: u16 = 5432;
/// The database the servers share.
const NAME: &str = "lbfleet";
/// `sun_path` holds 107 bytes; leave room for `/.s.PGSQL.5432` and a lock file's suffix.
const MAX_SOCKET_DIR: usize = 80;

/// A running cluster, left running when this value goes away.
#[derive(Debug, Clone)]
pub struct LabDatabase {
    /// The postmaster's PID.
    pub pid: u32,
    /// Its directory (data, socket, log): removed by `lbfleet-lab down`.
    pub dir: PathBuf,
    /// `postgres://` URL over the socket, for `--database`.
    pub url: String,
}

/// Makes and starts the cluster in `preferred` (or a directory under /tmp, see the module docs).
pub fn start(preferred: &Path) -> Result<LabDatabase, LabError> {
    let bin = bin_dir().map_err(|e| LabError::Missing(vec![e]))?;
    if !is_root() {
        return Err(LabError::Missing(vec![
            "root (the cluster runs as the postgres user)".into(),
        ]));
    }
    let dir = cluster_dir(preferred)?;
    let data = dir.join("data");
    let out = as_owner(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "lbfleet", "--auth=trust", "-E", "UTF8", "--locale=C"])
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(&bin))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("initdb -D {}", data.display()),
            stderr: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let log_path = dir.join("postgres.log");
    let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    let log2 = log.try_clone().map_err(io_err(&log_path))?;
    let mut postmaster = as_owner(&bin.join("postgres"));
    postmaster
        .arg("-D")
        .arg(&data)
        .args(["-p", &SOCKET_PORT.to_string(), "-k"])
        .arg(&dir)
        .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Its own process group: a Ctrl-C in the terminal that ran `make demo-ha` does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut postmaster, 0);
    // Left running on purpose (the site outlives this process); init reaps it.
    #[allow(clippy::zombie_processes)]
    let mut child = postmaster.spawn().map_err(io_err(&bin))?;
    let started = Instant::now();
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .arg("-h")
            .arg(&dir)
            .args(["-p", &SOCKET_PORT.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Other(format!(
                "postgres exited ({status}) at start: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(LabError::Timeout {
                what: format!("postgres in {} to accept connections", dir.display()),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut createdb = Command::new(bin.join("createdb"));
    createdb
        .arg("-h")
        .arg(&dir)
        .args(["-p", &SOCKET_PORT.to_string(), "-U", "lbfleet", NAME]);
    crate::netns::run(&mut createdb)?;
    Ok(LabDatabase {
        pid: child.id(),
        url: format!(
            "postgres://lbfleet@localhost/{NAME}?host={}&port={SOCKET_PORT}",
            dir.display()
        ),
        dir,
    })
}

/// `preferred` when the postgres user can write there and the socket path fits, else a new directory under
/// /tmp; either way empty, owned by postgres.
fn cluster_dir(preferred: &Path) -> Result<PathBuf, LabError> {
    if preferred.as_os_str().len() <= MAX_SOCKET_DIR {
        std::fs::create_dir_all(preferred).map_err(io_err(preferred))?;
        chown_postgres(preferred)?;
        let reachable = as_owner(Path::new("/usr/bin/test"))
            .arg("-w")
            .arg(preferred)
            .status()
            .is_ok_and(|s| s.success());
        if reachable {
            return Ok(preferred.to_owned());
        }
        let _ = std::fs::remove_dir_all(preferred);
    }
    let dir = tempfile::Builder::new()
        .prefix("lbfleet-demo-pg-")
        .tempdir()
        .map_err(io_err(Path::new("/tmp")))?
        .keep();
    chown_postgres(&dir)?;
    Ok(dir)
}

fn chown_postgres(dir: &Path) -> Result<(), LabError> {
    crate::netns::run(Command::new("chown").arg("postgres:postgres").arg(dir))?;
    Ok(())
}
