//! Why a VRRP advert was not accepted, and per-reason counters of dropped adverts.
//!
//! [`DecodeError`] says why bytes are not a valid advert (IP header or VRRP message); [`DropReason`] covers
//! those plus the checks against the receiving instance's configuration (RFC 5798 section 7.1, RFC 3768
//! section 7.1). The socket task keeps one [`DropCounters`] and calls [`DropCounters::record`] for every
//! advert it drops, so drops can be reported by reason.

use std::fmt;

use thiserror::Error;

/// Bytes that are not a valid VRRP advert. Each cause is its own variant so drops can be counted by reason
/// ([`DecodeError::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than the fixed VRRP header, or than the addresses (and v2 authentication data) it announces.
    #[error("truncated advert: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    /// VRRP version other than 2 or 3.
    #[error("unsupported VRRP version {0}")]
    BadVersion(u8),
    /// VRRP type other than 1 (ADVERTISEMENT).
    #[error("unknown VRRP packet type {0}")]
    BadType(u8),
    /// The checksum does not verify (v3: including the IPv4 pseudo-header).
    #[error("bad VRRP checksum {got:#06x}, expected {want:#06x}")]
    BadChecksum { got: u16, want: u16 },
    /// The address count is zero, or the message is longer than the count announces.
    #[error("address count {count} does not match a {len}-byte advert")]
    CountMismatch { count: u8, len: usize },
    /// Not an IPv4 packet, or an IPv4 header whose length fields are inconsistent.
    #[error("malformed IPv4 header")]
    BadIpHeader,
    /// The IPv4 header checksum does not verify.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// IP protocol other than 112 (VRRP).
    #[error("IP protocol {0} is not VRRP (112)")]
    BadProtocol(u8),
    /// IP TTL other than 255: the advert may come from off-link (RFC 5798 section 7.1).
    #[error("IP TTL {0}, must be 255")]
    BadTtl(u8),
    /// An IP fragment (adverts are never fragmented).
    #[error("fragmented IP packet")]
    Fragmented,
    /// Source and destination of different address families (a caller's mistake, never on the wire).
    #[error("source and destination of different address families")]
    FamilyMismatch,
}

impl DecodeError {
    /// The counter this error increments.
    pub fn reason(&self) -> DropReason {
        match self {
            DecodeError::Truncated { .. } => DropReason::Truncated,
            DecodeError::BadVersion(_) => DropReason::BadVersion,
            DecodeError::BadType(_) => DropReason::BadType,
            DecodeError::BadChecksum { .. } => DropReason::BadChecksum,
            DecodeError::CountMismatch { .. } => DropReason::CountMismatch,
            DecodeError::BadIpHeader => DropReason::BadIpHeader,
            DecodeError::BadIpChecksum => DropReason::BadIpChecksum,
            DecodeError::BadProtocol(_) => DropReason::BadProtocol,
            DecodeError::BadTtl(_) => DropReason::BadTtl,
            DecodeError::Fragmented => DropReason::Fragmented,
            DecodeError::FamilyMismatch => DropReason::BadIpHeader,
        }
    }
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Why an advert was dropped: a decode failure or a failed check against the instance's config.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DropReason {
            $($(#[$doc])* $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// Stable snake_case name, for logs, metrics and reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// [`DecodeError::Truncated`].
    Truncated => "truncated",
    /// [`DecodeError::BadVersion`].
    BadVersion => "bad_version",
    /// [`DecodeError::BadType`].
    BadType => "bad_type",
    /// [`DecodeError::BadChecksum`].
    BadChecksum => "bad_checksum",
    /// [`DecodeError::CountMismatch`].
    CountMismatch => "count_mismatch",
    /// [`DecodeError::BadIpHeader`].
    BadIpHeader => "bad_ip_header",
    /// [`DecodeError::BadIpChecksum`].
    BadIpChecksum => "bad_ip_checksum",
    /// [`DecodeError::BadProtocol`].
    BadProtocol => "bad_protocol",
    /// [`DecodeError::BadTtl`].
    BadTtl => "bad_ttl",
    /// [`DecodeError::Fragmented`].
    Fragmented => "fragmented",
    /// Valid advert for a VRID this instance does not run (ignored silently: it is another group's traffic).
    VridMismatch => "vrid_mismatch",
    /// Valid advert of the other VRRP version than the instance's.
    VersionMismatch => "version_mismatch",
    /// v2: authentication type or data differs from the instance's.
    AuthMismatch => "auth_mismatch",
    /// v2: advert interval differs from the instance's (RFC 3768: MUST discard).
    IntervalMismatch => "interval_mismatch",
    /// v2: address list differs from the instance's and the sender is not the owner (RFC 3768: MUST drop).
    AddressMismatch => "address_mismatch",
    /// The advert's source is this instance's own primary address (multicast loopback).
    OwnAdvert => "own_advert",
    /// This instance is the address owner (priority 255), which discards adverts (RFC 5798 section 7.1).
    LocalOwner => "local_owner",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dropped adverts counted by reason. Plain counters: the socket task that receives adverts owns one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Counts one dropped advert.
    pub fn record(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason as usize];
        *slot = slot.saturating_add(1);
    }

    /// Adverts dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    /// All adverts dropped, whatever the reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// The non-zero counters, in [`DropReason::ALL`] order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

/// An [`InstanceConfig`](super::InstanceConfig) the state machine cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("VRID must be 1-255")]
    VridZero,
    #[error("priority must be 1-255 (0 is reserved for a master that stops)")]
    PriorityZero,
    #[error("VRRPv2 advert interval must be whole seconds from 1 to 255, got {0:?}")]
    V2Interval(std::time::Duration),
    #[error("VRRPv3 advert interval must be a multiple of 10 ms from 10 ms to 40.95 s, got {0:?}")]
    V3Interval(std::time::Duration),
    #[error("a VRRP instance needs at least one virtual address")]
    NoVips,
    #[error("at most {max} virtual addresses fit in one advert, got {got}")]
    TooManyVips { got: usize, max: usize },
    #[error("virtual address {0} is not of the family the instance runs over")]
    VipFamily(std::net::IpAddr),
    #[error("VRRPv2 runs over IPv4 only")]
    V2OverIpv6,
}
