//! The traffic graphs of the cluster and node pages: server-rendered SVG (no script, no library) drawn from the
//! traffic history (`fleet::traffic`). This file does the geometry (scales, ticks, paths, event marks); the
//! template `traffic.html` only writes the numbers out, so askama escapes every label.

use crate::fleet::traffic::{RatePoint, Traffic, TrafficRange, TrafficSeries};

/// `?range=` of the cluster and node pages.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TrafficQuery {
    pub range: Option<String>,
}

/// The page's range: what `?range=` names, the last hour when it names nothing known.
pub fn range_of(text: Option<&str>) -> TrafficRange {
    text.and_then(TrafficRange::parse)
        .unwrap_or(TrafficRange::Hour)
}

/// Width and height of a chart's view box, and the plot area inside it (room for axis labels).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Most series drawn per chart (the busiest); the JSON API has every one.
pub const MAX_LINES: usize = 8;

/// A tick on an axis: where (view-box units) and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub at: String,
    pub label: String,
}

/// One series drawn: its legend text, colour class and SVG path (one `M ... L ...` run per stretch without a
/// gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub class: String,
    pub path: String,
    pub peak: String,
}

/// An event on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub x: String,
    pub class: &'static str,
    pub text: String,
}

/// One chart: a metric of every drawn series over the range.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub desc: String,
    pub unit: String,
    pub y_ticks: Vec<Tick>,
    pub lines: Vec<Line>,
}

/// What the page's traffic section shows: the range links, the time axis and marks shared by both charts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPanel {
    /// `cluster` or `node`: the region's id and the charts' ids start with it.
    pub scope: &'static str,
    /// "services of ext" / "real servers of lb-01".
    pub subject: String,
    pub range: &'static str,
    pub ranges: Vec<(&'static str, &'static str, bool)>,
    pub step: String,
    pub empty: bool,
    pub x_ticks: Vec<Tick>,
    pub marks: Vec<Mark>,
    pub charts: Vec<Chart>,
    pub left_out: usize,
    pub width: String,
    pub height: String,
    pub plot: (String, String, String, String),
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten), for the top of the y axis.
pub fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// How many equal steps the y axis of height `top` (from `nice_ceiling`) gets, so each tick is round too: 1 in
/// fifths (0.2), 2 in quarters (0.5), 5 in fifths (1).
pub fn divisions(top: f64) -> u32 {
    let mantissa = top / 10f64.powf(top.log10().floor());
    if (mantissa - 2.0).abs() < 1e-9 {
        4
    } else {
        5
    }
}

/// A rate for people: `12.5/s`, `3.2 kB/s`, `1.1 MB/s`.
pub fn rate_text(v: f64, bytes: bool) -> String {
    let (v, prefix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let num = if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    };
    if bytes {
        format!("{num} {prefix}B/s")
    } else {
        format!("{num}{prefix}/s")
    }
}

/// `HH:MM` (UTC) for the hour and day, `MM-DD` for the week.
fn time_label(ms: i64, range: TrafficRange) -> String {
    let text = crate::clock::time_text(ms);
    match range {
        TrafficRange::Week => text.get(5..10).unwrap_or("").to_owned(),
        _ => text.get(11..16).unwrap_or("").to_owned(),
    }
}

struct Frame {
    from: i64,
    to: i64,
    step_ms: i64,
}

impl Frame {
    fn x(&self, ms: i64) -> f64 {
        let span = (self.to - self.from).max(1) as f64;
        LEFT + (ms - self.from) as f64 / span * (WIDTH - LEFT - RIGHT)
    }
}

fn y(v: f64, top: f64) -> f64 {
    let h = HEIGHT - TOP - BOTTOM;
    HEIGHT - BOTTOM - (v / top).clamp(0.0, 1.0) * h
}

/// The SVG path of one metric of a series: a new `M` after every gap (a bucket missing), each point at the
/// middle of its bucket.
fn path(points: &[RatePoint], f: &Frame, top: f64, metric: fn(&RatePoint) -> f64) -> String {
    let mut d = String::new();
    let mut prev: Option<i64> = None;
    for p in points.iter().filter(|p| p.at_ms >= f.from - f.step_ms) {
        let x = f.x(p.at_ms + f.step_ms / 2).clamp(LEFT, WIDTH - RIGHT);
        let cmd = match prev {
            Some(t) if p.at_ms - t <= f.step_ms => 'L',
            _ => 'M',
        };
        if !d.is_empty() {
            d.push(' ');
        }
        d.push(cmd);
        d.push_str(&format!("{},{}", n(x), n(y(metric(p), top))));
        prev = Some(p.at_ms);
    }
    d
}

fn series_label(s: &TrafficSeries) -> String {
    match &s.real_server {
        Some(rs) => format!("{rs} ({})", s.service),
        None => s.service.clone(),
    }
}

