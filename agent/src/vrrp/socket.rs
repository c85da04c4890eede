//! The VRRP socket: raw IPv4, protocol 112, bound to the role's interface (`SO_BINDTODEVICE`), joined to
//! 224.0.0.18 there (or, with unicast peers, talking to them only). It sends whole IP packets (`IP_HDRINCL`,
//! built by `packet::encode_ip_packet` with TTL 255, so the source address the v3 checksum covers is exactly the
//! one on the wire) and receives whole IP packets (the raw socket hands over the IP header, whose TTL the
//! decoder checks). Non-blocking, driven by tokio's `AsyncFd`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// IP protocol number of VRRP.
const IPPROTO_VRRP: libc::c_int = 112;

/// A raw VRRP socket on one interface.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_opt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    crate::netlink::socket::setsockopt(fd, level, name, val)
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    }
}

impl VrrpSocket {
    /// Opens the socket on `interface` (index `ifindex`); with `multicast`, joins 224.0.0.18 there.
    /// Must be called inside a tokio runtime.
    pub fn open(interface: &str, ifindex: u32, multicast: bool) -> io::Result<VrrpSocket> {
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                IPPROTO_VRRP,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = interface.as_bytes();
        // SAFETY: `name` is a live byte slice of the length passed; the fd is owned above.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        check(rc)?;
        set_opt(&fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &(1 as libc::c_int))?;
        // Our own multicast adverts must not come back to us.
        set_opt(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &(0 as libc::c_int),
        )?;
        let mreq = libc::ip_mreqn {
            imr_multiaddr: in_addr(super::packet::VRRP_MULTICAST_V4),
            imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
            imr_ifindex: ifindex as libc::c_int,
        };
        set_opt(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)?;
        if multicast {
            set_opt(&fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)?;
        }
        // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` that moves into the `AsyncFd`; nothing
        // else can close or replace it while the `AsyncFd` lives, and `as_raw_fd` always returns it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(VrrpSocket { fd })
    }

    /// Sends one whole IP packet to `dst`.
    pub async fn send(&self, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: in_addr(dst),
            sin_zero: [0; 8],
        };
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `packet` and `addr` are live for the call and their exact sizes are passed.
                #[allow(unsafe_code)]
                let rc = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one IP packet into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is a live, writable buffer of the length passed.
                #[allow(unsafe_code)]
                let rc =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(rc as usize)
                }
            });
            match r {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}
