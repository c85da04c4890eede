//! Ends long-lived responses (the dashboard's live stream) when their session ends: logout, password change,
//! user deleted or session expired. A small task checks the session every `CHECK_EVERY` and turns a stop signal
//! true when it is gone, or when the server shuts down.

use std::time::Duration;

use tokio::sync::watch;

use crate::secrets;
use crate::store::{self, Store};

/// How often an open stream's session is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A receiver that turns true when the server stops or when the session whose plain token is `session` no
/// longer exists.
pub fn until_server_stops_or_session_ends(
    store: Store,
    session: &str,
    mut server_stop: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*server_stop.borrow());
    let hash = secrets::hash_secret(session);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = server_stop.wait_for(|s| *s) => break,
                // Nobody listens any more: the stream ended by itself.
                _ = tx.closed() => return,
            }
            let alive = match store.read().await {
                Ok(mut conn) => !matches!(store::auth::session(&mut conn, &hash).await, Ok(None)),
                Err(_) => true,
            };
            if !alive {
                tracing::debug!("live stream closed: its session ended");
                break;
            }
        }
        let _ = tx.send(true);
    });
    rx
}