type Metric = fn(&RatePoint) -> f64;

fn chart(
    id: String,
    title: String,
    series: &[&TrafficSeries],
    f: &Frame,
    metrics: &[(Metric, &str)],
    bytes: bool,
) -> Chart {
    let peak = series
        .iter()
        .flat_map(|s| s.points.iter())
        .flat_map(|p| metrics.iter().map(move |(m, _)| m(p)))
        .fold(0.0f64, f64::max);
    let top = nice_ceiling(peak);
    let parts = divisions(top);
    let y_ticks = (0..=parts)
        .map(|i| {
            let v = top * f64::from(i) / f64::from(parts);
            Tick {
                at: n(y(v, top)),
                label: rate_text(v, bytes),
            }
        })
        .collect();
    let mut lines = Vec::new();
    for (i, s) in series.iter().enumerate() {
        for (metric, suffix) in metrics {
            let peak = s.points.iter().map(metric).fold(0.0f64, f64::max);
            lines.push(Line {
                label: format!("{}{suffix}", series_label(s)),
                class: format!(
                    "s{i}{}",
                    if suffix.is_empty() || *suffix == " in" {
                        ""
                    } else {
                        " dashed"
                    }
                ),
                path: path(&s.points, f, top, *metric),
                peak: rate_text(peak, bytes),
            });
        }
    }
    let desc = if lines.is_empty() {
        "No traffic recorded in this range.".to_owned()
    } else {
        let busiest = lines
            .iter()
            .map(|l| format!("{}: peak {}", l.label, l.peak))
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "{} line(s), y axis 0 to {}. {busiest}.",
            lines.len(),
            rate_text(top, bytes)
        )
    };
    Chart {
        id,
        title,
        desc,
        unit: if bytes {
            "bytes/s".into()
        } else {
            "connections/s".into()
        },
        y_ticks,
        lines,
    }
}

