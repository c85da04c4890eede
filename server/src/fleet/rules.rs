//! The fleet's domain rules that need no database: field validation and normalisation of a cluster spec,
//! node names, MACs, priorities. Rules that need the whole fleet (VRID per interface, VIP:port:protocol
//! fleet-wide, one active per cluster) live in `fleet::Fleet`, which calls these first.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use lbfleet_proto::{ClusterSpec, ForwardMethod, RealServerSpec, ServiceSpec};
use serde::Serialize;

mod checks;
mod report;

use checks::health_check;
pub use report::report;

/// One rejected field: `field` is a JSON path into the request (`services[0].real_servers[2].weight`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every field error of one request, in document order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn into_result<T>(self, ok: T) -> Result<T, FieldErrors> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self)
        }
    }
}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        FieldErrors(vec![e])
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Highest IPVS / keepalived weight.
pub const MAX_WEIGHT: u32 = 65_535;
/// Longest persistence timeout accepted (31 days).
pub const MAX_PERSISTENCE_S: u32 = 31 * 24 * 3600;
/// Default VRRP priority of the active node and of backups. 255 is reserved for the address owner.
pub const ACTIVE_PRIORITY: u8 = 150;
pub const BACKUP_PRIORITY: u8 = 100;

/// A cluster name: what goes in URLs and audit targets.
pub fn cluster_name(name: &str) -> Result<(), FieldError> {
    dns_label(name).map_err(|m| FieldError::new("name", m))
}

/// A node hostname: a DNS label that starts with a letter and does not read as a MAC in any spelling, so it
/// never reads as a node id or a MAC (`{node}` in a URL is an id, a MAC or a hostname: `aa-bb-cc-00-00-01` as a
/// hostname would name another node).
pub fn hostname(name: &str) -> Result<(), FieldError> {
    dns_label(name).map_err(|m| FieldError::new("hostname", m))?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(FieldError::new(
            "hostname",
            "must start with a lowercase letter",
        ));
    }
    if looks_like_mac(name) {
        return Err(FieldError::new(
            "hostname",
            format!("{name:?} reads as a MAC address; choose a name that does not"),
        ));
    }
    Ok(())
}

/// Whether `text` is a MAC in some spelling: twelve hex digits, with or without separators (`:`, `-`, `.`,
/// `_`, space) anywhere (`aa-bb-cc-00-00-01`, `aabb.cc00.0001`, `aabbcc000001`).
pub fn looks_like_mac(text: &str) -> bool {
    let mut digits = 0;
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            digits += 1;
        } else if !matches!(c, ':' | '-' | '.' | '_' | ' ') {
            return false;
        }
    }
    digits == 12
}

/// Fewest characters a password must have, not counting whitespace.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A password: at least `MIN_PASSWORD_CHARS` characters that are not whitespace (twelve tabs or spaces are
/// no password; `len()` would count bytes, so six two-byte letters would pass).
pub fn password(password: &str) -> Result<(), FieldError> {
    let counted = password.chars().filter(|c| !c.is_whitespace()).count();
    if counted < MIN_PASSWORD_CHARS {
        return Err(FieldError::new(
            "password",
            format!("must have at least {MIN_PASSWORD_CHARS} characters that are not whitespace"),
        ));
    }
    Ok(())
}

fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("must be 1 to 63 characters, got {}", name.len()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may contain only lowercase letters, digits and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'".into());
    }
    Ok(())
}

/// Parses a MAC in `aa:bb:cc:dd:ee:ff` or `aa-bb-…` form and returns it lowercase with colons.
pub fn mac(text: &str) -> Result<String, FieldError> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(FieldError::new(
            "mac",
            format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        ));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

/// A VRRP priority for an assignment: 1–254 (255 is the address owner's).
pub fn priority(p: u32) -> Result<u8, FieldError> {
    match u8::try_from(p) {
        Ok(v @ 1..=254) => Ok(v),
        _ => Err(FieldError::new(
            "priority",
            format!("must be 1 to 254, got {p}"),
        )),
    }
}

/// An image name: a version-like label (`2026.11.1`, `lb-6.1`).
pub fn image_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'",
        ))
    }
}

/// The self-described fields of an agent report: `address` must be a unicast IP address; versions are short
/// printable text (they are shown on the dashboard and stored per node).
pub fn report_fields(
    address: Option<&str>,
    agent_version: Option<&str>,
    image_version: Option<&str>,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if let Some(a) = address {
        match a.parse::<IpAddr>() {
            Ok(ip) => {
                if let Err(m) = unicast(ip) {
                    errs.push("address", m);
                }
            }
            Err(_) => errs.push("address", format!("{a:?} is not an IP address")),
        }
    }
    for (field, v) in [
        ("agent_version", agent_version),
        ("image_version", image_version),
    ] {
        if let Some(v) = v {
            let ok = !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                errs.push(
                    field,
                    "must be 1 to 64 printable ASCII characters without spaces",
                );
            }
        }
    }
    errs.into_result(())
}

