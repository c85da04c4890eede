//! Sans-IO HTTP/1.1 for the `http` and `https` checks: the request bytes, and a parser for what comes back
//! (status line, the headers that frame the body, a chunked body). One request per connection
//! (`Connection: close`), so no keep-alive state exists.

/// Most bytes of status line and headers read before the answer is called malformed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most body bytes searched for `body_contains`.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a response could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed status line")]
    StatusLine,
    #[error("headers larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed header")]
    Header,
}

/// `GET path HTTP/1.1` with `Host`, closing the connection after the answer.
pub fn request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbfleet-agent/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// The status line and the framing headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of status line and headers, including the blank line.
    pub len: usize,
    pub content_length: Option<usize>,
    pub chunked: bool,
}

/// Parses the head once it is complete: `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Header)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::StatusLine)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::StatusLine);
    }
    let status: u16 = code.parse().map_err(|_| HttpError::StatusLine)?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Header)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| HttpError::Header)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Some(Head {
        status,
        len: end + 4,
        content_length,
        chunked,
    }))
}

/// Decodes as much of a chunked body as is present (RFC 9112 7.1); stops at the last chunk, at a malformed
/// size line or where the bytes end. Returns the data and whether the last chunk was seen.
pub fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = std::str::from_utf8(&body[..eol]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let data = &body[eol + 2..];
        let take = size.min(data.len());
        out.extend_from_slice(&data[..take]);
        if take < size || data.len() < size + 2 {
            return (out, false);
        }
        body = &data[size + 2..];
    }
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let r = request("/healthz", "198.18.2.1:8080");
        let text = String::from_utf8(r).unwrap_or_default();
        assert!(text.starts_with("GET /healthz HTTP/1.1\r\nHost: 198.18.2.1:8080\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        let h = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy")
            .ok()
            .flatten();
        assert_eq!(
            h,
            Some(Head {
                status: 503,
                len: 55,
                content_length: Some(5),
                chunked: false
            })
        );
        let h = parse_head(b"HTTP/1.0 200\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .ok()
            .flatten();
        assert!(h.is_some_and(|h| h.chunked && h.status == 200));
        assert_eq!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpError::StatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 20x OK\r\n\r\n"),
            Err(HttpError::StatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"),
            Err(HttpError::Header)
        );
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n7;x=y\r\npedia i\r\n0\r\n\r\n"),
            (b"Wikipedia i".to_vec(), true)
        );
        assert_eq!(dechunk(b"4\r\nWi"), (b"Wi".to_vec(), false));
        assert_eq!(dechunk(b"zz\r\n"), (Vec::new(), false));
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: down", b"ok"));
    }
}
