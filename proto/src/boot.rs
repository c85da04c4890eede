//! The kernel-argument contract between the server's boot script and the node: one type (`KernelArgs`), one
//! writer (`KernelArgs::to_cmdline`, used by the iPXE script) and one parser (`KernelArgs::parse`, used by the
//! agent and, through `lbfleet-agent bootargs`, by the image's `/init`).
//!
//! ```text
//! BOOTIF=01-52-54-00-aa-bb-cc lbfleet.server=http://198.18.0.1 lbfleet.server_cert=sha256:HEX \
//!     lbfleet.token=lbf_enr_... lbfleet.image=2026.11.30-1
//! ```
//! With several servers (docs/high-availability.md) `lbfleet.server=` is a comma-separated list, the server
//! that wrote the script first, and `lbfleet.server_cert=` a list aligned with it (`none` for a server without
//! TLS): `lbfleet.server=https://a:8443,https://b:8443 lbfleet.server_cert=sha256:HEXA,sha256:HEXB`. One URL
//! and one pin is the single-server form older images read.
//! `BOOTIF=` is PXELINUX's spelling (ARP hardware type `01`, then the MAC with hyphens), which is what iPXE's
//! `${netX/mac:hexhyp}` gives; the parser also takes colons and a bare MAC with colons. Values never contain whitespace,
//! quotes, backslashes, `$`, braces or backticks: the writer refuses them, so a value can neither split the
//! kernel command line, nor be expanded by iPXE, nor escape the shell quoting of `shell_assignments`.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address. Parses `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (any case); shows lower-case
/// with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC in a packet's hardware-address field (DHCP `chaddr`), if it is a usable unicast Ethernet
    /// address: all-zero and group (multicast/broadcast) addresses cannot belong to a NIC, so a forged or broken
    /// packet gives `None`.
    pub fn from_unicast_bytes(bytes: &[u8]) -> Option<Mac> {
        let bytes: [u8; 6] = bytes.try_into().ok()?;
        if bytes == [0; 6] || bytes[0] & 1 == 1 {
            return None;
        }
        Some(Mac(bytes))
    }

    /// `01-aa-bb-cc-dd-ee-ff`: the value of `BOOTIF=`.
    pub fn bootif(&self) -> String {
        let mut s = String::from("01");
        for b in self.0 {
            s.push_str(&format!("-{b:02x}"));
        }
        s
    }

    /// Parses a `BOOTIF=` value: `01-` + MAC with hyphens (PXELINUX, iPXE `:hexhyp`), the same with colons,
    /// or a bare MAC with colons (iPXE's default `${netX/mac}` format).
    pub fn from_bootif(text: &str) -> Result<Mac, KernelArgsError> {
        let bad = || KernelArgsError::BadValue {
            arg: "BOOTIF",
            reason: format!("{text:?} is not 01-aa-bb-cc-dd-ee-ff"),
        };
        let groups: Vec<&str> = text.split(['-', ':']).collect();
        let mac_groups = match groups.as_slice() {
            [htype, rest @ ..] if rest.len() == 6 => {
                // ARP hardware type 1 is Ethernet; anything else is not a MAC we can bind to.
                if *htype != "01" {
                    return Err(bad());
                }
                rest
            }
            // A bare MAC only with colons: with hyphens it could be a BOOTIF that lost a group.
            all if all.len() == 6 && !text.contains('-') => all,
            _ => return Err(bad()),
        };
        parse_groups(mac_groups).ok_or_else(bad)
    }
}

fn parse_groups(groups: &[&str]) -> Option<Mac> {
    if groups.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, g) in out.iter_mut().zip(groups) {
        if g.len() != 2 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *o = u8::from_str_radix(g, 16).ok()?;
    }
    Some(Mac(out))
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Text that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", self.0)
    }
}

impl std::error::Error for BadMac {}

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let groups: Vec<&str> = s.split([':', '-']).collect();
        parse_groups(&groups).ok_or_else(|| BadMac(s.to_owned()))
    }
}

/// Why a kernel argument could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelArgsError {
    /// A value the contract does not allow (empty, a forbidden character, a malformed MAC or pin).
    BadValue { arg: &'static str, reason: String },
}

impl fmt::Display for KernelArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelArgsError::BadValue { arg, reason } => {
                write!(f, "kernel argument {arg}: {reason}")
            }
        }
    }
}

impl std::error::Error for KernelArgsError {}

