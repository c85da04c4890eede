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

/// A node state named in a filter (`?state=`): one of the lifecycle's states.
pub fn node_state(text: &str) -> Result<lbfleet_proto::NodeState, FieldError> {
    text.parse()
        .map_err(|e: lbfleet_proto::UnknownValue| FieldError::new("state", e.to_string()))
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

    // VIPs: IPv4, IPv6 or both (dual-stack). One election moves them all: it runs over IPv4 when the
    // cluster has an IPv4 VIP, else over IPv6 (VRRPv3, RFC 5798); VIPs of the other family follow it
    // (docs/data-path.md, "IPv6"). VRRPv2 (RFC 3768) is IPv4-only.
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
                } else if addr.is_ipv6() && spec.vrrp_version == 2 {
                    errs.push(
                        &field,
                        format!(
                            "{addr}: VRRPv2 is IPv4-only (RFC 3768); IPv6 VIPs need vrrp_version 3"
                        ),
                    );
                } else if matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80) {
                    // fe80::/10 is each interface's own; VRRP's adverts come from it, not to it.
                    errs.push(
                        &field,
                        format!("{addr}: a link-local address cannot be a VIP"),
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
    // The election's family: IPv4 when there is an IPv4 VIP.
    let family_v4 = (!vip_addrs.is_empty()).then(|| vip_addrs.iter().any(IpAddr::is_ipv4));
    let subnets = on_link_subnets(spec);

    let mut peers = HashSet::new();
    for (i, text) in spec.unicast_peers.iter().enumerate() {
        let field = format!("unicast_peers[{i}]");
        match text.parse::<IpAddr>() {
            Ok(addr) => {
                if let Err(m) = unicast(addr) {
                    errs.push(&field, m);
                } else if family_v4.is_some_and(|v4| v4 != addr.is_ipv4()) {
                    errs.push(
                        &field,
                        "must be the address family VRRP runs over (IPv4 when the cluster has an IPv4 VIP)",
                    );
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
        if let Some(norm) = service_spec(&field, svc, &vip_addrs, &subnets, &mut errs) {
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
    subnets: &[(IpAddr, u8)],
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
    if svc.forward == ForwardMethod::Tun && vip.is_some_and(|v| v.is_ipv6()) {
        // IPVS would send IPv6-in-IPv6 (ip6tnl); `lbfleet-server realserver` sets up only the ipip side.
        errs.push(
            format!("{field}.forward"),
            "tun forwarding is IPv4-only here; use dr (same segment) or nat for an IPv6 VIP",
        );
    }
    health_check(&format!("{field}.check"), &svc.check, svc, vip, errs);

    let mut seen = HashSet::new();
    for (j, rs) in svc.real_servers.iter().enumerate() {
        let rfield = format!("{field}.real_servers[{j}]");
        if let Some(norm) = real_server(&rfield, rs, vip, svc, subnets, errs) {
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

/// The subnets the cluster's balancers are on, as far as the spec says: those of its VIPs written with a
/// prefix shorter than a host's (`198.18.0.10/24` on the VRRP interface, `198.18.2.254/24` on the internal
/// one). A spec whose VIPs are all host addresses (`/32`) names none.
pub fn on_link_subnets(spec: &ClusterSpec) -> Vec<(IpAddr, u8)> {
    spec.vips
        .iter()
        .filter_map(|v| prefixed_address(&v.address).ok())
        .filter(|(a, p)| *p < if a.is_ipv4() { 32 } else { 128 })
        .collect()
}

/// Whether `addr` is inside `net/prefix` (different families: no).
pub fn in_subnet(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Validates one real server of `svc` (whose VIP parsed as `vip`, if it did). `subnets` are the cluster's
/// [`on_link_subnets`]: a DR real server must be in one of them when there are any (IPVS's direct routing
/// rewrites only the MAC, so the real server must be on a segment the balancer is on).
pub fn real_server(
    field: &str,
    rs: &RealServerSpec,
    vip: Option<IpAddr>,
    svc: &ServiceSpec,
    subnets: &[(IpAddr, u8)],
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
            } else if svc.forward == ForwardMethod::Dr
                && !subnets.is_empty()
                && !subnets.iter().any(|(n, p)| in_subnet(addr, *n, *p))
            {
                let nets: Vec<String> = subnets.iter().map(|(n, p)| format!("{n}/{p}")).collect();
                errs.push(
                    format!("{field}.address"),
                    format!(
                        "dr forwarding needs the real server on the balancers' segment: {addr} is in none of \
                         the subnets of the cluster's VIPs ({}); use tun (or nat) to reach another subnet",
                        nets.join(", ")
                    ),
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
mod tests;
