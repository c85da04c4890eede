//! The bounds of an agent report, shared by both ends: the server refuses a report that breaks one (the whole
//! report, naming the field), and the agent fits its reports into them before sending, so a healthy agent is
//! never refused. One rule for every free text (`MAX_TEXT` bytes, no control characters), one count per list.
//!
//! The checks themselves live in the server (`fleet::rules::report`); here are the numbers and the agent's
//! [`fit_report`], which only cuts, never invents.

use crate::AgentReport;

/// Longest free text in a report (an error, a transition's reason, a health error, a check description, a
/// service name), in bytes. Control characters are refused in every text.
pub const MAX_TEXT: usize = 512;
/// Longest name-like field (versions, drop-counter keys, `vrrp_master` when it is a name), in bytes.
pub const MAX_NAME: usize = 64;
/// Most VRRP transitions one report may carry (the agent keeps its 32 newest).
pub const MAX_VRRP_TRANSITIONS: usize = 64;
/// Most health transitions one report may carry (the agent keeps at most 1,000 between reports).
pub const MAX_HEALTH_EVENTS: usize = 1000;
/// Most error strings one report may carry.
pub const MAX_ERRORS: usize = 16;
/// Most VRRP drop counters (the agent has about fifteen reasons).
pub const MAX_DROP_COUNTERS: usize = 32;
/// Most virtual services one report may list.
pub const MAX_SERVICES: usize = 4096;
/// Most real servers one report may list, over all its services: above keepalived's largest sites (300
/// virtual servers x 100 real servers = 30,000 on one pair).
pub const MAX_REAL_SERVERS: usize = 32_768;
/// Largest report body (full report or delta) the server reads, in bytes. A full report of `MAX_REAL_SERVERS`
/// rows is about 150 bytes a row when idle and 250 when busy (8 MB), so 16 MiB holds it with room; the agent
/// shortens row texts, then rows, of a report that would still be larger ([`fit_report_size`]). A full
/// report is rare (at start, every few minutes, after the server asks): the reports in between are deltas of
/// a few KB.
pub const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// What the per-row texts of a report over `MAX_REPORT_BYTES` are cut to (a check's description, its last
/// error), before any row is left out.
pub const SHORT_ROW_TEXT: usize = 64;

/// Whether `text` passes the one text rule: at most `max` bytes and no control characters.
pub fn text_ok(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(char::is_control)
}