/// An image's extra kernel arguments. They end up on an iPXE `kernel` line, where `|`, `;`, `&`, `$`, quotes,
/// backquotes and newlines have meaning of their own, so only kernel-argument characters are allowed
/// (`[A-Za-z0-9 ._,:=/+@%~-]`), and no `lbfleet.*` key: those are the server's to set (a second
/// `lbfleet.server=` would send every node of the image elsewhere). Nor `BOOTIF=` (the server sets it; a second
/// one makes the agent enroll with the wrong MAC and burn the token), `init=` or `rdinit=` (they replace the
/// image's `/init`: `rdinit=/bin/sh` is a root shell past the console-shell control). Keys are compared
/// without regard to case, and `-`/`_` alike, as the kernel does for parameter names.
pub fn image_cmdline(text: &str) -> Result<(), FieldError> {
    if text.len() > 1024 {
        return Err(FieldError::new(
            "cmdline",
            "must be at most 1024 characters",
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " ._,:=/+@%~-".contains(*c)))
    {
        return Err(FieldError::new(
            "cmdline",
            format!("{bad:?} is not allowed; kernel arguments use [A-Za-z0-9 ._,:=/+@%~-]"),
        ));
    }
    if let Some(word) = text
        .split_whitespace()
        .find(|w| w.to_ascii_lowercase().starts_with("lbfleet."))
    {
        let key = word.split('=').next().unwrap_or(word);
        return Err(FieldError::new(
            "cmdline",
            format!("{key} is set by the server; lbfleet.* arguments are not allowed here"),
        ));
    }
    for word in text.split_whitespace() {
        let key = word.split('=').next().unwrap_or(word);
        let norm = key.to_ascii_lowercase().replace('-', "_");
        if matches!(norm.as_str(), "bootif" | "init" | "rdinit") {
            return Err(FieldError::new(
                "cmdline",
                format!("{key}= is not allowed here: BOOTIF is the server's to set, init and rdinit replace the image's /init"),
            ));
        }
    }
    Ok(())
}

/// A file name inside an image directory: one path component, no traversal.
pub fn image_file(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be a plain file name of [A-Za-z0-9._-], not starting with '.'",
        ))
    }
}

/// A cluster spec after validation: addresses in canonical text, VIP prefixes explicit, every real server's
/// `enabled` still as the request had it (the caller fills in omitted ones from the stored state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCluster(pub ClusterSpec);

/// Validates a whole cluster spec and returns it normalised, or every problem found.
pub fn cluster_spec(spec: &ClusterSpec) -> Result<ValidCluster, FieldErrors> {
    let mut errs = FieldErrors::default();
    let mut out = spec.clone();

    if !(1..=255).contains(&spec.vrid) {
        errs.push("vrid", format!("must be 1 to 255, got {}", spec.vrid));
    }
    if let Err(m) = interface_name(&spec.interface) {
        errs.push("interface", m);
    }
    match spec.vrrp_version {
        3 => {
            if !(10..=40_950).contains(&spec.advert_interval_ms)
                || !spec.advert_interval_ms.is_multiple_of(10)
            {
                errs.push(
                    "advert_interval_ms",
                    format!(
                        "VRRPv3 needs 10 to 40950 ms in steps of 10 ms, got {}",
                        spec.advert_interval_ms
                    ),
                );
            }
        }
        2 => {
            if !(1_000..=255_000).contains(&spec.advert_interval_ms)
                || !spec.advert_interval_ms.is_multiple_of(1000)
            {
                errs.push(
                    "advert_interval_ms",
                    format!(
                        "VRRPv2 needs whole seconds from 1000 to 255000 ms, got {}",
                        spec.advert_interval_ms
                    ),
                );
            }
        }
        v => errs.push("vrrp_version", format!("must be 2 or 3, got {v}")),
    }

    // VIPs: IPv4 only (the agent implements VRRP for IPv4), one family per VRRP instance.
    if spec.vips.is_empty() {
        errs.push("vips", "at least one VIP is required");
    }
    let mut vip_addrs: Vec<IpAddr> = Vec::new();
    for (i, vip) in spec.vips.iter().enumerate() {
        let field = format!("vips[{i}]");
        if let Some(Err(m)) = vip.interface.as_deref().map(interface_name) {
            errs.push(format!("{field}.interface"), m);
        }
        match prefixed_address(&vip.address) {
            Ok((addr, prefix)) => {
                if let Err(m) = unicast(addr) {
                    errs.push(&field, m);
                } else if vip_addrs.contains(&addr) {
                    errs.push(&field, format!("{addr} is listed twice"));
                } else if vip_addrs
                    .first()
                    .is_some_and(|f| f.is_ipv4() != addr.is_ipv4())
                {
                    errs.push(&field, "all VIPs of a cluster must be one address family");
                } else if addr.is_ipv6() {
                    // The agent's VRRP (both versions) and its gratuitous ARP are IPv4-only: an IPv6 VIP
                    // would be accepted here and never held by any node.
                    errs.push(
                        &field,
                        format!(
                            "{addr}: IPv6 VIPs are not supported (the agent's VRRP is IPv4-only)"
                        ),
                    );
                } else {
                    out.vips[i].address = format!("{addr}/{prefix}");
                    if out.vips[i].interface.as_deref() == Some(spec.interface.as_str()) {
                        // The cluster's own interface, named explicitly: store it the plain way.
                        out.vips[i].interface = None;
                    }
                    vip_addrs.push(addr);
                }
            }
            Err(m) => errs.push(&field, m),
        }
    }
    let family_v4 = vip_addrs.first().map(IpAddr::is_ipv4);

    let mut peers = HashSet::new();
    for (i, text) in spec.unicast_peers.iter().enumerate() {
        let field = format!("unicast_peers[{i}]");
        match text.parse::<IpAddr>() {
            Ok(addr) => {
                if let Err(m) = unicast(addr) {
                    errs.push(&field, m);
                } else if family_v4.is_some_and(|v4| v4 != addr.is_ipv4()) {
                    errs.push(&field, "must be the same address family as the VIPs");
                } else if !peers.insert(addr) {
                    errs.push(&field, format!("{addr} is listed twice"));
                } else {
                    out.unicast_peers[i] = addr.to_string();
                }
            }
            Err(_) => errs.push(&field, format!("{text:?} is not an IP address")),
        }
    }

    if spec.preempt_delay_ms > MAX_PREEMPT_DELAY_MS {
        errs.push(
            "preempt_delay_ms",
            format!(
                "must be at most {MAX_PREEMPT_DELAY_MS} ms, got {}",
                spec.preempt_delay_ms
            ),
        );
    }
    if !(1..=MAX_GARP_COUNT).contains(&spec.garp.count) {
        errs.push(
            "garp.count",
            format!("must be 1 to {MAX_GARP_COUNT}, got {}", spec.garp.count),
        );
    }
    if spec.garp.spacing_ms > MAX_GARP_SPACING_MS {
        errs.push(
            "garp.spacing_ms",
            format!(
                "must be at most {MAX_GARP_SPACING_MS} ms, got {}",
                spec.garp.spacing_ms
            ),
        );
    }
    if spec.garp.refresh_ms != 0 && spec.garp.refresh_ms < MIN_GARP_REFRESH_MS {
        errs.push(
            "garp.refresh_ms",
            format!(
                "must be 0 (off) or at least {MIN_GARP_REFRESH_MS} ms, got {}",
                spec.garp.refresh_ms
            ),
        );
    }
    if let Some(sync) = &spec.conn_sync {
        if let Err(m) = interface_name(&sync.interface) {
            errs.push("conn_sync.interface", m);
        }
    }

    let mut keys = HashSet::new();
    for (i, svc) in spec.services.iter().enumerate() {
        let field = format!("services[{i}]");
        if let Some(norm) = service_spec(&field, svc, &vip_addrs, &mut errs) {
            if !keys.insert((norm.vip.clone(), norm.port, norm.protocol)) {
                errs.push(
                    format!("{field}.port"),
                    format!(
                        "service {}:{}:{} is listed twice",
                        norm.protocol, norm.vip, norm.port
                    ),
                );
            }
            out.services[i] = norm;
        }
    }

    errs.into_result(ValidCluster(out))
}