/// Argument names, as written on the kernel command line.
pub const ARG_BOOTIF: &str = "BOOTIF";
pub const ARG_SERVER: &str = "lbfleet.server";
pub const ARG_SERVER_CERT: &str = "lbfleet.server_cert";
pub const ARG_TOKEN: &str = "lbfleet.token";
/// A `lbfleet.token=` with this prefix is a boot credential: handed out while the server's database is down,
/// it reads the node's last role and is exchanged for a node credential once the database is back.
pub const BOOT_CREDENTIAL_PREFIX: &str = "lbf_boot_";
pub const ARG_IMAGE: &str = "lbfleet.image";
pub const ARG_CONSOLE_SHELL: &str = "lbfleet.console_shell";

/// What the boot script tells a node on its kernel command line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// MAC of the NIC the node booted from (`BOOTIF=`): the NIC `/init` configures and the MAC the agent
    /// enrolls with.
    pub bootif: Option<Mac>,
    /// The server's base URL (`lbfleet.server=`), e.g. `http://198.18.0.1:8080`; with several servers a
    /// comma-separated list, the answering server first (`servers()` splits it).
    pub server: Option<String>,
    /// Pin of the server's TLS certificate (`lbfleet.server_cert=sha256:HEX`, 64 lower-case hex digits); with
    /// several servers a comma-separated list aligned with `server`, `none` for a server without TLS
    /// (`server_certs()` splits it).
    pub server_cert: Option<String>,
    /// One-time enrollment token (`lbfleet.token=`). Secret: `Debug` redacts it.
    pub token: Option<String>,
    /// Version of the image the node booted (`lbfleet.image=`).
    pub image: Option<String>,
    /// `lbfleet.console_shell=1`: `/init` keeps a root shell on the console (for a lab or a repair; an
    /// operator adds it to an image's command line, the boot script never does by itself).
    pub console_shell: bool,
}

impl fmt::Debug for KernelArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelArgs")
            .field("bootif", &self.bootif)
            .field("server", &self.server)
            .field("server_cert", &self.server_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("image", &self.image)
            .field("console_shell", &self.console_shell)
            .finish()
    }
}

