//! What a parsed keepalived.conf means for the fleet: `vrrp_instance` / `vrrp_sync_group` become clusters,
//! `virtual_server` (and `virtual_server_group`) services, `real_server` real servers with their checks.
//! Configurations of several machines (or one file read with several config ids) that hold the same VRID and
//! VIPs become one cluster with an active and backups. Everything lbfleet cannot express is listed in
//! `not_imported` with its file:line and the reason; nothing is dropped silently. Every planned cluster has
//! passed the fleet's own validation (`rules::cluster_spec`), so the plan applies as planned.

use std::collections::HashMap;
use std::net::IpAddr;

use lbfleet_proto::{
    CheckKind, CheckOverride, ClusterSpec, ConnSyncSpec, DnsType, DownAction, ForwardMethod,
    GarpSpec, HealthCheck, Protocol, Quorum, RealServerSpec, Role, Scheduler, ServiceSpec,
    SorryServer, VipSpec,
};
use serde::Serialize;

use super::parser::{Config, Loc, Statement};
use crate::fleet::rules;

/// One machine's configuration and the node name it stands for.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `router_id` of `global_defs`, else the config id, else what the caller names it.
    pub node: String,
    pub config: Config,
}

/// What an import would create, and what it leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportPlan {
    pub clusters: Vec<PlannedCluster>,
    pub not_imported: Vec<NotImported>,
}

impl ImportPlan {
    /// Whether everything read maps onto the fleet.
    pub fn lossless(&self) -> bool {
        self.not_imported.is_empty()
    }
}

/// A cluster to create or replace, and the nodes that played its parts in keepalived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedCluster {
    pub name: String,
    #[serde(serialize_with = "loc_text")]
    pub loc: Loc,
    pub spec: ClusterSpec,
    pub members: Vec<PlannedMember>,
}

/// A node's part in a cluster as its keepalived.conf had it (assigned in lbfleet by the operator: keepalived
/// does not know the machines' MACs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedMember {
    pub node: String,
    pub role: Role,
    pub priority: u8,
    #[serde(serialize_with = "loc_text")]
    pub loc: Loc,
}

/// A directive lbfleet does not carry over, where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotImported {
    #[serde(serialize_with = "loc_text")]
    pub loc: Loc,
    pub directive: String,
    pub reason: String,
}

impl std::fmt::Display for NotImported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.loc, self.directive, self.reason)
    }
}

fn loc_text<S: serde::Serializer>(loc: &Loc, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&loc.to_string())
}