fn service_spec(
    field: &str,
    svc: &ServiceSpec,
    vips: &[IpAddr],
    errs: &mut FieldErrors,
) -> Option<ServiceSpec> {
    let before = errs.0.len();
    let mut out = svc.clone();
    let vip = match svc.vip.parse::<IpAddr>() {
        Ok(vip) if vips.contains(&vip) => Some(vip),
        Ok(vip) => {
            errs.push(
                format!("{field}.vip"),
                format!("{vip} is not one of the cluster's VIPs"),
            );
            None
        }
        Err(_) => {
            errs.push(
                format!("{field}.vip"),
                format!("{:?} is not an IP address", svc.vip),
            );
            None
        }
    };
    if svc.port == 0 {
        errs.push(format!("{field}.port"), "must be 1 to 65535");
    }
    if svc.persistence_s > MAX_PERSISTENCE_S {
        errs.push(
            format!("{field}.persistence_s"),
            format!(
                "must be 0 to {MAX_PERSISTENCE_S} seconds, got {}",
                svc.persistence_s
            ),
        );
    }
    if let Some(prefix) = svc.persistence_prefix {
        let max = if vip.is_some_and(|v| v.is_ipv6()) {
            128
        } else {
            32
        };
        if svc.persistence_s == 0 {
            errs.push(
                format!("{field}.persistence_prefix"),
                "only meaningful with persistence_s > 0",
            );
        } else if prefix > max {
            errs.push(
                format!("{field}.persistence_prefix"),
                format!("must be 0 to {max}, got {prefix}"),
            );
        }
    }
    health_check(&format!("{field}.check"), &svc.check, svc, vip, errs);

    let mut seen = HashSet::new();
    for (j, rs) in svc.real_servers.iter().enumerate() {
        let rfield = format!("{field}.real_servers[{j}]");
        if let Some(norm) = real_server(&rfield, rs, vip, svc, errs) {
            if !seen.insert((norm.address.clone(), norm.port)) {
                errs.push(
                    format!("{rfield}.address"),
                    format!("real server {}:{} is listed twice", norm.address, norm.port),
                );
            }
            out.real_servers[j] = norm;
        }
    }
    if let Some(vip) = vip {
        out.vip = vip.to_string();
    }
    (errs.0.len() == before).then_some(out)
}

