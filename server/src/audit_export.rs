//! The audit log's CSV and JSON export as a streamed response body: one database cursor (`store::audit::stream`,
//! sqlx `fetch`) feeds a small bounded channel, a few rows at a time, so an export of a million rows holds a few
//! kilobytes in memory, never the whole log. Exports read on connections of their own (`Store::export_read`),
//! one per user and two in all at once (`auth::streams`), so slow exports never hold the readers the API,
//! agents and `/healthz` need. A client that stops reading holds its export connection at most
//! `STALL_TIMEOUT` (sooner, the server's `send_timeout` cuts it); a database error mid-way aborts the body, so a
//! cut export never looks complete.

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::Value;

use crate::audit::AuditRow;
use crate::store::{self, audit::AuditFilter};

/// How the rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A header line, then one quoted line per row (RFC 4180, CRLF).
    Csv,
    /// `{"entries": [...]}`, one entry per line.
    Json,
}

/// Bytes gathered before a chunk goes out (fewer, larger writes than one per row).
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks waiting for the client at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Longest the export waits for the client to take a chunk before giving up (and freeing the connection).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CSV field: quoted, quotes doubled, and a leading `= + - @` defused so spreadsheets do not run it.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub const CSV_HEADER: &str = "seq,at,time,actor,action,target,before,after,prev_hash,hash\r\n";

fn csv_line(r: AuditRow, out: &mut String) {
    let fields = [
        r.seq.to_string(),
        r.at.to_string(),
        crate::clock::time_text(r.at),
        r.actor,
        r.action,
        r.target,
        r.before_json.unwrap_or_default(),
        r.after_json.unwrap_or_default(),
        r.prev_hash,
        r.hash,
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(f));
    }
    out.push_str("\r\n");
}

fn parse(j: Option<&str>) -> Value {
    j.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

fn json_entry(r: AuditRow, first: bool, out: &mut String) {
    let entry = serde_json::json!({
        "seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
        "before": parse(r.before_json.as_deref()), "after": parse(r.after_json.as_deref()),
        "prev_hash": r.prev_hash, "hash": r.hash,
    });
    if !first {
        out.push_str(",\n");
    }
    out.push_str(&entry.to_string());
}

/// The export of every row matching `filter` (newest first) as a body that is written while it is sent.
/// `conn` is a reader connection taken by the caller (so a database that cannot be reached is an error before
/// the response starts); the export gives it back when done.
/// `slot` (the caller's cap on concurrent exports) is held until the export is done.
pub fn body<S: Send + 'static>(
    conn: store::ReadConn,
    filter: AuditFilter,
    format: ExportFormat,
    slot: S,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        write_rows(conn, filter, format, tx).await;
        drop(slot);
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

async fn write_rows(
    mut conn: store::ReadConn,
    filter: AuditFilter,
    format: ExportFormat,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let send = |chunk: Result<Bytes, std::io::Error>| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(STALL_TIMEOUT, tx.send(chunk)).await,
                Ok(Ok(()))
            )
        }
    };
    let mut buf = String::with_capacity(CHUNK_BYTES + 4096);
    buf.push_str(match format {
        ExportFormat::Csv => CSV_HEADER,
        ExportFormat::Json => "{\"entries\": [\n",
    });
    let mut rows = 0u64;
    let mut failed = None;
    {
        let mut stream = std::pin::pin!(store::audit::stream(&mut conn, &filter));
        while let Some(row) = stream.next().await {
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            match format {
                ExportFormat::Csv => csv_line(row, &mut buf),
                ExportFormat::Json => json_entry(row, rows == 0, &mut buf),
            }
            rows += 1;
            if buf.len() >= CHUNK_BYTES {
                let chunk = Bytes::from(std::mem::take(&mut buf));
                if !send(Ok(chunk)).await {
                    tracing::info!(rows, "audit export abandoned by the client");
                    return;
                }
                buf.reserve(CHUNK_BYTES + 4096);
            }
        }
    }
    if let Some(e) = failed {
        tracing::error!(rows, error = %e, "audit export failed part-way; the response is aborted");
        let _ = send(Err(std::io::Error::other("audit export failed"))).await;
        return;
    }
    if format == ExportFormat::Json {
        buf.push_str("\n]}\n");
    }
    if send(Ok(Bytes::from(buf))).await {
        tracing::info!(rows, ?format, "audit exported");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=SUM(A1)"), "\"'=SUM(A1)\"");
        assert_eq!(csv_field("node:lb-01"), "\"node:lb-01\"");
    }

    #[test]
    fn rows_are_encoded_as_csv_lines_and_json_entries() {
        let row = || AuditRow {
            seq: 7,
            at: 1000,
            actor: "oper".into(),
            action: "node.assign".into(),
            target: "node:lb-01".into(),
            before_json: None,
            after_json: Some("{\"role\":\"active\"}".into()),
            prev_hash: "aa".into(),
            hash: "bb".into(),
        };
        let mut csv = String::new();
        csv_line(row(), &mut csv);
        assert_eq!(
            csv,
            "\"7\",\"1000\",\"1970-01-01 00:00:01Z\",\"oper\",\"node.assign\",\"node:lb-01\",\"\",\
             \"{\"\"role\"\":\"\"active\"\"}\",\"aa\",\"bb\"\r\n"
        );
        let mut json = String::from("[");
        json_entry(row(), true, &mut json);
        json_entry(row(), false, &mut json);
        json.push(']');
        let v: Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v[1]["after"]["role"], "active");
        assert_eq!(v[0]["before"], Value::Null);
    }
}
