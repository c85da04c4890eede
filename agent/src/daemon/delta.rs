//! Which report goes to the server next: a full one, or a delta against the report the server acknowledged
//! (`lbfleet_proto::delta`). No I/O and no clock of its own: the reporter (`server::send_reports`) asks
//! [`ReportDeltas::next`] what to send and tells it what the server answered.
//!
//! What "changed" means: a real server's state (healthy, weight, its health result without the probe's
//! latency) travels in the next delta, always; its kernel counters (connections, packets, bytes, active and
//! inactive connections) move on every busy server at every report, so those travel in turn: each delta carries the counter changes of at most `COUNTER_ROWS_PER_DELTA` real servers, the ones the
//! rotation reaches next. A site with fewer busy real servers than that sends every counter every time; a
//! busy 30,000-row site refreshes each row's counters every 15 reports. Service counters (at most one row per
//! virtual service) travel whenever they move. The probe's latency changes at every probe of every server:
//! it never makes a row travel, it rides along when the row travels for another reason and in every full
//! report (so the dashboard's latency is at most `FULL_REPORT_EVERY` old on a quiet row). A full report goes out at start, after the server asks for
//! one, every `FULL_REPORT_EVERY`, and when a delta would carry more than half the rows anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lbfleet_proto::{
    AgentReport, RealServerHealth, RealServerRef, RealServerReport, ReportDelta, ServiceDelta,
    ServiceRef, ServiceReport,
};

/// A full report at least this often while deltas flow, so whatever the two ends might disagree on is
/// replaced within minutes (and the server's traffic baselines, forgotten after 15 min of silence, stay).
pub const FULL_REPORT_EVERY: Duration = Duration::from_secs(10 * 60);
/// Most real servers whose counters alone changed that one delta carries (about 300 KB at most).
pub const COUNTER_ROWS_PER_DELTA: usize = 2048;

/// What the reporter sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Full,
    Delta(Box<ReportDelta>),
}

/// The report the server holds as far as this agent knows: its number and content.
#[derive(Debug, Clone)]
struct Basis {
    seq: u64,
    report: AgentReport,
    full_at: Instant,
}

/// The reporter's memory between reports: the acknowledged report and where the counter rotation is.
#[derive(Debug, Default)]
pub struct ReportDeltas {
    basis: Option<Basis>,
    /// Position (over all real servers in report order) the counter rotation resumes from.
    cursor: usize,
}

impl ReportDeltas {
    /// What to send for `report` at `now`: a delta when the server acknowledged a numbered report less than
    /// `FULL_REPORT_EVERY` ago and the delta is smaller than the report, else the full report.
    pub fn next(&mut self, report: &AgentReport, now: Instant) -> Outgoing {
        let Some(b) = &self.basis else {
            return Outgoing::Full;
        };
        if now.saturating_duration_since(b.full_at) >= FULL_REPORT_EVERY {
            return Outgoing::Full;
        }
        let (delta, rows) = build_delta(b.seq, &b.report, report, &mut self.cursor);
        let total: usize = report.services.iter().map(|s| s.real_servers.len()).sum();
        if rows > 0 && rows * 2 > total {
            return Outgoing::Full;
        }
        Outgoing::Delta(Box::new(delta))
    }

    /// The server took a full report: numbered `seq` (the base of the next delta), or not numbered (a server
    /// that predates deltas: the next report is full again).
    pub fn full_accepted(&mut self, report: AgentReport, seq: Option<u64>, now: Instant) {
        self.basis = seq.map(|seq| Basis {
            seq,
            report,
            full_at: now,
        });
    }

    /// The server merged `delta` into its report and numbered the result `seq`.
    pub fn delta_accepted(&mut self, delta: &ReportDelta, seq: u64) {
        let Some(b) = &mut self.basis else {
            return;
        };
        match delta.apply(&b.report) {
            Ok(report) => {
                b.report = report;
                b.seq = seq;
            }
            // Built from this very basis, so it fits; if not, start over with a full report.
            Err(_) => self.basis = None,
        }
    }

    /// The server does not hold the delta's base (or takes no deltas): the next report is full.
    pub fn send_full(&mut self) {
        self.basis = None;
    }

    /// Whether a numbered report is acknowledged (the next report may be a delta).
    pub fn has_basis(&self) -> bool {
        self.basis.is_some()
    }
}