/// Plans the import of the given machines' configurations.
pub fn plan(machines: &[Machine]) -> ImportPlan {
    let mut out = Out::default();
    for m in machines {
        for d in &m.config.diagnostics {
            out.not_imported.push(NotImported {
                loc: d.loc.clone(),
                directive: String::new(),
                reason: format!("not read: {}", d.message),
            });
        }
    }
    // Per machine: its clusters and its services.
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut services: Vec<(usize, ServiceSpec, Loc, String)> = Vec::new();
    for (mi, m) in machines.iter().enumerate() {
        let read = read_machine(m, &mut out);
        for c in read.clusters {
            candidates.push(Candidate { machine: mi, ..c });
        }
        services.extend(read.services.into_iter().map(|(s, l, t)| (mi, s, l, t)));
    }

    // Pairs: one cluster per (VRID, VIPs), the highest priority machine's settings.
    let mut clusters: Vec<Merged> = Vec::new();
    for c in candidates {
        let key = c.key();
        match clusters.iter_mut().find(|m| m.key == key) {
            Some(m) => {
                if m.members.iter().any(|x| x.0 == c.machine) {
                    out.skip_at(
                        &c.loc,
                        &c.title,
                        "the same machine declares this VRID and these VIPs twice",
                    );
                    continue;
                }
                m.members
                    .push((c.machine, c.state_master, c.priority, c.loc.clone()));
                if c.priority > m.best.priority {
                    let old = std::mem::replace(&mut m.best, c);
                    m.others.push(old);
                } else {
                    m.others.push(c);
                }
            }
            None => {
                if let Some(other) = clusters.iter().find(|m| m.key.0 == key.0) {
                    out.skip_at(
                        &c.loc,
                        &c.title,
                        format!(
                            "VRID {} is also used at {} with other VIPs; a pair must hold the same VIPs",
                            key.0, other.best.loc
                        ),
                    );
                    continue;
                }
                clusters.push(Merged {
                    key,
                    members: vec![(c.machine, c.state_master, c.priority, c.loc.clone())],
                    best: c,
                    others: Vec::new(),
                });
            }
        }
    }
    for m in &clusters {
        for o in &m.others {
            for (what, mine, theirs) in [
                ("interface", &o.spec.interface, &m.best.spec.interface),
                (
                    "advert_int",
                    &o.spec.advert_interval_ms.to_string(),
                    &m.best.spec.advert_interval_ms.to_string(),
                ),
            ] {
                if mine != theirs {
                    out.skip_at(
                        &o.loc,
                        &format!("{what} {mine}"),
                        format!(
                            "differs from {theirs} on the active ({}); an lbfleet cluster has one for all its nodes",
                            m.best.loc
                        ),
                    );
                }
            }
        }
    }

    // Services go to the cluster holding their VIP, on the machine that declared them.
    let mut planned: Vec<(PlannedCluster, Vec<Loc>)> = clusters
        .iter()
        .map(|m| {
            let active = m
                .members
                .iter()
                .max_by_key(|(_, master, prio, _)| (*prio, *master))
                .map(|x| x.0);
            let members = m
                .members
                .iter()
                .map(|(mi, _, prio, loc)| PlannedMember {
                    node: machines[*mi].node.clone(),
                    role: if Some(*mi) == active && (m.members.len() > 1 || m.best.state_master) {
                        Role::Active
                    } else {
                        Role::Backup
                    },
                    priority: *prio,
                    loc: loc.clone(),
                })
                .collect();
            (
                PlannedCluster {
                    name: m.best.name.clone(),
                    loc: m.best.loc.clone(),
                    spec: m.best.spec.clone(),
                    members,
                },
                Vec::new(),
            )
        })
        .collect();
    for (mi, svc, loc, title) in services {
        let vip: Option<IpAddr> = svc.vip.parse().ok();
        let target = planned.iter().position(|(p, _)| {
            p.members.iter().any(|mm| mm.node == machines[mi].node)
                && p.spec
                    .vips
                    .iter()
                    .any(|v| v.addr().parse::<IpAddr>().ok() == vip)
        });
        let Some(t) = target else {
            out.skip_at(
                &loc,
                &title,
                format!(
                    "{} is not a VIP of any vrrp_instance of this machine; lbfleet serves services on a cluster's VIPs",
                    svc.vip
                ),
            );
            continue;
        };
        let (p, locs) = &mut planned[t];
        match p
            .spec
            .services
            .iter()
            .position(|s| s.vip == svc.vip && s.port == svc.port && s.protocol == svc.protocol)
        {
            Some(i) if p.spec.services[i] == svc => {}
            Some(i) => out.skip_at(
                &loc,
                &title,
                format!(
                    "differs from the same service at {}; the first one read is imported",
                    locs[i]
                ),
            ),
            None => {
                p.spec.services.push(svc);
                locs.push(loc);
            }
        }
    }

    // Cluster names unique; every cluster valid by the fleet's rules, or reported whole.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut result = Vec::new();
    for (mut p, _) in planned {
        let n = seen.entry(p.name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            p.name = format!("{}-{}", p.name, n);
        }
        p.spec
            .services
            .sort_by(|a, b| (&a.vip, a.port, a.protocol).cmp(&(&b.vip, b.port, b.protocol)));
        match rules::cluster_spec(&p.spec) {
            Ok(rules::ValidCluster(spec)) => {
                p.spec = spec;
                result.push(p);
            }
            Err(errs) => {
                for e in errs.0 {
                    out.skip_at(
                        &p.loc,
                        &format!("cluster {}", p.name),
                        format!("the cluster is not imported: {}: {}", e.field, e.message),
                    );
                }
            }
        }
    }
    out.not_imported.sort_by(|a, b| a.loc.cmp(&b.loc));
    // One file read as several machines reports its lines once.
    out.not_imported.dedup();
    ImportPlan {
        clusters: result,
        not_imported: out.not_imported,
    }
}

#[derive(Default)]
struct Out {
    not_imported: Vec<NotImported>,
}

impl Out {
    fn skip(&mut self, st: &Statement, reason: impl Into<String>) {
        self.skip_at(&st.loc, &st.words.join(" "), reason);
    }

    fn skip_at(&mut self, loc: &Loc, directive: &str, reason: impl Into<String>) {
        let mut directive = directive.to_owned();
        if directive.len() > 120 {
            let mut end = 117;
            while !directive.is_char_boundary(end) {
                end -= 1;
            }
            directive.truncate(end);
            directive.push_str("...");
        }
        self.not_imported.push(NotImported {
            loc: loc.clone(),
            directive,
            reason: reason.into(),
        });
    }

    /// The argument `i` (after the keyword) parsed, or a report.
    fn arg<T: std::str::FromStr>(&mut self, st: &Statement, i: usize, what: &str) -> Option<T> {
        match st.args().get(i).map(|a| a.parse::<T>()) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                self.skip(st, format!("{:?} is not {what}", st.args()[i]));
                None
            }
            None => {
                self.skip(st, format!("needs {what}"));
                None
            }
        }
    }

    /// A `<TIMER>` (seconds, fractions allowed) in milliseconds.
    fn timer(&mut self, st: &Statement) -> Option<u32> {
        let s: f64 = self.arg(st, 0, "a time in seconds")?;
        if !(0.0..=4_000_000.0).contains(&s) {
            self.skip(st, "out of range");
            return None;
        }
        Some((s * 1000.0).round() as u32)
    }
}

/// A cluster as one machine declares it.
struct Candidate {
    machine: usize,
    name: String,
    title: String,
    loc: Loc,
    state_master: bool,
    priority: u8,
    spec: ClusterSpec,
}

