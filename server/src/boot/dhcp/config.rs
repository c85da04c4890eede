//! What the DHCP engine hands out: subnet, pools, options, lease timers and the PXE boot-file map.
//! Plain data with a `validate` step; the engine never reads files or the environment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use thiserror::Error;

/// Longest boot file name we put in the BOOTP `file` field: 128 bytes including the NUL terminator that
/// PXE ROMs expect, so one byte is reserved.
pub const MAX_BOOT_FILE_LEN: usize = 127;

/// Longest length of `"/boot/aa:bb:cc:dd:ee:ff.ipxe"`, appended to the HTTP base for iPXE clients.
const IPXE_SCRIPT_SUFFIX_LEN: usize = "/boot/".len() + 17 + ".ipxe".len();

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub const fn new(network: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            network,
            prefix_len,
        }
    }

    /// The netmask; a prefix above 32 is treated as 32 so an unvalidated config cannot make this panic.
    pub fn mask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix_len.min(32));
        // checked_shl: a shift by 32 would overflow, and /0 is a legitimate (if silly) mask of 0.
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        Ipv4Addr::from(mask)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.mask());
        u32::from(addr) & mask == u32::from(self.network) & mask
    }

    /// The all-ones host address, which must never be leased.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }
}

/// An inclusive range of addresses the engine may hand to clients without a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl PoolRange {
    pub const fn new(start: Ipv4Addr, end: Ipv4Addr) -> Self {
        Self { start, end }
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&addr)
    }

    /// Every address of the range, in ascending order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from)
    }
}

/// Boot files by client system architecture (option 93, RFC 4578 / IANA processor architecture types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFileMap(pub BTreeMap<u16, String>);

impl Default for BootFileMap {
    /// BIOS gets the UNDI iPXE build, x86-64 UEFI (7, and 9 which some firmware sends for x64) the EFI build;
    /// both then come back as iPXE and receive their per-MAC script.
    fn default() -> Self {
        let mut map = BTreeMap::new();
        map.insert(0, "undionly.kpxe".to_owned());
        map.insert(7, "ipxe.efi".to_owned());
        map.insert(9, "ipxe.efi".to_owned());
        Self(map)
    }
}

impl BootFileMap {
    pub fn get(&self, arch: u16) -> Option<&str> {
        self.0.get(&arch).map(String::as_str)
    }
}

/// Everything the lease engine needs to answer a client.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpConfig {
    /// Our address: option 54 server identifier and `siaddr` (next server) for PXE.
    pub server_address: Ipv4Addr,
    pub subnet: Subnet,
    pub pools: Vec<PoolRange>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    /// How long an OFFER holds its address for the client before someone else may get it.
    pub offer_timeout: Duration,
    /// How long an address stays out of the pool after a client DECLINEd it (someone else answers ARP for it).
    pub decline_quarantine: Duration,
    pub boot_files: BootFileMap,
    /// e.g. `http://198.18.0.1:8080`; iPXE clients get `{base}/boot/{mac}.ipxe`.
    pub http_boot_base: String,
    /// Most unknown MACs (no reservation) that may hold an offer or lease at once, so a flood of random MACs
    /// cannot drain the pool that new racks boot from.
    pub discovery_cap: usize,
    /// Answer relayed requests (`giaddr` set). A relayed request's frame is the relay's, so its `chaddr` cannot
    /// be checked against the sender (`link`): a site without relays turns this off, and then a client on the
    /// boot segment cannot pose as a relay to get another MAC's lease.
    pub accept_relayed: bool,
}

impl DhcpConfig {
    /// The lab network of ARCHITECTURE.md: server 198.18.0.1 on 198.18.0.0/16, pool 198.18.1.0-198.18.1.255.
    pub fn lab() -> Self {
        let server = Ipv4Addr::new(198, 18, 0, 1);
        Self {
            server_address: server,
            subnet: Subnet::new(Ipv4Addr::new(198, 18, 0, 0), 16),
            pools: vec![PoolRange::new(
                Ipv4Addr::new(198, 18, 1, 0),
                Ipv4Addr::new(198, 18, 1, 255),
            )],
            router: Some(Ipv4Addr::new(198, 18, 0, 254)),
            dns: vec![server],
            domain: Some("lab.lbfleet".to_owned()),
            mtu: Some(1500),
            ntp: vec![server],
            lease_time: Duration::from_secs(3600),
            offer_timeout: Duration::from_secs(60),
            decline_quarantine: Duration::from_secs(600),
            boot_files: BootFileMap::default(),
            http_boot_base: "http://198.18.0.1:8080".to_owned(),
            discovery_cap: 64,
            accept_relayed: true,
        }
    }

