//! The VRRP sockets: [`VrrpSocket`] raw IPv4, protocol 112, bound to the role's interface (`SO_BINDTODEVICE`), joined to
//! 224.0.0.18 there (or, with unicast peers, talking to them only). It sends whole IP packets (`IP_HDRINCL`,
//! built by `packet::encode_ip_packet` with TTL 255, so the source address the v3 checksum covers is exactly the
//! one on the wire) and receives whole IP packets (the raw socket hands over the IP header, whose TTL the
//! decoder checks). [`Vrrp6Socket`] is its IPv6 twin (ff02::12, link-local source). Non-blocking, driven
//! by tokio's `AsyncFd`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
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

/// A raw IPv6 VRRP socket on one interface (RFC 5798 section 5.1.2): next header 112, hop limit 255 on every
/// advert, joined to ff02::12 there (unless unicast peers are configured). The kernel builds the IPv6 header
/// (an IPv6 raw socket never sees it); each advert names its source (the interface's link-local address)
/// with `IPV6_PKTINFO`, so the source the checksum covers is the one on the wire, and each received advert
/// comes with its destination (`IPV6_RECVPKTINFO`) and hop limit (`IPV6_RECVHOPLIMIT`) for the decoder.
#[derive(Debug)]
pub struct Vrrp6Socket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

/// One advert as the IPv6 socket received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received6 {
    pub len: usize,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
}

fn sockaddr_in6(a: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: a.octets(),
        },
        // Link-scoped destinations (ff02::12, a link-local peer) need the interface.
        sin6_scope_id: if is_link_scoped(a) { scope } else { 0 },
    }
}

fn is_link_scoped(a: Ipv6Addr) -> bool {
    let s = a.segments()[0];
    s & 0xffc0 == 0xfe80 || s & 0xff0f == 0xff02
}

/// Room for one IPV6_PKTINFO and one IPV6_HOPLIMIT control message, 8-byte aligned.
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

impl Vrrp6Socket {
    /// Opens the socket on `interface` (index `ifindex`); with `multicast`, joins ff02::12 there.
    /// Must be called inside a tokio runtime.
    pub fn open(interface: &str, ifindex: u32, multicast: bool) -> io::Result<Vrrp6Socket> {
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_INET6,
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
        let hops: libc::c_int = super::packet::VRRP_TTL.into();
        set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
        set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
        set_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_LOOP,
            &(0 as libc::c_int),
        )?;
        set_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            &(ifindex as libc::c_int),
        )?;
        // Traffic class "internetwork control", as keepalived sends (and as the IPv4 adverts' TOS).
        set_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            &libc::c_int::from(super::packet::TOS_INTERNETWORK_CONTROL),
        )?;
        set_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            &(1 as libc::c_int),
        )?;
        set_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVHOPLIMIT,
            &(1 as libc::c_int),
        )?;
        if multicast {
            let mreq = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: super::packet::VRRP_MULTICAST_V6.octets(),
                },
                ipv6mr_interface: ifindex,
            };
            set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
        }
        // SAFETY: as in `VrrpSocket::open`: the OwnedFd moves into the AsyncFd, which alone owns it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Vrrp6Socket { fd, ifindex })
    }

    /// Sends one VRRP message from `src` (which the message's checksum covers) to `dst`.
    pub async fn send(&self, message: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> io::Result<()> {
        let mut addr = sockaddr_in6(dst, self.ifindex);
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: src.octets(),
            },
            ipi6_ifindex: self.ifindex,
        };
        let mut control = ControlBuf([0; 128]);
        let info_len = std::mem::size_of::<libc::in6_pktinfo>() as libc::c_uint;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on the length.
        #[allow(unsafe_code)]
        let (space, cmsg_len) = unsafe { (libc::CMSG_SPACE(info_len), libc::CMSG_LEN(info_len)) };
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                let mut iov = libc::iovec {
                    iov_base: message.as_ptr() as *mut libc::c_void,
                    iov_len: message.len(),
                };
                // SAFETY: msghdr is plain old data; all-zero is valid before the fields are set.
                #[allow(unsafe_code)]
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_name = std::ptr::addr_of_mut!(addr).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.0.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                // SAFETY: `msg` points at `control` (128 aligned bytes, more than CMSG_SPACE of an
                // in6_pktinfo), so the first header and its data lie inside it; `iov`, `addr` and `message`
                // are live for the call, which only reads them.
                #[allow(unsafe_code)]
                let rc = unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    (*cmsg).cmsg_len = cmsg_len as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                    libc::sendmsg(fd.as_raw_fd(), &msg, 0)
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

    /// Receives one VRRP message into `buf`, with its source, destination and hop limit (a message
    /// without the two control messages reports the unspecified destination and hop limit 0, which the
    /// decoder rejects).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received6> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
                #[allow(unsafe_code)]
                let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                let mut control = ControlBuf([0; 128]);
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: msghdr is plain old data; all-zero is valid before the fields are set.
                #[allow(unsafe_code)]
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_name = std::ptr::addr_of_mut!(from).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.0.as_mut_ptr().cast();
                msg.msg_controllen = control.0.len() as _;
                // SAFETY: every pointer in `msg` refers to a live, writable buffer of the length given.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut got = Received6 {
                    len: rc as usize,
                    src: Ipv6Addr::from(from.sin6_addr.s6_addr),
                    dst: Ipv6Addr::UNSPECIFIED,
                    hop_limit: 0,
                };
                // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR stay inside
                // it and each header's data is read unaligned within its cmsg_len.
                #[allow(unsafe_code)]
                unsafe {
                    let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                    while !cmsg.is_null() {
                        let c = &*cmsg;
                        if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                            let info: libc::in6_pktinfo =
                                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                            got.dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                        } else if c.cmsg_level == libc::IPPROTO_IPV6
                            && c.cmsg_type == libc::IPV6_HOPLIMIT
                        {
                            let h: libc::c_int =
                                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                            got.hop_limit = u8::try_from(h).unwrap_or(0);
                        }
                        cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                    }
                }
                Ok(got)
            });
            match r {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}
