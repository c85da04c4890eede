//! Health checking on the wire: the check spec of a virtual service (what to probe, how often, what a node
//! does with a server that fails) and the health a node reports for each real server.
//!
//! Everything new is optional with a default, so a spec written before these fields existed (`{"kind":
//! "http", "path": "/healthz", "expect_status": 200}`) reads the same and serializes back unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::UnknownValue;

wire_enum!(
    /// What a real-server health check does.
    CheckKind {
        None => "none", Tcp => "tcp", Http => "http", Https => "https", Dns => "dns", Script => "script",
    }
);

wire_enum!(
    /// What happens to a real server its check marks down: `drain` sets its weight to 0 (established
    /// connections finish), `remove` deletes it from the kernel table (they are cut).
    DownAction { Drain => "drain", Remove => "remove" }
);

wire_enum!(
    /// DNS record type a `dns` check asks for.
    DnsType {
        A => "A", Ns => "NS", Cname => "CNAME", Soa => "SOA", Ptr => "PTR", Mx => "MX", Txt => "TXT",
        Aaaa => "AAAA", Srv => "SRV",
    }
);

impl DnsType {
    /// The record type's number (RFC 1035 3.2.2, RFC 3596, RFC 2782).
    pub fn code(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Ptr => 12,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
            DnsType::Srv => 33,
        }
    }
}

wire_enum!(
    /// A real server's health as its node sees it. `not_checked`: no result yet (new server, warm-up, or a
    /// service without a check); such a server keeps its weight. `admin_drained`: disabled through the API,
    /// which wins over any check.
    HealthState {
        NotChecked => "not_checked", Up => "up", Down => "down", AdminDrained => "admin_drained",
    }
);

/// Health check of the real servers of one virtual service, and what the node does with the results.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP path (`http`, `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Expected HTTP status (`http`, `https`). With `expect_codes` too, either matches. Neither: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// More accepted HTTP statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_codes: Vec<u16>,
    /// `Host` header (`http`, `https`); default: the real server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The response body must contain this text (first 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// TLS server name (`https`); default: `host`, else none (no SNI for an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the real server's certificate chain and name (`https`). Off by default: real servers often
    /// have self-signed certificates; the check then proves the TLS handshake and the HTTP answer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_verify: bool,
    /// PEM certificates to trust when verifying (`https`); default: the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// Name to query (`dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Record type to query (`dns`); default `A`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_type: Option<DnsType>,
    /// An answer that must be in the response (`dns`): an address for A/AAAA, a name or text otherwise.
    /// Without it any answer with RCODE NOERROR and at least one record passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_expect: Option<String>,
    /// Name of an executable shipped in the node's image under `/etc/lbfleet/checks/` (`script`). Never a
    /// path or a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Port to probe instead of the real server's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "HealthCheck::default_interval_ms")]
    pub interval_ms: u32,
    #[serde(default = "HealthCheck::default_timeout_ms")]
    pub timeout_ms: u32,
    /// Consecutive successes before a failed server is put back.
    #[serde(default = "HealthCheck::default_rise")]
    pub rise: u32,
    /// Consecutive failures before a server is taken out.
    #[serde(default = "HealthCheck::default_fall")]
    pub fall: u32,
    /// Grace time for a server the node has not checked before: its failures during this time do not count
    /// (it may still be starting). 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_ms: u32,
    /// The first probe of a server waits a random time up to this, so a fleet does not probe in lock-step;
    /// after that probes are `interval_ms` apart. Default: `interval_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u32>,
    /// What a server marked down gets.
    #[serde(default, skip_serializing_if = "DownAction::is_drain")]
    pub on_down: DownAction,
    /// Takes the traffic while no real server of the service is in service (all down or drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<SorryServer>,
    /// Fewer healthy servers than this lowers the node's VRRP priority, so a healthier balancer takes the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Quorum>,
    /// A different check for some real servers (by address and port). Its own `on_down`, `sorry_server`,
    /// `quorum` and `overrides` must be left out: those belong to the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<CheckOverride>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl DownAction {
    fn is_drain(&self) -> bool {
        *self == DownAction::Drain
    }
}

