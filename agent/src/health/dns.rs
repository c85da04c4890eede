//! A tiny sans-IO DNS codec for the `dns` health check: one query out, one response in (RFC 1035).
//!
//! ```text
//! Header (RFC 1035 4.1.1), 12 bytes:
//!   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
//! |                      ID                       |
//! |QR|   Opcode  |AA|TC|RD|RA|   Z    |   RCODE   |
//! |                    QDCOUNT                    |
//! |                    ANCOUNT                    |
//! |                    NSCOUNT                    |
//! |                    ARCOUNT                    |
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
//! Question: QNAME (labels) QTYPE QCLASS.  Resource record: NAME TYPE CLASS TTL RDLENGTH RDATA.
//! ```
//! Names in responses may be compressed (4.1.4): a pointer is two bytes `11xxxxxx xxxxxxxx`; the decoder
//! follows at most 32 of them per name and never reads past the message.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a name could not be encoded or a response decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("bad query name {0:?}")]
    BadName(String),
    #[error("response truncated at byte {0}")]
    Truncated(usize),
    #[error("bad compression pointer at byte {0}")]
    BadPointer(usize),
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("not a response")]
    NotResponse,
}

/// RCODE values with names (RFC 1035 4.1.1, RFC 6895).
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "RCODE?",
    }
}

/// A query for `name` (dotted, optional final dot) of type `qtype`, class IN, recursion desired.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // AN, NS, AR
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.to_owned()));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_owned()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(out)
}

/// The data of one answer record, decoded for the types a check compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// CNAME, NS, PTR target.
    Name(String),
    Mx(u16, String),
    Txt(Vec<String>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Other(Vec<u8>),
}

impl fmt::Display for RData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RData::A(a) => write!(f, "{a}"),
            RData::Aaaa(a) => write!(f, "{a}"),
            RData::Name(n) => f.write_str(n),
            RData::Mx(p, n) => write!(f, "{p} {n}"),
            RData::Txt(parts) => f.write_str(&parts.concat()),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
            RData::Other(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub data: RData,
}

/// A decoded response: its header fields and answers (authority and additional sections are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub truncated: bool,
    pub rcode: u8,
    pub answers: Vec<Answer>,
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, DnsError> {
    buf.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Truncated(at))
}

/// Reads a possibly compressed name at `at`; returns it (lowercase, no final dot) and the offset after it.
fn read_name(buf: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *buf.get(at).ok_or(DnsError::Truncated(at))?;
        match len & 0xc0 {
            0xc0 => {
                let ptr = usize::from(u16_at(buf, at)? & 0x3fff);
                end.get_or_insert(at + 2);
                jumps += 1;
                if jumps > 32 || ptr >= buf.len() {
                    return Err(DnsError::BadPointer(at));
                }
                at = ptr;
            }
            0x00 => {
                if len == 0 {
                    return Ok((name, end.unwrap_or(at + 1)));
                }
                let label = buf
                    .get(at + 1..at + 1 + usize::from(len))
                    .ok_or(DnsError::Truncated(at))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                if name.len() > 255 {
                    return Err(DnsError::NameTooLong);
                }
                at += 1 + usize::from(len);
            }
            _ => return Err(DnsError::BadPointer(at)),
        }
    }
}

