//! keepalived.conf export: the configuration that makes keepalived do what one node's role in a cluster does
//! (its VRRP instance with the node's state and priority, the VIPs, each service with its real servers and
//! their checks mapped back), the inverse of `mapping` (importing the export gives the cluster back). Pure: a
//! cluster spec and the node's part in, text and the list of what keepalived cannot express out.

use std::fmt::Write as _;

use lbfleet_proto::{
    CheckKind, ClusterSpec, DnsType, DownAction, ForwardMethod, HealthCheck, Protocol, Role,
    ServiceSpec,
};
use serde::Serialize;

use crate::fleet::ClusterView;

/// A node's keepalived.conf and what it could not carry.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub text: String,
    /// Settings of the cluster keepalived has no counterpart for (also written as comments at the top).
    pub not_exported: Vec<String>,
}

impl Export {
    pub fn lossless(&self) -> bool {
        self.not_exported.is_empty()
    }
}

/// The part one node plays in the cluster.
#[derive(Debug, Clone)]
pub struct NodePart<'a> {
    pub node: &'a str,
    pub role: Role,
    pub priority: u8,
}

/// Why a node's keepalived.conf cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("node {node:?} is not a member of cluster {cluster:?} (members: {members})")]
    NotMember {
        node: String,
        cluster: String,
        members: String,
    },
    #[error("node {node:?} has priority {priority}; keepalived takes 1 to 255")]
    Priority { node: String, priority: i64 },
}

/// The keepalived.conf of `node`, a member of the cluster `view` shows.
pub fn export_member(view: &ClusterView, node: &str) -> Result<Export, ExportError> {
    let Some(m) = view.members.iter().find(|m| m.node == node) else {
        let members: Vec<&str> = view.members.iter().map(|m| m.node.as_str()).collect();
        return Err(ExportError::NotMember {
            node: node.to_owned(),
            cluster: view.name.clone(),
            members: if members.is_empty() {
                "none".into()
            } else {
                members.join(", ")
            },
        });
    };
    let priority = u8::try_from(m.priority)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ExportError::Priority {
            node: node.to_owned(),
            priority: m.priority,
        })?;
    Ok(export(
        &view.name,
        &view.spec,
        &NodePart {
            node,
            role: m.role,
            priority,
        },
    ))
}

/// keepalived's default connect timeout (what the importer assumes when none is written).
const KEEPALIVED_CONNECT_TIMEOUT_MS: u32 = 5000;