/// A value that is safe on the kernel command line, in an iPXE script and inside single shell quotes.
fn check_value(arg: &'static str, v: &str) -> Result<(), KernelArgsError> {
    if v.is_empty() {
        return Err(KernelArgsError::BadValue {
            arg,
            reason: "empty".into(),
        });
    }
    if v.len() > 1024 {
        return Err(KernelArgsError::BadValue {
            arg,
            reason: format!("{} bytes (at most 1024)", v.len()),
        });
    }
    if let Some(c) = v
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\' | '$' | '{' | '}' | '`'))
    {
        return Err(KernelArgsError::BadValue {
            arg,
            reason: format!("character {c:?} is not allowed"),
        });
    }
    Ok(())
}

/// `sha256:` and 64 hex digits; returns the lower-case form.
fn check_cert_pin(v: &str) -> Result<String, KernelArgsError> {
    let hex = v.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
    } else {
        Err(KernelArgsError::BadValue {
            arg: ARG_SERVER_CERT,
            reason: "expected sha256: and 64 hex digits".into(),
        })
    }
}

/// What `lbfleet.server_cert=` says for one server: `none`, or `sha256:` and 64 hex digits (lower-cased).
pub const NO_PIN: &str = "none";

/// A comma-separated list of pins (`check_cert_pin` each, or `none`); returns the normalised list.
fn check_cert_pins(v: &str) -> Result<String, KernelArgsError> {
    let pins: Result<Vec<String>, KernelArgsError> = v
        .split(',')
        .map(|p| {
            if p == NO_PIN {
                Ok(NO_PIN.to_owned())
            } else {
                check_cert_pin(p)
            }
        })
        .collect();
    Ok(pins?.join(","))
}

/// A comma-separated list of server URLs: each one a safe, non-empty value.
fn check_servers(v: &str) -> Result<(), KernelArgsError> {
    check_value(ARG_SERVER, v)?;
    if v.split(',').any(str::is_empty) {
        return Err(KernelArgsError::BadValue {
            arg: ARG_SERVER,
            reason: "an empty entry in the list of servers".into(),
        });
    }
    Ok(())
}

/// Pins, when given with servers, name one per server.
fn check_aligned(args: &KernelArgs) -> Result<(), KernelArgsError> {
    if let (Some(servers), Some(pins)) = (&args.server, &args.server_cert) {
        let (s, p) = (servers.split(',').count(), pins.split(',').count());
        if s != p {
            return Err(KernelArgsError::BadValue {
                arg: ARG_SERVER_CERT,
                reason: format!(
                    "{p} pin(s) for {s} server(s); give one per server (none for no TLS)"
                ),
            });
        }
    }
    Ok(())
}

/// Splits a command line the way the kernel does: on whitespace outside double quotes; quotes are dropped.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Single-quotes `v` for a POSIX shell.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

impl KernelArgs {
    /// The writer: the arguments as they go on the kernel command line, in a fixed order, absent fields
    /// omitted. Refuses values the parser could not read back unchanged.
    pub fn to_cmdline(&self) -> Result<String, KernelArgsError> {
        let mut parts = Vec::new();
        if let Some(mac) = &self.bootif {
            parts.push(format!("{ARG_BOOTIF}={}", mac.bootif()));
        }
        check_aligned(self)?;
        if let Some(v) = &self.server {
            check_servers(v)?;
            parts.push(format!("{ARG_SERVER}={v}"));
        }
        if let Some(v) = &self.server_cert {
            parts.push(format!("{ARG_SERVER_CERT}={}", check_cert_pins(v)?));
        }
        if let Some(v) = &self.token {
            check_value(ARG_TOKEN, v)?;
            parts.push(format!("{ARG_TOKEN}={v}"));
        }
        if let Some(v) = &self.image {
            check_value(ARG_IMAGE, v)?;
            parts.push(format!("{ARG_IMAGE}={v}"));
        }
        if self.console_shell {
            parts.push(format!("{ARG_CONSOLE_SHELL}=1"));
        }
        Ok(parts.join(" "))
    }

    /// The parser: reads the contract's arguments from a whole kernel command line (`/proc/cmdline`),
    /// ignoring every other word. The last occurrence of an argument wins, as for the kernel's own. A
    /// malformed value of a contract argument is an error, never silently dropped.
    pub fn parse(cmdline: &str) -> Result<KernelArgs, KernelArgsError> {
        let mut args = KernelArgs::default();
        for word in words(cmdline) {
            let Some((name, value)) = word.split_once('=') else {
                continue;
            };
            match name {
                ARG_BOOTIF => args.bootif = Some(Mac::from_bootif(value)?),
                ARG_SERVER => {
                    check_servers(value)?;
                    args.server = Some(value.to_owned());
                }
                ARG_SERVER_CERT => args.server_cert = Some(check_cert_pins(value)?),
                ARG_TOKEN => {
                    check_value(ARG_TOKEN, value)?;
                    args.token = Some(value.to_owned());
                }
                ARG_IMAGE => {
                    check_value(ARG_IMAGE, value)?;
                    args.image = Some(value.to_owned());
                }
                ARG_CONSOLE_SHELL => {
                    args.console_shell = match value {
                        "1" => true,
                        "0" => false,
                        _ => {
                            return Err(KernelArgsError::BadValue {
                                arg: ARG_CONSOLE_SHELL,
                                reason: format!("{value:?} is not 0 or 1"),
                            })
                        }
                    }
                }
                _ => {}
            }
        }
        check_aligned(&args)?;
        Ok(args)
    }

    /// The servers `lbfleet.server=` names, in order (the server that wrote the script first).
    pub fn servers(&self) -> Vec<&str> {
        self.server
            .as_deref()
            .map(|s| s.split(',').collect())
            .unwrap_or_default()
    }

    /// The pins `lbfleet.server_cert=` names, in the servers' order; `None` for a server without one.
    pub fn server_certs(&self) -> Vec<Option<&str>> {
        self.server_cert
            .as_deref()
            .map(|s| s.split(',').map(|p| (p != NO_PIN).then_some(p)).collect())
            .unwrap_or_default()
    }

    /// Shell assignments for `/init` (`eval "$(lbfleet-agent bootargs)"`): `BOOTARG_MAC`, `BOOTARG_SERVER`,
    /// `BOOTARG_SERVER_CERT`, `BOOTARG_IMAGE` (empty when absent), `BOOTARG_TOKEN_GIVEN` (`yes`/`no`; the token
    /// itself stays out of the shell and the console) and `BOOTARG_CONSOLE_SHELL` (`yes`/`no`). Every value is
    /// single-quoted.
    pub fn shell_assignments(&self) -> String {
        let opt = |v: &Option<String>| shell_quote(v.as_deref().unwrap_or(""));
        format!(
            "BOOTARG_MAC={}\nBOOTARG_SERVER={}\nBOOTARG_SERVER_CERT={}\nBOOTARG_IMAGE={}\nBOOTARG_TOKEN_GIVEN={}\n\
             BOOTARG_CONSOLE_SHELL={}\n",
            shell_quote(&self.bootif.map(|m| m.to_string()).unwrap_or_default()),
            opt(&self.server),
            opt(&self.server_cert),
            opt(&self.image),
            if self.token.is_some() { "yes" } else { "no" },
            if self.console_shell { "yes" } else { "no" },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn full() -> KernelArgs {
        KernelArgs {
            bootif: Some("52:54:00:aa:bb:0c".parse().unwrap()),
            server: Some("http://198.18.0.1:8080".into()),
            server_cert: Some(PIN.into()),
            token: Some("lbf_enr_AbC-d_9".into()),
            image: Some("2026.11.30-1".into()),
            console_shell: false,
        }
    }

    #[test]
    fn writer_output_is_fixed() {
        assert_eq!(
            full().to_cmdline().unwrap(),
            format!(
                "BOOTIF=01-52-54-00-aa-bb-0c lbfleet.server=http://198.18.0.1:8080 lbfleet.server_cert={PIN} \
                 lbfleet.token=lbf_enr_AbC-d_9 lbfleet.image=2026.11.30-1"
            )
        );
        assert_eq!(KernelArgs::default().to_cmdline().unwrap(), "");
    }

    #[test]
    fn round_trip_inside_a_real_command_line() {
        let args = full();
        let line = format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 initrd=initrd.img {} quiet panic=-1",
            args.to_cmdline().unwrap()
        );
        assert_eq!(KernelArgs::parse(&line).unwrap(), args);
        // Each field alone also round-trips.
        for one in [
            KernelArgs {
                bootif: args.bootif,
                ..Default::default()
            },
            KernelArgs {
                server: args.server.clone(),
                ..Default::default()
            },
            KernelArgs {
                token: args.token.clone(),
                ..Default::default()
            },
            KernelArgs {
                image: args.image.clone(),
                ..Default::default()
            },
            KernelArgs {
                server_cert: args.server_cert.clone(),
                ..Default::default()
            },
        ] {
            assert_eq!(KernelArgs::parse(&one.to_cmdline().unwrap()).unwrap(), one);
        }
        assert_eq!(
            KernelArgs::parse("quiet ro").unwrap(),
            KernelArgs::default()
        );
    }

    #[test]
    fn bootif_spellings() {
        let mac = Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        for v in [
            "01-52-54-00-aa-bb-cc",
            "01-52-54-00-AA-BB-CC",
            "01:52:54:00:aa:bb:cc",
            "52:54:00:aa:bb:cc",
        ] {
            let parsed = KernelArgs::parse(&format!("BOOTIF={v}")).unwrap();
            assert_eq!(parsed.bootif, Some(mac), "{v}");
        }
        for bad in [
            "06-52-54-00-aa-bb-cc",
            "01-52-54-00-aa-bb",
            "52-54-00-aa-bb-cc",
            "01-52-54-00-aa-bb-cg",
            "",
            "01-5-54-00-aa-bb-cc0",
        ] {
            assert!(
                matches!(
                    KernelArgs::parse(&format!("BOOTIF={bad}")),
                    Err(KernelArgsError::BadValue { arg: "BOOTIF", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(mac.bootif(), "01-52-54-00-aa-bb-cc");
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:cc");
        assert_eq!("52-54-00-AA-bb-cc".parse::<Mac>().unwrap(), mac);
        assert!("52:54:00:aa:bb".parse::<Mac>().is_err());
    }

    #[test]
    fn last_occurrence_wins_and_quotes_are_kernel_style() {
        let p = KernelArgs::parse(
            "lbfleet.image=a lbfleet.image=b \"lbfleet.server=http://x\" foo=\"a b\"",
        )
        .unwrap();
        assert_eq!(p.image.as_deref(), Some("b"));
        assert_eq!(p.server.as_deref(), Some("http://x"));
        // A quoted value of an unrelated argument containing a contract name is not read as one.
        let p = KernelArgs::parse("foo=\"x lbfleet.token=stolen\"").unwrap();
        assert_eq!(p.token, None);
    }

    #[test]
    fn unsafe_values_are_refused_by_writer_and_parser() {
        for bad in [
            "",
            "a b",
            "a'b",
            "a\"b",
            "a$b",
            "${net0/mac}",
            "a\\b",
            "a`b",
            "\u{e9}",
            "a\nb",
        ] {
            let args = KernelArgs {
                token: Some(bad.into()),
                ..Default::default()
            };
            assert!(args.to_cmdline().is_err(), "{bad:?}");
        }
        assert!(KernelArgs::parse("lbfleet.token=a$b").is_err());
        assert!(KernelArgs::parse("lbfleet.image=").is_err());
        let long = "x".repeat(1025);
        assert!(KernelArgs {
            image: Some(long),
            ..Default::default()
        }
        .to_cmdline()
        .is_err());
        // The pin must be sha256 + 64 hex digits; upper case is normalised.
        assert!(KernelArgs::parse("lbfleet.server_cert=sha1:00").is_err());
        let upper = PIN.to_ascii_uppercase().replace("SHA256", "sha256");
        assert_eq!(
            KernelArgs::parse(&format!("lbfleet.server_cert={upper}"))
                .unwrap()
                .server_cert
                .as_deref(),
            Some(PIN)
        );
    }

    #[test]
    fn shell_assignments_quote_and_hide_the_token() {
        let text = full().shell_assignments();
        assert_eq!(
            text,
            format!(
                "BOOTARG_MAC='52:54:00:aa:bb:0c'\nBOOTARG_SERVER='http://198.18.0.1:8080'\nBOOTARG_SERVER_CERT='{PIN}'\n\
                 BOOTARG_IMAGE='2026.11.30-1'\nBOOTARG_TOKEN_GIVEN=yes\nBOOTARG_CONSOLE_SHELL=no\n"
            )
        );
        assert!(!text.contains("lbf_enr_"));
        assert_eq!(
            KernelArgs::default().shell_assignments(),
            "BOOTARG_MAC=''\nBOOTARG_SERVER=''\nBOOTARG_SERVER_CERT=''\nBOOTARG_IMAGE=''\nBOOTARG_TOKEN_GIVEN=no\nBOOTARG_CONSOLE_SHELL=no\n"
        );
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn several_servers_and_aligned_pins_round_trip() {
        let other = PIN.replace("00112233", "ffeeddcc");
        let args = KernelArgs {
            server: Some(
                "https://198.18.0.1:8443,https://198.18.0.2:8443,http://198.18.0.3".into(),
            ),
            server_cert: Some(format!(
                "{PIN},{},none",
                other.to_ascii_uppercase().replace("SHA256", "sha256")
            )),
            ..full()
        };
        let line = args.to_cmdline().unwrap();
        assert!(
            line.contains(&format!("lbfleet.server_cert={PIN},{other},none ")),
            "{line}"
        );
        let back = KernelArgs::parse(&line).unwrap();
        assert_eq!(
            back.servers(),
            [
                "https://198.18.0.1:8443",
                "https://198.18.0.2:8443",
                "http://198.18.0.3"
            ]
        );
        assert_eq!(back.server_certs(), [Some(PIN), Some(other.as_str()), None]);
        // The single form older images were given still reads as one server with one pin.
        let single = KernelArgs::parse(&full().to_cmdline().unwrap()).unwrap();
        assert_eq!(single.servers(), ["http://198.18.0.1:8080"]);
        assert_eq!(single.server_certs(), [Some(PIN)]);
        assert!(KernelArgs::default().servers().is_empty());
        // Pins that do not line up with the servers, empty entries and bad pins are refused, by the writer
        // and by the parser.
        for bad in [
            format!("lbfleet.server=http://a,http://b lbfleet.server_cert={PIN}"),
            format!("lbfleet.server=http://a lbfleet.server_cert={PIN},none"),
            "lbfleet.server=http://a,,http://b".to_owned(),
            "lbfleet.server=http://a,".to_owned(),
            "lbfleet.server=http://a,http://b lbfleet.server_cert=none,sha256:00".to_owned(),
        ] {
            assert!(KernelArgs::parse(&bad).is_err(), "{bad}");
        }
        assert!(KernelArgs {
            server: Some("http://a,http://b".into()),
            server_cert: Some(PIN.into()),
            ..Default::default()
        }
        .to_cmdline()
        .is_err());
    }

    #[test]
    fn debug_redacts_the_token() {
        let text = format!("{:?}", full());
        assert!(!text.contains("lbf_enr_AbC"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