/// The panel for a cluster's services (`scope` = "cluster") or a node's real servers ("node").
pub fn panel(scope: &'static str, subject: &str, t: &Traffic) -> TrafficPanel {
    let f = Frame {
        from: t.from_ms,
        to: t.to_ms,
        step_ms: t.step_s * 1000,
    };
    let total = |s: &TrafficSeries| -> i64 {
        s.points
            .iter()
            .map(|p| {
                p.connections
                    .saturating_add(p.bytes_in / 1024)
                    .saturating_add(p.bytes_out / 1024)
            })
            .sum()
    };
    let mut drawn: Vec<&TrafficSeries> = t.series.iter().filter(|s| !s.points.is_empty()).collect();
    drawn.sort_by_key(|s| std::cmp::Reverse(total(s)));
    let left_out = drawn.len().saturating_sub(MAX_LINES);
    drawn.truncate(MAX_LINES);
    // Stable colours: the drawn series in name order.
    drawn.sort_by_key(|s| series_label(s));
    let (tick_ms, range) = match t.range {
        TrafficRange::Hour => (10 * 60 * 1000, TrafficRange::Hour),
        TrafficRange::Day => (4 * 3600 * 1000, TrafficRange::Day),
        TrafficRange::Week => (24 * 3600 * 1000, TrafficRange::Week),
    };
    let first = (t.from_ms.div_euclid(tick_ms) + 1) * tick_ms;
    let x_ticks = (0..)
        .map(|i| first + i * tick_ms)
        .take_while(|ms| *ms <= t.to_ms)
        .map(|ms| Tick {
            at: n(f.x(ms)),
            label: time_label(ms, range),
        })
        .collect();
    let marks = t
        .marks
        .iter()
        .filter(|m| m.at_ms >= t.from_ms && m.at_ms <= t.to_ms)
        .map(|m| Mark {
            x: n(f.x(m.at_ms)),
            class: if m.kind == "vrrp" {
                "m-vrrp"
            } else {
                "m-health"
            },
            text: format!(
                "{} {}{}",
                crate::clock::time_text(m.at_ms),
                m.node
                    .as_deref()
                    .map(|n| format!("{n}: "))
                    .unwrap_or_default(),
                m.text
            ),
        })
        .collect();
    let what = if scope == "cluster" {
        "per service"
    } else {
        "per real server"
    };
    let when = match t.range {
        TrafficRange::Hour => "last hour",
        TrafficRange::Day => "last 24 hours",
        TrafficRange::Week => "last 7 days",
    };
    let charts = vec![
        chart(
            format!("{scope}-traffic-conns"),
            format!("New connections per second {what}, {subject}, {when}"),
            &drawn,
            &f,
            &[(|p: &RatePoint| p.connections_per_s, "")],
            false,
        ),
        chart(
            format!("{scope}-traffic-bytes"),
            format!("Bytes per second in and out {what}, {subject}, {when}"),
            &drawn,
            &f,
            &[
                (|p: &RatePoint| p.bytes_in_per_s, " in"),
                (|p: &RatePoint| p.bytes_out_per_s, " out"),
            ],
            true,
        ),
    ];
    TrafficPanel {
        scope,
        subject: subject.to_owned(),
        range: t.range.as_str(),
        ranges: [("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days")]
            .into_iter()
            .map(|(k, label)| (k, label, k == t.range.as_str()))
            .collect(),
        step: if t.step_s < 60 {
            format!("{} s", t.step_s)
        } else {
            format!("{} min", t.step_s / 60)
        },
        empty: drawn.is_empty(),
        x_ticks,
        marks,
        charts,
        left_out,
        width: n(WIDTH),
        height: n(HEIGHT),
        plot: (n(LEFT), n(TOP), n(WIDTH - RIGHT), n(HEIGHT - BOTTOM)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::traffic::TrafficMark;

    fn point(at_ms: i64, conns: f64) -> RatePoint {
        RatePoint {
            at_ms,
            connections_per_s: conns,
            bytes_in_per_s: conns * 1000.0,
            bytes_out_per_s: conns * 4000.0,
            connections: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn round_ceilings_and_rates_for_people() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(4_100_000.0), 5_000_000.0);
        assert_eq!(rate_text(12.34, false), "12.3/s");
        assert_eq!(
            (divisions(5e6), divisions(200.0), divisions(10.0)),
            (5, 4, 5)
        );
        assert_eq!(rate_text(2_500.0, true), "2.5 kB/s");
        assert_eq!(rate_text(3_000_000.0, true), "3 MB/s");
    }

    #[test]
    fn a_gap_starts_a_new_run_and_marks_sit_on_the_time_axis() {
        let t = Traffic {
            range: TrafficRange::Hour,
            step_s: 10,
            from_ms: 0,
            to_ms: 3_600_000,
            series: vec![TrafficSeries {
                service: "tcp/198.18.0.10:80".into(),
                real_server: None,
                // Two buckets, a gap of a minute, one more.
                points: vec![
                    point(600_000, 5.0),
                    point(610_000, 10.0),
                    point(680_000, 2.0),
                ],
            }],
            marks: vec![TrafficMark {
                at_ms: 1_800_000,
                kind: "vrrp".into(),
                node: Some("lb-01".into()),
                text: "VRRP MASTER -> BACKUP".into(),
            }],
        };
        let p = panel("cluster", "ext", &t);
        assert!(!p.empty);
        let conns = &p.charts[0];
        assert_eq!(conns.lines.len(), 1);
        assert_eq!(
            conns.lines[0].path.matches('M').count(),
            2,
            "{}",
            conns.lines[0].path
        );
        assert_eq!(conns.lines[0].path.matches('L').count(), 1);
        // y axis 0..10/s in fifths: the 10/s point is at the top of the plot.
        assert_eq!(conns.y_ticks.len(), 6);
        assert_eq!(conns.y_ticks.last().map(|t| t.label.as_str()), Some("10/s"));
        assert!(
            conns.lines[0].path.contains(&format!(",{}", n(TOP))),
            "{}",
            conns.lines[0].path
        );
        // Bytes: in and out per series, out dashed.
        assert_eq!(p.charts[1].lines.len(), 2);
        assert!(p.charts[1].lines[1].class.contains("dashed"));
        // The mark half-way through the hour sits half-way along the plot.
        assert_eq!(p.marks.len(), 1);
        assert_eq!(p.marks[0].x, n(LEFT + (WIDTH - LEFT - RIGHT) / 2.0));
        assert!(p.marks[0].text.contains("lb-01: VRRP MASTER -> BACKUP"));
        // Six ten-minute ticks after the start, the last at the end.
        assert_eq!(p.x_ticks.len(), 6);
        assert_eq!(p.x_ticks[0].label, "00:10");
    }

    #[test]
    fn at_most_eight_series_are_drawn_the_busiest() {
        let series = (0..12)
            .map(|i| TrafficSeries {
                service: format!("tcp/198.18.0.{i}:80"),
                real_server: None,
                points: vec![RatePoint {
                    connections: i,
                    ..point(0, i as f64)
                }],
            })
            .collect();
        let t = Traffic {
            range: TrafficRange::Hour,
            step_s: 10,
            from_ms: 0,
            to_ms: 3_600_000,
            series,
            marks: vec![],
        };
        let p = panel("cluster", "ext", &t);
        assert_eq!(p.left_out, 4);
        assert_eq!(p.charts[0].lines.len(), MAX_LINES);
        assert!(!p.charts[0]
            .lines
            .iter()
            .any(|l| l.label == "tcp/198.18.0.3:80"));
    }
}
