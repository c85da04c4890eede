//! Waiting for an observable condition under a deadline, never a fixed sleep: the one helper every test uses
//! (threads: [`until`], [`wait_for`]; tokio tests: [`until_async`], [`wait_for_async`], which never block the
//! runtime the server under test may share).

use std::future::Future;
use std::time::{Duration, Instant};

/// The condition did not hold within the deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {:.1} s waiting for {what}", waited.as_secs_f64())]
pub struct Timeout {
    pub what: String,
    pub waited: Duration,
}

/// Polls `check` every `poll` until it returns `Some`; `Timeout` after `within`.
pub fn until<T>(
    what: &str,
    within: Duration,
    poll: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= within {
            return Err(Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(poll);
    }
}

/// [`until`] for async checks and tokio tests.
pub async fn until_async<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    poll: Duration,
    mut check: impl FnMut() -> F,
) -> Result<T, Timeout> {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() >= within {
            return Err(Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Polls `cond` every `poll` until it holds and returns how long that took; panics (the test fails) with
/// `what` after `within`.
pub fn wait_for(
    what: &str,
    within: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    match until(what, within, poll, || cond().then_some(())) {
        Ok(()) => start.elapsed(),
        Err(e) => panic!("{e}"),
    }
}

/// [`wait_for`] in a tokio test.
pub async fn wait_for_async(
    what: &str,
    within: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    let r = until_async(what, within, poll, || {
        let holds = cond();
        async move { holds.then_some(()) }
    })
    .await;
    match r {
        Ok(()) => start.elapsed(),
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_value_or_times_out() {
        let mut n = 0;
        let v = until(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
        );
        assert_eq!(v.ok(), Some(3));
        let e = until(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || None::<()>,
        );
        let e = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("timed out after") && e.ends_with("waiting for never"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn until_async_polls_without_blocking() {
        let start = Instant::now();
        let r = until_async(
            "a deadline",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || async { (start.elapsed() >= Duration::from_millis(30)).then_some(()) },
        )
        .await;
        assert!(r.is_ok());
        let e = until_async(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { None::<()> },
        )
        .await;
        assert!(e.is_err());
    }
}
