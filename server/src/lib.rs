//! lbfleet-server as a library: the binary parses the command line and calls into here, tests and benchmarks
//! start the same server on a port-0 listener.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

pub mod api;
pub mod audit;
pub mod config;
pub mod fleet;
pub mod notify;
pub mod secrets;
pub mod store;
pub mod web;

pub use config::ServerConfig;

/// Opens the store (running migrations) and builds the fleet service.
pub async fn open_fleet(config: &ServerConfig) -> Result<fleet::Fleet, store::StoreError> {
    let store = store::Store::open(&config.database).await?;
    Ok(fleet::Fleet::new(store, config.enrollment_token_ttl))
}

/// Serves the API on `listener` until `shutdown` completes, then drains in-flight requests
/// (waiting long-polls answer at once) and closes the database.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let fleet = open_fleet(&config).await?;
    if let Some(password) = fleet.bootstrap_admin().await? {
        announce_initial_admin(&config, &password)?;
    }
    let store = fleet.store().clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addr = listener.local_addr()?;
    let app = api::router(api::AppState::new(fleet, config, stop_rx));
    tracing::info!(%addr, "lbfleet-server listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    })
    .await?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Prints the first admin's password once (to stdout, never to the log) and optionally writes it to a file
/// only the owner can read.
fn announce_initial_admin(config: &ServerConfig, password: &str) -> anyhow::Result<()> {
    println!("Created the first user: admin / {password}\n(shown once; change it with `lbfleet-server user passwd admin`)");
    if let Some(path) = &config.initial_admin_password_file {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        writeln!(f, "{password}")?;
    }
    Ok(())
}
