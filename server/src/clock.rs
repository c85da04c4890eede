//! Time stamps as people read them, shared by the dashboard and the audit export (neither imports the other).

/// Milliseconds since the epoch as `2026-11-26 10:00:00Z` (`-` for a negative time).
pub fn time_text(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".into();
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}
