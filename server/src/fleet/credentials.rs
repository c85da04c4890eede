//! Node credentials checked once and remembered: an agent's role polls, reports and heartbeats cost no database
//! read while the database confirmed its credential within `CREDENTIAL_CACHE_MS`. 1,000 agents woken by one
//! change poll again at once; without this, each new poll was a credential query.
//!
//! A revoked credential stops working:
//! - on this server, at once: rejecting or retiring a node, or its re-enrollment (which replaces the
//!   credential), forgets the node's cached credentials after the commit, and wakes its waiting role polls,
//!   which check their credential again (`revoked_since`) and end with 401;
//! - on the other servers of a PostgreSQL fleet, when the notice arrives (`notify::peers`, sub-millisecond);
//! - in any case within `CREDENTIAL_CACHE_MS`: a revocation no notice told this server about (a lost notice, a
//!   command run by another process on the same SQLite file) is seen at the next confirmation.
//!
//! A read that started before a revocation cannot put the old answer back: a confirmation is kept only if the
//! node was not revoked since the epoch taken before the read.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// How long a node credential the database confirmed is taken as is (the bound on a revocation nobody
/// announced to this server).
pub const CREDENTIAL_CACHE_MS: i64 = 10_000;

/// How long a node's revocation is remembered to refuse a confirmation read before it (a read slower than
/// this is kept for at most `CREDENTIAL_CACHE_MS` anyway).
const REVOCATION_KEPT_MS: i64 = 60_000;

/// The node credentials this server confirmed, and the revocations it heard of.
#[derive(Debug)]
pub struct NodeCredentials {
    inner: Mutex<Inner>,
    /// The revocation epoch, for waiting role polls (`subscribe`).
    epoch_tx: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// SHA-256 (hex) of a node credential -> (its node, when the database confirmed it, ms).
    confirmed: HashMap<String, (i64, i64)>,
    /// Bumped on every revocation.
    epoch: u64,
    /// Node -> (the epoch its last revocation made, when).
    revoked: HashMap<i64, (u64, i64)>,
    /// The epoch of the last "forget everything" (a peer's notice too large to list nodes, a lost listener).
    all_revoked: u64,
}

impl Default for NodeCredentials {
    fn default() -> Self {
        NodeCredentials {
            inner: Mutex::new(Inner::default()),
            epoch_tx: watch::channel(0).0,
        }
    }
}

impl NodeCredentials {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current revocation epoch: take it before reading the database (`confirm`) or before checking a
    /// credential a long request then relies on (`revoked_since`).
    pub fn epoch(&self) -> u64 {
        self.inner().epoch
    }

    /// The node of a credential hash the database confirmed within `CREDENTIAL_CACHE_MS` of `now`.
    pub fn cached(&self, hash: &str, now: i64) -> Option<i64> {
        self.inner()
            .confirmed
            .get(hash)
            .filter(|(_, at)| now.saturating_sub(*at) <= CREDENTIAL_CACHE_MS)
            .map(|(node, _)| *node)
    }

    /// Remembers that the database confirmed `hash` as `node`'s credential at `now`, by a read started at
    /// revocation epoch `read_epoch`; refused when the node was revoked since (the read may predate it).
    pub fn confirm(&self, hash: String, node: i64, now: i64, read_epoch: u64) {
        let mut inner = self.inner();
        if inner.all_revoked > read_epoch
            || inner
                .revoked
                .get(&node)
                .is_some_and(|(e, _)| *e > read_epoch)
        {
            return;
        }
        inner.confirmed.insert(hash, (node, now));
    }

    /// Forgets the credentials of `nodes` (revoked or replaced) and wakes waiting polls to check theirs.
    pub fn revoke(&self, nodes: &[i64], now: i64) {
        if nodes.is_empty() {
            return;
        }
        let epoch = {
            let mut inner = self.inner();
            inner.epoch += 1;
            let epoch = inner.epoch;
            inner.confirmed.retain(|_, (n, _)| !nodes.contains(n));
            for n in nodes {
                inner.revoked.insert(*n, (epoch, now));
            }
            epoch
        };
        self.epoch_tx.send_replace(epoch);
    }

    /// Forgets every credential (revocations this server may have missed) and wakes every waiting poll.
    pub fn revoke_all(&self) {
        let epoch = {
            let mut inner = self.inner();
            inner.epoch += 1;
            inner.all_revoked = inner.epoch;
            inner.confirmed.clear();
            inner.epoch
        };
        self.epoch_tx.send_replace(epoch);
    }

    /// Whether `node`'s credentials may have been revoked after `epoch`.
    pub fn revoked_since(&self, node: i64, epoch: u64) -> bool {
        let inner = self.inner();
        inner.all_revoked > epoch || inner.revoked.get(&node).is_some_and(|(e, _)| *e > epoch)
    }

    /// Changes on every revocation (the new epoch).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch_tx.subscribe()
    }

    /// Drops expired confirmations and old revocations.
    pub fn prune(&self, now: i64) {
        let mut inner = self.inner();
        inner
            .confirmed
            .retain(|_, (_, at)| now.saturating_sub(*at) <= CREDENTIAL_CACHE_MS);
        inner
            .revoked
            .retain(|_, (_, at)| now.saturating_sub(*at) <= REVOCATION_KEPT_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_expires_and_a_revocation_forgets_it() {
        let c = NodeCredentials::default();
        c.confirm("h1".into(), 1, 1_000, c.epoch());
        c.confirm("h2".into(), 2, 1_000, c.epoch());
        assert_eq!(c.cached("h1", 1_000 + CREDENTIAL_CACHE_MS), Some(1));
        assert_eq!(c.cached("h1", 1_001 + CREDENTIAL_CACHE_MS), None, "expired");
        let before = c.epoch();
        c.revoke(&[1], 2_000);
        assert_eq!(c.cached("h1", 2_000), None);
        assert_eq!(c.cached("h2", 2_000), Some(2), "another node's stays");
        assert!(c.revoked_since(1, before));
        assert!(!c.revoked_since(2, before));
        assert!(!c.revoked_since(1, c.epoch()));
    }

    #[test]
    fn a_read_started_before_a_revocation_is_not_kept() {
        let c = NodeCredentials::default();
        let read_epoch = c.epoch();
        c.revoke(&[1], 1_000);
        c.confirm("old".into(), 1, 1_001, read_epoch);
        assert_eq!(c.cached("old", 1_001), None);
        // A read started after the revocation is kept (the replacing credential).
        c.confirm("new".into(), 1, 1_002, c.epoch());
        assert_eq!(c.cached("new", 1_002), Some(1));
        let read_epoch = c.epoch();
        c.revoke_all();
        c.confirm("other".into(), 2, 1_003, read_epoch);
        assert_eq!(c.cached("other", 1_003), None);
        assert_eq!(c.cached("new", 1_003), None, "forgotten by revoke_all");
    }

    #[tokio::test]
    async fn a_revocation_wakes_subscribers() {
        let c = NodeCredentials::default();
        let mut rx = c.subscribe();
        c.revoke(&[7], 1_000);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), c.epoch());
    }
}
