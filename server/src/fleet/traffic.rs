//! Traffic history: what the IPVS counters in agent reports moved by, per service and per real server, kept in
//! buckets (10 s for an hour, 5 min for a week) for the dashboard's graphs, the traffic API and `/metrics`.
//!
//! Each report's counters are compared with the same series' counters from the node's previous report (kept in
//! memory per node and series, so a report that carries only what changed works as well as a full one); the
//! difference over the time between the two is one sample. A counter that went down was reset (a destination
//! re-added, a node rebooted): the sample counts from zero, never negative. A sample spanning more than
//! `MAX_SAMPLE_SPAN_MS` (a node that was away) is a gap, not an average over the absence. The samples of one
//! report go to the database in one statement (10 s buckets), inside the report's own transaction; retention
//! folds complete 5 min buckets from them (`prune_traffic`), and readers of the 5 min views fold the last hour
//! themselves (`coarse_view`), so those views are never behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use lbfleet_proto::AgentReport;
use serde::Serialize;

use super::{no_cluster, Fleet, Result};
use crate::store::events::{EventFilter, EventKind};
use crate::store::nodes::NodeKey;
use crate::store::traffic::TrafficPoint;
use crate::store::{self, StoreError};

/// The fine step: 10 s buckets, kept `FINE_KEEP_MS`.
pub const FINE_STEP_S: i64 = 10;
pub const FINE_KEEP_MS: i64 = 3600 * 1000;
/// The coarse step: 5 min buckets, kept `COARSE_KEEP_MS`.
pub const COARSE_STEP_S: i64 = 300;
pub const COARSE_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;
// `store::traffic::downsample` spells both steps out in its SQL.
const _: () = assert!(FINE_STEP_S == 10 && COARSE_STEP_S == 300);

/// Longest time one sample may cover; a longer one is a gap in the graph.
pub const MAX_SAMPLE_SPAN_MS: i64 = 15 * 60 * 1000;
/// Real-server series recorded per node and report (the first in report order); services are always recorded.
/// With both steps this bounds a node's rows: (services + 1,000) x (360 + 2,016).
pub const MAX_REAL_SERVER_SERIES: usize = 1000;
/// Bounds of the whole table, enforced by retention (whole oldest buckets go first).
pub const DEFAULT_MAX_ROWS: i64 = 2_000_000;
pub const DEFAULT_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Largest delta one sample may add (keeps the sums far from i64 overflow whatever a report claims).
const MAX_DELTA: u64 = 1 << 48;

/// One series' counters, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What identifies a series within a node: the service and the real server ("" for the service itself).
pub type SeriesKey = (String, String);

/// `tcp/198.18.0.10:80` (`tcp/[2001:2::10]:80` for IPv6).
pub fn service_key(protocol: &str, vip: &str, port: u16) -> String {
    format!("{protocol}/{}", socket(vip, port))
}

