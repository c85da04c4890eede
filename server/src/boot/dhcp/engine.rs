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
use super::lease::{Lease, LeaseChange, LeaseState, LeaseTable, Mac, Reservations, UnixMillis};
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
    LinkUnicast { address: Ipv4Addr, mac: Mac },
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
    mac: Mac,
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
        let mac = Mac::from_unicast_bytes(req.chaddr()).ok_or(DropReason::InvalidClientMac)?;
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
mod tests;
