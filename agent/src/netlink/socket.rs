//! The thin I/O layer under the netlink codecs: one raw `AF_NETLINK` socket of a given protocol
//! (`NETLINK_GENERIC` for IPVS, `NETLINK_ROUTE` for addresses and links) with sequence checks, ACK/error
//! handling, batched changes and dumps. Blocking, with a receive timeout so a silent kernel can never hang the
//! agent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tracing::trace;

use super::genl;
use super::{decode_messages, Body, DecodeError, NLMSG_ERROR, NLM_F_MULTI};

/// How long one receive may wait for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Changes sent per `send` call; each is acknowledged separately.
const BATCH: usize = 256;
const RECV_BUF: usize = 256 * 1024;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {0} generic netlink family is not registered (is its kernel module loaded?)")]
    NoFamily(&'static str),
    #[error("kernel refused {op}: {} (errno {errno})", io::Error::from_raw_os_error(*.errno))]
    Kernel { op: String, errno: i32 },
    #[error("cannot decode a kernel reply: {0}")]
    Decode(#[from] DecodeError),
    #[error("the kernel sent no reply for {0}")]
    NoReply(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn last_os_error(op: &'static str) -> NetlinkError {
    NetlinkError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// One netlink socket: a protocol, its port id and the sequence counter.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens and binds a socket of `protocol` (`libc::NETLINK_GENERIC`, `libc::NETLINK_ROUTE`).
    pub fn open(protocol: libc::c_int) -> Result<NetlinkSocket, NetlinkError> {
        let fd = open_socket(protocol)?;
        Ok(NetlinkSocket {
            pid: local_port_id(&fd)?,
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Resolves a generic netlink family id by name (`NoFamily` when the kernel has none by that name).
    pub fn resolve_family(&mut self, name: &'static str) -> Result<u16, NetlinkError> {
        let seq = self.next_seq();
        self.send(&genl::get_family_request(name, seq, self.pid))?;
        let mut family = None;
        loop {
            let n = self.recv()?;
            for m in decode_messages(&self.buf[..n])? {
                if m.seq != seq {
                    trace!(seq = m.seq, want = seq, "stale netlink message ignored");
                    continue;
                }
                match m.body {
                    Body::Data(d) => family = Some(genl::parse_family_id(genl::split(d)?.attrs)?),
                    Body::Error { errno } if errno == libc::ENOENT => {
                        return Err(NetlinkError::NoFamily(name))
                    }
                    Body::Error { errno } => {
                        return Err(NetlinkError::Kernel {
                            op: format!("CTRL_CMD_GETFAMILY {name}"),
                            errno,
                        })
                    }
                    Body::Ack | Body::Done => {
                        return family.ok_or(NetlinkError::NoFamily(name));
                    }
                }
            }
        }
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let mut addr = sockaddr_kernel();
        // SAFETY: `bytes` is a live slice for the duration of the call; `addr` is a valid sockaddr_nl and its
        // exact size is passed; the fd is owned by `self`.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                std::ptr::addr_of_mut!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_os_error("send"));
        }
        Ok(())
    }

    /// Receives one datagram into the socket's buffer; returns its length.
    fn recv(&mut self) -> Result<usize, NetlinkError> {
        loop {
            // SAFETY: `self.buf` is a live, writable buffer of the length passed; the fd is owned by `self`.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io {
                    op: "recv",
                    source: err,
                });
            }
            return Ok(rc as usize);
        }
    }

    /// Sends one change (framed by `encode(seq, pid)`) and waits for its ACK.
    pub fn execute(
        &mut self,
        op: &str,
        encode: impl Fn(u32, u32) -> Vec<u8>,
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let msg = encode(seq, self.pid);
        trace!(seq, op, len = msg.len(), "netlink request");
        self.send(&msg)?;
        loop {
            let n = self.recv()?;
            for m in decode_messages(&self.buf[..n])? {
                if m.seq != seq {
                    trace!(seq = m.seq, want = seq, "stale netlink message ignored");
                    continue;
                }
                match m.body {
                    Body::Ack => return Ok(()),
                    Body::Error { errno } => {
                        return Err(NetlinkError::Kernel {
                            op: op.to_owned(),
                            errno,
                        })
                    }
                    _ => continue,
                }
            }
        }
    }

    /// Sends changes in batches (several messages per `send`) and returns one result per request, in order.
    /// `encode(req, seq, pid)` frames one request; `describe` names it in errors. The kernel processes the
    /// messages of a batch one by one, so a refused one does not stop the rest.
    pub fn execute_batch<R>(
        &mut self,
        reqs: &[R],
        encode: impl Fn(&R, u32, u32) -> Vec<u8>,
        describe: impl Fn(&R) -> String,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut results = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut out = Vec::with_capacity(chunk.len() * 128);
            for req in chunk {
                let seq = self.next_seq();
                let msg = encode(req, seq, self.pid);
                trace!(seq, len = msg.len(), "netlink request");
                out.extend_from_slice(&msg);
            }
            let mut chunk_results: Vec<Option<Result<(), NetlinkError>>> =
                chunk.iter().map(|_| None).collect();
            match self.send(&out) {
                Err(e) => {
                    let msg = e.to_string();
                    for (slot, req) in chunk_results.iter_mut().zip(chunk) {
                        *slot = Some(Err(NetlinkError::Io {
                            op: "send",
                            source: io::Error::other(format!("{msg} ({})", describe(req))),
                        }));
                    }
                }
                Ok(()) => self.collect_acks(first, chunk, &describe, &mut chunk_results),
            }
            results.extend(
                chunk_results
                    .into_iter()
                    .zip(chunk)
                    .map(|(r, req)| r.unwrap_or_else(|| Err(NetlinkError::NoReply(describe(req))))),
            );
        }
        results
    }

    fn collect_acks<R>(
        &mut self,
        first: u32,
        chunk: &[R],
        describe: &impl Fn(&R) -> String,
        slots: &mut [Option<Result<(), NetlinkError>>],
    ) {
        let mut pending = chunk.len();
        while pending > 0 {
            let n = match self.recv() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, pending, "netlink: waiting for ACKs failed");
                    return;
                }
            };
            let msgs = match decode_messages(&self.buf[..n]) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "netlink: undecodable reply");
                    return;
                }
            };
            for m in msgs {
                let idx = m.seq.wrapping_sub(first) as usize;
                let (Some(slot), Some(req)) = (slots.get_mut(idx), chunk.get(idx)) else {
                    trace!(seq = m.seq, "stale netlink message ignored");
                    continue;
                };
                let result = match m.body {
                    Body::Ack => Ok(()),
                    Body::Error { errno } => Err(NetlinkError::Kernel {
                        op: describe(req),
                        errno,
                    }),
                    _ => continue,
                };
                trace!(seq = m.seq, ok = result.is_ok(), "netlink ack");
                if slot.is_none() {
                    pending -= 1;
                }
                *slot = Some(result);
            }
        }
    }

    /// Runs a dump request (framed by `encode(seq, pid)`) and returns each reply's payload parsed by `parse`
    /// (`msg_type`, payload after the `nlmsghdr`); `parse` returning `None` skips a message.
    pub fn dump<T>(
        &mut self,
        op: &str,
        encode: impl FnOnce(u32, u32) -> Vec<u8>,
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, NetlinkError> {
        let seq = self.next_seq();
        self.send(&encode(seq, self.pid))?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            let msgs = decode_messages(&self.buf[..n])?;
            for m in msgs {
                if m.seq != seq {
                    trace!(seq = m.seq, want = seq, "stale netlink message ignored");
                    continue;
                }
                match m.body {
                    Body::Done => return Ok(out),
                    Body::Error { errno } => {
                        return Err(NetlinkError::Kernel {
                            op: op.to_owned(),
                            errno,
                        })
                    }
                    // Dumps may be sent with NLM_F_ACK like ipvsadm does; the kernel does not ack a started
                    // dump, but an ack is never the end of one: DONE is.
                    Body::Ack => continue,
                    Body::Data(d) => {
                        if let Some(item) = parse(m.msg_type, d)? {
                            out.push(item);
                        }
                        if m.flags & NLM_F_MULTI == 0 && m.msg_type != NLMSG_ERROR {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

fn sockaddr_kernel() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (family set below, pid 0 = kernel).
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

fn open_socket(protocol: libc::c_int) -> Result<OwnedFd, NetlinkError> {
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    #[allow(unsafe_code)]
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(last_os_error("socket"));
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let addr = sockaddr_kernel();
    // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last_os_error("bind"));
    }
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    // Errors then echo only the header of the refused request, not all of it.
    set_opt(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, &1 as &libc::c_int)?;
    set_opt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        &(1 << 20) as &libc::c_int,
    )?;
    Ok(fd)
}

fn set_opt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> Result<(), NetlinkError> {
    setsockopt(fd, level, name, val).map_err(|source| NetlinkError::Io {
        op: "setsockopt",
        source,
    })
}

/// `setsockopt(2)` with a typed value: the one unsafe call every socket of the agent (netlink, VRRP) uses.
pub(crate) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: `val` points to a live `T` and its exact size is passed; the fd is owned by the caller.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_port_id(fd: &OwnedFd) -> Result<u32, NetlinkError> {
    let mut addr = sockaddr_kernel();
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are live, writable and describe a sockaddr_nl-sized buffer.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            std::ptr::addr_of_mut!(addr).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_os_error("getsockname"));
    }
    Ok(addr.nl_pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any kernel has the generic netlink controller; an unknown family is a typed error, never a hang.
    #[test]
    fn resolves_the_controller_and_refuses_an_unknown_family() {
        let mut s = NetlinkSocket::open(libc::NETLINK_GENERIC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.resolve_family("nlctrl").ok(), Some(genl::GENL_ID_CTRL));
        assert!(matches!(
            s.resolve_family("lbfleet-nofam"),
            Err(NetlinkError::NoFamily(_))
        ));
    }
}
