//! The benchmark's table: median MiB/s per case and peer, and lbfleet's ratio to each peer.

use super::*;

pub(super) fn report(
    args: &Args,
    cases: &[Case],
    ns: &str,
    elapsed: Duration,
    root: &Path,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nbench-tftp: {} MiB file, median of {} runs per cell, netns {ns} (lo only), {:.0} s of transfers",
        args.size_mib,
        args.runs,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "served from {} by lbfleet {LBFLEET_ADDR}:69 (HTTP :{HTTP_PORT}), dnsmasq {DNSMASQ_ADDR}:69, tftpd-hpa {TFTPD_HPA_ADDR}:69\n",
        root.display()
    );
    let _ = writeln!(
        o,
        "| case | lbfleet MiB/s | dnsmasq MiB/s | tftpd-hpa MiB/s | lbfleet/dnsmasq | lbfleet/tftpd-hpa |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    let mut worst_lockstep = f64::INFINITY;
    let mut worst_window = f64::INFINITY;
    let mut notes = Vec::new();
    for c in cases {
        let med: Vec<Option<f64>> = Peer::ALL
            .iter()
            .map(|p| {
                c.peers
                    .iter()
                    .position(|q| q == p)
                    .map(|i| median(&c.samples[i]))
            })
            .collect();
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let ratio = |i: usize| match (med[0], med[i]) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let rs: Vec<Option<f64>> = vec![ratio(1), ratio(2)];
        for r in rs.iter().flatten() {
            match c.method {
                Method::CurlTftp { .. } => worst_lockstep = worst_lockstep.min(*r),
                Method::Windowed { .. } => worst_window = worst_window.min(*r),
                Method::Http => {}
            }
        }
        let mut label = c.label.clone();
        if let Method::Windowed { .. } = c.method {
            let granted: Vec<String> = c
                .peers
                .iter()
                .zip(&c.granted)
                .map(|(p, g)| format!("{} {}", p.name(), g.unwrap_or(1)))
                .collect();
            label.push_str(" *");
            let note = format!(
                "* windowsize granted: {} (a peer that grants none runs lock-step)",
                granted.join(", ")
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(med[0]),
            cell(med[1]),
            cell(med[2]),
            rs[0].map_or("-".to_owned(), |r| format!("{r:.2}x")),
            rs[1].map_or("-".to_owned(), |r| format!("{r:.2}x")),
        );
    }
    for n in notes {
        let _ = writeln!(o, "\n{n}");
    }
    let verdict = |v: f64, goal: f64| {
        if v >= goal {
            "met"
        } else {
            "NOT met"
        }
    };
    // The windowsize goal compares with the peers as PXE clients meet them: lock-step (curl), same
    // blksize and stream count.
    let mut worst_window_vs_curl = f64::INFINITY;
    for c in cases {
        let Method::Windowed { blksize, .. } = c.method else {
            continue;
        };
        let curl = cases.iter().find(|d| {
            d.streams == c.streams
                && matches!(d.method, Method::CurlTftp { blksize: Some(b) } if b == blksize)
        });
        if let Some(curl) = curl {
            let ours = median(&c.samples[0]);
            for i in 1..curl.peers.len() {
                worst_window_vs_curl = worst_window_vs_curl.min(ours / median(&curl.samples[i]));
            }
        }
    }
    let _ = writeln!(
        o,
        "\ngoal lock-step (curl tftp): lbfleet >= 1.0x each peer; worst ratio {worst_lockstep:.2}x: {}",
        verdict(worst_lockstep, 1.0)
    );
    let _ = writeln!(
        o,
        "goal windowsize-{WINDOW}: lbfleet with the windowsize-{WINDOW} client >= 3x each peer with curl (lock-step, same blksize and streams); worst ratio {worst_window_vs_curl:.2}x: {}",
        verdict(worst_window_vs_curl, 3.0)
    );
    let _ = writeln!(
        o,
        "(same client against every server, peers lock-step because they grant no window: worst ratio {worst_window:.2}x)"
    );
    o
}