/// Validates one real server of `svc` (whose VIP parsed as `vip`, if it did).
pub fn real_server(
    field: &str,
    rs: &RealServerSpec,
    vip: Option<IpAddr>,
    svc: &ServiceSpec,
    errs: &mut FieldErrors,
) -> Option<RealServerSpec> {
    let before = errs.0.len();
    let mut out = rs.clone();
    match rs.address.parse::<IpAddr>() {
        Ok(addr) => {
            if let Err(m) = unicast(addr) {
                errs.push(format!("{field}.address"), m);
            } else if vip.is_some_and(|v| v.is_ipv4() != addr.is_ipv4()) {
                errs.push(
                    format!("{field}.address"),
                    "must be the same address family as the VIP",
                );
            }
            out.address = addr.to_string();
        }
        Err(_) => errs.push(
            format!("{field}.address"),
            format!("{:?} is not an IP address", rs.address),
        ),
    }
    if rs.port == 0 {
        errs.push(format!("{field}.port"), "must be 1 to 65535");
    } else if svc.forward != ForwardMethod::Nat && rs.port != svc.port {
        errs.push(
            format!("{field}.port"),
            format!(
                "{} forwarding cannot change the port: must equal the service port {}, got {}",
                svc.forward, svc.port, rs.port
            ),
        );
    }
    if rs.weight > MAX_WEIGHT {
        errs.push(
            format!("{field}.weight"),
            format!("must be 0 to {MAX_WEIGHT}, got {}", rs.weight),
        );
    }
    (errs.0.len() == before).then_some(out)
}

/// A real-server weight on its own (the set-weight endpoint).
pub fn weight(w: u32) -> Result<u32, FieldError> {
    if w > MAX_WEIGHT {
        Err(FieldError::new(
            "weight",
            format!("must be 0 to {MAX_WEIGHT}, got {w}"),
        ))
    } else {
        Ok(w)
    }
}

/// Longest preempt delay (keepalived allows up to an hour too).
const MAX_PREEMPT_DELAY_MS: u32 = 3_600_000;
/// Gratuitous ARPs per VIP and burst.
const MAX_GARP_COUNT: u32 = 100;
const MAX_GARP_SPACING_MS: u32 = 10_000;
/// A refresh more often than once a second only floods the segment.
const MIN_GARP_REFRESH_MS: u32 = 1_000;

/// A Linux interface name: 1–15 bytes, no '/', ':' or whitespace.
fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("must be 1 to 15 characters, got {}", name.len()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// `198.18.0.10` or `198.18.0.10/32` -> (address, prefix); a bare address is a host route.
pub fn prefixed_address(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or address/prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("{text:?}: prefix length must be 0 to {max}")),
        },
    };
    Ok((addr, prefix))
}

