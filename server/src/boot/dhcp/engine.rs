//! The lease decision: a pure function of (request, time, lease table, config, reservations) that returns
//! what to send where and which lease rows to persist first. RFC 2131 sections 4.1 and 4.3.
//!
//! The engine updates the in-memory table itself. If persisting a change fails the caller simply does not
//! send the reply: the client retries, the engine sees its own (unpersisted) binding and ACKs it again with
//! the same change, and after a restart the table is rebuilt from the store, which never saw it.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use thiserror::Error;

use super::codec::{self, DecodeError, EncodeError};
use super::config::DhcpConfig;
use super::lease::{Lease, LeaseChange, LeaseState, LeaseTable, MacAddr, Reservations, UnixMillis};
use super::pxe::{boot_answer, BootClient};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// Where a reply goes, by RFC 2131 4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Through the relay agent that forwarded the request: `giaddr`, server port 67.
    Relay(SocketAddrV4),
    /// The client already has a working address (`ciaddr`): ordinary unicast to port 68.
    Unicast(SocketAddrV4),
    /// 255.255.255.255:68 on the receiving interface.
    Broadcast,
    /// To `address`:68 at link-layer destination `mac`: the client has no address yet and did not ask for
    /// broadcast, so it cannot answer ARP. The socket loop needs a static ARP entry or a raw socket; where it
    /// has neither, broadcasting works with every client we boot.
    LinkUnicast { address: Ipv4Addr, mac: MacAddr },
}

/// A message to send, and the lease rows that must be durable before it leaves.
#[derive(Debug, Clone)]
pub struct Reply {
    pub message: Message,
    pub destination: Destination,
    pub lease_changes: Vec<LeaseChange>,
    option_order: Vec<OptionCode>,
    max_len: usize,
}

impl Reply {
    pub fn message_type(&self) -> Option<MessageType> {
        self.message.opts().msg_type()
    }

    /// The datagram payload: options in the client's requested order, within its maximum message size.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(&self.message, &self.option_order, self.max_len)
    }
}

/// The outcome of one request.
#[derive(Debug)]
pub enum Decision {
    Reply(Reply),
    /// Nothing to send, but the table changed and the store must follow (RELEASE, DECLINE).
    Record {
        lease_changes: Vec<LeaseChange>,
    },
    /// Nothing to send, nothing to store; the reason is for the log.
    Drop {
        reason: DropReason,
    },
}

impl Decision {
    pub fn lease_changes(&self) -> &[LeaseChange] {
        match self {
            Decision::Reply(r) => &r.lease_changes,
            Decision::Record { lease_changes } => lease_changes,
            Decision::Drop { .. } => &[],
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Error)]
pub enum DropReason {
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    #[error("not a BOOTREQUEST on Ethernet")]
    NotEthernetRequest,
    #[error("client hardware address is not a unicast MAC")]
    InvalidClientMac,
    #[error("no message type")]
    NoMessageType,
    #[error("message type {0:?} is not for a server")]
    UnsupportedMessageType(MessageType),
    #[error("relay {0} is not on a subnet we serve")]
    RelayOutsideSubnet(Ipv4Addr),
    #[error("relayed request (giaddr {0}) refused: boot.accept_relayed is off")]
    RelayRefused(Ipv4Addr),
    #[error("client addressed server {0}, not us")]
    ForOtherServer(Ipv4Addr),
    #[error("no free address in the pool")]
    PoolExhausted,
    #[error("{cap} unknown clients already hold discovery leases")]
    DiscoveryCapReached { cap: usize },
    #[error("reserved address {0} cannot be leased (outside the subnet, excluded or quarantined)")]
    ReservedAddressUnusable(Ipv4Addr),
    #[error("request carries no address to act on")]
    MissingAddress,
    #[error("no lease of this client at {0}")]
    NoLease(Ipv4Addr),
    #[error("INIT-REBOOT from a client we have no record of (RFC 2131 4.3.2: stay silent)")]
    NoRecord,
    #[error("INFORM from {0}, outside the subnet")]
    InformOutsideSubnet(Ipv4Addr),
}

/// Decodes a datagram and decides on it; undecodable input becomes `Decision::Drop`.
pub fn handle_datagram(
    bytes: &[u8],
    now: UnixMillis,
    table: &mut LeaseTable,
    cfg: &DhcpConfig,
    reservations: &impl Reservations,
) -> Decision {
    match codec::decode(bytes) {
        Ok(request) => handle(&request, now, table, cfg, reservations),
        Err(e) => Decision::Drop { reason: e.into() },
    }
}

/// Decides on one client request.
pub fn handle(
    request: &Message,
    now: UnixMillis,
    table: &mut LeaseTable,
    cfg: &DhcpConfig,
    reservations: &impl Reservations,
) -> Decision {
    let ctx = match Ctx::new(request, now, cfg, reservations) {
        Ok(ctx) => ctx,
        Err(reason) => return Decision::Drop { reason },
    };
    let result = match codec::message_type(request) {
        Some(MessageType::Discover) => ctx.discover(table),
        Some(MessageType::Request) => ctx.request(table),
        Some(MessageType::Decline) => ctx.decline(table),
        Some(MessageType::Release) => ctx.release(table),
        Some(MessageType::Inform) => ctx.inform(),
        Some(other) => Err(DropReason::UnsupportedMessageType(other)),
        None => Err(DropReason::NoMessageType),
    };
    result.unwrap_or_else(|reason| Decision::Drop { reason })
}

/// Why a REQUEST is refused: NAK it, or say nothing (RFC 2131 asks for silence in some cases).
enum Refusal {
    Nak(&'static str),
    Silent(DropReason),
}

/// One request under consideration.
struct Ctx<'a, R> {
    req: &'a Message,
    now: UnixMillis,
    cfg: &'a DhcpConfig,
    reservations: &'a R,
    mac: MacAddr,
}

impl<'a, R: Reservations> Ctx<'a, R> {
    fn new(
        req: &'a Message,
        now: UnixMillis,
        cfg: &'a DhcpConfig,
        reservations: &'a R,
    ) -> Result<Self, DropReason> {
        if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth {
            return Err(DropReason::NotEthernetRequest);
        }
        let mac = MacAddr::from_chaddr(req.chaddr()).ok_or(DropReason::InvalidClientMac)?;
        let giaddr = req.giaddr();
        // One subnet today; a relay from elsewhere would get addresses that do not route on its link.
        if !giaddr.is_unspecified() && !cfg.accept_relayed {
            return Err(DropReason::RelayRefused(giaddr));
        }
        if !giaddr.is_unspecified() && !cfg.subnet.contains(giaddr) {
            return Err(DropReason::RelayOutsideSubnet(giaddr));
        }
        Ok(Self {
            req,
            now,
            cfg,
            reservations,
            mac,
        })
    }

