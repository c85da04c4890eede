//! The probes: one async function per check kind, each bounded by the check's timeout, each ending in the
//! probe's latency or a `ProbeError` whose text says why in a few words ("HTTP 500 from /healthz",
//! "connect: refused", "timeout after 500 ms").

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::{valid_script_name, CheckKind, DnsType, HealthCheck};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::{dns, http};
use crate::tls_verify::{AnyCertificate, PolicyVerifier};

/// Where script checks live in the node's image.
pub const DEFAULT_CHECKS_DIR: &str = "/etc/lbfleet/checks";
/// Most bytes of a script's output kept (for the error text); the rest is read and dropped.
pub const SCRIPT_OUTPUT_LIMIT: usize = 4096;
/// Longest error text kept from a script's output.
const SCRIPT_ERROR_CHARS: usize = 200;

/// Why a probe failed. The `Display` text is what operators see on the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("timeout after {0} ms")]
    Timeout(u32),
    #[error("{0}: {1}")]
    Io(&'static str, String),
    #[error("HTTP {status} from {path}")]
    HttpStatus { status: u16, path: String },
    #[error("bad HTTP response from {path}: {reason}")]
    HttpMalformed { path: String, reason: String },
    #[error("body of {path} lacks {needle:?}")]
    HttpBody { path: String, needle: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("script {name}: {reason}")]
    Script { name: String, reason: String },
    #[error("check misconfigured: {0}")]
    Config(String),
}

/// Short text for an I/O error: "refused", "reset", "no route to host".
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::HostUnreachable => "no route to host".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::UnexpectedEof => "closed by the server".into(),
        _ => e.to_string(),
    }
}

/// Everything a probe of one (target, check) needs, built once when its task starts.
#[derive(Debug, Clone)]
pub struct Probe {
    pub target: SocketAddr,
    pub check: Arc<HealthCheck>,
    pub checks_dir: PathBuf,
    tls: Option<Arc<ClientConfig>>,
}

impl Probe {
    /// A probe of `target` (the port already the check's, if it names one). Fails only for an `https` check
    /// whose `tls_ca` holds no usable certificate.
    pub fn new(
        target: SocketAddr,
        check: Arc<HealthCheck>,
        checks_dir: PathBuf,
    ) -> Result<Probe, ProbeError> {
        let tls = if check.kind == CheckKind::Https {
            Some(tls_config(&check)?)
        } else {
            None
        };
        Ok(Probe {
            target,
            check,
            checks_dir,
            tls,
        })
    }

