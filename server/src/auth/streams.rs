//! Caps on long-lived requests per credential: live streams per user, role long-polls per node credential, and
//! audit exports per user and fleet-wide. Each is a count per key, taken before the long part starts and given
//! back when its guard (`Slot`) is dropped with the response; past the cap the caller gets 429 at once, so one
//! credential cannot hold many connections (or database readers) open.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Live (`/live`) streams one user may have open at once.
pub const LIVE_STREAMS_PER_USER: usize = 4;
/// Role long-polls one node credential may have waiting at once (an agent needs one).
pub const ROLE_POLLS_PER_NODE: usize = 4;
/// Audit exports one user may run at once.
pub const EXPORTS_PER_USER: usize = 1;
/// Audit exports running at once in the whole server (each holds a database connection of its own).
pub const EXPORTS_TOTAL: usize = 2;

/// Counts per key, each capped at `max`.
#[derive(Debug)]
pub struct Slots<K: Hash + Eq> {
    max: usize,
    /// Cap over all keys together (`usize::MAX`: none).
    total_max: usize,
    held: Mutex<Held<K>>,
}

#[derive(Debug)]
struct Held<K> {
    per_key: HashMap<K, usize>,
    total: usize,
}

/// One taken slot; given back on drop.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Self::with_total(max, usize::MAX)
    }

    pub fn with_total(max: usize, total_max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            total_max,
            held: Mutex::new(Held {
                per_key: HashMap::new(),
                total: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held<K>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `key`, or `None` when `key` (or the whole set) is at its cap.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut h = self.lock();
        if h.total >= self.total_max {
            return None;
        }
        let n = h.per_key.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        h.total += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Slots held now for `key`.
    pub fn held(&self, key: &K) -> usize {
        self.lock().per_key.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut h = self.slots.lock();
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.per_key.remove(&self.key);
            }
        }
    }
}

/// The caps of one server (in `AppState`).
#[derive(Debug)]
pub struct StreamCaps {
    /// Per user name.
    pub live: Arc<Slots<String>>,
    /// Per node id.
    pub role_polls: Arc<Slots<i64>>,
    /// Per user name, and `EXPORTS_TOTAL` in all.
    pub exports: Arc<Slots<String>>,
}

impl Default for StreamCaps {
    fn default() -> Self {
        StreamCaps {
            live: Slots::new(LIVE_STREAMS_PER_USER),
            role_polls: Slots::new(ROLE_POLLS_PER_NODE),
            exports: Slots::with_total(EXPORTS_PER_USER, EXPORTS_TOTAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_in_total_and_given_back() {
        let s = Slots::with_total(2, 3);
        let a1 = s.try_take("a").expect("first");
        let _a2 = s.try_take("a").expect("second");
        assert!(s.try_take("a").is_none(), "a at its cap");
        let _b1 = s.try_take("b").expect("b");
        assert!(s.try_take("c").is_none(), "total cap");
        drop(a1);
        assert_eq!(s.held(&"a"), 1);
        assert!(s.try_take("c").is_some());
    }
}
