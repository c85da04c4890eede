//! TFTP wire format (RFC 1350) with option extension (RFC 2347): pure encode/decode over bytes.
//!
//! ```text
//!  RRQ/WRQ   | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
//!  DATA      | 03 | block# (2) | data (0..blksize)
//!  ACK       | 04 | block# (2)
//!  ERROR     | 05 | code (2) | message | 0
//!  OACK      | 06 | opt1 | 0 | value1 | 0 | ...
//! ```

use std::fmt;

/// Longest filename accepted in a request (PXE file names are short; this bounds work on junk).
pub const MAX_FILENAME: usize = 255;
/// Most options accepted in one request (RFC 2347 defines four in common use).
pub const MAX_OPTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ReadRequest {
        filename: String,
        mode: String,
        options: Vec<(String, String)>,
    },
    WriteRequest {
        filename: String,
    },
    Data {
        block: u16,
        data: Vec<u8>,
    },
    Ack {
        block: u16,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    OptionAck {
        options: Vec<(String, String)>,
    },
}

/// RFC 1350 / 2347 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTransferId,
    FileExists,
    NoSuchUser,
    OptionsRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionsRefused => 8,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u16(c: u16) -> Self {
        match c {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionsRefused,
            c => ErrorCode::Other(c),
        }
    }
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("field is not NUL-terminated")]
    Unterminated,
    #[error("field is not valid text")]
    NotText,
    #[error("filename longer than {MAX_FILENAME} bytes")]
    FilenameTooLong,
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
}

/// Splits NUL-terminated strings off the front of `bytes`.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<&'a str>, DecodeError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self
            .rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::Unterminated)?;
        let (field, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        std::str::from_utf8(field)
            .map(Some)
            .map_err(|_| DecodeError::NotText)
    }
}

fn options(fields: &mut Fields<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let mut out = Vec::new();
    while let Some(name) = fields.next()? {
        let value = fields
            .next()?
            .ok_or_else(|| DecodeError::OptionWithoutValue(name.to_owned()))?;
        if out.len() == MAX_OPTIONS {
            return Err(DecodeError::TooManyOptions);
        }
        out.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(out)
}

impl Packet {
    pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        let word = u16::from_be_bytes([body[0], body[1]]);
        match opcode {
            1 | 2 => {
                let mut f = Fields { rest: body };
                let filename = f.next()?.ok_or(DecodeError::Unterminated)?;
                if filename.len() > MAX_FILENAME {
                    return Err(DecodeError::FilenameTooLong);
                }
                let mode = f
                    .next()?
                    .ok_or(DecodeError::Unterminated)?
                    .to_ascii_lowercase();
                if opcode == 2 {
                    return Ok(Packet::WriteRequest {
                        filename: filename.to_owned(),
                    });
                }
                Ok(Packet::ReadRequest {
                    filename: filename.to_owned(),
                    mode,
                    options: options(&mut f)?,
                })
            }
            3 => Ok(Packet::Data {
                block: word,
                data: body[2..].to_vec(),
            }),
            4 => Ok(Packet::Ack { block: word }),
            5 => {
                let mut f = Fields { rest: &body[2..] };
                let message = f.next()?.unwrap_or_default().to_owned();
                Ok(Packet::Error {
                    code: ErrorCode::from_u16(word),
                    message,
                })
            }
            6 => Ok(Packet::OptionAck {
                options: options(&mut Fields { rest: body })?,
            }),
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Encodes into `out` (cleared first), so a transfer can reuse one buffer.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let strings = |out: &mut Vec<u8>, items: &[&str]| {
            for s in items {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
        };
        match self {
            Packet::ReadRequest {
                filename,
                mode,
                options,
            } => {
                out.extend_from_slice(&1u16.to_be_bytes());
                strings(out, &[filename, mode]);
                for (k, v) in options {
                    strings(out, &[k, v]);
                }
            }
            Packet::WriteRequest { filename } => {
                out.extend_from_slice(&2u16.to_be_bytes());
                strings(out, &[filename, "octet"]);
            }
            Packet::Data { block, data } => encode_data(*block, data, out),
            Packet::Ack { block } => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&5u16.to_be_bytes());
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                strings(out, &[message]);
            }
            Packet::OptionAck { options } => {
                out.extend_from_slice(&6u16.to_be_bytes());
                for (k, v) in options {
                    strings(out, &[k, v]);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Writes a DATA packet header and payload into `out` (cleared first) without building a `Packet`.
pub fn encode_data(block: u16, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&3u16.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_request_as_tftp_hpa_sends_it() {
        // RRQ "undionly.kpxe" octet, blksize 1468, tsize 0.
        let bytes = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00";
        let p = Packet::decode(bytes).expect("valid");
        assert_eq!(
            p,
            Packet::ReadRequest {
                filename: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            }
        );
        assert_eq!(p.encode(), bytes.to_vec(), "round trip");
    }

    #[test]
    fn golden_bytes_for_replies() {
        assert_eq!(Packet::Ack { block: 0x0102 }.encode(), vec![0, 4, 1, 2]);
        assert_eq!(
            Packet::Data {
                block: 1,
                data: b"ab".to_vec()
            }
            .encode(),
            vec![0, 3, 0, 1, b'a', b'b']
        );
        assert_eq!(
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "no".into()
            }
            .encode(),
            vec![0, 5, 0, 1, b'n', b'o', 0]
        );
        assert_eq!(
            Packet::OptionAck {
                options: vec![("tsize".into(), "42".into())]
            }
            .encode(),
            b"\x00\x06tsize\x0042\x00".to_vec()
        );
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01abc",
            b"\x00\x01file\x00",
            b"\x00\x01file\x00octet\x00blksize\x00",
            b"\x00\x09\x00\x00",
            b"\x00\x01\xff\xfe\x00octet\x00",
        ] {
            assert!(Packet::decode(bytes).is_err(), "{bytes:?}");
        }
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..1000 {
            many.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert_eq!(Packet::decode(&many), Err(DecodeError::TooManyOptions));
        let long = [
            b"\x00\x01".to_vec(),
            vec![b'a'; 300],
            b"\x00octet\x00".to_vec(),
        ]
        .concat();
        assert_eq!(Packet::decode(&long), Err(DecodeError::FilenameTooLong));
    }
}
