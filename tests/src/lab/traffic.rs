//! Client traffic through a VIP, from a namespace of the lab: `lbfleet-lab probe` (a request every few ms,
//! each on its own schedule slot with a deadline) and `lbfleet-lab get` (one slow streaming response, a TCP
//! session that must outlive a failover), run inside the namespace with `ip netns exec` and read back from
//! their output. Only addresses of the lab's namespaces are ever the target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{io_err, wait, LabError};
use crate::netns::Netns;

/// One request of a probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// When the request was due, ms after the run started.
    pub slot_ms: u64,
    pub latency_ms: u64,
    /// The body (the real server's name), or why the request failed.
    pub answer: Result<String, String>,
}

/// Parses `lbfleet-lab probe` output, sorted by slot. Lines that are not results are skipped.
pub fn parse_probe(text: &str) -> Vec<ProbeResult> {
    let mut out: Vec<ProbeResult> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let slot_ms = parts.next()?.parse().ok()?;
            let kind = parts.next()?;
            let latency_ms = parts.next()?.parse().ok()?;
            let rest = parts.next().unwrap_or("").trim().to_owned();
            let answer = match kind {
                "ok" => Ok(rest),
                "err" => Err(rest),
                _ => return None,
            };
            Some(ProbeResult {
                slot_ms,
                latency_ms,
                answer,
            })
        })
        .collect();
    out.sort_by_key(|r| r.slot_ms);
    out
}

/// How many answers came from each body (real server name).
pub fn answers_by_body(results: &[ProbeResult]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        if let Ok(body) = &r.answer {
            *m.entry(body.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// The failed requests.
pub fn failures(results: &[ProbeResult]) -> Vec<&ProbeResult> {
    results.iter().filter(|r| r.answer.is_err()).collect()
}

/// One line for an assertion message: how many requests, the answers by body, and each failure with its slot.
pub fn summary(results: &[ProbeResult]) -> String {
    let failed: Vec<String> = failures(results)
        .iter()
        .map(|r| format!("{} ms: {:?}", r.slot_ms, r.answer))
        .collect();
    format!(
        "{} requests, answers {:?}, {} failed: {failed:?}",
        results.len(),
        answers_by_body(results),
        failed.len()
    )
}

/// The longest run of consecutive failed slots: `(first slot ms, number of slots)`, or `None` when every
/// request was answered. With requests every `interval` ms the outage a client saw is about
/// `slots * interval`.
pub fn longest_outage(results: &[ProbeResult]) -> Option<(u64, usize)> {
    let mut best: Option<(u64, usize)> = None;
    let mut run: Option<(u64, usize)> = None;
    for r in results {
        if r.answer.is_err() {
            run = Some(match run {
                Some((start, n)) => (start, n + 1),
                None => (r.slot_ms, 1),
            });
            if let Some(cur) = run {
                if best.is_none_or(|b| cur.1 > b.1) {
                    best = Some(cur);
                }
            }
        } else {
            run = None;
        }
    }
    best
}

/// The `lbfleet-lab` binary (built on demand, as the lab's other binaries).
pub fn lab_binary() -> Result<PathBuf, LabError> {
    crate::guest::workspace_binary("lbfleet-tests", "lbfleet-lab")
        .map_err(|e| LabError::Other(e.to_string()))
}

/// Waits (at most `within`, scaled by `wait::scaled`) until one request for `/` on `addr` from `ns` is answered
/// (each try bounded by 2 s): the site serves through its VIP.
pub fn until_answered(ns: &Netns, addr: &str, within: Duration) -> Result<(), LabError> {
    wait::until(
        "a first answer through the VIP",
        wait::scaled(within),
        || {
            let r = probe(ns, addr, "/", 0, 1, 2000).ok()?;
            r.first()?.answer.is_ok().then_some(())
        },
    )
}

/// Runs `count` requests for `path` on `addr` from `ns`, one every `interval_ms`, each failed when not
/// answered within `timeout_ms`; returns when all have ended.
pub fn probe(
    ns: &Netns,
    addr: &str,
    path: &str,
    interval_ms: u64,
    count: u32,
    timeout_ms: u64,
) -> Result<Vec<ProbeResult>, LabError> {
    let bin = lab_binary()?;
    let out = ns.exec(&[
        &bin.display().to_string(),
        "probe",
        addr,
        path,
        &interval_ms.to_string(),
        &count.to_string(),
        &timeout_ms.to_string(),
    ])?;
    Ok(parse_probe(&String::from_utf8_lossy(&out.stdout)))
}

/// A client program running in the background in a namespace, its output in a file; killed on drop.
#[allow(missing_debug_implementations)] // owns a child process
pub struct Background {
    child: Child,
    out: PathBuf,
    started: std::time::Instant,
}

impl Background {
    fn spawn(ns: &Netns, args: &[&str], out: &Path) -> Result<Background, LabError> {
        let bin = lab_binary()?;
        let file = std::fs::File::create(out).map_err(io_err(out))?;
        let child = ns
            .command(&bin.display().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(&bin))?;
        Ok(Background {
            child,
            out: out.to_owned(),
            started: std::time::Instant::now(),
        })
    }

    /// When the program was started (a probe's slots count from about then).
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// A probe (as [`probe`]) running in the background; its output goes to `out`.
    pub fn probe(
        ns: &Netns,
        addr: &str,
        path: &str,
        interval_ms: u64,
        count: u32,
        timeout_ms: u64,
        out: &Path,
    ) -> Result<Background, LabError> {
        Background::spawn(
            ns,
            &[
                "probe",
                addr,
                path,
                &interval_ms.to_string(),
                &count.to_string(),
                &timeout_ms.to_string(),
            ],
            out,
        )
    }

    /// One streaming GET (`lbfleet-lab get`): a line per chunk as it arrives, `done` or `err` last.
    pub fn stream(ns: &Netns, addr: &str, path: &str, out: &Path) -> Result<Background, LabError> {
        Background::spawn(ns, &["get", addr, path], out)
    }

    /// The output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// How many requests a probe has finished so far (answered or failed).
    pub fn done(&self) -> usize {
        parse_probe(&self.output()).len()
    }

    /// Stops the program now (a probe's requests still in flight are not reported); returns its output.
    pub fn stop(mut self) -> String {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.output()
    }

    /// Waits (at most `timeout`) for the program to end; returns its whole output.
    pub fn finish(mut self, timeout: Duration) -> Result<String, LabError> {
        let what = format!("client program ({})", self.out.display());
        wait::until(&what, timeout, || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
        })?;
        Ok(self.output())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_parses_and_the_longest_outage_is_found() {
        let text = "100 ok 3 rs2\n0 ok 2 rs1\n50 err 900 connect: timed out\n150 err 900 timeout after 0 bytes\n\
                    200 err 900 read: reset\n250 ok 4 rs3\nnoise line\n300 err 5 status: HTTP/1.0 503\n";
        let r = parse_probe(text);
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].slot_ms, 0);
        assert_eq!(r[1].answer, Err("connect: timed out".to_owned()));
        assert_eq!(longest_outage(&r), Some((150, 2)));
        assert_eq!(failures(&r).len(), 4);
        let by = answers_by_body(&r);
        assert_eq!(by.get("rs1"), Some(&1));
        assert_eq!(by.get("rs3"), Some(&1));
        assert_eq!(longest_outage(&r[..1]), None);
    }
}