impl Candidate {
    fn key(&self) -> (u32, Vec<String>) {
        let mut vips: Vec<String> = self.spec.vips.iter().map(|v| v.addr().to_owned()).collect();
        vips.sort();
        (self.spec.vrid, vips)
    }
}

struct Merged {
    key: (u32, Vec<String>),
    members: Vec<(usize, bool, u8, Loc)>,
    best: Candidate,
    others: Vec<Candidate>,
}

struct MachineRead {
    clusters: Vec<Candidate>,
    /// Each service, where it was declared and as what (`virtual_server A P`, or a group's line).
    services: Vec<(ServiceSpec, Loc, String)>,
}

/// A VRRP instance as declared.
struct Instance {
    name: String,
    loc: Loc,
    state_master: bool,
    priority: u8,
    spec: ClusterSpec,
}

fn read_machine(m: &Machine, out: &mut Out) -> MachineRead {
    let top = &m.config.statements;
    let mut default_version = 2u8;
    // keepalived 2.2 sets the GARP spacing globally (vrrp_garp_interval); an instance's garp_interval
    // (older keepalived) still wins.
    let mut default_garp = GarpSpec::default();
    let mut sync_daemon: Option<(String, Option<String>, u8)> = None;
    for g in top.iter().filter(|s| s.keyword() == "global_defs") {
        for st in g.children() {
            match st.keyword() {
                "router_id" => {}
                "vrrp_garp_interval" => {
                    if let Some(ms) = out.timer(st) {
                        default_garp.spacing_ms = ms;
                    }
                }
                "vrrp_version" => {
                    if let Some(v) = out.arg::<u8>(st, 0, "2 or 3") {
                        default_version = v;
                    }
                }
                "lvs_sync_daemon" => {
                    let a = st.args();
                    let iface = a.first().cloned().unwrap_or_default();
                    let mut inst = None;
                    let mut id = 0u8;
                    let mut i = 1;
                    while i < a.len() {
                        match a[i].as_str() {
                            "id" => {
                                id = a.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0);
                                i += 2;
                            }
                            w if i == 1
                                && !w.contains(|c: char| c.is_ascii_digit() && w.len() < 3) =>
                            {
                                inst = Some(w.to_owned());
                                i += 1;
                            }
                            _ => {
                                out.skip(
                                    st,
                                    format!(
                                        "option {:?} of lvs_sync_daemon has no lbfleet counterpart",
                                        a[i]
                                    ),
                                );
                                i += 1;
                            }
                        }
                    }
                    sync_daemon = Some((iface, inst, id));
                }
                _ => out.skip(st, "a global setting with no lbfleet counterpart"),
            }
        }
    }

    let mut instances: Vec<Instance> = Vec::new();
    for st in top.iter().filter(|s| s.keyword() == "vrrp_instance") {
        if let Some(i) = read_instance(st, default_version, default_garp, out) {
            instances.push(i);
        }
    }
    if let Some((iface, inst, id)) = sync_daemon {
        for i in instances.iter_mut() {
            if inst.as_deref().is_none_or(|n| n == i.name) {
                i.spec.conn_sync = Some(ConnSyncSpec {
                    interface: iface.clone(),
                    sync_id: id,
                });
            }
        }
    }

    // Sync groups fold their instances into one cluster: the first instance's VRRP settings, every VIP.
    let mut clusters = Vec::new();
    let mut grouped: HashMap<String, ()> = HashMap::new();
    for g in top.iter().filter(|s| s.keyword() == "vrrp_sync_group") {
        let name = g.args().first().cloned().unwrap_or_default();
        let mut members: Vec<String> = Vec::new();
        for st in g.children() {
            match st.keyword() {
                "group" => members.extend(st.children().iter().flat_map(|c| c.words.clone())),
                _ => out.skip(st, "a sync group setting with no lbfleet counterpart"),
            }
        }
        let mut parts: Vec<Instance> = Vec::new();
        for n in &members {
            match instances.iter().position(|i| &i.name == n) {
                Some(p) => parts.push(instances.remove(p)),
                None => out.skip(
                    g,
                    format!("instance {n} of the group is not declared (or not imported)"),
                ),
            }
            grouped.insert(n.clone(), ());
        }
        let mut parts = parts.into_iter();
        let Some(mut first) = parts.next() else {
            out.skip(g, "no instance of the group could be imported");
            continue;
        };
        for p in parts {
            for mut v in p.spec.vips {
                if v.interface.is_none() && p.spec.interface != first.spec.interface {
                    v.interface = Some(p.spec.interface.clone());
                }
                first.spec.vips.push(v);
            }
            for peer in p.spec.unicast_peers {
                if !first.spec.unicast_peers.contains(&peer) {
                    first.spec.unicast_peers.push(peer);
                }
            }
        }
        clusters.push(Candidate {
            machine: 0,
            name: cluster_name(&name),
            title: format!("vrrp_sync_group {name}"),
            loc: g.loc.clone(),
            state_master: first.state_master,
            priority: first.priority,
            spec: first.spec,
        });
    }
    for i in instances {
        clusters.push(Candidate {
            machine: 0,
            name: cluster_name(&i.name),
            title: format!("vrrp_instance {}", i.name),
            loc: i.loc,
            state_master: i.state_master,
            priority: i.priority,
            spec: i.spec,
        });
    }

    let groups: HashMap<String, &Statement> = top
        .iter()
        .filter(|s| s.keyword() == "virtual_server_group")
        .filter_map(|s| s.args().first().map(|n| (n.clone(), s)))
        .collect();
    let mut services = Vec::new();
    for st in top {
        match st.keyword() {
            "global_defs" | "vrrp_instance" | "vrrp_sync_group" | "virtual_server_group" => {}
            "virtual_server" => services.extend(read_virtual_server(st, &groups, out)),
            "vrrp_script" | "track_file" | "track_process" => {
                out.skip(st, "tracking scripts and files have no lbfleet counterpart (lbfleet lowers priority by quorum only)")
            }
            "static_ipaddress" | "static_routes" | "static_rules" => out.skip(
                st,
                "static addresses and routes are the image's network setup in lbfleet, not part of a cluster",
            ),
            "bfd_instance" => out.skip(st, "BFD is not supported"),
            _ => out.skip(st, "not a directive lbfleet imports"),
        }
    }
    MachineRead { clusters, services }
}

