//! The state file of a site that outlives the process that built it (`lbfleet-lab up`, `make demo`): the PIDs
//! it started (with each process's start time, so a PID the kernel has since reused is never signalled) and
//! the namespaces it created. Teardown works from this record only, never by matching names or patterns, and
//! is idempotent: a process already gone or a namespace already deleted is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{io_err, LabError};

/// One process the site started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub what: String,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot) when the record was made.
    pub start_ticks: Option<u64>,
    /// The signal that stops it cleanly (`INT` for PostgreSQL's fast shutdown); `TERM` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ProcessRecord {
    pub fn new(pid: u32, what: &str) -> ProcessRecord {
        ProcessRecord {
            pid,
            what: what.to_owned(),
            start_ticks: start_ticks(pid),
            stop_signal: None,
        }
    }

    /// The same, stopped with `signal` instead of `TERM`.
    pub fn with_stop_signal(mut self, signal: &str) -> ProcessRecord {
        self.stop_signal = Some(signal.to_owned());
        self
    }

    /// Whether the process this record names still runs (same PID, same start time).
    pub fn alive(&self) -> bool {
        match (start_ticks(self.pid), self.start_ticks) {
            (Some(now), Some(then)) => now == then,
            _ => false,
        }
    }
}

/// What a detached site is made of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteRecord {
    pub suffix: String,
    pub dir: PathBuf,
    pub pids: Vec<ProcessRecord>,
    /// Deleted in this order (the site namespace last).
    pub namespaces: Vec<String>,
    /// What the site's user needs later (URLs, the API token's file, ...).
    #[serde(default)]
    pub notes: std::collections::BTreeMap<String, String>,
}

impl SiteRecord {
    pub fn load(path: &Path) -> Result<Option<SiteRecord>, LabError> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| LabError::Other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes the record atomically (a crash leaves the old or the new file, never half of one).
    pub fn save(&self, path: &Path) -> Result<(), LabError> {
        let tmp = path.with_extension("tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|e| LabError::Other(e.to_string()))?;
        std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Stops every recorded process (SIGTERM, then SIGKILL after `grace`) and deletes every recorded
    /// namespace that still exists. Returns what it did, one line each.
    pub fn teardown(&self, grace: Duration) -> Vec<String> {
        let mut done = Vec::new();
        let alive: Vec<&ProcessRecord> = self.pids.iter().filter(|p| p.alive()).collect();
        for p in &alive {
            signal(p.pid, p.stop_signal.as_deref().unwrap_or("TERM"));
        }
        let start = Instant::now();
        while alive.iter().any(|p| p.alive()) && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in &alive {
            if p.alive() {
                signal(p.pid, "KILL");
                done.push(format!("killed {} (pid {})", p.what, p.pid));
            } else {
                done.push(format!("stopped {} (pid {})", p.what, p.pid));
            }
        }
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                let ok = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                done.push(format!(
                    "{} namespace {ns}",
                    if ok { "deleted" } else { "could not delete" }
                ));
            }
        }
        done
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')' are plain.
    let rest = stat.rsplit_once(')')?.1;
    // rest starts at field 3 (state); start time is field 22. A zombie has ended already.
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessRecord::new(std::process::id(), "test");
        assert!(me.alive());
        let reused = ProcessRecord {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me.clone()
        };
        assert!(!reused.alive());
    }

    #[test]
    fn teardown_stops_a_recorded_child_and_round_trips_through_the_file() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.json");
        let record = SiteRecord {
            suffix: "t".into(),
            dir: dir.path().to_owned(),
            pids: vec![ProcessRecord::new(child.id(), "sleep")],
            namespaces: vec!["lbfleet-no-such-namespace-xyz".into()],
            notes: Default::default(),
        };
        record.save(&path).expect("save");
        let loaded = SiteRecord::load(&path).expect("load").expect("some");
        let lines = loaded.teardown(Duration::from_secs(5));
        // The child is a zombie until reaped here; reaping proves it ended.
        let status = child.wait().expect("wait");
        assert!(!status.success(), "{status:?}");
        assert_eq!(lines, vec![format!("stopped sleep (pid {})", child.id())]);
    }
}
