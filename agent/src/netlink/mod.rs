//! Netlink, the protocol-independent part: message framing (`nlmsghdr`), attributes (`nlattr`, nests),
//! ACK/error/DONE decoding (this file, sans-IO), the generic netlink header and family lookup (`genl`), and one
//! blocking socket with sequence checks, batched ACKs and dumps (`socket`). The IPVS (`crate::ipvs`) and route
//! (`crate::rtnl`) codecs build on these.
//!
//! ```text
//!  nlmsghdr (16 bytes, native-endian)                   payload (family-specific), padded to 4
//! +-----------+-----------+-----------+--------+--------+----------------------------------------------+
//! | len u32   | type u16  | flags u16 | seq u32| pid u32| genlmsghdr + nlattrs | ifaddrmsg + nlattrs | ...  |
//! +-----------+-----------+-----------+--------+--------+----------------------------------------------+
//!  nlattr: len u16 | type u16 | data, padded to 4 (a nest's data is more nlattrs)
//! ```

pub mod genl;
pub mod socket;

pub use socket::{NetlinkError, NetlinkSocket};

// --- netlink (linux/netlink.h) ---
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x0001;
pub const NLM_F_MULTI: u16 = 0x0002;
pub const NLM_F_ACK: u16 = 0x0004;
pub const NLM_F_DUMP: u16 = 0x0300;
/// With `RTM_NEW*`: fail with EEXIST instead of replacing.
pub const NLM_F_EXCL: u16 = 0x0200;
/// With `RTM_NEW*`: create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x0400;
pub const NLA_HDRLEN: usize = 4;
/// Marks an attribute as a nest; libnl (and so ipvsadm) sets it, the kernel accepts it either way.
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Why bytes from the kernel could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} has length {len}, expected {expected}")]
    BadLength {
        what: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("missing attribute {0}")]
    Missing(&'static str),
    #[error("bad value for {what}: {value}")]
    BadValue { what: &'static str, value: u64 },
    #[error("{0} is not valid UTF-8")]
    BadString(&'static str),
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink attributes to a buffer; nests are opened and closed explicitly.
#[derive(Debug, Default)]
pub struct AttrWriter {
    buf: Vec<u8>,
}

impl AttrWriter {
    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        // Attribute payloads here are at most a few dozen bytes, far below u16::MAX.
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }
    pub fn u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn be16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_be_bytes());
    }
    pub fn u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn bytes(&mut self, ty: u16, v: &[u8]) {
        self.put(ty, v);
    }
    /// A NUL-terminated string (`NLA_STRING` as libnl's `NLA_PUT_STRING` sends it).
    pub fn string(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }
    /// Opens a nested attribute; returns its offset for `end_nest`.
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Frames one netlink message: `nlmsghdr` + `payload` (already padded by its builder).
pub fn message(msg_type: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&pid.to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// One netlink message from a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub body: Body<'a>,
}

impl<'a> Message<'a> {
    /// Command and attribute block of a generic netlink message; `None` for ACK/error/DONE or a payload too
    /// short for a `genlmsghdr`.
    pub fn genl(&self) -> Option<(u8, &'a [u8])> {
        match self.body {
            Body::Data(d) => genl::split(d).ok().map(|g| (g.cmd, g.attrs)),
            _ => None,
        }
    }
}

/// What a netlink message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// End of a dump.
    Done,
    /// `NLMSG_ERROR` with error 0: the request was applied.
    Ack,
    /// `NLMSG_ERROR` with a negative errno (stored positive here).
    Error { errno: i32 },
    /// Any other message: its payload after the `nlmsghdr`, read by the family's codec.
    Data(&'a [u8]),
}

pub fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
pub fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits a receive buffer into netlink messages.
pub fn decode_messages(mut buf: &[u8]) -> Result<Vec<Message<'_>>, DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(DecodeError::Truncated {
                what: "nlmsghdr",
                need: NLMSG_HDRLEN,
                have: buf.len(),
            });
        }
        let len = ne_u32(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(DecodeError::BadLength {
                what: "netlink message",
                len,
                expected: "between 16 and the bytes received",
            });
        }
        let msg_type = ne_u16(buf, 4);
        let flags = ne_u16(buf, 6);
        let seq = ne_u32(buf, 8);
        let pid = ne_u32(buf, 12);
        let payload = &buf[NLMSG_HDRLEN..len];
        let body = match msg_type {
            NLMSG_DONE => Body::Done,
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DecodeError::Truncated {
                        what: "nlmsgerr",
                        need: 4,
                        have: payload.len(),
                    });
                }
                let code = ne_u32(payload, 0) as i32;
                if code == 0 {
                    Body::Ack
                } else {
                    Body::Error {
                        errno: code.saturating_neg(),
                    }
                }
            }
            _ => Body::Data(payload),
        };
        out.push(Message {
            msg_type,
            flags,
            seq,
            pid,
            body,
        });
        let next = align4(len).min(buf.len());
        buf = &buf[next..];
    }
    Ok(out)
}

/// Attributes of one level, by type (the last occurrence wins, like `nla_parse`).
#[derive(Debug, Default)]
pub struct Attrs<'a> {
    slots: Vec<Option<&'a [u8]>>,
}

impl<'a> Attrs<'a> {
    pub fn parse(mut buf: &'a [u8]) -> Result<Attrs<'a>, DecodeError> {
        let mut slots: Vec<Option<&'a [u8]>> = Vec::new();
        while buf.len() >= NLA_HDRLEN {
            let len = ne_u16(buf, 0) as usize;
            let ty = ne_u16(buf, 2) & NLA_TYPE_MASK;
            if len < NLA_HDRLEN || len > buf.len() {
                return Err(DecodeError::BadLength {
                    what: "attribute",
                    len,
                    expected: "between 4 and the bytes left",
                });
            }
            let idx = usize::from(ty);
            if slots.len() <= idx {
                slots.resize(idx + 1, None);
            }
            slots[idx] = Some(&buf[NLA_HDRLEN..len]);
            buf = &buf[align4(len).min(buf.len())..];
        }
        Ok(Attrs { slots })
    }

    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.slots.get(usize::from(ty)).copied().flatten()
    }

    pub fn req(&self, ty: u16, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.get(ty).ok_or(DecodeError::Missing(what))
    }

    pub fn fixed<const N: usize>(
        &self,
        ty: u16,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let b = self.req(ty, what)?;
        b.get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(DecodeError::Truncated {
                what,
                need: N,
                have: b.len(),
            })
    }

    pub fn u8(&self, ty: u16, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.fixed::<1>(ty, what)?[0])
    }
    pub fn u16(&self, ty: u16, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_ne_bytes(self.fixed(ty, what)?))
    }
    pub fn be16(&self, ty: u16, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.fixed(ty, what)?))
    }
    pub fn u32(&self, ty: u16, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_ne_bytes(self.fixed(ty, what)?))
    }
    pub fn u64(&self, ty: u16, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_ne_bytes(self.fixed(ty, what)?))
    }
    /// A NUL-terminated (or unterminated) string.
    pub fn string(&self, ty: u16, what: &'static str) -> Result<String, DecodeError> {
        let b = self.req(ty, what)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end])
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadString(what))
    }
    /// Optional u32/u64 counter, whichever width the kernel used.
    pub fn counter(&self, ty: u16) -> u64 {
        match self.get(ty) {
            Some(b) if b.len() >= 8 => self.u64(ty, "counter").unwrap_or(0),
            Some(b) if b.len() >= 4 => u64::from(self.u32(ty, "counter").unwrap_or(0)),
            _ => 0,
        }
    }
}