pub(super) fn socket(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The series of a report with their counters: each service, then its real servers (at most
/// `MAX_REAL_SERVER_SERIES` of those in all).
pub fn report_series(report: &AgentReport) -> Vec<(SeriesKey, Counters)> {
    let mut out = Vec::new();
    let mut real_servers = 0usize;
    for s in &report.services {
        let service = service_key(s.protocol.as_str(), &s.vip, s.port);
        out.push((
            (service.clone(), String::new()),
            Counters {
                connections: s.connections,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
            },
        ));
        for r in &s.real_servers {
            if real_servers >= MAX_REAL_SERVER_SERIES {
                break;
            }
            real_servers += 1;
            out.push((
                (service.clone(), socket(&r.address, r.port)),
                Counters {
                    connections: r.connections,
                    bytes_in: r.bytes_in,
                    bytes_out: r.bytes_out,
                },
            ));
        }
    }
    out
}

/// One sample: how much a series' counters moved over `span_ms` ending at the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub key: SeriesKey,
    pub span_ms: i64,
    pub delta: Counters,
}

/// The counters last seen per series of one node, with when.
pub type NodeBaseline = HashMap<SeriesKey, (Counters, i64)>;

/// The samples of one report at `now_ms` against the node's baseline, which it updates. A series seen for the
/// first time (or after a gap) only sets its baseline. A report at the same millisecond as the previous one
/// changes nothing (no time passed to divide by).
pub fn take_samples(
    baseline: &mut NodeBaseline,
    now_ms: i64,
    series: Vec<(SeriesKey, Counters)>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for (key, now) in series {
        match baseline.get(&key) {
            Some(&(_, at)) if now_ms <= at => continue,
            Some(&(before, at)) if now_ms - at <= MAX_SAMPLE_SPAN_MS => {
                let reset = now.connections < before.connections
                    || now.bytes_in < before.bytes_in
                    || now.bytes_out < before.bytes_out;
                // After a reset the counters started from zero within the span: what they show now is what
                // moved since.
                let from = if reset { Counters::default() } else { before };
                out.push(Sample {
                    key: key.clone(),
                    span_ms: now_ms - at,
                    delta: Counters {
                        connections: (now.connections - from.connections).min(MAX_DELTA),
                        bytes_in: (now.bytes_in - from.bytes_in).min(MAX_DELTA),
                        bytes_out: (now.bytes_out - from.bytes_out).min(MAX_DELTA),
                    },
                });
            }
            _ => {}
        }
        baseline.insert(key, (now, now_ms));
    }
    out
}

/// The rows the samples of one report add: each sample into its 10 s bucket (retention folds those into 5 min
/// buckets, `downsample_traffic`).
pub fn points(cluster: &str, node_id: i64, now_ms: i64, samples: &[Sample]) -> Vec<TrafficPoint> {
    let step_ms = FINE_STEP_S * 1000;
    let bucket_ms = now_ms.div_euclid(step_ms) * step_ms;
    samples
        .iter()
        .map(|s| TrafficPoint {
            cluster: cluster.to_owned(),
            node_id,
            service: s.key.0.clone(),
            real_server: s.key.1.clone(),
            step_s: FINE_STEP_S,
            bucket_ms,
            span_ms: s.span_ms,
            connections: s.delta.connections as i64,
            bytes_in: s.delta.bytes_in as i64,
            bytes_out: s.delta.bytes_out as i64,
        })
        .collect()
}

/// The first 5 min bucket whose 10 s buckets are all still kept at `now_ms`: from there on the fine rows say
/// everything about a coarse bucket.
pub fn fine_floor(now_ms: i64) -> i64 {
    let coarse_ms = COARSE_STEP_S * 1000;
    ((now_ms - FINE_KEEP_MS).div_euclid(coarse_ms) + 1) * coarse_ms
}

/// Coarse rows as a reader should see them at `now_ms`: the stored 5 min rows before `fine_floor`, and from
/// there on the 10 s rows summed into 5 min buckets (fresher than the last downsampling run, the bucket still
/// filling included).
pub fn coarse_view(
    coarse: Vec<TrafficPoint>,
    fine: &[TrafficPoint],
    now_ms: i64,
) -> Vec<TrafficPoint> {
    let floor = fine_floor(now_ms);
    let coarse_ms = COARSE_STEP_S * 1000;
    let mut out: Vec<TrafficPoint> = coarse.into_iter().filter(|r| r.bucket_ms < floor).collect();
    let mut folded: BTreeMap<(i64, i64, String, String), TrafficPoint> = BTreeMap::new();
    for r in fine.iter().filter(|r| r.bucket_ms >= floor) {
        let bucket_ms = r.bucket_ms.div_euclid(coarse_ms) * coarse_ms;
        let p = folded
            .entry((
                bucket_ms,
                r.node_id,
                r.service.clone(),
                r.real_server.clone(),
            ))
            .or_insert_with(|| TrafficPoint {
                step_s: COARSE_STEP_S,
                bucket_ms,
                span_ms: 0,
                connections: 0,
                bytes_in: 0,
                bytes_out: 0,
                ..r.clone()
            });
        p.span_ms = p.span_ms.saturating_add(r.span_ms);
        p.connections = p.connections.saturating_add(r.connections);
        p.bytes_in = p.bytes_in.saturating_add(r.bytes_in);
        p.bytes_out = p.bytes_out.saturating_add(r.bytes_out);
    }
    out.extend(folded.into_values());
    out
}

/// Every node's baseline, by node id.
#[derive(Debug, Default)]
pub(super) struct Baselines(Mutex<HashMap<i64, NodeBaseline>>);

impl Baselines {
    fn take(
        &self,
        node_id: i64,
        now_ms: i64,
        report: &AgentReport,
        only: Option<&HashSet<SeriesKey>>,
    ) -> Vec<Sample> {
        let Ok(mut all) = self.0.lock() else {
            return Vec::new();
        };
        let baseline = all.entry(node_id).or_default();
        let mut series = report_series(report);
        if let Some(only) = only {
            series.retain(|(k, _)| only.contains(k));
        }
        let samples = take_samples(baseline, now_ms, series);
        // Series not reported for longer than a sample may span are forgotten (a removed service, a node
        // reassigned): the map stays as small as what nodes report.
        baseline.retain(|_, (_, at)| now_ms - *at <= MAX_SAMPLE_SPAN_MS);
        samples
    }

    fn forget_idle(&self, now_ms: i64) {
        if let Ok(mut all) = self.0.lock() {
            all.retain(|_, b| b.values().any(|(_, at)| now_ms - *at <= MAX_SAMPLE_SPAN_MS));
        }
    }
}

/// A time window of the history: the last hour at 10 s, the last day or week at 5 min.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TrafficRange {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
}