// By hand: `wire_enum!` cannot mark a `#[default]` variant.
#[allow(clippy::derivable_impls)]
impl Default for DownAction {
    fn default() -> Self {
        DownAction::Drain
    }
}

/// The server that answers while every real server of a service is out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SorryServer {
    pub address: String,
    pub port: u16,
}

/// Minimum healthy real servers of a service, and the VRRP priority drop below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    pub min_healthy: u32,
    #[serde(default = "Quorum::default_priority_drop")]
    pub priority_drop: u8,
}

impl Quorum {
    fn default_priority_drop() -> u8 {
        // More than the default gap between active (150) and backup (100) priorities.
        60
    }
}

/// The check of one real server, replacing the service's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckOverride {
    pub address: String,
    pub port: u16,
    pub check: HealthCheck,
}

impl HealthCheck {
    fn default_interval_ms() -> u32 {
        1000
    }
    fn default_timeout_ms() -> u32 {
        500
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
    }

    /// A TCP connect check with the default timings.
    pub fn tcp() -> Self {
        HealthCheck::of_kind(CheckKind::Tcp)
    }

    /// A check of `kind` with no parameters and the default timings.
    pub fn of_kind(kind: CheckKind) -> Self {
        HealthCheck {
            kind,
            path: None,
            expect_status: None,
            expect_codes: Vec::new(),
            host: None,
            body_contains: None,
            sni: None,
            tls_verify: false,
            tls_ca: None,
            dns_name: None,
            dns_type: None,
            dns_expect: None,
            script: None,
            port: None,
            interval_ms: Self::default_interval_ms(),
            timeout_ms: Self::default_timeout_ms(),
            rise: Self::default_rise(),
            fall: Self::default_fall(),
            warmup_ms: 0,
            jitter_ms: None,
            on_down: DownAction::Drain,
            sorry_server: None,
            quorum: None,
            overrides: Vec::new(),
        }
    }

    /// Whether an HTTP status passes: one of `expect_status`/`expect_codes`, or any 2xx when both are unset.
    pub fn accepts_status(&self, status: u16) -> bool {
        if self.expect_status.is_none() && self.expect_codes.is_empty() {
            return (200..300).contains(&status);
        }
        self.expect_status == Some(status) || self.expect_codes.contains(&status)
    }

    /// One line for people: `HTTP GET /healthz expects 200`, `TCP connect`, `DNS A www.example`.
    pub fn describe(&self) -> String {
        let port = self.port.map(|p| format!(" port {p}")).unwrap_or_default();
        let expects = || {
            let mut codes: Vec<String> = self
                .expect_status
                .iter()
                .chain(&self.expect_codes)
                .map(u16::to_string)
                .collect();
            codes.dedup();
            if codes.is_empty() {
                "2xx".to_owned()
            } else {
                codes.join("/")
            }
        };
        match self.kind {
            CheckKind::None => "none".into(),
            CheckKind::Tcp => format!("TCP connect{port}"),
            CheckKind::Http | CheckKind::Https => format!(
                "{} GET {} expects {}{port}",
                if self.kind == CheckKind::Http {
                    "HTTP"
                } else {
                    "HTTPS"
                },
                self.path.as_deref().unwrap_or("/"),
                expects()
            ),
            CheckKind::Dns => format!(
                "DNS {} {}{port}",
                self.dns_type.unwrap_or(DnsType::A),
                self.dns_name.as_deref().unwrap_or("?")
            ),
            CheckKind::Script => format!("script {}{port}", self.script.as_deref().unwrap_or("?")),
        }
    }