/// A cluster name from a keepalived name: lower case, `_` and other characters as `-`.
fn cluster_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-');
    let s: String = s.chars().take(63).collect();
    if s.is_empty() {
        "imported".into()
    } else {
        s.trim_end_matches('-').to_owned()
    }
}

fn read_instance(
    st: &Statement,
    default_version: u8,
    default_garp: GarpSpec,
    out: &mut Out,
) -> Option<Instance> {
    let name = st.args().first().cloned().unwrap_or_default();
    let mut spec = ClusterSpec {
        vrid: 0,
        interface: String::new(),
        vrrp_version: default_version,
        advert_interval_ms: 1000,
        preempt: true,
        preempt_delay_ms: 0,
        vips: Vec::new(),
        unicast_peers: Vec::new(),
        garp: default_garp,
        conn_sync: None,
        services: Vec::new(),
    };
    let mut state_master = false;
    let mut priority: u8 = 100;
    for c in st.children() {
        match c.keyword() {
            "state" => match c.args().first().map(String::as_str) {
                Some("MASTER") => state_master = true,
                Some("BACKUP") => state_master = false,
                _ => out.skip(c, "state is MASTER or BACKUP"),
            },
            "interface" => {
                if let Some(i) = c.args().first() {
                    spec.interface = i.clone();
                }
            }
            "virtual_router_id" => {
                if let Some(v) = out.arg(c, 0, "a VRID") {
                    spec.vrid = v;
                }
            }
            "priority" => {
                if let Some(v) = out.arg(c, 0, "a priority (1 to 255)") {
                    priority = v;
                }
            }
            "advert_int" => {
                if let Some(ms) = out.timer(c) {
                    spec.advert_interval_ms = ms;
                }
            }
            "version" => {
                if let Some(v) = out.arg(c, 0, "2 or 3") {
                    spec.vrrp_version = v;
                }
            }
            "nopreempt" => spec.preempt = false,
            "preempt" => spec.preempt = true,
            "preempt_delay" => {
                if let Some(ms) = out.timer(c) {
                    spec.preempt_delay_ms = ms;
                }
            }
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                for v in c.children() {
                    if let Some(vip) = read_vip(v, out) {
                        if spec.vips.iter().any(|x| x.addr() == vip.addr()) {
                            out.skip(v, "the address is listed twice (imported once)");
                        } else {
                            spec.vips.push(vip);
                        }
                    }
                }
            }
            "unicast_peer" => {
                for p in c.children() {
                    if let Some(a) = p.words.first() {
                        spec.unicast_peers.push(a.clone());
                    }
                    if p.words.len() > 1 {
                        out.skip(
                            p,
                            "peer options (min_ttl, max_ttl) have no lbfleet counterpart",
                        );
                    }
                }
            }
            "garp_master_repeat" => {
                if let Some(n) = out.arg(c, 0, "a count") {
                    spec.garp.count = n;
                }
            }
            "garp_interval" => {
                if let Some(ms) = out.timer(c) {
                    spec.garp.spacing_ms = ms;
                }
            }
            "garp_master_refresh" => {
                if let Some(ms) = out.timer(c) {
                    spec.garp.refresh_ms = ms;
                }
            }
            "lvs_sync_daemon_interface" => {
                if let Some(i) = c.args().first() {
                    spec.conn_sync = Some(ConnSyncSpec {
                        interface: i.clone(),
                        sync_id: 0,
                    });
                }
            }
            "unicast_src_ip" => out.skip(c, "the agent sends from the interface's primary address"),
            "authentication" => out.skip(
                c,
                "VRRP authentication is not supported (RFC 3768 deprecates it; VRRPv3 has none)",
            ),
            "notify" | "notify_master" | "notify_backup" | "notify_fault" | "notify_stop"
            | "notify_deleted" => out.skip(
                c,
                "lbfleet runs no notify scripts; state changes are events and alerts",
            ),
            "track_script" | "track_interface" | "track_file" | "track_process" | "track_bfd" => {
                out.skip(
                    c,
                    "tracking has no lbfleet counterpart (priority drops only by service quorum)",
                )
            }
            "smtp_alert" => out.skip(c, "lbfleet sends no mail"),
            _ => out.skip(c, "a VRRP setting with no lbfleet counterpart"),
        }
    }
    if spec.vrid == 0 {
        out.skip(st, "virtual_router_id is missing");
        return None;
    }
    if priority == 255 {
        out.skip_at(
            &st.loc,
            &format!("priority 255 of vrrp_instance {name}"),
            "255 is the address owner's priority; lbfleet nodes use 1 to 254 (imported as 254)",
        );
        priority = 254;
    }
    Some(Instance {
        name,
        loc: st.loc.clone(),
        state_master,
        priority,
        spec,
    })
}