/// Writes the keepalived.conf of `part` in cluster `cluster`.
pub fn export(cluster: &str, spec: &ClusterSpec, part: &NodePart<'_>) -> Export {
    let mut lost: Vec<String> = Vec::new();
    let mut body = String::new();
    let instance = word(cluster);

    // global_defs: one node runs one cluster, so the node-wide settings are the cluster's.
    let _ = writeln!(body, "global_defs {{");
    let _ = writeln!(body, "  router_id {}", word(part.node));
    let _ = writeln!(
        body,
        "  vrrp_garp_interval {}",
        seconds(spec.garp.spacing_ms)
    );
    if let Some(sync) = &spec.conn_sync {
        let _ = writeln!(
            body,
            "  lvs_sync_daemon {} {instance} id {}",
            word(&sync.interface),
            sync.sync_id
        );
    }
    let _ = writeln!(body, "}}\n");

    // The VRRP instance. keepalived clears nopreempt and preempt_delay with an initial state MASTER: then every
    // node starts BACKUP and the priorities decide, as keepalived's manual says.
    let master = part.role == Role::Active && spec.preempt && spec.preempt_delay_ms == 0;
    let _ = writeln!(body, "vrrp_instance {instance} {{");
    let _ = writeln!(body, "  state {}", if master { "MASTER" } else { "BACKUP" });
    let _ = writeln!(body, "  interface {}", word(&spec.interface));
    let _ = writeln!(body, "  virtual_router_id {}", spec.vrid);
    let _ = writeln!(body, "  priority {}", part.priority);
    let _ = writeln!(body, "  version {}", spec.vrrp_version);
    let _ = writeln!(body, "  advert_int {}", seconds(spec.advert_interval_ms));
    if !spec.preempt {
        let _ = writeln!(body, "  nopreempt");
        if spec.preempt_delay_ms > 0 {
            lost.push(format!(
                "preempt_delay_ms {}: keepalived has no preemption delay without preemption",
                spec.preempt_delay_ms
            ));
        }
    } else if spec.preempt_delay_ms > 0 {
        let _ = writeln!(body, "  preempt_delay {}", seconds(spec.preempt_delay_ms));
    }
    let _ = writeln!(body, "  garp_master_repeat {}", spec.garp.count);
    if spec.garp.refresh_ms > 0 {
        if !spec.garp.refresh_ms.is_multiple_of(1000) {
            lost.push(format!(
                "garp.refresh_ms {}: keepalived refreshes in whole seconds (written rounded up)",
                spec.garp.refresh_ms
            ));
        }
        let _ = writeln!(
            body,
            "  garp_master_refresh {}",
            spec.garp.refresh_ms.div_ceil(1000)
        );
    }
    if !spec.unicast_peers.is_empty() {
        let _ = writeln!(body, "  unicast_peer {{");
        for p in &spec.unicast_peers {
            let _ = writeln!(body, "    {}", word(p));
        }
        let _ = writeln!(body, "  }}");
    }
    let _ = writeln!(body, "  virtual_ipaddress {{");
    for v in &spec.vips {
        match &v.interface {
            Some(i) => {
                let _ = writeln!(body, "    {} dev {}", word(&v.address), word(i));
            }
            None => {
                let _ = writeln!(body, "    {}", word(&v.address));
            }
        }
    }
    let _ = writeln!(body, "  }}");
    let _ = writeln!(body, "}}");

    for svc in &spec.services {
        body.push('\n');
        virtual_server(&mut body, svc, &mut lost);
    }

    let mut text = String::new();
    let _ = writeln!(
        text,
        "# keepalived.conf of node {} ({} with priority {}) in lbfleet cluster {cluster}",
        part.node, part.role, part.priority
    );
    let _ = writeln!(
        text,
        "# written by lbfleet-server export keepalived; docs/keepalived-import.md"
    );
    for l in &lost {
        let _ = writeln!(text, "# not exported: {}", l.replace('\n', " "));
    }
    text.push('\n');
    text.push_str(&body);
    Export {
        text,
        not_exported: lost,
    }
}

