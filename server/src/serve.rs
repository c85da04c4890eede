//! The HTTP(S) accept loop: plain HTTP and TLS on one port, a cap on open connections, header-read and
//! handshake timeouts, and a graceful stop.
//!
//! With TLS configured, each connection's first byte says which it is (0x16 starts a TLS handshake). Plain
//! HTTP then serves only what iPXE fetches (`/boot`, `/images`) and `/healthz`; anything else is redirected to
//! HTTPS (GET) or refused, so credentials never travel in the clear.
//!
//! Connections are capped below the process's open-file limit, so slow or half-open clients cannot exhaust
//! file descriptors: when the cap is reached, a new connection closes the least recently active connection
//! that has no request in progress (one that never sent a complete request head, or an idle keep-alive).
//! Connections with a request in progress (long-polls, live streams) are never closed this way.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How a request reached the server (a request extension set by the accept loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// Bounds of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Open connections at most (lowered further to fit the open-file limit).
    pub max_connections: usize,
    /// Longest time to receive a complete request head (also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Longest time for the first byte and the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// File descriptors kept for everything that is not an HTTP connection (database, boot sockets, files served).
const FD_RESERVE: u64 = 128;

/// The soft open-file limit of this process, from /proc/self/limits (no unsafe `getrlimit` needed).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `wanted`, lowered so that the connections plus `FD_RESERVE` fit the open-file limit.
pub fn effective_cap(wanted: usize) -> usize {
    let by_fds = open_file_limit()
        .map(|l| usize::try_from(l.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    wanted.min(by_fds).max(1)
}

#[derive(Debug)]
struct Conn {
    /// Requests in progress (until their response body is finished or dropped).
    busy: AtomicUsize,
    /// Milliseconds since the registry's epoch of the last request start or end (or the accept).
    last_active: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

/// Open connections, shared by every listener of the server.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    inner: Mutex<ConnTable>,
    evictions: AtomicU64,
}

#[derive(Debug, Default)]
struct ConnTable {
    conns: HashMap<u64, Arc<Conn>>,
    /// Connections not marked evicted.
    live: usize,
}

impl Connections {
    pub fn new(max_connections: usize) -> Arc<Self> {
        let cap = effective_cap(max_connections);
        Arc::new(Connections {
            cap,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            inner: Mutex::new(ConnTable::default()),
            evictions: AtomicU64::new(0),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections closed to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ConnTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, closing the least recently active idle one when at the cap; `None` when
    /// every connection is busy (the new one is then closed at once).
    fn admit(self: &Arc<Self>) -> Option<Registered> {
        let mut t = self.table();
        if t.live >= self.cap {
            let victim = t
                .conns
                .values()
                .filter(|c| {
                    !c.evicted.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0
                })
                .min_by_key(|c| c.last_active.load(Ordering::Relaxed))
                .cloned()?;
            victim.evicted.store(true, Ordering::Relaxed);
            victim.evict.notify_one();
            t.live -= 1;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now_ms()),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        t.conns.insert(id, conn.clone());
        t.live += 1;
        Some(Registered {
            registry: self.clone(),
            id,
            conn,
        })
    }
}

/// A connection's place in the registry; removed when the connection task ends.
struct Registered {
    registry: Arc<Connections>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut t = self.registry.table();
        if let Some(c) = t.conns.remove(&self.id) {
            if !c.evicted.load(Ordering::Relaxed) {
                t.live = t.live.saturating_sub(1);
            }
        }
    }
}

/// Marks its connection busy from the request's start until the response body is done.
struct Busy {
    registry: Arc<Connections>,
    conn: Arc<Conn>,
}

impl Busy {
    fn new(registry: Arc<Connections>, conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        conn.last_active.store(registry.now_ms(), Ordering::Relaxed);
        Busy { registry, conn }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(self.registry.now_ms(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection marked busy until it is finished or dropped.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServeLimits,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (close_tx, close_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let Some(registered) = connections.admit() else {
            tracing::warn!(client = %peer, "connection refused: every connection is busy");
            drop(stream);
            continue;
        };
        tasks.spawn(connection(
            stream,
            peer,
            app.clone(),
            acceptor.clone(),
            limits.clone(),
            registered,
            close_rx.clone(),
        ));
    }
    drop(listener);
    let _ = close_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: ServeLimits,
    registered: Registered,
    close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn = registered.conn.clone();
    let setup = async {
        let Some(acceptor) = acceptor else {
            return Some((Transport::Plain, None));
        };
        let mut first = [0u8; 1];
        let n = stream.peek(&mut first).await.ok()?;
        if n == 0 || first[0] != 0x16 {
            return Some((Transport::Plain, None));
        }
        Some((Transport::Tls, Some(acceptor)))
    };
    let decided = tokio::select! {
        d = tokio::time::timeout(limits.handshake_timeout, setup) => d.ok().flatten(),
        () = conn.evict.notified() => None,
    };
    let Some((transport, acceptor)) = decided else {
        return;
    };
    let registry = registered.registry.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(transport);
        let busy = Busy::new(registry.clone(), conn.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(Body::new)).await;
            resp.map(|r| r.map(|inner| Body::new(TrackedBody { inner, _busy: busy })))
        }
    });
    match acceptor {
        None => drive(TokioIo::new(stream), svc, &registered, &limits, close).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                h = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)) => h,
                () = registered.conn.evict.notified() => return,
            };
            match handshake {
                Ok(Ok(tls)) => drive(TokioIo::new(tls), svc, &registered, &limits, close).await,
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I, S>(
    io: I,
    svc: S,
    registered: &Registered,
    limits: &ServeLimits,
    mut close: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let closing = async {
        let _ = close.wait_for(|c| *c).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = registered.conn.evict.notified() => return,
        () = closing => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = registered.conn.evict.notified() => {}
    }
}

/// Path prefixes plain HTTP serves while TLS is on: what iPXE fetches, and the health check.
const PLAIN_PATHS: &[&str] = &["/boot/", "/images/", "/healthz"];

/// Middleware: with TLS on, a plain-HTTP request outside `PLAIN_PATHS` is redirected to HTTPS (GET/HEAD) or
/// refused, so no password, session or credential travels in the clear.
pub async fn https_only(tls_on: bool, req: Request, next: Next) -> Response {
    let plain = req.extensions().get::<Transport>() == Some(&Transport::Plain);
    let path = req.uri().path();
    if !tls_on || !plain || PLAIN_PATHS.iter().any(|p| path.starts_with(p)) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        });
    if let (Some(host), true) = (host, matches!(*req.method(), Method::GET | Method::HEAD)) {
        let target = format!(
            "https://{host}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        if let Ok(v) = HeaderValue::from_str(&target) {
            return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response();
        }
    }
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": {"code": "https_required",
            "message": "this server accepts this request only over HTTPS"}})),
    )
        .into_response()
}