/// `ADDRESS[/PREFIX] [dev IF] [brd X] [scope S] [label L]`.
fn read_vip(st: &Statement, out: &mut Out) -> Option<VipSpec> {
    let addr = st.words.first()?;
    let address = if addr.contains('/') {
        addr.clone()
    } else if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    };
    let mut vip = VipSpec::new(address);
    let mut i = 1;
    while i < st.words.len() {
        match st.words[i].as_str() {
            "dev" => {
                vip.interface = st.words.get(i + 1).cloned();
                i += 2;
            }
            other => {
                out.skip(
                    st,
                    format!("address option {other:?} has no lbfleet counterpart (the VIP is imported without it)"),
                );
                i += 2;
            }
        }
    }
    Some(vip)
}

/// A service's settings before its real servers, with keepalived's defaults.
struct ServiceDefaults {
    interval_ms: u32,
    on_down: DownAction,
    host: Option<String>,
    retry: Option<(u32, Loc)>,
    delay_before_retry: Option<(u32, Statement)>,
    timeout_ms: Option<u32>,
    warmup_ms: Option<u32>,
}

fn read_virtual_server(
    st: &Statement,
    groups: &HashMap<String, &Statement>,
    out: &mut Out,
) -> Vec<(ServiceSpec, Loc, String)> {
    // The addresses it serves.
    let mut endpoints: Vec<(String, u16, Loc, String)> = Vec::new();
    match st.args() {
        [kw, _] if kw == "fwmark" => {
            out.skip(
                st,
                "firewall-mark services are not supported (services are VIP, port, protocol)",
            );
            return vec![];
        }
        [kw, name] if kw == "group" => match groups.get(name) {
            Some(g) => {
                for m in g.children() {
                    match m.words.as_slice() {
                        [kw, _] if kw == "fwmark" => {
                            out.skip(m, "firewall-mark services are not supported")
                        }
                        [addr, port] => {
                            let Ok(port) = port.parse::<u16>() else {
                                out.skip(m, "not ADDRESS PORT");
                                continue;
                            };
                            match addr.split_once('-') {
                                Some((base, last)) => match range(base, last) {
                                    Some(addrs) => endpoints.extend(
                                        addrs
                                            .into_iter()
                                            .map(|a| (a, port, m.loc.clone(), m.words.join(" "))),
                                    ),
                                    None => out.skip(m, "not an IPv4 address range"),
                                },
                                None => endpoints.push((
                                    addr.clone(),
                                    port,
                                    m.loc.clone(),
                                    m.words.join(" "),
                                )),
                            }
                        }
                        _ => out.skip(m, "not ADDRESS PORT"),
                    }
                }
            }
            None => {
                out.skip(st, format!("virtual_server_group {name} is not declared"));
                return vec![];
            }
        },
        [addr, port] => match port.parse::<u16>() {
            Ok(p) => endpoints.push((addr.clone(), p, st.loc.clone(), st.words.join(" "))),
            Err(_) => {
                out.skip(st, "not ADDRESS PORT");
                return vec![];
            }
        },
        _ => {
            out.skip(st, "not ADDRESS PORT, fwmark N or group NAME");
            return vec![];
        }
    }

    let mut template = ServiceSpec {
        vip: String::new(),
        port: 0,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Wlc,
        forward: ForwardMethod::Nat,
        persistence_s: 0,
        persistence_prefix: None,
        check: HealthCheck::of_kind(CheckKind::None),
        real_servers: Vec::new(),
    };
    let mut d = ServiceDefaults {
        interval_ms: 60_000,
        on_down: DownAction::Remove,
        host: None,
        retry: None,
        delay_before_retry: None,
        timeout_ms: None,
        warmup_ms: None,
    };
    let mut sorry: Option<SorryServer> = None;
    let mut quorum: Option<u32> = None;
    let mut real_servers: Vec<&Statement> = Vec::new();
    for c in st.children() {
        match c.keyword() {
            "delay_loop" => {
                if let Some(ms) = out.timer(c) {
                    d.interval_ms = ms;
                }
            }
            "lb_algo" | "lvs_sched" => match c.args().first().map(|a| a.parse::<Scheduler>()) {
                Some(Ok(s)) => template.scheduler = s,
                _ => out.skip(c, "not a scheduler lbfleet knows"),
            },
            "lb_kind" | "lvs_method" => {
                match c
                    .args()
                    .first()
                    .map(|a| a.to_ascii_lowercase().parse::<ForwardMethod>())
                {
                    Some(Ok(f)) => template.forward = f,
                    _ => out.skip(c, "forwarding is NAT, DR or TUN"),
                }
            }
            "protocol" => match c.args().first().map(String::as_str) {
                Some("TCP") => template.protocol = Protocol::Tcp,
                Some("UDP") => template.protocol = Protocol::Udp,
                _ => {
                    out.skip(c, "only TCP and UDP services are supported");
                    return vec![];
                }
            },
            "persistence_timeout" => {
                template.persistence_s = if c.args().is_empty() {
                    360
                } else {
                    match out.arg(c, 0, "seconds") {
                        Some(v) => v,
                        None => continue,
                    }
                }
            }
            "persistence_granularity" => match c.args().first().and_then(|m| prefix_of_mask(m)) {
                Some(p) => template.persistence_prefix = Some(p),
                None => out.skip(c, "not a netmask or prefix length"),
            },
            "sorry_server" => match c.args() {
                [a, p] => match p.parse() {
                    Ok(port) => {
                        sorry = Some(SorryServer {
                            address: a.clone(),
                            port,
                        })
                    }
                    Err(_) => out.skip(c, "not ADDRESS PORT"),
                },
                _ => out.skip(c, "not ADDRESS PORT"),
            },
            "quorum" => quorum = out.arg(c, 0, "a number"),
            "hysteresis" => {
                if c.args().first().map(String::as_str) != Some("0") {
                    out.skip(c, "lbfleet's quorum has no hysteresis")
                }
            }
            "inhibit_on_failure" => d.on_down = DownAction::Drain,
            "virtualhost" => d.host = c.args().first().cloned(),
            "retry" => d.retry = out.arg(c, 0, "a count").map(|r| (r, c.loc.clone())),
            "delay_before_retry" => d.delay_before_retry = out.timer(c).map(|ms| (ms, c.clone())),
            "connect_timeout" => d.timeout_ms = out.timer(c),
            "warmup" => d.warmup_ms = out.timer(c),
            "real_server" => real_servers.push(c),
            "alpha" => out.skip(
                c,
                "lbfleet starts a new real server in service until its check says otherwise",
            ),
            "omega" | "quorum_up" | "quorum_down" => out.skip(c, "lbfleet runs no quorum scripts"),
            "ha_suspend" => out.skip(c, "lbfleet checks real servers on backups too"),
            "ops" | "one_packet_scheduling" => {
                out.skip(c, "one-packet scheduling is not supported")
            }
            "persistence_engine" => out.skip(c, "persistence engines are not supported"),
            "sorry_server_inhibit" | "sorry_server_lvs_method" => out.skip(
                c,
                "the sorry server is added like the real servers, by the service's down action",
            ),
            "smtp_alert" => out.skip(c, "lbfleet sends no mail"),
            _ => out.skip(c, "a virtual_server setting with no lbfleet counterpart"),
        }
    }

    // Real servers and their checks.
    let mut checks: Vec<(RealServerSpec, Option<HealthCheck>)> = Vec::new();
    for rs in real_servers {
        if let Some(x) = read_real_server(rs, &template, &d, out) {
            checks.push(x);
        }
    }
    // The service's check is the most common one; the others are overrides.
    let mut counts: Vec<(HealthCheck, usize)> = Vec::new();
    for (_, c) in &checks {
        let c = c.clone().unwrap_or_else(|| none_check(&d));
        match counts.iter_mut().find(|(k, _)| *k == c) {
            Some(e) => e.1 += 1,
            None => counts.push((c, 1)),
        }
    }
    let mut service_check = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c.clone())
        .unwrap_or_else(|| none_check(&d));
    let overrides: Vec<CheckOverride> = checks
        .iter()
        .filter_map(|(rs, c)| {
            let c = c.clone().unwrap_or_else(|| none_check(&d));
            (c != service_check).then(|| CheckOverride {
                address: rs.address.clone(),
                port: rs.port,
                check: c,
            })
        })
        .collect();
    service_check.overrides = overrides;
    service_check.on_down = d.on_down;
    service_check.sorry_server = sorry;
    if let Some(q) = quorum {
        let weights_one = checks.iter().all(|(rs, _)| rs.weight == 1);
        if q <= 1 {
            // keepalived's default quorum 1: "any server up"; lbfleet's is no quorum at all.
        } else if weights_one {
            service_check.quorum = Some(Quorum {
                min_healthy: q,
                priority_drop: 60,
            });
        } else {
            out.skip_at(
                &st.loc,
                &format!("quorum {q}"),
                "keepalived's quorum is a sum of weights; lbfleet counts healthy servers (imported only when every weight is 1)",
            );
        }
    }
    template.check = service_check;
    template.real_servers = checks.into_iter().map(|(rs, _)| rs).collect();

    endpoints
        .into_iter()
        .map(|(vip, port, loc, title)| {
            let mut s = template.clone();
            s.vip = vip;
            s.port = port;
            if s.forward != ForwardMethod::Nat {
                // keepalived lets DR/TUN real servers name a port it then ignores.
                for r in &mut s.real_servers {
                    r.port = port;
                }
            }
            (s, loc, title)
        })
        .collect()
}

