//! The boot-script rate limit: boot scripts (each may mint an enrollment token) per MAC and per second. Failed
//! logins are bounded by `login_gate`.

/// Boot scripts per MAC per minute: a node boots (and fetches its script) a few times a minute at most.
const SCRIPTS_PER_MAC_PER_MINUTE: u32 = 10;
/// Boot scripts per second for the whole server: a rack powering on at once is well below this.
const SCRIPTS_PER_SECOND: u32 = 200;

/// Bounds how fast boot scripts are handed out. Every script mints an enrollment token and writes an audit row,
/// and the endpoint needs no login (nodes have no credentials yet), so without a bound anyone on the boot
/// network could grow the database at will.
#[derive(Debug)]
pub struct BootScriptLimiter {
    inner: std::sync::Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    per_mac: std::collections::HashMap<String, (u32, std::time::Instant)>,
    global: (u32, std::time::Instant),
}

impl Default for BootScriptLimiter {
    fn default() -> Self {
        let now = std::time::Instant::now();
        BootScriptLimiter {
            inner: std::sync::Mutex::new(LimiterState {
                per_mac: Default::default(),
                global: (0, now),
            }),
        }
    }
}

impl BootScriptLimiter {
    /// Counts one request for `mac`; false when it is over either budget.
    pub fn allow(&self, mac: &str) -> bool {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(st.global.1) >= std::time::Duration::from_secs(1) {
            st.global = (0, now);
        }
        if st.global.0 >= SCRIPTS_PER_SECOND {
            return false;
        }
        if st.per_mac.len() > 100_000 {
            st.per_mac
                .retain(|_, (_, t)| now.duration_since(*t) < std::time::Duration::from_secs(60));
        }
        let entry = st.per_mac.entry(mac.to_owned()).or_insert((0, now));
        if now.duration_since(entry.1) >= std::time::Duration::from_secs(60) {
            *entry = (0, now);
        }
        if entry.0 >= SCRIPTS_PER_MAC_PER_MINUTE {
            return false;
        }
        entry.0 += 1;
        st.global.0 += 1;
        true
    }
}