fn virtual_server(out: &mut String, svc: &ServiceSpec, lost: &mut Vec<String>) {
    let what = format!(
        "service {} {}",
        svc.protocol,
        crate::fleet::socket_text(&svc.vip, svc.port)
    );
    let check = &svc.check;
    let _ = writeln!(out, "virtual_server {} {} {{", word(&svc.vip), svc.port);
    let _ = writeln!(out, "  delay_loop {}", seconds(check.interval_ms));
    let _ = writeln!(out, "  lb_algo {}", svc.scheduler);
    let _ = writeln!(
        out,
        "  lb_kind {}",
        match svc.forward {
            ForwardMethod::Nat => "NAT",
            ForwardMethod::Dr => "DR",
            ForwardMethod::Tun => "TUN",
        }
    );
    let _ = writeln!(
        out,
        "  protocol {}",
        match svc.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    );
    if svc.persistence_s > 0 {
        let _ = writeln!(out, "  persistence_timeout {}", svc.persistence_s);
        if let Some(p) = svc.persistence_prefix {
            let _ = writeln!(
                out,
                "  persistence_granularity {}",
                granularity(&svc.vip, p)
            );
        }
    } else if svc.persistence_prefix.is_some() {
        lost.push(format!(
            "{what}: persistence_prefix without persistence (keepalived ignores it)"
        ));
    }
    if let Some(s) = &check.sorry_server {
        let _ = writeln!(out, "  sorry_server {} {}", word(&s.address), s.port);
    }
    if let Some(q) = &check.quorum {
        let _ = writeln!(out, "  quorum {}", q.min_healthy);
        let _ = writeln!(out, "  hysteresis 0");
        if q.priority_drop != 60 {
            lost.push(format!(
                "{what}: quorum priority_drop {}: keepalived runs quorum_down scripts instead (imported as 60)",
                q.priority_drop
            ));
        }
        if svc.real_servers.iter().any(|r| r.weight != 1) {
            lost.push(format!(
                "{what}: quorum {} counts healthy servers; keepalived sums their weights",
                q.min_healthy
            ));
        }
    }
    if check.on_down == DownAction::Drain {
        let _ = writeln!(out, "  inhibit_on_failure");
    }
    // A service whose check is none: its timeout and fall as keepalived's defaults would give them back.
    if check.kind == CheckKind::None {
        let t = KEEPALIVED_CONNECT_TIMEOUT_MS.min(check.interval_ms);
        if check.timeout_ms != t {
            let _ = writeln!(out, "  connect_timeout {}", seconds(check.timeout_ms));
        }
    }
    for r in &svc.real_servers {
        let rs_check = check.for_real_server(&r.address, r.port);
        let _ = writeln!(out, "  real_server {} {} {{", word(&r.address), r.port);
        if r.enabled == Some(false) {
            // Drained in lbfleet: weight 0 in the kernel, connections finish; keepalived's way is weight 0.
            let _ = writeln!(out, "    # drained in lbfleet (weight {})", r.weight);
            let _ = writeln!(out, "    weight 0");
            lost.push(format!(
                "{what}: real server {} is drained (written as weight 0, imported back as weight 0)",
                crate::fleet::socket_text(&r.address, r.port)
            ));
        } else {
            let _ = writeln!(out, "    weight {}", r.weight);
        }
        checker(
            out,
            rs_check,
            check,
            &format!(
                "{what} real server {}",
                crate::fleet::socket_text(&r.address, r.port)
            ),
            lost,
        );
        let _ = writeln!(out, "  }}");
    }
    if svc.real_servers.is_empty() && check.kind != CheckKind::None {
        lost.push(format!(
            "{what}: a check without real servers (keepalived checks real servers, imported back as none)"
        ));
    }
    let _ = writeln!(out, "}}");
}

/// The checker block of one real server (nothing for a check of kind none).
fn checker(
    out: &mut String,
    c: &HealthCheck,
    service: &HealthCheck,
    what: &str,
    lost: &mut Vec<String>,
) {
    let keyword = match c.kind {
        CheckKind::None => {
            if c.interval_ms != service.interval_ms
                || c.fall != 3
                || c.rise != 1
                || c.timeout_ms != service.timeout_ms
            {
                lost.push(format!(
                    "{what}: the settings of a check of kind none (keepalived runs no checker)"
                ));
            }
            return;
        }
        CheckKind::Tcp => "TCP_CHECK",
        CheckKind::Http => "HTTP_GET",
        CheckKind::Https => "SSL_GET",
        CheckKind::Dns => "DNS_CHECK",
        CheckKind::Script => "MISC_CHECK",
    };
    let _ = writeln!(out, "    {keyword} {{");
    if c.interval_ms != service.interval_ms {
        let _ = writeln!(out, "      delay_loop {}", seconds(c.interval_ms));
    }
    if let Some(p) = c.port {
        let _ = writeln!(out, "      connect_port {p}");
    }
    match c.kind {
        CheckKind::Script => {
            let name = c.script.as_deref().unwrap_or_default();
            let _ = writeln!(
                out,
                "      misc_path {}",
                quoted(&format!("/etc/lbfleet/checks/{name}"))
            );
            let _ = writeln!(out, "      misc_timeout {}", seconds(c.timeout_ms));
        }
        _ => {
            let _ = writeln!(out, "      connect_timeout {}", seconds(c.timeout_ms));
        }
    }
    let retry = c.fall.saturating_sub(1);
    let _ = writeln!(out, "      retry {retry}");
    if retry > 0 {
        // lbfleet retries at the check interval.
        let _ = writeln!(out, "      delay_before_retry {}", seconds(c.interval_ms));
    }
    if let Some(j) = c.jitter_ms {
        let _ = writeln!(out, "      warmup {}", seconds(j));
    }
    if c.rise != 1 {
        lost.push(format!(
            "{what}: rise {}: keepalived marks a server up after one good check",
            c.rise
        ));
    }
    if c.warmup_ms > 0 {
        lost.push(format!(
            "{what}: warmup_ms {}: keepalived has no slow start",
            c.warmup_ms
        ));
    }
    match c.kind {
        CheckKind::Http | CheckKind::Https => {
            if let Some(h) = &c.host {
                let _ = writeln!(out, "      virtualhost {}", word(h));
            }
            let _ = writeln!(out, "      url {{");
            let _ = writeln!(
                out,
                "        path {}",
                word(c.path.as_deref().unwrap_or("/"))
            );
            let codes: Vec<String> = c
                .expect_status
                .iter()
                .chain(&c.expect_codes)
                .map(u16::to_string)
                .collect();
            if !codes.is_empty() {
                let _ = writeln!(out, "        status_code {}", codes.join(" "));
            }
            let _ = writeln!(out, "      }}");
            for (set, field) in [
                (c.body_contains.is_some(), "body_contains"),
                (c.sni.is_some(), "sni"),
                (c.tls_verify, "tls_verify"),
                (c.tls_ca.is_some(), "tls_ca"),
            ] {
                if set {
                    lost.push(format!(
                        "{what}: {field}: keepalived's HTTP check has no counterpart"
                    ));
                }
            }
        }
        CheckKind::Dns => {
            let _ = writeln!(out, "      type {}", c.dns_type.unwrap_or(DnsType::A));
            let _ = writeln!(
                out,
                "      name {}",
                word(c.dns_name.as_deref().unwrap_or("."))
            );
            if c.dns_expect.is_some() {
                lost.push(format!(
                    "{what}: dns_expect: keepalived's DNS check does not compare answers"
                ));
            }
        }
        _ => {}
    }
    let _ = writeln!(out, "    }}");
}