    fn server_id(&self) -> Option<Ipv4Addr> {
        match self.req.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
            _ => None,
        }
    }

    fn requested_address(&self) -> Option<Ipv4Addr> {
        match self.req.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        }
    }

    /// RELEASE and DECLINE name the server they mean; another server's lease is none of our business.
    fn check_server_id(&self) -> Result<(), DropReason> {
        match self.server_id() {
            Some(id) if id != self.cfg.server_address => Err(DropReason::ForOtherServer(id)),
            _ => Ok(()),
        }
    }

    fn after(&self, d: std::time::Duration) -> UnixMillis {
        self.now
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    // ---- address policy ----

    /// May `mac` have `addr` from the pool? (Reservations are checked separately.)
    fn pool_allows(&self, table: &LeaseTable, addr: Ipv4Addr) -> bool {
        self.cfg.in_pool(addr)
            && !self.cfg.is_excluded(addr)
            && self
                .reservations
                .holder_of(addr)
                .is_none_or(|m| m == self.mac)
            && match table.get(addr) {
                None => true,
                Some(l) if !l.is_active(self.now) => true,
                Some(l) => l.mac == self.mac && l.state != LeaseState::Declined,
            }
    }

    /// Enforces the discovery cap for an unknown MAC about to take a new address. Registered nodes have their
    /// own budget (the rest of the pool) and neither count nor are held back.
    fn check_discovery_cap(&self, table: &LeaseTable) -> Result<(), DropReason> {
        if self.reservations.is_registered(self.mac) {
            return Ok(());
        }
        // Fast path: fewer leases in total than the cap cannot be over it, and the count below is O(leases).
        if table.len() < self.cfg.discovery_cap
            || table
                .lease_of(self.mac)
                .is_some_and(|l| l.is_held(self.now))
        {
            return Ok(());
        }
        let holders = table
            .iter()
            .filter(|l| {
                l.is_held(self.now) && l.mac != self.mac && !self.reservations.is_registered(l.mac)
            })
            .count();
        if holders >= self.cfg.discovery_cap {
            return Err(DropReason::DiscoveryCapReached {
                cap: self.cfg.discovery_cap,
            });
        }
        Ok(())
    }

    /// The address to offer: the reservation, else the client's previous address, else the one it asks for,
    /// else the lowest never-used pool address, else the one that expired longest ago.
    fn choose_address(&self, table: &LeaseTable) -> Result<Ipv4Addr, DropReason> {
        if let Some(r) = self.reservations.by_mac(self.mac) {
            let quarantined = table
                .get(r.address)
                .is_some_and(|l| l.state == LeaseState::Declined && l.is_active(self.now));
            if self.cfg.is_excluded(r.address) || quarantined {
                return Err(DropReason::ReservedAddressUnusable(r.address));
            }
            return Ok(r.address);
        }
        if let Some(l) = table.lease_of(self.mac) {
            if self.pool_allows(table, l.address) {
                return Ok(l.address);
            }
        }
        self.check_discovery_cap(table)?;
        if let Some(addr) = self.requested_address() {
            if self.pool_allows(table, addr) {
                return Ok(addr);
            }
        }
        let candidates = || {
            self.cfg
                .pools
                .iter()
                .flat_map(|p| p.addresses())
                .filter(|a| self.pool_allows(table, *a))
        };
        // Never-used addresses first, resuming where the last search stopped (see `LeaseTable::fresh_hint`).
        let hint = table.fresh_hint();
        let fresh = self
            .cfg
            .pools
            .iter()
            .flat_map(|p| (u32::from(p.start).max(hint)..=u32::from(p.end)).map(Ipv4Addr::from))
            .find(|a| table.get(*a).is_none() && self.pool_allows(table, *a));
        if let Some(fresh) = fresh {
            table.set_fresh_hint(u32::from(fresh));
            return Ok(fresh);
        }
        candidates()
            .min_by_key(|a| table.get(*a).map_or(0, |l| l.expires_at))
            .ok_or(DropReason::PoolExhausted)
    }

    /// Whether `mac` may be bound to `addr` (RFC 2131 4.3.2 "check the validity").
    fn check_request(&self, table: &LeaseTable, addr: Ipv4Addr) -> Result<(), Refusal> {
        if !self.cfg.subnet.contains(addr) {
            return Err(Refusal::Nak("requested address is not on this network"));
        }
        let quarantined = table
            .get(addr)
            .is_some_and(|l| l.state == LeaseState::Declined && l.is_active(self.now));
        if let Some(r) = self.reservations.by_mac(self.mac) {
            return if r.address != addr {
                Err(Refusal::Nak("client has a different reserved address"))
            } else if quarantined || self.cfg.is_excluded(addr) {
                Err(Refusal::Nak("reserved address is unusable"))
            } else {
                Ok(())
            };
        }
        if self.reservations.holder_of(addr).is_some() {
            return Err(Refusal::Nak("address is reserved for another client"));
        }
        if self.cfg.is_excluded(addr) || !self.cfg.in_pool(addr) {
            return Err(Refusal::Nak("address is not assignable"));
        }
        if quarantined {
            return Err(Refusal::Nak("address is quarantined after a DECLINE"));
        }
        match table.get(addr) {
            Some(l) if l.mac == self.mac => return Ok(()),
            Some(l) if l.is_held(self.now) => {
                return Err(Refusal::Nak("address is leased to another client"))
            }
            _ => {}
        }
        if table
            .lease_of(self.mac)
            .is_some_and(|l| l.is_held(self.now))
        {
            return Err(Refusal::Nak("client holds a different address"));
        }
        self.check_discovery_cap(table).map_err(Refusal::Silent)
    }

    // ---- message handlers ----

    fn discover(&self, table: &mut LeaseTable) -> Result<Decision, DropReason> {
        let addr = self.choose_address(table)?;
        let keeps_binding = table.get(addr).is_some_and(|l| {
            l.mac == self.mac && l.state == LeaseState::Bound && l.is_active(self.now)
        });
        let mut changes = Vec::new();
        // A client rediscovering inside its lease keeps the binding; otherwise hold the address for it.
        if !keeps_binding {
            let offer = Lease {
                address: addr,
                mac: self.mac,
                state: LeaseState::Offered,
                expires_at: self.after(self.cfg.offer_timeout),
            };
            changes.extend(removals(table.insert(offer)));
        }
        Ok(Decision::Reply(self.reply(
            MessageType::Offer,
            addr,
            changes,
        )))
    }

    fn request(&self, table: &mut LeaseTable) -> Result<Decision, DropReason> {
        let ciaddr = self.req.ciaddr();
        let (addr, init_reboot) = match (self.server_id(), self.requested_address()) {
            (Some(id), _) if id != self.cfg.server_address => {
                // SELECTING another server's offer: release what we held for this client.
                if let Some(l) = table.lease_of(self.mac) {
                    if l.state == LeaseState::Offered {
                        let a = l.address;
                        table.remove(a);
                    }
                }
                return Err(DropReason::ForOtherServer(id));
            }
            // SELECTING: server id and requested address (older clients put it in ciaddr).
            (Some(_), Some(addr)) => (addr, false),
            (Some(_), None) if !ciaddr.is_unspecified() => (ciaddr, false),
            // INIT-REBOOT: requested address, no server id, ciaddr zero.
            (None, Some(addr)) if ciaddr.is_unspecified() => (addr, true),
            // RENEWING (unicast) or REBINDING (broadcast): ciaddr, nothing else. Same checks for both.
            _ if !ciaddr.is_unspecified() => (ciaddr, false),
            _ => return Err(DropReason::MissingAddress),
        };
        if init_reboot
            && self.cfg.subnet.contains(addr)
            && table.lease_of(self.mac).is_none()
            && self.reservations.by_mac(self.mac).is_none()
        {
            return Err(DropReason::NoRecord);
        }
        match self.check_request(table, addr) {
            Ok(()) => {
                let lease = Lease {
                    address: addr,
                    mac: self.mac,
                    state: LeaseState::Bound,
                    expires_at: self.lease_end(),
                };
                let mut changes = vec![LeaseChange::Upsert(lease.clone())];
                changes.extend(removals(table.insert(lease)));
                Ok(Decision::Reply(self.reply(MessageType::Ack, addr, changes)))
            }
            Err(Refusal::Nak(why)) => Ok(Decision::Reply(self.nak(why))),
            Err(Refusal::Silent(reason)) => Err(reason),
        }
    }

    fn decline(&self, table: &mut LeaseTable) -> Result<Decision, DropReason> {
        self.check_server_id()?;
        let addr = self.requested_address().ok_or(DropReason::MissingAddress)?;
        let ours = table
            .get(addr)
            .is_some_and(|l| l.mac == self.mac && l.state != LeaseState::Declined)
            || self
                .reservations
                .by_mac(self.mac)
                .is_some_and(|r| r.address == addr);
        if !ours {
            return Err(DropReason::NoLease(addr));
        }
        // Someone else answers ARP for this address: keep everyone off it for a while.
        let quarantine = Lease {
            address: addr,
            mac: self.mac,
            state: LeaseState::Declined,
            expires_at: self.after(self.cfg.decline_quarantine),
        };
        table.insert(quarantine.clone());
        Ok(Decision::Record {
            lease_changes: vec![LeaseChange::Upsert(quarantine)],
        })
    }

    fn release(&self, table: &mut LeaseTable) -> Result<Decision, DropReason> {
        self.check_server_id()?;
        let addr = self.req.ciaddr();
        match table.get(addr) {
            Some(l) if l.mac == self.mac && l.state != LeaseState::Declined => {
                table.remove(addr);
                Ok(Decision::Record {
                    lease_changes: vec![LeaseChange::Remove {
                        address: addr,
                        mac: self.mac,
                    }],
                })
            }
            _ => Err(DropReason::NoLease(addr)),
        }
    }

    fn inform(&self) -> Result<Decision, DropReason> {
        let ciaddr = self.req.ciaddr();
        if ciaddr.is_unspecified() {
            return Err(DropReason::MissingAddress);
        }
        if !self.cfg.subnet.contains(ciaddr) {
            return Err(DropReason::InformOutsideSubnet(ciaddr));
        }
        Ok(Decision::Reply(self.reply(
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            Vec::new(),
        )))
    }

    // ---- reply construction ----

    fn lease_end(&self) -> UnixMillis {
        self.now
            .saturating_add(u64::from(self.cfg.lease_secs()) * 1000)
    }

    /// The BOOTREPLY skeleton of RFC 2131 table 3: client's xid, flags, giaddr and chaddr.
    fn skeleton(&self) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_chaddr(&self.mac.0)
            .set_xid(self.req.xid())
            .set_flags(self.req.flags())
            .set_giaddr(self.req.giaddr());
        m
    }

    /// Options the client identifies itself or its relay path with, echoed back unchanged.
    fn echo_options(&self, m: &mut Message) {
        // RFC 6842: a client that sent a client identifier may drop replies without it.
        if let Some(id) = self.req.opts().get(OptionCode::ClientIdentifier) {
            m.opts_mut().insert(id.clone());
        }
        // RFC 3046 2.2: relay agent information goes back to the relay, which strips it.
        if let Some(info) = self.req.opts().get(OptionCode::RelayAgentInformation) {
            m.opts_mut().insert(info.clone());
        }
    }

    /// OFFER or ACK; `yiaddr` is unspecified for the ACK to an INFORM, which also carries no lease times.
    fn reply(&self, kind: MessageType, yiaddr: Ipv4Addr, lease_changes: Vec<LeaseChange>) -> Reply {
        let cfg = self.cfg;
        let mut m = self.skeleton();
        m.set_yiaddr(yiaddr);
        if kind == MessageType::Ack {
            m.set_ciaddr(self.req.ciaddr());
        }
        let informing = yiaddr.is_unspecified();

        // (option, essential): essentials go out whether requested or not.
        let mut available: Vec<(DhcpOption, bool)> = vec![
            (DhcpOption::MessageType(kind), true),
            (DhcpOption::ServerIdentifier(cfg.server_address), true),
            (DhcpOption::SubnetMask(cfg.subnet.mask()), true),
        ];
        if !informing {
            let secs = cfg.lease_secs();
            available.push((DhcpOption::AddressLeaseTime(secs), true));
            // T1 = 0.5, T2 = 0.875 of the lease (RFC 2131 4.4.5 defaults).
            let t2 = u32::try_from(u64::from(secs) * 7 / 8).unwrap_or(secs);
            available.push((DhcpOption::Renewal(secs / 2), true));
            available.push((DhcpOption::Rebinding(t2), true));
        }
        if let Some(router) = cfg.router {
            available.push((DhcpOption::Router(vec![router]), true));
        }
        if !cfg.dns.is_empty() {
            available.push((DhcpOption::DomainNameServer(cfg.dns.clone()), true));
        }
        if let Some(domain) = &cfg.domain {
            available.push((DhcpOption::DomainName(domain.clone()), false));
        }
        if let Some(mtu) = cfg.mtu {
            available.push((DhcpOption::InterfaceMtu(mtu), false));
        }
        if !cfg.ntp.is_empty() {
            available.push((DhcpOption::NtpServers(cfg.ntp.clone()), false));
        }
        if let Some(name) = self.reservations.by_mac(self.mac).and_then(|r| r.hostname) {
            if !name.is_empty() && name.len() <= 255 {
                available.push((DhcpOption::Hostname(name), false));
            }
        }
        if let Some(boot) = boot_answer(&BootClient::from_request(self.req), self.mac, cfg) {
            let server = boot.next_server.to_string();
            m.set_siaddr(boot.next_server);
            m.set_sname_str(&server); // a dotted quad always fits the 64-byte field
            m.set_fname_str(&boot.file); // boot_answer caps it at 127 bytes
            available.push((DhcpOption::TFTPServerName(server.into_bytes()), true));
            available.push((DhcpOption::BootfileName(boot.file.into_bytes()), true));
            if boot.pxe_class {
                available.push((DhcpOption::ClassIdentifier(b"PXEClient".to_vec()), true));
            }
            if let Some(vendor) = boot.vendor_options {
                available.push((DhcpOption::VendorExtensions(vendor), true));
            }
        }

        let requested: Option<Vec<OptionCode>> =
            match self.req.opts().get(OptionCode::ParameterRequestList) {
                Some(DhcpOption::ParameterRequestList(codes)) => Some(codes.clone()),
                _ => None,
            };
        // Message type and server id first, then the client's order, then unrequested essentials.
        let mut order = vec![OptionCode::MessageType, OptionCode::ServerIdentifier];
        if let Some(codes) = &requested {
            order.extend(codes.iter().copied());
        }
        order.extend(available.iter().map(|(o, _)| OptionCode::from(o)));
        for (opt, essential) in available {
            let code = OptionCode::from(&opt);
            if essential || requested.as_ref().is_none_or(|r| r.contains(&code)) {
                m.opts_mut().insert(opt);
            }
        }
        self.echo_options(&mut m);
        let destination = self.destination(yiaddr);
        Reply {
            message: m,
            destination,
            lease_changes,
            option_order: order,
            max_len: codec::max_reply_len(self.req),
        }
    }

    fn nak(&self, why: &'static str) -> Reply {
        let mut m = self.skeleton();
        let relayed = !self.req.giaddr().is_unspecified();
        if relayed {
            // RFC 2131 4.3.2: the relay must broadcast the NAK, the client may have a wrong address.
            m.set_flags(Flags::default().set_broadcast());
        }
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Nak));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.cfg.server_address));
        m.opts_mut().insert(DhcpOption::Message(why.to_owned()));
        self.echo_options(&mut m);
        let destination = if relayed {
            Destination::Relay(SocketAddrV4::new(self.req.giaddr(), SERVER_PORT))
        } else {
            Destination::Broadcast
        };
        Reply {
            message: m,
            destination,
            lease_changes: Vec::new(),
            option_order: vec![OptionCode::MessageType, OptionCode::ServerIdentifier],
            max_len: codec::max_reply_len(self.req),
        }
    }

    /// RFC 2131 4.1: relay first, then an address the client already uses, then broadcast if it asked,
    /// else link-layer unicast to the address being offered.
    fn destination(&self, yiaddr: Ipv4Addr) -> Destination {
        let giaddr = self.req.giaddr();
        let ciaddr = self.req.ciaddr();
        if !giaddr.is_unspecified() {
            Destination::Relay(SocketAddrV4::new(giaddr, SERVER_PORT))
        } else if !ciaddr.is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(ciaddr, CLIENT_PORT))
        } else if self.req.flags().broadcast() || yiaddr.is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::LinkUnicast {
                address: yiaddr,
                mac: self.mac,
            }
        }
    }
}

