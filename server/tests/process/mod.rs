//! Test harness: the `lbfleet-server` binary as a child process, for tests that measure the process from
//! outside (RSS, open files) or need their own resource limits.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

fn db_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The `lbfleet-server` binary running as a child process (killed on drop), for tests that measure the
/// process (RSS, open files) from outside.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
    /// The boot network's listener, when `LBFLEET_BOOT_LISTEN` was given.
    pub boot_addr: Option<String>,
    pub admin_password: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `lbfleet-server serve` on 127.0.0.1:0 with a new database in `dir`, optionally under
    /// `prlimit --nofile=N:N`, with extra environment (`LBFLEET_*` settings), and waits for its "listening" line.
    pub fn start(dir: &Path, nofile: Option<u64>, env: &[(&str, &str)]) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let bin = env!("CARGO_BIN_EXE_lbfleet-server");
        let pw_file = dir.join("admin-password");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--database")
            .arg(db_url(&dir.join("lbfleet.db")))
            .arg("--initial-admin-password-file")
            .arg(&pw_file)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (addr, boot_addr) = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("server exited before listening");
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "lbfleet-server listening" {
                // `boot_listen` is logged as `Some(ADDR)` or `None`.
                let boot = v["fields"]["boot_listen"]
                    .as_str()
                    .and_then(|b| b.strip_prefix("Some("))
                    .and_then(|b| b.strip_suffix(')'))
                    .map(str::to_owned);
                break (v["fields"]["addr"].as_str().unwrap().to_owned(), boot);
            }
        };
        // Keep draining the log so the server never blocks on a full pipe; its warnings and errors go to the
        // test's output (shown when the test fails).
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"") {
                    eprintln!("server: {line}");
                }
            }
        });
        let admin_password = std::fs::read_to_string(&pw_file).unwrap().trim().to_owned();
        ServerProcess {
            child,
            addr,
            boot_addr,
            admin_password,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