    /// Lease time in whole seconds as carried by option 51, clamped to what the option can hold
    /// (u32::MAX itself would mean "infinite", which we never grant).
    pub fn lease_secs(&self) -> u32 {
        u32::try_from(self.lease_time.as_secs())
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1)
    }

    /// True for addresses that must never be leased whatever the pool says.
    pub fn is_excluded(&self, addr: Ipv4Addr) -> bool {
        addr == self.server_address
            || Some(addr) == self.router
            || addr == self.subnet.network
            || addr == self.subnet.broadcast()
            || self.dns.contains(&addr)
            || self.ntp.contains(&addr)
            || !self.subnet.contains(addr)
    }

    pub fn in_pool(&self, addr: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(addr))
    }

    /// Checks the invariants the engine relies on; call once at start-up and refuse to serve on error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let subnet = self.subnet;
        if subnet.prefix_len > 30 {
            return Err(ConfigError::PrefixTooLong(subnet.prefix_len));
        }
        if subnet.network != Ipv4Addr::from(u32::from(subnet.network) & u32::from(subnet.mask())) {
            return Err(ConfigError::NetworkNotAligned(
                subnet.network,
                subnet.prefix_len,
            ));
        }
        if !subnet.contains(self.server_address) {
            return Err(ConfigError::OutsideSubnet(
                "server_address",
                self.server_address,
            ));
        }
        if let Some(router) = self.router {
            if !subnet.contains(router) {
                return Err(ConfigError::OutsideSubnet("router", router));
            }
        }
        if self.pools.is_empty() {
            return Err(ConfigError::NoPool);
        }
        for pool in &self.pools {
            if pool.start > pool.end {
                return Err(ConfigError::EmptyPool(*pool));
            }
            if !subnet.contains(pool.start) || !subnet.contains(pool.end) {
                return Err(ConfigError::OutsideSubnet("pool", pool.start));
            }
        }
        let lease = self.lease_time.as_secs();
        if !(60..u64::from(u32::MAX)).contains(&lease) {
            return Err(ConfigError::LeaseTime(self.lease_time));
        }
        if self.offer_timeout.is_zero() {
            return Err(ConfigError::OfferTimeout);
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || domain.len() > 255 || !domain.is_ascii() {
                return Err(ConfigError::Domain(domain.clone()));
            }
        }
        if let Some(mtu) = self.mtu {
            // RFC 2132 9.1: the minimum legal value is 68.
            if mtu < 68 {
                return Err(ConfigError::Mtu(mtu));
            }
        }
        for name in self.boot_files.0.values() {
            if name.is_empty() || name.len() > MAX_BOOT_FILE_LEN || name.contains('\0') {
                return Err(ConfigError::BootFile(name.clone()));
            }
        }
        let base = &self.http_boot_base;
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.ends_with('/')
            || base.len() + IPXE_SCRIPT_SUFFIX_LEN > MAX_BOOT_FILE_LEN
        {
            return Err(ConfigError::HttpBootBase(base.clone()));
        }
        Ok(())
    }
}

/// Why a [`DhcpConfig`] was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("subnet prefix /{0} leaves no room for clients (at most /30)")]
    PrefixTooLong(u8),
    #[error("subnet {0}/{1} has host bits set")]
    NetworkNotAligned(Ipv4Addr, u8),
    #[error("{0} {1} is outside the subnet")]
    OutsideSubnet(&'static str, Ipv4Addr),
    #[error("no address pool configured")]
    NoPool,
    #[error("pool {}-{} is empty (start after end)", .0.start, .0.end)]
    EmptyPool(PoolRange),
    #[error("lease time {0:?} must be between 60 s and 2^32-1 s")]
    LeaseTime(Duration),
    #[error("offer timeout must be positive")]
    OfferTimeout,
    #[error("domain name {0:?} must be 1-255 ASCII characters")]
    Domain(String),
    #[error("MTU {0} is below the minimum of 68")]
    Mtu(u16),
    #[error("boot file name {0:?} must be 1-127 bytes without NUL")]
    BootFile(String),
    #[error("HTTP boot base {0:?} must be an http(s) URL without trailing slash, short enough for the 128-byte file field")]
    HttpBootBase(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_config_is_valid() {
        assert_eq!(DhcpConfig::lab().validate(), Ok(()));
    }

    #[test]
    fn subnet_math() {
        let s = Subnet::new(Ipv4Addr::new(198, 18, 0, 0), 16);
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(198, 18, 255, 255));
        assert!(s.contains(Ipv4Addr::new(198, 18, 1, 7)));
        assert!(!s.contains(Ipv4Addr::new(198, 19, 0, 1)));
        assert_eq!(
            Subnet::new(Ipv4Addr::UNSPECIFIED, 0).mask(),
            Ipv4Addr::UNSPECIFIED
        );
        // An out-of-range prefix must not panic.
        assert_eq!(
            Subnet::new(Ipv4Addr::new(198, 18, 0, 1), 40).mask(),
            Ipv4Addr::BROADCAST
        );
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let mut c = DhcpConfig::lab();
        c.server_address = Ipv4Addr::new(198, 19, 0, 1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutsideSubnet("server_address", _))
        ));

        let mut c = DhcpConfig::lab();
        c.pools = vec![PoolRange::new(
            Ipv4Addr::new(198, 18, 1, 9),
            Ipv4Addr::new(198, 18, 1, 1),
        )];
        assert!(matches!(c.validate(), Err(ConfigError::EmptyPool(_))));

        let mut c = DhcpConfig::lab();
        c.subnet = Subnet::new(Ipv4Addr::new(198, 18, 0, 1), 16);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NetworkNotAligned(..))
        ));

        let mut c = DhcpConfig::lab();
        c.http_boot_base = format!("http://{}", "x".repeat(120));
        assert!(matches!(c.validate(), Err(ConfigError::HttpBootBase(_))));

        let mut c = DhcpConfig::lab();
        c.lease_time = Duration::from_secs(5);
        assert!(matches!(c.validate(), Err(ConfigError::LeaseTime(_))));

        let mut c = DhcpConfig::lab();
        c.boot_files.0.insert(11, "a".repeat(200));
        assert!(matches!(c.validate(), Err(ConfigError::BootFile(_))));
    }

    #[test]
    fn exclusions_cover_infrastructure_addresses() {
        let c = DhcpConfig::lab();
        assert!(c.is_excluded(c.server_address));
        assert!(c.is_excluded(Ipv4Addr::new(198, 18, 0, 254)));
        assert!(c.is_excluded(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(c.is_excluded(Ipv4Addr::new(198, 18, 255, 255)));
        assert!(!c.is_excluded(Ipv4Addr::new(198, 18, 1, 0)));
    }
}