/// Milliseconds as keepalived's decimal seconds (`1`, `0.1`, `2.5`).
fn seconds(ms: u32) -> String {
    let whole = ms / 1000;
    let frac = ms % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:03}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// A persistence prefix as keepalived writes it: a netmask for IPv4, the length for IPv6.
fn granularity(vip: &str, prefix: u8) -> String {
    if vip.contains(':') {
        return prefix.to_string();
    }
    let p = u32::from(prefix.min(32));
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    std::net::Ipv4Addr::from(mask).to_string()
}

/// A value as one keepalived word: as is when it is one, else quoted.
fn word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+=,".contains(c))
    {
        s.to_owned()
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_and_a_service_as_keepalived_reads_them() {
        let mut spec: ClusterSpec = serde_json::from_value(serde_json::json!({
            "vrid": 61, "interface": "eth0", "vips": ["198.18.0.40/32"],
            "services": [{"vip": "198.18.0.40", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                          "forward": "nat", "real_servers": [{"address": "198.18.2.1", "port": 80}]}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        spec.preempt = false;
        spec.services[0].check.on_down = DownAction::Drain;
        let e = export(
            "ext",
            &spec,
            &NodePart {
                node: "lb1",
                role: Role::Active,
                priority: 150,
            },
        );
        let t = &e.text;
        for want in [
            "global_defs {\n  router_id lb1\n",
            // Without preemption keepalived wants every node to start BACKUP.
            "vrrp_instance ext {\n  state BACKUP\n  interface eth0\n  virtual_router_id 61\n  priority 150\n",
            "  nopreempt\n",
            "  virtual_ipaddress {\n    198.18.0.40/32\n  }\n",
            "virtual_server 198.18.0.40 80 {\n",
            "  inhibit_on_failure\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        assert_eq!(t.matches('{').count(), t.matches('}').count(), "{t}");
    }

    #[test]
    fn seconds_and_masks_as_keepalived_writes_them() {
        assert_eq!(seconds(1000), "1");
        assert_eq!(seconds(100), "0.1");
        assert_eq!(seconds(2500), "2.5");
        assert_eq!(seconds(1), "0.001");
        assert_eq!(granularity("198.18.0.1", 24), "255.255.255.0");
        assert_eq!(granularity("198.18.0.1", 0), "0.0.0.0");
        assert_eq!(granularity("2001:2::1", 64), "64");
        assert_eq!(word("eth0"), "eth0");
        assert_eq!(word("a b"), "\"a b\"");
        assert_eq!(word("{x}"), "\"{x}\"");
    }
}