/// `text` made to pass the text rule: control characters become spaces, and it is cut (at a character
/// boundary) to `max` bytes, ending in `...` when cut.
pub fn fit_text(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut end = max.saturating_sub(3);
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

/// Cuts a report to the bounds: the newest transitions and health events, the first errors (the last line
/// says how many were left out), the first services and real servers, the first drop counters; every text
/// fitted. A report that already fits is left as it is.
pub fn fit_report(r: &mut AgentReport) {
    keep_newest(&mut r.vrrp_transitions, MAX_VRRP_TRANSITIONS);
    for t in &mut r.vrrp_transitions {
        fit(&mut t.reason);
    }
    keep_newest(&mut r.health_events, MAX_HEALTH_EVENTS);
    for e in &mut r.health_events {
        fit(&mut e.service);
        if let Some(reason) = &mut e.reason {
            fit(reason);
        }
    }
    if r.errors.len() > MAX_ERRORS {
        let left_out = r.errors.len() - (MAX_ERRORS - 1);
        r.errors.truncate(MAX_ERRORS - 1);
        r.errors.push(format!("... and {left_out} more errors"));
    }
    for e in &mut r.errors {
        fit(e);
    }
    while r.vrrp_dropped.len() > MAX_DROP_COUNTERS {
        r.vrrp_dropped.pop_last();
    }
    r.services.truncate(MAX_SERVICES);
    let mut room = MAX_REAL_SERVERS;
    for s in &mut r.services {
        s.real_servers.truncate(room);
        room -= s.real_servers.len();
        for rs in &mut s.real_servers {
            if let Some(h) = &mut rs.health {
                for t in [&mut h.last_error, &mut h.check].into_iter().flatten() {
                    fit(t);
                }
            }
        }
    }
}

/// Makes a fitted report's JSON at most `max` bytes: first the per-row texts (last error, check) are cut to
/// `SHORT_ROW_TEXT`, then real servers are left out from the end, in proportion to the excess. Returns whether
/// anything was cut. Only reports with thousands of rows, each with long texts, ever get here.
pub fn fit_report_size(r: &mut AgentReport, max: usize) -> bool {
    let size = |r: &AgentReport| serde_json::to_vec(r).map_or(usize::MAX, |v| v.len());
    let mut now = size(r);
    if now <= max {
        return false;
    }
    for s in &mut r.services {
        for rs in &mut s.real_servers {
            if let Some(h) = &mut rs.health {
                for t in [&mut h.last_error, &mut h.check].into_iter().flatten() {
                    if t.len() > SHORT_ROW_TEXT {
                        *t = fit_text(t, SHORT_ROW_TEXT);
                    }
                }
            }
        }
    }
    now = size(r);
    while now > max {
        let rows: usize = r.services.iter().map(|s| s.real_servers.len()).sum();
        if rows == 0 {
            break;
        }
        // Leave out a share of the rows a little larger than the excess, at least one.
        let cut = (rows.saturating_mul(now - max) / now)
            .saturating_add(rows / 100)
            .max(1);
        let mut left = cut;
        for s in r.services.iter_mut().rev() {
            let n = left.min(s.real_servers.len());
            s.real_servers.truncate(s.real_servers.len() - n);
            left -= n;
            if left == 0 {
                break;
            }
        }
        now = size(r);
    }
    true
}

fn fit(text: &mut String) {
    if !text_ok(text, MAX_TEXT) {
        *text = fit_text(text, MAX_TEXT);
    }
}

/// Keeps the last `max` items (lists in a report are oldest first).
fn keep_newest<T>(items: &mut Vec<T>, max: usize) {
    let excess = items.len().saturating_sub(max);
    items.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VrrpState, VrrpTransition};

    #[test]
    fn texts_are_cut_at_characters_and_lose_control_characters() {
        assert!(text_ok("master down timer expired", MAX_TEXT));
        assert!(!text_ok("a\nb", MAX_TEXT));
        assert!(!text_ok("\u{1b}[31m", MAX_TEXT));
        assert!(!text_ok(&"x".repeat(MAX_TEXT + 1), MAX_TEXT));
        assert_eq!(fit_text("a\tb\r\n", 10), "a b  ");
        let cut = fit_text(&"é".repeat(400), MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT && cut.ends_with("...") && text_ok(&cut, MAX_TEXT));
    }

    #[test]
    fn a_report_is_fitted_to_the_bounds() {
        let t = |i: u64| VrrpTransition {
            from: VrrpState::Backup,
            to: VrrpState::Master,
            reason: format!("{i}\n{}", "r".repeat(1000)),
            at_ms: i,
        };
        let mut r = AgentReport {
            vrrp_transitions: (0..200).map(t).collect(),
            errors: (0..100).map(|i| format!("error {i}")).collect(),
            vrrp_dropped: (0..50).map(|i| (format!("reason_{i:02}"), 1)).collect(),
            ..AgentReport::default()
        };
        fit_report(&mut r);
        assert_eq!(r.vrrp_transitions.len(), MAX_VRRP_TRANSITIONS);
        assert_eq!(
            r.vrrp_transitions[0].at_ms,
            200 - MAX_VRRP_TRANSITIONS as u64
        );
        assert!(r
            .vrrp_transitions
            .iter()
            .all(|t| text_ok(&t.reason, MAX_TEXT)));
        assert_eq!(r.errors.len(), MAX_ERRORS);
        assert_eq!(r.errors[MAX_ERRORS - 1], "... and 85 more errors");
        assert_eq!(r.vrrp_dropped.len(), MAX_DROP_COUNTERS);
        let fitted = r.clone();
        fit_report(&mut r);
        assert_eq!(r, fitted, "fitting a fitted report changes nothing");
    }

    #[test]
    fn a_report_over_the_byte_bound_loses_row_texts_then_rows() {
        use crate::{HealthState, Protocol, RealServerHealth, RealServerReport, ServiceReport};
        let row = |i: u32| RealServerReport {
            address: format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
            port: 80,
            healthy: false,
            weight: 1,
            active_conns: 0,
            inactive_conns: 0,
            connections: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            health: Some(RealServerHealth {
                state: HealthState::Down,
                since: Some(1),
                last_error: Some("e".repeat(MAX_TEXT)),
                latency_us: None,
                flaps: 0,
                check: Some("c".repeat(MAX_TEXT)),
            }),
        };
        let mut r = AgentReport {
            services: vec![ServiceReport {
                vip: "198.18.0.10".into(),
                port: 80,
                protocol: Protocol::Tcp,
                connections: 0,
                packets_in: 0,
                packets_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                real_servers: (0..1000).map(row).collect(),
            }],
            ..AgentReport::default()
        };
        let size = |r: &AgentReport| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0);
        assert!(size(&r) > 1_000_000);
        let small = r.clone();
        assert!(fit_report_size(&mut r, 300_000));
        assert_eq!(r.services[0].real_servers.len(), 1000, "texts cut first");
        assert!(size(&r) <= 300_000);
        let mut r = small;
        assert!(fit_report_size(&mut r, 50_000));
        let rows = r.services[0].real_servers.len();
        assert!(
            size(&r) <= 50_000 && rows > 150 && rows < 1000,
            "{rows} rows"
        );
        assert!(
            !fit_report_size(&mut r, 50_000),
            "a fitting report is left alone"
        );
    }
}