impl TrafficRange {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "1h" => Some(Self::Hour),
            "24h" | "1d" => Some(Self::Day),
            "7d" => Some(Self::Week),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
        }
    }
    pub fn step_s(self) -> i64 {
        match self {
            Self::Hour => FINE_STEP_S,
            Self::Day | Self::Week => COARSE_STEP_S,
        }
    }
    pub fn span_ms(self) -> i64 {
        match self {
            Self::Hour => 3600 * 1000,
            Self::Day => 24 * 3600 * 1000,
            Self::Week => COARSE_KEEP_MS,
        }
    }
}

/// One bucket of a series: rates (per second, over the time the counters covered) and the counts behind them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatePoint {
    /// Start of the bucket, ms since the epoch.
    pub at_ms: i64,
    pub connections_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub connections: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// One series: a service (summed over the cluster's nodes) or a real server of one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficSeries {
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_server: Option<String>,
    pub points: Vec<RatePoint>,
}

/// A VRRP change or a health transition, to mark on the time axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficMark {
    pub at_ms: i64,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub text: String,
}

/// The history of a cluster's services or of a node's real servers over one range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    pub range: TrafficRange,
    pub step_s: i64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub series: Vec<TrafficSeries>,
    pub marks: Vec<TrafficMark>,
}

/// Sums rows into series: per (service, real server) and bucket, the rates of each node's row added up (each
/// node's deltas divided by the time they cover), the counts added up.
pub fn series_of(rows: &[TrafficPoint], with_real_server: bool) -> Vec<TrafficSeries> {
    let mut by: BTreeMap<(String, String), BTreeMap<i64, RatePoint>> = BTreeMap::new();
    for r in rows {
        let p = by
            .entry((r.service.clone(), r.real_server.clone()))
            .or_default()
            .entry(r.bucket_ms)
            .or_insert(RatePoint {
                at_ms: r.bucket_ms,
                connections_per_s: 0.0,
                bytes_in_per_s: 0.0,
                bytes_out_per_s: 0.0,
                connections: 0,
                bytes_in: 0,
                bytes_out: 0,
            });
        if r.span_ms > 0 {
            let secs = r.span_ms as f64 / 1000.0;
            p.connections_per_s += r.connections as f64 / secs;
            p.bytes_in_per_s += r.bytes_in as f64 / secs;
            p.bytes_out_per_s += r.bytes_out as f64 / secs;
        }
        p.connections = p.connections.saturating_add(r.connections);
        p.bytes_in = p.bytes_in.saturating_add(r.bytes_in);
        p.bytes_out = p.bytes_out.saturating_add(r.bytes_out);
    }
    by.into_iter()
        .map(|((service, real_server), points)| TrafficSeries {
            service,
            real_server: with_real_server.then_some(real_server),
            points: points.into_values().collect(),
        })
        .collect()
}

