//! The agent's client for the server's agent API: enroll, long-poll the role, report.

use std::time::Duration;

use crate::pin::{pinned_config, CertPin, RefusedSlot};

use lbfleet_proto::delta::REPORT_BASE_UNKNOWN;
use lbfleet_proto::{
    AgentReport, EnrollRequest, EnrollResponse, HeartbeatAnswer, ReportAck, ReportDelta,
    RoleDocument,
};
use reqwest::StatusCode;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the server refused the credential or token: {0}")]
    Unauthorized(String),
    #[error("the server refused the request ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("not enrolled: no node credential")]
    NotEnrolled,
    #[error("refusing to talk to the server: its certificate {got} is not the pinned {expected} (lbfleet.server_cert=); someone else may be answering in its place")]
    CertificateMismatch { expected: CertPin, got: CertPin },
    #[error("bad TLS settings: {0}")]
    Tls(String),
    #[error("refusing a role document over {limit} bytes")]
    RoleTooLarge { limit: usize },
}

/// Largest role document the agent accepts (the server's own bound on a cluster spec is 16 MiB).
pub const MAX_ROLE_BYTES: usize = 16 * 1024 * 1024;

impl ClientError {
    /// Worth trying another server at once: this one does not answer, answers 5xx/429, or is not the server
    /// it should be (its certificate is not its pin). A refusal of the token or credential is not: every
    /// server shares them.
    pub fn is_server_failure(&self) -> bool {
        self.is_transient() || matches!(self, ClientError::CertificateMismatch { .. })
    }

    /// Worth retrying later (network trouble, server overloaded or restarting), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            // A role over the bound may shrink again; the agent keeps serving its last role meanwhile.
            ClientError::Transport(_) | ClientError::RoleTooLarge { .. } => true,
            ClientError::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ClientError::Unauthorized(_)
            | ClientError::NotEnrolled
            | ClientError::CertificateMismatch { .. }
            | ClientError::Tls(_) => false,
        }
    }
}

/// Talks to one lbfleet-server.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    credential: Option<String>,
    /// The pinned certificate and where the verifier puts a certificate it refused.
    pin: Option<(CertPin, RefusedSlot)>,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("base", &self.base)
            .field("enrolled", &self.credential.is_some())
            .finish()
    }
}

/// What the server made of a report delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaAnswer {
    /// Merged; the merged report is numbered `seq`.
    Merged { seq: u64 },
    /// The server holds another base (409 `report_base_unknown`) or takes no deltas (a server that predates
    /// them: 404): send a full report.
    SendFull,
}

/// Extra time on top of the long-poll wait before the client gives up on a response.
const POLL_MARGIN: Duration = Duration::from_secs(10);

async fn refusal(resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no details")
        .to_owned();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        ClientError::Unauthorized(message)
    } else {
        ClientError::Refused { status, message }
    }
}

