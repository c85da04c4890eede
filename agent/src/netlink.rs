//! The thin I/O layer under the IPVS codec: one raw `AF_NETLINK`/`NETLINK_GENERIC` socket, bound to the IPVS
//! family, with sequence checks, ACK/error handling, batched changes and dumps. Blocking, with a receive
//! timeout so a silent kernel can never hang the agent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tracing::trace;

use crate::ipvs::codec::{self, Body, DecodeError, IpvsRequest, NLMSG_ERROR, NLM_F_MULTI};
use crate::ipvs::{DestEntry, IpvsTable, ServiceEntry, ServiceKey};

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
    #[error("the IPVS generic netlink family is not registered (is the ip_vs module loaded?)")]
    NoIpvs,
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

/// A generic netlink socket talking to the kernel's IPVS family.
#[derive(Debug)]
pub struct IpvsSocket {
    fd: OwnedFd,
    pid: u32,
    seq: u32,
    family: u16,
    buf: Vec<u8>,
}

impl IpvsSocket {
    /// Opens the socket and resolves the `IPVS` family id.
    pub fn open() -> Result<IpvsSocket, NetlinkError> {
        let fd = open_socket()?;
        let mut sock = IpvsSocket {
            pid: local_port_id(&fd)?,
            fd,
            seq: 0,
            family: 0,
            buf: vec![0; RECV_BUF],
        };
        sock.family = sock.resolve_family()?;
        trace!(
            family = sock.family,
            pid = sock.pid,
            "IPVS netlink socket open"
        );
        Ok(sock)
    }

    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn resolve_family(&mut self) -> Result<u16, NetlinkError> {
        let seq = self.next_seq();
        self.send(&codec::get_family_request(seq, self.pid))?;
        let mut family = None;
        loop {
            let n = self.recv()?;
            for m in codec::decode_messages(&self.buf[..n])? {
                if m.seq != seq {
                    trace!(seq = m.seq, want = seq, "stale netlink message ignored");
                    continue;
                }
                match m.body {
                    Body::Genl { attrs, .. } => family = Some(codec::parse_family_id(attrs)?),
                    Body::Error { errno } if errno == libc::ENOENT => {
                        return Err(NetlinkError::NoIpvs)
                    }
                    Body::Error { errno } => {
                        return Err(NetlinkError::Kernel {
                            op: "CTRL_CMD_GETFAMILY".into(),
                            errno,
                        })
                    }
                    Body::Ack | Body::Done => {
                        return family.ok_or(NetlinkError::NoIpvs);
                    }
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
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

    /// Receives one datagram into `self.buf`; returns its length.
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

    /// Sends one change and waits for its ACK.
    pub fn execute(&mut self, req: &IpvsRequest) -> Result<(), NetlinkError> {
        self.execute_batch(std::slice::from_ref(req))
            .pop()
            .unwrap_or_else(|| Err(NetlinkError::NoReply(describe(req))))
    }

    /// Sends changes in batches (several messages per `send`) and returns one result per request, in order.
    /// The kernel processes the messages of a batch one by one, so a refused one does not stop the rest.
    pub fn execute_batch(&mut self, reqs: &[IpvsRequest]) -> Vec<Result<(), NetlinkError>> {
        let mut results = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut out = Vec::with_capacity(chunk.len() * 128);
            for req in chunk {
                let seq = self.next_seq();
                let msg = req.encode(self.family, seq, self.pid);
                trace!(seq, cmd = req.cmd(), len = msg.len(), "netlink request");
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
                Ok(()) => self.collect_acks(first, chunk, &mut chunk_results),
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

    fn collect_acks(
        &mut self,
        first: u32,
        chunk: &[IpvsRequest],
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
            let msgs = match codec::decode_messages(&self.buf[..n]) {
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

    /// Runs a dump request and returns each reply's attribute block, parsed by `parse`.
    fn dump<T>(
        &mut self,
        req: &IpvsRequest,
        mut parse: impl FnMut(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, NetlinkError> {
        let seq = self.next_seq();
        self.send(&req.encode(self.family, seq, self.pid))?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            let msgs = codec::decode_messages(&self.buf[..n])?;
            for m in msgs {
                if m.seq != seq {
                    trace!(seq = m.seq, want = seq, "stale netlink message ignored");
                    continue;
                }
                match m.body {
                    Body::Done => return Ok(out),
                    Body::Error { errno } => {
                        return Err(NetlinkError::Kernel {
                            op: describe(req),
                            errno,
                        })
                    }
                    // Dumps are sent with NLM_F_ACK like ipvsadm does; the kernel does not ack a started
                    // dump, but an ack is never the end of one: DONE is.
                    Body::Ack => continue,
                    Body::Genl { attrs, .. } => {
                        out.push(parse(attrs)?);
                        if m.flags & NLM_F_MULTI == 0 && m.msg_type != NLMSG_ERROR {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    pub fn services(&mut self) -> Result<Vec<ServiceEntry>, NetlinkError> {
        self.dump(&IpvsRequest::DumpServices, codec::parse_service)
    }

    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<DestEntry>, NetlinkError> {
        let family = key.family();
        self.dump(&IpvsRequest::DumpDests(*key), |a| {
            codec::parse_dest(a, family)
        })
    }

    /// The kernel's whole IPVS table, services and destinations sorted.
    pub fn table(&mut self) -> Result<IpvsTable, NetlinkError> {
        let mut services = self.services()?;
        services.sort_by_key(|s| s.service.key);
        let mut table = IpvsTable::default();
        for s in services {
            let mut dests = self.dests(&s.service.key)?;
            dests.sort_by_key(|d| d.dest.key);
            table.services.push((s, dests));
        }
        Ok(table)
    }
}

/// A short name for a request in errors and logs.
pub fn describe(req: &IpvsRequest) -> String {
    match req {
        IpvsRequest::NewService(s) => format!("add service {}", s.key),
        IpvsRequest::SetService(s) => format!("edit service {}", s.key),
        IpvsRequest::DelService(k) => format!("delete service {k}"),
        IpvsRequest::DumpServices => "dump services".into(),
        IpvsRequest::NewDest(k, d) => format!("add destination {} to {k}", d.key),
        IpvsRequest::SetDest(k, d) => format!("edit destination {} of {k}", d.key),
        IpvsRequest::DelDest(k, d) => format!("delete destination {d} of {k}"),
        IpvsRequest::DumpDests(k) => format!("dump destinations of {k}"),
    }
}

fn sockaddr_kernel() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (family set below, pid 0 = kernel).
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

fn open_socket() -> Result<OwnedFd, NetlinkError> {
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    #[allow(unsafe_code)]
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_GENERIC,
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
    // SAFETY: `val` points to a live `T` and its exact size is passed.
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
        return Err(last_os_error("setsockopt"));
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

    /// The host kernel has no IPVS (it runs in the guest tests), so opening must fail with a typed error,
    /// never hang or panic. With ip_vs loaded, it must succeed.
    #[test]
    fn open_resolves_the_family_or_reports_no_ipvs() {
        match IpvsSocket::open() {
            Ok(mut s) => {
                assert_ne!(s.family(), 0);
                assert!(s.table().is_ok());
            }
            Err(e) => assert!(
                matches!(e, NetlinkError::NoIpvs | NetlinkError::Io { .. }),
                "{e}"
            ),
        }
    }
}
