//! `GET /live`: a Server-Sent Events stream that says "changed" after every committed fleet change. Pages
//! re-fetch themselves and swap their `data-live` regions, so what is on screen follows the fleet within a
//! round trip. The stream ends when the server shuts down, so it never holds up a graceful stop, and when its
//! session ends; one user may have `LIVE_STREAMS_PER_USER` open at once (429 past it).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};

use super::session::WebUser;

/// Shortest time between two "changed" events on one stream.
const MIN_GAP: Duration = Duration::from_millis(100);
use crate::auth::streams::LIVE_STREAMS_PER_USER;
use crate::state::AppState;

pub async fn stream(State(s): State<AppState>, user: WebUser) -> Response {
    let Some(slot) = s.streams.live.try_take(user.name.clone()) else {
        tracing::info!(
            user = user.name,
            max = LIVE_STREAMS_PER_USER,
            "live stream refused: too many open"
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {LIVE_STREAMS_PER_USER} live streams per user; close a tab"),
        )
            .into_response();
    };
    let rx = s.fleet.notifier().subscribe_fleet();
    let stop = crate::auth::session_watch::until_server_stops_or_session_ends(
        s.fleet.clone(),
        user.session(),
        s.shutdown.clone(),
    );
    tracing::debug!(user = user.name, "live stream opened");
    // The slot goes back when the stream is dropped (ended or client gone).
    let events = events(rx, stop).map(move |e| {
        let _held = &slot;
        e
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn events(
    mut rx: tokio::sync::watch::Receiver<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = *rx.borrow_and_update();
    let hello = stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("hello").data(first.to_string()))
    });
    let changes = stream::unfold((rx, stop, None), |(mut rx, mut stop, last)| async move {
        // During a burst (many agents reporting at once) send at most one event per MIN_GAP: the watch channel
        // keeps only the newest value, so changes in the gap collapse into the next event. After a quiet spell
        // the first change goes out at once.
        if let Some(last) = last {
            let wait = tokio::time::sleep_until(last + MIN_GAP);
            tokio::select! {
                _ = wait => {},
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
        let changed = tokio::select! {
            changed = rx.changed() => changed.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        };
        if !changed {
            return None;
        }
        let v = *rx.borrow_and_update();
        Some((
            Ok(Event::default().event("changed").data(v.to_string())),
            (rx, stop, Some(tokio::time::Instant::now())),
        ))
    });
    hello.chain(changes)
}