/// Most marks one answer carries, per kind.
const MAX_MARKS: i64 = 200;

impl Fleet {
    /// Records the traffic samples of a report, inside the report's transaction (one statement).
    pub(super) async fn record_traffic(
        &self,
        conn: &mut store::Conn,
        cluster: Option<&str>,
        node_id: i64,
        report: &AgentReport,
        only: Option<&HashSet<SeriesKey>>,
    ) -> Result<(), StoreError> {
        let now = store::now_ms();
        let samples = self.traffic.take(node_id, now, report, only);
        // A node outside any cluster keeps its baseline (it may be assigned in a moment) but writes nothing.
        let Some(cluster) = cluster else {
            return Ok(());
        };
        if samples.is_empty() {
            return Ok(());
        }
        store::traffic::add(conn, &points(cluster, node_id, now, &samples)).await
    }

    /// A cluster's services over `range`, with the VRRP and health events of its nodes in that time; only the
    /// `busiest` services (by connections in the last hour) when given, so a page that draws a few does not
    /// read a cluster's hundreds.
    pub async fn cluster_traffic(
        &self,
        name: &str,
        range: TrafficRange,
        busiest: Option<usize>,
    ) -> Result<Traffic> {
        let to_ms = store::now_ms();
        let from_ms = to_ms - range.span_ms();
        let mut conn = self.store.read().await?;
        if !store::clusters::exists(&mut conn, name).await? {
            return Err(no_cluster(name));
        }
        // The busiest services of the last hour, else of the range (a week with a quiet last hour).
        let only = match busiest {
            None => None,
            Some(n) => {
                let limit = i64::try_from(n).unwrap_or(i64::MAX);
                let hour = to_ms - FINE_KEEP_MS;
                let mut keep =
                    store::traffic::busiest_services(&mut conn, name, FINE_STEP_S, hour, limit)
                        .await?;
                if keep.is_empty() && range.step_s() == COARSE_STEP_S {
                    keep = store::traffic::busiest_services(
                        &mut conn,
                        name,
                        COARSE_STEP_S,
                        from_ms,
                        limit,
                    )
                    .await?;
                }
                Some(keep)
            }
        };
        let only = only.as_deref();
        let mut rows =
            store::traffic::cluster_services(&mut conn, name, range.step_s(), from_ms, only)
                .await?;
        if range.step_s() == COARSE_STEP_S {
            let floor = fine_floor(to_ms);
            let fine =
                store::traffic::cluster_services(&mut conn, name, FINE_STEP_S, floor, only).await?;
            rows = coarse_view(rows, &fine, to_ms);
        }
        drop(conn);
        let marks = self
            .traffic_marks(Some(name.to_owned()), None, from_ms)
            .await?;
        Ok(Traffic {
            range,
            step_s: range.step_s(),
            from_ms,
            to_ms,
            series: series_of(&rows, false),
            marks,
        })
    }

    /// A node's real servers over `range`, with the node's VRRP and health events in that time.
    pub async fn node_traffic(&self, key: &NodeKey, range: TrafficRange) -> Result<Traffic> {
        let to_ms = store::now_ms();
        let from_ms = to_ms - range.span_ms();
        let mut conn = self.store.read().await?;
        let node = Self::node_in(&mut conn, key).await?;
        let mut rows =
            store::traffic::node_real_servers(&mut conn, node.id, range.step_s(), from_ms).await?;
        if range.step_s() == COARSE_STEP_S {
            let fine = store::traffic::node_real_servers(
                &mut conn,
                node.id,
                FINE_STEP_S,
                fine_floor(to_ms),
            )
            .await?;
            rows = coarse_view(rows, &fine, to_ms);
        }
        drop(conn);
        let marks = self.traffic_marks(None, Some(node.id), from_ms).await?;
        Ok(Traffic {
            range,
            step_s: range.step_s(),
            from_ms,
            to_ms,
            series: series_of(&rows, true),
            marks,
        })
    }