fn none_check(d: &ServiceDefaults) -> HealthCheck {
    let mut c = HealthCheck::of_kind(CheckKind::None);
    c.interval_ms = d.interval_ms;
    c.timeout_ms = d.timeout_ms.unwrap_or(5000).min(d.interval_ms);
    c.rise = 1;
    c
}

fn read_real_server(
    st: &Statement,
    svc: &ServiceSpec,
    d: &ServiceDefaults,
    out: &mut Out,
) -> Option<(RealServerSpec, Option<HealthCheck>)> {
    let (address, port) = match st.args() {
        [a, p] => (a.clone(), p.parse::<u16>().ok()?),
        [a] => (a.clone(), 0),
        _ => {
            out.skip(st, "not ADDRESS PORT");
            return None;
        }
    };
    let mut rs = RealServerSpec {
        address,
        port,
        weight: 1,
        enabled: None,
    };
    let mut check: Option<HealthCheck> = None;
    let mut local = ServiceDefaults {
        interval_ms: d.interval_ms,
        on_down: d.on_down,
        host: d.host.clone(),
        retry: d.retry.clone(),
        delay_before_retry: d.delay_before_retry.clone(),
        timeout_ms: d.timeout_ms,
        warmup_ms: d.warmup_ms,
    };
    for c in st.children() {
        match c.keyword() {
            "weight" => {
                if let Some(w) = out.arg(c, 0, "a weight") {
                    rs.weight = w;
                }
            }
            "inhibit_on_failure" => {
                if d.on_down != DownAction::Drain {
                    out.skip(c, "lbfleet's down action is per service: put inhibit_on_failure on the virtual_server");
                }
            }
            "delay_loop" => {
                if let Some(ms) = out.timer(c) {
                    local.interval_ms = ms;
                }
            }
            "retry" => local.retry = out.arg(c, 0, "a count").map(|r| (r, c.loc.clone())),
            "delay_before_retry" => {
                local.delay_before_retry = out.timer(c).map(|ms| (ms, c.clone()))
            }
            "connect_timeout" => local.timeout_ms = out.timer(c),
            "warmup" => local.warmup_ms = out.timer(c),
            "HTTP_GET" | "SSL_GET" | "TCP_CHECK" | "MISC_CHECK" | "DNS_CHECK" => {
                if check.is_some() {
                    out.skip(
                        c,
                        "lbfleet runs one check per real server (the first is imported)",
                    );
                } else {
                    check = read_check(c, svc, &local, out);
                }
            }
            "SMTP_CHECK" | "PING_CHECK" | "UDP_CHECK" | "FILE_CHECK" | "BFD_CHECK" => out.skip(
                c,
                "this check type is not supported (tcp, http, https, dns, script are)",
            ),
            "notify_up" | "notify_down" => out.skip(c, "lbfleet runs no notify scripts"),
            "smtp_alert" => out.skip(c, "lbfleet sends no mail"),
            _ => out.skip(c, "a real_server setting with no lbfleet counterpart"),
        }
    }
    if rs.port == 0 {
        rs.port = svc.port;
    }
    Some((rs, check))
}