    /// Runs the probe once; its latency on success.
    pub async fn run(&self) -> Result<Duration, ProbeError> {
        let timeout_ms = self.check.timeout_ms;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let started = Instant::now();
        if self.check.kind == CheckKind::Script {
            // Scripts kill their whole process group at the timeout themselves.
            return self.script(timeout).await.map(|()| started.elapsed());
        }
        let work = async {
            match self.check.kind {
                CheckKind::None => Ok(()),
                CheckKind::Tcp => self.connect().await.map(drop),
                CheckKind::Http => {
                    let stream = self.connect().await?;
                    self.http(stream).await
                }
                CheckKind::Https => self.https().await,
                CheckKind::Dns => self.dns().await,
                CheckKind::Script => Err(ProbeError::Config("unreachable".into())),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map(|()| started.elapsed()),
            Err(_) => Err(ProbeError::Timeout(timeout_ms)),
        }
    }

    /// Connects to the target. Plain HTTP writes its request in one `write`, which Nagle never holds back
    /// (nothing is in flight yet): no `TCP_NODELAY`, one system call less per probe. TLS writes several
    /// records while others are unacknowledged, so `https` sets it.
    async fn connect(&self) -> Result<TcpStream, ProbeError> {
        let s = TcpStream::connect(self.target)
            .await
            .map_err(|e| ProbeError::Connect(io_text(&e)))?;
        if self.check.kind == CheckKind::Https {
            let _ = s.set_nodelay(true);
        }
        Ok(s)
    }

    fn host_header(&self) -> String {
        if let Some(h) = &self.check.host {
            return h.clone();
        }
        let default_port = if self.check.kind == CheckKind::Https {
            443
        } else {
            80
        };
        match (self.target.ip(), self.target.port()) {
            (IpAddr::V4(a), p) if p == default_port => a.to_string(),
            (IpAddr::V6(a), p) if p == default_port => format!("[{a}]"),
            (IpAddr::V4(a), p) => format!("{a}:{p}"),
            (IpAddr::V6(a), p) => format!("[{a}]:{p}"),
        }
    }

    /// GET the path and judge status and body.
    async fn http<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) -> Result<(), ProbeError> {
        let path = self.check.path.as_deref().unwrap_or("/");
        stream
            .write_all(&http::request(path, &self.host_header()))
            .await
            .map_err(|e| ProbeError::Io("send", io_text(&e)))?;
        let malformed = |reason: String| ProbeError::HttpMalformed {
            path: path.to_owned(),
            reason,
        };
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = read_some(&mut stream, &mut chunk).await?;
            if n == 0 {
                return Err(malformed("connection closed before the status line".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            match http::parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Err(malformed(e.to_string())),
            }
        };
        if !self.check.accepts_status(head.status) {
            return Err(ProbeError::HttpStatus {
                status: head.status,
                path: path.to_owned(),
            });
        }
        let Some(needle) = &self.check.body_contains else {
            return Ok(());
        };
        // The body: up to Content-Length, the last chunk, EOF or MAX_BODY, whichever comes first.
        let mut body = buf.split_off(head.len);
        loop {
            let decoded = if head.chunked {
                http::dechunk(&body)
            } else {
                (body.clone(), false)
            };
            if http::contains(&decoded.0, needle.as_bytes()) {
                return Ok(());
            }
            let complete = decoded.1
                || head.content_length.is_some_and(|l| body.len() >= l)
                || body.len() >= http::MAX_BODY;
            if complete {
                break;
            }
            let n = read_some(&mut stream, &mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Err(ProbeError::HttpBody {
            path: path.to_owned(),
            needle: needle.clone(),
        })
    }

    async fn https(&self) -> Result<(), ProbeError> {
        let config = self
            .tls
            .clone()
            .ok_or_else(|| ProbeError::Config("no TLS settings".into()))?;
        let stream = self.connect().await?;
        let name = self
            .check
            .sni
            .as_deref()
            .or(self.check.host.as_deref())
            .and_then(|n| ServerName::try_from(n.to_owned()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(self.target.ip().into()));
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| ProbeError::Tls(tls_error_text(&e)))?;
        self.http(tls).await
    }

    async fn dns(&self) -> Result<(), ProbeError> {
        let name = self.check.dns_name.as_deref().unwrap_or("");
        let qtype = self.check.dns_type.unwrap_or(DnsType::A);
        let id: u16 = rand::random();
        let query = dns::encode_query(id, name, qtype.code())
            .map_err(|e| ProbeError::Dns(e.to_string()))?;
        let local: SocketAddr = match self.target {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)
            .await
            .map_err(|e| ProbeError::Io("bind", io_text(&e)))?;
        sock.connect(self.target)
            .await
            .map_err(|e| ProbeError::Connect(io_text(&e)))?;
        sock.send(&query)
            .await
            .map_err(|e| ProbeError::Io("send", io_text(&e)))?;
        let mut buf = vec![0u8; 4096];
        loop {
            // A connected UDP socket reports an ICMP port unreachable as ECONNREFUSED here.
            let n = sock
                .recv(&mut buf)
                .await
                .map_err(|e| ProbeError::Connect(io_text(&e)))?;
            let response = match dns::decode_response(&buf[..n]) {
                Ok(r) if r.id == id => r,
                // A stray or late datagram: keep waiting for ours until the timeout.
                Ok(_) => continue,
                Err(e) => return Err(ProbeError::Dns(format!("bad response: {e}"))),
            };
            if response.rcode != 0 {
                return Err(ProbeError::Dns(format!(
                    "{} for {name} {qtype}",
                    dns::rcode_name(response.rcode)
                )));
            }
            let answers: Vec<&dns::RData> = response
                .answers
                .iter()
                .filter(|a| a.rtype == qtype.code())
                .map(|a| &a.data)
                .collect();
            if answers.is_empty() {
                return Err(ProbeError::Dns(format!("no {qtype} answer for {name}")));
            }
            if let Some(expect) = &self.check.dns_expect {
                if !answers.iter().any(|d| dns::answer_matches(d, expect)) {
                    let got: Vec<String> = answers.iter().take(3).map(|d| d.to_string()).collect();
                    return Err(ProbeError::Dns(format!(
                        "{name} {qtype} is {}, expected {expect}",
                        got.join(", ")
                    )));
                }
            }
            return Ok(());
        }
    }

    /// Runs `checks_dir/NAME` with the real server in its environment; exit 0 passes. At the timeout the
    /// script's whole process group is killed; its output is read to the end but only the first
    /// `SCRIPT_OUTPUT_LIMIT` bytes are kept.
    async fn script(&self, timeout: Duration) -> Result<(), ProbeError> {
        let name = self.check.script.clone().unwrap_or_default();
        let fail = |reason: String| ProbeError::Script {
            name: name.clone(),
            reason,
        };
        // The server refuses such names; checked again here, since the agent also reads role files.
        if !valid_script_name(&name) {
            return Err(fail("refused: not a plain file name".into()));
        }
        let path = self.checks_dir.join(&name);
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LBFLEET_RS_ADDRESS", self.target.ip().to_string())
            .env("LBFLEET_RS_PORT", self.target.port().to_string())
            .env(
                "LBFLEET_CHECK_TIMEOUT_MS",
                self.check.timeout_ms.to_string(),
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    fail(format!("not found in {}", self.checks_dir.display()))
                }
                _ => fail(io_text(&e)),
            })?;
        let group = ProcessGroup(child.id());
        // Read while the script runs (a full pipe would block it), in tasks of their own.
        let stdout = tokio::spawn(read_bounded(child.stdout.take()));
        let stderr = tokio::spawn(read_bounded(child.stderr.take()));
        let status = tokio::select! {
            s = child.wait() => s.map_err(|e| fail(io_text(&e))),
            _ = tokio::time::sleep(timeout) => Err(ProbeError::Timeout(self.check.timeout_ms)),
        };
        // Anything the script left behind in its group goes too, so the pipes close.
        drop(group);
        let mut out = Vec::new();
        for reader in [stdout, stderr] {
            let abort = reader.abort_handle();
            match tokio::time::timeout(Duration::from_millis(100), reader).await {
                Ok(Ok(bytes)) => out.extend_from_slice(&bytes),
                _ => abort.abort(),
            }
        }
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = child.wait().await;
                return Err(e);
            }
        };
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out);
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let first: String = first.chars().take(SCRIPT_ERROR_CHARS).collect();
        let code = status.code().map_or_else(
            || "was killed by a signal".to_owned(),
            |c| format!("exited {c}"),
        );
        Err(fail(if first.is_empty() {
            code
        } else {
            format!("{code}: {first}")
        }))
    }
}