    async fn traffic_marks(
        &self,
        cluster: Option<String>,
        node_id: Option<i64>,
        since: i64,
    ) -> Result<Vec<TrafficMark>> {
        let mut marks = Vec::new();
        for kind in [EventKind::Vrrp, EventKind::Health] {
            let rows = self
                .events(&EventFilter {
                    since: Some(since),
                    kind: Some(kind),
                    node_id,
                    cluster: cluster.clone(),
                    before_id: None,
                    limit: MAX_MARKS,
                })
                .await?;
            marks.extend(rows.into_iter().map(|e| TrafficMark {
                at_ms: e.at,
                kind: kind.as_str().to_owned(),
                node: e.node,
                text: e.message,
            }));
        }
        marks.sort_by_key(|m| m.at_ms);
        Ok(marks)
    }

    /// Every cluster's services in the current and the previous 10 s bucket (for `/metrics`, which shows each
    /// series' newest: a bucket's rate is over the time its samples cover, so a bucket still filling is as
    /// right as a complete one).
    pub async fn traffic_now(&self) -> Result<Vec<(String, TrafficSeries)>> {
        let step_ms = FINE_STEP_S * 1000;
        let since = (store::now_ms().div_euclid(step_ms) - 1) * step_ms;
        let mut conn = self.store.read().await?;
        let rows = store::traffic::services_since(&mut conn, FINE_STEP_S, since).await?;
        drop(conn);
        let mut by: BTreeMap<String, Vec<TrafficPoint>> = BTreeMap::new();
        for r in rows {
            by.entry(r.cluster.clone()).or_default().push(r);
        }
        Ok(by
            .into_iter()
            .flat_map(|(cluster, rows)| {
                series_of(&rows, false)
                    .into_iter()
                    .map(move |s| (cluster.clone(), s))
            })
            .collect())
    }

    /// Folds the 10 s buckets into 5 min buckets, deletes history older than each step keeps, then the oldest buckets past `max_rows` or `max_bytes`;
    /// forgets baselines of nodes that stopped reporting. The number of rows deleted.
    pub async fn prune_traffic(
        &self,
        now_ms: i64,
        max_rows: i64,
        max_bytes: i64,
    ) -> Result<u64, StoreError> {
        self.traffic.forget_idle(now_ms);
        let mut tx = self.store.begin().await?;
        // First the complete 5 min buckets whose 10 s rows are all still there (again each run: the sums
        // replace what an earlier run wrote, so runs on several servers agree), then the age limits.
        let coarse_ms = COARSE_STEP_S * 1000;
        store::traffic::downsample(
            &mut tx,
            fine_floor(now_ms),
            now_ms.div_euclid(coarse_ms) * coarse_ms,
        )
        .await?;
        let mut n =
            store::traffic::prune_older(&mut tx, FINE_STEP_S, now_ms - FINE_KEEP_MS).await?;
        n += store::traffic::prune_older(&mut tx, COARSE_STEP_S, now_ms - COARSE_KEEP_MS).await?;
        store::commit(tx).await?;
        // The bounds need a pass over the whole table: counted on a read connection first, so the write lock
        // (which reports wait for) is only taken when something must go.
        let (rows, bytes) = self.traffic_totals().await?;
        if rows > max_rows || bytes > max_bytes {
            let mut tx = self.store.begin().await?;
            n += store::traffic::prune_over(&mut tx, max_rows, max_bytes).await?;
            store::commit(tx).await?;
        }
        Ok(n)
    }

    /// The history's rows and bytes as the bounds count them.
    pub async fn traffic_totals(&self) -> Result<(i64, i64), StoreError> {
        let mut conn = self.store.read().await?;
        store::traffic::totals(&mut conn).await
    }
}

#[cfg(test)]
mod tests;