fn read_check(
    st: &Statement,
    svc: &ServiceSpec,
    d: &ServiceDefaults,
    out: &mut Out,
) -> Option<HealthCheck> {
    let kind = match st.keyword() {
        "HTTP_GET" => CheckKind::Http,
        "SSL_GET" => CheckKind::Https,
        "TCP_CHECK" => CheckKind::Tcp,
        "MISC_CHECK" => CheckKind::Script,
        _ => CheckKind::Dns,
    };
    let mut c = HealthCheck::of_kind(kind);
    c.interval_ms = d.interval_ms;
    c.rise = 1;
    let mut retry = d.retry.clone();
    let mut delay_before_retry = d.delay_before_retry.clone();
    let mut timeout_ms = d.timeout_ms;
    let mut warmup_ms = d.warmup_ms;
    let mut host = d.host.clone();
    let mut first_url = true;
    for s in st.children() {
        match (s.keyword(), kind) {
            ("connect_port", _) => c.port = out.arg(s, 0, "a port"),
            ("connect_timeout", _) => timeout_ms = out.timer(s),
            ("retry" | "nb_get_retry", _) => {
                retry = out.arg(s, 0, "a count").map(|r| (r, s.loc.clone()))
            }
            ("delay_before_retry", _) => {
                delay_before_retry = out.timer(s).map(|ms| (ms, s.clone()))
            }
            ("delay_loop", _) => {
                if let Some(ms) = out.timer(s) {
                    c.interval_ms = ms;
                }
            }
            ("warmup", _) => warmup_ms = out.timer(s),
            ("virtualhost", CheckKind::Http | CheckKind::Https) => host = s.args().first().cloned(),
            ("url", CheckKind::Http | CheckKind::Https) => {
                if !first_url {
                    out.skip(
                        s,
                        "lbfleet checks one URL per real server (the first is imported)",
                    );
                    continue;
                }
                first_url = false;
                for u in s.children() {
                    match u.keyword() {
                        "path" => c.path = u.args().first().cloned(),
                        "status_code" => {
                            let mut codes = Vec::new();
                            for a in u.args() {
                                match a.split_once('-') {
                                    Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
                                        (Ok(lo), Ok(hi)) if lo <= hi && hi - lo < 100 => codes.extend(lo..=hi),
                                        _ => out.skip(u, format!("{a:?} is not a status range")),
                                    },
                                    None => match a.parse::<u16>() {
                                        Ok(v) => codes.push(v),
                                        Err(_) => out.skip(u, format!("{a:?} is not a status code")),
                                    },
                                }
                            }
                            let mut codes = codes.into_iter();
                            c.expect_status = codes.next();
                            c.expect_codes = codes.collect();
                        }
                        "virtualhost" => host = u.args().first().cloned(),
                        "digest" => out.skip(u, "lbfleet does not compare a page digest (body_contains can match a text)"),
                        _ => out.skip(u, "a url setting with no lbfleet counterpart"),
                    }
                }
            }
            ("misc_path", CheckKind::Script) => {
                let words: Vec<&str> = s.args().iter().flat_map(|a| a.split_whitespace()).collect();
                let name = words
                    .first()
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                    .unwrap_or_default();
                if words.len() > 1 {
                    out.skip(s, format!("script arguments are not passed: lbfleet runs /etc/lbfleet/checks/{name} with LBFLEET_RS_ADDRESS and LBFLEET_RS_PORT in its environment"));
                }
                c.script = Some(name);
            }
            ("misc_timeout", CheckKind::Script) => timeout_ms = out.timer(s),
            ("misc_dynamic", CheckKind::Script) => {
                out.skip(s, "a script cannot set the weight in lbfleet")
            }
            ("type", CheckKind::Dns) => match s
                .args()
                .first()
                .map(|t| t.to_ascii_uppercase().parse::<DnsType>())
            {
                Some(Ok(t)) => c.dns_type = Some(t),
                _ => out.skip(s, "not a DNS type lbfleet queries"),
            },
            ("name", CheckKind::Dns) => c.dns_name = s.args().first().cloned(),
            _ => out.skip(s, "a check setting with no lbfleet counterpart"),
        }
    }
    if matches!(kind, CheckKind::Http | CheckKind::Https) {
        if c.path.is_none() {
            out.skip(st, "an HTTP check without a url path is not imported");
            return None;
        }
        c.host = host;
    }
    if kind == CheckKind::Dns && c.dns_name.is_none() {
        // keepalived's default name is the root.
        c.dns_name = Some(".".into());
    }
    let retry_n = retry.as_ref().map(|r| r.0).unwrap_or(1);
    c.fall = retry_n.saturating_add(1).min(100);
    if let Some((ms, s)) = delay_before_retry {
        if retry_n > 0 && ms != c.interval_ms {
            out.skip(
                &s,
                format!(
                    "lbfleet retries at the check interval ({} ms, from delay_loop), not after a delay of its own",
                    c.interval_ms
                ),
            );
        }
    }
    let timeout = timeout_ms.unwrap_or(5000);
    if timeout > c.interval_ms {
        out.skip_at(
            &st.loc,
            &format!("connect_timeout of {}", st.keyword()),
            format!(
                "{timeout} ms is longer than the check interval; lbfleet caps it at {} ms",
                c.interval_ms
            ),
        );
    }
    c.timeout_ms = timeout.min(c.interval_ms);
    if let Some(w) = warmup_ms {
        // keepalived's warmup: a random delay up to this before the first check: lbfleet's jitter.
        c.jitter_ms = Some(w.min(c.interval_ms));
    }
    let _ = svc;
    Some(c)
}

/// `255.255.255.0` -> 24; a plain number is a prefix length already.
fn prefix_of_mask(m: &str) -> Option<u8> {
    if let Ok(p) = m.parse::<u8>() {
        return Some(p);
    }
    let v4: std::net::Ipv4Addr = m.parse().ok()?;
    let bits = u32::from(v4);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// `192.168.200.3-10`: the addresses from .3 to .10.
fn range(base: &str, last: &str) -> Option<Vec<String>> {
    let first: std::net::Ipv4Addr = base.parse().ok()?;
    let last: u8 = last.parse().ok()?;
    let o = first.octets();
    (o[3] <= last).then(|| {
        (o[3]..=last)
            .map(|x| std::net::Ipv4Addr::new(o[0], o[1], o[2], x).to_string())
            .collect()
    })
}

/// Node names per machine, in order: `router_id` when the configuration sets one, else `fallback`.
pub fn node_name(config: &Config, fallback: &str) -> String {
    config
        .statements
        .iter()
        .filter(|s| s.keyword() == "global_defs")
        .flat_map(|g| g.children())
        .find(|s| s.keyword() == "router_id")
        .and_then(|s| s.args().first().cloned())
        .unwrap_or_else(|| fallback.to_owned())
}