async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<usize, ProbeError> {
    stream
        .read(buf)
        .await
        .map_err(|e| ProbeError::Io("read", io_text(&e)))
}

/// Reads a pipe to its end, keeping at most `SCRIPT_OUTPUT_LIMIT` bytes.
async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = SCRIPT_OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// A script's process group, killed (SIGKILL) when this is dropped: at the timeout, after the script exits
/// (leftover children), or when the probe task is cancelled.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        // SAFETY: kill(2) takes plain integers and touches no memory; -pid names the group the child leads
        // (it was spawned with process_group(0)), so only the script and its descendants are signalled.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn tls_error_text(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => format!("invalid certificate: {c:?}"),
        Some(other) => other.to_string(),
        None => io_text(e),
    }
}

/// The client configuration of an `https` check: verification against `tls_ca` (or the web roots) when
/// `tls_verify`, else any certificate (the handshake's signatures are still checked).
fn tls_config(check: &HealthCheck) -> Result<Arc<ClientConfig>, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let config = if check.tls_verify {
        let mut roots = RootCertStore::empty();
        match &check.tls_ca {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(ProbeError::Config("tls_ca holds no certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            // Any certificate chain (`tls_verify: false`); the handshake signatures are still checked.
            .with_custom_certificate_verifier(Arc::new(PolicyVerifier::new(
                AnyCertificate,
                provider,
            )))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}