fn rdata(buf: &[u8], rtype: u16, start: usize, len: usize) -> Result<RData, DnsError> {
    let raw = buf
        .get(start..start + len)
        .ok_or(DnsError::Truncated(start))?;
    Ok(match (rtype, len) {
        (1, 4) => RData::A(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        (28, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(raw);
            RData::Aaaa(Ipv6Addr::from(a))
        }
        (2 | 5 | 12, _) => RData::Name(read_name(buf, start)?.0),
        (15, _) => RData::Mx(u16_at(buf, start)?, read_name(buf, start + 2)?.0),
        (16, _) => {
            let mut parts = Vec::new();
            let mut i = 0;
            while i < raw.len() {
                let l = usize::from(raw[i]);
                let s = raw
                    .get(i + 1..i + 1 + l)
                    .ok_or(DnsError::Truncated(start + i))?;
                parts.push(String::from_utf8_lossy(s).into_owned());
                i += 1 + l;
            }
            RData::Txt(parts)
        }
        (33, _) => RData::Srv {
            priority: u16_at(buf, start)?,
            weight: u16_at(buf, start + 2)?,
            port: u16_at(buf, start + 4)?,
            target: read_name(buf, start + 6)?.0,
        },
        _ => RData::Other(raw.to_vec()),
    })
}

/// Decodes a response. Answers whose class is not IN are skipped.
pub fn decode_response(buf: &[u8]) -> Result<Response, DnsError> {
    if buf.len() < 12 {
        return Err(DnsError::Truncated(buf.len()));
    }
    let id = u16_at(buf, 0)?;
    let flags = u16_at(buf, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let qd = u16_at(buf, 4)?;
    let an = u16_at(buf, 6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = read_name(buf, at)?.1 + 4;
    }
    let mut answers = Vec::with_capacity(usize::from(an).min(64));
    for _ in 0..an {
        let (name, after) = read_name(buf, at)?;
        let rtype = u16_at(buf, after)?;
        let class = u16_at(buf, after + 2)?;
        let len = usize::from(u16_at(buf, after + 8)?);
        let start = after + 10;
        if start + len > buf.len() {
            return Err(DnsError::Truncated(start));
        }
        if class == 1 {
            answers.push(Answer {
                name,
                rtype,
                data: rdata(buf, rtype, start, len)?,
            });
        }
        at = start + len;
    }
    Ok(Response {
        id,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000f) as u8,
        answers,
    })
}

/// Whether an answer's data is what the operator expects: an address compared as an address, a name without
/// case or final dot, anything else as its text.
pub fn answer_matches(data: &RData, expect: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
    match data {
        RData::A(a) => expect.parse::<Ipv4Addr>().is_ok_and(|e| e == *a),
        RData::Aaaa(a) => expect.parse::<Ipv6Addr>().is_ok_and(|e| e == *a),
        RData::Name(n) => norm(n) == norm(expect),
        RData::Mx(_, n) => norm(n) == norm(expect) || data.to_string() == expect,
        _ => data.to_string() == expect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig +noedns @server www.example.com A` with id 0x1234: header, QNAME, QTYPE 1, QCLASS 1.
    const QUERY_A: &[u8] = &[
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, b'w', b'w',
        b'w', 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, 0x00,
        0x01, 0x00, 0x01,
    ];

    /// The answer: QR RD RA, NOERROR, one question, a CNAME (compressed to the question's name) to
    /// `web.example.com` (partly compressed) and an A record for it, TTL 300.
    const RESPONSE: &[u8] = &[
        0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, //
        0x03, b'w', b'w', b'w', 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o',
        b'm', 0x00, 0x00, 0x01, 0x00, 0x01, // question, ends at 33
        0xc0, 0x0c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00,
        0x06, // CNAME, rdlen 6
        0x03, b'w', b'e', b'b', 0xc0,
        0x10, // "web" + pointer to "example.com" at 16; starts at 45
        0xc0, 0x2d, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x04, 198, 18, 2, 1,
    ];

    #[test]
    fn query_golden_bytes() {
        assert_eq!(
            encode_query(0x1234, "www.example.com", 1).as_deref(),
            Ok(QUERY_A)
        );
        assert_eq!(
            encode_query(0x1234, "www.example.com.", 1).as_deref(),
            Ok(QUERY_A)
        );
        assert!(encode_query(1, "a..b", 1).is_err());
        assert!(encode_query(1, &"a".repeat(64), 1).is_err());
    }

    #[test]
    fn response_with_compression() {
        let r = decode_response(RESPONSE).expect("decodes");
        assert_eq!((r.id, r.rcode, r.truncated), (0x1234, 0, false));
        assert_eq!(
            r.answers,
            vec![
                Answer {
                    name: "www.example.com".into(),
                    rtype: 5,
                    data: RData::Name("web.example.com".into())
                },
                Answer {
                    name: "web.example.com".into(),
                    rtype: 1,
                    data: RData::A(Ipv4Addr::new(198, 18, 2, 1))
                },
            ]
        );
        assert!(answer_matches(&r.answers[1].data, "198.18.2.1"));
        assert!(!answer_matches(&r.answers[1].data, "198.18.2.2"));
        assert!(answer_matches(&r.answers[0].data, "WEB.example.com."));
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        // Every truncation of a valid response fails cleanly or decodes fewer bytes.
        for n in 0..RESPONSE.len() {
            let _ = decode_response(&RESPONSE[..n]);
        }
        assert_eq!(
            decode_response(&RESPONSE[..40]),
            Err(DnsError::Truncated(43))
        );
        // A pointer loop.
        let mut looped = RESPONSE[..12].to_vec();
        looped[5] = 1;
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(decode_response(&looped), Err(DnsError::BadPointer(12)));
        // A query is not a response.
        assert_eq!(decode_response(QUERY_A), Err(DnsError::NotResponse));
        // NXDOMAIN.
        let mut nx = RESPONSE[..33].to_vec();
        nx[3] = 0x83;
        nx[7] = 0;
        let r = decode_response(&nx).expect("decodes");
        assert_eq!((r.rcode, r.answers.len()), (3, 0));
        assert_eq!(rcode_name(r.rcode), "NXDOMAIN");
    }
}