/// Rows to delete for leases the table dropped to keep one address per MAC.
fn removals(evicted: Vec<Lease>) -> impl Iterator<Item = LeaseChange> {
    evicted.into_iter().map(|l| LeaseChange::Remove {
        address: l.address,
        mac: l.mac,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dhcproto::Decodable;

    use super::*;
    use crate::boot::dhcp::config::{PoolRange, Subnet};
    use crate::boot::dhcp::lease::ReservationMap;
    use crate::boot::dhcp::testdata::{self, mac, request};

    const NOW: UnixMillis = 1_700_000_000_000;
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    const POOL_START: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);

    fn no_reservations() -> ReservationMap {
        ReservationMap::new()
    }

    fn reply(d: Decision) -> Reply {
        match d {
            Decision::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn dropped(d: Decision) -> DropReason {
        match d {
            Decision::Drop { reason } => reason,
            other => panic!("expected a drop, got {other:?}"),
        }
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    fn discover(mac: [u8; 6]) -> Message {
        request(MessageType::Discover, mac, vec![])
    }

    fn select(mac: [u8; 6], addr: Ipv4Addr) -> Message {
        request(
            MessageType::Request,
            mac,
            vec![
                DhcpOption::ServerIdentifier(SERVER),
                DhcpOption::RequestedIpAddress(addr),
            ],
        )
    }

    /// DISCOVER + REQUEST; returns the bound address.
    fn dora(
        mac: [u8; 6],
        now: UnixMillis,
        table: &mut LeaseTable,
        cfg: &DhcpConfig,
        r: &ReservationMap,
    ) -> Ipv4Addr {
        let offer = reply(handle(&discover(mac), now, table, cfg, r));
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        let addr = offer.message.yiaddr();
        let ack = reply(handle(&select(mac, addr), now, table, cfg, r));
        assert_eq!(
            ack.message_type(),
            Some(MessageType::Ack),
            "{:?}",
            opt(&ack.message, OptionCode::Message)
        );
        addr
    }

    #[test]
    fn golden_pxe_clients_get_their_boot_files() {
        let cfg = DhcpConfig::lab();
        let url = "http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe";
        let cases = [
            ("ipxe-qemu", testdata::ipxe_qemu_discover(), url, true),
            (
                "bios-pxe",
                testdata::bios_pxe_discover(),
                "undionly.kpxe",
                true,
            ),
            ("uefi-x64", testdata::uefi_x64_discover(), "ipxe.efi", true),
            ("plain-ipxe", testdata::plain_ipxe_discover(), url, false),
        ];
        for (name, bytes, file, pxe_class) in cases {
            let mut table = LeaseTable::new();
            let r = reply(handle_datagram(
                &bytes,
                NOW,
                &mut table,
                &cfg,
                &no_reservations(),
            ));
            // Check what goes on the wire, not just the struct.
            let wire = reply_bytes(&r);
            let m = Message::from_bytes(&wire).expect("our reply reparses");
            assert_eq!(m.opts().msg_type(), Some(MessageType::Offer), "{name}");
            assert_eq!(m.opcode(), Opcode::BootReply, "{name}");
            assert_eq!(
                m.xid(),
                u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                "{name}"
            );
            assert_eq!(m.siaddr(), SERVER, "{name}");
            assert_eq!(m.yiaddr(), POOL_START, "{name}");
            assert_eq!(m.chaddr(), &testdata::QEMU_MAC, "{name}");
            assert_eq!(nul_trimmed(m.fname()), file.as_bytes(), "{name}");
            assert_eq!(nul_trimmed(m.sname()), b"198.18.0.1", "{name}");
            assert_eq!(
                opt(&m, OptionCode::TFTPServerName),
                Some(&DhcpOption::TFTPServerName(b"198.18.0.1".to_vec()))
            );
            assert_eq!(
                opt(&m, OptionCode::BootfileName),
                Some(&DhcpOption::BootfileName(file.as_bytes().to_vec()))
            );
            let class = opt(&m, OptionCode::ClassIdentifier);
            if pxe_class {
                assert_eq!(
                    class,
                    Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
                    "{name}"
                );
            } else {
                assert_eq!(class, None, "{name}");
            }
            // Option 43 on the wire, byte for byte: PXE_DISCOVERY_CONTROL (6) = 8, end. Without it EDK2's PXE
            // client takes the offer for a BINL offer and asks port 4011 for its boot file.
            let vendor = option_bytes(&wire, 43);
            if pxe_class {
                assert_eq!(vendor, Some(&[0x06, 0x01, 0x08, 0xff][..]), "{name}");
            } else {
                assert_eq!(vendor, None, "{name}");
            }
            assert_eq!(
                opt(&m, OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(SERVER))
            );
            assert_eq!(
                opt(&m, OptionCode::AddressLeaseTime),
                Some(&DhcpOption::AddressLeaseTime(3600))
            );
            let expected_dest = if name == "plain-ipxe" {
                Destination::LinkUnicast {
                    address: POOL_START,
                    mac: MacAddr(testdata::QEMU_MAC),
                }
            } else {
                Destination::Broadcast
            };
            assert_eq!(r.destination, expected_dest, "{name}");
        }
    }

    fn reply_bytes(r: &Reply) -> Vec<u8> {
        match r.encode() {
            Ok(b) => b,
            Err(e) => panic!("encode: {e}"),
        }
    }

    /// dhcproto keeps the terminating NUL of sname/file.
    fn nul_trimmed(field: Option<&[u8]>) -> &[u8] {
        let f = field.unwrap_or(&[]);
        f.split(|&b| b == 0).next().unwrap_or(&[])
    }

    #[test]
    fn ipxe_reply_follows_the_parameter_request_list_order() {
        let cfg = DhcpConfig::lab();
        let r = reply(handle_datagram(
            &testdata::ipxe_qemu_discover(),
            NOW,
            &mut LeaseTable::new(),
            &cfg,
            &no_reservations(),
        ));
        let wire = reply_bytes(&r);
        let codes = option_codes(&wire);
        // 53 and 54 first, then iPXE's list (1 3 6 7 12 15 17 26 43 60 66 67 ...) as far as we have those,
        // then the unrequested essentials, then the echoed client identifier.
        assert_eq!(
            codes,
            vec![53, 54, 1, 3, 6, 15, 26, 43, 60, 66, 67, 51, 58, 59, 61]
        );
    }

    /// The value of option `code` as it appears in the encoded reply.
    fn option_bytes(wire: &[u8], code: u8) -> Option<&[u8]> {
        let mut i = codec::HEADER_LEN;
        while let Some(&c) = wire.get(i) {
            match c {
                0 => i += 1,
                255 => return None,
                _ => {
                    let len = usize::from(*wire.get(i + 1)?);
                    if c == code {
                        return wire.get(i + 2..i + 2 + len);
                    }
                    i += 2 + len;
                }
            }
        }
        None
    }

    fn option_codes(wire: &[u8]) -> Vec<u8> {
        let mut codes = Vec::new();
        let mut i = codec::HEADER_LEN;
        while let Some(&c) = wire.get(i) {
            match c {
                0 => i += 1,
                255 => break,
                _ => {
                    codes.push(c);
                    i += 2 + usize::from(wire[i + 1]);
                }
            }
        }
        codes
    }

    #[test]
    fn non_pxe_client_gets_no_boot_file_and_only_what_it_asked_for() {
        let cfg = DhcpConfig::lab();
        let r = reply(handle_datagram(
            &testdata::udhcpc_discover(),
            NOW,
            &mut LeaseTable::new(),
            &cfg,
            &no_reservations(),
        ));
        let m = &r.message;
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(m.fname().is_none() && m.sname().is_none());
        for absent in [
            OptionCode::TFTPServerName,
            OptionCode::BootfileName,
            OptionCode::ClassIdentifier,
            OptionCode::InterfaceMtu,
        ] {
            assert!(opt(m, absent).is_none(), "{absent:?}");
        }
        // udhcpc asked for 15 and 42 (optional) and 1 3 6 (essential).
        assert_eq!(
            opt(m, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("lab.lbfleet".into()))
        );
        assert_eq!(
            opt(m, OptionCode::NtpServers),
            Some(&DhcpOption::NtpServers(vec![SERVER]))
        );
        assert_eq!(
            opt(m, OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)))
        );
        assert_eq!(
            opt(m, OptionCode::Router),
            Some(&DhcpOption::Router(vec![ROUTER]))
        );
        // RFC 6842: client identifier echoed.
        assert!(opt(m, OptionCode::ClientIdentifier).is_some());
        // No broadcast flag, no address yet: link-layer unicast of the offer.
        assert_eq!(
            r.destination,
            Destination::LinkUnicast {
                address: POOL_START,
                mac: MacAddr(testdata::QEMU_MAC)
            }
        );
        assert!(reply_bytes(&r).len() <= 576 - 28);
    }

    #[test]
    fn full_dora_binds_and_asks_to_persist() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let m = mac(1);
        let offer = reply(handle(&discover(m), NOW, &mut table, &cfg, &res));
        let addr = offer.message.yiaddr();
        assert_eq!(addr, POOL_START);
        assert!(offer.lease_changes.is_empty(), "offers are not persisted");
        assert_eq!(table.get(addr).map(|l| l.state), Some(LeaseState::Offered));
        assert_eq!(
            opt(&offer.message, OptionCode::Renewal),
            Some(&DhcpOption::Renewal(1800))
        );
        assert_eq!(
            opt(&offer.message, OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );

        let ack = reply(handle(&select(m, addr), NOW + 500, &mut table, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.message.yiaddr(), addr);
        assert_eq!(ack.destination, Destination::Broadcast);
        let bound = Lease {
            address: addr,
            mac: MacAddr(m),
            state: LeaseState::Bound,
            expires_at: NOW + 500 + 3_600_000,
        };
        assert_eq!(ack.lease_changes, vec![LeaseChange::Upsert(bound.clone())]);
        assert_eq!(table.lease_of(MacAddr(m)), Some(&bound));

        // A second client gets the next address.
        assert_eq!(
            dora(mac(2), NOW, &mut table, &cfg, &res),
            Ipv4Addr::new(198, 18, 1, 1)
        );
        // Rediscovering inside the lease offers the same address and keeps the binding.
        let again = reply(handle(&discover(m), NOW + 1000, &mut table, &cfg, &res));
        assert_eq!(again.message.yiaddr(), addr);
        assert_eq!(table.get(addr).map(|l| l.state), Some(LeaseState::Bound));
    }

    #[test]
    fn renew_is_acked_by_unicast_to_ciaddr() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
        let mut renew = request(MessageType::Request, mac(1), vec![]);
        renew.set_ciaddr(addr).set_flags(Flags::default());
        let later = NOW + 1_800_000;
        let ack = reply(handle(&renew, later, &mut table, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(
            ack.destination,
            Destination::Unicast(SocketAddrV4::new(addr, CLIENT_PORT))
        );
        assert_eq!(ack.message.ciaddr(), addr);
        assert_eq!(ack.message.yiaddr(), addr);
        assert_eq!(
            table.get(addr).map(|l| l.expires_at),
            Some(later + 3_600_000)
        );
        assert!(
            matches!(&ack.lease_changes[..], [LeaseChange::Upsert(l)] if l.expires_at == later + 3_600_000)
        );
    }

    #[test]
    fn rebind_is_acked_even_after_expiry_while_the_address_is_free() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
        // REBINDING: broadcast, ciaddr set, no server id; arrives after T2 and even after the lease ran out.
        let mut rebind = request(MessageType::Request, mac(1), vec![]);
        rebind.set_ciaddr(addr);
        let ack = reply(handle(&rebind, NOW + 3_700_000, &mut table, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(
            ack.destination,
            Destination::Unicast(SocketAddrV4::new(addr, CLIENT_PORT))
        );
        // Another client's rebind for that address, now bound again, is refused.
        let mut thief = request(MessageType::Request, mac(9), vec![]);
        thief.set_ciaddr(addr);
        let nak = reply(handle(&thief, NOW + 3_700_001, &mut table, &cfg, &res));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
    }

    #[test]
    fn requests_for_foreign_or_taken_addresses_are_nakked() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = dora(mac(1), NOW, &mut table, &cfg, &res);

        // INIT-REBOOT with an address from another network (a laptop back from elsewhere).
        let foreign = Ipv4Addr::new(198, 19, 0, 5);
        let init_reboot = request(
            MessageType::Request,
            mac(1),
            vec![DhcpOption::RequestedIpAddress(foreign)],
        );
        let nak = reply(handle(&init_reboot, NOW, &mut table, &cfg, &res));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        assert_eq!(nak.destination, Destination::Broadcast);
        assert_eq!(nak.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(opt(&nak.message, OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            opt(&nak.message, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(nak.lease_changes.is_empty());
        // The client's binding is untouched.
        assert_eq!(
            table.lease_of(MacAddr(mac(1))).map(|l| l.address),
            Some(addr)
        );

        // SELECTING an address that is another client's.
        let nak = reply(handle(&select(mac(2), addr), NOW, &mut table, &cfg, &res));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        // INIT-REBOOT of the infrastructure addresses.
        for a in [SERVER, ROUTER] {
            let m = request(
                MessageType::Request,
                mac(1),
                vec![DhcpOption::RequestedIpAddress(a)],
            );
            assert_eq!(
                reply(handle(&m, NOW, &mut table, &cfg, &res)).message_type(),
                Some(MessageType::Nak)
            );
        }
        // INIT-REBOOT on our network from a client we have no record of: RFC 2131 says stay silent.
        let stranger = request(
            MessageType::Request,
            mac(3),
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                198, 18, 1, 77,
            ))],
        );
        assert!(matches!(
            dropped(handle(&stranger, NOW, &mut table, &cfg, &res)),
            DropReason::NoRecord
        ));
    }

    #[test]
    fn selecting_another_server_frees_our_offer() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res))
            .message
            .yiaddr();
        let other = request(
            MessageType::Request,
            mac(1),
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 18, 0, 2)),
                DhcpOption::RequestedIpAddress(addr),
            ],
        );
        assert!(matches!(
            dropped(handle(&other, NOW, &mut table, &cfg, &res)),
            DropReason::ForOtherServer(_)
        ));
        assert!(table.get(addr).is_none());
    }

    #[test]
    fn release_frees_the_address() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
        let mut release = request(
            MessageType::Release,
            mac(1),
            vec![DhcpOption::ServerIdentifier(SERVER)],
        );
        release.set_ciaddr(addr);
        // Someone else cannot release it.
        let mut forged = release.clone();
        forged.set_chaddr(&mac(2));
        assert!(matches!(
            dropped(handle(&forged, NOW, &mut table, &cfg, &res)),
            DropReason::NoLease(_)
        ));
        match handle(&release, NOW, &mut table, &cfg, &res) {
            Decision::Record { lease_changes } => {
                assert_eq!(
                    lease_changes,
                    vec![LeaseChange::Remove {
                        address: addr,
                        mac: MacAddr(mac(1))
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(table.is_empty());
        // The freed address is the first free one again.
        assert_eq!(dora(mac(2), NOW, &mut table, &cfg, &res), addr);
    }

    #[test]
    fn decline_quarantines_the_address() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let addr = dora(mac(1), NOW, &mut table, &cfg, &res);
        let decline = request(
            MessageType::Decline,
            mac(1),
            vec![
                DhcpOption::ServerIdentifier(SERVER),
                DhcpOption::RequestedIpAddress(addr),
            ],
        );
        let until = NOW + 600_000;
        match handle(&decline, NOW, &mut table, &cfg, &res) {
            Decision::Record { lease_changes } => assert!(matches!(
                &lease_changes[..],
                [LeaseChange::Upsert(Lease { state: LeaseState::Declined, expires_at, .. })] if *expires_at == until
            )),
            other => panic!("{other:?}"),
        }
        // Neither the decliner nor anyone else gets it while quarantined; a request for it is refused.
        assert_ne!(dora(mac(1), NOW + 1, &mut table, &cfg, &res), addr);
        assert_ne!(dora(mac(2), NOW + 1, &mut table, &cfg, &res), addr);
        let nak = reply(handle(
            &select(mac(3), addr),
            NOW + 1,
            &mut table,
            &cfg,
            &res,
        ));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        // After the quarantine it can be leased again.
        let ack = reply(handle(&select(mac(3), addr), until, &mut table, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.message.yiaddr(), addr);
    }

    fn tiny_pool_config(size: u8, cap: usize) -> DhcpConfig {
        let mut cfg = DhcpConfig::lab();
        cfg.pools = vec![PoolRange::new(
            POOL_START,
            Ipv4Addr::new(198, 18, 1, size - 1),
        )];
        cfg.discovery_cap = cap;
        cfg
    }

    #[test]
    fn reservation_always_gets_its_address() {
        let cfg = tiny_pool_config(2, 1);
        let reserved_in_pool = Ipv4Addr::new(198, 18, 1, 1);
        let node_addr = Ipv4Addr::new(198, 18, 0, 50); // outside the pool, as registered nodes are
        let mut res = ReservationMap::new();
        res.insert(MacAddr(mac(10)), node_addr, Some("lb-01".into()));
        res.insert(MacAddr(mac(11)), reserved_in_pool, None);
        let mut table = LeaseTable::new();
        // Unknown clients fill the pool and the cap; the reserved pool address is not theirs to take.
        assert_eq!(dora(mac(1), NOW, &mut table, &cfg, &res), POOL_START);
        assert!(matches!(
            dropped(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res)),
            DropReason::DiscoveryCapReached { .. }
        ));
        let mut roomier = cfg.clone();
        roomier.discovery_cap = 10;
        assert!(matches!(
            dropped(handle(&discover(mac(2)), NOW, &mut table, &roomier, &res)),
            DropReason::PoolExhausted
        ));
        // Registered nodes get theirs regardless.
        let mut with_prl = discover(mac(10));
        with_prl
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::Hostname,
            ]));
        let offer = reply(handle(&with_prl, NOW, &mut table, &cfg, &res));
        assert_eq!(offer.message.yiaddr(), node_addr);
        assert_eq!(
            opt(&offer.message, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("lb-01".into()))
        );
        assert_eq!(dora(mac(10), NOW, &mut table, &cfg, &res), node_addr);
        assert_eq!(dora(mac(11), NOW, &mut table, &cfg, &res), reserved_in_pool);
        // Reserved clients are not counted against the discovery cap.
        assert_eq!(table.iter().filter(|l| l.is_held(NOW)).count(), 3);
        // A reserved node asking for some other address is told no.
        let nak = reply(handle(
            &select(mac(10), POOL_START),
            NOW,
            &mut table,
            &cfg,
            &res,
        ));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
    }

    #[test]
    fn discovery_cap_limits_unknown_macs_until_offers_expire() {
        let cfg = tiny_pool_config(200, 2);
        let res = no_reservations();
        let mut table = LeaseTable::new();
        reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res));
        reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
        let reason = dropped(handle(&discover(mac(3)), NOW, &mut table, &cfg, &res));
        assert!(matches!(reason, DropReason::DiscoveryCapReached { cap: 2 }));
        // A holder rediscovering is not a new holder.
        reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
        // A REQUEST cannot sidestep the cap either (silently ignored, not NAKed).
        let sneaky = select(mac(3), Ipv4Addr::new(198, 18, 1, 99));
        assert!(matches!(
            dropped(handle(&sneaky, NOW, &mut table, &cfg, &res)),
            DropReason::DiscoveryCapReached { .. }
        ));
        // Offers lapse after the offer timeout and make room.
        let later = NOW + 60_000;
        assert_eq!(
            reply(handle(&discover(mac(3)), later, &mut table, &cfg, &res)).message_type(),
            Some(MessageType::Offer)
        );
    }

    #[test]
    fn registered_nodes_boot_outside_the_discovery_budget() {
        // Issue 13: unknown MACs used up the discovery budget; a registered node (no reservation) still gets
        // an address and a lease, and does not count against the budget itself.
        let cfg = tiny_pool_config(200, 2);
        let mut res = no_reservations();
        res.register(MacAddr(mac(9)));
        let mut table = LeaseTable::new();
        reply(handle(&discover(mac(1)), NOW, &mut table, &cfg, &res));
        reply(handle(&discover(mac(2)), NOW, &mut table, &cfg, &res));
        assert!(matches!(
            dropped(handle(&discover(mac(3)), NOW, &mut table, &cfg, &res)),
            DropReason::DiscoveryCapReached { cap: 2 }
        ));
        let offer = reply(handle(&discover(mac(9)), NOW, &mut table, &cfg, &res));
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        let ack = reply(handle(
            &select(mac(9), offer.message.yiaddr()),
            NOW,
            &mut table,
            &cfg,
            &res,
        ));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        // The registered node's lease does not use up room of unknown MACs either.
        let later = NOW + 60_000;
        reply(handle(&discover(mac(4)), later, &mut table, &cfg, &res));
        reply(handle(&discover(mac(5)), later, &mut table, &cfg, &res));
    }

    #[test]
    fn relayed_requests_are_answered_through_the_relay() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let relay = Ipv4Addr::new(198, 18, 0, 253);
        let mut m = discover(mac(1));
        m.set_giaddr(relay).set_hops(1);
        let offer = reply(handle(&m, NOW, &mut table, &cfg, &res));
        assert_eq!(
            offer.destination,
            Destination::Relay(SocketAddrV4::new(relay, SERVER_PORT))
        );
        assert_eq!(offer.message.giaddr(), relay);
        // A NAK through a relay asks the relay to broadcast it.
        let mut bad = request(
            MessageType::Request,
            mac(1),
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(198, 19, 9, 9))],
        );
        bad.set_giaddr(relay).set_flags(Flags::default());
        let nak = reply(handle(&bad, NOW, &mut table, &cfg, &res));
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        assert_eq!(
            nak.destination,
            Destination::Relay(SocketAddrV4::new(relay, SERVER_PORT))
        );
        assert!(nak.message.flags().broadcast());
        // A relay on a subnet we do not serve is ignored.
        let mut elsewhere = discover(mac(2));
        elsewhere.set_giaddr(Ipv4Addr::new(198, 19, 0, 1));
        assert!(matches!(
            dropped(handle(&elsewhere, NOW, &mut table, &cfg, &res)),
            DropReason::RelayOutsideSubnet(_)
        ));
        // A site without relays refuses them all: a client on the segment cannot pose as one.
        let no_relays = DhcpConfig {
            accept_relayed: false,
            ..DhcpConfig::lab()
        };
        assert!(matches!(
            dropped(handle(&m, NOW, &mut table, &no_relays, &res)),
            DropReason::RelayRefused(_)
        ));
    }

    #[test]
    fn infrastructure_and_edge_addresses_are_never_offered() {
        let mut cfg = DhcpConfig::lab();
        cfg.subnet = Subnet::new(Ipv4Addr::new(198, 18, 0, 0), 22);
        cfg.router = Some(Ipv4Addr::new(198, 18, 0, 2));
        cfg.dns = vec![];
        cfg.ntp = vec![];
        // Pools deliberately overlapping the network address, server, router and broadcast address.
        cfg.pools = vec![
            PoolRange::new(Ipv4Addr::new(198, 18, 0, 0), Ipv4Addr::new(198, 18, 0, 3)),
            PoolRange::new(
                Ipv4Addr::new(198, 18, 3, 254),
                Ipv4Addr::new(198, 18, 3, 255),
            ),
        ];
        cfg.discovery_cap = 100;
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let mut got = Vec::new();
        for i in 1..10 {
            match handle(&discover(mac(i)), NOW, &mut table, &cfg, &res) {
                Decision::Reply(r) => got.push(r.message.yiaddr()),
                Decision::Drop {
                    reason: DropReason::PoolExhausted,
                } => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![Ipv4Addr::new(198, 18, 0, 3), Ipv4Addr::new(198, 18, 3, 254)]
        );
        // Asking for them does not help either.
        let mut ask = discover(mac(20));
        ask.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(SERVER));
        assert!(matches!(
            dropped(handle(&ask, NOW, &mut table, &cfg, &res)),
            DropReason::PoolExhausted
        ));
    }

    #[test]
    fn inform_gets_configuration_without_a_lease() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let client = Ipv4Addr::new(198, 18, 2, 7);
        let mut inform = request(MessageType::Inform, mac(1), vec![]);
        inform.set_ciaddr(client);
        let ack = reply(handle(&inform, NOW, &mut table, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.message.ciaddr(), client);
        assert!(opt(&ack.message, OptionCode::AddressLeaseTime).is_none());
        assert!(opt(&ack.message, OptionCode::Renewal).is_none());
        assert!(opt(&ack.message, OptionCode::Router).is_some());
        assert_eq!(
            ack.destination,
            Destination::Unicast(SocketAddrV4::new(client, CLIENT_PORT))
        );
        assert!(ack.lease_changes.is_empty() && table.is_empty());
        inform.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        assert!(matches!(
            dropped(handle(&inform, NOW, &mut table, &cfg, &res)),
            DropReason::MissingAddress
        ));
    }

    #[test]
    fn moving_to_a_reservation_removes_the_old_pool_lease() {
        let cfg = DhcpConfig::lab();
        let mut res = no_reservations();
        let mut table = LeaseTable::new();
        let old = dora(mac(1), NOW, &mut table, &cfg, &res);
        // The node gets approved and a fixed address while it still holds its discovery lease.
        let fixed = Ipv4Addr::new(198, 18, 0, 40);
        res.insert(MacAddr(mac(1)), fixed, None);
        let offer = reply(handle(&discover(mac(1)), NOW + 10, &mut table, &cfg, &res));
        assert_eq!(offer.message.yiaddr(), fixed);
        assert_eq!(
            offer.lease_changes,
            vec![LeaseChange::Remove {
                address: old,
                mac: MacAddr(mac(1))
            }]
        );
        // And a renewal of the old address is refused so the node moves over.
        let mut renew = request(MessageType::Request, mac(1), vec![]);
        renew.set_ciaddr(old);
        assert_eq!(
            reply(handle(&renew, NOW + 20, &mut table, &cfg, &res)).message_type(),
            Some(MessageType::Nak)
        );
    }

    #[test]
    fn non_server_messages_and_bad_macs_are_dropped() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let offer_from_client = request(MessageType::Offer, mac(1), vec![]);
        assert!(matches!(
            dropped(handle(&offer_from_client, NOW, &mut table, &cfg, &res)),
            DropReason::UnsupportedMessageType(MessageType::Offer)
        ));
        let broadcast_mac = discover([0xff; 6]);
        assert!(matches!(
            dropped(handle(&broadcast_mac, NOW, &mut table, &cfg, &res)),
            DropReason::InvalidClientMac
        ));
        let mut reply_op = discover(mac(1));
        reply_op.set_opcode(Opcode::BootReply);
        assert!(matches!(
            dropped(handle(&reply_op, NOW, &mut table, &cfg, &res)),
            DropReason::NotEthernetRequest
        ));
        let truncated = &testdata::bios_pxe_discover()[..100];
        assert!(matches!(
            dropped(handle_datagram(truncated, NOW, &mut table, &cfg, &res)),
            DropReason::Decode(DecodeError::Truncated(100))
        ));
        assert!(table.is_empty());
        // Nothing here changed the table; the lease time config is still what the replies carry.
        assert_eq!(cfg.lease_time, Duration::from_secs(3600));
    }

    #[test]
    fn persisted_changes_rebuild_the_table_after_a_restart() {
        let cfg = DhcpConfig::lab();
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let mut store: Vec<LeaseChange> = Vec::new();
        for i in 1..=3 {
            let offer = reply(handle(&discover(mac(i)), NOW, &mut table, &cfg, &res));
            store.extend(offer.lease_changes);
            let ack = reply(handle(
                &select(mac(i), offer.message.yiaddr()),
                NOW,
                &mut table,
                &cfg,
                &res,
            ));
            store.extend(ack.lease_changes);
        }
        let mut release = request(
            MessageType::Release,
            mac(2),
            vec![DhcpOption::ServerIdentifier(SERVER)],
        );
        release.set_ciaddr(Ipv4Addr::new(198, 18, 1, 1));
        store.extend(
            handle(&release, NOW, &mut table, &cfg, &res)
                .lease_changes()
                .to_vec(),
        );

        // Replaying what the caller persisted gives the same table the engine had.
        let mut rebuilt = LeaseTable::new();
        for change in &store {
            rebuilt.apply(change);
        }
        let leases = |t: &LeaseTable| t.iter().cloned().collect::<Vec<_>>();
        assert_eq!(leases(&rebuilt), leases(&table));
        assert_eq!(rebuilt.len(), 2);
        // A client renews against the rebuilt table without noticing the restart.
        let mut renew = request(MessageType::Request, mac(3), vec![]);
        renew.set_ciaddr(Ipv4Addr::new(198, 18, 1, 2));
        let ack = reply(handle(&renew, NOW + 10, &mut rebuilt, &cfg, &res));
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
    }

    /// Deterministic xorshift so the corpus is the same on every run.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn mutated_and_random_datagrams_never_panic() {
        let cfg = tiny_pool_config(16, 8);
        let res = no_reservations();
        let mut table = LeaseTable::new();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let goldens: Vec<Vec<u8>> = testdata::golden_discovers()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let mut handled = 0usize;
        for i in 0..20_000u64 {
            let mut p = goldens[(i as usize) % goldens.len()].clone();
            // Flip a few bytes, mostly in the options where the parsing risk is.
            for _ in 0..(1 + rng.next() % 4) {
                let at = if rng.next().is_multiple_of(4) {
                    rng.next() as usize % p.len()
                } else {
                    240 + rng.next() as usize % (p.len() - 240)
                };
                p[at] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(8) {
                p.truncate(rng.next() as usize % p.len());
            }
            if rng.next().is_multiple_of(16) {
                p = (0..(rng.next() % 700)).map(|_| rng.next() as u8).collect();
            }
            let d = handle_datagram(&p, NOW + i, &mut table, &cfg, &res);
            if let Decision::Reply(r) = d {
                handled += 1;
                let _ = r.encode();
            }
        }
        // The corpus must exercise the engine, not just the decoder's first check.
        assert!(
            handled > 1000,
            "only {handled} mutated packets reached a reply"
        );
    }
}