/// `report` without its services: the head of a delta. Every field is named, so a field added to reports
/// must be decided on here.
fn head_of(r: &AgentReport) -> AgentReport {
    AgentReport {
        applied_generation: r.applied_generation,
        vrrp_state: r.vrrp_state,
        vrrp_master: r.vrrp_master.clone(),
        vrrp_transitions: r.vrrp_transitions.clone(),
        vrrp_dropped: r.vrrp_dropped.clone(),
        services: Vec::new(),
        errors: r.errors.clone(),
        agent_version: r.agent_version.clone(),
        image_version: r.image_version.clone(),
        uptime_s: r.uptime_s,
        address: r.address.clone(),
        health_events: r.health_events.clone(),
    }
}

/// A real server's state: what travels at once when it changes (the health result without its latency).
fn same_state(a: &RealServerReport, b: &RealServerReport) -> bool {
    let health = |h: &Option<RealServerHealth>| {
        h.as_ref().map(|h| RealServerHealth {
            latency_us: None,
            ..h.clone()
        })
    };
    a.healthy == b.healthy && a.weight == b.weight && health(&a.health) == health(&b.health)
}

/// A real server's kernel counters (the probe's latency is not one: it rides along when the row travels).
fn same_counters(a: &RealServerReport, b: &RealServerReport) -> bool {
    (
        a.active_conns,
        a.inactive_conns,
        a.connections,
        a.packets_in,
        a.packets_out,
        a.bytes_in,
        a.bytes_out,
    ) == (
        b.active_conns,
        b.inactive_conns,
        b.connections,
        b.packets_in,
        b.packets_out,
        b.bytes_in,
        b.bytes_out,
    )
}

fn same_service_counters(a: &ServiceReport, b: &ServiceReport) -> bool {
    (
        a.connections,
        a.packets_in,
        a.packets_out,
        a.bytes_in,
        a.bytes_out,
    ) == (
        b.connections,
        b.packets_in,
        b.packets_out,
        b.bytes_in,
        b.bytes_out,
    )
}

fn service_delta(s: &ServiceReport) -> ServiceDelta {
    ServiceDelta {
        vip: s.vip.clone(),
        port: s.port,
        protocol: s.protocol,
        connections: s.connections,
        packets_in: s.packets_in,
        packets_out: s.packets_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        real_servers: Vec::new(),
        removed: Vec::new(),
    }
}

