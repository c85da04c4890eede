//! The cluster page's real-server tables, paged and searchable: a cluster of 300 services x 100 real servers
//! would otherwise be one page of 30,000 rows (each with its forms). A page holds `PER_PAGE` rows over all
//! services, in spec order; a search keeps the services whose key matches (with all their real servers) and
//! the real servers whose `address:port` matches.

use lbfleet_proto::ClusterSpec;
use serde::Deserialize;

use crate::fleet::socket_text;

/// Real-server rows on one page of the cluster page.
pub const PER_PAGE: usize = 200;

/// Longest search text kept (longer input is cut: no address or service key is longer).
const MAX_QUERY: usize = 128;

/// `?q=TEXT&page=N` of the cluster page. Both optional; a page that is not a number is page 1.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RsQuery {
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub page: Option<String>,
}

/// Which real servers of which services one page shows, and where it is in the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsPage {
    /// (service index in the spec, indices of its real servers on this page), in spec order.
    pub services: Vec<(usize, Vec<usize>)>,
    /// The search text as applied (trimmed, cut), empty for none.
    pub query: String,
    /// Rows that match (a service without real servers counts as one row: its "no real servers" line).
    pub total: usize,
    /// Real servers that match.
    pub matching_servers: usize,
    /// This page, from 1, and how many there are (at least 1).
    pub page: usize,
    pub pages: usize,
    /// Rows shown: `first..=last` (1-based; 0 and 0 when nothing matches).
    pub first: usize,
    pub last: usize,
}

impl RsPage {
    /// Whether the page needs its navigation (more than one page, or a search in force).
    pub fn paged(&self) -> bool {
        self.pages > 1 || !self.query.is_empty()
    }
    pub fn has_prev(&self) -> bool {
        self.page > 1
    }
    pub fn has_next(&self) -> bool {
        self.page < self.pages
    }
    pub fn prev(&self) -> usize {
        self.page.saturating_sub(1).max(1)
    }
    pub fn next(&self) -> usize {
        (self.page + 1).min(self.pages)
    }
}

/// The page `query` asks for, over `spec`'s services and real servers.
pub fn page(spec: &ClusterSpec, query: &RsQuery, per_page: usize) -> RsPage {
    let per_page = per_page.max(1);
    let mut text = query.q.as_deref().unwrap_or("").trim().to_lowercase();
    if text.len() > MAX_QUERY {
        let mut end = MAX_QUERY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    // Every matching row, as (service, Some(real server) or None for a service shown without any).
    let mut rows: Vec<(usize, Option<usize>)> = Vec::new();
    let mut matching_servers = 0;
    for (si, s) in spec.services.iter().enumerate() {
        let service_matches = text.is_empty() || {
            let key = format!("{}:{}", s.protocol, socket_text(&s.vip, s.port));
            let label = format!("{} {}", s.protocol, socket_text(&s.vip, s.port));
            key.to_lowercase().contains(&text) || label.to_lowercase().contains(&text)
        };
        let before = rows.len();
        for (ri, r) in s.real_servers.iter().enumerate() {
            if service_matches
                || socket_text(&r.address, r.port)
                    .to_lowercase()
                    .contains(&text)
            {
                rows.push((si, Some(ri)));
            }
        }
        matching_servers += rows.len() - before;
        if rows.len() == before && service_matches {
            rows.push((si, None));
        }
    }
    let total = rows.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = query
        .page
        .as_deref()
        .and_then(|p| p.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let start = (page - 1) * per_page;
    let end = (start + per_page).min(total);
    let mut services: Vec<(usize, Vec<usize>)> = Vec::new();
    for (si, ri) in rows.get(start..end).unwrap_or(&[]) {
        match services.last_mut() {
            Some((last, list)) if *last == *si => list.extend(ri),
            _ => services.push((*si, ri.iter().copied().collect())),
        }
    }
    RsPage {
        services,
        query: text,
        total,
        matching_servers,
        page,
        pages,
        first: if total == 0 { 0 } else { start + 1 },
        last: end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(services: usize, servers: usize) -> ClusterSpec {
        let services: Vec<serde_json::Value> = (0..services)
            .map(|s| {
                serde_json::json!({
                    "vip": "198.18.0.10", "port": 1000 + s, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
                    "real_servers": (0..servers).map(|r| serde_json::json!({
                        "address": format!("198.18.{}.{}", 2 + r / 250, 1 + r % 250), "port": 8000 + s
                    })).collect::<Vec<_>>()
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/32"], "services": services
        }))
        .expect("spec")
    }

    fn q(text: &str, page: &str) -> RsQuery {
        RsQuery {
            q: Some(text.into()),
            page: Some(page.into()),
        }
    }

    #[test]
    fn thirty_thousand_real_servers_are_paged_in_spec_order() {
        let s = spec(300, 100);
        let p = page(&s, &RsQuery::default(), PER_PAGE);
        assert_eq!(
            (p.total, p.pages, p.page, p.first, p.last),
            (30_000, 150, 1, 1, 200)
        );
        assert_eq!(p.services.len(), 2, "rows 1-200 are services 0 and 1");
        assert_eq!(p.services[0], (0, (0..100).collect()));
        let p = page(&s, &q("", "150"), PER_PAGE);
        assert_eq!((p.first, p.last, p.services[1].0), (29_801, 30_000, 299));
        assert!(!p.has_next() && p.has_prev() && p.paged());
        // Out of range and nonsense fall back to the nearest page.
        assert_eq!(page(&s, &q("", "9999"), PER_PAGE).page, 150);
        assert_eq!(page(&s, &q("", "x"), PER_PAGE).page, 1);
        assert_eq!(page(&s, &q("", "0"), PER_PAGE).page, 1);
        // A page boundary inside a service splits its rows.
        let p = page(&s, &q("", "2"), 150);
        assert_eq!(p.services[0], (1, (50..100).collect()));
        assert_eq!(p.services[1], (2, (0..100).collect()));
    }

    #[test]
    fn a_search_keeps_matching_services_and_real_servers() {
        let s = spec(300, 100);
        // A real server's address:port: it is in one service only (ports differ per service).
        let p = page(&s, &q(" 198.18.2.7:8042 ", "1"), PER_PAGE);
        assert_eq!(p.services, vec![(42, vec![6])]);
        assert_eq!(
            (p.total, p.matching_servers, p.query.as_str()),
            (1, 1, "198.18.2.7:8042")
        );
        // A service key: all its real servers.
        let p = page(&s, &q("TCP:198.18.0.10:1299", "1"), PER_PAGE);
        assert_eq!(p.services, vec![(299, (0..100).collect())]);
        // Nothing matches: an empty page, still page 1 of 1.
        let p = page(&s, &q("203.0.113.1", "3"), PER_PAGE);
        assert_eq!((p.total, p.page, p.pages, p.first, p.last), (0, 1, 1, 0, 0));
        assert!(p.services.is_empty() && p.paged());
    }

    #[test]
    fn a_small_cluster_is_one_page_and_services_without_servers_show() {
        let mut s = spec(2, 3);
        s.services[1].real_servers.clear();
        let p = page(&s, &RsQuery::default(), PER_PAGE);
        assert_eq!(p.services, vec![(0, vec![0, 1, 2]), (1, vec![])]);
        assert!(!p.paged());
    }
}
