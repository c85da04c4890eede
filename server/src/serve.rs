//! The HTTP(S) accept loop: plain HTTP and TLS on one port, caps on open connections, header-read, handshake
//! and send timeouts, and a graceful stop.
//!
//! With TLS configured, each connection's first byte says which it is (0x16 starts a TLS handshake). Plain
//! HTTP then serves only what iPXE fetches (`/boot`, `/images`) and `/healthz`; anything else is redirected to
//! HTTPS (GET) or refused, so credentials never travel in the clear. Responses over TLS carry HSTS.
//!
//! Each listener has its own connection registry (so a full boot listener never keeps the management network
//! out, and the reverse), capped below the process's open-file limit, with a bound per client address. At a
//! bound, a new connection closes the least recently active idle connection (one that never sent a complete
//! request head, or an idle keep-alive); when every connection has a request in progress, the address holding
//! the most connections gives one up, so one address cannot keep another out by holding requests open.
//! A response body the client does not take (no progress for `send_timeout`, or under `min_send_rate` on
//! average) is cut, so slow readers free their connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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
    /// Open connections at most on this listener (lowered further to fit the open-file limit).
    pub max_connections: usize,
    /// Open connections of one client address at most on this listener.
    pub max_per_address: usize,
    /// Longest time to receive a complete request head (also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Longest time for the first byte and the TLS handshake.
    pub handshake_timeout: Duration,
    /// A response body that makes no progress (the client reads nothing) for this long is cut; also the grace
    /// period before `min_send_rate` applies.
    pub send_timeout: Duration,
    /// Bytes per second a response body must average after `send_timeout` (0: no minimum). Event streams are
    /// exempt (they are quiet by design, and capped per user).
    pub min_send_rate: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 4096,
            max_per_address: 256,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            min_send_rate: 8 * 1024,
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
    effective_share(wanted, 1)
}

/// `wanted`, lowered so that `listeners` listeners with this cap each, plus `FD_RESERVE`, fit the open-file
/// limit.
pub fn effective_share(wanted: usize, listeners: usize) -> usize {
    let by_fds = open_file_limit()
        .map(|l| {
            let share = l.saturating_sub(FD_RESERVE) / (listeners.max(1) as u64);
            usize::try_from(share.max(16)).unwrap_or(usize::MAX)
        })
        .unwrap_or(usize::MAX);
    wanted.min(by_fds).max(1)
}

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    /// Requests in progress (until their response body is finished or dropped).
    busy: AtomicUsize,
    /// Milliseconds since the registry's epoch of the last request start or end (or the accept).
    last_active: AtomicU64,
    /// When the response body now being sent started (ms since the epoch, plus one), 0 when none is.
    body_since: AtomicU64,
    /// When that body last handed a frame to the connection (ms since the epoch).
    body_progress: AtomicU64,
    /// Bytes of that body handed to the connection so far.
    body_bytes: AtomicU64,
    /// That body is an event stream (exempt from the minimum rate).
    body_stream: AtomicBool,
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    /// True when the response now being sent is too slow: no progress for `send_timeout`, or (past that grace)
    /// fewer bytes than `min_send_rate` per second on average.
    fn sending_too_slowly(&self, now_ms: u64, limits: &ServeLimits) -> bool {
        let since = self.body_since.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
        let started = since - 1;
        let grace = u64::try_from(limits.send_timeout.as_millis()).unwrap_or(u64::MAX);
        let progress = self.body_progress.load(Ordering::Relaxed);
        if now_ms.saturating_sub(progress) > grace {
            return true;
        }
        if limits.min_send_rate == 0 || self.body_stream.load(Ordering::Relaxed) {
            return false;
        }
        let past_grace = now_ms.saturating_sub(started).saturating_sub(grace);
        let owed = limits.min_send_rate.saturating_mul(past_grace) / 1000;
        self.body_bytes.load(Ordering::Relaxed) < owed
    }
}

/// Open connections of one listener.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    per_address: usize,
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
    /// Connections not marked evicted, per client address.
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnTable {
    fn evict(&mut self, victim: &Conn) {
        victim.evicted.store(true, Ordering::Relaxed);
        victim.evict.notify_one();
        self.live -= 1;
        self.forget_ip(victim.ip);
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// The least recently active connection among those `pick` accepts and not yet evicted.
    fn least_recent(&self, pick: impl Fn(&Conn) -> bool) -> Option<Arc<Conn>> {
        self.conns
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed) && pick(c))
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed))
            .cloned()
    }
}