/// The delta that turns `base` (numbered `seq`) into `now`, but for counter-only changes beyond the
/// rotation's share; and how many real-server rows it carries. `cursor` is the counter rotation's position.
pub fn build_delta(
    seq: u64,
    base: &AgentReport,
    now: &AgentReport,
    cursor: &mut usize,
) -> (ReportDelta, usize) {
    let base_services: HashMap<(&str, u16, lbfleet_proto::Protocol), &ServiceReport> = base
        .services
        .iter()
        .map(|s| ((s.vip.as_str(), s.port, s.protocol), s))
        .collect();
    // Per service of `now`: its delta, if any yet; rows whose counters alone changed wait for the rotation.
    let mut deltas: Vec<Option<ServiceDelta>> = vec![None; now.services.len()];
    let mut counters_only: Vec<(usize, usize, usize)> = Vec::new(); // (position, service, row)
    let mut rows = 0usize;
    let mut position = 0usize;
    for (si, s) in now.services.iter().enumerate() {
        let Some(b) = base_services.get(&(s.vip.as_str(), s.port, s.protocol)) else {
            let mut d = service_delta(s);
            d.real_servers = s.real_servers.clone();
            rows += d.real_servers.len();
            position += s.real_servers.len();
            deltas[si] = Some(d);
            continue;
        };
        let mut d = service_delta(s);
        let base_rows: HashMap<(&str, u16), &RealServerReport> = b
            .real_servers
            .iter()
            .map(|r| ((r.address.as_str(), r.port), r))
            .collect();
        for (ri, r) in s.real_servers.iter().enumerate() {
            match base_rows.get(&(r.address.as_str(), r.port)) {
                None => d.real_servers.push(r.clone()),
                Some(old) if !same_state(old, r) => d.real_servers.push(r.clone()),
                Some(old) if !same_counters(old, r) => counters_only.push((position, si, ri)),
                Some(_) => {}
            }
            position += 1;
        }
        if b.real_servers.len() + d.real_servers.len() > s.real_servers.len() {
            let here: std::collections::HashSet<(&str, u16)> = s
                .real_servers
                .iter()
                .map(|r| (r.address.as_str(), r.port))
                .collect();
            d.removed = b
                .real_servers
                .iter()
                .filter(|r| !here.contains(&(r.address.as_str(), r.port)))
                .map(|r| RealServerRef {
                    address: r.address.clone(),
                    port: r.port,
                })
                .collect();
        }
        rows += d.real_servers.len();
        if !d.real_servers.is_empty() || !d.removed.is_empty() || !same_service_counters(b, s) {
            deltas[si] = Some(d);
        }
    }
    // The rotation: from the cursor on, wrapping around, at most COUNTER_ROWS_PER_DELTA rows.
    let start = counters_only.partition_point(|(p, _, _)| *p < *cursor);
    let take = counters_only.len().min(COUNTER_ROWS_PER_DELTA);
    let chosen: Vec<(usize, usize, usize)> = counters_only[start..]
        .iter()
        .chain(counters_only[..start].iter())
        .take(take)
        .copied()
        .collect();
    if let Some((p, _, _)) = chosen.last() {
        *cursor = if take == counters_only.len() {
            0
        } else {
            p + 1
        };
    }
    let mut chosen = chosen;
    chosen.sort_unstable();
    for (_, si, ri) in chosen {
        let s = &now.services[si];
        deltas[si]
            .get_or_insert_with(|| service_delta(s))
            .real_servers
            .push(s.real_servers[ri].clone());
        rows += 1;
    }
    let here: std::collections::HashSet<(&str, u16, lbfleet_proto::Protocol)> = now
        .services
        .iter()
        .map(|s| (s.vip.as_str(), s.port, s.protocol))
        .collect();
    let removed_services = base
        .services
        .iter()
        .filter(|s| !here.contains(&(s.vip.as_str(), s.port, s.protocol)))
        .map(|s| ServiceRef {
            vip: s.vip.clone(),
            port: s.port,
            protocol: s.protocol,
        })
        .collect();
    let delta = ReportDelta {
        base: seq,
        head: head_of(now),
        services: deltas.into_iter().flatten().collect(),
        removed_services,
    };
    (delta, rows)
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::{HealthState, Protocol};

    use super::*;

    fn row(i: usize) -> RealServerReport {
        RealServerReport {
            address: format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
            port: 80,
            healthy: true,
            weight: 1,
            active_conns: 0,
            inactive_conns: 0,
            connections: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            health: Some(RealServerHealth {
                state: HealthState::Up,
                since: Some(1_765_000_000),
                last_error: None,
                latency_us: Some(120),
                flaps: 0,
                check: Some("tcp connect".into()),
            }),
        }
    }

    /// `services` x `per` real servers, as a 300 x 100 site reports them.
    fn site(services: usize, per: usize) -> AgentReport {
        AgentReport {
            applied_generation: 7,
            uptime_s: 100,
            agent_version: Some("0.1.0".into()),
            services: (0..services)
                .map(|s| ServiceReport {
                    vip: format!("198.18.0.{}", 10 + s / 100),
                    port: 1000 + s as u16,
                    protocol: Protocol::Tcp,
                    connections: 0,
                    packets_in: 0,
                    packets_out: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    real_servers: (0..per).map(|r| row(s * per + r)).collect(),
                })
                .collect(),
            ..AgentReport::default()
        }
    }

    fn json_len<T: serde::Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).map(|v| v.len()).unwrap_or(usize::MAX)
    }

    #[test]
    fn a_steady_site_sends_a_delta_of_its_head_only() {
        let base = site(300, 100);
        let mut now = base.clone();
        now.uptime_s += 10;
        // The probes' latency moves on every row: a measurement, not a change of state.
        for s in &mut now.services {
            for r in &mut s.real_servers {
                if let Some(h) = &mut r.health {
                    h.latency_us = Some(130);
                }
            }
        }
        let mut cursor = 0;
        let (d, rows) = build_delta(9, &base, &now, &mut cursor);
        assert_eq!(d.base, 9);
        assert!(d.head.services.is_empty());
        assert_eq!(d.head.uptime_s, 110);
        // Latency alone makes no row travel.
        assert_eq!((rows, d.services.len()), (0, 0));
        assert!(json_len(&d) < 1024, "{}", json_len(&d));
        let (d, rows) = build_delta(9, &base, &base, &mut cursor);
        assert_eq!((rows, d.services.len()), (0, 0));
        assert!(json_len(&d) < 1024);
        assert!(json_len(&base) > 3_000_000, "{}", json_len(&base));
    }

    #[test]
    fn state_changes_go_at_once_counters_in_turn_and_merging_gives_the_report() {
        let base = site(50, 100);
        let mut now = base.clone();
        // Every row is busy; two change state; one service gains and loses a row; one service goes.
        for s in &mut now.services {
            s.connections += 100;
            for r in &mut s.real_servers {
                r.connections += 5;
                r.bytes_in += 5000;
            }
        }
        now.services[3].real_servers[7].healthy = false;
        now.services[3].real_servers[7].weight = 0;
        now.services[20].real_servers[0].health = Some(RealServerHealth {
            state: HealthState::Down,
            since: Some(1_765_000_100),
            last_error: Some("connect: refused".into()),
            latency_us: None,
            flaps: 1,
            check: Some("tcp connect".into()),
        });
        now.services[5].real_servers.remove(0);
        now.services[5].real_servers.push(row(9999));
        now.services.remove(49);
        let mut deltas = ReportDeltas::default();
        let t0 = Instant::now();
        assert_eq!(deltas.next(&now, t0), Outgoing::Full);
        deltas.full_accepted(base.clone(), Some(1), t0);
        let mut held = base.clone(); // what the server holds
        let mut seq = 1;
        let mut rounds = 0;
        loop {
            let Outgoing::Delta(d) = deltas.next(&now, t0 + Duration::from_secs(10)) else {
                panic!("a delta expected");
            };
            let rows: usize = d.services.iter().map(|s| s.real_servers.len()).sum();
            if rounds == 0 {
                // State changes (2), the new row, the first rotation's counter rows.
                let changed: Vec<&RealServerReport> = d
                    .services
                    .iter()
                    .flat_map(|s| &s.real_servers)
                    .filter(|r| !r.healthy || r.health.as_ref().is_some_and(|h| h.flaps == 1))
                    .collect();
                assert_eq!(changed.len(), 2);
                assert_eq!(rows, 3 + COUNTER_ROWS_PER_DELTA);
                assert_eq!(d.removed_services.len(), 1);
                assert_eq!(
                    d.services.iter().filter(|s| !s.removed.is_empty()).count(),
                    1
                );
            }
            if rows == 0 {
                break;
            }
            held = d.apply(&held).expect("fits what the server holds");
            seq += 1;
            deltas.delta_accepted(&d, seq);
            rounds += 1;
            assert!(rounds < 6, "the rotation reaches every row");
        }
        // Every change has travelled: the server's report is the agent's.
        assert_eq!(held, now);
        assert_eq!(rounds, 3, "4,900 busy rows take three deltas");
    }

    #[test]
    fn full_reports_at_start_on_request_periodically_and_for_big_changes() {
        let base = site(10, 100);
        let mut deltas = ReportDeltas::default();
        let t0 = Instant::now();
        assert_eq!(deltas.next(&base, t0), Outgoing::Full);
        // A server that predates deltas numbers nothing: full again.
        deltas.full_accepted(base.clone(), None, t0);
        assert_eq!(deltas.next(&base, t0), Outgoing::Full);
        deltas.full_accepted(base.clone(), Some(5), t0);
        assert!(matches!(deltas.next(&base, t0), Outgoing::Delta(d) if d.base == 5));
        assert_eq!(deltas.next(&base, t0 + FULL_REPORT_EVERY), Outgoing::Full);
        let mut down = base.clone();
        for s in &mut down.services {
            for r in &mut s.real_servers {
                r.healthy = false;
            }
        }
        assert_eq!(deltas.next(&down, t0), Outgoing::Full, "all rows changed");
        deltas.send_full();
        assert!(!deltas.has_basis());
        assert_eq!(deltas.next(&base, t0), Outgoing::Full);
    }
}