/// The response body, refused once it passes `limit` bytes (by Content-Length at once, else while reading).
async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ClientError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ClientError::RoleTooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::RoleTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl ServerClient {
    /// `base` is the server's URL, e.g. `http://198.18.0.1:8080`.
    pub fn new(base: &str, credential: Option<String>) -> Result<Self, ClientError> {
        Self::pinned(base, credential, None)
    }

    /// Like `new`, trusting over HTTPS only the certificate `pin` names (whoever issued it).
    pub fn pinned(
        base: &str,
        credential: Option<String>,
        pin: Option<CertPin>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        let mut pin_state = None;
        if let Some(pin) = pin {
            let (tls, refused) = pinned_config(pin).map_err(|e| ClientError::Tls(e.to_string()))?;
            builder = builder.use_preconfigured_tls(tls).https_only(true);
            pin_state = Some((pin, refused));
        }
        Ok(ServerClient {
            http: builder.build()?,
            base: base.trim_end_matches('/').to_owned(),
            credential,
            pin: pin_state,
        })
    }

    /// A transport error, or the pin mismatch behind it.
    fn transport(&self, e: reqwest::Error) -> ClientError {
        if let Some((expected, refused)) = &self.pin {
            if let Some(got) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return ClientError::CertificateMismatch {
                    expected: *expected,
                    got,
                };
            }
        }
        ClientError::Transport(e)
    }

    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// Uses `credential` from now on (node credentials are fleet-wide: one enrollment serves every server).
    pub fn set_credential(&mut self, credential: String) {
        self.credential = Some(credential);
    }

    /// The server's URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Trades the one-time token for a node credential and keeps it.
    pub async fn enroll(&mut self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        let resp = self
            .http
            .post(format!("{}/api/v1/agent/enroll", self.base))
            .timeout(Duration::from_secs(30))
            .json(req)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let enrolled: EnrollResponse = resp.json().await?;
        self.credential = Some(enrolled.credential.clone());
        Ok(enrolled)
    }

    fn credential_or_err(&self) -> Result<&str, ClientError> {
        self.credential.as_deref().ok_or(ClientError::NotEnrolled)
    }

    /// Waits (up to `wait`, capped by the server) for a role newer than `after`; `None` if none came.
    pub async fn poll_role(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<Option<RoleDocument>, ClientError> {
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/agent/role?after={after}&wait={}",
                self.base,
                wait.as_secs()
            ))
            .bearer_auth(self.credential_or_err()?)
            .timeout(wait + POLL_MARGIN)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        match resp.status() {
            StatusCode::OK => {
                let body = read_bounded(resp, MAX_ROLE_BYTES).await?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| ClientError::Refused {
                        status: StatusCode::OK,
                        message: format!("unreadable role document: {e}"),
                    })
            }
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(refusal(resp).await),
        }
    }

    /// Says "alive" (`POST /api/v1/agent/heartbeat`), waiting at most `timeout`; the server's answer says how
    /// often it wants the next.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<HeartbeatAnswer, ClientError> {
        let resp = self
            .http
            .post(format!("{}/api/v1/agent/heartbeat", self.base))
            .bearer_auth(self.credential_or_err()?)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let body = read_bounded(resp, 4096).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Refused {
            status: StatusCode::OK,
            message: format!("unreadable heartbeat answer: {e}"),
        })
    }

    /// `POST` of a JSON body to an agent API path with the node credential (reports and deltas).
    async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, ClientError> {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.credential_or_err()?)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(e))
    }

    /// Sends a report of what is applied and how the node is doing.
    pub async fn report(&self, report: &AgentReport) -> Result<(), ClientError> {
        let resp = self.post_json("/api/v1/agent/report", report).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(refusal(resp).await)
        }
    }

    /// Sends a full report, asking for its sequence number (`?deltas=1`): `Some(seq)` from a server that
    /// takes deltas, `None` from one that predates them (204, no body).
    pub async fn report_full(&self, report: &AgentReport) -> Result<Option<u64>, ClientError> {
        let resp = self
            .post_json("/api/v1/agent/report?deltas=1", report)
            .await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = read_bounded(resp, 4096).await?;
        Ok(serde_json::from_slice::<ReportAck>(&body)
            .ok()
            .map(|a| a.seq))
    }

    /// Sends a report delta (`POST /api/v1/agent/report/delta`).
    pub async fn report_delta(&self, delta: &ReportDelta) -> Result<DeltaAnswer, ClientError> {
        let resp = self.post_json("/api/v1/agent/report/delta", delta).await?;
        let status = resp.status();
        if status.is_success() {
            let body = read_bounded(resp, 4096).await?;
            return Ok(serde_json::from_slice::<ReportAck>(&body)
                .map_or(DeltaAnswer::SendFull, |a| DeltaAnswer::Merged {
                    seq: a.seq,
                }));
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(DeltaAnswer::SendFull);
        }
        if status == StatusCode::CONFLICT {
            let body = read_bounded(resp, 64 * 1024).await.unwrap_or_default();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            if code.as_deref() == Some(REPORT_BASE_UNKNOWN) {
                return Ok(DeltaAnswer::SendFull);
            }
            return Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Err(refusal(resp).await)
    }
}