    /// The check that applies to the real server `address:port`: its override, else this one.
    pub fn for_real_server(&self, address: &str, port: u16) -> &HealthCheck {
        self.overrides
            .iter()
            .find(|o| o.port == port && o.address == address)
            .map_or(self, |o| &o.check)
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self::tcp()
    }
}

/// Whether a script check's name is acceptable: a plain file name (letters, digits, `.`, `_`, `-`), not
/// starting with `.`, at most 64 bytes. Never a path: `/` and `..` are refused, so a role document cannot
/// name anything outside the image's check directory.
pub fn valid_script_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a node reports for one real server's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServerHealth {
    pub state: HealthState,
    /// Unix time (seconds) of the last change of `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Why the last probe failed ("HTTP 500 from /healthz", "connect: refused", "timeout after 500 ms").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Duration of the last successful probe, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Times the server went from up to down.
    #[serde(default)]
    pub flaps: u32,
    /// The check that gave this result (`http GET /healthz`), for the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// One change of a real server's health, as an event in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthTransition {
    /// `198.18.0.10:80/tcp`.
    pub service: String,
    pub address: String,
    pub port: u16,
    pub from: HealthState,
    pub to: HealthState,
    /// Unix time, seconds.
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_specs_read_and_write_unchanged() {
        let old = r#"{"kind":"http","path":"/healthz","expect_status":200,"interval_ms":1000,"timeout_ms":500,"rise":2,"fall":3}"#;
        let c: HealthCheck = serde_json::from_str(old).expect("old spec");
        assert_eq!(c.kind, CheckKind::Http);
        assert_eq!(c.on_down, DownAction::Drain);
        assert!(c.overrides.is_empty() && c.quorum.is_none() && c.sorry_server.is_none());
        assert_eq!(serde_json::to_string(&c).ok().as_deref(), Some(old));
        let tcp: HealthCheck = serde_json::from_str(r#"{"kind":"tcp"}"#).expect("tcp");
        assert_eq!(tcp, HealthCheck::tcp());
    }

    #[test]
    fn new_fields_round_trip() {
        let text = r#"{"kind":"https","path":"/h","expect_codes":[200,204],"host":"app.example","sni":"app.example",
            "tls_verify":true,"warmup_ms":5000,"jitter_ms":100,"on_down":"remove",
            "sorry_server":{"address":"198.18.2.200","port":80},"quorum":{"min_healthy":2},
            "overrides":[{"address":"198.18.2.1","port":80,"check":{"kind":"script","script":"pg-ready"}}]}"#;
        let c: HealthCheck = serde_json::from_str(text).expect("new spec");
        assert_eq!(c.on_down, DownAction::Remove);
        assert_eq!(c.quorum.as_ref().map(|q| q.priority_drop), Some(60));
        assert!(c.accepts_status(204) && !c.accepts_status(201));
        assert_eq!(c.for_real_server("198.18.2.1", 80).kind, CheckKind::Script);
        assert_eq!(c.for_real_server("198.18.2.1", 81).kind, CheckKind::Https);
        let again: HealthCheck =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(again, c);
        assert!(HealthCheck::tcp().accepts_status(299) && !HealthCheck::tcp().accepts_status(300));
        assert_eq!("AAAA".parse::<DnsType>().map(DnsType::code), Ok(28));
        assert_eq!(c.describe(), "HTTPS GET /h expects 200/204");
        assert_eq!(HealthCheck::tcp().describe(), "TCP connect");
    }

    #[test]
    fn script_names_are_file_names_only() {
        for good in ["pg-ready", "check_redis.sh", "a1"] {
            assert!(valid_script_name(good), "{good}");
        }
        for bad in [
            "",
            "../bin/sh",
            "a/b",
            "..",
            "x..y",
            ".hidden",
            "sh -c id",
            "a;b",
            "/bin/sh",
        ] {
            assert!(!valid_script_name(bad), "{bad:?}");
        }
        assert!(!valid_script_name(&"a".repeat(65)));
    }
}
