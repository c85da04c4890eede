//! "Last used" of API tokens: written at most once a minute per token (`store::auth::touch_token`), so an
//! admin can see which tokens are alive and revoke the rest. Uses within the minute skip the database through
//! a small in-memory note. A failure to record is logged, never fatal to the request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{self, Store};

const INTERVAL: Duration = Duration::from_millis(store::auth::TOKEN_TOUCH_INTERVAL_MS as u64);

/// Token hashes recorded within `INTERVAL`, and when.
static RECENT: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn due(token_hash: &str) -> bool {
    let mut guard = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    let recent = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    if recent
        .get(token_hash)
        .is_some_and(|t| now.duration_since(*t) < INTERVAL)
    {
        return false;
    }
    if recent.len() >= 10_000 {
        recent.retain(|_, t| now.duration_since(*t) < INTERVAL);
    }
    recent.insert(token_hash.to_owned(), now);
    true
}

/// Records a use of the token whose hash is `token_hash`.
pub async fn record(store: &Store, token_hash: &str) {
    if !due(token_hash) {
        return;
    }
    let done = async {
        let mut tx = store.begin().await?;
        store::auth::touch_token(&mut tx, token_hash).await?;
        tx.commit().await.map_err(store::StoreError::from)
    };
    if let Err(e) = done.await {
        tracing::warn!(error = %e, "cannot record API token use");
    }
}
