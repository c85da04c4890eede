//! `AppState`: what every HTTP handler shares (the fleet service, configuration, limiters, boot counters and the
//! shutdown signal). It depends on no router module, so `api`, `web` and `boot::http` can all take it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::auth::{BootScriptLimiter, LoginGate};
use crate::config::ServerConfig;
use crate::fleet::Fleet;

/// Counters of the boot services that run, shared with `/metrics`.
pub use crate::boot::BootStats;

#[derive(Debug)]
pub struct Inner {
    pub fleet: Arc<Fleet>,
    pub config: ServerConfig,
    /// Bounds password checks (argon2 is memory- and CPU-hungry and the login needs no credentials).
    pub login_gate: LoginGate,
    /// Counters of the running boot services, for `/metrics`.
    pub boot_stats: BootStats,
    /// Bounds boot-script requests: each one mints an enrollment token and an event.
    pub boot_limiter: BootScriptLimiter,
    /// Caps on live streams, role long-polls and audit exports per credential.
    pub streams: crate::auth::streams::StreamCaps,
    /// `/healthz`'s database write probe, shared by concurrent checks.
    pub health: crate::health::WriteProbe,
    /// What boots known nodes while the database is unreachable (`boot::cache`); `None` without `[boot]`.
    pub boot_cache: Option<Arc<crate::boot::cache::BootCache>>,
    /// Turns true when the server shuts down, so long-polls return at once.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
}

/// Shared state of every handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(
        fleet: Arc<Fleet>,
        config: ServerConfig,
        boot_stats: BootStats,
        boot_cache: Option<Arc<crate::boot::cache::BootCache>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AppState(Arc::new(Inner {
            fleet,
            config,
            boot_stats,
            login_gate: LoginGate::default(),
            boot_limiter: BootScriptLimiter::default(),
            streams: Default::default(),
            health: Default::default(),
            boot_cache,
            shutdown,
            started: Instant::now(),
        }))
    }
}

impl AppState {
    /// How this server judges the other servers' heartbeats (`heartbeat_misses`).
    pub fn liveness(&self) -> crate::fleet::servers::Liveness {
        crate::fleet::servers::Liveness {
            misses: self.config.heartbeat_misses,
        }
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
