//! Link events: a route netlink socket subscribed to `RTMGRP_LINK`, so the VRRP task hears at once when its
//! interface loses its carrier, goes down, comes back or disappears. The events only wake the task; the state
//! it acts on comes from a fresh link dump (`RouteSocket::links`), so a lost event (the socket's buffer
//! overran: `ENOBUFS`) costs nothing but a dump. Non-blocking, driven by tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tracing::trace;

/// `RTMGRP_LINK` (linux/rtnetlink.h): link changes.
const RTMGRP_LINK: u32 = 1;
const RECV_BUF: usize = 64 * 1024;

/// A socket that wakes on every link change of the network namespace.
#[derive(Debug)]
pub struct LinkWatch {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl LinkWatch {
    /// Opens and subscribes the socket. Must be called inside a tokio runtime.
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (family and groups set below).
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed; the fd is owned above.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` that moves into the `AsyncFd`; nothing
        // else can close or replace it while the `AsyncFd` lives.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(LinkWatch {
            fd,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Completes when a link changed (or events were lost), having drained what is queued: the caller then
    /// reads the links' state afresh.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            let r = guard.try_io(|fd| {
                let mut messages = 0usize;
                loop {
                    // SAFETY: `buf` is a live, writable buffer of the length passed; the fd is owned by `self`.
                    #[allow(unsafe_code)]
                    let rc = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if rc >= 0 {
                        messages += 1;
                        continue;
                    }
                    let err = io::Error::last_os_error();
                    match err.kind() {
                        io::ErrorKind::Interrupted => continue,
                        // Drained: report what was read (nothing read yet: wait again).
                        io::ErrorKind::WouldBlock if messages > 0 => return Ok(messages),
                        io::ErrorKind::WouldBlock => return Err(err),
                        // ENOBUFS: events were dropped; the caller re-reads the links all the same.
                        _ if err.raw_os_error() == Some(libc::ENOBUFS) => return Ok(messages + 1),
                        _ => return Err(err),
                    }
                }
            });
            match r {
                Ok(Ok(n)) => {
                    trace!(datagrams = n, "link change");
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