impl Connections {
    /// A registry for one listener of `listeners`: `max_connections` at most (within its share of the
    /// open-file limit), `max_per_address` of them from one client address.
    pub fn for_listener(
        max_connections: usize,
        max_per_address: usize,
        listeners: usize,
    ) -> Arc<Self> {
        let cap = effective_share(max_connections, listeners);
        Arc::new(Connections {
            cap,
            per_address: max_per_address.clamp(1, cap),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            inner: Mutex::new(ConnTable::default()),
            evictions: AtomicU64::new(0),
        })
    }

    /// A registry for the only listener, with no per-address bound below the cap.
    pub fn new(max_connections: usize) -> Arc<Self> {
        Self::for_listener(max_connections, usize::MAX, 1)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn per_address(&self) -> usize {
        self.per_address
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

    /// Registers a new connection from `ip`, making room when needed; `None` when there is none to make (the
    /// new connection is then closed at once).
    ///
    /// - An address at its own bound gives up its least recently active idle connection, else is refused.
    /// - At the listener's cap, the least recently active idle connection is closed; if every connection is
    ///   busy, the address holding the most connections gives up its least recently active one, provided it
    ///   holds at least two more than the newcomer (so no address can keep the others out by holding requests
    ///   open).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Registered> {
        let mut t = self.table();
        let mine = t.per_ip.get(&ip).copied().unwrap_or(0);
        let victim = if mine >= self.per_address {
            Some(t.least_recent(|c| c.ip == ip && c.busy.load(Ordering::Relaxed) == 0)?)
        } else if t.live >= self.cap {
            match t.least_recent(|c| c.busy.load(Ordering::Relaxed) == 0) {
                Some(v) => Some(v),
                None => {
                    let (&heaviest, &held) = t.per_ip.iter().max_by_key(|(_, n)| **n)?;
                    if held < mine + 2 {
                        return None;
                    }
                    Some(t.least_recent(|c| c.ip == heaviest)?)
                }
            }
        } else {
            None
        };
        if let Some(v) = victim {
            t.evict(&v);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            ip,
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(now),
            body_since: AtomicU64::new(0),
            body_progress: AtomicU64::new(now),
            body_bytes: AtomicU64::new(0),
            body_stream: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        t.conns.insert(id, conn.clone());
        t.live += 1;
        *t.per_ip.entry(ip).or_insert(0) += 1;
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
                t.forget_ip(c.ip);
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

    /// The response head is out: its body's progress is watched from now on.
    fn body_started(&self, event_stream: bool) {
        let now = self.registry.now_ms();
        self.conn.body_bytes.store(0, Ordering::Relaxed);
        self.conn.body_progress.store(now, Ordering::Relaxed);
        self.conn.body_stream.store(event_stream, Ordering::Relaxed);
        self.conn.body_since.store(now + 1, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.body_since.store(0, Ordering::Relaxed);
        self.conn
            .last_active
            .store(self.registry.now_ms(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection marked busy until it is finished or dropped, and records how
/// fast it is taken.
struct TrackedBody {
    inner: Body,
    busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            let conn = &self.busy.conn;
            conn.body_bytes.fetch_add(n, Ordering::Relaxed);
            conn.body_progress
                .store(self.busy.registry.now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves when the response now being sent on `conn` is too slow (`Conn::sending_too_slowly`).
async fn too_slow(conn: &Conn, registry: &Connections, limits: &ServeLimits) {
    let tick = (limits.send_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if conn.sending_too_slowly(registry.now_ms(), limits) {
            return;
        }
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
        let Some(registered) = connections.admit(peer.ip()) else {
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
            resp.map(|r| {
                let event_stream = r
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                busy.body_started(event_stream);
                r.map(|inner| Body::new(TrackedBody { inner, busy }))
            })
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
        () = too_slow(&registered.conn, &registered.registry, limits) => {
            tracing::info!(client = %registered.conn.ip, "response cut: the client reads too slowly");
            return;
        }
        () = closing => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = registered.conn.evict.notified() => {}
        () = too_slow(&registered.conn, &registered.registry, limits) => {}
    }
}

/// Path prefixes plain HTTP serves while TLS is on: what iPXE fetches, and the health check.
const PLAIN_PATHS: &[&str] = &["/boot/", "/images/", "/healthz"];

/// HSTS on every response over TLS: browsers that reached the server over HTTPS (with a certificate they
/// accept) use HTTPS for the next year, so a later plain-HTTP link cannot be downgraded in transit.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Middleware: over TLS, adds HSTS. With TLS on, a plain-HTTP request outside `PLAIN_PATHS` is redirected to HTTPS (GET/HEAD) or
/// refused, so no password, session or credential travels in the clear.
pub async fn https_only(tls_on: bool, req: Request, next: Next) -> Response {
    let transport = req.extensions().get::<Transport>().copied();
    if transport == Some(Transport::Tls) {
        let mut resp = next.run(req).await;
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
        return resp;
    }
    let plain = transport == Some(Transport::Plain);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn busy(r: &Registered) {
        r.conn.busy.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn an_address_at_its_bound_gives_up_an_idle_connection_or_is_refused() {
        let c = Connections::for_listener(10, 2, 1);
        let a1 = c.admit(ip(1)).expect("first");
        let a2 = c.admit(ip(1)).expect("second");
        busy(&a2);
        // The idle one makes room for the third.
        let a3 = c.admit(ip(1)).expect("third, in place of the idle one");
        assert!(a1.conn.evicted.load(Ordering::Relaxed));
        busy(&a3);
        assert!(c.admit(ip(1)).is_none(), "both busy: refused");
        assert!(c.admit(ip(2)).is_some(), "another address is not affected");
    }

    #[test]
    fn at_the_cap_the_heaviest_address_gives_up_a_busy_connection() {
        let c = Connections::for_listener(4, 4, 1);
        let held: Vec<_> = (0..4).map(|_| c.admit(ip(1)).expect("held")).collect();
        held.iter().for_each(busy);
        let other = c.admit(ip(2)).expect("a newcomer gets in");
        busy(&other);
        assert_eq!(
            held.iter()
                .filter(|r| r.conn.evicted.load(Ordering::Relaxed))
                .count(),
            1
        );
        assert_eq!(c.evictions(), 1);
        // Shares 3, 1: more addresses get in while some address holds two more than they do ...
        let mut more = Vec::new();
        for last in 3..=4 {
            let r = c.admit(ip(last)).expect("another address");
            busy(&r);
            more.push(r);
        }
        // ... and at one each, a fifth address would take from an equal share, and is refused.
        assert!(c.admit(ip(5)).is_none());
        assert_eq!(c.evictions(), 3);
    }

    #[test]
    fn a_body_without_progress_or_under_the_rate_is_too_slow() {
        let limits = ServeLimits {
            send_timeout: Duration::from_secs(10),
            min_send_rate: 1000,
            ..ServeLimits::default()
        };
        let c = Connections::for_listener(4, 4, 1);
        let r = c.admit(ip(1)).expect("conn");
        let conn = &r.conn;
        assert!(
            !conn.sending_too_slowly(100_000, &limits),
            "no body in flight"
        );
        conn.body_since.store(1_000 + 1, Ordering::Relaxed);
        conn.body_progress.store(1_000, Ordering::Relaxed);
        assert!(
            !conn.sending_too_slowly(10_000, &limits),
            "within the grace"
        );
        assert!(
            conn.sending_too_slowly(11_001, &limits),
            "no progress for send_timeout"
        );
        // Progress, but 20 s past the grace at 1000 B/s asks for 20,000 bytes.
        conn.body_progress.store(30_000, Ordering::Relaxed);
        conn.body_bytes.store(19_000, Ordering::Relaxed);
        assert!(conn.sending_too_slowly(31_000, &limits));
        conn.body_bytes.store(21_000, Ordering::Relaxed);
        assert!(!conn.sending_too_slowly(31_000, &limits));
        // Event streams are held to progress only.
        conn.body_bytes.store(0, Ordering::Relaxed);
        conn.body_stream.store(true, Ordering::Relaxed);
        assert!(!conn.sending_too_slowly(31_000, &limits));
    }
}