fn unicast(addr: IpAddr) -> Result<(), String> {
    let bad = match addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if bad {
        Err(format!("{addr} is not a unicast address"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_proto::{CheckKind, DownAction, HealthCheck, Protocol, Scheduler, VipSpec};

    fn spec() -> ClusterSpec {
        ClusterSpec {
            vrid: 51,
            interface: "eth0".into(),
            vrrp_version: 3,
            advert_interval_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            vips: vec!["198.18.0.10".into()],
            unicast_peers: vec![],
            garp: Default::default(),
            conn_sync: None,
            services: vec![ServiceSpec {
                vip: "198.18.0.10".into(),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check: HealthCheck::tcp(),
                real_servers: vec![RealServerSpec {
                    address: "198.18.2.1".into(),
                    port: 8080,
                    weight: 1,
                    enabled: None,
                }],
            }],
        }
    }

    fn fields(result: Result<ValidCluster, FieldErrors>) -> Vec<String> {
        match result {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|f| f.field).collect(),
        }
    }

    #[test]
    fn accepts_a_good_spec_and_normalises_it() {
        let ValidCluster(v) = cluster_spec(&spec()).expect("valid");
        assert_eq!(v.vips, vec!["198.18.0.10/32"]);
    }

    #[test]
    fn ipv6_vips_are_refused_in_both_vrrp_versions() {
        for version in [3, 2] {
            let mut s = spec();
            s.vrrp_version = version;
            s.advert_interval_ms = 1000;
            s.vips = vec!["2001:DB8:0:0::10/128".into()];
            s.services[0].vip = "2001:db8::10".into();
            s.services[0].real_servers[0].address = "2001:db8::2:1".into();
            let errs = cluster_spec(&s).expect_err("an IPv6 VIP must be refused");
            let vip = errs
                .0
                .iter()
                .find(|f| f.field == "vips[0]")
                .unwrap_or_else(|| panic!("no vips[0] error in {errs:?}"));
            assert!(
                vip.message.contains("IPv6 VIPs are not supported"),
                "{}",
                vip.message
            );
            // As an internal VIP on its own interface too.
            let mut s = spec();
            s.vrrp_version = version;
            s.advert_interval_ms = 1000;
            s.vips.push(VipSpec {
                address: "2001:db8::254/64".into(),
                interface: Some("eth1".into()),
            });
            assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"], "v{version}");
        }
    }

    #[test]
    fn vrid_range() {
        for ok in [1, 255] {
            let mut s = spec();
            s.vrid = ok;
            assert!(cluster_spec(&s).is_ok(), "vrid {ok}");
        }
        for bad in [0, 256] {
            let mut s = spec();
            s.vrid = bad;
            assert_eq!(fields(cluster_spec(&s)), vec!["vrid"], "vrid {bad}");
        }
    }

    #[test]
    fn advert_interval_v3_and_v2() {
        for (version, ms, ok) in [
            (3, 10, true),
            (3, 40_950, true),
            (3, 100, true),
            (3, 0, false),
            (3, 15, false),
            (3, 40_960, false),
            (2, 1000, true),
            (2, 255_000, true),
            (2, 1500, false),
            (2, 100, false),
            (2, 256_000, false),
        ] {
            let mut s = spec();
            s.vrrp_version = version;
            s.advert_interval_ms = ms;
            let got = fields(cluster_spec(&s));
            if ok {
                assert!(got.is_empty(), "v{version} {ms} ms: {got:?}");
            } else {
                assert_eq!(got, vec!["advert_interval_ms"], "v{version} {ms} ms");
            }
        }
        let mut s = spec();
        s.vrrp_version = 4;
        assert_eq!(fields(cluster_spec(&s)), vec!["vrrp_version"]);
    }

    #[test]
    fn vips_must_be_unicast_one_family_and_v4_for_v2() {
        let mut s = spec();
        s.vips = vec!["198.18.0.10/33".into()];
        assert!(fields(cluster_spec(&s)).contains(&"vips[0]".to_string()));
        s.vips = vec!["198.18.0.10".into(), "198.18.0.10/32".into()];
        assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
        s.vips = vec!["198.18.0.10".into(), "2001:db8::1".into()];
        assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
        s.vips = vec!["198.18.0.10".into(), "224.0.0.18".into()];
        assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
        s.vips = vec!["198.18.0.10".into(), "not-an-ip".into()];
        assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
        s.vips = vec![];
        assert!(fields(cluster_spec(&s)).contains(&"vips".to_string()));
        let mut s = spec();
        s.vrrp_version = 2;
        s.advert_interval_ms = 1000;
        s.vips.push("2001:db8::1".into());
        assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    }

    #[test]
    fn services_need_a_cluster_vip_and_unique_keys() {
        let mut s = spec();
        s.services[0].vip = "198.18.0.11".into();
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].vip"]);
        let mut s = spec();
        s.services.push(s.services[0].clone());
        assert_eq!(fields(cluster_spec(&s)), vec!["services[1].port"]);
        // Same VIP and port, other protocol: allowed.
        s.services[1].protocol = Protocol::Udp;
        assert!(cluster_spec(&s).is_ok());
        let mut s = spec();
        s.services[0].port = 0;
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].port"]);
    }

    #[test]
    fn schedulers_are_the_kernels() {
        for name in [
            "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
        ] {
            let parsed: Result<Scheduler, _> = name.parse();
            assert!(parsed.is_ok(), "{name}");
        }
        assert!("maglev".parse::<Scheduler>().is_err());
        let body = r#"{"vip":"198.18.0.10","port":80,"protocol":"tcp","scheduler":"random","forward":"nat"}"#;
        assert!(serde_json::from_str::<ServiceSpec>(body).is_err());
    }

    #[test]
    fn weights_ports_and_forwarding() {
        let mut s = spec();
        s.services[0].real_servers[0].weight = 65_535;
        assert!(cluster_spec(&s).is_ok());
        s.services[0].real_servers[0].weight = 65_536;
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].real_servers[0].weight"]
        );
        assert!(weight(0).is_ok() && weight(65_535).is_ok() && weight(65_536).is_err());

        let mut s = spec();
        s.services[0].forward = ForwardMethod::Dr;
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].real_servers[0].port"]
        );
        s.services[0].real_servers[0].port = 80;
        assert!(cluster_spec(&s).is_ok());

        let mut s = spec();
        s.services[0].real_servers[0].address = "2001:db8::1".into();
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].real_servers[0].address"]
        );
        s.services[0].real_servers[0].address = "198.18.2.300".into();
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].real_servers[0].address"]
        );

        let mut s = spec();
        let copy = s.services[0].real_servers[0].clone();
        s.services[0].real_servers.push(copy);
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].real_servers[1].address"]
        );
    }

    #[test]
    fn health_checks() {
        let mut s = spec();
        s.services[0].check = HealthCheck {
            kind: CheckKind::Http,
            path: Some("/healthz".into()),
            expect_status: Some(200),
            ..HealthCheck::tcp()
        };
        assert!(cluster_spec(&s).is_ok());
        s.services[0].check.path = Some("/a b".into());
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
        s.services[0].check.path = None;
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
        let mut s = spec();
        s.services[0].check.timeout_ms = 2000;
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].check.timeout_ms"]
        );
        s.services[0].check.timeout_ms = 500;
        s.services[0].check.fall = 0;
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.fall"]);
        s.services[0].check.fall = 3;
        s.services[0].check.path = Some("/x".into());
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
    }

    #[test]
    fn health_check_kinds_and_parameters() {
        use lbfleet_proto::{CheckOverride, DnsType, Quorum, SorryServer};
        let mut s = spec();
        let ok = |s: &ClusterSpec| fields(cluster_spec(s));
        // https with SNI, codes and body; dns; script.
        s.services[0].check = HealthCheck {
            path: Some("/healthz".into()),
            expect_codes: vec![200, 204],
            host: Some("app.example".into()),
            sni: Some("app.example".into()),
            tls_verify: true,
            body_contains: Some("ok".into()),
            ..HealthCheck::of_kind(CheckKind::Https)
        };
        assert_eq!(ok(&s), Vec::<String>::new());
        s.services[0].check.sni = Some("bad name".into());
        s.services[0].check.expect_codes = vec![700];
        assert_eq!(
            ok(&s),
            vec!["services[0].check.expect_codes", "services[0].check.sni"]
        );
        s.services[0].check = HealthCheck {
            dns_name: Some("www.example".into()),
            dns_type: Some(DnsType::Aaaa),
            dns_expect: Some("2001:db8::1".into()),
            ..HealthCheck::of_kind(CheckKind::Dns)
        };
        assert_eq!(ok(&s), Vec::<String>::new());
        s.services[0].check.dns_name = None;
        s.services[0].check.path = Some("/x".into());
        assert_eq!(
            ok(&s),
            vec!["services[0].check.path", "services[0].check.dns_name"]
        );
        // A script is a name in the image's check directory, never a path or a command line.
        s.services[0].check = HealthCheck {
            script: Some("pg-ready".into()),
            ..HealthCheck::of_kind(CheckKind::Script)
        };
        assert_eq!(ok(&s), Vec::<String>::new());
        for bad in ["../../bin/sh", "/bin/sh", "x/y", "sh -c 'id'", "..", ""] {
            s.services[0].check.script = Some(bad.into());
            assert_eq!(ok(&s), vec!["services[0].check.script"], "{bad:?}");
        }
        s.services[0].check.script = None;
        assert_eq!(ok(&s), vec!["services[0].check.script"]);
        // A tcp check takes no script; jitter and warm-up bounds.
        s.services[0].check = HealthCheck {
            script: Some("x".into()),
            jitter_ms: Some(5000),
            warmup_ms: 4_000_000,
            ..HealthCheck::tcp()
        };
        assert_eq!(
            ok(&s),
            vec![
                "services[0].check.warmup_ms",
                "services[0].check.jitter_ms",
                "services[0].check.script"
            ]
        );
        // Sorry server, quorum and overrides.
        s.services[0].check = HealthCheck {
            on_down: DownAction::Remove,
            sorry_server: Some(SorryServer {
                address: "198.18.2.200".into(),
                port: 80,
            }),
            quorum: Some(Quorum {
                min_healthy: 1,
                priority_drop: 60,
            }),
            overrides: vec![CheckOverride {
                address: "198.18.2.1".into(),
                port: 8080,
                check: HealthCheck {
                    path: Some("/other".into()),
                    ..HealthCheck::of_kind(CheckKind::Http)
                },
            }],
            ..HealthCheck::tcp()
        };
        assert_eq!(ok(&s), Vec::<String>::new());
        let c = &mut s.services[0].check;
        c.sorry_server = Some(SorryServer {
            address: "198.18.2.1".into(),
            port: 8080,
        });
        c.quorum = Some(Quorum {
            min_healthy: 2,
            priority_drop: 0,
        });
        c.overrides[0].port = 9;
        c.overrides[0].check.quorum = Some(Quorum {
            min_healthy: 1,
            priority_drop: 1,
        });
        assert_eq!(
            ok(&s),
            vec![
                "services[0].check.sorry_server.address",
                "services[0].check.quorum.min_healthy",
                "services[0].check.quorum.priority_drop",
                "services[0].check.overrides[0].address",
                "services[0].check.overrides[0].check"
            ]
        );
    }

    #[test]
    fn plain_old_checks_still_validate() {
        let mut s = spec();
        s.services[0].check = serde_json::from_str(
            r#"{"kind":"http","path":"/healthz","expect_status":200,"interval_ms":1000,"timeout_ms":500,"rise":2,"fall":3}"#,
        )
        .unwrap_or_default();
        assert_eq!(s.services[0].check.kind, CheckKind::Http);
        assert!(cluster_spec(&s).is_ok());
        s.services[0].check = serde_json::from_str(r#"{"kind":"none"}"#).unwrap_or_default();
        assert_eq!(s.services[0].check.kind, CheckKind::None);
        assert!(cluster_spec(&s).is_ok());
    }

    #[test]
    fn report_texts_counts_names_and_addresses_are_bounded() {
        use lbfleet_proto::{
            AgentReport, HealthState, HealthTransition, Protocol, RealServerHealth,
            RealServerReport, ServiceReport,
        };
        let health = |e: &str| RealServerHealth {
            state: HealthState::Down,
            since: Some(1),
            last_error: Some(e.into()),
            latency_us: None,
            flaps: 1,
            check: None,
        };
        let rs = |e: &str| RealServerReport {
            address: "198.18.2.1".into(),
            port: 80,
            healthy: false,
            weight: 0,
            active_conns: 0,
            inactive_conns: 0,
            connections: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            health: Some(health(e)),
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
                real_servers: vec![rs("HTTP 500 from /healthz")],
            }],
            ..Default::default()
        };
        assert!(report(&r).is_ok());
        r.services[0].real_servers.push(rs(&"x".repeat(513)));
        r.services[0].real_servers.push(rs("a\nb"));
        let t = HealthTransition {
            service: "198.18.0.10:80/tcp".into(),
            address: "198.18.2.1".into(),
            port: 80,
            from: HealthState::Up,
            to: HealthState::Down,
            at: 1,
            reason: Some("\u{1b}[31m".into()),
        };
        r.health_events = vec![t.clone()];
        let fields: Vec<String> = report(&r)
            .err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default();
        assert_eq!(
            fields,
            vec![
                "health_events[0].reason",
                "services[0].real_servers[1].health.last_error",
                "services[0].real_servers[2].health.last_error",
            ]
        );
        r.services[0].real_servers.truncate(1);
        r.health_events = vec![
            HealthTransition {
                reason: None,
                ..t.clone()
            };
            lbfleet_proto::bounds::MAX_HEALTH_EVENTS + 1
        ];
        assert!(report(&r).is_err());
        r.health_events.clear();
        assert!(report(&r).is_ok());

        // The agent-sent texts outside health: one rule for all.
        let transition = |reason: &str| lbfleet_proto::VrrpTransition {
            from: lbfleet_proto::VrrpState::Backup,
            to: lbfleet_proto::VrrpState::Master,
            reason: reason.into(),
            at_ms: 1,
        };
        let fields_of = |r: &AgentReport| -> Vec<String> {
            report(r)
                .err()
                .map(|e| e.0.into_iter().map(|f| f.field).collect())
                .unwrap_or_default()
        };
        let mut bad = r.clone();
        bad.vrrp_transitions = vec![
            transition("master down timer expired"),
            transition("a\u{7}b"),
            transition(&"r".repeat(lbfleet_proto::bounds::MAX_TEXT + 1)),
        ];
        bad.errors = vec!["ok".into(), "line\nbreak".into()];
        bad.vrrp_master = Some("lb-02 <- trust me".into());
        bad.vrrp_dropped.insert("ttl".into(), 1);
        bad.vrrp_dropped.insert("<b>x</b>".into(), 1);
        bad.services[0].vip = "198.18.0.10; drop".into();
        bad.services[0].real_servers[0].address = "rs-1".into();
        bad.address = Some("here".into());
        assert_eq!(
            fields_of(&bad),
            vec![
                "address",
                "vrrp_master",
                "vrrp_transitions[1].reason",
                "vrrp_transitions[2].reason",
                "errors[1]",
                "vrrp_dropped[\"<b>x</b>\"]",
                "services[0].vip",
                "services[0].real_servers[0].address",
            ]
        );
        // vrrp_master: an address or a node name.
        for good in ["198.18.0.3", "fe80::1", "lb-02"] {
            let ok = AgentReport {
                vrrp_master: Some(good.into()),
                ..AgentReport::default()
            };
            assert!(report(&ok).is_ok(), "{good}");
        }
        // Counts: over the bound, the list is named and its items are not looked into.
        let flood = AgentReport {
            vrrp_transitions: vec![
                transition("x\n");
                lbfleet_proto::bounds::MAX_VRRP_TRANSITIONS + 1
            ],
            errors: vec![String::new(); lbfleet_proto::bounds::MAX_ERRORS + 1],
            ..AgentReport::default()
        };
        assert_eq!(fields_of(&flood), vec!["vrrp_transitions", "errors"]);
        // Many bad fields: the first twenty are named, then a count.
        let many = AgentReport {
            vrrp_transitions: vec![transition("x\n"); lbfleet_proto::bounds::MAX_VRRP_TRANSITIONS],
            ..AgentReport::default()
        };
        let got = fields_of(&many);
        assert_eq!(
            (got.len(), got.last().map(String::as_str)),
            (21, Some("..."))
        );
        // What the agent fits passes.
        let mut fitted = bad.clone();
        fitted.vrrp_master = None;
        fitted.vrrp_dropped.remove("<b>x</b>");
        fitted.services[0].vip = "198.18.0.10".into();
        fitted.services[0].real_servers[0].address = "198.18.2.1".into();
        fitted.address = None;
        lbfleet_proto::bounds::fit_report(&mut fitted);
        assert!(report(&fitted).is_ok(), "{:?}", report(&fitted));
    }

    #[test]
    fn persistence() {
        let mut s = spec();
        s.services[0].persistence_s = 300;
        s.services[0].persistence_prefix = Some(24);
        assert!(cluster_spec(&s).is_ok());
        s.services[0].persistence_prefix = Some(33);
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].persistence_prefix"]
        );
        s.services[0].persistence_prefix = Some(24);
        s.services[0].persistence_s = MAX_PERSISTENCE_S + 1;
        assert_eq!(fields(cluster_spec(&s)), vec!["services[0].persistence_s"]);
        s.services[0].persistence_s = 0;
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["services[0].persistence_prefix"]
        );
    }

    #[test]
    fn several_errors_are_all_reported() {
        let mut s = spec();
        s.vrid = 0;
        s.interface = "this-name-is-far-too-long".into();
        s.services[0].real_servers[0].weight = 70_000;
        assert_eq!(
            fields(cluster_spec(&s)),
            vec!["vrid", "interface", "services[0].real_servers[0].weight"]
        );
    }

    #[test]
    fn names_macs_priorities() {
        assert!(cluster_name("ext").is_ok());
        assert!(cluster_name("Ext").is_err());
        assert!(cluster_name("-ext").is_err());
        assert!(cluster_name("").is_err());
        assert!(hostname("lb-01").is_ok());
        assert!(hostname("01").is_err());
        assert!(hostname("<script>").is_err());
        for mac_like in [
            "aa-bb-cc-00-00-01",
            "aabbcc000001",
            "aabb-cc00-0001",
            "dead-beef-cafe",
        ] {
            let err = hostname(mac_like).err().map(|e| e.message);
            assert!(
                err.as_deref().is_some_and(|m| m.contains("MAC")),
                "{mac_like}: {err:?}"
            );
        }
        for mac_like in ["aabb.cc00.0001", "aa:bb:cc:00:00:01", "AA_BB_CC_00_00_01"] {
            assert!(looks_like_mac(mac_like), "{mac_like}");
        }
        // Hex-looking names that are not twelve digits stay names.
        for name in ["lb-ext-01", "cafe", "bad-cafe-face-01", "aabbcc00000"] {
            assert!(hostname(name).is_ok(), "{name}");
        }
        assert!(password("correct horse battery").is_ok());
        assert!(password(&"\t".repeat(12)).is_err());
        assert!(password(&" ".repeat(40)).is_err());
        assert!(password("a b c d e f g h i j k").is_err());
        assert!(password("abcdefghijkl").is_ok());
        // Characters, not bytes: six two-byte letters are six.
        assert!(password("éééééé").is_err());
        assert!(password("éééééééééééé").is_ok());
        assert_eq!(
            mac("52-54-00-AB-CD-EF").ok().as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert!(mac("52:54:00:ab:cd").is_err());
        assert!(mac("52:54:00:ab:cd:zz").is_err());
        assert_eq!(priority(254).ok(), Some(254));
        assert!(priority(0).is_err() && priority(255).is_err());
        assert!(image_name("2026.11.1").is_ok());
        assert!(image_name("../x").is_err());
        assert!(image_file("kernel", "vmlinuz").is_ok());
        assert!(image_file("kernel", "../vmlinuz").is_err());
        assert!(image_file("kernel", "a/b").is_err());
    }

    #[test]
    fn image_cmdlines_cannot_replace_init_or_the_boot_interface() {
        assert!(image_cmdline("console=ttyS0,115200n8 quiet panic=10").is_ok());
        // Words that merely contain the keys are fine.
        assert!(image_cmdline("systemd.unit=x initcall_debug").is_ok());
        for bad in [
            "BOOTIF=01-aa-bb-cc-00-00-01",
            "quiet bootif=01-aa-bb-cc-00-00-01",
            "init=/bin/sh",
            "rdinit=/bin/sh",
            "console=ttyS0 RDINIT=/bin/sh",
            "quiet -- init=/bin/sh",
            "lbfleet.console_shell=1",
            "LBFLEET.server=http://198.18.0.66",
        ] {
            let err = image_cmdline(bad).err();
            assert_eq!(
                err.as_ref().map(|e| e.field.as_str()),
                Some("cmdline"),
                "{bad}"
            );
        }
    }

    #[test]
    fn report_fields_accept_addresses_and_versions_and_name_each_bad_field() {
        assert!(report_fields(Some("198.18.1.7"), Some("0.1.0"), Some("lb-2026.11")).is_ok());
        assert!(report_fields(Some("2001:db8::7"), None, None).is_ok());
        assert!(report_fields(None, None, None).is_ok());
        let Err(errs) = report_fields(Some("not-an-ip"), Some(""), Some("a b")) else {
            panic!("a bad address and bad versions were accepted");
        };
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["address", "agent_version", "image_version"]);
        assert!(report_fields(Some("0.0.0.0"), None, None).is_err());
        assert!(report_fields(None, Some(&"x".repeat(65)), None).is_err());
    }

    #[test]
    fn vip_interfaces_garp_sync_and_preempt_delay() {
        let mut s = spec();
        s.vips = vec![
            "198.18.0.10".into(),
            lbfleet_proto::VipSpec {
                address: "198.18.2.254/24".into(),
                interface: Some("eth1".into()),
            },
            lbfleet_proto::VipSpec {
                address: "198.18.0.11".into(),
                interface: Some("eth0".into()),
            },
        ];
        s.conn_sync = Some(lbfleet_proto::ConnSyncSpec {
            interface: "eth1".into(),
            sync_id: 9,
        });
        s.preempt_delay_ms = 5000;
        let ValidCluster(v) = cluster_spec(&s).expect("valid");
        assert_eq!(v.vips[0], "198.18.0.10/32");
        assert_eq!(v.vips[1].interface.as_deref(), Some("eth1"));
        // The cluster's own interface named explicitly is stored the plain way.
        assert_eq!(v.vips[2], "198.18.0.11/32");

        let mut bad = s.clone();
        bad.vips[1].interface = Some("eth 1".into());
        bad.garp.count = 0;
        bad.garp.spacing_ms = 60_000;
        bad.garp.refresh_ms = 10;
        bad.preempt_delay_ms = 4_000_000;
        bad.conn_sync = Some(lbfleet_proto::ConnSyncSpec {
            interface: "".into(),
            sync_id: 0,
        });
        let errs = cluster_spec(&bad).expect_err("invalid").to_string();
        for field in [
            "vips[1].interface",
            "garp.count",
            "garp.spacing_ms",
            "garp.refresh_ms",
            "preempt_delay_ms",
            "conn_sync.interface",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
    }
}
